//! Running twinfs as a service (issue 19): a backgrounded mount's log
//! lines reach `--log-file` and a syslog socket, startup warnings reach the
//! terminal before the mount goes to the background, and both daemons
//! serve Prometheus metrics that `promtool check metrics` accepts and a
//! real Prometheus server scrapes and answers queries about.

mod mirror_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirror_common::*;

/// `GET http://ADDR/metrics`: (status line, body).
fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample `series` (name with labels) in exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool() -> &'static str {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is missing: run tests/setup.sh (it installs Debian's prometheus package)"
    );
    "promtool"
}

fn promtool_check(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return; // already reaped: its pid may belong to another process now
        }
        // SAFETY: signals our own child, which has not been reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts a background mount when dropped.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
        force_unmount(self.0);
    }
}

#[test]
fn metrics_of_mount_and_peer_pass_promtool_and_reach_prometheus() {
    let _serial = serial();
    let dir = scratch();
    let root = dir.path();
    let secret = secret_file(&root.join("secret"), b"k3Yq9vXz7TpL2mNw4RbH8cJdmetrics");
    let peer_dir = root.join("peer");
    let view = root.join("view");
    std::fs::create_dir(&view).expect("mkdir");
    let peer_metrics = format!("127.0.0.1:{}", free_port());
    let peer_log = root.join("peer.log");
    let mut peer = Killed(
        Command::new(bin())
            .args(["peer", "--dir", s(&peer_dir), "--listen", "127.0.0.1:0"])
            .args(["--secret", s(&secret), "--metrics", &peer_metrics])
            .args(["--mount", s(&view)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&peer_log).expect("log"))
            .spawn()
            .expect("start the peer"),
    );
    let mut peer_addr = None;
    wait_for("the peer to listen", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&peer_log).unwrap_or_default();
        peer_addr = text
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string);
        peer_addr.is_some()
    });
    let peer_addr = peer_addr.expect("peer address");
    let image = root.join("vol.img");
    twinfs_ok(&["mkfs", s(&image), "--size", "256M"]);
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mount_metrics = format!("127.0.0.1:{}", free_port());
    twinfs_ok(&[
        "mount",
        s(&image),
        s(&mnt),
        "--peer",
        &peer_addr,
        "--secret",
        s(&secret),
        "--cp-interval",
        "86400",
        "--metrics",
        &mount_metrics,
    ]);
    let _unmount = Unmount(&mnt);
    let mut f = std::fs::File::create(mnt.join("f")).expect("create");
    f.write_all(&vec![7u8; 1 << 20]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    twinfs_ok(&["checkpoint", s(&mnt)]);
    let st: serde_json::Value =
        serde_json::from_str(&twinfs_ok(&["status", "--json", s(&mnt)])).expect("json");
    let cp = st["cp"].as_u64().expect("cp");

    let (status, text) = scrape(&mount_metrics);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&text, "twinfs_cp"), Some(cp as f64), "{text}");
    assert_eq!(
        sample(&text, "twinfs_peer_acked_cp"),
        Some(cp as f64),
        "{text}"
    );
    assert_eq!(sample(&text, "twinfs_replica_lag_cps"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "twinfs_state{state=\"mirrored\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "twinfs_written_bytes_total"),
        Some((1 << 20) as f64),
        "{text}"
    );
    let log_sent = st["bytes"]["log_sent"].as_u64().expect("log_sent");
    assert_eq!(
        sample(&text, "twinfs_sent_bytes_total{kind=\"log\"}"),
        Some(log_sent as f64),
        "{text}"
    );
    let fsyncs = sample(&text, "twinfs_fsync_seconds_count").expect("an fsync histogram");
    assert!(fsyncs >= 1.0, "the fsync above is counted: {text}");
    assert_eq!(
        sample(&text, "twinfs_fsync_seconds_bucket{le=\"+Inf\"}"),
        Some(fsyncs),
        "{text}"
    );
    promtool_check(&text);
    // The human status of a mirrored mount.
    let human = twinfs_ok(&["status", s(&mnt)]);
    assert!(
        human.starts_with("   state: MIRRORED\n  action: none\n"),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "    peer: {peer_addr} streaming, applied CP {cp} (lag 0 CPs)"
        )),
        "{human}"
    );
    let (status, ptext) = scrape(&peer_metrics);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        sample(&ptext, "twinfs_peer_applied_cp"),
        Some(cp as f64),
        "{ptext}"
    );
    assert_eq!(
        sample(&ptext, "twinfs_peer_state{state=\"connected\"}"),
        Some(1.0),
        "{ptext}"
    );
    promtool_check(&ptext);

    // A real Prometheus server scrapes both and answers queries.
    let prom_port = free_port();
    let config = root.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: twinfs\n    static_configs:\n      - targets: ['{mount_metrics}', '{peer_metrics}']\n"
        ),
    )
    .expect("write the config");
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (tests/setup.sh installs it)"),
    );
    let query = |q: &str| -> Option<f64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", prom_port)).ok()?;
        write!(
            s,
            "GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let mut seen = (None, None);
    wait_for(
        "Prometheus to scrape both daemons",
        Duration::from_secs(120),
        || {
            seen = (query("twinfs_cp"), query("twinfs_peer_applied_cp"));
            seen.0.is_some() && seen.1.is_some()
        },
    );
    assert_eq!(seen, (Some(cp as f64), Some(cp as f64)));

    // `status` on the peer's read-only view reports its directory.
    wait_for("the replica view", Duration::from_secs(30), || {
        view.join("f").exists()
    });
    let v: serde_json::Value =
        serde_json::from_str(&twinfs_ok(&["status", "--json", s(&view)])).expect("json");
    assert_eq!(v["role"], "replica", "{v}");
    assert_eq!(v["applied_cp"], cp, "{v}");
    // A clean stop of the peer logs no warning that is not one.
    drop(_unmount);
    // SAFETY: signals our own child.
    unsafe { libc::kill(peer.0.id() as i32, libc::SIGTERM) };
    let exit = peer.0.wait().expect("the peer exits");
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(&peer_log).expect("peer log");
    for noise in ["Failed to umount", "all zeros"] {
        assert!(!log.contains(noise), "{noise:?} in the peer's log:\n{log}");
    }
    assert!(!is_mounted(&view));
}

