//! Control of a running mount: a Unix socket the mount process serves, found
//! from the mount point.
//!
//! The socket lives in `/run/twinfs/` (or `$XDG_RUNTIME_DIR/twinfs/`, or
//! `/tmp/twinfs-UID/` for users without either), named after a hash of the
//! mount point's canonical path, in a directory only its owner can enter.
//! One request per connection: a JSON object on one line, answered by one
//! JSON object on one line, `{"ok": true, ...}` or `{"ok": false, "error": ...}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use twinfs_fs::Volume;
use twinfs_replicate::source::{Mirror, Mode, Phase};

use crate::cmd::status::{
    headline, ByteCounters, Capacity, EncodingCounter, FsyncLatency, MountStatus, PeerStatus,
    ResyncStatus, STATUS_SCHEMA_VERSION,
};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long `checkpoint` waits for a connected peer to apply the CP.
const PEER_APPLY_WAIT: Duration = Duration::from_secs(600);

/// A request to the mount process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Checkpoint,
    /// Without a name: `cp-N` after the CP the snapshot holds.
    SnapshotCreate {
        name: Option<String>,
    },
    SnapshotList,
    SnapshotDelete {
        name: String,
    },
    Verify {
        deep: bool,
    },
    /// Hand the volume over to the peer and become its peer, listening on
    /// `listen`, the image moving into the peer directory `dir`.
    Switchover {
        listen: Option<String>,
        dir: Option<PathBuf>,
    },
}

/// Parses one request line as the control server reads it (JSON, one
/// object); the error says why it is not a request.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// The directory holding control sockets for this user.
fn socket_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/twinfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("twinfs"),
        None => PathBuf::from(format!("/tmp/twinfs-{uid}")),
    }
}

/// The control socket of the mount at `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> std::io::Result<PathBuf> {
    let canon = std::fs::canonicalize(mountpoint)?;
    let hash = blake3::hash(canon.as_os_str().as_encoded_bytes());
    Ok(socket_dir().join(format!("{}.sock", &hash.to_hex()[..24])))
}

/// Why a request to a mount failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No twinfs mount process answers at the path; the message says what
    /// is there instead and what to do (see [`diagnose`]).
    #[error("{0}")]
    NoMount(String),
    /// The mount answered and refused, or the exchange broke off.
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    /// The command error: a missing mount carries its own fix; a refusal
    /// gets the command's `todo`.
    pub fn into_cmd(self, what: impl Into<String>, todo: &str) -> crate::error::CmdError {
        match self {
            ControlError::NoMount(m) => crate::error::CmdError::said(what, m),
            ControlError::Failed(m) => crate::error::CmdError::failed(what, m, todo),
        }
    }
}

/// Sends `req` to the mount at `mountpoint` and returns its answer.
pub fn request(mountpoint: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let path = socket_path(mountpoint)
        .map_err(|e| ControlError::NoMount(format!("{}: {e}", mountpoint.display())))?;
    let mut s =
        UnixStream::connect(&path).map_err(|_| ControlError::NoMount(diagnose(mountpoint)))?;
    let failed = ControlError::Failed;
    let mut line = serde_json::to_string(req).map_err(|e| failed(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| failed(format!("sending to the mount: {e}")))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| failed(format!("reading the mount's answer: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| failed(format!("the mount's answer is not JSON: {e}")))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(failed(
            v["error"]
                .as_str()
                .unwrap_or("the mount refused the request")
                .to_string(),
        ))
    }
}

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses `/proc/self/mountinfo` text (octal escapes such as `\040` undone).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let unescape = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match (b[i], octal) {
                (b'\\', Some(d)) => {
                    out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// What is mounted at `mountpoint` (the topmost mount), if anything.
fn mounted_at(mountpoint: &Path) -> Option<MountEntry> {
    let canon = std::fs::canonicalize(mountpoint).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == canon)
}

/// Why no twinfs mount answers at `mountpoint`, and what to do: one cause
/// and one fix, from what the kernel has mounted there.
pub fn diagnose(mountpoint: &Path) -> String {
    let mp = mountpoint.display();
    match mounted_at(mountpoint) {
        None => format!(
            "{mp} is not mounted; mount a volume there with `twinfs mount IMAGE {mp}`"
        ),
        Some(m) if m.fstype != "fuse.twinfs" => format!(
            "{mp} is a {} mount of {}, not twinfs; give the mount point of a twinfs volume",
            m.fstype, m.source
        ),
        Some(m) if m.source.ends_with(twinfs_replicate::peer::IMAGE_FILE) => {
            let dir = Path::new(&m.source)
                .parent()
                .map_or_else(|| "DIR".to_string(), |d| d.display().to_string());
            format!(
                "{mp} is a read-only view of the peer directory {dir}, not a source volume; see `twinfs status --dir {dir}`"
            )
        }
        Some(m) => format!(
            "the twinfs mount of {} at {mp} does not answer (its process has ended); unmount it with `umount {mp}` and mount it again",
            m.source
        ),
    }
}

/// What answers a mount's control requests (the node serving it).
pub trait Serve: Send + Sync {
    fn answer(self: Arc<Self>, req: Request) -> Result<serde_json::Value, String>;
}

/// A primary's parts that answer requests.
pub struct Target {
    pub vol: Arc<Volume>,
    pub mirror: Option<Arc<Mirror>>,
    pub mode: Mode,
}

/// A running control server; dropping it removes the socket.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control socket of `mountpoint` on a thread. Fails if another
/// mount already answers there.
pub fn serve<T: Serve + 'static>(mountpoint: &Path, target: Arc<T>) -> Result<Server, String> {
    let path = socket_path(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let dir = path.parent().expect("socket path has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "{} is already served by a running twinfs mount",
            mountpoint.display()
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::Builder::new()
        .name("twinfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let t = target.clone();
                // Each request on its own thread: a long checkpoint or verify
                // must not block status.
                let _ = std::thread::Builder::new()
                    .name("twinfs-control-req".into())
                    .spawn(move || handle(conn, t));
            }
        })
        .map_err(|e| format!("starting the control thread: {e}"))?;
    Ok(Server { path, stop })
}

