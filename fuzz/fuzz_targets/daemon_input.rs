//! What the node daemon reads from the network besides WireGuard: HTTP proxy request heads
//! and ICMP echo packets from peers. Any bytes give a value or `None`/an error, never a
//! panic; a reply to an echo request is itself a valid echo reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_node::daemon::http_proxy::parse_request_head;
use postern_node::daemon::icmp::{echo_reply_for, parse_echo};

fuzz_target!(|data: &[u8]| {
    let _ = parse_request_head(data);
    let echo = parse_echo(data);
    if let Some(reply) = echo_reply_for(data) {
        let request = echo.expect("a packet answered is an echo request");
        let answer = parse_echo(&reply).expect("the reply parses");
        assert!(!answer.is_request);
        assert_eq!((answer.ident, answer.seq), (request.ident, request.seq));
        assert_eq!((answer.src, answer.dst), (request.dst, request.src));
    }
});
