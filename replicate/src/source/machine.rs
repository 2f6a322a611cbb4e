//! The source's decisions, without sockets, threads or clocks (sans-IO).
//!
//! Three parts, each a plain state with methods that take what happened
//! (an event: a batch handed over, a CP item, a frame from the peer, a
//! timer that expired) and return what to do (an action: send this, resync
//! from there, acknowledge that to the volume):
//!
//! - [`Outbound`]: the ordered, bounded queue from the volume's log writer
//!   and CP thread to the session (what is queued, dropped, or lost);
//! - [`Link`]: what the peer confirmed (transfers, applied CPs), the
//!   degraded/sync/strict decision for each fsync, the verdict on our history;
//! - [`SenderState`]: one session's position in the stream (what was sent,
//!   which CP is open at the peer) and what each queued item or answer of the
//!   peer makes it send.
//!
//! Time enters only as "this wait expired" (`expired: bool`), decided by the
//! driver from its clock. The tokio driver in `super` keeps each part under
//! its own lock; the simulator (`crate::sim`) owns all three on one thread
//! and drives them from a seeded schedule. Reading the volume (log batches to
//! fill a gap, the image for a resync, blocks to resend) is the driver's:
//! the machine names what to read.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use twinfs_fs::nvlog::batch::SealedBatch;
use twinfs_fs::superblock::Superblock;
use twinfs_fs::{Block, CpNumber, FsError, RootHash, TransferId, BLOCK_SIZE};

use crate::encode;
use crate::error::{ReplicateError, Result};
use crate::handshake::{AppliedCp, ResumePoint};
use crate::history::{DivergenceReport, Side};
use crate::message::{self, lineage_from_wire, CpBlock, Message, Refusal, WireGeneration};
use crate::planted::{self, Bug};

use super::{Mode, Phase, ResyncProgress};

/// One thing for the peer, in the order the volume produced it.
pub enum Item {
    Transfer(SealedBatch),
    CpBegin {
        cp: CpNumber,
        base: CpNumber,
        covers: Option<TransferId>,
    },
    CpBlocks {
        cp: CpNumber,
        blocks: Vec<CpBlock>,
    },
    CpEnd {
        sb: Box<Superblock>,
        superblock: Box<Block>,
    },
}

impl Item {
    /// What the item counts for against the queue's bound.
    pub fn bytes(&self) -> usize {
        match self {
            Item::Transfer(b) => b.bytes.len(),
            Item::CpBlocks { blocks, .. } => blocks.iter().map(|b| encode::wire_size(&b.enc)).sum(),
            _ => BLOCK_SIZE,
        }
    }
}

/// The outbound queue.
#[derive(Default)]
pub struct Outbound {
    pub items: VecDeque<Item>,
    pub bytes: usize,
    /// A session is up: producers queue (otherwise they drop, and the next
    /// session resyncs).
    pub accepting: bool,
    /// Something was dropped while accepting: the session must resync.
    pub lost: bool,
    pub last_queued_transfer: TransferId,
    /// Bytes taken off the queue to be sent, since start (the drain rate
    /// writers are paced to).
    pub sent_bytes: u64,
}

impl Outbound {
    /// Whether an item of `size` bytes must wait for room (the driver waits,
    /// or gives up with [`Outbound::give_up`]).
    pub fn is_full_for(&self, size: usize, limit: usize) -> bool {
        self.accepting && self.bytes + size > limit && !self.items.is_empty()
    }

    /// The producer could not wait for room: the session must resync.
    pub fn give_up(&mut self) {
        self.lost = true;
    }

    /// Hands `item` over: queued when a session takes items and nothing was
    /// lost (returns true), dropped otherwise (the next catch-up or session
    /// sends it from the log or a resync). A transfer counts as handed over
    /// either way, so a CP waiting for its transfers need not wait for it.
    pub fn hand_over(&mut self, item: Item) -> bool {
        if let Item::Transfer(b) = &item {
            self.last_queued_transfer = b.id;
        }
        if !self.accepting || self.lost {
            return false;
        }
        self.bytes += item.bytes();
        self.items.push_back(item);
        true
    }

    /// Takes the next item to send.
    pub fn pop(&mut self) -> Option<Item> {
        let item = self.items.pop_front();
        if let Some(i) = &item {
            self.bytes -= i.bytes();
            self.sent_bytes += i.bytes() as u64;
        }
        item
    }

    /// A session starts taking items from the committed image `pinned` on.
    pub fn open(&mut self, pinned: &Superblock) {
        self.accepting = true;
        self.lost = false;
        self.pinned(pinned);
    }

