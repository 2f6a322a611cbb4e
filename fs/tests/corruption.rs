//! Damage to every kind of block of an image: reads through the volume
//! return the right bytes or EIO (never wrong bytes, never a panic), and
//! fsck names the damaged block.

mod fsck_common;

use std::sync::Arc;

use fsck_common::*;
use twinfs_fs::btree::{self, TreeRoot};
use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::filetree::{self, FANOUT};
use twinfs_fs::fsck::{self, Kind, Report, Severity};
use twinfs_fs::items::{self, InodeRecord, XattrValue};
use twinfs_fs::nvlog;
use twinfs_fs::superblock::{self, Superblock};
use twinfs_fs::volume::VolumeConfig;
use twinfs_fs::*;

const BLOCKS: u64 = 70_000;
/// A log this long puts every data block beyond the first bitmap block's
/// 32,768, so the allocation map has a tree block above its bitmap blocks.
const LOG_BLOCKS: u64 = 33_000;

/// A closed volume holding the varied tree plus enough small files for a
/// metadata tree of several levels.
fn image() -> (Arc<MemDevice>, Expected, Superblock) {
    let opts = MkfsOptions {
        log_blocks: Some(LOG_BLOCKS),
        ..Default::default()
    };
    let (dev, vol) = new_volume_with(BLOCKS, &opts);
    let mut e = build_varied_tree(&vol);
    vol.release_file(e.orphan.take().expect("orphan")).unwrap();
    let bulk = vol
        .create(ROOT_INO, b"bulk", FileKind::Directory, 0o755, 0, 0, 0)
        .unwrap()
        .ino;
    for i in 0..300u64 {
        let f = vol
            .create(
                bulk,
                format!("f{i}").as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                0,
                0,
            )
            .unwrap()
            .ino;
        let data = bytes(100 + i, (i * 37 % 3000) as usize);
        vol.write(f, 0, &data, false).unwrap();
        e.files.push((f, data));
    }
    vol.close().unwrap();
    let sb = vol.committed();
    assert!(sb.meta.height >= 1, "the metadata tree has internal nodes");
    drop(vol);
    let report = fsck(&*dev);
    assert!(report.is_clean(), "the undamaged image is clean: {report}");
    (dev, e, sb)
}

fn read_only() -> VolumeConfig {
    VolumeConfig {
        read_only: true,
        ..quiet()
    }
}

/// Opens the image read-only and then read-write and reads everything each
/// time. Returns the number of reads that failed with EIO (an open that
/// fails with EIO counts as one).
fn read_through_the_volume(dev: &Arc<MemDevice>, e: &Expected) -> usize {
    let mut eio = 0;
    for cfg in [read_only(), quiet()] {
        match Volume::open(dev.clone() as Arc<dyn BlockDevice>, cfg) {
            Ok(vol) => {
                eio += read_everything(&vol, e);
                vol.crash();
            }
            Err(err) => {
                assert_eq!(err.errno(), libc::EIO, "open: {err}");
                eio += 1;
            }
        }
    }
    eio
}

/// Flips one byte of block `addr`.
fn flip(dev: &MemDevice, addr: BlockAddr, offset: usize) {
    let b = dev.peek(addr);
    dev.poke(addr, offset, &[b[offset] ^ 0x5a]);
}

fn record(dev: &Arc<MemDevice>, sb: &Superblock, ino: Ino) -> InodeRecord {
    let cache = cache::BlockCache::new(dev.clone(), 64, 64);
    let v = btree::get(&cache, &sb.meta, &InodeRecord::key(ino))
        .unwrap()
        .expect("record");
    InodeRecord::decode(&v).unwrap()
}

fn child(dev: &MemDevice, node: &BlockPtr, slot: u64) -> BlockPtr {
    let b = dev.peek(node.addr);
    let off = slot as usize * BlockPtr::SIZE;
    BlockPtr::decode(&b[off..off + BlockPtr::SIZE])
}

