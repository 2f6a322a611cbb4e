//! The superblock: two checksummed slots at blocks 0 and 1 (DESIGN invariant 2).
//!
//! A CP commits by writing the slot it does not share with the previous CP
//! (slot = cp % 2) after all its blocks are durable. Opening picks the valid
//! slot with the highest CP number; a torn slot fails its own checksum.
//!
//! The *root hash* of a CP is blake3 over the image body (bytes
//! [`BODY_START`]..[`BODY_END`]): it covers every pointer into the tree, so it
//! identifies the whole image, but leaves out the NVLOG position, which depends
//! on how the log was batched rather than on the file system's contents, and
//! the history (lineage, peer hold, replica flag), which is not contents either.

use crate::btree::TreeRoot;
use crate::error::{FsError, Result};
use crate::lineage::{Lineage, GENERATION_BYTES, MAX_GENERATIONS};
use crate::types::*;

pub const MAGIC: &[u8; 8] = b"TWINFS\0\x01";
/// The format this twinfs writes. Format 2 added the lineage, the replica
/// flag and the held CP's whole superblock to the tail.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this twinfs reads (upgraded at the next CP).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

// Byte offsets of the fields, built from each other (see FORMAT.md).
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_BLOCK_SIZE: usize = OFF_VERSION + 4;
/// Start of the hashed image body.
pub const BODY_START: usize = OFF_BLOCK_SIZE + 4;
const OFF_UUID: usize = BODY_START;
const OFF_TOTAL_BLOCKS: usize = OFF_UUID + 16;
const OFF_LOG_START: usize = OFF_TOTAL_BLOCKS + 8;
const OFF_LOG_BLOCKS: usize = OFF_LOG_START + 8;
const OFF_CP: usize = OFF_LOG_BLOCKS + 8;
const OFF_NEXT_INO: usize = OFF_CP + 8;
const OFF_ALLOC_CURSOR: usize = OFF_NEXT_INO + 8;
const OFF_USED_BLOCKS: usize = OFF_ALLOC_CURSOR + 8;
const OFF_INODES: usize = OFF_USED_BLOCKS + 8;
const OFF_META_ROOT: usize = OFF_INODES + 8;
const OFF_META_HEIGHT: usize = OFF_META_ROOT + BlockPtr::SIZE;
const OFF_ALLOC_ROOT: usize = OFF_META_HEIGHT + 8;
const OFF_ALLOC_HEIGHT: usize = OFF_ALLOC_ROOT + BlockPtr::SIZE;
/// End of the hashed image body.
pub const BODY_END: usize = OFF_ALLOC_HEIGHT + 8;
const OFF_NEXT_TRANSFER: usize = BODY_END;
const OFF_REPLAY_OFFSET: usize = OFF_NEXT_TRANSFER + 8;
const OFF_LAST_BATCH_HASH: usize = OFF_REPLAY_OFFSET + 8;
const OFF_CP_TIME: usize = OFF_LAST_BATCH_HASH + 32;
const OFF_HOLD_CP: usize = OFF_CP_TIME + Timestamp::SIZE;
const OFF_HOLD_META: usize = OFF_HOLD_CP + 8;
const OFF_HOLD_META_HEIGHT: usize = OFF_HOLD_META + BlockPtr::SIZE;
const OFF_HOLD_ALLOC: usize = OFF_HOLD_META_HEIGHT + 8;
const OFF_HOLD_ALLOC_HEIGHT: usize = OFF_HOLD_ALLOC + BlockPtr::SIZE;
const OFF_HOLD_ROOT_HASH: usize = OFF_HOLD_ALLOC_HEIGHT + 8;
/// End of the fields of format 1.
pub const V1_FIELDS_END: usize = OFF_HOLD_ROOT_HASH + 32;
const OFF_FLAGS: usize = V1_FIELDS_END;
const OFF_GENERATIONS: usize = OFF_FLAGS + 4;
const OFF_HOLD_PEER: usize = OFF_GENERATIONS + 4;
/// The held CP's superblock fields from the body through `cp_time`.
const OFF_HOLD_IMAGE: usize = OFF_HOLD_PEER + 8;
const HOLD_IMAGE_BYTES: usize = OFF_HOLD_CP - BODY_START;
const OFF_LINEAGE: usize = OFF_HOLD_IMAGE + HOLD_IMAGE_BYTES;
/// End of the fields with the longest lineage; the rest up to the checksum is zero.
pub const FIELDS_END: usize = OFF_LINEAGE + MAX_GENERATIONS * GENERATION_BYTES;
/// `flags` bit: a peer wrote this superblock into its mirror; the image is a
/// replica, served read-only until `twinfs promote` makes it a volume.
const FLAG_REPLICA: u32 = 1;
/// `hold_cp` value meaning "no peer hold".
const NO_HOLD: u64 = u64::MAX;
/// The checksum: blake3 of every byte before it.
pub const OFF_CHECKSUM: usize = BLOCK_SIZE - 32;

