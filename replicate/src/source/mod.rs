//! The source side of mirroring: forwards every NVLOG batch to the peer as
//! a numbered `Transfer` while the local disk writes it, streams every CP's change set encoded as
//! cheaply as the peer allows, resyncs a peer that was away, and makes fsync
//! wait for the peer as the mode demands.
//!
//! Threads: the volume's log writer and CP threads hand their output to an
//! ordered, bounded outbound queue (this module's `Replicator` and `CpSink`
//! implementations); one tokio task per connection sends the queue in order
//! and another reads the peer's answers. Order on the wire is what makes
//! references safe: every transfer a CP refers to is queued before the CP.
//!
//! The decisions (what a queued item or an answer of the peer makes the
//! session send, which transfers count as acknowledged, when an fsync
//! returns, degrades or fails, how a session resumes or resyncs, what the
//! peer's verdict on our history allows) live in [`machine`], without
//! threads, sockets or clocks; this module is the driver that runs them on
//! tokio tasks, condvars and real time, and `crate::sim` drives the same
//! machine (and the same [`Sink`]) in simulated time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use twinfs_fs::cp::{CpBlock as FsCpBlock, CpSink};
use twinfs_fs::nvlog::batch::SealedBatch;
use twinfs_fs::pacer::Backlog;
use twinfs_fs::superblock::Superblock;
use twinfs_fs::volume::{Replicator, Volume};
use twinfs_fs::{Block, BlockPtr, CpNumber, FsError, RootHash, TransferId, BLOCK_SIZE};

use crate::encode::{self, CpSync, EncKind, PrevReader};
use crate::error::{ReplicateError, Result};
use crate::handshake::{handshake_client, HandshakeInfo};
use crate::history::{DivergenceReport, Side};
use crate::keys::Credentials;
use crate::message::{
    wire_lineage, CpBlock, Encoding, HoldRecord, Message, Refusal, WireGeneration,
    MAX_BLOCKS_PER_CP_FRAME,
};
use crate::session::{Compression, RecvHalf, SendHalf};

pub mod machine;

use machine::{Applied, Item, Link, Missing, Outbound, Resume, SenderState, Step};

/// When fsync waits for the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// fsync waits for the peer; if the peer is unreachable past the timeout,
    /// the volume carries on without it (status says so) and resyncs later.
    Sync,
    /// fsync fails with EIO when the peer cannot confirm.
    Strict,
    /// fsync never waits for the peer.
    Async,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sync" => Ok(Mode::Sync),
            "strict" => Ok(Mode::Strict),
            "async" => Ok(Mode::Async),
            _ => Err(format!("unknown --mode {s:?}: use sync, strict or async")),
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Strict => "strict",
            Mode::Async => "async",
        }
    }
}

/// How a mirror runs.
#[derive(Clone)]
pub struct MirrorConfig {
    /// `HOST:PORT` of the peer daemon.
    pub peer: String,
    /// This source's key, the peer's keys it trusts, and the shared secret.
    pub credentials: Credentials,
    /// When transfers travel lz4-compressed (`--compress`).
    pub compress: Compression,
    pub mode: Mode,
    pub cp_sync: CpSync,
    /// How long fsync waits for the peer before the volume carries on without it.
    pub sync_timeout: Duration,
    /// Bound of the outbound queue, in bytes.
    pub queue_bytes: usize,
}

/// Default bound of the outbound queue.
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;
/// Default fsync wait for the peer in sync mode.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest payload of one `CpBlocks` frame.
const CP_FRAME_BYTES: usize = 4 << 20;
/// Time between keepalive pings; a session silent for three of these is dead.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a CP waits for its transfers to be queued before sending blocks in full.
const TRANSFER_WAIT: Duration = Duration::from_secs(2);
/// Most log bytes read at a time to resend what the queue did not carry.
const FILL_GAP_BYTES: usize = 16 << 20;
/// Longest pause between reconnection attempts: short, because a resync
/// cannot start before it ends, and a refused connect costs next to nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Pause before asking again a peer that refused this volume's history: it
/// stays refused until a person resolves it, which takes a while.
const DIVERGED_RETRY: Duration = Duration::from_secs(15);
/// How long the session waits for the peer's verdict on our history.
const VERDICT_WAIT: Duration = Duration::from_secs(30);
/// First pause before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// How long a session that failed on the connection waits for the peer's
/// stated reason (see `peer_reason`).
const PEER_REASON_WAIT: Duration = Duration::from_millis(300);
/// A session that lasted this long starts the pauses over from the shortest.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Count and bytes of one kind of thing sent.
#[derive(Default)]
pub struct Counter {
    pub count: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counter {
    fn add(&self, bytes: usize) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// What was sent since the mirror started.
#[derive(Default)]
pub struct Counters {
    /// Wire bytes of Transfer frames.
    pub log_sent: AtomicU64,
    /// Wire bytes of CP frames (incl. resync and resends).
    pub cp_sent: AtomicU64,
    /// Every byte sent.
    pub wire_total: AtomicU64,
    pub full: Counter,
    pub refs: Counter,
    pub recipes: Counter,
    pub deltas: Counter,
    /// Blocks the peer could not rebuild and we sent again in full.
    pub misses: Counter,
    pub transfers: Counter,
    pub resync_blocks: Counter,
}

/// The state of the link, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Disconnected,
    Connecting,
    Resyncing,
    Streaming,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Disconnected => "disconnected",
            Phase::Connecting => "connecting",
            Phase::Resyncing => "resyncing",
            Phase::Streaming => "streaming",
        }
    }
}

/// A snapshot of the mirror's state for `twinfs status`.
#[derive(Clone, Debug)]
pub struct MirrorStatus {
    pub addr: String,
    pub mode: Mode,
    pub cp_sync: CpSync,
    pub connected: bool,
    pub phase: Phase,
    pub acked_cp: Option<CpNumber>,
    pub acked_root_hash: Option<RootHash>,
    pub acked_transfer: TransferId,
    /// fsync no longer waits for the peer (it was unreachable past the timeout).
    pub degraded: bool,
    pub last_error: Option<String>,
    /// A root hash mismatch was seen (then a resync was started).
    pub alarm: Option<String>,
    pub resync: Option<ResyncProgress>,
    pub rtt_ms: Option<f64>,
    pub queued_bytes: usize,
    /// The peer refused this volume's history (split brain, or one side
    /// went back in time): nothing goes to it until a person resolves it.
    pub divergence: Option<DivergenceReport>,
    /// Sessions that got as far as the peer's verdict on our history.
    pub sessions_judged: u64,
}

