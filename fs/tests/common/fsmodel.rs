//! A plain in-memory file system with the semantics the volume promises:
//! the reference the property tests compare the volume against.
//!
//! Deliberately naive: directories are `BTreeMap`s of names, file data is a
//! sparse map of whole blocks (a present block is an allocated one, so the
//! model also predicts `blocks512`, SEEK_DATA and SEEK_HOLE), and every check
//! an operation makes comes before any change, in the order the volume makes
//! them, so that the errno of a failing operation can be compared.
//!
//! Where the volume differs from Linux on purpose or in a way no FUSE request
//! can reach, the model follows the volume and says so in a comment marked
//! "VOLUME:".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use twinfs_fs::apply::LINK_MAX;
use twinfs_fs::filetree::MAX_FILE_SIZE;
use twinfs_fs::items;
use twinfs_fs::nvlog::record::*;
use twinfs_fs::volume::MAX_SNAPSHOTS;
use twinfs_fs::*;

pub const BS: u64 = BLOCK_SIZE_U64;

/// An errno.
pub type Errno = i32;
pub type MResult<T> = std::result::Result<T, Errno>;

/// One inode of the model.
#[derive(Clone, Debug)]
pub struct MInode {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Links of a non-directory (directories compute theirs).
    pub links: u32,
    pub rdev: u64,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// A symlink's target.
    pub target: Vec<u8>,
    /// Allocated blocks of a regular file, by index.
    pub data: BTreeMap<u64, Arc<Block>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A directory's entries.
    pub entries: BTreeMap<Vec<u8>, Ino>,
    /// A directory's parent (for "..").
    pub parent: Ino,
    /// A directory that was removed while open.
    pub removed: bool,
}

impl MInode {
    fn new(kind: FileKind, perm: u32, uid: u32, gid: u32, now: Timestamp) -> MInode {
        MInode {
            kind,
            perm,
            uid,
            gid,
            links: 1,
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            target: Vec::new(),
            data: BTreeMap::new(),
            xattrs: BTreeMap::new(),
            entries: BTreeMap::new(),
            parent: Ino(0),
            removed: false,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Block indices that hold data (not holes).
    pub fn allocated(&self) -> BTreeSet<u64> {
        match self.kind {
            FileKind::Regular => self.data.keys().copied().collect(),
            FileKind::Symlink if self.target.len() > items::SYMLINK_INLINE_MAX => {
                (0..(self.target.len() as u64).div_ceil(BS)).collect()
            }
            _ => BTreeSet::new(),
        }
    }

    pub fn is_allocated(&self, index: u64) -> bool {
        match self.kind {
            FileKind::Regular => self.data.contains_key(&index),
            FileKind::Symlink if self.target.len() > items::SYMLINK_INLINE_MAX => {
                index < (self.target.len() as u64).div_ceil(BS)
            }
            _ => false,
        }
    }

    /// Bytes `off..off+len` of a regular file (holes read as zeros; no EOF clamp).
    pub fn bytes(&self, off: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        if len == 0 {
            return out;
        }
        let first = off / BS;
        let last = (off + len - 1) / BS;
        for (&i, b) in self.data.range(first..=last) {
            let bstart = i * BS;
            let s = off.max(bstart);
            let e = (off + len).min(bstart + BS);
            out[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&b[(s - bstart) as usize..(e - bstart) as usize]);
        }
        out
    }
}

/// The tree of inodes: what a snapshot copies.
#[derive(Clone, Debug)]
pub struct Fs {
    pub inodes: BTreeMap<Ino, MInode>,
    pub next_ino: u64,
}

/// A snapshot of the model.
#[derive(Clone, Debug)]
pub struct MSnap {
    pub id: u64,
    pub created: Timestamp,
    pub fs: Fs,
}

/// The whole model: the tree, open handles, snapshots.
#[derive(Clone, Debug)]
pub struct Model {
    pub fs: Fs,
    pub open: BTreeMap<Ino, u32>,
    pub snapshots: BTreeMap<String, MSnap>,
    /// Inodes that existed once and are gone (to aim operations at).
    pub dead: Vec<Ino>,
}

fn check_name(name: &[u8]) -> MResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(libc::EINVAL);
    }
    if name.len() > items::NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

fn kill_suid(perm: u32) -> u32 {
    let mut p = perm & !libc::S_ISUID;
    if p & libc::S_IXGRP != 0 {
        p &= !libc::S_ISGID;
    }
    p
}

impl Fs {
    pub fn get(&self, ino: Ino) -> MResult<&MInode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn get_mut(&mut self, ino: Ino) -> &mut MInode {
        self.inodes.get_mut(&ino).expect("model inode exists")
    }

