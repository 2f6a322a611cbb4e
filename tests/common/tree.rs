//! An independent tree walker and comparer: what `cp -a`, `tar` and
//! `rsync -aHAXS` promise to carry over, checked field by field.
//!
//! [`walk`] records, for every path below a root (the root itself is `""`):
//! kind, permission bits (`mode & 0o7777`), uid, gid, nanosecond mtime,
//! size and content digest of regular files, symlink targets, device numbers,
//! every xattr (including `system.posix_acl_access`/`_default`), link count
//! and the hard-link group (the other paths of the tree that share the inode).
//! [`diff`] compares two such manifests and returns one line per difference,
//! so a failing test says exactly what differs where.
//!
//! Content digests do not depend on how a file is laid out: the file is cut
//! into aligned 64 KiB chunks, chunks that are all zeros are skipped (holes
//! found with SEEK_DATA are not even read), and each other chunk is hashed
//! with its offset. A sparse 1 GiB file costs only its data to digest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Granularity of content digests.
const CHUNK: u64 = 64 * 1024;
/// Read size while digesting.
const READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// What the walker saw at one path.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Regular files and symlinks.
    pub size: u64,
    /// 512-byte blocks allocated (not compared; for sparse checks).
    pub blocks: u64,
    pub nlink: u64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Character and block devices.
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Other paths of the tree with the same inode (non-directories).
    pub links: BTreeSet<PathBuf>,
    /// Layout-independent digest of a regular file's bytes.
    pub digest: Option<u128>,
    /// Inode number (not compared).
    pub ino: u64,
}

/// Every path below a root, relative to it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub root: PathBuf,
    pub entries: BTreeMap<PathBuf, Entry>,
}

impl Manifest {
    /// The entry at `rel`, or a panic naming it.
    pub fn get(&self, rel: &str) -> &Entry {
        self.entries
            .get(Path::new(rel))
            .unwrap_or_else(|| panic!("{rel:?} not in the tree at {}", self.root.display()))
    }

    /// Number of entries of each kind, for messages.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.entries.values() {
            *counts.entry(format!("{:?}", e.kind)).or_default() += 1;
        }
        format!("{counts:?}")
    }
}

/// What [`walk`] leaves out.
#[derive(Debug, Clone, Default)]
pub struct WalkOpts {
    /// Relative paths not to descend into or record (e.g. `.git`).
    pub skip: Vec<PathBuf>,
}

/// Walks `root` (not following symlinks) and records every entry.
pub fn walk(root: &Path, opts: &WalkOpts) -> Manifest {
    let mut entries = BTreeMap::new();
    let mut by_inode: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = std::fs::symlink_metadata(&full)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let entry = describe_entry(&full, &md);
        if entry.kind == Kind::Dir {
            let rd = std::fs::read_dir(&full)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()));
            for child in rd {
                let child = child.unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()));
                let crel = rel.join(child.file_name());
                if !opts.skip.contains(&crel) {
                    stack.push(crel);
                }
            }
        } else {
            by_inode
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        entries.insert(rel, entry);
    }
    for group in by_inode.values() {
        for p in group {
            let others: BTreeSet<PathBuf> = group.iter().filter(|q| *q != p).cloned().collect();
            entries.get_mut(p).expect("walked").links = others;
        }
    }
    Manifest {
        root: root.to_path_buf(),
        entries,
    }
}

fn describe_entry(full: &Path, md: &std::fs::Metadata) -> Entry {
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        Kind::Socket
    };
    let target = (kind == Kind::Symlink).then(|| {
        std::fs::read_link(full)
            .unwrap_or_else(|e| panic!("readlink {}: {e}", full.display()))
            .into_os_string()
            .into_vec_bytes()
    });
    let digest = (kind == Kind::File).then(|| digest_file(full, md.len()));
    Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        size: md.len(),
        blocks: md.blocks(),
        nlink: md.nlink(),
        target,
        rdev: matches!(kind, Kind::Char | Kind::Block).then(|| md.rdev()),
        xattrs: xattrs(full),
        links: BTreeSet::new(),
        digest,
        ino: md.ino(),
    }
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}
impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Every xattr of `path` itself (l*xattr: symlinks are not followed).
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cpath(path);
    let mut out = BTreeMap::new();
    let names = loop {
        // SAFETY: a null buffer of size 0 asks for the size only.
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return out;
            }
            panic!("llistxattr {}: {e}", path.display());
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf has buf.len() writable bytes.
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m >= 0 {
            buf.truncate(m as usize);
            break buf;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ERANGE),
            "llistxattr {}: {e}",
            path.display()
        );
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("xattr name without NUL");
        let value = loop {
            // SAFETY: size query with a null buffer.
            let n = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            if n < 0 {
                panic!(
                    "lgetxattr {} {}: {}",
                    path.display(),
                    String::from_utf8_lossy(name),
                    std::io::Error::last_os_error()
                );
            }
            let mut buf = vec![0u8; n as usize];
            // SAFETY: buf has buf.len() writable bytes.
            let m = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if m >= 0 {
                buf.truncate(m as usize);
                break buf;
            }
        };
        out.insert(name.to_vec(), value);
    }
    out
}

