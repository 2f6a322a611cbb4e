//! The replica: what the peer does with each message of the source.
//!
//! [`Replica`] owns `DIR` (its lock, state, log store, mirror image and
//! journal) and answers messages synchronously; the daemon feeds it from the
//! network on a blocking thread. Everything here can be driven directly by
//! tests, without a socket.
//!
//! # Applying a CP
//!
//! Every block of a CP is rebuilt ([`super::apply`]) and verified against its
//! hash. A block that cannot be rebuilt is remembered as missing and never
//! written; `CpEnd` then answers `CpMissing` and the source resends those in
//! full before repeating `CpEnd`. A good block is written **in place** when
//! its address is free in the committed image — readers of that image never
//! look there — and **staged** in the journal when the committed image uses
//! the address (after a gap, the source may reuse blocks of the peer's old CP).
//!
//! Commit, once every block is good and the superblock checks:
//!
//! 1. fdatasync the image (every in-place block is durable);
//! 2. if anything was staged, or the new CP goes to the slot of the committed
//!    CP, or the other slot holds a CP not older than the new one: write the
//!    journal's commit record (staged list + superblock) and fdatasync it —
//!    from here a restart redoes the commit; then copy the staged blocks into
//!    place and fdatasync;
//! 3. write the superblock (its peer hold cleared: the source's hold is not
//!    the replica's business and lies outside the root hash) to its slot,
//!    wiping the other slot if it holds a CP not older, and fdatasync;
//! 4. delete the journal durably; release the transfers the CP covers.
//!
//! A kill before the commit point leaves the previous CP intact (only blocks
//! it does not use were written, and its superblock slot was not touched); a
//! kill after it is finished by the redo on startup. Without step 2, the new
//! superblock goes to the slot the committed CP does not use, so a torn write
//! of it leaves the committed CP readable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use twinfs_fs::blockhash;
use twinfs_fs::nvlog::batch;
use twinfs_fs::superblock::{Superblock, MAX_VOLUME_BLOCKS};
use twinfs_fs::{CpNumber, BLOCK_SIZE};

use super::apply::{check, rebuild_into, BlockSources};
use super::image::MirrorImage;
use super::journal::{self, Journal, Recovery};
use super::limits::PeerLimits;
use super::logstore::{LogStore, RECORD_HEADER_BYTES};
use super::state::{ensure_dir, DirLock, PeerState};
use super::status::{self, PeerStatus};
use super::{PeerError, Result, IMAGE_FILE, JOURNAL_FILE, LOG_DIR};
use crate::handshake::{AppliedCp, ResumePoint};
use crate::history::{self, lineage_json, DivergenceReport, Side};
use crate::message::{
    clip_reason, lineage_from_wire, wire_lineage, CpBlock, HoldRecord, Message, WireGeneration,
    MAX_MISSING_ADDRS,
};
use crate::planted::{self, Bug};

/// How many times a CP may come back with blocks still missing before the
/// peer gives up on it and asks for a resync (`CpRejected`).
pub const MAX_MISSING_ROUNDS: u32 = 4;

/// Told when the replica's image changes, so that a read-only view of it
/// (`twinfs peer --mount`) switches CPs without showing a half-applied one.
///
/// Blocks of a CP are written only where the committed image has none,
/// except *staged* blocks, which are copied over blocks of the committed image
/// right before its superblock switches (rare: only after a gap). Between
/// [`ReplicaView::before_overwrite`] and [`ReplicaView::after_commit`] readers
/// of the old image could meet a block of the new one (its hash would not
/// match: an EIO, never wrong data), so a view should hold readers off
/// in between. If the commit fails in between, `after_commit` comes only once
/// the peer has recovered the image (at the next session, or the next start).
pub trait ReplicaView: Send + Sync {
    /// Staged blocks of CP `cp` are about to overwrite blocks of the image
    /// readers see: hold readers off until [`ReplicaView::after_commit`].
    fn before_overwrite(&self, cp: u64) {
        let _ = cp;
    }
    /// CP `cp` is committed and durable: switch readers to it (e.g.
    /// `Volume::reload`) and let held readers go.
    fn after_commit(&self, cp: u64, root_hash: [u8; 32]);
}

impl<F: Fn(u64, [u8; 32]) + Send + Sync> ReplicaView for F {
    fn after_commit(&self, cp: u64, root_hash: [u8; 32]) {
        self(cp, root_hash)
    }
}

/// The replica's side of a history check, copied out so that a source that
/// connects while another session holds the replica can still be judged
/// (and a split brain refused as such rather than as "busy").
#[derive(Clone, Debug, Default)]
pub struct Judge {
    /// The resume point the replica would offer.
    pub resume: ResumePoint,
    /// The CP it holds, with its history.
    pub own: Option<Side>,
    /// The directory's ID.
    pub peer_id: u64,
    /// The volume it is bound to.
    pub bound: Option<[u8; 16]>,
    /// A refusal decided outside the session, for the session to record.
    pub pending: Option<DivergenceReport>,
}

/// Steps of a CP commit after which a test can make the commit stop, as a
/// kill at that moment would ([`Replica::set_crash_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Every in-place block is durable; no commit record yet.
    BlocksSynced,
    /// The journal's commit record is durable (the commit point).
    JournalCommitted,
    /// Staged blocks are copied into place and durable; the superblock is not written.
    StagedCopied,
    /// The superblock is durable; the journal is not yet deleted.
    SuperblockWritten,
}

