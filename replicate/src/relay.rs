//! A TCP relay that makes a loopback connection behave like a long, slow,
//! lossy or partitioned link: `twinfs relay`, used by the fault campaign,
//! the latency tests and benchmarks, and by hand.
//!
//! The kernel of the machines this runs on may have no netem, so the link is
//! emulated in user space. Each connection accepted on the listening address
//! is joined to a new connection to the target; each direction is a *delay
//! line*: bytes are read as soon as they arrive, stamped with the time they
//! are due at the other end (arrival + delay + jitter, never earlier than the
//! bytes before them, so the stream is never reordered), held, and written
//! when due. What a real link does to TCP is modelled as what TCP then shows
//! the application:
//!
//! - **latency and jitter**: the delay line. A round trip costs twice the
//!   one-way delay (and up to a millisecond or so more each way: the timer
//!   has a 1 ms grain; without delay the relay adds no timer at all).
//! - **bandwidth**: a token bucket per direction, shared by the connections.
//! - **packet loss**: TCP retransmits a lost segment after a timeout, so a
//!   loss is a *stall* of the direction for [`STALL`] (Linux's minimum RTO),
//!   with the probability given per chunk read ([`CHUNK_BYTES`] at most).
//! - **resets**: with a probability per chunk, or on command, the connection
//!   is closed abortively (RST to both ends), as a NAT or firewall that drops
//!   its state does.
//! - **partitions**, one-way or two-way: bytes in a blocked direction are held
//!   (up to the buffer; then the sender's socket fills and it blocks) and
//!   delivered after `heal`, as TCP's retransmissions deliver them once the
//!   path is back; application timeouts see the silence. While any direction
//!   is blocked, new connections are accepted but not joined to the target
//!   until the partition heals (a SYN that gets no answer).
//!
//! What is in flight in one direction is bounded by the buffer (default
//! [`DEFAULT_BUFFER_BYTES`]): the relay itself never limits throughput below
//! buffer / delay, which covers the bandwidth-delay product of a 50 ms link
//! at well over 1 GB/s. On a real long link the kernel's TCP window
//! (`net.ipv4.tcp_wmem` / `tcp_rmem`) must cover it too.
//!
//! The relay is controlled at run time through a line protocol on a control
//! address (see [`Control::execute`] for the commands); every change applies
//! to bytes read after it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

/// Most bytes read from a socket at a time: the unit of loss and reset
/// probabilities.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How long a lost chunk holds its direction up: Linux's minimum TCP
/// retransmission timeout.
pub const STALL: Duration = Duration::from_millis(200);
/// Default bound of the bytes held in one direction of one connection.
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
/// How long joining a connection to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest delay or jitter accepted (one way).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Longest control command line.
pub const MAX_CONTROL_LINE_BYTES: usize = 1024;

/// One direction of the relayed connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    /// From the side that connected to the relay to the target (for a
    /// mirror: source to peer).
    Forward,
    /// From the target back (peer to source).
    Reverse,
}

impl Way {
    pub fn name(self) -> &'static str {
        match self {
            Way::Forward => "forward",
            Way::Reverse => "reverse",
        }
    }
}

/// What the link does to the bytes; changeable while the relay runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way latency added to every byte.
    pub delay: Duration,
    /// A further delay, uniform in `0..=jitter`, drawn per chunk.
    pub jitter: Duration,
    /// Bytes per second in each direction; `None`: unlimited.
    pub rate_bytes_per_sec: Option<u64>,
    /// Probability per chunk that the direction stalls for [`STALL`].
    pub loss: f64,
    /// Probability per chunk that the connection is reset.
    pub cut: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bytes_per_sec: None,
            loss: 0.0,
            cut: 0.0,
        }
    }
}

impl LinkConfig {
    /// Checks the ranges: delays up to [`MAX_DELAY`], probabilities in 0..=1,
    /// a rate above zero.
    pub fn check(&self) -> Result<(), String> {
        if self.delay > MAX_DELAY || self.jitter > MAX_DELAY {
            return Err(format!("delay and jitter are at most {MAX_DELAY:?}"));
        }
        for (name, p) in [("loss", self.loss), ("cut", self.cut)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} is a probability between 0 and 1, not {p}"));
            }
        }
        if self.rate_bytes_per_sec == Some(0) {
            return Err("a rate must be above zero (use `off` for no limit)".into());
        }
        Ok(())
    }
}

