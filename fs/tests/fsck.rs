//! `fsck` on healthy images: no problems, and counts that match what was built.

mod fsck_common;

use std::sync::Arc;

use fsck_common::*;
use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::fsck::{self, Kind, Phase, Severity};
use twinfs_fs::volume;
use twinfs_fs::*;

#[test]
fn a_new_volume_is_clean() {
    let dev = Arc::new(MemDevice::new(20_000));
    let sb = volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.problems, vec![]);
    assert_eq!((report.slot, report.cp), (0, CpNumber(0)));
    assert_eq!(report.root_hash, sb.root_hash());
    let s = &report.summary;
    assert_eq!((s.inodes, s.directories, s.entries), (1, 1, 0));
    assert_eq!(s.blocks_used, sb.used_blocks);
    assert_eq!(report.log.batches, 0);
}

#[test]
fn a_varied_tree_with_snapshots_is_clean_and_counted() {
    let (dev, vol) = new_volume(40_000);
    let e = build_varied_tree(&vol);
    let committed = vol.committed();
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.cp, committed.cp);
    assert_eq!(report.root_hash, committed.root_hash());
    let s = &report.summary;
    assert_eq!(s.inodes, e.inodes, "{report}");
    assert_eq!(s.directories, e.directories);
    assert_eq!(s.regular_files, e.regular_files);
    assert_eq!(s.symlinks, e.symlink_count);
    assert_eq!(s.special_files, e.special_files);
    assert_eq!(s.entries, e.entries);
    assert_eq!(s.orphans, 1, "the open, unlinked file is an orphan");
    assert_eq!(s.xattrs, e.xattrs.len() as u64);
    assert_eq!(s.data_bytes, e.data_bytes);
    assert_eq!(s.snapshots, 2);
    assert_eq!(s.blocks_used, committed.used_blocks);
    assert!(s.blocks_verified >= s.blocks_used);
    // Every data block: each 4 KiB piece of a file holding a non-zero byte
    // (punched ranges are holes), the orphan's 2, the sparse file's 4 and the
    // long symlink target's 1.
    let file_blocks: u64 = e
        .files
        .iter()
        .map(|(_, d)| d.chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).count() as u64)
        .sum();
    assert_eq!(s.data_blocks, file_blocks + 2 + 4 + 1);

    // Releasing the orphan reclaims it: still clean, one inode fewer.
    vol.release_file(e.orphan.unwrap()).unwrap();
    vol.close().unwrap();
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.summary.inodes, e.inodes - 1);
    assert_eq!(report.summary.orphans, 0);
}

#[test]
fn many_files_in_a_deep_tree_are_clean() {
    let (dev, vol) = new_volume(60_000);
    let mut dirs = vec![ROOT_INO];
    let mut files = Vec::new();
    for i in 0..4000u64 {
        let parent = dirs[(i as usize * 7) % dirs.len()];
        let name = format!("n{i:05}-{}", "x".repeat((i % 40) as usize));
        let kind = if i % 10 == 0 {
            FileKind::Directory
        } else {
            FileKind::Regular
        };
        let a = vol
            .create(parent, name.as_bytes(), kind, 0o644, 0, 0, 0)
            .unwrap();
        if kind == FileKind::Directory {
            dirs.push(a.ino);
        } else {
            files.push((parent, name));
            if i % 3 == 0 {
                vol.write(a.ino, 0, &bytes(i, (i % 9000) as usize), false)
                    .unwrap();
            }
        }
        if i % 500 == 0 {
            vol.checkpoint().unwrap();
        }
    }
    // Remove a third of the files again, so that tree nodes merge.
    for (parent, name) in files.iter().step_by(3) {
        vol.unlink(*parent, name.as_bytes()).unwrap();
    }
    assert!(vol.committed().meta.height >= 1, "a tree of several levels");
    vol.close().unwrap();
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.summary.directories, dirs.len() as u64);
}

