//! The tools a workstation uses, through a real FUSE mount: trees copied in
//! and out come back identical (bytes, modes, links, xattrs).

mod fuse_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fuse_common::*;

/// A small tree with what archivers care about.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep/er")).unwrap();
    for i in 0..50 {
        fs::write(
            root.join(format!("src/f{i}.txt")),
            pattern(i * 997, i as u32),
        )
        .unwrap();
    }
    fs::write(root.join("src/deep/er/big.bin"), pattern(3 << 20, 77)).unwrap();
    fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/deep", root.join("link")).unwrap();
    fs::hard_link(root.join("src/f1.txt"), root.join("hard")).unwrap();
    setxattr(&root.join("src/f2.txt"), "user.note", b"kept", 0).unwrap();
}

/// `diff -r` plus a comparison of modes, link counts and xattrs.
fn assert_same_tree(a: &Path, b: &Path) {
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    // Directory sizes differ between file systems; everything else must not.
    let listing = |root: &Path| {
        let r = root.to_str().unwrap();
        let dirs = run("find", &[r, "-type", "d", "-printf", "%P %M %n\n"]);
        let rest = run(
            "find",
            &[r, "!", "-type", "d", "-printf", "%P %M %n %s %l\n"],
        );
        (dirs + &rest)
            .lines()
            .map(String::from)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(listing(a), listing(b));
    assert_eq!(
        getxattr(&b.join("src/f2.txt"), "user.note").unwrap(),
        b"kept"
    );
}

#[test]
fn rsync_cp_and_tar_round_trip_a_tree() {
    let m = Mounted::new(&[]);
    let outside = m.dir.path().join("outside");
    make_tree(&outside);
    // rsync in, with hard links, ACLs and xattrs.
    run(
        "rsync",
        &[
            "-aHAX",
            &format!("{}/", outside.display()),
            m.path("rsynced").to_str().unwrap(),
        ],
    );
    assert_same_tree(&outside, &m.path("rsynced"));
    // cp -a inside the mount.
    run(
        "cp",
        &[
            "-a",
            m.path("rsynced").to_str().unwrap(),
            m.path("copied").to_str().unwrap(),
        ],
    );
    assert_same_tree(&outside, &m.path("copied"));
    // tar out of the mount and back in.
    let tarball = m.dir.path().join("t.tar");
    run(
        "tar",
        &[
            "--xattrs",
            "-cf",
            tarball.to_str().unwrap(),
            "-C",
            m.path("copied").to_str().unwrap(),
            ".",
        ],
    );
    fs::create_dir(m.path("untarred")).unwrap();
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=user.*",
            "-xpf",
            tarball.to_str().unwrap(),
            "-C",
            m.path("untarred").to_str().unwrap(),
        ],
    );
    assert_same_tree(&outside, &m.path("untarred"));
}

#[test]
fn git_commits_and_checks_out_inside_the_mount() {
    let m = Mounted::new(&[]);
    let repo = m.path("repo");
    make_tree(&repo);
    let git = |args: &[&str]| {
        let mut all = vec![
            "-C",
            repo.to_str().unwrap(),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ];
        all.extend_from_slice(args);
        run("git", &all)
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "one"]);
    fs::write(repo.join("src/f3.txt"), b"changed").unwrap();
    fs::remove_file(repo.join("src/f4.txt")).unwrap();
    assert_eq!(
        git(&["status", "--porcelain"]),
        " M src/f3.txt\n D src/f4.txt\n"
    );
    git(&["checkout", "--", "."]);
    assert_eq!(git(&["status", "--porcelain"]), "");
    assert_eq!(
        fs::read(repo.join("src/f3.txt")).unwrap(),
        pattern(3 * 997, 3)
    );
    git(&["fsck", "--strict", "--no-progress"]);
}
