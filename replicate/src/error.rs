//! The crate's error type. Every message says what failed and what to do about it,
//! because these errors end up on a person's terminal and in `twinfs status`.

use std::fmt;
use std::path::PathBuf;

/// Result alias for the crate.
pub type Result<T, E = ReplicateError> = std::result::Result<T, E>;

/// Which way a frame travels. The source (the mounted volume) is the client of the
/// connection, the peer (the replica daemon) its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Source (`twinfs mount`) to peer (`twinfs peer`).
    SourceToPeer,
    /// Peer to source.
    PeerToSource,
}

impl Direction {
    /// The opposite direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SourceToPeer => Direction::PeerToSource,
            Direction::PeerToSource => Direction::SourceToPeer,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::SourceToPeer => "source-to-peer",
            Direction::PeerToSource => "peer-to-source",
        })
    }
}

/// What was wrong with one received frame. Carried by [`ReplicateError::Frame`], which
/// adds the direction and the frame number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameFault {
    /// The stream ended inside a frame: the connection died or the frame was cut.
    #[error("the stream ended after {got} of the {expected} bytes of the frame")]
    Truncated {
        /// Bytes of the frame (length prefix included) that arrived.
        got: usize,
        /// Bytes the frame needed (just the length prefix if even that was incomplete).
        expected: usize,
    },
    /// The length prefix is above the limit; nothing was allocated for it.
    #[error("the length prefix announces {len} bytes, above the {max}-byte frame limit (not a twinfs stream, or a corrupted one)")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// `MAX_FRAME_BYTES`.
        max: usize,
    },
    /// A sealed frame too short to hold its sequence number and one tag.
    #[error("the sealed frame has {len} bytes, fewer than the {min} of a sequence number and tag")]
    TooShort {
        /// Body length.
        len: usize,
        /// Minimum body length of a sealed frame.
        min: usize,
    },
    /// An authentic frame of this session whose sequence number is not the one due:
    /// a frame was dropped, replayed, duplicated or reordered on the way.
    #[error("it carries sequence number {got} where {expected} was due ({})", sequence_hint(*.expected, *.got))]
    OutOfSequence {
        /// Sequence number due.
        expected: u64,
        /// Sequence number found.
        got: u64,
    },
    /// An AEAD tag of the frame did not verify: the frame was altered, truncated or forged.
    #[error("its authentication tag does not verify: the frame was altered, truncated or forged in transit")]
    BadTag,
    /// The payload is not MessagePack of the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but breaks a protocol limit (a size, a count, a range).
    #[error("message breaks a protocol limit: {0}")]
    Limit(String),
}

fn sequence_hint(expected: u64, got: u64) -> &'static str {
    if got < expected {
        "an old frame came again: replayed or duplicated"
    } else {
        "frames are missing before it: dropped or reordered"
    }
}

/// Errors of the replication protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The operating system reported an I/O error; `what` says what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done ("reading from the source-to-peer stream", ...).
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The other side broke the protocol's rules above the frame level (a message that
    /// makes no sense at this point of the exchange).
    #[error("protocol error: {0}; reconnect and resume")]
    Protocol(String),

    /// A received frame was rejected. The session is over after this.
    #[error("{direction} frame {frame} rejected: {fault}; the session is over, reconnect and resume from the peer's resume point")]
    Frame {
        /// Which way the frame travelled.
        direction: Direction,
        /// Number of the frame in its direction on this connection, counted from 0
        /// (handshake frames included); equal to its AEAD sequence number once sealed.
        frame: u64,
        /// What was wrong with it.
        fault: FrameFault,
    },

    /// The other side closed the connection cleanly between two frames.
    #[error("the other side closed the connection before {direction} frame {frame}; reconnect if this was not a planned shutdown")]
    ConnectionClosed {
        /// Direction in which no more frames come.
        direction: Direction,
        /// Number of the frame that never came.
        frame: u64,
    },

    /// The two sides speak different protocol versions.
    #[error("protocol version mismatch: this side speaks version {ours}, the other side {theirs}; install the same twinfs release on both machines")]
    VersionMismatch {
        /// Our `PROTOCOL_VERSION`.
        ours: u32,
        /// The version the other side announced.
        theirs: u32,
    },

    /// The other side failed to prove its static key or the shared secret, or
    /// its key is not trusted here.
    #[error("authentication failed: {0}")]
    AuthFailed(String),

    /// This side (the peer) refused the volume the source announced.
    #[error("volume {uuid} refused: {reason}")]
    VolumeRefused {
        /// The volume UUID the source announced, as hex.
        uuid: String,
        /// Why the peer's binding policy refused it.
        reason: String,
    },

    /// The other side refused the connection and said why.
    #[error("the other side refused the connection: {reason}")]
    Refused {
        /// The reason it gave (plaintext, at most `MAX_REASON_BYTES`).
        reason: String,
    },

    /// A well-formed message arrived where the protocol expects another one.
    #[error("protocol error: expected {expected}, received {got}; the other side is confused or not a twinfs peer")]
    UnexpectedMessage {
        /// What the protocol expected at this step.
        expected: &'static str,
        /// What arrived.
        got: String,
    },

    /// The handshake did not finish in time.
    #[error("the handshake did not finish within {after_ms} ms; check that the address is a twinfs peer and that the network works")]
    HandshakeTimeout {
        /// The limit that expired.
        after_ms: u64,
    },

    /// The shared-secret file is unusable.
    #[error("secret file {path}: {problem}")]
    Secret {
        /// The file given with `--secret`.
        path: PathBuf,
        /// What is wrong with it and what to do.
        problem: String,
    },

    /// A key file (`--key`, `--trusted-keys`) is unusable.
    #[error("key file {path}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        problem: String,
    },

    /// A message we were asked to send breaks a protocol limit; nothing was sent
    /// and the session is still usable.
    #[error("refusing to send {what}: {problem}")]
    InvalidOutgoing {
        /// The message kind.
        what: &'static str,
        /// The limit it breaks (split it, or fix the caller).
        problem: String,
    },

    /// An earlier error ended this half of the session.
    #[error("the {direction} half of the session is closed after an earlier error; reconnect and resume")]
    SessionClosed {
        /// Direction of the closed half.
        direction: Direction,
    },

    /// The peer refused the source's history (split brain, or one side went
    /// back in time); nothing was applied. Resolving it takes a person.
    #[error("{kind}: {reason}")]
    Diverged {
        /// `split-brain`, `source-behind` or `peer-behind`.
        kind: &'static str,
        /// What happened and what to do.
        reason: String,
    },

    /// Encoding a message failed (a bug: every message type must encode).
    #[error("encoding a message failed: {0}")]
    Encode(String),
}

impl ReplicateError {
    /// The frame fault inside a [`ReplicateError::Frame`], if this is one.
    pub fn frame_fault(&self) -> Option<&FrameFault> {
        match self {
            ReplicateError::Frame { fault, .. } => Some(fault),
            _ => None,
        }
    }
}
