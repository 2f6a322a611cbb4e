//! Snapshots through a real mount of the binary: `twinfs snapshot create`,
//! then changes; `.snapshot/NAME` shows the tree as it was in every field
//! the walker compares, refuses every change with EROFS, and is hidden from
//! `ls -a` of the root and from `cp -a` and `rsync -a` of the mount;
//! `snapshot list` and `delete` do what they say, a deleted snapshot's
//! blocks come back, and snapshots survive unmount, fsck and remount.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gen;
use common::tree::{assert_same, walk, Compare, WalkOpts};
use common::*;

const VICTIM_BYTES: usize = 16 << 20;

fn snapshot(args: &[&str], mp: &Path) -> std::process::Output {
    output(
        Command::new(twinfs())
            .arg("snapshot")
            .arg(args[0])
            .arg(mp)
            .args(&args[1..]),
    )
}

fn snapshot_ok(args: &[&str], mp: &Path) -> String {
    let out = snapshot(args, mp);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("twinfs snapshot {args:?}"), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `snapshot list`: (name, cp) per line.
fn list(mp: &Path) -> Vec<(String, u64)> {
    snapshot_ok(&["list"], mp)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                f.len(),
                3,
                "snapshot list line {l:?}: want NAME<TAB>cp N<TAB>HASH"
            );
            assert_eq!(f[2].len(), 64, "root hash in {l:?}");
            let cp = f[1].strip_prefix("cp ").and_then(|n| n.parse().ok());
            (
                f[0].to_string(),
                cp.unwrap_or_else(|| panic!("cp in {l:?}")),
            )
        })
        .collect()
}

fn names_in(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name())
        .collect();
    v.sort();
    v
}

fn assert_erofs(what: &str, r: std::io::Result<impl std::fmt::Debug>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!("{what} under .snapshot: want EROFS, got {other:?}"),
    }
}

