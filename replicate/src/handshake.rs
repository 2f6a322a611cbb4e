//! The handshake: protocol version, volume UUID, mutual proof of the shared secret,
//! and the peer's resume point.
//!
//! ```text
//! source (client)                                   peer (server)
//!   frame 0  Hello{magic, version, uuid, nonce_s} ──▶  version or magic wrong → Refused
//!            ◀── Challenge{version, nonce_p}           frame 0
//!   frame 1  ClientProof{proof_s}               ──▶  proof wrong → Refused (secret)
//!                                                     uuid refused → Refused (policy)
//!            ◀── Accepted{proof_p}                     frame 1
//!   proof wrong → Refused, stop
//!            ◀══ Welcome{resume}  (sealed)             frame 2
//!   frame 2… ══▶ sealed Messages ◀══                   frame 3…
//! ```
//!
//! The source proves first, so anyone can connect to the listening peer and learn only
//! a random nonce and a refusal. All handshake frames but `Welcome` are plaintext
//! MessagePack of [`HandshakeMsg`]; `Hello` and `Refused` never change shape, so every
//! version can read a `Hello` and refuse it with a reason.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec;
use crate::error::{Direction, ReplicateError, Result};
use crate::frame::{FrameReader, FrameWriter, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES};
use crate::kdf::{self, Transcript};
use crate::message::clip_reason;
use crate::secret::Secret;
use crate::session::{RecvHalf, SendHalf, Session};

/// Version of this protocol. Both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 4;

/// First field of `Hello`: tells a twinfs stream from anything else.
pub const PROTOCOL_MAGIC: [u8; 8] = *b"twinfsRP";

/// Bytes of each side's random handshake nonce.
pub const HANDSHAKE_NONCE_BYTES: usize = 32;

/// Bytes of a proof (a blake3 keyed hash).
pub const PROOF_BYTES: usize = 32;

/// Bytes of a volume UUID.
pub const VOLUME_UUID_BYTES: usize = 16;

/// Longest a handshake may take, so a silent or slow connector cannot hold a peer's
/// connection slot.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Plaintext handshake messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Source → peer, frame 0. Frozen: its shape never changes.
    Hello {
        /// `PROTOCOL_MAGIC`.
        #[serde(with = "serde_bytes")]
        magic: [u8; 8],
        /// The source's `PROTOCOL_VERSION`.
        version: u32,
        /// UUID of the volume the source mirrors.
        #[serde(with = "serde_bytes")]
        volume_uuid: [u8; VOLUME_UUID_BYTES],
        /// The source's fresh random nonce.
        #[serde(with = "serde_bytes")]
        nonce: [u8; HANDSHAKE_NONCE_BYTES],
    },
    /// Either way: the sender ends the connection, and says why. Frozen.
    Refused {
        /// Human-readable reason (at most `MAX_REASON_BYTES`).
        reason: String,
    },
    /// Peer → source, frame 0.
    Challenge {
        /// The peer's `PROTOCOL_VERSION` (equal to the source's, or it would have refused).
        version: u32,
        /// The peer's fresh random nonce.
        #[serde(with = "serde_bytes")]
        nonce: [u8; HANDSHAKE_NONCE_BYTES],
    },
    /// Source → peer, frame 1: keyed hash of the transcript under the source-proof key.
    ClientProof {
        /// The proof.
        #[serde(with = "serde_bytes")]
        proof: [u8; PROOF_BYTES],
    },
    /// Peer → source, frame 1: the peer accepts, and proves the secret in turn.
    Accepted {
        /// The proof.
        #[serde(with = "serde_bytes")]
        proof: [u8; PROOF_BYTES],
    },
}

impl HandshakeMsg {
    fn kind(&self) -> &'static str {
        match self {
            HandshakeMsg::Hello { .. } => "Hello",
            HandshakeMsg::Refused { .. } => "Refused",
            HandshakeMsg::Challenge { .. } => "Challenge",
            HandshakeMsg::ClientProof { .. } => "ClientProof",
            HandshakeMsg::Accepted { .. } => "Accepted",
        }
    }
}

/// Peer → source, the first sealed frame (frame 2): where the source resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The peer's state.
    pub resume: ResumePoint,
}

/// What the peer already holds, so the source sends only what follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The last CP the peer applied and committed; `None` for a new, empty peer
    /// (the source then resyncs from nothing).
    pub applied_cp: Option<AppliedCp>,
    /// Every transfer with an ID `<=` this is durable in the peer's log store
    /// (`NO_TRANSFER` if none).
    pub durable_transfer: u64,
}

/// A CP applied at the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedCp {
    /// CP number.
    pub cp: u64,
    /// Its root hash at the peer; the source compares it with its own record of that CP.
    #[serde(with = "serde_bytes")]
    pub root_hash: [u8; 32],
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The protocol version both speak.
    pub version: u32,
    /// The volume mirrored on this connection.
    pub volume_uuid: [u8; VOLUME_UUID_BYTES],
    /// The peer's resume point.
    pub resume: ResumePoint,
}