/// The file with the large xattr is 1.5 MB with a punched hole: a two-level tree.
fn big_file(dev: &Arc<MemDevice>, e: &Expected, sb: &Superblock) -> (Ino, TreeRoot) {
    let ino = e.big_xattr.as_ref().expect("big").0;
    let data = record(dev, sb, ino).data;
    assert_eq!(data.height, 2);
    (ino, data)
}

/// Asserts the report has an error of `kind` about block `addr` whose text says `says`.
fn assert_names(report: &Report, kind: Kind, addr: BlockAddr, says: &str) {
    assert!(
        report
            .about_block(addr)
            .any(|p| p.kind == kind && p.severity == Severity::Error && p.what.contains(says)),
        "no {kind:?} error about block {addr} saying {says:?}:\n{report}"
    );
}

#[test]
fn a_damaged_data_block_is_eio_and_named() {
    let (dev, e, sb) = image();
    let (ino, data) = big_file(&dev, &e, &sb);
    let cache = cache::BlockCache::new(dev.clone(), 64, 64);
    let ptr = filetree::lookup(&cache, &data, 3).unwrap();
    flip(&dev, ptr.addr, 1000);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        ptr.addr,
        &format!("data block 3 of inode {ino}"),
    );
    assert_eq!(report.errors(), 1, "{report}");
    assert!(read_through_the_volume(&dev, &e) > 0);
}

#[test]
fn a_damaged_indirect_block_is_eio_and_named() {
    let (dev, e, sb) = image();
    let (ino, data) = big_file(&dev, &e, &sb);
    let level1 = child(&dev, &data.ptr, 0);
    flip(&dev, level1.addr, 17);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        level1.addr,
        &format!("indirect block (level 1, file blocks from 0) of inode {ino}"),
    );
    assert!(read_through_the_volume(&dev, &e) > 0);
}

fn btree_nodes(dev: &Arc<MemDevice>, sb: &Superblock) -> Vec<(u8, BlockPtr)> {
    let cache = cache::BlockCache::new(dev.clone(), 64, 64);
    let mut nodes = Vec::new();
    btree::walk(&cache, &sb.meta, CpNumber(0), &mut |level, ptr, _| {
        nodes.push((level, *ptr));
        Ok(())
    })
    .unwrap();
    nodes
}

#[test]
fn a_damaged_btree_leaf_is_eio_and_named() {
    let (dev, e, sb) = image();
    let nodes = btree_nodes(&dev, &sb);
    let leaves: Vec<BlockPtr> = nodes.iter().filter(|n| n.0 == 0).map(|n| n.1).collect();
    assert!(leaves.len() >= 2);
    let leaf = leaves[leaves.len() / 2];
    flip(&dev, leaf.addr, 300);
    let report = fsck(&*dev);
    assert_names(&report, Kind::Checksum, leaf.addr, "metadata B-tree leaf");
    read_through_the_volume(&dev, &e);
}

#[test]
fn a_damaged_btree_internal_node_is_eio_and_named() {
    let (dev, e, sb) = image();
    let root = sb.meta.ptr;
    flip(&dev, root.addr, 40);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        root.addr,
        &format!("metadata B-tree node (level {})", sb.meta.height),
    );
    assert!(read_through_the_volume(&dev, &e) > 0);
}

#[test]
fn a_damaged_xattr_value_block_is_eio_and_named() {
    let (dev, e, sb) = image();
    let (ino, _) = e.big_xattr.clone().expect("big");
    let cache = cache::BlockCache::new(dev.clone(), 64, 64);
    let key = btree::Key::new(
        ino.0,
        items::kind::XATTR,
        items::name_hash(&items::name_hash_key(&sb.uuid), b"user.big"),
    );
    let bucket = btree::get(&cache, &sb.meta, &key).unwrap().expect("bucket");
    let XattrValue::Blob { blocks, .. } = &items::decode_xattr_bucket(&bucket).unwrap()[0].value
    else {
        panic!("the 10 KB value is stored in blocks");
    };
    flip(&dev, blocks[1].addr, 5);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        blocks[1].addr,
        &format!("xattr value block 1 of inode {ino}"),
    );
    assert_eq!(report.errors(), 1, "{report}");
    assert!(read_through_the_volume(&dev, &e) > 0);
}

