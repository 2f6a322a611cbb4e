//! Operations: the abstract ones proptest generates and shrinks ([`Op`]),
//! resolved against the model's current state into concrete calls ([`Act`])
//! that run on the volume and on the model alike.
//!
//! An [`Op`] names its targets by selectors (the k-th file, the k-th
//! directory, a name from a small alphabet), so that a shrunk sequence still
//! means something and collisions, renames over existing names and errors
//! happen often.

use std::fmt;

use proptest::prelude::*;
use proptest::strategy::Union;

use twinfs_fs::filetree::MAX_FILE_SIZE;
use twinfs_fs::nvlog::record::*;
use twinfs_fs::volume::Volume;
use twinfs_fs::*;

use super::fsmodel::{Errno, Model, BS};

/// Picks an inode of the model.
#[derive(Clone, Copy, Debug)]
pub enum Sel {
    /// Any inode that exists (reachable or held open).
    Any(u16),
    /// A regular file (any inode if there is none).
    File(u16),
    /// A directory.
    Dir(u16),
    /// An inode that is gone or never was.
    Dead(u8),
}

#[derive(Clone, Copy, Debug)]
pub enum NameSel {
    Short(u8),
    /// 255 bytes: the longest name.
    Max,
    /// 256 bytes.
    TooLong,
    Empty,
    Dot,
    DotDot,
    Slash,
    Nul,
}

#[derive(Clone, Copy, Debug)]
pub enum KindSel {
    Regular,
    Directory,
    Fifo,
    Socket,
    Char,
    Block,
    /// `create` refuses symlinks (EINVAL).
    Symlink,
}

/// An offset in a file.
#[derive(Clone, Copy, Debug)]
pub enum Off {
    Abs(u32),
    /// Block index and offset inside it.
    Block(u16, u16),
    /// Relative to the current size.
    FromEnd(i32),
    /// Anywhere up to about 1 TiB.
    Far(u64),
    /// This many bytes below the largest file size.
    NearMax(u32),
}

#[derive(Clone, Copy, Debug)]
pub enum Len {
    Zero,
    Small(u16),
    Medium(u16),
    Blocks(u8),
    Large(u32),
}

#[derive(Clone, Copy, Debug)]
pub enum SizeSel {
    Abs(u32),
    FromEnd(i32),
    Far(u64),
    TooBig,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSel {
    Now,
    At(i64, u32),
}

#[derive(Clone, Copy, Debug)]
pub enum XName {
    Short(u8),
    Max,
    TooLong,
    Empty,
}

#[derive(Clone, Copy, Debug)]
pub enum XLen {
    Zero,
    Small(u8),
    /// Around the inline limit (512).
    Inline(u8),
    Blob(u16),
    Max,
    TooBig,
}

#[derive(Clone, Copy, Debug)]
pub enum Probe {
    GetAttr(Sel),
    Lookup(Sel, NameSel),
    Read(Sel, Off, u32),
    ReadLink(Sel),
    ReadDir(Sel),
    GetXattr(Sel, XName),
    ListXattr(Sel),
    Seek(Sel, Off, bool),
}

/// What a crash-during-I/O test cuts into.
#[derive(Clone, Copy, Debug)]
pub enum CutWhat {
    Checkpoint,
    Fsync,
    Snapshot,
}

/// One generated operation.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        dir: Sel,
        name: NameSel,
        kind: KindSel,
        perm: u16,
        uid: u8,
        gid: u8,
        rdev: u32,
    },
    Symlink {
        dir: Sel,
        name: NameSel,
        len: u16,
        seed: u8,
    },
    Link {
        ino: Sel,
        dir: Sel,
        name: NameSel,
    },
    Unlink {
        dir: Sel,
        name: NameSel,
    },
    Rmdir {
        dir: Sel,
        name: NameSel,
    },
    Rename {
        dir: Sel,
        name: NameSel,
        to_dir: Sel,
        to_name: NameSel,
        flags: u32,
    },
    SetAttr {
        ino: Sel,
        perm: Option<u16>,
        uid: Option<u8>,
        gid: Option<u8>,
        size: Option<SizeSel>,
        atime: Option<TimeSel>,
        mtime: Option<TimeSel>,
        crtime: Option<(i64, u32)>,
    },
    Truncate {
        ino: Sel,
        size: SizeSel,
    },
    Write {
        ino: Sel,
        off: Off,
        len: Len,
        seed: u8,
        kill_suid: bool,
    },
    Fallocate {
        ino: Sel,
        mode: u32,
        off: Off,
        len: Len,
    },
    SetXattr {
        ino: Sel,
        name: XName,
        len: XLen,
        seed: u8,
        flags: u32,
    },
    RemoveXattr {
        ino: Sel,
        name: XName,
    },
    Open {
        ino: Sel,
    },
    Release {
        which: u16,
    },
    Probe(Probe),
    /// Several 256 KiB writes appended to one file, each its own call: fills
    /// log batches, which are then sealed and written but not flushed.
    Burst {
        ino: Sel,
        count: u8,
        seed: u8,
    },
    /// Creates (or unlinks) many entries at once, `p<k>` padded to `width`
    /// bytes: large directories split and merge metadata nodes.
    Populate {
        dir: Sel,
        count: u8,
        width: u8,
        remove: bool,
    },
    Checkpoint,
    Fsync,
    Reopen,
    SnapCreate {
        name: u8,
    },
    SnapDelete {
        name: u8,
    },
    /// Power fails now; every unflushed write gets a fate from this seed.
    Crash {
        fate: u64,
    },
    /// Power fails after `ios` more device writes/flushes, during `what`.
    CutDuring {
        ios: u16,
        fate: u64,
        what: CutWhat,
    },
}

