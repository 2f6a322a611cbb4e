//! A generated source tree with everything a workstation's file system must
//! carry through `cp -a`, `tar --xattrs --acls` and `rsync -aHAXS`
//! ([`rich_tree`]), and a round of changes to it ([`mutate`]) for an
//! incremental rsync.

use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{chown, lchown, symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tree::{remove_xattr, set_mtime, set_xattr};
use super::{ok, pattern};

/// The sparse file: its size and where it is.
pub const SPARSE_REL: &str = "big/sparse.img";
pub const SPARSE_SIZE: u64 = 1 << 30;
/// Data written into the sparse file, (offset, length): a few MiB in all.
pub const SPARSE_EXTENTS: [(u64, usize); 4] = [
    (0, 1 << 20),
    (300 * (1 << 20) + 123, (1 << 20) + 7),
    (512 * (1 << 20), 4096),
    (SPARSE_SIZE - (1 << 20) - 5, 1 << 20),
];
/// A sparse file past 4 GiB, with data across the 2^32 boundary (64-bit
/// offsets in every layer) and a tail block that is not whole.
pub const OVER_4G_REL: &str = "big/over-4g.img";
pub const OVER_4G_SIZE: u64 = (4 << 30) + 8193;
pub const OVER_4G_EXTENTS: [(u64, usize); 2] =
    [((4 << 30) - 5000, 10_000), ((4 << 30) + 8000, 193)];
/// Sizes that sit on and around block and page boundaries.
pub const FILE_SIZES: [usize; 9] = [0, 1, 4095, 4096, 4097, 8191, 65536, 123_457, (1 << 20) + 3];
/// Levels of the deep path.
pub const DEEP_LEVELS: usize = 60;

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

fn own(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

fn setfacl(args: &[&str], path: &Path) {
    ok(Command::new("setfacl").args(args).arg(path));
}

fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid path; makedev/mknod have no other preconditions.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn mkfifo(path: &Path, mode: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), mode) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    chmod(path, mode);
}

/// The deep path's directories, relative to the root.
pub fn deep_dir(levels: usize) -> PathBuf {
    let mut p = PathBuf::from("deep");
    for i in 0..levels {
        p.push(format!("level-{i:02}-{}", "abcdefghijklmnopqrstuvwxyz"));
    }
    p
}

/// The 255-byte names used.
pub fn long_names() -> Vec<OsString> {
    let mut utf8 = "é".repeat(127);
    utf8.push('z');
    vec![
        OsString::from("x".repeat(255)),
        OsString::from(utf8),
        OsString::from_vec([b"latin1-\xe9\xff-".to_vec(), vec![b'q'; 255 - 11]].concat()),
    ]
}

