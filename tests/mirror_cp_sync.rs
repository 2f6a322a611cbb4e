//! `--cp-sync full|refs|best` on the same workload: each converges (the
//! peer's root and deep hash equal the source's) and the byte counters have
//! the expected shape — `full` sends every block whole, `refs` sends
//! references for blocks written whole, `best` sends no more than `refs`
//! where small files leave only partial blocks.

mod mirror_common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use mirror_common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;
/// The large file of phase A, written with 1 MiB writes.
const LARGE_MIB: usize = 16;

/// Counters of one phase: `after - before` for each `bytes.*` counter.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    cp_sent: u64,
    full: u64,
    refs: u64,
    recipes: u64,
    deltas: u64,
    misses: u64,
}

impl Phase {
    fn between(before: &Value, after: &Value) -> Phase {
        let d = |k: &str| counter(after, k) - counter(before, k);
        Phase {
            cp_sent: d("bytes.cp_sent"),
            full: d("bytes.full.blocks"),
            refs: d("bytes.refs.blocks"),
            recipes: d("bytes.recipes.blocks"),
            deltas: d("bytes.deltas.blocks"),
            misses: d("bytes.misses.blocks"),
        }
    }
}

struct Run {
    method: &'static str,
    /// Large aligned writes.
    large: Phase,
    /// Small files and small overwrites.
    small: Phase,
}

/// Phase A: one large file in whole blocks. Phase B: many small files and
/// small overwrites of the large one. A CP after each; both verified deep.
fn run_method(method: &'static str) -> Run {
    let mut p = Pair::start("512M", false, &["--cp-sync", method]);
    let src = &mut p.src;
    src.checkpoint();
    let s0 = src.status();

    let mut f = fs::File::create(src.path("large")).unwrap();
    for i in 0..LARGE_MIB {
        f.write_all(&pattern(MIB, i as u64)).unwrap();
    }
    drop(f);
    src.checkpoint();
    let s1 = src.status();

    fs::create_dir(src.path("small")).unwrap();
    for i in 0..200usize {
        let len = 100 + (i * 37) % 3000;
        fs::write(
            src.path(&format!("small/s{i:03}")),
            pattern(len, 1000 + i as u64),
        )
        .unwrap();
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(src.path("large"))
        .unwrap();
    for i in 0..64u64 {
        f.seek(SeekFrom::Start(i * 200_003)).unwrap();
        f.write_all(&pattern(50, i)).unwrap();
    }
    drop(f);
    src.checkpoint();
    let s2 = src.status();

    let deep = twinfs_ok(&["verify", s(&src.mnt), "--deep"]);
    assert!(deep.contains("equal"), "{method}: {deep}");
    let st = src.wait_converged(Duration::from_secs(30));
    assert_eq!(st["peer"]["acked_root_hash"], st["root_hash"], "{method}");
    let wire = counter(&st, "bytes.wire_total");
    assert!(
        wire >= counter(&st, "bytes.log_sent") + counter(&st, "bytes.cp_sent"),
        "{method}: {st:#}"
    );
    Run {
        method,
        large: Phase::between(&s0, &s1),
        small: Phase::between(&s1, &s2),
    }
}

#[test]
fn every_cp_encoding_converges_and_the_counters_show_what_each_sends() {
    let _serial = serial();
    let runs: Vec<Run> = ["full", "refs", "best"]
        .into_iter()
        .map(run_method)
        .collect();
    for r in &runs {
        println!(
            "--cp-sync {}: large {:?}\n               small {:?}",
            r.method, r.large, r.small
        );
    }
    let (full, refs, best) = (&runs[0], &runs[1], &runs[2]);
    let data_blocks = (LARGE_MIB * MIB / 4096) as u64;

    // full: every block whole, nothing else.
    for p in [full.large, full.small] {
        assert_eq!((p.refs, p.recipes, p.deltas), (0, 0, 0), "full: {p:?}");
    }
    assert!(full.large.full >= data_blocks, "full: {:?}", full.large);
    assert!(
        full.large.cp_sent >= data_blocks * 4096,
        "full: {:?}",
        full.large
    );

    // refs: a reference for each block written whole, the rest whole.
    for p in [refs.large, refs.small] {
        assert_eq!((p.recipes, p.deltas), (0, 0), "refs: {p:?}");
    }
    assert!(refs.large.refs >= data_blocks, "refs: {:?}", refs.large);
    assert!(
        refs.large.cp_sent * 10 < full.large.cp_sent,
        "refs sends a fraction of full for large aligned writes: {} vs {}",
        refs.large.cp_sent,
        full.large.cp_sent
    );

    // best: never more than refs where only partial blocks were written.
    assert!(
        best.small.cp_sent <= refs.small.cp_sent,
        "best {} > refs {} bytes on small files",
        best.small.cp_sent,
        refs.small.cp_sent
    );
    assert!(
        best.small.recipes + best.small.deltas > 0,
        "best: {:?}",
        best.small
    );
    assert!(
        best.large.cp_sent <= full.large.cp_sent / 10,
        "best: {:?}",
        best.large
    );

    // No run needed a block resent.
    for r in &runs {
        assert_eq!(r.large.misses + r.small.misses, 0, "{}: misses", r.method);
    }
}
