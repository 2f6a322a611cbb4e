//! Session messages built from fuzz input (`arbitrary::Unstructured`), valid
//! or just over a limit, for the structure-aware targets. `Message` lives in
//! twinfs-replicate, which does not depend on `arbitrary`, so the builder is
//! here. Sizes are mostly small, sometimes exactly at a limit or one past it,
//! so both sides of every check in `Message::validate` are reached.

use arbitrary::{Result, Unstructured};
use twinfs_fs::lineage::MAX_GENERATIONS;
use twinfs_replicate::message::{
    Divergence, HoldRecord, Move, Refusal, WireGeneration, BLOCK_BYTES, MAX_BLOCKS_PER_CP_FRAME,
    MAX_DEEP_HASH_BYTES, MAX_MOVES_PER_BLOCK, MAX_PATCHES_PER_BLOCK, MAX_RANGES_PER_BLOCK,
    MAX_REASON_BYTES, SUPERBLOCK_BYTES,
};
use twinfs_replicate::{Base, CpBlock, DeltaRange, Encoding, Message, Patch};

/// Up to `max` bytes of the input (fewer when it runs out).
pub fn take<'a>(u: &mut Unstructured<'a>, max: usize) -> Result<&'a [u8]> {
    let n = u.int_in_range(0..=max)?.min(u.len());
    u.bytes(n)
}

/// A count: mostly 0..=3, rarely `limit` or `limit + 1` (a list at a
/// limit is costly to encode and decode, and one run in sixty-four is
/// enough to keep both sides of each limit covered).
fn count(u: &mut Unstructured, limit: usize) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=63)? {
        0..=61 => u.int_in_range(0..=3)?,
        62 => limit,
        _ => limit + 1,
    })
}

/// [`count`] for `CpBlocks`' 1024 blocks: at the limit one run in 512,
/// since decoding such a list under the fuzzer's comparison tracing takes
/// a millisecond. (`CpMissing`'s 65536 addresses are not tried here: ten
/// milliseconds a run, and the fuzzer keeps going back to inputs that reach
/// them; the peer's own tests send lists that long.)
fn long_count(u: &mut Unstructured, limit: usize) -> Result<usize> {
    Ok(match u.int_in_range(0u16..=511)? {
        0..=509 => u.int_in_range(0..=3)?,
        510 => limit,
        _ => limit + 1,
    })
}

/// A transfer ID: 0 (invalid), 1, or anything.
fn transfer_id(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => 1,
        _ => u.arbitrary()?,
    })
}

/// Bytes: mostly taken from the input, sometimes exactly `exact` long
/// (a block, a superblock), sometimes one byte off.
fn bytes(u: &mut Unstructured, exact: usize) -> Result<Vec<u8>> {
    let len = match u.int_in_range(0u8..=7)? {
        0..=3 => return Ok(take(u, 64)?.to_vec()),
        4 | 5 => exact,
        6 => exact.saturating_sub(1),
        _ => exact + 1,
    };
    let fill: u8 = u.arbitrary()?;
    let mut v = vec![fill; len];
    let head = u.bytes(u.len().min(len).min(32))?;
    v[..head.len()].copy_from_slice(head);
    Ok(v)
}

/// A reason string: short from the input, or `MAX_REASON_BYTES` (+1) long.
fn reason(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0u8..=7)? {
        0..=5 => u.arbitrary()?,
        6 => "r".repeat(MAX_REASON_BYTES),
        // Multi-byte characters straddling the limit.
        _ => "é".repeat(MAX_REASON_BYTES / 2 + 1),
    })
}

fn offset_len(u: &mut Unstructured) -> Result<(u16, u16)> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => (u.arbitrary()?, u.arbitrary()?),
        1 => (0, BLOCK_BYTES as u16),
        _ => {
            let off = u.int_in_range(0..=BLOCK_BYTES as u16)?;
            let len = u.int_in_range(0..=(BLOCK_BYTES as u16 - off).saturating_add(1))?;
            (off, len)
        }
    })
}

fn base(u: &mut Unstructured) -> Result<Base> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Base::Zero,
        1 => Base::Prev {
            addr: u.arbitrary()?,
        },
        _ => Base::Ref {
            transfer: transfer_id(u)?,
            block_no: u.arbitrary()?,
        },
    })
}

fn patch(u: &mut Unstructured) -> Result<Patch> {
    let (offset, len) = offset_len(u)?;
    Ok(if u.arbitrary()? {
        Patch::Bytes {
            offset,
            transfer: transfer_id(u)?,
            src_offset: u.arbitrary()?,
            len,
        }
    } else {
        Patch::Zero { offset, len }
    })
}

