//! Everything of the simulated mirror except the source volume's own calls:
//! the source's machine ([`crate::source::machine`]) with a driver that runs
//! its actions at once, the link, and the peer's [`Replica`].
//!
//! The volume calls in here through its hooks ([`super::Hooks`]); the
//! simulator's loop calls [`Net::pump`] for one step of the network. Both
//! hold the one lock of `Net`, never while calling into the volume's
//! mutating operations (only its reads, which the daemon also makes from
//! other threads while the volume works).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use twinfs_fs::superblock::Superblock;
use twinfs_fs::volume::Volume;
use twinfs_fs::{CpNumber, Hash128, TransferId, BLOCK_SIZE};

use crate::encode::CpSync;
use crate::handshake::AppliedCp;
use crate::history::Side;
use crate::message::{
    wire_lineage, CpBlock, Encoding, HoldRecord, Message, MAX_BLOCKS_PER_CP_FRAME,
};
use crate::peer::replica::{CommitStep, Flow, Replica};
use crate::peer::PeerError;
use crate::source::machine::{
    self, Applied, Item, Link, Missing, Outbound, Resume, SenderState, Step,
};
use crate::source::{Mode, Phase};

/// Bound of the simulated outbound queue.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Most frames in flight one way: the simulated socket buffers.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Fsync's wait for the peer, in simulated milliseconds.
pub const SYNC_TIMEOUT_MS: u64 = 5_000;

/// One session of the source, as its driver holds it.
struct Session {
    st: SenderState,
    judged: bool,
    pinned: Box<Superblock>,
    resume: Option<AppliedCp>,
    held: TransferId,
    log_end: TransferId,
    ours: Side,
}

/// Counts of what a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub frames: u64,
    pub sessions: u64,
    pub resyncs: u64,
    pub disconnects: u64,
    pub partitions: u64,
    pub peer_kills: u64,
    pub peer_commit_kills: u64,
    pub peer_corruptions: u64,
    pub peer_cps: u64,
    pub missing_rounds: u64,
}

pub struct Net {
    pub rng: StdRng,
    pub now_ms: Arc<AtomicU64>,
    pub trace: Vec<String>,
    pub mode: Mode,
    pub cp_sync: CpSync,
    pub vol: Option<Arc<Volume>>,
    pub out: Outbound,
    pub link: Link,
    sess: Option<Session>,
    /// The connection is up.
    pub up: bool,
    pub partitioned: bool,
    reconnect_at: u64,
    to_peer: VecDeque<(u64, Message)>,
    to_source: VecDeque<(u64, Message)>,
    pub peer: Option<Replica>,
    pub peer_dir: PathBuf,
    /// Root hashes of every CP the source committed.
    pub roots: BTreeSet<[u8; 32]>,
    /// The peer's CP last checked.
    checked_peer: Option<(u64, [u8; 32])>,
    /// The highest transfer the peer ever held durably: what it acknowledged
    /// stays acknowledged even when its disk later loses it (the rot this
    /// simulation injects is such a loss, not a bug of the protocol).
    pub peer_high_water: u64,
    /// An fsync in sync or strict mode returned with the peer holding it.
    pub peer_acked_fsync: bool,
    pub breach: Option<String>,
    pub stats: Stats,
    /// Link faults happen in [`Net::pump`].
    pub faults: bool,
}

impl Net {
    pub fn new(
        rng: StdRng,
        now_ms: Arc<AtomicU64>,
        mode: Mode,
        cp_sync: CpSync,
        peer_dir: PathBuf,
    ) -> Net {
        Net {
            rng,
            now_ms,
            trace: Vec::new(),
            mode,
            cp_sync,
            vol: None,
            out: Outbound::default(),
            link: Link::default(),
            sess: None,
            up: false,
            partitioned: false,
            reconnect_at: 0,
            to_peer: VecDeque::new(),
            to_source: VecDeque::new(),
            peer: None,
            peer_dir,
            roots: BTreeSet::new(),
            checked_peer: None,
            peer_high_water: 0,
            peer_acked_fsync: false,
            breach: None,
            stats: Stats::default(),
            faults: true,
        }
    }

    pub fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn note(&mut self, line: String) {
        let t = self.now();
        self.trace.push(format!("{t:>8} ms  {line}"));
    }

    pub fn breach(&mut self, what: String) {
        if self.breach.is_none() {
            self.note(format!("BREACH: {what}"));
            self.breach = Some(what);
        }
    }

