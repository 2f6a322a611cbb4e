//! The read-only `/.snapshot` directory through a real FUSE mount.

mod fuse_common;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_common::*;
use twinfs_fs::fuse::{LIVE_INO_LIMIT, SNAPSHOT_DIR_INO};

fn names(p: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn snapshots_show_the_old_tree_while_the_live_one_changes() {
    let m = Mounted::new(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    let old = pattern(300_000, 1);
    fs::write(m.path("dir/file"), &old).unwrap();
    std::os::unix::fs::symlink("dir/file", m.path("link")).unwrap();
    setxattr(&m.path("dir/file"), "user.v", b"old", 0).unwrap();
    m.volume.snapshot_create("monday").unwrap();
    // Change everything after the snapshot.
    fs::write(m.path("dir/file"), b"new contents").unwrap();
    setxattr(&m.path("dir/file"), "user.v", b"new", 0).unwrap();
    fs::write(m.path("dir/added"), b"later").unwrap();
    fs::remove_file(m.path("link")).unwrap();
    m.volume.snapshot_create("tuesday").unwrap();

    assert_eq!(
        names(&m.path(".snapshot")),
        ["monday", "tuesday"].map(String::from).into()
    );
    let mon = m.path(".snapshot/monday");
    assert_eq!(names(&mon), ["dir", "link"].map(String::from).into());
    assert_eq!(fs::read(mon.join("dir/file")).unwrap(), old);
    assert_eq!(fs::read(mon.join("link")).unwrap(), old);
    assert_eq!(getxattr(&mon.join("dir/file"), "user.v").unwrap(), b"old");
    assert_eq!(names(&mon.join("dir")), ["file"].map(String::from).into());
    let tue = m.path(".snapshot/tuesday");
    assert_eq!(fs::read(tue.join("dir/file")).unwrap(), b"new contents");
    assert_eq!(fs::read(tue.join("dir/added")).unwrap(), b"later");
    assert_eq!(fs::read(m.path("dir/file")).unwrap(), b"new contents");

    // Inode numbers keep the trees apart.
    let live = fs::metadata(m.path("dir/file")).unwrap().ino();
    let snap = fs::metadata(mon.join("dir/file")).unwrap().ino();
    assert!(live < LIVE_INO_LIMIT);
    assert!(snap > LIVE_INO_LIMIT && snap % LIVE_INO_LIMIT == live);
    assert_eq!(
        fs::metadata(m.path(".snapshot")).unwrap().ino(),
        SNAPSHOT_DIR_INO
    );
    // `..` of a snapshot root is .snapshot.
    let dotdot = fs::metadata(mon.join("..")).unwrap().ino();
    assert_eq!(dotdot, SNAPSHOT_DIR_INO);
}

#[test]
fn everything_under_dot_snapshot_is_read_only() {
    let m = Mounted::new(&[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"frozen").unwrap();
    m.volume.snapshot_create("s").unwrap();
    let s = m.path(".snapshot/s");
    let f = s.join("d/f");
    assert_eq!(errno_of(fs::write(s.join("new"), b"x")), libc::EROFS);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        libc::EROFS
    );
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .read(true)
                .truncate(true)
                .write(true)
                .open(&f)
        ),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(s.join("d/sub"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(&f)), libc::EROFS);
    assert_eq!(errno_of(fs::remove_dir(s.join("d"))), libc::EROFS);
    assert_eq!(errno_of(renameat2(&f, &s.join("d/g"), 0)), libc::EROFS);
    assert_eq!(errno_of(renameat2(&f, &m.path("stolen"), 0)), libc::EROFS);
    assert_eq!(
        errno_of(fs::set_permissions(&f, fs::Permissions::from_mode(0o777))),
        libc::EROFS
    );
    assert_eq!(errno_of(setxattr(&f, "user.x", b"1", 0)), libc::EROFS);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", s.join("l"))),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::write(m.path(".snapshot/x"), b"")), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(m.path(".snapshot/y"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_dir(m.path(".snapshot"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_dir(m.path(".snapshot/s"))), libc::EROFS);
    assert_eq!(errno_of(fs::create_dir(m.path(".snapshot"))), libc::EEXIST);
    assert_eq!(fs::read(&f).unwrap(), b"frozen");
}

#[test]
fn deleted_snapshots_disappear_and_a_new_one_under_a_reused_id_shows_its_own_data() {
    let m = Mounted::new(&[]);
    fs::write(m.path("f"), b"first").unwrap();
    m.volume.snapshot_create("a").unwrap();
    let first = m.path(".snapshot/a/f");
    assert_eq!(fs::read(&first).unwrap(), b"first");
    let old_ino = fs::metadata(&first).unwrap().ino();
    m.volume.snapshot_delete("a").unwrap();
    assert!(names(&m.path(".snapshot")).is_empty());
    assert_eq!(errno_of(fs::metadata(m.path(".snapshot/a"))), libc::ENOENT);
    fs::write(m.path("f"), b"second").unwrap();
    m.volume.snapshot_create("a").unwrap();
    assert_eq!(fs::read(m.path(".snapshot/a/f")).unwrap(), b"second");
    assert_ne!(
        fs::metadata(m.path(".snapshot/a/f")).unwrap().ino(),
        old_ino
    );
}

#[test]
fn copying_the_mount_does_not_copy_snapshots() {
    let m = Mounted::new(&[]);
    fs::create_dir(m.path("src")).unwrap();
    fs::write(m.path("src/f"), b"x").unwrap();
    m.volume.snapshot_create("s").unwrap();
    let out = m.dir.path().join("copy");
    run(
        "cp",
        &["-a", m.root().to_str().unwrap(), out.to_str().unwrap()],
    );
    assert_eq!(names(&out), ["src"].map(String::from).into());
}
