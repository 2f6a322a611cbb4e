//! `twinfs fsck`: checks an image without trusting any of it.
//!
//! [`check`] reads both superblock slots and takes the valid one with the
//! highest CP (as a mount does), then walks every block the current image
//! references — metadata B-tree, every inode's file tree and data, xattr
//! value blocks, the allocation map's tree and bitmaps — reading each block
//! straight from the device and comparing its hash with its pointer. Along
//! the way it checks births, that no block is referenced twice, and each
//! referenced block against the allocation map; then the namespace (entries,
//! link counts, parents, orphans, reachability), leaked blocks, the
//! superblock's counters, every snapshot and the peer hold (their blocks
//! must still hold what their pointers say: a block reused by the current
//! image shows as a checksum mismatch), and what NVLOG replay would do.
//!
//! Nothing in the image can make it panic: every decode failure, bad
//! address or bad hash becomes a [`Problem`] naming the block, inode,
//! directory or item, and the walk carries on with what is still readable.
//! The format it checks is `fs/FORMAT.md`, whose section "What fsck checks"
//! lists the rules.

mod disk;
mod logcheck;
mod namespace;
mod node;
pub mod report;

use std::collections::HashMap;
use std::fmt;

use crate::alloc::{map_blocks, Bitmap, BITS_PER_BLOCK};
use crate::btree::{Key, TreeRoot, MAX_LEVEL, MIN_FILL_BYTES};
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::filetree::{self, FANOUT, MAX_FILE_SIZE, MAX_HEIGHT};
use crate::items::{self, kind, InodeRecord, RetainedImage, XattrValue, VOLUME_INO};
use crate::superblock::{self, Superblock};
use crate::types::*;
use disk::{DataQueue, Disk, Fault, Queued};
use namespace::{name, Entry, InodeInfo, Namespace};
pub use report::*;

/// fsck's own decoding of a metadata B-tree node (module `node`), in the
/// form [`crate::btree::decode_node`] gives, so that the fuzz target `btree`
/// can check that the two decoders of the node format agree.
pub fn decode_node(b: &Block, level: u8) -> std::result::Result<crate::btree::NodeEntries, String> {
    let n = node::decode(b, level)?;
    Ok(crate::btree::NodeEntries {
        keys: n.keys,
        values: n.values,
        children: n.children,
    })
}

/// Most problems listed in a report; the rest are only counted.
pub const MAX_PROBLEMS: usize = 10_000;
/// Most leaked-block ranges listed one by one.
const MAX_LEAK_RANGES: usize = 200;
/// Most other images named in the report of a damaged block they share.
const MAX_NOTED_IMAGES: usize = 4;
/// Blocks between two progress reports.
const PROGRESS_EVERY_BLOCKS: u64 = 4096;

/// Checks the image on `dev`. Fails only when there is nothing to check: no
/// valid superblock slot, or an image shorter than its superblock says
/// (truncated). Everything else is reported in the [`Report`].
/// `progress` is called every few thousand blocks and at each phase.
pub fn check(dev: &dyn BlockDevice, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let mut early = Vec::new();
    let (sb, slot) = superblocks(dev, &mut early)?;
    let report = std::thread::scope(|s| {
        let mut c = Checker::new(dev, &sb, progress, DataQueue::new(s, dev));
        for (sev, block, what) in early {
            c.flag(sev, Kind::Superblock, VOLUME, Some(block), None, what);
        }
        c.run();
        c.finish(slot)
    });
    Ok(report)
}

// ---------------------------------------------------------------------------
// Superblock slots

/// Reads both slots; returns the one a mount would use and notes on the other.
fn superblocks(
    dev: &dyn BlockDevice,
    notes: &mut Vec<(Severity, BlockAddr, String)>,
) -> Result<(Superblock, u64)> {
    let mut slots: Vec<std::result::Result<Superblock, (String, bool)>> = Vec::new();
    let mut without_magic = 0;
    for slot in 0..2u64 {
        let mut b = new_block();
        let read = dev.read(BlockAddr(slot), &mut b[..]);
        if read.is_ok() && !superblock::has_magic(&b) {
            without_magic += 1;
        }
        slots.push(match read {
            Err(e) => Err((format!("superblock slot {slot}: read failed: {e}"), false)),
            Ok(()) => match Superblock::decode(&b, slot) {
                Ok(sb) if sb.slot() != slot => Err((
                    format!(
                        "superblock slot {slot} holds CP {} which belongs in slot {}",
                        sb.cp,
                        sb.slot()
                    ),
                    false,
                )),
                Ok(sb) => Ok(sb),
                Err(FsError::Corrupt { what, .. }) => Err((what, b.iter().all(|&x| x == 0))),
                Err(e) => Err((e.to_string(), b.iter().all(|&x| x == 0))),
            },
        });
    }
    let best = (0..2)
        .filter(|&s| slots[s].is_ok())
        .max_by_key(|&s| slots[s].as_ref().map_or(CpNumber(0), |sb| sb.cp));
    if best.is_none() && without_magic == 2 {
        return Err(FsError::NotAVolume);
    }
    let Some(slot) = best else {
        let why: Vec<String> = slots
            .iter()
            .filter_map(|s| s.as_ref().err().map(|e| e.0.clone()))
            .collect();
        return Err(FsError::CorruptVolume(format!(
            "no valid superblock, nothing to check ({}); both slots are damaged",
            why.join("; ")
        )));
    };
    let sb = slots[slot]
        .clone()
        .map_err(|e| FsError::CorruptVolume(e.0))?;
    if sb.total_blocks > dev.num_blocks() {
        return Err(FsError::CorruptVolume(format!(
            "the image is truncated: its superblock (CP {}, slot {slot}) describes {} blocks but the image holds only {}; restore the missing {} blocks (e.g. from a copy or the peer)",
            sb.cp,
            sb.total_blocks,
            dev.num_blocks(),
            sb.total_blocks - dev.num_blocks()
        )));
    }
    let other = 1 - slot;
    let at = BlockAddr(other as u64);
    match &slots[other] {
        // A new volume has written only slot 0; slot 1 is still zero.
        Err((_, true)) if sb.cp == CpNumber(0) => {}
        Err((e, _)) => notes.push((
            Severity::Warning,
            at,
            format!(
                "{e}; the volume uses slot {slot} (CP {}), and the next CP rewrites slot {other}",
                sb.cp
            ),
        )),
        Ok(o) if o.uuid != sb.uuid => notes.push((
            Severity::Error,
            at,
            format!(
                "superblock slot {other} belongs to another volume (uuid {})",
                hex(&o.uuid)
            ),
        )),
        Ok(o) if (o.total_blocks, o.log_start, o.log_blocks)
            != (sb.total_blocks, sb.log_start, sb.log_blocks) =>
        {
            notes.push((
                Severity::Warning,
                at,
                format!(
                    "superblock slot {other} (CP {}) describes a different geometry than slot {slot}",
                    o.cp
                ),
            ))
        }
        // A replica that resynced jumps over CPs it never applied.
        Ok(o) if o.cp.0 + 1 < sb.cp.0 => notes.push((
            Severity::Note,
            at,
            format!(
                "superblock slot {other} holds CP {}, older than the previous CP {}: the CPs between were skipped (a replica that resynced)",
                o.cp,
                sb.cp.0 - 1
            ),
        )),
        Ok(o) if o.cp.0 + 1 != sb.cp.0 => notes.push((
            Severity::Warning,
            at,
            format!(
                "superblock slot {other} holds CP {}, expected the previous CP {}",
                o.cp,
                sb.cp.0.saturating_sub(1)
            ),
        )),
        Ok(_) => {}
    }
    if dev.num_blocks() > sb.total_blocks {
        notes.push((
            Severity::Note,
            BlockAddr(slot as u64),
            format!(
                "the image holds {} blocks, {} more than the volume uses",
                dev.num_blocks(),
                dev.num_blocks() - sb.total_blocks
            ),
        ));
    }
    Ok((sb, slot as u64))
}

