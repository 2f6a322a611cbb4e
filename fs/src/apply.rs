//! File-system semantics: applying one log record to the active overlay.
//!
//! The same code runs for a live operation and for replay, so replay reaches
//! exactly the state the operation produced (DESIGN invariant 4). Every
//! record is checked completely before anything changes: an error leaves the
//! overlay as it was, and the caller logs only records that applied.

use std::sync::Arc;

use crate::btree::TreeRoot;
use crate::cache::{BlockCache, Class};
use crate::descriptor::{Base, BlockSource, Patch};
use crate::error::{FsError, Result};
use crate::filetree::{DirtyBlock, MAX_FILE_SIZE};
use crate::items::{self, InodeAttrs};
use crate::nvlog::record::*;
use crate::overlay::{FileDirty, Found, Layers, Overlay};
use crate::types::*;

/// Most hard links to one inode.
pub const LINK_MAX: u32 = 65000;

/// Estimated bytes of an item change, for the dirty bound.
const META_CHANGE_BYTES: u64 = 256;

/// The active overlay and what lies under it.
pub struct Applier<'a> {
    pub top: &'a mut Overlay,
    pub mid: Option<&'a Overlay>,
    pub meta: TreeRoot,
    /// See [`Layers::image_next_ino`].
    pub image_next_ino: Ino,
    pub cache: &'a BlockCache,
    pub key: &'a [u8; 32],
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Invalid("bad file name"));
    }
    if name.len() > items::NAME_MAX {
        return Err(FsError::NameTooLong {
            limit: items::NAME_MAX,
        });
    }
    Ok(())
}

/// `n - by` for a count the volume keeps exact (links, entries, blocks):
/// going below zero means the volume's own records disagree, which is
/// corruption, never a value to clamp.
fn less(ino: Ino, what: &str, n: u64, by: u64) -> Result<u64> {
    n.checked_sub(by).ok_or_else(|| {
        FsError::CorruptVolume(format!(
            "inode {}: {what} {n} would drop by {by} below zero; run `twinfs fsck`",
            ino.0
        ))
    })
}

/// One link less for inode `ino` (see [`less`]).
fn one_link_less(ino: Ino, nlink: u32) -> Result<u32> {
    less(ino, "link count", u64::from(nlink), 1).map(|n| n as u32)
}

fn block_range(offset: u64, len: u64) -> (u64, u64) {
    (
        offset / BLOCK_SIZE_U64,
        (offset + len).div_ceil(BLOCK_SIZE_U64),
    )
}

