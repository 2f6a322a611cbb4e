//! What `fsck` hands back: every problem found, precisely located, and a
//! summary of what the image holds.

use std::fmt;

use crate::types::*;

/// How serious a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Expected after a crash, or purely informational (a torn last log
    /// batch, where replay stops). Nothing to repair.
    Note,
    /// Not as it should be, but no data is at risk: leaked space, a damaged
    /// fallback superblock slot (the next CP rewrites it), statistics that
    /// are off.
    Warning,
    /// Damage or an inconsistency: reads will fail with EIO, a later CP may
    /// overwrite live data, or the namespace is wrong.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// What kind of problem it is (for tools and tests; the text says the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A superblock slot is damaged or disagrees with the other one.
    Superblock,
    /// A block does not hash to what its pointer says.
    Checksum,
    /// The device failed to read a block.
    ReadError,
    /// A block or item does not decode (bad magic, lengths, fields).
    Malformed,
    /// A pointer names a block outside the data area.
    BadPointer,
    /// A block is referenced more than once in one image.
    SharedBlock,
    /// A pointer's birth CP is newer than its parent's or than its image.
    Birth,
    /// The metadata B-tree breaks a shape rule (order, separators, fill).
    TreeShape,
    /// A block is marked allocated but nothing references it.
    Leaked,
    /// A referenced block is not marked allocated: a later CP may overwrite it.
    Unmarked,
    /// Another allocation map inconsistency.
    AllocMap,
    /// An inode record disagrees with itself or its file tree.
    Inode,
    /// A directory entry or bucket is wrong.
    Directory,
    /// A link count disagrees with the entries naming the inode.
    LinkCount,
    /// An inode that no path reaches and that is not an orphan.
    Unreachable,
    /// An orphan item is wrong.
    Orphan,
    /// An extended attribute item is wrong.
    Xattr,
    /// A statistic in the superblock disagrees with the image.
    Counters,
    /// Something about the NVLOG.
    Log,
    /// A snapshot or the peer hold is wrong as a whole.
    Retained,
}

/// Which image a problem belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// Not about one image: the superblock slots, the log.
    Volume,
    /// The image of the superblock's CP: what a mount sees.
    Current,
    /// A snapshot, by id and name.
    Snapshot { id: u64, name: String },
    /// The peer's last acknowledged CP, protected for it.
    PeerHold { cp: CpNumber },
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Volume => write!(f, "volume"),
            ImageRef::Current => write!(f, "current image"),
            ImageRef::Snapshot { id, name } => write!(f, "snapshot {id} ({name:?})"),
            ImageRef::PeerHold { cp } => write!(f, "peer hold (CP {cp})"),
        }
    }
}

/// One problem. `block` and `ino` say where, when it is one block or one
/// inode; `what` is a complete sentence naming the block, inode, directory
/// or item and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub kind: Kind,
    pub image: ImageRef,
    pub block: Option<BlockAddr>,
    pub ino: Option<Ino>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity, self.image, self.what)
    }
}

/// What the current image holds (counted while checking it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Inode records.
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub special_files: u64,
    /// Unlinked inodes kept for open handles (orphan items).
    pub orphans: u64,
    /// Directory entries.
    pub entries: u64,
    /// Extended attributes.
    pub xattrs: u64,
    /// Blocks the current image references, the allocation map's own tree included.
    pub blocks_used: u64,
    /// Blocks of file data (regular files and long symlink targets).
    pub data_blocks: u64,
    /// Sum of the sizes of regular files, in bytes.
    pub data_bytes: u64,
    /// Snapshots (each one's image was walked and verified too).
    pub snapshots: u64,
    /// Blocks read and verified against their hash, in every image checked.
    pub blocks_verified: u64,
}

/// What replay would do with the NVLOG.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// First transfer the CP does not contain.
    pub next_transfer: TransferId,
    /// Log block where replay starts.
    pub replay_offset: u64,
    /// Batches a mount would replay.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Log blocks those batches take.
    pub blocks: u64,
    /// Why replay stops after them.
    pub stop: String,
}

/// The result of [`super::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Superblock slot in use (the valid one with the highest CP).
    pub slot: u64,
    pub cp: CpNumber,
    pub root_hash: RootHash,
    pub uuid: [u8; 16],
    pub total_blocks: u64,
    pub summary: Summary,
    pub log: LogSummary,
    /// Problems in the order found (at most [`super::MAX_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond the ones listed.
    pub omitted: u64,
    /// Problems of each severity, listed or not: notes, warnings, errors.
    pub counts: [u64; 3],
}

impl Report {
    /// No warnings and no errors (notes are fine).
    pub fn is_clean(&self) -> bool {
        self.warnings() == 0 && self.errors() == 0
    }

    pub fn errors(&self) -> u64 {
        self.counts[Severity::Error as usize]
    }

    pub fn warnings(&self) -> u64 {
        self.counts[Severity::Warning as usize]
    }

    pub fn notes(&self) -> u64 {
        self.counts[Severity::Note as usize]
    }

    /// The listed problems of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.kind == kind)
    }

    /// The listed problems about one block.
    pub fn about_block(&self, addr: BlockAddr) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.block == Some(addr))
    }

    /// The listed problems about one inode.
    pub fn about_inode(&self, ino: Ino) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.ino == Some(ino))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "volume {} CP {} (superblock slot {}), root hash {}",
            hex(&self.uuid),
            self.cp,
            self.slot,
            self.root_hash
        )?;
        writeln!(
            f,
            "{} inodes: {} directories, {} files, {} symlinks, {} special, {} orphans; {} entries, {} xattrs",
            s.inodes,
            s.directories,
            s.regular_files,
            s.symlinks,
            s.special_files,
            s.orphans,
            s.entries,
            s.xattrs
        )?;
        writeln!(
            f,
            "{} of {} blocks used, {} data blocks, {} bytes of file data; {} snapshots; {} blocks verified",
            s.blocks_used, self.total_blocks, s.data_blocks, s.data_bytes, s.snapshots, s.blocks_verified
        )?;
        writeln!(
            f,
            "log: {} batches ({} records, {} blocks) to replay from transfer {} at log block {}; {}",
            self.log.batches,
            self.log.records,
            self.log.blocks,
            self.log.next_transfer,
            self.log.replay_offset,
            self.log.stop
        )?;
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        if self.omitted > 0 {
            writeln!(f, "... and {} more problems", self.omitted)?;
        }
        write!(
            f,
            "{} errors, {} warnings, {} notes",
            self.errors(),
            self.warnings(),
            self.notes()
        )
    }
}

/// Which part of the check is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The allocation map of the current image.
    AllocMap,
    /// The current image's metadata tree, file trees and data.
    Current,
    /// Directory structure and link counts.
    Namespace,
    /// Retained image `index` of `count` (snapshots, then the peer hold).
    Retained {
        index: usize,
        count: usize,
    },
    /// The NVLOG.
    Log,
    Done,
}

/// Progress, reported every few thousand blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Blocks read and verified so far (all images).
    pub blocks_checked: u64,
    /// Blocks the current image uses (its superblock's count). Retained
    /// images add what they do not share with it, so `blocks_checked` may
    /// end above this.
    pub blocks_total: u64,
}