    /// Transfers a CP of `sb` contains count as handed over.
    pub fn pinned(&mut self, sb: &Superblock) {
        let covered = TransferId(sb.log.next_transfer.0.saturating_sub(1));
        self.last_queued_transfer = self.last_queued_transfer.max(covered);
    }

    /// Empties the queue (a catch-up resyncs what it held).
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.lost = false;
    }

    /// The session ended: nothing is queued until the next one.
    pub fn close(&mut self) {
        self.accepting = false;
        self.clear();
    }
}

/// What the peer confirmed, and the state of the link for status.
pub struct Link {
    pub phase: Phase,
    pub connected: bool,
    pub acked_transfer: TransferId,
    pub applied: Option<(CpNumber, RootHash)>,
    pub degraded: bool,
    pub last_error: Option<String>,
    pub alarm: Option<String>,
    pub resync: Option<ResyncProgress>,
    pub rtt: Option<Duration>,
    /// Superblocks of CPs sent and not yet applied, to check the peer's answer.
    pub sent: HashMap<u64, Box<Superblock>>,
    /// The peer directory's ID (from its verdict), recorded with the hold.
    pub peer_id: u64,
    pub divergence: Option<DivergenceReport>,
    pub sessions_judged: u64,
    /// This end's address of the last connection to the peer.
    pub local_addr: Option<SocketAddr>,
}

/// The peer's `CpApplied`, judged.
pub enum Applied {
    /// Its root hash is ours: tell the volume (`Volume::peer_acked` with the
    /// peer's ID), then [`Link::applied_recorded`].
    Ack(Box<Superblock>, u64),
    /// Its root hash is not ours (the alarm is set): resync in full.
    Mismatch,
}

/// An fsync's wait for the peer, after one look at the link.
#[derive(Debug, PartialEq, Eq)]
pub enum FsyncPoll {
    /// The fsync may return.
    Done,
    /// It fails (strict mode).
    Failed(String),
    /// Wait for the next change of the link or the deadline.
    Wait,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            phase: Phase::Disconnected,
            connected: false,
            acked_transfer: TransferId(0),
            applied: None,
            degraded: false,
            last_error: None,
            alarm: None,
            resync: None,
            rtt: None,
            sent: HashMap::new(),
            peer_id: 0,
            divergence: None,
            sessions_judged: 0,
            local_addr: None,
        }
    }
}

impl Link {
    pub fn set_phase(&mut self, phase: Phase) {
        self.connected = matches!(phase, Phase::Resyncing | Phase::Streaming);
        self.phase = phase;
    }

    /// A session begins with the peer's resume point; our log ends at
    /// `log_end`. Returns the transfers both sides hold: the peer may hold
    /// some that a crash took from us (sent while our disk wrote them), and
    /// only what both hold counts as acknowledged.
    pub fn begin_session(&mut self, resume: &ResumePoint, log_end: TransferId) -> TransferId {
        let held = TransferId(resume.durable_transfer.min(log_end.0));
        self.applied = resume
            .applied_cp
            .map(|a| (CpNumber(a.cp), RootHash(a.root_hash)));
        self.acked_transfer = held;
        self.sent.clear();
        held
    }

    /// `TransferAck{id}`; `handed_over` is the last transfer queued (the
    /// planted bug `AckBeforeDurable` counts all of those as acknowledged).
    pub fn on_transfer_ack(&mut self, id: TransferId, handed_over: TransferId) {
        let id = if planted::active(Bug::AckBeforeDurable) {
            id.max(handed_over)
        } else {
            id
        };
        self.acked_transfer = self.acked_transfer.max(id);
        if self.degraded && self.phase == Phase::Streaming {
            log::info!("the peer confirms transfers again: fsync waits for it again");
            self.degraded = false;
        }
    }

    /// `CpApplied{cp, root_hash}`.
    pub fn on_cp_applied(&mut self, cp: u64, root_hash: [u8; 32]) -> Result<Applied> {
        let Some(sb) = self.sent.remove(&cp) else {
            return Err(ReplicateError::Protocol(format!(
                "the peer applied CP {cp} we did not send"
            )));
        };
        if sb.root_hash().0 != root_hash {
            let msg = format!(
                "ALARM: the peer's root hash for CP {cp} is {} but ours is {}",
                twinfs_fs::hex(&root_hash),
                sb.root_hash()
            );
            log::error!("{msg}");
            self.alarm = Some(msg);
            return Ok(Applied::Mismatch);
        }
        Ok(Applied::Ack(sb, self.peer_id))
    }

