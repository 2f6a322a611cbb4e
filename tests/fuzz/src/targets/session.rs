//! The Noise channel end to end, through a man in the middle. The two ends
//! shake hands over in-memory pipes through a relay that knows the frames;
//! the input picks the source's credentials (right, another secret, a key
//! the peer does not trust, or not trusting the peer's key) and may have the
//! relay flip one bit of one handshake frame. Checked: both ends succeed
//! exactly when the credentials are right and nothing was altered, each
//! learns the other's static key and the announced volume, and the peer
//! consults its binding policy exactly when the source authenticated.
//!
//! Then the input drives a list of steps, each in either direction: send a
//! message built from the input (see [`crate::arb`]) and deliver it intact,
//! or with a bit flipped, cut short, dropped, replaced by a message frame
//! sent earlier, or by a forged frame; the sender's compression policy and
//! rekey budget come from the input too, so rekey markers (an empty frame,
//! after which the direction's key changes) travel among the messages.
//! Checked against a model of PROTOCOL.md's sealed frames: every frame is
//! numbered in order, and a marker goes out exactly when the sender's key
//! has sealed its budget; the receiver gets exactly the messages sent (a
//! `TransferLz4` as the `Transfer` it stands for) until the first damaged
//! frame, which is reported as the right fault (`BadTag` for altered and
//! forged frames and for frames of another key, `TooShort`,
//! `OutOfSequence` for an authentic frame of this key that is not due,
//! `Malformed`), and after which every receive fails; the sender refuses
//! exactly the messages that break a limit or travel the wrong way, and
//! sends nothing for them.

use std::cell::Cell;
use std::time::Duration;

use arbitrary::Unstructured;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use twinfs_replicate::codec;
use twinfs_replicate::frame::{encode_frame, LEN_PREFIX_BYTES};
use twinfs_replicate::handshake::{
    handshake_client, handshake_server, Admission, AppliedCp, HandshakeInfo, ResumePoint,
};
use twinfs_replicate::message::decompress_transfer;
use twinfs_replicate::seal::{
    sealed_len, NOISE_MAX_MESSAGE_BYTES, SEALED_OVERHEAD_BYTES, SEQ_BYTES, TAG_BYTES,
};
use twinfs_replicate::{
    Compression, Direction, FrameFault, Message, ReplicateError, Result, Session,
};

use crate::arb;
use crate::creds::{self, SourceCreds};
use crate::util::block_on;

/// Most steps one input drives.
const MAX_STEPS: usize = 24;

/// How long a receive may wait (on the paused clock: no real time passes).
const WAIT: Duration = Duration::from_secs(30);

/// The volume the source announces.
const UUID: [u8; 16] = [0xA5; 16];
const BLOCKS: u64 = 1 << 20;
/// What the peer answers.
const RESUME: ResumePoint = ResumePoint {
    applied_cp: Some(AppliedCp {
        cp: 7,
        root_hash: [0x7C; 32],
    }),
    durable_transfer: 41,
};

/// Frames of each direction's handshake (either way: three).
const HANDSHAKE_FRAMES: usize = 3;

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    block_on(session(&mut u));
}

/// A bit the relay flips in one handshake frame.
#[derive(Clone, Copy, Debug)]
struct Tamper {
    toward_peer: bool,
    frame: usize,
    at: usize,
    bit: u8,
}

/// One frame sent in a direction since the handshake.
struct Sent {
    frame: Vec<u8>,
    seq: u64,
    /// Which of the direction's keys sealed it (0: the handshake's).
    epoch: u32,
    /// `None` for a rekey marker.
    msg: Option<Message>,
}

/// One direction, as the model sees it.
struct Channel {
    /// Bytes the sender's key may seal before it is replaced.
    budget: u64,
    /// Plaintext bytes sealed under the sender's current key.
    key_bytes: u64,
    /// The sender's current key.
    send_epoch: u32,
    /// Number of the sender's next frame.
    next_seq: u64,
    /// The receiver already failed: every later receive fails too.
    broken: bool,
    /// Number of the frame the receiver takes next, and its current key.
    expected: u64,
    recv_epoch: u32,
    sent: Vec<Sent>,
}

