//! Consistency points: turning a frozen overlay into new blocks of the image.
//!
//! A CP never overwrites a block of a protected image (the allocator sees to
//! that), writes every new block, makes them durable, and only then writes the
//! superblock slot it does not share with the previous CP, and makes that
//! durable (DESIGN invariant 2). Work is done in a fixed order (inodes by
//! number, then items by key, then the allocation map), so the same image and
//! the same overlay always give the same blocks at the same addresses
//! (invariant 4).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::alloc::{self, Allocator};
use crate::btree::{self, Key, NodeReader, NodeStore, TreeRoot};
use crate::cache::{BlockCache, Class};
use crate::descriptor::BlockSource;
use crate::device::{AlignedBuf, BlockDevice};
use crate::error::{FsError, Result};
use crate::filetree::{self, DataStore, DirtyBlock};
use crate::items::{self, InodeRecord, RetainedImage, XattrEntry, XattrValue};
use crate::lineage::Lineage;
use crate::overlay::Overlay;
use crate::superblock::{LogPosition, PeerHold, Superblock};
use crate::types::*;

/// What kind of block a CP writes, for the mirroring layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// File data.
    Data,
    /// Anything else: tree nodes, indirect blocks, bitmaps, xattr blobs.
    Meta,
}

/// One block written by a CP, with what the mirroring layer needs to send it
/// cheaply: its buffer descriptor and the block it replaces.
pub struct CpBlock<'a> {
    pub addr: BlockAddr,
    pub hash: Hash128,
    pub data: &'a Arc<Block>,
    pub kind: BlockKind,
    /// How the peer can rebuild it from log transfers it holds.
    pub source: &'a BlockSource,
    /// The block this one replaces in the image the CP builds upon (a delta
    /// base present at the peer), if any.
    pub prev: Option<BlockPtr>,
}

/// Receives each CP's change set as it is written. Called on the CP thread.
pub trait CpSink: Send {
    /// A CP on top of `base` begins; it contains every transfer up to `covers`.
    fn begin(&mut self, cp: CpNumber, base: CpNumber, covers: Option<TransferId>);
    fn block(&mut self, b: &CpBlock<'_>);
    /// The CP is durable locally; `superblock` is its encoded superblock.
    fn commit(&mut self, sb: &Superblock, superblock: &Block);
    /// The CP failed locally and will not commit.
    fn abort(&mut self);
}

/// Counters of one CP.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpStats {
    pub data_blocks: u64,
    pub meta_blocks: u64,
    pub freed_blocks: u64,
}

/// Snapshots created and deleted at a CP.
#[derive(Default, Debug)]
pub struct RetainedChanges {
    /// New snapshots: id → image.
    pub create: Vec<(u64, RetainedImage)>,
    /// Snapshots deleted, by id.
    pub delete: Vec<u64>,
}

impl RetainedChanges {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

/// One block in this many whose hash comes from log time is hashed again
/// before it is written (every one in debug builds).
const HASH_CHECK_EVERY: u64 = 16;

/// Coalesces writes to adjacent addresses into one device write.
const MAX_RUN_BYTES: usize = 4 << 20;

/// Allocates, hashes, writes and reports every block of one CP.
pub struct CpWriter<'a> {
    cache: &'a BlockCache,
    dev: &'a dyn BlockDevice,
    alloc: &'a mut Allocator,
    cp: CpNumber,
    sink: Option<&'a mut (dyn CpSink + 'static)>,
    run_start: u64,
    run: AlignedBuf,
    /// Allocating for the allocation map's own tree.
    map_mode: bool,
    /// The first error met in a call that cannot return one.
    deferred: Option<FsError>,
    pub stats: CpStats,
}