impl Applier<'_> {
    fn layers(&self) -> Layers<'_> {
        Layers {
            top: Some(&*self.top),
            mid: self.mid,
            meta: self.meta,
            image_next_ino: self.image_next_ino,
            cache: self.cache,
            key: self.key,
        }
    }

    fn attrs(&self, ino: Ino) -> Result<InodeAttrs> {
        self.layers().attrs(ino)
    }

    fn dir(&self, ino: Ino) -> Result<InodeAttrs> {
        let a = self.attrs(ino)?;
        if a.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        if a.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok(a)
    }

    fn put_inode(&mut self, ino: Ino, a: InodeAttrs) {
        self.top.inodes.insert(ino, Some(a));
        self.top.meta_bytes += META_CHANGE_BYTES;
    }

    fn put_dirent(&mut self, dir: Ino, name: &[u8], v: Option<(Ino, FileKind)>) {
        let h = items::name_hash(self.key, name);
        self.top.dirents.insert((dir, h, name.to_vec()), v);
        self.top.meta_bytes += META_CHANGE_BYTES;
    }

    fn set_orphan(&mut self, ino: Ino, orphan: bool) {
        self.top.orphans.insert(ino, orphan);
    }

    fn file(&mut self, ino: Ino) -> &mut FileDirty {
        self.top.files.entry(ino).or_default()
    }

    /// Applies one record. `pos` says where its bytes sit in the log.
    pub fn apply(&mut self, rec: &Record, pos: RecordPos) -> Result<()> {
        match rec {
            Record::Create(c) => self.create(c),
            Record::Link {
                ino,
                parent,
                name,
                time,
            } => self.link(*ino, *parent, name, *time),
            Record::Unlink {
                parent,
                name,
                dir,
                time,
            } => self.unlink(*parent, name, *dir, *time),
            Record::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                time,
            } => self.rename(*parent, name, *new_parent, new_name, *flags, *time),
            Record::SetAttr(s) => self.setattr(s),
            Record::Write(w) => self.write(w, pos),
            Record::Fallocate {
                ino,
                offset,
                len,
                mode,
                time,
            } => self.fallocate(*ino, *offset, *len, *mode, *time),
            Record::SetXattr {
                ino,
                name,
                value,
                flags,
                time,
            } => self.setxattr(*ino, name, value, *flags, *time),
            Record::RemoveXattr { ino, name, time } => self.removexattr(*ino, name, *time),
            Record::Reclaim { ino } => self.reclaim(*ino),
        }?;
        self.top.last_transfer = Some(pos.transfer);
        Ok(())
    }

    fn create(&mut self, c: &Create) -> Result<()> {
        check_name(&c.name)?;
        let mut parent = self.dir(c.parent)?;
        if self.layers().lookup(c.parent, &c.name)?.is_some() {
            return Err(FsError::Exists);
        }
        if c.ino != self.top.next_ino {
            return Err(FsError::CorruptVolume(format!(
                "create names inode {} but the next free inode is {}",
                c.ino.0, self.top.next_ino.0
            )));
        }
        if c.perm & !0o7777 != 0 {
            return Err(FsError::Invalid("mode has bits beyond 07777"));
        }
        let is_dir = c.kind == FileKind::Directory;
        if is_dir && parent.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let symlink = c.kind == FileKind::Symlink;
        if symlink && (c.target.is_empty() || c.target.len() > items::SYMLINK_MAX) {
            return Err(if c.target.is_empty() {
                FsError::Invalid("empty symlink target")
            } else {
                FsError::NameTooLong {
                    limit: items::SYMLINK_MAX,
                }
            });
        }
        if !symlink && !c.target.is_empty() {
            return Err(FsError::Invalid("only symlinks have a target"));
        }
        let inline = symlink && c.target.len() <= items::SYMLINK_INLINE_MAX;
        let attrs = InodeAttrs {
            kind: c.kind,
            perm: c.perm,
            uid: c.uid,
            gid: c.gid,
            nlink: if is_dir { 2 } else { 1 },
            size: if symlink { c.target.len() as u64 } else { 0 },
            rdev: c.rdev,
            parent: if is_dir { c.parent } else { Ino(0) },
            blocks: 0,
            atime: c.time,
            mtime: c.time,
            ctime: c.time,
            crtime: c.time,
            symlink: inline.then(|| c.target.clone().into_boxed_slice()),
        };
        parent.size += 1;
        parent.mtime = c.time;
        parent.ctime = c.time;
        if is_dir {
            parent.nlink += 1;
        }
        self.put_inode(c.parent, parent);
        self.put_inode(c.ino, attrs);
        self.put_dirent(c.parent, &c.name, Some((c.ino, c.kind)));
        self.top.next_ino = Ino(c.ino.0 + 1);
        self.top.inode_delta += 1;
        if symlink && !inline {
            // A long target is the symlink's file data.
            let mut a = self.attrs(c.ino)?;
            for (i, chunk) in c.target.chunks(BLOCK_SIZE).enumerate() {
                let mut block = [0u8; BLOCK_SIZE];
                block[..chunk.len()].copy_from_slice(chunk);
                self.file(c.ino).blocks.insert(
                    i as u64,
                    DirtyBlock {
                        data: Arc::new(block),
                        source: BlockSource::Opaque,
                        hash: None,
                    },
                );
                self.top.dirty_blocks += 1;
                a.blocks += 1;
            }
            self.put_inode(c.ino, a);
        }
        Ok(())
    }

    fn link(&mut self, ino: Ino, parent: Ino, name: &[u8], time: Timestamp) -> Result<()> {
        check_name(name)?;
        let mut a = self.attrs(ino)?;
        if a.kind == FileKind::Directory {
            return Err(FsError::NotPermitted);
        }
        if a.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if a.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let mut p = self.dir(parent)?;
        if self.layers().lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        a.nlink += 1;
        a.ctime = time;
        p.size += 1;
        p.mtime = time;
        p.ctime = time;
        let kind = a.kind;
        self.put_inode(ino, a);
        self.put_inode(parent, p);
        self.put_dirent(parent, name, Some((ino, kind)));
        Ok(())
    }

    /// Drops one link of `ino` (whose entry is being removed or replaced).
    fn drop_link(&mut self, ino: Ino, time: Timestamp) -> Result<()> {
        let mut a = self.attrs(ino)?;
        if a.kind == FileKind::Directory {
            a.nlink = 0;
        } else {
            a.nlink = one_link_less(ino, a.nlink)?;
        }
        a.ctime = time;
        if a.nlink == 0 {
            self.set_orphan(ino, true);
        }
        self.put_inode(ino, a);
        Ok(())
    }

    fn unlink(&mut self, parent: Ino, name: &[u8], dir: bool, time: Timestamp) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("cannot remove ."));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        let mut p = self.dir(parent)?;
        let (ino, kind) = self
            .layers()
            .lookup(parent, name)?
            .ok_or(FsError::NotFound)?;
        if dir {
            if kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            if !self.layers().dir_is_empty(ino)? {
                return Err(FsError::NotEmpty);
            }
            p.nlink = one_link_less(parent, p.nlink)?;
        } else if kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        p.size = less(parent, "entry count", p.size, 1)?;
        p.mtime = time;
        p.ctime = time;
        self.put_inode(parent, p);
        self.put_dirent(parent, name, None);
        self.drop_link(ino, time)
    }

    /// Whether `dir` is `ancestor` or lies below it.
    fn is_within(&self, mut dir: Ino, ancestor: Ino) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.attrs(dir)?.parent;
        }
        Err(FsError::CorruptVolume(
            "directory parent chain loops".into(),
        ))
    }

    fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        time: Timestamp,
    ) -> Result<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Invalid("bad rename flags"));
        }
        check_name(name)?;
        check_name(new_name)?;
        self.dir(parent)?;
        self.dir(new_parent)?;
        let (src, src_kind) = self
            .layers()
            .lookup(parent, name)?
            .ok_or(FsError::NotFound)?;
        let dst = self.layers().lookup(new_parent, new_name)?;
        let src_dir = src_kind == FileKind::Directory;
        if flags & RENAME_EXCHANGE != 0 {
            let (dst, dst_kind) = dst.ok_or(FsError::NotFound)?;
            return self.exchange(
                parent,
                name,
                (src, src_kind),
                new_parent,
                new_name,
                (dst, dst_kind),
                time,
            );
        }
        if let Some((d, dst_kind)) = dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if d == src {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            match (src_dir, dst_kind == FileKind::Directory) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.layers().dir_is_empty(d)? => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        if src_dir && self.is_within(new_parent, src)? {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        if src_dir
            && parent != new_parent
            && dst.is_none()
            && self.attrs(new_parent)?.nlink >= LINK_MAX
        {
            return Err(FsError::TooManyLinks);
        }
        // All checks passed: change.
        if let Some((d, dst_kind)) = dst {
            if dst_kind == FileKind::Directory {
                let mut np = self.attrs(new_parent)?;
                np.nlink = one_link_less(new_parent, np.nlink)?;
                self.put_inode(new_parent, np);
            }
            self.drop_link(d, time)?;
        }
        self.put_dirent(parent, name, None);
        self.put_dirent(new_parent, new_name, Some((src, src_kind)));
        let mut s = self.attrs(src)?;
        s.ctime = time;
        if src_dir {
            s.parent = new_parent;
        }
        self.put_inode(src, s);
        let mut p = self.attrs(parent)?;
        p.size = less(parent, "entry count", p.size, 1)?;
        if src_dir && parent != new_parent {
            p.nlink = one_link_less(parent, p.nlink)?;
        }
        p.mtime = time;
        p.ctime = time;
        self.put_inode(parent, p);
        let mut np = self.attrs(new_parent)?;
        if dst.is_none() {
            np.size += 1;
        }
        if src_dir && parent != new_parent {
            np.nlink += 1;
        }
        np.mtime = time;
        np.ctime = time;
        self.put_inode(new_parent, np);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        parent: Ino,
        name: &[u8],
        src: (Ino, FileKind),
        new_parent: Ino,
        new_name: &[u8],
        dst: (Ino, FileKind),
        time: Timestamp,
    ) -> Result<()> {
        if src.0 == dst.0 {
            return Ok(());
        }
        let src_dir = src.1 == FileKind::Directory;
        let dst_dir = dst.1 == FileKind::Directory;
        if src_dir && self.is_within(new_parent, src.0)?
            || dst_dir && self.is_within(parent, dst.0)?
        {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        self.put_dirent(parent, name, Some(dst));
        self.put_dirent(new_parent, new_name, Some(src));
        for (ino, is_dir, to) in [(src.0, src_dir, new_parent), (dst.0, dst_dir, parent)] {
            let mut a = self.attrs(ino)?;
            a.ctime = time;
            if is_dir {
                a.parent = to;
            }
            self.put_inode(ino, a);
        }
        if parent != new_parent && src_dir != dst_dir {
            let (gains, loses) = if src_dir {
                (new_parent, parent)
            } else {
                (parent, new_parent)
            };
            let mut g = self.attrs(gains)?;
            g.nlink += 1;
            self.put_inode(gains, g);
            let mut l = self.attrs(loses)?;
            l.nlink = one_link_less(loses, l.nlink)?;
            self.put_inode(loses, l);
        }
        for p in [parent, new_parent] {
            let mut a = self.attrs(p)?;
            a.mtime = time;
            a.ctime = time;
            self.put_inode(p, a);
        }
        Ok(())
    }

    fn setattr(&mut self, s: &SetAttr) -> Result<()> {
        let mut a = self.attrs(s.ino)?;
        if let Some(size) = s.size {
            match a.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("only regular files have a size to set")),
            }
            if size > MAX_FILE_SIZE {
                return Err(FsError::FileTooBig {
                    limit: MAX_FILE_SIZE,
                });
            }
        }
        if s.perm.is_some_and(|p| p & !0o7777 != 0) {
            return Err(FsError::Invalid("mode has bits beyond 07777"));
        }
        if let Some(size) = s.size {
            self.truncate(s.ino, &mut a, size)?;
            a.mtime = s.time;
        }
        if let Some(p) = s.perm {
            a.perm = p;
        }
        if let Some(u) = s.uid {
            a.uid = u;
        }
        if let Some(g) = s.gid {
            a.gid = g;
        }
        if let Some(t) = s.atime {
            a.atime = t;
        }
        if let Some(t) = s.mtime {
            a.mtime = t;
        }
        if let Some(t) = s.crtime {
            a.crtime = t;
        }
        a.ctime = s.time;
        self.put_inode(s.ino, a);
        Ok(())
    }

    /// Changes the size of a regular file; data past the new end is dropped.
    fn truncate(&mut self, ino: Ino, a: &mut InodeAttrs, size: u64) -> Result<()> {
        if size < a.size {
            let first_gone = size.div_ceil(BLOCK_SIZE_U64);
            let old_end = a.size.div_ceil(BLOCK_SIZE_U64);
            let removed = self.layers().count_data(ino, first_gone..old_end)?;
            self.drop_blocks(ino, first_gone..u64::MAX);
            a.blocks = less(ino, "block count", a.blocks, removed)?;
            let into = (size % BLOCK_SIZE_U64) as usize;
            if into != 0 {
                let len = BLOCK_SIZE - into;
                self.patch(
                    ino,
                    a,
                    size / BLOCK_SIZE_U64,
                    into,
                    None,
                    Patch::Zero {
                        offset: into as u16,
                        len: len as u16,
                    },
                    false,
                )?;
            }
        }
        a.size = size;
        Ok(())
    }

    /// Hides `range` of blocks from lower layers and drops dirty ones in it.
    fn drop_blocks(&mut self, ino: Ino, range: std::ops::Range<u64>) {
        let fd = self.file(ino);
        let gone: Vec<u64> = fd.blocks.range(range.clone()).map(|(&i, _)| i).collect();
        for i in &gone {
            fd.blocks.remove(i);
        }
        fd.hide.insert(range);
        self.top.dirty_blocks = self.top.dirty_blocks.saturating_sub(gone.len() as u64);
    }

    /// Lays `bytes` (or zeros when `None`) at byte `at` of block `index`.
    /// With `only_if_data`, a hole stays a hole (zeroing a hole is a no-op).
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        ino: Ino,
        a: &mut InodeAttrs,
        index: u64,
        at: usize,
        bytes: Option<&[u8]>,
        patch: Patch,
        allocate_hole: bool,
    ) -> Result<()> {
        let root = self.layers().image_data_root(ino)?;
        let found = self.layers().find_block(ino, index, &root)?;
        let (mut block, was_top) = match found {
            Found::Hole if !allocate_hole => return Ok(()),
            Found::Hole => {
                a.blocks += 1;
                (
                    DirtyBlock {
                        data: Arc::new(ZERO_BLOCK),
                        source: BlockSource::Patched {
                            base: Base::Zero,
                            patches: Vec::new(),
                        },
                        hash: None,
                    },
                    false,
                )
            }
            Found::Dirty { block, top: true } => (block, true),
            Found::Dirty { block, top: false } => (
                DirtyBlock {
                    data: block.data,
                    source: BlockSource::Patched {
                        base: Base::Prev,
                        patches: Vec::new(),
                    },
                    hash: None,
                },
                false,
            ),
            Found::Image(p) => (
                DirtyBlock {
                    data: self.cache.read(&p, Class::Data)?,
                    source: BlockSource::Patched {
                        base: Base::Prev,
                        patches: Vec::new(),
                    },
                    hash: None,
                },
                false,
            ),
        };
        let data = Arc::make_mut(&mut block.data);
        match bytes {
            Some(b) => data[at..at + b.len()].copy_from_slice(b),
            None => {
                let len = match patch {
                    Patch::Zero { len, .. } => len as usize,
                    Patch::Bytes { len, .. } => len as usize,
                };
                data[at..at + len].fill(0);
            }
        }
        block.source = block.source.with_patch(patch);
        block.hash = None;
        if !was_top {
            self.top.dirty_blocks += 1;
        }
        self.file(ino).blocks.insert(index, block);
        Ok(())
    }

    fn write(&mut self, w: &Write, pos: RecordPos) -> Result<()> {
        let mut a = self.attrs(w.ino)?;
        match a.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("not a regular file")),
        }
        let end = w.offset.checked_add(w.len()).ok_or(FsError::FileTooBig {
            limit: MAX_FILE_SIZE,
        })?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig {
                limit: MAX_FILE_SIZE,
            });
        }
        let mut off = w.offset;
        if !w.head.is_empty() {
            let at = (off % BLOCK_SIZE_U64) as usize;
            let patch = Patch::Bytes {
                offset: at as u16,
                len: w.head.len() as u16,
                transfer: pos.transfer,
                src_offset: pos.head_off,
            };
            self.patch(
                w.ino,
                &mut a,
                off / BLOCK_SIZE_U64,
                at,
                Some(&w.head),
                patch,
                true,
            )?;
            off += w.head.len() as u64;
        }
        if !w.blocks.is_empty() {
            let root = self.layers().image_data_root(w.ino)?;
            // No layer holds data past the end of a file: blocks there are holes.
            let first_past_eof = a.size.div_ceil(BLOCK_SIZE_U64);
            for (k, b) in w.blocks.iter().enumerate() {
                let index = off / BLOCK_SIZE_U64;
                let found = if index >= first_past_eof {
                    Found::Hole
                } else {
                    self.layers().find_block(w.ino, index, &root)?
                };
                match found {
                    Found::Hole => a.blocks += 1,
                    Found::Dirty { top: true, .. } => self.top.dirty_blocks -= 1,
                    _ => {}
                }
                self.top.dirty_blocks += 1;
                self.file(w.ino).blocks.insert(
                    index,
                    DirtyBlock {
                        data: b.clone(),
                        source: BlockSource::Whole {
                            transfer: pos.transfer,
                            block_no: pos.first_block + k as u32,
                        },
                        hash: w.hashes.get(k).copied(),
                    },
                );
                off += BLOCK_SIZE_U64;
            }
        }
        if !w.tail.is_empty() {
            let patch = Patch::Bytes {
                offset: 0,
                len: w.tail.len() as u16,
                transfer: pos.transfer,
                src_offset: pos.tail_off,
            };
            self.patch(
                w.ino,
                &mut a,
                off / BLOCK_SIZE_U64,
                0,
                Some(&w.tail),
                patch,
                true,
            )?;
        }
        a.size = a.size.max(end);
        a.mtime = w.time;
        a.ctime = w.time;
        if w.kill_suid {
            a.perm &= !libc::S_ISUID;
            if a.perm & libc::S_IXGRP != 0 {
                a.perm &= !libc::S_ISGID;
            }
        }
        self.put_inode(w.ino, a);
        Ok(())
    }

    fn fallocate(
        &mut self,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: u32,
        time: Timestamp,
    ) -> Result<()> {
        let mut a = self.attrs(ino)?;
        match a.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("not a regular file")),
        }
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes"));
        }
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig {
            limit: MAX_FILE_SIZE,
        })?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig {
                limit: MAX_FILE_SIZE,
            });
        }
        let keep = mode & FALLOC_KEEP_SIZE != 0;
        match mode & !FALLOC_KEEP_SIZE {
            // Preallocation cannot reserve space for copy-on-write overwrites;
            // like ZFS, accept it and set the size.
            0 => {
                if !keep && end > a.size {
                    a.size = end;
                    a.mtime = time;
                }
            }
            FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE => {
                if mode & FALLOC_PUNCH_HOLE != 0 && !keep {
                    return Err(FsError::NotSupported(
                        "punching a hole requires FALLOC_FL_KEEP_SIZE",
                    ));
                }
                let zero_end = end.min(a.size);
                if offset < zero_end {
                    self.zero_range(ino, &mut a, offset, zero_end)?;
                }
                if !keep && end > a.size {
                    a.size = end;
                }
                a.mtime = time;
            }
            _ => return Err(FsError::NotSupported("this fallocate mode")),
        }
        a.ctime = time;
        self.put_inode(ino, a);
        Ok(())
    }

    /// Makes bytes `start..end` read as zeros: whole blocks become holes,
    /// partial ones are zeroed.
    fn zero_range(&mut self, ino: Ino, a: &mut InodeAttrs, start: u64, end: u64) -> Result<()> {
        let first_whole = start.div_ceil(BLOCK_SIZE_U64);
        let end_whole = end / BLOCK_SIZE_U64;
        if first_whole < end_whole {
            let removed = self.layers().count_data(ino, first_whole..end_whole)?;
            self.drop_blocks(ino, first_whole..end_whole);
            a.blocks = less(ino, "block count", a.blocks, removed)?;
        }
        let (b0, b1) = block_range(start, end - start);
        for index in [b0, b1 - 1] {
            let bstart = index * BLOCK_SIZE_U64;
            let s = start.max(bstart);
            let e = end.min(bstart + BLOCK_SIZE_U64);
            if s < e && e - s < BLOCK_SIZE_U64 {
                let at = (s - bstart) as usize;
                let patch = Patch::Zero {
                    offset: at as u16,
                    len: (e - s) as u16,
                };
                self.patch(ino, a, index, at, None, patch, false)?;
            }
            if b0 == b1 - 1 {
                break;
            }
        }
        Ok(())
    }

    fn setxattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
        time: Timestamp,
    ) -> Result<()> {
        if name.is_empty() || name.contains(&0) {
            return Err(FsError::Invalid("bad attribute name"));
        }
        if name.len() > items::XATTR_NAME_MAX {
            return Err(FsError::NameTooLong {
                limit: items::XATTR_NAME_MAX,
            });
        }
        if value.len() > items::XATTR_VALUE_MAX {
            return Err(FsError::AttrTooBig {
                limit: items::XATTR_VALUE_MAX,
            });
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(FsError::Invalid("bad xattr flags"));
        }
        let mut a = self.attrs(ino)?;
        let exists = self.layers().xattr(ino, name)?.is_some();
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        a.ctime = time;
        self.put_inode(ino, a);
        self.top
            .xattrs
            .insert((ino, name.to_vec()), Some(value.to_vec()));
        self.top.meta_bytes += META_CHANGE_BYTES + value.len() as u64;
        Ok(())
    }

    fn removexattr(&mut self, ino: Ino, name: &[u8], time: Timestamp) -> Result<()> {
        let mut a = self.attrs(ino)?;
        if self.layers().xattr(ino, name)?.is_none() {
            return Err(FsError::NoAttr);
        }
        a.ctime = time;
        self.put_inode(ino, a);
        self.top.xattrs.insert((ino, name.to_vec()), None);
        self.top.meta_bytes += META_CHANGE_BYTES;
        Ok(())
    }

    fn reclaim(&mut self, ino: Ino) -> Result<()> {
        let a = self.attrs(ino)?;
        if a.nlink != 0 {
            return Err(FsError::CorruptVolume(format!(
                "reclaim of inode {} which still has {} links",
                ino.0, a.nlink
            )));
        }
        if let Some(fd) = self.top.files.remove(&ino) {
            self.top.dirty_blocks = self.top.dirty_blocks.saturating_sub(fd.blocks.len() as u64);
        }
        let gone: Vec<_> = self
            .top
            .xattrs
            .range((ino, Vec::new())..(Ino(ino.0 + 1), Vec::new()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.top.xattrs.remove(&k);
        }
        self.top.inodes.insert(ino, None);
        self.set_orphan(ino, false);
        self.top.inode_delta -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_counts_going_below_zero_are_corruption_not_clamped() {
        assert_eq!(less(Ino(5), "block count", 3, 3).unwrap(), 0);
        assert_eq!(one_link_less(Ino(5), 2).unwrap(), 1);
        let e = one_link_less(Ino(5), 0).unwrap_err();
        assert!(
            matches!(&e, FsError::CorruptVolume(m) if m.contains("inode 5") && m.contains("link count")),
            "{e}"
        );
        assert!(matches!(
            less(Ino(9), "entry count", 0, 1),
            Err(FsError::CorruptVolume(_))
        ));
    }
}
