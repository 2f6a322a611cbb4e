//! The NVLOG: every modifying operation is appended to a batch before it is
//! acknowledged; sealed batches are written to a circular region of the image
//! and replayed on open. See `batch` for the format and `record` for records.

pub mod batch;
pub mod record;

use std::collections::VecDeque;

use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::superblock::Superblock;
use crate::types::*;
use batch::{DecodedBatch, SealedBatch};

/// A batch's place in the log region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub id: TransferId,
    /// Block offset inside the region.
    pub pos: u64,
    pub len: u64,
}

/// Space bookkeeping of the circular log region. Batches are placed
/// contiguously; one that does not fit before the end starts again at 0.
/// A batch's space is released once a committed CP contains it.
#[derive(Debug)]
pub struct LogRegion {
    blocks: u64,
    live: VecDeque<Placed>,
    tail: u64,
}

impl LogRegion {
    pub fn new(blocks: u64, tail: u64) -> LogRegion {
        LogRegion {
            blocks,
            live: VecDeque::new(),
            tail,
        }
    }

    /// Where the next batch goes if it starts right after the last one.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    pub fn capacity(&self) -> u64 {
        self.blocks
    }

    /// Blocks between the oldest live batch and the tail.
    pub fn used(&self) -> u64 {
        match self.live.front() {
            None => 0,
            Some(h) if self.tail > h.pos => self.tail - h.pos,
            Some(h) => self.blocks - h.pos + self.tail,
        }
    }

    /// Where a batch of `len` blocks would go now, if there is room.
    pub fn fit(&self, len: u64) -> Option<u64> {
        let at_end = |t: u64| {
            if t + len <= self.blocks {
                Some(t)
            } else {
                None
            }
        };
        match self.live.front() {
            None => at_end(self.tail).or(at_end(0)),
            Some(h) if self.tail > h.pos => {
                at_end(self.tail).or(if len <= h.pos { Some(0) } else { None })
            }
            Some(h) => (self.tail + len <= h.pos).then_some(self.tail),
        }
    }

    /// Places a batch (the caller checked [`LogRegion::fit`]).
    pub fn place(&mut self, id: TransferId, len: u64) -> Option<u64> {
        let pos = self.fit(len)?;
        self.live.push_back(Placed { id, pos, len });
        self.tail = pos + len;
        Some(pos)
    }

    /// Releases every batch up to and including `id`.
    pub fn release_through(&mut self, id: TransferId) {
        while self.live.front().is_some_and(|p| p.id <= id) {
            self.live.pop_front();
        }
    }

    pub fn live(&self) -> impl Iterator<Item = &Placed> {
        self.live.iter()
    }
}

/// Writes sealed batches placed at `pos` blocks into the region starting at
/// `region_start`. With `durable`, returns once they are on stable storage:
/// batches that lie back to back go out as one gather write.
pub fn write_batches(
    dev: &dyn BlockDevice,
    region_start: u64,
    batches: &[(u64, SealedBatch)],
    durable: bool,
) -> Result<()> {
    let failed = |pos: u64, b: &SealedBatch, e| {
        FsError::io(
            format!("writing log batch {} at log block {pos}", b.id.0),
            e,
        )
    };
    if !durable {
        for (pos, b) in batches {
            dev.write(BlockAddr(region_start + pos), &b.bytes)
                .map_err(|e| failed(*pos, b, e))?;
        }
        return Ok(());
    }
    let mut rest = batches;
    while let Some((pos, first)) = rest.first() {
        let mut end = pos + first.size_blocks();
        let run = 1 + rest[1..]
            .iter()
            .take_while(|(p, b)| {
                let next = *p == end;
                end += b.size_blocks();
                next
            })
            .count();
        let parts: Vec<&[u8]> = rest[..run].iter().map(|(_, b)| &b.bytes[..]).collect();
        dev.write_durable(BlockAddr(region_start + pos), &parts)
            .map_err(|e| failed(*pos, first, e))?;
        rest = &rest[run..];
    }
    Ok(())
}

/// A batch found by replay, with its records decoded.
pub struct Replayed {
    pub pos: u64,
    pub sealed: SealedBatch,
    pub decoded: DecodedBatch,
}

/// What replay found: the batches newer than the CP, in order, and why it stopped.
pub struct ReplayScan {
    pub batches: Vec<Replayed>,
    pub stop: String,
}

