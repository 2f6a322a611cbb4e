//! Log records: one per modifying operation, carrying everything replay needs
//! to reach exactly the same state (inode numbers, time stamps, final modes).

use std::sync::Arc;

use crate::codec::Reader;
use crate::error::{FsError, Result};
use crate::types::*;

/// Flags of [`Record::Rename`].
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// Flags of [`Record::SetXattr`].
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// Modes of [`Record::Fallocate`] (Linux values).
pub const FALLOC_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_PUNCH_HOLE: u32 = 0x02;
pub const FALLOC_ZERO_RANGE: u32 = 0x10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    pub parent: Ino,
    pub name: Vec<u8>,
    /// The inode number the create allocated.
    pub ino: Ino,
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub time: Timestamp,
    /// A symlink's target (empty otherwise).
    pub target: Vec<u8>,
}

/// Attribute changes; `None` leaves a field alone. `time` becomes the ctime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub ino: Ino,
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub crtime: Option<Timestamp>,
    pub time: Timestamp,
}

/// A write, split at block boundaries: an unaligned `head`, whole aligned
/// `blocks` (stored in the batch's block area), and an unaligned `tail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub ino: Ino,
    pub offset: u64,
    pub time: Timestamp,
    /// Clear setuid/setgid (a write by someone other than the owner).
    pub kill_suid: bool,
    pub head: Vec<u8>,
    pub blocks: Vec<Arc<Block>>,
    /// `Hash128` of each whole block: computed once, used by the batch
    /// checksum and again by the CP that writes the block.
    pub hashes: Vec<Hash128>,
    pub tail: Vec<u8>,
}

impl Write {
    /// Splits `data` written at `offset` into head, whole blocks and tail.
    pub fn split(ino: Ino, offset: u64, data: &[u8], time: Timestamp, kill_suid: bool) -> Write {
        let head_len = head_len(offset, data.len() as u64) as usize;
        let whole = (data.len() - head_len) / BLOCK_SIZE;
        let tail_start = head_len + whole * BLOCK_SIZE;
        let blocks: Vec<Arc<Block>> = data[head_len..tail_start]
            .chunks(BLOCK_SIZE)
            .map(|c| Arc::new(<Block>::try_from(c).expect("whole block")))
            .collect();
        let hashes = crate::blockhash::hash_blocks(&data[head_len..tail_start]);
        Write {
            ino,
            offset,
            time,
            kill_suid,
            head: data[..head_len].to_vec(),
            blocks,
            hashes,
            tail: data[tail_start..].to_vec(),
        }
    }