fn encoding(u: &mut Unstructured) -> Result<Encoding> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Encoding::Full(bytes(u, BLOCK_BYTES)?),
        1 => Encoding::Ref {
            transfer: transfer_id(u)?,
            block_no: u.arbitrary()?,
        },
        2 => {
            let base = base(u)?;
            let n = count(u, MAX_PATCHES_PER_BLOCK)?;
            let mut patches = Vec::with_capacity(n);
            for _ in 0..n {
                patches.push(patch(u)?);
            }
            Encoding::Recipe { base, patches }
        }
        _ => {
            let base = base(u)?;
            let n = count(u, MAX_MOVES_PER_BLOCK)?;
            let mut moves = Vec::with_capacity(n);
            for _ in 0..n {
                let (from, len) = offset_len(u)?;
                moves.push(Move {
                    from,
                    to: u.int_in_range(0..=BLOCK_BYTES as u16)?,
                    len,
                });
            }
            let n = count(u, MAX_RANGES_PER_BLOCK)?;
            let mut ranges = Vec::with_capacity(n);
            let mut at = 0u16;
            for _ in 0..n {
                // Mostly sorted and disjoint, as the source sends them; sometimes not.
                let offset = if u.ratio(1, 8)? {
                    u.arbitrary()?
                } else {
                    at.saturating_add(u.int_in_range(0..=16)?)
                };
                let data = take(u, 8)?.to_vec();
                at = offset.saturating_add(data.len() as u16);
                ranges.push(DeltaRange { offset, data });
            }
            Encoding::Delta {
                base,
                moves,
                ranges,
            }
        }
    })
}

/// One `CpBlock`.
pub fn cp_block(u: &mut Unstructured) -> Result<CpBlock> {
    let mut hash = [0u8; 16];
    u.fill_buffer(&mut hash)?;
    Ok(CpBlock {
        addr: u.arbitrary()?,
        hash,
        enc: encoding(u)?,
    })
}

/// A lineage as it travels: mostly valid (distinct IDs, first CPs
/// increasing, the legacy ID 0 only first at CP 0), sometimes empty, too
/// long, or breaking one of those rules.
pub fn wire_lineage(u: &mut Unstructured) -> Result<Vec<WireGeneration>> {
    let n = match u.int_in_range(0u8..=31)? {
        0 => 0,
        1 => MAX_GENERATIONS + 1,
        2 => MAX_GENERATIONS,
        _ => u.int_in_range(1..=4)?,
    };
    let mut gens = Vec::with_capacity(n);
    let mut cp = 0u64;
    for i in 0..n {
        let id = if i == 0 && u.ratio(1u8, 4)? {
            0
        } else {
            (i as u64 + 1).wrapping_mul(0x9E37_79B9) ^ u64::from(u.arbitrary::<u16>()?)
        };
        gens.push(WireGeneration { id, first_cp: cp });
        cp = cp.saturating_add(u.int_in_range(1..=1000)?);
    }
    if !gens.is_empty() && u.ratio(1u8, 8)? {
        // Break a rule: a repeated ID or a first CP out of order.
        let i = u.choose_index(gens.len())?;
        let j = u.choose_index(gens.len())?;
        if u.arbitrary()? {
            gens[i].id = gens[j].id;
        } else {
            gens[i].first_cp = gens[j].first_cp;
        }
    }
    Ok(gens)
}

fn hold_record(u: &mut Unstructured) -> Result<HoldRecord> {
    let mut root_hash = [0u8; 32];
    u.fill_buffer(&mut root_hash)?;
    Ok(HoldRecord {
        peer_id: u.arbitrary()?,
        cp: u.arbitrary()?,
        root_hash,
    })
}

fn refusal(u: &mut Unstructured) -> Result<Refusal> {
    Ok(Refusal {
        kind: match u.int_in_range(0u8..=2)? {
            0 => Divergence::SplitBrain,
            1 => Divergence::SourceBehind,
            _ => Divergence::PeerBehind,
        },
        common_cp: u.arbitrary()?,
        reason: reason(u)?,
    })
}

/// One of the given words, or anything.
fn word(u: &mut Unstructured, words: &[&str]) -> Result<String> {
    Ok(if u.ratio(7u8, 8)? {
        words[u.choose_index(words.len())?].to_string()
    } else {
        u.arbitrary()?
    })
}