    /// Links of an inode as `stat` reports them.
    pub fn nlink(&self, ino: Ino) -> u32 {
        let i = &self.inodes[&ino];
        if !i.is_dir() {
            return i.links;
        }
        if i.removed {
            return 0;
        }
        let subdirs = i
            .entries
            .values()
            .filter(|c| self.inodes[*c].is_dir())
            .count() as u32;
        2 + subdirs
    }

    /// The attributes the volume should report for `ino`.
    pub fn attr(&self, ino: Ino) -> Attr {
        let i = &self.inodes[&ino];
        let blocks = match i.kind {
            FileKind::Regular => i.data.len() as u64,
            FileKind::Symlink if i.target.len() > items::SYMLINK_INLINE_MAX => {
                (i.target.len() as u64).div_ceil(BS)
            }
            _ => 0,
        };
        Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink: self.nlink(ino),
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            size: if i.is_dir() {
                i.entries.len() as u64
            } else {
                i.size
            },
            blocks512: blocks * (BS / 512),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
        }
    }

    /// Size as the volume keeps it (a directory's is its entry count).
    fn size_of(&self, ino: Ino) -> u64 {
        let i = &self.inodes[&ino];
        if i.is_dir() {
            i.entries.len() as u64
        } else {
            i.size
        }
    }

    /// A directory that can take or lose entries.
    fn live_dir(&self, ino: Ino) -> MResult<&MInode> {
        let d = self.get(ino)?;
        if !d.is_dir() {
            return Err(libc::ENOTDIR);
        }
        if d.removed {
            return Err(libc::ENOENT);
        }
        Ok(d)
    }

    fn is_within(&self, mut dir: Ino, ancestor: Ino) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            if dir == ROOT_INO {
                return false;
            }
            dir = self.inodes[&dir].parent;
        }
    }

    fn touch_dir(&mut self, dir: Ino, now: Timestamp) {
        let d = self.get_mut(dir);
        d.mtime = now;
        d.ctime = now;
    }

    /// Every inode reachable from the root, in walk order.
    pub fn reachable(&self) -> Vec<Ino> {
        let mut out = vec![ROOT_INO];
        let mut seen: BTreeSet<Ino> = [ROOT_INO].into();
        let mut i = 0;
        while i < out.len() {
            let d = &self.inodes[&out[i]];
            for c in d.entries.values() {
                if seen.insert(*c) {
                    out.push(*c);
                }
            }
            i += 1;
        }
        out
    }
}

impl Model {
    pub fn new(root_uid: u32, root_gid: u32, time: Timestamp) -> Model {
        let mut root = MInode::new(FileKind::Directory, 0o755, root_uid, root_gid, time);
        root.parent = ROOT_INO;
        Model {
            fs: Fs {
                inodes: [(ROOT_INO, root)].into(),
                next_ino: FIRST_USER_INO.0,
            },
            open: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            dead: Vec::new(),
        }
    }

    fn is_open(&self, ino: Ino) -> bool {
        self.open.contains_key(&ino)
    }

    /// Drops an inode nobody links or holds open.
    fn maybe_reclaim(&mut self, ino: Ino) {
        if self.fs.nlink(ino) == 0 && !self.is_open(ino) {
            self.fs.inodes.remove(&ino);
            self.dead.push(ino);
        }
    }

    /// What a crash or a remount does: handles are gone, and so are the
    /// unlinked files they kept alive.
    pub fn forget_open(&mut self) {
        let open: Vec<Ino> = std::mem::take(&mut self.open).into_keys().collect();
        for ino in open {
            if self.fs.inodes.contains_key(&ino) {
                self.maybe_reclaim(ino);
            }
        }
    }

