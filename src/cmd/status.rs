//! `twinfs status (MOUNTPOINT | --dir DIR) [--json]`
//!
//! The JSON shapes below are the stable contract of DESIGN.md ("Field names
//! are stable"): tests and benchmarks read them, `man/twinfs.8` documents
//! every field (checked by `tests/cli_man.rs`). Add fields; never rename.

use serde::Serialize;

use crate::cli::{StatusArgs, StatusTarget};
use crate::cmd::require_dir;
use crate::error::CmdError;

/// `status MOUNTPOINT`: the source volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MountStatus {
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
}

/// The mount's view of its peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub connected: bool,
    /// HOST:PORT as configured.
    pub addr: String,
    /// Last CP the peer acknowledged as applied.
    pub acked_cp: u64,
    /// Root hash the peer reported for `acked_cp`, hex.
    pub acked_root_hash: String,
    /// What the link is doing: e.g. `connecting`, `resync`, `streaming`,
    /// `degraded-async` (sync mode carrying on without the peer).
    pub state: String,
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

/// `status --dir DIR`: the peer's side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirStatus {
    /// Last CP applied to the mirror image.
    pub applied_cp: u64,
    /// Root hash of `applied_cp`, hex.
    pub root_hash: String,
    /// Bytes of log transfers held (not yet covered by an applied CP).
    pub log_bytes_held: u64,
}

/// Prints the status of a mount or a peer directory.
///
/// To wire: obtain a [`MountStatus`] from the daemon serving the mount point,
/// or a [`DirStatus`] from the peer directory's state, and pass it to
/// [`render`].
pub fn run(args: StatusArgs) -> Result<(), CmdError> {
    match args.target() {
        StatusTarget::Mount(mp) => {
            require_dir("status", &mp, "give the mount point of a twinfs volume")?
        }
        StatusTarget::Dir(dir) => {
            require_dir("status --dir", &dir, "give the --dir of a twinfs peer")?
        }
    }
    Err(CmdError::NotBuilt { command: "status" })
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
            cp: 7,
            root_hash: "ab12".into(),
            mode: "sync".into(),
            peer: Some(PeerStatus {
                connected: true,
                addr: "b:7070".into(),
                acked_cp: 7,
                acked_root_hash: "ab12".into(),
                state: "streaming".into(),
            }),
            bytes: ByteCounters {
                written: 8192,
                refs: EncodingCounter {
                    blocks: 2,
                    bytes: 24,
                },
                ..ByteCounters::default()
            },
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
        let dir = render(&DirStatus::default(), true).expect("renders");
        let v: serde_json::Value = serde_json::from_str(&dir).expect("one JSON object");
        let mut keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(keys, ["applied_cp", "log_bytes_held", "root_hash"]);
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
