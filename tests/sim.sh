#!/usr/bin/env bash
# tests/sim.sh — the whole-system simulator (twinfs-sim, replicate/src/sim/)
# over fresh seeds, as one step of tests/all.sh:
#
#   bash tests/sim.sh            # SIM_SEEDS seeds from a start drawn now
#
# The nextest suite runs fixed seeds (replicate/tests/sim.rs); this step runs
# seeds no run has tried, so that each CI run covers new schedules of
# crashes, partitions and operations. A failing seed prints its trace and
# the command that replays it exactly.
#
#   SIM_SEEDS   how many seeds (default 3000, about 30 s)
#   SIM_START   first seed (default: drawn from the clock, printed)
set -euo pipefail
cd "$(dirname "$0")/.."

n="${SIM_SEEDS:-3000}"
start="${SIM_START:-$(( $(date +%s%N) % 1000000000000 ))}"
echo "twinfs-sim: seeds $start..$((start + n)) (replay the range with SIM_START=$start SIM_SEEDS=$n)"
cargo build --release --locked --bin twinfs-sim
exec ./target/release/twinfs-sim --seeds "$start..$((start + n))"
