//! A mount whose image moves under it (`MountConfig::changing`, the replica
//! view): what a reader sees while another writer's CPs are reloaded.

mod fuse_common;

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::fuse::{self, MountConfig};
use twinfs_fs::types::{FileKind, ROOT_INO};
use twinfs_fs::volume::{self, VolumeConfig};
use twinfs_fs::{MkfsOptions, Volume};

use fuse_common::BLOCKS;

const FILES: usize = 300;

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect()
}

/// The kernel lists a directory in requests of about 25 entries; a listing
/// whose later requests were read from a newer CP would show names of two
/// CPs at once. Each opened listing must be one CP's, and a new one the
/// newest.
#[test]
fn a_listing_that_spans_a_reload_shows_one_cp() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(BLOCKS));
    volume::mkfs(dev.clone(), &MkfsOptions::default()).expect("mkfs");
    let writer = Volume::open(dev.clone(), VolumeConfig::default()).expect("open writer");
    let dir = writer
        .create(ROOT_INO, b"d", FileKind::Directory, 0o755, 0, 0, 0)
        .expect("mkdir")
        .ino;
    for i in 0..FILES {
        let name = format!("a-{i:03}");
        writer
            .create(dir, name.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0)
            .expect("create");
    }
    writer.checkpoint().expect("CP");

    let reader = Arc::new(
        Volume::open(
            dev.clone(),
            VolumeConfig {
                read_only: true,
                ..Default::default()
            },
        )
        .expect("open reader"),
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let mnt = tmp.path().join("view");
    fs::create_dir(&mnt).expect("mount point");
    let cfg = MountConfig {
        options: vec!["ro".into()],
        changing: true,
        ..Default::default()
    };
    let handle = fuse::mount_with(reader.clone(), &mnt, cfg).expect("mount");

    let old: BTreeSet<String> = (0..FILES).map(|i| format!("a-{i:03}")).collect();
    let new: BTreeSet<String> = (0..FILES).map(|i| format!("b-{i:03}")).collect();
    for round in 0..2 {
        let (from, to) = if round == 0 { ("a", "b") } else { ("b", "a") };
        let (before, after) = if round == 0 {
            (&old, &new)
        } else {
            (&new, &old)
        };
        assert_eq!(
            &names(&mnt.join("d")),
            before,
            "round {round}: the view before"
        );

        // The first request of a listing, then a CP renaming every name.
        let mut listing = fs::read_dir(mnt.join("d")).expect("read_dir");
        let mut seen = BTreeSet::new();
        let first = listing.next().expect("an entry").expect("entry");
        seen.insert(first.file_name().into_string().expect("utf-8"));
        for i in 0..FILES {
            let (n, m) = (format!("{from}-{i:03}"), format!("{to}-{i:03}"));
            writer
                .rename(dir, n.as_bytes(), dir, m.as_bytes(), 0)
                .expect("rename");
        }
        writer.checkpoint().expect("CP");
        reader.reload().expect("reload");
        for e in listing {
            seen.insert(e.expect("entry").file_name().into_string().expect("utf-8"));
        }
        assert_eq!(
            &seen, before,
            "round {round}: a listing begun before the reload"
        );
        assert_eq!(
            &names(&mnt.join("d")),
            after,
            "round {round}: a listing begun after it"
        );
    }

    handle.unmount().expect("unmount");
    handle.wait().expect("FUSE session");
    reader.close().expect("close reader");
    writer.close().expect("close writer");
}