/// Sets xattr `name` of `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    try_set_xattr(path, name, value)
        .unwrap_or_else(|e| panic!("lsetxattr {} {name}: {e}", path.display()));
}

/// Sets xattr `name` of `path` (not following symlinks), or says why not.
pub fn try_set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = cpath(path);
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings and a value buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes xattr `name` of `path`.
pub fn remove_xattr(path: &Path, name: &str) {
    let c = cpath(path);
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings.
    let r = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    assert_eq!(
        r,
        0,
        "lremovexattr {} {name}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets the mtime (and atime) of `path` itself to `secs.nsecs`.
pub fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let c = cpath(path);
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsecs,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsecs,
        },
    ];
    // SAFETY: c is a valid path, ts two valid timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The layout-independent digest of a file's bytes (see the module doc).
pub fn digest_file(path: &Path, size: u64) -> u128 {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h1 = DefaultHasher::new();
    let mut h2 = DefaultHasher::new();
    h2.write_u64(0x5eed_0f7f_1e00);
    h1.write_u64(size);
    h2.write_u64(size);
    let mut buf = vec![0u8; READ_BYTES];
    let mut pos = 0u64;
    while pos < size {
        let (start, end) = data_extent(&f, pos, size);
        if start >= size {
            break;
        }
        let mut off = start - start % CHUNK;
        while off < end {
            let want = ((end - off) as usize).min(READ_BYTES);
            let got = read_full(&f, &mut buf[..want], off, path);
            if got == 0 {
                break;
            }
            for (i, chunk) in buf[..got].chunks(CHUNK as usize).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    let at = off + i as u64 * CHUNK;
                    h1.write_u64(at);
                    h1.write(chunk);
                    h2.write(chunk);
                    h2.write_u64(at ^ 0xa5a5);
                }
            }
            off += got as u64;
        }
        pos = end.max(pos + 1);
    }
    ((h1.finish() as u128) << 64) | h2.finish() as u128
}

/// The next data extent at or after `pos`, rounded out to whole chunks:
/// (start, end). Falls back to "everything is data" without SEEK_DATA.
fn data_extent(f: &File, pos: u64, size: u64) -> (u64, u64) {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an open descriptor.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => (size, size),
            _ => (pos, size),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let hole = if hole < 0 { size } else { hole as u64 };
    let start = data as u64;
    let end = hole.min(size).max(start + 1);
    let end = end.div_ceil(CHUNK).saturating_mul(CHUNK).min(size);
    (start, end)
}

fn read_full(f: &File, buf: &mut [u8], off: u64, path: &Path) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read {} at {}: {e}", path.display(), off + got as u64),
        }
    }
    got
}

/// Which fields [`diff`] compares beyond the always-compared ones (kind,
/// permission bits, owner, size, content, symlink target, device numbers,
/// file link counts and hard-link groups).
#[derive(Debug, Clone)]
pub struct Compare {
    /// Compare the root directory's own attributes.
    pub root_attrs: bool,
    pub file_mtime: bool,
    pub dir_mtime: bool,
    pub symlink_mtime: bool,
    pub xattrs: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            root_attrs: true,
            file_mtime: true,
            dir_mtime: true,
            symlink_mtime: true,
            xattrs: true,
        }
    }
}

impl Compare {
    /// Contents, kinds, modes and owners only.
    pub fn no_times() -> Self {
        Compare {
            file_mtime: false,
            dir_mtime: false,
            symlink_mtime: false,
            ..Compare::default()
        }
    }
}

fn show_path(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        "(root)".into()
    } else {
        format!("{:?}", p.as_os_str())
    }
}

fn show_bytes(v: &[u8]) -> String {
    if v.len() <= 64 && v.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        let mut s = format!("{} bytes ", v.len());
        for b in v.iter().take(48) {
            let _ = write!(s, "{b:02x}");
        }
        if v.len() > 48 {
            s.push('…');
        }
        s
    }
}

