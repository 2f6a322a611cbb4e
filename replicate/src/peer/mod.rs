//! The peer side of mirroring (`twinfs peer --dir DIR`): it keeps the replica.
//!
//! The peer receives the source's NVLOG batches as numbered transfers and keeps
//! them durably in a log store indexed by transfer ID (the patent's claim 15);
//! at each consistency point it rebuilds every block the source sends — from
//! the bytes themselves, from a reference into a stored transfer, from a recipe
//! or from a delta over its own previous image — verifies each block's hash,
//! and commits the CP into its mirror image, which is a twinfs volume with the
//! same block addresses as the source's. The mirror can be mounted read-only
//! while it is updated, and promoted into a read-write volume if the source is
//! lost.
//!
//! # The directory (`DIR`)
//!
//! ```text
//! DIR/lock          empty; flock'ed exclusively by the daemon (and by promote)
//! DIR/state         JSON: format, bound volume UUID, promoted flag (atomic: tmp+fsync+rename+fsync DIR)
//! DIR/mirror.img    the mirror: a twinfs image, block for block at the source's addresses (sparse)
//! DIR/log/NNNNNNNNNNNNNNNNNNNN.seg   log store segments (see `logstore`)
//! DIR/journal       staged blocks + commit record of the CP being committed (see `journal`); absent between CPs
//! DIR/status.json   what `twinfs status --dir DIR` shows (see `status`)
//! ```
//!
//! `replicate/PEER.md` draws the byte layouts and explains why a kill at any
//! moment leaves the mirror at the previous CP or the new one.
//!
//! # Modules
//!
//! - [`logstore`]: segment files of transfers, index transfer ID → location.
//! - [`image`]: the mirror image file: blocks, superblock slots, blocks in use.
//! - [`journal`]: staging of blocks that would overwrite the current image.
//! - [`apply`]: rebuilding one block from its encoding.
//! - [`replica`]: the state machine that answers the source's messages.
//! - [`daemon`]: the TCP listener and sessions.
//! - [`status`]: `status.json` and `twinfs status --dir`.
//! - [`promote`]: turning the replica into a read-write volume.
//! - [`failback`]: a former source turned replica, and resolving a divergence.

pub mod apply;
pub mod daemon;
pub mod failback;
pub mod image;
pub mod journal;
pub mod limits;
pub mod logstore;
pub mod promote;
pub mod replica;
pub mod state;
pub mod status;

use std::path::PathBuf;

use twinfs_fs::FsError;

pub use daemon::{PeerConfig, PeerDaemon, ShutdownHandle, Takeover};
pub use failback::{failback, resolve_keep_as, resolve_keep_replica, FailedBack, KeptAside};
pub use limits::PeerLimits;
pub use promote::{promote, Promoted};
pub use replica::{CommitStep, Judge, Replica, ReplicaView, SwitchoverRequest};
pub use status::{peer_status, PeerStatus};

/// File name of the mirror image inside `DIR`.
pub const IMAGE_FILE: &str = "mirror.img";
/// Directory of the log store inside `DIR`.
pub const LOG_DIR: &str = "log";
/// File name of the state file inside `DIR`.
pub const STATE_FILE: &str = "state";
/// File name of the staging journal inside `DIR`.
pub const JOURNAL_FILE: &str = "journal";
/// File name of the status file inside `DIR`.
pub const STATUS_FILE: &str = "status.json";
/// File name of the lock file inside `DIR`.
pub const LOCK_FILE: &str = "lock";

/// Errors of the peer daemon, its storage and promote.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The operating system failed an operation on the peer's files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer directory cannot be used as asked (locked, promoted, bound to another volume, damaged).
    #[error("peer directory {dir}: {problem}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The source sent something this peer cannot accept; the session ends.
    #[error("the source sent an invalid stream: {0}")]
    Protocol(String),
    /// The source went past a limit of this peer (`limits`); the session ends.
    #[error("the source exceeds a limit of this peer: {0}")]
    OverLimit(String),
    /// The source went away (closed the connection, fell silent); it reconnects and resumes.
    #[error("the source went away: {0}; it will reconnect and resume")]
    Disconnected(String),
    /// The volume layer failed (reading the mirror image, promote).
    #[error("{what}: {source}")]
    Volume {
        /// What was being done.
        what: String,
        /// The volume error.
        #[source]
        source: FsError,
    },
    /// The replication layer failed (listener, handshake, session).
    #[error(transparent)]
    Replicate(#[from] crate::error::ReplicateError),
    /// A test asked the commit to stop after a step, as a kill would.
    #[error("commit stopped after {0:?} (simulated crash)")]
    SimulatedCrash(CommitStep),
}

impl PeerError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> PeerError {
        PeerError::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps a volume error with what was being done.
    pub fn volume(what: impl Into<String>, source: FsError) -> PeerError {
        PeerError::Volume {
            what: what.into(),
            source,
        }
    }

    /// True when the peer's own storage failed (rather than the source's
    /// stream): the replica must be recovered from disk before it serves again.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            PeerError::Io { .. } | PeerError::Volume { .. } | PeerError::SimulatedCrash(_)
        )
    }
}

/// Result alias of the peer.
pub type Result<T, E = PeerError> = std::result::Result<T, E>;

/// Parses lower-case or upper-case hex into exactly `N` bytes.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}
