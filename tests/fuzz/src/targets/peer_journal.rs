//! The peer's staging journal and its commit record
//! (`replicate/src/peer/journal.rs`): a journal file written from the
//! input, then `read_committed` and `recover` against an empty mirror image.
//!
//! The input gives up to four staged entries and a commit record that is
//! whole (its check computed as PEER.md says), absent, damaged (a bit
//! flipped anywhere in the file), miscounted or followed by stray bytes, and
//! a superblock in it that is valid or raw bytes. Checked: the record is
//! taken exactly when it is whole; recovery then redoes it (every staged
//! block at its address, the last one staged for an address winning, the
//! superblock in its slot) or refuses it with an error (a superblock that
//! does not decode, an address beyond the largest volume); a journal
//! without a whole record is discarded; recovery never leaves a journal
//! it redid or discarded.

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use twinfs_fs::lineage::GenerationId;
use twinfs_fs::superblock::{LogPosition, Superblock, MAX_VOLUME_BLOCKS};
use twinfs_fs::{CpNumber, BLOCK_SIZE};
use twinfs_replicate::peer::image::MirrorImage;
use twinfs_replicate::peer::journal::{self, Recovery, COMMIT_MAGIC};

use crate::util::scratch_dir;

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let dir = scratch_dir();
    let path = dir.path().join("journal");

    let mut file = Vec::new();
    let mut staged: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let n = u.int_in_range(0..=4u64).unwrap_or(0);
    for _ in 0..n {
        let addr = match u.int_in_range(0u8..=7).unwrap_or(0) {
            0 => u.arbitrary().unwrap_or(0),
            1 => MAX_VOLUME_BLOCKS - 1,
            _ => u.int_in_range(0..=64).unwrap_or(2),
        };
        let mut block = vec![u.arbitrary::<u8>().unwrap_or(0); BLOCK_SIZE];
        block[0] = u.arbitrary().unwrap_or(0);
        file.extend_from_slice(&addr.to_le_bytes());
        file.extend_from_slice(&block);
        staged.insert(addr, block);
    }
    let cp = u.int_in_range(0..=1000u64).unwrap_or(0);
    let (sb_bytes, sb) = superblock(&mut u, cp);
    let damage = u.int_in_range(0u8..=7).unwrap_or(0);
    let counted = if damage == 1 { n + 1 } else { n };
    let mut whole = true;
    if damage != 2 {
        let mut rec = Vec::new();
        rec.extend_from_slice(&COMMIT_MAGIC);
        rec.extend_from_slice(&cp.to_le_bytes());
        rec.extend_from_slice(&counted.to_le_bytes());
        rec.extend_from_slice(&sb_bytes);
        let mut h = blake3::Hasher::new();
        h.update(&file);
        h.update(&rec);
        rec.extend_from_slice(h.finalize().as_bytes());
        file.extend_from_slice(&rec);
    }
    match damage {
        1 | 2 => whole = false,
        3 => {
            let at = u.choose_index(file.len()).unwrap_or(0);
            file[at] ^= 1 << u.int_in_range(0..=7).unwrap_or(0);
            whole = false;
        }
        4 => {
            file.push(0);
            whole = false;
        }
        _ => {}
    }
    std::fs::write(&path, &file).expect("journal written");

    let committed = journal::read_committed(&path).expect("reading a journal on tmpfs");
    assert_eq!(
        committed.is_some(),
        whole,
        "read_committed misjudged the record"
    );
    if let Some(c) = &committed {
        assert_eq!((c.cp, c.entries), (CpNumber(cp), n));
        assert_eq!(&c.superblock[..], &sb_bytes[..]);
    }

    let mut image = MirrorImage::open(&dir.path().join("mirror.img")).expect("image");
    let recovered = journal::recover(&path, &mut image);
    let reachable = staged.keys().all(|&a| a < MAX_VOLUME_BLOCKS);
    match recovered {
        Ok(Recovery::Discarded) => assert!(!whole, "a whole journal was discarded"),
        Ok(Recovery::Redone(done)) => {
            let sb = sb.as_ref().expect("redone with a superblock that decodes");
            assert!(whole && reachable);
            assert_eq!(done, CpNumber(cp), "redone as another CP than its record's");
            let mut got = vec![0u8; BLOCK_SIZE];
            for (&addr, block) in &staged {
                if addr < 2 {
                    continue; // a superblock slot: the superblock goes over it afterwards
                }
                image
                    .read_block(addr, &mut got)
                    .expect("a redone block reads");
                assert_eq!(&got, block, "block {addr} was not redone");
            }
            image.read_block(sb.cp.0 % 2, &mut got).expect("slot");
            assert_eq!(&got[..], &sb_bytes[..], "the superblock is not in its slot");
        }
        Ok(Recovery::None) => panic!("recover found no journal where there is one"),
        Err(_) => {
            assert!(
                whole && (sb.is_none() || !reachable),
                "recovery failed on a journal it should redo"
            );
            return;
        }
    }
    assert!(!path.exists(), "recovery left the journal behind");
}

/// A superblock for the commit record: mostly a valid one for CP `cp` (or a
/// neighbour), sometimes raw bytes. Returns its bytes and, if it decodes,
/// the superblock.
fn superblock(u: &mut Unstructured, cp: u64) -> (Vec<u8>, Option<Superblock>) {
    if u.ratio(1u8, 4).unwrap_or(false) {
        let mut raw = vec![0u8; BLOCK_SIZE];
        let n = u.len().min(64);
        raw[..n].copy_from_slice(u.bytes(n).unwrap_or(&[]));
        let sb = Superblock::decode(raw.as_slice().try_into().expect("a block"), cp % 2).ok();
        return (raw, sb);
    }
    let total_blocks = u.int_in_range(4..=1u64 << 20).unwrap_or(64);
    let log_blocks = u.int_in_range(1..=total_blocks - 3).unwrap_or(1);
    let cp = if u.ratio(1u8, 8).unwrap_or(false) {
        cp + 1
    } else {
        cp
    };
    let sb = Superblock {
        cp: CpNumber(cp),
        inodes: 1,
        log: LogPosition::default(),
        ..Superblock::empty([0x22; 16], total_blocks, log_blocks, GenerationId(7))
    };
    let bytes = sb.encode().to_vec();
    (bytes, Some(sb))
}
