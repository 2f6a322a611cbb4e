//! Deterministic simulation of the whole mirror (`twinfs-sim`).
//!
//! One thread, one seeded RNG, simulated time. A run mounts a source volume
//! on a simulated device ([`CrashDevice`] under a [`FaultDevice`]: power
//! cuts that drop, keep or tear unflushed writes, and EIO from a countdown),
//! installs the source's hooks (the same [`Sink`] and the same decisions,
//! [`crate::source::machine`], as the daemon), connects it over a simulated
//! link (delay, resets, damaged frames, partitions and heals) to a peer
//! ([`crate::peer::replica::Replica`] on a directory in memory-backed
//! `/dev/shm`), and drives a random workload checked against a [`Model`].
//! It kills and restarts either side, kills the peer inside a commit, and
//! rots bytes of the peer's log store.
//!
//! Checked after every step:
//! - an fsync that returns in sync or strict mode while the peer is not
//!   degraded has its transfers durable at the peer (RPO 0);
//! - the peer's image is exactly a CP the source committed (its root hash is
//!   one of the source's and every block matches its pointer);
//! - after the link heals, the peer reaches the source's CP within a bound;
//! - after every crash and replay the volume's files equal the model at some
//!   point between the last durable one and the crash;
//! - the peer never refuses the source's history (nothing here forks it);
//! - the source lost now, a copy of the peer's directory promoted is clean
//!   to fsck and holds a state the workload went through since the peer last held the source's
//!   CP, and none older than the last fsync the peer acknowledged (checked
//!   now and then, and after the run's last convergence, when it must equal
//!   the source);
//! - queues and in-flight frames stay within their bounds.
//!
//! A breach ends the run with the seed and a trace of what happened.

pub mod model;
pub mod net;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use twinfs_fs::cp::{CpBlock as FsCpBlock, CpSink};
use twinfs_fs::device::{BlockDevice, CrashDevice, FaultDevice, FileDevice, LostWrite};
use twinfs_fs::lineage::GenerationId;
use twinfs_fs::nvlog::batch::SealedBatch;
use twinfs_fs::superblock::Superblock;
use twinfs_fs::volume::{
    self, AttrChanges, Clock, MkfsOptions, Replicator, View, Volume, VolumeConfig,
};
use twinfs_fs::{Block, CpNumber, FileKind, FsError, Ino, Timestamp, TransferId, ROOT_INO};

use crate::encode::CpSync;
use crate::peer::replica::Replica;
use crate::planted::Bug;
use crate::source::machine::{FsyncPoll, Item};
use crate::source::{Counters, CpQueue, Mode, Sink};

use model::Model;
use net::{Net, SYNC_TIMEOUT_MS};

/// Blocks of the simulated source volume (32 MiB, the log at its minimum).
const VOLUME_BLOCKS: u64 = 8192;
/// Data blocks of the small volume one seed in four gets: the workload
/// fills it (ENOSPC, and blocks kept for an absent peer given up).
const SMALL_VOLUME_DATA_BLOCKS: u64 = 260;
/// Most steps an fsync may pump the network while it waits.
const MAX_FSYNC_PUMPS: u32 = 20_000;
/// Most network steps the peer may take to reach the source's CP once the
/// link is healed and quiet.
const CONVERGE_PUMPS: u32 = 20_000;
/// Names the workload uses in each directory.
const NAMES: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];
/// Extended attribute names the workload uses.
const XATTR_NAMES: [&[u8]; 3] = [b"user.a", b"user.b", b"trusted.c"];
/// Snapshot names the workload uses.
const SNAPSHOT_NAMES: [&str; 3] = ["s1", "s2", "s3"];

/// What one run does.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Workload and fault steps.
    pub steps: u32,
    pub plant: Option<Bug>,
    /// Keep the trace of a clean run too (it is always kept on a breach).
    pub keep_trace: bool,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            steps: 200,
            plant: None,
            keep_trace: false,
        }
    }
}

/// What a run did, and the breach it found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub mode: String,
    pub cp_sync: String,
    pub steps: u32,
    pub ops: u64,
    pub fsyncs: u64,
    pub checkpoints: u64,
    /// Extended attribute sets and removals.
    pub xattr_ops: u64,
    /// Snapshots created and deleted.
    pub snapshot_ops: u64,
    /// Operations refused for want of space.
    pub nospace: u64,
    /// Copies of the peer's directory promoted and checked.
    pub promotes: u64,
    pub source_crashes: u64,
    pub eio: u64,
    pub net: net::Stats,
    pub breach: Option<String>,
    pub trace: Vec<String>,
}

