#!/usr/bin/env bash
# Wire benchmark: bytes sent to the peer per byte written by clients, with
# --cp-sync full, refs and best, for the same work through the real binary
# (mkfs, a peer on 127.0.0.1, a mount with --peer, the workload, `twinfs
# checkpoint`, then bytes.wire_total and bytes.written from `status --json`),
# with rsync's own total for the same tree as a reference.
#
#   sudo bash benches/wire.sh
#
# Needs root and /dev/fuse, python3, rsync, git, tar. About 10 minutes here.
# Environment:
#   TWINFS     the binary (default: `cargo build --release`, then target/release/twinfs)
#   BENCH_DIR  where the work directory goes (default /var/tmp)
#   WORKLOADS  subset of "a b c d e f" (default: all)
#   MODES      subset of "full refs best" (default: all)
#   RSYNC=0    skip the rsync reference
#   KEEP=1     keep the work directory (images, peer directories, logs)
#
# Workloads (counters are read right before the workload, after the peer has
# caught up, and after the final checkpoint; the table shows the difference):
#   a  256 MiB of random bytes written with 1 MiB writes (dd bs=1M)
#   b  cp -a /usr/include
#   c  20,000 random 4 KiB-aligned 4 KiB rewrites in a 1 GiB file
#      (the file is written and checkpointed first, outside the measurement)
#   d  20,000 random unaligned 100-byte writes in a 1 GiB file (likewise)
#   e  60,000 lines of 1 KiB appended round-robin to 100 log files,
#      every file fsync'ed every 1,000 lines
#   f  tar xzf of a tarball of /usr/include, then git init, git add -A, git commit
# rsync: `rsync -a --stats` from the mount to a private rsync daemon on
# 127.0.0.1, "Total bytes sent". For a, b, e, f: the final tree to an empty
# destination. For c, d: the file after the rewrites to a destination that
# holds it as it was before them (rsync's delta transfer; incremental, like
# the twinfs figures).
#
# Everything started here (peers, mounts, the rsync daemon) is stopped by PID
# or unmounted on exit, also on failure or Ctrl-C.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work_py="$here/wire_work.py"
WORKLOADS=${WORKLOADS:-"a b c d e f"}
MODES=${MODES:-"full refs best"}
RSYNC=${RSYNC:-1}
KEEP=${KEEP:-0}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

if [[ $(id -u) -ne 0 ]]; then
    echo "wire.sh: needs root (FUSE mounts); run it with sudo" >&2
    exit 2
fi
for tool in python3 tar git dd; do
    command -v "$tool" >/dev/null || { echo "wire.sh: $tool is missing" >&2; exit 1; }
done
if [[ $RSYNC == 1 ]] && ! command -v rsync >/dev/null; then
    echo "wire.sh: rsync is missing (apt-get install rsync, or RSYNC=0)" >&2
    exit 1
fi

if [[ -z ${TWINFS:-} ]]; then
    (cd "$root" && cargo build --release --quiet)
    TWINFS="${CARGO_TARGET_DIR:-$root/target}/release/twinfs"
fi
[[ -x $TWINFS ]] || { echo "wire.sh: no twinfs binary at $TWINFS" >&2; exit 1; }

W=$(mktemp -d "$BENCH_DIR/twinfs-wire.XXXXXX")
mounts=()
pids=()

