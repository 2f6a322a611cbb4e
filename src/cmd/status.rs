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
    /// Version of this JSON shape ([`STATUS_SCHEMA_VERSION`]); fields are
    /// only ever added within a version.
    pub schema_version: u32,
    /// The headline: one word for the whole volume (see [`Headline`]).
    pub state: String,
    /// What to do about `state`, or `none`.
    pub action: String,
    /// What fsync waits for now: `sync`, `strict` or `async` with a peer,
    /// `async` while sync mode carries on without its peer, `local` with
    /// no peer (fsync makes the change durable here only).
    pub mode_in_force: String,
    /// Seconds since the committed CP was taken.
    pub cp_age_secs: u64,
    /// CPs committed here that the peer has not applied yet (null: no peer).
    pub lag_cps: Option<u64>,
    /// Space of the volume.
    pub capacity: Capacity,
    /// How long fsyncs took since mount.
    pub fsync: FsyncLatency,
}

/// Latency of fsync (each call the FUSE adapter makes: concurrent fsyncs
/// that share one flush count once), as a histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FsyncLatency {
    pub count: u64,
    pub sum_secs: f64,
    /// `[le_secs, count]` pairs: fsyncs that took at most `le_secs`
    /// (cumulative, as Prometheus buckets), the last `le_secs` unbounded
    /// (JSON null).
    pub buckets: Vec<(Option<f64>, u64)>,
}

impl FsyncLatency {
    pub fn of(h: &twinfs_fs::volume::LatencySnapshot) -> FsyncLatency {
        let bounds = twinfs_fs::volume::LATENCY_BUCKET_BOUNDS_US;
        let mut total = 0;
        let buckets = h
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (bounds.get(i).map(|us| *us as f64 / 1e6), total)
            })
            .collect();
        FsyncLatency {
            count: total,
            sum_secs: h.sum_ns as f64 / 1e9,
            buckets,
        }
    }
}

/// Version of the `status --json` shapes (mount and `--dir`), documented
/// in twinfs(8). Version 1 is the first with a version number.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// Space of a mounted volume, in bytes (what `df` shows, plus snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Data area of the volume.
    pub size_bytes: u64,
    /// In use by the committed CP and what it keeps (snapshots, the peer's CP).
    pub used_bytes: u64,
    /// Free for new data now (as `df` shows it).
    pub free_bytes: u64,
    /// Snapshots kept.
    pub snapshots: u64,
    /// Kept only by snapshots: what deleting them all would free.
    pub snapshot_bytes: u64,
    /// Kept only for the peer's CP until it catches up.
    pub peer_held_bytes: u64,
}

/// The headline states of a mount, most urgent first: the first that
/// applies is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headline {
    /// The volume stopped after a failure (I/O error, corruption).
    Failed,
    /// The peer refused this volume's history (split brain, behind).
    Refused,
    /// A root hash mismatch with the peer was seen.
    Alarm,
    /// Sync mode carrying on without its peer.
    Degraded,
    /// The peer is not connected.
    Disconnected,
    /// A resync to the peer is running.
    Resyncing,
    /// Streaming to the peer, which lags some CPs behind.
    Mirroring,
    /// The peer holds every committed CP.
    Mirrored,
    /// A read-only mount (no changes, no mirroring).
    ReadOnly,
    /// No peer is configured.
    Local,
}

impl Headline {
    pub fn name(self) -> &'static str {
        match self {
            Headline::Failed => "failed",
            Headline::Refused => "refused",
            Headline::Alarm => "alarm",
            Headline::Degraded => "degraded",
            Headline::Disconnected => "disconnected",
            Headline::Resyncing => "resyncing",
            Headline::Mirroring => "mirroring",
            Headline::Mirrored => "mirrored",
            Headline::ReadOnly => "read-only",
            Headline::Local => "local",
        }
    }
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

