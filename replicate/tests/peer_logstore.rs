//! The peer's log store (patent claim 15): transfers appended to segment
//! files, an index transfer ID → location rebuilt on restart, torn tails cut,
//! a repeated ID replacing the stored tail, whole segments released.

mod peer_support;

use std::fs::OpenOptions;

use peer_support::{init_log, make_batch};
use twinfs_fs::nvlog::batch::SealedBatch;
use twinfs_fs::BLOCK_SIZE;
use twinfs_replicate::peer::logstore::{self, LogStore, RECORD_HEADER_BYTES, SEGMENT_TARGET_BYTES};

const UUID: [u8; 16] = [7; 16];

/// Batches 1..=n, chained, batch `i` holding `blocks` blocks filled from `i * 16`.
fn chain(n: u64, blocks: usize) -> Vec<SealedBatch> {
    let mut prev = [0u8; 32];
    (1..=n)
        .map(|id| {
            let b = make_batch(UUID, id, prev, blocks, (id * 16) as u8);
            prev = b.hash;
            b
        })
        .collect()
}

fn store_all(store: &mut LogStore, batches: &[SealedBatch]) {
    for b in batches {
        store.append(b.id.0, &b.bytes).expect("append");
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn stored_transfers_read_back_by_block_number_and_byte_offset() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(tmp.path()).unwrap();
    let batches = chain(3, 2);
    store_all(&mut store, &batches);
    assert_eq!(
        store.sync().unwrap(),
        3,
        "sync reports the highest durable ID"
    );
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3]);

    let mut block = vec![0u8; BLOCK_SIZE];
    store.read_block(2, 1, &mut block).unwrap();
    assert_eq!(
        block,
        vec![33u8; BLOCK_SIZE],
        "block 1 of transfer 2 is filled with 2*16+1"
    );
    let loc = store.get(2).unwrap();
    let whole = &batches[1].bytes;
    assert_eq!(loc.len as usize, whole.len());
    let mut bytes = vec![0u8; 100];
    store.read(2, 40, &mut bytes).unwrap();
    assert_eq!(&bytes[..], &whole[40..140]);
    assert_eq!(store.read_batch(3).unwrap(), batches[2].bytes.to_vec());

    assert!(
        store.read_block(2, 2, &mut block).is_err(),
        "only 2 data blocks"
    );
    assert!(
        store.read(2, loc.len - 10, &mut bytes).is_err(),
        "past the batch end"
    );
    assert!(store.read_block(9, 0, &mut block).is_err(), "not stored");
}

#[test]
fn a_restart_rebuilds_the_index_from_the_segments() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let batches = chain(4, 3);
    let before = {
        let mut store = LogStore::open(tmp.path()).unwrap();
        store_all(&mut store, &batches);
        store.sync().unwrap();
        (1..=4).map(|id| store.get(id).unwrap()).collect::<Vec<_>>()
    };
    let store = LogStore::open(tmp.path()).unwrap();
    let after: Vec<_> = (1..=4).map(|id| store.get(id).unwrap()).collect();
    assert_eq!(before, after, "same locations, same geometry");
    for b in &batches {
        assert_eq!(store.read_batch(b.id.0).unwrap(), b.bytes.to_vec());
    }
    assert_eq!(store.highest(), 4);
    assert_eq!(store.transfers(), 4);
    let on_disk: u64 = segment_files(tmp.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(store.bytes_held(), on_disk);
}

#[test]
fn a_torn_tail_is_truncated_and_appending_continues_after_it() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let batches = chain(3, 1);
    let end_of_2 = {
        let mut store = LogStore::open(tmp.path()).unwrap();
        store_all(&mut store, &batches);
        store.sync().unwrap();
        let l = store.get(2).unwrap();
        l.offset + l.len
    };
    // A kill in the middle of writing transfer 3.
    let seg = segment_files(tmp.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let mut store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        end_of_2,
        "cut exactly after transfer 2"
    );
    store.append(3, &batches[2].bytes).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(store.read_batch(3).unwrap(), batches[2].bytes.to_vec());
}

/// Stores `batches` durably in `dir`, then flips `mask` into byte `offset`
/// of transfer `id`'s batch in its segment file.
fn store_and_damage(
    dir: &std::path::Path,
    batches: &[SealedBatch],
    id: u64,
    offset: u64,
    mask: u8,
) {
    let at = {
        let mut store = LogStore::open(dir).unwrap();
        store_all(&mut store, batches);
        store.sync().unwrap();
        store.get(id).unwrap().offset + offset
    };
    let seg = segment_files(dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at as usize] ^= mask;
    std::fs::write(&seg, &bytes).unwrap();
}

#[test]
fn a_damaged_record_ends_the_log_there() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let batches = chain(3, 1);
    store_and_damage(tmp.path(), &batches, 2, 5000, 0x20);

    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.ids().collect::<Vec<_>>(),
        vec![1],
        "2 fails its check; 3 after it is dropped"
    );
    assert_eq!(store.read_batch(1).unwrap(), batches[0].bytes.to_vec());
}

