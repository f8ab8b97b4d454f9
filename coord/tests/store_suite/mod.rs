//! The store and registry test suite, run against every backend by `store_sqlite.rs` and
//! `store_postgres.rs`. Each case gets a fresh, empty database.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use postern_coord::registry::{Registration, Registry, RegistryError, addresses};
use postern_coord::store::{
    AuthKeyHash, AuthKeyRejection, CertificateRecord, EdgeDecisionFilter, EdgeRetention,
    NewAuditRecord, NewAuthKey, NewEdgeDecision, NewFunnel, NewNode, Store, StoreError,
};
use postern_proto::funnel::{
    EdgeDecision, FunnelProtocol, GateMode, GateSecret, GateSpec, RateLimitSpec,
};
use postern_proto::{MachinePublicKey, NodeId, NodePublicKey, UnixTime, UserId};

/// A fresh database for one case: where it is, so a case can reopen it or reach it with
/// raw SQL.
pub struct Fresh {
    /// `sqlite://FILE` or `postgres://…`, for `Store::open`.
    pub location: String,
}

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

/// Expands to one `#[tokio::test]` per suite case, each calling `$fresh()` for its
/// database (and keeping whatever guard it returns alive).
#[macro_export]
macro_rules! store_suite_tests {
    ($fresh:path) => {
        $crate::store_suite_tests!(@cases $fresh,
            users_are_upserted_by_login,
            nodes_round_trip_and_unique_columns_conflict,
            auth_keys_are_single_use_unless_reusable_and_expire,
            audit_records_are_append_only,
            certificates_are_replaced_by_hostname,
            certificate_order_claims_are_exclusive_until_they_lapse,
            funnels_are_keyed_by_node_and_port_and_go_with_their_node,
            edge_decisions_are_bounded_filtered_and_go_with_their_funnel,
            registry_gives_unique_names_and_stable_addresses,
            concurrent_registrations_never_share_a_name_or_address,
            registry_renames_tags_and_deletes,
            everything_survives_a_reopen,
        );
    };
    (@cases $fresh:path, $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_guard, fresh) = $fresh();
                store_suite::$case(&fresh).await;
            }
        )*
    };
}

async fn open(fresh: &Fresh) -> Store {
    Store::open(&fresh.location).await.unwrap()
}

fn machine(n: u8) -> MachinePublicKey {
    MachinePublicKey::from_bytes([n; 32])
}

fn node_key(n: u8) -> NodePublicKey {
    NodePublicKey::from_bytes([n.wrapping_add(100); 32])
}

async fn user(store: &Store, login: &str) -> UserId {
    store
        .upsert_user(login, "Someone", &[], NOW)
        .await
        .unwrap()
        .id
}

fn new_node(n: u8, user: UserId) -> NewNode {
    NewNode {
        machine_key: machine(n),
        node_key: node_key(n),
        name: format!("node{n}"),
        ipv4: format!("100.64.0.{n}").parse().unwrap(),
        ipv6: format!("fd00::{n}").parse().unwrap(),
        user_id: user,
        tags: vec!["tag:web".into()],
        created_at: NOW,
        key_expiry: Some(NOW.saturating_add_secs(3600)),
        ephemeral: n.is_multiple_of(2),
        approved: true,
        is_ingress: false,
    }
}

fn registration(n: u8, hostname: &str, user: UserId) -> Registration {
    Registration {
        machine_key: machine(n),
        node_key: node_key(n),
        hostname: hostname.into(),
        user_id: user,
        tags: vec![],
        ephemeral: false,
        approved: true,
        is_ingress: false,
        key_expiry: None,
    }
}