/// The headline of a mount and what to do about it, from the rest of its
/// status; `failed` is the volume's own failure, if it stopped.
pub fn headline(s: &MountStatus, failed: Option<&str>, read_only: bool) -> (Headline, String) {
    let none = || "none".to_string();
    if let Some(why) = failed {
        return (
            Headline::Failed,
            format!("the volume stopped ({why}): unmount it and run `twinfs fsck` on the image"),
        );
    }
    let Some(p) = &s.peer else {
        return if read_only {
            (Headline::ReadOnly, none())
        } else {
            (
                Headline::Local,
                "none (not mirrored: mount with --peer HOST:PORT --secret FILE to mirror it)"
                    .into(),
            )
        };
    };
    if let Some(d) = &p.divergence {
        return (Headline::Refused, d.reason.clone());
    }
    if let Some(a) = &p.alarm {
        return (
            Headline::Alarm,
            format!("{a}: run `twinfs verify --deep` once the resync ends, and `twinfs fsck` on both sides if it differs"),
        );
    }
    let reconnect = || {
        format!(
            "check that the peer runs and is reachable at {} (`twinfs status --dir DIR` there){}; mirroring resumes by itself",
            p.addr,
            p.last_error.as_deref().map_or(String::new(), |e| format!("; last error: {e}"))
        )
    };
    if p.state.contains("degraded") {
        return (
            Headline::Degraded,
            format!(
                "fsync does not wait for the peer meanwhile; {}",
                reconnect()
            ),
        );
    }
    if !p.connected {
        return (Headline::Disconnected, reconnect());
    }
    if let Some(r) = &p.resync {
        return (
            Headline::Resyncing,
            format!(
                "none: {} left, about {} s",
                human_bytes(r.bytes_left),
                r.eta_secs
            ),
        );
    }
    if p.acked_cp < s.cp {
        return (Headline::Mirroring, none());
    }
    (Headline::Mirrored, none())
}

/// Prints the status of a mount (asked over its control socket) or of a
/// peer directory (from the daemon, or from DIR itself when it is down).
pub fn run(args: StatusArgs) -> Result<(), CmdError> {
    let Some(every) = args.watch else {
        print!("{}", once(&args)?);
        return Ok(());
    };
    let clear = !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let text = once(&args)?;
        if clear {
            print!("\x1b[H\x1b[2J");
        }
        print!("{text}");
        if !args.json {
            println!();
        }
        std::io::Write::flush(&mut std::io::stdout())
            .map_err(|e| CmdError::failed("status --watch: stdout", e, "stop watching"))?;
        std::thread::sleep(std::time::Duration::from_secs(every));
    }
}

/// The status text once.
fn once(args: &StatusArgs) -> Result<String, CmdError> {
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
    Ok(text)
}

/// The text `status` prints: one JSON object with `--json`, otherwise the
/// human view ([`human`]).
pub fn render<T: Serialize>(status: &T, json: bool) -> Result<String, CmdError> {
    let mut value = serde_json::to_value(status)
        .map_err(|e| CmdError::failed("status: encode", e, "report this as a bug"))?;
    if value.get("applied_cp").is_some() {
        add_dir_headline(&mut value);
    }
    if json {
        return Ok(format!("{value}\n"));
    }
    Ok(human(&value))
}

