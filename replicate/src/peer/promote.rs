//! `twinfs promote DIR`: turns the replica into a volume that `twinfs mount`
//! serves read-write, with every change the source had made durable —
//! including those in transfers newer than the last applied CP.
//!
//! The stored transfers from the image's `next_transfer` on (while their IDs
//! are contiguous) are written into the image's own log region exactly where
//! the source would have put them: from the superblock's `replay_offset`,
//! each after the previous one, and at the region's start when one does not
//! fit before its end (the placement of `nvlog::LogRegion`, which replay's
//! `nvlog::scan` follows). Opening the volume read-write then replays them and
//! takes a CP. When more transfers are held than the region takes at once,
//! this repeats: each round's CP frees the region for the next. The first
//! open adopts the replica (its superblocks carry the replica flag, which
//! `twinfs mount` refuses read-write): its CP, taken even with nothing to
//! replay, clears the flag and begins a new generation of the volume's
//! lineage, so that the old source, should it come back, is recognised as
//! a split brain rather than taken for this volume's past.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::nvlog::batch;
use twinfs_fs::nvlog::LogRegion;
use twinfs_fs::superblock::{self, Superblock};
use twinfs_fs::{BlockAddr, TransferId, Volume, VolumeConfig, BLOCK_SIZE};

use crate::planted::{self, Bug};

use super::image::MirrorImage;
use super::journal;
use super::logstore::LogStore;
use super::state::{DirLock, PeerState};
use super::{PeerError, Result, IMAGE_FILE, JOURNAL_FILE, LOG_DIR};

/// What promote did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    /// The image to mount read-write.
    pub image: PathBuf,
    /// The CP the replica held before promote.
    pub applied_cp: u64,
    /// The CP of the promoted volume (after replaying the transfers).
    pub final_cp: u64,
    /// Transfers replayed.
    pub replayed: u64,
    /// Why replay stopped before the last stored transfer, if it did.
    pub stopped: Option<String>,
    /// The directory had been promoted before; nothing was done.
    pub already: bool,
}

/// Promotes the replica in `dir`; see the module documentation. Refuses while
/// the peer daemon (or a replica mount) uses the directory.
pub fn promote(dir: &Path) -> Result<Promoted> {
    if !dir.join(IMAGE_FILE).is_file() {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: format!("there is no {IMAGE_FILE}: this is not the --dir of a twinfs peer that applied a CP"),
        });
    }
    let _lock = DirLock::acquire(dir)?;
    promote_locked(dir)
}

