#!/usr/bin/env bash
# Long-haul link benchmark: a sync-mode mirror through `twinfs relay` at
# several round trips; for each, the rate of a large copy (1 MiB writes,
# then fsync, incompressible data) and the median fsync after a 4 KiB
# append, next to the local fsync (a mount without a peer), the fsync of a
# plain file on the peer's disk and their sum with the round trip.
#
#   sudo bash benches/latency.sh
#
# It is the test tests/relay_latency.rs run with larger settings, at nice 15
# (the machine is shared). Needs root and /dev/fuse. Environment:
#   RTTS     round trips in ms (default 0,10,50)
#   MIB      size of the copy (default 1024)
#   ROUNDS   measurements of each round trip, alternating (default 3)
#   FSYNCS   fsyncs timed per measurement (default 100)
# The table goes to stdout; everything started is stopped by the test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --tests --test relay_latency
TWINFS_LATENCY_RTTS="${RTTS:-0,10,50}" \
TWINFS_LATENCY_MIB="${MIB:-1024}" \
TWINFS_LATENCY_ROUNDS="${ROUNDS:-3}" \
TWINFS_LATENCY_FSYNCS="${FSYNCS:-100}" \
    nice -n 15 cargo test --release --locked --test relay_latency -- \
    --exact a_50_ms_link_keeps_the_copy_rate_and_adds_one_round_trip_to_fsync --nocapture
