//! Dirty state: the changes since the last CP, held in memory as logical
//! items (not as dirty tree blocks), plus layered reads through them.
//!
//! A volume has up to two overlays over its committed image: the *active* one
//! that operations change, and, while a CP is being written, the *frozen* one
//! that the CP turns into blocks. Reads look at active, then frozen, then the
//! image. Because the CP works from the frozen overlay and the committed image,
//! both immutable, operations go on into the active overlay during a CP.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::btree::{self, Key, TreeRoot};
use crate::cache::{BlockCache, Class};
use crate::error::{FsError, Result};
use crate::filetree::{self, DirtyBlock};
use crate::items::{self, DirEntry, InodeAttrs, InodeRecord, XattrValue};
use crate::rangeset::RangeSet;
use crate::types::*;

/// Data changes of one file in one overlay.
#[derive(Clone, Debug, Default)]
pub struct FileDirty {
    /// New content of blocks, by block index.
    pub blocks: BTreeMap<u64, DirtyBlock>,
    /// Block ranges whose content from lower layers is gone (truncate, punch)
    /// unless rewritten in `blocks`.
    pub hide: RangeSet,
}

/// Key of a directory entry change: directory, name hash, name.
pub type DirKey = (Ino, u64, Vec<u8>);

/// One generation of changes.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// New attributes of changed inodes; `None` = the inode was reclaimed.
    pub inodes: BTreeMap<Ino, Option<InodeAttrs>>,
    /// Added (`Some`) and removed (`None`) directory entries.
    pub dirents: BTreeMap<DirKey, Option<(Ino, FileKind)>>,
    /// Set (`Some`) and removed (`None`) extended attributes.
    pub xattrs: BTreeMap<(Ino, Vec<u8>), Option<Vec<u8>>>,
    pub files: BTreeMap<Ino, FileDirty>,
    /// Orphan markers added (`true`) or removed (`false`).
    pub orphans: BTreeMap<Ino, bool>,
    /// The next inode number after this overlay's creates.
    pub next_ino: Ino,
    /// Inodes created minus inodes reclaimed.
    pub inode_delta: i64,
    /// Number of dirty data blocks held.
    pub dirty_blocks: u64,
    /// Rough bytes of metadata changes (for the dirty bound).
    pub meta_bytes: u64,
    /// Last transfer applied into this overlay.
    pub last_transfer: Option<TransferId>,
}

impl Overlay {
    pub fn new(next_ino: Ino) -> Overlay {
        Overlay {
            next_ino,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.dirents.is_empty()
            && self.xattrs.is_empty()
            && self.files.is_empty()
            && self.orphans.is_empty()
    }

    /// Memory the overlay pins, roughly, in bytes.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_blocks * BLOCK_SIZE_U64 + self.meta_bytes
    }
}

/// What a layered read of a block finds.
#[derive(Clone, Debug)]
pub enum Found {
    /// A hole: reads as zeros.
    Hole,
    /// Dirty in an overlay (`top` = the active one).
    Dirty { block: DirtyBlock, top: bool },
    /// In the committed image.
    Image(BlockPtr),
}

/// A read-only view through up to two overlays onto an image.
pub struct Layers<'a> {
    pub top: Option<&'a Overlay>,
    pub mid: Option<&'a Overlay>,
    pub meta: TreeRoot,
    /// The image's next inode number: inodes from here on were created
    /// since, and the image holds nothing of them (a bound that is too high
    /// is safe, it only looks up more). Spares new files every image lookup.
    pub image_next_ino: Ino,
    pub cache: &'a BlockCache,
    pub key: &'a [u8; 32],
}