/// Simulated time for the volume's timestamps.
struct SimClock(Arc<AtomicU64>);

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let ms = self.0.load(Ordering::Relaxed);
        Timestamp::new(
            1_700_000_000 + (ms / 1000) as i64,
            (ms % 1000) as u32 * 1_000_000,
        )
    }
}

/// The source's hooks in the volume: they reach the simulated network.
struct Hooks {
    net: Arc<Mutex<Net>>,
    vol: Arc<Volume>,
    counters: Counters,
}

impl Replicator for Hooks {
    fn batch_logged(&self, batch: &SealedBatch) {
        self.net.lock().push(Item::Transfer(batch.clone()));
    }

    /// Pumps the network until the machine lets the fsync go.
    fn wait_for_peer(&self, id: TransferId) -> twinfs_fs::Result<()> {
        let mut net = self.net.lock();
        let mode = net.mode;
        let deadline = net.now() + SYNC_TIMEOUT_MS;
        for _ in 0..MAX_FSYNC_PUMPS {
            let expired = net.now() >= deadline;
            let timeout = std::time::Duration::from_millis(SYNC_TIMEOUT_MS);
            let poll = net.link.fsync_poll(id, mode, expired, timeout);
            if poll != FsyncPoll::Wait {
                if mode != Mode::Async && poll == FsyncPoll::Done && !net.link.degraded {
                    let held = net.peer_durable().max(net.peer_high_water);
                    if held < id.0 {
                        let msg = format!(
                            "fsync of transfer {} returned in {} mode, but the peer holds transfers only to {held}",
                            id.0,
                            mode.name()
                        );
                        net.breach(msg);
                    }
                    net.peer_acked_fsync = true;
                }
                net.note(format!("fsync of transfer {}: {poll:?}", id.0));
                return crate::source::machine::Link::fsync_result(poll).expect("not Wait");
            }
            if net.breach.is_some() {
                return Err(FsError::Replication("the simulation found a breach".into()));
            }
            net.pump();
        }
        net.breach(format!("fsync of transfer {} waited forever", id.0));
        Err(FsError::Replication("the simulation found a breach".into()))
    }
}

impl CpQueue for Hooks {
    fn volume(&self) -> &Volume {
        &self.vol
    }

    fn cp_sync(&self) -> CpSync {
        self.net.lock().cp_sync
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn accepting(&self) -> bool {
        self.net.lock().out.accepting
    }

    fn wait_handed_over(&self, covers: TransferId) -> bool {
        let net = self.net.lock();
        !net.out.accepting || net.out.last_queued_transfer >= covers
    }

    fn push(&self, item: Item) -> bool {
        self.net.lock().push(item)
    }

    fn abandon(&self) {
        self.net.lock().out.give_up();
    }
}

/// The daemon's [`Sink`], plus a record of every CP the source commits.
struct RecordingSink {
    inner: Sink<Hooks>,
    net: Arc<Mutex<Net>>,
}

impl CpSink for RecordingSink {
    fn begin(&mut self, cp: CpNumber, base: CpNumber, covers: Option<TransferId>) {
        self.inner.begin(cp, base, covers)
    }

    fn block(&mut self, b: &FsCpBlock<'_>) {
        self.inner.block(b)
    }

    fn commit(&mut self, sb: &Superblock, superblock: &Block) {
        {
            let mut net = self.net.lock();
            net.roots.insert(sb.root_hash().0);
            net.note(format!("source: CP {} committed", sb.cp.0));
        }
        self.inner.commit(sb, superblock)
    }

    fn abort(&mut self) {
        self.inner.abort()
    }
}

/// The simulated machine pair.
struct Sim {
    rng: StdRng,
    now: Arc<AtomicU64>,
    dev: Arc<FaultDevice<CrashDevice>>,
    vol: Arc<Volume>,
    net: Arc<Mutex<Net>>,
    /// The workload's second directory.
    dir: u64,
    model: Model,
    /// States the volume may hold after a crash: the model at the last
    /// durable point and after every operation since.
    since_durable: Vec<Model>,
    /// States a promoted peer may hold: the model when the peer last held
    /// the source's CP and after every operation since.
    since_peer_caught_up: Vec<Model>,
    /// The first of `since_peer_caught_up` a promoted peer may hold: the
    /// state of the last fsync the peer acknowledged.
    peer_acked: usize,
    /// The peer's disk rotted a transfer it held since it last caught up:
    /// promote stops at that transfer, so any state since may come out.
    peer_rotted: bool,
    /// The volume failed (EIO): the next step restarts it.
    failed: bool,
    /// The disk's EIO countdown is armed (until the next power cut).
    eio_armed: bool,
    /// Snapshots the volume holds: name → (id, what it must show), or
    /// `None` when an interrupted create or delete left its content unknown.
    snapshots: std::collections::BTreeMap<String, Option<(u64, Model)>>,
    report: Report,
}

/// The workload's operations.
#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Write,
    SetXattr,
    RemoveXattr,
    Truncate,
    Link,
    Unlink,
    Rename,
    Fsync,
    Checkpoint,
    SnapshotCreate,
    SnapshotDelete,
}

