//! The one error type of the volume, and its errno.

use crate::types::BlockAddr;

/// Everything the volume can fail with. Each variant maps to one errno
/// ([`FsError::errno`]); messages name what failed and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long (limit {limit} bytes)")]
    NameTooLong { limit: usize },
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no space left on the volume")]
    NoSpace,
    #[error("file too large (limit {limit} bytes)")]
    FileTooBig { limit: u64 },
    #[error("too many links")]
    TooManyLinks,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value too large (limit {limit} bytes)")]
    AttrTooBig { limit: usize },
    #[error("operation not permitted")]
    NotPermitted,
    #[error("read-only file system")]
    ReadOnly,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("corrupt block {addr}: {what}; run `twinfs fsck` on the image")]
    Corrupt { addr: BlockAddr, what: String },
    #[error("corrupt volume: {0}; run `twinfs fsck` on the image")]
    CorruptVolume(String),
    /// Neither superblock slot holds the twinfs magic: the image was never
    /// made by `twinfs mkfs` (or both slots were overwritten).
    #[error("not a twinfs volume: neither block 0 nor block 1 holds a twinfs superblock")]
    NotAVolume,
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the volume stopped after an earlier failure ({0}); unmount and run `twinfs fsck`")]
    Failed(String),
    #[error("the replica could not make the change durable: {0}")]
    Replication(String),
    #[error("the image is a peer's replica, not a volume: mount it read-only (-o ro), or make it a volume with `twinfs promote DIR` (DIR: the peer's directory) first")]
    ReplicaImage,
}

impl FsError {
    /// The errno reported to the kernel for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong { .. } => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NoSpace => libc::ENOSPC,
            FsError::FileTooBig { .. } => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoAttr => libc::ENODATA,
            FsError::AttrTooBig { .. } => libc::E2BIG,
            FsError::NotPermitted => libc::EPERM,
            FsError::ReadOnly | FsError::ReplicaImage => libc::EROFS,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::Corrupt { .. }
            | FsError::CorruptVolume(_)
            | FsError::NotAVolume
            | FsError::Io { .. }
            | FsError::Failed(_)
            | FsError::Replication(_) => libc::EIO,
        }
    }

    /// An I/O error with a note of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> FsError {
        FsError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn corrupt(addr: BlockAddr, what: impl Into<String>) -> FsError {
        FsError::Corrupt {
            addr,
            what: what.into(),
        }
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;