fn handle<T: Serve>(conn: UnixStream, t: Arc<T>) {
    let mut line = String::new();
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST_BYTES));
    let answer = match reader.read_line(&mut line) {
        Err(e) => serde_json::json!({"ok": false, "error": format!("reading the request: {e}")}),
        Ok(_) => match parse_request(&line) {
            Err(e) => serde_json::json!({"ok": false, "error": e}),
            Ok(req) => match t.answer(req) {
                Ok(mut v) => {
                    v["ok"] = true.into();
                    v
                }
                Err(e) => serde_json::json!({"ok": false, "error": e}),
            },
        },
    };
    let mut w = &conn;
    let _ = writeln!(w, "{answer}");
}

/// Answers a request to a primary.
pub fn answer(req: Request, t: &Target) -> Result<serde_json::Value, String> {
    match req {
        Request::Status => serde_json::to_value(mount_status(t)).map_err(|e| e.to_string()),
        Request::Checkpoint => {
            let cp = t
                .vol
                .checkpoint()
                .map_err(|e| format!("checkpoint failed: {e}"))?;
            let (applied, why) = match &t.mirror {
                None => (None, None),
                Some(m) => peer_applied(m, t.mode, cp),
            };
            Ok(serde_json::json!({"cp": cp.0, "applied_at_peer": applied, "peer_note": why}))
        }
        Request::SnapshotCreate { name } => {
            let label = name.clone().unwrap_or_else(|| "cp-N".into());
            let (id, name) = match name {
                Some(name) => t.vol.snapshot_create(&name).map(|id| (id, name)),
                None => t.vol.snapshot_create_named_by_cp(),
            }
            .map_err(|e| format!("creating snapshot {label:?}: {e}"))?;
            Ok(serde_json::json!({"id": id, "name": name}))
        }
        Request::SnapshotDelete { name } => {
            t.vol
                .snapshot_delete(&name)
                .map_err(|e| format!("deleting snapshot {name:?}: {e}"))?;
            Ok(serde_json::json!({"name": name}))
        }
        Request::SnapshotList => {
            let list: Vec<serde_json::Value> = t
                .vol
                .snapshot_list()
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "id": s.id, "name": s.name, "cp": s.cp.0,
                        "created": s.created.secs, "root_hash": s.root_hash.to_hex(),
                    })
                })
                .collect();
            Ok(serde_json::json!({ "snapshots": list }))
        }
        Request::Verify { deep } => {
            let m = t
                .mirror
                .as_ref()
                .ok_or("this mount has no peer to verify against")?;
            // Make the latest changes part of the comparison.
            let cp = t
                .vol
                .checkpoint()
                .map_err(|e| format!("checkpoint failed: {e}"))?;
            if !m.wait_applied(cp, PEER_APPLY_WAIT) {
                return Err(format!(
                    "the peer has not applied CP {} (is it connected?)",
                    cp.0
                ));
            }
            let o = m.verify(deep, Duration::from_secs(3600))?;
            Ok(serde_json::json!({
                "cp": o.cp.0,
                "equal": o.equal(),
                "source_root_hash": o.source_root.to_hex(),
                "peer_root_hash": o.peer_root.to_hex(),
                "source_deep_hash": o.source_deep.as_deref().map(twinfs_fs::hex),
                "peer_deep_hash": o.peer_deep.as_deref().map(twinfs_fs::hex),
            }))
        }
        Request::Switchover { .. } => Err("switchover is answered by the node".into()),
    }
}

