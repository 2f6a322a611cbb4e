//! Each error a new user meets gets one cause and one fix (issue 19): the
//! exact line on stderr and the exit code, and nothing left behind.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(twinfs())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the twinfs binary runs")
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Exit 1 with exactly `want` (plus the newline) on stderr.
fn assert_fails_with(out: &Output, want: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", err(out));
    assert_eq!(err(out), format!("{want}\n"));
}

/// A file of pseudo-random bytes (no twinfs superblock anywhere in it).
fn random_file(path: &Path, len: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("write the random file");
}

#[test]
fn status_dir_on_a_directory_that_is_no_peer_directory_fails() {
    let out = run(&["status", "--dir", "/etc"]);
    assert_fails_with(
        &out,
        "twinfs: status --dir /etc: not a twinfs peer directory (it holds no state, mirror.img or log/); give the --dir that `twinfs peer` uses",
    );
    assert!(out.stdout.is_empty(), "no made-up status is printed");
}

#[test]
fn mount_and_fsck_of_a_random_file_say_not_a_twinfs_volume_once() {
    let dir = scratch("notvol");
    let image = dir.path().join("random.img");
    random_file(&image, 1 << 20);
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).expect("mkdir");
    let image = std::fs::canonicalize(&image).expect("canon");
    let mp = std::fs::canonicalize(&mp).expect("canon");
    let out = run(&["mount", s(&image), s(&mp)]);
    assert_fails_with(
        &out,
        &format!(
            "twinfs: mount {img} on {mp}: {img}: not a twinfs volume: neither block 0 nor block 1 holds a twinfs superblock; give the image made by `twinfs mkfs` (or by `twinfs promote`), or make one with `twinfs mkfs IMAGE --size SIZE`",
            img = image.display(),
            mp = mp.display()
        ),
    );
    assert!(!is_mounted(&mp), "nothing is left mounted");
    let out = run(&["fsck", s(&image)]);
    assert_fails_with(
        &out,
        &format!(
            "twinfs: fsck {}: not a twinfs volume: neither block 0 nor block 1 holds a twinfs superblock; give the image made by `twinfs mkfs` (a peer's is DIR/mirror.img)",
            image.display()
        ),
    );
}

#[test]
fn commands_on_a_directory_nothing_is_mounted_on_say_so_once() {
    let dir = scratch("nomount");
    let mp = dir.path();
    let want = |cmd: &str| {
        format!(
            "twinfs: {cmd} {mp}: {mp} is not mounted; mount a volume there with `twinfs mount IMAGE {mp}`",
            mp = mp.display()
        )
    };
    assert_fails_with(&run(&["status", s(mp)]), &want("status"));
    assert_fails_with(&run(&["checkpoint", s(mp)]), &want("checkpoint"));
    assert_fails_with(&run(&["snapshot", "list", s(mp)]), &want("snapshot list"));
}

#[test]
fn status_on_another_file_system_names_it() {
    // /proc is always mounted, and never twinfs.
    let out = run(&["status", "/proc"]);
    assert_fails_with(
        &out,
        "twinfs: status /proc: /proc is a proc mount of proc, not twinfs; give the mount point of a twinfs volume",
    );
}

#[test]
fn peer_dir_that_is_a_file_is_refused_before_anything_else() {
    let dir = scratch("peerfile");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").expect("write");
    let out = run(&[
        "peer",
        "--dir",
        s(&file),
        "--listen",
        "127.0.0.1:0",
        "--secret",
        "/nonexistent/secret",
    ]);
    assert_fails_with(
        &out,
        &format!(
            "twinfs: peer --dir {}: it exists and is not a directory; give a directory for the replica (it is created if missing)",
            file.display()
        ),
    );
}

#[test]
fn fsck_quiet_prints_nothing_for_a_clean_image() {
    let dir = scratch("fsckq");
    let image = dir.path().join("vol.img");
    mkfs(&image, "64M");
    let out = run(&["fsck", "-q", s(&image)]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "only problems");
    assert_eq!(err(&out), "");
    let out = run(&["fsck", s(&image)]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("clean\n"));
}

#[test]
fn sizes_take_a_decimal_fraction() {
    let dir = scratch("size");
    let image = dir.path().join("vol.img");
    let out = run(&["mkfs", s(&image), "--size", "1.5G"]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let len = std::fs::metadata(&image).expect("image").len();
    assert_eq!(len, 3 << 29, "1.5G is 1.5 GiB");
    let out = run(&["mkfs", s(&image), "--size", "1.5", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    assert!(
        err(&out).contains("invalid size '1.5': a fraction needs a unit (K, M, G or T)"),
        "{}",
        err(&out)
    );
}

#[test]
fn the_mount_helper_answers_help_and_version() {
    let dir = scratch("helper");
    let link = dir.path().join("mount.fuse.twinfs");
    std::os::unix::fs::symlink(twinfs(), &link).expect("symlink");
    let out = Command::new(&link).arg("--help").output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "usage: mount.fuse.twinfs IMAGE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]\n"
        ),
        "{text}"
    );
    let out = Command::new(&link).arg("--version").output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mount.fuse.twinfs (twinfs "));
}

#[test]
fn a_mount_point_with_files_in_it_is_refused_unless_asked() {
    let dir = scratch("nonempty");
    let image = dir.path().join("vol.img");
    mkfs(&image, "64M");
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).expect("mkdir");
    std::fs::write(mp.join("keep-me"), b"precious").expect("write");
    let mp = std::fs::canonicalize(&mp).expect("canon");
    let out = run(&["mount", s(&image), s(&mp)]);
    assert_fails_with(
        &out,
        &format!(
            "twinfs: mount {}: the mount point is not empty: mounting would hide the 1 entry it holds; give an empty directory, or add -o nonempty to mount over them",
            mp.display()
        ),
    );
    assert!(!is_mounted(&mp));
    let m = Mount::new(&image, &mp, &["-o", "nonempty"]);
    assert!(!m.path("keep-me").exists(), "the volume is mounted over it");
    m.unmount();
    assert_eq!(
        std::fs::read(mp.join("keep-me")).expect("read"),
        b"precious"
    );
}