    /// The volume recorded that the peer applied `sb`.
    pub fn applied_recorded(&mut self, sb: &Superblock) {
        let cp = sb.cp.0;
        self.applied = Some((sb.cp, sb.root_hash()));
        // The peer holds every transfer the applied CP contains, after a
        // resync some only there: an fsync of those changes has nothing
        // more to wait for.
        let covered = TransferId(sb.log.next_transfer.0.saturating_sub(1));
        self.acked_transfer = self.acked_transfer.max(covered);
        self.sent.retain(|&c, _| c > cp);
        if self.resync.as_ref().is_some_and(|r| r.target_cp <= sb.cp) {
            self.resync = None;
        }
        // A resync ends with a CP, not with transfers: its application is
        // what says the peer is back.
        if self.degraded && self.phase == Phase::Streaming {
            log::info!("the peer applied CP {cp}: fsync waits for it again");
            self.degraded = false;
        }
    }

    /// The decision for an fsync waiting for transfer `id`: `expired` says
    /// whether its wait (`timeout`) is over.
    pub fn fsync_poll(
        &mut self,
        id: TransferId,
        mode: Mode,
        expired: bool,
        timeout: Duration,
    ) -> FsyncPoll {
        if mode == Mode::Async || self.acked_transfer >= id {
            return FsyncPoll::Done;
        }
        if let Some(d) = &self.divergence {
            // No peer will confirm anything until a person resolves it.
            return match mode {
                Mode::Strict => FsyncPoll::Failed(format!(
                    "the peer refused this volume ({}); see `twinfs status`",
                    d.kind
                )),
                _ => FsyncPoll::Done,
            };
        }
        let waiting_is_pointless = !self.connected || self.degraded;
        if waiting_is_pointless && mode == Mode::Sync && (self.degraded || expired) {
            if !self.degraded {
                log::warn!(
                    "the peer did not confirm transfer {} in time: carrying on without it",
                    id.0
                );
                self.degraded = true;
            }
            return FsyncPoll::Done;
        }
        if expired {
            return match mode {
                Mode::Strict => FsyncPoll::Failed(format!(
                    "the peer did not confirm transfer {} within {timeout:?} (strict mode)",
                    id.0
                )),
                _ => {
                    log::warn!(
                        "the peer did not confirm transfer {} in time: carrying on without it",
                        id.0
                    );
                    self.degraded = true;
                    FsyncPoll::Done
                }
            };
        }
        FsyncPoll::Wait
    }

    /// [`Link::fsync_poll`]'s answer as the volume's result.
    pub fn fsync_result(poll: FsyncPoll) -> Option<twinfs_fs::Result<()>> {
        match poll {
            FsyncPoll::Done => Some(Ok(())),
            FsyncPoll::Failed(m) => Some(Err(FsError::Replication(m))),
            FsyncPoll::Wait => None,
        }
    }

    /// The peer's `LineageVerdict` on our history `ours`, given the CP it
    /// resumes from. A refusal, or a verdict whose lineage does not put
    /// the peer's CP on our history, is recorded and returned as
    /// [`ReplicateError::Diverged`]: nothing may be sent.
    pub fn judge(
        &mut self,
        ours: &Side,
        resume: Option<AppliedCp>,
        peer_id: u64,
        generations: &[WireGeneration],
        refusal: Option<Refusal>,
    ) -> Result<()> {
        let peer_lineage = lineage_from_wire(generations)
            .map_err(|e| ReplicateError::Protocol(format!("LineageVerdict: {e}")))?;
        let theirs = match (resume, peer_lineage) {
            (Some(a), Some(l)) => Some(Side {
                lineage: l,
                cp: a.cp,
                root_hash: a.root_hash,
                uncommitted: false,
            }),
            (None, None) => None,
            _ => {
                return Err(ReplicateError::Protocol(
                    "the peer's verdict and resume point disagree on whether it holds a CP".into(),
                ))
            }
        };
        // Never trust a verdict alone to send anything that overwrites the peer.
        let refusal = refusal.or_else(|| crate::history::verdict(theirs.as_ref(), 0, ours, None));
        self.sessions_judged += 1;
        if let Some(r) = refusal {
            let report = DivergenceReport::new(&r, ours, theirs.as_ref());
            self.divergence = Some(report);
            self.degraded = true;
            return Err(ReplicateError::Diverged {
                kind: r.kind.name(),
                reason: r.reason,
            });
        }
        if self.divergence.take().is_some() {
            log::info!("the peer accepts this volume's history again");
        }
        self.peer_id = peer_id;
        Ok(())
    }

