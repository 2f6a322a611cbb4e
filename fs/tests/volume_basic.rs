//! Behaviour of the volume through its public API, without FUSE.

use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::nvlog::record::*;
use twinfs_fs::volume::{self, VolumeConfig};
use twinfs_fs::*;

fn quiet() -> VolumeConfig {
    VolumeConfig {
        background: false,
        cp_interval: None,
        ..Default::default()
    }
}

fn new_volume(blocks: u64) -> (Arc<MemDevice>, Volume) {
    let dev = Arc::new(MemDevice::new(blocks));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let vol = Volume::open(dev.clone(), quiet()).unwrap();
    (dev, vol)
}

fn reopen(dev: &Arc<MemDevice>, vol: Volume) -> Volume {
    vol.close().unwrap();
    drop(vol);
    Volume::open(dev.clone() as Arc<dyn BlockDevice>, quiet()).unwrap()
}

fn file(vol: &Volume, name: &str) -> Ino {
    vol.create(ROOT_INO, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)
        .unwrap()
        .ino
}

#[test]
fn data_survives_checkpoint_and_reopen() {
    let (dev, vol) = new_volume(20_000);
    let ino = file(&vol, "a");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    vol.write(ino, 123, &data, false).unwrap();
    assert_eq!(vol.read(View::Live, ino, 123, 100_000).unwrap(), data);
    vol.checkpoint().unwrap();
    assert_eq!(vol.read(View::Live, ino, 123, 100_000).unwrap(), data);
    let vol = reopen(&dev, vol);
    let attr = vol.lookup(View::Live, ROOT_INO, b"a").unwrap();
    assert_eq!(attr.size, 100_123);
    assert_eq!(
        vol.read(View::Live, ino, 0, 200_000).unwrap()[123..],
        data[..]
    );
}

#[test]
fn fsynced_data_survives_a_crash_through_replay() {
    let (dev, vol) = new_volume(20_000);
    let ino = file(&vol, "log");
    vol.write(ino, 0, b"hello world", false).unwrap();
    vol.fsync().unwrap();
    vol.crash();
    drop(vol);
    let vol = Volume::open(dev.clone() as Arc<dyn BlockDevice>, quiet()).unwrap();
    assert_eq!(vol.read(View::Live, ino, 0, 100).unwrap(), b"hello world");
}

#[test]
fn directories_list_and_rename() {
    let (dev, vol) = new_volume(20_000);
    let d = vol
        .create(ROOT_INO, b"d", FileKind::Directory, 0o755, 0, 0, 0)
        .unwrap();
    for i in 0..300 {
        vol.create(
            d.ino,
            format!("f{i}").as_bytes(),
            FileKind::Regular,
            0o600,
            1,
            1,
            0,
        )
        .unwrap();
    }
    vol.checkpoint().unwrap();
    for i in 0..100 {
        vol.unlink(d.ino, format!("f{i}").as_bytes()).unwrap();
    }
    vol.rename(d.ino, b"f150", ROOT_INO, b"moved", 0).unwrap();
    let mut names = Vec::new();
    vol.readdir(View::Live, d.ino, 0, &mut |l| {
        names.push(String::from_utf8(l.name).unwrap());
        true
    })
    .unwrap();
    assert_eq!(names.len(), 2 + 199);
    assert!(!names.contains(&"f150".to_string()));
    let vol = reopen(&dev, vol);
    assert!(vol.lookup(View::Live, ROOT_INO, b"moved").is_ok());
    assert_eq!(
        vol.lookup(View::Live, d.ino, b"f5").unwrap_err().errno(),
        libc::ENOENT
    );
    let dattr = vol.getattr(View::Live, d.ino).unwrap();
    assert_eq!(dattr.size, 199);
}

#[test]
fn snapshots_keep_old_contents() {
    let (_dev, vol) = new_volume(20_000);
    let ino = file(&vol, "f");
    vol.write(ino, 0, b"version one", false).unwrap();
    let id = vol.snapshot_create("s1").unwrap();
    vol.write(ino, 0, b"VERSION TWO", false).unwrap();
    vol.checkpoint().unwrap();
    assert_eq!(vol.read(View::Live, ino, 0, 100).unwrap(), b"VERSION TWO");
    assert_eq!(
        vol.read(View::Snapshot(id), ino, 0, 100).unwrap(),
        b"version one"
    );
    assert_eq!(vol.snapshot_list().len(), 1);
    vol.snapshot_delete("s1").unwrap();
    assert!(vol.snapshot_list().is_empty());
}

