//! Shared by the fsck and corruption tests: a volume with a varied tree
//! whose every file, link, symlink and xattr is known, so that tests can
//! compare what reads return with what was written.

#![allow(dead_code)]

use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::fsck::{self, Report};
use twinfs_fs::nvlog::record::{FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE};
use twinfs_fs::volume::{self, VolumeConfig};
use twinfs_fs::*;

/// No background threads, CPs only on request: deterministic.
pub fn quiet() -> VolumeConfig {
    VolumeConfig {
        background: false,
        cp_interval: None,
        ..Default::default()
    }
}

pub fn new_volume(blocks: u64) -> (Arc<MemDevice>, Volume) {
    new_volume_with(blocks, &MkfsOptions::default())
}

pub fn new_volume_with(blocks: u64, opts: &MkfsOptions) -> (Arc<MemDevice>, Volume) {
    let dev = Arc::new(MemDevice::new(blocks));
    volume::mkfs(dev.clone(), opts).expect("mkfs");
    let vol = Volume::open(dev.clone(), quiet()).expect("open");
    (dev, vol)
}

/// Runs fsck, checking that progress was reported and ended at `Done`.
pub fn fsck(dev: &dyn BlockDevice) -> Report {
    let mut last = None;
    let report = fsck::check(dev, &mut |p| last = Some(p)).expect("fsck runs");
    assert_eq!(last.map(|p| p.phase), Some(fsck::Phase::Done));
    report
}

/// Pseudo-random bytes, different for every `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sparse file: inode, size, and its data as (offset, bytes) pieces.
pub type Sparse = (Ino, u64, Vec<(u64, Vec<u8>)>);

/// What the varied tree holds.
#[derive(Default, Debug)]
pub struct Expected {
    /// Every regular file: inode, size, and its bytes (sparse ones too, holes as zeros,
    /// except `sparse` whose data is listed as (offset, bytes) pieces).
    pub files: Vec<(Ino, Vec<u8>)>,
    pub sparse: Option<Sparse>,
    pub symlinks: Vec<(Ino, Vec<u8>)>,
    pub xattrs: Vec<(Ino, Vec<u8>, Vec<u8>)>,
    /// A file with a large (blob) xattr.
    pub big_xattr: Option<(Ino, Vec<u8>)>,
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlink_count: u64,
    pub special_files: u64,
    pub entries: u64,
    pub data_bytes: u64,
    pub snapshots: u64,
    pub orphan: Option<Ino>,
    /// Snapshot id → (inode, bytes it held then).
    pub snapshot_files: Vec<(u64, Ino, Vec<u8>)>,
}

fn mk(vol: &Volume, parent: Ino, name: &str, kind: FileKind, e: &mut Expected) -> Ino {
    let a = vol
        .create(parent, name.as_bytes(), kind, 0o644, 1000, 1000, 0)
        .expect("create");
    e.inodes += 1;
    e.entries += 1;
    match kind {
        FileKind::Directory => e.directories += 1,
        FileKind::Regular => e.regular_files += 1,
        _ => e.special_files += 1,
    }
    a.ino
}

fn file(vol: &Volume, parent: Ino, name: &str, data: &[u8], e: &mut Expected) -> Ino {
    let ino = mk(vol, parent, name, FileKind::Regular, e);
    if !data.is_empty() {
        vol.write(ino, 0, data, false).expect("write");
    }
    e.files.push((ino, data.to_vec()));
    e.data_bytes += data.len() as u64;
    ino
}

