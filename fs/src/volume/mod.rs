//! The volume: the public API over the image, the NVLOG and consistency points.
//!
//! Threads: callers (FUSE threads) change the active overlay and append to
//! the open log batch under the state lock; a log writer thread writes sealed
//! batches and makes them durable; a CP thread (or a caller asking for a
//! checkpoint) turns the frozen overlay into blocks without holding the state
//! lock, so operations continue into the next generation meanwhile.
//!
//! This file holds the types, the shared state and open/close; the rest is
//! one part per job: `reads` and `changes` (the API over the live tree
//! and snapshots), `log_writer` (the NVLOG and writer pacing),
//! `checkpoint` (when CPs run, and running one), `snapshots`,
//! `peer_hold` (what the mirroring layer needs kept and sent), `replay`
//! (at open), `mkfs` and `stats`.
//!
//! Lock order, for every thread: `cp` → `state` → `log_io` → `log` →
//! `pacers` → `signals` → `failed` → `replicator`. A thread holding one of
//! them takes only those after it; most are held for a few lines and
//! none across a wait for another thread, except `cp` (held for a whole CP)
//! and `log_io` (held while batches are written and handed to the
//! replicator).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::alloc::{self, Allocator};
use crate::apply::{self, Applier};
use crate::btree::{self, Key, TreeRoot};
use crate::cache::BlockCache;
use crate::cp::{self, CpInput, CpSink, CpWriter, RetainedChanges};
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::filetree::{self, MAX_FILE_SIZE};
use crate::items::{self, InodeAttrs, InodeRecord, RetainedImage};
use crate::lineage::{self, GenerationId, Lineage};
use crate::nvlog::batch::{OpenBatch, SealedBatch, BATCH_TARGET_BYTES, MAX_BATCH_BLOCKS};
use crate::nvlog::record::{self, Create, Record, SetAttr, Write};
use crate::nvlog::{self, LogRegion};
use crate::overlay::{Layers, Overlay};
use crate::pacer::{Backlog, Pacer};
use crate::superblock::{self, LogPosition, Superblock};
use crate::types::*;

mod changes;
mod checkpoint;
mod log_writer;
mod mkfs;
mod peer_hold;
mod reads;
mod replay;
mod snapshots;
mod stats;

pub use mkfs::{default_log_blocks, min_volume_bytes, mkfs};
use snapshots::read_snapshots;
pub use snapshots::MAX_SNAPSHOTS;
pub use stats::{LatencyHistogram, LatencySnapshot, VolumeStats, LATENCY_BUCKET_BOUNDS_US};

/// Source of time stamps; injectable so that tests are deterministic.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(std::time::SystemTime::now())
    }
}

/// Receives what the mirroring layer needs from the log.
pub trait Replicator: Send + Sync {
    /// A batch goes to the log (called in transfer order, just before it is
    /// written): the peer may store it while the local disk does, so fsync
    /// waits for the slower of the two, not their sum. Until the write is
    /// durable a crash may lose it here and not at the peer; the mirror
    /// tells the peer where this log ends when it reconnects.
    fn batch_logged(&self, batch: &SealedBatch);
    /// Returns once transfer `id` is durable at the peer, or fails when the
    /// mode demands it and the peer cannot confirm.
    fn wait_for_peer(&self, id: TransferId) -> Result<()>;
    /// The outbound queue to the peer, when writers should be paced to it
    /// (see [`crate::pacer`]); `None` when they should not (no session,
    /// or a mode that lets the peer fall behind).
    fn queue_level(&self) -> Option<Backlog> {
        None
    }
}

/// How a volume runs.
#[derive(Clone)]
pub struct VolumeConfig {
    pub read_only: bool,
    /// Time between CPs; `None` takes CPs only on request and at the bounds.
    pub cp_interval: Option<Duration>,
    /// Dirty data that triggers a CP; writers wait at twice this.
    pub dirty_limit_bytes: u64,
    /// Run the log writer and CP threads. Without them (tests), sealed
    /// batches are written at once and CPs run on the calling thread.
    pub background: bool,
    pub cache_meta_blocks: usize,
    pub cache_data_blocks: usize,
    /// Most bytes of sealed log batches waiting for the disk before
    /// writers wait; writers are paced from a quarter of it on.
    pub log_backlog_bytes: usize,
    pub clock: Arc<dyn Clock>,
    /// ID of the generation a read-write open begins (`None`: a random one;
    /// set by tests and the simulator for reproducible runs).
    pub generation: Option<GenerationId>,
    /// Open a replica's image read-write: `twinfs promote` makes it a volume
    /// this way. Without it such an image is refused read-write.
    pub adopt_replica: bool,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            read_only: false,
            cp_interval: Some(Duration::from_secs(10)),
            dirty_limit_bytes: DEFAULT_DIRTY_LIMIT,
            background: true,
            cache_meta_blocks: 8192,
            cache_data_blocks: 8192,
            log_backlog_bytes: DEFAULT_LOG_BACKLOG,
            clock: Arc::new(SystemClock),
            generation: None,
            adopt_replica: false,
        }
    }
}

