#!/usr/bin/env bash
# tests/all.sh — every test of twinfs, in one command:
#
#   bash tests/all.sh
#
# Works on a fresh machine (Debian 12, root, Rust with cargo-nextest): it
# installs what it needs through tests/setup.sh, then runs, each step
# announced and timed:
#   setup, cargo fmt --check, cargo clippy -D warnings, cargo build --release,
#   the workspace's tests (nextest) and doc tests, the simulator over fresh
#   seeds (tests/sim.sh), a short run of every fuzz target (tests/fuzz.sh),
#   then against a real mount:
#   a mount smoke test, pjdfstest and fsx (tests/external/).
# Every step runs even if an earlier one failed (so one run shows every
# problem), except that nothing runs after a failed setup or build. Exits 1
# if any step failed. Logs of the external suites: target/external/.
#
#   TOOLS     cache of the test tools (default ${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools)
#   FSX_OPS, FSX_SEED, PJDFSTEST_TIMEOUT, FSX_TIMEOUT: see tests/external/*.sh
#   SIM_SEEDS, SIM_START: see tests/sim.sh
#   FUZZ_SECONDS, FUZZ_MODE, FUZZ_TARGETS: see tests/fuzz.sh
set -uo pipefail

cd "$(dirname "$0")/.."
export TOOLS="${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools}"
export TWINFS="${TWINFS:-$PWD/target/release/twinfs}"
export PATH="$TOOLS/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

START_NS=$(date +%s%N)
RESULTS=()
FAILED=0

seconds_since() { # NS_TIMESTAMP -> elapsed seconds with one decimal
    local ns=$(($(date +%s%N) - $1))
    printf '%d.%d' $((ns / 1000000000)) $((ns / 100000000 % 10))
}

# step NAME COMMAND... — run, time and record one step; returns its status.
step() {
    local name="$1"
    shift
    printf '\n==> %s\n    $ %s\n' "$name" "$*"
    local t0
    t0=$(date +%s%N)
    "$@"
    local rc=$?
    local took
    took=$(seconds_since "$t0")
    if [ "$rc" -eq 0 ]; then
        printf '<== %s: ok (%ss)\n' "$name" "$took"
        RESULTS+=("$(printf '%-8s %8ss  %s' ok "$took" "$name")")
    else
        printf '<== %s: FAILED with status %d (%ss)\n' "$name" "$rc" "$took"
        RESULTS+=("$(printf '%-8s %8ss  %s' FAILED "$took" "$name")")
        FAILED=1
    fi
    return "$rc"
}

skip() { # skip NAME WHY
    printf '\n==> %s\nSKIPPED: %s\n' "$1" "$2"
    RESULTS+=("$(printf '%-8s %9s  %s (%s)' SKIPPED '' "$1" "$2")")
}

finish() {
    printf '\n==> summary\n'
    printf '    %s\n' "${RESULTS[@]}"
    printf 'total elapsed: %ss\n' "$(seconds_since "$START_NS")"
    if [ "$FAILED" -ne 0 ]; then
        echo "RESULT: FAILED"
        exit 1
    fi
    echo "RESULT: all steps passed"
    exit 0
}

run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --release --locked --no-fail-fast \
            --tool-config-file "twinfs-ci:$PWD/tests/nextest.toml"
    else
        echo "(cargo-nextest not found; using cargo test)"
        cargo test --workspace --release --locked --no-fail-fast
    fi
}

echo "twinfs tests: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(nproc) cores, $(rustc --version)"

step "setup (Debian packages, pjdfstest, fsx)" bash tests/setup.sh || finish
step "cargo fmt --check" cargo fmt --all --check -- --color never
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo build --release" cargo build --release --locked || finish
step "tests (cargo nextest, release)" run_tests
step "doc tests" cargo test --workspace --release --locked --doc
step "simulator (${SIM_SEEDS:-3000} fresh seeds)" bash tests/sim.sh
step "fuzz targets (${FUZZ_SECONDS:-4}s each)" bash tests/fuzz.sh

if ! step "mount smoke test" bash tests/external/mount-smoke.sh; then
    skip "pjdfstest" "the mount smoke test failed"
    skip "fsx" "the mount smoke test failed"
    finish
fi
step "pjdfstest" bash tests/external/pjdfstest.sh
step "fsx (${FSX_OPS:-100000} operations)" bash tests/external/fsx.sh
finish