// ---------------------------------------------------------------------------
// What a block is, for problem reports

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tree {
    File(u64),
    Map,
}

/// The role of a block in its image: what a problem report says it is.
#[derive(Clone, Debug)]
enum Role {
    Node { level: u8 },
    Indirect { tree: Tree, level: u8, first: u64 },
    Data { ino: u64, index: u64 },
    Bitmap { index: u64 },
    XattrBlob { ino: u64, part: usize },
}

impl Role {
    fn ino(&self) -> Option<Ino> {
        match self {
            Role::Indirect {
                tree: Tree::File(ino),
                ..
            }
            | Role::Data { ino, .. }
            | Role::XattrBlob { ino, .. } => Some(Ino(*ino)),
            _ => None,
        }
    }

    fn is_map(&self) -> bool {
        matches!(
            self,
            Role::Bitmap { .. }
                | Role::Indirect {
                    tree: Tree::Map,
                    ..
                }
        )
    }

    fn is_meta(&self) -> bool {
        matches!(self, Role::Node { .. } | Role::Indirect { .. })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Node { level: 0 } => write!(f, "metadata B-tree leaf"),
            Role::Node { level } => write!(f, "metadata B-tree node (level {level})"),
            Role::Indirect {
                tree: Tree::File(ino),
                level,
                first,
            } => write!(
                f,
                "indirect block (level {level}, file blocks from {first}) of inode {ino}"
            ),
            Role::Indirect {
                tree: Tree::Map,
                level,
                ..
            } => write!(f, "allocation map tree block (level {level})"),
            Role::Data { ino, index } => write!(f, "data block {index} of inode {ino}"),
            Role::Bitmap { index } => write!(
                f,
                "allocation bitmap block {index} (blocks from {})",
                index * BITS_PER_BLOCK
            ),
            Role::XattrBlob { ino, part } => {
                write!(f, "xattr value block {part} of inode {ino}")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The checker

/// Index of the volume-wide pseudo image and of the current image in `images`.
const VOLUME: usize = 0;
const CURRENT: usize = 1;

/// Which image a walk is in.
struct Scope {
    image: usize,
    /// The image's CP: no pointer in it may be born later.
    cp: CpNumber,
    /// The current image gets every check; retained ones get hashes,
    /// births and formats, and skip subtrees already verified.
    current: bool,
}

/// What to do with a pointer.
#[derive(PartialEq, Eq)]
enum Visit {
    /// Read and check it.
    Go,
    /// Identical to a block already verified (same address and hash).
    Known,
    /// Do not follow: it points outside the data area or was seen already.
    No,
}

/// The data-block pointers met in one file tree.
#[derive(Default)]
struct Leaves {
    /// Keep the pointers (bitmaps, symlink targets) instead of queueing them.
    collect: bool,
    count: u64,
    last: Option<u64>,
    blocks: Vec<(u64, BlockPtr)>,
    /// Index ranges below pointers that could not be followed.
    lost: Vec<(u64, u64)>,
}

impl Leaves {
    fn collecting() -> Leaves {
        Leaves {
            collect: true,
            ..Leaves::default()
        }
    }
}

struct Checker<'a, 'p, 's> {
    dev: &'a dyn BlockDevice,
    sb: &'a Superblock,
    key: [u8; 32],
    disk: Disk<'a>,
    queue: DataQueue<'s, 'a>,
    progress: &'p mut dyn FnMut(Progress),
    phase: Phase,
    reported_at: u64,
    problems: Vec<Problem>,
    omitted: u64,
    counts: [u64; 3],
    images: Vec<ImageRef>,
    /// Blocks the current image references.
    reached: Bitmap,
    /// The current image's allocation map, and which bitmap blocks of it could be read.
    map: Bitmap,
    map_known: Vec<bool>,
    map_tree: Vec<u64>,
    /// Metadata blocks verified so far: address → hash (lets retained
    /// images skip subtrees they share with what was already checked).
    verified: HashMap<u64, Hash128>,
    /// Blocks that failed verification: address → (hash expected, the
    /// problem reported, how many other images were noted in it).
    failed: HashMap<u64, (Hash128, Option<usize>, usize)>,
    /// Some metadata of the current image could not be read or followed.
    meta_damaged: bool,
    ns: Namespace,
    summary: Summary,
    snapshots: Vec<(u64, RetainedImage)>,
    log: LogSummary,
}

impl<'a, 'p, 's> Checker<'a, 'p, 's> {
    fn new(
        dev: &'a dyn BlockDevice,
        sb: &'a Superblock,
        progress: &'p mut dyn FnMut(Progress),
        queue: DataQueue<'s, 'a>,
    ) -> Checker<'a, 'p, 's> {
        Checker {
            dev,
            sb,
            key: items::name_hash_key(&sb.uuid),
            disk: Disk::new(dev),
            queue,
            progress,
            phase: Phase::AllocMap,
            reported_at: 0,
            problems: Vec::new(),
            omitted: 0,
            counts: [0; 3],
            images: vec![ImageRef::Volume, ImageRef::Current],
            reached: Bitmap::new(sb.total_blocks),
            map: Bitmap::new(sb.total_blocks),
            map_known: Vec::new(),
            map_tree: Vec::new(),
            verified: HashMap::new(),
            failed: HashMap::new(),
            meta_damaged: false,
            ns: Namespace::default(),
            summary: Summary::default(),
            snapshots: Vec::new(),
            log: LogSummary::default(),
        }
    }

    fn run(&mut self) {
        let current = Scope {
            image: CURRENT,
            cp: self.sb.cp,
            current: true,
        };
        self.set_phase(Phase::AllocMap);
        self.load_map(&current);
        self.set_phase(Phase::Current);
        let meta = self.sb.meta;
        self.walk_meta(&current, &meta);
        self.finish_data();
        self.set_phase(Phase::Namespace);
        let ns = std::mem::take(&mut self.ns);
        self.summary.entries = ns.entries();
        self.summary.orphans = ns.orphans();
        let damaged = self.meta_damaged;
        let mut found = Vec::new();
        ns.check(damaged, &mut |f| found.push(f));
        for (sev, kind, ino, what) in found {
            self.flag(sev, kind, CURRENT, None, ino, what);
        }
        self.leaks();
        self.counters();
        self.retained();
        self.set_phase(Phase::Log);
        let (log, findings) = logcheck::check(self.dev, self.sb);
        self.log = log;
        for (sev, kind, block, what) in findings {
            self.flag(sev, kind, VOLUME, block, None, what);
        }
        self.set_phase(Phase::Done);
    }

    fn finish(self, slot: u64) -> Report {
        let mut summary = self.summary;
        summary.blocks_verified = self.disk.verified;
        summary.snapshots = self.snapshots.len() as u64;
        Report {
            slot,
            cp: self.sb.cp,
            root_hash: self.sb.root_hash(),
            uuid: self.sb.uuid,
            total_blocks: self.sb.total_blocks,
            summary,
            log: self.log,
            problems: self.problems,
            omitted: self.omitted,
            counts: self.counts,
        }
    }

    // ---- reporting ----------------------------------------------------------

    fn flag(
        &mut self,
        severity: Severity,
        kind: Kind,
        image: usize,
        block: Option<BlockAddr>,
        ino: Option<Ino>,
        what: String,
    ) {
        self.counts[severity as usize] += 1;
        if self.problems.len() >= MAX_PROBLEMS {
            self.omitted += 1;
            return;
        }
        self.problems.push(Problem {
            severity,
            kind,
            image: self.images[image].clone(),
            block,
            ino,
            what,
        });
    }

    /// A problem with the block `ptr` points at, playing `role`.
    fn at_block(
        &mut self,
        sc: &Scope,
        sev: Severity,
        kind: Kind,
        ptr: &BlockPtr,
        role: &Role,
        what: String,
    ) {
        self.flag(
            sev,
            kind,
            sc.image,
            Some(ptr.addr),
            role.ino(),
            format!("{role} at block {}: {what}", ptr.addr),
        );
    }

    fn fault(&mut self, image: usize, ptr: &BlockPtr, role: &Role, f: &Fault) {
        if image == CURRENT && role.is_meta() {
            self.meta_damaged = true;
        }
        let kind = match f {
            Fault::Io(_) => Kind::ReadError,
            Fault::Checksum { .. } => Kind::Checksum,
        };
        let listed = (self.problems.len() < MAX_PROBLEMS).then_some(self.problems.len());
        self.failed.insert(ptr.addr.0, (ptr.hash, listed, 0));
        self.flag(
            Severity::Error,
            kind,
            image,
            Some(ptr.addr),
            role.ino(),
            format!("{role} at block {} {}", ptr.addr, f.describe(ptr)),
        );
    }

    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.report_progress();
    }

