//! Compares what the volume shows with the model: the whole visible tree
//! (readdir walk, lookup, getattr, read, SEEK_DATA/SEEK_HOLE, readlink,
//! xattrs), held-open unlinked files, snapshots, and the space accounting.

use std::collections::{BTreeMap, BTreeSet};

use twinfs_fs::alloc::{self, Bitmap};
use twinfs_fs::btree::{self, Key};
use twinfs_fs::diff::walk_image;
use twinfs_fs::items::{self, RetainedImage};
use twinfs_fs::volume::Volume;
use twinfs_fs::*;

use super::fsmodel::{seek_in, Fs, MInode, Model, BS};
use super::ops::show;

type Check = Result<(), String>;

/// Reads in pieces the volume accepts.
fn read_all(vol: &Volume, view: View, ino: Ino, off: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = off;
    while pos < off + len {
        let n = (off + len - pos).min(1 << 20) as u32;
        let got = vol
            .read(view, ino, pos, n)
            .map_err(|e| format!("read({}, {pos}, {n}) failed: {e}", ino.0))?;
        if got.is_empty() {
            break;
        }
        pos += got.len() as u64;
        out.extend_from_slice(&got);
    }
    Ok(out)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "lengths {} vs {}, first difference at {i}: {:?} vs {:?}",
        a.len(),
        b.len(),
        a.get(i),
        b.get(i)
    )
}

/// Data of a regular file: allocation (by SEEK_DATA/SEEK_HOLE), content of
/// every data run, zeros in holes, and a whole read of small files.
fn check_data(vol: &Volume, view: View, ino: Ino, m: &MInode, path: &str) -> Check {
    let size = m.size;
    let seek = |off: u64, data: bool| -> Result<(), String> {
        let v = vol
            .seek(view, ino, off, data)
            .map_err(|e| format!("{path}: seek({off}, data={data}) failed: {e}"))?;
        let want = seek_in(m, size, off, data);
        if v != want {
            return Err(format!(
                "{path}: seek({off}, {}) = {v:?}, model says {want:?}",
                if data { "SEEK_DATA" } else { "SEEK_HOLE" }
            ));
        }
        Ok(())
    };
    if size <= 512 * 1024 {
        let got = read_all(vol, view, ino, 0, size + 100)?;
        let want = m.bytes(0, size);
        if got != want {
            return Err(format!(
                "{path}: content differs: {}",
                first_diff(&got, &want)
            ));
        }
    }
    // Walk data runs and holes the way the model sees them.
    let mut off = 0;
    let mut runs = 0;
    while off < size {
        seek(off, true)?;
        seek(off, false)?;
        let Some(d) = seek_in(m, size, off, true) else {
            // A hole to the end: spot-check a few bytes.
            let probe = off + (size - off) / 2;
            let got = read_all(vol, view, ino, probe, 16.min(size - probe))?;
            if got.iter().any(|&b| b != 0) {
                return Err(format!("{path}: hole at {probe} reads non-zero"));
            }
            break;
        };
        if d > off {
            let got = read_all(vol, view, ino, d - 1, 1)?;
            if got != [0] {
                return Err(format!("{path}: hole byte {} reads {got:?}", d - 1));
            }
        }
        seek(d, false)?;
        let h = seek_in(m, size, d, false).expect("inside the file");
        let got = read_all(vol, view, ino, d, h - d)?;
        let want = m.bytes(d, h - d);
        if got != want {
            return Err(format!(
                "{path}: data run {d}..{h} differs: {}",
                first_diff(&got, &want)
            ));
        }
        off = h;
        runs += 1;
        if runs > 10_000 {
            return Err(format!("{path}: too many data runs"));
        }
    }
    if !vol
        .read(view, ino, size, 10)
        .map_err(|e| format!("{path}: read at EOF failed: {e}"))?
        .is_empty()
    {
        return Err(format!("{path}: read at EOF returns bytes"));
    }
    Ok(())
}

