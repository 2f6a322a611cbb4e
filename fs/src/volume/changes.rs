//! Changes: each one a log record applied to the active overlay under the state lock (see [`Inner::submit`]).

use super::*;

impl Volume {
    /// Creates a file, directory, device node, fifo or socket.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    ) -> Result<Attr> {
        if kind == FileKind::Symlink {
            return Err(FsError::Invalid("use symlink to create symlinks"));
        }
        self.make(parent, name, kind, perm, uid, gid, rdev, Vec::new())
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.make(
            parent,
            name,
            FileKind::Symlink,
            0o777,
            uid,
            gid,
            0,
            target.to_vec(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        target: Vec<u8>,
    ) -> Result<Attr> {
        apply::check_name(name)?;
        let mut ino = Ino(0);
        self.inner.submit(Need::Create, |st, now| {
            let layers = self.inner.layers(st);
            let p = layers.attrs(parent)?;
            // BSD group semantics for set-group-ID directories.
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
            ino = st.active.next_ino;
            Ok(vec![Record::Create(Create {
                parent,
                name: name.to_vec(),
                ino,
                kind,
                perm: perm & 0o7777,
                uid,
                gid,
                rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
                    rdev
                } else {
                    0
                },
                time: now,
                target: target.clone(),
            })])
        })?;
        self.getattr(View::Live, ino)
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.inner.submit(Need::Create, |_, now| {
            Ok(vec![Record::Link {
                ino,
                parent,
                name: name.to_vec(),
                time: now,
            }])
        })?;
        self.getattr(View::Live, ino)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        self.inner.submit(Need::Free, |st, now| {
            let victim = self.inner.layers(st).lookup(parent, name)?;
            let mut recs = vec![Record::Unlink {
                parent,
                name: name.to_vec(),
                dir,
                time: now,
            }];
            if let Some((ino, _)) = victim {
                recs.push(Record::Reclaim { ino });
            }
            Ok(recs)
        })
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.inner.submit(Need::Free, |st, now| {
            let victim = if flags & record::RENAME_EXCHANGE == 0 {
                self.inner.layers(st).lookup(new_parent, new_name)?
            } else {
                None
            };
            let mut recs = vec![Record::Rename {
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                flags,
                time: now,
            }];
            if let Some((ino, _)) = victim {
                recs.push(Record::Reclaim { ino });
            }
            Ok(recs)
        })
    }

    /// Changes attributes. A change of owner or group of a non-directory
    /// clears set-user-ID (and set-group-ID when group-executable), as Linux does.
    pub fn setattr(&self, ino: Ino, ch: &AttrChanges) -> Result<Attr> {
        let need = if ch.size.is_some() {
            Need::Free
        } else {
            Need::Meta
        };
        self.inner.submit(need, |st, now| {
            let a = self.inner.layers(st).attrs(ino)?;
            let mut perm = ch.perm;
            let owner_change =
                ch.uid.is_some_and(|u| u != a.uid) || ch.gid.is_some_and(|g| g != a.gid);
            if perm.is_none() && owner_change && a.kind != FileKind::Directory {
                let mut p = a.perm & !libc::S_ISUID;
                if p & libc::S_IXGRP != 0 {
                    p &= !libc::S_ISGID;
                }
                if p != a.perm {
                    perm = Some(p);
                }
            }
            let t = |s: Option<TimeSet>| s.map(|s| if let TimeSet::At(t) = s { t } else { now });
            Ok(vec![Record::SetAttr(SetAttr {
                ino,
                perm,
                uid: ch.uid,
                gid: ch.gid,
                size: ch.size,
                atime: t(ch.atime),
                mtime: t(ch.mtime),
                crtime: ch.crtime,
                time: now,
            })])
        })?;
        self.getattr(View::Live, ino)
    }

    /// Writes `data` at `offset`. `kill_suid` clears set-user-ID (a write by
    /// someone other than the owner). Returns the bytes written: fewer than
    /// asked when a large write fails after its first chunk (e.g. ENOSPC);
    /// an error means nothing was written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8], kill_suid: bool) -> Result<u32> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(FsError::FileTooBig {
                limit: MAX_FILE_SIZE,
            });
        }
        if data.is_empty() {
            // Writing nothing changes nothing (POSIX): no size, no times, no
            // record; only the errors a write would give.
            self.inner.check_usable()?;
            return match self.with_layers(View::Live, |l| l.attrs(ino))?.kind {
                FileKind::Regular => Ok(0),
                FileKind::Directory => Err(FsError::IsDir),
                _ => Err(FsError::Invalid("not a regular file")),
            };
        }
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_WRITE_CHUNK);
            let off = offset + done as u64;
            let chunk = &data[done..done + n];
            let blocks = (off % BLOCK_SIZE_U64 + n as u64).div_ceil(BLOCK_SIZE_U64);
            let r = self.inner.submit(Need::Blocks(blocks), |_, now| {
                Ok(vec![Record::Write(Write::split(
                    ino, off, chunk, now, kill_suid,
                ))])
            });
            match r {
                Ok(()) => done += n,
                Err(e) if done == 0 => return Err(e),
                // Earlier chunks are written: a short write, as POSIX has it
                // (an error here would say nothing changed).
                Err(_) => break,
            }
        }
        self.inner
            .stats
            .bytes_written
            .fetch_add(done as u64, Ordering::Relaxed);
        Ok(done as u32)
    }

    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: u32) -> Result<()> {
        self.inner.submit(Need::Free, |_, now| {
            Ok(vec![Record::Fallocate {
                ino,
                offset,
                len,
                mode,
                time: now,
            }])
        })
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let blocks = (value.len() as u64).div_ceil(BLOCK_SIZE_U64);
        self.inner.submit(Need::Blocks(blocks), |_, now| {
            Ok(vec![Record::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                flags,
                time: now,
            }])
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.inner.submit(Need::Free, |_, now| {
            Ok(vec![Record::RemoveXattr {
                ino,
                name: name.to_vec(),
                time: now,
            }])
        })
    }

    /// Notes an open handle: an unlinked file lives until its last handle closes.
    pub fn open_file(&self, ino: Ino) -> Result<()> {
        let mut st = self.inner.state.write();
        let a = self.inner.layers(&st).attrs(ino)?;
        if a.nlink == 0 && !st.open_files.contains_key(&ino) {
            return Err(FsError::NotFound);
        }
        *st.open_files.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    /// Drops an open handle; reclaims the inode if it was the last one of an unlinked file.
    pub fn release_file(&self, ino: Ino) -> Result<()> {
        let last = {
            let mut st = self.inner.state.write();
            match st.open_files.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    st.open_files.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if last && self.inner.writable.load(Ordering::SeqCst) {
            self.inner
                .submit(Need::Free, |_, _| Ok(vec![Record::Reclaim { ino }]))?;
        }
        Ok(())
    }

    /// Returns once every change made so far is durable in the log (and, with
    /// a replicator, at the peer as its mode demands).
    pub fn fsync(&self) -> Result<()> {
        if self.inner.read_only() {
            return Ok(());
        }
        let started = Instant::now();
        let r = self.fsync_inner();
        self.inner.stats.fsync_latency.observe(started.elapsed());
        r
    }

    fn fsync_inner(&self) -> Result<()> {
        let target = {
            let mut st = self.inner.state.write();
            self.inner.seal(&mut st)?;
            st.last_sealed
        };
        let Some(target) = target else {
            return Ok(());
        };
        self.inner.wait_durable(target)?;
        let rep = self.inner.replicator.read().clone();
        if let Some(r) = rep {
            r.wait_for_peer(target)?;
        }
        Ok(())
    }
}