    fn report_progress(&mut self) {
        self.reported_at = self.disk.verified;
        (self.progress)(Progress {
            phase: self.phase,
            blocks_checked: self.disk.verified,
            blocks_total: self.sb.used_blocks,
        });
    }

    /// Reports progress now and then, and the data faults found meanwhile.
    fn tick(&mut self) {
        if self.disk.verified - self.reported_at >= PROGRESS_EVERY_BLOCKS {
            for (q, f) in self.queue.take_faults() {
                self.fault(q.image, &q.ptr, &q.role, &f);
            }
            self.report_progress();
        }
    }

    fn finish_data(&mut self) {
        for (q, f) in self.queue.finish(&mut self.disk) {
            self.fault(q.image, &q.ptr, &q.role, &f);
        }
        self.report_progress();
    }

    // ---- pointers and blocks --------------------------------------------------

    /// Checks a pointer before it is followed: births, address, and (current
    /// image) that it is the only reference to its block and that the
    /// allocation map marks the block.
    fn enter(&mut self, sc: &Scope, ptr: &BlockPtr, parent_birth: CpNumber, role: &Role) -> Visit {
        let addr = ptr.addr.0;
        if ptr.birth > sc.cp {
            let what = format!("born in CP {}, after its image's CP {}", ptr.birth, sc.cp);
            self.at_block(sc, Severity::Error, Kind::Birth, ptr, role, what);
        } else if ptr.birth > parent_birth {
            let what = format!(
                "born in CP {}, after the block pointing to it (CP {parent_birth})",
                ptr.birth
            );
            self.at_block(sc, Severity::Error, Kind::Birth, ptr, role, what);
        }
        if addr < self.sb.data_start() || addr >= self.sb.total_blocks {
            let what = format!(
                "the pointer names a block outside the data area (blocks {}..{})",
                self.sb.data_start(),
                self.sb.total_blocks
            );
            self.at_block(sc, Severity::Error, Kind::BadPointer, ptr, role, what);
            return Visit::No;
        }
        if !sc.current {
            if self.verified.get(&addr) == Some(&ptr.hash) {
                return Visit::Known;
            }
            if let Some((hash, listed, others)) = self.failed.get_mut(&addr) {
                if *hash == ptr.hash {
                    // The same damaged block, already reported: say who else needs it.
                    if let (Some(i), true) = (*listed, *others < MAX_NOTED_IMAGES) {
                        *others += 1;
                        let image = &self.images[sc.image];
                        self.problems[i].what += &format!("; {image} references it too");
                    }
                    return Visit::Known;
                }
            }
            return Visit::Go;
        }
        if self.reached.get(addr) {
            let what = "the block is referenced more than once in the image".to_string();
            self.at_block(sc, Severity::Error, Kind::SharedBlock, ptr, role, what);
            return Visit::No;
        }
        self.reached.set(addr);
        if role.is_map() {
            self.map_tree.push(addr);
        } else if self.map_known(addr) && !self.map.get(addr) {
            let what = "not marked allocated in the allocation map: a later CP may overwrite it"
                .to_string();
            self.at_block(sc, Severity::Error, Kind::Unmarked, ptr, role, what);
        }
        Visit::Go
    }