/// A concrete call, the same for the volume and the model.
#[derive(Clone)]
pub enum Act {
    Create {
        parent: Ino,
        name: Vec<u8>,
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    },
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
    },
    Remove {
        parent: Ino,
        name: Vec<u8>,
        dir: bool,
    },
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: u32,
    },
    SetAttr {
        ino: Ino,
        ch: AttrChanges,
    },
    Write {
        ino: Ino,
        off: u64,
        data: Vec<u8>,
        kill_suid: bool,
    },
    Fallocate {
        ino: Ino,
        off: u64,
        len: u64,
        mode: u32,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    Open {
        ino: Ino,
    },
    Release {
        ino: Ino,
    },
    GetAttr {
        ino: Ino,
    },
    Lookup {
        parent: Ino,
        name: Vec<u8>,
    },
    Read {
        ino: Ino,
        off: u64,
        len: u32,
    },
    ReadLink {
        ino: Ino,
    },
    ReadDir {
        ino: Ino,
    },
    GetXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    ListXattr {
        ino: Ino,
    },
    Seek {
        ino: Ino,
        off: u64,
        data: bool,
    },
    Checkpoint,
    Fsync,
    Reopen,
    SnapCreate {
        name: String,
    },
    SnapDelete {
        name: String,
    },
}

/// Short printable form of a byte string.
pub fn show(b: &[u8]) -> String {
    if b.len() <= 24 {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!(
            "<{} bytes {:?}.. blake3 {}>",
            b.len(),
            String::from_utf8_lossy(&b[..8]),
            &blake3::hash(b).to_hex()[..12]
        )
    }
}

impl fmt::Debug for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Act::Create {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
                rdev,
            } => write!(
                f,
                "create({}, {}, {kind:?}, {perm:o}, uid {uid}, gid {gid}, rdev {rdev})",
                parent.0,
                show(name)
            ),
            Act::Symlink {
                parent,
                name,
                target,
                ..
            } => write!(f, "symlink({}, {}, {})", parent.0, show(name), show(target)),
            Act::Link { ino, parent, name } => {
                write!(f, "link({}, {}, {})", ino.0, parent.0, show(name))
            }
            Act::Remove { parent, name, dir } => write!(
                f,
                "{}({}, {})",
                if *dir { "rmdir" } else { "unlink" },
                parent.0,
                show(name)
            ),
            Act::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => write!(
                f,
                "rename({}, {}, {}, {}, flags {flags})",
                parent.0,
                show(name),
                new_parent.0,
                show(new_name)
            ),
            Act::SetAttr { ino, ch } => write!(f, "setattr({}, {ch:?})", ino.0),
            Act::Write {
                ino,
                off,
                data,
                kill_suid,
            } => write!(
                f,
                "write({}, off {off}, {}, kill_suid {kill_suid})",
                ino.0,
                show(data)
            ),
            Act::Fallocate {
                ino,
                off,
                len,
                mode,
            } => write!(
                f,
                "fallocate({}, off {off}, len {len}, mode {mode:#x})",
                ino.0
            ),
            Act::SetXattr {
                ino,
                name,
                value,
                flags,
            } => write!(
                f,
                "setxattr({}, {}, {}, flags {flags})",
                ino.0,
                show(name),
                show(value)
            ),
            Act::RemoveXattr { ino, name } => write!(f, "removexattr({}, {})", ino.0, show(name)),
            Act::Open { ino } => write!(f, "open({})", ino.0),
            Act::Release { ino } => write!(f, "release({})", ino.0),
            Act::GetAttr { ino } => write!(f, "getattr({})", ino.0),
            Act::Lookup { parent, name } => write!(f, "lookup({}, {})", parent.0, show(name)),
            Act::Read { ino, off, len } => write!(f, "read({}, off {off}, len {len})", ino.0),
            Act::ReadLink { ino } => write!(f, "readlink({})", ino.0),
            Act::ReadDir { ino } => write!(f, "readdir({})", ino.0),
            Act::GetXattr { ino, name } => write!(f, "getxattr({}, {})", ino.0, show(name)),
            Act::ListXattr { ino } => write!(f, "listxattr({})", ino.0),
            Act::Seek { ino, off, data } => write!(
                f,
                "seek({}, {off}, {})",
                ino.0,
                if *data { "SEEK_DATA" } else { "SEEK_HOLE" }
            ),
            Act::Checkpoint => write!(f, "checkpoint"),
            Act::Fsync => write!(f, "fsync"),
            Act::Reopen => write!(f, "reopen"),
            Act::SnapCreate { name } => write!(f, "snapshot_create({name:?})"),
            Act::SnapDelete { name } => write!(f, "snapshot_delete({name:?})"),
        }
    }
}

/// A successful result, compared between the volume and the model.
#[derive(Clone, PartialEq, Eq)]
pub enum Val {
    Unit,
    Attr(Attr),
    Bytes(Vec<u8>),
    Names(Vec<Vec<u8>>),
    Seek(Option<u64>),
    Id(u64),
    Count(u32),
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Unit => write!(f, "()"),
            Val::Attr(a) => write!(f, "{a:?}"),
            Val::Bytes(b) => write!(f, "{}", show(b)),
            Val::Names(n) => f.debug_list().entries(n.iter().map(|n| show(n))).finish(),
            Val::Seek(s) => write!(f, "{s:?}"),
            Val::Id(i) => write!(f, "id {i}"),
            Val::Count(c) => write!(f, "count {c}"),
        }
    }
}

