//! fsx (the file system exerciser: random reads, writes, mmap, truncate,
//! fallocate, punch hole, copy_file_range... checked against a model) on a
//! real FUSE mount. Not run by default; needs `cargo install --locked fsx`:
//! `cargo test -p twinfs-fs --test fuse_fsx -- --ignored --nocapture`.

mod fuse_common;

use fuse_common::*;

const CONFIG: &str = r#"
flen = 262144
[weights]
close_open = 1
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
copy_file_range = 1
sendfile = 1
posix_fadvise = 1
"#;

fn fsx(options: &[&str], seed: &str) {
    let m = Mounted::new(options);
    let cfg = m.dir.path().join("fsx.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let artifacts = m.dir.path().join("artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    let out = std::process::Command::new("fsx")
        .args(["-N", "20000", "-S", seed, "-f"])
        .arg(&cfg)
        .arg("-P")
        .arg(&artifacts)
        .arg(m.path("fsx.file"))
        .output()
        .expect("fsx is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!(
        "{options:?} seed {seed}: {}",
        text.lines().last().unwrap_or("")
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK!"),
        "{text}"
    );
}

#[test]
#[ignore]
fn fsx_finds_nothing_write_through() {
    for seed in ["1", "2", "3"] {
        fsx(&[], seed);
    }
}

#[test]
#[ignore]
fn fsx_finds_nothing_with_the_writeback_cache() {
    for seed in ["4", "5"] {
        fsx(&["writeback_cache"], seed);
    }
}
