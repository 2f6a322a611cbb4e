//! A full volume through a real mount of the binary: files are written into
//! a 64 MiB volume until a write (or the fsync after it) fails with ENOSPC
//! — that errno, not EIO; every file written before is intact, so is the
//! acknowledged part of the one that hit the limit; a CP still commits;
//! deletes work on the full volume and give the space back (statfs); new
//! files fit again; fsck is clean after unmount and a remount shows the same.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

const FILE_BYTES: usize = (1 << 20) + 1000;
const CHUNK: usize = 256 << 10;

/// Writes `data` to a new file `path` in CHUNK pieces and fsyncs it.
/// Returns how many bytes write(2) acknowledged and the error, if any.
fn write_file(path: &Path, data: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let mut acked = 0;
    for piece in data.chunks(CHUNK) {
        match f.write(piece) {
            Ok(n) if n == piece.len() => acked += n,
            Ok(n) => {
                acked += n;
                // A short write: the next one says why.
                if let Err(e) = f.write_all(&piece[n..]) {
                    return (acked, Some(e));
                }
                acked += piece.len() - n;
            }
            Err(e) => return (acked, Some(e)),
        }
    }
    match f.sync_all() {
        Ok(()) => (acked, None),
        Err(e) => (acked, Some(e)),
    }
}

/// Creates empty files, directories and xattrs under `dir` until the
/// volume says ENOSPC (or 3000 of each); any other error fails the test.
/// Returns what was made, for the log.
fn metadata_storm(dir: &Path) -> String {
    let enospc = |what: &str, e: std::io::Error| {
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "{what} on a full volume: want success or ENOSPC, got {e:?}"
        );
    };
    if let Err(e) = std::fs::create_dir(dir) {
        enospc("mkdir", e);
        return "mkdir refused with ENOSPC".into();
    }
    let (mut files, mut dirs, mut xattrs) = (0, 0, 0);
    for i in 0..3000 {
        let p = dir.join(format!("empty-{i:04}"));
        match std::fs::File::create(&p) {
            Ok(_) => files += 1,
            Err(e) => {
                enospc("create", e);
                break;
            }
        }
        match std::fs::create_dir(dir.join(format!("d-{i:04}"))) {
            Ok(()) => dirs += 1,
            Err(e) => {
                enospc("mkdir", e);
                break;
            }
        }
        match common::tree::try_set_xattr(&p, "user.k", &pattern(i, 200)) {
            Ok(()) => xattrs += 1,
            Err(e) => {
                enospc("setxattr", e);
                break;
            }
        }
    }
    format!("{files} empty files, {dirs} directories, {xattrs} xattrs")
}

fn verify(mp: &Path, files: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, bytes) in files {
        let got =
            std::fs::read(mp.join(name)).unwrap_or_else(|e| panic!("{when}: read {name}: {e}"));
        assert_bytes(&format!("{name}, {when}"), &got, bytes);
    }
}

