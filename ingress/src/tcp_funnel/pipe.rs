//! The byte pipe between a public client and a target, with an idle and a total timeout.
//!
//! [`PipeClock`] is the sans-IO part: it is told when bytes moved and answers when the pipe
//! must close. [`pipe`] is the thin shell: two copy loops (each half-closes its side when
//! its source ends) and a watchdog that sleeps until the clock's next deadline;
//! [`pipe_to_mesh`] is the same between a kernel socket and a stream of the mesh, without
//! the copy through a buffer of its own on the way in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::future::poll_fn;

use postern_netstack::TcpStream as MeshStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TcpLimits;

/// How a pipe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipeEnd {
    /// Both sides finished sending (each direction reached end of stream).
    Closed,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// The connection reached the total timeout.
    TotalTimeout,
    /// Reading or writing failed on either side (a reset, a broken pipe).
    IoError,
}

impl PipeEnd {
    /// The audit reason code: `closed`, `idle_timeout`, `total_timeout`, `io_error`.
    pub fn code(self) -> &'static str {
        match self {
            PipeEnd::Closed => "closed",
            PipeEnd::IdleTimeout => "idle_timeout",
            PipeEnd::TotalTimeout => "total_timeout",
            PipeEnd::IoError => "io_error",
        }
    }
}

/// What a finished pipe carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeOutcome {
    /// How it ended.
    pub end: PipeEnd,
    /// Bytes copied from the client to the target.
    pub bytes_from_client: u64,
    /// Bytes copied from the target to the client.
    pub bytes_to_client: u64,
}

/// The timeouts of one pipe, as a state machine: no clock is read inside.
///
/// Call [`PipeClock::handle_activity`] with the time bytes last moved, sleep until
/// [`PipeClock::poll_timeout`], then ask [`PipeClock::handle_timeout`] whether to close.
#[derive(Debug, Clone)]
pub struct PipeClock {
    started: Instant,
    last_activity: Instant,
    idle: Duration,
    total: Option<Duration>,
}

impl PipeClock {
    /// A clock for a connection accepted at `started`.
    pub fn new(started: Instant, limits: TcpLimits) -> Self {
        Self {
            started,
            last_activity: started,
            idle: limits.idle_timeout,
            total: limits.total_timeout,
        }
    }

    /// Bytes moved at `at` (earlier times than the last one seen are ignored).
    pub fn handle_activity(&mut self, at: Instant) {
        self.last_activity = self.last_activity.max(at);
    }

    /// The next instant at which the pipe may have to close.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let idle_at = self.last_activity + self.idle;
        match self.total {
            Some(total) => idle_at.min(self.started + total),
            None => idle_at,
        }
    }

    /// Whether the pipe must close at `now`, and why (the total bound wins when both are
    /// due).
    #[must_use]
    pub fn handle_timeout(&self, now: Instant) -> Option<PipeEnd> {
        if self.total.is_some_and(|total| now >= self.started + total) {
            Some(PipeEnd::TotalTimeout)
        } else if now >= self.last_activity + self.idle {
            Some(PipeEnd::IdleTimeout)
        } else {
            None
        }
    }
}

/// Copies bytes between `client` and `target` until both directions end, either side
/// fails, or a timeout of `limits` fires (counted from `started`). Returns how it ended and
/// the bytes each way; both streams are dropped (closed) on return.
pub async fn pipe<C, T>(client: C, target: T, limits: TcpLimits, started: Instant) -> PipeOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let counters = PipeCounters::default();
    let (client_read, client_write) = tokio::io::split(client);
    let (target_read, target_write) = tokio::io::split(target);
    let copies = async {
        tokio::try_join!(
            copy_half(
                client_read,
                target_write,
                &counters.from_client,
                &counters.activity,
                started
            ),
            copy_half(
                target_read,
                client_write,
                &counters.to_client,
                &counters.activity,
                started
            ),
        )
        .map(drop)
    };
    run(copies, &counters, limits, started).await
}

