//! The command-line contract of a running mount (man/twinfs.8): the fields
//! of `status --json`, `checkpoint` committing a newer CP, a second mount of
//! the same image (or on a busy mount point) refused with one line and
//! exit 1 while the first carries on, `mount -t fuse.twinfs` through the
//! helper symlink, a read-only mount refusing every change with EROFS, and
//! `twinfs mount` returning with its output closed.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tree::try_set_xattr;
use common::*;

fn mount_cmd(image: &Path, mp: &Path, extra: &[&str]) -> std::process::Output {
    // stdout/stderr to a file: a pipe would stay open in the daemon
    // (see `mount_closes_its_output_once_mounted`).
    let log = image.with_extension("second.log");
    let f = || std::fs::File::create(&log).expect("log file");
    let status = Command::new(twinfs())
        .arg("mount")
        .arg(image)
        .arg(mp)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(f())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("log"),
        ))
        .status()
        .expect("run twinfs mount");
    let text = std::fs::read(&log).expect("read log");
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: text,
    }
}

fn assert_one_line_failure(what: &str, out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(1), "{}", describe(what, out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("twinfs: "),
        "{what}: want one line \"twinfs: what failed: why; what to do\" on stderr, got:\n{err}"
    );
}

#[test]
fn status_json_has_every_documented_field() {
    let dir = scratch("status");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mount = Mount::new(&image, &dir.path().join("mnt"), &["--mode", "async"]);
    let s0 = mount.status();
    let data = pattern(1, (1 << 20) + 3);
    std::fs::write(mount.path("f"), &data).expect("write");
    let s = mount.status();
    let obj = s
        .as_object()
        .unwrap_or_else(|| panic!("status is not an object: {s}"));
    for key in ["cp", "root_hash", "mode", "peer", "bytes"] {
        assert!(obj.contains_key(key), "status --json lacks {key:?}: {s}");
    }
    assert!(s["cp"].is_u64(), "cp: {s}");
    let hash = s["root_hash"].as_str().expect("root_hash string");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "root_hash {hash:?}"
    );
    assert_eq!(s["mode"], "async", "mode as configured: {s}");
    assert!(s["peer"].is_null(), "peer without --peer must be null: {s}");
    let bytes = &s["bytes"];
    for key in ["written", "log_sent", "cp_sent", "wire_total"] {
        assert!(
            bytes[key].is_u64(),
            "bytes.{key} missing or not a number: {s}"
        );
    }
    for key in ["full", "refs", "recipes", "deltas", "misses"] {
        assert!(
            bytes[key]["blocks"].is_u64() && bytes[key]["bytes"].is_u64(),
            "bytes.{key} must be {{blocks, bytes}}: {s}"
        );
    }
    let written = bytes["written"].as_u64().unwrap() - s0["bytes"]["written"].as_u64().unwrap();
    assert_eq!(
        written,
        data.len() as u64,
        "bytes.written after writing {} bytes",
        data.len()
    );
    assert_eq!(bytes["wire_total"], 0, "no peer, nothing on the wire: {s}");
    assert_eq!(s["state"], "local", "no peer: {s}");
    assert_eq!(
        s["mode_in_force"], "local",
        "no peer, nothing to wait for: {s}"
    );
    assert_eq!(s["lag_cps"], serde_json::Value::Null, "{s}");
    assert_eq!(s["schema_version"], 1, "{s}");
    assert_eq!(
        s["capacity"]["size_bytes"].as_u64().map(|b| b > 0),
        Some(true),
        "{s}"
    );
    // The human form: a headline, what to do, then one line per topic.
    let plain = ok(Command::new(twinfs()).arg("status").arg(&mount.mp));
    let labels: Vec<&str> = plain
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.trim()))
        .collect();
    assert_eq!(
        labels,
        ["state", "action", "cp", "mode", "peer", "capacity", "traffic"],
        "{plain}"
    );
    assert!(plain.starts_with("   state: LOCAL\n"), "{plain}");
    assert!(
        plain.contains("    mode: async configured, local in force\n"),
        "{plain}"
    );
    mount.unmount();
}

