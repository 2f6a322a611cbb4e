//! Resolving a divergence without discarding either side.
//!
//! - [`failback`] (`twinfs failback IMAGE --dir DIR`): the old source, once a
//!   replica of it was promoted elsewhere, becomes the peer of the new
//!   primary. Its image moves into the peer directory and is rolled back to
//!   the CP its own peer last held (recorded in its superblock's hold): that
//!   CP lies on the new primary's history too, so the new primary sends only
//!   the blocks born since. What the old source wrote after that CP is kept
//!   first, whole, in a copy of the image that mounts like any volume.
//! - [`resolve_keep_as`] (`twinfs resolve --dir DIR --keep-as FILE`): the
//!   refused source wins; the replica in `DIR` is promoted into a volume at
//!   `FILE` and the directory starts over for a full resync.
//! - [`resolve_keep_replica`] (`twinfs resolve --dir DIR --keep-replica`):
//!   the replica wins; the record of the refused source is cleared.
//!
//! Failback's steps and why a crash at any point loses nothing:
//!
//! 1. the image is opened read-write once (a crashed source's log is
//!    replayed into a CP of its own) and closed;
//! 2. `DIR` is made (0700); if the image went on after its held CP, it is
//!    copied to the keep file (`.tmp`, synced, renamed): the diverged side
//!    is safe before anything touches the image;
//! 3. the image is renamed (or, across file systems, copied) to
//!    `DIR/mirror.img`;
//! 4. `DIR/state` is written with the held CP's superblock as the pending
//!    roll-back: from here `DIR` is a peer directory, and whoever opens it
//!    next (this command, or the daemon) finishes the roll-back;
//! 5. the mirror's slots are rewritten to the held CP (other slot wiped
//!    first), and the pending roll-back is cleared.
//!
//! A crash before step 4 leaves `DIR` without a state: running failback
//! again picks up the image from `DIR/mirror.img` if step 3 happened.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinfs_fs::device::{BlockDevice, FileDevice};
use twinfs_fs::superblock::{self, Superblock};
use twinfs_fs::{Volume, VolumeConfig};

use super::image::MirrorImage;
use super::promote::promote;
use super::state::{fsync_dir, DirLock, PeerState};
use super::{PeerError, Result, IMAGE_FILE, JOURNAL_FILE, LOG_DIR, STATE_FILE, STATUS_FILE};

/// Progress of a long copy: bytes done and in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// What failback did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedBack {
    /// The CP the replica now holds: the newest the old source knows its
    /// peer held. `None`: the image recorded none, the new primary sends a
    /// full copy.
    pub base_cp: Option<u64>,
    /// The old source's own last CP.
    pub source_cp: u64,
    /// Where the old source's state (everything after `base_cp`) is kept,
    /// if it went past it.
    pub kept: Option<PathBuf>,
}

/// Turns the unmounted volume `image` into the replica of peer directory
/// `dir` (see the module documentation). `keep_as` names the copy of the
/// diverged state (default: `IMAGE.diverged-cpN` beside the image).
pub fn failback(
    image: &Path,
    dir: &Path,
    keep_as: Option<&Path>,
    progress: Progress<'_>,
) -> Result<FailedBack> {
    let mirror = dir.join(IMAGE_FILE);
    if dir.join(STATE_FILE).exists() {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: "it is already a peer directory; give a new directory for the failback".into(),
        });
    }
    // Resume after a crash between moving the image and writing the state.
    let resuming = !image.exists() && mirror.is_file();
    let source = if resuming {
        mirror.clone()
    } else {
        image.to_path_buf()
    };
    let sb = settle(&source)?;
    let base = sb.held_superblock();
    if base.is_none() {
        if resuming {
            return Err(PeerError::Dir {
                dir: dir.to_path_buf(),
                problem: format!(
                    "{} holds no record of a CP its peer held; move it back to {} and run failback again",
                    mirror.display(),
                    image.display()
                ),
            });
        }
        // Nothing to build on: the image stays as it is (the side that is
        // not kept, mountable), and the directory starts empty.
        make_dir(dir)?;
        let mut state = PeerState {
            volume_uuid: Some(sb.uuid),
            ..PeerState::default()
        };
        state.ensure_peer_id();
        state.store(dir)?;
        log::warn!(
            "{} records no CP its peer held: it stays as it is, and {} starts empty (a full copy follows)",
            image.display(),
            dir.display()
        );
        return Ok(FailedBack {
            base_cp: None,
            source_cp: sb.cp.0,
            kept: Some(image.to_path_buf()),
        });
    }
    let base = base.expect("checked");
    make_dir(dir)?;
    let diverged = base.cp < sb.cp;
    let kept = if diverged {
        let keep = match keep_as {
            Some(p) => p.to_path_buf(),
            None => default_keep(image, sb.cp.0)?,
        };
        copy_image(&source, &keep, progress)?;
        Some(keep)
    } else {
        None
    };
    if !resuming {
        place_image(image, &mirror, progress)?;
    }
    let rolled = Superblock {
        replica: true,
        ..base.clone()
    };
    let mut state = PeerState {
        volume_uuid: Some(sb.uuid),
        rollback: Some(rolled.encode().to_vec()),
        ..PeerState::default()
    };
    state.ensure_peer_id();
    state.store(dir)?;
    {
        let _lock = DirLock::acquire(dir)?;
        let mut img = MirrorImage::open(&mirror)?;
        img.roll_back_to(&rolled)?;
        state.rollback = None;
        state.store(dir)?;
    }
    log::info!(
        "{} is now the replica in {} at CP {} (the old source was at CP {})",
        image.display(),
        dir.display(),
        base.cp.0,
        sb.cp.0
    );
    Ok(FailedBack {
        base_cp: Some(base.cp.0),
        source_cp: sb.cp.0,
        kept,
    })
}

