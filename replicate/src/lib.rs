//! twinfs-replicate: mirroring of a twinfs volume to a peer.
//!
//! This layer is the wire protocol (see `replicate/PROTOCOL.md`): length-prefixed
//! MessagePack [`frame`]s, the [`message`]s, a [`handshake`] with mutual proof of a
//! shared [`secret`], and a [`session`] whose frames are sealed with
//! ChaCha20-Poly1305 ([`seal`]). [`fault`] injects network faults for tests.

pub mod codec;
pub mod encode;
pub mod error;
pub mod fault;
pub mod frame;
pub mod handshake;
mod kdf;
pub mod message;
pub mod peer;
pub mod relay;
pub mod seal;
pub mod secret;
pub mod session;
pub mod source;

pub use error::{Direction, FrameFault, ReplicateError, Result};
pub use handshake::{
    handshake_client, handshake_server, AppliedCp, HandshakeInfo, ResumePoint, PROTOCOL_VERSION,
};
pub use message::{Base, CpBlock, DeltaRange, Encoding, Message, Patch};
pub use secret::Secret;
pub use session::{RecvHalf, SendHalf, Session};