#[test]
fn snapshots_keep_the_old_tree_read_only_and_out_of_copies() {
    let dir = scratch("snapshot");
    let image = dir.path().join("vol.img");
    mkfs(&image, "4G");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &[]);
    // The generated tree, made directly in the mount this time.
    let data = mount.path("data");
    gen::rich_tree(&data);
    std::fs::write(mount.path("data/victim"), pattern(77, VICTIM_BYTES)).expect("write victim");
    let before = walk(&data, &WalkOpts::default());

    let out = snapshot_ok(&["create", "s1"], &mount.mp);
    assert_eq!(out.trim(), "snapshot s1 created");
    gen::mutate(&data);
    std::fs::remove_file(mount.path("data/victim")).expect("rm victim");
    let after = walk(&data, &WalkOpts::default());
    assert!(!common::tree::diff(&before, &after, &Compare::default()).is_empty());

    let snap = mount.path(".snapshot/s1/data");
    assert_same(
        "snapshot s1 vs the tree when it was taken",
        &before,
        &walk(&snap, &WalkOpts::default()),
        &Compare::default(),
    );
    assert_same(
        "live tree after the snapshot",
        &after,
        &walk(&data, &WalkOpts::default()),
        &Compare::default(),
    );

    // Hidden from listings and copies of the mount, reachable by name.
    let ls = ok(Command::new("ls").arg("-a").arg(&mount.mp));
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        [".", "..", "data"],
        "ls -a of the mount root"
    );
    assert!(
        mount.path(".snapshot").is_dir(),
        ".snapshot is not reachable by name"
    );
    assert_eq!(names_in(&mount.path(".snapshot")), [OsString::from("s1")]);
    let copies = dir.path().join("copies");
    std::fs::create_dir(&copies).expect("mkdir");
    ok(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", mount.mp.display()))
        .arg(copies.join("cp")));
    ok(Command::new("rsync")
        .arg("-aHAXS")
        .arg(format!("{}/", mount.mp.display()))
        .arg(copies.join("rsync")));
    for tool in ["cp", "rsync"] {
        assert_eq!(
            names_in(&copies.join(tool)),
            [OsString::from("data")],
            "{tool} of the mount root"
        );
        assert_same(
            &format!("{tool} copy of the mount"),
            &after,
            &walk(&copies.join(tool).join("data"), &WalkOpts::default()),
            &Compare::default(),
        );
    }

    // Read-only.
    assert_erofs("create", std::fs::File::create(snap.join("new-file")));
    assert_erofs(
        "write",
        std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join("many/f020")),
    );
    assert_erofs("unlink", std::fs::remove_file(snap.join("many/f020")));
    assert_erofs("mkdir", std::fs::create_dir(snap.join("newdir")));
    assert_erofs(
        "rename",
        std::fs::rename(snap.join("many/f020"), snap.join("many/f021")),
    );
    assert_erofs(
        "chmod",
        std::fs::set_permissions(
            snap.join("many/f020"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
    );
    let setx = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1"])
        .arg(snap.join("many/f020"))
        .output()
        .expect("setfattr");
    assert!(
        !setx.status.success()
            && String::from_utf8_lossy(&setx.stderr).contains("Read-only file system"),
        "{}",
        describe("setfattr under .snapshot", &setx)
    );
    assert_same(
        "snapshot s1 after the refused changes",
        &before,
        &walk(&snap, &WalkOpts::default()),
        &Compare::default(),
    );

    // A second snapshot with the default name; list; a duplicate is refused.
    let out = snapshot_ok(&["create"], &mount.mp);
    let auto = out
        .trim()
        .strip_prefix("snapshot ")
        .and_then(|s| s.strip_suffix(" created"))
        .expect("name")
        .to_string();
    assert!(auto.starts_with("cp-"), "default snapshot name {auto:?}");
    let l = list(&mount.mp);
    assert_eq!(
        l.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["s1", auto.as_str()],
        "snapshot list"
    );
    assert!(l[0].1 < l[1].1, "snapshot CPs {l:?}");
    // (That the default name is the CP it holds is checked on its own in
    // the_default_snapshot_name_is_the_cp_it_holds.)
    let dup = snapshot(&["create", "s1"], &mount.mp);
    assert_eq!(
        dup.status.code(),
        Some(1),
        "{}",
        describe("duplicate snapshot name", &dup)
    );
    assert_eq!(
        String::from_utf8_lossy(&dup.stderr).trim().lines().count(),
        1,
        "{}",
        describe("duplicate snapshot name", &dup)
    );
    let bad = snapshot(&["create", ".hidden"], &mount.mp);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        describe("invalid snapshot name", &bad)
    );

    mount.unmount();
    assert_fsck_clean(&image, "with two snapshots");
    let mount = Mount::new(&image, &mp, &[]);
    let snap = mount.path(".snapshot/s1/data");
    assert_same(
        "snapshot s1 after remount",
        &before,
        &walk(&snap, &WalkOpts::default()),
        &Compare::default(),
    );
    assert_same(
        "snapshot cp-N after remount",
        &after,
        &walk(
            &mount.path(format!(".snapshot/{auto}/data")),
            &WalkOpts::default(),
        ),
        &Compare::default(),
    );

    // Status says how much only the snapshots keep: the victim, deleted
    // from the live tree since s1 was taken.
    let held = |m: &Mount| {
        m.status()["capacity"]["snapshot_bytes"]
            .as_u64()
            .expect("snapshot_bytes")
    };
    assert!(
        held(&mount) >= VICTIM_BYTES as u64,
        "status counts {} bytes kept only by snapshots; the {VICTIM_BYTES}-byte victim is one of them",
        held(&mount)
    );

    // Delete: gone from list and view; the victim's blocks come back.
    let (bsize, _, avail_before) = statfs(&mount.mp);
    let out = snapshot_ok(&["delete", "s1"], &mount.mp);
    assert_eq!(out.trim(), "snapshot s1 deleted");
    assert_eq!(
        list(&mount.mp)
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&auto)
    );
    assert!(
        !mount.path(".snapshot/s1").exists(),
        ".snapshot/s1 still there after delete"
    );
    assert_eq!(names_in(&mount.path(".snapshot")), [OsString::from(&auto)]);
    let mut avail = avail_before;
    let freed = wait_for(Duration::from_secs(30), || {
        mount.checkpoint();
        avail = statfs(&mount.mp).2;
        avail.saturating_sub(avail_before) * bsize >= (VICTIM_BYTES as u64) * 9 / 10
    });
    assert!(
        freed,
        "deleting s1 gave back {} bytes; the {VICTIM_BYTES} bytes only it kept should come back",
        avail.saturating_sub(avail_before) * bsize
    );
    assert!(
        held(&mount) < VICTIM_BYTES as u64 / 10,
        "after deleting s1, snapshots keep {} bytes",
        held(&mount)
    );
    let missing = snapshot(&["delete", "s1"], &mount.mp);
    assert_eq!(
        missing.status.code(),
        Some(1),
        "{}",
        describe("deleting a deleted snapshot", &missing)
    );
    assert_same(
        "live tree at the end",
        &after,
        &walk(&mount.path("data"), &WalkOpts::default()),
        &Compare::default(),
    );
    mount.unmount();
    assert_fsck_clean(&image, "after deleting a snapshot");
}

/// The man page: "default cp-N after the CP number". Whether the volume has
/// changes to commit or not when the snapshot is taken, the name `cp-N` the
/// command prints and lists is the CP the snapshot holds.
#[test]
fn the_default_snapshot_name_is_the_cp_it_holds() {
    let dir = scratch("snapname");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mount = Mount::new(&image, &dir.path().join("mnt"), &["--cp-interval", "3600"]);
    let created = |out: String| {
        out.trim()
            .strip_prefix("snapshot ")
            .and_then(|s| s.strip_suffix(" created"))
            .unwrap_or_else(|| panic!("snapshot create printed {out:?}"))
            .to_string()
    };
    // With changes not yet committed.
    std::fs::write(mount.path("a"), b"dirty").expect("write");
    let dirty = created(snapshot_ok(&["create"], &mount.mp));
    // With nothing to commit: a checkpoint just took everything.
    std::fs::write(mount.path("b"), b"committed").expect("write");
    let cp = mount.checkpoint();
    let clean = created(snapshot_ok(&["create"], &mount.mp));
    let l = list(&mount.mp);
    let named: Vec<(String, String)> = l
        .iter()
        .map(|(n, c)| (n.clone(), format!("cp-{c}")))
        .collect();
    eprintln!("after CP {cp}: snapshots (name, CP held) {named:?}");
    for (name, held) in &named {
        assert_eq!(
            name, held,
            "snapshot {name:?} holds {held}: the default name must be the CP it holds \
             (created with changes pending: {dirty:?}; right after `twinfs checkpoint` committed CP {cp}: {clean:?})"
        );
    }
    assert_eq!(named.len(), 2, "snapshots: {l:?}");
    mount.unmount();
}