cleanup() {
    local rc=$?
    set +e
    for mp in "${mounts[@]}"; do
        if mountpoint -q "$mp"; then
            umount "$mp" 2>/dev/null || umount -l "$mp"
        fi
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if [[ $KEEP == 1 ]]; then
        echo "wire.sh: work directory kept: $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "wire: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_until() { # what, command...
    local what=$1
    shift
    for _ in $(seq 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "wire.sh: timed out waiting for $what" >&2
    return 1
}

# Reads `status --json` of a mount into the variables st_* (bytes).
read_status() { # mountpoint
    local json
    json=$("$TWINFS" status --json "$1")
    eval "$(python3 -c '
import json, sys
b = json.loads(sys.argv[1])["bytes"]
print("st_written=%d st_wire=%d st_log=%d st_cp=%d"
      % (b["written"], b["wire_total"], b["log_sent"], b["cp_sent"]))
for k in ("full", "refs", "recipes", "deltas", "misses"):
    print("st_%s_n=%d st_%s_b=%d" % (k, b[k]["blocks"], k, b[k]["bytes"]))
' "$json")"
}

peer_streaming() { # mountpoint
    "$TWINFS" status --json "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
p = s["peer"]
sys.exit(0 if p and p["state"] == "streaming" and p["acked_cp"] == s["cp"] else 1)'
}

# ---- inputs shared by every round -------------------------------------------

inputs="$W/inputs"
mkdir -p "$inputs"
if [[ " $WORKLOADS " == *" a "* ]]; then
    head -c $((256 << 20)) /dev/urandom >"$inputs/rand256"
fi
if [[ " $WORKLOADS " == *" c "* || " $WORKLOADS " == *" d "* ]]; then
    head -c $((1 << 30)) /dev/urandom >"$inputs/rand1g"
fi
if [[ " $WORKLOADS " == *" f "* ]]; then
    tar czf "$inputs/src.tar.gz" -C /usr include
fi

# ---- rsync daemon -------------------------------------------------------------

rsync_port=""
start_rsyncd() {
    mkdir -p "$W/rsync-dst"
    rsync_port=$(free_port)
    cat >"$W/rsyncd.conf" <<EOF
use chroot = no
uid = root
gid = root
[bench]
    path = $W/rsync-dst
    read only = false
EOF
    rsync --daemon --no-detach --config="$W/rsyncd.conf" --address=127.0.0.1 \
        --port="$rsync_port" --log-file="$W/rsyncd.log" &
    pids+=($!)
    wait_until "the rsync daemon" bash -c "exec 3<>/dev/tcp/127.0.0.1/$rsync_port"
}

# Prints rsync's "Total bytes sent" for SRC pushed to module path DST.
rsync_sent() { # src dst
    rsync -a --stats "$1" "rsync://127.0.0.1:$rsync_port/bench/$2" |
        sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' | tr -d ,
}

# ---- one round -----------------------------------------------------------------

declare -A result  # "$workload $mode" -> "written wire" ; "$workload rsync" -> bytes
declare -A detail  # "$workload $mode" -> per-encoding counts

run_round() { # workload mode with_rsync
    local wl=$1 mode=$2 with_rsync=$3
    local d="$W/$wl-$mode"
    mkdir -p "$d/mnt" "$d/peer"
    head -c 32 /dev/urandom >"$d/secret"
    chmod 600 "$d/secret"
    # One key pair for both sides, trusted by both (the defaults next to the secret).
    "$TWINFS" keygen "$d/key" >/dev/null 2>&1
    cp "$d/key.pub" "$d/trusted-keys"
    "$TWINFS" mkfs "$d/source.img" --size 6G >/dev/null
    local port
    port=$(free_port)
    "$TWINFS" peer --dir "$d/peer" --listen "127.0.0.1:$port" --secret "$d/secret" \
        >"$d/peer.log" 2>&1 &
    pids+=($!)
    local peer_pid=$!
    wait_until "the peer to listen" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    "$TWINFS" mount -f "$d/source.img" "$d/mnt" --peer "127.0.0.1:$port" \
        --secret "$d/secret" --cp-sync "$mode" >"$d/mount.log" 2>&1 &
    pids+=($!)
    local mount_pid=$!
    mounts+=("$d/mnt")
    wait_until "the mount" mountpoint -q "$d/mnt"
    wait_until "the peer to catch up" peer_streaming "$d/mnt"
    local m="$d/mnt"

    # Preparation outside the measurement.
    case $wl in
    c | d)
        dd if="$inputs/rand1g" of="$m/file" bs=1M status=none
        "$TWINFS" checkpoint "$m"
        if [[ $with_rsync == 1 ]]; then rsync_sent "$m/file" "$wl/" >/dev/null; fi
        ;;
    esac
    "$TWINFS" checkpoint "$m"
    read_status "$m"
    local w0=$st_written x0=$st_wire
    local -A e0=([full]=$st_full_n [refs]=$st_refs_n [recipes]=$st_recipes_n [deltas]=$st_deltas_n [misses]=$st_misses_n
        [fullb]=$st_full_b [refsb]=$st_refs_b [recipesb]=$st_recipes_b [deltasb]=$st_deltas_b [missesb]=$st_misses_b
        [log]=$st_log [cp]=$st_cp)

    say "[$wl/$mode] workload"
    case $wl in
    a) dd if="$inputs/rand256" of="$m/big" bs=1M status=none ;;
    b) cp -a /usr/include "$m/include" ;;
    c) python3 "$work_py" rewrite "$m/file" 20000 4096 4096 7 ;;
    d) python3 "$work_py" rewrite "$m/file" 20000 100 1 7 ;;
    e) python3 "$work_py" logs "$m/logs" 100 60000 1000 7 ;;
    f)
        mkdir "$m/src"
        tar xzf "$inputs/src.tar.gz" -C "$m/src"
        (cd "$m/src" && git -c init.defaultBranch=main init -q &&
            git add -A && git -c user.name=bench -c user.email=bench@localhost commit -q -m import)
        ;;
    esac
    "$TWINFS" checkpoint "$m"
    read_status "$m"
    result["$wl $mode"]="$((st_written - w0)) $((st_wire - x0))"
    detail["$wl $mode"]="$((st_log - e0[log])) $((st_cp - e0[cp])) \
$((st_full_n - e0[full])) $((st_full_b - e0[fullb])) $((st_refs_n - e0[refs])) $((st_refs_b - e0[refsb])) \
$((st_recipes_n - e0[recipes])) $((st_recipes_b - e0[recipesb])) $((st_deltas_n - e0[deltas])) $((st_deltas_b - e0[deltasb])) \
$((st_misses_n - e0[misses])) $((st_misses_b - e0[missesb]))"

    if [[ $with_rsync == 1 ]]; then
        local sent
        case $wl in
        a) sent=$(rsync_sent "$m/big" "$wl/") ;;
        b) sent=$(rsync_sent "$m/include" "$wl/") ;;
        c | d) sent=$(rsync_sent "$m/file" "$wl/") ;;
        e) sent=$(rsync_sent "$m/logs" "$wl/") ;;
        f) sent=$(rsync_sent "$m/src" "$wl/") ;;
        esac
        result["$wl rsync"]=$sent
    fi

    "$TWINFS" verify "$m" >/dev/null
    umount "$m"
    wait "$mount_pid" || true
    kill -TERM "$peer_pid"
    wait "$peer_pid" || true
    if [[ $KEEP != 1 ]]; then rm -rf "$d"; fi
}