/// What to do with the next message's frame on its way.
#[derive(Debug)]
enum Step {
    Deliver,
    Flip { at: usize, bit: u8 },
    Cut { keep: usize },
    Drop,
    Replay { which: usize },
    Forge { body: Vec<u8> },
}

type Pipe = (
    tokio::io::ReadHalf<DuplexStream>,
    tokio::io::WriteHalf<DuplexStream>,
);

async fn session(u: &mut Unstructured<'_>) {
    let Ok(pick) = u.arbitrary::<u8>() else {
        return;
    };
    let (who, tamper) = match pick % 16 {
        0..=9 => (SourceCreds::Right, None),
        10 => (SourceCreds::WrongSecret, None),
        11 => (SourceCreds::UntrustedKey, None),
        12 => (SourceCreds::DistrustsPeer, None),
        _ => {
            let Ok(tamper) = tamper(u) else { return };
            (SourceCreds::Right, Some(tamper))
        }
    };
    let (source_io, mitm_source) = tokio::io::duplex(1 << 16);
    let (mitm_peer, peer_io) = tokio::io::duplex(1 << 16);
    let (mut from_source, mut to_source) = tokio::io::split(mitm_source);
    let (mut from_peer, mut to_peer) = tokio::io::split(mitm_peer);
    let asked = Cell::new(false);
    let handshake = async {
        tokio::join!(
            handshake_client(source_io, creds::source(who), UUID, BLOCKS),
            handshake_server(peer_io, creds::peer(), RESUME, |uuid| {
                assert_eq!(uuid, UUID, "the policy saw another volume than announced");
                asked.set(true);
                Ok(())
            })
        )
    };
    let relay = async {
        tokio::join!(
            relay(
                &mut from_source,
                &mut to_peer,
                tamper.filter(|t| t.toward_peer)
            ),
            relay(
                &mut from_peer,
                &mut to_source,
                tamper.filter(|t| !t.toward_peer)
            )
        )
    };
    tokio::pin!(handshake);
    // The relay ends only when both ends closed their side (a failed
    // handshake); the handshake then finishes with what it got.
    let (source, peer) = tokio::select! {
        biased;
        r = &mut handshake => r,
        _ = relay => handshake.await,
    };
    let Some((source, peer)) = check_handshake(who, tamper, source, peer, asked.get()) else {
        return;
    };
    steps(
        u,
        source,
        peer,
        (from_source, to_peer),
        (from_peer, to_source),
    )
    .await;
}

fn tamper(u: &mut Unstructured) -> arbitrary::Result<Tamper> {
    Ok(Tamper {
        toward_peer: u.arbitrary()?,
        frame: u.choose_index(HANDSHAKE_FRAMES)?,
        at: u.arbitrary()?,
        bit: u.int_in_range(0..=7)?,
    })
}