#[test]
fn truncate_and_punch_read_zeros_and_free_blocks() {
    let (_dev, vol) = new_volume(20_000);
    let ino = file(&vol, "f");
    vol.write(ino, 0, &vec![7u8; 40_000], false).unwrap();
    vol.checkpoint().unwrap();
    vol.fallocate(ino, 5000, 10_000, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE)
        .unwrap();
    let got = vol.read(View::Live, ino, 0, 40_000).unwrap();
    assert!(got[..5000].iter().all(|&b| b == 7));
    assert!(got[5000..15000].iter().all(|&b| b == 0));
    assert!(got[15000..].iter().all(|&b| b == 7));
    let before = vol.getattr(View::Live, ino).unwrap().blocks512;
    vol.setattr(
        ino,
        &AttrChanges {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    vol.setattr(
        ino,
        &AttrChanges {
            size: Some(9000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = vol.read(View::Live, ino, 0, 10_000).unwrap();
    assert_eq!(got.len(), 9000);
    assert!(got[..100].iter().all(|&b| b == 7));
    assert!(got[100..].iter().all(|&b| b == 0));
    vol.checkpoint().unwrap();
    let after = vol.getattr(View::Live, ino).unwrap().blocks512;
    assert!(after < before && after == 8, "blocks {before} -> {after}");
}

#[test]
fn the_difference_since_a_cp_is_exactly_the_blocks_born_after_it() {
    use twinfs_fs::diff::walk_image;
    let (_dev, vol) = new_volume(20_000);
    let a = file(&vol, "a");
    vol.write(a, 0, &vec![1u8; 50_000], false).unwrap();
    vol.setxattr(a, b"user.big", &vec![3u8; 9000], 0).unwrap();
    vol.checkpoint().unwrap();
    let plain = vol.committed();
    let mut count = 0;
    walk_image(vol.cache(), &plain, CpNumber(0), &mut |_, _| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        count, plain.used_blocks,
        "without snapshots, reachable == allocated"
    );
    vol.snapshot_create("s").unwrap();
    let base = vol.committed();
    let b = file(&vol, "b");
    vol.write(b, 0, &vec![2u8; 20_000], false).unwrap();
    vol.write(a, 4096, &[9u8; 10], false).unwrap();
    vol.checkpoint().unwrap();
    let now = vol.committed();
    let mut all = Vec::new();
    walk_image(vol.cache(), &now, CpNumber(0), &mut |p, _| {
        all.push(*p);
        Ok(())
    })
    .unwrap();
    let mut unique: Vec<u64> = all.iter().map(|p| p.addr.0).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "each block visited once");
    assert!(
        all.len() as u64 > now.used_blocks,
        "the snapshot's own blocks are reachable too"
    );
    let mut newer = Vec::new();
    walk_image(vol.cache(), &now, CpNumber(base.cp.0 + 1), &mut |p, _| {
        newer.push(*p);
        Ok(())
    })
    .unwrap();
    let expected: Vec<_> = all.iter().filter(|p| p.birth > base.cp).copied().collect();
    assert_eq!(newer, expected);
    assert!(
        newer.len() >= 5 + 2,
        "b's data, a's rewritten block, and their metadata"
    );
}

/// With the background log writer, fsync makes the log durable with a
/// ranged sync of the batches alone (no whole-device flush that would wait
/// for a CP's writes), and that is enough: after a power failure that drops
/// every unflushed write, replay brings the data back.
#[test]
fn fsync_through_the_log_writer_survives_a_crash_without_a_device_flush() {
    use twinfs_fs::device::{CrashDevice, LostWrite};
    let dev = Arc::new(CrashDevice::new(40_000));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let cfg = VolumeConfig {
        cp_interval: None,
        ..Default::default()
    };
    let vol = Volume::open(dev.clone(), cfg.clone()).unwrap();
    let ino = file(&vol, "f");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let flushes = dev.flush_count();
    vol.write(ino, 0, &data, false).unwrap();
    vol.fsync().unwrap();
    assert_eq!(
        dev.flush_count(),
        flushes,
        "the log writer flushed the device"
    );
    dev.crash(|_| (LostWrite::Dropped, 0));
    vol.crash();
    drop(vol);
    dev.crash(|_| (LostWrite::Dropped, 0));
    let vol = Volume::open(dev.clone(), cfg).unwrap();
    assert_eq!(
        vol.lookup(View::Live, ROOT_INO, b"f").unwrap().size,
        3_000_000
    );
    assert!(vol.read(View::Live, ino, 0, 3_000_000).unwrap() == data);
}

/// `read_to` reuses the caller's buffer as it is: every byte it reports must
/// come from the file, whatever the buffer held (holes and punched ranges
/// read as zeros; dirty and committed blocks as written).
#[test]
fn read_to_a_reused_buffer_returns_exactly_the_file() {
    let (_dev, vol) = new_volume(20_000);
    let ino = file(&vol, "f");
    let mut model: Vec<u8> = (0..100_000).map(|i| (i * 7 + 1) as u8).collect();
    vol.write(ino, 0, &model, false).unwrap();
    vol.checkpoint().unwrap();
    // Committed data, a hole after it, a punched range, dirty blocks on top.
    vol.write(ino, 300_000, b"the end", false).unwrap();
    model.resize(300_000, 0);
    model.extend_from_slice(b"the end");
    vol.fallocate(ino, 20_000, 30_000, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE)
        .unwrap();
    model[20_000..50_000].fill(0);
    vol.write(ino, 60_001, &[0xEE; 9_000], false).unwrap();
    model[60_001..69_001].fill(0xEE);
    let mut buf = vec![0xA5u8; 1 << 20];
    for (offset, size) in [
        (0, 300_007),
        (1, 4096),
        (19_999, 40_002),
        (99_000, 210_000),
        (300_000, 100),
    ] {
        let want = &model[offset as usize..model.len().min(offset as usize + size as usize)];
        buf.fill(0xA5);
        let got = vol
            .read_to(View::Live, ino, offset, size, &mut buf)
            .unwrap();
        assert!(&buf[got] == want, "read_to of {size} at {offset}");
        assert!(
            vol.read(View::Live, ino, offset, size).unwrap() == want,
            "read of {size} at {offset}"
        );
    }
    // Past the end of the file: nothing.
    assert!(vol
        .read_to(View::Live, ino, 400_000, 10, &mut buf)
        .unwrap()
        .is_empty());
}

#[test]
fn live_batches_come_in_order_a_bounded_slice_at_a_time() {
    let (_dev, vol) = new_volume(20_000);
    let ino = file(&vol, "a");
    for i in 0..6u64 {
        vol.write(ino, i * 65_536, &[i as u8 + 1; 65_536], false)
            .unwrap();
        vol.fsync().unwrap();
    }
    let all = vol.live_batches(TransferId(1), usize::MAX).unwrap();
    assert!(
        all.len() >= 6,
        "one batch per fsync at least: {}",
        all.len()
    );
    let ids: Vec<u64> = all.iter().map(|b| b.id.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");

    // Slices of at most 100 KiB (a 64 KiB write's batch is about 70 KiB):
    // one batch each, the same batches byte for byte.
    let mut from = TransferId(1);
    let mut sliced = Vec::new();
    loop {
        let part = vol.live_batches(from, 100 << 10).unwrap();
        let Some(last) = part.last() else { break };
        assert!(
            part.len() == 1 || part.iter().map(|b| b.bytes.len()).sum::<usize>() <= 100 << 10,
            "a slice holds at most max_bytes, or a single batch"
        );
        from = TransferId(last.id.0 + 1);
        sliced.extend(part);
    }
    assert_eq!(sliced.len(), all.len());
    for (a, b) in all.iter().zip(&sliced) {
        assert_eq!((a.id, &a.bytes[..]), (b.id, &b.bytes[..]));
    }
    // A single batch above the bound still comes, alone.
    let one = vol.live_batches(TransferId(1), 1).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, all[0].id);
}

/// Writes `len` bytes of `seed`'s pattern to `ino` in 1 MiB writes.
fn fill(vol: &Volume, ino: Ino, len: usize, seed: u8) -> Result<()> {
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let mut off = 0;
    while off < len {
        let n = chunk.len().min(len - off);
        vol.write(ino, off as u64, &chunk[..n], false)?;
        off += n;
    }
    Ok(())
}

#[test]
fn space_freed_by_an_uncommitted_delete_is_found_before_enospc() {
    let (_dev, vol) = new_volume(8192);
    let free = vol.statfs().blocks_free as usize * 4096;
    let big = free * 3 / 4;
    let a = file(&vol, "a");
    fill(&vol, a, big, 1).unwrap();
    vol.checkpoint().unwrap();
    vol.unlink(ROOT_INO, b"a").unwrap();
    // No CP in between: the delete's blocks come free only with one.
    let b = file(&vol, "b");
    fill(&vol, b, big, 2).unwrap();
    vol.checkpoint().unwrap();
    let back = vol.read(View::Live, b, 0, 1 << 20).unwrap();
    assert_eq!(
        back[..16],
        (0..16)
            .map(|i| (i as u8).wrapping_mul(31) ^ 2)
            .collect::<Vec<_>>()[..]
    );
    assert!(
        matches!(fill(&vol, b, free * 2, 3), Err(FsError::NoSpace)),
        "a volume really full still says so"
    );
}

#[test]
fn an_absent_peer_gives_up_its_blocks_rather_than_fill_the_volume() {
    let (dev, vol) = new_volume(8192);
    let free = vol.statfs().blocks_free as usize * 4096;
    let a = file(&vol, "a");
    let size = free / 4;
    fill(&vol, a, size, 0).unwrap();
    vol.checkpoint().unwrap();
    // A peer applied this CP, then went away: every block the rewrites
    // below free is kept for it while the hold tracks it.
    vol.peer_tracking_start();
    vol.peer_acked(&vol.committed(), 7);
    assert!(vol.held_for_peer().is_some());
    for round in 1..=12u8 {
        fill(&vol, a, size, round).unwrap_or_else(|e| panic!("round {round}: {e}"));
        vol.checkpoint().unwrap();
    }
    assert!(
        vol.held_for_peer().is_none(),
        "the hold was given up and the next CPs record none"
    );
    let back = vol.read(View::Live, a, 0, 64).unwrap();
    assert_eq!(
        back,
        (0..64)
            .map(|i| (i as u8).wrapping_mul(31) ^ 12)
            .collect::<Vec<_>>()
    );
    let vol = reopen(&dev, vol);
    assert_eq!(vol.read(View::Live, a, 0, 64).unwrap(), back);
}

#[test]
fn a_crash_after_giving_up_the_peer_hold_for_space_still_mounts() {
    const S: usize = 2 << 20;
    let pat = |seed: u8| -> Vec<u8> { (0..S).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect() };
    let (dev, vol) = new_volume(8192);
    let a = file(&vol, "a");
    vol.write(a, 0, &pat(0), false).unwrap();
    vol.checkpoint().unwrap();
    vol.peer_tracking_start();
    vol.peer_acked(&vol.committed(), 7);
    // The next CP records the hold: the first version of `a` stays for the peer.
    vol.write(a, 0, &pat(1), false).unwrap();
    vol.checkpoint().unwrap();
    let b = file(&vol, "b");
    // statfs counts the held blocks as free; fill what is free without them.
    let room = (vol.statfs().blocks_free - vol.status().peer_only_blocks) as usize * 4096;
    fill(&vol, b, room - S / 2, 9).unwrap();
    vol.checkpoint().unwrap();
    // Fits only once the hold is given up; it reaches the log and no CP
    // before the power cut, so the superblock still records the hold.
    vol.write(a, 0, &pat(2), false).unwrap();
    vol.fsync().unwrap();
    assert!(vol.held_for_peer().is_none(), "the hold was given up");
    std::mem::forget(vol);
    let vol = Volume::open(dev.clone() as Arc<dyn BlockDevice>, quiet())
        .expect("the volume mounts again and its log fits");
    assert_eq!(vol.read(View::Live, a, 0, S as u32).unwrap(), pat(2));
}
