//! Fault injection for tests: a frame-aware relay that drops, delays, truncates, cuts,
//! corrupts, duplicates or reorders chosen frames, and an in-memory duplex built on it.
//!
//! The relay parses the length prefixes of the stream it forwards, so a fault hits
//! exactly one frame, numbered from 0 in its direction like the session numbers them
//! (handshake frames included: source→peer frames 0 and 1 and peer→source frames 0, 1
//! and 2 are the handshake; session messages follow). End-to-end tests can put
//! [`relay`] between two TCP sockets to the same effect.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};

use crate::error::{Direction, ReplicateError, Result};
use crate::frame::{FrameReader, LEN_PREFIX_BYTES as P};

/// Buffer of each in-memory pipe of [`faulty_duplex`].
pub const DUPLEX_BUFFER_BYTES: usize = 256 * 1024;

/// What to do to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The frame vanishes.
    Drop,
    /// The frame (and, in order, every later one) is held back this long.
    Delay(Duration),
    /// The body is cut to its first `keep` bytes and the length prefix rewritten to
    /// match: a well-framed but shortened frame.
    Truncate {
        /// Body bytes kept.
        keep: usize,
    },
    /// The stream ends after the prefix and the first `keep` body bytes of the frame,
    /// as when a connection dies mid-frame.
    Cut {
        /// Body bytes sent before the end.
        keep: usize,
    },
    /// One bit of the body is flipped (bit index modulo the body's bits).
    FlipBit {
        /// Bit index in the body, counted from the first byte's lowest bit.
        bit: usize,
    },
    /// The frame is delivered twice in a row.
    Duplicate,
    /// The frame is held back and delivered after the next one.
    Reorder,
    /// The body is replaced by these bytes: replays a frame captured from another
    /// session (see [`FaultPlan::record`]), or forges one.
    Replace(Vec<u8>),
}

#[derive(Default)]
struct PlanState {
    at: BTreeMap<u64, Fault>,
    next: VecDeque<Fault>,
    frames_seen: u64,
    applied: Vec<(u64, Fault)>,
    recording: bool,
    recorded: Vec<Vec<u8>>,
}

/// Which frames of one direction get which fault. Cheap to clone: clones share the
/// plan, so a test can arm faults while the relay runs.
#[derive(Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

impl FaultPlan {
    /// A plan with no faults: the relay forwards every frame as it is.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Builder form of [`FaultPlan::inject_at`].
    pub fn at(self, frame: u64, fault: Fault) -> FaultPlan {
        self.inject_at(frame, fault);
        self
    }

    /// Applies `fault` to frame number `frame` of this direction.
    pub fn inject_at(&self, frame: u64, fault: Fault) {
        self.lock().at.insert(frame, fault);
    }

    /// Applies `fault` to the next frame the relay reads (after any already queued).
    pub fn inject_next(&self, fault: Fault) {
        self.lock().next.push_back(fault);
    }

    /// Builder: keep a copy of every frame body the relay reads (before any fault), to
    /// inspect what went over the wire or to replay it elsewhere. Tests only: the copies
    /// are never released.
    pub fn record(self) -> FaultPlan {
        self.lock().recording = true;
        self
    }

    /// The bodies recorded so far, indexed by frame number.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.lock().recorded.clone()
    }

    /// Frames the relay has read so far.
    pub fn frames_seen(&self) -> u64 {
        self.lock().frames_seen
    }

    /// Faults applied so far, with the number of the frame each hit.
    pub fn applied(&self) -> Vec<(u64, Fault)> {
        self.lock().applied.clone()
    }

    fn take(&self, frame: u64, body: &[u8]) -> Option<Fault> {
        let mut state = self.lock();
        state.frames_seen = frame + 1;
        if state.recording {
            state.recorded.push(body.to_vec());
        }
        let fault = state.at.remove(&frame).or_else(|| state.next.pop_front());
        if let Some(fault) = &fault {
            state.applied.push((frame, fault.clone()));
        }
        fault
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        // A panic while holding this lock can only come from a test that is failing anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Forwards frames from `from` to `to`, applying `plan`, until `from` ends (then shuts
/// `to` down) or a fault cuts the stream. `direction` labels errors.
pub async fn relay<R, W>(from: R, mut to: W, plan: FaultPlan, direction: Direction) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameReader::new(from, direction);
    let mut held: Option<Vec<u8>> = None;
    loop {
        let number = frames.frames_read();
        let io = |source| ReplicateError::Io {
            what: format!("fault relay forwarding {direction} frame {number}"),
            source,
        };
        let Some(body) = frames.read_frame().await? else {
            if let Some(frame) = held.take() {
                to.write_all(&frame).await.map_err(io)?;
            }
            return to.shutdown().await.map_err(io);
        };
        let fault = plan.take(number, body);
        let mut wire = prefix(body.len()).to_vec();
        wire.extend_from_slice(body);
        match forward(&mut to, fault, wire, &mut held).await.map_err(io)? {
            Flow::Go => {}
            Flow::Stop => return Ok(()),
        }
    }
}