    fn vol(&self) -> Arc<Volume> {
        self.vol.clone().expect("the source runs")
    }

    // ---- the source's hooks --------------------------------------------

    /// The volume hands an item over (its log writer or CP).
    pub fn push(&mut self, item: Item) -> bool {
        let size = item.bytes();
        if self.out.is_full_for(size, QUEUE_BYTES) {
            self.note("source: queue full, the session will resync".into());
            self.out.give_up();
        }
        self.out.hand_over(item)
    }

    // ---- the link --------------------------------------------------------

    fn send(&mut self, msg: Message) {
        if !self.up {
            return;
        }
        if let Some(s) = &mut self.sess {
            s.st.sent(&msg);
        }
        let at = self.deliver_at(true);
        self.to_peer.push_back((at, msg));
    }

    fn reply(&mut self, msg: Message) {
        if !self.up {
            return;
        }
        let at = self.deliver_at(false);
        self.to_source.push_back((at, msg));
    }

    /// In order, like TCP: never before the frame ahead of it.
    fn deliver_at(&mut self, to_peer: bool) -> u64 {
        let q = if to_peer {
            &self.to_peer
        } else {
            &self.to_source
        };
        let last = q.back().map_or(0, |(t, _)| *t);
        let delay = self.rng.gen_range(1..20);
        (self.now() + delay).max(last)
    }

    /// Ends the session on both sides.
    pub fn disconnect(&mut self, why: &str) {
        if !self.up {
            return;
        }
        self.note(format!("link: session ends ({why})"));
        self.stats.disconnects += 1;
        self.up = false;
        self.to_peer.clear();
        self.to_source.clear();
        if let Some(p) = &mut self.peer {
            p.set_source_connected(false);
        }
        self.out.close();
        self.link.set_phase(Phase::Disconnected);
        self.link.last_error = Some(why.to_string());
        self.sess = None;
        self.reconnect_at = self.now() + self.rng.gen_range(200..2000);
    }

    pub fn partition(&mut self) {
        if !self.partitioned {
            self.stats.partitions += 1;
            self.note("link: partition".into());
            self.partitioned = true;
            self.disconnect("partition");
        }
    }

    pub fn heal(&mut self) {
        if self.partitioned {
            self.note("link: healed".into());
            self.partitioned = false;
            self.reconnect_at = self.now();
        }
    }

    /// Whether a step of [`Net::pump`] could do anything but wait.
    pub fn busy(&self) -> bool {
        !self.to_peer.is_empty()
            || !self.to_source.is_empty()
            || (self.up && (!self.out.items.is_empty() || self.out.lost))
    }

    /// One step of the network: a connection attempt, a queued item sent, a
    /// frame delivered, a link fault, or time passing.
    pub fn pump(&mut self) {
        if self.breach.is_some() {
            return;
        }
        let now = self.now();
        if self.faults && self.rng.gen_ratio(1, 400) {
            match self.rng.gen_range(0..4) {
                0 => self.disconnect("connection reset"),
                1 => self.disconnect("a damaged, replayed or reordered frame"),
                2 => self.partition(),
                _ => self.heal(),
            }
            return;
        }
        let can_connect = !self.up && !self.partitioned && now >= self.reconnect_at;
        let can_send = self.up
            && self.sess.as_ref().is_some_and(|s| s.judged)
            && (!self.out.items.is_empty() || self.out.lost);
        let peer_ready = self.to_peer.front().is_some_and(|(t, _)| *t <= now);
        let source_ready = self.to_source.front().is_some_and(|(t, _)| *t <= now);
        let mut choices = Vec::with_capacity(4);
        if can_connect {
            choices.push(0);
        }
        if can_send {
            choices.push(1);
        }
        if peer_ready {
            choices.push(2);
        }
        if source_ready {
            choices.push(3);
        }
        if choices.is_empty() {
            let next = self
                .to_peer
                .front()
                .map(|f| f.0)
                .into_iter()
                .chain(self.to_source.front().map(|f| f.0))
                .chain((!self.up && !self.partitioned).then_some(self.reconnect_at))
                .min();
            let step = match next {
                Some(t) if t > now => t - now,
                _ => self.rng.gen_range(1..50),
            };
            self.advance(step);
            return;
        }
        match choices[self.rng.gen_range(0..choices.len())] {
            0 => self.connect(),
            1 => self.source_send(),
            2 => {
                let (_, m) = self.to_peer.pop_front().expect("ready");
                self.stats.frames += 1;
                self.peer_receive(m);
            }
            _ => {
                let (_, m) = self.to_source.pop_front().expect("ready");
                self.stats.frames += 1;
                self.source_receive(m);
            }
        }
        self.check_bounds();
    }