    /// After the resume or resync, before streaming: a peer that already
    /// holds everything sends no acknowledgement to end the degraded state
    /// with, so it ends here.
    pub fn caught_up(&mut self, durable: TransferId, pinned: CpNumber) {
        if self.degraded
            && self.acked_transfer >= durable
            && self.applied.is_some_and(|(c, _)| c >= pinned)
        {
            log::info!("the peer holds everything again: fsync waits for it again");
            self.degraded = false;
        }
    }
}

/// How a session starts once the peer accepted our history.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// The peer is at our committed CP: stream from the transfers it lacks.
    Stream,
    /// Resync the blocks born since `base` (all of them if `None`); `alarm`
    /// when the peer's CP is damaged (its root is not ours).
    Resync {
        base: Option<CpNumber>,
        alarm: Option<String>,
    },
}

/// What to do with the next queued item.
pub enum Step {
    /// Send the log's transfers below this one the peer lacks, then this one.
    Transfer(SealedBatch),
    /// A CP was produced that the peer cannot build on: catch up (resync).
    CatchUp,
    /// Send the transfers the CP covers that the peer lacks (up to and
    /// including `covers`), then the message (a `CpBegin`).
    CpBegin {
        covers: Option<TransferId>,
        msg: Message,
    },
    /// Send this `CpBlocks`.
    Send(Message),
    /// End the CP (record its superblock, send `CpEnd`).
    EndCp {
        sb: Box<Superblock>,
        superblock: Box<Block>,
    },
    /// Nothing to send (the rest of a CP whose begin did not go out).
    Skip,
}

/// What to do with the peer's `CpMissing`.
pub enum Missing {
    /// A later CP began since: the resync that follows the peer's rejection
    /// brings it up to date.
    Late,
    /// Resend the blocks in full (then, when nothing more is asked, end
    /// the CP again with this superblock).
    Resend(Box<Superblock>),
}

/// One session's position in the stream.
#[derive(Default)]
pub struct SenderState {
    pub last_transfer_sent: TransferId,
    pub last_cp_sent: CpNumber,
    /// The CP of the queue whose begin went out and whose end has not: the
    /// rest of a CP goes out only after its begin did (a catch-up may clear
    /// the begin from the queue while the CP is still being produced, and
    /// a resync ends the CP open at the peer).
    pub streaming_cp: Option<CpNumber>,
    /// The CP of the last `CpBegin` sent. A new CP ends the one open at the
    /// peer: blocks the peer asked for before it began come too late.
    pub last_cp_begun: CpNumber,
}

impl SenderState {
    /// Decides how the session starts: `pinned` is our committed CP,
    /// `held` the transfers both sides hold, `known_root` our root hash of
    /// an older CP (when we still know it).
    pub fn plan_resume(
        &mut self,
        resume: Option<AppliedCp>,
        pinned: &Superblock,
        held: TransferId,
        known_root: impl Fn(CpNumber) -> Option<RootHash>,
    ) -> Resume {
        match resume {
            Some(a) if a.cp == pinned.cp.0 && a.root_hash == pinned.root_hash().0 => {
                self.last_cp_sent = pinned.cp;
                // The peer keeps transfers it already has (and those its CP
                // contains): start after them.
                let covered = TransferId(pinned.log.next_transfer.0 - 1);
                self.last_transfer_sent = covered.max(held);
                Resume::Stream
            }
            other => {
                // The verdict puts the peer's CP on our history: resync from
                // there, unless we know that CP's root hash and the peer's
                // differs (its copy is damaged), when only a full resync
                // repairs it.
                let damaged = other
                    .filter(|a| known_root(CpNumber(a.cp)).is_some_and(|h| h.0 != a.root_hash));
                let alarm = damaged.map(|a| {
                    format!(
                        "ALARM: the peer's CP {} has root {}, not ours: full resync",
                        a.cp,
                        twinfs_fs::hex(&a.root_hash)
                    )
                });
                let base = other.filter(|_| damaged.is_none()).map(|a| CpNumber(a.cp));
                Resume::Resync { base, alarm }
            }
        }
    }

