//! `twinfs status (MOUNTPOINT | --dir DIR) [--json]`
//!
//! The JSON shapes below are the stable contract of DESIGN.md ("Field names
//! are stable"): tests and benchmarks read them, `man/twinfs.8` documents
//! every field (checked by `tests/cli_man.rs`). Add fields; never rename.

use serde::Serialize;
use twinfs_replicate::history::{DivergenceReport, GenerationJson};

use crate::cli::{StatusArgs, StatusTarget};
use crate::cmd::require_dir;
use crate::error::CmdError;

/// `status MOUNTPOINT`: the source volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MountStatus {
    /// `primary`: this mount serves the volume read-write (a mount that
    /// became its peer's replica in a switchover reports the peer directory
    /// instead, with `role` `replica` and `dir`).
    pub role: String,
    /// Last committed CP number.
    pub cp: u64,
    /// Root hash of that CP, hex.
    pub root_hash: String,
    /// `sync`, `strict` or `async` as configured.
    pub mode: String,
    /// `None` (JSON null) when the mount has no peer.
    pub peer: Option<PeerStatus>,
    /// Counters since mount.
    pub bytes: ByteCounters,
    /// The volume's lineage: the generations of its history, oldest first
    /// (the last one is this mount's).
    pub lineage: Vec<GenerationJson>,
}

/// The mount's view of its peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerStatus {
    pub connected: bool,
    /// HOST:PORT as configured.
    pub addr: String,
    /// Last CP the peer acknowledged as applied.
    pub acked_cp: u64,
    /// Root hash the peer reported for `acked_cp`, hex.
    pub acked_root_hash: String,
    /// What the link is doing: `disconnected`, `connecting`, `resyncing`,
    /// `streaming`, `degraded-async` (sync mode carrying on without the
    /// peer), or `split-brain`, `source-behind`, `peer-behind` when the peer
    /// refused this volume's history (see `divergence`).
    pub state: String,
    /// The peer refused this volume's history: both lineages, the newest
    /// common CP and what to do; else null.
    pub divergence: Option<DivergenceReport>,
    /// Progress of a running resync, else null.
    pub resync: Option<ResyncStatus>,
    /// A root hash mismatch seen with the peer (a resync follows), else null.
    pub alarm: Option<String>,
    /// The last connection or session error, else null.
    pub last_error: Option<String>,
    /// Last measured round trip to the peer, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// A resync in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResyncStatus {
    /// The CP being sent.
    pub target_cp: u64,
    pub bytes_total: u64,
    pub bytes_left: u64,
    pub rate_bytes_per_sec: u64,
    pub eta_secs: u64,
}

/// Byte counters since mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ByteCounters {
    /// Bytes clients wrote.
    pub written: u64,
    /// Wire bytes of log transfers.
    pub log_sent: u64,
    /// Wire bytes of CP messages.
    pub cp_sent: u64,
    /// All wire bytes to the peer (transfers, CPs, resync, handshake).
    pub wire_total: u64,
    /// Blocks sent whole.
    pub full: EncodingCounter,
    /// Blocks sent as (transfer, block number) references.
    pub refs: EncodingCounter,
    /// Blocks sent as recipes (base + logged ranges).
    pub recipes: EncodingCounter,
    /// Blocks sent as deltas against a previous block.
    pub deltas: EncodingCounter,
    /// Blocks the peer could not rebuild and that were resent in full.
    pub misses: EncodingCounter,
}

/// Blocks sent with one encoding, and the wire bytes they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EncodingCounter {
    pub blocks: u64,
    pub bytes: u64,
}

