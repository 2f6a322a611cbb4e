//! The tools a workstation trusts, through a real mount of the binary:
//! `cp -a`, `tar --xattrs --acls` and `rsync -aHAXS` copy a generated tree
//! into the mount, and the independent walker (`tests/common/tree.rs`) finds
//! every copy equal to the source — kinds, modes, owners, nanosecond mtimes,
//! symlink targets, xattrs and ACLs, hard-link groups, device numbers and
//! bytes — also after an incremental `rsync --delete`, and after unmount,
//! fsck and remount. The same copies made on the local disk are the control:
//! whatever the tools themselves do not carry over is known, not guessed.

mod common;

use std::path::Path;
use std::process::Command;

use common::gen::{self, OVER_4G_REL, OVER_4G_SIZE, SPARSE_REL, SPARSE_SIZE};
use common::tree::{self, assert_same, walk, Compare, WalkOpts};
use common::*;

/// Allocated bytes the sparse file may take in a copy (its data is ~3 MiB).
const SPARSE_MAX_ALLOCATED: u64 = 32 << 20;

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn cp_a(src: &Path, dst: &Path) {
    ok(Command::new("cp").arg("-a").arg(src).arg(dst));
}

fn tar_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir tar destination");
    sh(&format!(
        "tar -C {} --format=posix --xattrs --xattrs-include='*' --acls -S -cf - . \
         | tar -C {} --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -",
        quote(src),
        quote(dst)
    ));
}

fn rsync(src: &Path, dst: &Path, extra: &[&str]) {
    ok(Command::new("rsync")
        .arg("-aHAXS")
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display())));
}

fn assert_sparse(copy: &Path, what: &str) {
    let e = walk(copy, &WalkOpts::default());
    for (rel, size) in [(SPARSE_REL, SPARSE_SIZE), (OVER_4G_REL, OVER_4G_SIZE)] {
        let f = e.get(rel);
        assert_eq!(f.size, size, "{what}: size of {rel}");
        assert!(
            f.blocks * 512 <= SPARSE_MAX_ALLOCATED,
            "{what}: {rel} takes {} bytes on disk; it should stay sparse (≤ {SPARSE_MAX_ALLOCATED})",
            f.blocks * 512
        );
    }
}

/// Copies `src` into `dest_root/{cp,tar,rsync}` with each tool.
fn copy_with_every_tool(src: &Path, dest_root: &Path) {
    cp_a(src, &dest_root.join("cp"));
    tar_copy(src, &dest_root.join("tar"));
    rsync(src, &dest_root.join("rsync"), &[]);
}

const TOOLS: [&str; 3] = ["cp", "tar", "rsync"];

/// The incremental rsync. `--modify-window=-1` makes rsync compare
/// nanoseconds: by default it compares whole seconds only, so a directory
/// whose mtime differs from the source's within the same second (the
/// changes and the rsync run falling into one second) is left as it is —
/// on any file system.
const INCREMENTAL: [&str; 2] = ["--delete", "--modify-window=-1"];

/// The control: on the local disk each tool's copy equals the source in
/// every compared field, so a difference through the mount is twinfs's.
#[test]
fn native_copies_by_each_tool_equal_the_source() {
    let dir = scratch("native");
    let src = dir.path().join("src");
    gen::rich_tree(&src);
    let want = walk(&src, &WalkOpts::default());
    let copies = dir.path().join("copies");
    std::fs::create_dir(&copies).expect("mkdir");
    copy_with_every_tool(&src, &copies);
    for tool in TOOLS {
        let got = walk(&copies.join(tool), &WalkOpts::default());
        assert_same(
            &format!("native {tool} copy"),
            &want,
            &got,
            &Compare::default(),
        );
        assert_sparse(&copies.join(tool), &format!("native {tool} copy"));
    }
    gen::mutate(&src);
    let changed = walk(&src, &WalkOpts::default());
    rsync(&src, &copies.join("rsync"), &INCREMENTAL);
    let got = walk(&copies.join("rsync"), &WalkOpts::default());
    assert_same(
        "native rsync after the changes",
        &changed,
        &got,
        &Compare::default(),
    );
}

