//! Replay's reading of the log region (`nvlog::scan`): what mount does with
//! the batches written after the last CP. The input gives the region's
//! geometry and the superblock's log position, then batches that chain from
//! it (each a real sealed batch, placed in the circular region the way the
//! volume places them, `LogRegion`), one of which may be damaged or from
//! another volume, or may break the chain. Checked: scan returns exactly the
//! batches up to the first that does not continue the chain, each as it was
//! written, and says why it stopped.

use arbitrary::Unstructured;
use twinfs_fs::device::{BlockDevice, MemDevice};
use twinfs_fs::lineage::GenerationId;
use twinfs_fs::nvlog::{self, LogRegion};
use twinfs_fs::superblock::{LogPosition, Superblock};
use twinfs_fs::{BlockAddr, CpNumber, TransferId, BLOCK_SIZE};

use crate::arb;

const UUID: [u8; 16] = [0x33; 16];

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let log_blocks = u.int_in_range(1..=48u64).unwrap_or(8);
    let replay_offset = u.int_in_range(0..=log_blocks - 1).unwrap_or(0);
    let next_transfer = match u.int_in_range(0u8..=3).unwrap_or(0) {
        0 => u64::MAX - u.int_in_range(0..=2u64).unwrap_or(0),
        1 => u.arbitrary().unwrap_or(1),
        _ => 1,
    };
    let mut anchor = [0u8; 32];
    let _ = u.fill_buffer(&mut anchor);
    let sb = Superblock {
        cp: CpNumber(1),
        log: LogPosition {
            next_transfer: TransferId(next_transfer),
            replay_offset,
            last_batch_hash: anchor,
        },
        ..Superblock::empty(UUID, 2 + log_blocks + 16, log_blocks, GenerationId(7))
    };
    let dev = MemDevice::new(sb.total_blocks);
    let mut region = LogRegion::new(log_blocks, replay_offset);

    // Batches in chain order; `good` counts those scan must accept.
    let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut good = 0usize;
    let mut broken = false;
    let mut prev = anchor;
    let mut id = next_transfer;
    for _ in 0..u.int_in_range(0..=5usize).unwrap_or(0) {
        if u.is_empty() {
            break;
        }
        let fault = u.int_in_range(0u8..=9).unwrap_or(0);
        let uuid = if fault == 7 { [0x44; 16] } else { UUID };
        let batch_id = if fault == 8 { id.wrapping_add(1) } else { id };
        let link = if fault == 9 { [0xEE; 32] } else { prev };
        let Ok((_, bytes)) = arb::batch(&mut u, batch_id, &uuid, link, 2) else {
            break;
        };
        let len = (bytes.len() / BLOCK_SIZE) as u64;
        let Some(pos) = region.place(TransferId(batch_id), len) else {
            break;
        };
        let mut on_disk = bytes.to_vec();
        if fault == 6 {
            let at = u.choose_index(on_disk.len()).unwrap_or(0);
            on_disk[at] ^= 1 << u.int_in_range(0..=7u8).unwrap_or(0);
        }
        dev.write(BlockAddr(sb.log_start + pos), &on_disk)
            .expect("inside the region");
        if fault < 6 && !broken {
            good += 1;
        } else {
            broken = true;
        }
        prev = twinfs_fs::nvlog::batch::parse_header(&bytes)
            .expect("sealed")
            .checksum;
        written.push((pos, on_disk));
        let Some(next) = id.checked_add(1) else {
            break;
        };
        id = next;
    }

    let scan = nvlog::scan(&dev, &sb);
    assert_eq!(
        scan.batches.len(),
        good,
        "replay took {} batches, {good} chain ({})",
        scan.batches.len(),
        scan.stop
    );
    assert!(scan.stop.starts_with("replay ends "), "{}", scan.stop);
    let mut expect_prev = anchor;
    for (i, r) in scan.batches.iter().enumerate() {
        let (pos, bytes) = &written[i];
        assert_eq!(r.pos, *pos);
        assert_eq!(
            &r.sealed.bytes[..],
            &bytes[..],
            "batch {i} read back otherwise"
        );
        let h = &r.decoded.header;
        assert_eq!(
            (h.uuid, h.id, h.prev_hash),
            (
                UUID,
                TransferId(next_transfer.wrapping_add(i as u64)),
                expect_prev
            )
        );
        expect_prev = h.checksum;
    }
}