if [[ $RSYNC == 1 ]]; then start_rsyncd; fi
last_mode=${MODES##* }
for wl in $WORKLOADS; do
    for mode in $MODES; do
        r=0
        if [[ $RSYNC == 1 && $mode == "$last_mode" ]]; then r=1; fi
        run_round "$wl" "$mode" "$r"
    done
done

# ---- report --------------------------------------------------------------------

declare -A label=(
    [a]="(a) 256 MiB, 1 MiB writes"
    [b]="(b) cp -a /usr/include"
    [c]="(c) 20k 4 KiB rewrites, 1 GiB file"
    [d]="(d) 20k 100 B writes, 1 GiB file"
    [e]="(e) 60k 1 KiB log lines, 100 files"
    [f]="(f) untar + git add/commit"
)
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
ratio() { python3 -c "print(f'{$1/max($2,1):.3f}')"; }

echo
echo "Bytes on the wire / bytes written (MiB = 2^20 bytes; same work per column):"
echo
header="| workload | written MiB |"
rule="|---|---:|"
for mode in $MODES; do
    header+=" $mode MiB | $mode w/w |"
    rule+="---:|---:|"
done
if [[ $RSYNC == 1 ]]; then
    header+=" rsync MiB | rsync w/w |"
    rule+="---:|---:|"
fi
echo "$header"
echo "$rule"
for wl in $WORKLOADS; do
    row="| ${label[$wl]} |"
    written=""
    for mode in $MODES; do
        read -r w x <<<"${result["$wl $mode"]}"
        written=$w
    done
    row+=" $(mib "$written") |"
    for mode in $MODES; do
        read -r w x <<<"${result["$wl $mode"]}"
        row+=" $(mib "$x") | $(ratio "$x" "$w") |"
    done
    if [[ $RSYNC == 1 ]]; then
        s=${result["$wl rsync"]}
        row+=" $(mib "$s") | $(ratio "$s" "$written") |"
    fi
    echo "$row"
done
echo
echo "Where the bytes went (wire bytes per kind; blocks/KiB per CP encoding):"
echo
echo "| workload | mode | log MiB | cp MiB | full | refs | recipes | deltas | misses |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for wl in $WORKLOADS; do
    for mode in $MODES; do
        read -r lg cp fn fb rn rb pn pb dn db mn mb <<<"${detail["$wl $mode"]}"
        k() { python3 -c "print(f'{$1} / {$2/1024:.0f}K')"; }
        echo "| $wl | $mode | $(mib "$lg") | $(mib "$cp") | $(k "$fn" "$fb") | $(k "$rn" "$rb") | $(k "$pn" "$pb") | $(k "$dn" "$db") | $(k "$mn" "$mb") |"
    done
done
