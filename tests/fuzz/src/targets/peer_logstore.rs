//! The peer's log store (`replicate/src/peer/logstore.rs`): segment files
//! written from the input, then recovered by `LogStore::open`.
//!
//! The input describes up to three segments of up to four records each: a
//! record is a real sealed batch in either record format (its check
//! computed as PEER.md says), possibly with an ID out of order, or a damaged
//! one (a bit flipped, cut short) or raw bytes. A model says which transfers
//! recovery must keep: the records in order up to the first one that is
//! torn, damaged or out of order. Checked: the index is exactly those,
//! each reads back as the batch stored, the files are cut to them; then appends (including a restarted source's
//! lower IDs), drops and releases keep the index as the model says, and a
//! recovery after them finds what the store said it held.

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Unstructured;
use twinfs_fs::nvlog::batch;
use twinfs_replicate::peer::logstore::{LogStore, RECORD_HEADER_BYTES, RECORD_MAGIC};

use crate::arb;
use crate::util::scratch_dir;

const UUID: [u8; 16] = [0x11; 16];

/// One record as written, and whether recovery may keep it (given its ID
/// follows the last kept one).
struct Written {
    bytes: Vec<u8>,
    id: u64,
    batch: Arc<Vec<u8>>,
    intact: bool,
}

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let dir = scratch_dir();
    let log = dir.path().join("log");
    std::fs::create_dir(&log).expect("log dir");
    std::fs::write(log.join("notes.txt"), b"not a segment").expect("junk file");

    // Segments and the transfers recovery must keep.
    let mut expected: BTreeMap<u64, Arc<Vec<u8>>> = BTreeMap::new();
    let mut ended = false;
    let mut last_id = 0u64;
    let mut seq = 0u64;
    let mut kept_bytes = 0u64;
    for _ in 0..u.int_in_range(1..=3).unwrap_or(1) {
        seq += u.int_in_range(1..=3).unwrap_or(1);
        let mut file = Vec::new();
        for _ in 0..u.int_in_range(0..=4).unwrap_or(0) {
            let Ok(w) = record(&mut u, last_id) else {
                break;
            };
            file.extend_from_slice(&w.bytes);
            if !ended && w.intact && w.id > last_id {
                last_id = w.id;
                kept_bytes += w.bytes.len() as u64;
                expected.insert(w.id, w.batch);
            } else {
                ended = true;
            }
        }
        std::fs::write(log.join(format!("{seq:020}.seg")), &file).expect("segment");
    }

    let store = LogStore::open(&log).expect("recovery succeeds on tmpfs");
    assert_holds(&store, &expected);
    assert_eq!(
        store.bytes_held(),
        kept_bytes,
        "files not cut to the kept records"
    );
    drop(store);
    let mut store = LogStore::open(&log).expect("second recovery");
    assert_holds(&store, &expected);
    assert!(
        log.join("notes.txt").exists(),
        "recovery removed a file that is not a segment"
    );

    // Operations, each checked against the model.
    for _ in 0..u.int_in_range(0..=4).unwrap_or(0) {
        match u.int_in_range(0u8..=2).unwrap_or(0) {
            0 => {
                // The next transfer, or a lower one: a source that restarted.
                let id = if u.ratio(3u8, 4).unwrap_or(true) {
                    store.highest().saturating_add(1)
                } else {
                    u.int_in_range(1..=store.highest().max(1)).unwrap_or(1)
                };
                let Ok((_, bytes)) = arb::batch(&mut u, id, &UUID, [0; 32], 2) else {
                    break;
                };
                store.append(id, &bytes).expect("append");
                store.sync().expect("sync");
                expected.retain(|&t, _| t < id);
                expected.insert(id, bytes);
            }
            1 => {
                let after = u
                    .int_in_range(0..=store.highest().saturating_add(1))
                    .unwrap_or(0);
                store.drop_after(after).expect("drop_after");
                expected.retain(|&t, _| t <= after);
            }
            _ => {
                let through = u
                    .int_in_range(0..=store.highest().saturating_add(1))
                    .unwrap_or(0);
                store.release_through(through).expect("release");
                let kept: Vec<u64> = store.ids().collect();
                assert!(
                    expected
                        .keys()
                        .filter(|&&t| t > through)
                        .all(|t| kept.contains(t)),
                    "release_through({through}) dropped a later transfer"
                );
                expected.retain(|t, _| kept.contains(t));
            }
        }
        assert_holds(&store, &expected);
    }
    drop(store);
    let store = LogStore::open(&log).expect("recovery after the operations");
    assert_holds(&store, &expected);
}

/// One record after transfer `last_id`, as the input says.
fn record(u: &mut Unstructured, last_id: u64) -> arbitrary::Result<Written> {
    let kind = u.int_in_range(0u8..=9)?;
    let id = match u.int_in_range(0u8..=7)? {
        0 => last_id,
        1 => last_id.saturating_sub(1),
        2 => u.arbitrary()?,
        _ => last_id.saturating_add(1),
    };
    let (_, batch) = arb::batch(u, id, &UUID, [0; 32], 2)?;
    let v1 = kind == 6;
    let mut bytes = encode_record(id, &batch, v1);
    let intact = match kind {
        7 => {
            let at = u.choose_index(bytes.len())?;
            bytes[at] ^= 1 << u.int_in_range(0..=7)?;
            false
        }
        8 => {
            // Cut short, but not to nothing (that would be no record at all).
            bytes.truncate(1 + u.choose_index(bytes.len() - 1)?);
            false
        }
        9 => {
            bytes = arb::take(u, 80)?.to_vec();
            if bytes.is_empty() {
                bytes.push(0);
            }
            false
        }
        _ => true,
    };
    Ok(Written {
        bytes,
        id,
        batch,
        intact,
    })
}

/// A record as PEER.md §2 lays it out; `v1` for the first format.
fn encode_record(id: u64, batch: &[u8], v1: bool) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&(batch.len() as u64).to_le_bytes());
    if v1 {
        h.update(batch);
    } else {
        h.update(&batch::parse_header(batch).expect("a sealed batch").checksum);
    }
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + batch.len());
    out.extend_from_slice(if v1 { b"TWPLOG01" } else { &RECORD_MAGIC });
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(batch.len() as u64).to_le_bytes());
    out.extend_from_slice(h.finalize().as_bytes());
    out.extend_from_slice(batch);
    out
}

/// The store holds exactly `expected`, each transfer's bytes intact.
fn assert_holds(store: &LogStore, expected: &BTreeMap<u64, Arc<Vec<u8>>>) {
    let ids: Vec<u64> = store.ids().collect();
    let want: Vec<u64> = expected.keys().copied().collect();
    assert_eq!(
        ids, want,
        "the log store holds other transfers than the model"
    );
    assert_eq!(store.highest(), want.last().copied().unwrap_or(0));
    for (&id, bytes) in expected {
        assert_eq!(
            store.read_batch(id).as_ref(),
            Ok(&**bytes),
            "transfer {id} reads back otherwise"
        );
        let loc = store.get(id).expect("indexed");
        // The model holds sealed batches: their header is the truth.
        let header = batch::parse_header(bytes).expect("the model's batches are sealed");
        assert_eq!(
            (loc.header_blocks, loc.nblocks),
            (header.header_blocks, header.nblocks)
        );
        let mut block = vec![0u8; twinfs_fs::BLOCK_SIZE];
        assert_eq!(
            store.read_block(id, 0, &mut block).is_ok(),
            header.nblocks > 0
        );
        assert!(store.read_block(id, header.nblocks, &mut block).is_err());
    }
}
