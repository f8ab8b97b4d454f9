//! The inspection store's file line parser and the ingress audit-line reader: any bytes
//! must give an entry or an error, never a panic; an entry must survive a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_node::inspect::DeniedDelivery;
use postern_node::inspect::store::parse_line;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(entry)) = parse_line(data) {
        let json = serde_json::to_vec(&entry).unwrap();
        let again = parse_line(&json).unwrap().unwrap();
        assert_eq!(again, entry);
        let _ = entry.masked().summary();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DeniedDelivery::from_audit_line(text);
    }
});