impl Op {
    /// Each operation with its weight.
    const WEIGHTS: [(Op, u32); 12] = [
        (Op::Create, 15),
        (Op::Write, 29),
        (Op::SetXattr, 4),
        (Op::RemoveXattr, 2),
        (Op::Truncate, 8),
        (Op::Link, 6),
        (Op::Unlink, 8),
        (Op::Rename, 8),
        (Op::Fsync, 14),
        (Op::Checkpoint, 3),
        (Op::SnapshotCreate, 2),
        (Op::SnapshotDelete, 1),
    ];
    const TOTAL_WEIGHT: u32 = {
        let mut sum = 0;
        let mut i = 0;
        while i < Op::WEIGHTS.len() {
            sum += Op::WEIGHTS[i].1;
            i += 1;
        }
        sum
    };

    /// The operation `r` (below [`Op::TOTAL_WEIGHT`]) falls on.
    fn pick(mut r: u32) -> Op {
        for (op, weight) in Op::WEIGHTS {
            if r < weight {
                return op;
            }
            r -= weight;
        }
        unreachable!("r is below the total weight")
    }

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Write => "write",
            Op::SetXattr => "setxattr",
            Op::RemoveXattr => "removexattr",
            Op::Truncate => "truncate",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Fsync => "fsync",
            Op::Checkpoint => "checkpoint",
            Op::SnapshotCreate => "snapshot create",
            Op::SnapshotDelete => "snapshot delete",
        }
    }
}

impl Sim {
    fn new(opts: &SimOptions, peer_dir: PathBuf) -> Result<Sim, String> {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mode = [Mode::Sync, Mode::Sync, Mode::Strict, Mode::Async][rng.gen_range(0..4)];
        let cp_sync = [CpSync::Best, CpSync::Best, CpSync::Refs, CpSync::Full][rng.gen_range(0..4)];
        let now = Arc::new(AtomicU64::new(0));
        let blocks = if rng.gen_ratio(1, 4) {
            volume::MIN_LOG_BLOCKS + SMALL_VOLUME_DATA_BLOCKS
        } else {
            VOLUME_BLOCKS
        };
        let dev = Arc::new(FaultDevice::new(CrashDevice::new(blocks)));
        let mut uuid = [0u8; 16];
        rng.fill(&mut uuid);
        let opts_mkfs = MkfsOptions {
            uuid: Some(uuid),
            log_blocks: Some(volume::MIN_LOG_BLOCKS),
            time: Some(Timestamp::new(1_700_000_000, 0)),
            generation: Some(GenerationId(rng.gen())),
            ..MkfsOptions::default()
        };
        volume::mkfs(dev.clone(), &opts_mkfs).map_err(|e| format!("mkfs: {e}"))?;
        dev.inner().flush().map_err(|e| format!("flush: {e}"))?;
        let net_rng = StdRng::seed_from_u64(rng.gen());
        let mut net = Net::new(net_rng, now.clone(), mode, cp_sync, peer_dir.clone());
        net.peer = Some(Replica::open(&peer_dir, None).map_err(|e| format!("peer: {e}"))?);
        let net = Arc::new(Mutex::new(net));
        let report = Report {
            seed: opts.seed,
            mode: mode.name().into(),
            cp_sync: cp_sync.name().into(),
            ..Report::default()
        };
        let vol = open_volume(&dev, &now, &mut rng, &net)?;
        let mut sim = Sim {
            rng,
            now,
            dev,
            vol,
            net,
            dir: 0,
            model: Model::default(),
            since_durable: Vec::new(),
            since_peer_caught_up: Vec::new(),
            peer_acked: 0,
            peer_rotted: false,
            failed: false,
            eio_armed: false,
            snapshots: Default::default(),
            report,
        };
        let d = sim
            .vol
            .create(ROOT_INO, b"dir", FileKind::Directory, 0o755, 0, 0, 0)
            .map_err(|e| format!("mkdir: {e}"))?;
        sim.dir = d.ino.0;
        sim.note(format!(
            "source: a volume of {blocks} blocks, {} free",
            sim.vol.statfs().blocks_free
        ));
        sim.vol.checkpoint().map_err(|e| format!("first CP: {e}"))?;
        sim.since_durable = vec![sim.model.clone()];
        sim.since_peer_caught_up = vec![sim.model.clone()];
        Ok(sim)
    }