fn try_read(dev: &dyn BlockDevice, sb: &Superblock, pos: u64) -> Result<Replayed> {
    if pos >= sb.log_blocks {
        return Err(FsError::CorruptVolume("position outside the log".into()));
    }
    let mut first = vec![0u8; BLOCK_SIZE];
    dev.read(BlockAddr(sb.log_start + pos), &mut first)
        .map_err(|e| FsError::io(format!("reading log block {pos}"), e))?;
    let header = batch::parse_header(&first)?;
    let len = header.size_blocks();
    if pos + len > sb.log_blocks {
        return Err(FsError::CorruptVolume(
            "batch runs past the end of the log".into(),
        ));
    }
    let mut bytes = vec![0u8; (len as usize) * BLOCK_SIZE];
    dev.read(BlockAddr(sb.log_start + pos), &mut bytes)
        .map_err(|e| FsError::io(format!("reading log batch at log block {pos}"), e))?;
    let decoded = batch::decode(&bytes)?;
    let sealed = SealedBatch {
        id: header.id,
        hash: header.checksum,
        records: header.nrecords,
        bytes: std::sync::Arc::new(bytes),
    };
    Ok(Replayed {
        pos,
        sealed,
        decoded,
    })
}

/// Finds the batches written after the CP of `sb`, following the hash chain
/// from the superblock's anchor. Stops cleanly at the first batch that is
/// missing, torn, corrupt, stale (wrong ID or chain) or from another volume.
pub fn scan(dev: &dyn BlockDevice, sb: &Superblock) -> ReplayScan {
    let mut batches = Vec::new();
    let mut expect = sb.log.next_transfer;
    let mut prev = sb.log.last_batch_hash;
    let mut pos = sb.log.replay_offset;
    let stop = loop {
        let accept = |r: &Replayed| {
            let h = &r.decoded.header;
            h.uuid == sb.uuid && h.id == expect && h.prev_hash == prev
        };
        let here = try_read(dev, sb, pos);
        let found = match here {
            Ok(r) if accept(&r) => Some(r),
            _ if pos != 0 => match try_read(dev, sb, 0) {
                Ok(r) if accept(&r) => Some(r),
                _ => None,
            },
            _ => None,
        };
        match found {
            Some(r) => {
                prev = r.sealed.hash;
                pos = (r.pos + r.sealed.size_blocks()) % sb.log_blocks;
                batches.push(r);
                // No transfer follows 2^64 - 1 (only a crafted image gets
                // there; found by the nvlog_scan fuzz target).
                let Some(next) = expect.0.checked_add(1) else {
                    break format!(
                        "replay ends after transfer {}: the last transfer ID",
                        expect.0
                    );
                };
                expect = TransferId(next);
            }
            None => {
                let why = match try_read(dev, sb, pos) {
                    Ok(r) if r.decoded.header.uuid != sb.uuid => {
                        "a batch of another volume".to_string()
                    }
                    Ok(r) => format!("a stale batch (transfer {})", r.decoded.header.id.0),
                    Err(e) => e.to_string(),
                };
                break format!("replay ends before transfer {}: {why}", expect.0);
            }
        }
    };
    ReplayScan { batches, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `nvlog_scan` fuzz target (tests/fuzz/regressions/nvlog_scan/):
    /// a chained batch with the last transfer ID overflowed the next ID
    /// expected (a panic with overflow checks).
    #[test]
    fn replay_stops_after_the_last_transfer_id() {
        use crate::device::MemDevice;
        use crate::superblock::LogPosition;
        let sealed = batch::OpenBatch::new(TransferId(u64::MAX)).seal(&[9; 16], [7; 32]);
        let dev = MemDevice::new(64);
        dev.write(BlockAddr(2 + 3), &sealed.bytes)
            .expect("in the region");
        let sb = Superblock {
            cp: CpNumber(1),
            log: LogPosition {
                next_transfer: TransferId(u64::MAX),
                replay_offset: 3,
                last_batch_hash: [7; 32],
            },
            ..Superblock::empty([9; 16], 64, 20, crate::lineage::GenerationId(1))
        };
        let scan = scan(&dev, &sb);
        assert_eq!(scan.batches.len(), 1);
        assert_eq!(scan.batches[0].decoded.header.id, TransferId(u64::MAX));
        assert!(scan.stop.contains("the last transfer ID"), "{}", scan.stop);
    }

    #[test]
    fn region_places_wraps_and_refuses_when_full() {
        let mut r = LogRegion::new(10, 0);
        assert_eq!(r.place(TransferId(1), 4), Some(0));
        assert_eq!(r.place(TransferId(2), 4), Some(4));
        assert_eq!(
            r.fit(3),
            None,
            "only 2 blocks left at the end, none at the start"
        );
        r.release_through(TransferId(1));
        assert_eq!(r.place(TransferId(3), 3), Some(0), "wraps to the start");
        assert_eq!(r.used(), 10 - 4 + 3);
        assert_eq!(r.fit(2), None, "would overrun batch 2 at 4");
        assert_eq!(r.place(TransferId(4), 1), Some(3));
        r.release_through(TransferId(4));
        assert_eq!(r.used(), 0);
        assert_eq!(r.place(TransferId(5), 6), Some(4));
    }
}