fn check_inode(vol: &Volume, view: View, fs: &Fs, ino: Ino, path: &str) -> Check {
    let m = &fs.inodes[&ino];
    let got = vol
        .getattr(view, ino)
        .map_err(|e| format!("{path}: getattr({}) failed: {e}", ino.0))?;
    let want = fs.attr(ino);
    if got != want {
        return Err(format!(
            "{path}: attributes differ\n  volume {got:?}\n  model  {want:?}"
        ));
    }
    match m.kind {
        FileKind::Regular => check_data(vol, view, ino, m, path)?,
        FileKind::Symlink => {
            let t = vol
                .readlink(view, ino)
                .map_err(|e| format!("{path}: readlink failed: {e}"))?;
            if t != m.target {
                return Err(format!(
                    "{path}: symlink target {} vs model {}",
                    show(&t),
                    show(&m.target)
                ));
            }
        }
        _ => {}
    }
    let names = vol
        .listxattr(view, ino)
        .map_err(|e| format!("{path}: listxattr failed: {e}"))?;
    let want: Vec<Vec<u8>> = m.xattrs.keys().cloned().collect();
    if names != want {
        return Err(format!(
            "{path}: xattr names {:?} vs model {:?}",
            names.iter().map(|n| show(n)).collect::<Vec<_>>(),
            want.iter().map(|n| show(n)).collect::<Vec<_>>()
        ));
    }
    for (n, v) in &m.xattrs {
        let got = vol
            .getxattr(view, ino, n)
            .map_err(|e| format!("{path}: getxattr({}) failed: {e}", show(n)))?;
        if &got != v {
            return Err(format!(
                "{path}: xattr {} = {} vs model {}",
                show(n),
                show(&got),
                show(v)
            ));
        }
    }
    Ok(())
}

/// Lists a directory in pages of `page` entries, resuming from cookies.
fn list(vol: &Volume, view: View, dir: Ino, page: usize) -> Result<Vec<Listing>, String> {
    let mut out: Vec<Listing> = Vec::new();
    let mut cookie = 0;
    loop {
        let mut got = Vec::new();
        vol.readdir(view, dir, cookie, &mut |l| {
            got.push(l);
            got.len() < page
        })
        .map_err(|e| format!("readdir({}, {cookie}) failed: {e}", dir.0))?;
        let done = got.len() < page;
        for l in got {
            if l.cookie <= cookie {
                return Err(format!(
                    "readdir({}): cookie {} after {cookie}",
                    dir.0, l.cookie
                ));
            }
            cookie = l.cookie;
            out.push(l);
        }
        if done || out.len() > 100_000 {
            return Ok(out);
        }
    }
}