/// Any message, in either direction, valid or one step past a limit.
pub fn message(u: &mut Unstructured) -> Result<Message> {
    let mut hash = [0u8; 32];
    Ok(match u.int_in_range(0u8..=20)? {
        0 => Message::Transfer {
            id: transfer_id(u)?,
            batch: bytes(u, 8192)?,
        },
        1 => {
            // Mostly a real compressed batch, whose raw_len is right or not.
            let raw = bytes(u, 4096)?;
            let data = if u.ratio(3, 4)? {
                lz4_flex::block::compress(&raw)
            } else {
                take(u, 64)?.to_vec()
            };
            let raw_len = if u.ratio(3, 4)? {
                raw.len() as u32
            } else {
                u.arbitrary()?
            };
            Message::TransferLz4 {
                id: transfer_id(u)?,
                raw_len,
                data,
            }
        }
        2 => Message::LogEnd {
            transfer: u.arbitrary()?,
        },
        3 => Message::TransferAck {
            id: transfer_id(u)?,
        },
        4 => Message::CpBegin {
            cp: u.arbitrary()?,
            base_cp: u.arbitrary()?,
            covers_transfer: u.arbitrary()?,
            resync: u.arbitrary()?,
        },
        5 => {
            let cp = u.arbitrary()?;
            let n = long_count(u, MAX_BLOCKS_PER_CP_FRAME)?;
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                // Past a few, small `Ref` blocks: a frame at the limit stays cheap.
                if i >= 4 {
                    blocks.push(CpBlock {
                        addr: i as u64,
                        hash: [0; 16],
                        enc: Encoding::Ref {
                            transfer: 1,
                            block_no: i as u32,
                        },
                    });
                } else {
                    blocks.push(cp_block(u)?);
                }
            }
            Message::CpBlocks { cp, blocks }
        }
        6 => {
            u.fill_buffer(&mut hash)?;
            Message::CpEnd {
                cp: u.arbitrary()?,
                superblock: bytes(u, SUPERBLOCK_BYTES)?,
                root_hash: hash,
            }
        }
        7 => {
            u.fill_buffer(&mut hash)?;
            Message::CpApplied {
                cp: u.arbitrary()?,
                root_hash: hash,
            }
        }
        8 => {
            let n = u.int_in_range(0..=3)?;
            let first: u64 = u.arbitrary()?;
            Message::CpMissing {
                cp: u.arbitrary()?,
                addrs: (0..n as u64).map(|i| first.wrapping_add(i)).collect(),
                more: u.arbitrary()?,
            }
        }
        9 => Message::CpRejected {
            cp: u.arbitrary()?,
            reason: reason(u)?,
        },
        10 => Message::Ping {
            nonce: u.arbitrary()?,
        },
        11 => Message::Pong {
            nonce: u.arbitrary()?,
        },
        12 => Message::VerifyRequest {
            cp: u.arbitrary()?,
            deep: u.arbitrary()?,
        },
        13 => {
            u.fill_buffer(&mut hash)?;
            let deep_hash = if u.arbitrary()? {
                Some(bytes(u, MAX_DEEP_HASH_BYTES)?)
            } else {
                None
            };
            Message::VerifyReply {
                cp: u.arbitrary()?,
                root_hash: hash,
                deep_hash,
            }
        }
        14 => Message::Error { reason: reason(u)? },
        16 => {
            u.fill_buffer(&mut hash)?;
            Message::SourceLineage {
                generations: wire_lineage(u)?,
                cp: u.arbitrary()?,
                root_hash: hash,
                uncommitted: u.arbitrary()?,
                hold: if u.arbitrary()? {
                    Some(hold_record(u)?)
                } else {
                    None
                },
            }
        }
        17 => Message::LineageVerdict {
            peer_id: u.arbitrary()?,
            generations: wire_lineage(u)?,
            refusal: if u.arbitrary()? {
                Some(refusal(u)?)
            } else {
                None
            },
        },
        18 => {
            u.fill_buffer(&mut hash)?;
            Message::Switchover {
                cp: u.arbitrary()?,
                root_hash: hash,
                return_to: reason(u)?,
                mode: word(u, &["sync", "strict", "async"])?,
                cp_sync: word(u, &["full", "refs", "best"])?,
            }
        }
        19 => {
            u.fill_buffer(&mut hash)?;
            Message::SwitchedOver {
                cp: u.arbitrary()?,
                root_hash: hash,
            }
        }
        20 => Message::SwitchoverRefused { reason: reason(u)? },
        _ => Message::Bye,
    })
}

// ---------------------------------------------------------------------------
// NVLOG records and batches

use std::sync::Arc;

use twinfs_fs::nvlog::batch::OpenBatch;
use twinfs_fs::nvlog::record::{Create, Record, SetAttr, Write};
use twinfs_fs::{FileKind, Ino, Timestamp, TransferId, BLOCK_SIZE};

