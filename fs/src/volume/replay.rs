//! Replay at open: the log batches after the committed CP applied again, and files unlinked while open reclaimed.

use super::*;

impl Inner {
    /// Replays the batches newer than the CP into the active overlay.
    pub(super) fn replay(&self, dev: &dyn BlockDevice, sb: &Superblock) -> Result<usize> {
        let scan = nvlog::scan(dev, sb);
        let mut st = self.state.write();
        let mut count = 0;
        for r in &scan.batches {
            let placed = st.region.place(r.sealed.id, r.sealed.size_blocks());
            if placed != Some(r.pos) {
                // Can only happen with a corrupt log layout; keep what we have.
                log::error!(
                    "replay: batch {} at log block {} does not follow its predecessor; stopping",
                    r.sealed.id.0,
                    r.pos
                );
                break;
            }
            for (rec, pos) in &r.decoded.records {
                let State { active, image, .. } = &mut *st;
                let mut ap = Applier {
                    top: active,
                    mid: None,
                    meta: image.meta,
                    image_next_ino: image.next_ino,
                    cache: &self.cache,
                    key: &self.key,
                };
                if let Err(e) = ap.apply(rec, *pos) {
                    log::error!(
                        "replay: a record of transfer {} does not apply ({e}); ignoring the rest of the log",
                        r.sealed.id.0
                    );
                    break;
                }
            }
            st.prev_hash = r.sealed.hash;
            st.last_sealed = Some(r.sealed.id);
            st.batch = OpenBatch::new(TransferId(r.sealed.id.0 + 1));
            count += 1;
        }
        if count > 0 {
            log::info!("replay: {count} batches applied; {}", scan.stop);
        } else {
            log::debug!("replay: {}", scan.stop);
        }
        let mut q = self.log.lock();
        q.durable = st.last_sealed.unwrap_or(q.durable);
        if let Some(rep) = self.replicator.read().clone() {
            for r in &scan.batches {
                rep.batch_logged(&r.sealed);
            }
        }
        Ok(count)
    }

    /// Deletes unlinked inodes that nobody holds open any more (after a crash).
    pub(super) fn reclaim_orphans(&self) -> Result<usize> {
        let orphans: Vec<Ino> = {
            let st = self.state.read();
            let lo = items::orphan_key(Ino(0));
            let hi = items::orphan_key(Ino(u64::MAX));
            let mut set: std::collections::BTreeSet<Ino> =
                btree::range(&self.cache, &st.image.meta, lo, hi)
                    .map(|i| i.map(|(k, _)| Ino(k.off)))
                    .collect::<Result<_>>()?;
            for (ino, add) in &st.active.orphans {
                if *add {
                    set.insert(*ino);
                } else {
                    set.remove(ino);
                }
            }
            set.into_iter().collect()
        };
        let n = orphans.len();
        for ino in orphans {
            self.submit(Need::Free, |_, _| Ok(vec![Record::Reclaim { ino }]))?;
        }
        Ok(n)
    }
}
