//! An authenticated session with a man in the middle. The two ends shake
//! hands over in-memory pipes through a relay; then the input drives a list
//! of steps, each in either direction: send a message built from the input
//! (see [`crate::arb`]) and deliver it intact, or with a bit flipped, cut
//! short, dropped, replayed from earlier in the session, or replaced by a
//! forged frame. Checked against a model of PROTOCOL.md §6: the receiver
//! gets exactly the messages sent (a `TransferLz4` as the `Transfer` it
//! stands for) until the first damaged frame, which is reported as the right
//! fault (`BadTag`, `TooShort`, `OutOfSequence`, `Malformed`), and after
//! which every receive fails; the sender refuses exactly the messages that
//! break a limit or travel the wrong way, and sends nothing for them.

use std::time::Duration;

use arbitrary::Unstructured;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use twinfs_replicate::frame::{encode_frame, LEN_PREFIX_BYTES};
use twinfs_replicate::handshake::{handshake_client, handshake_server, ResumePoint};
use twinfs_replicate::message::decompress_transfer;
use twinfs_replicate::seal::SEALED_OVERHEAD_BYTES;
use twinfs_replicate::{Direction, FrameFault, Message, ReplicateError, Secret, Session};

use crate::arb;
use crate::util::block_on;

/// Most steps one input drives.
const MAX_STEPS: usize = 24;

/// How long a receive may wait (on the paused clock: no real time passes).
const WAIT: Duration = Duration::from_secs(30);

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    block_on(session(&mut u));
}

/// One direction, as the model sees it.
#[derive(Default)]
struct Channel {
    /// The receiver already failed: every later receive fails too.
    broken: bool,
    /// Index in `sent` of the frame the receiver takes next.
    expected: usize,
    /// Every frame sent in this direction since the handshake, and its message.
    sent: Vec<(Vec<u8>, Message)>,
}

/// What to do with the next frame on its way.
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
    let secret = Secret::from_bytes(super::handshake_server::SECRET).expect("long enough");
    let (source_io, mitm_source) = tokio::io::duplex(1 << 16);
    let (mitm_peer, peer_io) = tokio::io::duplex(1 << 16);
    let (mut from_source, mut to_source) = tokio::io::split(mitm_source);
    let (mut from_peer, mut to_peer) = tokio::io::split(mitm_peer);
    let resume = ResumePoint {
        applied_cp: None,
        durable_transfer: 0,
    };
    // The relay copies bytes both ways until both ends finish the handshake
    // (it knows nothing of its frames); then nothing is left in flight.
    let handshake = async {
        tokio::join!(
            handshake_client(source_io, &secret, [0xA5; 16]),
            handshake_server(peer_io, &secret, resume, |_| Ok(()))
        )
    };
    let relay = async {
        tokio::join!(
            copy(&mut from_source, &mut to_peer),
            copy(&mut from_peer, &mut to_source)
        )
    };
    let (source, peer) = tokio::select! {
        (s, p) = handshake => (s.expect("source handshake").0, p.expect("peer handshake").0),
        _ = relay => panic!("the relay ended before the handshake"),
    };
    let mut source = source;
    let mut peer = peer;
    let mut to_peer_pipe: Pipe = (from_source, to_peer);
    let mut to_source_pipe: Pipe = (from_peer, to_source);
    let mut s2p = Channel::default();
    let mut p2s = Channel::default();

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
        let Some(frame) = send(sender, &mut pipe.0, &msg, direction, borrowed).await else {
            continue;
        };
        chan.sent.push((frame, msg));
        let Some((expect, frame)) = deliver(&step, chan) else {
            continue;
        };
        // Write and receive at once: a frame larger than the pipe's buffer
        // is taken in while it is written, and a receiver that already
        // failed takes nothing (the write then times out, harmlessly).
        let (_, got) = tokio::join!(
            tokio::time::timeout(WAIT, pipe.1.write_all(&frame)),
            tokio::time::timeout(WAIT, receiver.recv())
        );
        let got = got.expect("a delivered frame is received without waiting");
        check(expect, got, chan, direction);
    }
}

/// Copies bytes from `r` to `w` until `r` ends.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W) {
    let mut buf = vec![0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn step(u: &mut Unstructured, chan: &Channel) -> arbitrary::Result<Step> {
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
        8 if !chan.sent.is_empty() => Step::Replay {
            which: u.choose_index(chan.sent.len())?,
        },
        _ => Step::Forge {
            body: arb::take(u, 80)?.to_vec(),
        },
    })
}