    pub fn len(&self) -> u64 {
        (self.head.len() + self.blocks.len() * BLOCK_SIZE + self.tail.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes of a write at `offset` of `len` that come before its first whole
/// aligned block: up to the next boundary, or all of it if it ends first.
pub fn head_len(offset: u64, len: u64) -> u64 {
    let into = offset % BLOCK_SIZE_U64;
    if into == 0 {
        if len >= BLOCK_SIZE_U64 {
            0
        } else {
            len
        }
    } else {
        len.min(BLOCK_SIZE_U64 - into)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Create(Create),
    Link {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    /// unlink, or rmdir when `dir`.
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        dir: bool,
        time: Timestamp,
    },
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: u32,
        time: Timestamp,
    },
    SetAttr(SetAttr),
    Write(Write),
    Fallocate {
        ino: Ino,
        offset: u64,
        len: u64,
        mode: u32,
        time: Timestamp,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        time: Timestamp,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    /// The last link and the last open handle of an inode are gone: delete it.
    Reclaim {
        ino: Ino,
    },
}

mod tag {
    pub const CREATE: u8 = 1;
    pub const LINK: u8 = 2;
    pub const UNLINK: u8 = 3;
    pub const RENAME: u8 = 4;
    pub const SETATTR: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const FALLOCATE: u8 = 7;
    pub const SETXATTR: u8 = 8;
    pub const REMOVEXATTR: u8 = 9;
    pub const RECLAIM: u8 = 10;
}

/// Size of a Write record before its head bytes.
pub const WRITE_FIXED: usize = 1 + 8 + 8 + Timestamp::SIZE + 1 + 2 + 2 + 4 + 4;

/// Where the bytes of a write record landed in its batch: what a buffer
/// descriptor points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordPos {
    pub transfer: TransferId,
    /// Block number of the write's first whole block in the batch's block area.
    pub first_block: u32,
    /// Byte offset of the head bytes from the start of the batch.
    pub head_off: u32,
    /// Byte offset of the tail bytes from the start of the batch.
    pub tail_off: u32,
}

struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn ts(&mut self, t: Timestamp) {
        let mut b = [0u8; Timestamp::SIZE];
        t.encode(&mut b);
        self.0.extend_from_slice(&b);
    }
    fn name(&mut self, n: &[u8]) {
        self.u8(n.len() as u8);
        self.0.extend_from_slice(n);
    }
}

impl Record {
    /// Encodes the record; a write's whole blocks are numbered from `first_block`
    /// (the caller stores them in the batch's block area).
    pub fn encode(&self, first_block: u32, out: &mut Vec<u8>) {
        let mut o = Out(out);
        match self {
            Record::Create(c) => {
                o.u8(tag::CREATE);
                o.u64(c.parent.0);
                o.u64(c.ino.0);
                o.u8(c.kind as u8);
                o.u32(c.perm);
                o.u32(c.uid);
                o.u32(c.gid);
                o.u64(c.rdev);
                o.ts(c.time);
                o.name(&c.name);
                o.u16(c.target.len() as u16);
                o.0.extend_from_slice(&c.target);
            }
            Record::Link {
                ino,
                parent,
                name,
                time,
            } => {
                o.u8(tag::LINK);
                o.u64(ino.0);
                o.u64(parent.0);
                o.ts(*time);
                o.name(name);
            }
            Record::Unlink {
                parent,
                name,
                dir,
                time,
            } => {
                o.u8(tag::UNLINK);
                o.u64(parent.0);
                o.ts(*time);
                o.u8(u8::from(*dir));
                o.name(name);
            }
            Record::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                time,
            } => {
                o.u8(tag::RENAME);
                o.u64(parent.0);
                o.u64(new_parent.0);
                o.u32(*flags);
                o.ts(*time);
                o.name(name);
                o.name(new_name);
            }
            Record::SetAttr(s) => {
                o.u8(tag::SETATTR);
                o.u64(s.ino.0);
                let mask = u8::from(s.perm.is_some())
                    | u8::from(s.uid.is_some()) << 1
                    | u8::from(s.gid.is_some()) << 2
                    | u8::from(s.size.is_some()) << 3
                    | u8::from(s.atime.is_some()) << 4
                    | u8::from(s.mtime.is_some()) << 5
                    | u8::from(s.crtime.is_some()) << 6;
                o.u8(mask);
                o.u32(s.perm.unwrap_or(0));
                o.u32(s.uid.unwrap_or(0));
                o.u32(s.gid.unwrap_or(0));
                o.u64(s.size.unwrap_or(0));
                o.ts(s.atime.unwrap_or_default());
                o.ts(s.mtime.unwrap_or_default());
                o.ts(s.crtime.unwrap_or_default());
                o.ts(s.time);
            }
            Record::Write(w) => {
                o.u8(tag::WRITE);
                o.u64(w.ino.0);
                o.u64(w.offset);
                o.ts(w.time);
                o.u8(u8::from(w.kill_suid));
                o.u16(w.head.len() as u16);
                o.u16(w.tail.len() as u16);
                o.u32(first_block);
                o.u32(w.blocks.len() as u32);
                o.0.extend_from_slice(&w.head);
                o.0.extend_from_slice(&w.tail);
            }
            Record::Fallocate {
                ino,
                offset,
                len,
                mode,
                time,
            } => {
                o.u8(tag::FALLOCATE);
                o.u64(ino.0);
                o.u64(*offset);
                o.u64(*len);
                o.u32(*mode);
                o.ts(*time);
            }
            Record::SetXattr {
                ino,
                name,
                value,
                flags,
                time,
            } => {
                o.u8(tag::SETXATTR);
                o.u64(ino.0);
                o.u32(*flags);
                o.ts(*time);
                o.name(name);
                o.u32(value.len() as u32);
                o.0.extend_from_slice(value);
            }
            Record::RemoveXattr { ino, name, time } => {
                o.u8(tag::REMOVEXATTR);
                o.u64(ino.0);
                o.ts(*time);
                o.name(name);
            }
            Record::Reclaim { ino } => {
                o.u8(tag::RECLAIM);
                o.u64(ino.0);
            }
        }
    }

    /// Decodes one record from `buf` at `*pos`, taking a write's whole blocks
    /// and their hashes from `blocks`/`hashes` (the batch's block area).
    /// Advances `*pos`.
    pub fn decode(
        buf: &[u8],
        pos: &mut usize,
        blocks: &[Arc<Block>],
        hashes: &[Hash128],
    ) -> Result<(Record, WriteSpan)> {
        let mut r = Reader::at(buf, *pos, "log record");
        let t = r.u8()?;
        let mut span = WriteSpan::default();
        let rec = match t {
            tag::CREATE => {
                let parent = Ino(r.u64()?);
                let ino = Ino(r.u64()?);
                let kind = FileKind::from_u8(r.u8()?).ok_or_else(|| bad("file kind"))?;
                let perm = r.u32()?;
                let uid = r.u32()?;
                let gid = r.u32()?;
                let rdev = r.u64()?;
                let time = r.ts()?;
                let name = r.name()?;
                let tlen = r.u16()? as usize;
                let target = r.bytes(tlen)?.to_vec();
                Record::Create(Create {
                    parent,
                    name,
                    ino,
                    kind,
                    perm,
                    uid,
                    gid,
                    rdev,
                    time,
                    target,
                })
            }
            tag::LINK => Record::Link {
                ino: Ino(r.u64()?),
                parent: Ino(r.u64()?),
                time: r.ts()?,
                name: r.name()?,
            },
            tag::UNLINK => Record::Unlink {
                parent: Ino(r.u64()?),
                time: r.ts()?,
                dir: r.u8()? != 0,
                name: r.name()?,
            },
            tag::RENAME => {
                let parent = Ino(r.u64()?);
                let new_parent = Ino(r.u64()?);
                let flags = r.u32()?;
                let time = r.ts()?;
                let name = r.name()?;
                let new_name = r.name()?;
                Record::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    flags,
                    time,
                }
            }
            tag::SETATTR => {
                let ino = Ino(r.u64()?);
                let mask = r.u8()?;
                let perm = r.u32()?;
                let uid = r.u32()?;
                let gid = r.u32()?;
                let size = r.u64()?;
                let atime = r.ts()?;
                let mtime = r.ts()?;
                let crtime = r.ts()?;
                let time = r.ts()?;
                let has = |bit: u8| mask & (1 << bit) != 0;
                Record::SetAttr(SetAttr {
                    ino,
                    perm: has(0).then_some(perm),
                    uid: has(1).then_some(uid),
                    gid: has(2).then_some(gid),
                    size: has(3).then_some(size),
                    atime: has(4).then_some(atime),
                    mtime: has(5).then_some(mtime),
                    crtime: has(6).then_some(crtime),
                    time,
                })
            }
            tag::WRITE => {
                let ino = Ino(r.u64()?);
                let offset = r.u64()?;
                let time = r.ts()?;
                let kill_suid = r.u8()? != 0;
                let hl = r.u16()? as usize;
                let tail_len = r.u16()? as usize;
                let first = r.u32()? as usize;
                let n = r.u32()? as usize;
                span.head_off = r.pos() as u32;
                let head = r.bytes(hl)?.to_vec();
                span.tail_off = r.pos() as u32;
                let tail = r.bytes(tail_len)?.to_vec();
                span.first_block = first as u32;
                let end = first.checked_add(n).ok_or_else(|| bad("block range"))?;
                let blocks = blocks
                    .get(first..end)
                    .ok_or_else(|| bad("block range"))?
                    .to_vec();
                let hashes = hashes
                    .get(first..end)
                    .ok_or_else(|| bad("block range"))?
                    .to_vec();
                let len = (hl + n * BLOCK_SIZE + tail_len) as u64;
                let aligned_after_head = offset.wrapping_add(hl as u64) % BLOCK_SIZE_U64 == 0;
                let canonical = hl as u64 == head_len(offset, len)
                    && tail_len < BLOCK_SIZE
                    && ((n == 0 && tail_len == 0) || aligned_after_head);
                if !canonical || offset.checked_add(len).is_none() {
                    return Err(bad("write split"));
                }
                Record::Write(Write {
                    ino,
                    offset,
                    time,
                    kill_suid,
                    head,
                    blocks,
                    hashes,
                    tail,
                })
            }
            tag::FALLOCATE => Record::Fallocate {
                ino: Ino(r.u64()?),
                offset: r.u64()?,
                len: r.u64()?,
                mode: r.u32()?,
                time: r.ts()?,
            },
            tag::SETXATTR => {
                let ino = Ino(r.u64()?);
                let flags = r.u32()?;
                let time = r.ts()?;
                let name = r.name()?;
                let vlen = r.u32()? as usize;
                if vlen > crate::items::XATTR_VALUE_MAX {
                    return Err(bad("xattr length"));
                }
                let value = r.bytes(vlen)?.to_vec();
                Record::SetXattr {
                    ino,
                    name,
                    value,
                    flags,
                    time,
                }
            }
            tag::REMOVEXATTR => Record::RemoveXattr {
                ino: Ino(r.u64()?),
                time: r.ts()?,
                name: r.name()?,
            },
            tag::RECLAIM => Record::Reclaim { ino: Ino(r.u64()?) },
            other => return Err(bad(&format!("record type {other}"))),
        };
        *pos = r.pos();
        Ok((rec, span))
    }
}