/// A peer directory's status gains the schema version and an action line
/// (the daemon's `status.json` has neither).
fn add_dir_headline(v: &mut serde_json::Value) {
    let state = v["state"].as_str().unwrap_or("").to_string();
    let running = v["daemon_running"] == true;
    let action = if let Some(reason) = v["divergence"]["reason"].as_str() {
        reason.to_string()
    } else if state == "promoted" {
        "none: this directory was promoted; mount the volume `twinfs promote` made".to_string()
    } else if !running {
        "start the peer daemon: `twinfs peer --dir DIR --listen ADDR --secret FILE` (or its systemd unit)".to_string()
    } else if state == "waiting" {
        "none: waiting for the source to connect (check its `twinfs status` if it should be)"
            .to_string()
    } else {
        "none".to_string()
    };
    v["schema_version"] = STATUS_SCHEMA_VERSION.into();
    v["action"] = action.into();
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in the two largest units: `42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`.
pub fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// The human view of a status (a mount's or a peer directory's JSON):
/// a headline and an action, then one labelled line per topic.
pub fn human(v: &serde_json::Value) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let str_of = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_string();
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    lines.push(("state", str_of(&v["state"]).to_uppercase()));
    lines.push(("action", str_of(&v["action"])));
    if v.get("applied_cp").is_some() {
        // A peer directory (or a replica view of one).
        if let Some(dir) = v["dir"].as_str() {
            lines.push(("dir", dir.to_string()));
        }
        lines.push((
            "daemon",
            if v["daemon_running"] == true {
                "running"
            } else {
                "not running"
            }
            .into(),
        ));
        lines.push((
            "source",
            if v["source_connected"] == true {
                "connected"
            } else {
                "not connected"
            }
            .into(),
        ));
        lines.push((
            "replica",
            match v["applied_cp"].as_u64() {
                Some(cp) => format!("CP {cp} applied, root {}", short(&str_of(&v["root_hash"]))),
                None => "no CP applied yet".into(),
            },
        ));
        if let Some(uuid) = v["volume_uuid"].as_str() {
            lines.push(("volume", uuid.to_string()));
        }
        lines.push((
            "log",
            format!(
                "{} transfers held, {}; durable up to transfer {}",
                u(&v["log_transfers"]),
                human_bytes(u(&v["log_bytes_held"])),
                u(&v["durable_transfer"])
            ),
        ));
        if let Some(e) = v["last_error"].as_str() {
            lines.push(("error", e.to_string()));
        }
    } else {
        lines.push((
            "cp",
            format!(
                "{}, taken {} ago, root {}",
                u(&v["cp"]),
                human_secs(u(&v["cp_age_secs"])),
                short(&str_of(&v["root_hash"]))
            ),
        ));
        let mode = str_of(&v["mode"]);
        let in_force = str_of(&v["mode_in_force"]);
        lines.push((
            "mode",
            if mode == in_force {
                mode
            } else {
                format!("{mode} configured, {in_force} in force")
            },
        ));
        let p = &v["peer"];
        if p.is_object() {
            let mut line = format!(
                "{} {}, applied CP {} (lag {} CP{})",
                str_of(&p["addr"]),
                str_of(&p["state"]),
                u(&p["acked_cp"]),
                u(&v["lag_cps"]),
                if u(&v["lag_cps"]) == 1 { "" } else { "s" }
            );
            if let Some(rtt) = p["rtt_ms"].as_f64() {
                line.push_str(&format!(", round trip {rtt:.1} ms"));
            }
            lines.push(("peer", line));
            if p["resync"].is_object() {
                let r = &p["resync"];
                lines.push((
                    "resync",
                    format!(
                        "to CP {}: {} of {} left, {}/s, about {} to go",
                        u(&r["target_cp"]),
                        human_bytes(u(&r["bytes_left"])),
                        human_bytes(u(&r["bytes_total"])),
                        human_bytes(u(&r["rate_bytes_per_sec"])),
                        human_secs(u(&r["eta_secs"]))
                    ),
                ));
            }
            if let Some(e) = p["last_error"].as_str() {
                lines.push(("error", e.to_string()));
            }
        } else {
            lines.push(("peer", "none".into()));
        }
        let c = &v["capacity"];
        let size = u(&c["size_bytes"]);
        let used = u(&c["used_bytes"]);
        let held = u(&c["peer_held_bytes"]);
        let mut line = format!(
            "{} used of {} ({}%), {} free{}, {} snapshot{}",
            human_bytes(used),
            human_bytes(size),
            (used * 100).checked_div(size).unwrap_or(0),
            human_bytes(u(&c["free_bytes"])),
            if held > 0 {
                format!(" ({} of it kept for the peer's CP)", human_bytes(held))
            } else {
                String::new()
            },
            u(&c["snapshots"]),
            if u(&c["snapshots"]) == 1 { "" } else { "s" }
        );
        if u(&c["snapshots"]) > 0 {
            line += &format!(" holding {}", human_bytes(u(&c["snapshot_bytes"])));
        }
        lines.push(("capacity", line));
        let b = &v["bytes"];
        lines.push((
            "traffic",
            format!(
                "{} written by clients, {} sent to the peer (log {}, CPs {})",
                human_bytes(u(&b["written"])),
                human_bytes(u(&b["wire_total"])),
                human_bytes(u(&b["log_sent"])),
                human_bytes(u(&b["cp_sent"]))
            ),
        ));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, val)| format!("{k:>width$}: {val}\n"))
        .collect()
}