/// Builds a tree with files of every shape, hard links, directories,
/// symlinks, xattrs (inline and in blocks), special files, two snapshots
/// and an orphan (left open: call `vol.release_file(orphan)` before relying
/// on a clean reopen), checkpointing along the way.
pub fn build_varied_tree(vol: &Volume) -> Expected {
    let mut e = Expected {
        inodes: 1,
        directories: 1,
        ..Default::default()
    };
    let root = ROOT_INO;
    let a = mk(vol, root, "a", FileKind::Directory, &mut e);
    let b = mk(vol, a, "b", FileKind::Directory, &mut e);
    let c = mk(vol, b, "c", FileKind::Directory, &mut e);
    mk(vol, root, "empty", FileKind::Directory, &mut e);
    file(vol, root, "tiny", b"hello, fsck", &mut e);
    file(vol, a, "unaligned", &bytes(1, 100_003), &mut e);
    let big = file(vol, b, "big", &bytes(2, 2 << 20), &mut e);
    file(vol, c, "empty-file", b"", &mut e);
    vol.checkpoint().expect("cp");

    // A sparse file whose tree is three levels tall.
    let sparse = mk(vol, root, "sparse", FileKind::Regular, &mut e);
    let far = 1u64 << 30;
    let pieces = vec![(5000u64, bytes(3, 3000)), (far, bytes(4, 10_000))];
    for (off, data) in &pieces {
        vol.write(sparse, *off, data, false).expect("sparse write");
    }
    let size = far + 10_000;
    e.data_bytes += size;
    e.sparse = Some((sparse, size, pieces));

    // Hard links: three names in three directories.
    let linked = file(vol, a, "linked", &bytes(5, 9000), &mut e);
    vol.link(linked, root, b"link1").expect("link");
    vol.link(linked, c, b"link2").expect("link");
    e.entries += 2;

    // Symlinks: one inline, one stored as data.
    for (name, target) in [("short", b"a/b/c".to_vec()), ("long", vec![b'x'; 2000])] {
        let s = vol
            .symlink(root, name.as_bytes(), &target, 0, 0)
            .expect("symlink");
        e.inodes += 1;
        e.entries += 1;
        e.symlink_count += 1;
        e.symlinks.push((s.ino, target));
    }

    // Special files.
    mk(vol, a, "fifo", FileKind::Fifo, &mut e);
    mk(vol, a, "socket", FileKind::Socket, &mut e);
    let dev = vol
        .create(a, b"null", FileKind::CharDevice, 0o666, 0, 0, 0x0103)
        .expect("mknod")
        .ino;
    let _ = dev;
    e.inodes += 1;
    e.entries += 1;
    e.special_files += 1;

    // Xattrs: inline ones, and one stored in three blocks.
    let tiny = e.files[0].0;
    for (ino, name, value) in [
        (tiny, b"user.small".to_vec(), b"v".to_vec()),
        (a, b"user.dir".to_vec(), bytes(6, 300)),
    ] {
        vol.setxattr(ino, &name, &value, 0).expect("setxattr");
        e.xattrs.push((ino, name, value));
    }
    let big_value = bytes(7, 10_000);
    vol.setxattr(big, b"user.big", &big_value, 0)
        .expect("setxattr big");
    e.xattrs
        .push((big, b"user.big".to_vec(), big_value.clone()));
    e.big_xattr = Some((big, big_value));
    vol.checkpoint().expect("cp");

    // A snapshot, then changes it must not see.
    let s1 = vol.snapshot_create("one").expect("snapshot");
    e.snapshots += 1;
    let (unaligned, old) = e.files[1].clone();
    e.snapshot_files.push((s1, unaligned, old.clone()));
    let mut new = old.clone();
    let patch = bytes(8, 5000);
    new[10_000..15_000].copy_from_slice(&patch);
    vol.write(unaligned, 10_000, &patch, false)
        .expect("overwrite");
    e.files[1].1 = new;

    // Truncate, punch a hole, rename, unlink.
    let bigdata = e.files.iter().find(|f| f.0 == big).expect("big").1.clone();
    let mut cut = bigdata[..1_500_000].to_vec();
    vol.setattr(
        big,
        &AttrChanges {
            size: Some(1_500_000),
            ..Default::default()
        },
    )
    .expect("truncate");
    vol.fallocate(big, 100_000, 300_000, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE)
        .expect("punch");
    cut[100_000..400_000].fill(0);
    e.data_bytes -= bigdata.len() as u64 - cut.len() as u64;
    e.files.iter_mut().find(|f| f.0 == big).expect("big").1 = cut;
    vol.rename(root, b"tiny", c, b"moved", 0).expect("rename");
    let gone = file(vol, root, "gone", &bytes(9, 20_000), &mut e);
    vol.checkpoint().expect("cp");
    vol.unlink(root, b"gone").expect("unlink");
    e.files.retain(|f| f.0 != gone);
    e.inodes -= 1;
    e.entries -= 1;
    e.regular_files -= 1;
    e.data_bytes -= 20_000;
    vol.checkpoint().expect("cp");

    // An orphan: unlinked while open, at a CP.
    let orphan = file(vol, root, "orphan", &bytes(10, 7000), &mut e);
    vol.open_file(orphan).expect("open");
    vol.unlink(root, b"orphan").expect("unlink");
    e.entries -= 1;
    e.files.retain(|f| f.0 != orphan);
    e.orphan = Some(orphan);

    let s2 = vol.snapshot_create("two").expect("snapshot");
    e.snapshots += 1;
    e.snapshot_files.push((s2, unaligned, e.files[1].1.clone()));
    vol.checkpoint().expect("cp");
    e
}

