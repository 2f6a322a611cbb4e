//! A flood of idle and one-byte-a-second connections at the peer's port,
//! from the source's own address: the real source still connects within
//! seconds, strict-mode fsyncs keep succeeding, and the peer's memory stays
//! bounded. Everything goes to 127.0.0.1; the flood stops by itself.

mod mirror_common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mirror_common::*;

/// Connections the flood keeps open that never send anything.
const IDLE: usize = 300;
/// Connections the flood keeps open that send one byte a second.
const SLOW: usize = 100;
/// How long the source may take to connect through the flood.
const CONNECT_WITHIN: Duration = Duration::from_secs(15);
/// How long strict-mode fsyncs are checked while the flood goes on.
const FSYNC_FOR: Duration = Duration::from_secs(8);
/// The flood's own deadline, whatever happens to the test.
const FLOOD_LIMIT: Duration = Duration::from_secs(90);
/// The peer's resident memory may grow this much under the flood.
const RSS_GROWTH_LIMIT_KB: u64 = 48 * 1024;

/// Keeps `idle` silent and `slow` dribbling connections open to `port`,
/// reopening each one the peer closes, until `stop` (or `FLOOD_LIMIT`).
/// Returns the number of connections it opened.
fn flood(port: u16, idle: usize, slow: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let started = Instant::now();
        let opened = AtomicU64::new(0);
        let open = || {
            let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_nonblocking(true).ok()?;
            opened.fetch_add(1, Ordering::Relaxed);
            Some(s)
        };
        let mut idle_conns: Vec<Option<TcpStream>> = (0..idle).map(|_| open()).collect();
        let mut slow_conns: Vec<Option<TcpStream>> = (0..slow).map(|_| open()).collect();
        let mut last_dribble = Instant::now();
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_LIMIT {
            // A connection the peer closed (or answered) is replaced.
            for c in idle_conns.iter_mut().chain(slow_conns.iter_mut()) {
                let gone = match c {
                    None => true,
                    Some(s) => {
                        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    }
                };
                if gone {
                    *c = open();
                }
            }
            if last_dribble.elapsed() >= Duration::from_secs(1) {
                last_dribble = Instant::now();
                for c in slow_conns.iter_mut() {
                    if let Some(s) = c {
                        if s.write_all(&[0]).is_err() {
                            *c = None;
                        }
                    }
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        opened.load(Ordering::Relaxed)
    })
}

fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_connection_flood_does_not_keep_the_source_out_nor_fail_strict_fsyncs() {
    let _serial = serial();
    let t = scratch();
    let root = t.path();
    let secret = secret_file(
        &root.join("secret"),
        b"flood test secret: 6a0f3c9e81d2b574\n",
    );
    let image = root.join("source.img");
    mkfs(&image, "256M");
    let port = free_port();
    let mut peer = Peer::start(
        &root.join("peer"),
        port,
        &secret,
        None,
        &root.join("peer.log"),
    );
    let rss_before = rss_kb(peer.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(port, IDLE, SLOW, stop.clone());
    // Let the flood fill every slot the peer has for unauthenticated connections.
    thread::sleep(Duration::from_secs(3));

    let connecting = Instant::now();
    let mut src = Source::mirrored(
        &image,
        &root.join("mnt"),
        &peer.addr(),
        &secret,
        &["--mode", "strict"],
        &root.join("source.log"),
    );
    src.wait_streaming(CONNECT_WITHIN);
    let connected_after = connecting.elapsed();

    let mut fsyncs = 0;
    let checking = Instant::now();
    while checking.elapsed() < FSYNC_FOR {
        let path = src.path(&format!("f{fsyncs}"));
        let data = pattern(8192, fsyncs);
        let mut f = fs::File::create(&path).expect("create");
        f.write_all(&data).expect("write");
        f.sync_all()
            .unwrap_or_else(|e| panic!("strict fsync {fsyncs} failed under the flood: {e}"));
        fsyncs += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let rss_during = rss_kb(peer.pid());
    peer.assert_running("under the flood");

    stop.store(true, Ordering::Relaxed);
    let opened = flooder.join().expect("the flood thread");
    assert!(
        opened >= (IDLE + SLOW) as u64,
        "the flood opened only {opened} connections"
    );
    assert!(
        connected_after < CONNECT_WITHIN,
        "connected after {connected_after:?}"
    );
    assert!(fsyncs >= 10, "only {fsyncs} fsyncs in {FSYNC_FOR:?}");
    assert!(
        rss_during < rss_before + RSS_GROWTH_LIMIT_KB,
        "peer RSS grew from {rss_before} kB to {rss_during} kB under the flood"
    );
    src.checkpoint();
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
    eprintln!(
        "flood: {opened} connections opened; source streaming after {connected_after:?}; {fsyncs} strict fsyncs; peer RSS {rss_before} -> {rss_during} kB"
    );
}