/// Whether the session goes on after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep receiving.
    Continue,
    /// The source asks this peer to take over as the primary (its checks
    /// passed: the source's final CP is the applied CP, nothing is held
    /// past it); the daemon hands it to its [`super::daemon::Takeover`].
    Switchover(SwitchoverRequest),
    /// The source said goodbye (or reported an error): end the session cleanly.
    End,
}

/// What a source asks in a switchover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchoverRequest {
    /// The source's final CP, applied here.
    pub cp: u64,
    /// `HOST:PORT` of the old source's peer daemon, to mirror to.
    pub return_to: String,
    /// Mode and CP encoding to mirror with (`sync`/`strict`/`async`, `full`/`refs`/`best`).
    pub mode: String,
    pub cp_sync: String,
}

/// The CP being received.
#[derive(Debug)]
struct OpenCp {
    cp: u64,
    covers: u64,
    missing: BTreeSet<u64>,
    missing_rounds: u32,
    /// Lowest and highest addresses written, to check against the superblock's geometry.
    min_addr: u64,
    max_addr: u64,
    in_place: u64,
    staged: u64,
    rebuilt: u64,
}

#[derive(Debug)]
enum CpPhase {
    Idle,
    Open(OpenCp),
    /// The CP was rejected: its frames are ignored until the next `CpBegin`.
    Ignoring(u64),
}

/// The peer's directory and what it does with the source's messages.
pub struct Replica {
    dir: PathBuf,
    _lock: DirLock,
    state: PeerState,
    log: LogStore,
    image: MirrorImage,
    journal: Journal,
    cp: CpPhase,
    /// The latest CP begun in this session: frames of an earlier CP come
    /// late (the source answered a `CpMissing` while this CP's begin was on
    /// its way, which ended that CP here) and are ignored.
    last_begun: u64,
    view: Option<Arc<dyn ReplicaView>>,
    /// Where `cp_blocks` rebuilds blocks, kept across frames: allocating it
    /// per frame made the allocator hand the pages back and fault them in
    /// again each time.
    rebuild_buf: Vec<u8>,
    crash_after: Option<CommitStep>,
    needs_recovery: bool,
    source_connected: bool,
    /// The session's source stated a history this replica's CP lies on
    /// (`SourceLineage`); nothing else is taken before.
    source_accepted: bool,
    last_error: Option<String>,
    limits: PeerLimits,
    /// The volume size the current source announced (its bound before the first CP).
    announced_blocks: Option<u64>,
}

