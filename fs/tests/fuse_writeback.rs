//! The measurement behind the writeback-cache decision (see the module doc
//! of `twinfs_fs::fuse`). Not a test of behaviour and not run by default:
//! `cargo test -p twinfs-fs --test fuse_writeback -- --ignored --nocapture`.

mod fuse_common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use fuse_common::*;
use twinfs_fs::fuse::MountConfig;

const BIG_BYTES: usize = 1 << 30;
const SMALL_WRITE_BYTES: usize = 256 << 20;

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Writes `total` bytes in `chunk`-sized writes, then fsyncs: MiB/s.
fn stream(path: &std::path::Path, total: usize, chunk: usize) -> f64 {
    let buf = pattern(chunk, chunk as u32);
    let t = Instant::now();
    let mut f = File::create(path).unwrap();
    for _ in 0..total / chunk {
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    let d = t.elapsed();
    drop(f);
    fs::remove_file(path).unwrap();
    mib_s(total, d)
}

/// Creates `n` files of 8 KiB written 4 KiB at a time (like tar): files/s.
fn small_files(dir: &std::path::Path, n: usize) -> f64 {
    fs::create_dir(dir).unwrap();
    let buf = pattern(4096, 1);
    let t = Instant::now();
    for i in 0..n {
        let mut f = File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(&buf).unwrap();
        f.write_all(&buf).unwrap();
    }
    let d = t.elapsed();
    fs::remove_dir_all(dir).unwrap();
    n as f64 / d.as_secs_f64()
}

/// Average latency of a 4 KiB write followed by fsync.
fn fsync_latency(path: &std::path::Path, n: usize) -> Duration {
    let buf = pattern(4096, 2);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    t.elapsed() / n as u32
}

#[test]
#[ignore]
fn measure_writeback_cache() {
    let mut m = Mounted::on_file_of(4 << 20, &[]);
    for round in 0..3 {
        for wb in [false, true] {
            m.unmount();
            m.mount_with(MountConfig {
                writeback_cache: wb,
                ..Default::default()
            });
            let big = stream(&m.path("big"), BIG_BYTES, 1 << 20);
            let small = stream(&m.path("small"), SMALL_WRITE_BYTES, 4096);
            let files = small_files(&m.path("tree"), 2000);
            let lat = fsync_latency(&m.path("sync"), 200);
            m.volume.checkpoint().unwrap();
            println!(
                "round {round} writeback={wb:5}: 1 GiB/1 MiB writes {big:7.0} MiB/s | 256 MiB/4 KiB writes {small:7.0} MiB/s | 8 KiB files {files:6.0}/s | 4 KiB write+fdatasync {lat:?}"
            );
        }
    }
}