impl<'a> Layers<'a> {
    fn overlays(&self) -> impl Iterator<Item = &'a Overlay> {
        self.top.into_iter().chain(self.mid)
    }

    /// The image's record of an inode (attributes as of the last CP, and its data root).
    pub fn image_record(&self, ino: Ino) -> Result<Option<InodeRecord>> {
        if ino >= self.image_next_ino {
            return Ok(None);
        }
        btree::get(self.cache, &self.meta, &InodeRecord::key(ino))?
            .map(|v| InodeRecord::decode(&v))
            .transpose()
    }

    /// Current attributes, or `None` if there is no such inode.
    pub fn inode(&self, ino: Ino) -> Result<Option<InodeAttrs>> {
        for ov in self.overlays() {
            if let Some(v) = ov.inodes.get(&ino) {
                return Ok(v.clone());
            }
        }
        Ok(self.image_record(ino)?.map(|r| r.attrs))
    }

    /// Current attributes; NotFound if the inode does not exist.
    pub fn attrs(&self, ino: Ino) -> Result<InodeAttrs> {
        self.inode(ino)?.ok_or(FsError::NotFound)
    }

    pub fn name_hash(&self, name: &[u8]) -> u64 {
        items::name_hash(self.key, name)
    }

    /// The entry `name` in directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        let hash = self.name_hash(name);
        let k = (dir, hash, name.to_vec());
        for ov in self.overlays() {
            if let Some(v) = ov.dirents.get(&k) {
                return Ok(*v);
            }
        }
        if dir >= self.image_next_ino {
            return Ok(None);
        }
        let key = Key {
            ino: dir.0,
            kind: items::kind::DIRENT,
            off: hash,
        };
        Ok(match btree::get(self.cache, &self.meta, &key)? {
            None => None,
            Some(v) => items::decode_dir_bucket(&v)?
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| (e.ino, e.kind)),
        })
    }

    /// Calls `f(cookie, entry)` for the entries of `dir` whose cookie is
    /// greater than `after`, in cookie order, until `f` returns false.
    /// Cookies are name hashes, so they stay valid while entries come and go.
    pub fn readdir(
        &self,
        dir: Ino,
        after: u64,
        f: &mut dyn FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let start = after.saturating_add(1);
        // Overlay changes for this directory, top layer first.
        type Change = Option<(Ino, FileKind)>;
        let mut changes: BTreeMap<(u64, Vec<u8>), Change> = BTreeMap::new();
        for ov in self.overlays() {
            let lo = (dir, start, Vec::new());
            let hi = (Ino(dir.0 + 1), 0, Vec::new());
            for ((_, h, name), v) in ov.dirents.range(lo..hi) {
                changes.entry((*h, name.clone())).or_insert(*v);
            }
        }
        let mut image = btree::range(
            self.cache,
            &self.meta,
            Key {
                ino: dir.0,
                kind: items::kind::DIRENT,
                off: start,
            },
            Key {
                ino: dir.0,
                kind: items::kind::DIRENT + 1,
                off: 0,
            },
        )
        .peekable();
        let mut pending_image: std::collections::VecDeque<(u64, DirEntry)> = Default::default();
        let mut ch = changes.into_iter().peekable();
        loop {
            if pending_image.is_empty() {
                if let Some(item) = image.next() {
                    let (k, v) = item?;
                    for e in items::decode_dir_bucket(&v)? {
                        pending_image.push_back((k.off, e));
                    }
                    // Keep names of one bucket in name order so the merge is well defined.
                    pending_image
                        .make_contiguous()
                        .sort_by(|a, b| a.1.name.cmp(&b.1.name));
                }
            }
            let next_img = pending_image.front().map(|(h, e)| (*h, e.name.clone()));
            let next_ch = ch.peek().map(|(k, _)| k.clone());
            let (cookie, entry) = match (next_img, next_ch) {
                (None, None) => return Ok(()),
                (Some(i), Some(c)) if c <= i => {
                    let ((h, name), v) = ch.next().expect("peeked");
                    if c == i {
                        pending_image.pop_front();
                    }
                    match v {
                        Some((ino, kind)) => (h, DirEntry { name, ino, kind }),
                        None => continue,
                    }
                }
                (Some(_), _) => pending_image.pop_front().expect("peeked"),
                (None, Some(_)) => {
                    let ((h, name), v) = ch.next().expect("peeked");
                    match v {
                        Some((ino, kind)) => (h, DirEntry { name, ino, kind }),
                        None => continue,
                    }
                }
            };
            if !f(cookie, &entry) {
                return Ok(());
            }
        }
    }

    /// Whether a directory has any entry.
    pub fn dir_is_empty(&self, dir: Ino) -> Result<bool> {
        let mut empty = true;
        self.readdir(dir, 0, &mut |_, _| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// The data root of a file in the image (empty if the file is new).
    pub fn image_data_root(&self, ino: Ino) -> Result<TreeRoot> {
        Ok(self.image_record(ino)?.map(|r| r.data).unwrap_or_default())
    }

    /// Where block `index` of file `ino` comes from.
    pub fn find_block(&self, ino: Ino, index: u64, image_root: &TreeRoot) -> Result<Found> {
        let mut top = true;
        for ov in self.overlays() {
            if let Some(fd) = ov.files.get(&ino) {
                if let Some(b) = fd.blocks.get(&index) {
                    return Ok(Found::Dirty {
                        block: b.clone(),
                        top,
                    });
                }
                if fd.hide.contains(index) {
                    return Ok(Found::Hole);
                }
            }
            top = false;
        }
        let p = filetree::lookup(self.cache, image_root, index)?;
        Ok(if p.is_null() {
            Found::Hole
        } else {
            Found::Image(p)
        })
    }

    /// Copies blocks `start..` of a file into `out`, which holds whole
    /// blocks (holes read as zeros): dirty blocks from the overlays, the rest
    /// from the image.
    pub fn read_into(&self, ino: Ino, start: u64, out: &mut [u8]) -> Result<()> {
        let root = self.image_data_root(ino)?;
        let count = out.len() / BLOCK_SIZE;
        let mut decided = vec![false; count];
        for fd in self.overlays().filter_map(|ov| ov.files.get(&ino)) {
            for (i, slot) in out.chunks_mut(BLOCK_SIZE).enumerate() {
                let idx = start + i as u64;
                if decided[i] {
                    continue;
                }
                if let Some(b) = fd.blocks.get(&idx) {
                    slot.copy_from_slice(&b.data[..]);
                } else if fd.hide.contains(idx) {
                    slot.fill(0);
                } else {
                    continue;
                }
                decided[i] = true;
            }
        }
        if decided.iter().all(|&d| d) {
            return Ok(());
        }
        let ptrs = filetree::lookup_run(self.cache, &root, start, count as u64)?;
        let wanted: Vec<Option<BlockPtr>> = ptrs
            .into_iter()
            .zip(&decided)
            .map(|(p, &d)| (!d).then_some(p))
            .collect();
        self.cache.read_into(&wanted, out)
    }

    /// Whether block `index` holds data (is not a hole).
    pub fn has_data(&self, ino: Ino, index: u64, root: &TreeRoot) -> Result<bool> {
        Ok(!matches!(self.find_block(ino, index, root)?, Found::Hole))
    }

    /// Number of data blocks among `range` of a file.
    pub fn count_data(&self, ino: Ino, range: Range<u64>) -> Result<u64> {
        if range.start >= range.end {
            return Ok(0);
        }
        let root = self.image_data_root(ino)?;
        let ovs: Vec<&FileDirty> = self.overlays().filter_map(|o| o.files.get(&ino)).collect();
        // Visible = the topmost layer that says anything about the index says "data".
        let decided_above = |i: u64, depth: usize| {
            ovs[..depth]
                .iter()
                .any(|fd| fd.blocks.contains_key(&i) || fd.hide.contains(i))
        };
        let mut n = 0;
        for (depth, fd) in ovs.iter().enumerate() {
            n += fd
                .blocks
                .range(range.clone())
                .filter(|(&i, _)| !decided_above(i, depth))
                .count() as u64;
        }
        let ptrs_end = range.end.min(filetree::span(root.height));
        if !root.ptr.is_null() && range.start < ptrs_end {
            let mut i = range.start;
            while let Some(next) = filetree::find(self.cache, &root, i, true)? {
                if next >= ptrs_end {
                    break;
                }
                if !decided_above(next, ovs.len()) {
                    n += 1;
                }
                i = next + 1;
            }
        }
        Ok(n)
    }

    /// First block index `>= from` that holds data (`want_data`) or is a hole.
    pub fn seek(&self, ino: Ino, from: u64, want_data: bool) -> Result<Option<u64>> {
        let root = self.image_data_root(ino)?;
        let mut i = from;
        loop {
            if want_data {
                // Candidates: the next image block, and the next dirty block of any overlay.
                let img = filetree::find(self.cache, &root, i, true)?;
                let ov = self
                    .overlays()
                    .filter_map(|o| o.files.get(&ino))
                    .filter_map(|fd| fd.blocks.range(i..).next().map(|(&k, _)| k))
                    .min();
                let cand = match (img, ov) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => return Ok(None),
                };
                if self.has_data(ino, cand, &root)? {
                    return Ok(Some(cand));
                }
                i = cand + 1;
            } else {
                if !self.has_data(ino, i, &root)? {
                    return Ok(Some(i));
                }
                i += 1;
            }
        }
    }

    /// The value of xattr `name`, if set.
    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = (ino, name.to_vec());
        for ov in self.overlays() {
            if let Some(v) = ov.xattrs.get(&k) {
                return Ok(v.clone());
            }
        }
        if ino >= self.image_next_ino {
            return Ok(None);
        }
        let key = Key {
            ino: ino.0,
            kind: items::kind::XATTR,
            off: self.name_hash(name),
        };
        let Some(v) = btree::get(self.cache, &self.meta, &key)? else {
            return Ok(None);
        };
        match items::decode_xattr_bucket(&v)?
            .into_iter()
            .find(|e| e.name == name)
        {
            None => Ok(None),
            Some(e) => Ok(Some(self.xattr_value(&e.value)?)),
        }
    }

    fn xattr_value(&self, v: &XattrValue) -> Result<Vec<u8>> {
        match v {
            XattrValue::Inline(b) => Ok(b.clone()),
            XattrValue::Blob { len, blocks } => {
                let mut out = Vec::with_capacity(*len as usize);
                for b in self.cache.read_many(blocks, Class::Meta)? {
                    out.extend_from_slice(&b[..]);
                }
                out.truncate(*len as usize);
                Ok(out)
            }
        }
    }

    /// Names of every xattr of an inode, in a stable order.
    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut names: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
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
        for item in btree::range(self.cache, &self.meta, lo, hi) {
            let (_, v) = item?;
            for e in items::decode_xattr_bucket(&v)? {
                names.insert(e.name, true);
            }
        }
        // Apply overlays bottom-up so the top layer wins.
        let ovs: Vec<&Overlay> = self.overlays().collect();
        for ov in ovs.into_iter().rev() {
            for ((_, name), v) in ov
                .xattrs
                .range((ino, Vec::new())..(Ino(ino.0 + 1), Vec::new()))
            {
                names.insert(name.clone(), v.is_some());
            }
        }
        Ok(names
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(n, _)| n)
            .collect())
    }
}