/// The map's blocks are all in its second bitmap block (the first is a
/// hole), under one tree block.
fn map_tree(sb: &Superblock) -> BlockPtr {
    assert_eq!(sb.alloc.height, 1);
    sb.alloc.ptr
}

#[test]
fn a_damaged_bitmap_block_is_eio_and_named() {
    let (dev, e, sb) = image();
    let bitmap = child(&dev, &map_tree(&sb), 1);
    flip(&dev, bitmap.addr, 2000);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        bitmap.addr,
        "allocation bitmap block 1",
    );
    assert_eq!(
        report.errors(),
        1,
        "nothing is blamed on the unknown bits: {report}"
    );
    assert!(read_through_the_volume(&dev, &e) > 0);
}

#[test]
fn a_damaged_map_tree_block_is_eio_and_named() {
    let (dev, e, sb) = image();
    let root = map_tree(&sb);
    flip(&dev, root.addr, 8);
    let report = fsck(&*dev);
    assert_names(
        &report,
        Kind::Checksum,
        root.addr,
        "allocation map tree block (level 1)",
    );
    assert_eq!(report.errors(), 1, "{report}");
    assert!(read_through_the_volume(&dev, &e) > 0);
}

#[test]
fn a_damaged_older_superblock_slot_is_a_warning_and_the_newer_one_is_used() {
    let (dev, e, sb) = image();
    let older = BlockAddr(1 - sb.slot());
    flip(&dev, older, 100);
    let report = fsck(&*dev);
    assert_eq!(report.cp, sb.cp);
    let p: Vec<_> = report.about_block(older).collect();
    assert_eq!(p.len(), 1, "{report}");
    assert_eq!(
        (p[0].kind, p[0].severity),
        (Kind::Superblock, Severity::Warning)
    );
    assert!(p[0].what.contains("checksum mismatch"), "{}", p[0]);
    assert_eq!(report.errors(), 0, "{report}");
    assert_eq!(read_through_the_volume(&dev, &e), 0);
}

#[test]
fn a_damaged_newest_superblock_slot_falls_back_to_the_previous_cp_and_its_log() {
    let (dev, e, sb) = image();
    let newest = BlockAddr(sb.slot());
    flip(&dev, newest, 100);
    let report = fsck(&*dev);
    assert_eq!(report.cp.0, sb.cp.0 - 1, "{report}");
    let p: Vec<_> = report.about_block(newest).collect();
    assert_eq!(p.len(), 1, "{report}");
    assert_eq!(
        (p[0].kind, p[0].severity),
        (Kind::Superblock, Severity::Warning)
    );
    assert_eq!(report.errors(), 0, "the previous CP is intact: {report}");
    assert!(
        report.log.batches > 0,
        "what the lost CP held is in the log: {report}"
    );
    assert_eq!(
        read_through_the_volume(&dev, &e),
        0,
        "replaying the log rebuilds the lost CP"
    );
}

#[test]
fn both_superblock_slots_damaged_fail_clearly() {
    let (dev, e, _) = image();
    flip(&dev, BlockAddr(0), 100);
    flip(&dev, BlockAddr(1), 100);
    let err = fsck::check(&*dev, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no valid superblock") && msg.contains("slot 0") && msg.contains("slot 1"),
        "{msg}"
    );
    assert_eq!(
        read_through_the_volume(&dev, &e),
        2,
        "both opens fail with EIO"
    );
}

/// Reports fewer blocks than the image holds, as a truncated image file would.
struct Truncated(Arc<MemDevice>, u64);

