//! How a [`Netstack`](crate::Netstack) is set up: its addresses, MTU, buffer sizes and limits.

use std::net::IpAddr;
use std::time::Duration;

use crate::coalesce::MAX_COALESCED_LEN;
use crate::error::NetstackError;

/// Largest TCP receive or send buffer smoltcp accepts (its window scale tops out at 1 GiB).
const MAX_TCP_BUFFER: usize = 1 << 30;
/// The longest acknowledgement delay accepted (RFC 9293: an ACK must not wait longer).
const MAX_ACK_DELAY: Duration = Duration::from_millis(500);
/// The longest pacing horizon accepted (a longer one is a burst, not pacing).
const MAX_PACING_HORIZON: Duration = Duration::from_millis(100);

/// The environment variable [`NetstackConfig::apply_env`] reads to turn TCP pacing on
/// (`on`: [`TcpPacing::default`]) or off (`off`), overriding the configured setting. `on`
/// may be followed by settings that replace the defaults, for tuning:
/// `on,ss=200,ca=120,horizon_us=1000` (the fields of [`TcpPacing`]).
pub const TCP_PACING_ENV: &str = "POSTERN_TCP_PACING";

/// The environment variable [`NetstackConfig::apply_env`] reads to turn receive coalescing
/// ([`NetstackConfig::receive_coalescing`]) off (`off`) or on (`on`: up to 65,535 bytes, or
/// a number of bytes), overriding the configured setting: for measuring its effect with the
/// same binary.
pub const RECEIVE_COALESCING_ENV: &str = "POSTERN_RECEIVE_COALESCING";

/// The environment variable [`NetstackConfig::apply_env`] reads to choose where the stack's
/// owner runs ([`NetstackConfig::owner_thread`]): `dedicated` (a thread of its own) or
/// `shared` (a task on the caller's runtime), overriding the configured setting.
pub const OWNER_THREAD_ENV: &str = "POSTERN_NETSTACK_THREAD";

