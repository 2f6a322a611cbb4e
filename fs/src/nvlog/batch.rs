//! Log batches: the unit of the NVLOG on disk and of a transfer on the wire.
//!
//! ```text
//! block 0 ..: header (BATCH_HEADER_SIZE bytes) | records ... | zero padding to a block
//! then:       whole data blocks, numbered 0.. (the "block number" of a reference)
//! ```
//! The checksum is blake3 over the header (checksum field zeroed) and the
//! records, followed by the 128-bit hash of each data block (see `checksum`);
//! each header also names the previous batch's checksum, so a replay that
//! follows the chain cannot pick up a stale batch left by an earlier run.

use std::sync::Arc;

use super::record::{Record, RecordPos, WriteSpan, WRITE_FIXED};
use crate::error::{FsError, Result};
use crate::types::*;

pub const BATCH_MAGIC: &[u8; 8] = b"TWNVLOG1";

const OFF_MAGIC: usize = 0;
const OFF_UUID: usize = OFF_MAGIC + 8;
const OFF_ID: usize = OFF_UUID + 16;
const OFF_PREV: usize = OFF_ID + 8;
const OFF_RECORDS_LEN: usize = OFF_PREV + 32;
const OFF_NRECORDS: usize = OFF_RECORDS_LEN + 4;
const OFF_NBLOCKS: usize = OFF_NRECORDS + 4;
const OFF_HEADER_BLOCKS: usize = OFF_NBLOCKS + 4;
const OFF_CHECKSUM: usize = OFF_HEADER_BLOCKS + 4;
/// Bytes of the fixed batch header; records follow.
pub const BATCH_HEADER_SIZE: usize = OFF_CHECKSUM + 32;

/// A batch is sealed once it holds this much.
pub const BATCH_TARGET_BYTES: usize = 1 << 20;
/// Largest batch, in blocks (records + data). Bounds replay reads and frames.
pub const MAX_BATCH_BLOCKS: u64 = 1100;
/// Largest records area; a single record is far smaller.
pub const MAX_RECORDS_BYTES: usize = 2 << 20;

/// The batch being filled.
pub struct OpenBatch {
    pub id: TransferId,
    records: Vec<u8>,
    nrecords: u32,
    blocks: Vec<Arc<Block>>,
    hashes: Vec<Hash128>,
}

impl OpenBatch {
    pub fn new(id: TransferId) -> OpenBatch {
        OpenBatch {
            id,
            records: Vec::new(),
            nrecords: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nrecords == 0
    }

    /// Bytes of data held (records and blocks), to decide when to seal.
    pub fn bytes(&self) -> usize {
        self.records.len() + self.blocks.len() * BLOCK_SIZE
    }

    /// Blocks the batch would take on disk with `extra_records` more record
    /// bytes and `extra_blocks` more data blocks.
    pub fn size_blocks_with(&self, extra_records: usize, extra_blocks: usize) -> u64 {
        let header = (BATCH_HEADER_SIZE + self.records.len() + extra_records).div_ceil(BLOCK_SIZE);
        (header + self.blocks.len() + extra_blocks) as u64
    }

    /// Whether `rec` fits without exceeding the batch limits.
    pub fn fits(&self, rec_len: usize, rec_blocks: usize) -> bool {
        self.records.len() + rec_len <= MAX_RECORDS_BYTES
            && self.size_blocks_with(rec_len, rec_blocks) <= MAX_BATCH_BLOCKS
    }

    /// Where the parts of `rec` will land if it is appended next.
    pub fn position_of(&self, rec: &Record) -> RecordPos {
        let start = (BATCH_HEADER_SIZE + self.records.len()) as u32;
        let (head, _tail_off) = match rec {
            Record::Write(w) => (w.head.len() as u32, 0),
            _ => (0, 0),
        };
        RecordPos {
            transfer: self.id,
            first_block: self.blocks.len() as u32,
            head_off: start + WRITE_FIXED as u32,
            tail_off: start + WRITE_FIXED as u32 + head,
        }
    }

    /// Appends an encoded record (see [`Record::encode`]).
    pub fn append(&mut self, rec: &Record) {
        rec.encode(self.blocks.len() as u32, &mut self.records);
        if let Record::Write(w) = rec {
            self.blocks.extend(w.blocks.iter().cloned());
            self.hashes.extend(w.hashes.iter().copied());
        }
        self.nrecords += 1;
    }

    /// Encodes the batch with its header and checksum.
    pub fn seal(self, uuid: &[u8; 16], prev_hash: [u8; 32]) -> SealedBatch {
        let header_blocks = (BATCH_HEADER_SIZE + self.records.len()).div_ceil(BLOCK_SIZE);
        let total = (header_blocks + self.blocks.len()) * BLOCK_SIZE;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(BATCH_MAGIC);
        bytes.extend_from_slice(uuid);
        bytes.extend_from_slice(&self.id.0.to_le_bytes());
        bytes.extend_from_slice(&prev_hash);
        bytes.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.nrecords.to_le_bytes());
        bytes.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(header_blocks as u32).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 32]);
        debug_assert_eq!(bytes.len(), BATCH_HEADER_SIZE);
        bytes.extend_from_slice(&self.records);
        bytes.resize(header_blocks * BLOCK_SIZE, 0);
        let data_start = bytes.len();
        for b in &self.blocks {
            bytes.extend_from_slice(&b[..]);
        }
        let hash = checksum(&bytes[..data_start], &self.hashes);
        bytes[OFF_CHECKSUM..OFF_CHECKSUM + 32].copy_from_slice(&hash);
        SealedBatch {
            id: self.id,
            hash,
            records: self.nrecords,
            bytes: Arc::new(bytes),
        }
    }
}