#[test]
fn checkpoint_commits_a_newer_cp_with_a_new_root_hash() {
    let dir = scratch("checkpoint");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mount = Mount::new(&image, &dir.path().join("mnt"), &["--cp-interval", "3600"]);
    let before = mount.status();
    std::fs::write(mount.path("f"), pattern(2, 100_000)).expect("write");
    let out = ok(Command::new(twinfs()).arg("checkpoint").arg(&mount.mp));
    let after = mount.status();
    let cp = after["cp"].as_u64().unwrap();
    assert!(
        cp > before["cp"].as_u64().unwrap(),
        "cp {before} then {after}"
    );
    assert_eq!(
        out.trim(),
        format!("CP {cp} committed"),
        "checkpoint's output"
    );
    assert_ne!(
        before["root_hash"], after["root_hash"],
        "a CP with a new file kept the root hash"
    );
    // A second one grows too.
    std::fs::write(mount.path("g"), b"more").expect("write");
    let cp2 = mount.checkpoint();
    assert!(cp2 > cp, "second checkpoint: {cp} then {cp2}");
    mount.unmount();
    assert_fsck_clean(&image, "after checkpoints");
}

#[test]
fn a_second_mount_of_the_same_image_fails_cleanly_and_the_first_carries_on() {
    let dir = scratch("twice");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mp1 = dir.path().join("mnt1");
    let mp2 = dir.path().join("mnt2");
    std::fs::create_dir(&mp2).expect("mkdir");
    let mount = Mount::new(&image, &mp1, &[]);
    std::fs::write(mount.path("before"), pattern(3, 50_000)).expect("write");

    let out = mount_cmd(&image, &mp2, &[]);
    assert_one_line_failure("second twinfs mount of the same image", &out);
    assert!(
        !is_mounted(&mp2),
        "the refused mount left {} mounted",
        mp2.display()
    );
    assert!(
        find_daemon(&mp2).is_none(),
        "the refused mount left a daemon running"
    );

    // Another image on the busy mount point is refused too.
    let other = dir.path().join("other.img");
    mkfs(&other, "1G");
    let out = mount_cmd(&other, &mp1, &[]);
    assert_one_line_failure("twinfs mount on a mount point in use", &out);

    // The first mount is undisturbed.
    assert_eq!(mount_fstype(&mp1).as_deref(), Some("fuse.twinfs"));
    assert_bytes(
        "file written before",
        &std::fs::read(mount.path("before")).expect("read"),
        &pattern(3, 50_000),
    );
    std::fs::write(mount.path("after"), pattern(4, 70_000))
        .expect("write after the refused mounts");
    mount.checkpoint();
    assert_eq!(
        find_daemon(&mp1),
        Some(mount.pid()),
        "the first daemon changed"
    );
    mount.unmount();
    assert_fsck_clean(&image, "after the refused second mount");
    let mount = Mount::new(&image, &mp1, &[]);
    assert_bytes(
        "after remount",
        &std::fs::read(mount.path("after")).expect("read"),
        &pattern(4, 70_000),
    );
    mount.unmount();
}

/// Creates /sbin/mount.fuse.twinfs → the binary under test, removed on drop.
struct HelperLink {
    path: &'static Path,
}

impl HelperLink {
    fn create() -> Result<HelperLink, String> {
        let path = Path::new("/sbin/mount.fuse.twinfs");
        if let Ok(target) = std::fs::read_link(path) {
            return Err(format!(
                "{} already exists (→ {}); not replacing it",
                path.display(),
                target.display()
            ));
        }
        std::os::unix::fs::symlink(twinfs(), path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(HelperLink { path })
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path);
    }
}

#[test]
fn mount_t_fuse_twinfs_works_through_the_helper_symlink() {
    let link = match HelperLink::create() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIPPED mount -t fuse.twinfs: {why}");
            return;
        }
    };
    let dir = scratch("helper");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).expect("mkdir");
    let log = dir.path().join("mount8.log");
    let status = Command::new("mount")
        .args(["-t", "fuse.twinfs", "-o", "defaults,_netdev,cp_interval=5"])
        .arg(&image)
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("mount8.err")).expect("log"))
        .status()
        .expect("run mount(8)");
    let err = std::fs::read_to_string(dir.path().join("mount8.err")).unwrap_or_default();
    assert!(status.success(), "mount -t fuse.twinfs: {status}\n{err}");
    let mount = Mount::adopt(&image, &mp);
    std::fs::write(mount.path("via-helper"), pattern(5, 300_000)).expect("write");
    let cp = mount.checkpoint();
    assert!(cp >= 1);
    mount.unmount();
    drop(link);
    assert_fsck_clean(&image, "after a mount through mount(8)");
    let mount = Mount::new(&image, &mp, &["-o", "ro"]);
    assert_bytes(
        "written through the helper mount",
        &std::fs::read(mount.path("via-helper")).expect("read"),
        &pattern(5, 300_000),
    );
    mount.unmount();
}

fn assert_erofs(what: &str, r: std::io::Result<impl std::fmt::Debug>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!("{what} on a read-only mount: want EROFS, got {other:?}"),
    }
}