/// The first 16 hex digits of a hash, enough to compare by eye.
fn short(hash: &str) -> String {
    hash.chars().take(16).collect()
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
            schema_version: STATUS_SCHEMA_VERSION,
            ..Default::default()
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
    fn no_peer_is_json_null_and_local() {
        let mut status = MountStatus {
            peer: None,
            ..example()
        };
        let (h, action) = headline(&status, None, false);
        assert_eq!(h, Headline::Local);
        status.state = h.name().into();
        status.action = action;
        let json = render(&status, true).expect("renders");
        assert!(json.contains("\"peer\":null"), "{json}");
        assert!(json.contains("\"state\":\"local\""), "{json}");
    }

    #[test]
    fn human_units_and_durations() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_secs(42), "42 s");
        assert_eq!(human_secs(185), "3 min 5 s");
        assert_eq!(human_secs(7800), "2 h 10 min");
        assert_eq!(human_secs(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }

    /// The human view of each state: the headline, its action, and the
    /// lines people look for, in units people read.
    #[test]
    fn human_view_of_each_mount_state() {
        let with = |f: &dyn Fn(&mut MountStatus)| {
            let mut st = example();
            st.cp_age_secs = 3;
            st.lag_cps = Some(0);
            st.mode_in_force = "sync".into();
            st.capacity = Capacity {
                size_bytes: 10 << 30,
                used_bytes: 1 << 30,
                free_bytes: 9 << 30,
                snapshots: 2,
                snapshot_bytes: 100 << 20,
                peer_held_bytes: 0,
            };
            f(&mut st);
            let (h, action) = headline(&st, None, false);
            st.state = h.name().into();
            st.action = action;
            human(&serde_json::to_value(&st).expect("json"))
        };
        let mirrored = with(&|_| {});
        assert_eq!(
            mirrored,
            "   state: MIRRORED\n  action: none\n      cp: 7, taken 3 s ago, root ab12\n    mode: sync\n    peer: b:7070 streaming, applied CP 7 (lag 0 CPs)\ncapacity: 1.0 GiB used of 10.0 GiB (10%), 9.0 GiB free, 2 snapshots holding 100.0 MiB\n traffic: 8.0 KiB written by clients, 0 B sent to the peer (log 0 B, CPs 0 B)\n"
        );
        let degraded = with(&|st| {
            let p = st.peer.as_mut().expect("peer");
            p.connected = false;
            p.state = "degraded-async".into();
            p.last_error = Some("connection refused".into());
            p.rtt_ms = Some(38.952377000000006);
            st.mode_in_force = "async".into();
            st.capacity.peer_held_bytes = 512 << 20;
        });
        assert!(
            degraded.contains("9.0 GiB free (512.0 MiB of it kept for the peer's CP), 2 snapshots"),
            "{degraded}"
        );
        assert!(degraded.starts_with("   state: DEGRADED\n  action: fsync does not wait for the peer meanwhile; check that the peer runs and is reachable at b:7070"), "{degraded}");
        assert!(
            degraded.contains("    mode: sync configured, async in force\n"),
            "{degraded}"
        );
        assert!(degraded.contains("round trip 39.0 ms"), "{degraded}");
        assert!(
            degraded.contains("   error: connection refused\n"),
            "{degraded}"
        );
        let resyncing = with(&|st| {
            let p = st.peer.as_mut().expect("peer");
            p.state = "resyncing".into();
            p.resync = Some(ResyncStatus {
                target_cp: 7,
                bytes_total: 4 << 30,
                bytes_left: 1 << 30,
                rate_bytes_per_sec: 100 << 20,
                eta_secs: 10,
            });
        });
        assert!(
            resyncing
                .starts_with("   state: RESYNCING\n  action: none: 1.0 GiB left, about 10 s\n"),
            "{resyncing}"
        );
        assert!(
            resyncing.contains(
                "  resync: to CP 7: 1.0 GiB of 4.0 GiB left, 100.0 MiB/s, about 10 s to go\n"
            ),
            "{resyncing}"
        );
        let split = with(&|st| {
            let p = st.peer.as_mut().expect("peer");
            p.connected = false;
            p.state = "split-brain".into();
            p.divergence = Some(DivergenceReport {
                kind: "split-brain".into(),
                common_cp: Some(5),
                source_cp: 8,
                source_lineage: Vec::new(),
                peer_cp: Some(6),
                peer_lineage: Vec::new(),
                reason: "both sides changed after CP 5; run `twinfs resolve` on the peer".into(),
                detected_at: 0,
            });
        });
        assert!(split.starts_with("   state: REFUSED\n  action: both sides changed after CP 5; run `twinfs resolve` on the peer\n"), "{split}");
        let local = with(&|st| st.peer = None);
        assert!(local.starts_with("   state: LOCAL\n"), "{local}");
        assert!(local.contains("    peer: none\n"), "{local}");
        let lagging = with(&|st| st.cp = 9);
        assert!(lagging.starts_with("   state: MIRRORING\n"), "{lagging}");
    }
}
