#!/usr/bin/env bash
# tests/fuzz.sh — a short run of every fuzz target in tests/fuzz/ (README.md,
# "Fuzzing"), as one step of tests/all.sh:
#
#   bash tests/fuzz.sh            # FUZZ_SECONDS per target (default 4)
#
# With a nightly toolchain (`rustup toolchain list` shows one), the targets
# run under libFuzzer, coverage-guided: cargo-fuzz (pinned, installed into
# $TOOLS like tests/setup.sh's tools) builds them with `-s none` (no
# AddressSanitizer: the decoders are safe Rust, and the sanitizer would
# cost two to three times the executions; overflow checks and debug
# assertions stay on), and each target starts from its corpus and its
# regressions. Without nightly, the stable driver `fuzz-stable` replays the
# same corpora and regressions and runs each target on randomly mutated
# corpus inputs: not coverage-guided, but every input that ever found a bug
# and every input libFuzzer kept for new coverage runs on every CI run.
# Either way the fuzz crate is first checked: cargo fmt --check and clippy
# -D warnings (and, on stable, the driver's unit tests).
#
# The fuzz crate is its own workspace with its own Cargo.lock; --locked is
# not used, so that a dependency the main workspace gains is resolved here
# too instead of failing the step (cargo keeps every version already
# pinned in tests/fuzz/Cargo.lock).
#
#   FUZZ_SECONDS   seconds of fuzzing per target (default 4)
#   FUZZ_MODE      auto (default), libfuzzer or stable
#   FUZZ_TARGETS   space-separated subset of targets (default: all)
#   TOOLS          cache of installed tools (default ${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools}"
CARGO_FUZZ_VERSION="0.13.2"
FUZZ_SECONDS="${FUZZ_SECONDS:-4}"
FUZZ_MODE="${FUZZ_MODE:-auto}"
MANIFEST=(--manifest-path "$ROOT/tests/fuzz/Cargo.toml")
# `cargo fuzz` is found there once installed.
export PATH="$TOOLS/bin:$PATH"
# The stable build shares the main target directory, so the dependencies the
# release build already compiled are reused.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf 'fuzz: %s\n' "$*"; }

has_nightly() {
    rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly --version >/dev/null 2>&1
}

if [ "$FUZZ_MODE" = auto ]; then
    if has_nightly; then FUZZ_MODE=libfuzzer; else FUZZ_MODE=stable; fi
fi
say "mode $FUZZ_MODE, ${FUZZ_SECONDS}s per target"

say "checking the fuzz crate (fmt, clippy)"
cargo fmt "${MANIFEST[@]}" --check -- --color never
cargo clippy "${MANIFEST[@]}" --release --all-targets --no-default-features --features stable -- -D warnings

# Every target has its libFuzzer entry in tests/fuzz/fuzz_targets/.
TARGETS="${FUZZ_TARGETS:-$(cd tests/fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' ')}"

run_stable() {
    # The driver's own unit tests (mutations, seeds) share this build.
    cargo test "${MANIFEST[@]}" --release --no-default-features --features stable --lib
    cargo build "${MANIFEST[@]}" --release --no-default-features --features stable --bin fuzz-stable
    # shellcheck disable=SC2086
    "$CARGO_TARGET_DIR/release/fuzz-stable" --seconds "$FUZZ_SECONDS" $TARGETS
}

run_libfuzzer() {
    if ! cargo install --list --root "$TOOLS" 2>/dev/null | grep -qx "cargo-fuzz v$CARGO_FUZZ_VERSION:"; then
        say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
        cargo install --locked --quiet --root "$TOOLS" --version "=$CARGO_FUZZ_VERSION" cargo-fuzz
    fi
    # cargo-fuzz builds with flags of its own, so into a directory of its
    # own; 16 codegen units compile in parallel where cargo-fuzz's default
    # of one does not, for runs a little slower: the right trade for a few
    # seconds per target (a long campaign uses the default, README.md).
    local dir="$ROOT/tests/fuzz/target/ci"
    cargo +nightly fuzz build --fuzz-dir tests/fuzz -s none --codegen-units 16 --target-dir "$dir"
    local bin="$dir/x86_64-unknown-linux-gnu/release"
    local scratch passed=0 failed=0 t
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' RETURN
    printf '%-18s %12s %8s %8s\n' target executions cov ft
    for t in $TARGETS; do
        # New inputs go to a scratch corpus: the repository's is merged by hand.
        mkdir -p "$scratch/$t" "tests/fuzz/regressions/$t"
        if "$bin/$t" "$scratch/$t" "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t" \
            -max_total_time="$FUZZ_SECONDS" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
            -artifact_prefix="$ROOT/tests/fuzz/artifacts/$t-" -print_final_stats=1 \
            >"$scratch/$t.log" 2>&1; then
            passed=$((passed + 1))
            local runs cov ft
            runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")"
            cov="$(grep -o 'cov: [0-9]*' "$scratch/$t.log" | tail -1 | cut -d' ' -f2)"
            ft="$(grep -o 'ft: [0-9]*' "$scratch/$t.log" | tail -1 | cut -d' ' -f2)"
            printf '%-18s %12s %8s %8s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}"
        else
            failed=$((failed + 1))
            say "FAILED: $t; its log:"
            tail -40 "$scratch/$t.log"
        fi
    done
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

mkdir -p tests/fuzz/artifacts
# The file-based targets keep empty scratch directories for reuse, which a
# process that exits leaves behind: they go in one directory of this run.
if [ -d /dev/shm ]; then
    TWINFS_FUZZ_SCRATCH="$(mktemp -d /dev/shm/twinfs-fuzz-run.XXXXXX)"
else
    TWINFS_FUZZ_SCRATCH="$(mktemp -d)"
fi
export TWINFS_FUZZ_SCRATCH
trap 'rm -rf "$TWINFS_FUZZ_SCRATCH"' EXIT
case "$FUZZ_MODE" in
    libfuzzer) run_libfuzzer ;;
    stable) run_stable ;;
    *) say "FUZZ_MODE must be auto, libfuzzer or stable"; exit 2 ;;
esac