/// Bytes written by a write with `seed` at `off`: a function of the file
/// offset, so that overlapping writes are distinguishable; seed 0 is zeros.
pub fn pattern(seed: u8, off: u64, len: usize) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    (0..len as u64)
        .map(|i| {
            let p = off + i;
            let x = (p / 7)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(seed) * 0x0100_0193);
            (x >> 56) as u8 ^ (p as u8)
        })
        .collect()
}

/// Size of each write of a burst.
pub const BURST_WRITE: u64 = 256 * 1024;

const ALPHABET: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn name_of(n: NameSel) -> Vec<u8> {
    match n {
        NameSel::Short(k) => ALPHABET[k as usize % ALPHABET.len()].as_bytes().to_vec(),
        NameSel::Max => vec![b'm'; 255],
        NameSel::TooLong => vec![b'l'; 256],
        NameSel::Empty => Vec::new(),
        NameSel::Dot => b".".to_vec(),
        NameSel::DotDot => b"..".to_vec(),
        NameSel::Slash => b"a/b".to_vec(),
        NameSel::Nul => b"a\0b".to_vec(),
    }
}

fn xname_of(n: XName) -> Vec<u8> {
    match n {
        XName::Short(k) => {
            let names: [&[u8]; 4] = [b"user.a", b"user.b", b"user.c", b"trusted.x"];
            names[k as usize % names.len()].to_vec()
        }
        XName::Max => {
            let mut v = b"user.".to_vec();
            v.resize(255, b'x');
            v
        }
        XName::TooLong => {
            let mut v = b"user.".to_vec();
            v.resize(256, b'y');
            v
        }
        XName::Empty => Vec::new(),
    }
}

fn xlen_of(l: XLen) -> usize {
    match l {
        XLen::Zero => 0,
        XLen::Small(n) => 1 + n as usize % 100,
        XLen::Inline(n) => 510 + n as usize % 5,
        XLen::Blob(n) => 513 + n as usize % 12000,
        XLen::Max => 65536,
        XLen::TooBig => 65537,
    }
}

pub fn snap_name(k: u8) -> String {
    match k % 8 {
        0..=3 => format!("s{}", k % 8),
        4 => String::new(),
        5 => "a/b".into(),
        6 => "..".into(),
        _ => "n".repeat(65),
    }
}

impl Model {
    pub fn pick(&self, s: Sel) -> Ino {
        let any = || {
            let all: Vec<Ino> = self.fs.inodes.keys().copied().collect();
            all[match s {
                Sel::Any(k) | Sel::File(k) | Sel::Dir(k) => k as usize,
                Sel::Dead(k) => k as usize,
            } % all.len()]
        };
        match s {
            Sel::Any(_) => any(),
            Sel::File(k) => {
                let files: Vec<Ino> = self
                    .fs
                    .inodes
                    .iter()
                    .filter(|(_, i)| i.kind == FileKind::Regular)
                    .map(|(k, _)| *k)
                    .collect();
                if files.is_empty() {
                    any()
                } else {
                    files[k as usize % files.len()]
                }
            }
            Sel::Dir(k) => {
                let dirs: Vec<Ino> = self
                    .fs
                    .inodes
                    .iter()
                    .filter(|(_, i)| i.is_dir())
                    .map(|(k, _)| *k)
                    .collect();
                dirs[k as usize % dirs.len()]
            }
            Sel::Dead(k) => {
                if self.dead.is_empty() {
                    Ino(self.fs.next_ino + 1000 + u64::from(k))
                } else {
                    self.dead[k as usize % self.dead.len()]
                }
            }
        }
    }

    fn size_or_zero(&self, ino: Ino) -> u64 {
        self.fs.inodes.get(&ino).map_or(0, |i| i.size)
    }

    fn offset(&self, ino: Ino, o: Off) -> u64 {
        match o {
            Off::Abs(n) => u64::from(n),
            Off::Block(b, w) => u64::from(b) * BS + u64::from(w) % BS,
            Off::FromEnd(d) => (self.size_or_zero(ino) as i64 + i64::from(d)).max(0) as u64,
            Off::Far(x) => x,
            Off::NearMax(d) => MAX_FILE_SIZE - u64::from(d),
        }
    }

    fn size_sel(&self, ino: Ino, s: SizeSel) -> u64 {
        match s {
            SizeSel::Abs(n) => u64::from(n),
            SizeSel::FromEnd(d) => (self.size_or_zero(ino) as i64 + i64::from(d)).max(0) as u64,
            SizeSel::Far(x) => x,
            SizeSel::TooBig => MAX_FILE_SIZE + 1,
        }
    }