#[derive(Clone, Debug)]
pub struct ResyncProgress {
    pub base_cp: Option<CpNumber>,
    pub target_cp: CpNumber,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub started: Instant,
}

impl ResyncProgress {
    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        self.bytes_done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// Seconds left at the current rate.
    pub fn eta_secs(&self) -> f64 {
        (self.bytes_total.saturating_sub(self.bytes_done)) as f64 / self.rate().max(1.0)
    }
}

struct Shared {
    vol: Arc<Volume>,
    cfg: MirrorConfig,
    out: Mutex<Outbound>,
    out_cv: Condvar,
    wake: Notify,
    link: Mutex<Link>,
    link_cv: Condvar,
    counters: Counters,
    shutdown: AtomicBool,
    /// Control requests for the session task.
    ctrl: Mutex<Option<mpsc::UnboundedSender<Ctrl>>>,
    /// The last ping sent, to measure the round trip.
    ping_sent: Mutex<Option<(u64, Instant)>>,
}

/// The peer's answer to a verify request: its CP, root hash and deep hash.
type VerifyAnswer = std::result::Result<(u64, [u8; 32], Option<Vec<u8>>), String>;

enum Ctrl {
    Verify {
        cp: CpNumber,
        deep: bool,
        reply: oneshot::Sender<VerifyAnswer>,
    },
    Switchover {
        sb: Box<Superblock>,
        return_to: String,
        reply: oneshot::Sender<SwitchoverAnswer>,
    },
}

/// The peer's answer to a switchover: its first CP as the primary and the
/// root hash, or why it refused.
type SwitchoverAnswer = std::result::Result<(u64, [u8; 32]), String>;

