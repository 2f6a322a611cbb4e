//! kill -9 of the peer: in the middle of a copy into the source, and in the
//! middle of applying a large CP. The source keeps serving, the peer's image
//! stays at a whole CP, and after a restart the two sides converge by
//! themselves (verify --deep, tree walk of the replica view).

mod mirror_common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirror_common::*;

#[test]
fn a_peer_killed_mid_copy_is_resynced_and_the_copy_never_noticed() {
    let _serial = serial();
    let mut p = Pair::start("2G", true, &[]);
    let (src, peer, root, replica) = (&mut p.src, &mut p.peer, p.root.clone(), p.replica.clone());
    let before = src.checkpoint();

    let outside = root.join("outside");
    let shape = TreeShape {
        dirs: 6,
        files_per_dir: 30,
        large: 6,
        large_bytes: 16 << 20,
    };
    let total = make_tree(&outside, 7, shape);
    // rsync at a bounded rate, so the copy is surely under way at the kill.
    let mut copy = Command::new("rsync")
        .args(["-aHAX", "--bwlimit=40000"])
        .arg(format!("{}/", outside.display()))
        .arg(src.path("tree"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsync");
    let started = Instant::now();
    wait_for("a quarter of the copy", Duration::from_secs(60), || {
        counter(&status_of(&src.mnt), "bytes.written") > total / 4
    });
    assert!(
        copy.try_wait().unwrap().is_none(),
        "the copy ended before the kill: make it larger"
    );
    peer.kill9();
    let killed_at = started.elapsed();
    let out = copy.wait_with_output().expect("rsync runs");
    assert!(
        out.status.success(),
        "the copy failed after the peer was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() > killed_at,
        "the copy went on after the kill"
    );
    // A CP the peer does not get: the source commits it alone, and
    // checkpoint says the peer does not have it (exit 1, sync mode).
    let ran = src.checkpoint_ran();
    assert_eq!(ran.code, 1, "checkpoint without the peer: {ran:?}");
    assert!(
        ran.stderr.contains("committed here, not at the peer"),
        "{ran:?}"
    );
    let st = src.status();
    assert_eq!(st["peer"]["connected"], false, "{st:#}");
    assert!(st["cp"].as_u64().unwrap() > before, "{st:#}");
    assert!(
        st["peer"]["acked_cp"].as_u64().unwrap() < st["cp"].as_u64().unwrap(),
        "{st:#}"
    );
    assert!(
        st["peer"]["last_error"].is_string(),
        "the lost peer is named: {st:#}"
    );
    assert_same_tree(&outside, &src.path("tree"), Compare::COPY);

    // The peer comes back on its port; the source resyncs it unasked.
    peer.restart();
    let mut saw_resync = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = status_of(&src.mnt);
        if st["peer"]["state"] == "resyncing" && st["peer"]["resync"].is_object() {
            assert_eq!(st["state"], "resyncing", "{st:#}");
            assert!(
                st["action"].as_str().is_some_and(|a| a.contains("left")),
                "the action says how much is left: {st:#}"
            );
        }
        saw_resync |= st["peer"]["state"] == "resyncing" || st["peer"]["resync"].is_object();
        if st["peer"]["connected"] == true
            && st["peer"]["acked_cp"] == st["cp"]
            && st["peer"]["acked_root_hash"] == st["root_hash"]
        {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {st:#}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = src.log_text();
    assert!(
        log.contains("resyncing the peer from CP"),
        "the source's log shows the resync (status showed it: {saw_resync}):\n{log}"
    );
    let st = src.status();
    let ds = peer.status();
    assert_eq!(ds["applied_cp"], st["cp"], "{ds:#}");
    assert_eq!(ds["root_hash"], st["root_hash"], "{ds:#}");
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
    peer.wait_view();
    wait_same_tree(&src.mnt, &replica, Compare::EXACT, Duration::from_secs(15));
    assert_same_tree(&outside, &replica.join("tree"), Compare::COPY);
}

#[test]
fn a_peer_killed_while_applying_a_large_cp_keeps_the_previous_cp_and_recovers() {
    let _serial = serial();
    // Whole blocks on the wire and no CP until asked: one large CP.
    let mut p = Pair::start(
        "4G",
        true,
        &["--cp-sync", "full", "--dirty-limit", "3G", "--mode", "sync"],
    );
    let (src, peer, dir, replica) = (&mut p.src, &mut p.peer, p.dir.clone(), p.replica.clone());
    fs::write(src.path("small"), b"before the large CP").unwrap();
    let cp0 = src.checkpoint();
    let root0 = src.status()["root_hash"].clone();
    assert_eq!(peer.status()["applied_cp"], cp0);

    const MIB: usize = 1 << 20;
    const BIG_MIB: usize = 256;
    let mut f = fs::File::create(src.path("big")).unwrap();
    for i in 0..BIG_MIB {
        f.write_all(&pattern(MIB, i as u64)).unwrap();
    }
    // In sync mode this returns once the peer holds the whole log: from now
    // on only the CP travels.
    f.sync_all().unwrap();
    drop(f);
    let allocated = || {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join("mirror.img")).unwrap().blocks() * 512
    };
    let allocated0 = allocated();
    let mut checkpoint = Command::new(bin())
        .args(["checkpoint", s(&src.mnt)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("checkpoint");
    // Kill as soon as the peer writes the CP's blocks into its image.
    wait_for("the peer to apply blocks", Duration::from_secs(60), || {
        allocated() > allocated0 + 16 * MIB as u64
    });
    peer.kill9();
    let still_running = checkpoint.try_wait().unwrap().is_none();
    let out = checkpoint.wait_with_output().unwrap();
    assert!(
        still_running,
        "the CP was applied before the kill ({}): make it larger",
        String::from_utf8_lossy(&out.stdout)
    );
    // It must not claim the peer applied it: in sync mode it exits 1 saying so.
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains("applied at the peer"), "{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("committed here, not at the peer"),
        "{stderr}"
    );

    // The peer had written blocks of the new CP into its image...
    let allocated1 = allocated();
    assert!(
        allocated1 > allocated0 + 8 * MIB as u64,
        "the kill came in the middle of applying the CP: {allocated0} -> {allocated1} bytes allocated"
    );
    // ...yet its image is still the previous CP, whole.
    let ds = dir_status(&dir);
    assert_eq!(ds["daemon_running"], false, "{ds:#}");
    assert_eq!(ds["applied_cp"], cp0, "{ds:#}");
    assert_eq!(ds["root_hash"], root0, "{ds:#}");
    let fsck = twinfs(&["fsck", s(&dir.join("mirror.img"))]);
    assert_eq!(
        fsck.code, 0,
        "fsck of the mirror after the kill: {}{}",
        fsck.stdout, fsck.stderr
    );
    // The source went on.
    let st = src.status();
    assert!(st["cp"].as_u64().unwrap() > cp0, "{st:#}");
    fs::write(src.path("after"), b"written while the peer is down").unwrap();

    peer.restart();
    let st = src.wait_converged(Duration::from_secs(180));
    let ds = peer.status();
    assert_eq!(ds["applied_cp"], st["cp"], "{ds:#}");
    assert_eq!(ds["root_hash"], st["root_hash"], "{ds:#}");
    let cp = src.checkpoint();
    assert!(cp > cp0);
    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{deep}");
    peer.wait_view();
    wait_same_tree(&src.mnt, &replica, Compare::EXACT, Duration::from_secs(30));
    let big = fs::read(replica.join("big")).unwrap();
    assert_eq!(big.len(), BIG_MIB * MIB);
    for i in [0, 1, BIG_MIB / 2, BIG_MIB - 1] {
        assert!(
            big[i * MIB..(i + 1) * MIB] == pattern(MIB, i as u64)[..],
            "MiB {i} of the large file on the replica"
        );
    }
}
