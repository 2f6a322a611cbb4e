//! Regular files through a real FUSE mount: bytes, offsets, sizes, holes,
//! open flags, durability and unmount.

mod fuse_common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use fuse_common::*;
use twinfs_fs::{View, Volume, ROOT_INO};

#[test]
fn writes_read_back_byte_for_byte_at_any_alignment() {
    let m = Mounted::new(&[]);
    let p = m.path("f");
    let data = pattern(3 * 1024 * 1024 + 123, 1);
    fs::write(&p, &data).unwrap();
    assert_eq!(fs::read(&p).unwrap(), data);
    // Unaligned overwrite in the middle, spanning blocks.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let patch = pattern(10_000, 2);
    f.write_all_at(&patch, 4095).unwrap();
    drop(f);
    let mut want = data.clone();
    want[4095..4095 + patch.len()].copy_from_slice(&patch);
    assert_eq!(fs::read(&p).unwrap(), want);
    assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
}

#[test]
fn a_write_past_5_gib_makes_a_sparse_file_of_that_size() {
    let m = Mounted::new(&[]);
    let p = m.path("sparse");
    let f = File::create(&p).unwrap();
    let at = 5u64 << 30;
    f.write_all_at(b"far away", at).unwrap();
    drop(f);
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), at + 8);
    assert!(
        meta.blocks() <= 16,
        "a hole takes no space: {} blocks",
        meta.blocks()
    );
    let f = File::open(&p).unwrap();
    let mut buf = [1u8; 16];
    f.read_exact_at(&mut buf[..8], at).unwrap();
    assert_eq!(&buf[..8], b"far away");
    f.read_exact_at(&mut buf, at - 16).unwrap();
    assert_eq!(buf, [0u8; 16]);
    f.read_exact_at(&mut buf, 4u64 << 30).unwrap();
    assert_eq!(buf, [0u8; 16]);
}

#[test]
fn seek_data_and_seek_hole_find_the_written_extents() {
    let m = Mounted::new(&[]);
    let p = m.path("holes");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    f.write_all_at(&[8u8; 100], 3 << 20).unwrap();
    let fd = f.as_raw_fd();
    let seek = |off: i64, whence| {
        // SAFETY: valid fd.
        check(unsafe { libc::lseek(fd, off, whence) } as libc::c_int).map(|o| o as i64)
    };
    assert_eq!(seek(0, libc::SEEK_DATA).unwrap(), 1 << 20);
    assert_eq!(seek(1 << 20, libc::SEEK_HOLE).unwrap(), (1 << 20) + 4096);
    assert_eq!(seek((1 << 20) + 4096, libc::SEEK_DATA).unwrap(), 3 << 20);
    assert_eq!(seek(0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        seek((3 << 20) + 50, libc::SEEK_HOLE).unwrap(),
        (3 << 20) + 100
    );
    assert_eq!(
        errno_of(seek((3 << 20) + 100, libc::SEEK_DATA)),
        libc::ENXIO
    );
}

#[test]
fn fallocate_punches_holes_and_extends() {
    let m = Mounted::new(&[]);
    let p = m.path("punch");
    let data = pattern(64 * 1024, 3);
    fs::write(&p, &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: valid fd.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, 1000, 20_000) }).unwrap();
    let mut want = data.clone();
    want[1000..21_000].fill(0);
    let mut got = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, want);
    assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
    // Plain preallocation grows the size.
    // SAFETY: valid fd.
    check(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 100_000) }).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 100_000);
}

#[test]
fn o_append_writes_go_to_the_end_whatever_the_offset() {
    let m = Mounted::new(&[]);
    let p = m.path("log");
    fs::write(&p, b"one\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"two\n").unwrap();
    b.write_all(b"three\n").unwrap();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"four\n").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"one\ntwo\nthree\nfour\n");
}

#[test]
fn o_excl_refuses_an_existing_file_and_o_trunc_empties_one() {
    let m = Mounted::new(&[]);
    let p = m.path("x");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap()
        .write_all(b"hello")
        .unwrap();
    let again = OpenOptions::new().write(true).create_new(true).open(&p);
    assert_eq!(errno_of(again), libc::EEXIST);
    assert_eq!(fs::read(&p).unwrap(), b"hello");
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    f.write_all(b"hi").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hi");
}