/// The settings of one [`Netstack`](crate::Netstack).
///
/// Start from [`NetstackConfig::new`] with the node's tailnet addresses and change the
/// fields you need; [`Netstack::new`](crate::Netstack::new) checks them and says which one is
/// wrong.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetstackConfig {
    /// The node's own addresses: at most one IPv4 and one IPv6 address, each a unicast
    /// address. Packets to other destinations are dropped (and counted).
    pub addresses: Vec<IpAddr>,
    /// The IP MTU of the tunnel, in bytes (1280 to 65535; WireGuard's usual is 1420).
    /// TCP segments are sized to fit it and larger UDP datagrams are refused.
    pub mtu: usize,
    /// Receive buffer of each TCP connection, in bytes. This is the largest window the
    /// stack advertises, so it should cover the bandwidth-delay product (1 to 4 MiB).
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP connection, in bytes (bytes written but not yet acknowledged).
    pub tcp_tx_buffer: usize,
    /// Closed TCP sockets kept, with their buffers, for the next connection (0 keeps
    /// none). Allocating a connection's buffers means zeroing `tcp_rx_buffer +
    /// tcp_tx_buffer` bytes (4 MiB at the defaults), which dominates the cost of short
    /// connections such as one request each; a kept socket is reset and reused instead.
    /// Memory held while idle: up to this many times both buffers.
    pub tcp_spare_sockets: usize,
    /// Payload bytes buffered per UDP socket, in each direction.
    pub udp_buffer: usize,
    /// Datagrams buffered per UDP socket, in each direction.
    pub udp_datagrams: usize,
    /// Capacity, in packet batches, of each of the two seam channels.
    pub seam_capacity: usize,
    /// How many outbound packets the stack holds while the engine is not taking them.
    /// When that many wait, TCP stops sending (no packet is lost) until the engine catches up.
    pub outbound_queue: usize,
    /// Connections a listener holds in handshake or waiting for `accept` before it refuses
    /// new ones with RST.
    pub listen_backlog: usize,
    /// How long [`Netstack::connect_tcp`](crate::Netstack::connect_tcp) waits for the peer's
    /// answer before giving up.
    pub connect_timeout: Duration,
    /// How long an inbound handshake may stay half-open before it is dropped.
    pub handshake_timeout: Duration,
    /// How long a dropped [`TcpStream`](crate::TcpStream) may linger to finish its close
    /// while the peer says nothing, before it is aborted with RST.
    pub orphan_linger: Duration,
    /// The TCP congestion controller of every connection.
    pub congestion_control: CongestionControl,
    /// How long a receiver may hold back an acknowledgement (`None`: acknowledge every
    /// segment at once). With a delay, a receiver acknowledges every second full-sized
    /// segment at once (RFC 9293) and a lone segment after this long, which halves the
    /// acknowledgements a bulk transfer sends, each one a packet to encrypt and decrypt
    /// on the mesh. The congestion controllers count acknowledged bytes, not ACKs
    /// (`third_party/smoltcp/PATCHES.md`), so the sender's window grows as fast either
    /// way. At most 500 ms (RFC 9293's bound). Default `None`: with 1 ms, the HTTP funnel
    /// benchmark before connection pooling (32
    /// concurrent short connections over the mesh) showed requests waiting about 1 s (a
    /// retransmission timeout) that in-memory tests do not reproduce; until that is
    /// understood, every segment is acknowledged at once.
    pub ack_delay: Option<Duration>,
    /// Pacing of every TCP connection's sender (`None`: off, the default). Off, a sender
    /// sends everything its windows allow the moment an ACK opens them, so a bulk transfer
    /// leaves in window-sized bursts, which the engine sends as GSO batches of up to 64
    /// datagrams; a peer that reads one datagram per system call from a small socket buffer
    /// (the stock wireguard-go) drops the tail of each burst. With pacing, data segments
    /// leave spread over the round trip at about the congestion window per round trip
    /// times a gain ([`TcpPacing`]). `third_party/smoltcp/PATCHES.md` (patch 8) describes
    /// the mechanism, `docs/benchmarks.md` the measurements.
    pub tcp_pacing: Option<TcpPacing>,
    /// Join consecutive in-order TCP data segments of one connection that arrive in the
    /// same inbound batch into one segment of up to this many bytes of IP packet before
    /// smoltcp processes them (receive coalescing, as Linux's GRO; `None`: off). smoltcp
    /// then copies the run into the socket once and acknowledges it with one ACK instead
    /// of one per segment, which saves a packet to encrypt, send and decrypt per segment
    /// on the way back. Only segments whose headers agree in everything but the sequence
    /// number and lengths are joined, so nothing the receiver would act on is lost (the
    /// `coalesce` module source lists the rules). At least twice the MTU, at most 65,535
    /// (the largest IPv4 packet). Default `Some(65535)`; `None` turns it off.
    pub receive_coalescing: Option<usize>,
    /// Verify IP, TCP and UDP checksums of inbound packets (bad ones are dropped and counted).
    /// Packets that come out of WireGuard are already authenticated, so an engine that only
    /// feeds decrypted packets may turn this off to save one pass over every payload.
    pub verify_checksums: bool,
    /// Where the task that owns the stack runs; see [`OwnerThread`]. Default
    /// [`OwnerThread::Shared`].
    pub owner_thread: OwnerThread,
}

/// Where a [`Netstack`](crate::Netstack)'s owner task runs ([`NetstackConfig::owner_thread`]).
///
/// A packet crosses several tasks on its way through a tunnel: the engine's (UDP and
/// WireGuard), the stack's owner (TCP), and the task that copies a connection's bytes to or
/// from a kernel socket. On a multi-threaded runtime each hand-off between them can be a
/// wake-up of another thread, and on a machine with few cores those wake-ups, not the
/// work, are what limits a bulk transfer. [`OwnerThread::Dedicated`] gives the stack a
/// thread of its own, the one worker of a runtime that the other hot tasks can join
/// ([`Netstack::runtime`](crate::Netstack::runtime)), so the whole data path runs on one
/// thread and hands off without waking anyone (benchmarks.md, run 14: about 10 % more
/// throughput for a TCP funnel over the mesh on two cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OwnerThread {
    /// The owner is a task on the runtime that called
    /// [`Netstack::new`](crate::Netstack::new), which must exist.
    #[default]
    Shared,
    /// The owner runs on a thread of its own (named `netstack`): the one worker of a
    /// runtime that lives as long as the stack (a second thread, `netstack-keeper`, only
    /// waits to shut it down). When the stack stops, both threads end and the tasks still
    /// on the runtime are dropped. A one-worker multi-threaded runtime, not a
    /// current-thread one: a task it wakes runs next, which keeps a hand-off hot.
    Dedicated,
}

