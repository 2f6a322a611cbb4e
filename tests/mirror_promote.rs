//! RPO 0: in sync mode every fsynced change is at the peer before fsync
//! returns. Kill the source with -9, delete its image, promote the replica:
//! every fsynced file is there, byte for byte, and the image is clean.

mod mirror_common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;

use mirror_common::*;

/// Writes `data` to `path` and fsyncs it.
fn write_synced(path: &std::path::Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().expect("fsync in sync mode");
}

#[test]
fn every_fsynced_file_survives_the_loss_of_the_source_after_promote() {
    let _serial = serial();
    let mut p = Pair::start("1G", false, &["--mode", "sync"]);
    let (src, peer, root, image, dir) = (
        &mut p.src,
        &mut p.peer,
        p.root.clone(),
        p.image.clone(),
        p.dir.clone(),
    );

    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Some files reach the peer in a CP...
    fs::create_dir(src.path("in-cp")).unwrap();
    for i in 0..5 {
        let data = pattern(1000 + i * 5000, i as u64);
        write_synced(&src.path(&format!("in-cp/f{i}")), &data);
        expected.insert(format!("in-cp/f{i}"), data);
    }
    let cp = src.checkpoint();
    // ...the rest only in the log the peer holds.
    fs::create_dir(src.path("in-log")).unwrap();
    let sizes = [0usize, 1, 4096, 4097, 65_536 + 3, 3 << 20];
    for (i, len) in sizes.iter().enumerate() {
        let data = pattern(*len, 100 + i as u64);
        write_synced(&src.path(&format!("in-log/f{i}")), &data);
        expected.insert(format!("in-log/f{i}"), data);
    }
    // An overwrite in the middle of a file that is in the CP, and an append.
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(src.path("in-cp/f2"))
            .unwrap();
        f.seek(SeekFrom::Start(777)).unwrap();
        f.write_all(b"OVERWRITTEN AFTER THE CP").unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(&pattern(9000, 55)).unwrap();
        f.sync_data().unwrap();
        let e = expected.get_mut("in-cp/f2").unwrap();
        e[777..777 + 24].copy_from_slice(b"OVERWRITTEN AFTER THE CP");
        e.extend_from_slice(&pattern(9000, 55));
    }
    // A rename and a removal, made durable with the next fsync.
    fs::rename(src.path("in-cp/f0"), src.path("in-log/renamed")).unwrap();
    let moved = expected.remove("in-cp/f0").unwrap();
    expected.insert("in-log/renamed".into(), moved);
    fs::remove_file(src.path("in-cp/f1")).unwrap();
    expected.remove("in-cp/f1");
    fs::set_permissions(src.path("in-log/f1"), fs::Permissions::from_mode(0o600)).unwrap();
    write_synced(&src.path("in-log/last"), b"the last fsynced file");
    expected.insert("in-log/last".into(), b"the last fsynced file".to_vec());
    let st = src.status();
    assert_eq!(
        st["cp"], cp,
        "no CP since: the changes are only in the log {st:#}"
    );
    assert_eq!(st["peer"]["state"], "streaming", "{st:#}");

    // The source is lost.
    src.kill9();
    fs::remove_file(&image).unwrap();
    assert_eq!(peer.stop(), Some(0), "{}", peer.log_text());
    let ds = dir_status(&dir);
    assert_eq!(ds["applied_cp"], cp, "{ds:#}");
    assert!(ds["log_bytes_held"].as_u64().unwrap() > 3 << 20, "{ds:#}");

    let out = twinfs_ok(&["promote", s(&dir)]);
    println!("twinfs promote: {out}");
    let promoted = std::path::PathBuf::from(out.lines().last().expect("a last line"));
    assert!(
        promoted.is_file(),
        "promote prints the image path last: {out}"
    );
    assert!(out.contains("transfers replayed"), "{out}");
    assert!(!out.contains("replay stopped early"), "{out}");
    assert_eq!(dir_status(&dir)["promoted"], true);
    let fsck = twinfs(&["fsck", s(&promoted)]);
    assert_eq!(
        fsck.code, 0,
        "fsck of the promoted image: {}{}",
        fsck.stdout, fsck.stderr
    );

    let mut back = Source::start(
        &promoted,
        &root.join("promoted"),
        &[],
        &root.join("promoted.log"),
    );
    for (name, data) in &expected {
        let got = fs::read(back.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == *data,
            "{name}: {} bytes, expected {}",
            got.len(),
            data.len()
        );
    }
    assert!(!back.path("in-cp/f0").exists() && !back.path("in-cp/f1").exists());
    let mode = fs::metadata(back.path("in-log/f1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    // It is a read-write volume now.
    fs::write(back.path("after-promote"), b"writable").unwrap();
    assert_eq!(back.unmount(), Some(0), "{}", back.log_text());
    let fsck = twinfs(&["fsck", s(&promoted)]);
    assert_eq!(
        fsck.code, 0,
        "fsck after use: {}{}",
        fsck.stdout, fsck.stderr
    );
}