    /// Turns a generated operation into a concrete call against the current
    /// state. `None` for operations the harness runs itself (crashes).
    pub fn resolve(&self, op: &Op) -> Option<Act> {
        let len_of = |l: Len| -> u64 {
            match l {
                Len::Zero => 0,
                Len::Small(n) => 1 + u64::from(n) % 200,
                Len::Medium(n) => 1 + u64::from(n) % 20_000,
                Len::Blocks(n) => u64::from(n) * BS,
                Len::Large(n) => u64::from(n),
            }
        };
        let time = |t: TimeSel| match t {
            TimeSel::Now => TimeSet::Now,
            TimeSel::At(s, n) => TimeSet::At(Timestamp::new(s, n % 1_000_000_000)),
        };
        Some(match *op {
            Op::Create {
                dir,
                name,
                kind,
                perm,
                uid,
                gid,
                rdev,
            } => Act::Create {
                parent: self.pick(dir),
                name: name_of(name),
                kind: match kind {
                    KindSel::Regular => FileKind::Regular,
                    KindSel::Directory => FileKind::Directory,
                    KindSel::Fifo => FileKind::Fifo,
                    KindSel::Socket => FileKind::Socket,
                    KindSel::Char => FileKind::CharDevice,
                    KindSel::Block => FileKind::BlockDevice,
                    KindSel::Symlink => FileKind::Symlink,
                },
                perm: u32::from(perm) & 0o7777,
                uid: u32::from(uid % 4),
                gid: u32::from(gid % 4),
                rdev: u64::from(rdev),
            },
            Op::Symlink {
                dir,
                name,
                len,
                seed,
            } => Act::Symlink {
                parent: self.pick(dir),
                name: name_of(name),
                target: (0..len as usize)
                    .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
                    .collect(),
                uid: 1,
                gid: 1,
            },
            Op::Link { ino, dir, name } => Act::Link {
                ino: self.pick(ino),
                parent: self.pick(dir),
                name: name_of(name),
            },
            Op::Unlink { dir, name } => Act::Remove {
                parent: self.pick(dir),
                name: name_of(name),
                dir: false,
            },
            Op::Rmdir { dir, name } => Act::Remove {
                parent: self.pick(dir),
                name: name_of(name),
                dir: true,
            },
            Op::Rename {
                dir,
                name,
                to_dir,
                to_name,
                flags,
            } => Act::Rename {
                parent: self.pick(dir),
                name: name_of(name),
                new_parent: self.pick(to_dir),
                new_name: name_of(to_name),
                flags,
            },
            Op::SetAttr {
                ino,
                perm,
                uid,
                gid,
                size,
                atime,
                mtime,
                crtime,
            } => {
                let ino = self.pick(ino);
                Act::SetAttr {
                    ino,
                    ch: AttrChanges {
                        perm: perm.map(|p| u32::from(p) & 0o7777),
                        uid: uid.map(|u| u32::from(u % 4)),
                        gid: gid.map(|g| u32::from(g % 4)),
                        size: size.map(|s| self.size_sel(ino, s)),
                        atime: atime.map(time),
                        mtime: mtime.map(time),
                        crtime: crtime.map(|(s, n)| Timestamp::new(s, n % 1_000_000_000)),
                    },
                }
            }
            Op::Truncate { ino, size } => {
                let ino = self.pick(ino);
                Act::SetAttr {
                    ino,
                    ch: AttrChanges {
                        size: Some(self.size_sel(ino, size)),
                        ..Default::default()
                    },
                }
            }
            Op::Write {
                ino,
                off,
                len,
                seed,
                kill_suid,
            } => {
                let ino = self.pick(ino);
                let off = self.offset(ino, off);
                let len = len_of(len);
                Act::Write {
                    ino,
                    off,
                    data: pattern(seed, off, len as usize),
                    kill_suid,
                }
            }
            Op::Fallocate {
                ino,
                mode,
                off,
                len,
            } => {
                let ino = self.pick(ino);
                Act::Fallocate {
                    ino,
                    off: self.offset(ino, off),
                    len: len_of(len),
                    mode,
                }
            }
            Op::SetXattr {
                ino,
                name,
                len,
                seed,
                flags,
            } => Act::SetXattr {
                ino: self.pick(ino),
                name: xname_of(name),
                value: pattern(seed.max(1), u64::from(seed), xlen_of(len)),
                flags,
            },
            Op::RemoveXattr { ino, name } => Act::RemoveXattr {
                ino: self.pick(ino),
                name: xname_of(name),
            },
            Op::Open { ino } => Act::Open {
                ino: self.pick(ino),
            },
            Op::Release { which } => {
                let open: Vec<Ino> = self.open.keys().copied().collect();
                Act::Release {
                    ino: if open.is_empty() {
                        self.pick(Sel::Any(which))
                    } else {
                        open[which as usize % open.len()]
                    },
                }
            }
            Op::Probe(p) => match p {
                Probe::GetAttr(s) => Act::GetAttr { ino: self.pick(s) },
                Probe::Lookup(d, n) => Act::Lookup {
                    parent: self.pick(d),
                    name: name_of(n),
                },
                Probe::Read(s, o, len) => {
                    let ino = self.pick(s);
                    Act::Read {
                        ino,
                        off: self.offset(ino, o),
                        len: len % 300_000,
                    }
                }
                Probe::ReadLink(s) => Act::ReadLink { ino: self.pick(s) },
                Probe::ReadDir(s) => Act::ReadDir { ino: self.pick(s) },
                Probe::GetXattr(s, n) => Act::GetXattr {
                    ino: self.pick(s),
                    name: xname_of(n),
                },
                Probe::ListXattr(s) => Act::ListXattr { ino: self.pick(s) },
                Probe::Seek(s, o, data) => {
                    let ino = self.pick(s);
                    Act::Seek {
                        ino,
                        off: self.offset(ino, o),
                        data,
                    }
                }
            },
            Op::Checkpoint => Act::Checkpoint,
            Op::Fsync => Act::Fsync,
            Op::Reopen => Act::Reopen,
            Op::SnapCreate { name } => Act::SnapCreate {
                name: snap_name(name),
            },
            Op::SnapDelete { name } => Act::SnapDelete {
                name: snap_name(name),
            },
            Op::Crash { .. } | Op::CutDuring { .. } | Op::Burst { .. } | Op::Populate { .. } => {
                return None
            }
        })
    }

