//! The stable-toolchain fallback: replays every input of a target's corpus
//! and regressions, then runs the target on mutated inputs for a while.
//!
//! It is not coverage-guided (libFuzzer needs a nightly toolchain for the
//! instrumentation): it mutates the corpus inputs at random, as libFuzzer's
//! own mutators do (bit flips, interesting values, inserted, erased, repeated
//! and spliced runs), from a seed it prints, so a failure is reproduced with
//! `--seed`. The corpora were grown by libFuzzer, so mutating them still
//! reaches deep into each decoder.
//!
//! A panicking input is written to `artifacts/TARGET/crash-HASH` and the
//! driver exits non-zero.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Target;

/// Largest input the mutator makes (libFuzzer's default `-max_len` for these corpora).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;

/// A small, fast, seedable generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values that often sit on a decoder's edges.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    4095,
    4096,
    4097,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
];

/// Applies one random mutation to `input`; `other` is a second corpus input
/// for splicing.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next_u64() as u8;
        }
        2 if !input.is_empty() => {
            // An interesting value, little- or big-endian, 1 to 8 bytes wide.
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let bytes = if rng.below(2) == 0 {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let i = rng.below(input.len());
            let n = bytes.len().min(input.len() - i);
            input[i..i + n].copy_from_slice(&bytes[..n]);
        }
        3 => {
            let i = rng.below(input.len() + 1);
            let n = 1 + rng.below(16);
            let fill: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(i..i, fill);
        }
        4 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(64));
            input.drain(i..i + n);
        }
        5 if !input.is_empty() => {
            // Repeat a run.
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(64));
            let run = input[i..i + n].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, run);
        }
        6 if !other.is_empty() => {
            // Splice: our head, the other input's tail.
            let cut = rng.below(input.len() + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        7 if !input.is_empty() => {
            input.truncate(rng.below(input.len()));
        }
        _ => {
            let n = rng.below(8);
            input.extend((0..n).map(|_| rng.next_u64() as u8));
        }
    }
    input.truncate(MAX_INPUT_BYTES);
}

/// The files of `dir` (none if it does not exist), sorted by name.
pub fn inputs_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// What one target's run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Corpus and regression inputs replayed.
    pub replayed: u64,
    /// Mutated inputs run.
    pub mutated: u64,
    /// Where the input that panicked was saved, if one did.
    pub crash: Option<PathBuf>,
}

/// Runs `input` through `target`; on a panic saves it under `artifacts` and
/// returns its path.
fn run_one(target: &Target, input: &[u8], artifacts: &Path) -> Option<PathBuf> {
    let ok = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).is_ok();
    if ok {
        return None;
    }
    let dir = artifacts.join(target.name);
    let path = dir.join(format!("crash-{}", &blake3::hash(input).to_hex()[..16]));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!(
            "could not save the crashing input to {}: {e}",
            path.display()
        );
    }
    Some(path)
}

/// Replays `TARGET`'s corpus and regressions under `root` (the fuzz
/// directory), then runs mutated inputs until `budget` has passed or
/// `max_runs` were made. Stops at the first panic.
pub fn run_target(
    target: &Target,
    root: &Path,
    seed: u64,
    budget: Duration,
    max_runs: u64,
) -> Outcome {
    let artifacts = root.join("artifacts");
    let mut out = Outcome::default();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for dir in ["corpus", "regressions"] {
        for path in inputs_in(&root.join(dir).join(target.name)) {
            let input = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    continue;
                }
            };
            out.replayed += 1;
            if let Some(crash) = run_one(target, &input, &artifacts) {
                eprintln!("{}: {} panics", target.name, path.display());
                out.crash = Some(crash);
                return out;
            }
            pool.push(input);
        }
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    while out.mutated < max_runs && start.elapsed() < budget {
        let mut input = pool[rng.below(pool.len())].clone();
        let other = &pool[rng.below(pool.len())];
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, other);
        }
        out.mutated += 1;
        if let Some(crash) = run_one(target, &input, &artifacts) {
            out.crash = Some(crash);
            return out;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_size_limit_and_change_inputs() {
        let mut rng = Rng::new(7);
        let mut changed = 0;
        for _ in 0..10_000 {
            let mut input = vec![0xAB; 100];
            mutate(&mut rng, &mut input, &[1, 2, 3]);
            assert!(input.len() <= MAX_INPUT_BYTES);
            changed += usize::from(input != vec![0xAB; 100]);
        }
        assert!(
            changed > 9_000,
            "{changed} of 10000 mutations changed the input"
        );
    }

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut input = b"twinfs".to_vec();
            for _ in 0..100 {
                mutate(&mut rng, &mut input, b"other");
            }
            input
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