    fn note(&self, line: String) {
        self.net.lock().note(line);
    }

    fn breached(&self) -> bool {
        self.net.lock().breach.is_some()
    }

    fn breach(&self, what: String) {
        self.net.lock().breach(what);
    }

    /// One step: an operation, some network, or a fault.
    fn step(&mut self) {
        if self.failed {
            return self.crash_source();
        }
        let r = self.rng.gen_range(0..1000);
        match r {
            0..=449 => self.op(),
            450..=899 => {
                let n = self.rng.gen_range(1..40);
                let mut net = self.net.lock();
                for _ in 0..n {
                    net.pump();
                }
            }
            900..=914 => self.crash_source(),
            915..=929 => self.net.lock().kill_peer(),
            930..=949 => self.net.lock().partition(),
            950..=979 => {
                let mut net = self.net.lock();
                net.heal();
                drop(net);
                if self.rng.gen_ratio(1, 3) {
                    self.converge();
                }
            }
            980..=987 => {
                self.peer_rotted |= self.net.lock().corrupt_peer_log();
            }
            988..=993 => self.check_promote(false),
            _ => {
                let after = self.rng.gen_range(0..10);
                self.note(format!(
                    "source: the disk fails with EIO after {after} more I/Os"
                ));
                self.dev.fail_after(after);
                self.eio_armed = true;
            }
        }
    }

    fn pick_name(&mut self) -> (u64, Vec<u8>) {
        let dir = if self.rng.gen_bool(0.5) {
            ROOT_INO.0
        } else {
            self.dir
        };
        (dir, NAMES[self.rng.gen_range(0..NAMES.len())].to_vec())
    }

