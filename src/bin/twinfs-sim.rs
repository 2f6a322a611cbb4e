//! `twinfs-sim`: deterministic simulation of the whole mirror (see
//! `twinfs_replicate::sim` and the README's "Simulator" part).
//!
//! ```text
//! twinfs-sim --seed S [--steps N] [--plant BUG] [--trace]
//! twinfs-sim --seeds A..B [--steps N] [--plant BUG]
//! ```
//!
//! Exits 0 when every seed ran clean, 1 on a breach (after printing the
//! seed and the trace of its run), 2 on a usage error.

use std::process::ExitCode;
use std::time::Instant;

use twinfs_replicate::planted::Bug;
use twinfs_replicate::sim::{run, Report, SimOptions};

const USAGE: &str =
    "usage: twinfs-sim (--seed S | --seeds A..B) [--steps N] [--plant BUG] [--trace] [--keep-going]
  --trace: print the trace of clean seeds too; --keep-going: run every seed, list the failing ones
  BUG: ack-before-durable, superblock-before-blocks, skip-ref-hash, keep-covered-log, promote-drops-last (needs --features planted-bugs)";

/// Lines of a failing run's trace printed (its end).
const TRACE_LINES: usize = 400;

struct Args {
    seeds: std::ops::Range<u64>,
    steps: u32,
    plant: Option<Bug>,
    trace: bool,
    keep_going: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut seeds = None;
    let mut steps = SimOptions::new(0).steps;
    let mut plant = None;
    let mut trace = false;
    let mut keep_going = false;
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => {
                let s: u64 = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                seeds = Some(s..s + 1);
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v
                    .split_once("..")
                    .ok_or("--seeds takes A..B (B excluded)")?;
                let a: u64 = a.parse().map_err(|e| format!("--seeds: {e}"))?;
                let b: u64 = b.parse().map_err(|e| format!("--seeds: {e}"))?;
                seeds = Some(a..b);
            }
            "--steps" => steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--plant" => {
                let v = value()?;
                let bug = Bug::from_name(&v).ok_or(format!("unknown bug {v:?}"))?;
                if !cfg!(feature = "planted-bugs") {
                    return Err("--plant needs a build with --features planted-bugs".into());
                }
                plant = Some(bug);
            }
            "--trace" => trace = true,
            "--keep-going" => keep_going = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let seeds = seeds.ok_or("give --seed or --seeds")?;
    Ok(Args {
        seeds,
        steps,
        plant,
        trace,
        keep_going,
    })
}

fn print_breach(r: &Report) {
    eprintln!(
        "BREACH at seed {} (mode {}, cp-sync {}), step {}: {}",
        r.seed,
        r.mode,
        r.cp_sync,
        r.steps,
        r.breach.as_deref().unwrap_or("")
    );
    let skip = r.trace.len().saturating_sub(TRACE_LINES);
    eprintln!(
        "trace of seed {} (simulated time; {}the last {} lines):",
        r.seed,
        if skip > 0 { "" } else { "all " },
        r.trace.len() - skip
    );
    for line in &r.trace[skip..] {
        eprintln!("  {line}");
    }
    eprintln!(
        "replay: cargo run --release --bin twinfs-sim -- --seed {} --steps {}",
        r.seed, r.steps
    );
}

fn main() -> ExitCode {
    // The daemons' own log lines, when asked for (RUST_LOG=warn, ...).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("twinfs-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut totals = Report::default();
    let mut n = 0u64;
    let mut failed = Vec::new();
    for seed in args.seeds.clone() {
        let mut opts = SimOptions::new(seed);
        opts.steps = args.steps;
        opts.plant = args.plant;
        opts.keep_trace = args.trace;
        let r = run(&opts);
        n += 1;
        if args.trace && r.breach.is_none() {
            for line in &r.trace {
                println!("  {line}");
            }
        }
        if r.breach.is_some() {
            print_breach(&r);
            if !args.keep_going {
                return ExitCode::from(1);
            }
            failed.push(seed);
        }
        totals.ops += r.ops;
        totals.fsyncs += r.fsyncs;
        totals.checkpoints += r.checkpoints;
        totals.xattr_ops += r.xattr_ops;
        totals.snapshot_ops += r.snapshot_ops;
        totals.nospace += r.nospace;
        totals.promotes += r.promotes;
        totals.source_crashes += r.source_crashes;
        totals.eio += r.eio;
        totals.net.peer_kills += r.net.peer_kills + r.net.peer_commit_kills;
        totals.net.partitions += r.net.partitions;
        totals.net.disconnects += r.net.disconnects;
        totals.net.resyncs += r.net.resyncs;
        totals.net.peer_cps += r.net.peer_cps;
        totals.net.peer_corruptions += r.net.peer_corruptions;
        totals.net.missing_rounds += r.net.missing_rounds;
    }
    let secs = started.elapsed().as_secs_f64();
    if !failed.is_empty() {
        println!(
            "{} of {n} seeds failed in {secs:.1} s: {failed:?}",
            failed.len()
        );
        return ExitCode::from(1);
    }
    let per = |x: u64| x as f64 / n.max(1) as f64;
    println!(
        "{n} seeds clean in {secs:.1} s ({:.0} seeds/min); per seed: {:.0} ops, {:.1} fsyncs, {:.1} checkpoints, {:.1} xattr sets/removes, {:.2} snapshot creates/deletes, {:.2} ENOSPC, {:.2} source crashes ({:.2} after EIO), {:.2} peer kills, {:.2} partitions, {:.1} session ends, {:.1} resyncs, {:.1} CPs applied at the peer, {:.2} peer log corruptions, {:.2} missing-block rounds, {:.2} promotes checked",
        n as f64 / secs.max(1e-9) * 60.0,
        per(totals.ops),
        per(totals.fsyncs),
        per(totals.checkpoints),
        per(totals.xattr_ops),
        per(totals.snapshot_ops),
        per(totals.nospace),
        per(totals.source_crashes),
        per(totals.eio),
        per(totals.net.peer_kills),
        per(totals.net.partitions),
        per(totals.net.disconnects),
        per(totals.net.resyncs),
        per(totals.net.peer_cps),
        per(totals.net.peer_corruptions),
        per(totals.net.missing_rounds),
        per(totals.promotes),
    );
    ExitCode::SUCCESS
}
