//! What the fault campaign's workload wrote and what must survive a crash:
//! self-describing file contents and a ledger of every path's acceptable
//! states, updated as each write, fsync, rename and unlink returns.
//!
//! Every workload file holds [`content`]`(seed, len)`: a header naming its
//! seed and full length, then bytes derived from the seed. Any prefix of it
//! can be recognised from the bytes alone ([`recognise`]), so a reader that
//! knows nothing of the ledger (the replica view checker) can still tell
//! written data from garbage or zeros.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::mirror_common::pattern;

/// First bytes of every workload file.
pub const MAGIC: &[u8; 8] = b"TWCAMP01";
/// Magic, seed (u64 LE) and full length (u64 LE).
pub const HEADER_BYTES: usize = 24;

/// The bytes of a workload file of `len` bytes (at least the header).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    assert!(len >= HEADER_BYTES, "workload files hold at least a header");
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&seed.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v.extend_from_slice(&pattern(len - HEADER_BYTES, seed));
    v
}

/// What a file's bytes say about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A prefix of `content(seed, full_len)`.
    Prefix { seed: u64, full_len: u64 },
    /// Shorter than the header and a prefix of the magic: any file, cut early.
    Stub,
}

/// Recognises a prefix of some [`content`], or says where it is not one.
pub fn recognise(got: &[u8]) -> Result<Seen, String> {
    if got.len() < HEADER_BYTES {
        return if MAGIC.starts_with(&got[..got.len().min(8)]) {
            Ok(Seen::Stub)
        } else {
            Err(format!(
                "{} bytes that do not start with the magic",
                got.len()
            ))
        };
    }
    if &got[..8] != MAGIC {
        return Err(format!("no magic: starts {:02x?}", &got[..8]));
    }
    let seed = u64::from_le_bytes(got[8..16].try_into().expect("8 bytes"));
    let full_len = u64::from_le_bytes(got[16..24].try_into().expect("8 bytes"));
    if got.len() as u64 > full_len {
        return Err(format!(
            "{} bytes, longer than the {full_len} its header says",
            got.len()
        ));
    }
    let want = pattern(got.len() - HEADER_BYTES, seed);
    if let Some(off) = got[HEADER_BYTES..]
        .iter()
        .zip(&want)
        .position(|(a, b)| a != b)
    {
        return Err(format!(
            "byte {} of {} differs from what was written (seed {seed})",
            off + HEADER_BYTES,
            got.len()
        ));
    }
    Ok(Seen::Prefix { seed, full_len })
}

/// One acceptable content of a path: `content(seed, full_len)` cut to a
/// length in `min_len..=max_len` (`min_len`: what an fsync made durable;
/// `max_len`: what was written so far).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub seed: u64,
    pub full_len: u64,
    pub min_len: u64,
    pub max_len: u64,
}

/// What a path may hold after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathState {
    /// The contents it may hold (empty: it must not exist).
    pub versions: Vec<Version>,
    /// Whether it may be missing.
    pub may_be_absent: bool,
}

impl PathState {
    fn absent() -> PathState {
        PathState {
            versions: Vec::new(),
            may_be_absent: true,
        }
    }
}

/// The result of checking a tree against the ledger.
#[derive(Debug, Default)]
pub struct Check {
    pub problems: Vec<String>,
    /// Paths whose durable bytes were checked (an fsync had returned).
    pub durable_files: u64,
    pub durable_bytes: u64,
    /// Durable bytes missing or wrong.
    pub bytes_lost: u64,
}

/// Every path of the workload and what it may hold.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub paths: BTreeMap<PathBuf, PathState>,
    /// `(from, to, bytes)`: `from` was durable with `bytes` when it was
    /// renamed to `to`, and the rename is not durable yet: at least one of
    /// the two names exists.
    pub pairs: Vec<(PathBuf, PathBuf, u64)>,
    /// fsyncs that returned success, and the file bytes they covered.
    pub fsyncs: u64,
    pub fsynced_bytes: u64,
}