/// The image of a primary that handed over in a switchover becomes the
/// replica in `dir`, holding its final CP `sb` (which the new primary's
/// history extends): it moves into `dir` (unless it is `dir`'s own image
/// already, from an earlier role as a peer) and its superblock is rewritten
/// as a replica's. Nothing is copied: the image stays open by the old
/// primary's now read-only volume, which shows the replica from then on.
pub fn become_peer_dir(image: &Path, dir: &Path, sb: &Superblock) -> Result<()> {
    let mirror = dir.join(IMAGE_FILE);
    let own =
        mirror.exists() && std::fs::canonicalize(&mirror).ok() == std::fs::canonicalize(image).ok();
    if !own {
        if dir.join(STATE_FILE).exists() {
            return Err(PeerError::Dir {
                dir: dir.to_path_buf(),
                problem: "it is already a peer directory; give a new one".into(),
            });
        }
        make_dir(dir)?;
        std::fs::rename(image, &mirror).map_err(|e| {
            PeerError::io(
                format!(
                    "moving {} to {} (they must be on one file system)",
                    image.display(),
                    mirror.display()
                ),
                e,
            )
        })?;
        for d in [image.parent(), Some(dir)].into_iter().flatten() {
            if !d.as_os_str().is_empty() {
                fsync_dir(d)?;
            }
        }
    }
    let rolled = Superblock {
        replica: true,
        peer_hold: None,
        ..sb.clone()
    };
    let mut state = start_over(
        dir,
        PeerState {
            volume_uuid: Some(sb.uuid),
            rollback: Some(rolled.encode().to_vec()),
            ..PeerState::default()
        },
    )?;
    let _lock = DirLock::acquire(dir)?;
    let mut img = MirrorImage::open(&mirror)?;
    img.roll_back_to(&rolled)?;
    state.rollback = None;
    state.store(dir)
}

/// Opens `image` read-write once (replaying a crashed source's log into a
/// CP) and returns its committed superblock.
fn settle(image: &Path) -> Result<Superblock> {
    let dev = FileDevice::open(image, true).map_err(|e| {
        PeerError::io(
            format!("opening {} (it must not be mounted)", image.display()),
            e,
        )
    })?;
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let vol = Volume::open(
        dev.clone(),
        VolumeConfig {
            background: false,
            cp_interval: None,
            ..Default::default()
        },
    )
    .map_err(|e| PeerError::volume(format!("opening {}", image.display()), e))?;
    vol.close()
        .map_err(|e| PeerError::volume(format!("closing {}", image.display()), e))?;
    drop(vol);
    superblock::read_latest(&*dev)
        .map(|(sb, _)| sb)
        .map_err(|e| PeerError::volume(format!("reading {}", image.display()), e))
}

fn make_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PeerError::io(format!("creating {}", dir.display()), e))
}

/// `IMAGE.diverged-cpN`, beside the image (which must be a file).
fn default_keep(image: &Path, cp: u64) -> Result<PathBuf> {
    let meta = std::fs::metadata(image)
        .map_err(|e| PeerError::io(format!("reading {}", image.display()), e))?;
    if !meta.is_file() {
        return Err(PeerError::Dir {
            dir: image.to_path_buf(),
            problem: "it is a device: name the file that keeps its diverged state with --keep-as"
                .into(),
        });
    }
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".diverged-cp{cp}"));
    Ok(image.with_file_name(name))
}

/// Moves the image into the directory: a rename when both are on one file
/// system, else a copy (and the original is left in place for the user to
/// remove).
fn place_image(image: &Path, mirror: &Path, progress: Progress<'_>) -> Result<()> {
    let is_device = std::fs::metadata(image)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_device && std::fs::rename(image, mirror).is_ok() {
        for d in [image.parent(), mirror.parent()].into_iter().flatten() {
            if !d.as_os_str().is_empty() {
                fsync_dir(d)?;
            }
        }
        return Ok(());
    }
    copy_image(image, mirror, progress)?;
    log::warn!(
        "{} was copied into {} (another file system or a device); the original is no longer used",
        image.display(),
        mirror.display()
    );
    Ok(())
}