#[test]
fn a_repeated_id_replaces_it_and_drops_every_later_transfer() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let batches = chain(5, 1);
    let mut store = LogStore::open(tmp.path()).unwrap();
    store_all(&mut store, &batches);
    store.sync().unwrap();
    // The source restarted from transfer 3 and its new transfer 3 differs.
    let new3 = make_batch(UUID, 3, batches[1].hash, 2, 200);
    store.append(3, &new3.bytes).unwrap();
    assert_eq!(store.sync().unwrap(), 3);
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(store.read_batch(3).unwrap(), new3.bytes.to_vec());
    drop(store);
    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(store.read_batch(2).unwrap(), batches[1].bytes.to_vec());
    assert_eq!(store.read_batch(3).unwrap(), new3.bytes.to_vec());
    let mut block = vec![0u8; BLOCK_SIZE];
    store.read_block(3, 1, &mut block).unwrap();
    assert_eq!(block, vec![201u8; BLOCK_SIZE]);

    // Replacing the very first transfer empties the store.
    let mut store = store;
    let new1 = make_batch(UUID, 1, [0; 32], 1, 99);
    store.append(1, &new1.bytes).unwrap();
    store.sync().unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1]);
    assert_eq!(store.read_batch(1).unwrap(), new1.bytes.to_vec());
}

#[test]
fn release_deletes_whole_segments_once_every_transfer_in_them_is_covered() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    // Batches of 1000 blocks (about 4 MiB): a segment fills after 16 of them.
    let per =
        (SEGMENT_TARGET_BYTES as usize).div_ceil(1001 * BLOCK_SIZE + RECORD_HEADER_BYTES) as u64;
    let batches = chain(per + 2, 1000);
    let mut store = LogStore::open(tmp.path()).unwrap();
    store_all(&mut store, &batches);
    store.sync().unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 2);
    let first_seg_last = (1..=per + 2)
        .filter(|&id| store.get(id).unwrap().seg == 1)
        .max()
        .unwrap();
    assert_eq!(first_seg_last, per);

    store.release_through(per - 1).unwrap();
    assert_eq!(
        segment_files(tmp.path()).len(),
        2,
        "transfer {per} is still needed"
    );
    store.release_through(per).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 1);
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![per + 1, per + 2]);
    assert_eq!(
        store.read_batch(per + 2).unwrap(),
        batches.last().unwrap().bytes.to_vec()
    );
    let held = store.bytes_held();
    assert_eq!(
        held,
        std::fs::metadata(&segment_files(tmp.path())[0])
            .unwrap()
            .len()
    );

    store.release_through(per + 2).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 0);
    assert_eq!((store.transfers(), store.bytes_held()), (0, 0));
    // The next transfer starts a new segment.
    let next = make_batch(UUID, per + 3, batches.last().unwrap().hash, 1, 1);
    store.append(per + 3, &next.bytes).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![per + 3]);
}

#[test]
fn a_damaged_byte_in_the_records_area_also_ends_the_log() {
    // The record's check covers the batch's checksum, and a scan verifies
    // the batch against it: header and records are covered like the blocks.
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    store_and_damage(tmp.path(), &chain(3, 1), 2, 200, 0x01);

    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1]);
}

/// A segment as the first record format wrote it: magic `TWPLOG01` and a
/// check over the ID, the length and every byte of the batch.
fn first_format_segment(batches: &[SealedBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in batches {
        let mut h = blake3::Hasher::new();
        h.update(&b.id.0.to_le_bytes());
        h.update(&(b.bytes.len() as u64).to_le_bytes());
        h.update(&b.bytes);
        out.extend_from_slice(b"TWPLOG01");
        out.extend_from_slice(&b.id.0.to_le_bytes());
        out.extend_from_slice(&(b.bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(h.finalize().as_bytes());
        out.extend_from_slice(&b.bytes);
    }
    assert_eq!(
        out.len(),
        batches.len() * RECORD_HEADER_BYTES + batches.iter().map(|b| b.bytes.len()).sum::<usize>()
    );
    out
}

#[test]
fn a_store_of_the_first_record_format_still_opens_and_grows() {
    init_log();
    let tmp = tempfile::tempdir().unwrap();
    let batches = chain(5, 2);
    // Segment 1 holds transfers 1..=3 in the first format.
    drop(LogStore::open(tmp.path()).unwrap());
    let seg = tmp.path().join(format!("{:020}.seg", 1));
    std::fs::write(&seg, first_format_segment(&batches[..3])).unwrap();
    assert_eq!(segment_files(tmp.path()), vec![seg.clone()]);

    let mut store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    for b in &batches[..3] {
        assert_eq!(store.read_batch(b.id.0).unwrap(), b.bytes.to_vec());
    }
    // New records follow in the current format.
    store_all(&mut store, &batches[3..]);
    store.sync().unwrap();
    drop(store);
    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for b in &batches {
        assert_eq!(store.read_batch(b.id.0).unwrap(), b.bytes.to_vec());
    }
    drop(store);
    // `status --dir` counts records of both formats.
    let quick = logstore::quick_count(tmp.path());
    assert_eq!((quick.transfers, quick.highest), (5, 5));

    // A damaged first-format record still ends the log there.
    let mut bytes = std::fs::read(&seg).unwrap();
    let second = RECORD_HEADER_BYTES + batches[0].bytes.len();
    bytes[second + RECORD_HEADER_BYTES + 100] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let store = LogStore::open(tmp.path()).unwrap();
    assert_eq!(store.ids().collect::<Vec<_>>(), vec![1]);
}