/// Default dirty-data bound per generation.
pub const DEFAULT_DIRTY_LIMIT: u64 = 64 << 20;
/// Smallest log region: room for two of the largest batches and more.
pub const MIN_LOG_BLOCKS: u64 = 3 * MAX_BATCH_BLOCKS;
/// Largest log region mkfs creates by default (512 MiB).
pub const MAX_DEFAULT_LOG_BLOCKS: u64 = 131072;
/// Blocks kept back so that deletions and CPs work on a full volume.
const META_RESERVE_MIN: u64 = 64;
/// How long an open batch may wait before the log writer seals it.
const SEAL_AFTER: Duration = Duration::from_millis(20);
/// Default [`VolumeConfig::log_backlog_bytes`].
pub const DEFAULT_LOG_BACKLOG: usize = 32 << 20;
/// Largest write the volume takes in one record (bigger ones are split).
const MAX_WRITE_CHUNK: usize = 1 << 20;

/// Options of `mkfs`.
#[derive(Clone, Debug, Default)]
pub struct MkfsOptions {
    pub uuid: Option<[u8; 16]>,
    pub log_blocks: Option<u64>,
    pub root_uid: u32,
    pub root_gid: u32,
    pub time: Option<Timestamp>,
    /// ID of the volume's first generation (`None`: a random one).
    pub generation: Option<GenerationId>,
}

/// Which tree a read looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    Live,
    /// A snapshot, by id.
    Snapshot(u64),
}

/// Attributes as reported to users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// Allocated space in 512-byte units.
    pub blocks512: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
}

impl Attr {
    fn from(ino: Ino, a: &InodeAttrs) -> Attr {
        Attr {
            ino,
            kind: a.kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            size: a.size,
            blocks512: a.blocks.saturating_mul(BLOCK_SIZE_U64 / 512),
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.crtime,
        }
    }
}

/// One directory entry as listed by readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Pass this back to continue after this entry.
    pub cookie: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// Attribute changes requested by a user (see [`Volume::setattr`]).
#[derive(Clone, Debug, Default)]
pub struct AttrChanges {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub crtime: Option<Timestamp>,
}

/// A time to set: a given value or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// File system statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: u64,
    pub name: String,
    pub cp: CpNumber,
    pub created: Timestamp,
    pub root_hash: RootHash,
}

/// What `status` reports about the volume itself.
#[derive(Clone, Debug)]
pub struct VolumeStatus {
    pub cp: CpNumber,
    pub root_hash: RootHash,
    pub uuid: [u8; 16],
    pub bytes_written: u64,
    pub dirty_bytes: u64,
    pub log_used_blocks: u64,
    pub log_blocks: u64,
    pub last_durable_transfer: TransferId,
    pub next_transfer: TransferId,
    pub used_blocks: u64,
    pub total_blocks: u64,
    pub peer_hold: Option<CpNumber>,
    /// Blocks only snapshots keep (deleting them all gives these back).
    pub snapshot_only_blocks: u64,
    /// Blocks kept only for the peer's CP (given back as it catches up).
    pub peer_only_blocks: u64,
    pub failed: Option<String>,
    pub read_only: bool,
    /// When the committed CP was taken.
    pub cp_time: Timestamp,
}

struct State {
    image: Superblock,
    active: Overlay,
    frozen: Option<Arc<Overlay>>,
    batch: OpenBatch,
    batch_opened: Option<Instant>,
    /// Checksum of the last sealed batch (the hash chain).
    prev_hash: [u8; 32],
    last_sealed: Option<TransferId>,
    region: LogRegion,
    open_files: HashMap<Ino, u32>,
    retained: RetainedChanges,
    snapshots: Vec<(u64, RetainedImage)>,
    /// The peer hold the next CP records.
    peer_hold: Option<superblock::PeerHold>,
    /// Root hashes of the CPs committed since open (most recent last).
    history: std::collections::VecDeque<(CpNumber, RootHash)>,
    /// The lineage the next CP records: the committed CP's, plus the
    /// generation this read-write open began.
    lineage: Lineage,
    /// The next CP is taken even with nothing changed (it records a new
    /// lineage: an adopted replica becomes a volume at once).
    force_cp: bool,
}