    // ---- reads ----------------------------------------------------------

    pub fn getattr(&self, ino: Ino) -> MResult<Attr> {
        self.fs.get(ino)?;
        if self.fs.nlink(ino) == 0 && !self.is_open(ino) {
            return Err(libc::ENOENT);
        }
        Ok(self.fs.attr(ino))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> MResult<Attr> {
        if name.len() > items::NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        let p = self.fs.get(parent)?;
        if !p.is_dir() {
            return Err(libc::ENOTDIR);
        }
        let ino = match name {
            b"." => parent,
            b".." => p.parent,
            _ => *p.entries.get(name).ok_or(libc::ENOENT)?,
        };
        Ok(self.fs.attr(ino))
    }

    pub fn read(&self, ino: Ino, off: u64, len: u32) -> MResult<Vec<u8>> {
        let i = self.fs.get(ino)?;
        match i.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        if off >= i.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = i.size.min(off + u64::from(len));
        Ok(i.bytes(off, end - off))
    }

    pub fn readlink(&self, ino: Ino) -> MResult<Vec<u8>> {
        let i = self.fs.get(ino)?;
        if i.kind != FileKind::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(i.target.clone())
    }

    pub fn readdir_check(&self, ino: Ino) -> MResult<()> {
        if !self.fs.get(ino)?.is_dir() {
            return Err(libc::ENOTDIR);
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> MResult<Vec<u8>> {
        self.fs
            .get(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(libc::ENODATA)
    }

    pub fn listxattr(&self, ino: Ino) -> MResult<Vec<Vec<u8>>> {
        Ok(self.fs.get(ino)?.xattrs.keys().cloned().collect())
    }

    pub fn seek(&self, ino: Ino, off: u64, want_data: bool) -> MResult<Option<u64>> {
        let i = self.fs.get(ino)?;
        Ok(seek_in(i, self.fs.size_of(ino), off, want_data))
    }

    // ---- changes ----------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        target: &[u8],
        now: Timestamp,
    ) -> MResult<Attr> {
        check_name(name)?;
        let p = self.fs.get(parent)?;
        // Set-group-ID directories pass on their group (and the bit, to subdirectories).
        let (gid, perm) = if p.perm & libc::S_ISGID != 0 {
            let perm = if kind == FileKind::Directory {
                perm | libc::S_ISGID
            } else {
                perm
            };
            (p.gid, perm)
        } else {
            (gid, perm)
        };
        let p = self.fs.live_dir(parent)?;
        if p.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        if kind == FileKind::Directory && self.fs.nlink(parent) >= LINK_MAX {
            return Err(libc::EMLINK);
        }
        if kind == FileKind::Symlink {
            // VOLUME: an empty target is EINVAL (Linux says ENOENT, but the
            // kernel refuses it before any file system sees it).
            if target.is_empty() {
                return Err(libc::EINVAL);
            }
            if target.len() > items::SYMLINK_MAX {
                return Err(libc::ENAMETOOLONG);
            }
        }
        let ino = Ino(self.fs.next_ino);
        self.fs.next_ino += 1;
        let mut i = MInode::new(kind, perm & 0o7777, uid, gid, now);
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            i.rdev = rdev;
        }
        if kind == FileKind::Directory {
            i.parent = parent;
        }
        if kind == FileKind::Symlink {
            i.target = target.to_vec();
            i.size = target.len() as u64;
        }
        self.fs.inodes.insert(ino, i);
        self.fs.get_mut(parent).entries.insert(name.to_vec(), ino);
        self.fs.touch_dir(parent, now);
        Ok(self.fs.attr(ino))
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8], now: Timestamp) -> MResult<Attr> {
        check_name(name)?;
        let i = self.fs.get(ino)?;
        if i.is_dir() {
            return Err(libc::EPERM);
        }
        if i.links == 0 {
            return Err(libc::ENOENT);
        }
        if i.links >= LINK_MAX {
            return Err(libc::EMLINK);
        }
        if self.fs.live_dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let i = self.fs.get_mut(ino);
        i.links += 1;
        i.ctime = now;
        self.fs.get_mut(parent).entries.insert(name.to_vec(), ino);
        self.fs.touch_dir(parent, now);
        self.getattr(ino)
    }

    /// Drops the link of `victim` whose entry is being removed or replaced.
    fn drop_link(&mut self, victim: Ino, now: Timestamp) {
        let v = self.fs.get_mut(victim);
        if v.is_dir() {
            v.removed = true;
            v.entries.clear();
        } else {
            v.links -= 1;
        }
        v.ctime = now;
    }

    pub fn remove(&mut self, parent: Ino, name: &[u8], dir: bool, now: Timestamp) -> MResult<()> {
        if name == b"." {
            return Err(libc::EINVAL);
        }
        if name == b".." {
            return Err(libc::ENOTEMPTY);
        }
        check_name(name)?;
        let p = self.fs.live_dir(parent)?;
        let victim = *p.entries.get(name).ok_or(libc::ENOENT)?;
        let v = &self.fs.inodes[&victim];
        if dir {
            if !v.is_dir() {
                return Err(libc::ENOTDIR);
            }
            if !v.entries.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
        } else if v.is_dir() {
            return Err(libc::EISDIR);
        }
        self.fs.get_mut(parent).entries.remove(name);
        self.fs.touch_dir(parent, now);
        self.drop_link(victim, now);
        self.maybe_reclaim(victim);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        now: Timestamp,
    ) -> MResult<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(libc::EINVAL);
        }
        check_name(name)?;
        check_name(new_name)?;
        self.fs.live_dir(parent)?;
        self.fs.live_dir(new_parent)?;
        let src = *self.fs.inodes[&parent]
            .entries
            .get(name)
            .ok_or(libc::ENOENT)?;
        let dst = self.fs.inodes[&new_parent].entries.get(new_name).copied();
        let src_dir = self.fs.inodes[&src].is_dir();
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(libc::ENOENT)?;
            return self.exchange(parent, name, src, new_parent, new_name, dst, now);
        }
        if let Some(d) = dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            if d == src {
                return Ok(());
            }
            let di = &self.fs.inodes[&d];
            // VOLUME: a type mismatch is reported before "into its own
            // subtree"; Linux checks the subtree first, but the kernel does
            // that check itself before asking a FUSE file system.
            match (src_dir, di.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !di.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src_dir && self.fs.is_within(new_parent, src) {
            return Err(libc::EINVAL);
        }
        if src_dir && parent != new_parent && dst.is_none() && self.fs.nlink(new_parent) >= LINK_MAX
        {
            return Err(libc::EMLINK);
        }
        if let Some(d) = dst {
            self.drop_link(d, now);
        }
        self.fs.get_mut(parent).entries.remove(name);
        self.fs
            .get_mut(new_parent)
            .entries
            .insert(new_name.to_vec(), src);
        let s = self.fs.get_mut(src);
        s.ctime = now;
        if src_dir {
            s.parent = new_parent;
        }
        self.fs.touch_dir(parent, now);
        self.fs.touch_dir(new_parent, now);
        if let Some(d) = dst {
            self.maybe_reclaim(d);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        parent: Ino,
        name: &[u8],
        src: Ino,
        new_parent: Ino,
        new_name: &[u8],
        dst: Ino,
        now: Timestamp,
    ) -> MResult<()> {
        if src == dst {
            return Ok(());
        }
        let src_dir = self.fs.inodes[&src].is_dir();
        let dst_dir = self.fs.inodes[&dst].is_dir();
        if src_dir && self.fs.is_within(new_parent, src)
            || dst_dir && self.fs.is_within(parent, dst)
        {
            return Err(libc::EINVAL);
        }
        self.fs.get_mut(parent).entries.insert(name.to_vec(), dst);
        self.fs
            .get_mut(new_parent)
            .entries
            .insert(new_name.to_vec(), src);
        for (ino, to) in [(src, new_parent), (dst, parent)] {
            let i = self.fs.get_mut(ino);
            i.ctime = now;
            if i.is_dir() {
                i.parent = to;
            }
        }
        self.fs.touch_dir(parent, now);
        self.fs.touch_dir(new_parent, now);
        Ok(())
    }

    pub fn setattr(&mut self, ino: Ino, ch: &AttrChanges, now: Timestamp) -> MResult<Attr> {
        let i = self.fs.get(ino)?;
        let mut perm = ch.perm;
        let owner_change = ch.uid.is_some_and(|u| u != i.uid) || ch.gid.is_some_and(|g| g != i.gid);
        if perm.is_none() && owner_change && !i.is_dir() {
            perm = Some(kill_suid(i.perm));
        }
        if ch.size.is_some() {
            match i.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(libc::EISDIR),
                _ => return Err(libc::EINVAL),
            }
        }
        if ch.size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return Err(libc::EFBIG);
        }
        if perm.is_some_and(|p| p & !0o7777 != 0) {
            return Err(libc::EINVAL);
        }
        let t = |s: Option<TimeSet>| {
            s.map(|s| match s {
                TimeSet::At(t) => t,
                TimeSet::Now => now,
            })
        };
        let i = self.fs.get_mut(ino);
        if let Some(size) = ch.size {
            truncate(i, size);
            i.mtime = now;
        }
        if let Some(p) = perm {
            i.perm = p;
        }
        if let Some(u) = ch.uid {
            i.uid = u;
        }
        if let Some(g) = ch.gid {
            i.gid = g;
        }
        if let Some(a) = t(ch.atime) {
            i.atime = a;
        }
        if let Some(m) = t(ch.mtime) {
            i.mtime = m;
        }
        if let Some(c) = ch.crtime {
            i.crtime = c;
        }
        i.ctime = now;
        self.getattr(ino)
    }

    pub fn write(
        &mut self,
        ino: Ino,
        off: u64,
        data: &[u8],
        kill: bool,
        now: Timestamp,
    ) -> MResult<u32> {
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(libc::EFBIG);
        }
        let i = self.fs.get(ino)?;
        match i.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        if data.is_empty() {
            // POSIX: writing nothing has no other result.
            return Ok(0);
        }
        let i = self.fs.get_mut(ino);
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let index = pos / BS;
            let at = (pos % BS) as usize;
            let n = ((BS - at as u64).min(end - pos)) as usize;
            let block = i.data.entry(index).or_insert_with(|| Arc::new(ZERO_BLOCK));
            let src = &data[(pos - off) as usize..(pos - off) as usize + n];
            Arc::make_mut(block)[at..at + n].copy_from_slice(src);
            pos += n as u64;
        }
        i.size = i.size.max(end);
        i.mtime = now;
        i.ctime = now;
        if kill {
            i.perm = kill_suid(i.perm);
        }
        Ok(data.len() as u32)
    }

    pub fn fallocate(
        &mut self,
        ino: Ino,
        off: u64,
        len: u64,
        mode: u32,
        now: Timestamp,
    ) -> MResult<()> {
        let i = self.fs.get(ino)?;
        match i.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let keep = mode & FALLOC_KEEP_SIZE != 0;
        let i = self.fs.get_mut(ino);
        match mode & !FALLOC_KEEP_SIZE {
            // VOLUME: preallocation reserves nothing on a copy-on-write
            // volume; it only extends the size (and then the mtime).
            0 => {
                if !keep && end > i.size {
                    i.size = end;
                    i.mtime = now;
                }
            }
            FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE => {
                if mode & FALLOC_PUNCH_HOLE != 0 && !keep {
                    return Err(libc::EOPNOTSUPP);
                }
                let zero_end = end.min(i.size);
                if off < zero_end {
                    zero_range(i, off, zero_end);
                }
                if !keep && end > i.size {
                    i.size = end;
                }
                i.mtime = now;
            }
            _ => return Err(libc::EOPNOTSUPP),
        }
        i.ctime = now;
        Ok(())
    }

    pub fn setxattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
        now: Timestamp,
    ) -> MResult<()> {
        if name.is_empty() || name.contains(&0) {
            return Err(libc::EINVAL);
        }
        if name.len() > items::XATTR_NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        if value.len() > items::XATTR_VALUE_MAX {
            return Err(libc::E2BIG);
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(libc::EINVAL);
        }
        let exists = self.fs.get(ino)?.xattrs.contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return Err(libc::EEXIST);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(libc::ENODATA);
        }
        let i = self.fs.get_mut(ino);
        i.xattrs.insert(name.to_vec(), value.to_vec());
        i.ctime = now;
        Ok(())
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8], now: Timestamp) -> MResult<()> {
        if !self.fs.get(ino)?.xattrs.contains_key(name) {
            return Err(libc::ENODATA);
        }
        let i = self.fs.get_mut(ino);
        i.xattrs.remove(name);
        i.ctime = now;
        Ok(())
    }

    pub fn open_file(&mut self, ino: Ino) -> MResult<()> {
        self.fs.get(ino)?;
        if self.fs.nlink(ino) == 0 && !self.is_open(ino) {
            return Err(libc::ENOENT);
        }
        *self.open.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    pub fn release_file(&mut self, ino: Ino) -> MResult<()> {
        match self.open.get_mut(&ino) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.open.remove(&ino);
                if self.fs.inodes.contains_key(&ino) {
                    self.maybe_reclaim(ino);
                }
            }
            None => {}
        }
        Ok(())
    }

    pub fn snapshot_create(&mut self, name: &str, now: Timestamp) -> MResult<u64> {
        if name.is_empty()
            || name.len() > items::SNAPSHOT_NAME_MAX
            || name.contains('/')
            || name == "."
            || name == ".."
        {
            return Err(libc::EINVAL);
        }
        if self.snapshots.contains_key(name) {
            return Err(libc::EEXIST);
        }
        if self.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(libc::ENOSPC);
        }
        let id = self.snapshots.values().map(|s| s.id).max().unwrap_or(0) + 1;
        self.snapshots.insert(
            name.to_string(),
            MSnap {
                id,
                created: now,
                fs: self.fs.clone(),
            },
        );
        Ok(id)
    }

    pub fn snapshot_delete(&mut self, name: &str) -> MResult<()> {
        self.snapshots.remove(name).map(|_| ()).ok_or(libc::ENOENT)
    }
}