    /// The concrete calls of an operation (several for a burst; none for a crash).
    pub fn resolve_all(&self, op: &Op) -> Vec<Act> {
        match *op {
            Op::Burst { ino, count, seed } => {
                let ino = self.pick(ino);
                let start = self.size_or_zero(ino) + u64::from(seed % 3) * 1000;
                (0..u64::from(count % 8 + 1))
                    .map(|k| {
                        let off = start + k * BURST_WRITE;
                        Act::Write {
                            ino,
                            off,
                            data: pattern(seed | 1, off, BURST_WRITE as usize),
                            kill_suid: false,
                        }
                    })
                    .collect()
            }
            Op::Populate {
                dir,
                count,
                width,
                remove,
            } => {
                let parent = self.pick(dir);
                let width = 2 + width as usize % 120;
                (0..u32::from(count))
                    .map(|k| {
                        let mut name = format!("p{k}").into_bytes();
                        name.resize(width.max(name.len()), b'_');
                        if remove {
                            Act::Remove {
                                parent,
                                name,
                                dir: false,
                            }
                        } else {
                            Act::Create {
                                parent,
                                name,
                                kind: FileKind::Regular,
                                perm: 0o644,
                                uid: 0,
                                gid: 0,
                                rdev: 0,
                            }
                        }
                    })
                    .collect()
            }
            _ => self.resolve(op).into_iter().collect(),
        }
    }

    /// Runs a concrete call on the model at time `now`.
    pub fn exec(&mut self, act: &Act, now: Timestamp) -> Result<Val, Errno> {
        Ok(match act {
            Act::Create {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
                rdev,
            } => {
                if *kind == FileKind::Symlink {
                    return Err(libc::EINVAL);
                }
                Val::Attr(self.create(*parent, name, *kind, *perm, *uid, *gid, *rdev, &[], now)?)
            }
            Act::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => Val::Attr(self.create(
                *parent,
                name,
                FileKind::Symlink,
                0o777,
                *uid,
                *gid,
                0,
                target,
                now,
            )?),
            Act::Link { ino, parent, name } => Val::Attr(self.link(*ino, *parent, name, now)?),
            Act::Remove { parent, name, dir } => {
                self.remove(*parent, name, *dir, now)?;
                Val::Unit
            }
            Act::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                self.rename(*parent, name, *new_parent, new_name, *flags, now)?;
                Val::Unit
            }
            Act::SetAttr { ino, ch } => Val::Attr(self.setattr(*ino, ch, now)?),
            Act::Write {
                ino,
                off,
                data,
                kill_suid,
            } => Val::Count(self.write(*ino, *off, data, *kill_suid, now)?),
            Act::Fallocate {
                ino,
                off,
                len,
                mode,
            } => {
                self.fallocate(*ino, *off, *len, *mode, now)?;
                Val::Unit
            }
            Act::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                self.setxattr(*ino, name, value, *flags, now)?;
                Val::Unit
            }
            Act::RemoveXattr { ino, name } => {
                self.removexattr(*ino, name, now)?;
                Val::Unit
            }
            Act::Open { ino } => {
                self.open_file(*ino)?;
                Val::Unit
            }
            Act::Release { ino } => {
                self.release_file(*ino)?;
                Val::Unit
            }
            Act::GetAttr { ino } => Val::Attr(self.getattr(*ino)?),
            Act::Lookup { parent, name } => Val::Attr(self.lookup(*parent, name)?),
            Act::Read { ino, off, len } => Val::Bytes(self.read(*ino, *off, *len)?),
            Act::ReadLink { ino } => Val::Bytes(self.readlink(*ino)?),
            Act::ReadDir { ino } => {
                self.readdir_check(*ino)?;
                Val::Unit
            }
            Act::GetXattr { ino, name } => Val::Bytes(self.getxattr(*ino, name)?),
            Act::ListXattr { ino } => Val::Names(self.listxattr(*ino)?),
            Act::Seek { ino, off, data } => Val::Seek(self.seek(*ino, *off, *data)?),
            Act::Checkpoint | Act::Fsync => Val::Unit,
            Act::Reopen => {
                self.forget_open();
                Val::Unit
            }
            Act::SnapCreate { name } => Val::Id(self.snapshot_create(name, now)?),
            Act::SnapDelete { name } => {
                self.snapshot_delete(name)?;
                Val::Unit
            }
        })
    }
}