#[test]
fn the_log_to_replay_is_counted_and_a_crash_leaves_a_clean_image() {
    let (dev, vol) = new_volume(20_000);
    let f = vol
        .create(ROOT_INO, b"f", FileKind::Regular, 0o644, 0, 0, 0)
        .unwrap();
    vol.checkpoint().unwrap();
    for i in 0..3u64 {
        vol.write(f.ino, i * 10_000, &bytes(i, 10_000), false)
            .unwrap();
        vol.fsync().unwrap();
    }
    vol.crash();
    drop(vol);
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.log.batches, 3, "{report}");
    assert_eq!(report.log.records, 3);
    assert!(report.log.stop.contains("transfer"), "{}", report.log.stop);
}

#[test]
fn progress_counts_up_to_the_used_blocks() {
    let (dev, vol) = new_volume(20_000);
    let f = vol
        .create(ROOT_INO, b"f", FileKind::Regular, 0o644, 0, 0, 0)
        .unwrap();
    vol.write(f.ino, 0, &bytes(1, 40 << 20), false).unwrap();
    vol.close().unwrap();
    let mut seen = Vec::new();
    let report = fsck::check(&*dev, &mut |p| seen.push(p)).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(seen.len() > 3, "{seen:?}");
    assert!(seen
        .windows(2)
        .all(|w| w[0].blocks_checked <= w[1].blocks_checked));
    let last = seen.last().unwrap();
    assert_eq!(last.phase, Phase::Done);
    assert_eq!(last.blocks_total, report.summary.blocks_used);
    assert!(last.blocks_checked >= report.summary.blocks_used);
    assert!(seen.iter().any(|p| p.phase == Phase::Current));
}

#[test]
fn a_peer_hold_is_walked_and_verified() {
    let (dev, vol) = new_volume(20_000);
    let f = vol
        .create(ROOT_INO, b"f", FileKind::Regular, 0o644, 0, 0, 0)
        .unwrap();
    vol.write(f.ino, 0, &bytes(1, 50_000), false).unwrap();
    vol.checkpoint().unwrap();
    vol.peer_tracking_start();
    vol.peer_acked(&vol.committed(), 1);
    vol.write(f.ino, 0, &bytes(2, 50_000), false).unwrap();
    vol.checkpoint().unwrap();
    vol.write(f.ino, 0, &bytes(3, 50_000), false).unwrap();
    vol.close().unwrap();
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert!(
        report.summary.blocks_verified > report.summary.blocks_used,
        "the hold's own blocks were verified too: {report}"
    );
}