#[derive(Default)]
struct LogQueue {
    /// Sealed, placed, not yet written.
    pending: std::collections::VecDeque<(u64, SealedBatch)>,
    /// Written, not yet reported durable.
    written: Vec<SealedBatch>,
    /// Some of `written` went out without a sync (tests without the
    /// background log writer) and need a whole-device flush.
    unflushed: bool,
    /// Bytes of batches queued or written but not yet durable.
    bytes: usize,
    /// Bytes of batches made durable since open (for the drain rate).
    durable_bytes: u64,
    durable: TransferId,
    shutdown: bool,
    error: Option<String>,
}

/// Writer pacing to the log's drain rate and to the peer's.
#[derive(Default)]
struct Pacers {
    log: Pacer,
    peer: Pacer,
}

struct CpCtl {
    alloc: Allocator,
    sink: Option<Box<dyn CpSink>>,
}

#[derive(Default)]
struct Signals {
    cp_wanted: bool,
    shutdown: bool,
    cps_done: u64,
}

/// The allocator's counts as last taken (after each CP, a peer
/// acknowledgement or a release), read without its lock by statfs, the
/// ENOSPC checks and status.
#[derive(Default)]
struct SpaceCounts {
    free: AtomicU64,
    snapshot_only: AtomicU64,
    peer_only: AtomicU64,
}

impl SpaceCounts {
    fn store(&self, alloc: &Allocator) {
        let space = alloc.space();
        self.free.store(space.free, Ordering::Relaxed);
        self.snapshot_only
            .store(space.snapshot_only, Ordering::Relaxed);
        self.peer_only.store(space.peer_only, Ordering::Relaxed);
    }
}

struct Inner {
    cfg: VolumeConfig,
    cache: BlockCache,
    uuid: [u8; 16],
    key: [u8; 32],
    state: RwLock<State>,
    cp: Mutex<CpCtl>,
    log: Mutex<LogQueue>,
    log_cv: Condvar,
    /// Serializes writing and flushing the log.
    log_io: Mutex<()>,
    pacers: Mutex<Pacers>,
    signals: Mutex<Signals>,
    signals_cv: Condvar,
    failed: Mutex<Option<String>>,
    space: SpaceCounts,
    meta_reserve: u64,
    replicator: RwLock<Option<Arc<dyn Replicator>>>,
    closed: AtomicBool,
    /// Changes are taken (false when opened read-only, and from the start
    /// of a [`Volume::demote`] on).
    writable: AtomicBool,
    /// No CPs: the volume only reads (opened read-only, or demoted), and
    /// may follow another writer's CPs with [`Volume::reload`].
    read_only: AtomicBool,
    /// Counts the times the image shown by a read-only volume moved: each
    /// [`Volume::reload`] and each [`Volume::begin_overwrite`].
    image_moves: AtomicU64,
    /// Blocks of the shown image are being overwritten, until the next
    /// [`Volume::reload`].
    overwriting: AtomicBool,
    stats: VolumeStats,
}