/// The batch checksum: blake3 over the header (checksum field zeroed) and
/// records area, then the `Hash128` of each data block in order. Hashing the
/// blocks' hashes rather than their bytes lets a CP reuse the per-block
/// hashes, so each logged byte is hashed once.
/// `head` is the header blocks; its checksum field counts as zeros whatever
/// it holds, so a batch is checked without a copy.
fn checksum(head: &[u8], block_hashes: &[Hash128]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&head[..OFF_CHECKSUM]);
    h.update(&[0; 32]);
    h.update(&head[OFF_CHECKSUM + 32..]);
    for bh in block_hashes {
        h.update(&bh.0);
    }
    *h.finalize().as_bytes()
}

/// A finished batch: its bytes are exactly what goes to disk and to the peer.
#[derive(Clone, Debug)]
pub struct SealedBatch {
    pub id: TransferId,
    pub hash: [u8; 32],
    pub records: u32,
    pub bytes: Arc<Vec<u8>>,
}

impl SealedBatch {
    pub fn size_blocks(&self) -> u64 {
        (self.bytes.len() / BLOCK_SIZE) as u64
    }
}

/// The fixed header of a batch, enough to know how much to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub uuid: [u8; 16],
    pub id: TransferId,
    pub prev_hash: [u8; 32],
    pub records_len: u32,
    pub nrecords: u32,
    pub nblocks: u32,
    pub header_blocks: u32,
    pub checksum: [u8; 32],
}

impl BatchHeader {
    pub fn size_blocks(&self) -> u64 {
        u64::from(self.header_blocks) + u64::from(self.nblocks)
    }
}