impl<'a> CpWriter<'a> {
    pub fn new(
        cache: &'a BlockCache,
        dev: &'a dyn BlockDevice,
        alloc: &'a mut Allocator,
        cp: CpNumber,
        sink: Option<&'a mut (dyn CpSink + 'static)>,
    ) -> CpWriter<'a> {
        CpWriter {
            cache,
            dev,
            alloc,
            cp,
            sink,
            run_start: 0,
            run: AlignedBuf::new(),
            map_mode: false,
            deferred: None,
            stats: CpStats::default(),
        }
    }

    fn flush_run(&mut self) -> Result<()> {
        if !self.run.is_empty() {
            self.dev
                .write(BlockAddr(self.run_start), self.run.as_slice())
                .map_err(|e| {
                    FsError::io(
                        format!("writing CP {} blocks at {}", self.cp.0, self.run_start),
                        e,
                    )
                })?;
            self.run.clear();
        }
        Ok(())
    }

    fn put(
        &mut self,
        data: Arc<Block>,
        known_hash: Option<Hash128>,
        kind: BlockKind,
        source: &BlockSource,
        prev: Option<BlockPtr>,
    ) -> Result<BlockPtr> {
        // A hash carried from log time must be the block's: a wrong one would
        // commit a pointer every later read rejects. Checking every block
        // would cost a second hash of each; one in HASH_CHECK_EVERY (all in
        // debug builds) catches a systematic mistake at the CP that makes it.
        if let Some(h) = known_hash {
            let n = self.stats.data_blocks + self.stats.meta_blocks;
            if (cfg!(debug_assertions) || n.is_multiple_of(HASH_CHECK_EVERY))
                && h != Hash128::of(&data[..])
            {
                return Err(FsError::CorruptVolume(format!(
                    "CP {}: a block's hash carried from the log does not match its bytes; \
                     the CP is not committed",
                    self.cp.0
                )));
            }
        }
        let addr = if self.map_mode {
            self.alloc.alloc_tree()?
        } else {
            self.alloc.alloc()?
        };
        let ptr = BlockPtr {
            addr,
            birth: self.cp,
            hash: known_hash.unwrap_or_else(|| Hash128::of(&data[..])),
        };
        let run_end = self.run_start + (self.run.len() / BLOCK_SIZE) as u64;
        if self.run.is_empty() || addr.0 != run_end || self.run.len() >= MAX_RUN_BYTES {
            self.flush_run()?;
            self.run_start = addr.0;
        }
        self.run.extend_from_slice(&data[..]);
        match kind {
            BlockKind::Data => self.stats.data_blocks += 1,
            BlockKind::Meta => self.stats.meta_blocks += 1,
        }
        if let Some(sink) = self.sink.as_deref_mut() {
            sink.block(&CpBlock {
                addr,
                hash: ptr.hash,
                data: &data,
                kind,
                source,
                prev: prev.filter(|p| !p.is_null()),
            });
        }
        let class = if kind == BlockKind::Data {
            Class::Data
        } else {
            Class::Meta
        };
        self.cache.insert(&ptr, data, class);
        Ok(ptr)
    }

    /// Switches allocation to the allocation map's own tree and back.
    pub fn set_map_mode(&mut self, on: bool) {
        self.map_mode = on;
    }

    /// Writes what is buffered and reports any error met on the way.
    pub fn finish(&mut self) -> Result<()> {
        self.take_deferred()?;
        self.flush_run()
    }

    fn take_deferred(&mut self) -> Result<()> {
        match self.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl NodeReader for CpWriter<'_> {
    fn read_node(&self, ptr: &BlockPtr) -> Result<Arc<Block>> {
        self.cache.read(ptr, Class::Meta)
    }
}

impl NodeStore for CpWriter<'_> {
    fn write_node(&mut self, data: Box<Block>, replaces: Option<BlockPtr>) -> Result<BlockPtr> {
        self.put(
            Arc::new(*data),
            None,
            BlockKind::Meta,
            &BlockSource::Opaque,
            replaces,
        )
    }

    fn free_node(&mut self, ptr: BlockPtr) {
        self.stats.freed_blocks += 1;
        if self.map_mode {
            self.alloc.free_tree(ptr.addr, self.cp);
        } else if let Err(e) = self.alloc.free(ptr.addr, self.cp) {
            self.deferred.get_or_insert(e);
        }
    }
}

impl DataStore for CpWriter<'_> {
    fn write_data(&mut self, block: &DirtyBlock, prev: BlockPtr) -> Result<BlockPtr> {
        let kind = if self.map_mode {
            BlockKind::Meta
        } else {
            BlockKind::Data
        };
        self.put(
            block.data.clone(),
            block.hash,
            kind,
            &block.source,
            Some(prev),
        )
    }
}

/// Everything a CP needs besides the writer.
pub struct CpInput<'a> {
    /// The committed image this CP builds upon.
    pub base: &'a Superblock,
    pub frozen: &'a Overlay,
    pub retained: &'a RetainedChanges,
    pub log: LogPosition,
    pub time: Timestamp,
    pub key: &'a [u8; 32],
    /// The peer hold to record in the new superblock.
    pub peer_hold: Option<PeerHold>,
    /// The lineage to record in the new superblock.
    pub lineage: &'a Lineage,
}

