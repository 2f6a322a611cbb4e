//! `--metrics ADDR`: Prometheus text exposition over HTTP (`GET /metrics`)
//! for `twinfs mount` and `twinfs peer`, names prefixed `twinfs_`.
//!
//! Each scrape takes the same status `twinfs status --json` prints (the
//! mount's from its node, the peer's from its directory) and encodes it
//! with prometheus-client, so the metrics and the status never disagree.
//! The HTTP side is the least a scraper needs: one request per connection,
//! a bounded request head, `200` for `/metrics`, `404` otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Longest request head read from a scraper.
const MAX_REQUEST_HEAD_BYTES: u64 = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the values of a scrape come from: a status JSON object.
pub type Source = Arc<dyn Fn() -> Result<Value, String> + Send + Sync>;

type Labels = Vec<(String, String)>;

/// The status a scrape of a node reports: the mount's, or, once the node is
/// a replica (a peer's view, or after a switchover), its directory's.
pub fn node_source(node: Arc<std::sync::Mutex<Option<Arc<crate::node::Node>>>>) -> Source {
    Arc::new(move || {
        let Some(n) = node.lock().ok().and_then(|g| g.clone()) else {
            return Err("starting".into());
        };
        let v = crate::control::Serve::answer(n, crate::control::Request::Status)?;
        if v["role"] == "replica" {
            let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap_or_default());
            return dir_source(dir)();
        }
        Ok(v)
    })
}

/// The status of a peer directory.
pub fn dir_source(dir: std::path::PathBuf) -> Source {
    Arc::new(move || {
        let st = twinfs_replicate::peer::peer_status(&dir).map_err(|e| e.to_string())?;
        serde_json::to_value(st).map_err(|e| e.to_string())
    })
}

/// Serves metrics at `addr` on a thread of its own; returns the bound address.
pub fn serve(addr: &str, source: Source) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("twinfs-metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, &source) {
                    log::debug!("metrics request: {e}");
                }
            }
        })?;
    log::info!("serving Prometheus metrics at http://{local}/metrics");
    Ok(local)
}

fn answer(conn: TcpStream, source: &Source) -> std::io::Result<()> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST_HEAD_BYTES));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The rest of the head, up to the blank line: does the scraper take
    // OpenMetrics (Prometheus does), or the classic text format (curl,
    // promtool)?
    let mut header = String::new();
    let mut openmetrics = false;
    while reader.read_line(&mut header)? > 2 {
        let h = header.to_ascii_lowercase();
        if h.starts_with("accept:") && h.contains("application/openmetrics-text") {
            openmetrics = true;
        }
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method != "GET" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != "/metrics" && !path.starts_with("/metrics?") {
        ("404 Not Found", "see /metrics\n".to_string())
    } else {
        match source().and_then(|v| exposition(&v)) {
            Ok(text) if openmetrics => ("200 OK", text),
            Ok(text) => ("200 OK", classic_text(&text)),
            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
        }
    };
    let content_type = if openmetrics && status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let mut w = &conn;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// The exposition text of a status object (a mount's or a peer directory's).
pub fn exposition(v: &Value) -> Result<String, String> {
    let mut r = Registry::with_prefix("twinfs");
    if v.get("applied_cp").is_some() {
        peer_metrics(&mut r, v);
    } else {
        mount_metrics(&mut r, v);
    }
    let mut out = String::new();
    encode(&mut out, &r).map_err(|e| format!("encoding metrics: {e}"))?;
    Ok(out)
}

/// OpenMetrics text turned into the classic Prometheus text format 0.0.4:
/// a counter's HELP and TYPE name its `_total` series, and no `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    r.register(name, help, g);
}