pub async fn users_are_upserted_by_login(fresh: &Fresh) {
    let store = open(fresh).await;
    let groups = vec!["group:eng".to_owned()];
    let alice = store
        .upsert_user("alice@example.com", "Alice", &groups, NOW)
        .await
        .unwrap();
    assert_eq!(alice.login, "alice@example.com");
    assert_eq!(alice.groups, groups);
    let later = NOW.saturating_add_secs(60);
    let again = store
        .upsert_user("alice@example.com", "Alice A.", &[], later)
        .await
        .unwrap();
    assert_eq!(again.id, alice.id, "same login, same user");
    assert_eq!(again.display_name, "Alice A.");
    assert!(again.groups.is_empty(), "groups follow the IdP");
    assert_eq!(again.created_at, NOW, "creation time is kept");
    let bob = store
        .upsert_user("bob@example.com", "Bob", &[], NOW)
        .await
        .unwrap();
    assert_ne!(bob.id, alice.id);
    assert_eq!(store.user(alice.id).await.unwrap(), Some(again.clone()));
    assert_eq!(
        store.user_by_login("bob@example.com").await.unwrap(),
        Some(bob)
    );
    assert_eq!(store.user(UserId(999_999)).await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap().len(), 2);
}

pub async fn nodes_round_trip_and_unique_columns_conflict(fresh: &Fresh) {
    let store = open(fresh).await;
    let owner = user(&store, "alice@example.com").await;
    let node = store.insert_node(&new_node(1, owner)).await.unwrap();
    assert_eq!(node.name, "node1");
    assert_eq!(node.tags, ["tag:web"]);
    assert_eq!(node.last_seen, None);
    assert!(node.endpoints.is_empty());
    assert_eq!(store.node(node.id).await.unwrap(), Some(node.clone()));
    assert_eq!(
        store.node_by_machine_key(&machine(1)).await.unwrap(),
        Some(node.clone())
    );
    assert_eq!(
        store.node_by_node_key(&node_key(1)).await.unwrap(),
        Some(node.clone())
    );

    // Each unique column refuses a second holder, naming the column.
    let mut same_name = new_node(2, owner);
    same_name.name = "node1".into();
    let err = store.insert_node(&same_name).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what } if what.contains("name")),
        "{err}"
    );
    let mut same_ip = new_node(2, owner);
    same_ip.ipv4 = node.ipv4;
    let err = store.insert_node(&same_ip).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what } if what.contains("ipv4")),
        "{err}"
    );
    let mut same_machine = new_node(2, owner);
    same_machine.machine_key = machine(1);
    let err = store.insert_node(&same_machine).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what } if what.contains("machine_key")),
        "{err}"
    );
    // A node must belong to an existing user (foreign keys are on in both backends).
    let orphan = store
        .insert_node(&new_node(3, UserId(424_242)))
        .await
        .unwrap_err();
    assert!(matches!(orphan, StoreError::Database(_)), "{orphan}");

    let endpoints: Vec<SocketAddr> = vec![
        "192.0.2.7:41641".parse().unwrap(),
        "[2001:db8::7]:41641".parse().unwrap(),
    ];
    let seen = NOW.saturating_add_secs(5);
    let disco = postern_proto::DiscoPublicKey::from_bytes([7; 32]);
    let paths = postern_coord::store::NodePaths {
        endpoints: endpoints.clone(),
        disco_key: Some(disco),
        home_relay: Some(postern_proto::netmap::RegionId(3)),
    };
    store.set_node_paths(node.id, &paths, seen).await.unwrap();
    let rekeyed = store
        .rekey_node(node.id, &node_key(9), None, false)
        .await
        .unwrap();
    assert_eq!(rekeyed.node_key, node_key(9));
    assert_eq!(rekeyed.endpoints, endpoints);
    assert_eq!(
        rekeyed.paths(),
        paths,
        "disco key and home relay are stored"
    );
    assert_eq!(rekeyed.last_seen, Some(seen));
    assert_eq!(rekeyed.key_expiry, None);
    assert!(!rekeyed.approved);
    let flagged = store.set_node_flags(node.id, true, true).await.unwrap();
    assert!(flagged.approved && flagged.is_ingress);

    let second = store.insert_node(&new_node(4, owner)).await.unwrap();
    assert_eq!(store.nodes_of_user(owner).await.unwrap().len(), 2);
    assert!(
        store
            .nodes_of_user(UserId(424_242))
            .await
            .unwrap()
            .is_empty()
    );
    // node 1 now never expires; node 4 expires an hour after NOW.
    let expiring = store
        .nodes_with_key_expiring_before(NOW.saturating_add_secs(7200))
        .await
        .unwrap();
    assert_eq!(
        expiring.iter().map(|n| n.id).collect::<Vec<_>>(),
        [second.id]
    );
    assert!(
        store
            .nodes_with_key_expiring_before(NOW)
            .await
            .unwrap()
            .is_empty()
    );

    // A value edited by hand into something unreadable is an error naming the column,
    // never a panic.
    raw_execute(
        fresh,
        &format!(
            "UPDATE nodes SET node_key = 'garbage' WHERE id = {}",
            second.id.0
        ),
    )
    .await
    .unwrap();
    let err = store.node(second.id).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the store holds an unreadable value in nodes.node_key: not a nodekey key: expected \
         text starting with \"nodekey:\" followed by 64 hex digits"
    );

    store.delete_node(node.id).await.unwrap();
    assert_eq!(store.node(node.id).await.unwrap(), None);
    let err = store.delete_node(node.id).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{} not found", node.id));
    let err = store.set_node_name(NodeId(777), "x").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

