//! git in a real mount of the binary: a repository of a few hundred files
//! is built in the mount and, identically, on the local disk; both reach the
//! same commit IDs (git hashes every byte, mode and symlink). Then status is
//! clean, log is complete, gc and `fsck --full` pass, clones from the mount
//! to the local disk and from the local disk into the mount (and a push into
//! a bare repository in the mount) give the same trees, a branch checkout in
//! the mount writes the right bytes, and all of it survives unmount, fsck
//! and remount.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::{assert_same, walk, Compare, WalkOpts};
use common::*;

/// Files in the generated repository.
const FILES: u64 = 360;

/// git with a fixed identity and clock and no user or system config, so
/// that the same work gives the same commit IDs anywhere.
fn git(home: &Path, dir: &Path, args: &[&str]) -> String {
    ok(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Twin Tester")
        .env("GIT_AUTHOR_EMAIL", "tester@twinfs.invalid")
        .env("GIT_COMMITTER_NAME", "Twin Tester")
        .env("GIT_COMMITTER_EMAIL", "tester@twinfs.invalid")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000"))
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Text-like content for file `i`, generation `generation`.
fn source_text(i: u64, generation: u64, len: usize) -> Vec<u8> {
    let raw = pattern(i * 31 + generation, len);
    raw.iter()
        .map(|b| match b % 40 {
            0 => b'\n',
            n => b'a' + n % 26,
        })
        .collect()
}

/// Builds the repository at `repo`: three commits on `main` and two on
/// `feature`, ending on `main`. Returns (main, feature) commit IDs.
fn build_repo(home: &Path, repo: &Path) -> (String, String) {
    std::fs::create_dir_all(repo).expect("mkdir repo");
    git(home, repo, &["init", "-q", "-b", "main"]);
    for i in 0..FILES {
        let rel = format!("src/mod{:02}/sub{}/file{i:03}.rs", i % 24, i % 3);
        write(
            &repo.join(rel),
            &source_text(i, 0, (i as usize * 97) % 30_000),
        );
    }
    write(&repo.join("assets/blob.bin"), &pattern(7, (2 << 20) + 11));
    write(&repo.join("empty.txt"), b"");
    write(&repo.join("build.sh"), b"#!/bin/sh\necho build\n");
    std::fs::set_permissions(
        repo.join("build.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("src/mod00", repo.join("link-to-mod00")).expect("symlink");
    git(home, repo, &["add", "-A"]);
    git(home, repo, &["commit", "-q", "-m", "initial import"]);
    for i in (0..FILES).step_by(7) {
        let rel = format!("src/mod{:02}/sub{}/file{i:03}.rs", i % 24, i % 3);
        write(&repo.join(rel), &source_text(i, 1, 5000 + i as usize));
    }
    git(
        home,
        repo,
        &["commit", "-q", "-a", "-m", "edit every seventh file"],
    );
    git(home, repo, &["checkout", "-q", "-b", "feature"]);
    for i in 0..40 {
        write(
            &repo.join(format!("feature/new{i:02}.txt")),
            &source_text(1000 + i, 2, 1000 * i as usize),
        );
    }
    std::fs::remove_dir_all(repo.join("src/mod05")).expect("rm -r");
    git(home, repo, &["add", "-A"]);
    git(
        home,
        repo,
        &["commit", "-q", "-m", "feature: new files, mod05 gone"],
    );
    write(&repo.join("assets/blob.bin"), &pattern(8, 1 << 20));
    git(
        home,
        repo,
        &["commit", "-q", "-a", "-m", "feature: smaller blob"],
    );
    let feature = git(home, repo, &["rev-parse", "HEAD"]).trim().to_string();
    git(home, repo, &["checkout", "-q", "main"]);
    write(&repo.join("README"), b"main after the branch\n");
    git(home, repo, &["add", "README"]);
    git(home, repo, &["commit", "-q", "-m", "readme"]);
    let main = git(home, repo, &["rev-parse", "HEAD"]).trim().to_string();
    (main, feature)
}

fn assert_clean(home: &Path, repo: &Path, when: &str) {
    let st = git(
        home,
        repo,
        &["status", "--porcelain", "--untracked-files=all"],
    );
    assert!(
        st.is_empty(),
        "git status in {} {when} is not clean:\n{st}",
        repo.display()
    );
}

fn fsck_full(home: &Path, repo: &Path) {
    git(home, repo, &["fsck", "--full", "--strict", "--no-dangling"]);
}

/// The working trees of two checkouts hold the same entries and bytes
/// (modes and owners too; times differ by nature).
fn assert_same_worktree(what: &str, a: &Path, b: &Path) {
    let opts = WalkOpts {
        skip: vec![PathBuf::from(".git")],
    };
    let cmp = Compare {
        root_attrs: false,
        ..Compare::no_times()
    };
    assert_same(what, &walk(a, &opts), &walk(b, &opts), &cmp);
}

#[test]
fn git_works_in_the_mount_and_agrees_with_the_local_disk() {
    let dir = scratch("git");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    let native = dir.path().join("native");
    let (main, feature) = build_repo(&home, &native);

    let image = dir.path().join("vol.img");
    mkfs(&image, "4G");
    let mount = Mount::new(&image, &dir.path().join("mnt"), &[]);
    let repo = mount.path("repo");
    let got = build_repo(&home, &repo);
    assert_eq!(
        got,
        (main.clone(), feature.clone()),
        "commit IDs in the mount differ from the same work on the local disk"
    );
    assert_clean(&home, &repo, "after the commits");
    let log = git(&home, &repo, &["log", "--format=%H %s", "feature"]);
    assert_eq!(log.lines().count(), 4, "log of feature:\n{log}");
    assert!(log.starts_with(&feature), "log of feature:\n{log}");
    assert_same_worktree("main checked out, mount vs local disk", &native, &repo);

    git(&home, &repo, &["gc", "-q", "--aggressive", "--prune=now"]);
    fsck_full(&home, &repo);
    assert_clean(&home, &repo, "after gc");

    // From the mount out, and from the local disk in.
    let out_clone = dir.path().join("clone-out");
    git(
        &home,
        dir.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            out_clone.to_str().unwrap(),
        ],
    );
    fsck_full(&home, &out_clone);
    assert_same_worktree("clone out of the mount", &native, &out_clone);
    let in_clone = mount.path("clone-in");
    git(
        &home,
        dir.path(),
        &[
            "clone",
            "-q",
            "--no-local",
            native.to_str().unwrap(),
            in_clone.to_str().unwrap(),
        ],
    );
    fsck_full(&home, &in_clone);
    assert_clean(&home, &in_clone, "after clone");
    assert_same_worktree("clone into the mount", &native, &in_clone);

    // A bare repository in the mount, pushed to from the local disk.
    let bare = mount.path("bare.git");
    git(
        &home,
        dir.path(),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    git(
        &home,
        &native,
        &["push", "-q", bare.to_str().unwrap(), "main", "feature"],
    );
    fsck_full(&home, &bare);
    let heads = git(
        &home,
        &bare,
        &["for-each-ref", "--format=%(objectname) %(refname)"],
    );
    assert_eq!(
        heads,
        format!("{feature} refs/heads/feature\n{main} refs/heads/main\n")
    );

    // Another branch, checked out in the mount, against the same checkout outside.
    git(&home, &repo, &["checkout", "-q", "feature"]);
    git(&home, &native, &["checkout", "-q", "feature"]);
    assert_clean(&home, &repo, "after checkout of feature");
    assert!(
        !repo.join("src/mod05").exists(),
        "src/mod05 survived the checkout"
    );
    assert_same_worktree("feature checked out, mount vs local disk", &native, &repo);

    mount.unmount();
    assert_fsck_clean(&image, "after git work and a clean unmount");
    let mount = Mount::new(&image, &dir.path().join("mnt"), &[]);
    let repo = mount.path("repo");
    for r in [&repo, &mount.path("clone-in"), &mount.path("bare.git")] {
        fsck_full(&home, r);
    }
    assert_clean(&home, &repo, "after remount");
    assert_same_worktree("feature after remount", &native, &repo);
    assert_eq!(git(&home, &repo, &["rev-parse", "HEAD"]).trim(), feature);
    mount.unmount();
}
