//! The items kept in the metadata B-tree: inode records, directory entry
//! buckets, extended attributes, orphans and retained images (snapshots and
//! the peer's protected CP). Each has a fixed little-endian layout (FORMAT.md).

use crate::btree::{Key, TreeRoot};
use crate::codec::Reader;
use crate::error::{FsError, Result};
use crate::types::*;

/// Item kinds: the middle component of a [`Key`]. Values are on disk.
pub mod kind {
    /// `(ino, INODE, 0)` → [`super::InodeRecord`].
    pub const INODE: u8 = 1;
    /// `(ino, XATTR, name hash)` → bucket of [`super::XattrEntry`].
    pub const XATTR: u8 = 2;
    /// `(dir ino, DIRENT, name hash)` → bucket of [`super::DirEntry`].
    pub const DIRENT: u8 = 3;
    /// `(0, ORPHAN, ino)` → empty: an unlinked inode still open at the last CP.
    pub const ORPHAN: u8 = 8;
    /// `(0, SNAPSHOT, id)` → [`super::RetainedImage`].
    pub const SNAPSHOT: u8 = 9;
}

/// Inode number 0 holds volume-wide items (orphans, snapshots).
pub const VOLUME_INO: u64 = 0;

/// Longest file name, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symlink target stored inline in the inode record; longer targets
/// are stored as the symlink's file data.
pub const SYMLINK_INLINE_MAX: usize = 1024;
/// Longest symlink target (Linux PATH_MAX - 1).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr name (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (Linux XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Xattr values up to this size live inside the item; larger ones in blob blocks.
pub const XATTR_INLINE_MAX: usize = 512;
/// Longest snapshot name.
pub const SNAPSHOT_NAME_MAX: usize = 64;

fn corrupt(what: &str) -> FsError {
    FsError::CorruptVolume(format!("malformed {what} item"))
}

fn put_ts(out: &mut Vec<u8>, t: Timestamp) {
    let mut b = [0u8; Timestamp::SIZE];
    t.encode(&mut b);
    out.extend_from_slice(&b);
}

fn put_ptr(out: &mut Vec<u8>, p: &BlockPtr) {
    let mut b = [0u8; BlockPtr::SIZE];
    p.encode(&mut b);
    out.extend_from_slice(&b);
}

/// The attributes of an inode: everything but where its data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeAttrs {
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Logical size in bytes (for directories: number of entries).
    pub size: u64,
    pub rdev: u64,
    /// For a directory, the directory holding it (itself for the root); 0 otherwise.
    pub parent: Ino,
    /// Data blocks allocated to the file (holes excluded).
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// A symlink's target when it is short enough to live in the record.
    pub symlink: Option<Box<[u8]>>,
}

impl InodeAttrs {
    /// `st_mode`: kind bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
}

/// The on-disk inode: attributes plus the root of the file's block tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    pub attrs: InodeAttrs,
    pub data: TreeRoot,
}

impl InodeRecord {
    pub fn key(ino: Ino) -> Key {
        Key {
            ino: ino.0,
            kind: kind::INODE,
            off: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let a = &self.attrs;
        let mut out = Vec::with_capacity(160);
        out.push(a.kind as u8);
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&a.perm.to_le_bytes());
        out.extend_from_slice(&a.uid.to_le_bytes());
        out.extend_from_slice(&a.gid.to_le_bytes());
        out.extend_from_slice(&a.nlink.to_le_bytes());
        out.extend_from_slice(&a.size.to_le_bytes());
        out.extend_from_slice(&a.rdev.to_le_bytes());
        out.extend_from_slice(&a.parent.0.to_le_bytes());
        out.extend_from_slice(&a.blocks.to_le_bytes());
        for t in [a.atime, a.mtime, a.ctime, a.crtime] {
            put_ts(&mut out, t);
        }
        put_ptr(&mut out, &self.data.ptr);
        out.push(self.data.height);
        let target = a.symlink.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&(target.len() as u16).to_le_bytes());
        out.extend_from_slice(target);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<InodeRecord> {
        let mut r = Reader::new(buf, "inode item");
        let kind = FileKind::from_u8(r.u8()?).ok_or_else(|| corrupt("inode"))?;
        r.bytes(3)?;
        let perm = r.u32()?;
        if perm & !0o7777 != 0 {
            return Err(corrupt("inode"));
        }
        let uid = r.u32()?;
        let gid = r.u32()?;
        let nlink = r.u32()?;
        let size = r.u64()?;
        let rdev = r.u64()?;
        let parent = Ino(r.u64()?);
        let blocks = r.u64()?;
        let atime = r.ts()?;
        let mtime = r.ts()?;
        let ctime = r.ts()?;
        let crtime = r.ts()?;
        let ptr = r.ptr()?;
        let height = r.u8()?;
        let tlen = r.u16()? as usize;
        if tlen > SYMLINK_INLINE_MAX || (tlen > 0 && kind != FileKind::Symlink) {
            return Err(corrupt("inode"));
        }
        let target = r.bytes(tlen)?;
        r.done()?;
        Ok(InodeRecord {
            attrs: InodeAttrs {
                kind,
                perm,
                uid,
                gid,
                nlink,
                size,
                rdev,
                parent,
                blocks,
                atime,
                mtime,
                ctime,
                crtime,
                symlink: (tlen > 0).then(|| target.into()),
            },
            data: TreeRoot { ptr, height },
        })
    }
}