pub async fn auth_keys_are_single_use_unless_reusable_and_expire(fresh: &Fresh) {
    let store = open(fresh).await;
    let owner = user(&store, "admin@example.com").await;
    let key = |secret: &str, reusable, expires_at| NewAuthKey {
        hash: AuthKeyHash::of(secret),
        user_id: Some(owner),
        reusable,
        ephemeral: false,
        tags: vec!["tag:ci".into()],
        created_at: NOW,
        expires_at,
        ingress: false,
    };
    let later = NOW.saturating_add_secs(100);
    store
        .insert_auth_key(&key("once", false, None))
        .await
        .unwrap();
    store
        .insert_auth_key(&key("many", true, Some(later)))
        .await
        .unwrap();

    let once = AuthKeyHash::of("once");
    let used = store.use_auth_key(&once, NOW).await.unwrap().unwrap();
    assert_eq!(used.used_count, 1);
    assert_eq!(used.tags, ["tag:ci"]);
    assert_eq!(
        store.use_auth_key(&once, NOW).await.unwrap(),
        Err(AuthKeyRejection::AlreadyUsed)
    );

    let many = AuthKeyHash::of("many");
    for expected in 1..=3 {
        assert_eq!(
            store
                .use_auth_key(&many, NOW)
                .await
                .unwrap()
                .unwrap()
                .used_count,
            expected
        );
    }
    assert_eq!(
        store.use_auth_key(&many, later).await.unwrap(),
        Err(AuthKeyRejection::Expired)
    );
    assert_eq!(
        store
            .use_auth_key(&AuthKeyHash::of("nope"), NOW)
            .await
            .unwrap(),
        Err(AuthKeyRejection::Unknown)
    );

    // Only hashes are stored; the secret appears nowhere.
    assert_eq!(AuthKeyHash::of("once").as_str().len(), 64);
    let listed = store.list_auth_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!format!("{listed:?}").contains("once"));
    store.delete_auth_key(listed[0].id).await.unwrap();
    assert_eq!(
        store.use_auth_key(&once, NOW).await.unwrap(),
        Err(AuthKeyRejection::Unknown)
    );
    // Two concurrent uses of a single-use key: exactly one wins.
    store
        .insert_auth_key(&key("race", false, None))
        .await
        .unwrap();
    let race = AuthKeyHash::of("race");
    let (a, b) = tokio::join!(
        store.use_auth_key(&race, NOW),
        store.use_auth_key(&race, NOW)
    );
    assert_eq!(
        u8::from(a.unwrap().is_ok()) + u8::from(b.unwrap().is_ok()),
        1
    );
}

pub async fn audit_records_are_append_only(fresh: &Fresh) {
    let store = open(fresh).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let record = NewAuditRecord {
            at_ms: 1_800_000_000_000 + n,
            actor: "user:alice@example.com".into(),
            action: "node.rename".into(),
            target: format!("node:{n}"),
            source_addr: (n % 2 == 0).then(|| "192.0.2.1".to_owned()),
            details: serde_json::json!({ "n": n, "from": "a", "to": "b" }),
        };
        ids.push(store.append_audit(&record).await.unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase: {ids:?}"
    );
    let first = store.audit_after(0, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].record.details["n"], 0);
    assert_eq!(first[1].record.source_addr, None);
    let rest = store.audit_after(first[2].id, 100).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|r| r.record.target.as_str())
            .collect::<Vec<_>>(),
        ["node:3", "node:4"]
    );

    // The schema itself refuses changes, whatever client tries.
    for sql in [
        "UPDATE audit_records SET actor = 'mallory'",
        "DELETE FROM audit_records",
    ] {
        let err = raw_execute(fresh, sql).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store.audit_after(0, 100).await.unwrap().len(), 5);
    // By time: records at or after a moment, oldest first, limited.
    let since = store.audit_since(1_800_000_000_003, 100).await.unwrap();
    assert_eq!(
        since
            .iter()
            .map(|r| r.record.target.as_str())
            .collect::<Vec<_>>(),
        ["node:3", "node:4"]
    );
    assert_eq!(store.audit_since(0, 2).await.unwrap().len(), 2);
}

