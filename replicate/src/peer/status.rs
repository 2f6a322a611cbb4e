//! `DIR/status.json` and `twinfs status --dir DIR`.
//!
//! The daemon rewrites `status.json` atomically (tmp + rename, not fsync'ed:
//! it is a report, not state) after each applied CP, at the start and end of
//! each session, and every [`super::daemon::STATUS_INTERVAL_MS`] while a
//! session runs. Field names are stable:
//!
//! ```json
//! {
//!   "applied_cp": 12,                 // or null before the first CP
//!   "root_hash": "9f…",               // hex, or null
//!   "log_bytes_held": 1048632,        // bytes of log store segments
//!   "log_transfers": 3,               // transfers in them
//!   "durable_transfer": 41,           // what the peer acknowledges
//!   "volume_uuid": "00112233…",       // hex, or null before a source was accepted
//!   "source_connected": true,
//!   "last_error": null,               // or what ended the last session
//!   "daemon_running": true,
//!   "promoted": false,
//!   "state": "connected",             // see PeerStatus::state
//!   "peer_id": "0123456789abcdef",    // the directory's random ID
//!   "lineage": [{"generation": "…", "first_cp": 0}],   // of the applied CP
//!   "divergence": null                // or the last source refused (history::DivergenceReport)
//! }
//! ```
//!
//! [`peer_status`] reads it while the daemon runs (it holds `DIR/lock`), and
//! otherwise works the status out from the directory itself: the image's
//! superblock, the state file and the log store's record headers.

use std::path::Path;

use serde::{Deserialize, Serialize};
use twinfs_fs::device::FileDevice;
use twinfs_fs::superblock;

use super::logstore;
use super::state::{write_atomic, DirLock, PeerState};
use super::{PeerError, Result, IMAGE_FILE, LOCK_FILE, LOG_DIR, STATE_FILE, STATUS_FILE};
use crate::history::{lineage_json, DivergenceReport, GenerationJson};

/// Largest status file read.
const MAX_STATUS_BYTES: u64 = 64 * 1024;

/// The peer's side of `twinfs status` (`--dir DIR`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The CP the mirror holds.
    pub applied_cp: Option<u64>,
    /// Its root hash, hex.
    pub root_hash: Option<String>,
    /// Bytes of the log store's segment files.
    pub log_bytes_held: u64,
    /// Transfers held in the log store.
    pub log_transfers: u64,
    /// Highest transfer held or contained in the applied CP.
    pub durable_transfer: u64,
    /// The volume the directory is bound to, hex.
    pub volume_uuid: Option<String>,
    /// A source session is up.
    pub source_connected: bool,
    /// What ended the last session or failed last, if anything.
    pub last_error: Option<String>,
    /// The daemon holds the directory now.
    pub daemon_running: bool,
    /// The directory was promoted into a read-write volume.
    pub promoted: bool,
    /// The headline: `split-brain`, `source-behind` or `peer-behind` while a
    /// refused source is on record; else `promoted`, `connected` (a source
    /// session is up) or `waiting`.
    #[serde(default)]
    pub state: String,
    /// The directory's random ID, hex.
    #[serde(default)]
    pub peer_id: String,
    /// The lineage of the applied CP, oldest generation first.
    #[serde(default)]
    pub lineage: Vec<GenerationJson>,
    /// The last source refused for a history that does not extend this
    /// replica's, until `twinfs resolve` clears it.
    #[serde(default)]
    pub divergence: Option<DivergenceReport>,
}

impl PeerStatus {
    /// The headline state for the other fields (see [`PeerStatus::state`]).
    pub fn headline(&self) -> String {
        match &self.divergence {
            Some(d) => d.kind.clone(),
            None if self.promoted => "promoted".into(),
            None if self.source_connected => "connected".into(),
            None => "waiting".into(),
        }
    }

    /// The status as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the status always serializes")
    }
}

/// Writes `DIR/status.json` atomically.
pub fn write_status_file(dir: &Path, status: &PeerStatus) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(status).expect("the status always serializes");
    bytes.push(b'\n');
    write_atomic(&dir.join(STATUS_FILE), &bytes, false)
}

/// Reads `DIR/status.json`, if present and well formed.
pub fn read_status_file(dir: &Path) -> Option<PeerStatus> {
    let path = dir.join(STATUS_FILE);
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > MAX_STATUS_BYTES {
        return None;
    }
    serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
}

/// The peer's status for `twinfs status --dir DIR`: the daemon's own report
/// while it runs, otherwise what the directory shows.
pub fn peer_status(dir: &Path) -> Result<PeerStatus> {
    if !dir.is_dir() {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: "no such directory; give the --dir of a twinfs peer".into(),
        });
    }
    if !is_peer_dir(dir) {
        return Err(PeerError::Dir {
            dir: dir.to_path_buf(),
            problem: format!(
                "not a twinfs peer directory (it holds no {STATE_FILE}, {IMAGE_FILE} or {LOG_DIR}/); give the --dir that `twinfs peer` uses"
            ),
        });
    }
    let reported = read_status_file(dir);
    if DirLock::is_held(dir) {
        if let Some(mut s) = reported {
            s.daemon_running = true;
            return Ok(s);
        }
    }
    let mut s = offline_status(dir)?;
    s.daemon_running = DirLock::is_held(dir);
    s.last_error = reported.and_then(|r| r.last_error);
    s.state = s.headline();
    Ok(s)
}

/// Whether `dir` looks like a peer directory: `twinfs peer` has written
/// its state, its mirror image or its log store there (an empty directory
/// it was just given has the lock file once the daemon started on it).
pub fn is_peer_dir(dir: &Path) -> bool {
    [STATE_FILE, IMAGE_FILE, LOG_DIR, STATUS_FILE, LOCK_FILE]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// The status worked out from the directory alone (the daemon is down).
fn offline_status(dir: &Path) -> Result<PeerStatus> {
    let state = PeerState::load(dir)?;
    let image = dir.join(IMAGE_FILE);
    let sb = match FileDevice::open(&image, false) {
        Ok(dev) if twinfs_fs::device::BlockDevice::num_blocks(&dev) >= 2 => {
            superblock::read_latest(&dev).ok().map(|(sb, _)| sb)
        }
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PeerError::io(format!("reading {}", image.display()), e)),
    };
    let count = logstore::quick_count(&dir.join(LOG_DIR));
    let covered = sb
        .as_ref()
        .map_or(0, |s| s.log.next_transfer.0.saturating_sub(1));
    let mut status = PeerStatus {
        applied_cp: sb.as_ref().map(|s| s.cp.0),
        root_hash: sb.as_ref().map(|s| s.root_hash().to_hex()),
        log_bytes_held: count.bytes,
        log_transfers: count.transfers,
        durable_transfer: count.highest.max(covered),
        volume_uuid: state.volume_uuid.map(|u| twinfs_fs::hex(&u)),
        source_connected: false,
        last_error: None,
        daemon_running: false,
        promoted: state.promoted,
        state: String::new(),
        peer_id: format!("{:016x}", state.peer_id),
        lineage: lineage_json(sb.as_ref().map(|s| &s.lineage)),
        divergence: state.divergence,
    };
    status.state = status.headline();
    Ok(status)
}