/// Runs a concrete call on the volume (not `Reopen`: the harness does that).
pub fn exec_volume(vol: &Volume, act: &Act) -> Result<Val, Errno> {
    let e = |e: FsError| e.errno();
    Ok(match act {
        Act::Create {
            parent,
            name,
            kind,
            perm,
            uid,
            gid,
            rdev,
        } => Val::Attr(
            vol.create(*parent, name, *kind, *perm, *uid, *gid, *rdev)
                .map_err(e)?,
        ),
        Act::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => Val::Attr(vol.symlink(*parent, name, target, *uid, *gid).map_err(e)?),
        Act::Link { ino, parent, name } => Val::Attr(vol.link(*ino, *parent, name).map_err(e)?),
        Act::Remove { parent, name, dir } => {
            if *dir {
                vol.rmdir(*parent, name).map_err(e)?;
            } else {
                vol.unlink(*parent, name).map_err(e)?;
            }
            Val::Unit
        }
        Act::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => {
            vol.rename(*parent, name, *new_parent, new_name, *flags)
                .map_err(e)?;
            Val::Unit
        }
        Act::SetAttr { ino, ch } => Val::Attr(vol.setattr(*ino, ch).map_err(e)?),
        Act::Write {
            ino,
            off,
            data,
            kill_suid,
        } => Val::Count(vol.write(*ino, *off, data, *kill_suid).map_err(e)?),
        Act::Fallocate {
            ino,
            off,
            len,
            mode,
        } => {
            vol.fallocate(*ino, *off, *len, *mode).map_err(e)?;
            Val::Unit
        }
        Act::SetXattr {
            ino,
            name,
            value,
            flags,
        } => {
            vol.setxattr(*ino, name, value, *flags).map_err(e)?;
            Val::Unit
        }
        Act::RemoveXattr { ino, name } => {
            vol.removexattr(*ino, name).map_err(e)?;
            Val::Unit
        }
        Act::Open { ino } => {
            vol.open_file(*ino).map_err(e)?;
            Val::Unit
        }
        Act::Release { ino } => {
            vol.release_file(*ino).map_err(e)?;
            Val::Unit
        }
        Act::GetAttr { ino } => Val::Attr(vol.getattr(View::Live, *ino).map_err(e)?),
        Act::Lookup { parent, name } => {
            Val::Attr(vol.lookup(View::Live, *parent, name).map_err(e)?)
        }
        Act::Read { ino, off, len } => {
            Val::Bytes(vol.read(View::Live, *ino, *off, *len).map_err(e)?)
        }
        Act::ReadLink { ino } => Val::Bytes(vol.readlink(View::Live, *ino).map_err(e)?),
        Act::ReadDir { ino } => {
            vol.readdir(View::Live, *ino, 0, &mut |_| false)
                .map_err(e)?;
            Val::Unit
        }
        Act::GetXattr { ino, name } => Val::Bytes(vol.getxattr(View::Live, *ino, name).map_err(e)?),
        Act::ListXattr { ino } => Val::Names(vol.listxattr(View::Live, *ino).map_err(e)?),
        Act::Seek { ino, off, data } => {
            Val::Seek(vol.seek(View::Live, *ino, *off, *data).map_err(e)?)
        }
        Act::Checkpoint => {
            vol.checkpoint().map_err(e)?;
            Val::Unit
        }
        Act::Fsync => {
            vol.fsync().map_err(e)?;
            Val::Unit
        }
        Act::Reopen => unreachable!("the harness reopens"),
        Act::SnapCreate { name } => Val::Id(vol.snapshot_create(name).map_err(e)?),
        Act::SnapDelete { name } => {
            vol.snapshot_delete(name).map_err(e)?;
            Val::Unit
        }
    })
}

// ---- strategies -------------------------------------------------------------

fn weighted<T: fmt::Debug + 'static>(arms: Vec<(u32, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    Union::new_weighted(arms).boxed()
}

pub fn sel_file() -> BoxedStrategy<Sel> {
    weighted(vec![
        (90, any::<u16>().prop_map(Sel::File).boxed()),
        (7, any::<u16>().prop_map(Sel::Any).boxed()),
        (3, any::<u8>().prop_map(Sel::Dead).boxed()),
    ])
}

pub fn sel_dir() -> BoxedStrategy<Sel> {
    weighted(vec![
        (90, any::<u16>().prop_map(Sel::Dir).boxed()),
        (7, any::<u16>().prop_map(Sel::Any).boxed()),
        (3, any::<u8>().prop_map(Sel::Dead).boxed()),
    ])
}

pub fn sel_any() -> BoxedStrategy<Sel> {
    weighted(vec![
        (95, any::<u16>().prop_map(Sel::Any).boxed()),
        (5, any::<u8>().prop_map(Sel::Dead).boxed()),
    ])
}

pub fn name() -> BoxedStrategy<NameSel> {
    weighted(vec![
        (94, (0u8..6).prop_map(NameSel::Short).boxed()),
        (1, Just(NameSel::Max).boxed()),
        (1, Just(NameSel::TooLong).boxed()),
        (1, Just(NameSel::Empty).boxed()),
        (1, Just(NameSel::Dot).boxed()),
        (1, Just(NameSel::DotDot).boxed()),
        (1, Just(NameSel::Slash).boxed()),
        (1, Just(NameSel::Nul).boxed()),
    ])
}

fn kind() -> BoxedStrategy<KindSel> {
    weighted(vec![
        (12, Just(KindSel::Regular).boxed()),
        (6, Just(KindSel::Directory).boxed()),
        (1, Just(KindSel::Fifo).boxed()),
        (1, Just(KindSel::Socket).boxed()),
        (1, Just(KindSel::Char).boxed()),
        (1, Just(KindSel::Block).boxed()),
    ])
}