#[test]
fn truncate_shrinks_and_grows_with_zeros() {
    let m = Mounted::new(&[]);
    let p = m.path("t");
    let data = pattern(50_000, 4);
    fs::write(&p, &data).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(10_001).unwrap(); // ftruncate through the handle
    assert_eq!(fs::read(&p).unwrap(), data[..10_001]);
    // truncate(2) by path, growing.
    // SAFETY: valid path.
    check(unsafe { libc::truncate(cstr(&p).as_ptr(), 30_000) }).unwrap();
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 30_000);
    assert_eq!(got[..10_001], data[..10_001]);
    assert!(got[10_001..].iter().all(|b| *b == 0));
}

#[test]
fn an_unlinked_file_stays_readable_and_writable_until_closed() {
    let m = Mounted::new(&[]);
    let p = m.path("ghost");
    fs::write(&p, b"boo").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let ino = f.metadata().unwrap().ino();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    f.write_all_at(b"!!", 3).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "boo!!");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // Closed: the volume reclaims it (the kernel sends RELEASE after close returns).
    let ino = twinfs_fs::Ino(ino);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while m.volume.getattr(View::Live, ino).is_ok() {
        assert!(std::time::Instant::now() < deadline, "never reclaimed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn copy_file_range_copies_bytes_between_files() {
    let m = Mounted::new(&[]);
    let (a, b) = (m.path("a"), m.path("b"));
    let data = pattern(3_000_000, 5);
    fs::write(&a, &data).unwrap();
    let src = File::open(&a).unwrap();
    let dst = File::create(&b).unwrap();
    let mut off_in: i64 = 1000;
    let mut off_out: i64 = 0;
    let mut left = data.len() - 1000;
    while left > 0 {
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop(dst);
    assert_eq!(fs::read(&b).unwrap(), data[1000..]);
}

#[test]
fn statfs_counts_blocks_and_files() {
    let m = Mounted::new(&[]);
    let vfs = |p: &std::path::Path| {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        check(unsafe { libc::statvfs(cstr(p).as_ptr(), &mut s) }).unwrap();
        s
    };
    let before = vfs(m.root());
    let want = m.volume.statfs();
    assert_eq!(before.f_bsize, 4096);
    assert_eq!(before.f_blocks, want.blocks);
    assert_eq!(before.f_namemax, 255);
    assert!(before.f_bfree > 0 && before.f_bfree <= before.f_blocks);
    fs::write(m.path("big"), pattern(8 << 20, 6)).unwrap();
    for i in 0..10 {
        fs::write(m.path(&format!("small{i}")), b"x").unwrap();
    }
    m.volume.checkpoint().unwrap();
    let after = vfs(m.root());
    assert!(
        before.f_bfree - after.f_bfree >= 2048,
        "8 MiB written: {} -> {} free blocks",
        before.f_bfree,
        after.f_bfree
    );
    assert_eq!(after.f_files - before.f_files, 11);
}

#[test]
fn an_o_sync_write_and_an_fsync_survive_a_crash() {
    let mut m = Mounted::new(&[]);
    let mut s = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_SYNC)
        .open(m.path("sync"))
        .unwrap();
    s.write_all(b"synced by O_SYNC").unwrap();
    let mut f = File::create(m.path("fsync")).unwrap();
    f.write_all(b"synced by fsync").unwrap();
    f.sync_all().unwrap();
    // Power fails: no final CP, nothing more reaches the device.
    m.volume.crash();
    drop((s, f));
    m.unmount();
    let vol = Volume::open(m.dev.clone(), config()).unwrap();
    let read = |name: &[u8]| {
        let a = vol.lookup(View::Live, ROOT_INO, name).unwrap();
        vol.read(View::Live, a.ino, 0, 100).unwrap()
    };
    assert_eq!(read(b"sync"), b"synced by O_SYNC");
    assert_eq!(read(b"fsync"), b"synced by fsync");
    vol.close().unwrap();
}

#[test]
fn data_survives_unmount_close_reopen_and_remount() {
    let mut m = Mounted::on_file(&[]);
    let data = pattern(2_000_000, 7);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), &data).unwrap();
    std::os::unix::fs::symlink("d/f", m.path("l")).unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("d/f")).unwrap(), data);
    assert_eq!(fs::read(m.path("l")).unwrap(), data);
    assert_eq!(fs::read_link(m.path("l")).unwrap().to_str(), Some("d/f"));
}