impl BlockDevice for Truncated {
    fn num_blocks(&self) -> u64 {
        self.1
    }
    fn read(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        if addr.0 + (buf.len() / BLOCK_SIZE) as u64 > self.1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "beyond the end of the image",
            ));
        }
        self.0.read(addr, buf)
    }
    fn write(&self, addr: BlockAddr, data: &[u8]) -> std::io::Result<()> {
        if addr.0 + (data.len() / BLOCK_SIZE) as u64 > self.1 {
            return Err(std::io::Error::other("beyond the end of the image"));
        }
        self.0.write(addr, data)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_truncated_image_fails_clearly() {
    let (dev, _, sb) = image();
    let short = Arc::new(Truncated(dev, BLOCKS - 1000));
    let err = fsck::check(&*short, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    for cfg in [read_only(), quiet()] {
        let err = Volume::open(short.clone(), cfg).err().expect("open fails");
        assert_eq!(err.errno(), libc::EIO);
    }
    assert!(sb.total_blocks > BLOCKS - 1000);
}

/// Rewrites bitmap block `index` with `edit` and fixes the hashes above it
/// (map tree blocks and the superblock), as a buggy CP would have written it.
fn rewrite_bitmap(dev: &MemDevice, index: u64, edit: impl FnOnce(&mut [u8])) {
    let (mut sb, _) = superblock::read_latest(dev).unwrap();
    let mut path = Vec::new();
    let mut ptr = sb.alloc.ptr;
    for level in (1..=sb.alloc.height).rev() {
        let slot = (index / filetree::span(level - 1)) % FANOUT;
        path.push((ptr, slot));
        ptr = child(dev, &ptr, slot);
    }
    let mut block = dev.peek(ptr.addr);
    edit(&mut block);
    dev.poke(ptr.addr, 0, &block);
    let mut hash = Hash128::of(&block);
    for (parent, slot) in path.into_iter().rev() {
        let mut b = dev.peek(parent.addr);
        let off = slot as usize * BlockPtr::SIZE + 16;
        b[off..off + 16].copy_from_slice(&hash.0);
        dev.poke(parent.addr, 0, &b);
        hash = Hash128::of(&b);
    }
    sb.alloc.ptr.hash = hash;
    dev.write(BlockAddr(sb.slot()), &sb.encode()[..]).unwrap();
}

fn set_bit(bytes: &mut [u8], addr: u64, on: bool) {
    let local = addr % (BLOCK_SIZE as u64 * 8);
    let (byte, bit) = ((local / 8) as usize, local % 8);
    if on {
        bytes[byte] |= 1 << bit;
    } else {
        bytes[byte] &= !(1 << bit);
    }
}

#[test]
fn a_leaked_block_and_a_missing_allocation_bit_are_reported() {
    let (dev, e, sb) = image();
    let (ino, data) = big_file(&dev, &e, &sb);
    let cache = cache::BlockCache::new(dev.clone(), 64, 64);
    let used = filetree::lookup(&cache, &data, 0).unwrap().addr;
    let free = BlockAddr(65_000);
    rewrite_bitmap(&dev, 1, |b| {
        set_bit(b, used.0, false);
        set_bit(b, free.0, true);
    });
    let report = fsck(&*dev);
    let unmarked: Vec<_> = report.of_kind(Kind::Unmarked).collect();
    assert_eq!(unmarked.len(), 1, "{report}");
    assert_eq!(unmarked[0].block, Some(used));
    assert_eq!(unmarked[0].ino, Some(ino));
    assert!(
        unmarked[0].what.contains("data block 0 of inode"),
        "{}",
        unmarked[0]
    );
    let leaked: Vec<_> = report.of_kind(Kind::Leaked).collect();
    assert_eq!(leaked.len(), 1, "{report}");
    assert_eq!(
        (leaked[0].block, leaked[0].severity),
        (Some(free), Severity::Warning)
    );
    assert_eq!(
        read_through_the_volume(&dev, &e),
        0,
        "nothing is damaged yet"
    );
}

/// A file written in three fsynced batches after a CP, then a crash.
fn logged(dev: &Arc<MemDevice>) -> (Ino, Vec<Vec<u8>>, Superblock) {
    let vol = Volume::open(dev.clone() as Arc<dyn BlockDevice>, quiet()).unwrap();
    let f = vol
        .create(ROOT_INO, b"f", FileKind::Regular, 0o644, 0, 0, 0)
        .unwrap()
        .ino;
    vol.checkpoint().unwrap();
    let mut states = vec![Vec::new()];
    let mut now = Vec::new();
    for i in 0..3u64 {
        let data = bytes(i, 9000 + i as usize * 5000);
        vol.write(f, 0, &data, false).unwrap();
        vol.fsync().unwrap();
        if now.len() < data.len() {
            now.resize(data.len(), 0);
        }
        now[..data.len()].copy_from_slice(&data);
        states.push(now.clone());
    }
    let sb = vol.committed();
    vol.crash();
    (f, states, sb)
}

fn log_batches(dev: &MemDevice, sb: &Superblock) -> Vec<(u64, TransferId)> {
    nvlog::scan(dev, sb)
        .batches
        .iter()
        .map(|r| (sb.log_start + r.pos, r.sealed.id))
        .collect()
}

fn open_and_read(dev: &Arc<MemDevice>, f: Ino) -> Vec<u8> {
    let vol = Volume::open(dev.clone() as Arc<dyn BlockDevice>, read_only()).unwrap();
    let got = vol.read(View::Live, f, 0, 1 << 20).unwrap();
    vol.crash();
    got
}

#[test]
fn a_torn_last_log_batch_stops_replay_cleanly_and_is_a_note() {
    let dev = Arc::new(MemDevice::new(BLOCKS));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let (f, states, sb) = logged(&dev);
    let batches = log_batches(&dev, &sb);
    assert_eq!(batches.len(), 3);
    let (last, id) = batches[2];
    flip(&dev, BlockAddr(last), 300);
    let report = fsck(&*dev);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.log.batches, 2);
    let notes: Vec<_> = report.of_kind(Kind::Log).collect();
    assert_eq!(notes.len(), 1, "{report}");
    assert_eq!(
        (notes[0].severity, notes[0].block),
        (Severity::Note, Some(BlockAddr(last)))
    );
    assert!(
        notes[0].what.contains(&format!("transfer {id}")),
        "{}",
        notes[0]
    );
    assert_eq!(
        open_and_read(&dev, f),
        states[2],
        "the first two writes replay"
    );
}

#[test]
fn a_damaged_log_batch_with_later_batches_is_an_error() {
    let dev = Arc::new(MemDevice::new(BLOCKS));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).unwrap();
    let (f, states, sb) = logged(&dev);
    let batches = log_batches(&dev, &sb);
    let (first, id) = batches[0];
    flip(&dev, BlockAddr(first), 300);
    let report = fsck(&*dev);
    assert_eq!(report.log.batches, 0);
    let errs: Vec<_> = report.of_kind(Kind::Log).collect();
    assert_eq!(errs.len(), 1, "{report}");
    assert_eq!(
        (errs[0].severity, errs[0].block),
        (Severity::Error, Some(BlockAddr(first)))
    );
    assert!(
        errs[0].what.contains(&format!("transfer {id}")) && errs[0].what.contains("loses"),
        "{}",
        errs[0]
    );
    assert_eq!(
        open_and_read(&dev, f),
        states[0],
        "replay stops before the damage"
    );
}