fn gauge_f(r: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    r.register(name, help, c);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `NAME{state="S"} 1` for the current state and 0 for the others.
fn state_set(r: &mut Registry, name: &str, help: &str, states: &[&str], current: &str) {
    let f = Family::<Labels, Gauge>::default();
    for s in states {
        f.get_or_create(&labels(&[("state", s)]))
            .set(i64::from(*s == current));
    }
    r.register(name, help, f);
}

/// Headline states of a mount, as `status` names them.
const MOUNT_STATES: [&str; 10] = [
    "failed",
    "refused",
    "alarm",
    "degraded",
    "disconnected",
    "resyncing",
    "mirroring",
    "mirrored",
    "read-only",
    "local",
];

fn mount_metrics(r: &mut Registry, v: &Value) {
    let state = v["state"].as_str().unwrap_or("");
    state_set(
        r,
        "state",
        "Headline state of the mount (1 for the current one)",
        &MOUNT_STATES,
        state,
    );
    gauge(
        r,
        "cp",
        "Number of the last committed consistency point",
        u(&v["cp"]),
    );
    gauge(
        r,
        "cp_age_seconds",
        "Seconds since the committed CP was taken",
        u(&v["cp_age_secs"]),
    );
    let p = &v["peer"];
    gauge(
        r,
        "peer_configured",
        "1 when the mount mirrors to a peer",
        u64::from(p.is_object()),
    );
    gauge(
        r,
        "peer_connected",
        "1 while the connection to the peer is up",
        u64::from(p["connected"] == true),
    );
    gauge(
        r,
        "peer_acked_cp",
        "Last CP the peer applied",
        u(&p["acked_cp"]),
    );
    gauge(
        r,
        "replica_lag_cps",
        "CPs committed here that the peer has not applied",
        u(&v["lag_cps"]),
    );
    if let Some(ms) = p["rtt_ms"].as_f64() {
        gauge_f(
            r,
            "peer_rtt_seconds",
            "Last measured round trip to the peer",
            ms / 1000.0,
        );
    }
    gauge(
        r,
        "resync_bytes_left",
        "Bytes a running resync still has to send (0: none)",
        u(&p["resync"]["bytes_left"]),
    );
    let b = &v["bytes"];
    counter(
        r,
        "written_bytes",
        "Bytes clients wrote since mount",
        u(&b["written"]),
    );
    let wire = Family::<Labels, Counter>::default();
    for (kind, key) in [
        ("log", "log_sent"),
        ("cp", "cp_sent"),
        ("all", "wire_total"),
    ] {
        wire.get_or_create(&labels(&[("kind", kind)]))
            .inc_by(u(&b[key]));
    }
    r.register("sent_bytes", "Wire bytes sent to the peer since mount, by kind (all: every byte, handshakes and resyncs included)", wire);
    let blocks = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for enc in ["full", "refs", "recipes", "deltas", "misses"] {
        let l = labels(&[("encoding", enc)]);
        blocks.get_or_create(&l).inc_by(u(&b[enc]["blocks"]));
        bytes.get_or_create(&l).inc_by(u(&b[enc]["bytes"]));
    }
    r.register("cp_blocks", "Blocks sent in CPs since mount, by encoding (misses: blocks the peer could not rebuild, resent whole)", blocks);
    r.register(
        "cp_encoded_bytes",
        "Wire bytes of CP blocks since mount, by encoding",
        bytes,
    );
    let c = &v["capacity"];
    let cap = Family::<Labels, Gauge>::default();
    for (kind, key) in [
        ("size", "size_bytes"),
        ("used", "used_bytes"),
        ("free", "free_bytes"),
        ("snapshots", "snapshot_bytes"),
        ("peer_held", "peer_held_bytes"),
    ] {
        cap.get_or_create(&labels(&[("kind", kind)]))
            .set(i64::try_from(u(&c[key])).unwrap_or(i64::MAX));
    }
    r.register(
        "capacity_bytes",
        "Space of the volume: size, used, free (as df shows it); kept only by snapshots, only for the peer",
        cap,
    );
    gauge(r, "snapshots", "Snapshots kept", u(&c["snapshots"]));
    let errors = Family::<Labels, Gauge>::default();
    errors
        .get_or_create(&labels(&[("kind", "peer_session")]))
        .set(i64::from(p["last_error"].is_string()));
    errors
        .get_or_create(&labels(&[("kind", "hash_mismatch")]))
        .set(i64::from(p["alarm"].is_string()));
    errors
        .get_or_create(&labels(&[("kind", "divergence")]))
        .set(i64::from(p["divergence"].is_object()));
    errors
        .get_or_create(&labels(&[("kind", "volume_failed")]))
        .set(i64::from(state == "failed"));
    r.register(
        "error_present",
        "1 while an error of this kind is on record (see `twinfs status`)",
        errors,
    );
    if let Some(h) = FsyncHistogram::of(&v["fsync"]) {
        r.register(
            "fsync_seconds",
            "Latency of fsync: durable here and, in sync mode, at the peer",
            h,
        );
    }
}

/// The fsync histogram of a status, as a Prometheus histogram.
#[derive(Debug)]
struct FsyncHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone).
    buckets: Vec<(f64, u64)>,
}