/// Where the NVLOG continues after this CP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogPosition {
    /// First transfer ID that this CP does not contain.
    pub next_transfer: TransferId,
    /// Block offset, inside the log region, where that transfer starts (or
    /// would start; replay also tries offset 0, see nvlog).
    pub replay_offset: u64,
    /// Checksum of the last batch this CP contains: the anchor of the hash
    /// chain that keeps replay from picking up a stale batch.
    pub last_batch_hash: [u8; 32],
}

/// The image of the peer's last acknowledged CP, kept intact for it
/// (DESIGN invariant 1). Outside the root hash: it is the source's business,
/// not part of the file system's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHold {
    pub cp: CpNumber,
    pub meta: TreeRoot,
    pub alloc: TreeRoot,
    /// Root hash of that CP: lets a restarted source recognise the peer's CP.
    pub root_hash: RootHash,
    /// The peer directory that applied it (its random ID; 0 = not recorded),
    /// so that a directory restored from an older copy is recognised.
    pub peer_id: u64,
    /// The rest of the held CP's superblock, so that it can be rebuilt whole
    /// (failback resumes from it); `None` in images of format 1.
    pub image: Option<HeldImage>,
}

/// The fields of a held CP's superblock that its [`PeerHold`] does not
/// already carry (the geometry is the volume's own and never changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldImage {
    pub next_ino: Ino,
    pub alloc_cursor: u64,
    pub used_blocks: u64,
    pub inodes: u64,
    pub log: LogPosition,
    pub cp_time: Timestamp,
}

impl PeerHold {
    /// The hold of CP `sb`, applied by peer directory `peer_id`.
    pub fn of(sb: &Superblock, peer_id: u64) -> PeerHold {
        PeerHold {
            cp: sb.cp,
            meta: sb.meta,
            alloc: sb.alloc,
            root_hash: sb.root_hash(),
            peer_id,
            image: Some(HeldImage {
                next_ino: sb.next_ino,
                alloc_cursor: sb.alloc_cursor,
                used_blocks: sb.used_blocks,
                inodes: sb.inodes,
                log: sb.log,
                cp_time: sb.cp_time,
            }),
        }
    }
}

/// Decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub total_blocks: u64,
    /// First block of the NVLOG region.
    pub log_start: u64,
    pub log_blocks: u64,
    pub cp: CpNumber,
    pub next_ino: Ino,
    /// Where the allocator continues searching (part of the image so that
    /// CPs are deterministic).
    pub alloc_cursor: u64,
    /// Blocks referenced by this image (statfs).
    pub used_blocks: u64,
    /// Inodes in this image (statfs).
    pub inodes: u64,
    /// The metadata B-tree.
    pub meta: TreeRoot,
    /// The allocation map file (one bit per block).
    pub alloc: TreeRoot,
    pub log: LogPosition,
    /// When the CP was taken (not part of the root hash).
    pub cp_time: Timestamp,
    pub peer_hold: Option<PeerHold>,
    /// The generations that led to this CP (see [`crate::lineage`]).
    pub lineage: Lineage,
    /// Written by a peer into its mirror: the image is a replica.
    pub replica: bool,
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