/// Copies frames from `r` to `w`, flipping the bit `tamper` names, until `r`
/// ends; then closes `w`.
async fn relay<R, W>(r: &mut R, w: &mut W, tamper: Option<Tamper>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut index = 0;
    loop {
        let mut frame = vec![0u8; LEN_PREFIX_BYTES];
        if r.read_exact(&mut frame).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(frame[..].try_into().expect("4 bytes")) as usize;
        frame.resize(LEN_PREFIX_BYTES + len, 0);
        if r.read_exact(&mut frame[LEN_PREFIX_BYTES..]).await.is_err() {
            break;
        }
        if let Some(t) = tamper.filter(|t| t.frame == index && len > 0) {
            frame[LEN_PREFIX_BYTES + t.at % len] ^= 1 << t.bit;
        }
        index += 1;
        if w.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

type Sessions = (Session<DuplexStream>, Session<DuplexStream>);

/// Checks the handshake's outcome against the credentials and the tamper;
/// returns both sessions when it succeeded.
fn check_handshake(
    who: SourceCreds,
    tamper: Option<Tamper>,
    source: Result<(Session<DuplexStream>, HandshakeInfo)>,
    peer: Result<(Session<DuplexStream>, HandshakeInfo)>,
    asked: bool,
) -> Option<Sessions> {
    let right = who == SourceCreds::Right;
    // The source has authenticated once its three frames and the peer's
    // reply arrived intact; the peer's last two frames come after that.
    let authenticates = right && tamper.is_none_or(|t| !t.toward_peer && t.frame > 0);
    assert_eq!(
        asked,
        authenticates,
        "the peer's binding policy {} (source {who:?}, {tamper:?})",
        if asked { "ran" } else { "did not run" }
    );
    assert_eq!(
        peer.is_ok(),
        authenticates,
        "the peer's handshake: {:?} (source {who:?}, {tamper:?})",
        peer.as_ref().err()
    );
    assert_eq!(
        source.is_ok(),
        right && tamper.is_none(),
        "the source's handshake: {:?} (source {who:?}, {tamper:?})",
        source.as_ref().err()
    );
    if tamper.is_none() {
        let (peer_err, source_err) = (peer.as_ref().err(), source.as_ref().err());
        match who {
            SourceCreds::Right => {}
            SourceCreds::WrongSecret | SourceCreds::UntrustedKey => {
                assert!(matches!(peer_err, Some(ReplicateError::AuthFailed(_))));
                assert!(matches!(source_err, Some(ReplicateError::Refused { .. })));
            }
            SourceCreds::DistrustsPeer => {
                assert!(matches!(source_err, Some(ReplicateError::AuthFailed(_))));
                assert!(matches!(peer_err, Some(ReplicateError::Refused { .. })));
            }
        }
    }
    let ((source, source_info), (peer, peer_info)) = (source.ok()?, peer.ok()?);
    assert_eq!(peer_info.remote_key, creds::source(who).key().public());
    assert_eq!(source_info.remote_key, creds::peer().key().public());
    assert_eq!(source_info.suite, peer_info.suite);
    for info in [&source_info, &peer_info] {
        assert_eq!((info.volume_uuid, info.volume_blocks), (UUID, BLOCKS));
        assert_eq!(info.resume, RESUME);
    }
    Some((source, peer))
}

async fn steps(
    u: &mut Unstructured<'_>,
    mut source: Session<DuplexStream>,
    mut peer: Session<DuplexStream>,
    mut to_peer_pipe: Pipe,
    mut to_source_pipe: Pipe,
) {
    // The peer's key already sealed the admission.
    let admission = codec::encode(&Admission::Welcome { resume: RESUME }).expect("encodes");
    let (Ok(mut s2p), Ok(mut p2s)) = (
        settings(u, &mut source, &peer, 0),
        settings(u, &mut peer, &source, admission.len() as u64),
    ) else {
        return;
    };
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(toward_peer) = u.arbitrary::<bool>() else {
            break;
        };
        let (sender, receiver, pipe, chan, direction) = if toward_peer {
            (
                &mut source,
                &mut peer,
                &mut to_peer_pipe,
                &mut s2p,
                Direction::SourceToPeer,
            )
        } else {
            (
                &mut peer,
                &mut source,
                &mut to_source_pipe,
                &mut p2s,
                Direction::PeerToSource,
            )
        };
        let Ok(step) = step(u, chan) else {
            break;
        };
        let Ok(msg) = arb::message(u) else {
            break;
        };
        let borrowed = matches!(msg, Message::Transfer { .. }) && u.arbitrary().unwrap_or(false);
        if !send(sender, &mut pipe.0, msg, direction, borrowed, chan).await {
            continue;
        }
        if chan.broken {
            // Nothing is read any more: the receive fails at once.
            let got = receiver.recv().await;
            assert!(
                matches!(got, Err(ReplicateError::SessionClosed { .. })),
                "a receive after a failed one returned {got:?}"
            );
            continue;
        }
        let Some((expect, wire)) = deliver(&step, chan) else {
            continue;
        };
        // Write and receive at once: a frame larger than the pipe's buffer
        // is taken in while it is written, and a receiver that fails takes
        // no more (the write then times out, harmlessly).
        let (_, got) = tokio::join!(
            tokio::time::timeout(WAIT, pipe.1.write_all(&wire)),
            tokio::time::timeout(WAIT, receiver.recv())
        );
        let got = got.expect("a delivered frame is received without waiting");
        check(expect, got, chan, direction);
    }
}

/// The sender's compression policy and rekey budget, from the input.
fn settings(
    u: &mut Unstructured,
    sender: &mut Session<DuplexStream>,
    receiver: &Session<DuplexStream>,
    key_bytes: u64,
) -> arbitrary::Result<Channel> {
    let compression = *u.choose(&[Compression::Always, Compression::Never, Compression::Auto])?;
    let pick = u.arbitrary::<u8>()?;
    let budget = match pick % 4 {
        0 => u64::MAX,
        1 => 0,
        2 => u64::from(pick) * 8,
        _ => 64 * 1024,
    };
    let tx = sender.sender_mut();
    tx.set_compression(compression);
    tx.set_rekey_budget(budget, Duration::from_secs(24 * 3600));
    let next_seq = tx.frames_sent();
    let expected = receiver.receiver().frames_received();
    assert_eq!(next_seq, HANDSHAKE_FRAMES as u64);
    assert_eq!(expected, next_seq);
    Ok(Channel {
        budget,
        key_bytes,
        send_epoch: 0,
        next_seq,
        broken: false,
        expected,
        recv_epoch: 0,
        sent: Vec::new(),
    })
}

fn step(u: &mut Unstructured, chan: &Channel) -> arbitrary::Result<Step> {
    let messages: Vec<usize> = (0..chan.sent.len())
        .filter(|&i| chan.sent[i].msg.is_some())
        .collect();
    Ok(match u.int_in_range(0u8..=9)? {
        0..=4 => Step::Deliver,
        5 => Step::Flip {
            at: u.arbitrary()?,
            bit: u.int_in_range(0..=7)?,
        },
        6 => Step::Cut {
            keep: u.arbitrary()?,
        },
        7 => Step::Drop,
        8 if !messages.is_empty() => Step::Replay {
            which: messages[u.choose_index(messages.len())?],
        },
        _ => Step::Forge {
            body: arb::take(u, 80)?.to_vec(),
        },
    })
}

/// Sends `msg` and records the frames that came out (a rekey marker, then
/// the message's frame), checking them against the model; returns false
/// when the sender refused it (checking that it should have, and sent
/// nothing).
async fn send(
    sender: &mut Session<DuplexStream>,
    wire: &mut tokio::io::ReadHalf<DuplexStream>,
    msg: Message,
    direction: Direction,
    borrowed: bool,
    chan: &mut Channel,
) -> bool {
    let sending = async {
        match (borrowed, &msg) {
            (true, Message::Transfer { id, batch }) => sender.send_transfer(*id, batch).await,
            _ => sender.send(&msg).await,
        }
    };
    let (sent, frames) = tokio::join!(sending, read_frames(wire));
    let allowed = msg.validate().is_ok() && msg.may_travel(direction);
    let wire_bytes = match sent {
        Ok(wire_bytes) => {
            assert!(allowed, "{} sent {direction} although invalid", msg.kind());
            wire_bytes
        }
        Err(ReplicateError::InvalidOutgoing { .. }) => {
            assert!(!allowed, "a valid {} was refused {direction}", msg.kind());
            assert!(frames.is_empty(), "a refused message put bytes on the wire");
            return false;
        }
        Err(other) => panic!("sending {} failed: {other}", msg.kind()),
    };
    let mut frames = frames;
    let mut total = frames.iter().map(Vec::len).sum::<usize>();
    while total < wire_bytes {
        let frame = tokio::time::timeout(WAIT, read_frame(wire))
            .await
            .expect("the bytes a send counted arrive");
        total += frame.len();
        frames.push(frame);
    }
    assert_eq!(
        total, wire_bytes,
        "a send counted other bytes than it wrote"
    );
    let rekey = chan.key_bytes >= chan.budget;
    assert_eq!(
        frames.len(),
        1 + usize::from(rekey),
        "{} frames for one message ({} bytes sealed, budget {})",
        frames.len(),
        chan.key_bytes,
        chan.budget
    );
    let mut frames = frames.into_iter();
    if rekey {
        let marker = frames.next().expect("two frames");
        assert_eq!(marker.len(), LEN_PREFIX_BYTES + SEALED_OVERHEAD_BYTES);
        record(chan, marker, None);
        chan.send_epoch += 1;
        chan.key_bytes = 0;
    }
    let frame = frames.next().expect("the message's frame");
    chan.key_bytes += plaintext_len(frame.len() - LEN_PREFIX_BYTES) as u64;
    record(chan, frame, Some(msg));
    true
}

/// Adds a frame to the direction's record, checking its number.
fn record(chan: &mut Channel, frame: Vec<u8>, msg: Option<Message>) {
    let seq = u64::from_be_bytes(
        frame[LEN_PREFIX_BYTES..LEN_PREFIX_BYTES + SEQ_BYTES]
            .try_into()
            .expect("8 bytes"),
    );
    assert_eq!(seq, chan.next_seq, "frames are numbered in order");
    chan.next_seq += 1;
    chan.sent.push(Sent {
        frame,
        seq,
        epoch: chan.send_epoch,
        msg,
    });
}

/// The plaintext a sealed body of `body_len` bytes holds (its chunks are
/// full but the last, each with a tag).
fn plaintext_len(body_len: usize) -> usize {
    let chunks = body_len - SEQ_BYTES;
    let len = chunks - TAG_BYTES * chunks.div_ceil(NOISE_MAX_MESSAGE_BYTES);
    assert_eq!(sealed_len(len), body_len, "a sealed body of a wrong length");
    len
}

/// Every whole frame already on `wire` (none when the sender sent nothing).
async fn read_frames(wire: &mut tokio::io::ReadHalf<DuplexStream>) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    // On the paused clock the timeout fires once the sender is idle.
    while let Ok(frame) = tokio::time::timeout(WAIT, read_frame(wire)).await {
        frames.push(frame);
    }
    frames
}

