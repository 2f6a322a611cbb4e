//! Reads of the live tree or a snapshot: attributes, names, listings, data, xattrs, statfs.

use super::*;

impl Volume {
    pub(super) fn with_layers<T>(
        &self,
        view: View,
        f: impl FnOnce(&Layers<'_>) -> Result<T>,
    ) -> Result<T> {
        self.with_state_layers(view, |_, l| f(l))
    }

    /// Like `with_layers`, and hands `f` the state it holds locked: `f` must
    /// not lock it again, since a writer queued in between (the CP or log
    /// thread) would deadlock the second read lock.
    fn with_state_layers<T>(
        &self,
        view: View,
        f: impl FnOnce(&State, &Layers<'_>) -> Result<T>,
    ) -> Result<T> {
        let st = self.inner.state.read();
        match view {
            View::Live => {
                let layers = Layers {
                    top: Some(&st.active),
                    mid: st.frozen.as_deref(),
                    meta: st.image.meta,
                    image_next_ino: st.image.next_ino,
                    cache: &self.inner.cache,
                    key: &self.inner.key,
                };
                f(&st, &layers)
            }
            View::Snapshot(id) => {
                let snap = st
                    .snapshots
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, s)| s.meta)
                    .ok_or(FsError::NotFound)?;
                let layers = Layers {
                    top: None,
                    mid: None,
                    meta: snap,
                    // The snapshot is older than the image: this bound covers it.
                    image_next_ino: st.image.next_ino,
                    cache: &self.inner.cache,
                    key: &self.inner.key,
                };
                f(&st, &layers)
            }
        }
    }

    pub fn getattr(&self, view: View, ino: Ino) -> Result<Attr> {
        self.with_state_layers(view, |st, l| {
            let a = l.attrs(ino)?;
            if a.nlink == 0 && view == View::Live && !st.open_files.contains_key(&ino) {
                return Err(FsError::NotFound);
            }
            Ok(Attr::from(ino, &a))
        })
    }

    pub fn lookup(&self, view: View, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > items::NAME_MAX {
            return Err(FsError::NameTooLong {
                limit: items::NAME_MAX,
            });
        }
        self.with_layers(view, |l| {
            let p = l.attrs(parent)?;
            if p.kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            let ino = match name {
                b"." => parent,
                b".." => p.parent,
                _ => l.lookup(parent, name)?.ok_or(FsError::NotFound)?.0,
            };
            Ok(Attr::from(ino, &l.attrs(ino)?))
        })
    }

    /// Lists a directory after `cookie` (0 = from the start, including "."
    /// and ".."), calling `f` until it returns false.
    pub fn readdir(
        &self,
        view: View,
        dir: Ino,
        cookie: u64,
        f: &mut dyn FnMut(Listing) -> bool,
    ) -> Result<()> {
        self.with_layers(view, |l| {
            let d = l.attrs(dir)?;
            if d.kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            if cookie < 1
                && !f(Listing {
                    cookie: 1,
                    ino: dir,
                    kind: FileKind::Directory,
                    name: b".".to_vec(),
                })
            {
                return Ok(());
            }
            if cookie < 2
                && !f(Listing {
                    cookie: 2,
                    ino: d.parent,
                    kind: FileKind::Directory,
                    name: b"..".to_vec(),
                })
            {
                return Ok(());
            }
            l.readdir(dir, cookie.max(2), &mut |c, e| {
                f(Listing {
                    cookie: c,
                    ino: e.ino,
                    kind: e.kind,
                    name: e.name.clone(),
                })
            })
        })
    }

    /// Reads up to `size` bytes at `offset` (short at end of file).
    pub fn read(&self, view: View, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let got = self.read_to(view, ino, offset, size, &mut buf)?;
        buf.truncate(got.end);
        buf.drain(..got.start);
        Ok(buf)
    }

    /// Like [`Volume::read`], into `buf`, which it grows to the whole blocks
    /// the range touches and otherwise reuses as it is (no allocation and no
    /// zero fill for a caller that keeps one buffer); returns where in `buf`
    /// the bytes read are.
    pub fn read_to(
        &self,
        view: View,
        ino: Ino,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            match a.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("not a regular file")),
            }
            if offset >= a.size || size == 0 {
                return Ok(0..0);
            }
            let end = a.size.min(offset + u64::from(size));
            let first = offset / BLOCK_SIZE_U64;
            let last = (end - 1) / BLOCK_SIZE_U64;
            let blocks = ((last - first + 1) * BLOCK_SIZE_U64) as usize;
            if buf.len() < blocks {
                buf.resize(blocks, 0);
            }
            l.read_into(ino, first, &mut buf[..blocks])?;
            let skip = (offset - first * BLOCK_SIZE_U64) as usize;
            Ok(skip..skip + (end - offset) as usize)
        })
    }

    pub fn readlink(&self, view: View, ino: Ino) -> Result<Vec<u8>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            if a.kind != FileKind::Symlink {
                return Err(FsError::Invalid("not a symlink"));
            }
            if let Some(t) = &a.symlink {
                return Ok(t.to_vec());
            }
            let mut out = vec![0u8; (a.size.div_ceil(BLOCK_SIZE_U64) * BLOCK_SIZE_U64) as usize];
            l.read_into(ino, 0, &mut out)?;
            out.truncate(a.size as usize);
            Ok(out)
        })
    }

    pub fn getxattr(&self, view: View, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.with_layers(view, |l| {
            l.attrs(ino)?;
            l.xattr(ino, name)?.ok_or(FsError::NoAttr)
        })
    }

    pub fn listxattr(&self, view: View, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.with_layers(view, |l| {
            l.attrs(ino)?;
            l.xattr_names(ino)
        })
    }

    /// SEEK_DATA (`want_data`) or SEEK_HOLE from `offset`. `None` = ENXIO.
    pub fn seek(&self, view: View, ino: Ino, offset: u64, want_data: bool) -> Result<Option<u64>> {
        self.with_layers(view, |l| {
            let a = l.attrs(ino)?;
            if offset >= a.size {
                return Ok(None);
            }
            let bi = offset / BLOCK_SIZE_U64;
            let found = l.seek(ino, bi, want_data)?;
            Ok(match (want_data, found) {
                (true, Some(b)) if b * BLOCK_SIZE_U64 < a.size => {
                    Some((b * BLOCK_SIZE_U64).max(offset))
                }
                (true, _) => None,
                (false, Some(b)) => Some((b * BLOCK_SIZE_U64).max(offset).min(a.size)),
                (false, None) => Some(a.size),
            })
        })
    }

    /// Blocks kept only for the peer's CP count as free: a write that needs
    /// them has them (the hold is given up, and the peer catches up by a
    /// resync), so a volume whose peer is away shows the room its deletes
    /// made.
    pub fn statfs(&self) -> StatFs {
        let st = self.inner.state.read();
        let reserved = self.inner.reserved_blocks(&st);
        let space = &self.inner.space;
        let free = (space.free.load(Ordering::Relaxed) + space.peer_only.load(Ordering::Relaxed))
            .saturating_sub(reserved);
        let inodes = (st.image.inodes as i64
            + st.active.inode_delta
            + st.frozen.as_ref().map_or(0, |f| f.inode_delta))
        .max(0) as u64;
        StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: st.image.total_blocks - st.image.data_start(),
            blocks_free: free.saturating_sub(self.inner.meta_reserve),
            files: inodes + (1 << 32),
            files_free: 1 << 32,
            name_max: items::NAME_MAX as u32,
        }
    }
}
