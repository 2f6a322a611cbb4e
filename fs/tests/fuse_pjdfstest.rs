//! pjdfstest (POSIX conformance) against a real FUSE mount. Not run by
//! default; needs `cargo install --locked pjdfstest` (apt libacl1-dev acl):
//! `cargo test -p twinfs-fs --test fuse_pjdfstest -- --ignored --nocapture`.

mod fuse_common;

use fuse_common::*;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

#[test]
#[ignore]
fn pjdfstest_passes() {
    let m = Mounted::new(&["allow_other"]);
    let cfg = m.dir.path().join("pjdfstest.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let dir = m.path("t");
    std::fs::create_dir(&dir).unwrap();
    let out = std::process::Command::new("pjdfstest")
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(&dir)
        .output()
        .expect("pjdfstest is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| !l.contains("...ok")) {
        println!("{line}");
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or("");
    assert!(summary.starts_with("Summary: 0 failed"), "{summary}");
}
