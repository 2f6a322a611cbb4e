//! The handshake: protocol version, then a Noise `XXpsk3` handshake (mutual
//! static keys, the shared secret as pre-shared key, fresh ephemeral keys),
//! then the volume's announcement and the peer's resume point, both encrypted.
//!
//! ```text
//! source (initiator)                                     peer (responder)
//!   frame 0  Hello{magic, version}            ──▶  magic or version wrong → Refused
//!   frame 1  NoiseInit{protocol, -> e}        ──▶  protocol unknown → Refused
//!            ◀──  frame 0  NoiseReply{<- e, ee, s, es}
//!   peer's static key not trusted → Refused
//!   frame 2  NoiseFinal{-> s, se, psk, Announce{uuid, blocks}}  ──▶
//!                                   key not trusted / secret differs → Refused
//!            ◀──  frame 1  Authenticated
//!                 (here the peer may lock its directory and decide)
//!            ◀══  frame 2  Admission: Welcome{resume} | Refused{reason}  (sealed)
//!   frame 3… ══▶ sealed Messages ◀══ frame 3…
//! ```
//!
//! The peer spends nothing on a connection beyond a small buffer and the
//! handshake's arithmetic until the source has proved its key and the secret
//! in a message that depends on the peer's fresh ephemeral key, so a recorded
//! handshake cannot be replayed. [`authenticate_source`] stops there and
//! returns an [`Authenticated`] connection; the caller then admits it
//! ([`Authenticated::welcome`]) or refuses it ([`Authenticated::refuse`]).
//! `Hello` and `Refused` never change shape, so every version can read a
//! `Hello` and refuse it with a reason naming both versions; since version 4
//! the `Hello` carries nothing but the magic and the version (its UUID and
//! nonce fields are zeros) and is bound to the Noise handshake as prologue.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::codec;
use crate::error::{Direction, ReplicateError, Result};
use crate::frame::{FrameReader, FrameWriter, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES};
use crate::keys::{Credentials, PublicKey, KEY_BYTES};
use crate::message::clip_reason;
use crate::noise::{self, Suite};
use crate::seal::Channel;
use crate::session::{RecvHalf, SendHalf, Session};

/// Version of this protocol. Both sides must speak the same one (version 4:
/// the Noise channel and the history check).
pub const PROTOCOL_VERSION: u32 = 4;

/// First field of `Hello`: tells a twinfs stream from anything else.
pub const PROTOCOL_MAGIC: [u8; 8] = *b"twinfsRP";

/// Bytes of `Hello`'s `nonce` field (all zeros since version 4).
pub const HANDSHAKE_NONCE_BYTES: usize = 32;

/// Bytes of a volume UUID.
pub const VOLUME_UUID_BYTES: usize = 16;

/// Largest Noise handshake message accepted (ours are about 100 bytes).
pub const MAX_NOISE_HANDSHAKE_BYTES: usize = 512;

/// Longest the peer waits for a connection's first frame, so that idle and
/// slow connections let go of their slot quickly.
pub const FIRST_FRAME_TIMEOUT_MS: u64 = 2_000;

/// Longest a handshake may take (on the peer: until the source is
/// authenticated; on the source: until it is admitted).
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
        /// Zeros since version 4 (the volume's UUID travels encrypted).
        #[serde(with = "serde_bytes")]
        volume_uuid: [u8; VOLUME_UUID_BYTES],
        /// Zeros since version 4 (Noise brings its own randomness).
        #[serde(with = "serde_bytes")]
        nonce: [u8; HANDSHAKE_NONCE_BYTES],
    },
    /// Either way: the sender ends the connection, and says why. Frozen.
    Refused {
        /// Human-readable reason (at most `MAX_REASON_BYTES`).
        reason: String,
    },
    /// Source → peer, frame 1: the Noise protocol name and Noise message 1.
    NoiseInit {
        /// `Noise_XXpsk3_25519_AESGCM_SHA256` or `Noise_XXpsk3_25519_ChaChaPoly_SHA256`.
        protocol: String,
        /// Noise message 1 (`-> e`).
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Peer → source, frame 0: Noise message 2 (`<- e, ee, s, es`).
    NoiseReply {
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Source → peer, frame 2: Noise message 3 (`-> s, se, psk`), whose
    /// payload is an [`Announce`].
    NoiseFinal {
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Peer → source, frame 1: the source is authenticated; frame 2 is the
    /// sealed [`Admission`].
    Authenticated,
}

impl HandshakeMsg {
    fn kind(&self) -> &'static str {
        match self {
            HandshakeMsg::Hello { .. } => "Hello",
            HandshakeMsg::Refused { .. } => "Refused",
            HandshakeMsg::NoiseInit { .. } => "NoiseInit",
            HandshakeMsg::NoiseReply { .. } => "NoiseReply",
            HandshakeMsg::NoiseFinal { .. } => "NoiseFinal",
            HandshakeMsg::Authenticated => "Authenticated",
        }
    }
}

/// Source → peer, the encrypted payload of Noise message 3: the volume this
/// connection mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The volume's UUID.
    #[serde(with = "serde_bytes")]
    pub volume_uuid: [u8; VOLUME_UUID_BYTES],
    /// The volume's size in 4 KiB blocks (the peer's size limit applies to it).
    pub volume_blocks: u64,
}

