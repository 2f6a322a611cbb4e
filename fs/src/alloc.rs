//! Block allocation.
//!
//! The allocation map is a file of bitmap blocks (one bit per block of the
//! volume) kept in a [`crate::filetree`] tree. It records every block the
//! image references *except the map tree's own blocks*: those are found by
//! walking the (small) map tree, which breaks the usual recursion of a map
//! that must describe the blocks it is written to.
//!
//! A block may be handed out only when no image that must survive references
//! it (DESIGN invariant 1): the working image (`map` + `tree`), the last
//! committed CP (`committed`), the peer's last acknowledged CP (`hold`) and
//! every snapshot (`snapshots`). Blocks freed while a CP is built stay in
//! `committed` until that CP commits, so they are never overwritten early.
//!
//! Memory: each bitmap takes one bit per block of the volume (32 MiB per TiB).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::btree::{NodeReader, TreeRoot};
use crate::descriptor::BlockSource;
use crate::error::{FsError, Result};
use crate::filetree::{self, DirtyBlock};
use crate::rangeset::RangeSet;
use crate::types::*;

/// Bits per bitmap block.
pub const BITS_PER_BLOCK: u64 = BLOCK_SIZE_U64 * 8;

/// A plain bitmap over block addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    pub fn new(bits: u64) -> Bitmap {
        Bitmap {
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    pub fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn set(&mut self, i: u64) {
        self.words[(i / 64) as usize] |= 1 << (i % 64);
    }

    pub fn clear(&mut self, i: u64) {
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
    }

    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn or_assign(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    /// The bytes of bitmap block `index` (bits `index*BITS_PER_BLOCK..`).
    pub fn block_bytes(&self, index: u64) -> Box<Block> {
        let mut b = new_block();
        let first = (index * BITS_PER_BLOCK / 64) as usize;
        for (k, chunk) in b.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word(first + k).to_le_bytes());
        }
        b
    }

    /// Loads bitmap block `index` from its bytes.
    pub fn load_block(&mut self, index: u64, bytes: &Block) {
        let first = (index * BITS_PER_BLOCK / 64) as usize;
        for (k, chunk) in bytes.chunks(8).enumerate() {
            if let Some(w) = self.words.get_mut(first + k) {
                *w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            }
        }
    }

    /// Bits set in `self` but not in `other`, as block numbers (for fsck reports).
    pub fn difference(&self, other: &Bitmap) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            let mut d = w & !other.word(i);
            while d != 0 {
                out.push(i as u64 * 64 + u64::from(d.trailing_zeros()));
                d &= d - 1;
            }
        }
        out
    }
}

/// Number of bitmap blocks for a volume of `total` blocks.
pub fn map_blocks(total: u64) -> u64 {
    total.div_ceil(BITS_PER_BLOCK)
}

/// Loads the allocation map of an image: its bits, and the blocks of its own tree.
pub fn load_map(
    r: &impl NodeReader,
    root: &TreeRoot,
    total: u64,
) -> Result<(Bitmap, HashSet<u64>)> {
    let mut map = Bitmap::new(total);
    let mut tree = HashSet::new();
    let n = map_blocks(total);
    let ptrs = filetree::lookup_run(r, root, 0, n)?;
    for (i, p) in ptrs.iter().enumerate() {
        if !p.is_null() {
            map.load_block(i as u64, &*r.read_node(p)?);
        }
    }
    filetree::walk(r, root, CpNumber(0), &mut |_, p, _| {
        tree.insert(p.addr.0);
        Ok(())
    })?;
    Ok((map, tree))
}

/// How the volume's data blocks are taken (see [`Allocator::space`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub snapshot_only: u64,
    pub peer_only: u64,
}