impl Superblock {
    /// The superblock of an image that holds nothing yet: CP 0, empty trees,
    /// the log at its start, one generation. mkfs and tests set what they
    /// need over it (`..Superblock::empty(..)`).
    pub fn empty(
        uuid: [u8; 16],
        total_blocks: u64,
        log_blocks: u64,
        generation: crate::lineage::GenerationId,
    ) -> Superblock {
        Superblock {
            uuid,
            total_blocks,
            log_start: 2,
            log_blocks,
            cp: CpNumber(0),
            next_ino: FIRST_USER_INO,
            alloc_cursor: 0,
            used_blocks: 0,
            inodes: 0,
            meta: TreeRoot::EMPTY,
            alloc: TreeRoot::EMPTY,
            log: LogPosition {
                next_transfer: TransferId(1),
                replay_offset: 0,
                last_batch_hash: [0; 32],
            },
            cp_time: Timestamp::new(0, 0),
            peer_hold: None,
            lineage: Lineage::start(generation),
            replica: false,
        }
    }

    /// First block that data may use: after both slots and the log.
    pub fn data_start(&self) -> u64 {
        self.log_start + self.log_blocks
    }

    /// Writes the fields from the body through `cp_time` (bytes
    /// `BODY_START..OFF_HOLD_CP`) into `b`, at their offsets.
    fn encode_core(&self, b: &mut [u8]) {
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        put_u64(b, OFF_TOTAL_BLOCKS, self.total_blocks);
        put_u64(b, OFF_LOG_START, self.log_start);
        put_u64(b, OFF_LOG_BLOCKS, self.log_blocks);
        put_u64(b, OFF_CP, self.cp.0);
        put_u64(b, OFF_NEXT_INO, self.next_ino.0);
        put_u64(b, OFF_ALLOC_CURSOR, self.alloc_cursor);
        put_u64(b, OFF_USED_BLOCKS, self.used_blocks);
        put_u64(b, OFF_INODES, self.inodes);
        self.meta.ptr.encode(&mut b[OFF_META_ROOT..]);
        b[OFF_META_HEIGHT] = self.meta.height;
        self.alloc.ptr.encode(&mut b[OFF_ALLOC_ROOT..]);
        b[OFF_ALLOC_HEIGHT] = self.alloc.height;
        put_u64(b, OFF_NEXT_TRANSFER, self.log.next_transfer.0);
        put_u64(b, OFF_REPLAY_OFFSET, self.log.replay_offset);
        b[OFF_LAST_BATCH_HASH..OFF_LAST_BATCH_HASH + 32].copy_from_slice(&self.log.last_batch_hash);
        self.cp_time.encode(&mut b[OFF_CP_TIME..]);
    }

    /// Reads back what [`Superblock::encode_core`] wrote; the history
    /// fields (hold, lineage, replica flag) come from the caller.
    fn decode_core(
        b: &[u8],
        peer_hold: Option<PeerHold>,
        lineage: Lineage,
        replica: bool,
    ) -> Superblock {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        let mut last_batch_hash = [0u8; 32];
        last_batch_hash.copy_from_slice(&b[OFF_LAST_BATCH_HASH..OFF_LAST_BATCH_HASH + 32]);
        Superblock {
            uuid,
            total_blocks: get_u64(b, OFF_TOTAL_BLOCKS),
            log_start: get_u64(b, OFF_LOG_START),
            log_blocks: get_u64(b, OFF_LOG_BLOCKS),
            cp: CpNumber(get_u64(b, OFF_CP)),
            next_ino: Ino(get_u64(b, OFF_NEXT_INO)),
            alloc_cursor: get_u64(b, OFF_ALLOC_CURSOR),
            used_blocks: get_u64(b, OFF_USED_BLOCKS),
            inodes: get_u64(b, OFF_INODES),
            meta: TreeRoot {
                ptr: BlockPtr::decode(&b[OFF_META_ROOT..]),
                height: b[OFF_META_HEIGHT],
            },
            alloc: TreeRoot {
                ptr: BlockPtr::decode(&b[OFF_ALLOC_ROOT..]),
                height: b[OFF_ALLOC_HEIGHT],
            },
            log: LogPosition {
                next_transfer: TransferId(get_u64(b, OFF_NEXT_TRANSFER)),
                replay_offset: get_u64(b, OFF_REPLAY_OFFSET),
                last_batch_hash,
            },
            cp_time: Timestamp::decode(&b[OFF_CP_TIME..]),
            peer_hold,
            lineage,
            replica,
        }
    }

