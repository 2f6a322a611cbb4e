//! Regression tests for bugs the fault campaign (tests/kill_campaign.rs)
//! found, each reduced to the few steps that show it.

mod mirror_common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use mirror_common::*;

/// Found by the kill campaign (seed 4243, a peer killed mid-resync): after a
/// resync, the source counted as acknowledged only the transfers the peer
/// had stored as transfers, not those the resync's CP contains. An fsync of
/// a change the resync had carried to the peer then waited for an
/// acknowledgement that never came: 5 s and EIO in strict mode, 5 s and
/// "carrying on without the peer" in sync mode, with nothing left to end
/// that state while the volume stayed idle.
#[test]
fn an_fsync_of_a_change_a_resync_carried_does_not_wait_for_the_peer() {
    let _serial = serial();
    let mut p = Pair::start("256M", false, &["--mode", "strict"]);
    let (src, peer) = (&mut p.src, &mut p.peer);
    fs::write(src.path("before"), b"with the peer").unwrap();
    src.checkpoint();

    peer.kill9();
    // A change made while the peer is away, committed in a CP here only.
    let mut f = fs::File::create(src.path("away")).unwrap();
    f.write_all(&pattern(100_000, 7)).unwrap();
    let ran = src.checkpoint_ran();
    assert_eq!(ran.code, 0, "checkpoint without the peer: {ran:?}");
    let cp = src.status()["cp"].as_u64().unwrap();

    // The peer returns and is resynced to that CP (or a later one).
    peer.restart();
    let st = src.wait_converged(Duration::from_secs(60));
    assert!(st["cp"].as_u64().unwrap() >= cp, "{st:#}");
    assert_eq!(dir_status(&peer.dir)["applied_cp"], st["cp"]);

    // The peer holds the change: fsync has nothing to wait for.
    let t = Instant::now();
    let r = f.sync_all();
    let took = t.elapsed();
    r.unwrap_or_else(|e| {
        panic!(
            "fsync of a change the peer holds (in its applied CP {}) failed after {took:?}: {e}\n{:#}",
            st["cp"],
            src.status()
        )
    });
    assert!(
        took < Duration::from_secs(3),
        "fsync of a change the peer holds waited {took:?}"
    );
    assert_eq!(src.status()["peer"]["state"], "streaming");
}