/// Builds the tree under `root` (which must not exist or be empty).
pub fn rich_tree(root: &Path) {
    mkdir(root);
    let r = |p: &str| root.join(p);
    // Sizes around the block boundaries, and a crowd of small files.
    for (i, &n) in FILE_SIZES.iter().enumerate() {
        write(&r(&format!("sizes/size-{n}")), &pattern(100 + i as u64, n));
    }
    for i in 0..150u64 {
        let n = (i as usize * 7919) % 20_000;
        write(&r(&format!("many/f{i:03}")), &pattern(1000 + i, n));
    }
    for (i, d) in ["a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/e"]
        .iter()
        .enumerate()
    {
        write(
            &r(&format!("{d}/file{i}")),
            &pattern(2000 + i as u64, 3000 * i + 1),
        );
    }
    mkdir(&r("empty"));
    // Hard links (a group across directories, a pair of empty files).
    write(&r("links/orig"), &pattern(3000, 5000));
    fs::hard_link(r("links/orig"), r("links/h1")).expect("link");
    fs::hard_link(r("links/orig"), r("a/b/h2")).expect("link");
    write(&r("links/empty1"), b"");
    fs::hard_link(r("links/empty1"), r("links/empty2")).expect("link");
    // Symlinks, dangling ones included.
    symlink("orig", r("links/rel")).expect("symlink");
    symlink("/etc/passwd", r("links/abs")).expect("symlink");
    symlink("no/such/file", r("links/dangling")).expect("symlink");
    symlink("../a", r("links/dirlink")).expect("symlink");
    symlink("loop", r("links/loop")).expect("symlink");
    symlink("t".repeat(1000), r("links/longtarget")).expect("symlink");
    // xattrs on files and a directory, binary and empty values.
    set_xattr(&r("sizes/size-4097"), "user.note", b"hello");
    set_xattr(&r("sizes/size-4097"), "user.empty", b"");
    set_xattr(&r("sizes/size-0"), "user.bin", b"\x00\x01\xff\x00zero");
    set_xattr(&r("many/f000"), "user.big", &pattern(3100, 3000));
    set_xattr(&r("a/b"), "user.dirnote", b"a directory's xattr");
    // POSIX ACLs: access ACLs on a file and a directory, a default ACL that
    // new entries inherit.
    write(&r("acl/file"), b"acl file\n");
    setfacl(&["-m", "u:1000:rw-,g:1001:r--,m::rw-"], &r("acl/file"));
    mkdir(&r("acl/dir"));
    setfacl(&["-m", "u:1000:rwx"], &r("acl/dir"));
    setfacl(&["-d", "-m", "u:1000:rwx,g:1001:r-x"], &r("acl/dir"));
    write(&r("acl/dir/inherited"), b"inherits the default ACL\n");
    mkdir(&r("acl/dir/sub"));
    // The sparse file: 1 GiB in size, a few MiB of data.
    sparse_file(&r(SPARSE_REL), SPARSE_SIZE, &SPARSE_EXTENTS, 5000);
    sparse_file(&r(OVER_4G_REL), OVER_4G_SIZE, &OVER_4G_EXTENTS, 5100);
    // Special files.
    mkdir(&r("special"));
    mkfifo(&r("special/fifo"), 0o640);
    mknod(&r("special/null"), libc::S_IFCHR | 0o600, 1, 3);
    mknod(&r("special/loopblk"), libc::S_IFBLK | 0o660, 7, 200);
    // Modes and owners (chown before chmod: chown drops set-user-ID).
    write(&r("modes/private"), b"0600\n");
    chmod(&r("modes/private"), 0o600);
    write(&r("modes/setuid"), b"#!/bin/sh\necho setuid\n");
    chmod(&r("modes/setuid"), 0o4755);
    write(&r("modes/setgid-file"), b"setgid\n");
    own(&r("modes/setgid-file"), 0, 1001);
    chmod(&r("modes/setgid-file"), 0o2755);
    write(&r("modes/none"), b"no permissions\n");
    chmod(&r("modes/none"), 0o000);
    mkdir(&r("modes/sticky-tmp"));
    chmod(&r("modes/sticky-tmp"), 0o1777);
    write(&r("modes/sticky-tmp/someones"), b"in a sticky dir\n");
    own(&r("modes/sticky-tmp/someones"), 1000, 1000);
    mkdir(&r("modes/sgid"));
    own(&r("modes/sgid"), 0, 1001);
    chmod(&r("modes/sgid"), 0o2775);
    write(&r("modes/sgid/inner"), b"group inherited\n");
    mkdir(&r("modes/sgid/subdir"));
    write(&r("owners/u1000"), b"1000\n");
    own(&r("owners/u1000"), 1000, 1000);
    write(&r("owners/nobody"), b"65534\n");
    own(&r("owners/nobody"), 65534, 65534);
    mkdir(&r("owners/dir"));
    own(&r("owners/dir"), 1000, 1001);
    symlink("u1000", r("owners/link")).expect("symlink");
    own(&r("owners/link"), 1234, 4321);
    // Names: unicode, blanks and control characters, not UTF-8, 255 bytes.
    for name in [
        "ünïcødé-日本語-🙂.txt",
        "with space",
        "tab\there",
        "new\nline",
        "-leading-dash",
    ] {
        write(&r("unicode").join(name), name.as_bytes());
    }
    write(&r("unicode/Ελληνικά/файл"), "κείμενο".as_bytes());
    for (i, name) in long_names().into_iter().enumerate() {
        write(&r("long").join(&name), &pattern(4000 + i as u64, 100 * i));
    }
    mkdir(&r("long").join("d".repeat(255)));
    write(
        &r("long").join("d".repeat(255)).join("f".repeat(255)),
        b"long dir, long name\n",
    );
    // A deep path.
    let deep = root.join(deep_dir(DEEP_LEVELS));
    write(&deep.join("bottom.txt"), b"sixty levels down\n");
    write(
        &root.join(deep_dir(DEEP_LEVELS / 2)).join("middle.txt"),
        b"thirty levels down\n",
    );
    stamp_mtimes(root);
}

