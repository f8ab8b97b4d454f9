//! Parses arbitrary bytes as a STUN message. Parsing may fail but never panic, and a parsed
//! binding response re-encodes to a message that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::stun::{self, StunMessage};

fuzz_target!(|data: &[u8]| {
    let _ = stun::is_stun(data);
    if let Ok(StunMessage::BindingResponse {
        transaction,
        mapped,
    }) = stun::parse(data)
    {
        let again = stun::parse(&stun::binding_response(transaction, mapped)).unwrap();
        assert_eq!(
            again,
            StunMessage::BindingResponse {
                transaction,
                mapped
            }
        );
    }
});