    // ---- the source's driver ---------------------------------------------

    fn connect(&mut self) {
        let vol = self.vol();
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let resume = match peer.prepare_session() {
            Ok(r) => r,
            Err(e) => {
                self.note(format!("peer: cannot serve ({e})"));
                self.reconnect_at = self.now() + 500;
                return;
            }
        };
        let blocks = vol.committed().total_blocks;
        if let Err(reason) = peer.accept_volume(vol.uuid(), blocks) {
            self.breach(format!("the peer refused the volume: {reason}"));
            return;
        }
        peer.set_source_connected(true);
        self.stats.sessions += 1;
        self.up = true;
        self.link.set_phase(Phase::Connecting);
        let log_end = vol.status().last_durable_transfer;
        let held = self.link.begin_session(&resume, log_end);
        let pinned = vol.peer_tracking_start();
        self.out.open(&pinned);
        let lineage = vol.lineage();
        let hold = vol.held_for_peer().map(|h| HoldRecord {
            peer_id: h.peer_id,
            cp: h.cp.0,
            root_hash: h.root_hash.0,
        });
        let ours = Side {
            lineage: lineage.clone(),
            cp: pinned.cp.0,
            root_hash: pinned.root_hash().0,
            uncommitted: vol.uncommitted() || vol.committed().cp > pinned.cp,
        };
        self.note(format!(
            "link: session {} up; peer resumes at {:?}, holds transfers to {}; our log ends at {}, CP {}",
            self.stats.sessions,
            resume.applied_cp.map(|a| a.cp),
            resume.durable_transfer,
            log_end.0,
            pinned.cp.0
        ));
        self.sess = Some(Session {
            st: SenderState::default(),
            judged: false,
            pinned: Box::new(pinned),
            resume: resume.applied_cp,
            held,
            log_end,
            ours: ours.clone(),
        });
        self.send(Message::SourceLineage {
            generations: wire_lineage(&lineage),
            cp: ours.cp,
            root_hash: ours.root_hash,
            uncommitted: ours.uncommitted,
            hold,
        });
    }

    fn source_receive(&mut self, m: Message) {
        let Some(sess) = self.sess.as_mut() else {
            return;
        };
        if !sess.judged {
            let Message::LineageVerdict {
                peer_id,
                generations,
                refusal,
            } = m
            else {
                return self.disconnect(&format!("{} before the verdict", m.kind()));
            };
            let (ours, resume) = (sess.ours.clone(), sess.resume);
            if let Err(e) = self
                .link
                .judge(&ours, resume, peer_id, &generations, refusal)
            {
                // Nothing in the simulation forks the history: a refusal is a bug.
                self.breach(format!("the peer refused the source's history: {e}"));
                return self.disconnect("refused");
            }
            return self.start_stream();
        }
        match m {
            Message::TransferAck { id } => {
                let handed = self.out.last_queued_transfer;
                self.link.on_transfer_ack(TransferId(id), handed);
            }
            Message::CpApplied { cp, root_hash } => match self.link.on_cp_applied(cp, root_hash) {
                Err(e) => self.disconnect(&e.to_string()),
                Ok(Applied::Mismatch) => {
                    let alarm = self.link.alarm.clone().unwrap_or_default();
                    self.breach(format!("root hash mismatch: {alarm}"));
                }
                Ok(Applied::Ack(sb, peer_id)) => {
                    self.note(format!("source: the peer applied CP {cp}"));
                    self.vol().peer_acked(&sb, peer_id);
                    self.link.applied_recorded(&sb);
                }
            },
            Message::CpMissing { cp, addrs, more } => {
                self.stats.missing_rounds += 1;
                let sent = self.link.sent.get(&cp).cloned();
                let sess = self.sess.as_mut().expect("checked");
                match sess.st.on_missing(cp, sent) {
                    Err(e) => self.disconnect(&e.to_string()),
                    Ok(Missing::Late) => self.note(format!("source: late CpMissing for CP {cp}")),
                    Ok(Missing::Resend(sb)) => {
                        self.note(format!(
                            "source: resending {} blocks of CP {cp}",
                            addrs.len()
                        ));
                        for chunk in addrs.chunks(MAX_BLOCKS_PER_CP_FRAME) {
                            match read_blocks(&self.vol(), chunk) {
                                Ok(blocks) => self.send(Message::CpBlocks { cp, blocks }),
                                Err(e) => return self.disconnect(&e),
                            }
                        }
                        if !more {
                            self.end_cp(&sb, &sb.encode());
                        }
                    }
                }
            }
            Message::CpRejected { cp, reason } => {
                self.note(format!("source: the peer rejected CP {cp}: {reason}"));
                let applied = self.link.applied.map(|(c, _)| c);
                self.sess.as_mut().expect("checked").st.on_rejected(applied);
                self.catch_up();
            }
            Message::Pong { .. } | Message::Ping { .. } => {}
            Message::Error { reason } => self.disconnect(&format!("the peer: {reason}")),
            Message::Bye => self.disconnect("the peer said bye"),
            other => self.disconnect(&format!("unexpected {} from the peer", other.kind())),
        }
    }