impl FsyncHistogram {
    fn of(v: &Value) -> Option<FsyncHistogram> {
        let mut prev = 0;
        let buckets = v["buckets"]
            .as_array()?
            .iter()
            .map(|b| {
                let le = b[0].as_f64().unwrap_or(f64::INFINITY);
                let cumulative = u(&b[1]);
                let n = cumulative.saturating_sub(prev);
                prev = cumulative;
                (le, n)
            })
            .collect();
        Some(FsyncHistogram {
            sum: v["sum_secs"].as_f64().unwrap_or(0.0),
            count: u(&v["count"]),
            buckets,
        })
    }
}

impl prometheus_client::encoding::EncodeMetric for FsyncHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// States of a peer directory, as `status --dir` names them.
const PEER_STATES: [&str; 6] = [
    "waiting",
    "connected",
    "promoted",
    "split-brain",
    "source-behind",
    "peer-behind",
];

fn peer_metrics(r: &mut Registry, v: &Value) {
    let state = v["state"].as_str().unwrap_or("");
    state_set(
        r,
        "peer_state",
        "State of the peer directory (1 for the current one)",
        &PEER_STATES,
        state,
    );
    gauge(
        r,
        "peer_applied_cp",
        "Last CP applied to the mirror image",
        u(&v["applied_cp"]),
    );
    gauge(
        r,
        "peer_source_connected",
        "1 while a source session is up",
        u64::from(v["source_connected"] == true),
    );
    gauge(
        r,
        "peer_log_bytes",
        "Bytes of log transfers held that no applied CP covers yet",
        u(&v["log_bytes_held"]),
    );
    gauge(
        r,
        "peer_log_transfers",
        "Log transfers held",
        u(&v["log_transfers"]),
    );
    gauge(
        r,
        "peer_durable_transfer",
        "Highest transfer ID durable at the peer",
        u(&v["durable_transfer"]),
    );
    let errors = Family::<Labels, Gauge>::default();
    errors
        .get_or_create(&labels(&[("kind", "session")]))
        .set(i64::from(v["last_error"].is_string()));
    errors
        .get_or_create(&labels(&[("kind", "divergence")]))
        .set(i64::from(v["divergence"].is_object()));
    r.register(
        "peer_error_present",
        "1 while an error of this kind is on record (see `twinfs status --dir`)",
        errors,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_status_becomes_prefixed_series_with_units() {
        let v = serde_json::json!({
            "cp": 12, "state": "mirrored", "cp_age_secs": 3, "lag_cps": 0,
            "peer": {"connected": true, "acked_cp": 12, "rtt_ms": 0.5, "resync": null,
                     "last_error": null, "alarm": null, "divergence": null},
            "bytes": {"written": 4096, "log_sent": 5000, "cp_sent": 300, "wire_total": 5400,
                      "full": {"blocks": 1, "bytes": 4100}, "refs": {"blocks": 2, "bytes": 40},
                      "recipes": {"blocks": 0, "bytes": 0}, "deltas": {"blocks": 0, "bytes": 0},
                      "misses": {"blocks": 0, "bytes": 0}},
            "capacity": {"size_bytes": 1024, "used_bytes": 24, "free_bytes": 1000, "snapshots": 1},
            "fsync": {"count": 3, "sum_secs": 0.0025, "buckets": [[0.001, 2], [0.01, 3], [null, 3]]}
        });
        let text = exposition(&v).expect("encodes");
        for line in [
            "twinfs_cp 12\n",
            "twinfs_state{state=\"mirrored\"} 1\n",
            "twinfs_state{state=\"degraded\"} 0\n",
            "twinfs_sent_bytes_total{kind=\"log\"} 5000\n",
            "twinfs_cp_blocks_total{encoding=\"refs\"} 2\n",
            "twinfs_peer_rtt_seconds 0.0005\n",
            "twinfs_capacity_bytes{kind=\"free\"} 1000\n",
            "twinfs_fsync_seconds_bucket{le=\"0.001\"} 2\n",
            "twinfs_fsync_seconds_bucket{le=\"+Inf\"} 3\n",
            "twinfs_fsync_seconds_count 3\n",
            "# EOF\n",
        ] {
            assert!(text.contains(line), "lacks {line:?}:\n{text}");
        }
        let classic = classic_text(&text);
        assert!(
            classic.contains("# TYPE twinfs_sent_bytes_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP twinfs_sent_bytes_total Wire bytes"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
