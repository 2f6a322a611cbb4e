//! Rebuilding one block of a CP from its encoding (DESIGN "CP encodings").
//!
//! The peer gets a block's content from the bytes sent (`Full`), from a data
//! block of a stored transfer (`Ref`, the patent's reference), from a base
//! overlaid with byte ranges of stored transfers and zero ranges (`Recipe`),
//! or from a block of its mirror with runs moved and sent ranges overlaid
//! (`Delta`). Whatever
//! the route, the result must hash to the block's `Hash128`, so a wrong or
//! stale source of bytes can only make a block *missing* (the source then
//! sends it in full), never wrong.

use twinfs_fs::{Hash128, BLOCK_SIZE};

use crate::message::{Base, CpBlock, DeltaRange, Encoding, Patch};

/// Where the bytes a block is rebuilt from come from.
pub trait BlockSources {
    /// Reads `buf.len()` bytes from byte `offset` of stored transfer `transfer`'s batch.
    fn transfer_bytes(&self, transfer: u64, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// Reads data block `block_no` of stored transfer `transfer`.
    fn transfer_block(&self, transfer: u64, block_no: u32, buf: &mut [u8]) -> Result<(), String>;
    /// Reads block `addr` of the mirror's image of the base CP.
    fn base_block(&self, addr: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// Rebuilds `block` into `out` (one block of bytes), unchecked: the caller
/// hashes what it rebuilt (many blocks at a time, `blockhash`) and holds the
/// hash to the block's with [`check`]. The error says why it is missing.
pub fn rebuild_into(
    block: &CpBlock,
    src: &impl BlockSources,
    out: &mut [u8],
) -> Result<(), String> {
    assert_eq!(out.len(), BLOCK_SIZE, "one block");
    match &block.enc {
        Encoding::Full(bytes) => {
            if bytes.len() != BLOCK_SIZE {
                return Err(format!("a Full block of {} bytes", bytes.len()));
            }
            out.copy_from_slice(bytes);
        }
        Encoding::Ref { transfer, block_no } => {
            src.transfer_block(*transfer, *block_no, &mut out[..])?
        }
        Encoding::Recipe { base, patches } => {
            fill_base(base, src, &mut out[..])?;
            for p in patches {
                apply_patch(p, src, &mut out[..])?;
            }
        }
        Encoding::Delta {
            base,
            moves,
            ranges,
        } => {
            fill_base(base, src, &mut out[..])?;
            if !moves.is_empty() {
                let base = out.to_vec();
                for m in moves {
                    let from = block_range(m.from, m.len)?;
                    let to = block_range(m.to, m.len)?;
                    out[to].copy_from_slice(&base[from]);
                }
            }
            for r in ranges {
                apply_range(r, &mut out[..])?;
            }
        }
    }
    Ok(())
}

/// Whether a block rebuilt by [`rebuild_into`], which hashes to `found`, is `block`.
pub fn check(block: &CpBlock, found: Hash128) -> Result<(), String> {
    if found.0 != block.hash {
        return Err(format!(
            "the rebuilt block hashes to {}, not {}",
            found.to_hex(),
            twinfs_fs::hex(&block.hash)
        ));
    }
    Ok(())
}

fn fill_base(base: &Base, src: &impl BlockSources, out: &mut [u8]) -> Result<(), String> {
    match *base {
        Base::Zero => {
            out.fill(0);
            Ok(())
        }
        Base::Prev { addr } => src.base_block(addr, out),
        Base::Ref { transfer, block_no } => src.transfer_block(transfer, block_no, out),
    }
}

fn apply_patch(p: &Patch, src: &impl BlockSources, out: &mut [u8]) -> Result<(), String> {
    match *p {
        Patch::Bytes {
            offset,
            transfer,
            src_offset,
            len,
        } => {
            let dst = block_range(offset, len)?;
            src.transfer_bytes(transfer, u64::from(src_offset), &mut out[dst])
        }
        Patch::Zero { offset, len } => {
            let dst = block_range(offset, len)?;
            out[dst].fill(0);
            Ok(())
        }
    }
}

fn apply_range(r: &DeltaRange, out: &mut [u8]) -> Result<(), String> {
    let len =
        u16::try_from(r.data.len()).map_err(|_| "a delta range longer than a block".to_string())?;
    let dst = block_range(r.offset, len)?;
    out[dst].copy_from_slice(&r.data);
    Ok(())
}

fn block_range(offset: u16, len: u16) -> Result<std::ops::Range<usize>, String> {
    let (s, e) = (offset as usize, offset as usize + len as usize);
    if e > BLOCK_SIZE {
        return Err(format!("a range {s}..{e} outside the block"));
    }
    Ok(s..e)
}