/// Peer → source, the first sealed frame (frame 2): admitted, with the
/// resume point, or refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// The session begins; the source resumes from `resume`.
    Welcome {
        /// The peer's state.
        resume: ResumePoint,
    },
    /// The peer does not serve this volume now (bound to another, over a
    /// limit, busy with another session, ...).
    Refused {
        /// Why (at most `MAX_REASON_BYTES`).
        reason: String,
    },
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
    /// The cipher of the session.
    pub suite: Suite,
    /// The other side's static key (verified, and trusted by this side).
    pub remote_key: PublicKey,
    /// The volume mirrored on this connection.
    pub volume_uuid: [u8; VOLUME_UUID_BYTES],
    /// Its size in blocks, as the source announced it.
    pub volume_blocks: u64,
    /// The peer's resume point.
    pub resume: ResumePoint,
}

/// Source side: connects the volume to the peer at the other end of
/// `stream`. Fails with [`ReplicateError::Refused`] (the peer's reason),
/// [`ReplicateError::AuthFailed`] (the peer's key is not trusted, or its
/// handshake does not authenticate), [`ReplicateError::VersionMismatch`],
/// [`ReplicateError::HandshakeTimeout`], or a frame error.
pub async fn handshake_client<S>(
    stream: S,
    creds: &Credentials,
    volume_uuid: [u8; VOLUME_UUID_BYTES],
    volume_blocks: u64,
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let announce = Announce {
        volume_uuid,
        volume_blocks,
    };
    let steps = client_steps(stream, creds, announce, Suite::preferred());
    with_timeout(HANDSHAKE_TIMEOUT_MS, steps).await
}

/// [`handshake_client`] with a given cipher suite (tests, and the downgrade
/// tests' client).
#[doc(hidden)]
pub async fn handshake_client_with_suite<S>(
    stream: S,
    creds: &Credentials,
    volume_uuid: [u8; VOLUME_UUID_BYTES],
    volume_blocks: u64,
    suite: Suite,
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let announce = Announce {
        volume_uuid,
        volume_blocks,
    };
    with_timeout(
        HANDSHAKE_TIMEOUT_MS,
        client_steps(stream, creds, announce, suite),
    )
    .await
}