/// Sends `msg` and returns the frame that came out, or `None` when the
/// sender refused it (checking that it should have, and sent nothing).
async fn send<S: AsyncRead + AsyncWrite>(
    sender: &mut Session<S>,
    wire: &mut tokio::io::ReadHalf<DuplexStream>,
    msg: &Message,
    direction: Direction,
    borrowed: bool,
) -> Option<Vec<u8>> {
    let sending = async {
        match (borrowed, msg) {
            (true, Message::Transfer { id, batch }) => sender.send_transfer(*id, batch).await,
            _ => sender.send(msg).await,
        }
    };
    let (sent, frame) = tokio::join!(sending, tokio::time::timeout(WAIT, read_frame(wire)));
    let allowed = msg.validate().is_ok() && msg.may_travel(direction);
    match sent {
        Ok(wire_bytes) => {
            assert!(allowed, "{} sent {direction} although invalid", msg.kind());
            let frame = frame.expect("a sent frame arrives");
            assert_eq!(frame.len(), wire_bytes);
            Some(frame)
        }
        Err(ReplicateError::InvalidOutgoing { .. }) => {
            assert!(!allowed, "a valid {} was refused {direction}", msg.kind());
            assert!(frame.is_err(), "a refused message put bytes on the wire");
            None
        }
        Err(other) => panic!("sending {} failed: {other}", msg.kind()),
    }
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

/// What the receiver should report for a frame that went through a step.
enum Expect {
    /// Message `sent[i]`, intact and due.
    Message(usize),
    Fault(fn(&FrameFault) -> bool),
}

/// The last frame sent, changed by `step`, and what the receiver should
/// report for it; `None` when nothing is to be delivered.
fn deliver(step: &Step, chan: &Channel) -> Option<(Expect, Vec<u8>)> {
    let last = chan.sent.len() - 1;
    let mut frame = chan.sent[last].0.clone();
    let body_len = frame.len() - LEN_PREFIX_BYTES;
    // An authentic frame is taken if it is the one due, and is out of
    // sequence otherwise (dropped, replayed or reordered on the way).
    let authentic = |i: usize| -> Expect {
        if i == chan.expected {
            Expect::Message(i)
        } else {
            Expect::Fault(|f| matches!(f, FrameFault::OutOfSequence { .. }))
        }
    };
    let expect = match step {
        Step::Deliver => authentic(last),
        Step::Flip { at, bit } => {
            frame[LEN_PREFIX_BYTES + at % body_len] ^= 1 << bit;
            Expect::Fault(|f| matches!(f, FrameFault::BadTag))
        }
        Step::Cut { keep } => {
            let keep = keep % body_len;
            frame.truncate(LEN_PREFIX_BYTES + keep);
            frame[..LEN_PREFIX_BYTES].copy_from_slice(&(keep as u32).to_be_bytes());
            if keep < SEALED_OVERHEAD_BYTES {
                Expect::Fault(|f| matches!(f, FrameFault::TooShort { .. }))
            } else {
                Expect::Fault(|f| matches!(f, FrameFault::BadTag))
            }
        }
        Step::Drop => return None,
        Step::Replay { which } => {
            frame = chan.sent[*which].0.clone();
            authentic(*which)
        }
        Step::Forge { body } => {
            frame = encode_frame(body).expect("a small frame");
            if body.len() < SEALED_OVERHEAD_BYTES {
                Expect::Fault(|f| matches!(f, FrameFault::TooShort { .. }))
            } else {
                Expect::Fault(|f| matches!(f, FrameFault::BadTag))
            }
        }
    };
    Some((expect, frame))
}

fn check(
    expect: Expect,
    got: twinfs_replicate::Result<Message>,
    chan: &mut Channel,
    direction: Direction,
) {
    if chan.broken {
        assert!(
            matches!(got, Err(ReplicateError::SessionClosed { .. })),
            "a receive after a failed one returned {got:?}"
        );
        return;
    }
    match (expect, got) {
        (Expect::Message(i), Ok(m)) => {
            let want = decompress_transfer(chan.sent[i].1.clone())
                .expect("it was received, so it decompresses");
            assert_eq!(m, want, "received something else than was sent");
            chan.expected = i + 1;
        }
        (
            Expect::Message(i),
            Err(ReplicateError::Frame {
                fault: FrameFault::Malformed(_),
                ..
            }),
        ) if decompress_transfer(chan.sent[i].1.clone()).is_err() => chan.broken = true,
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