    /// The verdict accepted our history: resume or resync, then stream.
    fn start_stream(&mut self) {
        let vol = self.vol();
        let sess = self.sess.as_mut().expect("a session");
        sess.judged = true;
        let (pinned, resume, held, log_end) =
            (sess.pinned.clone(), sess.resume, sess.held, sess.log_end);
        self.send(Message::LogEnd {
            transfer: log_end.0,
        });
        let sess = self.sess.as_mut().expect("a session");
        match sess
            .st
            .plan_resume(resume, &pinned, held, |cp| vol.known_root_hash(cp))
        {
            Resume::Stream => {
                self.note(format!(
                    "source: the peer is at CP {}: streaming",
                    pinned.cp.0
                ));
                let covered = TransferId(pinned.log.next_transfer.0 - 1);
                self.link.acked_transfer = self.link.acked_transfer.max(covered);
            }
            Resume::Resync { base, alarm } => {
                if let Some(a) = alarm {
                    self.note(format!("source: {a}"));
                    self.link.alarm = Some(a);
                }
                self.resync(&pinned, base);
            }
        }
        self.fill_gap(TransferId(u64::MAX));
        self.link.set_phase(Phase::Streaming);
        let durable = vol.status().last_durable_transfer;
        self.link.caught_up(durable, pinned.cp);
    }

    fn source_send(&mut self) {
        if std::mem::take(&mut self.out.lost) {
            return self.catch_up();
        }
        let Some(item) = self.out.pop() else { return };
        let Some(sess) = self.sess.as_mut() else {
            return;
        };
        match sess.st.on_item(item) {
            Step::Transfer(b) => {
                self.fill_gap(b.id);
                self.send_transfer(b.id, &b.bytes);
            }
            Step::CatchUp => self.catch_up(),
            Step::CpBegin { covers, msg } => {
                if let Some(c) = covers {
                    self.fill_gap(TransferId(c.0 + 1));
                }
                self.send(msg);
            }
            Step::Send(msg) => self.send(msg),
            Step::EndCp { sb, superblock } => self.end_cp(&sb, &superblock),
            Step::Skip => {}
        }
    }

    fn send_transfer(&mut self, id: TransferId, bytes: &[u8]) {
        let Some(sess) = &self.sess else { return };
        if sess.st.wants_transfer(id) {
            self.send(Message::Transfer {
                id: id.0,
                batch: bytes.to_vec(),
            });
        }
    }

    fn fill_gap(&mut self, before: TransferId) {
        loop {
            let Some(from) = self.sess.as_ref().and_then(|s| s.st.gap_from(before)) else {
                return;
            };
            let batches = match self.vol().live_batches(from, 16 << 20) {
                Ok(b) => b,
                Err(e) => return self.disconnect(&format!("reading the log to resend: {e}")),
            };
            let done = batches.last().is_none_or(|b| b.id >= before);
            for b in batches.into_iter().filter(|b| b.id < before) {
                self.send_transfer(b.id, &b.bytes);
            }
            if done || !self.up {
                return;
            }
        }
    }

    fn end_cp(&mut self, sb: &Superblock, superblock: &[u8; BLOCK_SIZE]) {
        self.link.sent.insert(sb.cp.0, Box::new(sb.clone()));
        self.send(machine::cp_end(sb, superblock));
    }

    fn catch_up(&mut self) {
        self.out.clear();
        let vol = self.vol();
        let sb = vol.peer_tracking_start();
        let Some(sess) = self.sess.as_mut() else {
            return;
        };
        let Some(base) = sess.st.catch_up_base(&sb) else {
            return;
        };
        self.out.pinned(&sb);
        self.resync(&sb, base);
        self.link.set_phase(Phase::Streaming);
    }

