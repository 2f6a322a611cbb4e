//! Newtypes and small value types shared by every layer of the volume.

use std::fmt;

/// Size of every block of the image, in bytes.
pub const BLOCK_SIZE: usize = 4096;
/// `BLOCK_SIZE` as a `u64`, for offset arithmetic.
pub const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;

/// One block of the image.
pub type Block = [u8; BLOCK_SIZE];

/// A block full of zeros, shared so that holes cost no allocation.
pub static ZERO_BLOCK: Block = [0u8; BLOCK_SIZE];

/// Allocates a zeroed block on the heap (a `Block` is too big to move around on the stack).
pub fn new_block() -> Box<Block> {
    vec![0u8; BLOCK_SIZE]
        .into_boxed_slice()
        .try_into()
        .expect("a BLOCK_SIZE vector converts to a Block")
}

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// Address of a block in the image (block number, not byte offset).
    BlockAddr
);
newtype_u64!(
    /// Number of a consistency point. CP 0 is the image `mkfs` writes.
    CpNumber
);
newtype_u64!(
    /// Sequence number of an NVLOG batch: the patent's transfer ID.
    TransferId
);
newtype_u64!(
    /// Inode number. Never reused within a volume.
    Ino
);

impl BlockAddr {
    /// Byte offset of this block in the image.
    pub fn byte_offset(self) -> u64 {
        self.0 * BLOCK_SIZE_U64
    }
}

/// Inode number of the root directory (FUSE's root is 1).
pub const ROOT_INO: Ino = Ino(1);

/// First inode number handed out to files created by users.
pub const FIRST_USER_INO: Ino = Ino(2);

/// Truncated blake3 hash of a block: 128 bits are enough to identify content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash128(pub [u8; 16]);

impl Hash128 {
    /// Hash of `data` (a whole block, normally).
    pub fn of(data: &[u8]) -> Hash128 {
        let full = blake3::hash(data);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full.as_bytes()[..16]);
        Hash128(out)
    }

    /// Lower-case hexadecimal form.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Hash128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// Lower-case hexadecimal form of any byte string.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The root hash of a consistency point: blake3 of the superblock body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RootHash(pub [u8; 32]);

impl RootHash {
    /// Lower-case hexadecimal form, as shown by `twinfs status`.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// A block pointer: where the child is, when it was written, and what it must hash to.
///
/// Because every pointer carries the child's hash, the superblock's pointers make
/// the whole image a Merkle tree (DESIGN invariant 3). Encoded in 32 bytes:
/// `addr u64 | birth u64 | hash [u8; 16]`, little endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockPtr {
    pub addr: BlockAddr,
    pub birth: CpNumber,
    pub hash: Hash128,
}

impl fmt::Debug for BlockPtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            write!(f, "BlockPtr(null)")
        } else {
            write!(
                f,
                "BlockPtr({} @cp{} {:?})",
                self.addr.0, self.birth.0, self.hash
            )
        }
    }
}

impl BlockPtr {
    /// Encoded size of a pointer, in bytes.
    pub const SIZE: usize = 32;

    /// The null pointer (a hole, or an empty tree). Block 0 is a superblock
    /// slot, so no real child ever lives there.
    pub const NULL: BlockPtr = BlockPtr {
        addr: BlockAddr(0),
        birth: CpNumber(0),
        hash: Hash128([0; 16]),
    };

    pub fn is_null(&self) -> bool {
        self.addr.0 == 0
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.addr.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.birth.0.to_le_bytes());
        out[16..32].copy_from_slice(&self.hash.0);
    }

    pub fn decode(buf: &[u8]) -> BlockPtr {
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&buf[16..32]);
        BlockPtr {
            addr: BlockAddr(u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes"))),
            birth: CpNumber(u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"))),
            hash: Hash128(hash),
        }
    }
}

/// A time stamp with nanosecond precision (seconds may be negative: before 1970).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub const SIZE: usize = 12;

    pub fn new(secs: i64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.secs.to_le_bytes());
        out[8..12].copy_from_slice(&self.nanos.to_le_bytes());
    }

    pub fn decode(buf: &[u8]) -> Timestamp {
        Timestamp {
            secs: i64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")),
            nanos: u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")),
        }
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(u64::from(self.nanos))
        }
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Timestamp {
        use std::time::UNIX_EPOCH;
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp::new(secs, nanos)
            }
        }
    }
}

/// What kind of object an inode is. The numeric values are on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileKind {
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl FileKind {
    pub fn from_u8(v: u8) -> Option<FileKind> {
        Some(match v {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ptr_round_trips_in_32_bytes() {
        let p = BlockPtr {
            addr: BlockAddr(0x0102_0304_0506_0708),
            birth: CpNumber(42),
            hash: Hash128::of(b"abc"),
        };
        let mut buf = [0u8; BlockPtr::SIZE];
        p.encode(&mut buf);
        assert_eq!(BlockPtr::decode(&buf), p);
        assert!(!p.is_null());
        assert!(BlockPtr::NULL.is_null());
    }

    #[test]
    fn timestamps_before_1970_round_trip_through_system_time() {
        for ts in [
            Timestamp::new(-5, 250),
            Timestamp::new(0, 0),
            Timestamp::new(1_700_000_000, 999_999_999),
        ] {
            assert_eq!(Timestamp::from_system_time(ts.to_system_time()), ts);
        }
    }
}
