//! Fuzzes `Policy::parse` with arbitrary text; whatever parses is also compiled for a few
//! nodes and queried, so evaluation and compilation see the fuzzer's policies too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_acl::{IpProto, NodeId, NodeSet, NodeView, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse("fuzz.hujson", text) {
        Err(errors) => {
            let _ = errors.to_string();
        }
        Ok(policy) => {
            let nodes: NodeSet = (1..4u8)
                .map(|i| NodeView {
                    id: NodeId(u64::from(i)),
                    addresses: vec![[100, 64, 0, i].into()],
                    user: format!("u{i}@x"),
                    idp_groups: Some(vec!["eng".into()]),
                    tags: if i == 3 { vec!["web".into()] } else { vec![] },
                    is_ingress: i == 2,
                })
                .collect();
            for node in nodes.iter() {
                let compiled = policy.compile_for(node, &nodes);
                let _ = compiled
                    .packet_filter
                    .allows([100, 64, 0, 1].into(), 443, IpProto::TCP);
            }
            let _ = policy.test_access("u1@x", "tag:web:443", "tcp");
        }
    }
});
