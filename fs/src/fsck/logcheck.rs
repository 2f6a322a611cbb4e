//! The NVLOG as a mount would see it: which batches replay would apply and
//! why it stops there. Stopping at a torn last batch is normal after a
//! crash (its write never completed, so nothing in it was acknowledged);
//! stopping at a damaged batch that a later batch follows loses changes
//! that may have been acknowledged, and is an error.

use super::report::{Kind, LogSummary, Severity};
use crate::device::BlockDevice;
use crate::error::FsError;
use crate::nvlog::batch::{self, MAX_BATCH_BLOCKS};
use crate::nvlog::{self, LogRegion};
use crate::superblock::Superblock;
use crate::types::*;

/// A log problem: severity, kind, absolute block address, text.
pub(super) type Finding = (Severity, Kind, Option<BlockAddr>, String);

/// Reads `n` log blocks from log offset `pos` (clipped to the log).
fn read_log(dev: &dyn BlockDevice, sb: &Superblock, pos: u64, n: u64) -> Option<Vec<u8>> {
    let n = n.min(sb.log_blocks.checked_sub(pos)?);
    let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
    dev.read(BlockAddr(sb.log_start + pos), &mut buf).ok()?;
    Some(buf)
}

/// A whole valid batch of this volume with transfer `id` at log offset `pos`?
fn valid_batch_at(dev: &dyn BlockDevice, sb: &Superblock, pos: u64, id: TransferId) -> bool {
    let Some(first) = read_log(dev, sb, pos, 1) else {
        return false;
    };
    let Ok(h) = batch::parse_header(&first) else {
        return false;
    };
    if h.uuid != sb.uuid || h.id != id || pos + h.size_blocks() > sb.log_blocks {
        return false;
    }
    read_log(dev, sb, pos, h.size_blocks()).is_some_and(|b| batch::decode(&b).is_ok())
}

/// Where a valid batch `id` starts within `window` log blocks of `from`.
fn find_batch(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    from: u64,
    window: u64,
    id: TransferId,
) -> Option<u64> {
    let area = read_log(dev, sb, from, window)?;
    area.chunks(BLOCK_SIZE).enumerate().find_map(|(i, blk)| {
        let h = batch::parse_header(blk).ok()?;
        let pos = from + i as u64;
        (h.uuid == sb.uuid && h.id == id && valid_batch_at(dev, sb, pos, id)).then_some(pos)
    })
}

/// Checks the log of `sb`'s CP.
pub(super) fn check(dev: &dyn BlockDevice, sb: &Superblock) -> (LogSummary, Vec<Finding>) {
    let scan = nvlog::scan(dev, sb);
    let mut summary = LogSummary {
        next_transfer: sb.log.next_transfer,
        replay_offset: sb.log.replay_offset,
        ..LogSummary::default()
    };
    let mut findings = Vec::new();
    let mut region = LogRegion::new(sb.log_blocks, sb.log.replay_offset);
    let mut next = (sb.log.replay_offset, sb.log.next_transfer);
    for r in &scan.batches {
        if region.place(r.sealed.id, r.sealed.size_blocks()) != Some(r.pos) {
            findings.push((
                Severity::Error,
                Kind::Log,
                Some(BlockAddr(sb.log_start + r.pos)),
                format!(
                    "log batch of transfer {} at log block {} does not follow its predecessor: replay stops before it",
                    r.sealed.id, r.pos
                ),
            ));
            summary.stop = format!(
                "replay stops before transfer {}: misplaced batch",
                r.sealed.id
            );
            return (summary, findings);
        }
        summary.batches += 1;
        summary.records += r.decoded.records.len() as u64;
        summary.blocks += r.sealed.size_blocks();
        next = (
            (r.pos + r.sealed.size_blocks()) % sb.log_blocks,
            TransferId(r.sealed.id.0 + 1),
        );
    }
    let (pos, expect) = next;
    let (reason, damaged) = stop_reason(dev, sb, pos, expect);
    summary.stop = format!("replay stops before transfer {expect}: {reason}");
    let window = MAX_BATCH_BLOCKS + 1;
    let successor = find_batch(dev, sb, pos, window, TransferId(expect.0 + 1))
        .or_else(|| find_batch(dev, sb, 0, window, TransferId(expect.0 + 1)));
    let at = damaged.unwrap_or(pos);
    match (damaged, successor) {
        (_, Some(after)) => findings.push((
            Severity::Error,
            Kind::Log,
            Some(BlockAddr(sb.log_start + at)),
            format!(
                "log batch of transfer {expect} at log block {at} is missing or damaged ({reason}), but transfer {} follows at log block {after}: replay stops at transfer {expect} and loses the changes from there on, which may have been acknowledged as durable",
                expect.0 + 1
            ),
        )),
        (Some(at), None) => findings.push((
            Severity::Note,
            Kind::Log,
            Some(BlockAddr(sb.log_start + at)),
            format!(
                "replay stops at the torn last log batch, transfer {expect} at log block {at} ({reason}): its write never completed, so none of its changes were acknowledged"
            ),
        )),
        (None, None) => {}
    }
    (summary, findings)
}

/// The text of an error without the advice to run fsck.
fn plain(e: &FsError) -> String {
    match e {
        FsError::CorruptVolume(m) => m.clone(),
        FsError::Corrupt { what, .. } => what.clone(),
        e => e.to_string(),
    }
}

/// Why replay stops at log offset `pos` before transfer `expect`, and
/// where batch `expect` lies if it is there but damaged (replay also
/// looks at offset 0, where a batch that did not fit at the end wraps to).
fn stop_reason(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    pos: u64,
    expect: TransferId,
) -> (String, Option<u64>) {
    let header = |p: u64| read_log(dev, sb, p, 1).map(|b| batch::parse_header(&b));
    for p in [pos, 0] {
        let Some(Ok(h)) = header(p) else { continue };
        if h.uuid != sb.uuid || h.id != expect {
            continue;
        }
        let why = if p + h.size_blocks() > sb.log_blocks {
            "it runs past the end of the log".to_string()
        } else {
            match read_log(dev, sb, p, h.size_blocks()).map(|b| batch::decode(&b)) {
                Some(Err(e)) => plain(&e),
                Some(Ok(_)) => "it does not chain to the previous batch".to_string(),
                None => "it cannot be read".to_string(),
            }
        };
        return (
            format!("its batch at log block {p} is damaged: {why}"),
            Some(p),
        );
    }
    let why = match header(pos) {
        None => format!("log block {pos} cannot be read"),
        Some(Err(_)) => format!("log block {pos} holds no batch: the log ends there"),
        Some(Ok(h)) if h.uuid != sb.uuid => {
            format!("log block {pos} holds a batch of another volume")
        }
        Some(Ok(h)) => format!(
            "log block {pos} holds transfer {}, left from before: the log ends there",
            h.id
        ),
    };
    (why, None)
}