/// Hash of a name inside a directory or an inode's xattrs: the B-tree key
/// offset, and for directories also the readdir cookie. Keyed per volume.
/// Offsets 0..=2 are left free for ".", ".." and the start of a listing.
pub fn name_hash(key: &[u8; 32], name: &[u8]) -> u64 {
    let h = blake3::keyed_hash(key, name);
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) >> 1;
    v.max(3)
}

/// The key of the name hash for a volume, derived from its UUID.
pub fn name_hash_key(uuid: &[u8; 16]) -> [u8; 32] {
    blake3::derive_key("twinfs 2026 directory name hash", uuid)
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Entries whose names share a hash (almost always exactly one).
pub fn encode_dir_bucket(entries: &[DirEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.iter().map(|e| e.name.len() + 10).sum::<usize>());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in entries {
        out.push(e.name.len() as u8);
        out.extend_from_slice(&e.name);
        out.extend_from_slice(&e.ino.0.to_le_bytes());
        out.push(e.kind as u8);
    }
    out
}

pub fn decode_dir_bucket(buf: &[u8]) -> Result<Vec<DirEntry>> {
    let mut r = Reader::new(buf, "directory entry item");
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let len = r.u8()? as usize;
        if len == 0 {
            return Err(corrupt("directory entry"));
        }
        let name = r.bytes(len)?.to_vec();
        let ino = Ino(r.u64()?);
        let kind = FileKind::from_u8(r.u8()?).ok_or_else(|| corrupt("directory entry"))?;
        out.push(DirEntry { name, ino, kind });
    }
    r.done()?;
    Ok(out)
}

