//! What fsync waits for in each `--mode`: `strict` fails with EIO without the
//! peer, `sync` waits for the peer up to its timeout and then carries on
//! degraded until the peer is back and caught up, `async` never waits.

mod mirror_common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mirror_common::*;

/// The source's fsync wait for the peer (`DEFAULT_SYNC_TIMEOUT`).
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// What "did not wait" means on a busy two-core machine.
const NO_WAIT: Duration = Duration::from_secs(3);

/// Writes a file and fsyncs it; returns the fsync's result and duration.
fn write_and_fsync(path: &Path, data: &[u8]) -> (std::io::Result<()>, Duration) {
    let mut f = fs::File::create(path).expect("create");
    f.write_all(data).expect("write");
    let t = Instant::now();
    let r = f.sync_all();
    (r, t.elapsed())
}

fn state(src: &Source) -> String {
    src.status()["peer"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn strict_mode_fails_fsync_with_eio_while_the_peer_is_down() {
    let _serial = serial();
    let t = scratch();
    let root = t.path();
    let secret = secret_file(&root.join("secret"), b"strict mode test secret bytes\n");
    let image = root.join("source.img");
    mkfs(&image, "256M");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut src = Source::mirrored(
        &image,
        &root.join("mnt"),
        &addr,
        &secret,
        &["--mode", "strict"],
        &root.join("source.log"),
    );
    assert_eq!(src.status()["mode"], "strict");

    let data = pattern(10_000, 1);
    let (r, took) = write_and_fsync(&src.path("a"), &data);
    let e = r.expect_err("fsync without the peer in strict mode");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took >= SYNC_TIMEOUT - Duration::from_millis(500),
        "it waited for the peer first: {took:?}"
    );
    // The data is here all the same; only the promise is refused.
    assert_eq!(fs::read(src.path("a")).unwrap(), data);
    let st = src.status();
    assert_eq!(st["peer"]["connected"], false, "{st:#}");
    assert!(
        !state(&src).contains("degraded"),
        "strict never degrades: {st:#}"
    );

    // With the peer there, fsync succeeds again.
    let mut peer = Peer::start(
        &root.join("peer"),
        port,
        &secret,
        None,
        &root.join("peer.log"),
    );
    src.wait_converged(Duration::from_secs(60));
    let (r, _) = write_and_fsync(&src.path("b"), b"with the peer");
    r.expect("fsync with the peer in strict mode");
    src.checkpoint();
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
    peer.assert_running("at the end");
}

#[test]
fn sync_mode_waits_then_carries_on_degraded_and_recovers_when_the_peer_returns() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "sync"]);
    let (src, peer) = (&mut p.src, &mut p.peer);
    let (r, _) = write_and_fsync(&src.path("before"), b"with the peer");
    r.expect("fsync with the peer");
    assert_eq!(state(src), "streaming");

    peer.kill9();
    let (r, took) = write_and_fsync(&src.path("during"), &pattern(50_000, 2));
    r.expect("sync mode carries on without the peer");
    assert!(
        took >= SYNC_TIMEOUT - Duration::from_millis(500),
        "fsync waited for the peer up to the timeout: {took:?}"
    );
    assert!(took < SYNC_TIMEOUT * 4, "but not much longer: {took:?}");
    let st = src.status();
    assert_eq!(st["peer"]["connected"], false, "{st:#}");
    assert_eq!(st["peer"]["state"], "degraded-async", "{st:#}");
    assert_eq!(st["state"], "degraded", "{st:#}");
    assert_eq!(st["mode"], "sync", "{st:#}");
    assert_eq!(st["mode_in_force"], "async", "{st:#}");
    let text = src.status_text_says("degraded");
    assert!(text.contains("sync configured, async in force"), "{text}");
    assert!(
        text.contains(&peer.addr()),
        "the action names the peer to check:\n{text}"
    );
    // Degraded: the next fsync does not wait.
    let (r, took) = write_and_fsync(&src.path("during2"), b"no wait");
    r.expect("fsync while degraded");
    assert!(took < NO_WAIT, "a degraded fsync does not wait: {took:?}");
    let ran = src.checkpoint_ran();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("committed here, not at the peer"),
        "{ran:?}"
    );

    // The peer returns: it is resynced and the mount stops being degraded.
    peer.restart();
    src.wait_converged(Duration::from_secs(60));
    let mut last;
    let cleared = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            last = state(src);
            if last == "streaming" || Instant::now() > deadline {
                break last == "streaming";
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        cleared,
        "the peer is back and caught up (acked_cp == cp) but the state stays {last:?}: {:#}",
        src.status()
    );
    // fsync waits for the peer again: a peer that stops answering holds
    // it up to the timeout (it would return at once while degraded).
    peer.freeze(true);
    let (r, took) = write_and_fsync(&src.path("after"), b"after the peer came back");
    peer.freeze(false);
    r.expect("fsync");
    assert!(
        took >= SYNC_TIMEOUT - Duration::from_millis(500),
        "fsync waited for the peer again: {took:?}"
    );
    wait_for("the peer to confirm again", Duration::from_secs(30), || {
        status_of(&src.mnt)["peer"]["state"] == "streaming"
    });
    src.checkpoint();
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
}

#[test]
fn async_mode_never_waits_for_the_peer() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "async"]);
    let (src, peer) = (&mut p.src, &mut p.peer);

    // A peer that is connected but answers nothing.
    peer.freeze(true);
    for i in 0..5 {
        let (r, took) = write_and_fsync(&src.path(&format!("frozen{i}")), &pattern(200_000, i));
        r.expect("fsync in async mode");
        assert!(
            took < NO_WAIT,
            "async fsync waited for a frozen peer: {took:?}"
        );
    }
    assert_eq!(src.status()["peer"]["connected"], true);
    peer.freeze(false);

    // No peer at all.
    peer.kill9();
    wait_for("the source to notice", Duration::from_secs(30), || {
        status_of(&src.mnt)["peer"]["connected"] == false
    });
    for i in 0..5 {
        let (r, took) = write_and_fsync(&src.path(&format!("gone{i}")), &pattern(200_000, 10 + i));
        r.expect("fsync in async mode");
        assert!(
            took < NO_WAIT,
            "async fsync waited for a missing peer: {took:?}"
        );
    }
    assert!(!state(src).contains("degraded"), "async is never degraded");

    // And it catches up by itself.
    peer.restart();
    src.wait_converged(Duration::from_secs(60));
    src.checkpoint();
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
}
