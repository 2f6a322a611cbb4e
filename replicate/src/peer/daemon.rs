//! The peer daemon: a TCP listener that serves one source session at a time.
//!
//! Each connection runs the handshake (the source must prove the shared
//! secret; the first volume served binds the directory, any other is
//! refused naming both UUIDs); a connection that arrives while a session is
//! active is refused with a reason. A session is three tasks: a reader that
//! receives messages into a bounded queue, a blocking worker that owns the
//! [`Replica`] and answers them (grouping the transfers that have arrived into
//! one fdatasync and one cumulative `TransferAck`), and a writer that sends
//! the answers. Any error ends the session with a log line (and an `Error`
//! to the source when it can still hear it); the daemon keeps listening and
//! the source reconnects and resumes from the resume point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex, OwnedMutexGuard};
use tokio::task::JoinSet;

use super::replica::{Flow, Judge, Replica, ReplicaView, SwitchoverRequest};
use super::{PeerError, Result};
use crate::error::ReplicateError;
use crate::handshake::{handshake_server, ResumePoint};
use crate::history::{self, DivergenceReport};
use crate::message::{clip_reason, wire_lineage, Message};
use crate::secret::Secret;
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

/// How a peer daemon runs.
pub struct PeerConfig {
    /// The peer directory (`--dir`).
    pub dir: PathBuf,
    /// Address to listen on (`--listen`, e.g. `0.0.0.0:7070`; port 0 picks one).
    pub listen: String,
    /// The shared secret (`--secret FILE`).
    pub secret: Secret,
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
    secret: Secret,
    takeover: Option<Arc<dyn Takeover>>,
    /// Stops the daemon once a switchover made the directory a volume.
    stop: ShutdownHandle,
    replica: Arc<Mutex<Replica>>,
    /// The replica's side of a history check while a session holds it.
    judge: Arc<parking_lot::Mutex<Judge>>,
    shutdown: watch::Receiver<bool>,
}

impl PeerDaemon {
    /// Opens the directory (recovering it), binds the listener and starts
    /// serving in the background. Errors here (a locked or promoted
    /// directory, an address in use) are the daemon's start-up errors.
    pub fn start(cfg: PeerConfig) -> Result<PeerDaemon> {
        let replica = Replica::open(&cfg.dir, cfg.view)?;
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
            secret: cfg.secret,
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
    let mut poll = tokio::time::interval(Duration::from_millis(SHUTDOWN_POLL_MS));
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    stream.set_nodelay(true).ok();
                    sessions.spawn(serve(stream, addr, shared.clone()));
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

/// Handshakes with one connection and, if it is accepted, runs its session.
async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>) {
    let Ok(mut replica) = shared.replica.clone().try_lock_owned() else {
        judge_while_busy(stream, addr, &shared).await;
        return;
    };
    let prepared = tokio::task::block_in_place(|| replica.prepare_session());
    let (resume, unusable) = match prepared {
        Ok(r) => (r, None),
        Err(e) => {
            log::error!("the peer directory cannot serve: {e}");
            let no_resume = ResumePoint {
                applied_cp: None,
                durable_transfer: 0,
            };
            (
                no_resume,
                Some(format!(
                    "the peer's storage failed ({e}); see the peer's log"
                )),
            )
        }
    };
    let accepted = handshake_server(stream, &shared.secret, resume, |uuid| match unusable {
        Some(reason) => Err(reason),
        None => tokio::task::block_in_place(|| replica.accept_uuid(uuid)),
    })
    .await;
    match accepted {
        Ok((session, info)) => {
            *shared.judge.lock() = replica.judge();
            log::info!(
                "source {addr} connected (volume {}); resuming from CP {} and transfer {}",
                twinfs_fs::hex(&info.volume_uuid),
                resume
                    .applied_cp
                    .map_or("none".to_string(), |a| a.cp.to_string()),
                resume.durable_transfer
            );
            run_session(session, replica, shared.clone()).await;
        }
        Err(e) => log::warn!("connection from {addr} refused: {e}"),
    }
}

/// How long a source that connects while another session is up has to
/// state its history.
const BUSY_JUDGE_WAIT: Duration = Duration::from_secs(10);

/// A source that connects while another session holds the replica: its
/// history is still judged against the replica's CP, so that a split brain
/// is refused and recorded as such; any other source is told the peer is
/// busy.
async fn judge_while_busy(stream: TcpStream, addr: SocketAddr, shared: &Shared) {
    let busy = format!(
        "this peer is busy with another source session (connection from {addr} refused); only one source at a time — if the other session is this source's old connection, retry in a moment"
    );
    let judge = shared.judge.lock().clone();
    let accepted = handshake_server(stream, &shared.secret, judge.resume, |uuid| {
        match judge.bound {
            Some(b) if b != uuid => Err(format!(
                "this peer mirrors volume {}, not volume {}; run another peer (another --dir) for that volume",
                twinfs_fs::hex(&b),
                twinfs_fs::hex(&uuid)
            )),
            Some(_) => Ok(()),
            // Not bound yet (as far as the snapshot knows): nothing to judge against.
            None => Err(busy.clone()),
        }
    })
    .await;
    let mut session = match accepted {
        Ok((session, _)) => session,
        Err(e) => {
            log::warn!("connection from {addr} refused: {e}");
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
    session: Session<TcpStream>,
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