/// A mounted (opened) twinfs volume.
pub struct Volume {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Volume {
    /// Opens a volume, replays its log, and (unless read-only) commits the
    /// replayed state in a CP.
    pub fn open(dev: Arc<dyn BlockDevice>, cfg: VolumeConfig) -> Result<Volume> {
        let (sb, problems) = superblock::read_latest(&*dev)?;
        for p in problems {
            log::warn!("{p} (using the other superblock slot, CP {})", sb.cp.0);
        }
        if sb.replica && !cfg.read_only && !cfg.adopt_replica {
            return Err(FsError::ReplicaImage);
        }
        // A read-write open writes a new stretch of history: its CPs belong
        // to a new generation, so that a copy of this image, or this image
        // after a crash, can never pass for the history it left.
        let lineage = if cfg.read_only {
            sb.lineage.clone()
        } else {
            let id = cfg.generation.unwrap_or_else(lineage::random_generation_id);
            sb.lineage.begin(id, CpNumber(sb.cp.0 + 1))
        };
        let cache = BlockCache::new(dev.clone(), cfg.cache_meta_blocks, cfg.cache_data_blocks);
        let key = items::name_hash_key(&sb.uuid);
        let (map, tree) = alloc::load_map(&cache, &sb.alloc, sb.total_blocks)?;
        let mut allocator =
            Allocator::new(sb.total_blocks, sb.data_start(), sb.alloc_cursor, map, tree);
        let snapshots = read_snapshots(&cache, &sb.meta)?;
        let images: Vec<RetainedImage> = snapshots.iter().map(|(_, s)| s.clone()).collect();
        allocator.set_snapshots(cp::snapshot_union(&cache, &images, sb.total_blocks)?);
        if let Some(hold) = &sb.peer_hold {
            allocator.hold_image(
                hold.cp,
                alloc::image_blocks(&cache, &hold.alloc, sb.total_blocks)?,
            );
        }
        let meta_reserve = (sb.total_blocks / 100).max(META_RESERVE_MIN);
        let space = SpaceCounts::default();
        space.store(&allocator);
        let state = State {
            active: Overlay::new(sb.next_ino),
            frozen: None,
            batch: OpenBatch::new(sb.log.next_transfer),
            batch_opened: None,
            prev_hash: sb.log.last_batch_hash,
            last_sealed: None,
            region: LogRegion::new(sb.log_blocks, sb.log.replay_offset),
            open_files: HashMap::new(),
            retained: RetainedChanges::default(),
            snapshots,
            peer_hold: sb.peer_hold,
            history: [(sb.cp, sb.root_hash())].into(),
            lineage,
            force_cp: sb.replica && !cfg.read_only,
            image: sb.clone(),
        };
        let inner = Arc::new(Inner {
            cache,
            uuid: sb.uuid,
            key,
            state: RwLock::new(state),
            cp: Mutex::new(CpCtl {
                alloc: allocator,
                sink: None,
            }),
            log: Mutex::new(LogQueue {
                durable: TransferId(sb.log.next_transfer.0.saturating_sub(1)),
                ..Default::default()
            }),
            log_cv: Condvar::new(),
            log_io: Mutex::new(()),
            pacers: Mutex::new(Pacers::default()),
            signals: Mutex::new(Signals::default()),
            signals_cv: Condvar::new(),
            failed: Mutex::new(None),
            space,
            meta_reserve,
            replicator: RwLock::new(None),
            closed: AtomicBool::new(false),
            writable: AtomicBool::new(!cfg.read_only),
            read_only: AtomicBool::new(cfg.read_only),
            image_moves: AtomicU64::new(0),
            overwriting: AtomicBool::new(false),
            stats: VolumeStats::default(),
            cfg,
        });
        let replayed = inner.replay(&*dev, &sb)?;
        let vol = Volume {
            inner,
            threads: Mutex::new(Vec::new()),
        };
        if !vol.inner.cfg.read_only {
            let orphans = vol.inner.reclaim_orphans()?;
            let adopting = vol.inner.state.read().force_cp;
            if replayed > 0 || orphans > 0 || adopting {
                log::info!("replayed {replayed} log batches, reclaimed {orphans} orphans");
                // The log was taken when blocks kept for the peer may have
                // been given up already (that is not recorded until a CP):
                // the replayed changes must find the same room again.
                let short = {
                    let st = vol.inner.state.read();
                    vol.inner.check_space(&st, Need::Free).is_err()
                };
                if short {
                    vol.inner.release_peer_hold_for_space();
                }
                vol.checkpoint()?;
            }
            if vol.inner.cfg.background {
                vol.start_threads();
            }
        }
        Ok(vol)
    }

