//! `twinfs promote DIR`: the transfers the peer holds beyond its last CP are
//! replayed into the mirror, which then mounts read-write with every change.

mod peer_support;

use std::sync::Arc;

use peer_support::*;
use twinfs_fs::device::FileDevice;
use twinfs_fs::{Ino, Volume, VolumeConfig, BLOCK_SIZE};
use twinfs_replicate::message::Message;
use twinfs_replicate::peer::{promote, Replica};

fn feed(r: &mut Replica, msgs: &[Message]) -> Vec<Message> {
    let mut replies = Vec::new();
    for m in msgs {
        r.handle(m.clone(), &mut replies).expect("handled");
    }
    replies
}

fn open_read_write(path: &std::path::Path) -> Volume {
    let dev = FileDevice::open(path, true).expect("open image read-write");
    Volume::open(
        Arc::new(dev),
        VolumeConfig {
            background: false,
            cp_interval: None,
            ..Default::default()
        },
    )
    .expect("the promoted image mounts read-write")
}

/// A peer bound to the source's volume and resynced to its CP 0 (the
/// directory lives as long as the returned guard).
fn peer_resynced(src: &Source) -> (tempfile::TempDir, Replica) {
    let tmp = tempfile::tempdir().unwrap();
    let mut peer = Replica::open(tmp.path(), None).unwrap();
    peer.accept_uuid(UUID).unwrap();
    feed(&mut peer, &src.resync_from_nothing());
    (tmp, peer)
}

/// A peer that applied the source's CP 1, which holds file "a" with
/// `a_data`; returns "a"'s inode and the CP too.
fn peer_at_cp1(src: &Source, a_data: &[u8]) -> (tempfile::TempDir, Replica, Ino, CapCp) {
    let (tmp, mut peer) = peer_resynced(src);
    let a = src.create("a");
    src.write(a, 0, a_data);
    let cp1 = src.checkpoint();
    let mut msgs = transfer_messages(&src.batches_from(1));
    msgs.extend(cp_messages(&cp1, Enc::Best));
    feed(&mut peer, &msgs);
    (tmp, peer, a, cp1)
}

#[test]
fn promote_replays_held_transfers_to_where_the_source_would_have_been() {
    init_log();
    let src = Source::new(8192);
    let (tmp, mut peer, a, cp1) = peer_at_cp1(&src, &pattern(4 * BLOCK_SIZE, 1));
    assert_eq!(peer.applied().unwrap().cp, 1);

    // Changes after CP 1 reach the peer only as transfers.
    let b = src.create("b");
    src.write(b, 0, &pattern(3 * BLOCK_SIZE + 5, 2));
    src.write(a, 100, b"patched");
    src.vol.fsync().unwrap();
    let later = src.batches_from(cp1.covers + 1);
    assert!(!later.is_empty());
    feed(&mut peer, &transfer_messages(&later));
    drop(peer);

    let p = promote(tmp.path()).expect("promote");
    assert_eq!(p.replayed, later.len() as u64);
    assert_eq!(p.stopped, None);
    assert_eq!(p.applied_cp, 1);
    assert_eq!(p.image, tmp.path().join("mirror.img"));

    // The source's next CP is made from the same image and the same log:
    // the promoted volume must be that very image (DESIGN invariant 4).
    src.checkpoint();
    let vol = open_read_write(&p.image);
    assert_eq!(vol.committed().root_hash(), src.committed().root_hash());
    let mut a_data = pattern(4 * BLOCK_SIZE, 1);
    a_data[100..107].copy_from_slice(b"patched");
    assert_eq!(read_file(&vol, "a"), a_data);
    assert_eq!(read_file(&vol, "b"), pattern(3 * BLOCK_SIZE + 5, 2));

    // It is a volume like any other now.
    let c = vol
        .create(
            twinfs_fs::ROOT_INO,
            b"c",
            twinfs_fs::FileKind::Regular,
            0o644,
            0,
            0,
            0,
        )
        .unwrap()
        .ino;
    vol.write(c, 0, b"written after promote", false).unwrap();
    vol.close().unwrap();
    drop(vol);
    let vol = open_read_write(&p.image);
    assert_eq!(read_file(&vol, "c"), b"written after promote");
    vol.close().unwrap();
    drop(vol);

    assert!(
        Replica::open(tmp.path(), None).is_err(),
        "a promoted directory is no peer any more"
    );
    let again = promote(tmp.path()).unwrap();
    assert!(again.already);
}

