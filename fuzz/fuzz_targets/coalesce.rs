#![no_main]

//! Splits each input into packets and runs them through the receive coalescer. Nothing may
//! panic, and what comes out must still parse and be no more packets and no more bytes than
//! what went in.

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postern_netstack::{coalesce_batch, inspect_inbound};

fuzz_target!(|data: &[u8]| {
    let Some((&size, data)) = data.split_first() else {
        return;
    };
    // Packets are separated by 0xa5 bytes; the first byte picks the size limit.
    let packets: Vec<Bytes> = data
        .split(|b| *b == 0xa5)
        .map(Bytes::copy_from_slice)
        .collect();
    let accepted: Vec<&Bytes> = packets
        .iter()
        .filter(|p| inspect_inbound(p, false).is_ok())
        .collect();
    let in_bytes: usize = accepted.iter().map(|p| p.len()).sum();
    let max_len = 2840 + usize::from(size) * 250;
    let out = coalesce_batch(packets.clone(), max_len);
    assert!(out.len() <= accepted.len());
    let out_bytes: usize = out.iter().map(|p| p.len()).sum();
    assert!(out_bytes <= in_bytes);
    for packet in &out {
        assert!(
            inspect_inbound(packet, false).is_ok(),
            "a joined packet does not parse"
        );
    }
});