/// How the stack's TCP senders pace their data segments ([`NetstackConfig::tcp_pacing`]).
///
/// The pacing rate is the congestion window (or the peer's window, if smaller) per smoothed
/// round trip times a gain. A data segment may leave when its paced send time is at most
/// [`horizon`](Self::horizon) away, so each turn of the stack sends about a horizon's worth
/// at the pacing rate, and the stack's timer wakes it for the next. ACKs, handshakes and
/// closes are never held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpPacing {
    /// The gain while the congestion window is below half the slow-start threshold, in
    /// percent (100 to 1000; default 200, Linux's): the window doubles each round trip then,
    /// so the rate must run ahead of it.
    pub slow_start_percent: u32,
    /// The gain after slow start, in percent (100 to 1000; default 120, Linux's).
    pub congestion_avoidance_percent: u32,
    /// How far ahead of its paced time a segment may leave (more than zero, at most
    /// 100 ms; default 1 ms, the granularity of tokio's timer that wakes the stack). A
    /// horizon shorter than the timer's granularity caps the rate below the pacing rate
    /// whenever no ACK wakes the stack in between.
    pub horizon: Duration,
}

impl Default for TcpPacing {
    /// Linux's gains (200 % in slow start, 120 % after) and a 1 ms horizon.
    fn default() -> Self {
        Self {
            slow_start_percent: 200,
            congestion_avoidance_percent: 120,
            horizon: Duration::from_millis(1),
        }
    }
}

/// TCP congestion control used by the stack's connections.
///
/// CUBIC is the default, and the right choice for a tunnel's inner TCP: the tunnel (a
/// WireGuard UDP flow) has no congestion control of its own, so these connections are the
/// only thing that backs off when a home uplink is congested. Random loss (a bad Wi-Fi or
/// mobile link) looks the same as congestion to it and caps throughput at about
/// `1.22 * MSS / (RTT * sqrt(loss rate))`: measured over an in-memory wire losing 5 % each
/// way with 25 ms each way, 8 MiB moved at 135 KB/s with CUBIC, 112 KB/s with Reno, and
/// `None` did far worse (it floods the lossy path with its whole 2 MiB window and recovers
/// by timeouts). The loss recovery itself (SACK, see the crate docs) wastes almost nothing:
/// the bytes sent again were 1.07 times the bytes lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CongestionControl {
    /// No congestion control: send as much as the peer's window allows. Fastest on a
    /// lossless path, unfair and lossy on a real network.
    None,
    /// TCP Reno.
    Reno,
    /// TCP CUBIC, as Linux uses by default.
    Cubic,
}