#[test]
fn transfers_past_the_sources_log_end_are_dropped_and_never_replayed() {
    init_log();
    let src = Source::new(8192);
    let (tmp, mut peer, _, cp1) = peer_at_cp1(&src, &pattern(2 * BLOCK_SIZE, 1));

    // Transfers a crashed source lost (it sends them while its disk writes them).
    let b = src.create("b");
    src.write(b, 0, &pattern(BLOCK_SIZE, 2));
    src.vol.fsync().unwrap();
    let lost = src.batches_from(cp1.covers + 1);
    assert!(!lost.is_empty());
    feed(&mut peer, &transfer_messages(&lost));
    let held = peer.resume_point().durable_transfer;
    assert!(held > cp1.covers);

    // A log end beyond what the peer holds changes nothing; the source's
    // real log end drops the rest, durably.
    assert!(feed(&mut peer, &[Message::LogEnd { transfer: held + 5 }]).is_empty());
    assert_eq!(peer.resume_point().durable_transfer, held);
    assert!(feed(
        &mut peer,
        &[Message::LogEnd {
            transfer: cp1.covers
        }]
    )
    .is_empty());
    assert_eq!(peer.resume_point().durable_transfer, cp1.covers);
    assert!(peer.log_store().highest() <= cp1.covers);
    drop(peer);
    let reopened = Replica::open(tmp.path(), None).unwrap();
    assert_eq!(reopened.resume_point().durable_transfer, cp1.covers);
    drop(reopened);

    let p = promote(tmp.path()).expect("promote");
    assert_eq!(p.replayed, 0);
    assert_eq!(p.applied_cp, 1);
    let vol = open_read_write(&p.image);
    assert_eq!(read_file(&vol, "a"), pattern(2 * BLOCK_SIZE, 1));
    assert!(vol
        .lookup(twinfs_fs::View::Live, twinfs_fs::ROOT_INO, b"b")
        .is_err());
    vol.close().unwrap();
}

#[test]
fn promote_replays_more_transfers_than_the_log_region_holds_in_rounds() {
    init_log();
    let src = Source::new(16384);
    let (tmp, mut peer) = peer_resynced(&src);
    let log_blocks = src.committed().log_blocks;

    // Twice the log region's worth of data: the source takes CPs of its own
    // meanwhile, which the peer never gets.
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}"),
                pattern(log_blocks as usize * BLOCK_SIZE / 3, 10 + i),
            )
        })
        .collect();
    for (name, data) in &files {
        let ino = src.create(name);
        for (k, chunk) in data.chunks(256 * 1024).enumerate() {
            src.write(ino, (k * 256 * 1024) as u64, chunk);
        }
    }
    src.vol.fsync().unwrap();
    let batches = src.batches_from(1);
    let held: u64 = batches.iter().map(|b| b.size_blocks()).sum();
    assert!(
        held > log_blocks,
        "{held} blocks of transfers, a {log_blocks}-block region"
    );
    assert!(
        src.cap.lock().unwrap().cps.len() > 1,
        "the source took CPs meanwhile"
    );
    feed(&mut peer, &transfer_messages(&batches));
    drop(peer);

    let p = promote(tmp.path()).expect("promote");
    assert_eq!(p.replayed, batches.len() as u64);
    assert_eq!(p.stopped, None);
    assert!(p.final_cp >= 2, "more than one round: CP {}", p.final_cp);
    let vol = open_read_write(&p.image);
    for (name, data) in &files {
        assert!(read_file(&vol, name) == *data, "{name} has every byte");
    }
    vol.close().unwrap();
}

#[test]
fn promote_stops_at_a_gap_and_says_so() {
    init_log();
    let src = Source::new(4096);
    let (tmp, mut peer) = peer_resynced(&src);
    let a = src.create("a");
    src.vol.fsync().unwrap();
    src.write(a, 0, b"second");
    src.vol.fsync().unwrap();
    src.write(a, 0, b"third!");
    src.vol.fsync().unwrap();
    let batches = src.batches_from(1);
    assert_eq!(batches.len(), 3);
    // Transfer 2 never arrived.
    feed(
        &mut peer,
        &transfer_messages(&[batches[0].clone(), batches[2].clone()]),
    );
    drop(peer);

    let p = promote(tmp.path()).unwrap();
    assert_eq!(p.replayed, 1);
    assert!(
        p.stopped
            .as_deref()
            .is_some_and(|s| s.contains("transfer 2")),
        "{:?}",
        p.stopped
    );
    let vol = open_read_write(&p.image);
    assert_eq!(
        read_file(&vol, "a"),
        b"",
        "the create replayed, the writes after the gap did not"
    );
    vol.close().unwrap();
}

#[test]
fn promote_refuses_a_directory_without_a_cp() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    assert!(promote(tmp.path())
        .unwrap_err()
        .to_string()
        .contains("mirror.img"));
    let peer = Replica::open(tmp.path(), None).unwrap();
    drop(peer);
    let err = promote(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("has not applied any CP"), "{err}");
}