enum Flow {
    Go,
    Stop,
}

/// Writes one frame (`wire`: prefix and body) to `to` as `fault` says, then any frame
/// held back by an earlier `Reorder`.
async fn forward<W: AsyncWrite + Unpin>(
    to: &mut W,
    fault: Option<Fault>,
    mut wire: Vec<u8>,
    held: &mut Option<Vec<u8>>,
) -> std::io::Result<Flow> {
    let body_len = wire.len() - P;
    match fault {
        None => to.write_all(&wire).await?,
        Some(Fault::Drop) => {}
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            to.write_all(&wire).await?;
        }
        Some(Fault::Truncate { keep }) => {
            let keep = keep.min(body_len);
            to.write_all(&prefix(keep)).await?;
            to.write_all(&wire[P..P + keep]).await?;
        }
        Some(Fault::Cut { keep }) => {
            let end = P + keep.min(body_len);
            to.write_all(&wire[..end]).await?;
            to.shutdown().await?;
            return Ok(Flow::Stop);
        }
        Some(Fault::FlipBit { bit }) => {
            if body_len > 0 {
                let bit = bit % (body_len * 8);
                wire[P + bit / 8] ^= 1 << (bit % 8);
            }
            to.write_all(&wire).await?;
        }
        Some(Fault::Duplicate) => {
            to.write_all(&wire).await?;
            to.write_all(&wire).await?;
        }
        Some(Fault::Replace(forged)) => {
            to.write_all(&prefix(forged.len())).await?;
            to.write_all(&forged).await?;
        }
        Some(Fault::Reorder) => {
            if let Some(previous) = held.replace(wire) {
                to.write_all(&previous).await?;
            }
            return Ok(Flow::Go);
        }
    }
    if let Some(frame) = held.take() {
        to.write_all(&frame).await?;
    }
    to.flush().await?;
    Ok(Flow::Go)
}

/// The length prefix of a body (bodies from a `FrameReader` are within the frame
/// limit; a forged body above `u32` is announced as `u32::MAX`, which the receiver
/// refuses as too large).
fn prefix(body_len: usize) -> [u8; P] {
    u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes()
}

/// An in-memory connection with a fault-injecting relay in each direction: returns
/// `(source_end, peer_end)`. Needs a tokio runtime (it spawns the two relays).
pub fn faulty_duplex(
    source_to_peer: FaultPlan,
    peer_to_source: FaultPlan,
) -> (DuplexStream, DuplexStream) {
    let (source_end, relay_a) = tokio::io::duplex(DUPLEX_BUFFER_BYTES);
    let (relay_b, peer_end) = tokio::io::duplex(DUPLEX_BUFFER_BYTES);
    let (a_read, a_write) = tokio::io::split(relay_a);
    let (b_read, b_write) = tokio::io::split(relay_b);
    spawn_relay(a_read, b_write, source_to_peer, Direction::SourceToPeer);
    spawn_relay(b_read, a_write, peer_to_source, Direction::PeerToSource);
    (source_end, peer_end)
}

fn spawn_relay<R, W>(from: R, to: W, plan: FaultPlan, direction: Direction)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = relay(from, to, plan, direction).await {
            log::debug!("fault relay {direction} stopped: {e}");
        }
    });
}
