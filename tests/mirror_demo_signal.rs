//! `twinfs demo` stopped by a signal (Ctrl-C, SIGTERM) leaves nothing
//! behind: no mount, no peer daemon, no source daemon (issue 19).

mod mirror_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use mirror_common::*;

#[test]
fn demo_interrupted_by_sigint_unmounts_and_stops_everything() {
    let _serial = serial();
    let dir = scratch();
    let demo = dir.path().join("demo");
    let child = Command::new(bin())
        .args(["demo", s(&demo)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let source = demo.join("full").join("source");
    let replica = demo.join("full").join("replica");
    // Both the source and the replica view are mounted: the demo is in the
    // middle of its first round.
    wait_for("the demo's source mount", Duration::from_secs(120), || {
        is_mounted(&source)
    });
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("the demo exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(
            "demo: interrupted by signal 2: unmounting and stopping what the demo started"
        ),
        "{stderr}"
    );
    assert!(!is_mounted(&source), "the source mount is gone");
    assert!(!is_mounted(&replica), "the replica view is gone");
    wait_for(
        "every process naming the demo directory to end",
        Duration::from_secs(30),
        || processes_naming(&demo).is_empty(),
    );
}

/// Pids of live processes whose command line mentions `path`.
fn processes_naming(path: &std::path::Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let want = path.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie && cmdline.windows(want.len()).any(|w| w == want) {
            out.push(pid);
        }
    }
    out
}