/// A valid time stamp (nanoseconds below one second).
pub fn timestamp(u: &mut Unstructured) -> Result<Timestamp> {
    Ok(Timestamp::new(
        u.arbitrary()?,
        u.int_in_range(0..=999_999_999)?,
    ))
}

/// A name of 0 to 255 bytes (the records' one-byte length).
fn name(u: &mut Unstructured) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=255usize)?.min(u.len());
    Ok(u.bytes(n)?.to_vec())
}

fn kind(u: &mut Unstructured) -> Result<FileKind> {
    Ok(FileKind::from_u8(u.int_in_range(1..=7)?).expect("1..=7 are kinds"))
}

fn opt<T>(
    u: &mut Unstructured,
    f: impl FnOnce(&mut Unstructured) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

/// A log record the volume could write: names and values within their
/// limits, writes split at block boundaries by `Write::split`.
pub fn record(u: &mut Unstructured) -> Result<Record> {
    Ok(match u.int_in_range(1u8..=10)? {
        1 => Record::Create(Create {
            parent: Ino(u.arbitrary()?),
            name: name(u)?,
            ino: Ino(u.arbitrary()?),
            kind: kind(u)?,
            perm: u.arbitrary()?,
            uid: u.arbitrary()?,
            gid: u.arbitrary()?,
            rdev: u.arbitrary()?,
            time: timestamp(u)?,
            target: {
                let n = u.int_in_range(0..=4095usize)?.min(u.len());
                u.bytes(n)?.to_vec()
            },
        }),
        2 => Record::Link {
            ino: Ino(u.arbitrary()?),
            parent: Ino(u.arbitrary()?),
            name: name(u)?,
            time: timestamp(u)?,
        },
        3 => Record::Unlink {
            parent: Ino(u.arbitrary()?),
            name: name(u)?,
            dir: u.arbitrary()?,
            time: timestamp(u)?,
        },
        4 => Record::Rename {
            parent: Ino(u.arbitrary()?),
            name: name(u)?,
            new_parent: Ino(u.arbitrary()?),
            new_name: name(u)?,
            flags: u.arbitrary()?,
            time: timestamp(u)?,
        },
        5 => Record::SetAttr(SetAttr {
            ino: Ino(u.arbitrary()?),
            perm: opt(u, |u| u.arbitrary())?,
            uid: opt(u, |u| u.arbitrary())?,
            gid: opt(u, |u| u.arbitrary())?,
            size: opt(u, |u| u.arbitrary())?,
            atime: opt(u, timestamp)?,
            mtime: opt(u, timestamp)?,
            crtime: opt(u, timestamp)?,
            time: timestamp(u)?,
        }),
        6 => {
            // Up to three blocks and a bit, at any offset that does not overflow.
            let len = u.int_in_range(0..=3 * BLOCK_SIZE + 100)?;
            let fill: u8 = u.arbitrary()?;
            let mut data = vec![fill; len];
            let head = u.bytes(u.len().min(len).min(64))?;
            data[..head.len()].copy_from_slice(head);
            let offset = u.int_in_range(0..=u64::MAX - len as u64)?;
            Record::Write(Write::split(
                Ino(u.arbitrary()?),
                offset,
                &data,
                timestamp(u)?,
                u.arbitrary()?,
            ))
        }
        7 => Record::Fallocate {
            ino: Ino(u.arbitrary()?),
            offset: u.arbitrary()?,
            len: u.arbitrary()?,
            mode: u.arbitrary()?,
            time: timestamp(u)?,
        },
        8 => Record::SetXattr {
            ino: Ino(u.arbitrary()?),
            name: name(u)?,
            value: {
                let n = u
                    .int_in_range(0..=twinfs_fs::items::XATTR_VALUE_MAX)?
                    .min(u.len());
                u.bytes(n)?.to_vec()
            },
            flags: u.arbitrary()?,
            time: timestamp(u)?,
        },
        9 => Record::RemoveXattr {
            ino: Ino(u.arbitrary()?),
            name: name(u)?,
            time: timestamp(u)?,
        },
        _ => Record::Reclaim {
            ino: Ino(u.arbitrary()?),
        },
    })
}

/// A sealed batch `id` of up to `max_records` records built from the input.
pub fn batch(
    u: &mut Unstructured,
    id: u64,
    uuid: &[u8; 16],
    prev_hash: [u8; 32],
    max_records: usize,
) -> Result<(Vec<Record>, Arc<Vec<u8>>)> {
    let mut open = OpenBatch::new(TransferId(id));
    let mut records = Vec::new();
    for _ in 0..u.int_in_range(0..=max_records)? {
        let rec = record(u)?;
        open.append(&rec);
        records.push(rec);
    }
    Ok((records, open.seal(uuid, prev_hash).bytes))
}