/// Offsets; `far` allows ones up to about 1 TiB and near the size limit.
fn off(far: bool) -> BoxedStrategy<Off> {
    let mut arms = vec![
        (30, (0u32..70_000).prop_map(Off::Abs).boxed()),
        (
            20,
            (0u16..64, prop_oneof![Just(0u16), 0u16..4096])
                .prop_map(|(b, w)| Off::Block(b, w))
                .boxed(),
        ),
        (20, (-10_000i32..10_000).prop_map(Off::FromEnd).boxed()),
    ];
    if far {
        arms.push((4, (0u64..(1 << 40)).prop_map(Off::Far).boxed()));
        arms.push((1, (0u32..10_000).prop_map(Off::NearMax).boxed()));
    }
    weighted(arms)
}

fn len(large: bool) -> BoxedStrategy<Len> {
    let mut arms = vec![
        (2, Just(Len::Zero).boxed()),
        (30, any::<u16>().prop_map(Len::Small).boxed()),
        (30, any::<u16>().prop_map(Len::Medium).boxed()),
        (20, (1u8..40).prop_map(Len::Blocks).boxed()),
        (10, (20_000u32..300_000).prop_map(Len::Large).boxed()),
    ];
    if large {
        arms.push((2, (1_000_000u32..1_400_000).prop_map(Len::Large).boxed()));
    }
    weighted(arms)
}

fn size_sel() -> BoxedStrategy<SizeSel> {
    weighted(vec![
        (10, (0u32..300_000).prop_map(SizeSel::Abs).boxed()),
        (10, (-20_000i32..20_000).prop_map(SizeSel::FromEnd).boxed()),
        (2, (0u64..(1 << 40)).prop_map(SizeSel::Far).boxed()),
        (1, Just(SizeSel::TooBig).boxed()),
    ])
}

fn time_sel() -> BoxedStrategy<TimeSel> {
    prop_oneof![
        Just(TimeSel::Now),
        (-2_000_000_000i64..4_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| TimeSel::At(s, n)),
    ]
    .boxed()
}

fn xname() -> BoxedStrategy<XName> {
    weighted(vec![
        (40, (0u8..4).prop_map(XName::Short).boxed()),
        (1, Just(XName::Max).boxed()),
        (1, Just(XName::TooLong).boxed()),
        (1, Just(XName::Empty).boxed()),
    ])
}

fn xlen() -> BoxedStrategy<XLen> {
    weighted(vec![
        (3, Just(XLen::Zero).boxed()),
        (20, any::<u8>().prop_map(XLen::Small).boxed()),
        (6, any::<u8>().prop_map(XLen::Inline).boxed()),
        (8, any::<u16>().prop_map(XLen::Blob).boxed()),
        (1, Just(XLen::Max).boxed()),
        (1, Just(XLen::TooBig).boxed()),
    ])
}

fn fallocate_mode() -> BoxedStrategy<u32> {
    prop::sample::select(vec![
        0,
        FALLOC_KEEP_SIZE,
        FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
        FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
        FALLOC_ZERO_RANGE,
        FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE,
        FALLOC_PUNCH_HOLE,
        0x08,
    ])
    .boxed()
}

fn probe() -> BoxedStrategy<Probe> {
    prop_oneof![
        sel_any().prop_map(Probe::GetAttr),
        (sel_dir(), name()).prop_map(|(d, n)| Probe::Lookup(d, n)),
        (sel_file(), off(true), 0u32..70_000).prop_map(|(s, o, l)| Probe::Read(s, o, l)),
        sel_any().prop_map(Probe::ReadLink),
        sel_any().prop_map(Probe::ReadDir),
        (sel_any(), xname()).prop_map(|(s, n)| Probe::GetXattr(s, n)),
        sel_any().prop_map(Probe::ListXattr),
        (sel_file(), off(true), any::<bool>()).prop_map(|(s, o, d)| Probe::Seek(s, o, d)),
    ]
    .boxed()
}

/// Which operations a sequence may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Everything except crashes.
    Model,
    /// Everything, with crashes; no write spans more than one log record.
    Crash,
    /// Everything except crashes and remounts (twins must stay in step);
    /// no write spans more than one log record.
    Twins,
}

