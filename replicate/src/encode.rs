//! Choosing how each block of a CP travels: `Full`, the patent's `Ref`, or
//! (with `--cp-sync best`) a `Recipe` or a `Delta`.
//!
//! Every non-`Full` encoding carries the block's hash; the peer rebuilds the
//! block, checks the hash, and asks for anything it could not rebuild in full.

use std::sync::Arc;

use twinfs_fs::cp::{BlockKind, CpBlock};
use twinfs_fs::descriptor::{Base as FsBase, BlockSource, Patch as FsPatch};
use twinfs_fs::{Block, BlockPtr, TransferId, BLOCK_SIZE};

use crate::message::{self, Base, DeltaRange, Encoding, Move, Patch};

/// Which encodings a CP may use (`--cp-sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpSync {
    /// Every block in full: the naive baseline.
    Full,
    /// The patent's method: wholly written blocks as references.
    Refs,
    /// References, recipes and deltas, whichever is cheapest.
    Best,
}

impl CpSync {
    /// The name on the command line (`--cp-sync`).
    pub fn name(self) -> &'static str {
        match self {
            CpSync::Full => "full",
            CpSync::Refs => "refs",
            CpSync::Best => "best",
        }
    }

    /// The method named `name`, if any.
    pub fn from_name(name: &str) -> Option<CpSync> {
        [CpSync::Full, CpSync::Refs, CpSync::Best]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

impl std::str::FromStr for CpSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(CpSync::Full),
            "refs" => Ok(CpSync::Refs),
            "best" => Ok(CpSync::Best),
            _ => Err(format!("unknown --cp-sync {s:?}: use full, refs or best")),
        }
    }
}

/// The kinds counted separately in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncKind {
    Full,
    Ref,
    Recipe,
    Delta,
}

impl EncKind {
    pub fn of(e: &Encoding) -> EncKind {
        match e {
            Encoding::Full(_) => EncKind::Full,
            Encoding::Ref { .. } => EncKind::Ref,
            Encoding::Recipe { .. } => EncKind::Recipe,
            Encoding::Delta { .. } => EncKind::Delta,
        }
    }
}

/// Approximate wire size of an encoding (MessagePack overhead included roughly).
pub fn wire_size(e: &Encoding) -> usize {
    const HEADER: usize = 8 + 18 + 4;
    HEADER
        + match e {
            Encoding::Full(b) => b.len() + 3,
            Encoding::Ref { .. } => 14,
            Encoding::Recipe { patches, .. } => 12 + patches.len() * 16,
            Encoding::Delta { moves, ranges, .. } => 10 + delta_body_size(moves.len(), ranges),
        }
}

/// Approximate wire size of a `Delta`'s moves and ranges.
fn delta_body_size(moves: usize, ranges: &[DeltaRange]) -> usize {
    moves * 10 + ranges.iter().map(|r| r.data.len() + 6).sum::<usize>()
}

/// Reads a block of the image the CP builds upon (a delta base).
pub trait PrevReader {
    fn read_prev(&self, ptr: &BlockPtr) -> Option<Arc<Block>>;
}

/// What the encoder may assume about the peer for this CP.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// Transfers after this one are (or will be, before this CP) at the peer.
    pub has_transfers_after: TransferId,
    /// The peer holds the base image (so `Prev` and `Delta` bases resolve).
    pub has_base: bool,
}

/// Encodes one CP block under `mode`.
pub fn encode(mode: CpSync, b: &CpBlock<'_>, peer: Peer, prev: &dyn PrevReader) -> Encoding {
    let full = || Encoding::Full(b.data.to_vec());
    if mode == CpSync::Full {
        return full();
    }
    let logged = |t: TransferId| t > peer.has_transfers_after;
    if let BlockSource::Whole { transfer, block_no } = *b.source {
        if logged(transfer) {
            return Encoding::Ref {
                transfer: transfer.0,
                block_no,
            };
        }
    }
    if mode == CpSync::Refs {
        return full();
    }
    let mut best = full();
    let mut best_size = wire_size(&best);
    if let Some(r) = recipe(b, peer, &logged) {
        let s = wire_size(&r);
        if s < best_size {
            best = r;
            best_size = s;
        }
    }
    if b.kind == BlockKind::Meta || matches!(b.source, BlockSource::Opaque) {
        for d in [delta(b, peer, prev), delta_from_zeros(b)]
            .into_iter()
            .flatten()
        {
            let s = wire_size(&d);
            if s < best_size {
                best = d;
                best_size = s;
            }
        }
    }
    best
}