impl Ledger {
    /// A new file is being written with `content(seed, full_len)`, of which
    /// the first `len` bytes will be written now.
    pub fn writing(&mut self, path: &Path, seed: u64, full_len: u64, len: u64) {
        let prev = self.paths.insert(
            path.to_path_buf(),
            PathState {
                versions: vec![Version {
                    seed,
                    full_len,
                    min_len: 0,
                    max_len: len,
                }],
                may_be_absent: true,
            },
        );
        assert!(
            prev.is_none_or(|p| p.versions.is_empty()),
            "{} written twice by the workload",
            path.display()
        );
    }

    /// More of `path` is being written: up to `len` bytes in all.
    pub fn growing(&mut self, path: &Path, len: u64) {
        let st = self.paths.get_mut(path).expect("growing a registered path");
        let v = st.versions.last_mut().expect("a version");
        v.max_len = v.max_len.max(len);
    }

    /// An fsync of `path` returned success with `len` bytes written.
    pub fn fsynced(&mut self, path: &Path, len: u64) {
        let st = self
            .paths
            .get_mut(path)
            .expect("fsync of a registered path");
        let v = st
            .versions
            .last_mut()
            .expect("a path being written has a version");
        v.min_len = v.min_len.max(len);
        st.versions = vec![*v];
        st.may_be_absent = false;
        self.fsyncs += 1;
        self.fsynced_bytes += len;
    }

    /// `rename(from, to)` returned (not yet durable): either name may hold
    /// what it held before or what moved, and `to` may still be missing (a
    /// crash may keep `from` instead); one of the two exists if `from` did.
    pub fn renamed(&mut self, from: &Path, to: &Path) -> PathState {
        let moving = self
            .paths
            .get(from)
            .cloned()
            .expect("rename of a known path");
        let target = self
            .paths
            .entry(to.to_path_buf())
            .or_insert_with(PathState::absent);
        target.versions.extend(moving.versions.iter().copied());
        self.paths.get_mut(from).expect("known").may_be_absent = true;
        if !moving.may_be_absent {
            let bytes = moving.versions.iter().map(|v| v.min_len).min().unwrap_or(0);
            self.pairs
                .push((from.to_path_buf(), to.to_path_buf(), bytes));
        }
        moving
    }

    /// The directory fsync after `rename(from, to)` returned: the move is
    /// durable. `moving` is what [`Ledger::renamed`] returned.
    pub fn rename_durable(&mut self, from: &Path, to: &Path, moving: PathState) {
        self.pairs.retain(|(f, t, _)| !(f == from && t == to));
        self.paths.insert(from.to_path_buf(), PathState::absent());
        self.paths.get_mut(from).expect("known").versions.clear();
        self.paths.insert(to.to_path_buf(), moving);
        self.fsyncs += 1;
    }

    /// `unlink(path)` returned (not yet durable).
    pub fn unlinked(&mut self, path: &Path) {
        if let Some(st) = self.paths.get_mut(path) {
            st.may_be_absent = true;
        }
    }

    /// The directory fsync after `unlink(path)` returned.
    pub fn unlink_durable(&mut self, path: &Path) {
        self.paths.insert(path.to_path_buf(), PathState::absent());
        self.fsyncs += 1;
    }

    /// Forgets every path under `dir` (removed, durably, by the workload).
    pub fn forget_under(&mut self, dir: &Path) {
        self.paths.retain(|p, _| !p.starts_with(dir));
        self.pairs.retain(|(f, _, _)| !f.starts_with(dir));
    }