/// Offsets of a decoded write's parts within the batch's record area and block area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSpan {
    pub first_block: u32,
    pub head_off: u32,
    pub tail_off: u32,
}

fn bad(what: &str) -> FsError {
    FsError::CorruptVolume(format!("malformed log record: bad {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_split_at_block_boundaries() {
        let data: Vec<u8> = (0..3 * BLOCK_SIZE as u32 + 10).map(|i| i as u8).collect();
        let w = Write::split(Ino(5), 4000, &data, Timestamp::default(), false);
        assert_eq!(w.head.len(), 96);
        assert_eq!(w.blocks.len(), 2);
        assert_eq!(w.tail.len(), data.len() - 96 - 2 * BLOCK_SIZE);
        assert_eq!(w.len(), data.len() as u64);
        let small = Write::split(Ino(5), 8192, &data[..100], Timestamp::default(), false);
        assert_eq!(
            (small.head.len(), small.blocks.len(), small.tail.len()),
            (100, 0, 0)
        );
        let aligned = Write::split(
            Ino(5),
            8192,
            &data[..BLOCK_SIZE],
            Timestamp::default(),
            false,
        );
        assert_eq!(
            (aligned.head.len(), aligned.blocks.len(), aligned.tail.len()),
            (0, 1, 0)
        );
    }
}