/// Runs SQL on the case's database through a separate connection, bypassing `Store`.
async fn raw_execute(fresh: &Fresh, sql: &str) -> Result<u64, sqlx::Error> {
    use sqlx::Connection;
    if let Some(file) = fresh.location.strip_prefix("sqlite://") {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{file}")).await?;
        Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
    } else {
        let mut conn = sqlx::PgConnection::connect(&fresh.location).await?;
        Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
    }
}

pub async fn certificates_are_replaced_by_hostname(fresh: &Fresh) {
    let store = open(fresh).await;
    let cert = |not_after: i64| CertificateRecord {
        hostname: "hook.funnel.example.com".into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n".into(),
        not_after: UnixTime::from_secs(not_after),
        updated_at: NOW,
    };
    store.put_certificate(&cert(1_800_000_100)).await.unwrap();
    store.put_certificate(&cert(1_900_000_000)).await.unwrap();
    let stored = store
        .certificate("hook.funnel.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, cert(1_900_000_000));
    assert!(
        !format!("{stored:?}").contains("SECRET"),
        "key PEM must not print"
    );
    assert_eq!(store.certificate("other.example.com").await.unwrap(), None);
    let due = store
        .certificates_expiring_before(UnixTime::from_secs(1_950_000_000))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert!(
        store
            .certificates_expiring_before(NOW)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn certificate_order_claims_are_exclusive_until_they_lapse(fresh: &Fresh) {
    let store = open(fresh).await;
    let owner = user(&store, "alice@example.com").await;
    let one = store.insert_node(&new_node(1, owner)).await.unwrap().id;
    let two = store.insert_node(&new_node(2, owner)).await.unwrap().id;
    let host = "hook.funnel.example.com";
    let at = |secs: i64| UnixTime::from_secs(NOW.as_secs() + secs);

    let claim = store
        .claim_certificate_order(host, one, NOW, at(300))
        .await
        .unwrap();
    assert_eq!((claim.node, claim.expires_at), (one, at(300)));
    // Another node sees the holder and when its claim lapses; nothing changes.
    let claim = store
        .claim_certificate_order(host, two, at(10), at(310))
        .await
        .unwrap();
    assert_eq!((claim.node, claim.expires_at), (one, at(300)));
    // The holder renews.
    let claim = store
        .claim_certificate_order(host, one, at(20), at(320))
        .await
        .unwrap();
    assert_eq!((claim.node, claim.expires_at), (one, at(320)));
    // Once it lapses another node takes it.
    let claim = store
        .claim_certificate_order(host, two, at(320), at(620))
        .await
        .unwrap();
    assert_eq!((claim.node, claim.expires_at), (two, at(620)));
    // Releasing is the holder's only: node one's release leaves node two's claim.
    store.release_certificate_order(host, one).await.unwrap();
    let claim = store
        .claim_certificate_order(host, one, at(330), at(630))
        .await
        .unwrap();
    assert_eq!(claim.node, two);
    store.release_certificate_order(host, two).await.unwrap();
    let claim = store
        .claim_certificate_order(host, one, at(340), at(640))
        .await
        .unwrap();
    assert_eq!(claim.node, one);
    // Claims are per hostname, and go with their node.
    let other = store
        .claim_certificate_order("other.funnel.example.com", two, at(340), at(640))
        .await
        .unwrap();
    assert_eq!(other.node, two);
    store.delete_node(one).await.unwrap();
    let claim = store
        .claim_certificate_order(host, two, at(350), at(650))
        .await
        .unwrap();
    assert_eq!(claim.node, two);
}

pub async fn edge_decisions_are_bounded_filtered_and_go_with_their_funnel(fresh: &Fresh) {
    let store = open(fresh).await;
    let owner = user(&store, "alice@example.com").await;
    let a = store.insert_node(&new_node(1, owner)).await.unwrap();
    let b = store.insert_node(&new_node(2, owner)).await.unwrap();
    let ingress = store.insert_node(&new_node(3, owner)).await.unwrap();
    let funnel = |node: NodeId, port: u16, hostname: &str| NewFunnel {
        node_id: node,
        name: format!("port-{port}"),
        port,
        hostname: hostname.into(),
        protocol: FunnelProtocol::Http,
        public_port: None,
        ttl_secs: None,
        gates: Vec::new(),
        gate_mode: GateMode::All,
        rate_limit: None,
        is_open: true,
        opened_at: Some(NOW),
        expires_at: None,
    };
    let fa = store
        .upsert_funnel(&funnel(a.id, 3000, "a.f.example"), NOW)
        .await
        .unwrap();
    let fb = store
        .upsert_funnel(&funnel(b.id, 3000, "b.f.example"), NOW)
        .await
        .unwrap();
    let decision =
        |funnel: &postern_coord::store::FunnelRecord, n: i64, result: &str| NewEdgeDecision {
            funnel_id: funnel.id,
            node_id: funnel.funnel.node_id,
            ingress_id: ingress.id,
            received_ms: 1_000_000 + n,
            decision: EdgeDecision {
                id: 0,
                at_ms: 1_000_000 + n,
                funnel: funnel.funnel.hostname.clone(),
                client: format!("203.0.113.{n}:5000"),
                method: "POST".into(),
                path: format!("/hook/{n}"),
                gate: Some("webhook:github".into()),
                result: result.into(),
                reason: (result == "deny").then(|| "signature_mismatch".into()),
                status: if result == "deny" { 401 } else { 200 },
                bytes: 7,
                duration_ms: 3,
            },
        };
    let keep_all = EdgeRetention {
        per_funnel: 1000,
        received_before_ms: 0,
    };
    let batch: Vec<NewEdgeDecision> = (0..6)
        .map(|n| decision(&fa, n, if n % 2 == 0 { "deny" } else { "allow" }))
        .chain([decision(&fb, 10, "deny")])
        .collect();
    assert_eq!(
        store.append_edge_decisions(&batch, keep_all).await.unwrap(),
        7
    );
    let of = |node: NodeId| EdgeDecisionFilter {
        node_id: Some(node),
        limit: 100,
        ..EdgeDecisionFilter::default()
    };
    // A node sees its own funnels' decisions only, newest first, as stored.
    let mine = store.edge_decisions(&of(a.id)).await.unwrap();
    assert_eq!(mine.len(), 6);
    assert!(mine.iter().all(|d| d.funnel == "a.f.example"));
    assert!(mine.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(mine[0].path, "/hook/5");
    assert_eq!(mine[5].reason.as_deref(), Some("signature_mismatch"));
    assert_eq!(mine[5].gate.as_deref(), Some("webhook:github"));
    assert_eq!(
        (mine[5].status, mine[5].bytes, mine[5].duration_ms),
        (401, 7, 3)
    );
    assert_eq!(store.edge_decisions(&of(b.id)).await.unwrap().len(), 1);
    // Filters: denials, hostnames, time, after an id, a limit.
    let denied = EdgeDecisionFilter {
        denied_only: true,
        ..of(a.id)
    };
    assert_eq!(store.edge_decisions(&denied).await.unwrap().len(), 3);
    let wrong_host = EdgeDecisionFilter {
        hostnames: vec!["b.f.example".into()],
        ..of(a.id)
    };
    assert!(store.edge_decisions(&wrong_host).await.unwrap().is_empty());
    let both = EdgeDecisionFilter {
        node_id: None,
        hostnames: vec!["a.f.example".into(), "b.f.example".into()],
        ..of(a.id)
    };
    assert_eq!(store.edge_decisions(&both).await.unwrap().len(), 7);
    let since = EdgeDecisionFilter {
        since_ms: Some(1_000_004),
        ..of(a.id)
    };
    assert_eq!(store.edge_decisions(&since).await.unwrap().len(), 2);
    let after = EdgeDecisionFilter {
        after_id: Some(mine[2].id),
        limit: 1,
        ..of(a.id)
    };
    let newer = store.edge_decisions(&after).await.unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(newer[0].id, mine[0].id);
    // Retention: the newest N per funnel, then an age bound.
    let keep_two = EdgeRetention {
        per_funnel: 2,
        received_before_ms: 0,
    };
    store
        .append_edge_decisions(&[decision(&fa, 6, "deny")], keep_two)
        .await
        .unwrap();
    let kept = store.edge_decisions(&of(a.id)).await.unwrap();
    let paths: Vec<&str> = kept.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/hook/6", "/hook/5"]);
    assert_eq!(
        store.count_edge_decisions(b.id).await.unwrap(),
        1,
        "other funnels untouched"
    );
    let young_only = EdgeRetention {
        per_funnel: 1000,
        received_before_ms: 1_000_006,
    };
    store.append_edge_decisions(&[], young_only).await.unwrap();
    assert_eq!(store.count_edge_decisions(a.id).await.unwrap(), 1);
    assert_eq!(store.count_edge_decisions(b.id).await.unwrap(), 1);
    // A funnel's decisions go with it (and with its node).
    store.delete_funnel(b.id, 3000).await.unwrap();
    assert_eq!(store.count_edge_decisions(b.id).await.unwrap(), 0);
    store.delete_node(a.id).await.unwrap();
    assert_eq!(store.count_edge_decisions(a.id).await.unwrap(), 0);
}

pub async fn funnels_are_keyed_by_node_and_port_and_go_with_their_node(fresh: &Fresh) {
    let store = open(fresh).await;
    let owner = user(&store, "alice@example.com").await;
    let a = store.insert_node(&new_node(1, owner)).await.unwrap();
    let b = store.insert_node(&new_node(2, owner)).await.unwrap();
    let funnel = |node: NodeId, port: u16, hostname: &str| NewFunnel {
        node_id: node,
        name: format!("port-{port}"),
        port,
        hostname: hostname.into(),
        protocol: FunnelProtocol::Http,
        public_port: None,
        ttl_secs: Some(3600),
        gates: vec![GateSpec::Webhook {
            provider: "github".into(),
            secrets: vec![GateSecret::new("hunter2")],
            tolerance_secs: Some(300),
        }],
        gate_mode: GateMode::Any,
        rate_limit: Some(RateLimitSpec {
            requests: 5,
            per_secs: 60,
        }),
        is_open: true,
        opened_at: Some(NOW),
        expires_at: Some(NOW.saturating_add_secs(3600)),
    };
    let first = store
        .upsert_funnel(&funnel(a.id, 3000, "hook-a.example.com"), NOW)
        .await
        .unwrap();
    let mut changed = funnel(a.id, 3000, "hook-a.example.com");
    changed.ttl_secs = None;
    let later = NOW.saturating_add_secs(10);
    let again = store.upsert_funnel(&changed, later).await.unwrap();
    assert_eq!(again.id, first.id, "same node and port: same funnel");
    assert_eq!(again.created_at, NOW);
    assert_eq!(again.funnel, changed);
    let err = store
        .upsert_funnel(&funnel(b.id, 8080, "hook-a.example.com"), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what } if what.contains("hostname")),
        "{err}"
    );
    store
        .upsert_funnel(&funnel(a.id, 8080, "hook-a2.example.com"), NOW)
        .await
        .unwrap();
    let all: Vec<(NodeId, u16)> = store
        .list_funnels()
        .await
        .unwrap()
        .iter()
        .map(|f| (f.funnel.node_id, f.funnel.port))
        .collect();
    assert_eq!(all, [(a.id, 3000), (a.id, 8080)]);
    let ports: Vec<u16> = store
        .funnels_of_node(a.id)
        .await
        .unwrap()
        .iter()
        .map(|f| f.funnel.port)
        .collect();
    assert_eq!(ports, [3000, 8080]);
    assert_eq!(
        store
            .funnel_by_hostname("hook-a2.example.com")
            .await
            .unwrap()
            .unwrap()
            .funnel
            .port,
        8080
    );
    // TCP funnels hold a unique public port.
    let mut tcp = funnel(a.id, 22, "ssh-a.example.com");
    tcp.protocol = FunnelProtocol::Tcp;
    tcp.public_port = Some(20_001);
    tcp.gates = Vec::new();
    tcp.rate_limit = None;
    tcp.expires_at = None;
    tcp.ttl_secs = None;
    let stored = store.upsert_funnel(&tcp, NOW).await.unwrap();
    assert_eq!(stored.funnel, tcp);
    let mut clash = funnel(b.id, 23, "ssh-b.example.com");
    clash.public_port = Some(20_001);
    let err = store.upsert_funnel(&clash, NOW).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what } if what.contains("public_port")),
        "{err}"
    );
    // Closing keeps the row (the hostname stays reserved) and only works once, and only
    // for the opening it names.
    assert!(
        store
            .close_funnel_opened_at(a.id, 22, NOW.saturating_add_secs(1))
            .await
            .is_err()
    );
    let closed = store.close_funnel_opened_at(a.id, 22, NOW).await.unwrap();
    assert!(!closed.funnel.is_open);
    assert!(store.close_funnel(a.id, 22).await.is_err());
    assert!(
        !store
            .funnel_by_hostname("ssh-a.example.com")
            .await
            .unwrap()
            .unwrap()
            .funnel
            .is_open
    );
    assert!(store.close_funnel(a.id, 8080).await.unwrap().funnel.port == 8080);
    store.delete_funnel(a.id, 8080).await.unwrap();
    assert!(store.delete_funnel(a.id, 8080).await.is_err());
    store.delete_node(a.id).await.unwrap();
    assert_eq!(
        store
            .funnel_by_hostname("hook-a.example.com")
            .await
            .unwrap(),
        None
    );
}