    pub fn encode(&self) -> Box<Block> {
        let mut b = new_block();
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(MAGIC);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[OFF_BLOCK_SIZE..OFF_BLOCK_SIZE + 4].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        self.encode_core(&mut b[..]);
        match &self.peer_hold {
            None => put_u64(&mut b[..], OFF_HOLD_CP, NO_HOLD),
            Some(h) => {
                put_u64(&mut b[..], OFF_HOLD_CP, h.cp.0);
                h.meta.ptr.encode(&mut b[OFF_HOLD_META..]);
                b[OFF_HOLD_META_HEIGHT] = h.meta.height;
                h.alloc.ptr.encode(&mut b[OFF_HOLD_ALLOC..]);
                b[OFF_HOLD_ALLOC_HEIGHT] = h.alloc.height;
                b[OFF_HOLD_ROOT_HASH..OFF_HOLD_ROOT_HASH + 32].copy_from_slice(&h.root_hash.0);
                put_u64(&mut b[..], OFF_HOLD_PEER, h.peer_id);
                if let Some(held) = self.held_unchecked() {
                    let mut core = new_block();
                    held.encode_core(&mut core[..]);
                    b[OFF_HOLD_IMAGE..OFF_HOLD_IMAGE + HOLD_IMAGE_BYTES]
                        .copy_from_slice(&core[BODY_START..OFF_HOLD_CP]);
                }
            }
        }
        let flags = if self.replica { FLAG_REPLICA } else { 0 };
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        let n = self.lineage.generations().len();
        b[OFF_GENERATIONS..OFF_GENERATIONS + 4].copy_from_slice(&(n as u32).to_le_bytes());
        self.lineage
            .encode_into(&mut b[OFF_LINEAGE..OFF_LINEAGE + n * GENERATION_BYTES]);
        let sum = blake3::hash(&b[..OFF_CHECKSUM]);
        b[OFF_CHECKSUM..].copy_from_slice(sum.as_bytes());
        b
    }