/// Where an xattr value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrValue {
    Inline(Vec<u8>),
    /// A value too large for the item: `len` bytes in blocks.
    Blob {
        len: u32,
        blocks: Vec<BlockPtr>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrEntry {
    pub name: Vec<u8>,
    pub value: XattrValue,
}

pub fn encode_xattr_bucket(entries: &[XattrEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in entries {
        out.push(e.name.len() as u8);
        out.extend_from_slice(&e.name);
        match &e.value {
            XattrValue::Inline(v) => {
                out.push(0);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            XattrValue::Blob { len, blocks } => {
                out.push(1);
                out.extend_from_slice(&len.to_le_bytes());
                out.push(blocks.len() as u8);
                for p in blocks {
                    put_ptr(&mut out, p);
                }
            }
        }
    }
    out
}

pub fn decode_xattr_bucket(buf: &[u8]) -> Result<Vec<XattrEntry>> {
    let mut r = Reader::new(buf, "xattr item");
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let nlen = r.u8()? as usize;
        if nlen == 0 {
            return Err(corrupt("xattr"));
        }
        let name = r.bytes(nlen)?.to_vec();
        let value = match r.u8()? {
            0 => {
                let len = r.u32()? as usize;
                if len > XATTR_INLINE_MAX {
                    return Err(corrupt("xattr"));
                }
                XattrValue::Inline(r.bytes(len)?.to_vec())
            }
            1 => {
                let len = r.u32()?;
                let nb = r.u8()? as usize;
                if len as usize > XATTR_VALUE_MAX || nb != (len as usize).div_ceil(BLOCK_SIZE) {
                    return Err(corrupt("xattr"));
                }
                let mut blocks = Vec::with_capacity(nb);
                for _ in 0..nb {
                    blocks.push(r.ptr()?);
                }
                XattrValue::Blob { len, blocks }
            }
            _ => return Err(corrupt("xattr")),
        };
        out.push(XattrEntry { name, value });
    }
    r.done()?;
    Ok(out)
}

/// A snapshot: an image kept beyond the last CP. Its blocks stay allocated
/// until the item is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedImage {
    pub name: Vec<u8>,
    /// The CP whose image this is.
    pub cp: CpNumber,
    pub created: Timestamp,
    pub meta: TreeRoot,
    pub alloc: TreeRoot,
    pub used_blocks: u64,
    pub inodes: u64,
    pub root_hash: RootHash,
}

impl RetainedImage {
    pub fn snapshot_key(id: u64) -> Key {
        Key {
            ino: VOLUME_INO,
            kind: kind::SNAPSHOT,
            off: id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        out.push(self.name.len() as u8);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.cp.0.to_le_bytes());
        put_ts(&mut out, self.created);
        put_ptr(&mut out, &self.meta.ptr);
        out.push(self.meta.height);
        put_ptr(&mut out, &self.alloc.ptr);
        out.push(self.alloc.height);
        out.extend_from_slice(&self.used_blocks.to_le_bytes());
        out.extend_from_slice(&self.inodes.to_le_bytes());
        out.extend_from_slice(&self.root_hash.0);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<RetainedImage> {
        let mut r = Reader::new(buf, "snapshot item");
        let nlen = r.u8()? as usize;
        if nlen > SNAPSHOT_NAME_MAX {
            return Err(corrupt("snapshot"));
        }
        let name = r.bytes(nlen)?.to_vec();
        let cp = CpNumber(r.u64()?);
        let created = r.ts()?;
        let meta = TreeRoot {
            ptr: r.ptr()?,
            height: r.u8()?,
        };
        let alloc = TreeRoot {
            ptr: r.ptr()?,
            height: r.u8()?,
        };
        let used_blocks = r.u64()?;
        let inodes = r.u64()?;
        let mut root_hash = [0u8; 32];
        root_hash.copy_from_slice(r.bytes(32)?);
        r.done()?;
        Ok(RetainedImage {
            name,
            cp,
            created,
            meta,
            alloc,
            used_blocks,
            inodes,
            root_hash: RootHash(root_hash),
        })
    }
}

pub fn orphan_key(ino: Ino) -> Key {
    Key {
        ino: VOLUME_INO,
        kind: kind::ORPHAN,
        off: ino.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kind: FileKind) -> InodeAttrs {
        InodeAttrs {
            kind,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 2,
            size: 1 << 40,
            rdev: 0x0801,
            parent: Ino(0),
            blocks: 3,
            atime: Timestamp::new(-3, 1),
            mtime: Timestamp::new(1, 999_999_999),
            ctime: Timestamp::new(2, 0),
            crtime: Timestamp::new(3, 5),
            symlink: None,
        }
    }

    #[test]
    fn inode_record_round_trips() {
        let mut a = attrs(FileKind::Symlink);
        a.symlink = Some(vec![b'x'; SYMLINK_INLINE_MAX].into());
        for attrs in [attrs(FileKind::Regular), a] {
            let rec = InodeRecord {
                attrs,
                data: TreeRoot {
                    ptr: BlockPtr {
                        addr: BlockAddr(77),
                        birth: CpNumber(3),
                        hash: Hash128([9; 16]),
                    },
                    height: 2,
                },
            };
            assert_eq!(InodeRecord::decode(&rec.encode()).unwrap(), rec);
        }
    }

    #[test]
    fn truncated_or_garbage_items_are_errors() {
        let rec = InodeRecord {
            attrs: attrs(FileKind::Regular),
            data: TreeRoot::default(),
        };
        let enc = rec.encode();
        for cut in 0..enc.len() {
            assert!(InodeRecord::decode(&enc[..cut]).is_err());
        }
        let bucket = encode_dir_bucket(&[DirEntry {
            name: b"a".to_vec(),
            ino: Ino(5),
            kind: FileKind::Fifo,
        }]);
        for cut in 0..bucket.len() {
            assert!(decode_dir_bucket(&bucket[..cut]).is_err());
        }
        assert!(decode_xattr_bucket(&[0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn buckets_round_trip() {
        let entries = vec![
            DirEntry {
                name: vec![b'n'; NAME_MAX],
                ino: Ino(1 << 50),
                kind: FileKind::Directory,
            },
            DirEntry {
                name: "é".as_bytes().to_vec(),
                ino: Ino(2),
                kind: FileKind::Socket,
            },
        ];
        assert_eq!(
            decode_dir_bucket(&encode_dir_bucket(&entries)).unwrap(),
            entries
        );
        let x = vec![
            XattrEntry {
                name: b"user.a".to_vec(),
                value: XattrValue::Inline(vec![1, 2, 3]),
            },
            XattrEntry {
                name: b"user.big".to_vec(),
                value: XattrValue::Blob {
                    len: 5000,
                    blocks: vec![BlockPtr::NULL; 2],
                },
            },
        ];
        assert_eq!(decode_xattr_bucket(&encode_xattr_bucket(&x)).unwrap(), x);
    }

    #[test]
    fn name_hash_leaves_room_for_dot_entries_and_depends_on_the_volume() {
        let k1 = name_hash_key(&[1; 16]);
        let k2 = name_hash_key(&[2; 16]);
        for name in [&b"a"[..], b"b", b"a longer name"] {
            let h = name_hash(&k1, name);
            assert!((3..1u64 << 63).contains(&h));
        }
        assert_ne!(name_hash(&k1, b"a"), name_hash(&k2, b"a"));
    }
}
