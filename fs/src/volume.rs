//! The volume: the public API over the image, the NVLOG and consistency points.
//!
//! Threads: callers (FUSE threads) change the active overlay and append to
//! the open log batch under the state lock; a log writer thread writes sealed
//! batches and makes them durable; a CP thread (or a caller asking for a
//! checkpoint) turns the frozen overlay into blocks without holding the state
//! lock, so operations continue into the next generation meanwhile.

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

/// Counters since the volume was opened.
#[derive(Default)]
pub struct VolumeStats {
    pub bytes_written: AtomicU64,
    pub batches_sealed: AtomicU64,
    pub cps: AtomicU64,
    pub last_cp_ms: AtomicU64,
    pub longest_cp_ms: AtomicU64,
    pub writer_waits: AtomicU64,
    /// Time writers slept to pace to the log and the peer.
    pub paced_ns: AtomicU64,
    /// How long each [`Volume::fsync`] took (locally durable and, in sync
    /// mode, at the peer).
    pub fsync_latency: LatencyHistogram,
}

/// Upper bounds of the [`LatencyHistogram`] buckets, in microseconds
/// (a last, unbounded bucket follows).
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKET_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Observations per bucket, as in [`LATENCY_BUCKET_BOUNDS_US`] plus the last.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKET_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
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

fn random_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut u = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u = *blake3::hash(&t.as_nanos().to_le_bytes())
            .as_bytes()
            .first_chunk()
            .expect("16 bytes");
    }
    u
}

/// Default log size for a volume of `total` blocks.
pub fn default_log_blocks(total: u64) -> u64 {
    (total / 8).clamp(MIN_LOG_BLOCKS, MAX_DEFAULT_LOG_BLOCKS)
}

/// Smallest volume mkfs accepts, in bytes.
pub fn min_volume_bytes() -> u64 {
    (2 + MIN_LOG_BLOCKS + 256) * BLOCK_SIZE_U64
}

/// Writes a new, empty volume onto `dev`: CP 0 with an empty root directory.
pub fn mkfs(dev: Arc<dyn BlockDevice>, opts: &MkfsOptions) -> Result<Superblock> {
    let total = dev.num_blocks();
    let log_blocks = opts.log_blocks.unwrap_or_else(|| default_log_blocks(total));
    if log_blocks < MIN_LOG_BLOCKS || 2 + log_blocks + 256 > total {
        return Err(FsError::Invalid(
            "the device is too small for a twinfs volume (at least 12 MiB)",
        ));
    }
    if total > superblock::MAX_VOLUME_BLOCKS {
        return Err(FsError::Invalid(
            "the device is larger than twinfs supports (4 PiB)",
        ));
    }
    let uuid = opts.uuid.unwrap_or_else(random_uuid);
    let time = opts
        .time
        .unwrap_or_else(|| Timestamp::from_system_time(std::time::SystemTime::now()));
    let data_start = 2 + log_blocks;
    let cache = BlockCache::new(dev.clone(), 64, 64);
    let mut alloc = Allocator::new(
        total,
        data_start,
        data_start,
        alloc::Bitmap::new(total),
        Default::default(),
    );
    let root = InodeAttrs {
        kind: FileKind::Directory,
        perm: 0o755,
        uid: opts.root_uid,
        gid: opts.root_gid,
        nlink: 2,
        size: 0,
        rdev: 0,
        parent: ROOT_INO,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        symlink: None,
    };
    let rec = InodeRecord {
        attrs: root,
        data: TreeRoot::default(),
    };
    let mut w = CpWriter::new(&cache, &*dev, &mut alloc, CpNumber(0), None);
    let meta = btree::apply(
        &mut w,
        &TreeRoot::default(),
        &[(InodeRecord::key(ROOT_INO), Some(rec.encode()))],
    )?;
    w.finish()?;
    drop(w);
    let (map_writes, map_holes) = alloc.take_dirty();
    let mut w = CpWriter::new(&cache, &*dev, &mut alloc, CpNumber(0), None);
    // The map tree's blocks live outside the map (see alloc).
    let alloc_root = mkfs_map(&mut w, &map_writes, &map_holes)?;
    drop(w);
    let generation = opts
        .generation
        .unwrap_or_else(lineage::random_generation_id);
    let sb = Superblock {
        alloc_cursor: alloc.cursor(),
        used_blocks: alloc.used_blocks(),
        inodes: 1,
        meta,
        alloc: alloc_root,
        cp_time: time,
        ..Superblock::empty(uuid, total, log_blocks, generation)
    };
    // Wipe the other slot and the head of the log so that nothing of an
    // earlier volume on this device can be mistaken for ours.
    let zero = vec![0u8; BLOCK_SIZE];
    let io = |e| FsError::io("writing the new volume", e);
    dev.write(BlockAddr(1), &zero).map_err(io)?;
    dev.write(BlockAddr(2), &zero).map_err(io)?;
    dev.flush().map_err(io)?;
    dev.write(BlockAddr(0), &sb.encode()[..]).map_err(io)?;
    dev.flush().map_err(io)?;
    Ok(sb)
}