async fn read_frame(r: &mut tokio::io::ReadHalf<DuplexStream>) -> Vec<u8> {
    let mut frame = vec![0u8; LEN_PREFIX_BYTES];
    r.read_exact(&mut frame).await.expect("prefix");
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4")) as usize;
    frame.resize(LEN_PREFIX_BYTES + len, 0);
    r.read_exact(&mut frame[LEN_PREFIX_BYTES..])
        .await
        .expect("body");
    frame
}

/// What the receiver should report.
enum Expect {
    /// The message of `sent[i]`.
    Message(usize),
    Fault(fn(&FrameFault) -> bool),
}

/// How a delivered frame came to be.
enum Arrival {
    /// `sent[i]`, as it was sent.
    Authentic(usize),
    /// Altered or forged: it fails with this fault.
    Damaged(fn(&FrameFault) -> bool),
}

/// The frames the last send put out, as `step` delivers them, and what the
/// receiver should report after taking them; `None` when nothing is
/// delivered. The model's receiver state moves past what it takes.
fn deliver(step: &Step, chan: &mut Channel) -> Option<(Expect, Vec<u8>)> {
    let last = chan.sent.len() - 1;
    // A marker is always followed by its message's frame, in the same send.
    let marker = last.checked_sub(1).filter(|&m| chan.sent[m].msg.is_none());
    let mut frame = chan.sent[last].frame.clone();
    let body_len = frame.len() - LEN_PREFIX_BYTES;
    let bad_tag: fn(&FrameFault) -> bool = |f| matches!(f, FrameFault::BadTag);
    let too_short: fn(&FrameFault) -> bool = |f| matches!(f, FrameFault::TooShort { .. });
    let arrival = match step {
        Step::Deliver => Arrival::Authentic(last),
        Step::Flip { at, bit } => {
            frame[LEN_PREFIX_BYTES + at % body_len] ^= 1 << bit;
            Arrival::Damaged(bad_tag)
        }
        Step::Cut { keep } => {
            let keep = keep % body_len;
            frame.truncate(LEN_PREFIX_BYTES + keep);
            frame[..LEN_PREFIX_BYTES].copy_from_slice(&(keep as u32).to_be_bytes());
            Arrival::Damaged(if keep < SEALED_OVERHEAD_BYTES {
                too_short
            } else {
                bad_tag
            })
        }
        Step::Drop => return None,
        Step::Replay { which } => {
            frame = chan.sent[*which].frame.clone();
            Arrival::Authentic(*which)
        }
        Step::Forge { body } => {
            frame = encode_frame(body).expect("a small frame");
            Arrival::Damaged(if body.len() < SEALED_OVERHEAD_BYTES {
                too_short
            } else {
                bad_tag
            })
        }
    };
    let mut wire = Vec::new();
    let mut arrivals = Vec::new();
    if let Some(m) = marker {
        wire.extend_from_slice(&chan.sent[m].frame);
        arrivals.push(Arrival::Authentic(m));
    }
    wire.extend_from_slice(&frame);
    arrivals.push(arrival);
    Some((take(chan, arrivals), wire))
}