#[test]
fn an_image_without_a_twinfs_superblock_is_not_a_twinfs_volume() {
    let zeros = MemDevice::new(20_000);
    let err = fsck::check(&zeros, &mut |_| {}).unwrap_err();
    assert!(matches!(err, twinfs_fs::FsError::NotAVolume), "{err}");
    let random = MemDevice::new(20_000);
    let noise: Vec<u8> = (0..2 * 4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    random.write(BlockAddr(0), &noise[..4096]).unwrap();
    random.write(BlockAddr(1), &noise[4096..]).unwrap();
    let err = fsck::check(&random, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a twinfs volume: neither block 0 nor block 1 holds a twinfs superblock"
    );
    let err = twinfs_fs::superblock::read_latest(&random).unwrap_err();
    assert!(matches!(err, twinfs_fs::FsError::NotAVolume), "{err}");
}

/// Reports fewer blocks than the image it wraps holds: a truncated file.
struct Truncated(Arc<MemDevice>, u64);

impl BlockDevice for Truncated {
    fn num_blocks(&self) -> u64 {
        self.1
    }
    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        if addr.0 + (buf.len() / 4096) as u64 > self.1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "beyond the end",
            ));
        }
        self.0.read(addr, buf)
    }
    fn write(&self, addr: BlockAddr, data: &[u8]) -> std::io::Result<()> {
        self.0.write(addr, data)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_truncated_image_is_a_clear_failure() {
    let dev = Arc::new(MemDevice::new(20_000));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let err = fsck::check(&Truncated(dev, 15_000), &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("20000") && msg.contains("15000"),
        "{msg}"
    );
}

#[test]
fn problems_render_with_severity_image_and_place() {
    let (dev, vol) = new_volume(20_000);
    for i in 0..2 {
        vol.create(ROOT_INO, &[b'a' + i], FileKind::Regular, 0o644, 0, 0, 0)
            .unwrap();
        vol.checkpoint().unwrap();
    }
    assert_eq!(vol.committed().cp, CpNumber(2));
    vol.close().unwrap();
    // Slot 1 gets CP 1 of another volume.
    let other = Arc::new(MemDevice::new(20_000));
    let mut foreign = volume::mkfs(other, &MkfsOptions::default()).unwrap();
    foreign.cp = CpNumber(1);
    dev.write(BlockAddr(1), &foreign.encode()[..]).unwrap();
    let report = fsck(&*dev);
    assert_eq!(report.slot, 0);
    let p = report.of_kind(Kind::Superblock).next().expect("reported");
    assert_eq!(p.severity, Severity::Error);
    assert_eq!(p.block, Some(BlockAddr(1)));
    assert!(
        p.to_string()
            .starts_with("error: volume: superblock slot 1 belongs to another volume"),
        "{p}"
    );
    assert!(report.to_string().contains("1 errors"), "{report}");
}

/// Measures fsck on an image file: `TWINFS_FSCK_GIB` GiB (default 10) of
/// 1 GiB files plus 20,000 small files, checked once with the image in the
/// page cache and once after dropping it from the cache. Prints the times.
/// `TWINFS_FSCK_IMAGE=path` keeps the image there (and reuses it if present).
/// `cargo test --release -p twinfs-fs --test fsck -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check: writes a large image"]
fn fsck_speed_on_a_large_image() {
    use std::os::unix::io::AsRawFd;
    use std::time::Instant;
    use twinfs_fs::device::FileDevice;

    let gib: u64 = std::env::var("TWINFS_FSCK_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = std::env::var("TWINFS_FSCK_IMAGE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().join("big.img"));
    if !path.exists() {
        build_large_image(&path, gib);
    }
    let dev = FileDevice::open(&path, false).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let drop_cache = || {
        // SAFETY: posix_fadvise on an open descriptor only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };
    let cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(r.ru_utime) + secs(r.ru_stime)
    };
    // Baselines in the same run: reading the whole image in 4 MiB reads,
    // and blake3 over 4 KiB blocks on one core.
    for cold in [false, true] {
        if cold {
            drop_cache();
        }
        let (t, c) = (Instant::now(), cpu());
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0u64;
        let len = file.metadata().unwrap().len();
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..n], off).unwrap();
            off += n as u64;
        }
        eprintln!(
            "baseline: reading the {:.2} GiB image ({}): {:.2} s wall, {:.2} s CPU",
            len as f64 / (1u64 << 30) as f64,
            if cold { "cold cache" } else { "warm cache" },
            t.elapsed().as_secs_f64(),
            cpu() - c
        );
    }
    let block = bytes(1, 4096);
    let (t, c) = (Instant::now(), cpu());
    for i in 0..262_144u32 {
        std::hint::black_box(blake3::hash(std::hint::black_box(&block[..])));
        std::hint::black_box(i);
    }
    eprintln!(
        "baseline: blake3 of 1 GiB in 4 KiB blocks, one thread: {:.2} s wall, {:.2} s CPU",
        t.elapsed().as_secs_f64(),
        cpu() - c
    );
    for cold in [false, true] {
        if cold {
            drop_cache();
        }
        let (t, c) = (Instant::now(), cpu());
        let report = fsck::check(&dev, &mut |_| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(report.is_clean(), "{report}");
        let s = &report.summary;
        eprintln!(
            "fsck ({}): {} blocks verified ({:.2} GiB) in {secs:.2} s wall = {:.2} GiB/s, {:.2} s CPU; {} inodes",
            if cold { "cold cache" } else { "warm cache" },
            s.blocks_verified,
            s.blocks_verified as f64 / 262_144.0,
            s.blocks_verified as f64 / 262_144.0 / secs,
            cpu() - c,
            s.inodes
        );
    }
}