/// Truncates (or extends) a regular file: blocks past the end go, the
/// partial last block keeps zeros past the end (a hole stays a hole).
fn truncate(i: &mut MInode, size: u64) {
    if size < i.size {
        let first_gone = size.div_ceil(BS);
        i.data.retain(|&k, _| k < first_gone);
        let into = (size % BS) as usize;
        if into != 0 {
            if let Some(b) = i.data.get_mut(&(size / BS)) {
                Arc::make_mut(b)[into..].fill(0);
            }
        }
    }
    i.size = size;
}

/// Makes `start..end` read as zeros: whole blocks become holes, partial
/// ones are zeroed where they hold data.
fn zero_range(i: &mut MInode, start: u64, end: u64) {
    let first_whole = start.div_ceil(BS);
    let end_whole = end / BS;
    if first_whole < end_whole {
        let gone: Vec<u64> = i
            .data
            .range(first_whole..end_whole)
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            i.data.remove(&k);
        }
    }
    let mut pos = start;
    while pos < end {
        let index = pos / BS;
        let bstart = index * BS;
        let e = end.min(bstart + BS);
        if e - pos < BS {
            if let Some(b) = i.data.get_mut(&index) {
                Arc::make_mut(b)[(pos - bstart) as usize..(e - bstart) as usize].fill(0);
            }
        }
        pos = e;
    }
}

/// SEEK_DATA / SEEK_HOLE as the volume answers them (`None` = ENXIO).
pub fn seek_in(i: &MInode, size: u64, off: u64, want_data: bool) -> Option<u64> {
    if off >= size {
        return None;
    }
    let bi = off / BS;
    if want_data {
        let next = match i.kind {
            FileKind::Regular => i.data.range(bi..).next().map(|(&k, _)| k),
            _ => i.allocated().range(bi..).next().copied(),
        };
        match next {
            Some(b) if b * BS < size => Some((b * BS).max(off)),
            _ => None,
        }
    } else {
        let mut b = bi;
        while i.is_allocated(b) {
            b += 1;
        }
        Some((b * BS).max(off).min(size))
    }
}