/// A source connection the peer has authenticated, waiting for its verdict.
pub struct Authenticated<S> {
    reader: FrameReader<ReadHalf<S>>,
    writer: FrameWriter<WriteHalf<S>>,
    channel: Arc<Channel>,
    source_key: PublicKey,
    announce: Announce,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Authenticated<S> {
    /// The source's static key.
    pub fn source_key(&self) -> PublicKey {
        self.source_key
    }

    /// The volume the source announced.
    pub fn announce(&self) -> Announce {
        self.announce
    }

    /// Admits the source: sends the sealed `Welcome` with `resume` and
    /// returns the session.
    pub async fn welcome(self, resume: ResumePoint) -> Result<(Session<S>, HandshakeInfo)> {
        let info = HandshakeInfo {
            version: PROTOCOL_VERSION,
            suite: self.channel.suite(),
            remote_key: self.source_key,
            volume_uuid: self.announce.volume_uuid,
            volume_blocks: self.announce.volume_blocks,
            resume,
        };
        let (mut tx, rx) = self.into_halves();
        tx.send_sealed(&Admission::Welcome { resume }, "Welcome")
            .await?;
        Ok((Session::new(tx, rx), info))
    }

    /// Refuses the source with `err` (its reason goes sealed to the source),
    /// and returns `err`.
    pub async fn refuse(self, err: ReplicateError) -> ReplicateError {
        let reason = clip_reason(&reason_for_other_side(Direction::PeerToSource, &err));
        let (mut tx, _rx) = self.into_halves();
        if tx
            .send_sealed(&Admission::Refused { reason }, "Refused")
            .await
            .is_ok()
        {
            let _ = tx.shutdown().await;
        }
        err
    }

    fn into_halves(self) -> (SendHalf<WriteHalf<S>>, RecvHalf<ReadHalf<S>>) {
        let mut reader = self.reader;
        reader.set_max_frame_bytes(MAX_FRAME_BYTES);
        (
            SendHalf::new(self.writer, self.channel.clone()),
            RecvHalf::new(reader, self.channel),
        )
    }
}

/// Peer side, first step: runs the handshake with the source at the other
/// end of `stream` until the source has proved a trusted key and the secret.
/// The first frame must arrive within `FIRST_FRAME_TIMEOUT_MS`, the rest
/// within `HANDSHAKE_TIMEOUT_MS`; until it returns, the connection holds
/// only buffers of at most `MAX_HANDSHAKE_FRAME_BYTES`.
pub async fn authenticate_source<S>(stream: S, creds: &Credentials) -> Result<Authenticated<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(HANDSHAKE_TIMEOUT_MS, server_steps(stream, creds)).await
}

/// Peer side, both steps with a binding policy: `accept_uuid` gets the
/// announced volume UUID once the source is authenticated and returns the
/// reason to refuse it, if any; `resume` goes to an admitted source.
pub async fn handshake_server<S, F>(
    stream: S,
    creds: &Credentials,
    resume: ResumePoint,
    accept_uuid: F,
) -> Result<(Session<S>, HandshakeInfo)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce([u8; VOLUME_UUID_BYTES]) -> Result<(), String>,
{
    let source = authenticate_source(stream, creds).await?;
    let uuid = source.announce().volume_uuid;
    match accept_uuid(uuid) {
        Ok(()) => source.welcome(resume).await,
        Err(reason) => {
            let err = ReplicateError::VolumeRefused {
                uuid: twinfs_fs::hex(&uuid),
                reason: clip_reason(&reason),
            };
            Err(source.refuse(err).await)
        }
    }
}

async fn with_timeout<T>(
    limit_ms: u64,
    steps: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let limit = std::time::Duration::from_millis(limit_ms);
    tokio::time::timeout(limit, steps)
        .await
        .unwrap_or(Err(ReplicateError::HandshakeTimeout { after_ms: limit_ms }))
}

fn hello() -> HandshakeMsg {
    HandshakeMsg::Hello {
        magic: PROTOCOL_MAGIC,
        version: PROTOCOL_VERSION,
        volume_uuid: [0; VOLUME_UUID_BYTES],
        nonce: [0; HANDSHAKE_NONCE_BYTES],
    }
}

/// A Noise failure outside of authentication (a bug or an exhausted random
/// source; the connection ends).
fn noise_failure(step: &str, e: snow::Error) -> ReplicateError {
    ReplicateError::Protocol(format!("the Noise handshake failed at {step}: {e}"))
}