    /// Decodes and validates one slot. `slot` only names it in errors.
    pub fn decode(b: &Block, slot: u64) -> Result<Superblock> {
        let bad = |what: String| {
            FsError::corrupt(BlockAddr(slot), format!("superblock slot {slot}: {what}"))
        };
        if &b[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            return Err(bad(
                "no twinfs magic (not a twinfs volume, or the slot was overwritten)".into(),
            ));
        }
        let sum = blake3::hash(&b[..OFF_CHECKSUM]);
        if sum.as_bytes()[..] != b[OFF_CHECKSUM..] {
            return Err(bad("checksum mismatch (torn or damaged write)".into()));
        }
        let version = get_u32(b, OFF_VERSION);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(bad(format!(
                "format version {version}; this twinfs reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION} (a newer twinfs wrote it?)"
            )));
        }
        let bs = get_u32(b, OFF_BLOCK_SIZE);
        if bs as usize != BLOCK_SIZE {
            return Err(bad(format!("block size {bs}, expected {BLOCK_SIZE}")));
        }
        let v2 = version >= 2;
        let flags = if v2 { get_u32(b, OFF_FLAGS) } else { 0 };
        if flags & !FLAG_REPLICA != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let lineage = if v2 {
            let n = get_u32(b, OFF_GENERATIONS) as usize;
            Lineage::decode(&b[OFF_LINEAGE..FIELDS_END], n)
                .map_err(|e| bad(format!("lineage: {e}")))?
        } else {
            Lineage::legacy()
        };
        let peer_hold = match get_u64(b, OFF_HOLD_CP) {
            NO_HOLD => None,
            cp => {
                let held_core = &b[OFF_HOLD_IMAGE..OFF_HOLD_IMAGE + HOLD_IMAGE_BYTES];
                let image = (v2 && held_core.iter().any(|&x| x != 0)).then(|| {
                    let mut core = new_block();
                    core[BODY_START..OFF_HOLD_CP].copy_from_slice(held_core);
                    let h = Superblock::decode_core(&core[..], None, Lineage::legacy(), false);
                    HeldImage {
                        next_ino: h.next_ino,
                        alloc_cursor: h.alloc_cursor,
                        used_blocks: h.used_blocks,
                        inodes: h.inodes,
                        log: h.log,
                        cp_time: h.cp_time,
                    }
                });
                Some(PeerHold {
                    cp: CpNumber(cp),
                    meta: TreeRoot {
                        ptr: BlockPtr::decode(&b[OFF_HOLD_META..]),
                        height: b[OFF_HOLD_META_HEIGHT],
                    },
                    alloc: TreeRoot {
                        ptr: BlockPtr::decode(&b[OFF_HOLD_ALLOC..]),
                        height: b[OFF_HOLD_ALLOC_HEIGHT],
                    },
                    root_hash: RootHash(
                        b[OFF_HOLD_ROOT_HASH..OFF_HOLD_ROOT_HASH + 32]
                            .try_into()
                            .expect("32 bytes"),
                    ),
                    peer_id: if v2 { get_u64(b, OFF_HOLD_PEER) } else { 0 },
                    image,
                })
            }
        };
        let sb = Superblock::decode_core(&b[..], peer_hold, lineage, flags & FLAG_REPLICA != 0);
        sb.validate().map_err(bad)?;
        if let Some(h) = &sb.peer_hold {
            if h.image.is_some() && sb.held_superblock().is_none() {
                return Err(bad(format!(
                    "the held CP {}'s superblock does not match its root hash",
                    h.cp.0
                )));
            }
        }
        Ok(sb)
    }

    /// The whole superblock of the CP held for the peer, rebuilt from the
    /// hold (checked against the hold's root hash); `None` without a hold
    /// or when the image predates format 2.
    pub fn held_superblock(&self) -> Option<Superblock> {
        let held = self.held_unchecked()?;
        (held.root_hash() == self.peer_hold.as_ref()?.root_hash).then_some(held)
    }

    fn held_unchecked(&self) -> Option<Superblock> {
        let h = self.peer_hold.as_ref()?;
        let img = h.image.as_ref()?;
        let held = Superblock {
            cp: h.cp,
            next_ino: img.next_ino,
            alloc_cursor: img.alloc_cursor,
            used_blocks: img.used_blocks,
            inodes: img.inodes,
            meta: h.meta,
            alloc: h.alloc,
            log: img.log,
            cp_time: img.cp_time,
            peer_hold: None,
            lineage: self.lineage.up_to(h.cp),
            replica: false,
            ..self.clone()
        };
        Some(held)
    }

    /// Checks the geometry so that later arithmetic cannot overflow or point outside the image.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.log_start != 2 {
            return Err(format!(
                "log starts at block {}, expected 2",
                self.log_start
            ));
        }
        // checked_add: a log of nearly 2^64 blocks must not wrap `data_start`
        // around to a small number (found by the superblock fuzz target).
        let data_start = self.log_start.checked_add(self.log_blocks);
        if self.log_blocks == 0 || data_start.is_none_or(|start| start >= self.total_blocks) {
            return Err(format!(
                "log of {} blocks does not fit a volume of {} blocks",
                self.log_blocks, self.total_blocks
            ));
        }
        if self.total_blocks > MAX_VOLUME_BLOCKS {
            return Err(format!(
                "{} blocks is beyond the supported volume size",
                self.total_blocks
            ));
        }
        if self.log.replay_offset >= self.log_blocks {
            return Err(format!(
                "replay offset {} outside the log",
                self.log.replay_offset
            ));
        }
        for (name, ptr) in [
            ("metadata root", &self.meta.ptr),
            ("allocation map root", &self.alloc.ptr),
        ] {
            if !ptr.is_null() && (ptr.addr.0 < self.data_start() || ptr.addr.0 >= self.total_blocks)
            {
                return Err(format!(
                    "{name} points at block {}, outside the data area",
                    ptr.addr.0
                ));
            }
            if ptr.birth > self.cp {
                return Err(format!(
                    "{name} was born at CP {} after this CP {}",
                    ptr.birth.0, self.cp.0
                ));
            }
        }
        if self.meta.height > 16 || self.alloc.height > 8 {
            return Err("tree height out of range".into());
        }
        if let Some(h) = &self.peer_hold {
            if h.cp > self.cp || h.meta.height > 16 || h.alloc.height > 8 {
                return Err(format!("peer hold of CP {} is out of range", h.cp.0));
            }
        }
        let current = self.lineage.current();
        if current.first_cp > self.cp {
            return Err(format!(
                "the lineage's generation {} begins at CP {}, after this CP {}",
                current.id, current.first_cp.0, self.cp.0
            ));
        }
        Ok(())
    }

    /// The root hash of this CP: blake3 of the encoded image body.
    pub fn root_hash(&self) -> RootHash {
        let mut core = [0u8; OFF_HOLD_CP];
        self.encode_core(&mut core);
        RootHash(*blake3::hash(&core[BODY_START..BODY_END]).as_bytes())
    }

    /// The slot this CP is written to.
    pub fn slot(&self) -> u64 {
        self.cp.0 % 2
    }
}

