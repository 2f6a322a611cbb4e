#!/usr/bin/env bash
# Failover benchmark: bytes a failback sends against the bytes changed since
# the common CP, time from `twinfs switchover` until the other side takes an
# fsynced write, and time from a lost source to a promoted, mounted,
# writable replica (4 GiB volume, sync mode, peer on loopback).
#
#   sudo bash benches/failover.sh
#
# It runs two tests with larger settings, at nice 15 (the machine is
# shared): tests/mirror_failover.rs's failback test (which CI runs with
# 1 GiB too) and tests/mirror_switchover.rs's ignored measurement. Needs
# root and /dev/fuse. Environment:
#   FAILBACK_MIB   MiB changed on the new primary before the failback (default 1024)
#   DATA_MIB       MiB of data on the 4 GiB volume switched over (default 1024)
#   ROUNDS         switchovers each way (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --tests --test mirror_failover --test mirror_switchover
echo "## failback"
TWINFS_FAILBACK_MIB="${FAILBACK_MIB:-1024}" \
    nice -n 15 cargo test --release --locked --test mirror_failover -- \
    --exact failback_after_a_large_change_sends_little_more_than_the_change --nocapture 2>&1 |
    grep -E '^(wrote|failback:)|test result'
echo "## switchover and promote"
TWINFS_FAILOVER_MIB="${DATA_MIB:-1024}" TWINFS_FAILOVER_ROUNDS="${ROUNDS:-3}" \
    nice -n 15 cargo test --release --locked --test mirror_switchover -- \
    --exact measure_switchover_and_promote_times --ignored --nocapture 2>&1 |
    grep -E '^\||^\(|test result'