async fn client_steps<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    creds: &Credentials,
    announce: Announce,
    suite: Suite,
) -> Result<(Session<S>, HandshakeInfo)> {
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r, Direction::PeerToSource);
    reader.set_max_frame_bytes(MAX_HANDSHAKE_FRAME_BYTES);
    let mut writer = FrameWriter::new(w, Direction::SourceToPeer);

    let hello_body = codec::encode(&hello())?;
    let mut noise = noise::handshake_state(suite, creds, &hello_body, true)
        .map_err(|e| noise_failure("its start", e))?;
    let mut buf = [0u8; MAX_NOISE_HANDSHAKE_BYTES];
    let n = noise
        .write_message(&[], &mut buf)
        .map_err(|e| noise_failure("message 1", e))?;
    writer.write_frame(&hello_body).await?;
    let init = HandshakeMsg::NoiseInit {
        protocol: suite.protocol_name().to_string(),
        message: buf[..n].to_vec(),
    };
    send_plain(&mut writer, &init).await?;

    let reply = match recv_plain(&mut reader).await? {
        HandshakeMsg::NoiseReply { message } => message,
        other => return Err(unexpected(&mut writer, "NoiseReply", other).await),
    };
    if noise.read_message(&reply, &mut buf).is_err() {
        let err = ReplicateError::AuthFailed(
            "the peer's handshake reply does not authenticate: it was altered on the way, or the other end is not a twinfs peer of this version".into(),
        );
        return Err(refuse(&mut writer, err).await);
    }
    let peer_key = remote_key(&noise).ok_or_else(|| {
        ReplicateError::Protocol("the peer's handshake reply carries no static key".into())
    })?;
    if !creds.trusted().contains(&peer_key) {
        let err = ReplicateError::AuthFailed(format!(
            "the peer presented key {peer_key}, which is not among this source's trusted keys (--trusted-keys); if that is the peer's new key, add its KEY.pub line there, otherwise something else answers at the peer's address"
        ));
        return Err(refuse(&mut writer, err).await);
    }
    let payload = codec::encode(&announce)?;
    let n = noise
        .write_message(&payload, &mut buf)
        .map_err(|e| noise_failure("message 3", e))?;
    send_plain(
        &mut writer,
        &HandshakeMsg::NoiseFinal {
            message: buf[..n].to_vec(),
        },
    )
    .await?;
    let transport = noise
        .into_stateless_transport_mode()
        .map_err(|e| noise_failure("the switch to transport", e))?;

    match recv_plain(&mut reader).await? {
        HandshakeMsg::Authenticated => {}
        other => return Err(unexpected(&mut writer, "Authenticated", other).await),
    }
    // Authenticated: session frames may be as large as the protocol allows.
    reader.set_max_frame_bytes(MAX_FRAME_BYTES);
    let channel = Arc::new(Channel::new(transport, suite));
    let tx = SendHalf::new(writer, channel.clone());
    let mut rx = RecvHalf::new(reader, channel);
    match rx.recv_sealed_as::<Admission>().await? {
        Admission::Welcome { resume } => {
            let info = HandshakeInfo {
                version: PROTOCOL_VERSION,
                suite,
                remote_key: peer_key,
                volume_uuid: announce.volume_uuid,
                volume_blocks: announce.volume_blocks,
                resume,
            };
            Ok((Session::new(tx, rx), info))
        }
        Admission::Refused { reason } => Err(ReplicateError::Refused {
            reason: clip_reason(&reason),
        }),
    }
}

