//! The peer daemon: a TCP listener that serves one source session at a time.
//!
//! Each connection runs the handshake (the source must prove a trusted static
//! key and the shared secret). Until then it holds nothing of the directory:
//! at most [`MAX_UNAUTHENTICATED`] connections (and [`MAX_UNAUTHENTICATED_PER_IP`]
//! from one address) may be in the handshake at once, each with a buffer of a
//! few KiB; when a new one arrives over either bound, one in the handshake (of
//! that address, or overall) is dropped to make room: the oldest of those that
//! have not yet sent their first two frames (a real source sends both at once,
//! right after connecting), else the oldest. One whose first frame does not
//! arrive within `FIRST_FRAME_TIMEOUT_MS` is dropped too. A flood of idle or
//! slow connections therefore costs bounded memory and does not keep a real
//! source out. Only an authenticated source
//! takes the directory's session lock; the first volume served binds the
//! directory, any other is refused naming both UUIDs, and one that arrives
//! while a session is active is refused with a reason. A session is three
//! tasks: a reader that
//! receives messages into a bounded queue, a blocking worker that owns the
//! [`Replica`] and answers them (grouping the transfers that have arrived into
//! one fdatasync and one cumulative `TransferAck`), and a writer that sends
//! the answers. Any error ends the session with a log line (and an `Error`
//! to the source when it can still hear it); the daemon keeps listening and
//! the source reconnects and resumes from the resume point.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex, OwnedMutexGuard};
use tokio::task::{AbortHandle, JoinSet};

use super::limits::PeerLimits;
use super::replica::{Flow, Judge, Replica, ReplicaView, SwitchoverRequest};
use super::{PeerError, Result};
use crate::error::ReplicateError;
use crate::handshake::{authenticate_source, Authenticated};
use crate::history::{self, DivergenceReport};
use crate::keys::Credentials;
use crate::message::{clip_reason, wire_lineage, Message};
use crate::session::Session;

/// Messages received but not yet handled (each at most one frame, so at most
/// `INBOUND_QUEUE_MESSAGES * MAX_FRAME_BYTES` = 128 MiB, typically a few MiB):
/// the bound on what a source can make the peer buffer.
pub const INBOUND_QUEUE_MESSAGES: usize = 8;
/// Answers not yet sent.
pub const OUTBOUND_QUEUE_MESSAGES: usize = 64;
/// Most transfer bytes appended before one fdatasync and acknowledgement.
pub const GROUP_COMMIT_MAX_BYTES: usize = 64 << 20;
/// A source that sends nothing (not even a `Ping`) for this long is gone.
pub const SOURCE_SILENCE_TIMEOUT_MS: u64 = 60_000;
/// How often the shutdown flag is polled (it may be set from a signal handler).
pub const SHUTDOWN_POLL_MS: u64 = 100;
/// Longest wait for sessions to end at shutdown.
pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Least time between two periodic writes of `status.json` during a session.
pub const STATUS_INTERVAL_MS: u64 = 2_000;
/// The peer sends a `Ping` when it has sent nothing for this long, so that a
/// source does not take a peer busy with a long job (a large commit, a deep
/// verify) for a dead one.
pub const KEEPALIVE_INTERVAL_MS: u64 = 4_000;

/// Connections in the handshake at once; a new one over the bound drops the oldest.
pub const MAX_UNAUTHENTICATED: usize = 128;
/// Connections from one address in the handshake at once; a new one over the
/// bound drops that address's oldest.
pub const MAX_UNAUTHENTICATED_PER_IP: usize = 32;

/// Bytes after which a connection in the handshake counts as a source that
/// has spoken (more than a `Hello` frame; the source's first two frames take
/// about 175).
pub const SPOKEN_BYTES: u64 = 128;

/// How a peer daemon runs.
pub struct PeerConfig {
    /// The peer directory (`--dir`).
    pub dir: PathBuf,
    /// Address to listen on (`--listen`, e.g. `0.0.0.0:7070`; port 0 picks one).
    pub listen: String,
    /// This peer's key, the sources' keys it trusts, and the shared secret.
    pub credentials: Credentials,
    /// What an authenticated source may use (`--max-volume`, `--log-quota`).
    pub limits: PeerLimits,
    /// Told of every committed CP (the `--mount` replica view).
    pub view: Option<Arc<dyn ReplicaView>>,
    /// Makes this machine the primary when the source asks for a
    /// switchover; without it switchovers are refused.
    pub takeover: Option<Arc<dyn Takeover>>,
    /// A listener bound already (to `listen`): connections that arrive
    /// before the daemon starts wait in its backlog instead of being
    /// refused (the old primary of a switchover binds before it hands over).
    pub listener: Option<std::net::TcpListener>,
}

