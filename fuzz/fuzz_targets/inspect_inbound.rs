#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_netstack::{Transport, inspect_inbound};

fuzz_target!(|data: &[u8]| {
    let checked = inspect_inbound(data, true);
    let unchecked = inspect_inbound(data, false);
    // Verifying checksums can only reject more packets, never accept different ones.
    if let Ok(packet) = checked {
        assert_eq!(Ok(packet), unchecked);
    }
    if let Ok(packet) = unchecked
        && let Transport::TcpSyn { from, to } = packet.transport
    {
        assert_eq!(from.ip(), packet.src);
        assert_eq!(to.ip(), packet.dst);
    }
});