#[test]
fn a_background_mount_logs_to_its_file_and_to_syslog_and_warns_on_the_terminal() {
    let _serial = serial();
    let dir = scratch();
    let root = dir.path();
    let syslog_path = root.join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path).expect("bind the syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let secret = secret_file(&root.join("secret"), b"k3Yq9vXz7TpL2mNw4RbH8cJdlogging");
    let image = root.join("vol.img");
    twinfs_ok(&["mkfs", s(&image), "--size", "256M"]);
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let log_file = root.join("twinfs.log");
    // Nothing listens on this port: the peer is unusable.
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin())
        .args(["mount", s(&image), s(&mnt), "--peer", &nobody])
        .args(["--secret", s(&secret), "--log-file", s(&log_file)])
        .env("TWINFS_SYSLOG_SOCKET", &syslog_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run twinfs mount");
    let _unmount = Unmount(&mnt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = format!("twinfs: warning: the peer {nobody} did not accept");
    assert!(
        stderr.lines().any(|l| l.starts_with(&warning)),
        "the warning reaches the terminal before the mount goes to the background:\n{stderr}"
    );
    // The same warning, with a timestamp, level and target, in the file...
    let mut line = String::new();
    wait_for(
        "the log file to hold the warning",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log_file).unwrap_or_default();
            line = text
                .lines()
                .find(|l| l.contains("did not accept"))
                .unwrap_or("")
                .to_string();
            !line.is_empty()
        },
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words[0].len() == 24 && words[0].ends_with('Z') && words[0].as_bytes()[10] == b'T',
        "an RFC 3339 UTC timestamp first: {line}"
    );
    assert_eq!(words[1], "WARN", "{line}");
    assert_eq!(words[2], "twinfs::cmd::mount:", "{line}");
    // ...and in syslog, as facility daemon, severity warning.
    let mut buf = vec![0u8; 64 * 1024];
    let mut found = String::new();
    while found.is_empty() {
        let n = syslog
            .recv(&mut buf)
            .expect("a syslog datagram within 30 s");
        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
        if d.contains("did not accept") {
            found = d;
        }
    }
    assert!(
        found.starts_with("<28>twinfs[") && found.contains("]: WARN twinfs::cmd::mount: the peer"),
        "{found}"
    );
}