fn bad(what: String) -> FsError {
    FsError::CorruptVolume(format!("log batch: {what}"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Parses and bounds-checks a batch header from the first block of a batch.
pub fn parse_header(first: &[u8]) -> Result<BatchHeader> {
    if first.len() < BATCH_HEADER_SIZE || &first[OFF_MAGIC..OFF_MAGIC + 8] != BATCH_MAGIC {
        return Err(bad("no batch magic".into()));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&first[OFF_UUID..OFF_UUID + 16]);
    let mut prev_hash = [0u8; 32];
    prev_hash.copy_from_slice(&first[OFF_PREV..OFF_PREV + 32]);
    let mut checksum = [0u8; 32];
    checksum.copy_from_slice(&first[OFF_CHECKSUM..OFF_CHECKSUM + 32]);
    let h = BatchHeader {
        uuid,
        id: TransferId(u64::from_le_bytes(
            first[OFF_ID..OFF_ID + 8].try_into().expect("8 bytes"),
        )),
        prev_hash,
        records_len: u32_at(first, OFF_RECORDS_LEN),
        nrecords: u32_at(first, OFF_NRECORDS),
        nblocks: u32_at(first, OFF_NBLOCKS),
        header_blocks: u32_at(first, OFF_HEADER_BLOCKS),
        checksum,
    };
    let need = (BATCH_HEADER_SIZE + h.records_len as usize).div_ceil(BLOCK_SIZE);
    if h.records_len as usize > MAX_RECORDS_BYTES || h.header_blocks as usize != need {
        return Err(bad(format!(
            "records length {} out of range",
            h.records_len
        )));
    }
    if h.size_blocks() > MAX_BATCH_BLOCKS {
        return Err(bad(format!(
            "{} blocks exceeds the limit {MAX_BATCH_BLOCKS}",
            h.size_blocks()
        )));
    }
    Ok(h)
}

/// A decoded, verified batch.
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub records: Vec<(Record, RecordPos)>,
}

/// Checks that `bytes` are one whole batch as it was sealed (its size and
/// checksum, so every data block too) and returns its header, without
/// decoding the records: what the peer needs to store a transfer. A batch
/// that passes holds the very bytes the source logged and replays itself.
pub fn verify(bytes: &[u8]) -> Result<BatchHeader> {
    verified(bytes).map(|(header, _)| header)
}

/// [`verify`], also returning the data blocks' hashes.
fn verified(bytes: &[u8]) -> Result<(BatchHeader, Vec<Hash128>)> {
    let header = parse_header(bytes)?;
    if bytes.len() as u64 != header.size_blocks() * BLOCK_SIZE_U64 {
        return Err(bad(format!(
            "batch {} holds {} bytes, its header says {} blocks",
            header.id.0,
            bytes.len(),
            header.size_blocks()
        )));
    }
    let data_start = header.header_blocks as usize * BLOCK_SIZE;
    let hashes = crate::blockhash::hash_blocks(&bytes[data_start..]);
    if checksum(&bytes[..data_start], &hashes) != header.checksum {
        return Err(bad(format!(
            "batch {} fails its checksum (torn or corrupt)",
            header.id.0
        )));
    }
    Ok((header, hashes))
}

/// Verifies a whole batch (checksum, then every record) and decodes it.
pub fn decode(bytes: &[u8]) -> Result<DecodedBatch> {
    let (header, hashes) = verified(bytes)?;
    let data_start = header.header_blocks as usize * BLOCK_SIZE;
    let blocks: Vec<Arc<Block>> = bytes[data_start..]
        .chunks(BLOCK_SIZE)
        .map(|c| Arc::new(<Block>::try_from(c).expect("whole block")))
        .collect();
    let records_end = BATCH_HEADER_SIZE + header.records_len as usize;
    let area = &bytes[..records_end];
    let mut pos = BATCH_HEADER_SIZE;
    let mut records = Vec::with_capacity(header.nrecords as usize);
    for _ in 0..header.nrecords {
        let (rec, span): (Record, WriteSpan) = Record::decode(area, &mut pos, &blocks, &hashes)?;
        records.push((
            rec,
            RecordPos {
                transfer: header.id,
                first_block: span.first_block,
                head_off: span.head_off,
                tail_off: span.tail_off,
            },
        ));
    }
    if pos != records_end {
        return Err(bad(format!(
            "batch {} has bytes after its last record",
            header.id.0
        )));
    }
    Ok(DecodedBatch { header, records })
}

#[cfg(test)]
mod tests {
    use super::super::record::*;
    use super::*;

    fn sample_records() -> Vec<Record> {
        let data: Vec<u8> = (0..(2 * BLOCK_SIZE + 300)).map(|i| (i * 7) as u8).collect();
        vec![
            Record::Create(Create {
                parent: Ino(1),
                name: b"f".to_vec(),
                ino: Ino(2),
                kind: FileKind::Regular,
                perm: 0o644,
                uid: 1,
                gid: 2,
                rdev: 0,
                time: Timestamp::new(10, 20),
                target: vec![],
            }),
            Record::Write(Write::split(
                Ino(2),
                4000,
                &data,
                Timestamp::new(11, 0),
                true,
            )),
            Record::SetAttr(SetAttr {
                ino: Ino(2),
                size: Some(5),
                mtime: Some(Timestamp::new(-1, 3)),
                time: Timestamp::new(12, 0),
                ..Default::default()
            }),
            Record::Rename {
                parent: Ino(1),
                name: b"f".to_vec(),
                new_parent: Ino(1),
                new_name: b"g".to_vec(),
                flags: RENAME_NOREPLACE,
                time: Timestamp::new(13, 0),
            },
            Record::SetXattr {
                ino: Ino(2),
                name: b"user.x".to_vec(),
                value: vec![9; 70],
                flags: XATTR_CREATE,
                time: Timestamp::new(14, 0),
            },
            Record::Reclaim { ino: Ino(2) },
        ]
    }

    fn build(id: u64) -> (SealedBatch, Vec<RecordPos>) {
        let mut b = OpenBatch::new(TransferId(id));
        let mut positions = Vec::new();
        for r in sample_records() {
            positions.push(b.position_of(&r));
            b.append(&r);
        }
        (b.seal(&[5; 16], [6; 32]), positions)
    }

    #[test]
    fn batches_round_trip_with_positions() {
        let (sealed, positions) = build(7);
        let d = decode(&sealed.bytes).unwrap();
        assert_eq!(verify(&sealed.bytes).unwrap(), d.header);
        assert_eq!(d.header.checksum, sealed.hash);
        assert_eq!(d.header.id, TransferId(7));
        assert_eq!(d.header.prev_hash, [6; 32]);
        let recs: Vec<_> = d.records.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(recs, sample_records());
        // The write's position as predicted before appending matches what decoding finds,
        // and the bytes at those offsets are the write's head and tail.
        assert_eq!(d.records[1].1, positions[1]);
        if let Record::Write(w) = &sample_records()[1] {
            let p = positions[1];
            let head = &sealed.bytes[p.head_off as usize..p.head_off as usize + w.head.len()];
            assert_eq!(head, &w.head[..]);
            let tail = &sealed.bytes[p.tail_off as usize..p.tail_off as usize + w.tail.len()];
            assert_eq!(tail, &w.tail[..]);
            let hb = d.header.header_blocks as usize;
            let blk = &sealed.bytes[(hb + p.first_block as usize) * BLOCK_SIZE..][..BLOCK_SIZE];
            assert_eq!(blk, &w.blocks[0][..]);
        }
    }

    #[test]
    fn every_flipped_byte_or_truncation_is_rejected_without_panic() {
        let (sealed, _) = build(1);
        let bytes = sealed.bytes.as_slice();
        for off in (0..bytes.len()).step_by(131) {
            let mut c = bytes.to_vec();
            c[off] ^= 1;
            assert!(decode(&c).is_err(), "flip at {off}");
            assert!(verify(&c).is_err(), "flip at {off}");
        }
        for cut in [
            0,
            10,
            BATCH_HEADER_SIZE,
            BLOCK_SIZE,
            bytes.len() - BLOCK_SIZE,
        ] {
            assert!(decode(&bytes[..cut]).is_err());
            assert!(verify(&bytes[..cut]).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(noise in proptest::collection::vec(proptest::num::u8::ANY, 0..9000)) {
            let _ = decode(&noise);
            let _ = verify(&noise);
            let (sealed, _) = build(3);
            let mut c = sealed.bytes.to_vec();
            let n = noise.len().min(c.len() - BATCH_HEADER_SIZE);
            c[BATCH_HEADER_SIZE..BATCH_HEADER_SIZE + n].copy_from_slice(&noise[..n]);
            let _ = decode(&c);
            let _ = verify(&c);
        }
    }
}
