//! twinfs-replicate: mirroring of a twinfs volume to a peer.
//!
//! This layer is the wire protocol (see `replicate/PROTOCOL.md`): length-prefixed
//! MessagePack [`frame`]s, the [`message`]s, a Noise `XXpsk3` [`handshake`] with
//! static [`keys`] on both sides and a shared [`secret`] as second factor, and a
//! [`session`] whose frames are sealed with the Noise transport ciphers
//! (AES-256-GCM or ChaCha20-Poly1305, [`seal`]). [`fault`] injects network faults
//! for tests.

pub mod codec;
pub mod encode;
pub mod error;
pub mod fault;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod keys;
pub mod message;
pub mod noise;
pub mod peer;
pub mod planted;
pub mod relay;
pub mod seal;
pub mod secret;
pub mod session;
pub mod sim;
pub mod source;

pub use error::{Direction, FrameFault, ReplicateError, Result};
pub use handshake::{
    authenticate_source, handshake_client, handshake_server, AppliedCp, Authenticated,
    HandshakeInfo, ResumePoint, PROTOCOL_VERSION,
};
pub use keys::{Credentials, KeyPaths, PublicKey, StaticKey, TrustedKeys};
pub use message::{Base, CpBlock, DeltaRange, Encoding, Message, Patch};
pub use noise::Suite;
pub use secret::Secret;
pub use session::{Compression, RecvHalf, SendHalf, Session};