fn build_large_image(path: &std::path::Path, gib: u64) {
    let t = std::time::Instant::now();
    let dev = Arc::new(twinfs_fs::device::FileDevice::create(path, (gib + 2) << 30).unwrap());
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let vol = Volume::open(dev.clone(), quiet()).unwrap();
    let chunk = bytes(7, 1 << 20);
    for f in 0..gib {
        let name = format!("big{f}");
        let ino = vol
            .create(ROOT_INO, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)
            .unwrap()
            .ino;
        for i in 0..1024u64 {
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&(f * 1024 + i).to_le_bytes());
            vol.write(ino, i << 20, &c, false).unwrap();
        }
    }
    let small = vol
        .create(ROOT_INO, b"small", FileKind::Directory, 0o755, 0, 0, 0)
        .unwrap()
        .ino;
    for i in 0..20_000u64 {
        let name = format!("s{i}");
        let ino = vol
            .create(small, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)
            .unwrap()
            .ino;
        vol.write(ino, 0, &bytes(i, 3000), false).unwrap();
    }
    vol.close().unwrap();
    drop(vol);
    dev.flush().unwrap();
    eprintln!("built a {gib} GiB image in {:.1?}", t.elapsed());
}

/// Power cuts at many points — the device stops after the n-th I/O, in the
/// middle of log writes or a CP, and unflushed writes are then dropped, kept
/// or torn: the image a mount finds is clean (a torn last log batch is only
/// a note), and so is the image after the mount replayed the log.
#[test]
fn images_left_by_power_cuts_are_clean_before_and_after_recovery() {
    use twinfs_fs::device::{CrashDevice, FaultDevice, LostWrite};
    let mut torn_batches = 0;
    for seed in 0..40u64 {
        let dev = Arc::new(FaultDevice::new(CrashDevice::new(20_000)));
        volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
        let vol = Volume::open(dev.clone(), quiet()).unwrap();
        dev.fail_after(5 + seed * 7);
        let _ = (|| -> Result<()> {
            let d = vol
                .create(ROOT_INO, b"d", FileKind::Directory, 0o755, 0, 0, 0)?
                .ino;
            for i in 0..12u64 {
                let name = format!("f{i}");
                let f = vol
                    .create(d, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)?
                    .ino;
                vol.write(
                    f,
                    i * 1000,
                    &bytes(seed * 100 + i, 20_000 + i as usize * 9000),
                    false,
                )?;
                vol.setxattr(f, b"user.x", &bytes(i, 600 + i as usize * 300), 0)?;
                match (seed + i) % 3 {
                    0 => {
                        vol.checkpoint()?;
                    }
                    1 => vol.fsync()?,
                    _ if i > 0 => vol.unlink(d, b"f0").or_else(|e| {
                        if e.errno() == libc::ENOENT {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?,
                    _ => {}
                }
            }
            Ok(())
        })();
        vol.crash();
        drop(vol);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        dev.inner().crash(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let fate = match x % 3 {
                0 => LostWrite::Dropped,
                1 => LostWrite::Kept,
                _ => LostWrite::Torn,
            };
            (fate, (x >> 8) as u8)
        });
        dev.heal();
        let report = fsck(dev.inner());
        assert!(report.is_clean(), "seed {seed}, after the crash: {report}");
        torn_batches += report.notes();
        let vol = Volume::open(dev.clone(), quiet()).unwrap();
        vol.close().unwrap();
        drop(vol);
        let report = fsck(dev.inner());
        assert!(report.is_clean(), "seed {seed}, after recovery: {report}");
        assert_eq!(report.log.batches, 0, "seed {seed}: recovery took a CP");
    }
    eprintln!("{torn_batches} torn last batches noted");
}