/// The tree below the root, as `view` shows it, equals `fs`.
pub fn check_tree(vol: &Volume, view: View, fs: &Fs) -> Check {
    let mut stack = vec![(ROOT_INO, "/".to_string())];
    let mut seen = BTreeSet::new();
    check_inode(vol, view, fs, ROOT_INO, "/")?;
    seen.insert(ROOT_INO);
    let mut page = 1;
    while let Some((dir, path)) = stack.pop() {
        let d = &fs.inodes[&dir];
        page = page % 5 + 1;
        let listing = list(vol, view, dir, page).map_err(|e| format!("{path}: {e}"))?;
        if listing.len() < 2 || listing[0].name != b"." || listing[1].name != b".." {
            return Err(format!("{path}: listing does not start with . and .."));
        }
        if listing[0].ino != dir || listing[1].ino != d.parent {
            return Err(format!(
                "{path}: . is {} and .. is {}, model says {} and {}",
                listing[0].ino.0, listing[1].ino.0, dir.0, d.parent.0
            ));
        }
        let mut got: BTreeMap<Vec<u8>, (Ino, FileKind)> = BTreeMap::new();
        for l in &listing[2..] {
            if got.insert(l.name.clone(), (l.ino, l.kind)).is_some() {
                return Err(format!("{path}: {} listed twice", show(&l.name)));
            }
        }
        let want: BTreeMap<Vec<u8>, (Ino, FileKind)> = d
            .entries
            .iter()
            .map(|(n, i)| (n.clone(), (*i, fs.inodes[i].kind)))
            .collect();
        if got != want {
            let fmt = |m: &BTreeMap<Vec<u8>, (Ino, FileKind)>| {
                m.iter()
                    .map(|(n, (i, k))| format!("{}={}:{k:?}", show(n), i.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(format!(
                "{path}: entries differ\n  volume {}\n  model  {}",
                fmt(&got),
                fmt(&want)
            ));
        }
        for (dots, ino) in [(&b"."[..], dir), (&b".."[..], d.parent)] {
            let a = vol
                .lookup(view, dir, dots)
                .map_err(|e| format!("{path}: lookup {} failed: {e}", show(dots)))?;
            if a.ino != ino {
                return Err(format!("{path}: lookup {} gives {}", show(dots), a.ino.0));
            }
        }
        for (name, &ino) in &d.entries {
            let child = format!("{path}{}", String::from_utf8_lossy(name));
            let a = vol
                .lookup(view, dir, name)
                .map_err(|e| format!("{child}: lookup failed: {e}"))?;
            let want = fs.attr(ino);
            if a != want {
                return Err(format!(
                    "{child}: lookup attributes differ\n  volume {a:?}\n  model  {want:?}"
                ));
            }
            if seen.insert(ino) {
                check_inode(vol, view, fs, ino, &child)?;
                if fs.inodes[&ino].is_dir() {
                    stack.push((ino, format!("{child}/")));
                }
            }
        }
    }
    Ok(())
}

/// The live view: the tree, held-open unlinked files, the inode count and
/// the snapshot list.
pub fn check_live(vol: &Volume, model: &Model) -> Check {
    check_tree(vol, View::Live, &model.fs)?;
    let reachable: BTreeSet<Ino> = model.fs.reachable().into_iter().collect();
    for ino in model.open.keys() {
        if model.fs.inodes.contains_key(ino) && !reachable.contains(ino) {
            check_inode(
                vol,
                View::Live,
                &model.fs,
                *ino,
                &format!("<unlinked open inode {}>", ino.0),
            )?;
        }
    }
    let files = vol.statfs().files - (1 << 32);
    if files != model.fs.inodes.len() as u64 {
        return Err(format!(
            "statfs counts {files} inodes, model has {}",
            model.fs.inodes.len()
        ));
    }
    let mut got: Vec<(u64, String, Timestamp)> = vol
        .snapshot_list()
        .into_iter()
        .map(|s| (s.id, s.name, s.created))
        .collect();
    got.sort();
    let mut want: Vec<(u64, String, Timestamp)> = model
        .snapshots
        .iter()
        .map(|(n, s)| (s.id, n.clone(), s.created))
        .collect();
    want.sort();
    if got != want {
        return Err(format!("snapshots {got:?}, model has {want:?}"));
    }
    Ok(())
}

/// Every snapshot's view equals the model's state at its creation.
pub fn check_snapshots(vol: &Volume, model: &Model) -> Check {
    for (name, s) in &model.snapshots {
        check_tree(vol, View::Snapshot(s.id), &s.fs)
            .map_err(|e| format!("snapshot {name:?} (id {}): {e}", s.id))?;
    }
    Ok(())
}

/// Space accounting of the committed image: the blocks reachable from it
/// (its trees and every snapshot's) are exactly the blocks its allocation
/// map and its snapshots' maps record; `used_blocks` counts the live map.
pub fn check_space(vol: &Volume) -> Check {
    let sb = vol.committed();
    let cache = vol.cache();
    let mut reachable = BTreeSet::new();
    walk_image(cache, &sb, CpNumber(0), &mut |p, _| {
        reachable.insert(p.addr.0);
        Ok(())
    })
    .map_err(|e| format!("walking CP {}: {e}", sb.cp.0))?;
    let live = alloc::image_blocks(cache, &sb.alloc, sb.total_blocks)
        .map_err(|e| format!("loading the allocation map: {e}"))?;
    if live.count_ones() != sb.used_blocks {
        return Err(format!(
            "CP {}: the map records {} blocks, the superblock says {} are used",
            sb.cp.0,
            live.count_ones(),
            sb.used_blocks
        ));
    }
    let mut recorded = live;
    let hi = Key {
        ino: items::VOLUME_INO,
        kind: items::kind::SNAPSHOT + 1,
        off: 0,
    };
    for item in btree::range(cache, &sb.meta, RetainedImage::snapshot_key(0), hi) {
        let (_, v) = item.map_err(|e| format!("listing snapshots: {e}"))?;
        let img = RetainedImage::decode(&v).map_err(|e| format!("snapshot item: {e}"))?;
        let b = alloc::image_blocks(cache, &img.alloc, sb.total_blocks)
            .map_err(|e| format!("loading a snapshot's map: {e}"))?;
        recorded.or_assign(&b);
    }
    let mut reach_map = Bitmap::new(sb.total_blocks);
    for &b in &reachable {
        reach_map.set(b);
    }
    if reach_map != recorded {
        let leaked = recorded.difference(&reach_map);
        let dangling = reach_map.difference(&recorded);
        return Err(format!(
            "CP {}: {} blocks recorded but unreachable (leaked), e.g. {:?}; {} reachable but not recorded, e.g. {:?}",
            sb.cp.0,
            leaked.len(),
            &leaked[..leaked.len().min(8)],
            dangling.len(),
            &dangling[..dangling.len().min(8)]
        ));
    }
    Ok(())
}

/// Every block the model's files hold, for sizing tests.
pub fn model_data_blocks(fs: &Fs) -> u64 {
    fs.inodes.values().map(|i| i.data.len() as u64).sum::<u64>() * BS
}