/// Every difference between `a` and `b`, one line each ("A" is `a`).
pub fn diff(a: &Manifest, b: &Manifest, cmp: &Compare) -> Vec<String> {
    let mut out = Vec::new();
    for (p, ea) in &a.entries {
        let Some(eb) = b.entries.get(p) else {
            out.push(format!("{}: only in A ({:?})", show_path(p), ea.kind));
            continue;
        };
        if p.as_os_str().is_empty() && !cmp.root_attrs {
            continue;
        }
        diff_entry(p, ea, eb, a, b, cmp, &mut out);
    }
    for (p, eb) in &b.entries {
        if !a.entries.contains_key(p) {
            out.push(format!("{}: only in B ({:?})", show_path(p), eb.kind));
        }
    }
    out
}

fn diff_entry(
    p: &Path,
    ea: &Entry,
    eb: &Entry,
    a: &Manifest,
    b: &Manifest,
    cmp: &Compare,
    out: &mut Vec<String>,
) {
    let name = show_path(p);
    let mut field = |what: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name}: {what}: A={x} B={y}"));
        }
    };
    field("kind", format!("{:?}", ea.kind), format!("{:?}", eb.kind));
    if ea.kind != eb.kind {
        return;
    }
    if ea.kind != Kind::Symlink {
        field(
            "mode",
            format!("{:04o}", ea.perm),
            format!("{:04o}", eb.perm),
        );
    }
    field("uid", ea.uid.to_string(), eb.uid.to_string());
    field("gid", ea.gid.to_string(), eb.gid.to_string());
    let mtime_wanted = match ea.kind {
        Kind::Dir => cmp.dir_mtime,
        Kind::Symlink => cmp.symlink_mtime,
        _ => cmp.file_mtime,
    };
    if mtime_wanted {
        let t = |m: (i64, i64)| format!("{}.{:09}", m.0, m.1);
        field("mtime", t(ea.mtime), t(eb.mtime));
    }
    match ea.kind {
        Kind::File => {
            field("size", ea.size.to_string(), eb.size.to_string());
            if ea.digest != eb.digest && ea.size == eb.size {
                let at = first_differing_offset(&a.root.join(p), &b.root.join(p)).map_or(
                    "unknown offset (a tree changed since the walk)".into(),
                    |o| format!("offset {o}"),
                );
                field("content", "…".into(), format!("differs first at {at}"));
            }
        }
        Kind::Symlink => field(
            "symlink target",
            show_bytes(ea.target.as_deref().unwrap_or_default()),
            show_bytes(eb.target.as_deref().unwrap_or_default()),
        ),
        Kind::Char | Kind::Block => {
            field("rdev", format!("{:?}", ea.rdev), format!("{:?}", eb.rdev))
        }
        _ => {}
    }
    if ea.kind != Kind::Dir {
        field("nlink", ea.nlink.to_string(), eb.nlink.to_string());
        field(
            "hard links",
            format!("{:?}", ea.links),
            format!("{:?}", eb.links),
        );
    }
    if cmp.xattrs {
        let names: BTreeSet<&Vec<u8>> = ea.xattrs.keys().chain(eb.xattrs.keys()).collect();
        for n in names {
            let va = ea
                .xattrs
                .get(n)
                .map_or("(absent)".into(), |v| show_bytes(v));
            let vb = eb
                .xattrs
                .get(n)
                .map_or("(absent)".into(), |v| show_bytes(v));
            field(&format!("xattr {}", String::from_utf8_lossy(n)), va, vb);
        }
    }
}

/// First offset where two files differ (reading both whole), if they do.
pub fn first_differing_offset(a: &Path, b: &Path) -> Option<u64> {
    let fa = File::open(a).ok()?;
    let fb = File::open(b).ok()?;
    let mut ba = vec![0u8; READ_BYTES];
    let mut bb = vec![0u8; READ_BYTES];
    let mut off = 0u64;
    loop {
        let na = read_full(&fa, &mut ba, off, a);
        let nb = read_full(&fb, &mut bb, off, b);
        if let Some(i) = super::first_difference(&ba[..na], &bb[..nb]) {
            return Some(off + i as u64);
        }
        if na == 0 {
            return None;
        }
        off += na as u64;
    }
}

/// Panics listing every difference (up to 200) between the trees, with
/// what was compared, unless there is none.
pub fn assert_same(what: &str, a: &Manifest, b: &Manifest, cmp: &Compare) {
    let d = diff(a, b, cmp);
    if d.is_empty() {
        return;
    }
    let mut msg = format!(
        "{what}: {} differences between\n  A = {} {}\n  B = {} {}\ncompared: {cmp:?}\n",
        d.len(),
        a.root.display(),
        a.summary(),
        b.root.display(),
        b.summary()
    );
    for line in d.iter().take(200) {
        msg.push_str("  ");
        msg.push_str(line);
        msg.push('\n');
    }
    panic!("{msg}");
}

/// `OsStr` of raw bytes (names that are not UTF-8 are fine here).
pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