    fn map_known(&self, addr: u64) -> bool {
        self.map_known
            .get((addr / BITS_PER_BLOCK) as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Reads and verifies blocks; `None` for each one that failed (reported).
    fn fetch(&mut self, sc: &Scope, ptrs: &[(BlockPtr, Role)]) -> Vec<Option<Box<Block>>> {
        let list: Vec<BlockPtr> = ptrs.iter().map(|p| p.0).collect();
        let got = self.disk.read_many(&list);
        let out = got
            .into_iter()
            .zip(ptrs)
            .map(|(r, (p, role))| match r {
                Ok(b) => {
                    self.verified.insert(p.addr.0, p.hash);
                    Some(b)
                }
                Err(f) => {
                    self.fault(sc.image, p, role, &f);
                    None
                }
            })
            .collect();
        self.tick();
        out
    }

    // ---- file trees -------------------------------------------------------------

    /// Walks a file tree (a file's data, or the allocation map).
    fn walk_tree(
        &mut self,
        sc: &Scope,
        tree: Tree,
        root: &TreeRoot,
        parent_birth: CpNumber,
        leaves: &mut Leaves,
    ) {
        if root.ptr.is_null() {
            return;
        }
        let top = (0, filetree::span(root.height.min(MAX_HEIGHT)));
        if root.height > MAX_HEIGHT {
            let role = Role::Indirect {
                tree,
                level: root.height,
                first: 0,
            };
            let what = format!("the tree's height {} exceeds {MAX_HEIGHT}", root.height);
            self.at_block(sc, Severity::Error, Kind::Malformed, &root.ptr, &role, what);
            leaves.lost.push(top);
            return;
        }
        if root.height == 0 {
            self.leaf(sc, tree, 0, root.ptr, parent_birth, leaves);
            return;
        }
        let role = Role::Indirect {
            tree,
            level: root.height,
            first: 0,
        };
        if self.enter(sc, &root.ptr, parent_birth, &role) != Visit::Go {
            leaves.lost.push(top);
            return;
        }
        match self.fetch(sc, &[(root.ptr, role)]).pop().flatten() {
            Some(b) => self.indirect(sc, tree, &root.ptr, root.height, 0, &b, leaves),
            None => leaves.lost.push(top),
        }
    }

    /// The children of an indirect block at `level` covering blocks from `base`.
    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &mut self,
        sc: &Scope,
        tree: Tree,
        ptr: &BlockPtr,
        level: u8,
        base: u64,
        block: &Block,
        leaves: &mut Leaves,
    ) {
        let child_span = filetree::span(level - 1);
        let mut kids = Vec::new();
        for i in 0..FANOUT {
            let off = i as usize * BlockPtr::SIZE;
            let c = BlockPtr::decode(&block[off..off + BlockPtr::SIZE]);
            if c.is_null() {
                continue;
            }
            let first = base + i * child_span;
            if level == 1 {
                self.leaf(sc, tree, first, c, ptr.birth, leaves);
                continue;
            }
            let role = Role::Indirect {
                tree,
                level: level - 1,
                first,
            };
            if self.enter(sc, &c, ptr.birth, &role) == Visit::Go {
                kids.push((c, role));
            } else {
                leaves.lost.push((first, first + child_span));
            }
        }
        let blocks = self.fetch(sc, &kids);
        for ((c, role), b) in kids.into_iter().zip(blocks) {
            let Role::Indirect { first, .. } = role else {
                continue;
            };
            match b {
                Some(b) => self.indirect(sc, tree, &c, level - 1, first, &b, leaves),
                None => leaves.lost.push((first, first + child_span)),
            }
        }
    }

    fn leaf(
        &mut self,
        sc: &Scope,
        tree: Tree,
        index: u64,
        ptr: BlockPtr,
        parent_birth: CpNumber,
        leaves: &mut Leaves,
    ) {
        leaves.count += 1;
        leaves.last = leaves.last.max(Some(index));
        let role = match tree {
            Tree::File(ino) => Role::Data { ino, index },
            Tree::Map => Role::Bitmap { index },
        };
        match self.enter(sc, &ptr, parent_birth, &role) {
            Visit::Go if leaves.collect => leaves.blocks.push((index, ptr)),
            Visit::Go => {
                self.queue.push(
                    &mut self.disk,
                    Queued {
                        ptr,
                        role,
                        image: sc.image,
                    },
                );
                self.tick();
            }
            Visit::Known => {}
            Visit::No => leaves.lost.push((index, index + 1)),
        }
    }

    // ---- the allocation map ---------------------------------------------------

    /// Walks a map tree and reads its bitmap blocks: each bitmap block (None
    /// if unreadable) and the index ranges below pointers that could not be
    /// followed.
    #[allow(clippy::type_complexity)]
    fn map_blocks(
        &mut self,
        sc: &Scope,
        root: &TreeRoot,
    ) -> (Vec<(u64, BlockPtr, Option<Box<Block>>)>, Vec<(u64, u64)>) {
        let mut leaves = Leaves::collecting();
        self.walk_tree(sc, Tree::Map, root, sc.cp, &mut leaves);
        let n = map_blocks(self.sb.total_blocks);
        for &(index, ptr) in &leaves.blocks {
            if index >= n {
                let what = format!("the volume's map has only {n} bitmap blocks");
                self.at_block(
                    sc,
                    Severity::Error,
                    Kind::AllocMap,
                    &ptr,
                    &Role::Bitmap { index },
                    what,
                );
            }
        }
        let list: Vec<(BlockPtr, Role)> = leaves
            .blocks
            .iter()
            .map(|&(index, p)| (p, Role::Bitmap { index }))
            .collect();
        let blocks = self.fetch(sc, &list);
        let out = leaves
            .blocks
            .iter()
            .zip(blocks)
            .map(|(&(index, p), b)| (index, p, b))
            .collect();
        (out, leaves.lost)
    }

    /// Loads the current image's allocation map and checks its bits.
    fn load_map(&mut self, sc: &Scope) {
        let root = self.sb.alloc;
        let (bitmaps, lost) = self.map_blocks(sc, &root);
        let n = map_blocks(self.sb.total_blocks);
        // A hole is an all-zero bitmap block: known. Unreadable parts are not.
        let mut known = vec![true; n as usize];
        for (index, ptr, block) in &bitmaps {
            if *index >= n {
                continue;
            }
            match block {
                Some(b) => {
                    self.map.load_block(*index, b);
                    self.bits_beyond_the_volume(*index, ptr, b);
                }
                None => known[*index as usize] = false,
            }
        }
        for (lo, hi) in lost {
            for k in lo..hi.min(n) {
                known[k as usize] = false;
            }
        }
        self.map_known = known;
        for b in 0..self.sb.data_start() {
            if self.map.get(b) {
                self.flag(
                    Severity::Error,
                    Kind::AllocMap,
                    CURRENT,
                    Some(BlockAddr(b)),
                    None,
                    format!("block {b} (a superblock slot or the log) is marked allocated in the allocation map"),
                );
            }
        }
        for addr in self.map_tree.clone() {
            if self.map.get(addr) {
                self.flag(
                    Severity::Warning,
                    Kind::AllocMap,
                    CURRENT,
                    Some(BlockAddr(addr)),
                    None,
                    format!("allocation map tree block {addr} is marked in the map, which must not contain the map's own blocks"),
                );
            }
        }
    }

    fn bits_beyond_the_volume(&mut self, index: u64, ptr: &BlockPtr, b: &Block) {
        let first = index * BITS_PER_BLOCK;
        let total = self.sb.total_blocks;
        if first + BITS_PER_BLOCK <= total {
            return;
        }
        let from = total.saturating_sub(first);
        if (from..BITS_PER_BLOCK).any(|i| b[(i / 8) as usize] & (1 << (i % 8)) != 0) {
            let what = format!("marks blocks beyond the end of the volume ({total} blocks)");
            let sc = Scope {
                image: CURRENT,
                cp: self.sb.cp,
                current: true,
            };
            self.at_block(
                &sc,
                Severity::Warning,
                Kind::AllocMap,
                ptr,
                &Role::Bitmap { index },
                what,
            );
        }
    }

    /// Blocks the map marks that nothing references.
    fn leaks(&mut self) {
        let (start, total) = (self.sb.data_start(), self.sb.total_blocks);
        let leaked: Vec<u64> = self
            .map
            .difference(&self.reached)
            .into_iter()
            .filter(|&b| b >= start && b < total && self.map_known(b))
            .collect();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for b in leaked {
            match ranges.last_mut() {
                Some(r) if r.1 + 1 == b => r.1 = b,
                _ => ranges.push((b, b)),
            }
        }
        let why = if self.meta_damaged {
            " (they may belong to the unreadable metadata reported above)"
        } else {
            ""
        };
        for (i, &(lo, hi)) in ranges.iter().enumerate() {
            if i == MAX_LEAK_RANGES {
                let rest: u64 = ranges[i..].iter().map(|r| r.1 - r.0 + 1).sum();
                self.flag(
                    Severity::Warning,
                    Kind::Leaked,
                    CURRENT,
                    None,
                    None,
                    format!(
                        "{} more ranges of leaked blocks ({rest} blocks){why}",
                        ranges.len() - i
                    ),
                );
                break;
            }
            let what = if lo == hi {
                format!("block {lo} is marked allocated but nothing in the image references it: leaked{why}")
            } else {
                format!(
                    "blocks {lo}..={hi} ({} blocks) are marked allocated but nothing in the image references them: leaked{why}",
                    hi - lo + 1
                )
            };
            self.flag(
                Severity::Warning,
                Kind::Leaked,
                CURRENT,
                Some(BlockAddr(lo)),
                None,
                what,
            );
        }
    }

    /// The superblock's statistics against what the walk found.
    fn counters(&mut self) {
        let used = self.reached.count_ones();
        self.summary.blocks_used = used;
        let why = if self.meta_damaged {
            " (damaged metadata reported above may explain the difference)"
        } else {
            ""
        };
        if used != self.sb.used_blocks {
            let what = format!(
                "the superblock counts {} used blocks, the image references {used}{why}",
                self.sb.used_blocks
            );
            self.flag(Severity::Warning, Kind::Counters, CURRENT, None, None, what);
        }
        if self.summary.inodes != self.sb.inodes {
            let what = format!(
                "the superblock counts {} inodes, the image holds {}{why}",
                self.sb.inodes, self.summary.inodes
            );
            self.flag(Severity::Warning, Kind::Counters, CURRENT, None, None, what);
        }
    }

    // ---- the metadata B-tree ----------------------------------------------------

    fn walk_meta(&mut self, sc: &Scope, root: &TreeRoot) {
        let role = Role::Node { level: root.height };
        if root.ptr.is_null() {
            if root.height != 0 {
                let what = format!("the metadata tree is empty but has height {}", root.height);
                self.flag(Severity::Error, Kind::TreeShape, sc.image, None, None, what);
            }
            return;
        }
        if root.height > MAX_LEVEL {
            let what = format!("the tree's height {} exceeds {MAX_LEVEL}", root.height);
            self.at_block(sc, Severity::Error, Kind::Malformed, &root.ptr, &role, what);
            self.meta_damaged |= sc.current;
            return;
        }
        if self.enter(sc, &root.ptr, sc.cp, &role) != Visit::Go {
            self.meta_damaged |= sc.current;
            return;
        }
        if let Some(b) = self.fetch(sc, &[(root.ptr, role)]).pop().flatten() {
            self.node(sc, &root.ptr, root.height, &b, None, None);
        }
    }

    /// Checks the node `ptr` points at, then its children or items. `sep` is
    /// the parent's separator for it (None for the root), `hi` the
    /// exclusive upper bound of its keys.
    fn node(
        &mut self,
        sc: &Scope,
        ptr: &BlockPtr,
        level: u8,
        block: &Block,
        sep: Option<Key>,
        hi: Option<Key>,
    ) {
        let role = Role::Node { level };
        let node = match node::decode(block, level) {
            Ok(n) => n,
            Err(what) => {
                self.at_block(sc, Severity::Error, Kind::Malformed, ptr, &role, what);
                self.meta_damaged |= sc.current;
                return;
            }
        };
        if sc.current {
            self.shape(sc, ptr, &role, &node, sep, hi);
        }
        if level == 0 {
            for (key, span) in node.keys.iter().zip(&node.values) {
                self.item(sc, ptr, *key, &block[span.clone()]);
            }
            return;
        }
        let child_role = Role::Node { level: level - 1 };
        let mut kids = Vec::new();
        for (i, c) in node.children.iter().enumerate() {
            match self.enter(sc, c, ptr.birth, &child_role) {
                Visit::Go => kids.push(i),
                Visit::Known => {}
                Visit::No => self.meta_damaged |= sc.current,
            }
        }
        let list: Vec<(BlockPtr, Role)> = kids
            .iter()
            .map(|&i| (node.children[i], child_role.clone()))
            .collect();
        let blocks = self.fetch(sc, &list);
        for (&i, b) in kids.iter().zip(blocks) {
            if let Some(b) = b {
                let child_hi = node.keys.get(i + 1).copied().or(hi);
                self.node(
                    sc,
                    &node.children[i],
                    level - 1,
                    &b,
                    Some(node.keys[i]),
                    child_hi,
                );
            }
        }
    }

    /// The B-tree's shape rules (FORMAT.md, "Metadata B-tree node", Rules).
    fn shape(
        &mut self,
        sc: &Scope,
        ptr: &BlockPtr,
        role: &Role,
        node: &node::Node,
        sep: Option<Key>,
        hi: Option<Key>,
    ) {
        let (warn, err) = (Severity::Warning, Severity::Error);
        match sep {
            None if matches!(role, Role::Node { level } if *level > 0) && node.keys.len() == 1 => {
                let what =
                    "the root has a single child (it should have been collapsed)".to_string();
                self.at_block(sc, warn, Kind::TreeShape, ptr, role, what);
            }
            None => {}
            Some(sep) => {
                if node.used < MIN_FILL_BYTES {
                    let what = format!(
                        "underfull: {} bytes of entries, fewer than {MIN_FILL_BYTES}",
                        node.used
                    );
                    self.at_block(sc, warn, Kind::TreeShape, ptr, role, what);
                }
                if node.keys[0] != sep {
                    let what = format!(
                        "its first key {} differs from its separator {} in the parent: lookups may miss items",
                        show_key(node.keys[0]),
                        show_key(sep)
                    );
                    self.at_block(sc, err, Kind::TreeShape, ptr, role, what);
                }
            }
        }
        if let (Some(hi), Some(last)) = (hi, node.keys.last()) {
            if *last >= hi {
                let what = format!(
                    "key {} is not below the next separator {}: lookups may miss items",
                    show_key(*last),
                    show_key(hi)
                );
                self.at_block(sc, err, Kind::TreeShape, ptr, role, what);
            }
        }
    }

    // ---- items ----------------------------------------------------------------------

    fn item_problem(
        &mut self,
        sc: &Scope,
        sev: Severity,
        kind: Kind,
        leaf: &BlockPtr,
        key: Key,
        what: String,
    ) {
        let ino = (key.ino != VOLUME_INO).then_some(Ino(key.ino));
        let what = format!(
            "item {} in the metadata B-tree leaf at block {}: {what}",
            show_key(key),
            leaf.addr
        );
        self.flag(sev, kind, sc.image, Some(leaf.addr), ino, what);
    }

    fn item(&mut self, sc: &Scope, leaf: &BlockPtr, key: Key, value: &[u8]) {
        if key.ino == VOLUME_INO {
            if sc.current {
                self.volume_item(sc, leaf, key, value);
            }
            return;
        }
        match key.kind {
            kind::INODE => self.inode_item(sc, leaf, key, value),
            kind::XATTR => self.xattr_item(sc, leaf, key, value),
            kind::DIRENT => self.dirent_item(sc, leaf, key, value),
            other => {
                let what = format!("unknown item kind {other}");
                self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
            }
        }
    }

    /// Orphans and snapshots (items of inode 0), current image only.
    fn volume_item(&mut self, sc: &Scope, leaf: &BlockPtr, key: Key, value: &[u8]) {
        match key.kind {
            kind::ORPHAN if key.off == 0 => {
                let what = "an orphan item for inode 0".to_string();
                self.item_problem(sc, Severity::Error, Kind::Orphan, leaf, key, what);
            }
            kind::ORPHAN => {
                if !value.is_empty() {
                    let what = format!(
                        "an orphan item carries {} bytes, expected none",
                        value.len()
                    );
                    self.item_problem(sc, Severity::Warning, Kind::Orphan, leaf, key, what);
                }
                self.ns.add_orphan(key.off);
            }
            kind::SNAPSHOT => match RetainedImage::decode(value) {
                Ok(img) => self.snapshots.push((key.off, img)),
                Err(e) => {
                    let what = format!(
                        "snapshot {} does not decode ({e}): a mount fails, and its blocks are not protected",
                        key.off
                    );
                    self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
                }
            },
            other => {
                let what = format!("unknown volume-wide item kind {other}");
                self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
            }
        }
    }

    fn inode_item(&mut self, sc: &Scope, leaf: &BlockPtr, key: Key, value: &[u8]) {
        if key.off != 0 {
            let what = "an inode record's key offset must be 0".to_string();
            self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
            return;
        }
        let rec = match InodeRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                let what = format!("the record of inode {} does not decode ({e})", key.ino);
                self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
                if sc.current {
                    self.ns.add_damaged(key.ino);
                }
                return;
            }
        };
        let ino = Ino(key.ino);
        let symlink = rec.attrs.kind == FileKind::Symlink;
        let mut leaves = if symlink {
            Leaves::collecting()
        } else {
            Leaves::default()
        };
        self.walk_tree(sc, Tree::File(ino.0), &rec.data, leaf.birth, &mut leaves);
        if symlink {
            self.symlink_target(sc, ino, &rec, &leaves);
        }
        if sc.current {
            self.inode_rules(ino, &rec, &leaves);
            let a = &rec.attrs;
            self.ns.add_inode(
                ino.0,
                InodeInfo {
                    kind: a.kind,
                    nlink: a.nlink,
                    parent: a.parent.0,
                    size: a.size,
                },
            );
        }
    }

    /// An inode record against itself and its file tree.
    fn inode_rules(&mut self, ino: Ino, rec: &InodeRecord, leaves: &Leaves) {
        let a = &rec.attrs;
        let (warn, err) = (Severity::Warning, Severity::Error);
        let mut bad: Vec<(Severity, String)> = Vec::new();
        if ino.0 >= self.sb.next_ino.0 {
            bad.push((err, format!(
                "its number is not below the next inode number {} the superblock hands out: a create would reuse it",
                self.sb.next_ino
            )));
        }
        // Below an unreadable pointer the count is unknown (already reported).
        if leaves.lost.is_empty() && leaves.count != a.blocks {
            bad.push((
                err,
                format!(
                    "st_blocks counts {} data blocks but its file tree holds {}",
                    a.blocks, leaves.count
                ),
            ));
        }
        let has_tree = !rec.data.ptr.is_null();
        let s = &mut self.summary;
        s.inodes += 1;
        match a.kind {
            FileKind::Regular => {
                if a.size > MAX_FILE_SIZE {
                    bad.push((
                        err,
                        format!(
                            "its size {} exceeds the largest file, {MAX_FILE_SIZE}",
                            a.size
                        ),
                    ));
                }
                let end = a.size.div_ceil(BLOCK_SIZE_U64);
                if let Some(last) = leaves.last.filter(|&l| l >= end) {
                    bad.push((err, format!(
                        "data block {last} lies beyond the end of the file ({} bytes, {end} blocks)",
                        a.size
                    )));
                }
                s.regular_files += 1;
                s.data_bytes += a.size;
                s.data_blocks += leaves.count;
            }
            FileKind::Directory => {
                if has_tree {
                    bad.push((err, "a directory has a file tree".into()));
                }
                s.directories += 1;
            }
            FileKind::Symlink => {
                s.symlinks += 1;
                s.data_blocks += leaves.count;
            }
            k => {
                if has_tree {
                    bad.push((err, format!("a {k:?} has a file tree")));
                }
                if a.size != 0 {
                    bad.push((warn, format!("a {k:?} has size {}, expected 0", a.size)));
                }
                s.special_files += 1;
            }
        }
        if a.kind != FileKind::Directory && a.parent.0 != 0 {
            bad.push((
                warn,
                format!(
                    "a non-directory with parent field {} (only directories have one)",
                    a.parent
                ),
            ));
        }
        if a.rdev != 0 && !matches!(a.kind, FileKind::CharDevice | FileKind::BlockDevice) {
            bad.push((
                warn,
                format!("a {:?} with a device number ({:#x})", a.kind, a.rdev),
            ));
        }
        for (sev, what) in bad {
            self.flag(
                sev,
                Kind::Inode,
                CURRENT,
                None,
                Some(ino),
                format!("inode {ino}: {what}"),
            );
        }
    }

    /// Verifies a long symlink target's block and (current image) the target.
    fn symlink_target(&mut self, sc: &Scope, ino: Ino, rec: &InodeRecord, leaves: &Leaves) {
        let list: Vec<(BlockPtr, Role)> = leaves
            .blocks
            .iter()
            .map(|&(index, p)| (p, Role::Data { ino: ino.0, index }))
            .collect();
        let fetched = self.fetch(sc, &list);
        if !sc.current {
            return;
        }
        let a = &rec.attrs;
        let mut bad: Vec<(Severity, String)> = Vec::new();
        let err = Severity::Error;
        match &a.symlink {
            Some(t) => {
                if t.len() as u64 != a.size {
                    bad.push((
                        err,
                        format!(
                            "its inline target is {} bytes but its size says {}",
                            t.len(),
                            a.size
                        ),
                    ));
                }
                if t.contains(&0) {
                    bad.push((err, "its target contains a NUL byte".into()));
                }
                if leaves.count > 0 {
                    bad.push((err, "it has both an inline target and a file tree".into()));
                }
            }
            None if a.size <= items::SYMLINK_INLINE_MAX as u64
                || a.size > items::SYMLINK_MAX as u64 =>
            {
                bad.push((err, format!(
                    "its {}-byte target is not inline; only targets of {} to {} bytes are stored as data",
                    a.size,
                    items::SYMLINK_INLINE_MAX + 1,
                    items::SYMLINK_MAX
                )));
            }
            None if leaves.count != 1 || leaves.blocks.first().map(|b| b.0) != Some(0) => {
                bad.push((err, format!(
                    "its {}-byte target needs one data block at index 0, its file tree holds {} blocks",
                    a.size, leaves.count
                )));
            }
            None => {
                if let Some(Some(b)) = fetched.first() {
                    let n = a.size as usize;
                    if b[..n].contains(&0) {
                        bad.push((err, "its target contains a NUL byte".into()));
                    }
                    if b[n..].iter().any(|&x| x != 0) {
                        bad.push((
                            Severity::Warning,
                            "the bytes after its target are not zero".into(),
                        ));
                    }
                }
            }
        }
        for (sev, what) in bad {
            self.flag(
                sev,
                Kind::Inode,
                CURRENT,
                None,
                Some(ino),
                format!("symlink {ino}: {what}"),
            );
        }
    }

    fn xattr_item(&mut self, sc: &Scope, leaf: &BlockPtr, key: Key, value: &[u8]) {
        let entries = match items::decode_xattr_bucket(value) {
            Ok(e) => e,
            Err(e) => {
                let what = format!("the xattr bucket does not decode ({e})");
                self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
                return;
            }
        };
        let err = Severity::Error;
        if sc.current && self.ns.last_inode(key.ino).is_none() {
            let what = format!("xattrs of inode {}, which has no inode record", key.ino);
            self.item_problem(sc, err, Kind::Xattr, leaf, key, what);
        }
        if entries.is_empty() {
            let what = "an empty xattr bucket".to_string();
            self.item_problem(sc, Severity::Warning, Kind::Xattr, leaf, key, what);
        }
        for (i, e) in entries.iter().enumerate() {
            if sc.current {
                self.summary.xattrs += 1;
                let h = items::name_hash(&self.key, &e.name);
                if h != key.off {
                    let what = format!(
                        "xattr {} is filed under hash {:#x} but its name hashes to {h:#x}: it cannot be found",
                        name(&e.name),
                        key.off
                    );
                    self.item_problem(sc, err, Kind::Xattr, leaf, key, what);
                }
                if entries[..i].iter().any(|p| p.name == e.name) {
                    let what = format!("two xattrs named {}", name(&e.name));
                    self.item_problem(sc, err, Kind::Xattr, leaf, key, what);
                }
                if e.name.contains(&0) {
                    let what = format!("xattr name {} contains a NUL byte", name(&e.name));
                    self.item_problem(sc, err, Kind::Xattr, leaf, key, what);
                }
            }
            let XattrValue::Blob { blocks, .. } = &e.value else {
                continue;
            };
            for (part, p) in blocks.iter().enumerate() {
                if p.is_null() {
                    let what = format!(
                        "value block {part} of xattr {} is a null pointer",
                        name(&e.name)
                    );
                    self.item_problem(sc, err, Kind::Xattr, leaf, key, what);
                    continue;
                }
                let role = Role::XattrBlob { ino: key.ino, part };
                if self.enter(sc, p, leaf.birth, &role) == Visit::Go {
                    let q = Queued {
                        ptr: *p,
                        role,
                        image: sc.image,
                    };
                    self.queue.push(&mut self.disk, q);
                    self.tick();
                }
            }
        }
    }

    fn dirent_item(&mut self, sc: &Scope, leaf: &BlockPtr, key: Key, value: &[u8]) {
        let entries = match items::decode_dir_bucket(value) {
            Ok(e) => e,
            Err(e) => {
                let what = format!("the directory entry bucket does not decode ({e})");
                self.item_problem(sc, Severity::Error, Kind::Malformed, leaf, key, what);
                return;
            }
        };
        if !sc.current {
            return;
        }
        let err = Severity::Error;
        match self.ns.last_inode(key.ino) {
            None => {
                let what = format!(
                    "entries of directory {}, which has no inode record",
                    key.ino
                );
                self.item_problem(sc, err, Kind::Directory, leaf, key, what);
            }
            Some(i) if i.kind != FileKind::Directory => {
                let what = format!(
                    "entries filed under inode {}, which is a {:?}, not a directory",
                    key.ino, i.kind
                );
                self.item_problem(sc, err, Kind::Directory, leaf, key, what);
            }
            Some(_) => {}
        }
        if entries.is_empty() {
            let what = "an empty directory entry bucket".to_string();
            self.item_problem(sc, Severity::Warning, Kind::Directory, leaf, key, what);
        }
        for (i, e) in entries.iter().enumerate() {
            let n = &e.name;
            if n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
                let what = format!("entry {} has a name no directory may hold", name(n));
                self.item_problem(sc, err, Kind::Directory, leaf, key, what);
            }
            let h = items::name_hash(&self.key, n);
            if h != key.off {
                let what = format!(
                    "entry {} is filed under hash {:#x} but its name hashes to {h:#x}: lookups cannot find it",
                    name(n),
                    key.off
                );
                self.item_problem(sc, err, Kind::Directory, leaf, key, what);
            }
            if entries[..i].iter().any(|p| p.name == *n) {
                let what = format!("two entries named {}", name(n));
                self.item_problem(sc, err, Kind::Directory, leaf, key, what);
            }
            self.ns.add_entry(Entry {
                dir: key.ino,
                ino: e.ino.0,
                kind: e.kind,
                name: n.clone().into_boxed_slice(),
            });
        }
    }

    // ---- snapshots and the peer hold ----------------------------------------------

    /// Walks every retained image, verifying what it does not share with
    /// blocks already verified.
    fn retained(&mut self) {
        let mut list: Vec<(ImageRef, CpNumber, TreeRoot, TreeRoot)> = self
            .snapshots
            .iter()
            .map(|(id, s)| {
                let image = ImageRef::Snapshot {
                    id: *id,
                    name: String::from_utf8_lossy(&s.name).into_owned(),
                };
                (image, s.cp, s.meta, s.alloc)
            })
            .collect();
        if let Some(h) = &self.sb.peer_hold {
            list.push((ImageRef::PeerHold { cp: h.cp }, h.cp, h.meta, h.alloc));
        }
        let count = list.len();
        for (index, (image, cp, meta, alloc)) in list.into_iter().enumerate() {
            self.set_phase(Phase::Retained { index, count });
            let img = self.images.len();
            self.images.push(image);
            if cp > self.sb.cp {
                let what = format!("it names CP {cp}, after the current CP {}", self.sb.cp);
                self.flag(Severity::Error, Kind::Retained, img, None, None, what);
            } else if cp == self.sb.cp && (meta, alloc) != (self.sb.meta, self.sb.alloc) {
                let what =
                    format!("it names the current CP {cp} but not the current image's trees");
                self.flag(Severity::Error, Kind::Retained, img, None, None, what);
            }
            let sc = Scope {
                image: img,
                cp,
                current: false,
            };
            self.map_blocks(&sc, &alloc);
            self.walk_meta(&sc, &meta);
            self.finish_data();
        }
    }
}

fn show_key(k: Key) -> String {
    let kind = match k.kind {
        kind::INODE => "INODE",
        kind::XATTR => "XATTR",
        kind::DIRENT => "DIRENT",
        kind::ORPHAN => "ORPHAN",
        kind::SNAPSHOT => "SNAPSHOT",
        _ => "?",
    };
    format!("({}, {kind} {}, {:#x})", k.ino, k.kind, k.off)
}