/// The mirror of one volume to one peer.
pub struct Mirror {
    shared: Arc<Shared>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Mirror {
    /// Starts mirroring `vol` to the peer: installs the volume hooks and a
    /// connection task that keeps (re)connecting until [`Mirror::shutdown`].
    pub fn start(vol: Arc<Volume>, cfg: MirrorConfig) -> std::io::Result<Arc<Mirror>> {
        let shared = Arc::new(Shared {
            vol: vol.clone(),
            out: Mutex::new(Outbound::default()),
            out_cv: Condvar::new(),
            wake: Notify::new(),
            link: Mutex::new(Link::default()),
            link_cv: Condvar::new(),
            counters: Counters::default(),
            shutdown: AtomicBool::new(false),
            ctrl: Mutex::new(None),
            ping_sent: Mutex::new(None),
            cfg,
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("twinfs-mirror")
            .enable_all()
            .build()?;
        vol.set_replicator(Some(Arc::new(Hooks(shared.clone()))));
        vol.set_cp_sink(Some(Box::new(Sink::new(shared.clone()))));
        let s = shared.clone();
        rt.spawn(async move { connection_loop(s).await });
        Ok(Arc::new(Mirror {
            shared,
            rt: Mutex::new(Some(rt)),
        }))
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn status(&self) -> MirrorStatus {
        let l = self.shared.link.lock();
        MirrorStatus {
            addr: self.shared.cfg.peer.clone(),
            mode: self.shared.cfg.mode,
            cp_sync: self.shared.cfg.cp_sync,
            connected: l.connected,
            phase: l.phase.clone(),
            acked_cp: l.applied.map(|(c, _)| c),
            acked_root_hash: l.applied.map(|(_, h)| h),
            acked_transfer: l.acked_transfer,
            degraded: l.degraded,
            last_error: l.last_error.clone(),
            alarm: l.alarm.clone(),
            resync: l.resync.clone(),
            rtt_ms: l.rtt.map(|d| d.as_secs_f64() * 1000.0),
            queued_bytes: self.shared.out.lock().bytes,
            divergence: l.divergence.clone(),
            sessions_judged: l.sessions_judged,
        }
    }

    /// This machine's address on the last connection to the peer (the
    /// address the peer can reach it at).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.link.lock().local_addr
    }

    /// Waits until the first session has an outcome: the peer accepted this
    /// volume (returns `Ok`), refused it, or the connection failed (the
    /// error, as status shows it); `Err` with "no answer" after `timeout`.
    /// The mount uses this to say on the terminal what went wrong before it
    /// goes to the background.
    pub fn wait_first_outcome(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut l = self.shared.link.lock();
        loop {
            if let Some(d) = &l.divergence {
                return Err(format!("{}: {}", d.kind, d.reason));
            }
            if l.sessions_judged > 0 {
                return Ok(());
            }
            if let Some(e) = &l.last_error {
                return Err(e.clone());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer from the peer {} within {timeout:?}",
                    self.shared.cfg.peer
                ));
            }
            self.shared.link_cv.wait_until(&mut l, deadline);
        }
    }

    /// Waits until the peer has applied CP `cp` (or a later one). Returns
    /// false if the peer is not connected or the wait timed out.
    pub fn wait_applied(&self, cp: CpNumber, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut l = self.shared.link.lock();
        loop {
            if l.applied.is_some_and(|(c, _)| c >= cp) {
                return true;
            }
            if !l.connected || Instant::now() >= deadline {
                return false;
            }
            self.shared.link_cv.wait_until(
                &mut l,
                deadline.min(Instant::now() + Duration::from_millis(200)),
            );
        }
    }

    /// Compares the peer's root hash (and with `deep`, a rehash of every
    /// block on both sides) with ours, for the peer's applied CP.
    pub fn verify(
        &self,
        deep: bool,
        timeout: Duration,
    ) -> std::result::Result<VerifyOutcome, String> {
        let cp = self
            .status()
            .acked_cp
            .ok_or("the peer has not applied any CP yet")?;
        let (tx, rx) = oneshot::channel();
        {
            let ctrl = self.shared.ctrl.lock();
            let ctrl = ctrl.as_ref().ok_or("the peer is not connected")?;
            ctrl.send(Ctrl::Verify {
                cp,
                deep,
                reply: tx,
            })
            .map_err(|_| "the peer session ended")?;
        }
        let rt = self.rt.lock();
        let rt = rt.as_ref().ok_or("the mirror is shut down")?;
        let (peer_cp, peer_root, peer_deep) = rt
            .block_on(async { tokio::time::timeout(timeout, rx).await })
            .map_err(|_| "the peer did not answer in time".to_string())?
            .map_err(|_| "the peer session ended".to_string())??;
        let ours = self.shared.link.lock().applied;
        let (our_cp, our_root) = ours.ok_or("no CP applied at the peer")?;
        let mut outcome = VerifyOutcome {
            cp: CpNumber(peer_cp),
            source_root: our_root,
            peer_root: RootHash(peer_root),
            source_deep: None,
            peer_deep: peer_deep.clone(),
        };
        if peer_cp != our_cp.0 {
            return Err(format!(
                "the peer answered for CP {peer_cp}, expected CP {}",
                our_cp.0
            ));
        }
        if deep {
            let sb = self.shared.vol.committed();
            let image = if sb.cp == our_cp {
                sb
            } else {
                self.shared
                    .link
                    .lock()
                    .sent
                    .get(&our_cp.0)
                    .map(|b| (**b).clone())
                    .ok_or("the source no longer holds the peer's CP; run verify again")?
            };
            let d = twinfs_fs::diff::deep_hash(
                self.shared.vol.cache(),
                &**self.shared.vol.cache().device(),
                &image,
            )
            .map_err(|e| format!("rehashing the source image: {e}"))?;
            outcome.source_deep = Some(d.to_vec());
        }
        Ok(outcome)
    }

    /// Hands the volume over to the peer (`twinfs switchover`): `sb` is the
    /// final CP of a volume that takes no more changes. Waits until the
    /// peer has applied it and every transfer, then asks the peer to become
    /// the primary, mirroring to `return_to`; returns the new primary's
    /// first CP once it takes writes, or why it did not (the caller then
    /// goes on as the primary).
    pub fn switchover(
        &self,
        sb: &Superblock,
        return_to: &str,
        timeout: Duration,
    ) -> std::result::Result<(u64, [u8; 32]), String> {
        if let Some(d) = &self.status().divergence {
            return Err(format!("the peer refuses this volume ({})", d.kind));
        }
        if !self.wait_applied(sb.cp, timeout) {
            return Err(format!(
                "the peer has not applied the final CP {} (is it connected? see `twinfs status`)",
                sb.cp.0
            ));
        }
        let (tx, rx) = oneshot::channel();
        {
            let ctrl = self.shared.ctrl.lock();
            let ctrl = ctrl.as_ref().ok_or("the peer is not connected")?;
            ctrl.send(Ctrl::Switchover {
                sb: Box::new(sb.clone()),
                return_to: return_to.to_string(),
                reply: tx,
            })
            .map_err(|_| "the peer session ended")?;
        }
        let rt = self.rt.lock();
        let rt = rt.as_ref().ok_or("the mirror is shut down")?;
        rt.block_on(async { tokio::time::timeout(timeout, rx).await })
            .map_err(|_| "the peer did not take over in time".to_string())?
            .map_err(|_| "the peer session ended before it took over".to_string())?
    }

    /// Stops the connection task and removes the volume hooks.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        self.shared.out_cv.notify_all();
        // Let a streaming session say Bye, so the peer sees a clean end.
        let deadline = Instant::now() + BYE_WAIT;
        while self.status().connected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.vol.set_replicator(None);
        self.shared.vol.set_cp_sink(None);
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// How long `shutdown` waits for the session to send its Bye.
const BYE_WAIT: Duration = Duration::from_secs(2);

/// The result of `verify`.
#[derive(Clone, Debug)]
pub struct VerifyOutcome {
    pub cp: CpNumber,
    pub source_root: RootHash,
    pub peer_root: RootHash,
    pub source_deep: Option<Vec<u8>>,
    pub peer_deep: Option<Vec<u8>>,
}

impl VerifyOutcome {
    pub fn equal(&self) -> bool {
        self.source_root == self.peer_root && self.source_deep == self.peer_deep
    }
}

impl Shared {
    /// Queues an item, waiting while the queue is full. Returns false (and
    /// marks the session lost) when no session takes items or the wait
    /// would be too long for the mode.
    fn push(&self, item: Item) -> bool {
        let size = item.bytes();
        let mut q = self.out.lock();
        let deadline = Instant::now() + self.cfg.sync_timeout;
        while q.is_full_for(size, self.cfg.queue_bytes) {
            if self.cfg.mode == Mode::Async
                || Instant::now() >= deadline
                || self.shutdown.load(Ordering::Relaxed)
            {
                q.give_up();
                break;
            }
            self.out_cv.wait_until(&mut q, deadline);
        }
        let transfer = matches!(item, Item::Transfer(_));
        let queued = q.hand_over(item);
        if transfer {
            self.out_cv.notify_all();
        }
        drop(q);
        if queued {
            self.wake.notify_one();
        }
        queued
    }

    fn set_phase(&self, phase: Phase) {
        self.link.lock().set_phase(phase);
        self.link_cv.notify_all();
    }
}

/// The volume's hooks: logged batches and fsync waits.
struct Hooks(Arc<Shared>);

impl Replicator for Hooks {
    fn batch_logged(&self, batch: &SealedBatch) {
        self.0.push(Item::Transfer(batch.clone()));
    }

    fn queue_level(&self) -> Option<Backlog> {
        let s = &self.0;
        // Pace writers only to a peer that is taking the stream: during a
        // resync the queue waits for the resync, not for the peer's speed
        // (a full queue then ends in a resync, as without pacing), and
        // async mode lets the peer fall behind.
        if s.cfg.mode == Mode::Async || s.link.lock().phase != Phase::Streaming {
            return None;
        }
        let q = s.out.lock();
        (q.accepting && !q.lost).then(|| Backlog {
            bytes: q.bytes as u64,
            limit: s.cfg.queue_bytes as u64,
            drained_total: q.sent_bytes,
        })
    }

    fn wait_for_peer(&self, id: TransferId) -> twinfs_fs::Result<()> {
        let s = &self.0;
        if s.cfg.mode == Mode::Async {
            return Ok(());
        }
        let deadline = Instant::now() + s.cfg.sync_timeout;
        let mut l = s.link.lock();
        loop {
            let expired = Instant::now() >= deadline;
            let poll = l.fsync_poll(id, s.cfg.mode, expired, s.cfg.sync_timeout);
            if let Some(result) = Link::fsync_result(poll) {
                return result;
            }
            s.link_cv.wait_until(
                &mut l,
                deadline.min(Instant::now() + Duration::from_millis(100)),
            );
        }
    }
}

/// Where the CP sink queues a CP's stream: the daemon's outbound queue
/// (behind its lock and condvar) or the simulator's.
pub trait CpQueue: Send + Sync {
    /// The volume (to encode against its cache and its committed image).
    fn volume(&self) -> &Volume;
    /// How CP blocks are encoded.
    fn cp_sync(&self) -> CpSync;
    fn counters(&self) -> &Counters;
    /// Whether a session takes items now.
    fn accepting(&self) -> bool;
    /// Waits (a bounded time) until transfer `covers` was handed over; false
    /// if it was not (the CP then sends no references).
    fn wait_handed_over(&self, covers: TransferId) -> bool;
    /// Queues an item; false when it was dropped (the session must resync).
    fn push(&self, item: Item) -> bool;
    /// A CP stream was abandoned half way: the session must resync.
    fn abandon(&self);
}

impl CpQueue for Shared {
    fn volume(&self) -> &Volume {
        &self.vol
    }

    fn cp_sync(&self) -> CpSync {
        self.cfg.cp_sync
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn accepting(&self) -> bool {
        self.out.lock().accepting
    }

    fn wait_handed_over(&self, c: TransferId) -> bool {
        let deadline = Instant::now() + TRANSFER_WAIT;
        let mut q = self.out.lock();
        while q.accepting && q.last_queued_transfer < c {
            if self.out_cv.wait_until(&mut q, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    fn push(&self, item: Item) -> bool {
        Shared::push(self, item)
    }

    fn abandon(&self) {
        self.out.lock().give_up();
        self.wake.notify_one();
    }
}

/// The volume's CP sink: encodes each block and queues the CP stream.
pub struct Sink<Q: CpQueue> {
    shared: Arc<Q>,
    cur: Option<CpStream>,
}

impl<Q: CpQueue> Sink<Q> {
    pub fn new(shared: Arc<Q>) -> Sink<Q> {
        Sink { shared, cur: None }
    }
}

struct CpStream {
    cp: CpNumber,
    peer: encode::Peer,
    pending: Vec<CpBlock>,
    pending_bytes: usize,
    ok: bool,
}

struct CacheReader<'a>(&'a Volume);

impl PrevReader for CacheReader<'_> {
    fn read_prev(&self, ptr: &BlockPtr) -> Option<Arc<Block>> {
        self.0.cache().read(ptr, twinfs_fs::cache::Class::Meta).ok()
    }
}

impl<Q: CpQueue> Sink<Q> {
    fn flush_blocks(&mut self) {
        let Some(cur) = &mut self.cur else { return };
        if cur.pending.is_empty() {
            return;
        }
        let blocks = std::mem::take(&mut cur.pending);
        cur.pending_bytes = 0;
        if !self.shared.push(Item::CpBlocks { cp: cur.cp, blocks }) {
            cur.ok = false;
        }
    }
}

impl<Q: CpQueue> CpSink for Sink<Q> {
    fn begin(&mut self, cp: CpNumber, base: CpNumber, covers: Option<TransferId>) {
        self.cur = None;
        if !self.shared.accepting() {
            return;
        }
        // Every transfer the CP contains must be queued before its blocks,
        // so that references resolve at the peer.
        let refs_ok = covers.is_none_or(|c| self.shared.wait_handed_over(c));
        let first_new = base_covers(self.shared.volume(), base);
        let ok = self.shared.push(Item::CpBegin { cp, base, covers });
        self.cur = Some(CpStream {
            cp,
            peer: encode::Peer {
                has_transfers_after: if refs_ok {
                    first_new
                } else {
                    TransferId(u64::MAX)
                },
                has_base: true,
            },
            pending: Vec::new(),
            pending_bytes: 0,
            ok,
        });
    }

    fn block(&mut self, b: &FsCpBlock<'_>) {
        let mode = self.shared.cp_sync();
        let Some(cur) = &mut self.cur else { return };
        if !cur.ok {
            return;
        }
        let enc = encode::encode(mode, b, cur.peer, &CacheReader(self.shared.volume()));
        let size = encode::wire_size(&enc);
        let c = self.shared.counters();
        match EncKind::of(&enc) {
            EncKind::Full => c.full.add(size),
            EncKind::Ref => c.refs.add(size),
            EncKind::Recipe => c.recipes.add(size),
            EncKind::Delta => c.deltas.add(size),
        }
        cur.pending.push(CpBlock {
            addr: b.addr.0,
            hash: b.hash.0,
            enc,
        });
        cur.pending_bytes += size;
        if cur.pending.len() >= MAX_BLOCKS_PER_CP_FRAME || cur.pending_bytes >= CP_FRAME_BYTES {
            self.flush_blocks();
        }
    }

    fn commit(&mut self, sb: &Superblock, superblock: &Block) {
        self.flush_blocks();
        let Some(cur) = self.cur.take() else { return };
        if cur.ok {
            self.shared.push(Item::CpEnd {
                sb: Box::new(sb.clone()),
                superblock: Box::new(*superblock),
            });
        }
    }

    fn abort(&mut self) {
        if self.cur.take().is_some() {
            self.shared.abandon();
        }
    }
}

/// The first transfer not contained in CP `base` (transfers from there on
/// are in the log the peer receives).
fn base_covers(vol: &Volume, base: CpNumber) -> TransferId {
    let sb = vol.committed();
    if sb.cp == base {
        TransferId(sb.log.next_transfer.0.saturating_sub(1))
    } else {
        // The base is older than what we know: assume nothing.
        TransferId(u64::MAX)
    }
}

async fn connection_loop(s: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    let mut last_logged: Option<String> = None;
    while !s.shutdown.load(Ordering::SeqCst) {
        s.set_phase(Phase::Connecting);
        let result = async {
            let stream = connect(&s.cfg.peer).await?;
            stream.set_nodelay(true).ok();
            s.link.lock().local_addr = stream.local_addr().ok();
            let blocks = s.vol.committed().total_blocks;
            let (mut session, info) =
                handshake_client(stream, &s.cfg.credentials, s.vol.uuid(), blocks).await?;
            session.sender_mut().set_compression(s.cfg.compress);
            log::info!(
                "connected to peer {} (protocol {}, {}, peer key {})",
                s.cfg.peer,
                info.version,
                info.suite.protocol_name(),
                info.remote_key
            );
            last_logged = None;
            let started = Instant::now();
            let ended = run_session(&s, session, info).await;
            // The pause starts over only after a session that lasted: a
            // peer that fails every session at once (its disk full, say)
            // would otherwise take a resync every 200 ms.
            if started.elapsed() >= STABLE_SESSION {
                backoff = MIN_BACKOFF;
            }
            ended
        }
        .await;
        {
            s.out.lock().close();
            s.out_cv.notify_all();
        }
        *s.ctrl.lock() = None;
        s.set_phase(Phase::Disconnected);
        if s.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let mut pause = backoff;
        if let Err(e) = result {
            let msg = e.to_string();
            let diverged = matches!(e, ReplicateError::Diverged { .. });
            if last_logged.as_ref() != Some(&msg) {
                if diverged {
                    log::error!("peer {}: {msg}", s.cfg.peer);
                } else {
                    log::warn!("peer {}: {msg}; retrying", s.cfg.peer);
                }
                last_logged = Some(msg.clone());
            }
            if diverged {
                pause = DIVERGED_RETRY;
            }
            s.link.lock().last_error = Some(msg);
            s.link_cv.notify_all();
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(addr: &str) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ReplicateError::Io {
            what: format!("resolving {addr}"),
            source: e,
        })?
        .collect();
    let mut last = None;
    for a in addrs {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            }
        }
    }
    Err(ReplicateError::Io {
        what: format!("connecting to {addr}"),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

type Tx = SendHalf<tokio::io::WriteHalf<TcpStream>>;
type Rx = RecvHalf<tokio::io::ReadHalf<TcpStream>>;

/// What the receiving task tells the sending one.
enum FromPeer {
    /// The session ended: with the receive error that ended it, or `None`
    /// after the peer's `Bye`. The sender ends the session with that error,
    /// so that status keeps the cause rather than "the session ended".
    Ended(Option<ReplicateError>),
    Missing {
        cp: u64,
        addrs: Vec<u64>,
        more: bool,
    },
    Rejected {
        cp: u64,
        reason: String,
    },
    Mismatch,
    Verify(u64, [u8; 32], Option<Vec<u8>>),
    Switched(SwitchoverAnswer),
    Verdict {
        peer_id: u64,
        generations: Vec<WireGeneration>,
        refusal: Option<Refusal>,
    },
}

async fn run_session(
    s: &Arc<Shared>,
    session: crate::session::Session<TcpStream>,
    info: HandshakeInfo,
) -> Result<()> {
    let (mut tx, rx) = session.split();
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel();
    *s.ctrl.lock() = Some(ctrl_tx);
    // Transfers go out while the local disk writes them, so the peer may
    // hold some that a crash took from us: it drops what lies past our
    // log's end, and only what both hold counts as acknowledged.
    let log_end = tokio::task::block_in_place(|| s.vol.status().last_durable_transfer);
    let held = s.link.lock().begin_session(&info.resume, log_end);
    // Pin the committed image and start queueing before deciding, so that
    // nothing produced from now on is missed.
    let pinned = {
        let sb = tokio::task::block_in_place(|| s.vol.peer_tracking_start());
        s.out.lock().open(&sb);
        sb
    };
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(receive_loop(s.clone(), rx, peer_tx));
    let mut sender = Sender {
        s: s.clone(),
        tx: &mut tx,
        st: SenderState::default(),
        pending_verify: None,
        pending_switchover: None,
    };
    let resume = info.resume.applied_cp;
    let result = async {
        state_history(&mut sender, &pinned, resume, &mut peer_rx).await?;
        sender
            .send(
                &Message::LogEnd {
                    transfer: log_end.0,
                },
                &s.counters.wire_total,
            )
            .await?;
        let plan = sender
            .st
            .plan_resume(resume, &pinned, held, |cp| s.vol.known_root_hash(cp));
        match plan {
            Resume::Stream => {
                log::info!("peer is at CP {}: streaming", pinned.cp.0);
                let covered = TransferId(pinned.log.next_transfer.0 - 1);
                let mut l = s.link.lock();
                l.acked_transfer = l.acked_transfer.max(covered);
            }
            Resume::Resync { base, alarm } => {
                if let Some(msg) = alarm {
                    log::error!("{msg}");
                    s.link.lock().alarm = Some(msg);
                }
                sender.resync(&pinned, base).await?;
            }
        }
        // Batches handed over before the queue accepted them (and any
        // newer ones: the queue's copies of those are then skipped).
        sender.fill_gap(TransferId(u64::MAX)).await?;
        let durable = tokio::task::block_in_place(|| s.vol.status().last_durable_transfer);
        s.set_phase(Phase::Streaming);
        s.link.lock().caught_up(durable, pinned.cp);
        sender.stream(&mut ctrl_rx, &mut peer_rx).await
    }
    .await;
    let result = match result {
        Err(e @ (ReplicateError::Io { .. } | ReplicateError::ConnectionClosed { .. })) => {
            Err(peer_reason(&mut peer_rx).await.unwrap_or(e))
        }
        r => r,
    };
    reader.abort();
    let _ = tx.close().await;
    result
}

/// A peer that refuses something says why and closes; a write of ours may
/// meet the closed connection before the reader has the reason. Waits
/// briefly for the reader's end and returns the error it met, if any, so
/// that status names the peer's reason rather than a reset connection.
async fn peer_reason(from_peer: &mut mpsc::UnboundedReceiver<FromPeer>) -> Option<ReplicateError> {
    let ended = async {
        loop {
            match from_peer.recv().await {
                Some(FromPeer::Ended(e)) => return e,
                Some(_) => {}
                None => return None,
            }
        }
    };
    tokio::time::timeout(PEER_REASON_WAIT, ended)
        .await
        .ok()
        .flatten()
}

/// States this volume's history to the peer (`SourceLineage`) and waits for
/// its verdict. A refusal, or a verdict whose lineage does not put the
/// peer's CP on our history, is recorded for status and ends the session
/// with [`ReplicateError::Diverged`] before anything else is sent.
async fn state_history(
    sender: &mut Sender<'_>,
    pinned: &Superblock,
    resume: Option<crate::handshake::AppliedCp>,
    from_peer: &mut mpsc::UnboundedReceiver<FromPeer>,
) -> Result<()> {
    let s = sender.s.clone();
    let lineage = s.vol.lineage();
    let hold = s.vol.held_for_peer().map(|h| HoldRecord {
        peer_id: h.peer_id,
        cp: h.cp.0,
        root_hash: h.root_hash.0,
    });
    let ours = Side {
        lineage: lineage.clone(),
        cp: pinned.cp.0,
        root_hash: pinned.root_hash().0,
        uncommitted: s.vol.uncommitted() || s.vol.committed().cp > pinned.cp,
    };
    sender
        .send(
            &Message::SourceLineage {
                generations: wire_lineage(&lineage),
                cp: ours.cp,
                root_hash: ours.root_hash,
                uncommitted: ours.uncommitted,
                hold,
            },
            &s.counters.wire_total,
        )
        .await?;
    let (peer_id, generations, refusal) = loop {
        let m = tokio::time::timeout(VERDICT_WAIT, from_peer.recv())
            .await
            .map_err(|_| {
                ReplicateError::Protocol("the peer did not judge our history in time".into())
            })?;
        match m {
            Some(FromPeer::Verdict {
                peer_id,
                generations,
                refusal,
            }) => break (peer_id, generations, refusal),
            Some(FromPeer::Ended(Some(e))) => return Err(e),
            Some(FromPeer::Ended(None)) | None => {
                return Err(ReplicateError::Protocol(
                    "the peer ended the session before judging our history".into(),
                ))
            }
            Some(_) => continue,
        }
    };
    let judged = s
        .link
        .lock()
        .judge(&ours, resume, peer_id, &generations, refusal);
    s.link_cv.notify_all();
    judged
}

struct Sender<'a> {
    s: Arc<Shared>,
    tx: &'a mut Tx,
    /// The session's position in the stream (what the machine decides from).
    st: SenderState,
    pending_verify: Option<oneshot::Sender<VerifyAnswer>>,
    pending_switchover: Option<oneshot::Sender<SwitchoverAnswer>>,
}

impl Sender<'_> {
    async fn send(&mut self, msg: &Message, counter: &AtomicU64) -> Result<()> {
        let n = self.tx.send(msg).await?;
        self.count(n, counter);
        Ok(())
    }

    /// Adds `n` wire bytes to `counter` and to the total.
    fn count(&self, n: usize, counter: &AtomicU64) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.s
            .counters
            .wire_total
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn send_cp(&mut self, msg: &Message) -> Result<()> {
        let s = self.s.clone();
        self.send(msg, &s.counters.cp_sent).await?;
        self.st.sent(msg);
        Ok(())
    }

    /// Sends every block of image `sb` born after `base` (all if `None`),
    /// in full, as one resync CP. The peer applies it like any CP.
    async fn resync(&mut self, sb: &Superblock, base: Option<CpNumber>) -> Result<()> {
        self.s.set_phase(Phase::Resyncing);
        let min_birth = CpNumber(base.map_or(0, |b| b.0 + 1));
        log::info!(
            "resyncing the peer from {} to CP {}",
            base.map_or("nothing".to_string(), |b| format!("CP {}", b.0)),
            sb.cp.0
        );
        // Count first so status can show progress, rate and ETA.
        let vol = self.s.vol.clone();
        let sbc = sb.clone();
        let total = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            twinfs_fs::diff::walk_image(vol.cache(), &sbc, min_birth, &mut |_, _| {
                n += 1;
                Ok(())
            })
            .map(|_| n)
        })
        .await
        .map_err(|e| ReplicateError::Protocol(format!("resync walker: {e}")))?
        .map_err(|e| ReplicateError::Protocol(format!("walking the image for resync: {e}")))?;
        self.s.link.lock().resync = Some(ResyncProgress {
            base_cp: base,
            target_cp: sb.cp,
            bytes_total: total * BLOCK_SIZE as u64,
            bytes_done: 0,
            started: Instant::now(),
        });
        self.send_cp(&SenderState::resync_begin(sb, base)).await?;
        // A blocking walker feeds frames through a small channel: bounded memory.
        // Each frame is its blocks' (address, hash) and their contents back to
        // back, sent from that buffer as it is.
        let (btx, mut brx) = mpsc::channel::<(Vec<(u64, [u8; 16])>, Vec<u8>)>(4);
        let vol = self.s.vol.clone();
        let sbc = sb.clone();
        let walker = tokio::task::spawn_blocking(move || {
            // A frame's pointers are read together: adjacent addresses in one
            // device read, each block verified against its pointer.
            let mut ptrs: Vec<Option<BlockPtr>> = Vec::with_capacity(MAX_BLOCKS_PER_CP_FRAME);
            let send = |ptrs: &mut Vec<Option<BlockPtr>>| -> std::result::Result<(), FsError> {
                let mut data = vec![0; ptrs.len() * BLOCK_SIZE];
                vol.cache().read_into(ptrs, &mut data)?;
                let blocks = ptrs
                    .drain(..)
                    .flatten()
                    .map(|p| (p.addr.0, p.hash.0))
                    .collect();
                btx.blocking_send((blocks, data))
                    .map_err(|_| FsError::Failed("resync stopped".into()))
            };
            twinfs_fs::diff::walk_image(vol.cache(), &sbc, min_birth, &mut |p, _| {
                ptrs.push(Some(*p));
                if ptrs.len() >= MAX_BLOCKS_PER_CP_FRAME {
                    send(&mut ptrs)?;
                }
                Ok(())
            })?;
            if !ptrs.is_empty() {
                send(&mut ptrs)?;
            }
            Ok::<(), FsError>(())
        });
        while let Some((blocks, data)) = brx.recv().await {
            let n = blocks.len();
            self.s.counters.resync_blocks.add(n * BLOCK_SIZE);
            let wire = self.tx.send_full_blocks(sb.cp.0, &blocks, &data).await?;
            self.count(wire, &self.s.counters.cp_sent);
            if let Some(r) = &mut self.s.link.lock().resync {
                r.bytes_done += (n * BLOCK_SIZE) as u64;
            }
        }
        walker
            .await
            .map_err(|e| ReplicateError::Protocol(format!("resync walker: {e}")))?
            .map_err(|e| ReplicateError::Protocol(format!("resync failed: {e}")))?;
        self.end_cp(sb, &sb.encode()).await?;
        self.st.resync_sent(sb);
        log::info!("resync stream of CP {} sent ({total} blocks)", sb.cp.0);
        Ok(())
    }

    async fn end_cp(&mut self, sb: &Superblock, superblock: &Block) -> Result<()> {
        self.s
            .link
            .lock()
            .sent
            .insert(sb.cp.0, Box::new(sb.clone()));
        self.send_cp(&machine::cp_end(sb, superblock)).await
    }

    /// Sends transfers still in the source's log that the peer lacks, up to `before`.
    async fn fill_gap(&mut self, before: TransferId) -> Result<()> {
        loop {
            let Some(from) = self.st.gap_from(before) else {
                return Ok(());
            };
            let vol = self.s.vol.clone();
            let batches =
                tokio::task::spawn_blocking(move || vol.live_batches(from, FILL_GAP_BYTES))
                    .await
                    .map_err(|e| ReplicateError::Protocol(format!("log reader: {e}")))?
                    .map_err(|e| {
                        ReplicateError::Protocol(format!("reading the log to resend: {e}"))
                    })?;
            let done = batches.last().is_none_or(|b| b.id >= before);
            for b in batches.into_iter().filter(|b| b.id < before) {
                self.send_transfer(&b).await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn send_transfer(&mut self, b: &SealedBatch) -> Result<()> {
        if !self.st.wants_transfer(b.id) {
            return Ok(());
        }
        self.tx.note_backlog(self.s.out.lock().bytes);
        let n = self.tx.send_transfer(b.id.0, &b.bytes).await?;
        let s = self.s.clone();
        s.counters.log_sent.fetch_add(n as u64, Ordering::Relaxed);
        s.counters.wire_total.fetch_add(n as u64, Ordering::Relaxed);
        s.counters.transfers.add(b.bytes.len());
        self.st.transfer_sent(b.id);
        Ok(())
    }

    /// The steady state: sends the outbound queue in order, answers the
    /// peer, resyncs when a CP could not be streamed.
    async fn stream(
        &mut self,
        ctrl: &mut mpsc::UnboundedReceiver<Ctrl>,
        from_peer: &mut mpsc::UnboundedReceiver<FromPeer>,
    ) -> Result<()> {
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut nonce = 0u64;
        loop {
            if self.s.shutdown.load(Ordering::SeqCst) {
                let _ = self.tx.send(&Message::Bye).await;
                return Ok(());
            }
            while let Ok(m) = from_peer.try_recv() {
                self.answer(m).await?;
            }
            if std::mem::take(&mut self.s.out.lock().lost) {
                self.catch_up().await?;
                continue;
            }
            let item = {
                let mut q = self.s.out.lock();
                let item = q.pop();
                if item.is_some() {
                    self.s.out_cv.notify_all();
                }
                item
            };
            match item.map(|i| self.st.on_item(i)) {
                Some(Step::Transfer(b)) => {
                    self.fill_gap(b.id).await?;
                    self.send_transfer(&b).await?;
                }
                Some(Step::CatchUp) => {
                    // A CP was produced while we could not stream it.
                    self.catch_up().await?;
                    continue;
                }
                Some(Step::CpBegin { covers, msg }) => {
                    if let Some(c) = covers {
                        self.fill_gap(TransferId(c.0 + 1)).await?;
                    }
                    self.send_cp(&msg).await?;
                }
                Some(Step::Send(msg)) => self.send_cp(&msg).await?,
                Some(Step::EndCp { sb, superblock }) => self.end_cp(&sb, &superblock).await?,
                Some(Step::Skip) => {}
                None => {
                    tokio::select! {
                        _ = self.s.wake.notified() => {}
                        _ = ping.tick() => {
                            nonce += 1;
                            *self.s.ping_sent.lock() = Some((nonce, Instant::now()));
                            let s = self.s.clone();
                            self.send(&Message::Ping { nonce }, &s.counters.wire_total).await?;
                        }
                        Some(c) = ctrl.recv() => self.control(c).await?,
                        Some(m) = from_peer.recv() => self.answer(m).await?,
                    }
                }
            }
        }
    }

    /// Brings a peer that missed CPs up to the committed CP with a resync
    /// of the blocks born since its applied CP.
    async fn catch_up(&mut self) -> Result<()> {
        // Whatever was queued builds on CPs the peer will not have.
        {
            let mut q = self.s.out.lock();
            q.clear();
            self.s.out_cv.notify_all();
        }
        let sb = tokio::task::block_in_place(|| self.s.vol.peer_tracking_start());
        let Some(base) = self.st.catch_up_base(&sb) else {
            return Ok(());
        };
        // Transfers the resync covers count as handed over; so do the
        // newer ones cleared from the queue (fill_gap sends them).
        self.s.out.lock().pinned(&sb);
        self.resync(&sb, base).await?;
        self.s.set_phase(Phase::Streaming);
        Ok(())
    }

    async fn control(&mut self, c: Ctrl) -> Result<()> {
        match c {
            Ctrl::Verify { cp, deep, reply } => {
                self.pending_verify = Some(reply);
                self.send_cp(&Message::VerifyRequest { cp: cp.0, deep })
                    .await
            }
            Ctrl::Switchover {
                sb,
                return_to,
                reply,
            } => {
                self.pending_switchover = Some(reply);
                let cfg = &self.s.cfg;
                let msg = Message::Switchover {
                    cp: sb.cp.0,
                    root_hash: sb.root_hash().0,
                    return_to,
                    mode: cfg.mode.name().to_string(),
                    cp_sync: cfg.cp_sync.name().to_string(),
                };
                let s = self.s.clone();
                self.send(&msg, &s.counters.wire_total).await
            }
        }
    }

    async fn answer(&mut self, m: FromPeer) -> Result<()> {
        match m {
            FromPeer::Missing { cp, addrs, more } => {
                let sent = self.s.link.lock().sent.get(&cp).cloned();
                let sb = match self.st.on_missing(cp, sent)? {
                    Missing::Resend(sb) => sb,
                    Missing::Late => {
                        log::info!(
                            "the peer asks for {} blocks of CP {cp}, but CP {} began since: \
                             leaving it to the resync",
                            addrs.len(),
                            self.st.last_cp_begun.0
                        );
                        return Ok(());
                    }
                };
                // A frame's worth at a time: a request may name 65,536 blocks.
                for chunk in addrs.chunks(MAX_BLOCKS_PER_CP_FRAME) {
                    let vol = self.s.vol.clone();
                    let chunk = chunk.to_vec();
                    let blocks = tokio::task::spawn_blocking(move || read_blocks(&vol, &chunk))
                        .await
                        .map_err(|e| ReplicateError::Protocol(format!("block reader: {e}")))??;
                    for b in &blocks {
                        self.s.counters.misses.add(encode::wire_size(&b.enc));
                    }
                    self.send_cp(&Message::CpBlocks { cp, blocks }).await?;
                }
                let n = addrs.len();
                log::info!("resent {n} blocks of CP {cp} in full at the peer's request");
                if !more {
                    self.end_cp(&sb, &sb.encode()).await?;
                }
                Ok(())
            }
            FromPeer::Rejected { cp, reason } => {
                log::warn!("the peer rejected CP {cp}: {reason}; resyncing");
                let applied = self.s.link.lock().applied.map(|(c, _)| c);
                self.st.on_rejected(applied);
                self.catch_up().await
            }
            FromPeer::Mismatch => {
                self.st.on_mismatch();
                self.catch_up().await
            }
            FromPeer::Ended(Some(e)) => Err(e),
            FromPeer::Ended(None) => Err(ReplicateError::Protocol(
                "the peer ended the session".into(),
            )),
            FromPeer::Verify(cp, root, deep) => {
                if let Some(r) = self.pending_verify.take() {
                    let _ = r.send(Ok((cp, root, deep)));
                }
                Ok(())
            }
            FromPeer::Switched(answer) => {
                if let Some(r) = self.pending_switchover.take() {
                    let _ = r.send(answer);
                }
                Ok(())
            }
            FromPeer::Verdict { .. } => Err(ReplicateError::Protocol(
                "the peer judged our history twice".into(),
            )),
        }
    }
}

/// Reads blocks of the committed image (protected for the peer) to resend in full.
fn read_blocks(vol: &Volume, addrs: &[u64]) -> Result<Vec<CpBlock>> {
    let dev = vol.cache().device().clone();
    let mut out = Vec::with_capacity(addrs.len());
    let mut buf = vec![0u8; BLOCK_SIZE];
    for &a in addrs {
        dev.read(twinfs_fs::BlockAddr(a), &mut buf)
            .map_err(|e| ReplicateError::Io {
                what: format!("reading block {a} to resend"),
                source: e,
            })?;
        out.push(CpBlock {
            addr: a,
            hash: twinfs_fs::Hash128::of(&buf).0,
            enc: Encoding::Full(buf.clone()),
        });
    }
    Ok(out)
}

async fn receive_loop(s: Arc<Shared>, mut rx: Rx, to_sender: mpsc::UnboundedSender<FromPeer>) {
    let result: Result<()> = async {
        loop {
            let msg = tokio::time::timeout(PING_EVERY * 3, rx.recv())
                .await
                .map_err(|_| ReplicateError::Protocol("the peer went silent".into()))??;
            match msg {
                Message::TransferAck { id } => {
                    let handed_over = s.out.lock().last_queued_transfer;
                    s.link.lock().on_transfer_ack(TransferId(id), handed_over);
                    s.link_cv.notify_all();
                }
                Message::CpApplied { cp, root_hash } => {
                    let applied = s.link.lock().on_cp_applied(cp, root_hash)?;
                    match applied {
                        Applied::Mismatch => {
                            let _ = to_sender.send(FromPeer::Mismatch);
                            continue;
                        }
                        Applied::Ack(sb, peer_id) => {
                            tokio::task::block_in_place(|| s.vol.peer_acked(&sb, peer_id));
                            s.link.lock().applied_recorded(&sb);
                            s.link_cv.notify_all();
                        }
                    }
                }
                Message::CpMissing { cp, addrs, more } => {
                    let _ = to_sender.send(FromPeer::Missing { cp, addrs, more });
                    s.wake.notify_one();
                }
                Message::CpRejected { cp, reason } => {
                    let _ = to_sender.send(FromPeer::Rejected { cp, reason });
                    s.wake.notify_one();
                }
                Message::VerifyReply {
                    cp,
                    root_hash,
                    deep_hash,
                } => {
                    let _ = to_sender.send(FromPeer::Verify(cp, root_hash, deep_hash));
                    s.wake.notify_one();
                }
                Message::Pong { nonce } => {
                    if let Some((n, at)) = *s.ping_sent.lock() {
                        if n == nonce {
                            s.link.lock().rtt = Some(at.elapsed());
                        }
                    }
                }
                Message::Ping { .. } => {}
                Message::SwitchedOver { cp, root_hash } => {
                    let _ = to_sender.send(FromPeer::Switched(Ok((cp, root_hash))));
                    s.wake.notify_one();
                }
                Message::SwitchoverRefused { reason } => {
                    let _ = to_sender.send(FromPeer::Switched(Err(reason)));
                    s.wake.notify_one();
                }
                Message::LineageVerdict {
                    peer_id,
                    generations,
                    refusal,
                } => {
                    let _ = to_sender.send(FromPeer::Verdict {
                        peer_id,
                        generations,
                        refusal,
                    });
                    s.wake.notify_one();
                }
                Message::Error { reason } => {
                    return Err(ReplicateError::Protocol(format!(
                        "the peer reports an error: {reason}"
                    )));
                }
                Message::Bye => return Ok(()),
                other => {
                    return Err(ReplicateError::Protocol(format!(
                        "unexpected {} from the peer",
                        other.kind()
                    )))
                }
            }
        }
    }
    .await;
    let ended = match result {
        Err(e) => {
            log::warn!("peer session: {e}");
            s.link.lock().last_error = Some(e.to_string());
            Some(e)
        }
        Ok(()) => None,
    };
    // Wake the sender so it notices the session is over.
    let _ = to_sender.send(FromPeer::Ended(ended));
    s.wake.notify_one();
}
