//! The peer hold (DESIGN invariant 1): the blocks of the CP the peer holds stay unallocated until it acknowledges a newer one; and the log batches a session sends.

use super::*;

impl Volume {
    /// The peer is about to follow CP by CP from the committed CP on: from
    /// now until it acknowledges them, nothing that CP or any later one
    /// references is reused. Returns that CP's superblock.
    pub fn peer_tracking_start(&self) -> Superblock {
        let mut ctl = self.inner.cp.lock();
        let sb = self.inner.state.read().image.clone();
        ctl.alloc.track_peer_from(sb.cp);
        sb
    }

    /// Peer directory `peer_id` has applied CP `sb.cp` (its superblock is
    /// `sb`). The hold moves there and is recorded at the next CP.
    pub fn peer_acked(&self, sb: &Superblock, peer_id: u64) {
        let moved = {
            let mut ctl = self.inner.cp.lock();
            let moved = ctl.alloc.peer_acked(sb.cp);
            if moved {
                // Blocks kept only for the peer are free now: count them at
                // once, or a full volume refuses every write until another
                // CP recounts, and with nothing dirty none comes.
                self.inner.space.store(&ctl.alloc);
            }
            moved
        };
        let mut st = self.inner.state.write();
        if moved
            || st
                .peer_hold
                .is_some_and(|h| h.cp == sb.cp && h.peer_id != peer_id)
        {
            st.peer_hold = Some(superblock::PeerHold::of(sb, peer_id));
        }
    }

    /// Whether changes were made that the committed CP does not contain
    /// (they are logged and go into the next CP).
    pub fn uncommitted(&self) -> bool {
        let st = self.inner.state.read();
        !st.active.is_empty() || st.frozen.is_some() || !st.retained.is_empty()
    }

    /// The lineage of the CPs this volume writes: the committed CP's, plus
    /// the generation a read-write open began.
    pub fn lineage(&self) -> Lineage {
        self.inner.state.read().lineage.clone()
    }

    /// Forgets the peer: its CP is no longer protected.
    pub fn peer_forget(&self) {
        self.inner.cp.lock().alloc.drop_peer_hold();
        self.inner.state.write().peer_hold = None;
    }

    /// The root hash of CP `cp` if this volume knows it: a CP committed since
    /// it was opened, or the peer hold recorded in the superblock.
    pub fn known_root_hash(&self, cp: CpNumber) -> Option<RootHash> {
        let st = self.inner.state.read();
        if let Some(h) = st.history.iter().find(|(c, _)| *c == cp) {
            return Some(h.1);
        }
        st.image
            .peer_hold
            .filter(|h| h.cp == cp)
            .map(|h| h.root_hash)
    }

    /// The record of the last CP a peer applied (the hold the next CP
    /// records), with the peer directory's ID.
    pub fn held_for_peer(&self) -> Option<superblock::PeerHold> {
        self.inner.state.read().peer_hold
    }

    /// The CP protected for the peer, if any.
    pub fn peer_hold(&self) -> Option<CpNumber> {
        self.inner.cp.lock().alloc.peer_hold()
    }

    /// Reads the sealed log batches still in the log region with IDs from
    /// `from` on, in order, at most `max_bytes` of them (at least one), to
    /// resend them to a peer that reconnected.
    pub fn live_batches(&self, from: TransferId, max_bytes: usize) -> Result<Vec<SealedBatch>> {
        let (placed, start): (Vec<nvlog::Placed>, u64) = {
            let st = self.inner.state.read();
            let mut bytes = 0;
            let placed = st
                .region
                .live()
                .filter(|p| p.id >= from)
                .take_while(|p| {
                    let take = bytes == 0 || bytes + p.len as usize * BLOCK_SIZE <= max_bytes;
                    bytes += p.len as usize * BLOCK_SIZE;
                    take
                })
                .copied()
                .collect();
            (placed, st.image.log_start)
        };
        // A placed batch is still queued for the log writer, or written.
        let mut queued: HashMap<TransferId, SealedBatch> = {
            let q = self.inner.log.lock();
            q.pending
                .iter()
                .filter(|(_, b)| b.id >= from)
                .map(|(_, b)| (b.id, b.clone()))
                .collect()
        };
        let dev = self.inner.cache.device();
        let mut out = Vec::with_capacity(placed.len());
        for p in placed {
            if let Some(b) = queued.remove(&p.id) {
                out.push(b);
                continue;
            }
            let mut bytes = vec![0u8; p.len as usize * BLOCK_SIZE];
            dev.read(BlockAddr(start + p.pos), &mut bytes)
                .map_err(|e| FsError::io(format!("reading log batch {}", p.id.0), e))?;
            let d = nvlog::batch::decode(&bytes)?;
            out.push(SealedBatch {
                id: p.id,
                hash: d.header.checksum,
                records: d.header.nrecords,
                bytes: Arc::new(bytes),
            });
        }
        Ok(out)
    }
}