/// Bytes copied per step (and between progress reports).
const COPY_CHUNK_BYTES: usize = 4 << 20;

/// Copies `from` to `to` through `to.tmp`, keeping holes (all-zero chunks
/// are not written), syncs and renames it into place.
pub fn copy_image(from: &Path, to: &Path, progress: Progress<'_>) -> Result<()> {
    let mut src =
        File::open(from).map_err(|e| PeerError::io(format!("opening {}", from.display()), e))?;
    let total = FileDevice::open(from, false)
        .map(|d| d.num_blocks() * twinfs_fs::BLOCK_SIZE_U64)
        .map_err(|e| PeerError::io(format!("opening {}", from.display()), e))?;
    let mut tmp_name = to.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = to.with_file_name(tmp_name);
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| PeerError::io(format!("creating {}", tmp.display()), e))?;
    dst.set_len(total)
        .map_err(|e| PeerError::io(format!("sizing {}", tmp.display()), e))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut done = 0u64;
    let mut reported = Instant::now();
    progress(0, total);
    while done < total {
        let n = (total - done).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(|e| PeerError::io(format!("reading {}", from.display()), e))?;
        if buf[..n].iter().any(|&b| b != 0) {
            std::os::unix::fs::FileExt::write_all_at(&dst, &buf[..n], done)
                .map_err(|e| PeerError::io(format!("writing {}", tmp.display()), e))?;
        }
        done += n as u64;
        if reported.elapsed() >= Duration::from_secs(1) {
            progress(done, total);
            reported = Instant::now();
        }
    }
    dst.flush()
        .and_then(|()| dst.sync_all())
        .map_err(|e| PeerError::io(format!("syncing {}", tmp.display()), e))?;
    drop(dst);
    std::fs::rename(&tmp, to)
        .map_err(|e| PeerError::io(format!("renaming {} to {}", tmp.display(), to.display()), e))?;
    if let Some(d) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsync_dir(d)?;
    }
    progress(total, total);
    Ok(())
}

/// What `resolve --keep-as` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptAside {
    /// The volume the replica became.
    pub kept: PathBuf,
    /// Its CP (after promote replayed the held transfers).
    pub cp: u64,
}

/// `twinfs resolve --dir DIR --keep-as FILE`: the replica in `dir` becomes a
/// volume at `keep_as` (promoted: it mounts read-write) and `dir` starts
/// over, bound to the same volume, for a full resync from the next source.
pub fn resolve_keep_as(dir: &Path, keep_as: &Path, progress: Progress<'_>) -> Result<KeptAside> {
    if keep_as.exists() {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: format!("{} exists already; name a new file", keep_as.display()),
        });
    }
    let state = PeerState::load(dir)?;
    let mirror = dir.join(IMAGE_FILE);
    let cp = if mirror.is_file() {
        let p = promote(dir)?;
        place_image(&mirror, keep_as, progress)?;
        if mirror.exists() {
            std::fs::remove_file(&mirror)
                .map_err(|e| PeerError::io(format!("removing {}", mirror.display()), e))?;
        }
        p.final_cp
    } else if state.promoted {
        // An earlier run moved the image and stopped before the reset.
        0
    } else {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: "it holds no replica to keep".into(),
        });
    };
    let _lock = DirLock::acquire(dir)?;
    start_over(
        dir,
        PeerState {
            volume_uuid: state.volume_uuid,
            ..PeerState::default()
        },
    )?;
    fsync_dir(dir)?;
    log::info!(
        "{}: the replica is kept as the volume {}; the directory starts over",
        dir.display(),
        keep_as.display()
    );
    Ok(KeptAside {
        kept: keep_as.to_path_buf(),
        cp,
    })
}

/// `twinfs resolve --dir DIR --keep-replica`: the replica stays; the record
/// of the refused source is cleared. Returns whether there was one.
pub fn resolve_keep_replica(dir: &Path) -> Result<bool> {
    let _lock = DirLock::acquire(dir)?;
    let mut state = PeerState::load(dir)?;
    if state.divergence.take().is_none() {
        return Ok(false);
    }
    state.store(dir)?;
    let _ = std::fs::remove_file(dir.join(STATUS_FILE));
    Ok(true)
}

/// Gives peer directory `dir` the state `state` (with a new peer ID) and
/// nothing else of its past: no staging journal, status or log store.
/// Returns the state as stored.
fn start_over(dir: &Path, mut state: PeerState) -> Result<PeerState> {
    state.ensure_peer_id();
    state.store(dir)?;
    for f in [JOURNAL_FILE, STATUS_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let log = dir.join(LOG_DIR);
    if log.exists() {
        std::fs::remove_dir_all(&log)
            .map_err(|e| PeerError::io(format!("removing {}", log.display()), e))?;
    }
    Ok(state)
}