/// Whether the peer applied CP `cp`, and if not, why. In sync and strict
/// mode a CP the peer did not apply is a failure (`Some(false)`), connected
/// or not; in async mode only when a connected peer failed to apply it, and
/// a disconnected peer is `None` (not asked).
fn peer_applied(m: &Mirror, mode: Mode, cp: twinfs_fs::CpNumber) -> (Option<bool>, Option<String>) {
    let st = m.status();
    if st.connected && m.wait_applied(cp, PEER_APPLY_WAIT) {
        return (Some(true), None);
    }
    let st = m.status();
    let why = match (&st.divergence, st.connected) {
        (Some(d), _) => format!("the peer refused this volume: {}", d.kind),
        (None, true) => format!("the peer did not apply it within {PEER_APPLY_WAIT:?}"),
        (None, false) => format!(
            "the peer {} is not connected{}",
            st.addr,
            st.last_error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}"))
        ),
    };
    match mode {
        Mode::Async if !st.connected => (None, Some(why)),
        _ => (Some(false), Some(why)),
    }
}

/// The `status` of a mount (DESIGN.md "Command line and status").
pub fn mount_status(t: &Target) -> MountStatus {
    let v = t.vol.status();
    let mut s = MountStatus {
        role: "primary".into(),
        cp: v.cp.0,
        root_hash: v.root_hash.to_hex(),
        mode: t.mode.name().to_string(),
        peer: None,
        bytes: ByteCounters {
            written: v.bytes_written,
            ..Default::default()
        },
        lineage: twinfs_replicate::history::lineage_json(Some(&t.vol.lineage())),
        schema_version: STATUS_SCHEMA_VERSION,
        state: String::new(),
        action: String::new(),
        mode_in_force: "local".into(),
        cp_age_secs: age_secs(v.cp_time.secs),
        lag_cps: None,
        capacity: capacity(&t.vol),
        fsync: FsyncLatency::of(&t.vol.stats().fsync_latency.snapshot()),
    };
    if let Some(m) = &t.mirror {
        let st = m.status();
        let c = m.counters();
        let enc = |k: &twinfs_replicate::source::Counter| {
            let (blocks, bytes) = k.get();
            EncodingCounter { blocks, bytes }
        };
        s.bytes.log_sent = c.log_sent.load(Ordering::Relaxed);
        s.bytes.cp_sent = c.cp_sent.load(Ordering::Relaxed);
        s.bytes.wire_total = c.wire_total.load(Ordering::Relaxed);
        s.bytes.full = enc(&c.full);
        s.bytes.refs = enc(&c.refs);
        s.bytes.recipes = enc(&c.recipes);
        s.bytes.deltas = enc(&c.deltas);
        s.bytes.misses = enc(&c.misses);
        let state = if let (Some(d), false) = (&st.divergence, st.connected) {
            d.kind.clone()
        } else if st.degraded && st.phase != Phase::Streaming {
            "degraded-async".to_string()
        } else if st.degraded {
            format!("{}-degraded", st.phase.name())
        } else {
            st.phase.name().to_string()
        };
        s.peer = Some(PeerStatus {
            connected: st.connected,
            addr: st.addr.clone(),
            acked_cp: st.acked_cp.map_or(0, |c| c.0),
            acked_root_hash: st.acked_root_hash.map(|h| h.to_hex()).unwrap_or_default(),
            state,
            resync: st.resync.as_ref().map(|r| ResyncStatus {
                target_cp: r.target_cp.0,
                bytes_total: r.bytes_total,
                bytes_left: r.bytes_total.saturating_sub(r.bytes_done),
                rate_bytes_per_sec: r.rate() as u64,
                eta_secs: r.eta_secs() as u64,
            }),
            alarm: st.alarm.clone(),
            last_error: st.last_error.clone(),
            rtt_ms: st.rtt_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
            divergence: st.divergence.clone(),
        });
        s.lag_cps = Some(v.cp.0.saturating_sub(st.acked_cp.map_or(0, |c| c.0)));
        s.mode_in_force = if st.degraded {
            "async".into()
        } else {
            t.mode.name().to_string()
        };
    }
    let (h, action) = headline(&s, v.failed.as_deref(), v.read_only);
    s.state = h.name().to_string();
    s.action = action;
    s
}

/// Seconds from `secs` (since the epoch) to now; 0 for a time in the future.
fn age_secs(secs: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now.saturating_sub(secs).max(0) as u64
}

/// The volume's space as `df` sees it, and its snapshots.
fn capacity(vol: &Volume) -> Capacity {
    let f = vol.statfs();
    let st = vol.status();
    let block = u64::from(f.block_size);
    Capacity {
        snapshot_bytes: st.snapshot_only_blocks * block,
        peer_held_bytes: st.peer_only_blocks * block,
        size_bytes: f.blocks * block,
        used_bytes: f.blocks.saturating_sub(f.blocks_free) * block,
        free_bytes: f.blocks_free * block,
        snapshots: vol.snapshot_list().len() as u64,
    }
}
