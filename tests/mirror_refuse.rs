//! A source with the wrong secret, and another volume with the right one,
//! are refused with a clear message on both sides and change nothing at the
//! peer: its status, mirror image, log store and state stay as they were.

mod mirror_common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use mirror_common::*;

/// Name and size of every file under the peer's directory that holds data
/// (the status report and the lock are not the replica).
fn replica_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if !["status.json", "lock"].contains(&name.as_str()) && !name.ends_with(".tmp") {
                out.insert(name, file_hash(&p));
            }
        }
    }
    out
}

/// The fields of `status --dir` that describe the replica.
fn replica_status(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    // `action` follows daemon_running (start the daemon, or nothing to do).
    for k in ["last_error", "source_connected", "daemon_running", "action"] {
        o.remove(k);
    }
    v
}

/// Waits until the mount's last_error says something, and returns it.
fn refusal(src: &mut Source) -> String {
    let mut err = String::new();
    wait_for("a refusal in status", Duration::from_secs(30), || {
        src.assert_running("being refused");
        let st = status_of(&src.mnt);
        err = st["peer"]["last_error"].as_str().unwrap_or("").to_string();
        !err.is_empty()
    });
    println!("{}: last_error: {err}", src.image.display());
    let st = src.status();
    assert_eq!(st["peer"]["connected"], false, "{st:#}");
    assert_ne!(st["peer"]["state"], "streaming", "{st:#}");
    err
}

#[test]
fn a_wrong_secret_and_a_foreign_volume_are_refused_and_change_nothing() {
    let _serial = serial();
    let t = scratch();
    let root = t.path();
    let secret = secret_file(&root.join("secret"), b"the right secret, shared by both\n");
    let wrong = secret_file(&root.join("wrong"), b"a wrong secret of decent length\n");
    let dir = root.join("peer");
    let mut peer = Peer::start(&dir, 0, &secret, None, &root.join("peer.log"));

    // The volume the peer serves: bound, one CP applied, unmounted cleanly.
    let image = root.join("source.img");
    mkfs(&image, "256M");
    let mut src = Source::mirrored(
        &image,
        &root.join("mnt"),
        &peer.addr(),
        &secret,
        &[],
        &root.join("source.log"),
    );
    src.wait_streaming(Duration::from_secs(30));
    fs::write(src.path("kept"), pattern(100_000, 1)).unwrap();
    src.checkpoint();
    assert_eq!(src.unmount(), Some(0), "{}", src.log_text());
    wait_for("the session to end", Duration::from_secs(30), || {
        peer.status()["source_connected"] == false
    });
    let status0 = peer.status();
    let files0 = replica_files(&dir);
    let uuid = status0["volume_uuid"].as_str().expect("bound").to_string();
    assert!(
        files0.contains_key("mirror.img") && files0.contains_key("state"),
        "{files0:?}"
    );

    // The same volume with the wrong secret.
    let log_len = peer.log_text().len();
    let mut src = Source::mirrored(
        &image,
        &root.join("mnt"),
        &peer.addr(),
        &wrong,
        &[],
        &root.join("source-wrong.log"),
    );
    let err = refusal(&mut src);
    assert!(
        err.contains("refused") && err.contains("secret"),
        "the source says the peer refused its secret: {err}"
    );
    fs::write(src.path("not-mirrored"), b"stays here").unwrap();
    // Committed here; the refused peer did not get it, and checkpoint says so.
    let ran = src.checkpoint_ran();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("committed here, not at the peer"),
        "{ran:?}"
    );
    wait_for(
        "the refusal in the peer's log",
        Duration::from_secs(10),
        || {
            let log = peer.log_text();
            let new = &log[log_len..];
            new.contains("refused") && new.contains("secret")
        },
    );
    assert_eq!(src.unmount(), Some(0), "{}", src.log_text());

    // Another volume with the right secret.
    let log_len = peer.log_text().len();
    let other = root.join("other.img");
    mkfs(&other, "256M");
    let mut src2 = Source::mirrored(
        &other,
        &root.join("mnt2"),
        &peer.addr(),
        &secret,
        &[],
        &root.join("source-other.log"),
    );
    let err = refusal(&mut src2);
    assert!(
        err.contains("refused") && err.contains(&uuid),
        "the source says the peer is bound to volume {uuid}: {err}"
    );
    fs::write(src2.path("foreign"), b"another volume's data").unwrap();
    let ran = src2.checkpoint_ran();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("committed here, not at the peer"),
        "{ran:?}"
    );
    wait_for(
        "the refusal in the peer's log",
        Duration::from_secs(10),
        || {
            let log = peer.log_text();
            log[log_len..].contains("refused") && log[log_len..].contains(&uuid)
        },
    );
    assert_eq!(src2.unmount(), Some(0), "{}", src2.log_text());

    // Nothing changed at the peer.
    let status1 = peer.status();
    assert_eq!(replica_status(&status1), replica_status(&status0));
    assert_eq!(status1["volume_uuid"], uuid);
    assert_eq!(replica_files(&dir), files0, "the peer's files changed");
    assert_eq!(peer.stop(), Some(0));
    assert_eq!(replica_status(&dir_status(&dir)), replica_status(&status0));
}