#[test]
fn a_full_volume_says_enospc_keeps_every_byte_and_recovers_after_deletes() {
    let dir = scratch("enospc");
    let image = dir.path().join("small.img");
    mkfs(&image, "64M");
    let mp = dir.path().join("mnt");
    let mount = Mount::new(&image, &mp, &[]);
    let (bsize, _, avail_empty) = statfs(&mount.mp);
    eprintln!(
        "empty 64 MiB volume: {} bytes available",
        avail_empty * bsize
    );

    // Fill it.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut failure = None;
    for i in 0..200u64 {
        let name = format!("f{i:03}");
        let data = pattern(i, FILE_BYTES);
        let (acked, err) = write_file(&mount.path(&name), &data);
        match err {
            None => {
                files.insert(name, data);
            }
            Some(e) => {
                failure = Some((name, data, acked, e));
                break;
            }
        }
    }
    let (name, data, acked, err) = failure.expect("200 MiB fitted into a 64 MiB volume");
    eprintln!(
        "{} whole files written ({} bytes), then {name}: {acked} bytes acknowledged, then {err}",
        files.len(),
        files.len() * FILE_BYTES
    );
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "the error on a full volume must be ENOSPC, got {err:?}"
    );
    assert!(
        files.len() * FILE_BYTES >= 32 << 20,
        "only {} bytes fitted in a 64 MiB volume",
        files.len() * FILE_BYTES
    );
    // The acknowledged part of the file that hit the limit is there.
    let partial = std::fs::read(mount.path(&name)).expect("read the partial file");
    assert!(
        partial.len() >= acked,
        "{name}: {} bytes, but {acked} were acknowledged",
        partial.len()
    );
    assert_bytes(
        &format!("{name} up to the acknowledged {acked} bytes"),
        &partial[..acked],
        &data[..acked],
    );
    assert_bytes(
        &format!("{name} beyond the acknowledged bytes"),
        &partial,
        &data[..partial.len()],
    );
    verify(&mount.mp, &files, "when full");
    // Still full for a new file; the mount answers; a CP commits.
    let (_, again) = write_file(&mount.path("one-more"), &pattern(999, FILE_BYTES));
    let again = again.expect("a 1 MiB file fitted into a full volume");
    assert_eq!(
        again.raw_os_error(),
        Some(libc::ENOSPC),
        "second write on a full volume: {again:?}"
    );
    // Metadata on a full volume: creates, mkdirs and xattrs either work or
    // say ENOSPC (never EIO), and the CP that follows still commits.
    let meta = metadata_storm(&mount.path("meta"));
    eprintln!("on the full volume: {meta}");
    let cp_full = mount.checkpoint();
    assert!(mount.status()["cp"].as_u64() == Some(cp_full));

    // Deletes work on the full volume and give the space back.
    let (_, _, avail_full) = statfs(&mount.mp);
    std::fs::remove_file(mount.path(&name)).expect("unlink the partial file on a full volume");
    let _ = std::fs::remove_file(mount.path("one-more"));
    std::fs::remove_dir_all(mount.path("meta")).expect("rm -r of the metadata on a full volume");
    let victims: Vec<String> = files.keys().step_by(2).cloned().collect();
    for v in &victims {
        std::fs::remove_file(mount.path(v))
            .unwrap_or_else(|e| panic!("unlink {v} on a full volume: {e}"));
        files.remove(v);
    }
    let freed = (victims.len() * FILE_BYTES) as u64;
    let mut avail_after = 0;
    let returned = wait_for(Duration::from_secs(30), || {
        mount.checkpoint();
        avail_after = statfs(&mount.mp).2;
        (avail_after - avail_full.min(avail_after)) * bsize >= freed * 9 / 10
    });
    assert!(
        returned,
        "deleting {freed} bytes gave back only {} bytes (available {} before, {} after, CP {cp_full} then {})",
        (avail_after.saturating_sub(avail_full)) * bsize,
        avail_full * bsize,
        avail_after * bsize,
        mount.status()["cp"]
    );
    verify(&mount.mp, &files, "after the deletes");
    // New files fit in the space the deletes returned.
    for i in 0..(victims.len() as u64 / 2) {
        let name = format!("g{i:03}");
        let data = pattern(500 + i, FILE_BYTES);
        let (_, err) = write_file(&mount.path(&name), &data);
        assert!(
            err.is_none(),
            "writing {name} after deletes freed {freed} bytes: {err:?}"
        );
        files.insert(name, data);
    }
    verify(&mount.mp, &files, "after writing again");
    mount.unmount();
    assert_fsck_clean(&image, "after filling, deleting and refilling");
    let mount = Mount::new(&image, &mp, &[]);
    verify(&mount.mp, &files, "after remount");
    let names: Vec<String> = std::fs::read_dir(&mount.mp)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(names.len(), files.len(), "files in the mount: {names:?}");
    mount.unmount();
}
