//! The log writer: seals open batches, writes them into the log region, makes them durable, and paces writers to the log and the peer.

use super::*;

impl Inner {
    /// Seals the open batch, places it in the log region and queues it.
    pub(super) fn seal(&self, st: &mut State) -> Result<()> {
        if st.batch.is_empty() {
            return Ok(());
        }
        let next = TransferId(st.batch.id.0 + 1);
        let batch = std::mem::replace(&mut st.batch, OpenBatch::new(next));
        let sealed = batch.seal(&self.uuid, st.prev_hash);
        let pos = st
            .region
            .place(sealed.id, sealed.size_blocks())
            .ok_or_else(|| FsError::CorruptVolume("log space was checked but is gone".into()))?;
        st.prev_hash = sealed.hash;
        st.last_sealed = Some(sealed.id);
        st.batch_opened = None;
        self.stats.batches_sealed.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.log.lock();
            q.bytes += sealed.bytes.len();
            q.pending.push_back((pos, sealed));
        }
        if self.cfg.background {
            self.log_cv.notify_all();
        } else {
            self.write_pending(st.image.log_start, false, usize::MAX)?;
        }
        Ok(())
    }

    /// Writes queued batches to the log region, at most `max_bytes` of
    /// them (at least one); with `durable`, returns once they are on
    /// stable storage.
    ///
    /// The batches stay in `pending` until they are written, so that
    /// [`Volume::live_batches`] finds every batch either there or on the
    /// device.
    fn write_pending(&self, log_start: u64, durable: bool, max_bytes: usize) -> Result<()> {
        let _io = self.log_io.lock();
        let batches: Vec<(u64, SealedBatch)> = {
            let q = self.log.lock();
            let mut bytes = 0;
            q.pending
                .iter()
                .take_while(|(_, b)| {
                    let take = bytes == 0 || bytes + b.bytes.len() <= max_bytes;
                    bytes += b.bytes.len();
                    take
                })
                .cloned()
                .collect()
        };
        if let Some(r) = self.replicator.read().clone() {
            for (_, b) in &batches {
                r.batch_logged(b);
            }
        }
        if let Err(e) = nvlog::write_batches(&**self.cache.device(), log_start, &batches, durable) {
            self.log.lock().error = Some(e.to_string());
            self.fail(&e);
            return Err(e);
        }
        let mut q = self.log.lock();
        q.pending.drain(..batches.len());
        q.unflushed |= !durable && !batches.is_empty();
        q.written.extend(batches.into_iter().map(|(_, b)| b));
        Ok(())
    }

    /// Writes everything queued and makes it durable; wakes fsync waiters.
    fn flush_log(&self) -> Result<()> {
        loop {
            self.flush_log_round(usize::MAX)?;
            if self.log.lock().pending.is_empty() {
                return Ok(());
            }
        }
    }

    /// One round of `flush_log` over at most `max_bytes` of
    /// queued batches. Batches are written with a ranged sync, so a round
    /// does not wait for a running CP's writes; a whole-device flush is
    /// needed only for batches written earlier without one.
    fn flush_log_round(&self, max_bytes: usize) -> Result<()> {
        let log_start = self.state.read().image.log_start;
        self.write_pending(log_start, true, max_bytes)?;
        let _io = self.log_io.lock();
        let (written, unflushed) = {
            let mut q = self.log.lock();
            (
                std::mem::take(&mut q.written),
                std::mem::take(&mut q.unflushed),
            )
        };
        if written.is_empty() {
            return Ok(());
        }
        if unflushed {
            if let Err(e) = self.cache.device().flush() {
                let e = FsError::io("flushing the log", e);
                self.log.lock().error = Some(e.to_string());
                self.fail(&e);
                self.log_cv.notify_all();
                return Err(e);
            }
        }
        let last = written.last().map(|b| b.id).expect("not empty");
        {
            let mut q = self.log.lock();
            let bytes = written.iter().map(|b| b.bytes.len()).sum::<usize>();
            q.durable = q.durable.max(last);
            q.bytes -= bytes;
            q.durable_bytes += bytes as u64;
        }
        self.log_cv.notify_all();
        Ok(())
    }

    /// Paces a writer that just logged `bytes` to the rate at which the log
    /// (and, in sync modes, the peer) drains, and holds it back while more
    /// than [`VolumeConfig::log_backlog_bytes`] of sealed batches wait for the disk,
    /// so memory stays bounded.
    pub(super) fn pace_writer(&self, bytes: usize) {
        if !self.cfg.background {
            return;
        }
        let local = {
            let q = self.log.lock();
            Backlog {
                bytes: q.bytes as u64,
                limit: self.cfg.log_backlog_bytes as u64,
                drained_total: q.durable_bytes,
            }
        };
        let peer = self
            .replicator
            .read()
            .as_ref()
            .and_then(|r| r.queue_level());
        let now = Instant::now();
        let sleep = {
            let mut p = self.pacers.lock();
            let local = p.log.pause(bytes as u64, local, now);
            let peer = match peer {
                Some(l) => p.peer.pause(bytes as u64, l, now),
                None => {
                    // Measure afresh when pacing to the peer resumes.
                    p.peer = Pacer::new();
                    Duration::ZERO
                }
            };
            local.max(peer)
        };
        if !sleep.is_zero() {
            self.stats
                .paced_ns
                .fetch_add(sleep.as_nanos() as u64, Ordering::Relaxed);
            std::thread::sleep(sleep);
        }
        let mut q = self.log.lock();
        while q.bytes > self.cfg.log_backlog_bytes && q.error.is_none() && !q.shutdown {
            self.log_cv.notify_all();
            self.log_cv.wait_for(&mut q, Duration::from_millis(10));
        }
    }

    pub(super) fn wait_durable(&self, id: TransferId) -> Result<()> {
        if !self.cfg.background {
            return self.flush_log();
        }
        let mut q = self.log.lock();
        loop {
            if q.durable >= id {
                return Ok(());
            }
            if let Some(e) = &q.error {
                return Err(FsError::Failed(e.clone()));
            }
            if q.shutdown {
                drop(q);
                return self.flush_log();
            }
            self.log_cv.wait_for(&mut q, Duration::from_millis(100));
        }
    }

    pub(super) fn log_writer_loop(&self) {
        loop {
            {
                let mut q = self.log.lock();
                if q.pending.is_empty() && !q.shutdown {
                    self.log_cv.wait_for(&mut q, SEAL_AFTER);
                }
                if q.shutdown && q.pending.is_empty() {
                    break;
                }
            }
            // Seal a batch that has waited long enough, so that async
            // mirroring and durability do not wait for it to fill.
            {
                let mut st = self.state.write();
                if st.batch_opened.is_some_and(|t| t.elapsed() >= SEAL_AFTER) {
                    if let Err(e) = self.seal(&mut st) {
                        log::error!("sealing a log batch: {e}");
                    }
                }
            }
            if self.log.lock().pending.is_empty() {
                continue;
            }
            // Small rounds drain the backlog steadily, so paced writers see
            // a steady rate rather than large steps.
            if let Err(e) = self.flush_log_round(self.cfg.log_backlog_bytes / 8) {
                log::error!("log writer: {e}");
                break;
            }
        }
        let _ = self.flush_log();
    }
}