/// What makes a peer the primary in a switchover (the binary: it unmounts
/// the replica view, makes the mirror a volume with
/// [`Replica::promote_in_place`], mounts it read-write and starts mirroring
/// to `req.return_to`). Runs on the session's worker, which holds the
/// replica; returns the new primary's first CP and its root hash. The
/// daemon stops serving afterwards: the directory is a volume now.
pub trait Takeover: Send + Sync {
    fn take_over(
        &self,
        replica: &mut Replica,
        req: &SwitchoverRequest,
    ) -> std::result::Result<(u64, [u8; 32]), String>;
}

/// Stops a running daemon. Clone it freely; [`ShutdownHandle::flag`] may be
/// set from a signal handler (the daemon polls it).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Asks the daemon to stop: it stops listening, ends the session (after
    /// the message in hand), and [`PeerDaemon::run`] returns.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    /// The flag behind [`ShutdownHandle::shutdown`]: storing `true` is
    /// async-signal-safe, so a SIGTERM handler can do just that.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

/// A running peer daemon.
pub struct PeerDaemon {
    local_addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: std::thread::JoinHandle<Result<()>>,
}

struct Shared {
    credentials: Credentials,
    takeover: Option<Arc<dyn Takeover>>,
    /// Stops the daemon once a switchover made the directory a volume.
    stop: ShutdownHandle,
    /// The replica's side of a history check while a session holds it.
    judge: Arc<parking_lot::Mutex<Judge>>,
    replica: Arc<Mutex<Replica>>,
    shutdown: watch::Receiver<bool>,
}

/// A connection in the handshake.
struct Pending {
    id: u64,
    ip: IpAddr,
    task: AbortHandle,
    /// Bytes it has sent so far.
    received: Arc<AtomicU64>,
}

/// The connections in the handshake, oldest first.
#[derive(Default)]
struct Unauthenticated {
    entries: VecDeque<Pending>,
    next_id: u64,
}

impl Unauthenticated {
    /// Makes room for one more connection from `ip`: when that address has
    /// its share, drops one of its connections, else when the table is full,
    /// one of all; of those, the oldest that has not spoken, else the oldest.
    fn make_room(&mut self, ip: IpAddr) {
        let same = self.entries.iter().filter(|p| p.ip == ip).count();
        let among = |p: &Pending| same < MAX_UNAUTHENTICATED_PER_IP || p.ip == ip;
        if same < MAX_UNAUTHENTICATED_PER_IP && self.entries.len() < MAX_UNAUTHENTICATED {
            return;
        }
        let silent = self
            .entries
            .iter()
            .position(|p| among(p) && p.received.load(Ordering::Relaxed) < SPOKEN_BYTES);
        let victim = silent.or_else(|| self.entries.iter().position(among));
        if let Some(p) = victim.and_then(|i| self.entries.remove(i)) {
            log::debug!(
                "dropping a connection in the handshake (from {}, {} bytes received) to make room",
                p.ip,
                p.received.load(Ordering::Relaxed)
            );
            p.task.abort();
        }
    }

    fn remove(&mut self, id: u64) {
        self.entries.retain(|p| p.id != id);
    }
}

