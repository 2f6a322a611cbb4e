//! Mounting and unmounting: options, the handle, and who may end a session.

mod fuse_common;

use std::fs;
use std::time::{Duration, Instant};

use fuse_common::*;
use twinfs_fs::fuse;

fn mountinfo_line(mnt: &std::path::Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == mnt.to_str())
        .map(String::from)
}

#[test]
fn the_mount_shows_as_fuse_twinfs_with_the_options_asked_for() {
    let m = Mounted::new(&["allow_other,noatime", "nodev"]);
    let line = mountinfo_line(m.root()).expect("mounted");
    assert!(line.contains(" - fuse.twinfs twinfs "), "{line}");
    assert!(line.contains("noatime"), "{line}");
    assert!(line.contains("allow_other"), "{line}");
    assert!(line.contains("default_permissions"), "{line}");
}

#[test]
fn the_mount_widens_the_kernel_readahead_window() {
    let m = Mounted::new(&[]);
    let line = mountinfo_line(m.root()).expect("mounted");
    let dev = line.split(' ').nth(2).expect("major:minor");
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let kb = fs::read_to_string(&knob).unwrap();
    assert_eq!(kb.trim(), fuse::READ_AHEAD_KB.to_string(), "{knob}");
}

#[test]
fn unknown_options_are_refused_before_mounting() {
    let m = Mounted::new(&[]);
    let other = m.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let err = fuse::mount(m.volume.clone(), &other, &["allow_other,bogus"]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("bogus"), "{err}");
    assert!(mountinfo_line(&other).is_none());
}

#[test]
fn an_external_umount_ends_the_session_and_wait_returns() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"x").unwrap();
    let handle = m.take_handle();
    let unmounter = handle.unmounter();
    assert!(unmounter.is_mounted());
    run("umount", &[m.root().to_str().unwrap()]);
    handle.wait().unwrap();
    assert!(!unmounter.is_mounted());
    // Unmounting again is harmless.
    unmounter.unmount().unwrap();
    assert!(mountinfo_line(m.root()).is_none());
}

#[test]
fn a_busy_mount_refuses_unmount_but_detaches_lazily() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"kept").unwrap();
    let open = fs::File::open(m.path("f")).unwrap();
    let handle = m.take_handle();
    let err = handle.unmount().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    let unmounter = handle.unmounter();
    unmounter.unmount_lazy().unwrap();
    assert!(mountinfo_line(m.root()).is_none(), "detached");
    // The session serves the open file until it is closed.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &open, &mut s).unwrap();
    assert_eq!(s, "kept");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    while unmounter.is_mounted() {
        assert!(Instant::now() < deadline, "the session did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.wait().unwrap();
}

#[test]
fn a_detached_session_ending_leaves_a_new_mount_on_the_same_path_alone() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("old"), b"old").unwrap();
    let open = fs::File::open(m.path("old")).unwrap();
    let old = m.take_handle();
    old.unmounter().unmount_lazy().unwrap();
    // A second volume takes the mount point while the first still serves
    // its open file.
    let other = Mounted::new(&[]);
    let new = fuse::mount(other.volume.clone(), m.root(), &[] as &[&str]).unwrap();
    fs::write(m.path("new"), b"new").unwrap();
    drop(open);
    let unmounter = old.unmounter();
    let deadline = Instant::now() + Duration::from_secs(10);
    while unmounter.is_mounted() {
        assert!(
            Instant::now() < deadline,
            "the detached session did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    old.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!new.is_finished(), "the new mount's session goes on");
    assert_eq!(fs::read(m.path("new")).unwrap(), b"new");
    assert!(mountinfo_line(m.root()).is_some());
    new.unmount().unwrap();
    new.wait().unwrap();
}