    /// The next queued item.
    pub fn on_item(&mut self, item: Item) -> Step {
        match item {
            Item::Transfer(b) => Step::Transfer(b),
            Item::CpBegin { cp, base, covers } => {
                self.streaming_cp = None;
                if base != self.last_cp_sent {
                    log::info!(
                        "CP {} builds on CP {} which the peer lacks: resyncing",
                        cp.0,
                        base.0
                    );
                    return Step::CatchUp;
                }
                self.streaming_cp = Some(cp);
                Step::CpBegin {
                    covers,
                    msg: Message::CpBegin {
                        cp: cp.0,
                        base_cp: Some(base.0),
                        covers_transfer: covers.map_or(message::NO_TRANSFER, |c| c.0),
                        resync: false,
                    },
                }
            }
            Item::CpBlocks { cp, blocks } => {
                if self.streaming_cp == Some(cp) {
                    Step::Send(Message::CpBlocks { cp: cp.0, blocks })
                } else {
                    Step::Skip
                }
            }
            Item::CpEnd { sb, superblock } => {
                let open = self.streaming_cp.take();
                if open == Some(sb.cp) {
                    self.last_cp_sent = sb.cp;
                    Step::EndCp { sb, superblock }
                } else {
                    Step::Skip
                }
            }
        }
    }

    /// A message went out.
    pub fn sent(&mut self, msg: &Message) {
        match msg {
            Message::CpBegin { cp, .. } => self.last_cp_begun = CpNumber(*cp),
            Message::Transfer { id, .. } => self.transfer_sent(TransferId(*id)),
            _ => {}
        }
    }

    /// Whether transfer `id` still has to go out.
    pub fn wants_transfer(&self, id: TransferId) -> bool {
        id > self.last_transfer_sent
    }

    pub fn transfer_sent(&mut self, id: TransferId) {
        self.last_transfer_sent = self.last_transfer_sent.max(id);
    }

    /// The first transfer a gap fill reads from the log, if any is below `before`.
    pub fn gap_from(&self, before: TransferId) -> Option<TransferId> {
        let from = TransferId(self.last_transfer_sent.0 + 1);
        (from < before).then_some(from)
    }

    /// The peer's `CpMissing` for CP `cp`; `sent` is that CP's superblock
    /// if we sent it.
    pub fn on_missing(&self, cp: u64, sent: Option<Box<Superblock>>) -> Result<Missing> {
        if self.last_cp_begun > CpNumber(cp) {
            // The peer asked at CP cp's end while the next CP's begin was on
            // its way; that begin abandoned CP cp there, and the peer rejects
            // the next CP (it builds on cp), which starts the resync that
            // brings the peer up to date. Answering would send blocks of a CP
            // no longer open.
            return Ok(Missing::Late);
        }
        match sent {
            Some(sb) => Ok(Missing::Resend(sb)),
            None => Err(ReplicateError::Protocol(format!(
                "the peer asks for blocks of CP {cp} we did not send"
            ))),
        }
    }

    /// The peer rejected a CP: the catch-up that follows starts from the
    /// CP it applied.
    pub fn on_rejected(&mut self, applied: Option<CpNumber>) {
        self.last_cp_sent = applied.unwrap_or(CpNumber(0));
    }

    /// The peer's root hash is not ours: the catch-up resyncs everything.
    pub fn on_mismatch(&mut self) {
        self.last_cp_sent = CpNumber(0);
    }

    /// A catch-up to the committed image `sb`: `None` when the peer already
    /// has it, else the base of the resync.
    pub fn catch_up_base(&mut self, sb: &Superblock) -> Option<Option<CpNumber>> {
        self.streaming_cp = None;
        if self.last_cp_sent == sb.cp {
            return None;
        }
        Some((self.last_cp_sent.0 > 0 && self.last_cp_sent < sb.cp).then_some(self.last_cp_sent))
    }

    /// The `CpBegin` of a resync of `sb` from `base`.
    pub fn resync_begin(sb: &Superblock, base: Option<CpNumber>) -> Message {
        Message::CpBegin {
            cp: sb.cp.0,
            base_cp: base.map(|b| b.0),
            covers_transfer: sb.log.next_transfer.0.saturating_sub(1),
            resync: true,
        }
    }

    /// A resync stream of `sb` went out whole (its `CpEnd` too).
    pub fn resync_sent(&mut self, sb: &Superblock) {
        self.last_cp_sent = sb.cp;
        self.last_transfer_sent = TransferId(sb.log.next_transfer.0.saturating_sub(1));
    }
}

/// The `CpEnd` of `sb` (recorded in [`Link::sent`] by the caller).
pub fn cp_end(sb: &Superblock, superblock: &Block) -> Message {
    Message::CpEnd {
        cp: sb.cp.0,
        superblock: superblock.to_vec(),
        root_hash: sb.root_hash().0,
    }
}
