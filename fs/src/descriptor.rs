//! Buffer descriptors (patent claim 14): for each dirty data block, how the
//! peer can rebuild its content from log transfers it already holds, so that
//! a CP need not send the block again.

use crate::types::*;

/// Most patches a descriptor keeps; a block written in more pieces than this
/// is sent whole (or as a delta) instead.
pub const MAX_PATCHES: usize = 32;

/// What a block starts from before its patches are laid over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// A block of zeros (new block, or beyond a truncation).
    Zero,
    /// The block's content in the image this CP builds upon.
    Prev,
    /// A whole block logged in a transfer.
    Logged { transfer: TransferId, block_no: u32 },
}

/// A byte range laid over the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patch {
    /// `len` bytes at `offset` in the block come from transfer `transfer`,
    /// starting at byte `src_offset` of the encoded batch.
    Bytes {
        offset: u16,
        len: u16,
        transfer: TransferId,
        src_offset: u32,
    },
    /// `len` bytes at `offset` are zero.
    Zero { offset: u16, len: u16 },
}

impl Patch {
    fn range(&self) -> (usize, usize) {
        match *self {
            Patch::Bytes { offset, len, .. } | Patch::Zero { offset, len } => {
                (offset as usize, offset as usize + len as usize)
            }
        }
    }
}

/// The descriptor of one dirty block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockSource {
    /// Nothing the peer holds rebuilds it.
    Opaque,
    /// The whole content is block `block_no` of transfer `transfer` (the patent's reference).
    Whole { transfer: TransferId, block_no: u32 },
    /// A base overlaid with patches, applied in order.
    Patched { base: Base, patches: Vec<Patch> },
}

impl BlockSource {
    /// The descriptor after `patch` is laid over a block described by `self`.
    pub fn with_patch(self, patch: Patch) -> BlockSource {
        let (base, mut patches) = match self {
            BlockSource::Opaque => return BlockSource::Opaque,
            BlockSource::Whole { transfer, block_no } => {
                (Base::Logged { transfer, block_no }, Vec::new())
            }
            BlockSource::Patched { base, patches } => (base, patches),
        };
        let (s, e) = patch.range();
        // Older patches wholly under the new one no longer matter.
        patches.retain(|p| {
            let (ps, pe) = p.range();
            !(s <= ps && pe <= e)
        });
        if s == 0 && e == BLOCK_SIZE {
            if let Patch::Zero { .. } = patch {
                return BlockSource::Patched {
                    base: Base::Zero,
                    patches: Vec::new(),
                };
            }
        }
        if patches.len() >= MAX_PATCHES {
            return BlockSource::Opaque;
        }
        patches.push(patch);
        BlockSource::Patched { base, patches }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(offset: u16, len: u16) -> Patch {
        Patch::Bytes {
            offset,
            len,
            transfer: TransferId(1),
            src_offset: 0,
        }
    }

    #[test]
    fn a_partial_write_over_a_whole_block_keeps_the_reference_as_base() {
        let s = BlockSource::Whole {
            transfer: TransferId(4),
            block_no: 2,
        }
        .with_patch(bytes(10, 5));
        assert_eq!(
            s,
            BlockSource::Patched {
                base: Base::Logged {
                    transfer: TransferId(4),
                    block_no: 2
                },
                patches: vec![bytes(10, 5)]
            }
        );
    }

    #[test]
    fn covered_patches_are_dropped_and_too_many_give_up() {
        let mut s = BlockSource::Patched {
            base: Base::Prev,
            patches: vec![],
        };
        s = s.with_patch(bytes(0, 10)).with_patch(bytes(0, 20));
        assert_eq!(
            s,
            BlockSource::Patched {
                base: Base::Prev,
                patches: vec![bytes(0, 20)]
            }
        );
        for i in 0..MAX_PATCHES as u16 {
            s = s.with_patch(bytes(100 + i * 2, 1));
        }
        assert_eq!(s, BlockSource::Opaque);
    }
}