#[test]
fn random_damage_never_panics_and_never_returns_wrong_bytes() {
    let (dev, e, sb) = image();
    let pristine: Vec<(u64, Vec<u8>)> = (0..sb.total_blocks)
        .map(|a| (a, dev.peek(BlockAddr(a))))
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .collect();
    let mut seed = 12345u64;
    for round in 0..12 {
        for (a, b) in &pristine {
            dev.poke(BlockAddr(*a), 0, b);
        }
        // Damage three written blocks at random places.
        for _ in 0..3 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (addr, _) = &pristine[(seed >> 33) as usize % pristine.len()];
            flip(&dev, BlockAddr(*addr), (seed >> 13) as usize % BLOCK_SIZE);
        }
        match fsck::check(&*dev, &mut |_| {}) {
            Ok(report) => assert!(
                !report.is_clean() || report.problems.is_empty(),
                "round {round}"
            ),
            Err(err) => assert!(
                err.to_string().contains("superblock"),
                "round {round}: {err}"
            ),
        }
        read_through_the_volume(&dev, &e);
    }
}

/// Rewrites B-tree leaf `leaf` (a child of the root) and fixes the hashes
/// above it, as a buggy CP would have written it: reads cannot see the
/// damage, only the rules can.
fn forge_leaf(dev: &MemDevice, root: &BlockPtr, leaf: &BlockPtr, bytes: &[u8]) {
    dev.poke(leaf.addr, 0, bytes);
    let mut parent = dev.peek(root.addr);
    let entry = (8..4096 - 49)
        .step_by(49)
        .find(|&at| BlockPtr::decode(&parent[at + 17..at + 49]).addr == leaf.addr)
        .expect("the leaf is a child of the root");
    parent[entry + 17 + 16..entry + 49].copy_from_slice(&Hash128::of(bytes).0);
    dev.poke(root.addr, 0, &parent);
    let (mut sb, _) = superblock::read_latest(dev).unwrap();
    sb.meta.ptr.hash = Hash128::of(&parent);
    dev.write(BlockAddr(sb.slot()), &sb.encode()[..]).unwrap();
}