/// A stream that counts the bytes read from it (how far a connection in the
/// handshake got).
struct Counted<S> {
    inner: S,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's place among the unauthenticated; leaves it when dropped.
struct HandshakeSlot {
    table: Arc<std::sync::Mutex<Unauthenticated>>,
    id: u64,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

impl PeerDaemon {
    /// Opens the directory (recovering it), binds the listener and starts
    /// serving in the background. Errors here (a locked or promoted
    /// directory, an address in use) are the daemon's start-up errors.
    pub fn start(cfg: PeerConfig) -> Result<PeerDaemon> {
        let mut replica = Replica::open(&cfg.dir, cfg.view)?;
        replica.set_limits(cfg.limits);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("twinfs-peer")
            .enable_all()
            .build()
            .map_err(|e| PeerError::io("starting the peer's runtime", e))?;
        // Bound with std so that `start` may be called from inside another
        // runtime (tests); the tokio listener is made on the daemon's thread.
        let listener = match cfg.listener {
            Some(l) => Ok(l),
            None => std::net::TcpListener::bind(&cfg.listen),
        }
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| PeerError::io(format!("listening on {}", cfg.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| PeerError::io(format!("listening on {}", cfg.listen), e))?;
        let (tx, rx) = watch::channel(false);
        let shutdown = ShutdownHandle {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(tx),
        };
        let shared = Arc::new(Shared {
            credentials: cfg.credentials,
            takeover: cfg.takeover,
            stop: shutdown.clone(),
            judge: Arc::new(parking_lot::Mutex::new(replica.judge())),
            replica: Arc::new(Mutex::new(replica)),
            shutdown: rx,
        });
        let handle = shutdown.clone();
        log::info!(
            "twinfs peer on {} listening on {local_addr}",
            cfg.dir.display()
        );
        let thread = std::thread::Builder::new()
            .name("twinfs-peer-main".into())
            .spawn(move || {
                let result = rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .map_err(|e| PeerError::io("listening", e))?;
                    accept_loop(listener, shared, handle).await
                });
                rt.shutdown_timeout(Duration::from_secs(2));
                result
            })
            .map_err(|e| PeerError::io("starting the peer's thread", e))?;
        Ok(PeerDaemon {
            local_addr,
            shutdown,
            thread,
        })
    }