/// Every read a user could make of the tree, compared with what it must
/// return. Each read must give the right bytes or fail with EIO; returns
/// how many reads failed with EIO. Panics on wrong bytes or another error.
pub fn read_everything(vol: &Volume, e: &Expected) -> usize {
    let mut eio = 0;
    let mut ok_or_eio = |what: &str, r: Result<bool>| match r {
        Ok(true) => {}
        Ok(false) => panic!("{what}: wrong bytes"),
        Err(err) => {
            assert_eq!(err.errno(), libc::EIO, "{what}: {err}");
            eio += 1;
        }
    };
    for (ino, data) in &e.files {
        let r = vol
            .read(View::Live, *ino, 0, data.len() as u32 + 10)
            .map(|got| got == *data);
        ok_or_eio(&format!("file {ino}"), r);
    }
    if let Some((ino, size, pieces)) = &e.sparse {
        let r = vol.getattr(View::Live, *ino).map(|a| a.size == *size);
        ok_or_eio("sparse size", r);
        for (off, data) in pieces {
            let r = vol
                .read(View::Live, *ino, *off - 100, data.len() as u32 + 200)
                .map(|got| {
                    got[..100].iter().all(|&b| b == 0)
                        && got[100..100 + data.len()] == data[..]
                        && got[100 + data.len()..].iter().all(|&b| b == 0)
                });
            ok_or_eio("sparse piece", r);
        }
        let r = vol
            .read(View::Live, *ino, 1 << 20, 4096)
            .map(|got| got.iter().all(|&b| b == 0));
        ok_or_eio("sparse hole", r);
    }
    for (ino, target) in &e.symlinks {
        let r = vol.readlink(View::Live, *ino).map(|t| t == *target);
        ok_or_eio(&format!("symlink {ino}"), r);
    }
    for (ino, name, value) in &e.xattrs {
        let r = vol.getxattr(View::Live, *ino, name).map(|v| v == *value);
        ok_or_eio(&format!("xattr of {ino}"), r);
    }
    for (id, ino, data) in &e.snapshot_files {
        let r = vol
            .read(View::Snapshot(*id), *ino, 0, data.len() as u32)
            .map(|got| got == *data);
        ok_or_eio(&format!("snapshot {id} file {ino}"), r);
    }
    let mut names = 0;
    let r = vol
        .readdir(View::Live, ROOT_INO, 0, &mut |_| {
            names += 1;
            true
        })
        .map(|()| true);
    ok_or_eio("readdir /", r);
    eio
}