async fn server_steps<S>(stream: S, creds: &Credentials) -> Result<Authenticated<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r, Direction::SourceToPeer);
    reader.set_max_frame_bytes(MAX_HANDSHAKE_FRAME_BYTES);
    let mut writer = FrameWriter::new(w, Direction::PeerToSource);

    let first = std::time::Duration::from_millis(FIRST_FRAME_TIMEOUT_MS);
    let hello_body = match tokio::time::timeout(first, reader.read_frame()).await {
        Err(_) => {
            return Err(ReplicateError::HandshakeTimeout {
                after_ms: FIRST_FRAME_TIMEOUT_MS,
            })
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => {
            return Err(ReplicateError::ConnectionClosed {
                direction: Direction::SourceToPeer,
                frame: 0,
            })
        }
        Ok(Ok(Some(body))) => body.to_vec(),
    };
    let hello: HandshakeMsg =
        codec::decode(&hello_body).map_err(|fault| ReplicateError::Frame {
            direction: Direction::SourceToPeer,
            frame: 0,
            fault,
        })?;
    match hello {
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
        HandshakeMsg::Hello { .. } => {}
        HandshakeMsg::Refused { reason } => {
            return Err(ReplicateError::Refused {
                reason: clip_reason(&reason),
            })
        }
        other => return Err(unexpected(&mut writer, "Hello", other).await),
    }

    let (suite, init) = match recv_plain(&mut reader).await? {
        HandshakeMsg::NoiseInit { protocol, message } => match Suite::from_protocol_name(&protocol)
        {
            Some(suite) => (suite, message),
            None => {
                let err = ReplicateError::Protocol(format!(
                    "the source asks for the Noise protocol {:?}; this peer speaks {} and {}",
                    clip_reason(&protocol),
                    noise::NOISE_AESGCM,
                    noise::NOISE_CHACHAPOLY
                ));
                return Err(refuse(&mut writer, err).await);
            }
        },
        other => return Err(unexpected(&mut writer, "NoiseInit", other).await),
    };
    let mut noise = noise::handshake_state(suite, creds, &hello_body, false)
        .map_err(|e| noise_failure("its start", e))?;
    let mut buf = [0u8; MAX_NOISE_HANDSHAKE_BYTES];
    if noise.read_message(&init, &mut buf).is_err() {
        // Its tag covers the prologue (the Hello) and the protocol name.
        let err = ReplicateError::AuthFailed(
            "the source's first handshake message does not check: the Hello or the protocol name was altered on the way (tampering or a downgrade attempt), or the other end is not a twinfs source of this version".into(),
        );
        return Err(refuse(&mut writer, err).await);
    }
    let n = noise
        .write_message(&[], &mut buf)
        .map_err(|e| noise_failure("message 2", e))?;
    send_plain(
        &mut writer,
        &HandshakeMsg::NoiseReply {
            message: buf[..n].to_vec(),
        },
    )
    .await?;

    let last = match recv_plain(&mut reader).await? {
        HandshakeMsg::NoiseFinal { message } => message,
        other => return Err(unexpected(&mut writer, "NoiseFinal", other).await),
    };
    let read = noise.read_message(&last, &mut buf);
    let source_key = remote_key(&noise);
    let trusted = source_key.is_some_and(|k| creds.trusted().contains(&k));
    let payload_len = match (read, source_key) {
        (Ok(n), Some(_)) if trusted => n,
        (_, Some(key)) if !trusted => {
            let err = ReplicateError::AuthFailed(format!(
                "the source's key {key} is not among this peer's trusted keys (--trusted-keys); add the source's KEY.pub line there"
            ));
            return Err(refuse(&mut writer, err).await);
        }
        (Err(_), Some(key)) => {
            let err = ReplicateError::AuthFailed(format!(
                "the source (key {key}) did not prove the shared secret: its --secret file differs from this peer's (or it does not hold that key); copy the same secret file to both machines"
            ));
            return Err(refuse(&mut writer, err).await);
        }
        _ => {
            let err = ReplicateError::AuthFailed(
                "the source's last handshake message does not authenticate (altered on the way)"
                    .into(),
            );
            return Err(refuse(&mut writer, err).await);
        }
    };
    let source_key = source_key.expect("checked above");
    let announce: Announce =
        codec::decode(&buf[..payload_len]).map_err(|fault| ReplicateError::Frame {
            direction: Direction::SourceToPeer,
            frame: 2,
            fault,
        })?;
    let transport = noise
        .into_stateless_transport_mode()
        .map_err(|e| noise_failure("the switch to transport", e))?;
    send_plain(&mut writer, &HandshakeMsg::Authenticated).await?;
    Ok(Authenticated {
        reader,
        writer,
        channel: Arc::new(Channel::new(transport, suite)),
        source_key,
        announce,
    })
}

fn remote_key(noise: &snow::HandshakeState) -> Option<PublicKey> {
    let key = noise.get_remote_static()?;
    let key: [u8; KEY_BYTES] = key.try_into().ok()?;
    Some(PublicKey(key))
}

async fn send_plain<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    msg: &HandshakeMsg,
) -> Result<usize> {
    let body = codec::encode(msg)?;
    writer.write_frame(&body).await
}

/// Reads one plaintext handshake frame. A `Refused` becomes [`ReplicateError::Refused`].
async fn recv_plain<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<HandshakeMsg> {
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
        HandshakeMsg::Refused { reason } => Err(ReplicateError::Refused {
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
    log::debug!("replication handshake refused: {reason}");
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
        ReplicateError::AuthFailed(why) => format!("the {we} refuses: {why}"),
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