/// Source side: connects the volume `volume_uuid` to the peer at the other end of
/// `stream`. Fails with [`ReplicateError::Refused`] (the peer's reason),
/// [`ReplicateError::AuthFailed`] (the peer did not prove the secret),
/// [`ReplicateError::VersionMismatch`], [`ReplicateError::HandshakeTimeout`], or a
/// frame error.
pub async fn handshake_client<S>(
    stream: S,
    secret: &Secret,
    volume_uuid: [u8; VOLUME_UUID_BYTES],
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(client_steps(stream, secret, volume_uuid, random_nonce())).await
}

/// Peer side: answers the source at the other end of `stream`. `accept_uuid` is the
/// peer's binding policy: it gets the announced volume UUID (only once the source has
/// proved the secret) and returns the reason to refuse it, if any. `resume` is sent to
/// the source once it is accepted.
pub async fn handshake_server<S, F>(
    stream: S,
    secret: &Secret,
    resume: ResumePoint,
    accept_uuid: F,
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce([u8; VOLUME_UUID_BYTES]) -> Result<(), String>,
{
    with_timeout(server_steps(
        stream,
        secret,
        resume,
        accept_uuid,
        random_nonce(),
    ))
    .await
}

async fn with_timeout<T>(steps: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let limit = std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    tokio::time::timeout(limit, steps)
        .await
        .unwrap_or(Err(ReplicateError::HandshakeTimeout {
            after_ms: HANDSHAKE_TIMEOUT_MS,
        }))
}

fn random_nonce() -> [u8; HANDSHAKE_NONCE_BYTES] {
    let mut nonce = [0u8; HANDSHAKE_NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

async fn client_steps<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    secret: &Secret,
    volume_uuid: [u8; VOLUME_UUID_BYTES],
    nonce: [u8; HANDSHAKE_NONCE_BYTES],
) -> Result<(Session<S>, HandshakeInfo)> {
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r, Direction::PeerToSource);
    reader.set_max_frame_bytes(MAX_HANDSHAKE_FRAME_BYTES);
    let mut writer = FrameWriter::new(w, Direction::SourceToPeer);
    let hello = HandshakeMsg::Hello {
        magic: PROTOCOL_MAGIC,
        version: PROTOCOL_VERSION,
        volume_uuid,
        nonce,
    };
    send_plain(&mut writer, &hello).await?;

    let peer_nonce = match recv_plain(&mut reader, "Challenge").await? {
        HandshakeMsg::Challenge { version, nonce } if version == PROTOCOL_VERSION => nonce,
        HandshakeMsg::Challenge { version, .. } => {
            let err = ReplicateError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            };
            return Err(refuse(&mut writer, err).await);
        }
        other => return Err(unexpected(&mut writer, "Challenge", other).await),
    };
    let t = Transcript::new(
        &PROTOCOL_MAGIC,
        PROTOCOL_VERSION,
        &volume_uuid,
        &nonce,
        &peer_nonce,
    );
    let proof = kdf::source_proof(secret, &t);
    send_plain(&mut writer, &HandshakeMsg::ClientProof { proof }).await?;

    match recv_plain(&mut reader, "Accepted").await? {
        HandshakeMsg::Accepted { proof }
            if kdf::proof_matches(&kdf::peer_proof(secret, &t), &proof) => {}
        HandshakeMsg::Accepted { .. } => {
            let err = ReplicateError::AuthFailed(
                "the peer did not prove it knows the shared secret: it is not the configured peer, or its --secret file differs from this one".into(),
            );
            return Err(refuse(&mut writer, err).await);
        }
        other => return Err(unexpected(&mut writer, "Accepted", other).await),
    }

    // Authenticated: session frames may be as large as the protocol allows.
    reader.set_max_frame_bytes(MAX_FRAME_BYTES);
    let tx = SendHalf::new(
        writer,
        &kdf::session_key(secret, &t, Direction::SourceToPeer),
    );
    let mut rx = RecvHalf::new(
        reader,
        &kdf::session_key(secret, &t, Direction::PeerToSource),
    );
    let welcome: Welcome = rx.recv_sealed_as().await?;
    let info = HandshakeInfo {
        version: PROTOCOL_VERSION,
        volume_uuid,
        resume: welcome.resume,
    };
    Ok((Session::new(tx, rx), info))
}