/// First line of fsck's report: volume, CP, slot and root hash.
fn fsck_head(image: &Path) -> String {
    let (code, text) = fsck(image);
    assert_eq!(code, 0, "{text}");
    text.lines().next().unwrap_or("").to_string()
}

#[test]
fn a_read_only_mount_refuses_every_change_with_erofs() {
    let dir = scratch("ro");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &[]);
    std::fs::create_dir(mount.path("d")).expect("mkdir");
    std::fs::write(mount.path("d/f"), pattern(6, 9000)).expect("write");
    mount.unmount();
    let head = fsck_head(&image);

    let mount = Mount::new(&image, &mp, &["-o", "ro"]);
    let f = mount.path("d/f");
    assert_bytes(
        "read on a read-only mount",
        &std::fs::read(&f).expect("read"),
        &pattern(6, 9000),
    );
    assert_erofs(
        "open for writing",
        std::fs::OpenOptions::new().write(true).open(&f),
    );
    assert_erofs("create", std::fs::File::create(mount.path("d/new")));
    assert_erofs("mkdir", std::fs::create_dir(mount.path("d/sub")));
    assert_erofs("unlink", std::fs::remove_file(&f));
    assert_erofs("rename", std::fs::rename(&f, mount.path("d/g")));
    assert_erofs(
        "chmod",
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)),
    );
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("f", mount.path("d/l")),
    );
    assert_erofs("setxattr", try_set_xattr(&f, "user.x", b"1"));
    assert!(mount.status()["cp"].is_u64());
    mount.unmount();
    assert_eq!(
        fsck_head(&image),
        head,
        "a read-only mount changed the image"
    );
}

/// `twinfs mount` returns once mounted, and whoever reads its output sees
/// end of file then: `out=$(twinfs mount IMG MP 2>&1)`, `| tee` and ssh
/// must not hang for as long as the volume stays mounted.
#[test]
fn mount_closes_its_output_once_mounted() {
    let dir = scratch("output");
    let image = dir.path().join("vol.img");
    mkfs(&image, "1G");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).expect("mkdir");
    let mut child = Command::new(twinfs())
        .arg("mount")
        .arg(&image)
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twinfs mount");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "twinfs mount: {status}");
    let mount = Mount::adopt(&image, &mp);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let a = out.read_to_end(&mut sink).is_ok();
        let b = err.read_to_end(&mut sink).is_ok();
        let _ = tx.send(a && b);
    });
    let eof = rx.recv_timeout(Duration::from_secs(10));
    mount.unmount();
    assert!(
        eof.is_ok(),
        "twinfs mount exited 0 but its stdout/stderr stayed open in the daemon for 10 s: \
         `out=$(twinfs mount IMG MP 2>&1)` would hang until unmount"
    );
}

/// "unmount with umount MOUNTPOINT, which takes a final CP": the natural
/// next commands, `twinfs fsck IMAGE` or `twinfs mount IMAGE` again, work
/// right after `umount` returns — they are not refused with "in use by
/// another twinfs process; unmount it first" while the daemon finishes.
#[test]
fn fsck_and_mount_right_after_umount_work() {
    let dir = scratch("afterumount");
    let image = dir.path().join("vol.img");
    mkfs(&image, "2G");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &["--cp-interval", "3600"]);
    let data = pattern(9, 256 << 20);
    std::fs::write(mount.path("big"), &data).expect("write 256 MiB");
    let pid = mount.pid();
    ok(Command::new("umount").arg(&mp));
    let (code, text) = fsck(&image);
    let daemon_was_running = !process_gone(pid);
    // Leave the daemon time to finish, whatever fsck said.
    wait_for(Duration::from_secs(120), || process_gone(pid));
    std::mem::forget(mount); // unmounted above; its daemon is gone
    assert_eq!(
        code, 0,
        "twinfs fsck right after umount returned (daemon still running then: {daemon_was_running}):\n{text}"
    );
    let mount = Mount::new(&image, &mp, &[]);
    assert_bytes(
        "after remount",
        &std::fs::read(mount.path("big")).expect("read"),
        &data,
    );
    let pid = mount.pid();
    ok(Command::new("umount").arg(&mp));
    let again = mount_cmd(&image, &mp, &[]);
    let daemon_was_running = !process_gone(pid);
    wait_for(Duration::from_secs(120), || process_gone(pid));
    std::mem::forget(mount);
    if again.status.success() {
        Mount::adopt(&image, &mp).unmount();
    }
    assert!(
        again.status.success(),
        "twinfs mount right after umount (daemon still running then: {daemon_was_running}): {}",
        describe("twinfs mount", &again)
    );
}
