//! The namespace checks of the current image, once every item has been
//! seen: entries against inodes, link counts, directory sizes and parents,
//! orphans, and that every inode is reachable from the root.

use super::report::{Kind, Severity};
use crate::types::*;

/// What the namespace checks need of an inode record.
#[derive(Clone, Copy, Debug)]
pub(super) struct InodeInfo {
    pub(super) kind: FileKind,
    pub(super) nlink: u32,
    pub(super) parent: u64,
    pub(super) size: u64,
}

/// One directory entry.
pub(super) struct Entry {
    pub(super) dir: u64,
    pub(super) ino: u64,
    pub(super) kind: FileKind,
    pub(super) name: Box<[u8]>,
}

/// A namespace problem: severity, kind, inode, text.
pub(super) type Finding = (Severity, Kind, Option<Ino>, String);

/// Most unreachable inodes named one by one; the rest are counted.
const MAX_UNREACHABLE_LISTED: usize = 100;

/// The items of the current image, gathered during the walk.
#[derive(Default)]
pub(super) struct Namespace {
    /// Inode records, in key order (so sorted by inode number).
    inodes: Vec<(u64, InodeInfo)>,
    /// Inodes whose record exists but does not decode (already reported).
    damaged: Vec<u64>,
    entries: Vec<Entry>,
    orphans: Vec<u64>,
}

pub(super) fn name(n: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(n))
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "regular file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "FIFO",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "character device",
        FileKind::BlockDevice => "block device",
    }
}

impl Namespace {
    pub(super) fn add_inode(&mut self, ino: u64, info: InodeInfo) {
        self.inodes.push((ino, info));
    }

    pub(super) fn add_damaged(&mut self, ino: u64) {
        self.damaged.push(ino);
    }

    pub(super) fn add_entry(&mut self, e: Entry) {
        self.entries.push(e);
    }

    pub(super) fn add_orphan(&mut self, ino: u64) {
        self.orphans.push(ino);
    }

    /// The most recently added inode, if it is `ino` (items of an inode
    /// follow its record in key order).
    pub(super) fn last_inode(&self, ino: u64) -> Option<InodeInfo> {
        self.inodes
            .last()
            .filter(|(i, _)| *i == ino)
            .map(|(_, info)| *info)
    }

    pub(super) fn entries(&self) -> u64 {
        self.entries.len() as u64
    }

    pub(super) fn orphans(&self) -> u64 {
        self.orphans.len() as u64
    }

    fn find(&self, ino: u64) -> Option<usize> {
        self.inodes.binary_search_by_key(&ino, |(i, _)| *i).ok()
    }

    /// Runs every cross-check. `meta_damaged` says whether some metadata
    /// could not be read (then missing inodes may just be unreadable).
    pub(super) fn check(mut self, meta_damaged: bool, out: &mut dyn FnMut(Finding)) {
        self.inodes.sort_by_key(|(i, _)| *i);
        self.damaged.sort_unstable();
        self.orphans.sort_unstable();
        self.orphans.dedup();
        self.entries.sort_by_key(|e| e.dir);
        self.root(meta_damaged, out);
        let named = self.targets(meta_damaged, out);
        self.directories(out);
        self.unnamed(&named, out);
        self.orphan_items(out);
        self.reachability(&named, out);
    }

    fn root(&self, meta_damaged: bool, out: &mut dyn FnMut(Finding)) {
        let err = Severity::Error;
        match self.find(ROOT_INO.0).map(|i| self.inodes[i].1) {
            None if self.damaged.binary_search(&ROOT_INO.0).is_ok() => {}
            None => out((
                err,
                Kind::Directory,
                Some(ROOT_INO),
                format!(
                    "the root directory (inode 1) has no inode record{}",
                    if meta_damaged {
                        " (it may be in an unreadable node reported above)"
                    } else {
                        ""
                    }
                ),
            )),
            Some(r) if r.kind != FileKind::Directory => out((
                err,
                Kind::Directory,
                Some(ROOT_INO),
                format!(
                    "the root inode 1 is a {}, not a directory",
                    kind_name(r.kind)
                ),
            )),
            Some(r) if r.parent != ROOT_INO.0 => out((
                err,
                Kind::Directory,
                Some(ROOT_INO),
                format!(
                    "the root directory's parent field says {}, it must name the root itself",
                    r.parent
                ),
            )),
            Some(_) => {}
        }
    }