fn sparse_file(path: &Path, size: u64, extents: &[(u64, usize)], seed: u64) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let f = fs::File::create(path).expect("create sparse");
    f.set_len(size).expect("set_len");
    for (i, &(off, len)) in extents.iter().enumerate() {
        f.write_all_at(&pattern(seed + i as u64, len), off)
            .expect("write sparse");
    }
}

/// Every path below `root` (and `root`), children before their parents.
fn post_order(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let p = all[i].clone();
        i += 1;
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            let mut kids: Vec<PathBuf> = fs::read_dir(&p)
                .expect("readdir")
                .map(|e| e.expect("entry").path())
                .collect();
            kids.sort();
            all.extend(kids);
        }
    }
    all.reverse();
    all
}

/// Gives every entry a distinct mtime with nanoseconds (0 and 999999999
/// included), children first so that directories keep theirs.
pub fn stamp_mtimes(root: &Path) {
    for (i, p) in post_order(root).iter().enumerate() {
        let i = i as i64;
        let nsec = match i % 4 {
            0 => 0,
            1 => 999_999_999,
            _ => (i * 123_456_791) % 1_000_000_000,
        };
        set_mtime(p, 1_500_000_000 + i * 3607, nsec);
    }
}

/// Changes to the tree for an incremental rsync: edits in place, appends,
/// truncation, deletes (files, a directory tree, a hard link), renames
/// (a file, a directory), new files and directories, mode, owner, xattr
/// and ACL changes, a retargeted symlink, a new hard link, a write into the
/// sparse file, and a fifo replaced by a regular file.
pub fn mutate(root: &Path) {
    let r = |p: &str| root.join(p);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(r("sizes/size-1048579"))
        .expect("open");
    f.write_all_at(b"edited in place", 500_000).expect("edit");
    drop(f);
    let mut data = fs::read(r("many/f001")).expect("read");
    data.extend_from_slice(&pattern(6001, 70_000));
    fs::write(r("many/f001"), &data).expect("append");
    fs::OpenOptions::new()
        .write(true)
        .open(r("many/f002"))
        .expect("open")
        .set_len(10)
        .expect("truncate");
    for i in 3..=10 {
        fs::remove_file(r(&format!("many/f{i:03}"))).expect("rm");
    }
    fs::remove_file(r("links/h1")).expect("rm link");
    fs::remove_dir_all(r("a/b/c")).expect("rm -r");
    fs::rename(r("many/f011"), r("many/renamed-011")).expect("rename");
    fs::rename(r("unicode/Ελληνικά"), r("unicode/Greek")).expect("rename dir");
    write(&r("new/file1"), &pattern(6002, 200_000));
    write(&r("new/dir/deeper/file2"), &pattern(6003, 4096 * 3));
    chmod(&r("modes/private"), 0o640);
    chown(r("owners/u1000"), Some(1001), Some(1001)).expect("chown");
    set_xattr(&r("sizes/size-4097"), "user.note", b"changed");
    remove_xattr(&r("sizes/size-4097"), "user.empty");
    set_xattr(&r("owners/dir"), "user.new", b"added later");
    setfacl(&["-x", "u:1000"], &r("acl/file"));
    setfacl(&["-m", "u:1002:r--"], &r("acl/dir/inherited"));
    fs::remove_file(r("links/dangling")).expect("rm symlink");
    symlink("elsewhere/now", r("links/dangling")).expect("symlink");
    fs::hard_link(r("many/f020"), r("links/h3")).expect("link");
    let sparse = fs::OpenOptions::new()
        .write(true)
        .open(r(SPARSE_REL))
        .expect("open sparse");
    sparse
        .write_all_at(&pattern(6004, 1 << 20), 700 << 20)
        .expect("write sparse");
    drop(sparse);
    fs::remove_file(r("special/fifo")).expect("rm fifo");
    write(&r("special/fifo"), b"a regular file now\n");
    // Nanosecond times on a few of the changed entries.
    set_mtime(&r("new/file1"), 1_700_000_000, 123_456_789);
    set_mtime(&r("many/f001"), 1_700_000_001, 1);
}