impl NetstackConfig {
    /// Settings for a stack that owns `addresses`, with defaults for everything else:
    /// MTU 1420, 2 MiB TCP buffers each way, 4 spare TCP sockets, CUBIC, no TCP pacing,
    /// receive coalescing up to 64 KiB, checksums verified.
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            addresses: addresses.into_iter().collect(),
            mtu: 1420,
            tcp_rx_buffer: 2 << 20,
            tcp_tx_buffer: 2 << 20,
            tcp_spare_sockets: 4,
            udp_buffer: 256 << 10,
            udp_datagrams: 256,
            seam_capacity: 256,
            outbound_queue: 1024,
            listen_backlog: 128,
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            orphan_linger: Duration::from_secs(60),
            congestion_control: CongestionControl::Cubic,
            ack_delay: None,
            tcp_pacing: None,
            receive_coalescing: Some(MAX_COALESCED_LEN),
            verify_checksums: true,
            owner_thread: OwnerThread::Shared,
        }
    }

    /// Applies the settings the environment overrides: [`TCP_PACING_ENV`]
    /// (`POSTERN_TCP_PACING=on` or `off`), [`RECEIVE_COALESCING_ENV`]
    /// (`POSTERN_RECEIVE_COALESCING=on`, `off` or a size in bytes) and [`OWNER_THREAD_ENV`]
    /// (`POSTERN_NETSTACK_THREAD=dedicated` or `shared`); an unset variable leaves
    /// its setting as it is. Call it where a program builds its stack's configuration, so
    /// benchmarks can switch these without a new flag. Fails if a variable holds anything
    /// else.
    pub fn apply_env(&mut self) -> Result<(), NetstackError> {
        if let Some(value) = env_value(TCP_PACING_ENV)? {
            self.tcp_pacing = parse_pacing_switch(&value)?;
        }
        if let Some(value) = env_value(RECEIVE_COALESCING_ENV)? {
            self.receive_coalescing = parse_coalescing_switch(&value)?;
        }
        if let Some(value) = env_value(OWNER_THREAD_ENV)? {
            self.owner_thread = parse_owner_thread(&value)?;
        }
        Ok(())
    }

    /// Checks every field; the error names the field and the accepted range.
    pub(crate) fn validate(&self) -> Result<(), NetstackError> {
        let invalid = |what: String| Err(NetstackError::InvalidConfig(what));
        if self.addresses.is_empty() {
            return invalid("`addresses` is empty: give the stack at least one address".into());
        }
        if let Some(delay) = self.ack_delay
            && delay > MAX_ACK_DELAY
        {
            return invalid(format!(
                "`ack_delay` is {delay:?}; it must be at most {MAX_ACK_DELAY:?} (or None)"
            ));
        }
        if let Some(pacing) = self.tcp_pacing {
            for (name, percent) in [
                ("slow_start_percent", pacing.slow_start_percent),
                (
                    "congestion_avoidance_percent",
                    pacing.congestion_avoidance_percent,
                ),
            ] {
                if !(100..=1000).contains(&percent) {
                    return invalid(format!(
                        "`tcp_pacing.{name}` is {percent}; it must be 100 to 1000"
                    ));
                }
            }
            if pacing.horizon.is_zero() || pacing.horizon > MAX_PACING_HORIZON {
                return invalid(format!(
                    "`tcp_pacing.horizon` is {:?}; it must be more than zero and at most {MAX_PACING_HORIZON:?}",
                    pacing.horizon
                ));
            }
        }
        let least = (2 * self.mtu).min(MAX_COALESCED_LEN);
        if let Some(len) = self.receive_coalescing
            && !(least..=MAX_COALESCED_LEN).contains(&len)
        {
            return invalid(format!(
                "`receive_coalescing` is {len} bytes; it must be at least twice the MTU ({least}) and at most {MAX_COALESCED_LEN} (or None)"
            ));
        }
        let v4 = self.addresses.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.addresses.len() - v4;
        if v4 > 1 || v6 > 1 {
            return invalid(format!(
                "`addresses` has {v4} IPv4 and {v6} IPv6 addresses; at most one of each is supported"
            ));
        }
        for addr in &self.addresses {
            if addr.is_unspecified() || addr.is_multicast() || is_broadcast(addr) {
                return invalid(format!("address {addr} is not a unicast address"));
            }
        }
        if !(1280..=65535).contains(&self.mtu) {
            return invalid(format!("`mtu` is {}; it must be 1280 to 65535", self.mtu));
        }
        for (name, size) in [
            ("tcp_rx_buffer", self.tcp_rx_buffer),
            ("tcp_tx_buffer", self.tcp_tx_buffer),
        ] {
            if !(4096..=MAX_TCP_BUFFER).contains(&size) {
                return invalid(format!(
                    "`{name}` is {size} bytes; it must be 4 KiB to 1 GiB"
                ));
            }
        }
        if self.udp_buffer < self.mtu {
            return invalid(format!(
                "`udp_buffer` is {} bytes; it must hold at least one MTU ({} bytes)",
                self.udp_buffer, self.mtu
            ));
        }
        for (name, count) in [
            ("udp_datagrams", self.udp_datagrams),
            ("seam_capacity", self.seam_capacity),
            ("outbound_queue", self.outbound_queue),
            ("listen_backlog", self.listen_backlog),
        ] {
            if count == 0 {
                return invalid(format!("`{name}` is 0; it must be at least 1"));
            }
        }
        for (name, time) in [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("orphan_linger", self.orphan_linger),
        ] {
            if time.is_zero() {
                return invalid(format!("`{name}` is zero; it must be positive"));
            }
        }
        Ok(())
    }

    /// The stack's IPv4 address, if it has one.
    pub(crate) fn ipv4(&self) -> Option<IpAddr> {
        self.addresses.iter().copied().find(IpAddr::is_ipv4)
    }

    /// The stack's IPv6 address, if it has one.
    pub(crate) fn ipv6(&self) -> Option<IpAddr> {
        self.addresses.iter().copied().find(IpAddr::is_ipv6)
    }

    /// The stack's own address of the same family as `remote`.
    pub(crate) fn source_for(&self, remote: IpAddr) -> Option<IpAddr> {
        if remote.is_ipv4() {
            self.ipv4()
        } else {
            self.ipv6()
        }
    }
}