    /// Sends every block of `sb` born after `base` in full, as one CP.
    fn resync(&mut self, sb: &Superblock, base: Option<CpNumber>) {
        self.stats.resyncs += 1;
        self.link.set_phase(Phase::Resyncing);
        let vol = self.vol();
        let min_birth = CpNumber(base.map_or(0, |b| b.0 + 1));
        let mut ptrs = Vec::new();
        let walked = twinfs_fs::diff::walk_image(vol.cache(), sb, min_birth, &mut |p, _| {
            ptrs.push((p.addr.0, p.hash.0));
            Ok(())
        });
        if let Err(e) = walked {
            return self.disconnect(&format!("walking the image for resync: {e}"));
        }
        self.note(format!(
            "source: resync from {:?} to CP {} ({} blocks)",
            base.map(|b| b.0),
            sb.cp.0,
            ptrs.len()
        ));
        self.send(SenderState::resync_begin(sb, base));
        for chunk in ptrs.chunks(MAX_BLOCKS_PER_CP_FRAME) {
            let addrs: Vec<u64> = chunk.iter().map(|p| p.0).collect();
            match read_blocks(&vol, &addrs) {
                Ok(mut blocks) => {
                    // The pointer's hash, as the daemon's resync sends it
                    // (its reads check each block against it).
                    for (b, p) in blocks.iter_mut().zip(chunk) {
                        b.hash = p.1;
                    }
                    self.send(Message::CpBlocks {
                        cp: sb.cp.0,
                        blocks,
                    })
                }
                Err(e) => return self.disconnect(&e),
            }
        }
        self.end_cp(sb, &sb.encode());
        if let Some(s) = &mut self.sess {
            s.st.resync_sent(sb);
        }
    }

    // ---- the peer's driver -------------------------------------------------

