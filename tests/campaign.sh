#!/usr/bin/env bash
# tests/campaign.sh — the long form of the kill campaign (tests/kill_campaign.rs):
#
#   bash tests/campaign.sh [SECS [SEED]]        # default: 3 hours, seed from the clock
#
# Runs trials in blocks of TWINFS_CAMPAIGN_BLOCK (default 20) per mode, cycling
# through sync, strict and async, until the time budget is spent, at nice 15
# (it shares the machine). The tally (trials, faults of each kind, fsynced
# bytes checked, bytes lost) is written to target/campaign/SEED/report.json,
# the trial log to target/campaign/SEED/log. A failure stops the campaign,
# prints the trial, its fault and the seed, and keeps the scratch directory
# with every daemon's log. `touch target/campaign/SEED/stop` ends it early,
# cleanly (after the trial under way and its block's checks).
# Needs root and /dev/fuse (as the CI tests do).
# It takes a lock of its own, not the one the mirror tests share, so other
# test runs on the machine are not held up for hours.
#
#   TWINFS_CAMPAIGN_MODES   e.g. "sync,strict" (default all three)
#   TWINFS_CAMPAIGN_BLOCK   trials per mode before the next (default 20)
#   TWINFS_CAMPAIGN_TRIALS  stop after this many trials (default: no limit)
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10800}"
seed="${2:-$(( $(date +%s%N) % 1000000007 ))}"
out="target/campaign/$seed"
mkdir -p "$out"

cargo build --release --locked --tests --test kill_campaign
echo "kill campaign: $secs s, seed $seed; log in $out/log, tally in $out/report.json"
TWINFS_CAMPAIGN_SECS="$secs" \
TWINFS_CAMPAIGN_SEED="$seed" \
TWINFS_CAMPAIGN_BLOCK="${TWINFS_CAMPAIGN_BLOCK:-20}" \
TWINFS_CAMPAIGN_TRIALS="${TWINFS_CAMPAIGN_TRIALS:-1000000}" \
TWINFS_CAMPAIGN_MIN_TRIALS=1 \
TWINFS_CAMPAIGN_REPORT="$PWD/$out/report.json" \
TWINFS_TEST_LOCK="$PWD/$out/lock" \
TWINFS_CAMPAIGN_STOP="$PWD/$out/stop" \
    nice -n 15 cargo test --release --locked --test kill_campaign -- \
    --exact kill_campaign_loses_no_fsynced_byte --nocapture 2>&1 | tee "$out/log"
