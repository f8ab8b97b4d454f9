//! Policy compilation at scale: 10,000 nodes and 1,000 rules.
//!
//! `cargo bench -p postern-acl --bench compile`. Measures: compiling every node (the full
//! recompute), one node on its own (`Policy::compile_for`, nothing shared), one node joining
//! a compiled tailnet (incremental), and a packet filter lookup on the busiest node.
//! Results are written up in docs/benchmarks.md.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)] // a benchmark, not product code

use std::net::IpAddr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use postern_acl::{IpProto, NodeId, NodeSet, NodeView, Policy, PolicyCompiler};

const USERS: usize = 2_000;
const UNTAGGED_PER_USER: usize = 4; // 8,000 user devices
const TAGS: usize = 200;
const TAGGED_PER_TAG: usize = 10; // 2,000 tagged servers
const GROUPS: usize = 100;
const USERS_PER_GROUP: usize = 40;
const RULES: usize = 1_000;

/// A small deterministic generator (no dependency, same numbers every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn user(i: usize) -> String {
    format!("user{i}@example.com")
}

fn policy_text() -> String {
    let mut rng = Lcg(7);
    let groups: Vec<String> = (0..GROUPS)
        .map(|g| {
            let members: Vec<String> = (0..USERS_PER_GROUP)
                .map(|_| format!("\"{}\"", user(rng.next(USERS))))
                .collect();
            format!("\"group:g{g}\": [{}]", members.join(", "))
        })
        .collect();
    let tags: Vec<String> = (0..TAGS).map(|t| format!("\"tag:t{t}\": []")).collect();
    let mut acls = Vec::new();
    let mut grants = Vec::new();
    for r in 0..RULES {
        let port = 1000 + rng.next(2000);
        let dst_tag = rng.next(TAGS);
        match r % 100 {
            0..=69 => acls.push(format!(
                r#"{{"action": "accept", "src": ["group:g{}"], "dst": ["tag:t{dst_tag}:{port},{}"]}}"#,
                rng.next(GROUPS),
                port + 1000
            )),
            70..=84 => acls.push(format!(
                r#"{{"action": "accept", "src": ["tag:t{}"], "proto": "tcp", "dst": ["tag:t{dst_tag}:{port}-{}"]}}"#,
                rng.next(TAGS),
                port + 10
            )),
            85..=94 => acls.push(format!(
                r#"{{"action": "accept", "src": ["{}"], "dst": ["tag:t{dst_tag}:22"]}}"#,
                user(rng.next(USERS))
            )),
            95..=98 => grants.push(format!(
                r#"{{"src": ["group:g{}"], "dst": ["tag:t{dst_tag}"], "ip": ["tcp:443"]}}"#,
                rng.next(GROUPS)
            )),
            _ => acls.push(
                r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*", "tag:t0:53"]}"#
                    .to_string(),
            ),
        }
    }
    format!(
        "{{\"groups\": {{{}}},\n\"tagOwners\": {{{}}},\n\"acls\": [\n{}\n],\n\"grants\": [\n{}\n]}}",
        groups.join(",\n"),
        tags.join(",\n"),
        acls.join(",\n"),
        grants.join(",\n")
    )
}

fn address(i: usize) -> (IpAddr, IpAddr) {
    let v4 = IpAddr::from([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let v6: IpAddr = format!("fd7a:115c:a1e0::{:x}", i + 1).parse().unwrap();
    (v4, v6)
}

fn node(i: usize, user_index: usize, tag: Option<usize>) -> NodeView {
    let (v4, v6) = address(i);
    NodeView {
        id: NodeId(i as u64),
        addresses: vec![v4, v6],
        user: user(user_index),
        idp_groups: None,
        tags: tag.map(|t| vec![format!("t{t}")]).unwrap_or_default(),
        is_ingress: false,
    }
}

fn nodes() -> Vec<NodeView> {
    let mut out = Vec::new();
    for u in 0..USERS {
        for _ in 0..UNTAGGED_PER_USER {
            out.push(node(out.len(), u, None));
        }
    }
    for t in 0..TAGS {
        for k in 0..TAGGED_PER_TAG {
            out.push(node(out.len(), k, Some(t)));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let text = policy_text();
    let policy = Arc::new(Policy::parse("bench.hujson", &text).expect("bench policy"));
    let all = nodes();
    let set: NodeSet = all.iter().cloned().collect();
    assert_eq!(set.len(), 10_000);
    let summary = policy.summary();
    assert_eq!(summary.acls + summary.grants, RULES);

    let mut group = c.benchmark_group("acl");
    group.sample_size(10);
    group.bench_function("parse 1,000-rule policy", |b| {
        b.iter(|| Policy::parse("bench.hujson", &text).unwrap())
    });
    group.bench_function("compile all 10,000 nodes (full recompute)", |b| {
        b.iter(|| PolicyCompiler::new(policy.clone(), set.clone()))
    });
    let compiler = PolicyCompiler::new(policy.clone(), set.clone());
    let sizes: Vec<usize> = all
        .iter()
        .map(|n| compiler.compiled(n.id).unwrap().visible_peers.len())
        .collect();
    println!(
        "visible peers per node: mean {:.1}, max {}",
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
        sizes.iter().max().unwrap()
    );

    let laptop = &all[1234];
    let server = &all[8_000 + 3]; // a tag:t0 node: every member reaches it on :53
    group.bench_function("compile_for one user node (nothing shared)", |b| {
        b.iter(|| policy.compile_for(laptop, &set))
    });
    group.bench_function("compile_for one busy tagged node (nothing shared)", |b| {
        b.iter(|| policy.compile_for(server, &set))
    });

    let joining_member = node(20_000, 17, None);
    let joining_server = node(20_001, 0, Some(42));
    for (name, joining) in [
        ("join: one user device", &joining_member),
        ("join: one tagged server", &joining_server),
    ] {
        let mut probe = compiler.clone();
        let changed = probe.upsert_node(joining.clone());
        println!("{name}: {} nodes' results changed", changed.len());
        group.bench_function(format!("incremental {name}"), |b| {
            b.iter_batched(
                || compiler.clone(),
                |mut c| {
                    c.upsert_node(joining.clone());
                    c
                },
                BatchSize::LargeInput,
            )
        });
    }

    let busy = compiler.compiled(server.id).unwrap();
    let member_ip = all[4321].addresses[0];
    let stranger: IpAddr = "100.127.255.254".parse().unwrap();
    assert!(busy.packet_filter.allows(member_ip, 53, IpProto::UDP));
    group.bench_function("packet filter lookup on the busiest node", |b| {
        b.iter(|| {
            std::hint::black_box(busy.packet_filter.allows(member_ip, 53, IpProto::UDP))
                ^ std::hint::black_box(busy.packet_filter.allows(stranger, 2000, IpProto::TCP))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