    fn start_threads(&self) {
        let mut threads = self.threads.lock();
        let inner = self.inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("twinfs-log".into())
                .spawn(move || inner.log_writer_loop())
                .expect("spawn log writer thread"),
        );
        let inner = self.inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("twinfs-cp".into())
                .spawn(move || inner.cp_loop())
                .expect("spawn CP thread"),
        );
    }

    /// Takes a final CP and stops the threads. Further operations fail.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = if self.inner.read_only() || self.inner.failed.lock().is_some() {
            Ok(())
        } else {
            self.checkpoint().map(|_| ())
        };
        self.stop_threads();
        result
    }

    /// Stops without a final CP, as a crash would (tests).
    pub fn crash(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.stop_threads();
    }

    fn stop_threads(&self) {
        {
            let mut s = self.inner.signals.lock();
            s.shutdown = true;
            self.inner.signals_cv.notify_all();
        }
        {
            let mut q = self.inner.log.lock();
            q.shutdown = true;
            self.inner.log_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Takes a CP now; returns once it is committed (or at once when nothing changed).
    pub fn checkpoint(&self) -> Result<CpNumber> {
        self.inner.run_cp()
    }

    /// Stops taking changes for good: every change made is committed in a
    /// final CP, then the volume turns read-only and stops its threads, so
    /// that it can follow the CPs another writer commits to the same image
    /// ([`Volume::reload`]). The old primary of a switchover becomes the
    /// read-only view of its own replica this way. Returns the final CP.
    pub fn demote(&self) -> Result<CpNumber> {
        {
            let _st = self.inner.state.write();
            self.inner.writable.store(false, Ordering::SeqCst);
        }
        let cp = self.checkpoint()?;
        self.stop_threads();
        self.inner.read_only.store(true, Ordering::SeqCst);
        Ok(cp)
    }

    /// Undoes a [`Volume::demote`] whose hand-over did not happen: takes
    /// changes again, in the same generation (nothing else wrote the image).
    pub fn resume_writes(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) || self.inner.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        self.inner.read_only.store(false, Ordering::SeqCst);
        {
            let mut s = self.inner.signals.lock();
            s.shutdown = false;
        }
        self.inner.log.lock().shutdown = false;
        if self.inner.cfg.background {
            self.start_threads();
        }
        self.inner.writable.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Switches a read-only volume (a replica's view) to the newest CP on
    /// the device. Readers see either the old image or the new one, whole.
    pub fn reload(&self) -> Result<CpNumber> {
        if !self.inner.read_only() {
            return Err(FsError::Invalid("only a read-only volume can reload"));
        }
        let dev = self.inner.cache.device().clone();
        let (sb, _) = superblock::read_latest(&*dev)?;
        if sb.uuid != self.inner.uuid {
            return Err(FsError::CorruptVolume(
                "the device now holds another volume".into(),
            ));
        }
        let snapshots = read_snapshots(&self.inner.cache, &sb.meta)?;
        let mut st = self.inner.state.write();
        st.active = Overlay::new(sb.next_ino);
        st.frozen = None;
        st.snapshots = snapshots;
        st.lineage = sb.lineage.clone();
        st.image = sb;
        self.inner.image_moves.fetch_add(1, Ordering::SeqCst);
        self.inner.overwriting.store(false, Ordering::SeqCst);
        Ok(st.image.cp)
    }

    /// The writer of this read-only volume's device is about to overwrite
    /// blocks of the image it shows (a replica's staged blocks); the next
    /// [`Volume::reload`] shows the image they belong to. Reads that fail
    /// their hash check meanwhile are worth retrying after it.
    pub fn begin_overwrite(&self) {
        self.inner.overwriting.store(true, Ordering::SeqCst);
        self.inner.image_moves.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the shown image moved (see [`Volume::begin_overwrite`]
    /// and [`Volume::reload`]): a read that failed while this changed may
    /// have read a block of the next image, and is worth retrying.
    pub fn image_moves(&self) -> u64 {
        self.inner.image_moves.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until no overwrite of the shown image is under
    /// way; returns whether none is.
    pub fn wait_not_overwriting(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.inner.overwriting.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Installs the mirroring layer's hooks.
    pub fn set_replicator(&self, r: Option<Arc<dyn Replicator>>) {
        *self.inner.replicator.write() = r;
    }

    /// Installs the receiver of each CP's change set.
    pub fn set_cp_sink(&self, sink: Option<Box<dyn CpSink>>) {
        self.inner.cp.lock().sink = sink;
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.inner.uuid
    }

    pub fn stats(&self) -> &VolumeStats {
        &self.inner.stats
    }

    /// The block cache (verified reads of committed blocks).
    pub fn cache(&self) -> &BlockCache {
        &self.inner.cache
    }

    /// The last committed superblock.
    pub fn committed(&self) -> Superblock {
        self.inner.state.read().image.clone()
    }

    pub fn status(&self) -> VolumeStatus {
        let st = self.inner.state.read();
        let dirty = st.active.dirty_bytes() + st.frozen.as_ref().map_or(0, |f| f.dirty_bytes());
        let durable = self.inner.log.lock().durable;
        let peer_hold = self.inner.cp.try_lock().and_then(|c| c.alloc.peer_hold());
        VolumeStatus {
            cp: st.image.cp,
            root_hash: st.image.root_hash(),
            uuid: self.inner.uuid,
            bytes_written: self.inner.stats.bytes_written.load(Ordering::Relaxed),
            dirty_bytes: dirty,
            log_used_blocks: st.region.used(),
            log_blocks: st.region.capacity(),
            last_durable_transfer: durable,
            next_transfer: st.batch.id,
            used_blocks: st.image.used_blocks,
            total_blocks: st.image.total_blocks,
            peer_hold,
            snapshot_only_blocks: self.inner.space.snapshot_only.load(Ordering::Relaxed),
            peer_only_blocks: self.inner.space.peer_only.load(Ordering::Relaxed),
            failed: self.inner.failed.lock().clone(),
            read_only: self.inner.read_only(),
            cp_time: st.image.cp_time,
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if !self.inner.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.close() {
                log::error!("closing the volume: {e}");
            }
        }
    }
}

/// Root hashes of recent CPs remembered, to recognise a peer's CP.
const CP_HISTORY: usize = 4096;

/// What an operation may need from free space.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// A new inode and a few metadata blocks.
    Create,
    /// Metadata only (attributes).
    Meta,
    /// Frees space, or at worst rewrites a little metadata: allowed into the reserve.
    Free,
    /// Up to this many new data blocks.
    Blocks(u64),
}

impl Inner {
    fn layers<'a>(&'a self, st: &'a State) -> Layers<'a> {
        Layers {
            top: Some(&st.active),
            mid: st.frozen.as_deref(),
            meta: st.image.meta,
            image_next_ino: st.image.next_ino,
            cache: &self.cache,
            key: &self.key,
        }
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    fn check_usable(&self) -> Result<()> {
        if !self.writable.load(Ordering::SeqCst) {
            return Err(FsError::ReadOnly);
        }
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(FsError::Failed(f.clone()));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(FsError::Failed("the volume is closed".into()));
        }
        Ok(())
    }

    fn fail(&self, why: &FsError) {
        let mut f = self.failed.lock();
        if f.is_none() {
            log::error!("the volume stops taking changes: {why}");
            *f = Some(why.to_string());
        }
    }

    /// Blocks that dirty state will need at its CP (an upper bound).
    fn reserved_blocks(&self, st: &State) -> u64 {
        let ov = |o: &Overlay| {
            o.dirty_blocks + o.dirty_blocks / 64 + 4 * o.inodes.len() as u64 + o.xattrs.len() as u64
        };
        ov(&st.active) + st.frozen.as_ref().map_or(0, |f| ov(f)) + 16
    }

    fn check_space(&self, st: &State, need: Need) -> Result<()> {
        let free = self.space.free.load(Ordering::Relaxed);
        let reserved = self.reserved_blocks(st);
        let (extra, reserve) = match need {
            Need::Free => (0, 0),
            Need::Meta => (2, self.meta_reserve / 2),
            Need::Create => (4, self.meta_reserve),
            Need::Blocks(n) => (n + n / 64 + 4, self.meta_reserve),
        };
        if reserved + extra + reserve > free {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// The volume is full while blocks are kept only for the peer (freed
    /// since the CP it last acknowledged; an absent peer keeps them until it
    /// returns): stop keeping them, so that writers get the space rather
    /// than ENOSPC. The peer's own image stays whole (its staging journal
    /// takes what the next resync overwrites); it only loses the cheap
    /// resume. Returns whether any block came free.
    fn release_peer_hold_for_space(&self) -> bool {
        let (held, gained) = {
            let mut ctl = self.cp.lock();
            // Read under the CP lock: tracking must start at the CP
            // committed now, whose frees the released hold no longer keeps.
            let committed = self.state.read().image.cp;
            let held = ctl.alloc.peer_hold();
            let gained = ctl.alloc.release_peer_hold(committed);
            if gained > 0 {
                self.space.store(&ctl.alloc);
            }
            (held, gained)
        };
        if gained == 0 {
            return false;
        }
        self.state.write().peer_hold = None;
        log::warn!(
            "the volume is full: released {gained} blocks kept for the peer's CP {}; \
             the peer's copy stays whole and catches up by a resync when it is back",
            held.map_or(0, |c| c.0)
        );
        true
    }

    /// Builds the records of one operation under the state lock, checks log
    /// and disk space, applies them in order and appends them to the log.
    /// `make` may run more than once (after waiting for log space).
    fn submit(
        &self,
        need: Need,
        mut make: impl FnMut(&State, Timestamp) -> Result<Vec<Record>>,
    ) -> Result<()> {
        let mut space_tries = 0;
        loop {
            self.check_usable()?;
            let mut st = self.state.write();
            // Checked again under the lock: a demote flips it holding the
            // lock, so every change applied is in the demote's final CP.
            if !self.writable.load(Ordering::SeqCst) {
                return Err(FsError::ReadOnly);
            }
            let now = self.cfg.clock.now();
            let recs = make(&st, now)?;
            let mut sizes = Vec::with_capacity(recs.len());
            let mut scratch = Vec::new();
            for r in &recs {
                scratch.clear();
                r.encode(0, &mut scratch);
                let blocks = if let Record::Write(w) = r {
                    w.blocks.len()
                } else {
                    0
                };
                sizes.push((scratch.len(), blocks));
            }
            let total_len: usize = sizes.iter().map(|s| s.0).sum();
            let total_blocks: usize = sizes.iter().map(|s| s.1).sum();
            if !st.batch.fits(total_len, total_blocks) {
                self.seal(&mut st)?;
            }
            if st
                .region
                .fit(st.batch.size_blocks_with(total_len, total_blocks))
                .is_none()
            {
                self.seal(&mut st)?;
                if st
                    .region
                    .fit(st.batch.size_blocks_with(total_len, total_blocks))
                    .is_none()
                {
                    drop(st);
                    self.stats.writer_waits.fetch_add(1, Ordering::Relaxed);
                    self.wait_for_cp()?;
                    continue;
                }
            }
            if let Err(e) = self.check_space(&st, need) {
                // Before calling the volume full: blocks freed by changes
                // not yet committed come back with a CP (two, if one is
                // already running without them), and blocks kept only for
                // an absent or slow peer are given up.
                let uncommitted = !st.active.is_empty() || st.frozen.is_some();
                drop(st);
                space_tries += 1;
                match space_tries {
                    1 | 2 if uncommitted => self.wait_for_cp()?,
                    1..=3 if self.release_peer_hold_for_space() => {}
                    _ => return Err(e),
                }
                continue;
            }
            if let Err(e) = self.apply_records(&mut st, &recs) {
                if matches!(e, FsError::CorruptVolume(_)) {
                    // Part of the operation may be applied and none of it
                    // is logged: no CP may commit this state.
                    self.fail(&e);
                }
                return Err(e);
            }
            let dirty = st.active.dirty_bytes();
            let log_busy = st.region.used() * 2 > st.region.capacity();
            if st.batch.bytes() >= BATCH_TARGET_BYTES {
                self.seal(&mut st)?;
            }
            drop(st);
            self.pace_writer(total_len + total_blocks * BLOCK_SIZE);
            if dirty > self.cfg.dirty_limit_bytes || log_busy {
                self.want_cp(dirty > 2 * self.cfg.dirty_limit_bytes)?;
            }
            return Ok(());
        }
    }

    /// Applies records in order: the first must succeed or nothing changes;
    /// a follow-up Reclaim that does not apply (the inode is still linked or
    /// open) is simply dropped.
    fn apply_records(&self, st: &mut State, recs: &[Record]) -> Result<()> {
        for (i, rec) in recs.iter().enumerate() {
            if let Record::Reclaim { ino } = rec {
                let open = st.open_files.contains_key(ino);
                let unlinked = self.layers(st).inode(*ino)?.is_some_and(|a| a.nlink == 0);
                if open || !unlinked {
                    continue;
                }
            }
            let pos = st.batch.position_of(rec);
            let State {
                active,
                frozen,
                image,
                ..
            } = &mut *st;
            let mut ap = Applier {
                top: active,
                mid: frozen.as_deref(),
                meta: image.meta,
                image_next_ino: image.next_ino,
                cache: &self.cache,
                key: &self.key,
            };
            match ap.apply(rec, pos) {
                Ok(()) => {}
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    return Err(FsError::CorruptVolume(format!(
                        "follow-up record failed: {e}"
                    )))
                }
            }
            st.batch.append(rec);
            if st.batch_opened.is_none() {
                st.batch_opened = Some(Instant::now());
            }
        }
        Ok(())
    }
}
