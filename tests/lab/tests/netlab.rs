//! The NAT lab behaves like the internet it simulates. Needs root (as CI runs).

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use postern_lab::delay::DelayProtocol;
use postern_lab::netlab::{Host, LinkFault, NatKind, NatLab, NatLabConfig};

fn lab(config: NatLabConfig) -> NatLab {
    NatLab::start(config).unwrap_or_else(|e| panic!("NatLab::start failed: {e}"))
}

/// A TCP server on `host:port` that answers each connection with the peer address it saw.
fn tcp_banner(lab: &NatLab, host: Host, port: u16) {
    let addr = SocketAddr::from((host.addr(), port));
    let listener = lab
        .run_in(host, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let peer = stream.peer_addr().unwrap();
            let _ = stream.write_all(peer.to_string().as_bytes());
        }
    });
}

/// Connects from `from` to `to`; Some(what the server saw as our address) or None.
fn tcp_try(lab: &NatLab, from: Host, to: SocketAddr) -> Option<String> {
    lab.run_in(from, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_millis(700)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut seen = String::new();
        stream.read_to_string(&mut seen).ok()?;
        Some(seen)
    })
    .unwrap()
}

/// A UDP reflector on `host:port`: answers every datagram with the sender address it saw.
fn udp_reflector(lab: &NatLab, host: Host, port: u16) {
    let addr = SocketAddr::from((host.addr(), port));
    let socket = lab
        .run_in(host, move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(from.to_string().as_bytes(), from);
        }
    });
}