fn recipe(b: &CpBlock<'_>, peer: Peer, logged: &dyn Fn(TransferId) -> bool) -> Option<Encoding> {
    let BlockSource::Patched { base, patches } = b.source else {
        return None;
    };
    let base = match base {
        FsBase::Zero => Base::Zero,
        FsBase::Prev if peer.has_base => Base::Prev {
            addr: b.prev?.addr.0,
        },
        FsBase::Prev => return None,
        FsBase::Logged { transfer, block_no } if logged(*transfer) => Base::Ref {
            transfer: transfer.0,
            block_no: *block_no,
        },
        FsBase::Logged { .. } => return None,
    };
    let mut out = Vec::with_capacity(patches.len());
    for p in patches {
        out.push(match *p {
            FsPatch::Bytes {
                offset,
                len,
                transfer,
                src_offset,
            } => {
                if !logged(transfer) {
                    return None;
                }
                Patch::Bytes {
                    offset,
                    transfer: transfer.0,
                    src_offset,
                    len,
                }
            }
            FsPatch::Zero { offset, len } => Patch::Zero { offset, len },
        });
    }
    if out.len() > message::MAX_PATCHES_PER_BLOCK {
        return None;
    }
    Some(Encoding::Recipe { base, patches: out })
}

/// Byte ranges where `new` differs from `old`, merging ranges separated by
/// fewer than `GAP` equal bytes (a range costs more than a few bytes).
pub fn diff_ranges(old: &[u8], new: &[u8]) -> Vec<DeltaRange> {
    const GAP: usize = 8;
    let mut out: Vec<DeltaRange> = Vec::new();
    let mut i = 0;
    while i < new.len() {
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
        let mut same = 0;
        let mut j = i + 1;
        while j < new.len() {
            if old[j] == new[j] {
                same += 1;
                if same >= GAP {
                    break;
                }
            } else {
                same = 0;
                end = j + 1;
            }
            j += 1;
        }
        out.push(DeltaRange {
            offset: start as u16,
            data: new[start..end].to_vec(),
        });
        i = end;
    }
    out
}

fn delta(b: &CpBlock<'_>, peer: Peer, prev: &dyn PrevReader) -> Option<Encoding> {
    if !peer.has_base {
        return None;
    }
    let p = b.prev?;
    let old = prev.read_prev(&p)?;
    let (moves, ranges) = delta_parts(&old[..], &b.data[..]);
    if ranges.len() > message::MAX_RANGES_PER_BLOCK || moves.len() > message::MAX_MOVES_PER_BLOCK {
        return None;
    }
    let bytes: usize = ranges.iter().map(|r| r.data.len()).sum();
    if bytes >= BLOCK_SIZE / 2 {
        return None;
    }
    Some(Encoding::Delta {
        base: Base::Prev { addr: p.addr.0 },
        moves,
        ranges,
    })
}

/// A new metadata block is mostly zeros (a pointer block of a small file,
/// a half-full leaf after a split): its non-zero runs are sent inline.
fn delta_from_zeros(b: &CpBlock<'_>) -> Option<Encoding> {
    let ranges = diff_ranges(&[0u8; BLOCK_SIZE], &b.data[..]);
    let bytes: usize = ranges.iter().map(|r| r.data.len()).sum();
    if ranges.len() > message::MAX_RANGES_PER_BLOCK || bytes >= BLOCK_SIZE * 3 / 4 {
        return None;
    }
    Some(Encoding::Delta {
        base: Base::Zero,
        moves: Vec::new(),
        ranges,
    })
}