    /// Checks the tree under `root` (a mount of the source, or of a
    /// promoted replica) against every path of the ledger. With `durable`
    /// false (async mode's replica, which may hold any earlier state) only
    /// wrong bytes count: each file there must be a prefix of something the
    /// workload wrote. Problems name the path and what is wrong.
    pub fn check(&self, root: &Path, durable: bool) -> Check {
        if !durable {
            return self.check_bytes_only(root);
        }
        let mut c = Check::default();
        for (rel, st) in &self.paths {
            let need = if !st.may_be_absent {
                st.versions.iter().map(|v| v.min_len).min().unwrap_or(0)
            } else {
                0
            };
            if !st.may_be_absent {
                c.durable_files += 1;
                c.durable_bytes += need;
            }
            match std::fs::read(root.join(rel)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !st.may_be_absent {
                        c.bytes_lost += need;
                        c.problems.push(format!(
                            "{}: missing, but an fsync made it durable ({need} bytes)",
                            rel.display()
                        ));
                    }
                }
                Err(e) => c.problems.push(format!("{}: read: {e}", rel.display())),
                Ok(got) => {
                    let n = got.len() as u64;
                    if st.versions.is_empty() {
                        c.problems.push(format!(
                            "{}: exists ({n} bytes), but its removal was made durable",
                            rel.display()
                        ));
                        continue;
                    }
                    let fits = |v: &Version| n >= v.min_len && n <= v.max_len;
                    match recognise(&got) {
                        Err(why) => {
                            c.bytes_lost += need;
                            c.problems.push(format!("{}: {why}", rel.display()));
                        }
                        Ok(Seen::Stub) => {
                            if !st.versions.iter().any(fits) {
                                c.bytes_lost += need.saturating_sub(n);
                                c.problems.push(format!(
                                    "{}: only {n} bytes; acceptable: {:?}",
                                    rel.display(),
                                    st.versions
                                ));
                            }
                        }
                        Ok(Seen::Prefix { seed, full_len }) => {
                            let ok = st
                                .versions
                                .iter()
                                .any(|v| v.seed == seed && v.full_len == full_len && fits(v));
                            if !ok {
                                c.bytes_lost += need.saturating_sub(n);
                                c.problems.push(format!(
                                    "{}: {n} bytes of seed {seed} (length {full_len}); acceptable: {:?}",
                                    rel.display(),
                                    st.versions
                                ));
                            }
                        }
                    }
                }
            }
        }
        for (from, to, bytes) in &self.pairs {
            if !root.join(from).exists() && !root.join(to).exists() {
                c.bytes_lost += bytes;
                c.problems.push(format!(
                    "{} and {}: both missing, though the first was durable ({bytes} bytes) when renamed",
                    from.display(),
                    to.display()
                ));
            }
        }
        c
    }

    fn check_bytes_only(&self, root: &Path) -> Check {
        let mut c = Check::default();
        for rel in self.paths.keys() {
            match std::fs::read(root.join(rel)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => c.problems.push(format!("{}: read: {e}", rel.display())),
                Ok(got) => {
                    if let Err(why) = recognise(&got) {
                        c.problems.push(format!("{}: {why}", rel.display()));
                    }
                }
            }
        }
        c
    }

    /// After a check of the source's own tree: every path now holds exactly
    /// what was seen, which every later crash must keep.
    pub fn settle(&mut self, root: &Path) {
        // Every name is pinned to what was seen, renamed or not.
        self.pairs.clear();
        for (rel, st) in self.paths.iter_mut() {
            match std::fs::read(root.join(rel)) {
                Err(_) => *st = PathState::absent(),
                Ok(got) => {
                    let n = got.len() as u64;
                    match recognise(&got) {
                        Ok(Seen::Prefix { seed, full_len }) => {
                            *st = PathState {
                                versions: vec![Version {
                                    seed,
                                    full_len,
                                    min_len: n,
                                    max_len: n,
                                }],
                                may_be_absent: false,
                            }
                        }
                        // A stub: some version cut short; it stays that short.
                        Ok(Seen::Stub) => {
                            for v in &mut st.versions {
                                v.min_len = n;
                                v.max_len = n;
                            }
                            st.may_be_absent = false;
                        }
                        // Reported by the check; left as it was.
                        Err(_) => {}
                    }
                }
            }
        }
    }
}