#[test]
fn a_read_only_mount_refuses_every_change_with_erofs() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"kept").unwrap();
    m.unmount();
    m.mount_with(twinfs_fs::fuse::MountConfig::with_options(&["ro"]));
    assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
    assert_eq!(errno_of(fs::write(m.path("g"), b"x")), libc::EROFS);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(m.path("f"))),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(m.path("d"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(m.path("f"))), libc::EROFS);
    assert_eq!(
        errno_of(setxattr(&m.path("f"), "user.a", b"1", 0)),
        libc::EROFS
    );
}

#[test]
fn a_read_only_volume_mounts_read_only() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("f"), b"kept").unwrap();
    m.unmount();
    m.volume.close().unwrap();
    let cfg = twinfs_fs::VolumeConfig {
        read_only: true,
        ..config()
    };
    m.volume = Arc::new(Volume::open(m.dev.clone(), cfg).unwrap());
    m.mount_with(Default::default());
    assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
    assert_eq!(errno_of(fs::write(m.path("f"), b"x")), libc::EROFS);
}

/// Runs `f` on a thread whose file-system identity is 1000:1000.
fn as_user<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: setfsuid/setfsgid change only this thread's credentials.
        unsafe {
            libc::setfsgid(1000);
            libc::setfsuid(1000);
        }
        f()
    })
    .join()
    .unwrap()
}

/// A valid `security.capability` value (VFS_CAP_REVISION_2, CAP_NET_RAW permitted).
const CAPS: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn changes_by_other_users_drop_set_user_id_and_capabilities() {
    let m = Mounted::new(&["allow_other"]);
    let mode = |p: &std::path::Path| stat(p).st_mode & 0o7777;
    for (name, op) in [("w", 0), ("t", 1), ("o", 2)] {
        let p = m.path(name);
        fs::write(&p, b"privileged").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o6777)).unwrap();
        setxattr(&p, "security.capability", &CAPS, 0).unwrap();
        let q = p.clone();
        as_user(move || match op {
            0 => OpenOptions::new()
                .write(true)
                .open(&q)
                .unwrap()
                .write_all(b"X")
                .unwrap(),
            1 => OpenOptions::new()
                .write(true)
                .open(&q)
                .unwrap()
                .set_len(3)
                .unwrap(),
            _ => drop(
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&q)
                    .unwrap(),
            ),
        });
        assert_eq!(
            mode(&p),
            0o777,
            "{name}: set-user-ID and set-group-ID dropped"
        );
        assert_eq!(
            errno_of(getxattr(&p, "security.capability")),
            libc::ENODATA,
            "{name}: capabilities dropped"
        );
    }
    // Root keeps set-user-ID when writing, but, as on ext4, not capabilities.
    let p = m.path("r");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
    setxattr(&p, "security.capability", &CAPS, 0).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all(b"y")
        .unwrap();
    assert_eq!(mode(&p), 0o4755);
    assert_eq!(errno_of(getxattr(&p, "security.capability")), libc::ENODATA);
    // chown drops both.
    setxattr(&p, "security.capability", &CAPS, 0).unwrap();
    std::os::unix::fs::chown(&p, Some(1), None).unwrap();
    assert_eq!(mode(&p), 0o755);
    assert_eq!(errno_of(getxattr(&p, "security.capability")), libc::ENODATA);
}

#[test]
fn with_the_writeback_cache_fsync_still_makes_data_durable() {
    let mut m = Mounted::new(&["writeback_cache"]);
    let data = pattern(1_000_000, 8);
    let mut f = File::create(m.path("cached")).unwrap();
    for chunk in data.chunks(4096) {
        f.write_all(chunk).unwrap();
    }
    let mut a = OpenOptions::new()
        .append(true)
        .open(m.path("cached"))
        .unwrap();
    a.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(m.path("cached")).unwrap().len(), 1_000_004);
    m.volume.crash();
    drop((f, a));
    m.unmount();
    let vol = Volume::open(m.dev.clone(), config()).unwrap();
    let ino = vol.lookup(View::Live, ROOT_INO, b"cached").unwrap().ino;
    let got = vol.read(View::Live, ino, 0, 2_000_000).unwrap();
    assert_eq!(got[..1_000_000], data[..]);
    assert_eq!(&got[1_000_000..], b"tail");
    vol.close().unwrap();
}
