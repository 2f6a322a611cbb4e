//! NVLOG batches (`nvlog::batch`): what replay reads from the log region and
//! what the peer receives in a `Transfer`. The first input byte picks a mode:
//!
//! - raw: the rest is a batch; `decode`, `verify` and `parse_header` must
//!   agree (a batch that decodes verifies with the same header, one that
//!   verifies has a header that parses);
//! - fixed-up: the rest is a header's fields and a records area; the harness
//!   lays out a batch with the right sizes and the checksum FORMAT.md
//!   describes, so the records are decoded rather than the checksum failing;
//! - built: records the volume could log (see [`crate::arb::record`]) are
//!   sealed by `OpenBatch`; decoding gives them back, and flipping any bit
//!   of the sealed batch makes it fail.
//!
//! In every mode a batch that decodes is sealed again from its records and
//! must decode to the same records.

use arbitrary::Unstructured;
use twinfs_fs::nvlog::batch::{self, OpenBatch, BATCH_HEADER_SIZE, BATCH_MAGIC};
use twinfs_fs::{Hash128, TransferId, BLOCK_SIZE};

use crate::arb;

/// Offset of the checksum in a batch header (FORMAT.md, "Batch").
const OFF_CHECKSUM: usize = 80;

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check(rest),
        1 => check(&fixed_up(rest)),
        _ => built(rest),
    }
}

/// The decoders agree on `bytes`, and a batch that decodes reseals to the same records.
fn check(bytes: &[u8]) {
    let header = batch::parse_header(bytes);
    let verified = batch::verify(bytes);
    if let Ok(h) = &verified {
        assert_eq!(
            Some(h),
            header.as_ref().ok(),
            "verify passed, parse_header did not agree"
        );
        assert_eq!(bytes.len() as u64, h.size_blocks() * BLOCK_SIZE as u64);
    }
    let Ok(decoded) = batch::decode(bytes) else {
        return;
    };
    assert_eq!(
        verified.as_ref().ok(),
        Some(&decoded.header),
        "decode passed, verify did not"
    );
    assert_eq!(decoded.records.len(), decoded.header.nrecords as usize);
    let mut open = OpenBatch::new(decoded.header.id);
    for (rec, pos) in &decoded.records {
        assert_eq!(pos.transfer, decoded.header.id);
        open.append(rec);
    }
    let sealed = open.seal(&decoded.header.uuid, decoded.header.prev_hash);
    let again = batch::decode(&sealed.bytes).expect("a resealed batch decodes");
    let records =
        |d: &batch::DecodedBatch| d.records.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    assert_eq!(records(&again), records(&decoded));
}

/// A batch laid out around `input`: header fields (uuid, id, prev_hash,
/// nrecords, nblocks) from its first 61 bytes, the records area from the
/// rest, data blocks of a pattern, and the checksum computed as FORMAT.md
/// says (blake3 of the header blocks with the checksum zeroed, then the
/// blake3-128 of each data block).
fn fixed_up(input: &[u8]) -> Vec<u8> {
    let mut fields = [0u8; 61];
    let n = input.len().min(fields.len());
    fields[..n].copy_from_slice(&input[..n]);
    let records = &input[n..];
    let nrecords = u32::from(fields[56]) | u32::from(fields[57]) << 8;
    let nblocks = u32::from(fields[58] % 8);
    let header_blocks = (BATCH_HEADER_SIZE + records.len()).div_ceil(BLOCK_SIZE);
    let mut bytes = Vec::with_capacity((header_blocks + nblocks as usize) * BLOCK_SIZE);
    bytes.extend_from_slice(BATCH_MAGIC);
    bytes.extend_from_slice(&fields[..56]); // uuid 16, id 8, prev_hash 32
    bytes.extend_from_slice(&(records.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&nrecords.to_le_bytes());
    bytes.extend_from_slice(&nblocks.to_le_bytes());
    bytes.extend_from_slice(&(header_blocks as u32).to_le_bytes());
    bytes.extend_from_slice(&[0; 32]);
    debug_assert_eq!(bytes.len(), BATCH_HEADER_SIZE);
    bytes.extend_from_slice(records);
    bytes.resize(header_blocks * BLOCK_SIZE, 0);
    let data_start = bytes.len();
    for i in 0..nblocks {
        bytes.extend(std::iter::repeat_n(fields[59] ^ i as u8, BLOCK_SIZE));
    }
    let mut h = blake3::Hasher::new();
    h.update(&bytes[..data_start]);
    for block in bytes[data_start..].chunks(BLOCK_SIZE) {
        h.update(&Hash128::of(block).0);
    }
    bytes[OFF_CHECKSUM..OFF_CHECKSUM + 32].copy_from_slice(h.finalize().as_bytes());
    bytes
}

/// Records the volume could log, sealed, decode to themselves; a flipped
/// bit anywhere fails the batch.
fn built(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let Ok(id) = u.arbitrary::<u64>() else {
        return;
    };
    let mut uuid = [0u8; 16];
    let mut prev = [0u8; 32];
    if u.fill_buffer(&mut uuid).is_err() || u.fill_buffer(&mut prev).is_err() {
        return;
    }
    let Ok((records, bytes)) = arb::batch(&mut u, id, &uuid, prev, 6) else {
        return;
    };
    let decoded = batch::decode(&bytes).expect("a sealed batch decodes");
    assert_eq!(decoded.header.id, TransferId(id));
    assert_eq!(
        (decoded.header.uuid, decoded.header.prev_hash),
        (uuid, prev)
    );
    let got: Vec<_> = decoded.records.into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, records);
    if let Ok(at) = u.choose_index(bytes.len()) {
        let bit = u.int_in_range(0..=7u8).unwrap_or(0);
        let mut damaged = bytes.to_vec();
        damaged[at] ^= 1 << bit;
        assert!(
            batch::verify(&damaged).is_err(),
            "a flipped bit at byte {at} went unnoticed"
        );
        check(&damaged);
    }
    check(&bytes);
}