/// The value of the environment variable `name`, if it is set.
fn env_value(name: &str) -> Result<Option<String>, NetstackError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(NetstackError::InvalidConfig(format!(
            "{name} is not valid UTF-8; set it to `on` or `off`"
        ))),
    }
}

/// Reads an [`OWNER_THREAD_ENV`] value: `dedicated` or `shared`.
fn parse_owner_thread(value: &str) -> Result<OwnerThread, NetstackError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "dedicated" => Ok(OwnerThread::Dedicated),
        "shared" => Ok(OwnerThread::Shared),
        _ => Err(NetstackError::InvalidConfig(format!(
            "{OWNER_THREAD_ENV} is `{value}`: set it to `dedicated` or `shared`"
        ))),
    }
}

/// Reads a [`RECEIVE_COALESCING_ENV`] value: `off`, `on` (the largest size) or a size in
/// bytes (checked with the rest of the configuration).
fn parse_coalescing_switch(value: &str) -> Result<Option<usize>, NetstackError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "off" | "0" | "false" => Ok(None),
        "on" | "1" | "true" => Ok(Some(MAX_COALESCED_LEN)),
        other => other.parse().map(Some).map_err(|_| {
            NetstackError::InvalidConfig(format!(
                "{RECEIVE_COALESCING_ENV} is `{value}`: set it to `off`, `on`, or a size in bytes \
                 (e.g. `32768`)"
            ))
        }),
    }
}

/// Reads a [`TCP_PACING_ENV`] value: `off` is none, `on` is [`TcpPacing::default`] with
/// the `key=value` settings that follow it, comma-separated, if any.
fn parse_pacing_switch(value: &str) -> Result<Option<TcpPacing>, NetstackError> {
    let wrong = |why: String| {
        NetstackError::InvalidConfig(format!(
            "{TCP_PACING_ENV} is `{value}`: {why}; set it to `off`, `on`, or e.g. \
             `on,ss=200,ca=120,horizon_us=1000`"
        ))
    };
    let lower = value.trim().to_ascii_lowercase();
    let mut parts = lower.split(',').map(str::trim);
    match parts.next() {
        Some("off" | "0" | "false") if parts.next().is_none() => return Ok(None),
        Some("off" | "0" | "false") => return Err(wrong("`off` takes no settings".into())),
        Some("on" | "1" | "true") => {}
        _ => return Err(wrong("it does not start with `on` or `off`".into())),
    }
    let mut pacing = TcpPacing::default();
    for part in parts {
        let (key, number) = part
            .split_once('=')
            .ok_or_else(|| wrong(format!("`{part}` is not key=value")))?;
        let number: u32 = number
            .parse()
            .map_err(|_| wrong(format!("`{number}` is not a whole number")))?;
        match key {
            "ss" => pacing.slow_start_percent = number,
            "ca" => pacing.congestion_avoidance_percent = number,
            "horizon_us" => pacing.horizon = Duration::from_micros(u64::from(number)),
            _ => return Err(wrong(format!("`{key}` is not ss, ca or horizon_us"))),
        }
    }
    Ok(Some(pacing))
}