    fn pick_file(&mut self) -> Option<u64> {
        if self.model.files.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..self.model.files.len());
        self.model.files.keys().nth(i).copied()
    }

    /// A workload operation, applied to the volume and the model.
    fn op(&mut self) {
        self.report.ops += 1;
        let op = Op::pick(self.rng.gen_range(0..Op::TOTAL_WEIGHT));
        let result: Result<String, FsError> = match op {
            Op::Create => self.op_create(),
            Op::Write => self.op_write(),
            Op::SetXattr => self.op_setxattr(),
            Op::RemoveXattr => self.op_removexattr(),
            Op::Truncate => self.op_truncate(),
            Op::Link => self.op_link(),
            Op::Unlink => self.op_unlink(),
            Op::Rename => self.op_rename(),
            Op::Fsync => {
                self.report.fsyncs += 1;
                self.net.lock().peer_acked_fsync = false;
                self.vol.fsync().map(|()| {
                    self.since_durable = vec![self.model.clone()];
                    if self.net.lock().peer_acked_fsync {
                        self.remember_for_peer();
                        self.peer_acked = self.since_peer_caught_up.len() - 1;
                    }
                    "fsync".to_string()
                })
            }
            Op::Checkpoint => {
                self.report.checkpoints += 1;
                self.vol.checkpoint().map(|cp| {
                    self.since_durable = vec![self.model.clone()];
                    format!("checkpoint: CP {}", cp.0)
                })
            }
            Op::SnapshotCreate => self.op_snapshot_create(),
            Op::SnapshotDelete => self.op_snapshot_delete(),
        };
        let kind = op.name();
        match result {
            Ok(what) => {
                if !what.is_empty() {
                    self.note(format!("op: {what}"));
                }
                if self.since_durable.last() != Some(&self.model) {
                    self.since_durable.push(self.model.clone());
                }
                self.remember_for_peer();
            }
            Err(e) => {
                self.note(format!("op {kind} failed: {e}"));
                if self.breached() {
                    return;
                }
                let strict = self.net.lock().mode == Mode::Strict;
                match e {
                    FsError::Replication(_) if strict => {}
                    // Refused before anything changed.
                    FsError::NoSpace => self.report.nospace += 1,
                    FsError::NoAttr => {}
                    _ => {
                        // An I/O error: the operation may or may not be in
                        // the log; the volume stops and is restarted.
                        self.report.eio += 1;
                        self.failed = true;
                    }
                }
            }
        }
    }

    fn op_create(&mut self) -> Result<String, FsError> {
        let (dir, name) = self.pick_name();
        if self.model.names.contains_key(&(dir, name.clone())) {
            return Ok(String::new());
        }
        let a = self
            .vol
            .create(Ino(dir), &name, FileKind::Regular, 0o644, 0, 0, 0)?;
        self.model.add(dir, &name, a.ino.0);
        Ok(format!("create {dir}/{} = inode {}", show(&name), a.ino.0))
    }

    fn op_write(&mut self) -> Result<String, FsError> {
        let Some(ino) = self.pick_file() else {
            return Ok(String::new());
        };
        let size = self.model.files[&ino].len() as u64;
        let bs = 4096u64;
        let off = match self.rng.gen_range(0..4) {
            0 => 0,
            1 => size,
            2 => self.rng.gen_range(0..=size / bs + 1) * bs,
            _ => self.rng.gen_range(0..=size + 5000),
        };
        let len = match self.rng.gen_range(0..13) {
            0 | 1 => self.rng.gen_range(1..100),
            2 | 3 => bs,
            4 | 5 => bs * self.rng.gen_range(2..5),
            6 | 7 => self.rng.gen_range(1..3 * bs),
            8 | 9 => bs * 16,
            10 | 11 => self.rng.gen_range(bs..20 * bs),
            // Now and then a large one: small volumes fill up.
            _ => self.rng.gen_range(32 * bs..96 * bs),
        } as usize;
        let off = off.min(200 * bs);
        let mut data = vec![0u8; len];
        self.rng.fill(&mut data[..]);
        if self.rng.gen_ratio(1, 5) {
            data.iter_mut().for_each(|b| *b = 0);
        }
        self.vol.write(Ino(ino), off, &data, false)?;
        self.model.write(ino, off, &data);
        Ok(format!("write inode {ino} {off}+{len}"))
    }

    fn op_setxattr(&mut self) -> Result<String, FsError> {
        let Some(ino) = self.pick_file() else {
            return Ok(String::new());
        };
        let name = XATTR_NAMES[self.rng.gen_range(0..XATTR_NAMES.len())];
        let len = match self.rng.gen_range(0..3) {
            0 => 0,
            1 => self.rng.gen_range(1..64),
            // Values past a block live in blocks of their own.
            _ => self.rng.gen_range(64..9000),
        };
        let mut value = vec![0u8; len];
        self.rng.fill(&mut value[..]);
        self.report.xattr_ops += 1;
        self.vol.setxattr(Ino(ino), name, &value, 0)?;
        self.model.set_xattr(ino, name, &value);
        Ok(format!("setxattr inode {ino} {} ({len} bytes)", show(name)))
    }

    fn op_removexattr(&mut self) -> Result<String, FsError> {
        let Some(ino) = self.pick_file() else {
            return Ok(String::new());
        };
        let name = XATTR_NAMES[self.rng.gen_range(0..XATTR_NAMES.len())];
        let has = self
            .model
            .xattrs
            .get(&ino)
            .is_some_and(|x| x.contains_key(name));
        self.report.xattr_ops += 1;
        match self.vol.removexattr(Ino(ino), name) {
            Ok(()) if has => {}
            Err(FsError::NoAttr) if !has => return Ok(String::new()),
            Ok(()) => {
                self.breach(format!(
                    "removexattr of absent {} on inode {ino} succeeded",
                    show(name)
                ));
                return Ok(String::new());
            }
            Err(e) => return Err(e),
        }
        self.model.remove_xattr(ino, name);
        Ok(format!("removexattr inode {ino} {}", show(name)))
    }

    /// Creates a snapshot (it commits the live tree, which it then shows).
    fn op_snapshot_create(&mut self) -> Result<String, FsError> {
        let name = SNAPSHOT_NAMES[self.rng.gen_range(0..SNAPSHOT_NAMES.len())];
        if self.snapshots.contains_key(name) {
            return Ok(String::new());
        }
        self.report.snapshot_ops += 1;
        // Until it returns, the snapshot may or may not come to be.
        self.snapshots.insert(name.to_string(), None);
        let id = self.vol.snapshot_create(name)?;
        self.snapshots
            .insert(name.to_string(), Some((id, self.model.clone())));
        self.since_durable = vec![self.model.clone()];
        self.check_snapshots("after a snapshot create");
        Ok(format!("snapshot create {name} = {id}"))
    }

    fn op_snapshot_delete(&mut self) -> Result<String, FsError> {
        let name = SNAPSHOT_NAMES[self.rng.gen_range(0..SNAPSHOT_NAMES.len())];
        if !self.snapshots.contains_key(name) {
            return Ok(String::new());
        }
        self.report.snapshot_ops += 1;
        let known = self.snapshots.insert(name.to_string(), None).flatten();
        match self.vol.snapshot_delete(name) {
            Ok(()) => {}
            // An interrupted create that never came to be.
            Err(FsError::NotFound) if known.is_none() => {}
            Err(FsError::NotFound) => {
                self.breach(format!("snapshot {name} was not there to delete"));
                return Ok(String::new());
            }
            Err(e) => return Err(e),
        }
        self.snapshots.remove(name);
        self.since_durable = vec![self.model.clone()];
        Ok(format!("snapshot delete {name}"))
    }

    /// Every snapshot the volume lists shows what it showed when it was
    /// taken, and none whose create returned is missing. Snapshots an
    /// interrupted operation left unknown are taken as the volume lists them.
    fn check_snapshots(&mut self, when: &str) {
        let listed: std::collections::BTreeMap<String, u64> = self
            .vol
            .snapshot_list()
            .into_iter()
            .map(|s| (s.name, s.id))
            .collect();
        for (name, known) in std::mem::take(&mut self.snapshots) {
            let Some(&id) = listed.get(&name) else {
                if known.is_some() {
                    return self.breach(format!("{when}: snapshot {name} is gone"));
                }
                continue;
            };
            match &known {
                Some((want_id, _)) if *want_id != id => {
                    return self.breach(format!(
                        "{when}: snapshot {name} has id {id}, not {want_id}"
                    ))
                }
                Some((_, want)) => {
                    match Model::of_volume(&self.vol, View::Snapshot(id), &[ROOT_INO.0, self.dir]) {
                        Ok(got) if got == *want => {}
                        Ok(got) => {
                            return self.breach(format!(
                                "{when}: snapshot {name} differs from the tree it was taken of: {}",
                                got.diff(want)
                            ))
                        }
                        // The disk's EIO countdown ran out: the volume restarts.
                        Err(_) if self.eio_armed => self.failed = true,
                        Err(e) => return self.breach(format!("{when}: snapshot {name}: {e}")),
                    }
                }
                None => {}
            }
            self.snapshots.insert(name, known);
        }
        for name in listed.keys() {
            self.snapshots.entry(name.clone()).or_insert(None);
        }
    }

    fn op_truncate(&mut self) -> Result<String, FsError> {
        let Some(ino) = self.pick_file() else {
            return Ok(String::new());
        };
        let size = self.model.files[&ino].len() as u64;
        let to = self.rng.gen_range(0..=size + 10_000);
        let ch = AttrChanges {
            size: Some(to),
            ..AttrChanges::default()
        };
        self.vol.setattr(Ino(ino), &ch)?;
        self.model.truncate(ino, to);
        Ok(format!("truncate inode {ino} to {to}"))
    }

    fn op_link(&mut self) -> Result<String, FsError> {
        let Some(ino) = self.pick_file() else {
            return Ok(String::new());
        };
        let (dir, name) = self.pick_name();
        if self.model.names.contains_key(&(dir, name.clone())) {
            return Ok(String::new());
        }
        self.vol.link(Ino(ino), Ino(dir), &name)?;
        self.model.add(dir, &name, ino);
        Ok(format!("link inode {ino} as {dir}/{}", show(&name)))
    }

    fn op_unlink(&mut self) -> Result<String, FsError> {
        let (dir, name) = self.pick_name();
        if !self.model.names.contains_key(&(dir, name.clone())) {
            return Ok(String::new());
        }
        self.vol.unlink(Ino(dir), &name)?;
        self.model.remove(dir, &name);
        Ok(format!("unlink {dir}/{}", show(&name)))
    }

    fn op_rename(&mut self) -> Result<String, FsError> {
        let (dir, name) = self.pick_name();
        let (ndir, nname) = self.pick_name();
        let Some(&ino) = self.model.names.get(&(dir, name.clone())) else {
            return Ok(String::new());
        };
        if self.model.names.get(&(ndir, nname.clone())) == Some(&ino) {
            return Ok(String::new());
        }
        self.vol.rename(Ino(dir), &name, Ino(ndir), &nname, 0)?;
        self.model.remove(ndir, &nname);
        self.model.names.remove(&(dir, name.clone()));
        self.model.names.insert((ndir, nname.clone()), ino);
        Ok(format!(
            "rename {dir}/{} to {ndir}/{}",
            show(&name),
            show(&nname)
        ))
    }

    /// Cuts the source's power: unflushed writes are dropped, kept or torn;
    /// the volume mounts again and must hold a state the model allows.
    fn crash_source(&mut self) {
        self.report.source_crashes += 1;
        self.failed = false;
        self.net.lock().source_gone();
        self.vol.set_replicator(None);
        self.vol.set_cp_sink(None);
        self.vol.crash();
        let mut kept = [0u32; 3];
        let rng = &mut self.rng;
        self.dev.inner().crash(|_| {
            let fate = match rng.gen_range(0..3) {
                0 => LostWrite::Dropped,
                1 => LostWrite::Kept,
                _ => LostWrite::Torn,
            };
            kept[match fate {
                LostWrite::Dropped => 0,
                LostWrite::Kept => 1,
                LostWrite::Torn => 2,
            }] += 1;
            (fate, rng.gen())
        });
        self.dev.heal();
        self.eio_armed = false;
        self.note(format!(
            "source: power cut ({} writes dropped, {} kept, {} torn); mounting again",
            kept[0], kept[1], kept[2]
        ));
        let vol = match open_volume(&self.dev, &self.now, &mut self.rng, &self.net) {
            Ok(v) => v,
            Err(e) => return self.breach(format!("the volume does not mount after a crash: {e}")),
        };
        self.vol = vol;
        self.check_snapshots("after a crash");
        if self.breached() {
            return;
        }
        let found = match Model::of_volume(&self.vol, View::Live, &[ROOT_INO.0, self.dir]) {
            Ok(m) => m,
            Err(e) => return self.breach(format!("the volume cannot be read after a crash: {e}")),
        };
        match self.since_durable.iter().rposition(|m| *m == found) {
            Some(i) => {
                self.note(format!(
                    "source: replayed to the state after {i} of {} operations since the last durable point",
                    self.since_durable.len() - 1
                ));
                self.model = found;
                self.since_durable = vec![self.model.clone()];
                self.remember_for_peer();
            }
            None => {
                let d = found.diff(&self.since_durable[0]);
                self.breach(format!(
                    "after a crash the volume holds no state the model allows (vs the last durable one: {d})"
                ));
            }
        }
    }

    /// Adds the model's state to those a promoted peer may hold.
    fn remember_for_peer(&mut self) {
        if self.since_peer_caught_up.last() != Some(&self.model) {
            self.since_peer_caught_up.push(self.model.clone());
        }
    }

    /// The source is lost now: promotes a copy of the peer's directory (as
    /// `twinfs promote` would the directory itself) and checks the volume
    /// it makes against the states the peer may hold; with `exact`, only
    /// the current one (the peer has just caught up).
    fn check_promote(&mut self, exact: bool) {
        let (peer_dir, applied_any) = {
            let net = self.net.lock();
            (net.peer_dir.clone(), net.stats.peer_cps > 0)
        };
        if !applied_any {
            return;
        }
        self.report.promotes += 1;
        let copy = peer_dir.with_extension("promoted");
        let found = promote_copy(&peer_dir, &copy, &[ROOT_INO.0, self.dir]);
        let _ = std::fs::remove_dir_all(&copy);
        let (found, promoted) = match found {
            Ok(f) => f,
            Err(e) => return self.breach(format!("promoting a copy of the peer's directory: {e}")),
        };
        let allowed = if exact {
            std::slice::from_ref(&self.model)
        } else if self.peer_rotted {
            &self.since_peer_caught_up[..]
        } else {
            &self.since_peer_caught_up[self.peer_acked..]
        };
        match allowed.iter().rposition(|m| *m == found) {
            Some(i) => self.note(format!(
                "promote check: {promoted}; the state {} operations after the earliest allowed",
                i
            )),
            None => {
                let (i, d) = allowed
                    .iter()
                    .map(|m| found.diff(m))
                    .enumerate()
                    .min_by_key(|(_, d)| d.len())
                    .expect("a state");
                self.breach(format!(
                    "the peer promoted ({promoted}) holds none of the {} states the source went through since the peer's last acknowledged fsync (vs the nearest, {i}: {d})",
                    allowed.len()
                ));
            }
        }
    }

    /// Heals the link, stops faults, and pumps until the peer holds the
    /// source's CP (a liveness check).
    fn converge(&mut self) {
        if self.eio_armed {
            // A disk that fails every I/O stops the source: it restarts first.
            self.crash_source();
            if self.breached() {
                return;
            }
        }
        {
            let mut net = self.net.lock();
            net.heal();
            net.faults = false;
        }
        let cp = self.vol.checkpoint();
        self.note(format!("converge: checkpoint {cp:?}"));
        if cp.is_err() {
            self.failed = true;
            self.net.lock().faults = true;
            return;
        }
        let want = self.vol.committed();
        let mut net = self.net.lock();
        for _ in 0..CONVERGE_PUMPS {
            if net.peer_applied().map(|a| a.1) == Some(want.root_hash().0) || net.breach.is_some() {
                break;
            }
            net.pump();
        }
        match net.peer_applied() {
            Some((_, root)) if root == want.root_hash().0 => {
                net.note(format!("converge: the peer holds CP {}", want.cp.0));
                self.since_peer_caught_up = vec![self.model.clone()];
                self.peer_acked = 0;
                self.peer_rotted = false;
                let kept = net.peer_keeps_covered(&want);
                if !kept.is_empty() {
                    let msg = format!(
                        "the peer applied CP {} but still keeps transfers {kept:?} it covers",
                        want.cp.0
                    );
                    net.breach(msg);
                }
            }
            other => {
                let msg = format!(
                    "the link healed but the peer did not reach CP {} within {CONVERGE_PUMPS} steps (it holds {:?})",
                    want.cp.0,
                    other.map(|a| a.0)
                );
                net.breach(msg);
            }
        }
        net.faults = true;
    }
}