    /// The address the daemon listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the daemon.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Blocks until the daemon has stopped (after [`ShutdownHandle::shutdown`]).
    pub fn run(self) -> Result<()> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(PeerError::Protocol(
                "the peer's main thread panicked".into(),
            )),
        }
    }

    /// Stops the daemon and waits until it has.
    pub fn shutdown(self) -> Result<()> {
        self.shutdown.shutdown();
        self.run()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    handle: ShutdownHandle,
) -> Result<()> {
    let mut sessions = JoinSet::new();
    let table = Arc::new(std::sync::Mutex::new(Unauthenticated::default()));
    let mut poll = tokio::time::interval(Duration::from_millis(SHUTDOWN_POLL_MS));
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    stream.set_nodelay(true).ok();
                    // Held while spawning, so that the task leaves the table
                    // (its slot's drop) only after it was entered there.
                    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                    t.make_room(addr.ip());
                    let id = t.next_id;
                    t.next_id += 1;
                    let slot = HandshakeSlot { table: table.clone(), id };
                    let received = Arc::new(AtomicU64::new(0));
                    let stream = Counted { inner: stream, received: received.clone() };
                    let task = sessions.spawn(serve(stream, addr, shared.clone(), slot));
                    t.entries.push_back(Pending { id, ip: addr.ip(), task, received });
                }
                Err(e) => {
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
            _ = poll.tick() => {
                if handle.flag.load(Ordering::SeqCst) {
                    handle.shutdown();
                    break;
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    log::info!("peer shutting down");
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!("a session did not end within {grace:?}; stopping it");
        sessions.abort_all();
    }
    // The worker of the last session holds the replica until it is done.
    match tokio::time::timeout(grace, shared.replica.clone().lock_owned()).await {
        Ok(mut replica) => {
            tokio::task::block_in_place(|| replica.set_source_connected(false));
            Ok(())
        }
        Err(_) => Err(PeerError::Protocol(
            "the session worker did not stop in time".into(),
        )),
    }
}

/// Authenticates one connection and, if it is admitted, runs its session.
async fn serve(
    stream: Counted<TcpStream>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    slot: HandshakeSlot,
) {
    let authenticated = authenticate_source(stream, &shared.credentials).await;
    // Authenticated or not, the connection is no longer in the handshake (and
    // may no longer be dropped to make room).
    drop(slot);
    let source = match authenticated {
        Ok(s) => s,
        Err(e) => {
            log_refusal(addr, &e);
            return;
        }
    };
    // A session that is ending (often this source's own previous one) lets
    // go of the replica soon; one that goes on leaves this source judged.
    let locked = tokio::time::timeout(BUSY_WAIT, shared.replica.clone().lock_owned()).await;
    let Ok(mut replica) = locked else {
        judge_while_busy(source, addr, &shared).await;
        return;
    };
    match admit(&source, &mut replica) {
        Ok(resume) => match source.welcome(resume).await {
            Ok((session, info)) => {
                *shared.judge.lock() = replica.judge();
                log::info!(
                    "source {addr} connected (volume {}, key {}, {}); resuming from CP {} and transfer {}",
                    twinfs_fs::hex(&info.volume_uuid),
                    info.remote_key,
                    info.suite.protocol_name(),
                    resume
                        .applied_cp
                        .map_or("none".to_string(), |a| a.cp.to_string()),
                    resume.durable_transfer
                );
                run_session(session, replica, shared.clone()).await;
            }
            Err(e) => log::warn!("connection from {addr} failed before its session: {e}"),
        },
        Err(err) => {
            let e = source.refuse(err).await;
            log::warn!("connection from {addr} refused: {e}");
        }
    }
}

/// The admission of an authenticated source: the directory must be usable
/// and the announced volume within the binding policy and the limits.
fn admit(
    source: &Authenticated<Counted<TcpStream>>,
    replica: &mut Replica,
) -> std::result::Result<crate::handshake::ResumePoint, ReplicateError> {
    let announce = source.announce();
    tokio::task::block_in_place(|| {
        let resume = replica.prepare_session().map_err(|e| {
            log::error!("the peer directory cannot serve: {e}");
            ReplicateError::Refused {
                reason: format!("the peer's storage failed ({e}); see the peer's log"),
            }
        })?;
        replica
            .accept_volume(announce.volume_uuid, announce.volume_blocks)
            .map_err(|reason| ReplicateError::VolumeRefused {
                uuid: twinfs_fs::hex(&announce.volume_uuid),
                reason: clip_reason(&reason),
            })?;
        Ok(resume)
    })
}

/// How long a source that connects while another session holds the
/// replica waits for it before it is judged as a second source.
const BUSY_WAIT: Duration = Duration::from_millis(1500);

/// How long a source that connects while another session is up has to
/// state its history.
const BUSY_JUDGE_WAIT: Duration = Duration::from_secs(10);

/// A source that connects while another session holds the replica: its
/// history is still judged against the replica's CP, so that a split brain
/// is refused and recorded as such; any other source is told the peer is
/// busy.
async fn judge_while_busy(
    source: Authenticated<Counted<TcpStream>>,
    addr: SocketAddr,
    shared: &Shared,
) {
    let busy = format!(
        "this peer is busy with another source session (connection from {addr} refused); only one source at a time — if the other session is this source's old connection, retry in a moment"
    );
    let judge = shared.judge.lock().clone();
    let uuid = source.announce().volume_uuid;
    let refusal = match judge.bound {
        Some(b) if b != uuid => Some(ReplicateError::VolumeRefused {
            uuid: twinfs_fs::hex(&uuid),
            reason: format!(
                "this peer mirrors volume {}, not volume {}; run another peer (another --dir) for that volume",
                twinfs_fs::hex(&b),
                twinfs_fs::hex(&uuid)
            ),
        }),
        Some(_) => None,
        // Not bound yet (as far as the snapshot knows): nothing to judge against.
        None => Some(ReplicateError::Refused {
            reason: busy.clone(),
        }),
    };
    if let Some(err) = refusal {
        let e = source.refuse(err).await;
        log::warn!("connection from {addr}: {e}");
        return;
    }
    let mut session = match source.welcome(judge.resume).await {
        Ok((session, _)) => session,
        Err(e) => {
            log::warn!("connection from {addr} failed before its session: {e}");
            return;
        }
    };
    let first = tokio::time::timeout(BUSY_JUDGE_WAIT, session.recv()).await;
    let Ok(Ok(Message::SourceLineage {
        generations,
        cp,
        root_hash,
        uncommitted,
        hold,
    })) = first
    else {
        let _ = session
            .send(&Message::Error {
                reason: clip_reason(&busy),
            })
            .await;
        return;
    };
    let Ok(source) = super::replica::source_side(&generations, cp, root_hash, uncommitted) else {
        return;
    };
    match history::verdict(judge.own.as_ref(), judge.peer_id, &source, hold.as_ref()) {
        Some(refusal) => {
            log::error!(
                "source {addr} refused (nothing applied): {}",
                refusal.reason
            );
            let report = DivergenceReport::new(&refusal, &source, judge.own.as_ref());
            shared.judge.lock().pending = Some(report);
            let _ = session
                .send(&Message::LineageVerdict {
                    peer_id: judge.peer_id,
                    generations: judge
                        .own
                        .as_ref()
                        .map_or_else(Vec::new, |o| wire_lineage(&o.lineage)),
                    refusal: Some(crate::message::Refusal {
                        reason: clip_reason(&refusal.reason),
                        ..refusal
                    }),
                })
                .await;
            let _ = session.close().await;
        }
        None => {
            let _ = session
                .send(&Message::Error {
                    reason: clip_reason(&busy),
                })
                .await;
            log::warn!("connection from {addr} refused: busy with another source");
        }
    }
}

/// Logs a connection that did not authenticate: a failed proof or another
/// version as a warning, what a flood or a port scan produces (silence,
/// garbage, a closed connection) only at debug level.
fn log_refusal(addr: SocketAddr, e: &ReplicateError) {
    match e {
        ReplicateError::AuthFailed(_)
        | ReplicateError::VersionMismatch { .. }
        | ReplicateError::Refused { .. } => log::warn!("connection from {addr} refused: {e}"),
        _ => log::debug!("connection from {addr} dropped in the handshake: {e}"),
    }
}

/// What the reader hands the worker.
enum Inbound {
    Msg(Message),
    /// The session's receive side failed (closed, damaged frame, ...).
    Closed(ReplicateError),
    /// The source went silent.
    Silent,
    /// The daemon is shutting down.
    Shutdown,
}

async fn run_session(
    session: Session<Counted<TcpStream>>,
    replica: OwnedMutexGuard<Replica>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    let (mut tx, mut rx) = session.split();
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(INBOUND_QUEUE_MESSAGES);
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE_MESSAGES);
    let reader = tokio::spawn(async move {
        let silence = Duration::from_millis(SOURCE_SILENCE_TIMEOUT_MS);
        loop {
            let item = tokio::select! {
                r = tokio::time::timeout(silence, rx.recv()) => match r {
                    Ok(Ok(m)) => Inbound::Msg(m),
                    Ok(Err(e)) => Inbound::Closed(e),
                    Err(_) => Inbound::Silent,
                },
                _ = shutdown.wait_for(|s| *s) => Inbound::Shutdown,
            };
            let last = !matches!(item, Inbound::Msg(_));
            if in_tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    let writer = tokio::spawn(async move {
        let every = Duration::from_millis(KEEPALIVE_INTERVAL_MS);
        let mut nonce = 0u64;
        loop {
            let m = match tokio::time::timeout(every, out_rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    nonce += 1;
                    Message::Ping { nonce }
                }
            };
            let sent = match &m {
                Message::Bye => tx.close().await.map(|_| ()),
                _ => tx.send(&m).await.map(|_| ()),
            };
            if let Err(e) = sent {
                log::debug!("sending {} to the source failed: {e}", m.kind());
                return;
            }
            if matches!(m, Message::Bye | Message::Error { .. }) {
                return;
            }
        }
    });
    let worker = tokio::task::spawn_blocking(move || work(replica, &shared, in_rx, out_tx));
    if worker.await.is_err() {
        log::error!("the session worker panicked");
    }
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// The blocking side of a session: answers messages until the session ends.
fn work(
    mut replica: OwnedMutexGuard<Replica>,
    shared: &Shared,
    mut inbox: mpsc::Receiver<Inbound>,
    out: mpsc::Sender<Message>,
) {
    replica.set_source_connected(true);
    let result = work_loop(&mut replica, shared, &mut inbox, &out);
    refresh_judge(&mut replica, &shared.judge);
    match &result {
        Ok(()) => log::info!("source session ended"),
        Err(e) => {
            log::warn!("source session ended: {e}");
            let _ = out.blocking_send(Message::Error {
                reason: clip_reason(&format!("the peer ends the session: {e}")),
            });
            replica.record_error(e);
        }
    }
    replica.set_source_connected(false);
}

fn send(out: &mpsc::Sender<Message>, m: Message) -> Result<()> {
    out.blocking_send(m)
        .map_err(|_| PeerError::Disconnected("the connection to the source broke".into()))
}

/// Hands a switchover to the takeover; returns whether it happened (the
/// session is then over and the daemon stops: the directory is a volume).
fn take_over(
    replica: &mut Replica,
    shared: &Shared,
    req: &SwitchoverRequest,
    out: &mpsc::Sender<Message>,
) -> Result<bool> {
    let outcome = match &shared.takeover {
        None => Err("this peer has no mount point to serve the volume on (start it with --mount MOUNTPOINT)".to_string()),
        Some(t) => {
            log::info!(
                "switchover: taking over at CP {}, mirroring back to {}",
                req.cp,
                req.return_to
            );
            t.take_over(replica, req)
        }
    };
    match outcome {
        Ok((cp, root_hash)) => {
            send(out, Message::SwitchedOver { cp, root_hash })?;
            let _ = send(out, Message::Bye);
            log::info!("switchover: this machine is the primary now (CP {cp})");
            shared.stop.shutdown();
            Ok(true)
        }
        Err(reason) => {
            log::warn!("switchover refused: {reason}");
            send(
                out,
                Message::SwitchoverRefused {
                    reason: clip_reason(&reason),
                },
            )?;
            Ok(false)
        }
    }
}

/// Records a refusal decided while this session held the replica, and
/// copies the replica's side of the history check for the next one.
fn refresh_judge(replica: &mut Replica, judge: &parking_lot::Mutex<Judge>) {
    let pending = judge.lock().pending.take();
    if let Some(report) = pending {
        if let Err(e) = replica.record_divergence(report) {
            log::error!("recording a refused source: {e}");
        }
    }
    *judge.lock() = replica.judge();
}

fn work_loop(
    replica: &mut Replica,
    shared: &Shared,
    inbox: &mut mpsc::Receiver<Inbound>,
    out: &mpsc::Sender<Message>,
) -> Result<()> {
    let judge = &shared.judge;
    let mut pending: Option<Inbound> = None;
    let mut status_written = Instant::now();
    loop {
        let item = match pending.take() {
            Some(i) => i,
            None => match inbox.blocking_recv() {
                Some(i) => i,
                None => return Ok(()),
            },
        };
        match item {
            Inbound::Msg(Message::Transfer { id, batch }) => {
                replica.receive_transfer(id, &batch)?;
                let mut bytes = batch.len();
                drop(batch);
                // Group commit: take whatever else has arrived, then one sync.
                while bytes < GROUP_COMMIT_MAX_BYTES {
                    match inbox.try_recv() {
                        Ok(Inbound::Msg(Message::Transfer { id, batch })) => {
                            replica.receive_transfer(id, &batch)?;
                            bytes += batch.len();
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                send(out, replica.sync_transfers()?)?;
                if status_written.elapsed() >= Duration::from_millis(STATUS_INTERVAL_MS) {
                    replica.write_status();
                    status_written = Instant::now();
                }
            }
            Inbound::Msg(m) => {
                let mut replies = Vec::new();
                let flow = replica.handle(m, &mut replies)?;
                let applied = replies
                    .iter()
                    .any(|r| matches!(r, Message::CpApplied { .. }));
                if applied || judge.lock().pending.is_some() {
                    refresh_judge(replica, judge);
                }
                for r in replies {
                    send(out, r)?;
                }
                match flow {
                    Flow::Continue => {}
                    Flow::End => {
                        let _ = send(out, Message::Bye);
                        return Ok(());
                    }
                    Flow::Switchover(req) => {
                        if take_over(replica, shared, &req, out)? {
                            return Ok(());
                        }
                    }
                }
            }
            Inbound::Closed(ReplicateError::ConnectionClosed { .. }) => {
                return Err(PeerError::Disconnected(
                    "it closed the connection without a Bye".into(),
                ))
            }
            Inbound::Closed(e) => return Err(e.into()),
            Inbound::Silent => {
                return Err(PeerError::Disconnected(format!(
                    "it sent nothing for {} s",
                    SOURCE_SILENCE_TIMEOUT_MS / 1000
                )))
            }
            Inbound::Shutdown => {
                let _ = send(out, Message::Bye);
                return Ok(());
            }
        }
    }
}
