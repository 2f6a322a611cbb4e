#!/usr/bin/env bash
# CPU per GiB mirrored: the CPU seconds (utime + stime from /proc) of the
# mount and the peer daemons while `cp` writes a 1 GiB random file into a
# sync-mode mount with a peer on 127.0.0.1, then `sync` and `twinfs
# checkpoint` (so the peer has applied the CP). Prints one line per run.
#
#   sudo bash benches/cpu1g.sh BIN [BIN...]    # each binary RUNS times, alternating
#
# Needs root and /dev/fuse. Environment: RUNS (default 3), BENCH_DIR (default
# /var/tmp), PERF=FILE to also write a `perf report` of the last run to FILE.
# A binary without `keygen` (protocol 3 and older) runs with --secret alone.
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0"; exit 2; }
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
W=$(mktemp -d "$BENCH_DIR/twinfs-cpu1g.XXXXXX")
mp="" pp=""
cleanup() {
    set +e
    mountpoint -q "$W/mnt" && umount "$W/mnt"
    for p in $mp $pp; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
head -c 1G /dev/urandom >"$W/rand"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
one() { # bin
    local bin=$1 d="$W/run"
    rm -rf "$d" && mkdir -p "$d/mnt"
    head -c 32 /dev/urandom >"$d/secret" && chmod 600 "$d/secret"
    if "$bin" keygen "$d/key" >/dev/null 2>&1; then cp "$d/key.pub" "$d/trusted-keys"; fi
    "$bin" mkfs "$d/img" --size 24G >/dev/null
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" peer --dir "$d/peer" --listen "127.0.0.1:$port" --secret "$d/secret" >"$d/peer.log" 2>&1 &
    pp=$!
    sleep 0.5
    "$bin" mount -f "$d/img" "$d/mnt" --peer "127.0.0.1:$port" --secret "$d/secret" --mode sync >"$d/mount.log" 2>&1 &
    mp=$!
    for _ in $(seq 100); do mountpoint -q "$d/mnt" && break; sleep 0.1; done
    sleep 1
    cat "$W/rand" >/dev/null
    local m0 p0 t0 perf=""
    m0=$(ticks "$mp") p0=$(ticks "$pp") t0=$EPOCHREALTIME
    if [[ -n ${PERF:-} ]]; then
        perf record -F 499 -g -p "$mp,$pp" -o "$W/perf.data" >/dev/null 2>&1 &
        perf=$!
        sleep 0.3
    fi
    cp "$W/rand" "$d/mnt/f" && sync "$d/mnt/f"
    "$bin" checkpoint "$d/mnt" >/dev/null
    local m1 p1 t1 hz
    m1=$(ticks "$mp") p1=$(ticks "$pp") t1=$EPOCHREALTIME hz=$(getconf CLK_TCK)
    if [[ -n $perf ]]; then
        kill -INT "$perf"; wait "$perf" || true
        perf report -i "$W/perf.data" --no-children --sort comm,dso,sym --percent-limit 0.7 --stdio 2>/dev/null >"$PERF" || true
    fi
    awk -v b="$bin" -v m=$((m1 - m0)) -v p=$((p1 - p0)) -v hz="$hz" -v s="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        'BEGIN { printf "%s: mount %.2f s, peer %.2f s, total %.2f s CPU; %.1f s wall\n", b, m / hz, p / hz, (m + p) / hz, s }'
    umount "$d/mnt"; wait "$mp" || true; mp=""
    kill "$pp"; wait "$pp" || true; pp=""
}
for _ in $(seq "$RUNS"); do
    for bin in "$@"; do one "$bin"; done
done