impl Replica {
    /// Opens `dir` (creating it if needed): takes its lock, redoes or
    /// discards an interrupted commit, and rebuilds the log store's index.
    /// Fails on a promoted directory, or one whose image and state disagree.
    pub fn open(dir: &Path, view: Option<Arc<dyn ReplicaView>>) -> Result<Replica> {
        ensure_dir(dir)?;
        let lock = DirLock::acquire(dir)?;
        let mut state = PeerState::load(dir)?;
        if state.promoted {
            return Err(PeerError::Dir {
                dir: dir.to_path_buf(),
                problem: format!(
                    "it was promoted: {} is now a read-write volume (mount it with `twinfs mount`); run the peer on a new directory",
                    dir.join(IMAGE_FILE).display()
                ),
            });
        }
        if state.volume_uuid.is_some() && state.ensure_peer_id() {
            state.store(dir)?;
        }
        let mut image = MirrorImage::open(&dir.join(IMAGE_FILE))?;
        let recovered = journal::recover(&dir.join(JOURNAL_FILE), &mut image)?;
        if let Some(bytes) = state.rollback.clone() {
            finish_rollback(dir, &mut image, &bytes)?;
            state.rollback = None;
            state.store(dir)?;
        }
        if let Some(sb) = image.committed() {
            match state.volume_uuid {
                Some(u) if u != sb.uuid => {
                    return Err(PeerError::Dir {
                        dir: dir.to_path_buf(),
                        problem: format!(
                            "its state is bound to volume {} but its image holds volume {}; the directory is damaged — use a new one",
                            twinfs_fs::hex(&u),
                            twinfs_fs::hex(&sb.uuid)
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    log::warn!(
                        "{}: no binding recorded; binding to the image's volume {}",
                        dir.display(),
                        twinfs_fs::hex(&sb.uuid)
                    );
                    state.volume_uuid = Some(sb.uuid);
                    state.ensure_peer_id();
                    state.store(dir)?;
                }
            }
        }
        let mut log = LogStore::open(&dir.join(LOG_DIR))?;
        if let Some(sb) = image.committed() {
            log.release_through(sb.log.next_transfer.0.saturating_sub(1))?;
        }
        let replica = Replica {
            dir: dir.to_path_buf(),
            _lock: lock,
            state,
            log,
            image,
            journal: Journal::new(&dir.join(JOURNAL_FILE)),
            cp: CpPhase::Idle,
            last_begun: 0,
            rebuild_buf: Vec::new(),
            view,
            crash_after: None,
            needs_recovery: false,
            source_connected: false,
            source_accepted: false,
            last_error: None,
            limits: PeerLimits::default(),
            announced_blocks: None,
        };
        if let Recovery::Redone(cp) = recovered {
            replica.notify_committed(cp);
        }
        log::info!(
            "peer directory {}: applied CP {}, {} transfers held (up to {})",
            dir.display(),
            replica
                .applied()
                .map_or("none".to_string(), |a| a.cp.to_string()),
            replica.log.transfers(),
            replica.log.highest()
        );
        replica.write_status();
        Ok(replica)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The volume this directory is bound to, if any.
    pub fn bound_uuid(&self) -> Option<[u8; 16]> {
        self.state.volume_uuid
    }

    /// The log store (tests and promote read it).
    pub fn log_store(&self) -> &LogStore {
        &self.log
    }

    /// The mirror image.
    pub fn image(&self) -> &MirrorImage {
        &self.image
    }

    /// The CP the mirror holds, with its root hash.
    pub fn applied(&self) -> Option<AppliedCp> {
        self.image.committed().map(|sb| AppliedCp {
            cp: sb.cp.0,
            root_hash: sb.root_hash().0,
        })
    }

    /// What the source must resume from: the applied CP and the highest
    /// transfer held (transfers the applied CP contains count as held).
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            applied_cp: self.applied(),
            durable_transfer: self.durable_transfer(),
        }
    }

    fn durable_transfer(&self) -> u64 {
        let covered = self
            .image
            .committed()
            .map_or(0, |sb| sb.log.next_transfer.0.saturating_sub(1));
        self.log.highest().max(covered)
    }

    /// The binding policy of the handshake: the first volume served binds the
    /// directory (durably, before anything of it is stored); any other is
    /// refused with a reason naming both.
    pub fn accept_uuid(&mut self, uuid: [u8; 16]) -> std::result::Result<(), String> {
        match self.state.volume_uuid {
            Some(bound) if bound == uuid => Ok(()),
            Some(bound) => Err(format!(
                "this peer's directory {} mirrors volume {}, not volume {}; run another peer (another --dir) for that volume",
                self.dir.display(),
                twinfs_fs::hex(&bound),
                twinfs_fs::hex(&uuid)
            )),
            None => {
                let mut state = self.state.clone();
                state.volume_uuid = Some(uuid);
                state.ensure_peer_id();
                state.store(&self.dir).map_err(|e| {
                    format!("the peer cannot record the volume it mirrors: {e}")
                })?;
                log::info!(
                    "peer directory {} is now bound to volume {}",
                    self.dir.display(),
                    twinfs_fs::hex(&uuid)
                );
                self.state = state;
                Ok(())
            }
        }
    }

    /// Sets the limits an authenticated source must keep to.
    pub fn set_limits(&mut self, limits: PeerLimits) {
        self.limits = limits;
    }

    /// The binding policy with the size limit: the volume the source
    /// announced (UUID and size in blocks) must fit the limits, then
    /// [`Replica::accept_uuid`] decides. Its size bounds the CPs that follow.
    pub fn accept_volume(
        &mut self,
        uuid: [u8; 16],
        blocks: u64,
    ) -> std::result::Result<(), String> {
        let committed = self.image.committed().map(|sb| sb.total_blocks);
        self.limits.check_volume(&self.dir, committed, blocks)?;
        self.accept_uuid(uuid)?;
        self.announced_blocks = Some(blocks);
        Ok(())
    }

    /// Blocks of the volume the directory serves: its CP's, or what the source
    /// announced before the first CP.
    fn volume_blocks(&self) -> u64 {
        match (self.image.committed(), self.announced_blocks) {
            (Some(sb), _) => sb.total_blocks,
            (None, Some(b)) => b,
            (None, None) => MAX_VOLUME_BLOCKS,
        }
    }

    /// Makes the next commit stop after `step`, as a kill would (tests).
    #[doc(hidden)]
    pub fn set_crash_after(&mut self, step: Option<CommitStep>) {
        self.crash_after = step;
    }

    /// Prepares for a new source session: recovers from an earlier storage
    /// failure, makes every transfer received so far durable (so that the
    /// resume point promises only what is on disk), and returns the resume point.
    pub fn prepare_session(&mut self) -> Result<ResumePoint> {
        self.recover_if_needed()?;
        self.log.sync()?;
        Ok(self.resume_point())
    }

    /// Marks the start or end of a source session (for status), and abandons
    /// any CP left open by the previous session.
    pub fn set_source_connected(&mut self, connected: bool) {
        self.source_connected = connected;
        self.source_accepted = false;
        if !connected {
            self.abandon_cp("the session ended");
            self.last_begun = 0;
        }
        self.write_status();
    }

    /// Records the error that ended a session (shown by status). A storage
    /// error also makes the replica recover from disk before the next session.
    pub fn record_error(&mut self, err: &PeerError) {
        self.last_error = Some(err.to_string());
        if err.is_storage() {
            self.needs_recovery = true;
        }
        self.write_status();
    }

    /// Re-reads the directory after a storage failure: redoes or discards an
    /// interrupted commit and rebuilds the log store's index. Does nothing
    /// unless a storage error was recorded.
    pub fn recover_if_needed(&mut self) -> Result<()> {
        if !self.needs_recovery {
            return Ok(());
        }
        log::info!(
            "recovering the peer directory {} after a storage error",
            self.dir.display()
        );
        self.cp = CpPhase::Idle;
        self.journal.reset();
        let recovered = journal::recover(&self.dir.join(JOURNAL_FILE), &mut self.image)?;
        self.image.reread_superblock();
        self.log = LogStore::open(&self.dir.join(LOG_DIR))?;
        self.needs_recovery = false;
        if let Recovery::Redone(cp) = recovered {
            self.notify_committed(cp);
        }
        Ok(())
    }

    fn notify_committed(&self, cp: CpNumber) {
        if let (Some(view), Some(sb)) = (&self.view, self.image.committed()) {
            if sb.cp == cp {
                view.after_commit(cp.0, sb.root_hash().0);
            }
        }
    }

    /// Answers one message (a `Transfer` is stored and synced at once; the
    /// daemon groups transfers with [`Replica::receive_transfer`] and
    /// [`Replica::sync_transfers`] instead). Replies are pushed to `replies`.
    pub fn handle(&mut self, msg: Message, replies: &mut Vec<Message>) -> Result<Flow> {
        let first = matches!(
            msg,
            Message::SourceLineage { .. }
                | Message::Ping { .. }
                | Message::Pong { .. }
                | Message::Bye
                | Message::Error { .. }
        );
        if !first {
            self.require_accepted(msg.kind())?;
        }
        match msg {
            Message::SourceLineage {
                generations,
                cp,
                root_hash,
                uncommitted,
                hold,
            } => {
                let source = source_side(&generations, cp, root_hash, uncommitted)?;
                return self.source_lineage(source, hold, replies);
            }
            Message::Transfer { id, batch } => {
                self.receive_transfer(id, &batch)?;
                replies.push(self.sync_transfers()?);
            }
            Message::LogEnd { transfer } => self.source_log_ends(transfer)?,
            Message::CpBegin {
                cp,
                base_cp,
                covers_transfer,
                resync,
            } => self.cp_begin(cp, base_cp, covers_transfer, resync, replies),
            Message::CpBlocks { cp, blocks } => self.cp_blocks(cp, &blocks)?,
            Message::CpEnd {
                cp,
                superblock,
                root_hash,
            } => self.cp_end(cp, &superblock, root_hash, replies)?,
            Message::VerifyRequest { cp, deep } => replies.push(self.verify(cp, deep)),
            Message::Switchover {
                cp,
                root_hash,
                return_to,
                mode,
                cp_sync,
            } => {
                if let Err(reason) = self.check_switchover(cp, root_hash) {
                    log::warn!("refusing a switchover: {reason}");
                    replies.push(Message::SwitchoverRefused {
                        reason: clip_reason(&reason),
                    });
                    return Ok(Flow::Continue);
                }
                return Ok(Flow::Switchover(SwitchoverRequest {
                    cp,
                    return_to,
                    mode,
                    cp_sync,
                }));
            }
            Message::Ping { nonce } => replies.push(Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::Bye => return Ok(Flow::End),
            Message::Error { reason } => {
                log::warn!("the source ends the session with an error: {reason}");
                self.last_error = Some(format!("the source reported: {reason}"));
                return Ok(Flow::End);
            }
            other => {
                return Err(PeerError::Protocol(format!(
                    "{} is not sent to a peer",
                    other.kind()
                )))
            }
        }
        Ok(Flow::Continue)
    }

    // ---- the source's history ----------------------------------------------

    fn require_accepted(&self, what: &str) -> Result<()> {
        if self.source_accepted {
            Ok(())
        } else {
            Err(PeerError::Protocol(format!(
                "{what} before the source stated its history (SourceLineage comes first)"
            )))
        }
    }

    /// The directory's random ID.
    pub fn peer_id(&self) -> u64 {
        self.state.peer_id
    }

    /// The CP this replica holds, with its history.
    fn own_side(&self) -> Option<Side> {
        self.image.committed().map(|sb| Side {
            lineage: sb.lineage.clone(),
            cp: sb.cp.0,
            root_hash: sb.root_hash().0,
            uncommitted: false,
        })
    }

    /// Accepts the session's source if the CP this replica holds lies on its
    /// history; otherwise refuses it, records why (status, state file) and
    /// ends the session without applying anything.
    fn source_lineage(
        &mut self,
        source: Side,
        hold: Option<HoldRecord>,
        replies: &mut Vec<Message>,
    ) -> Result<Flow> {
        let own = self.own_side();
        let refusal = history::verdict(own.as_ref(), self.state.peer_id, &source, hold.as_ref());
        replies.push(Message::LineageVerdict {
            peer_id: self.state.peer_id,
            generations: own
                .as_ref()
                .map_or_else(Vec::new, |o| wire_lineage(&o.lineage)),
            refusal: refusal.clone().map(|mut r| {
                r.reason = clip_reason(&r.reason);
                r
            }),
        });
        let Some(refusal) = refusal else {
            self.source_accepted = true;
            return Ok(Flow::Continue);
        };
        self.record_divergence(DivergenceReport::new(&refusal, &source, own.as_ref()))?;
        Ok(Flow::End)
    }

    /// What a refused source is judged against while a session holds this
    /// replica (the daemon keeps a copy, see [`Judge`]).
    pub fn judge(&self) -> Judge {
        Judge {
            resume: self.resume_point(),
            own: self.own_side(),
            peer_id: self.state.peer_id,
            bound: self.state.volume_uuid,
            pending: None,
        }
    }

    /// Records a refused source (state file, status, log at error level).
    pub fn record_divergence(&mut self, report: DivergenceReport) -> Result<()> {
        log::error!(
            "{}: refusing the source (nothing applied): {}",
            self.dir.display(),
            report.reason
        );
        let mut state = self.state.clone();
        self.last_error = Some(report.reason.clone());
        state.divergence = Some(report);
        state.store(&self.dir)?;
        self.state = state;
        self.write_status();
        Ok(())
    }

    /// Whether this replica can take over from a source whose final CP is
    /// `cp`: it must be the applied CP, with nothing held past it.
    fn check_switchover(&self, cp: u64, root_hash: [u8; 32]) -> std::result::Result<(), String> {
        let Some(sb) = self.image.committed() else {
            return Err("this peer has applied no CP".into());
        };
        if sb.cp.0 != cp || sb.root_hash().0 != root_hash {
            return Err(format!(
                "the source's final CP {cp} is not the applied CP {} here",
                sb.cp.0
            ));
        }
        let covered = sb.log.next_transfer.0.saturating_sub(1);
        if self.log.highest() > covered {
            return Err(format!(
                "transfers up to {} are held past the final CP (which covers {covered})",
                self.log.highest()
            ));
        }
        if !matches!(self.cp, CpPhase::Idle) {
            return Err("a CP is being received".into());
        }
        Ok(())
    }

    /// Makes the mirror a volume (see [`super::promote`]), holding the
    /// directory's lock all along: a switchover's takeover. The directory
    /// serves no source afterwards.
    pub fn promote_in_place(&mut self) -> Result<super::Promoted> {
        let p = super::promote::promote_locked(&self.dir)?;
        self.state.promoted = true;
        Ok(p)
    }

    /// Forgets the recorded divergence (`twinfs resolve --keep-replica`).
    pub fn dismiss_divergence(&mut self) -> Result<bool> {
        if self.state.divergence.is_none() {
            return Ok(false);
        }
        let mut state = self.state.clone();
        state.divergence = None;
        state.store(&self.dir)?;
        self.state = state;
        self.write_status();
        Ok(true)
    }

    // ---- transfers ---------------------------------------------------------

    /// Verifies transfer `id` and appends it to the log store (not yet
    /// durable). A batch that fails its checksum or belongs to another volume
    /// is a protocol error.
    pub fn receive_transfer(&mut self, id: u64, batch_bytes: &[u8]) -> Result<()> {
        self.require_accepted("Transfer")?;
        let bound = self
            .state
            .volume_uuid
            .ok_or_else(|| PeerError::Protocol("a transfer before the volume was bound".into()))?;
        let h = batch::verify(batch_bytes).map_err(|e| {
            PeerError::Protocol(format!("transfer {id} is not a valid log batch: {e}"))
        })?;
        if h.id.0 != id {
            return Err(PeerError::Protocol(format!(
                "transfer {id} carries log batch {}",
                h.id.0
            )));
        }
        if h.uuid != bound {
            return Err(PeerError::Protocol(format!(
                "transfer {id} is a log batch of volume {}, not of volume {}",
                twinfs_fs::hex(&h.uuid),
                twinfs_fs::hex(&bound)
            )));
        }
        log::debug!(
            "transfer {id}: {} bytes, {} records",
            batch_bytes.len(),
            h.nrecords
        );
        self.limits
            .check_log_quota(
                self.log.bytes_held(),
                (RECORD_HEADER_BYTES + batch_bytes.len()) as u64,
            )
            .map_err(PeerError::OverLimit)?;
        self.log.append(id, batch_bytes)
    }

    /// The source's log ends at `transfer`: stored transfers after it were
    /// sent before the source's disk held them, and a crash may have taken
    /// them from the source (if not, the source sends them again). They go,
    /// durably, so that neither an acknowledgement nor a promote counts on
    /// them.
    fn source_log_ends(&mut self, transfer: u64) -> Result<()> {
        let highest = self.log.highest();
        if highest > transfer {
            log::warn!(
                "the source's log ends at transfer {transfer}, this peer holds up to {highest}: dropping transfers {}..={highest}, which the source had not made durable (a crash of the source lost them, or it sends them again)",
                transfer + 1
            );
            self.log.drop_after(transfer)?;
            self.write_status();
        }
        Ok(())
    }

    /// Makes every received transfer durable; returns the cumulative
    /// acknowledgement to send.
    pub fn sync_transfers(&mut self) -> Result<Message> {
        self.log.sync()?;
        Ok(Message::TransferAck {
            id: self.durable_transfer(),
        })
    }

    // ---- CPs ---------------------------------------------------------------

    fn cp_begin(
        &mut self,
        cp: u64,
        base_cp: Option<u64>,
        covers: u64,
        resync: bool,
        replies: &mut Vec<Message>,
    ) {
        self.abandon_cp("a new CP began before it ended");
        self.last_begun = self.last_begun.max(cp);
        let applied = self.applied().map(|a| a.cp);
        if let Some(base) = base_cp {
            if applied != Some(base) {
                let reason = format!(
                    "CP {cp} builds on CP {base}, but this peer holds {}; resync",
                    applied.map_or("no CP".to_string(), |a| format!("CP {a}"))
                );
                log::warn!("rejecting CP {cp}: {reason}");
                replies.push(Message::CpRejected {
                    cp,
                    reason: clip_reason(&reason),
                });
                self.cp = CpPhase::Ignoring(cp);
                return;
            }
        }
        log::debug!("CP {cp} begins (base {base_cp:?}, covers transfer {covers}, resync {resync})");
        self.journal.reset();
        self.cp = CpPhase::Open(OpenCp {
            cp,
            covers,
            missing: BTreeSet::new(),
            missing_rounds: 0,
            min_addr: u64::MAX,
            max_addr: 0,
            in_place: 0,
            staged: 0,
            rebuilt: 0,
        });
    }

    fn abandon_cp(&mut self, why: &str) {
        if let CpPhase::Open(o) = std::mem::replace(&mut self.cp, CpPhase::Idle) {
            log::info!("CP {} abandoned before its commit: {why}", o.cp);
            self.journal.reset();
        }
    }

    /// The open CP numbered `cp`, `None` if `cp` is being ignored, or a
    /// protocol error.
    fn open_cp(&mut self, cp: u64, what: &str) -> Result<Option<&mut OpenCp>> {
        match &self.cp {
            CpPhase::Open(o) if o.cp == cp => Ok(Some(self.open_cp_mut())),
            CpPhase::Ignoring(c) if *c == cp => Ok(None),
            _ if cp < self.last_begun => {
                log::info!(
                    "{what} for CP {cp}, which CP {} ended: ignored",
                    self.last_begun
                );
                Ok(None)
            }
            CpPhase::Open(o) => Err(PeerError::Protocol(format!(
                "{what} for CP {cp} while CP {} is open",
                o.cp
            ))),
            _ => Err(PeerError::Protocol(format!(
                "{what} for CP {cp}, which did not begin"
            ))),
        }
    }

    fn cp_blocks(&mut self, cp: u64, blocks: &[CpBlock]) -> Result<()> {
        if self.open_cp(cp, "CpBlocks")?.is_none() {
            return Ok(());
        }
        let (lo, hi) = match self.image.committed() {
            Some(sb) => (sb.data_start(), sb.total_blocks),
            None => (2, self.volume_blocks()),
        };
        if let Some(b) = blocks.iter().find(|b| b.addr < lo || b.addr >= hi) {
            return Err(PeerError::Protocol(format!(
                "CP {cp} writes block {}, outside the data area {lo}..{hi}",
                b.addr
            )));
        }
        let mut data = std::mem::take(&mut self.rebuild_buf);
        let result = self.apply_blocks(cp, blocks, &mut data);
        self.rebuild_buf = data;
        result
    }

    /// Rebuilds, checks and writes `blocks` (in place or staged in the journal).
    fn apply_blocks(&mut self, cp: u64, blocks: &[CpBlock], data: &mut Vec<u8>) -> Result<()> {
        for slice in blocks.chunks(REBUILD_BATCH) {
            // Rebuild a slice of blocks, then check their hashes together.
            data.resize(slice.len() * BLOCK_SIZE, 0);
            let sources = Sources {
                log: &self.log,
                image: &self.image,
            };
            let rebuilt: Vec<std::result::Result<(), String>> = slice
                .iter()
                .zip(data.chunks_exact_mut(BLOCK_SIZE))
                .map(|(b, out)| rebuild_into(b, &sources, out))
                .collect();
            let found = blockhash::hash_blocks(data);
            let mut run = Run::default();
            for (i, (((b, rebuilt), found), block)) in slice
                .iter()
                .zip(rebuilt)
                .zip(found)
                .zip(data.chunks_exact(BLOCK_SIZE))
                .enumerate()
            {
                let o = self.open_cp_mut();
                let skip_check = planted::active(Bug::SkipRefHash)
                    && matches!(b.enc, crate::message::Encoding::Ref { .. });
                match rebuilt.and_then(|()| if skip_check { Ok(()) } else { check(b, found) }) {
                    Err(why) => {
                        log::debug!("CP {cp}: block {} is missing: {why}", b.addr);
                        o.missing.insert(b.addr);
                    }
                    Ok(()) => {
                        o.missing.remove(&b.addr);
                        o.min_addr = o.min_addr.min(b.addr);
                        o.max_addr = o.max_addr.max(b.addr);
                        o.rebuilt += 1;
                        if self.image.in_use(b.addr) {
                            self.journal.stage(b.addr, block)?;
                            self.open_cp_mut().staged += 1;
                        } else {
                            run.push(b.addr, i, data, &self.image)?;
                            self.open_cp_mut().in_place += 1;
                        }
                    }
                }
            }
            run.flush(data, &self.image)?;
        }
        Ok(())
    }

    fn open_cp_mut(&mut self) -> &mut OpenCp {
        match &mut self.cp {
            CpPhase::Open(o) => o,
            _ => unreachable!("called while a CP is open"),
        }
    }

    fn cp_end(
        &mut self,
        cp: u64,
        superblock: &[u8],
        root_hash: [u8; 32],
        replies: &mut Vec<Message>,
    ) -> Result<()> {
        let Some(o) = self.open_cp(cp, "CpEnd")? else {
            return Ok(());
        };
        if !o.missing.is_empty() && !planted::active(Bug::SuperblockBeforeBlocks) {
            o.missing_rounds += 1;
            if o.missing_rounds > MAX_MISSING_ROUNDS {
                let reason = format!(
                    "{} blocks of CP {cp} (first: {}) still cannot be rebuilt after {MAX_MISSING_ROUNDS} resends",
                    o.missing.len(),
                    o.missing.first().expect("not empty")
                );
                self.reject(cp, reason, replies);
                return Ok(());
            }
            let addrs: Vec<u64> = o.missing.iter().copied().collect();
            log::info!(
                "CP {cp}: asking the source for {} blocks it could not rebuild here",
                addrs.len()
            );
            let chunks: Vec<&[u64]> = addrs.chunks(MAX_MISSING_ADDRS).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                replies.push(Message::CpMissing {
                    cp,
                    addrs: chunk.to_vec(),
                    more: i + 1 < chunks.len(),
                });
            }
            return Ok(());
        }
        let sb = match self.check_superblock(cp, superblock, root_hash) {
            Ok(sb) => sb,
            Err(reason) => {
                self.reject(cp, reason, replies);
                return Ok(());
            }
        };
        let CpPhase::Open(o) = std::mem::replace(&mut self.cp, CpPhase::Idle) else {
            unreachable!("checked above")
        };
        let root = sb.root_hash().0;
        self.commit(&o, sb)?;
        replies.push(Message::CpApplied {
            cp,
            root_hash: root,
        });
        Ok(())
    }

    fn reject(&mut self, cp: u64, reason: String, replies: &mut Vec<Message>) {
        log::warn!("rejecting CP {cp}: {reason}");
        self.abandon_cp("rejected");
        self.cp = CpPhase::Ignoring(cp);
        replies.push(Message::CpRejected {
            cp,
            reason: clip_reason(&reason),
        });
    }

    /// Decodes the CP's superblock and checks it against what the peer knows.
    fn check_superblock(
        &self,
        cp: u64,
        bytes: &[u8],
        root_hash: [u8; 32],
    ) -> std::result::Result<Superblock, String> {
        let block: &twinfs_fs::Block = bytes
            .try_into()
            .map_err(|_| format!("the superblock of CP {cp} has {} bytes", bytes.len()))?;
        let sb = Superblock::decode(block, cp % 2)
            .map_err(|e| format!("the superblock of CP {cp} does not decode: {e}"))?;
        if sb.cp.0 != cp {
            return Err(format!(
                "the superblock sent for CP {cp} is CP {}'s",
                sb.cp.0
            ));
        }
        if sb.root_hash().0 != root_hash {
            return Err(format!(
                "the superblock of CP {cp} has root hash {}, not the {} announced",
                sb.root_hash(),
                twinfs_fs::hex(&root_hash)
            ));
        }
        if Some(sb.uuid) != self.state.volume_uuid {
            return Err(format!(
                "the superblock of CP {cp} is of volume {}, not of the bound volume",
                twinfs_fs::hex(&sb.uuid)
            ));
        }
        if let (None, Some(announced)) = (self.image.committed(), self.announced_blocks) {
            if sb.total_blocks != announced {
                return Err(format!(
                    "the superblock of CP {cp} describes {} blocks, the source announced {announced}",
                    sb.total_blocks
                ));
            }
        }
        if let Some(cur) = self.image.committed() {
            let rel = twinfs_fs::lineage::compare(&cur.lineage, cur.cp, &sb.lineage, sb.cp);
            if rel != twinfs_fs::lineage::Relation::Behind {
                return Err(format!(
                    "CP {cp}'s history ({}) does not extend the applied CP {} ({}): {rel:?}",
                    sb.lineage, cur.cp.0, cur.lineage
                ));
            }
            if (cur.total_blocks, cur.log_blocks) != (sb.total_blocks, sb.log_blocks) {
                return Err(format!(
                    "CP {cp} has a geometry of {} blocks with a {}-block log, the mirror {} and {}",
                    sb.total_blocks, sb.log_blocks, cur.total_blocks, cur.log_blocks
                ));
            }
        }
        let o = match &self.cp {
            CpPhase::Open(o) => o,
            _ => unreachable!("checked by the caller"),
        };
        if o.rebuilt > 0 && (o.min_addr < sb.data_start() || o.max_addr >= sb.total_blocks) {
            return Err(format!(
                "CP {cp} wrote blocks {}..={}, outside its data area {}..{}",
                o.min_addr,
                o.max_addr,
                sb.data_start(),
                sb.total_blocks
            ));
        }
        Ok(sb)
    }

    fn crash_point(&self, step: CommitStep) -> Result<()> {
        if self.crash_after == Some(step) {
            return Err(PeerError::SimulatedCrash(step));
        }
        Ok(())
    }

    /// Commits the CP (see the module documentation for the steps).
    fn commit(&mut self, o: &OpenCp, mut sb: Superblock) -> Result<()> {
        let cp = sb.cp;
        sb.peer_hold = None;
        sb.replica = true;
        let bytes = sb.encode();
        let slot = sb.slot();
        self.image.ensure_blocks(sb.total_blocks)?;
        self.image.sync()?;
        self.crash_point(CommitStep::BlocksSynced)?;
        let same_slot = self.image.committed().is_some_and(|c| c.slot() == slot);
        let other_not_older = self.image.slot_cp(1 - slot).is_some_and(|c| c >= cp);
        let journaled = o.staged > 0 || same_slot || other_not_older;
        if journaled {
            self.journal.commit(cp, &bytes[..])?;
            self.crash_point(CommitStep::JournalCommitted)?;
            if o.staged > 0 {
                if let Some(view) = &self.view {
                    view.before_overwrite(cp.0);
                }
                self.journal.copy_into(&self.image)?;
                self.image.sync()?;
                self.crash_point(CommitStep::StagedCopied)?;
            }
        }
        self.image.write_superblock(cp, &bytes[..])?;
        if let Err(e) = self.image.sync() {
            if !journaled {
                // The new superblock may never reach the disk, and a later
                // sync need not say so: out of the page cache with it, or
                // the recovery (and `status --dir`) would take it as applied.
                self.image.wipe_slot(slot);
            }
            return Err(e);
        }
        self.crash_point(CommitStep::SuperblockWritten)?;
        if journaled {
            self.journal.remove()?;
        }
        let root = sb.root_hash();
        let covered = o.covers.min(sb.log.next_transfer.0.saturating_sub(1));
        self.image.set_committed(sb);
        log::info!(
            "applied CP {} (root {root}): {} blocks in place, {} staged",
            cp.0,
            o.in_place,
            o.staged
        );
        if !planted::active(Bug::KeepCoveredLog) {
            self.log.release_through(covered)?;
        }
        self.last_error = None;
        if let Some(view) = &self.view {
            view.after_commit(cp.0, root.0);
        }
        self.write_status();
        Ok(())
    }

    // ---- verify and status -------------------------------------------------

    fn verify(&mut self, cp: u64, deep: bool) -> Message {
        let Some(sb) = self.image.committed() else {
            return Message::VerifyReply {
                cp: 0,
                root_hash: [0; 32],
                deep_hash: None,
            };
        };
        if sb.cp.0 != cp {
            log::info!(
                "verify asks about CP {cp}; answering for the applied CP {}",
                sb.cp.0
            );
        }
        let deep_hash = if deep {
            match twinfs_fs::diff::deep_hash(self.image.cache(), &**self.image.device(), sb) {
                Ok(h) => Some(h.to_vec()),
                Err(e) => {
                    let msg = format!("verify --deep: the mirror's CP {} fails: {e}", sb.cp.0);
                    log::error!("{msg}");
                    self.last_error = Some(msg);
                    None
                }
            }
        } else {
            None
        };
        Message::VerifyReply {
            cp: sb.cp.0,
            root_hash: sb.root_hash().0,
            deep_hash,
        }
    }

    /// The status `twinfs status --dir` shows.
    pub fn status(&self) -> PeerStatus {
        let sb = self.image.committed();
        let mut status = PeerStatus {
            applied_cp: sb.map(|s| s.cp.0),
            root_hash: sb.map(|s| s.root_hash().to_hex()),
            log_bytes_held: self.log.bytes_held(),
            log_transfers: self.log.transfers(),
            durable_transfer: self.durable_transfer(),
            volume_uuid: self.state.volume_uuid.map(|u| twinfs_fs::hex(&u)),
            source_connected: self.source_connected,
            last_error: self.last_error.clone(),
            daemon_running: true,
            promoted: false,
            state: String::new(),
            peer_id: format!("{:016x}", self.state.peer_id),
            lineage: lineage_json(sb.map(|s| &s.lineage)),
            divergence: self.state.divergence.clone(),
        };
        status.state = status.headline();
        status
    }

    /// Writes `status.json` (best effort: a failure is logged, not fatal).
    pub fn write_status(&self) {
        if let Err(e) = status::write_status_file(&self.dir, &self.status()) {
            log::warn!("cannot write the status file: {e}");
        }
    }
}

/// The source's side as `SourceLineage` states it, checked.
pub fn source_side(
    generations: &[WireGeneration],
    cp: u64,
    root_hash: [u8; 32],
    uncommitted: bool,
) -> Result<Side> {
    let lineage = lineage_from_wire(generations)
        .map_err(|e| PeerError::Protocol(format!("SourceLineage: {e}")))?
        .ok_or_else(|| PeerError::Protocol("SourceLineage without a lineage".into()))?;
    Ok(Side {
        lineage,
        cp,
        root_hash,
        uncommitted,
    })
}

/// Finishes the roll-back `twinfs failback` recorded in the state file: the
/// mirror's committed CP becomes the superblock `bytes`.
fn finish_rollback(dir: &Path, image: &mut MirrorImage, bytes: &[u8]) -> Result<()> {
    let bad = |problem: String| PeerError::Dir {
        dir: dir.to_path_buf(),
        problem,
    };
    let block: &twinfs_fs::Block = bytes
        .try_into()
        .map_err(|_| bad("the recorded roll-back is not a superblock".into()))?;
    let sb = Superblock::decode(block, 0)
        .map_err(|e| bad(format!("the recorded roll-back does not decode: {e}")))?;
    log::info!(
        "{}: rolling the mirror back to CP {} (failback)",
        dir.display(),
        sb.cp.0
    );
    image.roll_back_to(&sb)
}

/// The log store and the mirror as the sources of rebuilt blocks.
struct Sources<'a> {
    log: &'a LogStore,
    image: &'a MirrorImage,
}

impl BlockSources for Sources<'_> {
    fn transfer_bytes(
        &self,
        transfer: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), String> {
        self.log.read(transfer, offset, buf)
    }