/// The walker is not blind: each kind of difference it is meant to see,
/// made on purpose in a copy, is reported at its path.
#[test]
fn the_comparer_reports_each_kind_of_difference() {
    let dir = scratch("comparer");
    let a = dir.path().join("a");
    gen::rich_tree(&a);
    let b = dir.path().join("b");
    cp_a(&a, &b);
    let same = walk(&b, &WalkOpts::default());
    let want = walk(&a, &WalkOpts::default());
    assert_same("untouched copy", &want, &same, &Compare::default());
    let acl = want
        .get("acl/file")
        .xattrs
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    assert!(
        acl.clone().any(|k| k == "system.posix_acl_access"),
        "walker misses ACLs: {:?}",
        acl.collect::<Vec<_>>()
    );
    assert!(want
        .get("acl/dir")
        .xattrs
        .contains_key(b"system.posix_acl_default".as_slice()));
    // One change of each kind.
    let p = |r: &str| b.join(r);
    std::fs::set_permissions(
        p("modes/private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::lchown(p("owners/nobody"), Some(65533), None).unwrap();
    let t = want.get("many/f020").mtime;
    tree::set_mtime(&p("many/f020"), t.0, (t.1 + 1) % 1_000_000_000);
    let sparse = std::fs::OpenOptions::new()
        .write(true)
        .open(p(SPARSE_REL))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"X", 300 * (1 << 20) + 200).unwrap();
    drop(sparse);
    tree::set_mtime(
        &p(SPARSE_REL),
        want.get(SPARSE_REL).mtime.0,
        want.get(SPARSE_REL).mtime.1,
    );
    std::fs::write(p("many/f030"), b"other").unwrap();
    std::fs::remove_file(p("links/rel")).unwrap();
    std::os::unix::fs::symlink("origX", p("links/rel")).unwrap();
    tree::set_xattr(&p("sizes/size-4097"), "user.note", b"hellO");
    ok(Command::new("setfacl")
        .args(["-m", "u:1000:r--"])
        .arg(p("acl/file")));
    // Break the hard link a/b/h2 (same bytes, a separate inode).
    std::fs::remove_file(p("a/b/h2")).unwrap();
    ok(Command::new("cp")
        .arg("-p")
        .arg(a.join("a/b/h2"))
        .arg(p("a/b/h2")));
    std::fs::remove_file(p("special/null")).unwrap();
    ok(Command::new("mknod")
        .args(["-m", "600"])
        .arg(p("special/null"))
        .args(["c", "1", "5"]));
    std::fs::remove_file(p("many/f040")).unwrap();
    std::fs::write(p("many/extra"), b"").unwrap();
    let got = walk(&b, &WalkOpts::default());
    let d = tree::diff(&want, &got, &Compare::default());
    let expect = [
        ("\"modes/private\": mode", ""),
        ("\"owners/nobody\": uid", ""),
        ("\"many/f020\": mtime", ""),
        ("\"big/sparse.img\": content", "offset 314573000"),
        ("\"many/f030\": size", ""),
        ("\"links/rel\": symlink target", ""),
        ("\"sizes/size-4097\": xattr user.note", ""),
        ("\"acl/file\": xattr system.posix_acl_access", ""),
        ("\"a/b/h2\": hard links", ""),
        ("\"links/orig\": nlink", ""),
        ("\"special/null\": rdev", ""),
        ("\"many/f040\": only in A", ""),
        ("\"many/extra\": only in B", ""),
    ];
    for (line, detail) in expect {
        assert!(
            d.iter().any(|l| l.starts_with(line) && l.contains(detail)),
            "the comparer did not report {line} {detail}; it reported:\n{}",
            d.join("\n")
        );
    }
}

/// Compares each tool's copy under `copies` with the manifest it should
/// equal; `when` goes into the messages.
fn assert_copies(copies: &Path, want: &[(&str, &tree::Manifest)], when: &str) {
    for (tool, m) in want {
        let got = walk(&copies.join(tool), &WalkOpts::default());
        assert_same(
            &format!("{tool} copy in the mount, {when}"),
            m,
            &got,
            &Compare::default(),
        );
        assert_sparse(
            &copies.join(tool),
            &format!("{tool} copy in the mount, {when}"),
        );
    }
}

/// cp -a, tar and rsync -aHAXS into the mount; an incremental
/// rsync --delete after changes; unmount, fsck, remount: every copy equals
/// its source in every field the walker compares, and the sparse file stays
/// sparse.
#[test]
fn copies_by_cp_tar_and_rsync_equal_the_source_through_changes_and_remount() {
    let dir = scratch("tools");
    let src = dir.path().join("src");
    gen::rich_tree(&src);
    let original = walk(&src, &WalkOpts::default());
    let image = dir.path().join("vol.img");
    mkfs(&image, "8G");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &[]);
    let copies = mount.path("copies");
    std::fs::create_dir(&copies).expect("mkdir in the mount");
    copy_with_every_tool(&src, &copies);
    assert_copies(
        &copies,
        &[("cp", &original), ("tar", &original), ("rsync", &original)],
        "first copy",
    );

    gen::mutate(&src);
    let changed = walk(&src, &WalkOpts::default());
    assert!(
        !tree::diff(&original, &changed, &Compare::default()).is_empty(),
        "mutate changed nothing"
    );
    rsync(&src, &copies.join("rsync"), &INCREMENTAL);
    let want = [("cp", &original), ("tar", &original), ("rsync", &changed)];
    assert_copies(&copies, &want, "after rsync --delete of the changes");

    mount.unmount();
    assert_fsck_clean(&image, "after the copies and a clean unmount");
    let mount = Mount::new(&image, &mp, &[]);
    assert_copies(&mount.path("copies"), &want, "after unmount and remount");
    // The root of the mount holds only what was put there.
    let names: Vec<_> = std::fs::read_dir(&mount.mp)
        .expect("readdir the mount")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("copies")]);
    // cp -a inside the mount (copy_file_range between two of its files).
    cp_a(&mount.path("copies/cp"), &mount.path("copies/cp-inside"));
    let got = walk(&mount.path("copies/cp-inside"), &WalkOpts::default());
    assert_same(
        "cp -a inside the mount",
        &original,
        &got,
        &Compare::default(),
    );
    assert_sparse(&mount.path("copies/cp-inside"), "cp -a inside the mount");
    // And back out: each tool reads the mount (xattrs, ACLs, holes) into a
    // copy on the local disk that equals the source.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    copy_with_every_tool(&mount.path("copies/rsync"), &out);
    for tool in TOOLS {
        let got = walk(&out.join(tool), &WalkOpts::default());
        let what = format!("{tool} copy out of the mount");
        assert_same(&what, &changed, &got, &Compare::default());
        assert_sparse(&out.join(tool), &what);
    }
    mount.unmount();
    assert_fsck_clean(&image, "after the remount");
}