/// Opens the source volume on `dev` with the simulator's clock and hooks.
fn open_volume(
    dev: &Arc<FaultDevice<CrashDevice>>,
    now: &Arc<AtomicU64>,
    rng: &mut StdRng,
    net: &Arc<Mutex<Net>>,
) -> Result<Arc<Volume>, String> {
    let cfg = VolumeConfig {
        cp_interval: None,
        background: false,
        cache_meta_blocks: 512,
        cache_data_blocks: 512,
        clock: Arc::new(SimClock(now.clone())),
        generation: Some(GenerationId(rng.gen())),
        ..VolumeConfig::default()
    };
    let vol = Arc::new(Volume::open(dev.clone(), cfg).map_err(|e| e.to_string())?);
    let hooks = Arc::new(Hooks {
        net: net.clone(),
        vol: vol.clone(),
        counters: Counters::default(),
    });
    vol.set_replicator(Some(hooks.clone()));
    vol.set_cp_sink(Some(Box::new(RecordingSink {
        inner: Sink::new(hooks),
        net: net.clone(),
    })));
    let sb = vol.committed();
    let mut n = net.lock();
    n.roots.insert(sb.root_hash().0);
    n.vol = Some(vol.clone());
    Ok(vol)
}

/// Copies the peer's directory `dir` to `copy`, promotes the copy, and
/// reads the directories `dirs` of the volume it makes (which fsck must
/// find clean); with what promote said.
fn promote_copy(dir: &Path, copy: &Path, dirs: &[u64]) -> Result<(Model, String), String> {
    let _ = std::fs::remove_dir_all(copy);
    copy_dir(dir, copy).map_err(|e| format!("copying {}: {e}", dir.display()))?;
    let p = crate::peer::promote(copy).map_err(|e| e.to_string())?;
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(&p.image, false).map_err(|e| format!("opening the image: {e}"))?);
    let cfg = VolumeConfig {
        read_only: true,
        background: false,
        ..VolumeConfig::default()
    };
    let vol =
        Volume::open(dev.clone(), cfg).map_err(|e| format!("opening the promoted volume: {e}"))?;
    let found = Model::of_volume(&vol, View::Live, dirs);
    let _ = vol.close();
    let fsck = twinfs_fs::fsck::check(&*dev, &mut |_| {})
        .map_err(|e| format!("fsck of the promoted image: {e}"))?;
    if !fsck.is_clean() {
        let first: Vec<String> = fsck
            .problems
            .iter()
            .take(3)
            .map(|p| p.to_string())
            .collect();
        return Err(format!(
            "fsck of the promoted image: {} errors, {} warnings: {}",
            fsck.errors(),
            fsck.warnings(),
            first.join("; ")
        ));
    }
    let said = format!(
        "CP {} + {} transfers = CP {}",
        p.applied_cp, p.replayed, p.final_cp
    );
    Ok((found?, said))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Where the peer's directories go: memory-backed when the machine has it.