fn is_broadcast(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config =
            NetstackConfig::new(["100.64.0.1".parse().unwrap(), "fd7a::1".parse().unwrap()]);
        config.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        config.mtu = 100;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`mtu` is 100"), "{err}");

        let config = NetstackConfig::new([]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`addresses` is empty"), "{err}");

        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        config.ack_delay = Some(Duration::from_secs(1));
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`ack_delay` is 1s; it must be at most 500ms"),
            "{err}"
        );

        let config = NetstackConfig::new(["0.0.0.0".parse().unwrap()]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("not a unicast address"), "{err}");

        let config =
            NetstackConfig::new(["100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap()]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("at most one of each"), "{err}");

        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        config.tcp_rx_buffer = 2 << 30;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`tcp_rx_buffer`"), "{err}");

        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        config.tcp_pacing = Some(TcpPacing {
            congestion_avoidance_percent: 50,
            ..TcpPacing::default()
        });
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`tcp_pacing.congestion_avoidance_percent` is 50; it must be 100 to 1000"),
            "{err}"
        );

        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        config.tcp_pacing = Some(TcpPacing {
            horizon: Duration::ZERO,
            ..TcpPacing::default()
        });
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`tcp_pacing.horizon` is 0ns"), "{err}");
    }

    #[test]
    fn pacing_is_off_by_default_and_its_default_is_valid() {
        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        assert_eq!(config.tcp_pacing, None);
        config.tcp_pacing = Some(TcpPacing::default());
        config.validate().unwrap();
    }

    #[test]
    fn pacing_switch_values() {
        assert_eq!(
            parse_pacing_switch("on").unwrap(),
            Some(TcpPacing::default())
        );
        assert_eq!(parse_pacing_switch(" OFF ").unwrap(), None);
        assert_eq!(
            parse_pacing_switch("on, ca=150,horizon_us=500").unwrap(),
            Some(TcpPacing {
                congestion_avoidance_percent: 150,
                horizon: Duration::from_micros(500),
                ..TcpPacing::default()
            })
        );
        for (value, why) in [
            ("fast", "it does not start with `on` or `off`"),
            ("off,ca=100", "`off` takes no settings"),
            ("on,ca", "`ca` is not key=value"),
            ("on,ca=x", "`x` is not a whole number"),
            ("on,gain=2", "`gain` is not ss, ca or horizon_us"),
        ] {
            let err = parse_pacing_switch(value).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "POSTERN_TCP_PACING is `{value}`: {why}; set it to"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn coalescing_is_on_by_default_and_its_bounds_are_checked() {
        let mut config = NetstackConfig::new(["100.64.0.1".parse().unwrap()]);
        assert_eq!(config.receive_coalescing, Some(MAX_COALESCED_LEN));
        config.receive_coalescing = Some(2 * config.mtu);
        config.validate().unwrap();
        config.receive_coalescing = None;
        config.validate().unwrap();
        config.receive_coalescing = Some(2000);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains(
                "`receive_coalescing` is 2000 bytes; it must be at least twice the MTU (2840) and at most 65535"
            ),
            "{err}"
        );
        // A huge MTU leaves nothing to join, but it is not an error.
        config.mtu = 65_535;
        config.receive_coalescing = Some(MAX_COALESCED_LEN);
        config.validate().unwrap();
    }

    #[test]
    fn owner_thread_switch_values() {
        assert_eq!(
            parse_owner_thread(" Dedicated ").unwrap(),
            OwnerThread::Dedicated
        );
        assert_eq!(parse_owner_thread("shared").unwrap(), OwnerThread::Shared);
        let err = parse_owner_thread("both").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid netstack configuration: POSTERN_NETSTACK_THREAD is `both`: set it to `dedicated` or `shared`"
        );
    }

    #[test]
    fn coalescing_switch_values() {
        assert_eq!(parse_coalescing_switch(" Off").unwrap(), None);
        assert_eq!(
            parse_coalescing_switch("on").unwrap(),
            Some(MAX_COALESCED_LEN)
        );
        assert_eq!(parse_coalescing_switch("32768").unwrap(), Some(32768));
        let err = parse_coalescing_switch("lots").unwrap_err().to_string();
        assert!(
            err.contains(
                "POSTERN_RECEIVE_COALESCING is `lots`: set it to `off`, `on`, or a size in bytes"
            ),
            "{err}"
        );
    }
}