async fn server_steps<S, F>(
    stream: S,
    secret: &Secret,
    resume: ResumePoint,
    accept_uuid: F,
    nonce: [u8; HANDSHAKE_NONCE_BYTES],
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce([u8; VOLUME_UUID_BYTES]) -> Result<(), String>,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r, Direction::SourceToPeer);
    reader.set_max_frame_bytes(MAX_HANDSHAKE_FRAME_BYTES);
    let mut writer = FrameWriter::new(w, Direction::PeerToSource);

    let (volume_uuid, source_nonce) = match recv_plain(&mut reader, "Hello").await? {
        HandshakeMsg::Hello { magic, .. } if magic != PROTOCOL_MAGIC => {
            let err = ReplicateError::UnexpectedMessage {
                expected: "a twinfs Hello",
                got: "a Hello without the twinfs magic".into(),
            };
            return Err(refuse(&mut writer, err).await);
        }
        HandshakeMsg::Hello { version, .. } if version != PROTOCOL_VERSION => {
            let err = ReplicateError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            };
            return Err(refuse(&mut writer, err).await);
        }
        HandshakeMsg::Hello {
            volume_uuid, nonce, ..
        } => (volume_uuid, nonce),
        other => return Err(unexpected(&mut writer, "Hello", other).await),
    };
    let challenge = HandshakeMsg::Challenge {
        version: PROTOCOL_VERSION,
        nonce,
    };
    send_plain(&mut writer, &challenge).await?;

    let t = Transcript::new(
        &PROTOCOL_MAGIC,
        PROTOCOL_VERSION,
        &volume_uuid,
        &source_nonce,
        &nonce,
    );
    match recv_plain(&mut reader, "ClientProof").await? {
        HandshakeMsg::ClientProof { proof }
            if kdf::proof_matches(&kdf::source_proof(secret, &t), &proof) => {}
        HandshakeMsg::ClientProof { .. } => {
            let err = ReplicateError::AuthFailed(
                "the source did not prove it knows the shared secret: its --secret file differs from this peer's; copy the same file to both machines".into(),
            );
            return Err(refuse(&mut writer, err).await);
        }
        other => return Err(unexpected(&mut writer, "ClientProof", other).await),
    }
    if let Err(reason) = accept_uuid(volume_uuid) {
        let err = ReplicateError::VolumeRefused {
            uuid: twinfs_fs::hex(&volume_uuid),
            reason: clip_reason(&reason),
        };
        return Err(refuse(&mut writer, err).await);
    }
    let proof = kdf::peer_proof(secret, &t);
    send_plain(&mut writer, &HandshakeMsg::Accepted { proof }).await?;

    reader.set_max_frame_bytes(MAX_FRAME_BYTES);
    let mut tx = SendHalf::new(
        writer,
        &kdf::session_key(secret, &t, Direction::PeerToSource),
    );
    let rx = RecvHalf::new(
        reader,
        &kdf::session_key(secret, &t, Direction::SourceToPeer),
    );
    tx.send_sealed(&Welcome { resume }, "Welcome").await?;
    let info = HandshakeInfo {
        version: PROTOCOL_VERSION,
        volume_uuid,
        resume,
    };
    Ok((Session::new(tx, rx), info))
}

async fn send_plain<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    msg: &HandshakeMsg,
) -> Result<usize> {
    let body = codec::encode(msg)?;
    writer.write_frame(&body).await
}

/// Reads one plaintext handshake frame. A `Refused` becomes [`ReplicateError::Refused`]
/// unless `expected` is itself "Refused" (never the case today).
async fn recv_plain<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    expected: &'static str,
) -> Result<HandshakeMsg> {
    let direction = reader.direction();
    let frame = reader.frames_read();
    let body = reader
        .read_frame()
        .await?
        .ok_or(ReplicateError::ConnectionClosed { direction, frame })?;
    let msg: HandshakeMsg = codec::decode(body).map_err(|fault| ReplicateError::Frame {
        direction,
        frame,
        fault,
    })?;
    match msg {
        HandshakeMsg::Refused { reason } if expected != "Refused" => Err(ReplicateError::Refused {
            reason: clip_reason(&reason),
        }),
        msg => Ok(msg),
    }
}

/// Tells the other side why we stop (best effort: it may be gone), then returns `err`.
async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    err: ReplicateError,
) -> ReplicateError {
    let reason = clip_reason(&reason_for_other_side(writer.direction(), &err));
    log::warn!("replication handshake refused: {reason}");
    if send_plain(writer, &HandshakeMsg::Refused { reason })
        .await
        .is_ok()
    {
        let _ = writer.shutdown().await;
    }
    err
}

/// The refusal as the other side should read it (our error speaks from our side).
fn reason_for_other_side(our_direction: Direction, err: &ReplicateError) -> String {
    let we = match our_direction {
        Direction::SourceToPeer => "source",
        Direction::PeerToSource => "peer",
    };
    match err {
        ReplicateError::VersionMismatch { ours, theirs } => format!(
            "the {we} speaks protocol version {ours}, not {theirs}; install the same twinfs release on both machines"
        ),
        ReplicateError::AuthFailed(_) => format!(
            "the {we} refuses: the shared secret did not match; copy the same --secret file to both machines"
        ),
        other => format!("the {we} refuses: {other}"),
    }
}

async fn unexpected<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    expected: &'static str,
    got: HandshakeMsg,
) -> ReplicateError {
    let err = ReplicateError::UnexpectedMessage {
        expected,
        got: got.kind().to_string(),
    };
    refuse(writer, err).await
}