/// The allocator of a writable volume. Only the CP writer allocates.
pub struct Allocator {
    total: u64,
    data_start: u64,
    /// Bits of the working image (what the next CP's map will say).
    map: Bitmap,
    /// The working image's map-tree blocks.
    tree: HashSet<u64>,
    /// Bitmap blocks whose bits changed since the last CP.
    dirty: BTreeSet<u64>,
    /// Everything the last committed CP references.
    committed: Bitmap,
    /// Protection of the peer's last acknowledged CP (and of every CP after it).
    hold: Option<PeerHold>,
    /// Everything any snapshot references.
    snapshots: Bitmap,
    cursor: u64,
}

impl Allocator {
    /// The allocator of a committed image whose map is `map`/`tree`.
    pub fn new(
        total: u64,
        data_start: u64,
        cursor: u64,
        map: Bitmap,
        tree: HashSet<u64>,
    ) -> Allocator {
        let mut committed = map.clone();
        for &b in &tree {
            committed.set(b);
        }
        Allocator {
            total,
            data_start,
            snapshots: Bitmap::new(total),
            map,
            tree,
            dirty: BTreeSet::new(),
            committed,
            hold: None,
            cursor: cursor.clamp(data_start, total.saturating_sub(1).max(data_start)),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_used(&self, addr: u64) -> bool {
        self.map.get(addr) || self.tree.contains(&addr)
    }

    /// Blocks the working image references (statfs "used").
    pub fn used_blocks(&self) -> u64 {
        self.map.count_ones() + self.tree.len() as u64
    }

    /// Free blocks, blocks kept only by snapshots, and blocks kept only for
    /// the peer (by no snapshot either): what deleting every snapshot, or
    /// the peer catching up, would give back. One walk of the bitmaps.
    pub fn space(&self) -> Space {
        let (mut busy, mut snapshot_only, mut peer_only) = (0u64, 0u64, 0u64);
        for w in 0..self.map.words.len() {
            let live = self.map.word(w) | self.committed.word(w);
            let snap = self.snapshots.word(w);
            let hold = self.hold.as_ref().map_or(0, |h| h.word(w));
            busy += u64::from((live | snap | hold).count_ones());
            snapshot_only += u64::from((snap & !live).count_ones());
            peer_only += u64::from((hold & !live & !snap).count_ones());
        }
        Space {
            free: self.free_after(busy),
            snapshot_only,
            peer_only,
        }
    }

    /// Whether a protected image (not the working one) references block `i`.
    fn held(&self, i: u64) -> bool {
        self.committed.get(i)
            || self.snapshots.get(i)
            || self.hold.as_ref().is_some_and(|h| h.holds(i))
    }

    fn busy_word(&self, w: usize) -> u64 {
        let mut bits = self.map.word(w) | self.committed.word(w) | self.snapshots.word(w);
        if let Some(h) = &self.hold {
            bits |= h.word(w);
        }
        bits
    }

    fn available(&self, i: u64) -> bool {
        i >= self.data_start && !self.map.get(i) && !self.held(i) && !self.tree.contains(&i)
    }

    /// Blocks that could be allocated now (statfs "free").
    pub fn free_blocks(&self) -> u64 {
        let busy = (0..self.map.words.len())
            .map(|w| u64::from(self.busy_word(w).count_ones()))
            .sum();
        self.free_after(busy)
    }

    /// Free blocks when `busy` blocks of the bitmaps are taken.
    fn free_after(&self, busy: u64) -> u64 {
        // Map-tree blocks are never in `map`; count those no held image has.
        let tree = self.tree.iter().filter(|&&b| !self.held(b)).count() as u64;
        (self.total - self.data_start).saturating_sub(busy + tree)
    }

    fn find(&mut self) -> Result<u64> {
        let span = self.total - self.data_start;
        let mut i = self.cursor;
        let mut scanned = 0u64;
        while scanned < span {
            if i >= self.total {
                i = self.data_start;
            }
            // Skip a whole word of unavailable blocks at once.
            if i.is_multiple_of(64) && self.busy_word((i / 64) as usize) == u64::MAX {
                i += 64;
                scanned += 64;
                continue;
            }
            if self.available(i) {
                self.cursor = i + 1;
                return Ok(i);
            }
            i += 1;
            scanned += 1;
        }
        Err(FsError::NoSpace)
    }

    /// Allocates a block for the working image.
    pub fn alloc(&mut self) -> Result<BlockAddr> {
        let i = self.find()?;
        self.map.set(i);
        self.dirty.insert(i / BITS_PER_BLOCK);
        Ok(BlockAddr(i))
    }

    /// Drops a block from the working image, in CP `cp`. It stays protected by
    /// the last committed CP until `cp` commits, and by the peer hold until
    /// the peer has applied `cp`.
    pub fn free(&mut self, addr: BlockAddr, cp: CpNumber) -> Result<()> {
        if !self.map.get(addr.0) {
            return Err(FsError::CorruptVolume(format!(
                "block {} freed but not marked allocated in the allocation map",
                addr.0
            )));
        }
        self.map.clear(addr.0);
        self.dirty.insert(addr.0 / BITS_PER_BLOCK);
        if let Some(h) = &mut self.hold {
            h.freed(addr.0, cp);
        }
        Ok(())
    }

    /// Allocates a block for the allocation map's own tree.
    pub fn alloc_tree(&mut self) -> Result<BlockAddr> {
        let i = self.find()?;
        self.tree.insert(i);
        Ok(BlockAddr(i))
    }

    pub fn free_tree(&mut self, addr: BlockAddr, cp: CpNumber) {
        self.tree.remove(&addr.0);
        if let Some(h) = &mut self.hold {
            h.freed(addr.0, cp);
        }
    }

    /// The bitmap blocks to write at this CP: changed blocks with their new
    /// bytes, and the changed blocks that became all-zero (stored as holes).
    pub fn take_dirty(&mut self) -> (BTreeMap<u64, DirtyBlock>, RangeSet) {
        let mut writes = BTreeMap::new();
        let mut holes = RangeSet::new();
        for i in std::mem::take(&mut self.dirty) {
            let bytes = self.map.block_bytes(i);
            if bytes.iter().all(|&b| b == 0) {
                holes.insert(i..i + 1);
            } else {
                writes.insert(
                    i,
                    DirtyBlock {
                        data: Arc::new(*bytes),
                        source: BlockSource::Opaque,
                        hash: None,
                    },
                );
            }
        }
        (writes, holes)
    }

    /// The CP that made the working image durable has committed: its blocks
    /// are now the ones to protect.
    pub fn committed(&mut self) {
        let mut now = self.map.clone();
        for &b in &self.tree {
            now.set(b);
        }
        self.committed = now;
    }

    /// The blocks of the last committed image.
    pub fn committed_map(&self) -> &Bitmap {
        &self.committed
    }

    /// Replaces the union of every snapshot's blocks.
    pub fn set_snapshots(&mut self, union: Bitmap) {
        self.snapshots = union;
    }

    /// Adds an image's blocks to the snapshot protection.
    pub fn add_snapshot(&mut self, image: &Bitmap) {
        self.snapshots.or_assign(image);
    }

    /// Protects the peer's CP `cp` whose blocks are `image` (read from disk:
    /// after a restart, or when the peer went away).
    pub fn hold_image(&mut self, cp: CpNumber, image: Bitmap) {
        self.hold = Some(PeerHold::new(cp, Some(image), self.total));
    }

    /// From committed CP `cp` on, keeps every block freed until the peer has
    /// applied the CP that freed it, so that every CP the peer may acknowledge
    /// from then on stays intact here.
    pub fn track_peer_from(&mut self, cp: CpNumber) {
        let total = self.total;
        let h = self
            .hold
            .get_or_insert_with(|| PeerHold::new(cp, None, total));
        h.tracking_since = Some(cp);
    }

    /// The peer has applied CP `cp`. Returns whether the hold moved to it
    /// (it moves only to a CP known to be intact).
    pub fn peer_acked(&mut self, cp: CpNumber) -> bool {
        let Some(h) = &mut self.hold else {
            return false;
        };
        if h.tracking_since.is_none_or(|since| since > cp) || cp < h.cp {
            return false;
        }
        let released: Vec<CpNumber> = h.limbo.range(..=cp).map(|(&k, _)| k).collect();
        for k in released {
            for b in h.limbo.remove(&k).unwrap_or_default() {
                h.limbo_bits.clear(b);
            }
        }
        h.cp = cp;
        h.image = None;
        true
    }

    /// Gives up the blocks kept for the peer (see
    /// `Volume::release_peer_hold_for_space`); a peer being tracked is then
    /// tracked again from committed CP `committed` on. Returns how many
    /// blocks came free; with none, the hold stays as it was.
    pub fn release_peer_hold(&mut self, committed: CpNumber) -> u64 {
        let before = self.free_blocks();
        let Some(old) = self.hold.take() else {
            return 0;
        };
        if old.tracking_since.is_some() {
            self.track_peer_from(committed);
        }
        let gained = self.free_blocks().saturating_sub(before);
        if gained == 0 {
            self.hold = Some(old);
        }
        gained
    }

    /// Stops protecting anything for a peer.
    pub fn drop_peer_hold(&mut self) {
        self.hold = None;
    }

    /// The CP the peer hold protects, if any.
    pub fn peer_hold(&self) -> Option<CpNumber> {
        self.hold.as_ref().map(|h| h.cp)
    }

    /// Blocks kept only because the peer has not applied the CP that freed them.
    pub fn peer_limbo_blocks(&self) -> u64 {
        self.hold
            .as_ref()
            .map_or(0, |h| h.limbo.values().map(|v| v.len() as u64).sum())
    }
}

/// What the allocator keeps for the peer.
struct PeerHold {
    /// The peer's last acknowledged CP.
    cp: CpNumber,
    /// Blocks of that CP's image, when the hold comes from disk rather than
    /// from tracking.
    image: Option<Bitmap>,
    /// Blocks freed by each CP since tracking began, until the peer applies it.
    limbo: BTreeMap<CpNumber, Vec<u64>>,
    limbo_bits: Bitmap,
    tracking_since: Option<CpNumber>,
}

impl PeerHold {
    fn new(cp: CpNumber, image: Option<Bitmap>, total: u64) -> PeerHold {
        PeerHold {
            cp,
            image,
            limbo: BTreeMap::new(),
            limbo_bits: Bitmap::new(total),
            tracking_since: None,
        }
    }

    fn holds(&self, i: u64) -> bool {
        self.limbo_bits.get(i) || self.image.as_ref().is_some_and(|m| m.get(i))
    }

    fn word(&self, w: usize) -> u64 {
        self.limbo_bits.word(w) | self.image.as_ref().map_or(0, |m| m.word(w))
    }

    fn freed(&mut self, b: u64, cp: CpNumber) {
        if self.tracking_since.is_some() {
            self.limbo.entry(cp).or_default().push(b);
            self.limbo_bits.set(b);
        }
    }
}

/// The full set of blocks an image references: its map plus its map tree.
pub fn image_blocks(r: &impl NodeReader, alloc_root: &TreeRoot, total: u64) -> Result<Bitmap> {
    let (mut map, tree) = load_map(r, alloc_root, total)?;
    for b in tree {
        map.set(b);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(total: u64) -> Allocator {
        Allocator::new(total, 10, 10, Bitmap::new(total), HashSet::new())
    }

    #[test]
    fn freed_blocks_are_not_reused_before_the_cp_commits() {
        let mut a = fresh(14);
        let blocks: Vec<_> = (0..4).map(|_| a.alloc().unwrap().0).collect();
        assert_eq!(blocks, vec![10, 11, 12, 13]);
        assert!(matches!(a.alloc(), Err(FsError::NoSpace)));
        a.committed();
        a.free(BlockAddr(11), CpNumber(3)).unwrap();
        assert!(
            matches!(a.alloc(), Err(FsError::NoSpace)),
            "11 is still in the committed image"
        );
        a.committed();
        assert_eq!(a.alloc().unwrap().0, 11);
    }

    #[test]
    fn a_tracked_peer_keeps_freed_blocks_until_it_applies_the_cp_that_freed_them() {
        let mut a = fresh(14);
        a.alloc().unwrap();
        a.committed();
        a.track_peer_from(CpNumber(2));
        a.free(BlockAddr(10), CpNumber(3)).unwrap();
        a.committed();
        let got: Vec<_> = (0..3).map(|_| a.alloc().unwrap().0).collect();
        assert!(
            !got.contains(&10),
            "the peer may still need CP 2, which references block 10"
        );
        a.committed();
        assert!(a.peer_acked(CpNumber(3)));
        assert_eq!(a.peer_hold(), Some(CpNumber(3)));
        assert_eq!(a.alloc().unwrap().0, 10);
    }

    #[test]
    fn releasing_the_peer_hold_frees_its_blocks_and_tracks_again_from_the_committed_cp() {
        let mut a = fresh(14);
        a.alloc().unwrap();
        a.committed();
        assert_eq!(
            a.release_peer_hold(CpNumber(2)),
            0,
            "no hold, nothing to give"
        );
        a.track_peer_from(CpNumber(2));
        assert_eq!(
            a.release_peer_hold(CpNumber(2)),
            0,
            "a hold holding nothing stays"
        );
        assert_eq!(a.peer_hold(), Some(CpNumber(2)));
        a.free(BlockAddr(10), CpNumber(3)).unwrap();
        a.committed();
        let free = a.free_blocks();
        let held = Space {
            free,
            snapshot_only: 0,
            peer_only: 1,
        };
        assert_eq!(a.space(), held);
        assert_eq!(a.release_peer_hold(CpNumber(3)), 1);
        assert_eq!(a.free_blocks(), free + 1);
        let released = Space {
            free: free + 1,
            peer_only: 0,
            ..held
        };
        assert_eq!(a.space(), released);
        assert_eq!(
            a.peer_hold(),
            Some(CpNumber(3)),
            "still tracking, from CP 3"
        );
        assert!(!a.peer_acked(CpNumber(2)), "CP 2 is no longer intact here");
        assert!(a.peer_acked(CpNumber(4)));
    }

    #[test]
    fn a_hold_from_disk_protects_exactly_that_image() {
        let mut a = fresh(14);
        let mut image = Bitmap::new(14);
        image.set(12);
        a.hold_image(CpNumber(1), image);
        assert!(
            !a.peer_acked(CpNumber(5)),
            "no tracking: CP 5 is not known to be intact"
        );
        let got: Vec<_> = (0..3).map(|_| a.alloc().unwrap().0).collect();
        assert_eq!(got, vec![10, 11, 13]);
        a.drop_peer_hold();
        assert_eq!(a.alloc().unwrap().0, 12);
    }

    #[test]
    fn double_free_is_reported_not_ignored() {
        let mut a = fresh(20);
        let b = a.alloc().unwrap();
        a.free(b, CpNumber(1)).unwrap();
        assert!(a.free(b, CpNumber(1)).is_err());
    }

    #[test]
    fn bitmap_blocks_round_trip() {
        let mut m = Bitmap::new(BITS_PER_BLOCK * 2 + 5);
        for i in [0, 63, 64, BITS_PER_BLOCK, BITS_PER_BLOCK * 2 + 4] {
            m.set(i);
        }
        let mut n = Bitmap::new(BITS_PER_BLOCK * 2 + 5);
        for i in 0..3 {
            n.load_block(i, &m.block_bytes(i));
        }
        assert_eq!(m, n);
        assert_eq!(n.count_ones(), 5);
    }
}
