//! The fuzz targets on a stable toolchain: replays each target's corpus and
//! regressions, then runs it on mutated inputs (see `twinfs_fuzz::driver`).
//!
//! ```text
//! fuzz-stable [--seconds S] [--runs N] [--seed SEED] [--list] [TARGET...]
//! fuzz-stable TARGET --input FILE...      # runs TARGET on these inputs only
//! ```
//!
//! `--seconds` (default 5) and `--runs` (default unlimited) bound each
//! target's mutated runs; `--runs 0` only replays. Without TARGET, every
//! target runs. The seed defaults to the time; it is printed, and the same
//! seed makes the same inputs. Exits 1 if a target panicked (its input is
//! saved under `fuzz/artifacts/TARGET/`), 2 on a usage error.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twinfs_fuzz::{driver, target, TARGETS};

struct Args {
    seconds: f64,
    runs: u64,
    seed: u64,
    names: Vec<String>,
    inputs: Vec<String>,
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("fuzz-stable: {problem}");
    eprintln!("usage: fuzz-stable [--seconds S] [--runs N] [--seed SEED] [--list] [TARGET...]");
    ExitCode::from(2)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        seconds: 5.0,
        runs: u64::MAX,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        names: Vec::new(),
        inputs: Vec::new(),
    };
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--runs" => {
                args.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--input" => args.inputs.push(value("--input")?),
            "--list" => {
                for t in TARGETS {
                    println!("{:<18} {}", t.name, t.about);
                }
                return Ok(None);
            }
            name if !name.starts_with('-') => args.names.push(name.to_string()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(problem) => return usage(&problem),
    };
    let mut chosen = Vec::new();
    for name in &args.names {
        match target(name) {
            Some(t) => chosen.push(t),
            None => return usage(&format!("no target {name} (--list shows them)")),
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.iter().collect();
    }
    if !args.inputs.is_empty() {
        let [t] = chosen[..] else {
            return usage("--input needs exactly one TARGET");
        };
        for input in &args.inputs {
            let bytes = match std::fs::read(input) {
                Ok(b) => b,
                Err(e) => return usage(&format!("{input}: {e}")),
            };
            println!("{}: running {input} ({} bytes)", t.name, bytes.len());
            (t.run)(&bytes);
        }
        println!("{} passed, 0 failed", args.inputs.len());
        return ExitCode::SUCCESS;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!(
        "fuzz-stable: seed {}, {} s and at most {} mutated runs per target",
        args.seed,
        args.seconds,
        if args.runs == u64::MAX {
            "unlimited".to_string()
        } else {
            args.runs.to_string()
        }
    );
    // A panic is a finding: report it once, briefly, and let the driver save the input.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let (mut passed, mut failed) = (0, 0);
    for (i, t) in chosen.iter().enumerate() {
        let started = Instant::now();
        let seed = args.seed.wrapping_add(i as u64);
        let out = driver::run_target(
            t,
            root,
            seed,
            Duration::from_secs_f64(args.seconds),
            args.runs,
        );
        let took = started.elapsed().as_secs_f64();
        match &out.crash {
            None => {
                passed += 1;
                println!(
                    "ok     {:<18} {:>6} replayed {:>9} mutated in {took:.1} s",
                    t.name, out.replayed, out.mutated
                );
            }
            Some(path) => {
                failed += 1;
                println!(
                    "FAILED {:<18} after {} replayed and {} mutated (seed {seed}): input saved to {}",
                    t.name,
                    out.replayed,
                    out.mutated,
                    path.display()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