    fn transfer_block(
        &self,
        transfer: u64,
        block_no: u32,
        buf: &mut [u8],
    ) -> std::result::Result<(), String> {
        self.log.read_block(transfer, block_no, buf)
    }

    fn base_block(&self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        self.image
            .read_block(addr, buf)
            .map_err(|e| format!("reading block {addr} of the mirror: {e}"))
    }
}

/// Coalesces in-place writes to adjacent addresses into one write, straight
/// from the rebuild buffer: blocks `first..first + len` of it go to
/// addresses `addr..addr + len`. Only verified blocks join a run.
#[derive(Default)]
struct Run {
    addr: u64,
    first: usize,
    len: usize,
}

/// Blocks of a `CpBlocks` frame rebuilt before their hashes are checked
/// together (and the most one write covers).
const REBUILD_BATCH: usize = 256;

impl Run {
    /// Adds block `i` of `data`, bound for `addr`; the run so far is written
    /// first unless both continue it.
    fn push(&mut self, addr: u64, i: usize, data: &[u8], image: &MirrorImage) -> Result<()> {
        if self.len > 0 && (addr != self.addr + self.len as u64 || i != self.first + self.len) {
            self.flush(data, image)?;
        }
        if self.len == 0 {
            (self.addr, self.first) = (addr, i);
        }
        self.len += 1;
        Ok(())
    }

    fn flush(&mut self, data: &[u8], image: &MirrorImage) -> Result<()> {
        if self.len > 0 {
            let bytes = &data[self.first * BLOCK_SIZE..(self.first + self.len) * BLOCK_SIZE];
            image.write_blocks(self.addr, bytes)?;
            self.len = 0;
        }
        Ok(())
    }
}