fn scratch_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Runs one seed.
pub fn run(opts: &SimOptions) -> Report {
    #[cfg(feature = "planted-bugs")]
    crate::planted::plant(opts.plant);
    let dir = scratch_root().join(format!("twinfs-sim-{}-{}", std::process::id(), opts.seed));
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = match Sim::new(opts, dir.clone()) {
        Ok(mut sim) => {
            for i in 0..opts.steps {
                sim.report.steps = i + 1;
                sim.step();
                sim.net.lock().check_peer();
                if sim.breached() {
                    break;
                }
            }
            if !sim.breached() {
                if sim.failed {
                    sim.crash_source();
                }
                sim.converge();
            }
            if !sim.breached() {
                sim.check_promote(true);
            }
            // Break the cycle volume → hooks → volume.
            sim.vol.set_replicator(None);
            sim.vol.set_cp_sink(None);
            let mut net = sim.net.lock();
            net.vol = None;
            net.peer = None;
            let mut report = sim.report.clone();
            report.breach = net.breach.clone();
            report.trace = std::mem::take(&mut net.trace);
            report.net = net.stats.clone();
            report
        }
        Err(e) => Report {
            seed: opts.seed,
            breach: Some(format!("setting up: {e}")),
            ..Report::default()
        },
    };
    let _ = std::fs::remove_dir_all(&dir);
    if report.breach.is_none() && !opts.keep_trace {
        report.trace.clear();
    }
    report
}