/// [`pipe`] between a client's kernel socket and a stream of the mesh (a TCP funnel over
/// the mesh): the client's bytes are read from the kernel straight into the mesh stream's
/// send buffer ([`MeshStream::poll_write_with`]), and the mesh's received bytes written
/// from its receive buffer straight into the kernel ([`MeshStream::poll_read_with`]): one
/// copy fewer per byte each way than through buffers of the pipe's own. On a bulk upload
/// that copy was 5 % of the stack thread's time. The client's socket is closed on
/// return; the mesh stream is the caller's to drop.
pub async fn pipe_to_mesh(
    client: TcpStream,
    mesh: &MeshStream,
    limits: TcpLimits,
    started: Instant,
) -> PipeOutcome {
    let counters = PipeCounters::default();
    let copies = async {
        tokio::try_join!(
            client_to_mesh(&client, mesh, &counters, started),
            mesh_to_client(mesh, &client, &counters, started),
        )
        .map(drop)
    };
    run(copies, &counters, limits, started).await
}

/// What a pipe's copies count while it runs.
#[derive(Debug, Default)]
struct PipeCounters {
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// Nanoseconds after `started` at which bytes last moved.
    activity: AtomicU64,
}

impl PipeCounters {
    fn moved(&self, direction: &AtomicU64, bytes: usize, started: Instant) {
        let moved_at = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.activity.fetch_max(moved_at, Ordering::Relaxed);
        direction.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Runs `copies` against the pipe's timeouts (a watchdog that sleeps until the
/// [`PipeClock`]'s next deadline).
async fn run(
    copies: impl std::future::Future<Output = std::io::Result<()>>,
    counters: &PipeCounters,
    limits: TcpLimits,
    started: Instant,
) -> PipeOutcome {
    let watchdog = async {
        let mut clock = PipeClock::new(started, limits);
        loop {
            tokio::time::sleep_until(clock.poll_timeout().into()).await;
            clock.handle_activity(
                started + Duration::from_nanos(counters.activity.load(Ordering::Relaxed)),
            );
            if let Some(end) = clock.handle_timeout(Instant::now()) {
                return end;
            }
        }
    };
    let end = tokio::select! {
        copied = copies => match copied {
            Ok(()) => PipeEnd::Closed,
            Err(_) => PipeEnd::IoError,
        },
        end = watchdog => end,
    };
    PipeOutcome {
        end,
        bytes_from_client: counters.from_client.load(Ordering::Relaxed),
        bytes_to_client: counters.to_client.load(Ordering::Relaxed),
    }
}

/// The client-to-mesh half of [`pipe_to_mesh`]: the kernel's bytes land in the mesh
/// stream's send buffer; the mesh's sending half closes when the client's ends.
async fn client_to_mesh(
    client: &TcpStream,
    mesh: &MeshStream,
    counters: &PipeCounters,
    started: Instant,
) -> std::io::Result<()> {
    loop {
        client.readable().await?;
        let read = poll_fn(|cx| mesh.poll_write_with(cx, |free| client.try_read(free))).await;
        match read {
            Ok(0) => return mesh.shutdown_write(),
            Ok(n) => counters.moved(&counters.from_client, n, started),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// The mesh-to-client half of [`pipe_to_mesh`]: the mesh stream's received bytes go from
/// its receive buffer straight into the client's kernel socket; the client's sending half
/// closes when the mesh's ends.
async fn mesh_to_client(
    mesh: &MeshStream,
    client: &TcpStream,
    counters: &PipeCounters,
    started: Instant,
) -> std::io::Result<()> {
    loop {
        client.writable().await?;
        let written = poll_fn(|cx| mesh.poll_read_with(cx, |data| client.try_write(data))).await;
        match written {
            Ok(0) => return socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write),
            Ok(n) => counters.moved(&counters.to_client, n, started),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// Copies one direction; half-closes `to` when `from` ends.
async fn copy_half<R, W>(
    mut from: R,
    mut to: W,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        let Some(chunk) = buffer.get(..n).filter(|chunk| !chunk.is_empty()) else {
            to.shutdown().await?;
            return Ok(());
        };
        let moved_at = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.fetch_max(moved_at, Ordering::Relaxed);
        to.write_all(chunk).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: u64, total: Option<u64>) -> TcpLimits {
        TcpLimits {
            idle_timeout: Duration::from_secs(idle),
            total_timeout: total.map(Duration::from_secs),
            ..TcpLimits::default()
        }
    }

    #[test]
    fn idle_deadline_moves_with_activity() {
        let t0 = Instant::now();
        let mut clock = PipeClock::new(t0, limits(10, None));
        assert_eq!(clock.poll_timeout(), t0 + Duration::from_secs(10));
        assert_eq!(clock.handle_timeout(t0 + Duration::from_secs(9)), None);
        clock.handle_activity(t0 + Duration::from_secs(9));
        clock.handle_activity(t0 + Duration::from_secs(3)); // stale report: ignored
        assert_eq!(clock.poll_timeout(), t0 + Duration::from_secs(19));
        assert_eq!(clock.handle_timeout(t0 + Duration::from_secs(10)), None);
        assert_eq!(
            clock.handle_timeout(t0 + Duration::from_secs(19)),
            Some(PipeEnd::IdleTimeout)
        );
    }

    #[test]
    fn total_bound_ends_a_busy_pipe() {
        let t0 = Instant::now();
        let mut clock = PipeClock::new(t0, limits(10, Some(25)));
        for second in 1..25 {
            clock.handle_activity(t0 + Duration::from_secs(second));
            assert_eq!(clock.handle_timeout(t0 + Duration::from_secs(second)), None);
        }
        assert_eq!(clock.poll_timeout(), t0 + Duration::from_secs(25));
        assert_eq!(
            clock.handle_timeout(t0 + Duration::from_secs(25)),
            Some(PipeEnd::TotalTimeout)
        );
    }

    #[tokio::test]
    async fn pipe_counts_bytes_and_half_closes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (target, mut target_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(pipe(client, target, limits(30, None), Instant::now()));
        client_peer.write_all(b"hello").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        target_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        target_peer.write_all(b"world!").await.unwrap();
        drop(target_peer);
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let outcome = task.await.unwrap();
        assert_eq!(outcome.end, PipeEnd::Closed);
        assert_eq!((outcome.bytes_from_client, outcome.bytes_to_client), (5, 6));
    }

    /// A kernel TCP client, `pipe_to_mesh`, and a stream between two userspace stacks joined
    /// in memory: megabytes each way arrive intact, each side's end reaches the other as a
    /// half-close, and the counts are the bytes that moved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_to_mesh_carries_both_ways_and_half_closes() {
        use postern_netstack::{Impairment, MemoryWire, Netstack, NetstackConfig};

        let config = |ip: &str| NetstackConfig::new([ip.parse::<std::net::IpAddr>().unwrap()]);
        let (edge, edge_seam) = Netstack::new(config("100.64.0.1")).unwrap();
        let (node, node_seam) = Netstack::new(config("100.64.0.2")).unwrap();
        let _wire = MemoryWire::connect(edge_seam, node_seam, Impairment::none());
        let target = node.listen_tcp(5000).unwrap();
        let mesh = edge
            .connect_tcp(([100, 64, 0, 2], 5000).into())
            .await
            .unwrap();
        let mut target = target.accept().await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let task = tokio::spawn(async move {
            pipe_to_mesh(accepted, &mesh, limits(30, None), Instant::now()).await
        });

        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (client_read, mut client_write) = client.split();
        let send_up = async {
            client_write.write_all(&up).await.unwrap();
            client_write.shutdown().await.unwrap();
        };
        let target_side = async {
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            target.write_all(&down).await.unwrap();
            target.shutdown().await.unwrap();
            got
        };
        let receive_down = async {
            let mut back = Vec::new();
            let mut client_read = client_read;
            client_read.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), got, back) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(send_up, target_side, receive_down)
        })
        .await
        .expect("the pipe stalled");
        assert!(
            got == up,
            "the upload arrived changed ({} bytes)",
            got.len()
        );
        assert!(
            back == down,
            "the download arrived changed ({} bytes)",
            back.len()
        );
        let outcome = task.await.unwrap();
        assert_eq!(outcome.end, PipeEnd::Closed);
        assert_eq!(
            (outcome.bytes_from_client, outcome.bytes_to_client),
            (3_000_000, 2_000_000)
        );
    }

    #[tokio::test]
    async fn silent_pipe_closes_on_idle() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (target, _target_peer) = tokio::io::duplex(64);
        let short = TcpLimits {
            idle_timeout: Duration::from_millis(200),
            ..TcpLimits::default()
        };
        let outcome = pipe(client, target, short, Instant::now()).await;
        assert_eq!(outcome.end, PipeEnd::IdleTimeout);
    }
}
