//! Choosing how each block of a CP travels: `Full`, the patent's `Ref`, or
//! (with `--cp-sync best`) a `Recipe` or a `Delta`.
//!
//! Every non-`Full` encoding carries the block's hash; the peer rebuilds the
//! block, checks the hash, and asks for anything it could not rebuild in full.

use std::sync::Arc;

use twinfs_fs::cp::{BlockKind, CpBlock};
use twinfs_fs::descriptor::{Base as FsBase, BlockSource, Patch as FsPatch};
use twinfs_fs::{Block, BlockPtr, TransferId, BLOCK_SIZE};

use crate::message::{self, Base, DeltaRange, Encoding, Patch};

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
            Encoding::Delta { ranges, .. } => {
                10 + ranges.iter().map(|r| r.data.len() + 6).sum::<usize>()
            }
        }
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
        if let Some(d) = delta(b, peer, prev) {
            if wire_size(&d) < best_size {
                best = d;
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
    let ranges = diff_ranges(&old[..], &b.data[..]);
    if ranges.len() > message::MAX_RANGES_PER_BLOCK {
        return None;
    }
    let bytes: usize = ranges.iter().map(|r| r.data.len()).sum();
    if bytes >= BLOCK_SIZE / 2 {
        return None;
    }
    Some(Encoding::Delta {
        base_addr: p.addr.0,
        ranges,
    })
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
            Encoding::Delta { base_addr, ranges } => {
                assert_eq!(base_addr, 50);
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
}