#[test]
fn forged_leaves_are_reported_without_panics() {
    let (dev, e, sb) = image();
    assert_eq!(sb.meta.height, 1, "leaves hang right below the root");
    let leaves: Vec<BlockPtr> = btree_nodes(&dev, &sb)
        .iter()
        .filter(|n| n.0 == 0)
        .map(|n| n.1)
        .collect();
    let pristine: Vec<(BlockAddr, Vec<u8>)> = [sb.meta.ptr]
        .iter()
        .chain(&leaves)
        .map(|p| (p.addr, dev.peek(p.addr)))
        .chain([(BlockAddr(sb.slot()), dev.peek(BlockAddr(sb.slot())))])
        .collect();
    let mut seed = 99u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut found = 0;
    for round in 0..150 {
        for (a, b) in &pristine {
            dev.poke(*a, 0, b);
        }
        let leaf = leaves[next() as usize % leaves.len()];
        let mut bytes = dev.peek(leaf.addr);
        // Mostly inside the entries, where item values live.
        let used = 8 + u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
        for _ in 0..1 + next() % 3 {
            let at = next() as usize % if round % 4 == 0 { BLOCK_SIZE } else { used };
            bytes[at] ^= 1 << (next() % 8);
        }
        forge_leaf(&dev, &sb.meta.ptr, &leaf, &bytes);
        let report = fsck(&*dev);
        if !report.is_clean() {
            found += 1;
        }
        // The volume must not panic either (what it reads may differ: the
        // forged hashes make the change look legitimate).
        for cfg in [read_only(), quiet()] {
            if let Ok(vol) = Volume::open(dev.clone() as Arc<dyn BlockDevice>, cfg) {
                let _ = read_everything_lenient(&vol, &e);
                vol.crash();
            }
        }
    }
    assert!(
        found > 100,
        "only {found} of 150 forged leaves were reported"
    );
}

/// Every read of the tree, ignoring results.
fn read_everything_lenient(vol: &Volume, e: &Expected) -> usize {
    let mut n = 0;
    for (ino, data) in &e.files {
        n += vol.read(View::Live, *ino, 0, data.len() as u32).is_ok() as usize;
        let _ = vol.getattr(View::Live, *ino);
        let _ = vol.listxattr(View::Live, *ino);
    }
    let _ = vol.readdir(View::Live, ROOT_INO, 0, &mut |_| true);
    n
}
