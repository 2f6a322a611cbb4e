//! The CP scheduler: when a CP runs, and running one (freeze the overlay, write its blocks, commit the superblock).

use super::*;

impl Inner {
    pub(super) fn cp_loop(&self) {
        let interval = self.cfg.cp_interval;
        let mut last = Instant::now();
        loop {
            {
                let mut s = self.signals.lock();
                if !s.cp_wanted && !s.shutdown {
                    let wait = interval.map_or(Duration::from_secs(3600), |i| {
                        i.saturating_sub(last.elapsed())
                    });
                    self.signals_cv.wait_for(&mut s, wait);
                }
                if s.shutdown {
                    break;
                }
                let due = interval.is_some_and(|i| last.elapsed() >= i);
                if !s.cp_wanted && !due {
                    continue;
                }
                s.cp_wanted = false;
            }
            last = Instant::now();
            if let Err(e) = self.run_cp() {
                log::error!("consistency point failed: {e}");
            }
        }
    }

    /// Asks for a CP; with `wait`, returns once one has completed.
    pub(super) fn want_cp(&self, wait: bool) -> Result<()> {
        if !self.cfg.background {
            return self.run_cp().map(|_| ());
        }
        let mut s = self.signals.lock();
        let seen = s.cps_done;
        s.cp_wanted = true;
        self.signals_cv.notify_all();
        if wait {
            self.stats.writer_waits.fetch_add(1, Ordering::Relaxed);
            while s.cps_done == seen && !s.shutdown {
                self.signals_cv.wait_for(&mut s, Duration::from_millis(100));
                if let Some(f) = self.failed.lock().as_ref() {
                    return Err(FsError::Failed(f.clone()));
                }
            }
        }
        Ok(())
    }

    pub(super) fn wait_for_cp(&self) -> Result<()> {
        self.want_cp(true)
    }

    /// Runs one CP: freeze, build without the state lock, commit.
    pub(super) fn run_cp(&self) -> Result<CpNumber> {
        if self.read_only() {
            return Ok(self.state.read().image.cp);
        }
        let mut ctl = self.cp.lock();
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(FsError::Failed(f.clone()));
        }
        let started = Instant::now();
        // Freeze.
        let (frozen, base, log_pos, covers, retained, peer_hold, lineage) = {
            let mut st = self.state.write();
            if st.active.is_empty() && st.retained.is_empty() && !st.force_cp {
                let cp = st.image.cp;
                drop(st);
                // Everything is committed: whoever waits for a CP has it.
                self.cp_done();
                return Ok(cp);
            }
            st.force_cp = false;
            self.seal(&mut st)?;
            let log_pos = LogPosition {
                next_transfer: st.batch.id,
                replay_offset: st.region.tail() % st.region.capacity(),
                last_batch_hash: st.prev_hash,
            };
            let next_ino = st.active.next_ino;
            let frozen = Arc::new(std::mem::replace(&mut st.active, Overlay::new(next_ino)));
            st.frozen = Some(frozen.clone());
            let retained = std::mem::take(&mut st.retained);
            (
                frozen,
                st.image.clone(),
                log_pos,
                st.last_sealed,
                retained,
                st.peer_hold,
                st.lineage.clone(),
            )
        };
        // New snapshots protect the image they name (the committed one) from now on.
        if !retained.create.is_empty() {
            let committed = ctl.alloc.committed_map().clone();
            ctl.alloc.add_snapshot(&committed);
        }
        let time = self.cfg.clock.now();
        let CpCtl { alloc, sink } = &mut *ctl;
        let result = cp::run(
            &self.cache,
            alloc,
            sink.as_deref_mut(),
            CpInput {
                base: &base,
                frozen: &frozen,
                retained: &retained,
                log: log_pos,
                time,
                key: &self.key,
                peer_hold,
                lineage: &lineage,
            },
            covers,
        );
        let sb = match result {
            Ok(sb) => sb,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        alloc.committed();
        // Commit: the new image replaces the frozen overlay atomically for readers.
        {
            let mut st = self.state.write();
            st.image = sb.clone();
            st.frozen = None;
            st.history.push_back((sb.cp, sb.root_hash()));
            if st.history.len() > CP_HISTORY {
                st.history.pop_front();
            }
            if let Some(c) = covers {
                st.region.release_through(c);
            }
            for (id, img) in &retained.create {
                st.snapshots.push((*id, img.clone()));
            }
            st.snapshots.retain(|(id, _)| !retained.delete.contains(id));
        }
        self.space.store(alloc);
        if !retained.delete.is_empty() {
            let snaps: Vec<RetainedImage> = self
                .state
                .read()
                .snapshots
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            match cp::snapshot_union(&self.cache, &snaps, sb.total_blocks) {
                Ok(u) => {
                    alloc.set_snapshots(u);
                    self.space.store(alloc);
                }
                Err(e) => log::error!("recomputing snapshot space after a delete: {e}"),
            }
        }
        drop(ctl);
        // The CP made every transfer it covers durable.
        if let Some(c) = covers {
            let mut q = self.log.lock();
            q.durable = q.durable.max(c);
            self.log_cv.notify_all();
        }
        let ms = started.elapsed().as_millis() as u64;
        self.stats.cps.fetch_add(1, Ordering::Relaxed);
        self.stats.last_cp_ms.store(ms, Ordering::Relaxed);
        self.stats.longest_cp_ms.fetch_max(ms, Ordering::Relaxed);
        self.cp_done();
        Ok(sb.cp)
    }

    /// Wakes the writers waiting in [`Inner::want_cp`].
    fn cp_done(&self) {
        let mut s = self.signals.lock();
        s.cps_done += 1;
        self.signals_cv.notify_all();
    }
}