pub fn op(flavor: Flavor) -> BoxedStrategy<Op> {
    let big = flavor == Flavor::Model;
    let mut arms: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (
            20,
            (
                sel_file(),
                off(true),
                len(big),
                any::<u8>(),
                prop::bool::weighted(0.1),
            )
                .prop_map(|(ino, off, len, seed, kill_suid)| Op::Write {
                    ino,
                    off,
                    len,
                    seed,
                    kill_suid,
                })
                .boxed(),
        ),
        (
            14,
            (
                sel_dir(),
                name(),
                kind(),
                prop_oneof![Just(0o644u16), Just(0o755), 0u16..0o10000],
                any::<u8>(),
                any::<u8>(),
                any::<u32>(),
            )
                .prop_map(|(dir, name, kind, perm, uid, gid, rdev)| Op::Create {
                    dir,
                    name,
                    kind,
                    perm,
                    uid,
                    gid,
                    rdev,
                })
                .boxed(),
        ),
        (
            3,
            (
                sel_dir(),
                name(),
                prop_oneof![
                    8 => 1u16..100,
                    1 => Just(1024u16),
                    1 => Just(1025u16),
                    2 => 1026u16..4095,
                    1 => Just(4095u16),
                    1 => Just(4096u16),
                    1 => Just(0u16),
                ],
                any::<u8>(),
            )
                .prop_map(|(dir, name, len, seed)| Op::Symlink {
                    dir,
                    name,
                    len,
                    seed,
                })
                .boxed(),
        ),
        (
            1,
            (sel_dir(), name())
                .prop_map(|(dir, name)| Op::Create {
                    dir,
                    name,
                    kind: KindSel::Symlink,
                    perm: 0o777,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                })
                .boxed(),
        ),
        (
            4,
            (sel_file(), sel_dir(), name())
                .prop_map(|(ino, dir, name)| Op::Link { ino, dir, name })
                .boxed(),
        ),
        (
            6,
            (sel_dir(), name())
                .prop_map(|(dir, name)| Op::Unlink { dir, name })
                .boxed(),
        ),
        (
            3,
            (sel_dir(), name())
                .prop_map(|(dir, name)| Op::Rmdir { dir, name })
                .boxed(),
        ),
        (
            10,
            (
                sel_dir(),
                name(),
                sel_dir(),
                name(),
                prop_oneof![
                    6 => Just(0u32),
                    2 => Just(RENAME_NOREPLACE),
                    2 => Just(RENAME_EXCHANGE),
                    1 => Just(RENAME_NOREPLACE | RENAME_EXCHANGE),
                    1 => Just(4u32),
                ],
            )
                .prop_map(|(dir, name, to_dir, to_name, flags)| Op::Rename {
                    dir,
                    name,
                    to_dir,
                    to_name,
                    flags,
                })
                .boxed(),
        ),
        (
            6,
            (
                sel_any(),
                prop::option::weighted(0.4, 0u16..0o10000),
                prop::option::weighted(0.3, any::<u8>()),
                prop::option::weighted(0.3, any::<u8>()),
                prop::option::weighted(0.1, size_sel()),
                prop::option::weighted(0.3, time_sel()),
                prop::option::weighted(0.3, time_sel()),
                prop::option::weighted(
                    0.1,
                    (-2_000_000_000i64..4_000_000_000, 0u32..1_000_000_000),
                ),
            )
                .prop_map(
                    |(ino, perm, uid, gid, size, atime, mtime, crtime)| Op::SetAttr {
                        ino,
                        perm,
                        uid,
                        gid,
                        size,
                        atime,
                        mtime,
                        crtime,
                    },
                )
                .boxed(),
        ),
        (
            5,
            (sel_file(), size_sel())
                .prop_map(|(ino, size)| Op::Truncate { ino, size })
                .boxed(),
        ),
        (
            6,
            (sel_file(), fallocate_mode(), off(true), len(false))
                .prop_map(|(ino, mode, off, len)| Op::Fallocate {
                    ino,
                    mode,
                    off,
                    len,
                })
                .boxed(),
        ),
        (
            5,
            (
                sel_any(),
                xname(),
                xlen(),
                any::<u8>(),
                prop_oneof![
                    4 => Just(0u32),
                    2 => Just(XATTR_CREATE),
                    2 => Just(XATTR_REPLACE),
                    1 => Just(XATTR_CREATE | XATTR_REPLACE),
                ],
            )
                .prop_map(|(ino, name, len, seed, flags)| Op::SetXattr {
                    ino,
                    name,
                    len,
                    seed,
                    flags,
                })
                .boxed(),
        ),
        (
            2,
            (sel_any(), xname())
                .prop_map(|(ino, name)| Op::RemoveXattr { ino, name })
                .boxed(),
        ),
        (3, sel_any().prop_map(|ino| Op::Open { ino }).boxed()),
        (
            3,
            any::<u16>().prop_map(|which| Op::Release { which }).boxed(),
        ),
        (6, probe().prop_map(Op::Probe).boxed()),
        (
            if flavor == Flavor::Crash { 5 } else { 2 },
            (sel_file(), any::<u8>(), any::<u8>())
                .prop_map(|(ino, count, seed)| Op::Burst { ino, count, seed })
                .boxed(),
        ),
        (
            2,
            (sel_dir(), 1u8..=200, any::<u8>(), prop::bool::weighted(0.4))
                .prop_map(|(dir, count, width, remove)| Op::Populate {
                    dir,
                    count,
                    width,
                    remove,
                })
                .boxed(),
        ),
        (3, Just(Op::Checkpoint).boxed()),
        (2, Just(Op::Fsync).boxed()),
        (
            1,
            any::<u8>().prop_map(|name| Op::SnapCreate { name }).boxed(),
        ),
        (
            1,
            any::<u8>().prop_map(|name| Op::SnapDelete { name }).boxed(),
        ),
    ];
    match flavor {
        Flavor::Model => arms.push((1, Just(Op::Reopen).boxed())),
        Flavor::Crash => {
            arms.push((1, Just(Op::Reopen).boxed()));
            arms.push((2, any::<u64>().prop_map(|fate| Op::Crash { fate }).boxed()));
            arms.push((
                2,
                (
                    prop_oneof![8 => 0u16..10, 1 => 10u16..40],
                    any::<u64>(),
                    prop_oneof![
                        4 => Just(CutWhat::Checkpoint),
                        2 => Just(CutWhat::Fsync),
                        1 => Just(CutWhat::Snapshot),
                    ],
                )
                    .prop_map(|(ios, fate, what)| Op::CutDuring { ios, fate, what })
                    .boxed(),
            ));
        }
        Flavor::Twins => {}
    }
    weighted(arms)
}

pub fn ops(flavor: Flavor, max_len: usize) -> BoxedStrategy<Vec<Op>> {
    prop::collection::vec(op(flavor), 1..max_len).boxed()
}