pub async fn registry_gives_unique_names_and_stable_addresses(fresh: &Fresh) {
    let registry = Registry::open(open(fresh).await, "example.ts.net.")
        .await
        .unwrap();
    assert_eq!(registry.tailnet_domain(), "example.ts.net");
    let owner = user(registry.store(), "alice@example.com").await;
    let ula = registry.ula_prefix();
    let mut names = Vec::new();
    let mut v4s = HashSet::new();
    let mut v6s = HashSet::new();
    for (n, hostname) in [(1, "Laptop.local"), (2, "laptop"), (3, "LAPTOP!"), (4, "")] {
        let node = registry
            .register(&registration(n, hostname, owner), NOW)
            .await
            .unwrap();
        assert!(
            ipnet::Ipv4Net::new("100.64.0.0".parse().unwrap(), 10)
                .unwrap()
                .contains(&node.ipv4)
        );
        assert!(ula.contains(&node.ipv6));
        assert_eq!(node.ipv6, addresses::ipv6_for(ula, node.ipv4));
        assert!(v4s.insert(node.ipv4) && v6s.insert(node.ipv6));
        names.push(node.name);
    }
    assert_eq!(names, ["laptop", "laptop-2", "laptop-3", "node"]);
    assert_eq!(registry.fqdn("laptop-2"), "laptop-2.example.ts.net");

    // The same machine registering again keeps id, name and addresses; only the key moves.
    let before = registry
        .store()
        .node_by_machine_key(&machine(2))
        .await
        .unwrap()
        .unwrap();
    let mut again = registration(2, "renamed-host", owner);
    again.node_key = node_key(77);
    let after = registry.register(&again, NOW).await.unwrap();
    assert_eq!(
        (after.id, &after.name, after.ipv4, after.ipv6),
        (before.id, &before.name, before.ipv4, before.ipv6)
    );
    assert_eq!(after.node_key, node_key(77));

    // A deleted node's addresses are free again, and nobody live shares one.
    registry.delete(before.id).await.unwrap();
    let fresh_node = registry
        .register(&registration(9, "laptop", owner), NOW)
        .await
        .unwrap();
    assert_eq!(fresh_node.name, "laptop-2", "the freed name is reused");
    let live: Vec<IpAddr> = registry
        .store()
        .list_nodes()
        .await
        .unwrap()
        .iter()
        .map(|n| IpAddr::V4(n.ipv4))
        .collect();
    assert_eq!(live.len(), live.iter().collect::<HashSet<_>>().len());
}