/// Builds and commits one CP. Returns its superblock once it is durable.
pub fn run(
    cache: &BlockCache,
    alloc: &mut Allocator,
    mut sink: Option<&mut (dyn CpSink + 'static)>,
    input: CpInput<'_>,
    covers: Option<TransferId>,
) -> Result<Superblock> {
    let dev = cache.device().clone();
    let cp = CpNumber(input.base.cp.0 + 1);
    if let Some(s) = sink.as_deref_mut() {
        s.begin(cp, input.base.cp, covers);
    }
    let result = build_and_commit(cache, &*dev, alloc, sink.as_deref_mut(), &input, cp);
    match (&result, sink) {
        (Ok((sb, bytes)), Some(s)) => s.commit(sb, bytes),
        (Err(_), Some(s)) => s.abort(),
        _ => {}
    }
    result.map(|(sb, _)| sb)
}

fn build_and_commit(
    cache: &BlockCache,
    dev: &dyn BlockDevice,
    alloc: &mut Allocator,
    sink: Option<&mut (dyn CpSink + 'static)>,
    input: &CpInput<'_>,
    cp: CpNumber,
) -> Result<(Superblock, Box<Block>)> {
    let base = input.base;
    let mut w = CpWriter::new(cache, dev, alloc, cp, sink);
    let mut changes: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    let reclaimed = inodes_and_data(&mut w, input, &mut changes)?;
    dirents(&w, input, &mut changes)?;
    xattrs(&mut w, input, &reclaimed, &mut changes)?;
    for (&ino, &orphan) in &input.frozen.orphans {
        changes.insert(items::orphan_key(ino), orphan.then(Vec::new));
    }
    retained(input.retained, &mut changes);
    let changes: Vec<(Key, Option<Vec<u8>>)> = changes.into_iter().collect();
    let meta = btree::apply(&mut w, &base.meta, &changes)?;
    w.take_deferred()?;

    // The allocation map last: every allocation of this CP is known now,
    // and the map tree's own blocks do not appear in the map.
    let (map_writes, map_holes) = w.alloc.take_dirty();
    w.map_mode = true;
    let alloc_root = filetree::apply(&mut w, &base.alloc, &map_writes, &map_holes)?;
    w.map_mode = false;
    w.take_deferred()?;
    w.flush_run()?;
    let inodes = base.inodes as i64 + input.frozen.inode_delta;
    let sb = Superblock {
        uuid: base.uuid,
        total_blocks: base.total_blocks,
        log_start: base.log_start,
        log_blocks: base.log_blocks,
        cp,
        next_ino: input.frozen.next_ino.max(base.next_ino),
        alloc_cursor: w.alloc.cursor(),
        used_blocks: w.alloc.used_blocks(),
        inodes: inodes.max(0) as u64,
        meta,
        alloc: alloc_root,
        log: input.log,
        cp_time: input.time,
        peer_hold: input.peer_hold,
        lineage: input.lineage.clone(),
        replica: false,
    };
    let bytes = sb.encode();
    dev.flush()
        .map_err(|e| FsError::io(format!("flushing CP {}", cp.0), e))?;
    dev.write(BlockAddr(sb.slot()), &bytes[..])
        .map_err(|e| FsError::io(format!("writing the superblock of CP {}", cp.0), e))?;
    dev.flush()
        .map_err(|e| FsError::io(format!("flushing the superblock of CP {}", cp.0), e))?;
    log::debug!(
        "CP {} committed: {} data + {} metadata blocks written, {} freed",
        cp.0,
        w.stats.data_blocks,
        w.stats.meta_blocks,
        w.stats.freed_blocks
    );
    Ok((sb, bytes))
}

/// Writes the data of every changed file and produces the new inode records.
/// Returns the inodes reclaimed by this CP.
fn inodes_and_data(
    w: &mut CpWriter<'_>,
    input: &CpInput<'_>,
    changes: &mut BTreeMap<Key, Option<Vec<u8>>>,
) -> Result<Vec<Ino>> {
    let frozen = input.frozen;
    let mut inos: Vec<Ino> = frozen
        .inodes
        .keys()
        .chain(frozen.files.keys())
        .copied()
        .collect();
    inos.sort_unstable();
    inos.dedup();
    let mut reclaimed = Vec::new();
    for ino in inos {
        let key = InodeRecord::key(ino);
        let old = btree::get(w.cache, &input.base.meta, &key)?
            .map(|v| InodeRecord::decode(&v))
            .transpose()?;
        match frozen.inodes.get(&ino) {
            Some(None) => {
                // Reclaimed: its data, record and xattrs go.
                if let Some(old) = old {
                    filetree::free_tree(w, old.data.ptr, old.data.height)?;
                    changes.insert(key, None);
                }
                reclaimed.push(ino);
            }
            attrs => {
                let old_data = old.as_ref().map(|r| r.data).unwrap_or_default();
                let data = match frozen.files.get(&ino) {
                    Some(fd) => filetree::apply(w, &old_data, &fd.blocks, &fd.hide)?,
                    None => old_data,
                };
                let attrs = match (attrs, &old) {
                    (Some(Some(a)), _) => a.clone(),
                    (_, Some(r)) => r.attrs.clone(),
                    (_, None) => {
                        return Err(FsError::CorruptVolume(format!(
                            "data for inode {} which has no attributes",
                            ino.0
                        )))
                    }
                };
                let rec = InodeRecord { attrs, data };
                if old.as_ref() != Some(&rec) {
                    changes.insert(key, Some(rec.encode()));
                }
            }
        }
    }
    Ok(reclaimed)
}

/// Merges directory entry changes into their hash buckets.
fn dirents(
    w: &CpWriter<'_>,
    input: &CpInput<'_>,
    changes: &mut BTreeMap<Key, Option<Vec<u8>>>,
) -> Result<()> {
    type Edit<'a> = (&'a Vec<u8>, Option<(Ino, FileKind)>);
    let mut by_bucket: BTreeMap<(Ino, u64), Vec<Edit<'_>>> = BTreeMap::new();
    for ((dir, h, name), v) in &input.frozen.dirents {
        by_bucket.entry((*dir, *h)).or_default().push((name, *v));
    }
    for ((dir, h), edits) in by_bucket {
        let key = Key {
            ino: dir.0,
            kind: items::kind::DIRENT,
            off: h,
        };
        let mut entries = match btree::get(w.cache, &input.base.meta, &key)? {
            Some(v) => items::decode_dir_bucket(&v)?,
            None => Vec::new(),
        };
        for (name, v) in edits {
            entries.retain(|e| &e.name != name);
            if let Some((ino, kind)) = v {
                entries.push(items::DirEntry {
                    name: name.clone(),
                    ino,
                    kind,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let value = (!entries.is_empty()).then(|| items::encode_dir_bucket(&entries));
        if value
            .as_ref()
            .is_some_and(|v| v.len() > btree::MAX_VALUE_SIZE)
        {
            return Err(FsError::CorruptVolume(format!(
                "directory {} has too many names with one hash",
                dir.0
            )));
        }
        changes.insert(key, value);
    }
    Ok(())
}

/// Writes changed xattrs (large values into blob blocks) and deletes the
/// xattrs of reclaimed inodes.
fn xattrs(
    w: &mut CpWriter<'_>,
    input: &CpInput<'_>,
    reclaimed: &[Ino],
    changes: &mut BTreeMap<Key, Option<Vec<u8>>>,
) -> Result<()> {
    let base_meta = input.base.meta;
    for &ino in reclaimed {
        let lo = Key {
            ino: ino.0,
            kind: items::kind::XATTR,
            off: 0,
        };
        let hi = Key {
            ino: ino.0,
            kind: items::kind::XATTR + 1,
            off: 0,
        };
        let old: Vec<(Key, Vec<u8>)> =
            btree::range(w.cache, &base_meta, lo, hi).collect::<Result<_>>()?;
        for (k, v) in old {
            for e in items::decode_xattr_bucket(&v)? {
                free_xattr_value(w, &e.value);
            }
            changes.insert(k, None);
        }
    }
    type Edit<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);
    let mut by_bucket: BTreeMap<(Ino, u64), Vec<Edit<'_>>> = BTreeMap::new();
    for ((ino, name), v) in &input.frozen.xattrs {
        if !reclaimed.contains(ino) {
            by_bucket
                .entry((*ino, items::name_hash(input.key, name)))
                .or_default()
                .push((name, v));
        }
    }
    for ((ino, h), edits) in by_bucket {
        let key = Key {
            ino: ino.0,
            kind: items::kind::XATTR,
            off: h,
        };
        let mut entries: Vec<XattrEntry> = match btree::get(w.cache, &base_meta, &key)? {
            Some(v) => items::decode_xattr_bucket(&v)?,
            None => Vec::new(),
        };
        for (name, v) in edits {
            if let Some(pos) = entries.iter().position(|e| &e.name == name) {
                let old = entries.remove(pos);
                free_xattr_value(w, &old.value);
            }
            if let Some(value) = v {
                let value = store_xattr_value(w, value)?;
                entries.push(XattrEntry {
                    name: name.clone(),
                    value,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let value = (!entries.is_empty()).then(|| items::encode_xattr_bucket(&entries));
        if value
            .as_ref()
            .is_some_and(|v| v.len() > btree::MAX_VALUE_SIZE)
        {
            return Err(FsError::CorruptVolume(format!(
                "inode {} has too many xattr names with one hash",
                ino.0
            )));
        }
        changes.insert(key, value);
    }
    Ok(())
}

fn free_xattr_value(w: &mut CpWriter<'_>, v: &XattrValue) {
    if let XattrValue::Blob { blocks, .. } = v {
        for p in blocks {
            w.free_node(*p);
        }
    }
}

fn store_xattr_value(w: &mut CpWriter<'_>, value: &[u8]) -> Result<XattrValue> {
    if value.len() <= items::XATTR_INLINE_MAX {
        return Ok(XattrValue::Inline(value.to_vec()));
    }
    let mut blocks = Vec::with_capacity(value.len().div_ceil(BLOCK_SIZE));
    for chunk in value.chunks(BLOCK_SIZE) {
        let mut b = new_block();
        b[..chunk.len()].copy_from_slice(chunk);
        blocks.push(w.write_node(b, None)?);
    }
    Ok(XattrValue::Blob {
        len: value.len() as u32,
        blocks,
    })
}

fn retained(r: &RetainedChanges, changes: &mut BTreeMap<Key, Option<Vec<u8>>>) {
    for (id, img) in &r.create {
        changes.insert(RetainedImage::snapshot_key(*id), Some(img.encode()));
    }
    for id in &r.delete {
        changes.insert(RetainedImage::snapshot_key(*id), None);
    }
}

/// The blocks every retained image references (snapshots only).
pub fn snapshot_union(
    r: &impl NodeReader,
    snapshots: &[RetainedImage],
    total: u64,
) -> Result<alloc::Bitmap> {
    let mut union = alloc::Bitmap::new(total);
    for s in snapshots {
        union.or_assign(&alloc::image_blocks(r, &s.alloc, total)?);
    }
    Ok(union)
}

/// The root of an empty tree.
pub const EMPTY: TreeRoot = TreeRoot {
    ptr: BlockPtr::NULL,
    height: 0,
};

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::alloc::Bitmap;
    use crate::device::MemDevice;
    use crate::filetree::DataStore;

    #[test]
    fn a_block_whose_carried_hash_is_wrong_is_never_written() {
        let dev = Arc::new(MemDevice::new(64));
        let cache = BlockCache::new(dev.clone(), 16, 16);
        let mut alloc = Allocator::new(64, 8, 8, Bitmap::new(64), HashSet::new());
        let mut w = CpWriter::new(&cache, &*dev, &mut alloc, CpNumber(2), None);
        let mut data = Box::new([0u8; BLOCK_SIZE]);
        data[0] = 7;
        let data: Arc<Block> = Arc::from(data);
        let right = DirtyBlock {
            data: data.clone(),
            source: BlockSource::Opaque,
            hash: Some(Hash128::of(&data[..])),
        };
        let ptr = w.write_data(&right, BlockPtr::NULL).unwrap();
        assert_eq!(ptr.hash, Hash128::of(&data[..]));
        let wrong = DirtyBlock {
            hash: Some(Hash128::of(&[1u8; BLOCK_SIZE][..])),
            ..right
        };
        // Debug builds check every block; release builds one in
        // HASH_CHECK_EVERY, so write until the check comes round.
        let refused = (0..HASH_CHECK_EVERY).any(|_| {
            matches!(
                w.write_data(&wrong, BlockPtr::NULL),
                Err(FsError::CorruptVolume(_))
            )
        });
        assert!(refused, "a wrong carried hash was never caught");
    }
}