/// What the receiver reports for `arrivals`, taken in order until one is a
/// message or fails.
fn take(chan: &mut Channel, arrivals: Vec<Arrival>) -> Expect {
    for arrival in arrivals {
        let i = match arrival {
            Arrival::Damaged(fault) => return Expect::Fault(fault),
            Arrival::Authentic(i) => i,
        };
        let sent = &chan.sent[i];
        if sent.epoch != chan.recv_epoch {
            // Sealed under another key: its tag does not check.
            return Expect::Fault(|f| matches!(f, FrameFault::BadTag));
        }
        if sent.seq != chan.expected {
            return Expect::Fault(|f| matches!(f, FrameFault::OutOfSequence { .. }));
        }
        chan.expected += 1;
        if sent.msg.is_some() {
            return Expect::Message(i);
        }
        chan.recv_epoch += 1;
    }
    unreachable!("a message's frame (or what replaced it) is delivered last")
}

fn check(expect: Expect, got: Result<Message>, chan: &mut Channel, direction: Direction) {
    match (expect, got) {
        (Expect::Message(i), Ok(m)) => {
            let sent = chan.sent[i].msg.clone().expect("a message");
            let want = decompress_transfer(sent).expect("it was received, so it decompresses");
            assert_eq!(m, want, "received something else than was sent");
        }
        (
            Expect::Message(i),
            Err(ReplicateError::Frame {
                fault: FrameFault::Malformed(_),
                ..
            }),
        ) if chan.sent[i]
            .msg
            .clone()
            .is_some_and(|m| decompress_transfer(m).is_err()) =>
        {
            chan.broken = true
        }
        (
            Expect::Fault(is),
            Err(ReplicateError::Frame {
                fault,
                direction: d,
                ..
            }),
        ) => {
            assert_eq!(d, direction);
            assert!(is(&fault), "the wrong fault {fault:?} for this damage");
            chan.broken = true;
        }
        (_, got) => panic!("unexpected receive {got:?}"),
    }
}