/// Whether `b` starts like a twinfs superblock (whatever else is wrong with it).
pub fn has_magic(b: &Block) -> bool {
    b[OFF_MAGIC..OFF_MAGIC + 8] == MAGIC[..]
}

/// Largest volume supported: 2^40 blocks = 4 PiB (keeps bitmaps and offsets in range).
pub const MAX_VOLUME_BLOCKS: u64 = 1 << 40;

/// Reads both slots and returns the valid superblock with the highest CP, and
/// the problems found with the other slot (empty if both are fine).
pub fn read_latest(dev: &dyn crate::device::BlockDevice) -> Result<(Superblock, Vec<String>)> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut empty = Vec::new();
    let mut foreign = 0;
    for slot in 0..2u64 {
        let mut b = new_block();
        match dev.read(BlockAddr(slot), &mut b[..]) {
            // mkfs leaves slot 1 zeroed until CP 1 is written there.
            Ok(()) if b.iter().all(|&x| x == 0) => empty.push(slot),
            Ok(()) if !has_magic(&b) => {
                foreign += 1;
                problems.push(format!(
                    "superblock slot {slot}: no twinfs magic (not a twinfs volume, or the slot was overwritten)"
                ));
            }
            Ok(()) => match Superblock::decode(&b, slot) {
                Ok(sb) if sb.slot() != slot => problems.push(format!(
                    "superblock slot {slot} holds CP {} which belongs in slot {}",
                    sb.cp.0,
                    sb.slot()
                )),
                Ok(sb) => found.push(sb),
                Err(FsError::Corrupt { what, .. }) => problems.push(what),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) => problems.push(format!("superblock slot {slot}: read failed: {e}")),
        }
    }
    let best = found.into_iter().max_by_key(|sb| sb.cp);
    if best.is_none() && foreign + empty.len() == 2 {
        return Err(FsError::NotAVolume);
    }
    // An empty slot is expected next to CP 0, and in a peer's replica,
    // whose first copy writes only the slot of the CP it received;
    // otherwise it is damage.
    for slot in empty {
        if best.as_ref().is_none_or(|sb| sb.cp.0 > 0 && !sb.replica) {
            problems.push(format!(
                "superblock slot {slot}: all zeros (wiped or never written)"
            ));
        }
    }
    match best {
        Some(sb) => {
            if sb.total_blocks > dev.num_blocks() {
                return Err(FsError::CorruptVolume(format!(
                    "the superblock describes {} blocks but the image holds only {}: the image is truncated",
                    sb.total_blocks,
                    dev.num_blocks()
                )));
            }
            Ok((sb, problems))
        }
        None => Err(FsError::CorruptVolume(format!(
            "no valid superblock: {}",
            problems.join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::GenerationId;

    impl Superblock {
        fn clone_with_lineage_up_to(&self, cp: CpNumber) -> Superblock {
            Superblock {
                lineage: self.lineage.up_to(cp),
                ..self.clone()
            }
        }
    }

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            total_blocks: 10_000,
            log_start: 2,
            log_blocks: 1000,
            cp: CpNumber(5),
            next_ino: Ino(100),
            alloc_cursor: 1500,
            used_blocks: 40,
            inodes: 3,
            meta: TreeRoot {
                ptr: BlockPtr {
                    addr: BlockAddr(1200),
                    birth: CpNumber(5),
                    hash: Hash128([1; 16]),
                },
                height: 1,
            },
            alloc: TreeRoot::default(),
            log: LogPosition {
                next_transfer: TransferId(9),
                replay_offset: 17,
                last_batch_hash: [3; 32],
            },
            cp_time: Timestamp::new(1_700_000_000, 5),
            peer_hold: None,
            lineage: Lineage::start(GenerationId(11)).begin(GenerationId(12), CpNumber(3)),
            replica: false,
        }
    }

    /// `sample()` at CP 7, holding the sample's CP 5 for peer directory 77.
    fn sample_with_hold() -> Superblock {
        let held = sample();
        Superblock {
            cp: CpNumber(7),
            next_ino: Ino(150),
            used_blocks: 60,
            peer_hold: Some(PeerHold::of(&held, 77)),
            ..held
        }
    }

    #[test]
    fn round_trips_and_fields_fit_before_checksum() {
        const { assert!(FIELDS_END <= OFF_CHECKSUM) };
        for sb in [
            sample(),
            sample_with_hold(),
            Superblock {
                replica: true,
                ..sample()
            },
        ] {
            let b = sb.encode();
            assert_eq!(Superblock::decode(&b, 1).unwrap(), sb);
        }
    }

    #[test]
    fn the_held_cp_is_rebuilt_whole_and_checked_against_its_root_hash() {
        let sb = sample_with_hold();
        let held = sb.held_superblock().expect("a format-2 hold");
        assert_eq!(
            held,
            Superblock {
                peer_hold: None,
                ..sample()
            }
            .clone_with_lineage_up_to(CpNumber(5))
        );
        assert_eq!(held.root_hash(), sample().root_hash());
        // A hold whose fields do not hash to its root hash is refused.
        let mut bad = sb.clone();
        if let Some(h) = &mut bad.peer_hold {
            h.image.as_mut().unwrap().inodes += 1;
        }
        assert!(bad.held_superblock().is_none());
        let err = Superblock::decode(&bad.encode(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its root hash"), "{err}");
    }

    #[test]
    fn a_format_1_slot_reads_as_one_legacy_generation() {
        let mut b = sample().encode();
        // Format 1: version 1, nothing after the version 1 fields.
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        b[V1_FIELDS_END..OFF_CHECKSUM].fill(0);
        let sum = blake3::hash(&b[..OFF_CHECKSUM]);
        b[OFF_CHECKSUM..].copy_from_slice(sum.as_bytes());
        let sb = Superblock::decode(&b, 1).unwrap();
        assert_eq!(sb.lineage, Lineage::legacy());
        assert!(!sb.replica);
        assert_eq!(sb.root_hash(), sample().root_hash());
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let b = sample().encode();
        for off in (0..BLOCK_SIZE).step_by(97) {
            let mut c = b.clone();
            c[off] ^= 0x40;
            assert!(
                Superblock::decode(&c, 0).is_err(),
                "flip at {off} went unnoticed"
            );
        }
    }

    /// Found by the `superblock` fuzz target (tests/fuzz/regressions/superblock/):
    /// `log_start + log_blocks` overflowed, a panic with overflow checks and,
    /// without them, a wrapped `data_start` of 0 that passed validation.
    #[test]
    fn a_log_too_long_to_add_up_is_refused_not_overflowed() {
        let mut sb = sample();
        for log_blocks in [u64::MAX, u64::MAX - 1] {
            sb.log_blocks = log_blocks;
            let err = Superblock::decode(&sb.encode(), 1).unwrap_err().to_string();
            assert!(err.contains("does not fit a volume"), "{err}");
        }
    }

    #[test]
    fn root_hash_ignores_log_position_but_not_contents() {
        let a = sample();
        let mut b = a.clone();
        b.log.replay_offset = 99;
        b.cp_time = Timestamp::new(1, 1);
        b.peer_hold = None;
        b.lineage = Lineage::legacy();
        b.replica = true;
        assert_eq!(a.root_hash(), b.root_hash());
        b.next_ino = Ino(101);
        assert_ne!(a.root_hash(), b.root_hash());
    }
}