fn mkfs_map(
    w: &mut CpWriter<'_>,
    writes: &std::collections::BTreeMap<u64, filetree::DirtyBlock>,
    holes: &crate::rangeset::RangeSet,
) -> Result<TreeRoot> {
    w.set_map_mode(true);
    let root = filetree::apply(w, &TreeRoot::default(), writes, holes)?;
    w.finish()?;
    Ok(root)
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

    // ---- reads -------------------------------------------------------------

    fn with_layers<T>(&self, view: View, f: impl FnOnce(&Layers<'_>) -> Result<T>) -> Result<T> {
        self.with_state_layers(view, |_, l| f(l))
    }

    /// Like `with_layers`, and hands `f` the state it holds locked: `f` must
    /// not lock it again, since a writer queued in between (the CP or log
    /// thread) would deadlock the second read lock.
    fn with_state_layers<T>(
        &self,
        view: View,
        f: impl FnOnce(&State, &Layers<'_>) -> Result<T>,
    ) -> Result<T> {
        let st = self.inner.state.read();
        match view {
            View::Live => {
                let layers = Layers {
                    top: Some(&st.active),
                    mid: st.frozen.as_deref(),
                    meta: st.image.meta,
                    image_next_ino: st.image.next_ino,
                    cache: &self.inner.cache,
                    key: &self.inner.key,
                };
                f(&st, &layers)
            }
            View::Snapshot(id) => {
                let snap = st
                    .snapshots
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, s)| s.meta)
                    .ok_or(FsError::NotFound)?;
                let layers = Layers {
                    top: None,
                    mid: None,
                    meta: snap,
                    // The snapshot is older than the image: this bound covers it.
                    image_next_ino: st.image.next_ino,
                    cache: &self.inner.cache,
                    key: &self.inner.key,
                };
                f(&st, &layers)
            }
        }
    }

    pub fn getattr(&self, view: View, ino: Ino) -> Result<Attr> {
        self.with_state_layers(view, |st, l| {
            let a = l.attrs(ino)?;
            if a.nlink == 0 && view == View::Live && !st.open_files.contains_key(&ino) {
                return Err(FsError::NotFound);
            }
            Ok(Attr::from(ino, &a))
        })
    }

    pub fn lookup(&self, view: View, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > items::NAME_MAX {
            return Err(FsError::NameTooLong {
                limit: items::NAME_MAX,
            });
        }
        self.with_layers(view, |l| {
            let p = l.attrs(parent)?;
            if p.kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            let ino = match name {
                b"." => parent,
                b".." => p.parent,
                _ => l.lookup(parent, name)?.ok_or(FsError::NotFound)?.0,
            };
            Ok(Attr::from(ino, &l.attrs(ino)?))
        })
    }

    /// Lists a directory after `cookie` (0 = from the start, including "."
    /// and ".."), calling `f` until it returns false.
    pub fn readdir(
        &self,
        view: View,
        dir: Ino,
        cookie: u64,
        f: &mut dyn FnMut(Listing) -> bool,
    ) -> Result<()> {
        self.with_layers(view, |l| {
            let d = l.attrs(dir)?;
            if d.kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            if cookie < 1
                && !f(Listing {
                    cookie: 1,
                    ino: dir,
                    kind: FileKind::Directory,
                    name: b".".to_vec(),
                })
            {
                return Ok(());
            }
            if cookie < 2
                && !f(Listing {
                    cookie: 2,
                    ino: d.parent,
                    kind: FileKind::Directory,
                    name: b"..".to_vec(),
                })
            {
                return Ok(());
            }
            l.readdir(dir, cookie.max(2), &mut |c, e| {
                f(Listing {
                    cookie: c,
                    ino: e.ino,
                    kind: e.kind,
                    name: e.name.clone(),
                })
            })
        })
    }

    /// Reads up to `size` bytes at `offset` (short at end of file).
    pub fn read(&self, view: View, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let got = self.read_to(view, ino, offset, size, &mut buf)?;
        buf.truncate(got.end);
        buf.drain(..got.start);
        Ok(buf)
    }

    /// Like [`Volume::read`], into `buf`, which it grows to the whole blocks
    /// the range touches and otherwise reuses as it is (no allocation and no
    /// zero fill for a caller that keeps one buffer); returns where in `buf`
    /// the bytes read are.
    pub fn read_to(
        &self,
        view: View,
        ino: Ino,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            match a.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("not a regular file")),
            }
            if offset >= a.size || size == 0 {
                return Ok(0..0);
            }
            let end = a.size.min(offset + u64::from(size));
            let first = offset / BLOCK_SIZE_U64;
            let last = (end - 1) / BLOCK_SIZE_U64;
            let blocks = ((last - first + 1) * BLOCK_SIZE_U64) as usize;
            if buf.len() < blocks {
                buf.resize(blocks, 0);
            }
            l.read_into(ino, first, &mut buf[..blocks])?;
            let skip = (offset - first * BLOCK_SIZE_U64) as usize;
            Ok(skip..skip + (end - offset) as usize)
        })
    }

    pub fn readlink(&self, view: View, ino: Ino) -> Result<Vec<u8>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            if a.kind != FileKind::Symlink {
                return Err(FsError::Invalid("not a symlink"));
            }
            if let Some(t) = &a.symlink {
                return Ok(t.to_vec());
            }
            let mut out = vec![0u8; (a.size.div_ceil(BLOCK_SIZE_U64) * BLOCK_SIZE_U64) as usize];
            l.read_into(ino, 0, &mut out)?;
            out.truncate(a.size as usize);
            Ok(out)
        })
    }

    pub fn getxattr(&self, view: View, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.with_layers(view, |l| {
            l.attrs(ino)?;
            l.xattr(ino, name)?.ok_or(FsError::NoAttr)
        })
    }

    pub fn listxattr(&self, view: View, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.with_layers(view, |l| {
            l.attrs(ino)?;
            l.xattr_names(ino)
        })
    }

    /// SEEK_DATA (`want_data`) or SEEK_HOLE from `offset`. `None` = ENXIO.
    pub fn seek(&self, view: View, ino: Ino, offset: u64, want_data: bool) -> Result<Option<u64>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            if offset >= a.size {
                return Ok(None);
            }
            let bi = offset / BLOCK_SIZE_U64;
            let found = l.seek(ino, bi, want_data)?;
            Ok(match (want_data, found) {
                (true, Some(b)) if b * BLOCK_SIZE_U64 < a.size => {
                    Some((b * BLOCK_SIZE_U64).max(offset))
                }
                (true, _) => None,
                (false, Some(b)) => Some((b * BLOCK_SIZE_U64).max(offset).min(a.size)),
                (false, None) => Some(a.size),
            })
        })
    }

    pub fn statfs(&self) -> StatFs {
        let st = self.inner.state.read();
        let reserved = self.inner.reserved_blocks(&st);
        let free = self
            .inner
            .space
            .free
            .load(Ordering::Relaxed)
            .saturating_sub(reserved);
        let inodes = (st.image.inodes as i64
            + st.active.inode_delta
            + st.frozen.as_ref().map_or(0, |f| f.inode_delta))
        .max(0) as u64;
        StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: st.image.total_blocks - st.image.data_start(),
            blocks_free: free.saturating_sub(self.inner.meta_reserve),
            files: inodes + (1 << 32),
            files_free: 1 << 32,
            name_max: items::NAME_MAX as u32,
        }
    }

    // ---- changes -----------------------------------------------------------

    /// Creates a file, directory, device node, fifo or socket.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    ) -> Result<Attr> {
        if kind == FileKind::Symlink {
            return Err(FsError::Invalid("use symlink to create symlinks"));
        }
        self.make(parent, name, kind, perm, uid, gid, rdev, Vec::new())
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.make(
            parent,
            name,
            FileKind::Symlink,
            0o777,
            uid,
            gid,
            0,
            target.to_vec(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        target: Vec<u8>,
    ) -> Result<Attr> {
        apply::check_name(name)?;
        let mut ino = Ino(0);
        self.inner.submit(Need::Create, |st, now| {
            let layers = self.inner.layers(st);
            let p = layers.attrs(parent)?;
            // BSD group semantics for set-group-ID directories.
            let (gid, perm) = if p.perm & libc::S_ISGID != 0 {
                let perm = if kind == FileKind::Directory {
                    perm | libc::S_ISGID
                } else {
                    perm
                };
                (p.gid, perm)
            } else {
                (gid, perm)
            };
            ino = st.active.next_ino;
            Ok(vec![Record::Create(Create {
                parent,
                name: name.to_vec(),
                ino,
                kind,
                perm: perm & 0o7777,
                uid,
                gid,
                rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
                    rdev
                } else {
                    0
                },
                time: now,
                target: target.clone(),
            })])
        })?;
        self.getattr(View::Live, ino)
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.inner.submit(Need::Create, |_, now| {
            Ok(vec![Record::Link {
                ino,
                parent,
                name: name.to_vec(),
                time: now,
            }])
        })?;
        self.getattr(View::Live, ino)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        self.inner.submit(Need::Free, |st, now| {
            let victim = self.inner.layers(st).lookup(parent, name)?;
            let mut recs = vec![Record::Unlink {
                parent,
                name: name.to_vec(),
                dir,
                time: now,
            }];
            if let Some((ino, _)) = victim {
                recs.push(Record::Reclaim { ino });
            }
            Ok(recs)
        })
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.inner.submit(Need::Free, |st, now| {
            let victim = if flags & record::RENAME_EXCHANGE == 0 {
                self.inner.layers(st).lookup(new_parent, new_name)?
            } else {
                None
            };
            let mut recs = vec![Record::Rename {
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                flags,
                time: now,
            }];
            if let Some((ino, _)) = victim {
                recs.push(Record::Reclaim { ino });
            }
            Ok(recs)
        })
    }

    /// Changes attributes. A change of owner or group of a non-directory
    /// clears set-user-ID (and set-group-ID when group-executable), as Linux does.
    pub fn setattr(&self, ino: Ino, ch: &AttrChanges) -> Result<Attr> {
        let need = if ch.size.is_some() {
            Need::Free
        } else {
            Need::Meta
        };
        self.inner.submit(need, |st, now| {
            let a = self.inner.layers(st).attrs(ino)?;
            let mut perm = ch.perm;
            let owner_change =
                ch.uid.is_some_and(|u| u != a.uid) || ch.gid.is_some_and(|g| g != a.gid);
            if perm.is_none() && owner_change && a.kind != FileKind::Directory {
                let mut p = a.perm & !libc::S_ISUID;
                if p & libc::S_IXGRP != 0 {
                    p &= !libc::S_ISGID;
                }
                if p != a.perm {
                    perm = Some(p);
                }
            }
            let t = |s: Option<TimeSet>| s.map(|s| if let TimeSet::At(t) = s { t } else { now });
            Ok(vec![Record::SetAttr(SetAttr {
                ino,
                perm,
                uid: ch.uid,
                gid: ch.gid,
                size: ch.size,
                atime: t(ch.atime),
                mtime: t(ch.mtime),
                crtime: ch.crtime,
                time: now,
            })])
        })?;
        self.getattr(View::Live, ino)
    }

    /// Writes `data` at `offset`. `kill_suid` clears set-user-ID (a write by
    /// someone other than the owner). Returns the bytes written: fewer than
    /// asked when a large write fails after its first chunk (e.g. ENOSPC);
    /// an error means nothing was written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8], kill_suid: bool) -> Result<u32> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(FsError::FileTooBig {
                limit: MAX_FILE_SIZE,
            });
        }
        if data.is_empty() {
            // Writing nothing changes nothing (POSIX): no size, no times, no
            // record; only the errors a write would give.
            self.inner.check_usable()?;
            return match self.with_layers(View::Live, |l| l.attrs(ino))?.kind {
                FileKind::Regular => Ok(0),
                FileKind::Directory => Err(FsError::IsDir),
                _ => Err(FsError::Invalid("not a regular file")),
            };
        }
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_WRITE_CHUNK);
            let off = offset + done as u64;
            let chunk = &data[done..done + n];
            let blocks = (off % BLOCK_SIZE_U64 + n as u64).div_ceil(BLOCK_SIZE_U64);
            let r = self.inner.submit(Need::Blocks(blocks), |_, now| {
                Ok(vec![Record::Write(Write::split(
                    ino, off, chunk, now, kill_suid,
                ))])
            });
            match r {
                Ok(()) => done += n,
                Err(e) if done == 0 => return Err(e),
                // Earlier chunks are written: a short write, as POSIX has it
                // (an error here would say nothing changed).
                Err(_) => break,
            }
        }
        self.inner
            .stats
            .bytes_written
            .fetch_add(done as u64, Ordering::Relaxed);
        Ok(done as u32)
    }

    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: u32) -> Result<()> {
        self.inner.submit(Need::Free, |_, now| {
            Ok(vec![Record::Fallocate {
                ino,
                offset,
                len,
                mode,
                time: now,
            }])
        })
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let blocks = (value.len() as u64).div_ceil(BLOCK_SIZE_U64);
        self.inner.submit(Need::Blocks(blocks), |_, now| {
            Ok(vec![Record::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                flags,
                time: now,
            }])
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.inner.submit(Need::Free, |_, now| {
            Ok(vec![Record::RemoveXattr {
                ino,
                name: name.to_vec(),
                time: now,
            }])
        })
    }

    /// Notes an open handle: an unlinked file lives until its last handle closes.
    pub fn open_file(&self, ino: Ino) -> Result<()> {
        let mut st = self.inner.state.write();
        let a = self.inner.layers(&st).attrs(ino)?;
        if a.nlink == 0 && !st.open_files.contains_key(&ino) {
            return Err(FsError::NotFound);
        }
        *st.open_files.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    /// Drops an open handle; reclaims the inode if it was the last one of an unlinked file.
    pub fn release_file(&self, ino: Ino) -> Result<()> {
        let last = {
            let mut st = self.inner.state.write();
            match st.open_files.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    st.open_files.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if last && self.inner.writable.load(Ordering::SeqCst) {
            self.inner
                .submit(Need::Free, |_, _| Ok(vec![Record::Reclaim { ino }]))?;
        }
        Ok(())
    }

    /// Returns once every change made so far is durable in the log (and, with
    /// a replicator, at the peer as its mode demands).
    pub fn fsync(&self) -> Result<()> {
        if self.inner.read_only() {
            return Ok(());
        }
        let started = Instant::now();
        let r = self.fsync_inner();
        self.inner.stats.fsync_latency.observe(started.elapsed());
        r
    }

    fn fsync_inner(&self) -> Result<()> {
        let target = {
            let mut st = self.inner.state.write();
            self.inner.seal(&mut st)?;
            st.last_sealed
        };
        let Some(target) = target else {
            return Ok(());
        };
        self.inner.wait_durable(target)?;
        let rep = self.inner.replicator.read().clone();
        if let Some(r) = rep {
            r.wait_for_peer(target)?;
        }
        Ok(())
    }

    // ---- snapshots ---------------------------------------------------------

    /// Creates a snapshot of the current state. Returns its id.
    pub fn snapshot_create(&self, name: &str) -> Result<u64> {
        self.create_snapshot(Some(name)).map(|(id, _)| id)
    }

    /// Creates a snapshot named `cp-N` after the CP `N` it holds; returns its
    /// id and name.
    pub fn snapshot_create_named_by_cp(&self) -> Result<(u64, String)> {
        self.create_snapshot(None)
    }

    fn create_snapshot(&self, name: Option<&str>) -> Result<(u64, String)> {
        let taken = |st: &State, name: &str| {
            st.snapshots.iter().any(|(_, s)| s.name == name.as_bytes())
                || st
                    .retained
                    .create
                    .iter()
                    .any(|(_, s)| s.name == name.as_bytes())
        };
        if let Some(name) = name {
            check_snapshot_name(name)?;
            if taken(&self.inner.state.read(), name) {
                return Err(FsError::Exists);
            }
        }
        // Commit the current state, then record that image as the snapshot.
        self.checkpoint()?;
        let (id, name) = {
            let mut st = self.inner.state.write();
            if st.snapshots.len() + st.retained.create.len() >= MAX_SNAPSHOTS {
                return Err(FsError::NoSpace);
            }
            let name = match name {
                Some(n) => n.to_string(),
                None => format!("cp-{}", st.image.cp.0),
            };
            if taken(&st, &name) {
                return Err(FsError::Exists);
            }
            let id = st
                .snapshots
                .iter()
                .map(|(i, _)| *i)
                .chain(st.retained.create.iter().map(|(i, _)| *i))
                .max()
                .unwrap_or(0)
                + 1;
            let sb = &st.image;
            let img = RetainedImage {
                name: name.as_bytes().to_vec(),
                cp: sb.cp,
                created: self.inner.cfg.clock.now(),
                meta: sb.meta,
                alloc: sb.alloc,
                used_blocks: sb.used_blocks,
                inodes: sb.inodes,
                root_hash: sb.root_hash(),
            };
            st.retained.create.push((id, img));
            (id, name)
        };
        self.checkpoint()?;
        Ok((id, name))
    }

    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        {
            let mut st = self.inner.state.write();
            let id = st
                .snapshots
                .iter()
                .find(|(_, s)| s.name == name.as_bytes())
                .map(|(i, _)| *i)
                .ok_or(FsError::NotFound)?;
            if !st.retained.delete.contains(&id) {
                st.retained.delete.push(id);
            }
        }
        self.checkpoint()?;
        Ok(())
    }

    pub fn snapshot_list(&self) -> Vec<SnapshotInfo> {
        self.inner
            .state
            .read()
            .snapshots
            .iter()
            .map(|(id, s)| SnapshotInfo {
                id: *id,
                name: String::from_utf8_lossy(&s.name).into_owned(),
                cp: s.cp,
                created: s.created,
                root_hash: s.root_hash,
            })
            .collect()
    }

    // ---- the peer hold (DESIGN invariant 1) ----------------------------------

    /// The peer is about to follow CP by CP from the committed CP on: from
    /// now until it acknowledges them, nothing that CP or any later one
    /// references is reused. Returns that CP's superblock.
    pub fn peer_tracking_start(&self) -> Superblock {
        let mut ctl = self.inner.cp.lock();
        let sb = self.inner.state.read().image.clone();
        ctl.alloc.track_peer_from(sb.cp);
        sb
    }

    /// Peer directory `peer_id` has applied CP `sb.cp` (its superblock is
    /// `sb`). The hold moves there and is recorded at the next CP.
    pub fn peer_acked(&self, sb: &Superblock, peer_id: u64) {
        let moved = {
            let mut ctl = self.inner.cp.lock();
            let moved = ctl.alloc.peer_acked(sb.cp);
            if moved {
                // Blocks kept only for the peer are free now: count them at
                // once, or a full volume refuses every write until another
                // CP recounts, and with nothing dirty none comes.
                self.inner.space.store(&ctl.alloc);
            }
            moved
        };
        let mut st = self.inner.state.write();
        if moved
            || st
                .peer_hold
                .is_some_and(|h| h.cp == sb.cp && h.peer_id != peer_id)
        {
            st.peer_hold = Some(superblock::PeerHold::of(sb, peer_id));
        }
    }

    /// Whether changes were made that the committed CP does not contain
    /// (they are logged and go into the next CP).
    pub fn uncommitted(&self) -> bool {
        let st = self.inner.state.read();
        !st.active.is_empty() || st.frozen.is_some() || !st.retained.is_empty()
    }

    /// The lineage of the CPs this volume writes: the committed CP's, plus
    /// the generation a read-write open began.
    pub fn lineage(&self) -> Lineage {
        self.inner.state.read().lineage.clone()
    }

    /// Forgets the peer: its CP is no longer protected.
    pub fn peer_forget(&self) {
        self.inner.cp.lock().alloc.drop_peer_hold();
        self.inner.state.write().peer_hold = None;
    }

    /// The root hash of CP `cp` if this volume knows it: a CP committed since
    /// it was opened, or the peer hold recorded in the superblock.
    pub fn known_root_hash(&self, cp: CpNumber) -> Option<RootHash> {
        let st = self.inner.state.read();
        if let Some(h) = st.history.iter().find(|(c, _)| *c == cp) {
            return Some(h.1);
        }
        st.image
            .peer_hold
            .filter(|h| h.cp == cp)
            .map(|h| h.root_hash)
    }

    /// The record of the last CP a peer applied (the hold the next CP
    /// records), with the peer directory's ID.
    pub fn held_for_peer(&self) -> Option<superblock::PeerHold> {
        self.inner.state.read().peer_hold
    }

    /// The CP protected for the peer, if any.
    pub fn peer_hold(&self) -> Option<CpNumber> {
        self.inner.cp.lock().alloc.peer_hold()
    }

    /// Reads the sealed log batches still in the log region with IDs from
    /// `from` on, in order, at most `max_bytes` of them (at least one), to
    /// resend them to a peer that reconnected.
    pub fn live_batches(&self, from: TransferId, max_bytes: usize) -> Result<Vec<SealedBatch>> {
        let (placed, start): (Vec<nvlog::Placed>, u64) = {
            let st = self.inner.state.read();
            let mut bytes = 0;
            let placed = st
                .region
                .live()
                .filter(|p| p.id >= from)
                .take_while(|p| {
                    let take = bytes == 0 || bytes + p.len as usize * BLOCK_SIZE <= max_bytes;
                    bytes += p.len as usize * BLOCK_SIZE;
                    take
                })
                .copied()
                .collect();
            (placed, st.image.log_start)
        };
        // A placed batch is still queued for the log writer, or written.
        let mut queued: HashMap<TransferId, SealedBatch> = {
            let q = self.inner.log.lock();
            q.pending
                .iter()
                .filter(|(_, b)| b.id >= from)
                .map(|(_, b)| (b.id, b.clone()))
                .collect()
        };
        let dev = self.inner.cache.device();
        let mut out = Vec::with_capacity(placed.len());
        for p in placed {
            if let Some(b) = queued.remove(&p.id) {
                out.push(b);
                continue;
            }
            let mut bytes = vec![0u8; p.len as usize * BLOCK_SIZE];
            dev.read(BlockAddr(start + p.pos), &mut bytes)
                .map_err(|e| FsError::io(format!("reading log batch {}", p.id.0), e))?;
            let d = nvlog::batch::decode(&bytes)?;
            out.push(SealedBatch {
                id: p.id,
                hash: d.header.checksum,
                records: d.header.nrecords,
                bytes: Arc::new(bytes),
            });
        }
        Ok(out)
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

/// Most snapshots a volume keeps.
pub const MAX_SNAPSHOTS: usize = 256;

fn check_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > items::SNAPSHOT_NAME_MAX
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        return Err(FsError::Invalid(
            "snapshot names are 1 to 64 bytes without '/'",
        ));
    }
    Ok(())
}

fn read_snapshots(cache: &BlockCache, meta: &TreeRoot) -> Result<Vec<(u64, RetainedImage)>> {
    let lo = RetainedImage::snapshot_key(0);
    let hi = Key {
        ino: items::VOLUME_INO,
        kind: items::kind::SNAPSHOT + 1,
        off: 0,
    };
    btree::range(cache, meta, lo, hi)
        .map(|item| {
            let (k, v) = item?;
            Ok((k.off, RetainedImage::decode(&v)?))
        })
        .collect()
}

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

    /// Seals the open batch, places it in the log region and queues it.
    fn seal(&self, st: &mut State) -> Result<()> {
        if st.batch.is_empty() {
            return Ok(());
        }
        let next = TransferId(st.batch.id.0 + 1);
        let batch = std::mem::replace(&mut st.batch, OpenBatch::new(next));
        let sealed = batch.seal(&self.uuid, st.prev_hash);
        let pos = st
            .region
            .place(sealed.id, sealed.size_blocks())
            .ok_or_else(|| FsError::CorruptVolume("log space was checked but is gone".into()))?;
        st.prev_hash = sealed.hash;
        st.last_sealed = Some(sealed.id);
        st.batch_opened = None;
        self.stats.batches_sealed.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.log.lock();
            q.bytes += sealed.bytes.len();
            q.pending.push_back((pos, sealed));
        }
        if self.cfg.background {
            self.log_cv.notify_all();
        } else {
            self.write_pending(st.image.log_start, false, usize::MAX)?;
        }
        Ok(())
    }

    /// Writes queued batches to the log region, at most `max_bytes` of
    /// them (at least one); with `durable`, returns once they are on
    /// stable storage.
    ///
    /// The batches stay in `pending` until they are written, so that
    /// [`Volume::live_batches`] finds every batch either there or on the
    /// device.
    fn write_pending(&self, log_start: u64, durable: bool, max_bytes: usize) -> Result<()> {
        let _io = self.log_io.lock();
        let batches: Vec<(u64, SealedBatch)> = {
            let q = self.log.lock();
            let mut bytes = 0;
            q.pending
                .iter()
                .take_while(|(_, b)| {
                    let take = bytes == 0 || bytes + b.bytes.len() <= max_bytes;
                    bytes += b.bytes.len();
                    take
                })
                .cloned()
                .collect()
        };
        if let Some(r) = self.replicator.read().clone() {
            for (_, b) in &batches {
                r.batch_logged(b);
            }
        }
        if let Err(e) = nvlog::write_batches(&**self.cache.device(), log_start, &batches, durable) {
            self.log.lock().error = Some(e.to_string());
            self.fail(&e);
            return Err(e);
        }
        let mut q = self.log.lock();
        q.pending.drain(..batches.len());
        q.unflushed |= !durable && !batches.is_empty();
        q.written.extend(batches.into_iter().map(|(_, b)| b));
        Ok(())
    }

    /// Writes everything queued and makes it durable; wakes fsync waiters.
    fn flush_log(&self) -> Result<()> {
        loop {
            self.flush_log_round(usize::MAX)?;
            if self.log.lock().pending.is_empty() {
                return Ok(());
            }
        }
    }

    /// One round of `flush_log` over at most `max_bytes` of
    /// queued batches. Batches are written with a ranged sync, so a round
    /// does not wait for a running CP's writes; a whole-device flush is
    /// needed only for batches written earlier without one.
    fn flush_log_round(&self, max_bytes: usize) -> Result<()> {
        let log_start = self.state.read().image.log_start;
        self.write_pending(log_start, true, max_bytes)?;
        let _io = self.log_io.lock();
        let (written, unflushed) = {
            let mut q = self.log.lock();
            (
                std::mem::take(&mut q.written),
                std::mem::take(&mut q.unflushed),
            )
        };
        if written.is_empty() {
            return Ok(());
        }
        if unflushed {
            if let Err(e) = self.cache.device().flush() {
                let e = FsError::io("flushing the log", e);
                self.log.lock().error = Some(e.to_string());
                self.fail(&e);
                self.log_cv.notify_all();
                return Err(e);
            }
        }
        let last = written.last().map(|b| b.id).expect("not empty");
        {
            let mut q = self.log.lock();
            let bytes = written.iter().map(|b| b.bytes.len()).sum::<usize>();
            q.durable = q.durable.max(last);
            q.bytes -= bytes;
            q.durable_bytes += bytes as u64;
        }
        self.log_cv.notify_all();
        Ok(())
    }

    /// Paces a writer that just logged `bytes` to the rate at which the log
    /// (and, in sync modes, the peer) drains, and holds it back while more
    /// than [`VolumeConfig::log_backlog_bytes`] of sealed batches wait for the disk,
    /// so memory stays bounded.
    fn pace_writer(&self, bytes: usize) {
        if !self.cfg.background {
            return;
        }
        let local = {
            let q = self.log.lock();
            Backlog {
                bytes: q.bytes as u64,
                limit: self.cfg.log_backlog_bytes as u64,
                drained_total: q.durable_bytes,
            }
        };
        let peer = self
            .replicator
            .read()
            .as_ref()
            .and_then(|r| r.queue_level());
        let now = Instant::now();
        let sleep = {
            let mut p = self.pacers.lock();
            let local = p.log.pause(bytes as u64, local, now);
            let peer = match peer {
                Some(l) => p.peer.pause(bytes as u64, l, now),
                None => {
                    // Measure afresh when pacing to the peer resumes.
                    p.peer = Pacer::new();
                    Duration::ZERO
                }
            };
            local.max(peer)
        };
        if !sleep.is_zero() {
            self.stats
                .paced_ns
                .fetch_add(sleep.as_nanos() as u64, Ordering::Relaxed);
            std::thread::sleep(sleep);
        }
        let mut q = self.log.lock();
        while q.bytes > self.cfg.log_backlog_bytes && q.error.is_none() && !q.shutdown {
            self.log_cv.notify_all();
            self.log_cv.wait_for(&mut q, Duration::from_millis(10));
        }
    }

    fn wait_durable(&self, id: TransferId) -> Result<()> {
        if !self.cfg.background {
            return self.flush_log();
        }
        let mut q = self.log.lock();
        loop {
            if q.durable >= id {
                return Ok(());
            }
            if let Some(e) = &q.error {
                return Err(FsError::Failed(e.clone()));
            }
            if q.shutdown {
                drop(q);
                return self.flush_log();
            }
            self.log_cv.wait_for(&mut q, Duration::from_millis(100));
        }
    }

    fn log_writer_loop(&self) {
        loop {
            {
                let mut q = self.log.lock();
                if q.pending.is_empty() && !q.shutdown {
                    self.log_cv.wait_for(&mut q, SEAL_AFTER);
                }
                if q.shutdown && q.pending.is_empty() {
                    break;
                }
            }
            // Seal a batch that has waited long enough, so that async
            // mirroring and durability do not wait for it to fill.
            {
                let mut st = self.state.write();
                if st.batch_opened.is_some_and(|t| t.elapsed() >= SEAL_AFTER) {
                    if let Err(e) = self.seal(&mut st) {
                        log::error!("sealing a log batch: {e}");
                    }
                }
            }
            if self.log.lock().pending.is_empty() {
                continue;
            }
            // Small rounds drain the backlog steadily, so paced writers see
            // a steady rate rather than large steps.
            if let Err(e) = self.flush_log_round(self.cfg.log_backlog_bytes / 8) {
                log::error!("log writer: {e}");
                break;
            }
        }
        let _ = self.flush_log();
    }

    fn cp_loop(&self) {
        let interval = self.cfg.cp_interval;
        let mut last = Instant::now();
        loop {
            {
                let mut s = self.signals.lock();
                if !s.cp_wanted && !s.shutdown {
                    let wait = interval.map_or(Duration::from_secs(3600), |i| {
                        i.saturating_sub(last.elapsed())
                    });
                    self.signals_cv.wait_for(&mut s, wait);
                }
                if s.shutdown {
                    break;
                }
                let due = interval.is_some_and(|i| last.elapsed() >= i);
                if !s.cp_wanted && !due {
                    continue;
                }
                s.cp_wanted = false;
            }
            last = Instant::now();
            if let Err(e) = self.run_cp() {
                log::error!("consistency point failed: {e}");
            }
        }
    }

    /// Asks for a CP; with `wait`, returns once one has completed.
    fn want_cp(&self, wait: bool) -> Result<()> {
        if !self.cfg.background {
            return self.run_cp().map(|_| ());
        }
        let mut s = self.signals.lock();
        let seen = s.cps_done;
        s.cp_wanted = true;
        self.signals_cv.notify_all();
        if wait {
            self.stats.writer_waits.fetch_add(1, Ordering::Relaxed);
            while s.cps_done == seen && !s.shutdown {
                self.signals_cv.wait_for(&mut s, Duration::from_millis(100));
                if let Some(f) = self.failed.lock().as_ref() {
                    return Err(FsError::Failed(f.clone()));
                }
            }
        }
        Ok(())
    }

    fn wait_for_cp(&self) -> Result<()> {
        self.want_cp(true)
    }

    /// Runs one CP: freeze, build without the state lock, commit.
    fn run_cp(&self) -> Result<CpNumber> {
        if self.read_only() {
            return Ok(self.state.read().image.cp);
        }
        let mut ctl = self.cp.lock();
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(FsError::Failed(f.clone()));
        }
        let started = Instant::now();
        // Freeze.
        let (frozen, base, log_pos, covers, retained, peer_hold, lineage) = {
            let mut st = self.state.write();
            if st.active.is_empty() && st.retained.is_empty() && !st.force_cp {
                let cp = st.image.cp;
                drop(st);
                // Everything is committed: whoever waits for a CP has it.
                self.cp_done();
                return Ok(cp);
            }
            st.force_cp = false;
            self.seal(&mut st)?;
            let log_pos = LogPosition {
                next_transfer: st.batch.id,
                replay_offset: st.region.tail() % st.region.capacity(),
                last_batch_hash: st.prev_hash,
            };
            let next_ino = st.active.next_ino;
            let frozen = Arc::new(std::mem::replace(&mut st.active, Overlay::new(next_ino)));
            st.frozen = Some(frozen.clone());
            let retained = std::mem::take(&mut st.retained);
            (
                frozen,
                st.image.clone(),
                log_pos,
                st.last_sealed,
                retained,
                st.peer_hold,
                st.lineage.clone(),
            )
        };
        // New snapshots protect the image they name (the committed one) from now on.
        if !retained.create.is_empty() {
            let committed = ctl.alloc.committed_map().clone();
            ctl.alloc.add_snapshot(&committed);
        }
        let time = self.cfg.clock.now();
        let CpCtl { alloc, sink } = &mut *ctl;
        let result = cp::run(
            &self.cache,
            alloc,
            sink.as_deref_mut(),
            CpInput {
                base: &base,
                frozen: &frozen,
                retained: &retained,
                log: log_pos,
                time,
                key: &self.key,
                peer_hold,
                lineage: &lineage,
            },
            covers,
        );
        let sb = match result {
            Ok(sb) => sb,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        alloc.committed();
        // Commit: the new image replaces the frozen overlay atomically for readers.
        {
            let mut st = self.state.write();
            st.image = sb.clone();
            st.frozen = None;
            st.history.push_back((sb.cp, sb.root_hash()));
            if st.history.len() > CP_HISTORY {
                st.history.pop_front();
            }
            if let Some(c) = covers {
                st.region.release_through(c);
            }
            for (id, img) in &retained.create {
                st.snapshots.push((*id, img.clone()));
            }
            st.snapshots.retain(|(id, _)| !retained.delete.contains(id));
        }
        self.space.store(alloc);
        if !retained.delete.is_empty() {
            let snaps: Vec<RetainedImage> = self
                .state
                .read()
                .snapshots
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            match cp::snapshot_union(&self.cache, &snaps, sb.total_blocks) {
                Ok(u) => {
                    alloc.set_snapshots(u);
                    self.space.store(alloc);
                }
                Err(e) => log::error!("recomputing snapshot space after a delete: {e}"),
            }
        }
        drop(ctl);
        // The CP made every transfer it covers durable.
        if let Some(c) = covers {
            let mut q = self.log.lock();
            q.durable = q.durable.max(c);
            self.log_cv.notify_all();
        }
        let ms = started.elapsed().as_millis() as u64;
        self.stats.cps.fetch_add(1, Ordering::Relaxed);
        self.stats.last_cp_ms.store(ms, Ordering::Relaxed);
        self.stats.longest_cp_ms.fetch_max(ms, Ordering::Relaxed);
        self.cp_done();
        Ok(sb.cp)
    }

    /// Wakes the writers waiting in [`Inner::want_cp`].
    fn cp_done(&self) {
        let mut s = self.signals.lock();
        s.cps_done += 1;
        self.signals_cv.notify_all();
    }

    /// Replays the batches newer than the CP into the active overlay.
    fn replay(&self, dev: &dyn BlockDevice, sb: &Superblock) -> Result<usize> {
        let scan = nvlog::scan(dev, sb);
        let mut st = self.state.write();
        let mut count = 0;
        for r in &scan.batches {
            let placed = st.region.place(r.sealed.id, r.sealed.size_blocks());
            if placed != Some(r.pos) {
                // Can only happen with a corrupt log layout; keep what we have.
                log::error!(
                    "replay: batch {} at log block {} does not follow its predecessor; stopping",
                    r.sealed.id.0,
                    r.pos
                );
                break;
            }
            for (rec, pos) in &r.decoded.records {
                let State { active, image, .. } = &mut *st;
                let mut ap = Applier {
                    top: active,
                    mid: None,
                    meta: image.meta,
                    image_next_ino: image.next_ino,
                    cache: &self.cache,
                    key: &self.key,
                };
                if let Err(e) = ap.apply(rec, *pos) {
                    log::error!(
                        "replay: a record of transfer {} does not apply ({e}); ignoring the rest of the log",
                        r.sealed.id.0
                    );
                    break;
                }
            }
            st.prev_hash = r.sealed.hash;
            st.last_sealed = Some(r.sealed.id);
            st.batch = OpenBatch::new(TransferId(r.sealed.id.0 + 1));
            count += 1;
        }
        if count > 0 {
            log::info!("replay: {count} batches applied; {}", scan.stop);
        } else {
            log::debug!("replay: {}", scan.stop);
        }
        let mut q = self.log.lock();
        q.durable = st.last_sealed.unwrap_or(q.durable);
        if let Some(rep) = self.replicator.read().clone() {
            for r in &scan.batches {
                rep.batch_logged(&r.sealed);
            }
        }
        Ok(count)
    }

    /// Deletes unlinked inodes that nobody holds open any more (after a crash).
    fn reclaim_orphans(&self) -> Result<usize> {
        let orphans: Vec<Ino> = {
            let st = self.state.read();
            let lo = items::orphan_key(Ino(0));
            let hi = items::orphan_key(Ino(u64::MAX));
            let mut set: std::collections::BTreeSet<Ino> =
                btree::range(&self.cache, &st.image.meta, lo, hi)
                    .map(|i| i.map(|(k, _)| Ino(k.off)))
                    .collect::<Result<_>>()?;
            for (ino, add) in &st.active.orphans {
                if *add {
                    set.insert(*ino);
                } else {
                    set.remove(ino);
                }
            }
            set.into_iter().collect()
        };
        let n = orphans.len();
        for ino in orphans {
            self.submit(Need::Free, |_, _| Ok(vec![Record::Reclaim { ino }]))?;
        }
        Ok(n)
    }
}