pub async fn concurrent_registrations_never_share_a_name_or_address(fresh: &Fresh) {
    let registry = Registry::open(open(fresh).await, "example.ts.net")
        .await
        .unwrap();
    let owner = user(registry.store(), "alice@example.com").await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..24u8 {
        let registry = registry.clone();
        tasks.spawn(async move {
            registry
                .register(&registration(n, "worker", owner), NOW)
                .await
        });
    }
    let mut names = HashSet::new();
    let mut v4s = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let node = result.unwrap().unwrap();
        assert!(
            names.insert(node.name.clone()),
            "name {} handed out twice",
            node.name
        );
        assert!(
            v4s.insert(node.ipv4),
            "address {} handed out twice",
            node.ipv4
        );
    }
    assert_eq!(names.len(), 24);
    assert!(
        names.contains("worker") && names.contains("worker-24"),
        "{names:?}"
    );
}

pub async fn registry_renames_tags_and_deletes(fresh: &Fresh) {
    let registry = Registry::open(open(fresh).await, "example.ts.net")
        .await
        .unwrap();
    let owner = user(registry.store(), "alice@example.com").await;
    let a = registry
        .register(&registration(1, "alpha", owner), NOW)
        .await
        .unwrap();
    let b = registry
        .register(&registration(2, "beta", owner), NOW)
        .await
        .unwrap();

    assert_eq!(registry.rename(a.id, "web-1").await.unwrap().name, "web-1");
    assert_eq!(
        registry.rename(a.id, "web-1").await.unwrap().name,
        "web-1",
        "idempotent"
    );
    let err = registry.rename(b.id, "web-1").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the name \"web-1\" is taken by another node; pick another or rename that node first"
    );
    let err = registry.rename(b.id, "Web Server").await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::InvalidName { suggestion, .. } if suggestion == "web-server"),
        "{err}"
    );
    assert!(matches!(
        registry.rename(NodeId(999), "x").await,
        Err(RegistryError::UnknownNode(_))
    ));

    let tags = vec![
        "tag:db".to_owned(),
        "tag:prod".to_owned(),
        "tag:db".to_owned(),
    ];
    assert_eq!(
        registry.set_tags(b.id, &tags).await.unwrap().tags,
        ["tag:db", "tag:prod"]
    );
    assert!(matches!(
        registry.set_tags(b.id, &["prod".to_owned()]).await,
        Err(RegistryError::InvalidTag { .. })
    ));
    let mut tagged = registration(3, "gamma", owner);
    tagged.tags = vec!["nope".into()];
    assert!(matches!(
        registry.register(&tagged, NOW).await,
        Err(RegistryError::InvalidTag { .. })
    ));

    registry.delete(a.id).await.unwrap();
    assert!(matches!(
        registry.delete(a.id).await,
        Err(RegistryError::UnknownNode(_))
    ));
    assert_eq!(registry.store().list_nodes().await.unwrap().len(), 1);
}

pub async fn everything_survives_a_reopen(fresh: &Fresh) {
    let store = open(fresh).await;
    let registry = Registry::open(store.clone(), "example.ts.net")
        .await
        .unwrap();
    let ula = registry.ula_prefix();
    let owner = user(&store, "alice@example.com").await;
    let node = registry
        .register(&registration(1, "keeper", owner), NOW)
        .await
        .unwrap();
    store
        .append_audit(&NewAuditRecord {
            at_ms: 1,
            actor: "test".into(),
            action: "node.register".into(),
            target: node.id.to_string(),
            source_addr: None,
            details: serde_json::json!({}),
        })
        .await
        .unwrap();
    store.close().await;

    // Reopening runs the migrations again (a no-op) and finds everything.
    let reopened = Registry::open(open(fresh).await, "example.ts.net")
        .await
        .unwrap();
    assert_eq!(
        reopened.ula_prefix(),
        ula,
        "the ULA prefix is generated once per tailnet"
    );
    assert_eq!(reopened.store().node(node.id).await.unwrap(), Some(node));
    assert_eq!(reopened.store().audit_after(0, 10).await.unwrap().len(), 1);
}