    fn peer_receive(&mut self, m: Message) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if matches!(m, Message::CpEnd { .. }) && self.faults && self.rng.gen_ratio(1, 12) {
            let step = [
                CommitStep::BlocksSynced,
                CommitStep::JournalCommitted,
                CommitStep::StagedCopied,
                CommitStep::SuperblockWritten,
            ][self.rng.gen_range(0..4)];
            peer.set_crash_after(Some(step));
        }
        let result = match m {
            Message::Transfer { id, batch } => peer
                .receive_transfer(id, &batch)
                .and_then(|()| peer.sync_transfers())
                .map(|ack| (vec![ack], Flow::Continue)),
            m => {
                let mut replies = Vec::new();
                peer.handle(m, &mut replies).map(|f| (replies, f))
            }
        };
        peer.set_crash_after(None);
        self.peer_high_water = self
            .peer_high_water
            .max(peer.resume_point().durable_transfer);
        match result {
            Ok((replies, flow)) => {
                for r in replies {
                    if let Message::CpApplied { cp, .. } = &r {
                        self.stats.peer_cps += 1;
                        self.note(format!("peer: applied CP {cp}"));
                    }
                    self.reply(r);
                }
                if flow != Flow::Continue {
                    self.disconnect("the peer ended the session");
                }
            }
            Err(PeerError::SimulatedCrash(step)) => {
                self.stats.peer_commit_kills += 1;
                self.note(format!("peer: killed during a commit, after {step:?}"));
                self.kill_peer();
            }
            Err(e) => {
                self.note(format!("peer: error {e}"));
                if let Some(p) = &mut self.peer {
                    p.record_error(&e);
                }
                self.disconnect("the peer failed");
            }
        }
        self.check_peer();
    }

    /// Kills the peer's process and starts it again on its directory.
    pub fn kill_peer(&mut self) {
        self.disconnect("the peer was killed");
        self.stats.peer_kills += 1;
        self.peer = None;
        match Replica::open(&self.peer_dir, None) {
            Ok(r) => {
                let held = r.resume_point().durable_transfer;
                self.note(format!(
                    "peer: killed and started again; it holds transfers to {held}"
                ));
                self.peer = Some(r);
            }
            Err(e) => self.breach(format!("the peer does not start again: {e}")),
        }
        self.checked_peer = None;
        self.check_peer();
    }

    /// Flips a byte in a data block of a transfer the peer holds (its disk
    /// rots): a `Ref` to it must come out missing, never wrong. Returns
    /// whether it did.
    pub fn corrupt_peer_log(&mut self) -> bool {
        let Some(peer) = &self.peer else { return false };
        let log = peer.log_store();
        let ids: Vec<u64> = log.ids().collect();
        if ids.is_empty() {
            return false;
        }
        let id = ids[self.rng.gen_range(0..ids.len())];
        let Some(loc) = log.get(id) else { return false };
        if loc.nblocks == 0 {
            return false;
        }
        let block = self.rng.gen_range(0..u64::from(loc.nblocks));
        let at = loc.offset
            + (u64::from(loc.header_blocks) + block) * BLOCK_SIZE as u64
            + self.rng.gen_range(0..BLOCK_SIZE as u64);
        let path = log.segment_path(loc.seg);
        let flipped = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at)?;
            b[0] ^= 0x5a;
            f.write_all_at(&b, at)
        })();
        if flipped.is_ok() {
            self.stats.peer_corruptions += 1;
            self.note(format!(
                "peer: disk flips a byte of transfer {id}, data block {block}"
            ));
        }
        flipped.is_ok()
    }

    // ---- invariants ---------------------------------------------------------

    /// The peer's image is exactly a CP the source committed: its root hash
    /// is one of the source's, and every block matches its pointer.
    pub fn check_peer(&mut self) {
        let Some(peer) = &self.peer else { return };
        let Some(sb) = peer.image().committed() else {
            return;
        };
        let now = (sb.cp.0, sb.root_hash().0);
        if self.checked_peer == Some(now) {
            return;
        }
        self.checked_peer = Some(now);
        if !self.roots.contains(&now.1) {
            let msg = format!(
                "the peer's CP {} (root {}) is no CP the source committed",
                now.0,
                twinfs_fs::hex(&now.1[..8])
            );
            return self.breach(msg);
        }
        let deep = twinfs_fs::diff::deep_hash(peer.image().cache(), &**peer.image().device(), sb);
        if let Err(e) = deep {
            let msg = format!("the peer's image of CP {} is not that CP: {e}", now.0);
            self.breach(msg);
        }
    }

    /// Queues and stores stay within their bounds.
    fn check_bounds(&mut self) {
        if self.out.bytes > QUEUE_BYTES + (2 << 20) {
            let b = self.out.bytes;
            self.breach(format!("the outbound queue holds {b} bytes"));
        }
        if self.to_peer.len() > MAX_IN_FLIGHT || self.to_source.len() > MAX_IN_FLIGHT {
            let (a, b) = (self.to_peer.len(), self.to_source.len());
            self.breach(format!("{a}/{b} frames in flight"));
        }
        if self.link.sent.len() > 64 {
            let n = self.link.sent.len();
            self.breach(format!("{n} CPs sent and not applied"));
        }
    }

    /// Transfers the peer holds durably (those its CP contains count).
    pub fn peer_durable(&self) -> u64 {
        self.peer
            .as_ref()
            .map_or(0, |p| p.resume_point().durable_transfer)
    }

    /// Transfers the peer still keeps that CP `sb` covers (once it applied
    /// that CP they must be gone: the log store stays bounded by what no
    /// applied CP covers).
    pub fn peer_keeps_covered(&self, sb: &Superblock) -> Vec<u64> {
        let covered = sb.log.next_transfer.0.saturating_sub(1);
        self.peer.as_ref().map_or(Vec::new(), |p| {
            p.log_store().ids().filter(|&id| id <= covered).collect()
        })
    }

    /// The peer's applied CP and root.
    pub fn peer_applied(&self) -> Option<(u64, [u8; 32])> {
        self.peer
            .as_ref()
            .and_then(|p| p.applied())
            .map(|a| (a.cp, a.root_hash))
    }

    /// The source process is gone: its machine starts over with the next one.
    pub fn source_gone(&mut self) {
        self.disconnect("the source crashed");
        self.out = Outbound::default();
        self.link = Link::default();
        self.sess = None;
        self.vol = None;
    }
}

/// Reads blocks of the committed image to send in full.
fn read_blocks(vol: &Volume, addrs: &[u64]) -> Result<Vec<CpBlock>, String> {
    let dev = vol.cache().device().clone();
    let mut out = Vec::with_capacity(addrs.len());
    for &a in addrs {
        let mut buf = vec![0u8; BLOCK_SIZE];
        dev.read(twinfs_fs::BlockAddr(a), &mut buf)
            .map_err(|e| format!("reading block {a} to send: {e}"))?;
        out.push(CpBlock {
            addr: a,
            hash: Hash128::of(&buf).0,
            enc: Encoding::Full(buf),
        });
    }
    Ok(out)
}
