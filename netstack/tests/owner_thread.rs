//! A netstack whose owner runs on a thread of its own (`OwnerThread::Dedicated`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig, OwnerThread};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dedicated(v4: &str) -> NetstackConfig {
    let mut config = NetstackConfig::new([v4.parse::<IpAddr>().unwrap()]);
    config.owner_thread = OwnerThread::Dedicated;
    config
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn count(name: &str) -> usize {
    thread_names().iter().filter(|n| *n == name).count()
}

/// Waits (outside any runtime) until `cond` holds, for at most 5 s.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// Created outside any runtime, the two stacks run on their own threads; a connection's
/// bytes are copied by tasks on those threads' runtimes ([`Netstack::runtime`]); when the
/// stacks are dropped their threads end.
#[test]
fn a_dedicated_stack_needs_no_runtime_and_its_thread_ends_with_it() {
    let before = count("netstack");
    let (a, seam_a) = Netstack::new(dedicated("100.64.0.1")).unwrap();
    let (b, seam_b) = Netstack::new(dedicated("100.64.0.2")).unwrap();
    // A new thread takes its name once it runs, which may be a moment after it exists.
    eventually("both stacks' threads", || count("netstack") == before + 2);

    // The wire's pump tasks run on a's runtime: no runtime of the test's own.
    let wire = {
        let _runtime = a.runtime().enter();
        MemoryWire::connect(seam_a, seam_b, Impairment::none())
    };
    let listener = b.listen_tcp(7).unwrap();
    let server = b.runtime().spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        stream.write_all(&received).await.unwrap();
        stream.shutdown().await.unwrap();
        std::thread::current().name().map(str::to_owned)
    });
    let remote = SocketAddr::new("100.64.0.2".parse().unwrap(), 7);
    let connector = a.clone();
    let client = a.runtime().spawn(async move {
        let mut stream = connector.connect_tcp(remote).await.unwrap();
        let sent = transfer::pattern(3 << 20, 7);
        stream.write_all(&sent).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).await.unwrap();
        (
            echoed == sent,
            std::thread::current().name().map(str::to_owned),
        )
    });
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, server) = waiter.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            (client.await.unwrap(), server.await.unwrap())
        })
        .await
        .expect("the echo took too long")
    });
    assert!(client.0, "the echo differs from what was sent");
    assert_eq!(client.1.as_deref(), Some("netstack"));
    assert_eq!(server.as_deref(), Some("netstack"));

    drop(wire);
    drop((a, b));
    eventually("the stacks' threads to end", || count("netstack") == before);
}