/// A UDP socket bound on `host` (to `port`, 0 = any).
fn udp_socket(lab: &NatLab, host: Host, port: u16) -> UdpSocket {
    let socket = lab
        .run_in(host, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    socket
}

/// Asks the reflector at `server` what our address looks like from there.
fn reflect(socket: &UdpSocket, server: SocketAddr) -> Option<String> {
    socket.send_to(b"probe", server).unwrap();
    let mut buf = [0u8; 2048];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn ping(lab: &NatLab, from: Host, to: Host) -> bool {
    lab.try_output(from, &["ping", "-c1", "-W1", &to.addr().to_string()])
        .unwrap()
        .status
        .success()
}

#[test]
fn homes_reach_out_but_nothing_reaches_in() {
    let lab = lab(NatLabConfig::default());
    for host in [Host::Coord, Host::Relay, Host::HomeA, Host::HomeB] {
        tcp_banner(&lab, host, 8080);
    }
    let at = |host: Host| SocketAddr::from((host.addr(), 8080));

    // Both homes reach the public hosts, seen from the router's WAN address.
    let seen = tcp_try(&lab, Host::HomeA, at(Host::Coord)).expect("homeA -> coord TCP");
    assert!(seen.starts_with("198.18.0.101:"), "coord saw {seen}");
    let seen = tcp_try(&lab, Host::HomeB, at(Host::Relay)).expect("homeB -> relay TCP");
    assert!(seen.starts_with("198.18.0.102:"), "relay saw {seen}");
    assert!(tcp_try(&lab, Host::HomeB, at(Host::Coord)).is_some());
    assert!(
        ping(&lab, Host::HomeA, Host::Ingress),
        "homeA -> ingress ICMP"
    );
    // Public hosts reach each other directly.
    let seen = tcp_try(&lab, Host::Relay, at(Host::Coord)).expect("relay -> coord TCP");
    assert!(seen.starts_with("198.18.0.20:"), "coord saw {seen}");

    // Nothing reaches a home unsolicited: no route ...
    assert_eq!(tcp_try(&lab, Host::Coord, at(Host::HomeA)), None);
    // ... and not even with a route through the router's WAN address (forward policy drop).
    lab.output(
        Host::Coord,
        &["ip", "route", "add", "198.19.1.0/24", "via", "198.18.0.101"],
    )
    .unwrap();
    assert_eq!(tcp_try(&lab, Host::Coord, at(Host::HomeA)), None);
    assert!(!ping(&lab, Host::Coord, Host::HomeA));
    // No port forward on the router itself.
    assert_eq!(tcp_try(&lab, Host::Coord, at(Host::RouterA)), None);

    // The homes cannot reach each other directly, nor the other router.
    assert_eq!(tcp_try(&lab, Host::HomeA, at(Host::HomeB)), None);
    assert!(!ping(&lab, Host::HomeA, Host::HomeB));
    assert_eq!(tcp_try(&lab, Host::HomeA, at(Host::RouterB)), None);
    assert_eq!(tcp_try(&lab, Host::HomeB, at(Host::HomeA)), None);

    // Machines on the same home LAN see each other (bridge netfilter is off).
    let seen = tcp_try(&lab, Host::HomeA2, at(Host::HomeA)).expect("homeA2 -> homeA on the LAN");
    assert!(seen.starts_with("198.19.1.11:"), "homeA saw {seen}");
}

#[test]
fn easy_nat_maps_endpoint_independently_and_hard_nat_does_not() {
    let lab = lab(NatLabConfig {
        home_a: NatKind::Easy,
        home_b: NatKind::Hard,
        ipv6: false,
    });
    udp_reflector(&lab, Host::Coord, 3478);
    udp_reflector(&lab, Host::Relay, 3478);
    let coord = SocketAddr::from((Host::Coord.addr(), 3478));
    let relay = SocketAddr::from((Host::Relay.addr(), 3478));

    let a = udp_socket(&lab, Host::HomeA, 41000);
    let a_coord = reflect(&a, coord).expect("homeA -> coord UDP");
    let a_relay = reflect(&a, relay).expect("homeA -> relay UDP");
    assert!(a_coord.starts_with("198.18.0.101:"), "{a_coord}");
    assert_eq!(
        a_coord, a_relay,
        "easy NAT must keep one mapping per socket"
    );

    let b = udp_socket(&lab, Host::HomeB, 41000);
    let b_coord = reflect(&b, coord).expect("homeB -> coord UDP");
    let b_relay = reflect(&b, relay).expect("homeB -> relay UDP");
    assert!(b_coord.starts_with("198.18.0.102:"), "{b_coord}");
    assert_ne!(b_coord, b_relay, "hard NAT must map per destination");

    // A third party sending to homeA's open mapping is filtered (address-dependent filtering).
    let mapped: SocketAddr = a_coord.parse().unwrap();
    let stranger = udp_socket(&lab, Host::Relay, 0);
    stranger.send_to(b"unsolicited", mapped).unwrap();
    let mut buf = [0u8; 64];
    a.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        a.recv_from(&mut buf).is_err(),
        "homeA received unsolicited UDP from the relay"
    );
}

#[test]
fn link_faults_drop_packets_and_flushing_forgets_mappings() {
    let lab = lab(NatLabConfig::default());
    udp_reflector(&lab, Host::Coord, 3478);
    let coord = SocketAddr::from((Host::Coord.addr(), 3478));
    let socket = udp_socket(&lab, Host::HomeA, 0);

    // Count echoes of 200 datagrams.
    let echoes = |socket: &UdpSocket| -> usize {
        for i in 0..200u32 {
            // A drop in the postrouting hook fails the send itself (EPERM): that is a loss too.
            let _ = socket.send_to(&i.to_be_bytes(), coord);
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 64];
        let mut n = 0;
        while socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(echoes(&socket), 200, "clean link loses nothing");

    lab.set_link_fault(Host::HomeA, LinkFault::DropUdp).unwrap();
    assert_eq!(echoes(&socket), 0, "DropUdp must drop every datagram");
    tcp_banner(&lab, Host::Coord, 8080);
    assert!(
        tcp_try(
            &lab,
            Host::HomeA,
            SocketAddr::from((Host::Coord.addr(), 8080))
        )
        .is_some(),
        "DropUdp must leave TCP alone"
    );

    // 30% each way: about half come back; bounds far outside any plausible variance.
    lab.set_link_fault(Host::RouterA, LinkFault::Loss { percent: 30 })
        .unwrap();
    lab.clear_link_fault(Host::HomeA).unwrap();
    let got = echoes(&socket);
    assert!(
        (20..=180).contains(&got),
        "30% loss each way gave {got}/200"
    );

    lab.set_link_fault(Host::RouterA, LinkFault::DropAll)
        .unwrap();
    assert!(
        !ping(&lab, Host::HomeA, Host::Coord),
        "DropAll must cut ICMP"
    );
    lab.clear_link_fault(Host::RouterA).unwrap();
    assert_eq!(echoes(&socket), 200, "clearing the fault restores the link");
    assert!(
        lab.set_link_fault(Host::HomeA, LinkFault::Loss { percent: 101 })
            .is_err()
    );

    // Flushing conntrack on the router forgets the mapping: the coord's next datagram to
    // homeA's public endpoint is dropped, although it would pass before the flush.
    let server = udp_socket(&lab, Host::Coord, 3479);
    let home = udp_socket(&lab, Host::HomeA, 0);
    let mut buf = [0u8; 64];
    home.send_to(b"hello", (Host::Coord.addr(), 3479)).unwrap();
    let (_, public) = server.recv_from(&mut buf).unwrap();
    assert_eq!(public.ip(), Host::RouterA.addr());
    server.send_to(b"reply-1", public).unwrap();
    assert!(home.recv_from(&mut buf).is_ok(), "reply before the flush");
    lab.flush_nat_mappings(Host::RouterA).unwrap();
    server.send_to(b"reply-2", public).unwrap();
    home.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(home.recv_from(&mut buf).is_err(), "reply after the flush");
    assert!(lab.flush_nat_mappings(Host::Coord).is_err());
}

/// A UDP and a TCP echo server on coord.
fn echo_servers(lab: &NatLab, port: u16) {
    let addr = SocketAddr::from((Host::Coord.addr(), port));
    udp_reflector(lab, Host::Coord, port);
    let listener = lab
        .run_in(Host::Coord, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn udp_round_trip(lab: &NatLab, from: Host, to: SocketAddr) -> Duration {
    let socket = udp_socket(lab, from, 0);
    let start = Instant::now();
    assert!(reflect(&socket, to).is_some(), "no UDP answer via {to}");
    start.elapsed()
}

#[test]
fn delay_forwarder_adds_latency() {
    let lab = lab(NatLabConfig::default());
    echo_servers(&lab, 7000);
    let delay = Duration::from_millis(150);
    let target = SocketAddr::from((Host::Coord.addr(), 7000));

    // UDP through a forwarder on the relay: at least two delays per round trip.
    let udp = lab
        .delay_forwarder(
            Host::Relay,
            DelayProtocol::Udp,
            SocketAddr::from((Host::Relay.addr(), 7100)),
            target,
            delay,
        )
        .unwrap();
    let rtt = udp_round_trip(&lab, Host::HomeA, udp.local_addr());
    assert!(rtt >= 2 * delay, "UDP round trip {rtt:?} < 2 x {delay:?}");

    // TCP likewise, bytes intact.
    let tcp = lab
        .delay_forwarder(
            Host::Relay,
            DelayProtocol::Tcp,
            SocketAddr::from((Host::Relay.addr(), 7101)),
            target,
            delay,
        )
        .unwrap();
    let to = tcp.local_addr();
    let (echoed, rtt) = lab
        .run_in(Host::HomeA, move || {
            let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let start = Instant::now();
            stream.write_all(b"through the delay").unwrap();
            let mut buf = [0u8; 17];
            stream.read_exact(&mut buf).unwrap();
            (buf.to_vec(), start.elapsed())
        })
        .unwrap();
    assert_eq!(echoed, b"through the delay");
    assert!(rtt >= 2 * delay, "TCP round trip {rtt:?} < 2 x {delay:?}");
    drop(udp);
    drop(tcp);

    // The same forwarder as a program spawned in a namespace.
    let _forwarder = lab
        .spawn(
            Host::Relay,
            &[
                env!("CARGO_BIN_EXE_postern-lab-delay"),
                "udp",
                "198.18.0.20:7200",
                "198.18.0.10:7000",
                "150",
            ],
        )
        .unwrap();
    let via = SocketAddr::from((Host::Relay.addr(), 7200));
    let socket = udp_socket(&lab, Host::HomeB, 0);
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Wait for it to bind (bounded), then measure one clean round trip.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reflect(&socket, via).is_none() {
        assert!(
            Instant::now() < deadline,
            "postern-lab-delay never answered"
        );
    }
    let rtt = udp_round_trip(&lab, Host::HomeB, via);
    assert!(
        rtt >= 2 * delay,
        "program round trip {rtt:?} < 2 x {delay:?}"
    );
}

/// `delay_home_udp`: a home's flow to one remote endpoint is late by the delay each way,
/// the remote sees the home's NAT address and port as without it, and the home sees the
/// replies come from the remote's address.
#[test]
fn a_delayed_home_flow_keeps_its_addresses_and_is_late_both_ways() {
    let lab = lab(NatLabConfig::default());
    udp_reflector(&lab, Host::Coord, 3478);
    let coord = SocketAddr::from((Host::Coord.addr(), 3478));
    let delay = Duration::from_millis(100);
    let _delayed = lab
        .delay_home_udp(Host::RouterA, 41641, coord, delay)
        .unwrap();
    let socket = udp_socket(&lab, Host::HomeA, 41641);
    let start = Instant::now();
    socket.send_to(b"late", coord).unwrap();
    let mut buf = [0u8; 128];
    let (len, from) = socket.recv_from(&mut buf).unwrap();
    let rtt = start.elapsed();
    assert!(rtt >= 2 * delay, "round trip {rtt:?} < 2 x {delay:?}");
    assert_eq!(from, coord, "the reply must seem to come from the remote");
    let seen = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert_eq!(
        seen,
        format!("{}:41641", Host::RouterA.addr()),
        "the remote must see the NAT's address and the home's port"
    );
    // Another port of the same home is not delayed.
    let other = udp_socket(&lab, Host::HomeA, 0);
    let rtt = udp_round_trip_on(&other, coord);
    assert!(rtt < delay, "an undelayed flow took {rtt:?}");
    assert!(
        lab.delay_home_udp(Host::HomeA, 41641, coord, delay)
            .is_err(),
        "only routers can delay a home's flow"
    );
}

fn udp_round_trip_on(socket: &UdpSocket, to: SocketAddr) -> Duration {
    let start = Instant::now();
    socket.send_to(b"x", to).unwrap();
    let mut buf = [0u8; 128];
    socket.recv_from(&mut buf).unwrap();
    start.elapsed()
}

#[test]
fn drop_kills_processes_and_deletes_namespaces() {
    let lab = lab(NatLabConfig::default());
    let sleeper = lab.spawn(Host::HomeB, &["sleep", "600"]).unwrap();
    let pid = sleeper.pid();
    std::mem::forget(sleeper); // the lab alone must clean up
    let names: Vec<String> = Host::ALL
        .iter()
        .map(|h| lab.namespace(*h).to_owned())
        .collect();
    for name in &names {
        assert!(std::path::Path::new("/run/netns").join(name).exists());
    }
    drop(lab);
    for name in &names {
        assert!(
            !std::path::Path::new("/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
    // The killed sleeper is our zombie child until reaped; it must not be running.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "sleep {pid} still running: {stat}"
    );
}

#[test]
fn sweep_removes_namespaces_of_dead_test_processes() {
    // A pid that does not exist, from the top of the pid space.
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = (1..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    // The counter part carries our own pid, so parallel runs of this test never collide.
    let name = format!("pl{dead}x{}-stale", std::process::id());
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(status.success(), "ip netns add {name}");
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    postern_lab::netns::sweep_stale_namespaces();

    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "stale {name} not swept"
    );
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the sleeper inside was not killed");
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = names.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = lab(NatLabConfig::default());
        let _sleeper = lab.spawn(Host::Coord, &["sleep", "600"]).unwrap();
        *seen.lock().unwrap() = Host::ALL
            .iter()
            .map(|h| lab.namespace(*h).to_owned())
            .collect();
        panic!("the test fails while the lab runs");
    });
    assert!(result.is_err());
    let names = names.lock().unwrap();
    assert_eq!(names.len(), Host::ALL.len());
    for name in names.iter() {
        assert!(
            !std::path::Path::new("/run/netns").join(name).exists(),
            "{name} survived the panic"
        );
    }
}

/// Both homes learn their public endpoint from a reflector on coord (same socket), then
/// spray datagrams at each other's endpoint for two seconds. Returns whether A heard B and
/// whether B heard A.
fn hole_punch(lab: &NatLab) -> (bool, bool) {
    udp_reflector(lab, Host::Coord, 3478);
    let coord = SocketAddr::from((Host::Coord.addr(), 3478));
    let a = udp_socket(lab, Host::HomeA, 44000);
    let b = udp_socket(lab, Host::HomeB, 44000);
    let a_public: SocketAddr = reflect(&a, coord).unwrap().parse().unwrap();
    let b_public: SocketAddr = reflect(&b, coord).unwrap().parse().unwrap();
    let spray = |socket: UdpSocket, peer: SocketAddr| {
        std::thread::spawn(move || {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut heard = false;
            let mut buf = [0u8; 64];
            while Instant::now() < deadline {
                let _ = socket.send_to(b"punch", peer);
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    heard |= &buf[..n] == b"punch" && from == peer;
                }
            }
            heard
        })
    };
    let a_heard = spray(a, b_public);
    let b_heard = spray(b, a_public);
    (a_heard.join().unwrap(), b_heard.join().unwrap())
}

#[test]
fn hole_punching_works_between_easy_nats_but_not_with_a_hard_one() {
    let easy = lab(NatLabConfig {
        home_a: NatKind::Easy,
        home_b: NatKind::Easy,
        ipv6: false,
    });
    assert_eq!(hole_punch(&easy), (true, true), "easy <-> easy must punch");
    drop(easy);
    let mixed = lab(NatLabConfig::default());
    assert_eq!(
        hole_punch(&mixed),
        (false, false),
        "easy <-> hard must need a relay"
    );
}