/// The link's state: its configuration and which directions are cut off.
#[derive(Clone, Debug, Default)]
struct LinkState {
    cfg: LinkConfig,
    blocked_forward: bool,
    blocked_reverse: bool,
}

impl LinkState {
    fn blocked(&self, way: Way) -> bool {
        match way {
            Way::Forward => self.blocked_forward,
            Way::Reverse => self.blocked_reverse,
        }
    }

    fn partitioned(&self) -> bool {
        self.blocked_forward || self.blocked_reverse
    }
}

/// Counters since the relay started.
#[derive(Default)]
pub struct RelayStats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// Connections reset (on command or by `cut`).
    pub resets: AtomicU64,
    /// Connections that waited for a partition to heal before being joined.
    pub held_connections: AtomicU64,
    pub forward_bytes: AtomicU64,
    pub reverse_bytes: AtomicU64,
    /// Chunks that stalled (`loss`).
    pub stalls: AtomicU64,
    /// Partitions started (`partition` commands that blocked something new).
    pub partitions: AtomicU64,
}

impl RelayStats {
    /// The counters as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": g(&self.connections),
            "active": g(&self.active),
            "resets": g(&self.resets),
            "held_connections": g(&self.held_connections),
            "forward_bytes": g(&self.forward_bytes),
            "reverse_bytes": g(&self.reverse_bytes),
            "stalls": g(&self.stalls),
            "partitions": g(&self.partitions),
        })
    }
}

struct Shared {
    target: String,
    buffer_bytes: usize,
    state: watch::Sender<LinkState>,
    stats: RelayStats,
    rng: Mutex<StdRng>,
    /// Per direction: when the token bucket lets the next byte go.
    next_free: Mutex<HashMap<Way, Instant>>,
    /// Reset signals of the live connections, by connection number.
    live: Mutex<HashMap<u64, watch::Sender<bool>>>,
}

