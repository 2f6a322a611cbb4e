//! The incremental difference between two CPs (DESIGN invariant 5): every
//! block reachable from an image whose birth is at least a given CP. Because
//! a copy-on-write parent is always rewritten when a child changes, every
//! pointer older than the base CP can be skipped with all it points to.
//!
//! Used to resync a peer (the blocks born since its last applied CP; all of
//! them for a new peer) and to rehash whole images (`verify --deep`).

use crate::alloc::Bitmap;
use crate::btree::{self, NodeReader, TreeRoot};
use crate::cp::BlockKind;
use crate::error::{FsError, Result};
use crate::filetree;
use crate::items::{self, InodeRecord, RetainedImage, XattrValue};
use crate::superblock::Superblock;
use crate::types::*;

/// Calls `visit(ptr, kind)` once for every block reachable from `sb`'s image
/// (its tree, its allocation map, and every snapshot it keeps) with birth
/// `>= min_birth`. Shared subtrees are visited once.
pub fn walk_image(
    r: &impl NodeReader,
    sb: &Superblock,
    min_birth: CpNumber,
    visit: &mut dyn FnMut(&BlockPtr, BlockKind) -> Result<()>,
) -> Result<()> {
    let mut ctx = Ctx {
        min_birth,
        seen: Bitmap::new(sb.total_blocks),
        visit,
    };
    image(r, &mut ctx, &sb.meta, &sb.alloc, true)
}

struct Ctx<'v> {
    min_birth: CpNumber,
    seen: Bitmap,
    visit: &'v mut dyn FnMut(&BlockPtr, BlockKind) -> Result<()>,
}

impl Ctx<'_> {
    /// Visits `p` unless it is null, older than the base, or seen already.
    fn offer(&mut self, p: &BlockPtr, kind: BlockKind) -> Result<()> {
        if p.is_null() || p.birth < self.min_birth || self.seen.get(p.addr.0) {
            return Ok(());
        }
        self.seen.set(p.addr.0);
        (self.visit)(p, kind)
    }
}

fn image(
    r: &impl NodeReader,
    ctx: &mut Ctx<'_>,
    meta: &TreeRoot,
    alloc: &TreeRoot,
    follow_snapshots: bool,
) -> Result<()> {
    btree::walk(r, meta, ctx.min_birth, &mut |level, ptr, block| {
        ctx.offer(ptr, BlockKind::Meta)?;
        if level == 0 {
            leaf(r, ctx, block, follow_snapshots)?;
        }
        Ok(())
    })?;
    file_tree(r, ctx, alloc, BlockKind::Meta)
}

/// Follows what the items of a leaf point to.
fn leaf(
    r: &impl NodeReader,
    ctx: &mut Ctx<'_>,
    block: &Block,
    follow_snapshots: bool,
) -> Result<()> {
    for (key, value) in btree::leaf_items(block).map_err(FsError::CorruptVolume)? {
        match key.kind {
            items::kind::INODE => {
                let rec = InodeRecord::decode(value)?;
                file_tree(r, ctx, &rec.data, BlockKind::Data)?;
            }
            items::kind::XATTR => {
                for e in items::decode_xattr_bucket(value)? {
                    if let XattrValue::Blob { blocks, .. } = e.value {
                        for p in &blocks {
                            ctx.offer(p, BlockKind::Meta)?;
                        }
                    }
                }
            }
            // Snapshots listed inside a snapshot may be gone since: only the
            // top image's list is authoritative.
            items::kind::SNAPSHOT if follow_snapshots => {
                let img = RetainedImage::decode(value)?;
                image(r, ctx, &img.meta, &img.alloc, false)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn file_tree(
    r: &impl NodeReader,
    ctx: &mut Ctx<'_>,
    root: &TreeRoot,
    data_kind: BlockKind,
) -> Result<()> {
    filetree::walk(r, root, ctx.min_birth, &mut |level, p, _| {
        ctx.offer(
            p,
            if level == 0 {
                data_kind
            } else {
                BlockKind::Meta
            },
        )
    })
}

/// Rehashes every block of an image from the device (bypassing the cache)
/// and folds `(address, hash)` in walk order into one digest, so that two
/// sides holding the same image produce the same digest. A block whose
/// content no longer matches its pointer is an error naming it.
pub fn deep_hash(
    r: &impl NodeReader,
    dev: &dyn crate::device::BlockDevice,
    sb: &Superblock,
) -> Result<[u8; 32]> {
    let mut digest = blake3::Hasher::new();
    digest.update(&sb.root_hash().0);
    let mut buf = vec![0u8; BLOCK_SIZE];
    walk_image(r, sb, CpNumber(0), &mut |p, _| {
        dev.read(p.addr, &mut buf)
            .map_err(|e| FsError::io(format!("rehashing block {}", p.addr.0), e))?;
        if Hash128::of(&buf) != p.hash {
            return Err(FsError::corrupt(
                p.addr,
                "content does not match its pointer's hash",
            ));
        }
        digest.update(&p.addr.0.to_le_bytes());
        digest.update(&p.hash.0);
        Ok(())
    })?;
    Ok(*digest.finalize().as_bytes())
}