/// [`promote`] for a caller that holds the directory's lock already (the
/// daemon, taking over in a switchover).
pub(crate) fn promote_locked(dir: &Path) -> Result<Promoted> {
    let mut state = PeerState::load(dir)?;
    let image_path = dir.join(IMAGE_FILE);
    if state.promoted {
        let sb = read_superblock(&image_path)?;
        return Ok(Promoted {
            image: image_path,
            applied_cp: sb.cp.0,
            final_cp: sb.cp.0,
            replayed: 0,
            stopped: None,
            already: true,
        });
    }
    {
        let mut image = MirrorImage::open(&image_path)?;
        journal::recover(&dir.join(JOURNAL_FILE), &mut image)?;
        if image.committed().is_none() {
            return Err(PeerError::Dir {
                dir: dir.to_path_buf(),
                problem: "the replica has not applied any CP yet: there is nothing to promote"
                    .into(),
            });
        }
    }
    let log = LogStore::open(&dir.join(LOG_DIR))?;
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&image_path, true).map_err(|e| {
        PeerError::io(
            format!(
                "opening {} read-write (unmount the replica view first)",
                image_path.display()
            ),
            e,
        )
    })?);
    let first = read_latest(&*dev, &image_path)?;
    let mut replayed = 0u64;
    let stopped = loop {
        let sb = read_latest(&*dev, &image_path)?;
        let (written, why) = write_round(&*dev, &sb, &log)?;
        // The first open also makes the replica a volume (a CP of its own,
        // in a new generation), even with nothing to replay.
        if written == 0 && !sb.replica {
            break why;
        }
        let vol = Volume::open(
            dev.clone(),
            VolumeConfig {
                read_only: false,
                cp_interval: None,
                background: false,
                adopt_replica: true,
                ..Default::default()
            },
        )
        .map_err(|e| {
            PeerError::volume(
                format!("replaying transfers into {}", image_path.display()),
                e,
            )
        })?;
        let after = vol.committed();
        vol.close()
            .map_err(|e| PeerError::volume(format!("closing {}", image_path.display()), e))?;
        drop(vol);
        let done = after
            .log
            .next_transfer
            .0
            .saturating_sub(sb.log.next_transfer.0);
        replayed += done;
        log::info!(
            "promote: replayed transfers {}..{} into CP {}",
            sb.log.next_transfer.0,
            after.log.next_transfer.0,
            after.cp.0
        );
        if written == 0 {
            break why;
        }
        if done < written {
            break Some(format!(
                "transfer {} did not replay (see the log above)",
                after.log.next_transfer.0
            ));
        }
        if why.is_some() {
            break why;
        }
    };
    let last = read_latest(&*dev, &image_path)?;
    drop(dev);
    state.promoted = true;
    state.store(dir)?;
    if let Some(why) = &stopped {
        log::warn!("promote: replay stopped early: {why}");
    }
    log::info!(
        "promoted {}: CP {} plus {replayed} transfers is now CP {}",
        image_path.display(),
        first.cp.0,
        last.cp.0
    );
    Ok(Promoted {
        image: image_path,
        applied_cp: first.cp.0,
        final_cp: last.cp.0,
        replayed,
        stopped,
        already: false,
    })
}

/// Writes into the log region the contiguous transfers from `sb`'s
/// `next_transfer` on, as many as the region takes, and syncs. Returns how
/// many it wrote and, when it stopped for another reason than a full region,
/// why.
fn write_round(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    log: &LogStore,
) -> Result<(u64, Option<String>)> {
    let mut region = LogRegion::new(sb.log_blocks, sb.log.replay_offset);
    let mut next = sb.log.next_transfer.0;
    let mut prev_hash = sb.log.last_batch_hash;
    let mut written = 0u64;
    let why = loop {
        let Some(loc) = log.get(next) else {
            break (log.highest() >= next).then(|| format!("transfer {next} is not held (a gap)"));
        };
        if planted::active(Bug::PromoteDropsLast) && log.highest() == next {
            break None;
        }
        let len_blocks = loc.len / BLOCK_SIZE as u64;
        let bytes = log
            .read_batch(next)
            .map_err(|e| PeerError::Protocol(format!("promote: {e}")))?;
        let header = match batch::decode(&bytes) {
            Ok(d) => d.header,
            Err(e) => break Some(format!("transfer {next} is damaged: {e}")),
        };
        if header.uuid != sb.uuid || header.prev_hash != prev_hash {
            break Some(format!(
                "transfer {next} does not follow the log chain of CP {} (the source diverged)",
                sb.cp.0
            ));
        }
        let Some(pos) = region.place(TransferId(next), len_blocks) else {
            break None;
        };
        dev.write(BlockAddr(sb.log_start + pos), &bytes)
            .map_err(|e| {
                PeerError::io(format!("writing transfer {next} into the log region"), e)
            })?;
        prev_hash = header.checksum;
        written += 1;
        next += 1;
    };
    dev.flush()
        .map_err(|e| PeerError::io("syncing the promoted image", e))?;
    Ok((written, why))
}

fn read_latest(dev: &dyn BlockDevice, path: &Path) -> Result<Superblock> {
    superblock::read_latest(dev)
        .map(|(sb, _)| sb)
        .map_err(|e| PeerError::volume(format!("reading the superblock of {}", path.display()), e))
}

fn read_superblock(path: &Path) -> Result<Superblock> {
    let dev = FileDevice::open(path, false)
        .map_err(|e| PeerError::io(format!("opening {}", path.display()), e))?;
    read_latest(&dev, path)
}