/// A handle to change a running relay's link (cheap to clone).
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// Replaces the link configuration.
    pub fn set_config(&self, cfg: LinkConfig) -> Result<(), String> {
        cfg.check()?;
        self.shared.state.send_modify(|s| s.cfg = cfg);
        Ok(())
    }

    pub fn config(&self) -> LinkConfig {
        self.shared.state.borrow().cfg.clone()
    }

    /// Blocks the given directions (adding to those already blocked).
    pub fn partition(&self, forward: bool, reverse: bool) {
        let mut new = false;
        self.shared.state.send_modify(|s| {
            new = (forward && !s.blocked_forward) || (reverse && !s.blocked_reverse);
            s.blocked_forward |= forward;
            s.blocked_reverse |= reverse;
        });
        if new {
            self.shared.stats.partitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unblocks both directions: held bytes and connections go on.
    pub fn heal(&self) {
        self.shared.state.send_modify(|s| {
            s.blocked_forward = false;
            s.blocked_reverse = false;
        });
    }

    /// Resets every live connection now; returns how many.
    pub fn reset_all(&self) -> usize {
        let live = self.shared.live.lock();
        for tx in live.values() {
            let _ = tx.send(true);
        }
        live.len()
    }

    pub fn stats(&self) -> &RelayStats {
        &self.shared.stats
    }

    /// Runs one control command and returns the reply line (without newline):
    ///
    /// | command | effect |
    /// | --- | --- |
    /// | `delay MS [JITTER_MS]` | one-way delay (and jitter) of both directions |
    /// | `rate BYTES_PER_SEC` / `rate off` | bandwidth of each direction (K, M, G suffixes) |
    /// | `loss P` | probability per chunk of a [`STALL`] |
    /// | `cut P` | probability per chunk of a connection reset |
    /// | `partition forward\|reverse\|both` | block a direction (or both) |
    /// | `heal` | unblock both directions |
    /// | `reset` | reset every live connection now |
    /// | `clear` | no delay, jitter, rate limit, loss or cut; healed |
    /// | `show` | the configuration, as JSON |
    /// | `stats` | the counters, as JSON |
    ///
    /// Replies start with `ok` or `error:`.
    pub fn execute(&self, line: &str) -> String {
        match self.try_execute(line) {
            Ok(reply) if reply.is_empty() => "ok".into(),
            Ok(reply) => format!("ok {reply}"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn try_execute(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: &str| -> Result<Duration, String> {
            w.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{w:?} is not a number of milliseconds"))
        };
        let prob = |w: &str| -> Result<f64, String> {
            w.parse::<f64>()
                .map_err(|_| format!("{w:?} is not a probability"))
        };
        let mut cfg = self.config();
        match words.as_slice() {
            ["delay", d] => cfg.delay = ms(d)?,
            ["delay", d, j] => {
                cfg.delay = ms(d)?;
                cfg.jitter = ms(j)?;
            }
            ["rate", "off"] => cfg.rate_bytes_per_sec = None,
            ["rate", r] => cfg.rate_bytes_per_sec = Some(parse_rate(r)?),
            ["loss", p] => cfg.loss = prob(p)?,
            ["cut", p] => cfg.cut = prob(p)?,
            ["partition", way] => {
                let (f, r) = match *way {
                    "forward" => (true, false),
                    "reverse" => (false, true),
                    "both" => (true, true),
                    other => {
                        return Err(format!("partition {other:?}: say forward, reverse or both"))
                    }
                };
                self.partition(f, r);
                return Ok(String::new());
            }
            ["heal"] => {
                self.heal();
                return Ok(String::new());
            }
            ["reset"] => return Ok(format!("{}", self.reset_all())),
            ["clear"] => {
                self.heal();
                cfg = LinkConfig::default();
            }
            ["show"] => return Ok(self.show().to_string()),
            ["stats"] => return Ok(self.stats().json().to_string()),
            _ => return Err(format!("unknown command {line:?}")),
        }
        self.set_config(cfg)?;
        Ok(String::new())
    }

    /// The configuration and partition state as JSON.
    pub fn show(&self) -> serde_json::Value {
        let s = self.shared.state.borrow().clone();
        serde_json::json!({
            "delay_ms": s.cfg.delay.as_millis() as u64,
            "jitter_ms": s.cfg.jitter.as_millis() as u64,
            "rate_bytes_per_sec": s.cfg.rate_bytes_per_sec,
            "loss": s.cfg.loss,
            "cut": s.cfg.cut,
            "blocked_forward": s.blocked_forward,
            "blocked_reverse": s.blocked_reverse,
        })
    }
}

/// `1000`, `64K`, `10M`, `1G` (powers of 1024) bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate in bytes per second (e.g. 500K, 10M)"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("rate {s:?} must be above zero and fit in 64 bits"))?;
    Ok(bytes)
}

/// A bound relay, ready to [`Relay::run`].
pub struct Relay {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Relay {
    /// Listens on `listen`; every accepted connection is joined to `target`
    /// (`HOST:PORT`) through the link `cfg`. `seed` drives jitter, loss and
    /// cut, so a run can be repeated.
    pub async fn bind(
        listen: &str,
        target: &str,
        cfg: LinkConfig,
        buffer_bytes: usize,
        seed: u64,
    ) -> std::io::Result<Relay> {
        cfg.check().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(listen).await?;
        let (state, _) = watch::channel(LinkState {
            cfg,
            ..Default::default()
        });
        Ok(Relay {
            listener,
            shared: Arc::new(Shared {
                target: target.to_string(),
                buffer_bytes: buffer_bytes.max(CHUNK_BYTES),
                state,
                stats: RelayStats::default(),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                next_free: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// Accepts and relays connections until the task is dropped.
    pub async fn run(self) -> std::io::Result<()> {
        let mut number = 0u64;
        loop {
            let (client, from) = self.listener.accept().await?;
            number += 1;
            let shared = self.shared.clone();
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                shared.stats.active.fetch_add(1, Ordering::Relaxed);
                let (reset_tx, reset_rx) = watch::channel(false);
                shared.live.lock().insert(number, reset_tx);
                match connection(&shared, client, reset_rx).await {
                    Ok(()) => log::debug!("relay: connection {number} from {from} closed"),
                    Err(e) => log::info!("relay: connection {number} from {from}: {e}"),
                }
                shared.live.lock().remove(&number);
                shared.stats.active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// Serves the control protocol on `listener` until the task is dropped: one
/// command per line, one reply line each.
pub async fn serve_control(listener: TcpListener, control: Control) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let control = control.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = if line.len() > MAX_CONTROL_LINE_BYTES {
                    "error: command too long".to_string()
                } else {
                    control.execute(&line)
                };
                log::info!("relay control: {line} -> {reply}");
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Stops [`run_blocking`] from another thread (e.g. a signal handler).
#[derive(Clone, Default)]
pub struct Stopper(Arc<tokio::sync::Notify>);

impl Stopper {
    pub fn new() -> Stopper {
        Stopper::default()
    }

    /// Makes `run_blocking` return (now, or as soon as it starts).
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

/// Where a relay listens and relays to, and its link.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// `HOST:PORT` to accept connections on.
    pub listen: String,
    /// `HOST:PORT` to relay each connection to.
    pub target: String,
    /// `HOST:PORT` of the control port, if any.
    pub control: Option<String>,
    pub link: LinkConfig,
    /// Bound of each direction's delay line.
    pub buffer_bytes: usize,
    /// Seed of the jitter, loss and cut draws.
    pub seed: u64,
}

/// Runs a relay, and its control port if asked, on a runtime of its own
/// until `stopper` says stop. `ready` gets the addresses bound (the
/// relay's, the control port's) once both listen.
pub fn run_blocking(
    opts: RelayOptions,
    ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    stopper: Stopper,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("twinfs-relay")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let relay = Relay::bind(
            &opts.listen,
            &opts.target,
            opts.link,
            opts.buffer_bytes,
            opts.seed,
        )
        .await?;
        let ctl = match &opts.control {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        ready(
            relay.local_addr()?,
            ctl.as_ref().map(|l| l.local_addr()).transpose()?,
        );
        let control = relay.control();
        let control_task = async move {
            match ctl {
                Some(l) => serve_control(l, control).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = relay.run() => r,
            r = control_task => r,
            _ = stopper.0.notified() => Ok(()),
        }
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// How a relayed connection ended.
#[derive(Debug)]
enum End {
    /// Both directions ended with a clean close.
    Closed,
    /// Reset on command, by `cut`, or after an error on one side.
    Reset(String),
}

async fn connection(
    shared: &Arc<Shared>,
    mut client: TcpStream,
    mut reset: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // A partition holds new connections until it heals.
    let mut state = shared.state.subscribe();
    if state.borrow().partitioned() {
        shared
            .stats
            .held_connections
            .fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() || !state.borrow().partitioned() {
                        break;
                    }
                }
                _ = reset.changed() => {
                    abort(&client);
                    return Ok(());
                }
            }
        }
    }
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&shared.target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                abort(&client);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("connecting to {}: {e}", shared.target),
                ));
            }
            Err(_) => {
                abort(&client);
                return Err(std::io::Error::other(format!(
                    "connecting to {} timed out",
                    shared.target
                )));
            }
        };
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let end = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let both = first_reset(
            direction(shared, Way::Forward, cr, uw),
            direction(shared, Way::Reverse, ur, cw),
        );
        tokio::select! {
            end = both => end,
            _ = reset.changed() => End::Reset("reset on command".into()),
        }
    };
    match end {
        End::Closed => Ok(()),
        End::Reset(why) => {
            shared.stats.resets.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            abort(&upstream);
            Err(std::io::Error::other(why))
        }
    }
}

/// Makes the socket's close send a RST instead of a FIN.
fn abort(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// One chunk in a delay line: its bytes (empty: the sender closed) and when
/// it is due at the other end.
struct Chunk {
    data: Vec<u8>,
    due: Instant,
}

/// Relays one direction until it closes cleanly or something resets it.
async fn direction<R, W>(shared: &Arc<Shared>, way: Way, mut from: R, mut to: W) -> End
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let room = Semaphore::new(shared.buffer_bytes);
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let reader = async {
        let mut last_due = Instant::now();
        loop {
            // Room in the line first: a full line stops reading, so the
            // sender's socket fills and it blocks, as on a slow link.
            let Ok(permit) = room.acquire_many(CHUNK_BYTES as u32).await else {
                return End::Reset("relay stopped".into());
            };
            permit.forget();
            let mut buf = vec![0u8; CHUNK_BYTES];
            let n = match from.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return End::Reset(format!("{} read: {e}", way.name())),
            };
            room.add_permits(CHUNK_BYTES - n);
            buf.truncate(n);
            let cfg = shared.state.borrow().cfg.clone();
            let jitter = if cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                let us = shared
                    .rng
                    .lock()
                    .gen_range(0..=cfg.jitter.as_micros() as u64);
                Duration::from_micros(us)
            };
            let due = (Instant::now() + cfg.delay + jitter).max(last_due);
            last_due = due;
            let closed = n == 0;
            if tx.send(Chunk { data: buf, due }).is_err() || closed {
                return End::Closed;
            }
        }
    };
    let writer = async {
        let mut state = shared.state.subscribe();
        while let Some(chunk) = rx.recv().await {
            // The timer has a 1 ms grain: a chunk already due goes at once
            // (with no delay the relay adds no latency of its own).
            if chunk.due > Instant::now() {
                tokio::time::sleep_until(chunk.due).await;
            }
            // A blocked direction holds its bytes until healed.
            while state.borrow_and_update().blocked(way) {
                if state.changed().await.is_err() {
                    return End::Reset("relay stopped".into());
                }
            }
            let len = chunk.data.len();
            if len == 0 {
                return match to.shutdown().await {
                    Ok(()) => End::Closed,
                    Err(e) => End::Reset(format!("{} close: {e}", way.name())),
                };
            }
            let cfg = state.borrow().cfg.clone();
            let (lost, cut) = {
                let mut rng = shared.rng.lock();
                (rng.gen_bool(cfg.loss), rng.gen_bool(cfg.cut))
            };
            if cut {
                return End::Reset(format!("{} cut (probability {})", way.name(), cfg.cut));
            }
            if lost {
                shared.stats.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(STALL).await;
            }
            if let Some(rate) = cfg.rate_bytes_per_sec {
                let start = {
                    let mut nf = shared.next_free.lock();
                    let slot = nf.entry(way).or_insert_with(Instant::now);
                    let start = (*slot).max(Instant::now());
                    *slot = start + Duration::from_secs_f64(len as f64 / rate as f64);
                    *slot
                };
                tokio::time::sleep_until(start).await;
            }
            if let Err(e) = to.write_all(&chunk.data).await {
                return End::Reset(format!("{} write: {e}", way.name()));
            }
            let counter = match way {
                Way::Forward => &shared.stats.forward_bytes,
                Way::Reverse => &shared.stats.reverse_bytes,
            };
            counter.fetch_add(len as u64, Ordering::Relaxed);
            room.add_permits(len);
        }
        End::Closed
    };
    first_reset(reader, writer).await
}

/// Runs both until both closed cleanly, or until the first reset (which
/// drops the other: a half that waits for bytes that will never come must
/// not keep a reset connection open).
async fn first_reset(
    a: impl std::future::Future<Output = End>,
    b: impl std::future::Future<Output = End>,
) -> End {
    tokio::pin!(a);
    tokio::pin!(b);
    tokio::select! {
        end = &mut a => match end {
            End::Closed => b.await,
            reset => reset,
        },
        end = &mut b => match end {
            End::Closed => a.await,
            reset => reset,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_suffixes_and_refuse_zero() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("64K"), Ok(64 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("1g"), Ok(1 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[tokio::test]
    async fn control_commands_change_the_link_and_report_errors() {
        let relay = Relay::bind("127.0.0.1:0", "127.0.0.1:9", LinkConfig::default(), 0, 1)
            .await
            .expect("bind");
        let c = relay.control();
        assert_eq!(c.execute("delay 25 5"), "ok");
        assert_eq!(c.execute("rate 10M"), "ok");
        assert_eq!(c.execute("loss 0.01"), "ok");
        assert_eq!(c.execute("cut 0.5"), "ok");
        let cfg = c.config();
        assert_eq!(cfg.delay, Duration::from_millis(25));
        assert_eq!(cfg.jitter, Duration::from_millis(5));
        assert_eq!(cfg.rate_bytes_per_sec, Some(10 << 20));
        assert_eq!((cfg.loss, cfg.cut), (0.01, 0.5));
        assert!(c.execute("loss 2").starts_with("error: "));
        assert!(c.execute("partition sideways").starts_with("error: "));
        assert!(c.execute("fly").starts_with("error: "));
        assert_eq!(c.execute("partition forward"), "ok");
        assert_eq!(c.show()["blocked_forward"], true);
        assert_eq!(c.show()["blocked_reverse"], false);
        assert_eq!(c.execute("clear"), "ok");
        assert_eq!(c.config(), LinkConfig::default());
        assert_eq!(c.show()["blocked_forward"], false);
        assert_eq!(c.stats().partitions.load(Ordering::Relaxed), 1);
    }
}