/// Prints the status of a mount (asked over its control socket) or of a
/// peer directory (from the daemon, or from DIR itself when it is down).
pub fn run(args: StatusArgs) -> Result<(), CmdError> {
    let text = match args.target() {
        StatusTarget::Mount(mp) => {
            require_dir("status", &mp, "give the mount point of a twinfs volume")?;
            let v = crate::control::request(&mp, &crate::control::Request::Status)
                .map_err(|e| e.into_cmd(format!("status {}", mp.display()), "try again"))?;
            let mut v = v;
            if let Some(o) = v.as_object_mut() {
                o.remove("ok");
            }
            if v["role"] == "replica" {
                // A replica view (a peer daemon's mount): its directory's status.
                let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap_or_default());
                let st = twinfs_replicate::peer::peer_status(&dir).map_err(|e| {
                    CmdError::failed(
                        format!("status {}", mp.display()),
                        e,
                        format!("see `twinfs status --dir {}`", dir.display()),
                    )
                })?;
                let mut st = serde_json::to_value(st)
                    .map_err(|e| CmdError::failed("status: encode", e, "report this as a bug"))?;
                st["role"] = "replica".into();
                st["dir"] = v["dir"].clone();
                v = st;
            }
            render(&v, args.json)?
        }
        StatusTarget::Dir(dir) => {
            require_dir("status --dir", &dir, "give the --dir of a twinfs peer")?;
            let what = format!("status --dir {}", dir.display());
            let st = twinfs_replicate::peer::peer_status(&dir).map_err(|e| match e {
                twinfs_replicate::peer::PeerError::Dir { problem, .. } => {
                    CmdError::said(what, problem)
                }
                e => CmdError::said(what, e),
            })?;
            render(&st, args.json)?
        }
    };
    print!("{text}");
    Ok(())
}

/// The text `status` prints: one JSON object with `--json`, otherwise one
/// `dotted.key: value` line per field.
pub fn render<T: Serialize>(status: &T, json: bool) -> Result<String, CmdError> {
    let value = serde_json::to_value(status)
        .map_err(|e| CmdError::failed("status: encode", e, "report this as a bug"))?;
    if json {
        return Ok(format!("{value}\n"));
    }
    let mut out = String::new();
    flatten("", &value, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push_str(&format!("{prefix}: {s}\n")),
        other => out.push_str(&format!("{prefix}: {other}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> MountStatus {
        MountStatus {
            role: "primary".into(),
            cp: 7,
            root_hash: "ab12".into(),
            mode: "sync".into(),
            peer: Some(PeerStatus {
                connected: true,
                addr: "b:7070".into(),
                acked_cp: 7,
                acked_root_hash: "ab12".into(),
                state: "streaming".into(),
                ..Default::default()
            }),
            bytes: ByteCounters {
                written: 8192,
                refs: EncodingCounter {
                    blocks: 2,
                    bytes: 24,
                },
                ..ByteCounters::default()
            },
            lineage: Vec::new(),
        }
    }

    #[test]
    fn json_has_the_contract_field_names() {
        let text = render(&example(), true).expect("renders");
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(v["cp"], 7);
        assert_eq!(v["root_hash"], "ab12");
        assert_eq!(v["mode"], "sync");
        assert_eq!(v["peer"]["connected"], true);
        assert_eq!(v["peer"]["acked_root_hash"], "ab12");
        assert_eq!(v["bytes"]["written"], 8192);
        assert_eq!(v["bytes"]["refs"]["blocks"], 2);
        for key in ["full", "refs", "recipes", "deltas", "misses"] {
            assert!(v["bytes"][key]["bytes"].is_u64(), "{key}");
        }
    }

    #[test]
    fn no_peer_is_json_null_and_text_is_dotted_lines() {
        let status = MountStatus {
            peer: None,
            ..example()
        };
        let json = render(&status, true).expect("renders");
        assert!(json.contains("\"peer\":null"), "{json}");
        let text = render(&example(), false).expect("renders");
        assert!(
            text.contains("\ncp: 7\n") || text.starts_with("cp: 7\n"),
            "{text}"
        );
        assert!(text.contains("peer.addr: b:7070\n"), "{text}");
        assert!(text.contains("bytes.refs.blocks: 2\n"), "{text}");
    }
}