/// The moves and ranges that turn `old` into `new`. Moves are looked for
/// only when the bytes changed in place are many: a B-tree leaf that gained
/// or lost an item has its later items shifted, which same-offset ranges
/// would send in full.
pub fn delta_parts(old: &[u8], new: &[u8]) -> (Vec<Move>, Vec<DeltaRange>) {
    /// Changed bytes below which moves are not worth looking for.
    const WORTH_MOVING: usize = 128;
    let ranges = diff_ranges(old, new);
    let changed: usize = ranges.iter().map(|r| r.data.len()).sum();
    if changed < WORTH_MOVING {
        return (Vec::new(), ranges);
    }
    let moves = find_moves(old, new);
    if moves.is_empty() {
        return (moves, ranges);
    }
    let mut shifted = old.to_vec();
    for m in &moves {
        let (from, to, len) = (m.from as usize, m.to as usize, m.len as usize);
        shifted[to..to + len].copy_from_slice(&old[from..from + len]);
    }
    let moved_ranges = diff_ranges(&shifted, new);
    if delta_body_size(moves.len(), &moved_ranges) < delta_body_size(0, &ranges) {
        (moves, moved_ranges)
    } else {
        (Vec::new(), ranges)
    }
}

/// Runs of `new` found at another offset of `old` (at least `MIN_MOVE`
/// bytes), greedily left to right; bytes equal at the same offset are
/// skipped, as same-offset ranges cost nothing there.
///
/// The 16-byte windows of `old` are indexed in a fixed table by a hash of
/// their bytes, a later (lower) offset replacing whatever shares its slot:
/// every candidate is compared byte for byte, so a lost entry costs at
/// most a move that starts a byte later, and crafted contents cannot make
/// the search slow. (A `HashMap` here was 4% of a mount's CPU on small files.)
fn find_moves(old: &[u8], new: &[u8]) -> Vec<Move> {
    const WINDOW: usize = 16;
    const MIN_MOVE: usize = 24;
    const INDEX_BITS: u32 = 13;
    const EMPTY: u16 = u16::MAX;
    let n = new.len().min(old.len()).min(BLOCK_SIZE);
    if n < WINDOW {
        return Vec::new();
    }
    let slot = |s: &[u8]| {
        let lo = u64::from_le_bytes(s[..8].try_into().expect("window"));
        let hi = u64::from_le_bytes(s[8..WINDOW].try_into().expect("window"));
        ((lo ^ hi.rotate_left(31)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INDEX_BITS))
            as usize
    };
    let mut index = [EMPTY; 1 << INDEX_BITS];
    for j in (0..=n - WINDOW).rev() {
        index[slot(&old[j..])] = j as u16;
    }
    let mut moves = Vec::new();
    let mut i = 0;
    while i + WINDOW <= n && moves.len() < message::MAX_MOVES_PER_BLOCK {
        if new[i] == old[i] {
            i += 1;
            continue;
        }
        let j = index[slot(&new[i..])];
        if j != EMPTY {
            let j = j as usize;
            let len = new[i..n]
                .iter()
                .zip(&old[j..n])
                .take_while(|(a, b)| a == b)
                .count();
            if len >= MIN_MOVE && j != i {
                moves.push(Move {
                    from: j as u16,
                    to: i as u16,
                    len: len as u16,
                });
                i += len;
                continue;
            }
        }
        i += 1;
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfs_fs::{BlockAddr, CpNumber, Hash128};

    struct NoPrev;
    impl PrevReader for NoPrev {
        fn read_prev(&self, _: &BlockPtr) -> Option<Arc<Block>> {
            None
        }
    }

    struct Prev(Arc<Block>);
    impl PrevReader for Prev {
        fn read_prev(&self, _: &BlockPtr) -> Option<Arc<Block>> {
            Some(self.0.clone())
        }
    }

    fn block<'a>(
        data: &'a Arc<Block>,
        source: &'a BlockSource,
        kind: BlockKind,
        prev: Option<BlockPtr>,
    ) -> CpBlock<'a> {
        CpBlock {
            addr: BlockAddr(100),
            hash: Hash128::of(&data[..]),
            data,
            kind,
            source,
            prev,
        }
    }

    const PEER: Peer = Peer {
        has_transfers_after: TransferId(10),
        has_base: true,
    };

    #[test]
    fn whole_blocks_travel_as_references_except_in_full_mode() {
        let data = Arc::new([5u8; BLOCK_SIZE]);
        let src = BlockSource::Whole {
            transfer: TransferId(11),
            block_no: 3,
        };
        let b = block(&data, &src, BlockKind::Data, None);
        assert_eq!(
            encode(CpSync::Refs, &b, PEER, &NoPrev),
            Encoding::Ref {
                transfer: 11,
                block_no: 3
            }
        );
        assert!(matches!(
            encode(CpSync::Full, &b, PEER, &NoPrev),
            Encoding::Full(_)
        ));
        // A transfer the peer does not have cannot be referenced.
        let old = BlockSource::Whole {
            transfer: TransferId(9),
            block_no: 0,
        };
        let b = block(&data, &old, BlockKind::Data, None);
        assert!(matches!(
            encode(CpSync::Best, &b, PEER, &NoPrev),
            Encoding::Full(_)
        ));
    }

    #[test]
    fn patched_blocks_become_recipes_in_best_mode_only() {
        let data = Arc::new([0u8; BLOCK_SIZE]);
        let src = BlockSource::Patched {
            base: FsBase::Zero,
            patches: vec![FsPatch::Bytes {
                offset: 0,
                len: 100,
                transfer: TransferId(12),
                src_offset: 200,
            }],
        };
        let b = block(&data, &src, BlockKind::Data, None);
        assert!(matches!(
            encode(CpSync::Refs, &b, PEER, &NoPrev),
            Encoding::Full(_)
        ));
        assert!(matches!(
            encode(CpSync::Best, &b, PEER, &NoPrev),
            Encoding::Recipe {
                base: Base::Zero,
                ..
            }
        ));
    }

    #[test]
    fn metadata_that_changed_a_little_becomes_a_delta() {
        let old = Arc::new([1u8; BLOCK_SIZE]);
        let mut new = [1u8; BLOCK_SIZE];
        new[100..110].fill(7);
        new[3000] = 9;
        let new = Arc::new(new);
        let prev = BlockPtr {
            addr: BlockAddr(50),
            birth: CpNumber(1),
            hash: Hash128::of(&old[..]),
        };
        let b = block(&new, &BlockSource::Opaque, BlockKind::Meta, Some(prev));
        match encode(CpSync::Best, &b, PEER, &Prev(old.clone())) {
            Encoding::Delta { base, ranges, .. } => {
                assert_eq!(base, Base::Prev { addr: 50 });
                assert_eq!(ranges.len(), 2);
                let mut rebuilt = *old;
                for r in &ranges {
                    rebuilt[r.offset as usize..r.offset as usize + r.data.len()]
                        .copy_from_slice(&r.data);
                }
                assert_eq!(rebuilt, *new);
            }
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn diff_ranges_rebuild_the_new_block() {
        let mut rng = 12345u64;
        for _ in 0..200 {
            let mut old = [0u8; BLOCK_SIZE];
            let mut new = [0u8; BLOCK_SIZE];
            for i in 0..BLOCK_SIZE {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                old[i] = (rng >> 60) as u8;
                new[i] = if (rng >> 40).is_multiple_of(7) {
                    (rng >> 50) as u8
                } else {
                    old[i]
                };
            }
            let mut rebuilt = old;
            for r in diff_ranges(&old, &new) {
                rebuilt[r.offset as usize..r.offset as usize + r.data.len()]
                    .copy_from_slice(&r.data);
            }
            assert_eq!(rebuilt, new);
        }
    }

    /// Rebuilds through the peer's own code path.
    fn rebuild_at_peer(old: &[u8], enc: Encoding, new: &[u8]) -> Vec<u8> {
        struct Base<'a>(&'a [u8]);
        impl crate::peer::apply::BlockSources for Base<'_> {
            fn transfer_bytes(&self, _: u64, _: u64, _: &mut [u8]) -> Result<(), String> {
                Err("no transfers".into())
            }
            fn transfer_block(&self, _: u64, _: u32, _: &mut [u8]) -> Result<(), String> {
                Err("no transfers".into())
            }
            fn base_block(&self, _: u64, buf: &mut [u8]) -> Result<(), String> {
                buf.copy_from_slice(self.0);
                Ok(())
            }
        }
        let block = message::CpBlock {
            addr: 7,
            hash: Hash128::of(new).0,
            enc,
        };
        block.validate().expect("valid encoding");
        let mut out = vec![0u8; BLOCK_SIZE];
        crate::peer::apply::rebuild_into(&block, &Base(old), &mut out).expect("rebuilt");
        crate::peer::apply::check(&block, Hash128::of(&out)).expect("verified");
        out
    }

    /// A leaf-like block: a header, then 40-byte items packed from the start.
    fn leaf(items: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[..4].copy_from_slice(&(items.len() as u32).to_le_bytes());
        for (k, item) in items.iter().enumerate() {
            let at = 16 + k * 40;
            for (x, byte) in b[at..at + 40].iter_mut().enumerate() {
                *byte = (item.wrapping_mul(2654435761).wrapping_add(x as u32 * 7919) >> 8) as u8;
            }
        }
        b
    }

    #[test]
    fn an_item_inserted_into_a_leaf_travels_as_moves_not_shifted_bytes() {
        let items: Vec<u32> = (0..90).collect();
        let old = leaf(&items);
        let mut grown = items.clone();
        grown.insert(10, 1000);
        let new = leaf(&grown);
        let (moves, ranges) = delta_parts(&old, &new);
        let inline: usize = ranges.iter().map(|r| r.data.len()).sum();
        assert!(!moves.is_empty(), "no moves found");
        assert!(inline < 100, "{inline} bytes inline for one 40-byte item");
        let p = PrevReaderFor(Arc::new(old.clone().try_into().unwrap()));
        let data = Arc::new(new.clone().try_into().unwrap());
        let prev = BlockPtr {
            addr: BlockAddr(50),
            birth: CpNumber(1),
            hash: Hash128::of(&old),
        };
        let b = block(&data, &BlockSource::Opaque, BlockKind::Meta, Some(prev));
        let enc = encode(CpSync::Best, &b, PEER, &p);
        assert!(matches!(&enc, Encoding::Delta { moves, .. } if !moves.is_empty()));
        assert!(wire_size(&enc) < 200, "{}", wire_size(&enc));
        assert_eq!(rebuild_at_peer(&old, enc, &new), new);
    }

    #[test]
    fn a_new_mostly_empty_metadata_block_travels_as_a_delta_from_zeros() {
        let mut new = [0u8; BLOCK_SIZE];
        new[..96].copy_from_slice(&leaf(&[1, 2])[16..112]);
        let data = Arc::new(new);
        let b = block(&data, &BlockSource::Opaque, BlockKind::Meta, None);
        let enc = encode(CpSync::Best, &b, PEER, &NoPrev);
        assert!(
            matches!(
                &enc,
                Encoding::Delta {
                    base: Base::Zero,
                    ..
                }
            ),
            "{enc:?}"
        );
        assert!(wire_size(&enc) < 200, "{}", wire_size(&enc));
        assert_eq!(rebuild_at_peer(&[0u8; BLOCK_SIZE], enc, &new), new);
    }

    struct PrevReaderFor(Arc<Block>);
    impl PrevReader for PrevReaderFor {
        fn read_prev(&self, _: &BlockPtr) -> Option<Arc<Block>> {
            Some(self.0.clone())
        }
    }

    proptest::proptest! {
        #[test]
        fn deltas_with_moves_rebuild_any_edit(
            seed in proptest::prelude::any::<u32>(),
            n in 0usize..100,
            edits in proptest::collection::vec((0usize..100, 0u8..3, proptest::prelude::any::<u32>()), 0..6),
        ) {
            let items: Vec<u32> = (0..n as u32).map(|k| k ^ seed).collect();
            let old = leaf(&items);
            let mut next = items.clone();
            for (at, what, v) in edits {
                let at = at.min(next.len());
                match what {
                    0 => next.insert(at, v),
                    1 if at < next.len() => { next.remove(at); }
                    _ if at < next.len() => next[at] = v,
                    _ => next.push(v),
                }
            }
            next.truncate(100);
            let new = leaf(&next);
            let (moves, ranges) = delta_parts(&old, &new);
            let enc = Encoding::Delta { base: Base::Prev { addr: 1 }, moves, ranges };
            proptest::prop_assert_eq!(rebuild_at_peer(&old, enc, &new), new);
        }
    }
}