    /// Checks every entry against the inode it names; returns, per inode
    /// (aligned with `self.inodes`), how many entries name it.
    fn targets(&self, meta_damaged: bool, out: &mut dyn FnMut(Finding)) -> Vec<u32> {
        let err = Severity::Error;
        let mut named = vec![0u32; self.inodes.len()];
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| self.entries[i].ino);
        let mut missing = Vec::new();
        for group in order.chunk_by(|&a, &b| self.entries[a].ino == self.entries[b].ino) {
            let first = &self.entries[group[0]];
            let ino = Ino(first.ino);
            let Some(idx) = self.find(first.ino) else {
                if self.damaged.binary_search(&first.ino).is_err() {
                    missing.extend(group.iter().copied());
                }
                continue;
            };
            let info = self.inodes[idx].1;
            named[idx] = group.len() as u32;
            for &e in group {
                let e = &self.entries[e];
                if e.kind != info.kind {
                    out((
                        err,
                        Kind::Directory,
                        Some(ino),
                        format!(
                            "entry {} in directory {} says inode {} is a {}, but its record says {}",
                            name(&e.name),
                            e.dir,
                            e.ino,
                            kind_name(e.kind),
                            kind_name(info.kind)
                        ),
                    ));
                }
            }
            if info.kind != FileKind::Directory {
                if info.nlink as usize != group.len() {
                    out((
                        err,
                        Kind::LinkCount,
                        Some(ino),
                        format!(
                            "inode {} ({}) has link count {} but {} directory entries name it",
                            ino,
                            kind_name(info.kind),
                            info.nlink,
                            group.len()
                        ),
                    ));
                }
                continue;
            }
            if ino == ROOT_INO {
                out((
                    err,
                    Kind::Directory,
                    Some(ino),
                    format!(
                        "entry {} in directory {} names the root directory",
                        name(&first.name),
                        first.dir
                    ),
                ));
            } else if group.len() > 1 {
                let places: Vec<String> = group
                    .iter()
                    .take(4)
                    .map(|&e| {
                        let e = &self.entries[e];
                        format!("{} in {}", name(&e.name), e.dir)
                    })
                    .collect();
                out((
                    err,
                    Kind::Directory,
                    Some(ino),
                    format!(
                        "directory {} is named by {} entries ({}); a directory has exactly one",
                        ino,
                        group.len(),
                        places.join(", ")
                    ),
                ));
            } else if info.nlink == 0 {
                out((
                    err,
                    Kind::LinkCount,
                    Some(ino),
                    format!(
                        "directory {} has link count 0 but entry {} in directory {} names it",
                        ino,
                        name(&first.name),
                        first.dir
                    ),
                ));
            } else if info.parent != first.dir {
                out((
                    err,
                    Kind::Directory,
                    Some(ino),
                    format!(
                        "directory {}'s parent field says {}, but its entry {} is in directory {}",
                        ino,
                        info.parent,
                        name(&first.name),
                        first.dir
                    ),
                ));
            }
        }
        self.missing_targets(missing, meta_damaged, out);
        named
    }

    /// Entries naming inodes without a record, one problem per directory.
    fn missing_targets(
        &self,
        mut missing: Vec<usize>,
        meta_damaged: bool,
        out: &mut dyn FnMut(Finding),
    ) {
        missing.sort_by_key(|&i| (self.entries[i].dir, self.entries[i].ino));
        for group in missing.chunk_by(|&a, &b| self.entries[a].dir == self.entries[b].dir) {
            let dir = self.entries[group[0]].dir;
            let shown: Vec<String> = group
                .iter()
                .take(5)
                .map(|&i| format!("{} -> {}", name(&self.entries[i].name), self.entries[i].ino))
                .collect();
            let more = if group.len() > shown.len() {
                ", ..."
            } else {
                ""
            };
            out((
                Severity::Error,
                Kind::Directory,
                Some(Ino(dir)),
                format!(
                    "{} entries in directory {dir} name inodes that do not exist{} ({}{more})",
                    group.len(),
                    if meta_damaged {
                        " (or whose records are in unreadable nodes reported above)"
                    } else {
                        ""
                    },
                    shown.join(", ")
                ),
            ));
        }
    }

    /// Sizes and link counts of directories from the entries they hold.
    fn directories(&self, out: &mut dyn FnMut(Finding)) {
        let err = Severity::Error;
        let mut next = 0;
        for &(ino, info) in &self.inodes {
            while next < self.entries.len() && self.entries[next].dir < ino {
                next += 1;
            }
            let start = next;
            while next < self.entries.len() && self.entries[next].dir == ino {
                next += 1;
            }
            if info.kind != FileKind::Directory {
                continue;
            }
            let held = &self.entries[start..next];
            let subdirs = held
                .iter()
                .filter(|e| {
                    self.find(e.ino).map_or(e.kind == FileKind::Directory, |i| {
                        self.inodes[i].1.kind == FileKind::Directory
                    })
                })
                .count() as u64;
            if info.size != held.len() as u64 {
                out((
                    err,
                    Kind::Directory,
                    Some(Ino(ino)),
                    format!(
                        "directory {} has size {} but holds {} entries",
                        ino,
                        info.size,
                        held.len()
                    ),
                ));
            }
            if info.nlink == 0 {
                continue;
            }
            if u64::from(info.nlink) != 2 + subdirs {
                out((
                    err,
                    Kind::LinkCount,
                    Some(Ino(ino)),
                    format!(
                        "directory {} has link count {} but holds {} subdirectories (expected {})",
                        ino,
                        info.nlink,
                        subdirs,
                        2 + subdirs
                    ),
                ));
            }
        }
    }

    /// Inodes no entry names must be orphans (unlinked, kept for an open handle).
    fn unnamed(&self, named: &[u32], out: &mut dyn FnMut(Finding)) {
        for (idx, &(ino, info)) in self.inodes.iter().enumerate() {
            if named[idx] > 0 || ino == ROOT_INO.0 {
                continue;
            }
            let orphan = self.orphans.binary_search(&ino).is_ok();
            let what = if info.nlink > 0 {
                format!(
                    "inode {} ({}) has link count {} but no directory entry names it: it is unreachable",
                    ino,
                    kind_name(info.kind),
                    info.nlink
                )
            } else if !orphan {
                format!(
                    "inode {} ({}) has no links and no orphan item: nothing will ever reclaim it",
                    ino,
                    kind_name(info.kind)
                )
            } else {
                continue;
            };
            out((Severity::Error, Kind::Unreachable, Some(Ino(ino)), what));
        }
    }

    fn orphan_items(&self, out: &mut dyn FnMut(Finding)) {
        for &ino in &self.orphans {
            let what = match self.find(ino).map(|i| self.inodes[i].1) {
                None if self.damaged.binary_search(&ino).is_ok() => continue,
                None => format!("orphan item for inode {ino}, which does not exist"),
                Some(info) if info.nlink > 0 => format!(
                    "orphan item for inode {ino}, which still has {} links",
                    info.nlink
                ),
                Some(_) => continue,
            };
            out((Severity::Error, Kind::Orphan, Some(Ino(ino)), what));
        }
    }

    /// Every named inode must be reachable from the root through directories.
    fn reachability(&self, named: &[u32], out: &mut dyn FnMut(Finding)) {
        let Some(root) = self.find(ROOT_INO.0) else {
            return;
        };
        let mut reached = vec![false; self.inodes.len()];
        reached[root] = true;
        let mut todo = vec![ROOT_INO.0];
        while let Some(dir) = todo.pop() {
            let start = self.entries.partition_point(|e| e.dir < dir);
            for e in self.entries[start..].iter().take_while(|e| e.dir == dir) {
                if let Some(i) = self.find(e.ino) {
                    if !reached[i] {
                        reached[i] = true;
                        if self.inodes[i].1.kind == FileKind::Directory {
                            todo.push(e.ino);
                        }
                    }
                }
            }
        }
        let mut listed = 0;
        let mut more = 0u64;
        for (idx, &(ino, info)) in self.inodes.iter().enumerate() {
            if reached[idx] || named[idx] == 0 {
                continue;
            }
            if listed == MAX_UNREACHABLE_LISTED {
                more += 1;
                continue;
            }
            listed += 1;
            let holder = self
                .entries
                .iter()
                .find(|e| e.ino == ino)
                .map_or(0, |e| e.dir);
            out((
                Severity::Error,
                Kind::Unreachable,
                Some(Ino(ino)),
                format!(
                    "inode {} ({}) is named in directory {}, which cannot be reached from the root",
                    ino,
                    kind_name(info.kind),
                    holder
                ),
            ));
        }
        if more > 0 {
            out((
                Severity::Error,
                Kind::Unreachable,
                None,
                format!("{more} more inodes cannot be reached from the root"),
            ));
        }
    }
}
