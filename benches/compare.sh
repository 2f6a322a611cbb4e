#!/usr/bin/env bash
# Comparison benchmark: twinfs against a plain directory, bindfs and a
# GlusterFS replica-2 volume, all on this machine over loopback, plus
# twinfs-only measurements (write latency under back-to-back CPs, fsync
# latency, peak RSS during a long copy, resync time against volume size).
#
#   sudo bash benches/compare.sh
#
# Needs root and /dev/fuse, python3, rsync, git, tar; installs bindfs,
# glusterfs-server + glusterfs-client and fio with apt-get when missing
# (GlusterFS that cannot be installed or started shows as n/a; without fio a
# python loop does the random writes). Everything goes over 127.0.0.0/8.
# About 45 minutes on a busy 2-core machine with the defaults, 25 of them
# GlusterFS's (SYSTEMS without gluster, or smaller FILE_MB / GIT_COPIES /
# LAT_MB / RSS_MB, make it shorter).
#
# Environment:
#   TWINFS        the binary (default: `cargo build --release`, then
#                 ${CARGO_TARGET_DIR:-target}/release/twinfs); copied into the
#                 work directory at start, so a rebuild meanwhile is harmless
#   BENCH_DIR     where the work directory goes (default /var/tmp; every
#                 system's data lives on that disk)
#   PARTS         subset of "compare latency fsync rss resync flood" (default: all)
#   SYSTEMS       compare: subset of "native bindfs gluster twinfs
#                 twinfs-async twinfs-sync" (default: all)
#   WORKLOADS     compare: subset of "cp1g cpa rsync untar git read rm fio"
#   FILE_MB       size of the big file of cp1g/read (default 1024)
#   GIT_COPIES    copies of /usr/include in the git checkout (default 2)
#   FIO_MB, FIO_SECS   random-write file size and duration (default 256, 20)
#   TW_SIZE       twinfs volume size for compare/latency/fsync/rss (default 24G)
#   LAT_MB        data written in the latency part (default 4096)
#   FSYNC_N       write+fsync pairs in the fsync part (default 2000)
#   RSS_MB        data copied in the rss part (default 10240)
#   RESYNC_SIZES  volume sizes of the resync part (default "2G 20G")
#   RESYNC_BASE_MB, RESYNC_CHANGE_MB   data before / while the peer is away
#                 (default 512, 1024)
#   FLOOD_N       connections of the flood part (default 2000)
#   KEEP=1        keep the work directory (images, peer directories, logs)
#
# Parts:
#   compare  every workload on every system; per workload the figure, its
#            speed relative to native, bytes between the replicas (twinfs:
#            bytes.wire_total of `twinfs status`, what the mount sent;
#            GlusterFS: bytes_sent of every TCP socket to or from a brick port
#            from `ss -ti`, both directions), the CPU time of each system's
#            own processes, and the peak RSS (VmHWM) of every process of each
#            system. Workloads: cp of a FILE_MB random file +
#            sync; cp -a /usr/include + sync; rsync -a /usr/include to a new
#            directory + sync; tar xzf of a tarball of /usr/include + sync;
#            `git status` and `git commit -a` of a one-line change in a
#            checkout of GIT_COPIES copies of /usr/include (copied in and
#            indexed outside the timing); cold read of the big file (page
#            cache dropped, FUSE file systems remounted first); rm -rf of the
#            trees + sync; fio 4 KiB random writes with fsync every 16.
#            twinfs gets a `twinfs checkpoint` after every workload, outside
#            the timing, so the wire bytes include the CP.
#   latency  1 MiB write() latencies while `twinfs checkpoint` runs back to
#            back (twinfs sync mode with a peer), and on native for reference
#   fsync    4 KiB write + fsync latency: native, twinfs without peer, async
#            and sync with a peer, and a loopback TCP round trip (the target's terms)
#   rss      peak RSS of the mount daemon and the peer while RSS_MB of random
#            data is copied in (1 GiB files), sync mode
#   resync   for each RESYNC_SIZES: write RESYNC_BASE_MB, checkpoint, stop the
#            peer (SIGTERM), write RESYNC_CHANGE_MB of new files, checkpoint,
#            restart the peer; time until the peer is streaming and has acked
#            the source's CP. Compared with a plain copy over a loopback TCP
#            connection.
#   flood    FLOOD_N idle connections (a tenth sending a byte a second,
#            each reopened when the peer drops it) at a twinfs peer: its RSS
#            before and under the flood, how long a strict-mode source takes
#            to connect and catch up through it, and 100 strict fsyncs meanwhile.
#
# GlusterFS's bricks are on 127.0.0.2: its CLI refuses 127.0.0.1 and
# "localhost" as brick hosts. glusterd runs in the foreground from a volfile
# in the work directory with its own working directory there, listening on
# 127.0.0.2 only.
#
# Everything started here (mounts, daemons, glusterd and its bricks) is
# unmounted or stopped by PID on exit, also on failure or Ctrl-C.

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work_py="$here/compare_work.py"
PARTS=${PARTS:-"compare latency fsync rss resync flood"}
FLOOD_N=${FLOOD_N:-2000}
SYSTEMS=${SYSTEMS:-"native bindfs gluster twinfs twinfs-async twinfs-sync"}
WORKLOADS=${WORKLOADS:-"cp1g cpa rsync untar git read rm fio"}
FILE_MB=${FILE_MB:-1024}
GIT_COPIES=${GIT_COPIES:-2}
FIO_MB=${FIO_MB:-256}
FIO_SECS=${FIO_SECS:-20}
TW_SIZE=${TW_SIZE:-24G}
LAT_MB=${LAT_MB:-4096}
FSYNC_N=${FSYNC_N:-2000}
RSS_MB=${RSS_MB:-10240}
RESYNC_SIZES=${RESYNC_SIZES:-"2G 20G"}
RESYNC_BASE_MB=${RESYNC_BASE_MB:-512}
RESYNC_CHANGE_MB=${RESYNC_CHANGE_MB:-1024}
KEEP=${KEEP:-0}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

has() { [[ " $1 " == *" $2 "* ]]; }

if [[ $(id -u) -ne 0 ]]; then
    echo "compare.sh: needs root (FUSE mounts, drop_caches); run it with sudo" >&2
    exit 2
fi
[[ -c /dev/fuse ]] || { echo "compare.sh: /dev/fuse is missing" >&2; exit 1; }
for tool in python3 tar git rsync ss find mountpoint; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is missing" >&2; exit 1; }
done

if [[ -z ${TWINFS:-} ]]; then
    (cd "$root" && cargo build --release --quiet)
    TWINFS="${CARGO_TARGET_DIR:-$root/target}/release/twinfs"
fi
[[ -x $TWINFS ]] || { echo "compare.sh: no twinfs binary at $TWINFS" >&2; exit 1; }

W=$(mktemp -d "$BENCH_DIR/twinfs-compare.XXXXXX")
mounts=()
pids=()
gl_vol="twcmp$$"
gl_dir="$W/gluster"
gl_pid=""
gl_statedirs=(/var/lib/glusterd /var/run/gluster /var/log/glusterfs)

say() { echo "compare: $*" >&2; }

stop_pid() { # pid
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Processes of our GlusterFS volume (bricks, self-heal daemon, client).
gluster_pids() {
    local pid comm
    for pid in $(pgrep -f -- "$gl_vol" || true); do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case $comm in glusterfs | glusterfsd) echo "$pid" ;; esac
    done
}

# Removes what glusterd added to its system directories since
# gluster_snapshot (files, then directories that became empty).
gluster_unlitter() {
    local d
    for d in "${gl_statedirs[@]}"; do
        local before
        before="$gl_dir/before.$(echo "$d" | tr / _)"
        [[ -f $before ]] || continue
        if [[ $(head -1 "$before") == "(absent)" ]]; then
            rm -rf "$d"
            continue
        fi
        [[ -d $d ]] || continue
        find "$d" | sort -r | while read -r p; do
            grep -qxF -- "$p" "$before" && continue
            if [[ -d $p && ! -L $p ]]; then rmdir "$p" 2>/dev/null || true; else rm -f "$p"; fi
        done
    done
}

cleanup() {
    local rc=$?
    set +e
    local mp pid
    for mp in "${mounts[@]}"; do
        if mountpoint -q "$mp"; then
            umount "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp"
        fi
    done
    if [[ -n $gl_pid ]] && kill -0 "$gl_pid" 2>/dev/null; then
        gluster --mode=script volume stop "$gl_vol" force >/dev/null 2>&1
        gluster --mode=script volume delete "$gl_vol" >/dev/null 2>&1
    fi
    if [[ -n $gl_pid ]]; then
        for pid in $(gluster_pids); do stop_pid "$pid"; done
    fi
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    if [[ -n $gl_pid ]]; then gluster_unlitter; fi
    if [[ $KEEP == 1 ]]; then
        echo "compare.sh: work directory kept: $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E
trap 'echo "compare.sh: failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

mkdir -p "$W/bin"
TW="$W/bin/twinfs"
cp "$TWINFS" "$TW"

calc() { awk "BEGIN { print $* }"; }
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { printf "%.*f", d, v }'; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1048576 }'; }
since() { calc "$EPOCHREALTIME - $1"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

listening() { # port
    [[ -n $(ss -Htln "( sport = :$1 )") ]]
}

wait_until() { # what, command...
    local what=$1
    shift
    for _ in $(seq 1200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    say "timed out waiting for $what"
    return 1
}

apt_install() { # package...
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >"$W/apt.log" 2>&1 ||
        { apt-get update -q >>"$W/apt.log" 2>&1 && apt-get install -y -q "$@" >>"$W/apt.log" 2>&1; }
}

vmhwm() { # pid -> kB
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

declare -A RSS=()  # "system|process" -> peak kB
rss_keys=()
note_rss() { # system process pid
    local k="$1|$2" v
    v=$(vmhwm "$3")
    [[ -n $v ]] || v=0
    if [[ -z ${RSS[$k]:-} ]]; then
        rss_keys+=("$k")
        RSS[$k]=$v
    elif ((v > RSS[$k])); then
        RSS[$k]=$v
    fi
}

# Keeps WARN/ERROR lines of a log (timestamps stripped, counted) for the report.
harvest_log() { # label file
    [[ -f $2 ]] || return 0
    grep -E 'WARN|ERROR|panic|error' "$2" |
        sed -E 's/^\[[0-9T:.Z-]+ +/[/' | sort | uniq -c | sort -rn | head -8 |
        sed "s|^|$1: |" >>"$W/log-summary.txt" || true
}

# ---- twinfs ---------------------------------------------------------------------

tw_json() { # mountpoint key... -> values, one per line
    "$TW" status --json "$1" | python3 "$work_py" jget "${@:2}"
}

tw_caught_up() { # mountpoint
    local v
    mapfile -t v < <(tw_json "$1" peer.state peer.acked_cp cp)
    [[ ${v[0]} == streaming && ${v[1]} == "${v[2]}" ]]
}

tw_d="" tw_variant="" tw_port="" tw_peer_pid="" tw_mount_pid=""

tw_peer_start() {
    "$TW" peer --dir "$tw_d/peer" --listen "127.0.0.1:$tw_port" --secret "$tw_d/secret" \
        >>"$tw_d/peer.log" 2>&1 &
    tw_peer_pid=$!
    pids+=("$tw_peer_pid")
    wait_until "the twinfs peer to listen" listening "$tw_port"
}

tw_mount() {
    local args=()
    if [[ $tw_variant != nopeer ]]; then
        args=(--peer "127.0.0.1:$tw_port" --secret "$tw_d/secret" --mode "$tw_variant")
    fi
    "$TW" mount -f "$tw_d/img" "$tw_d/mnt" "${args[@]}" >>"$tw_d/mount.log" 2>&1 &
    tw_mount_pid=$!
    pids+=("$tw_mount_pid")
    mounts+=("$tw_d/mnt")
    wait_until "the twinfs mount" mountpoint -q "$tw_d/mnt" || return 1
    if [[ $tw_variant != nopeer ]]; then
        wait_until "the twinfs peer to catch up" tw_caught_up "$tw_d/mnt" || return 1
    fi
}

tw_umount() { # system label for RSS
    note_rss "$1" "twinfs mount" "$tw_mount_pid"
    umount "$tw_d/mnt" || { say "umount $tw_d/mnt failed"; umount -l "$tw_d/mnt"; }
    local rc=0
    wait "$tw_mount_pid" || rc=$?
    if ((rc != 0)); then say "twinfs mount exited with status $rc (see $tw_d/mount.log)"; fi
}

tw_up() { # dir variant(nopeer|async|sync) size
    tw_d=$1 tw_variant=$2
    mkdir -p "$tw_d/mnt"
    head -c 32 /dev/urandom >"$tw_d/secret"
    chmod 600 "$tw_d/secret"
    # One key pair for both sides, trusted by both (the defaults next to the secret).
    "$TW" keygen "$tw_d/key" >/dev/null 2>&1
    cp "$tw_d/key.pub" "$tw_d/trusted-keys"
    "$TW" mkfs "$tw_d/img" --size "$3" >/dev/null || return 1
    tw_peer_pid=""
    if [[ $tw_variant != nopeer ]]; then
        tw_port=$(free_port)
        tw_peer_start || return 1
    fi
    tw_mount
}

tw_down() { # system label for RSS
    tw_umount "$1"
    if [[ -n $tw_peer_pid ]]; then
        note_rss "$1" "twinfs peer" "$tw_peer_pid"
        stop_pid "$tw_peer_pid"
        tw_peer_pid=""
    fi
    harvest_log "$1 mount" "$tw_d/mount.log"
    harvest_log "$1 peer" "$tw_d/peer.log"
    if [[ $KEEP != 1 ]]; then rm -rf "$tw_d"; fi
}

# ---- GlusterFS -------------------------------------------------------------------

gl_ports=()

gluster_snapshot() {
    local d
    for d in "${gl_statedirs[@]}"; do
        local out
        out="$gl_dir/before.$(echo "$d" | tr / _)"
        if [[ -d $d ]]; then find "$d" >"$out"; else echo "(absent)" >"$out"; fi
    done
}

gluster_client_pid() {
    pgrep -f -- "--volfile-id=/$gl_vol" | head -1
}

gluster_mount() {
    mount -t glusterfs -o "log-file=$gl_dir/client.log" "127.0.0.2:/$gl_vol" "$gl_dir/mnt" || return 1
    mounts+=("$gl_dir/mnt")
}

gluster_up() {
    if ! command -v glusterd >/dev/null || ! command -v mount.glusterfs >/dev/null; then
        apt_install glusterfs-server glusterfs-client || { say "GlusterFS could not be installed (see apt.log)"; return 1; }
    fi
    if pgrep -x glusterd >/dev/null; then
        say "a glusterd not started here is running; GlusterFS skipped"
        return 1
    fi
    mkdir -p "$gl_dir/state" "$gl_dir/b1" "$gl_dir/b2" "$gl_dir/mnt"
    gluster_snapshot
    sed -e "s#option working-directory .*#option working-directory $gl_dir/state#" \
        -e 's#^\( *\)option transport.socket.listen-port.*#&\n\1option transport.socket.bind-address 127.0.0.2#' \
        /etc/glusterfs/glusterd.vol >"$gl_dir/glusterd.vol"
    glusterd -N -f "$gl_dir/glusterd.vol" -p "$gl_dir/glusterd.pid" --log-file="$gl_dir/glusterd.log" &
    gl_pid=$!
    pids+=("$gl_pid")
    wait_until "glusterd" gluster --mode=script volume list || return 1
    gluster --mode=script volume create "$gl_vol" replica 2 \
        "127.0.0.2:$gl_dir/b1" "127.0.0.2:$gl_dir/b2" force >&2 || return 1
    gluster --mode=script volume start "$gl_vol" >&2 || return 1
    gluster_mount || return 1
    local pid port
    gl_ports=()
    for pid in $(pgrep -f -- "--volfile-id $gl_vol\\."); do
        port=$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -A1 -x -- --brick-port | tail -1)
        gl_ports+=("$port")
    done
    say "GlusterFS volume $gl_vol up, brick ports ${gl_ports[*]}"
    [[ ${#gl_ports[@]} -eq 2 ]]
}

gluster_note_rss() {
    local pid name
    note_rss gluster glusterd "$gl_pid"
    for pid in $(gluster_pids); do
        name=$(tr '\0' ' ' <"/proc/$pid/cmdline")
        case $name in
        *"--brick-name $gl_dir/b1"*) note_rss gluster "glusterfsd brick 1" "$pid" ;;
        *"--brick-name $gl_dir/b2"*) note_rss gluster "glusterfsd brick 2" "$pid" ;;
        *glustershd*) note_rss gluster "glusterfs self-heal daemon" "$pid" ;;
        *"--volfile-id=/$gl_vol"*) note_rss gluster "glusterfs client (FUSE)" "$pid" ;;
        esac
    done
}

gluster_down() {
    gluster_note_rss
    if mountpoint -q "$gl_dir/mnt"; then umount "$gl_dir/mnt" || umount -l "$gl_dir/mnt"; fi
    gluster --mode=script volume stop "$gl_vol" force >&2
    gluster --mode=script volume delete "$gl_vol" >&2
    local pid
    for pid in $(gluster_pids); do stop_pid "$pid"; done
    stop_pid "$gl_pid"
    gluster_unlitter
    harvest_log gluster "$gl_dir/client.log"
    gl_pid=""
    if [[ $KEEP != 1 ]]; then rm -rf "$gl_dir"; fi
}

# ---- systems of the compare part ----------------------------------------------------

declare -A sys_label=(
    [native]="native" [bindfs]="bindfs" [gluster]="GlusterFS r2"
    [twinfs]="twinfs" [twinfs-async]="twinfs async" [twinfs-sync]="twinfs sync"
)
M=""
bindfs_pid=""

tw_variant_of() { # system -> nopeer|async|sync
    case $1 in
    twinfs-async) echo async ;;
    twinfs-sync) echo sync ;;
    *) echo nopeer ;;
    esac
}

sys_up() { # system -> sets M
    case $1 in
    native)
        M="$W/native"
        mkdir -p "$M"
        ;;
    bindfs)
        if ! command -v bindfs >/dev/null; then
            apt_install bindfs || { say "bindfs could not be installed"; return 1; }
        fi
        mkdir -p "$W/bindfs/src" "$W/bindfs/mnt"
        bindfs_start || return 1
        M="$W/bindfs/mnt"
        ;;
    gluster)
        gluster_up || return 1
        M="$gl_dir/mnt"
        ;;
    twinfs | twinfs-async | twinfs-sync)
        tw_up "$W/$1" "$(tw_variant_of "$1")" "$TW_SIZE" || return 1
        M="$tw_d/mnt"
        ;;
    esac
}

bindfs_start() {
    bindfs -f "$W/bindfs/src" "$W/bindfs/mnt" 2>>"$W/bindfs.log" &
    bindfs_pid=$!
    pids+=("$bindfs_pid")
    mounts+=("$W/bindfs/mnt")
    wait_until "bindfs" mountpoint -q "$W/bindfs/mnt"
}

bindfs_stop() {
    note_rss bindfs bindfs "$bindfs_pid"
    umount "$W/bindfs/mnt" || fusermount3 -u "$W/bindfs/mnt"
    wait "$bindfs_pid" || true
}

# Unmounts and mounts again, so no cache of the file system survives.
sys_remount() {
    case $1 in
    native) ;;
    bindfs) bindfs_stop && bindfs_start ;;
    gluster)
        gluster_note_rss
        umount "$gl_dir/mnt" && gluster_mount
        ;;
    twinfs*) tw_umount "$1" && tw_mount ;;
    esac
}

sys_down() {
    case $1 in
    native) rm -rf "$W/native" ;;
    bindfs)
        bindfs_stop
        rm -rf "$W/bindfs"
        ;;
    gluster) gluster_down ;;
    twinfs*) tw_down "$1" ;;
    esac
}

# Called after the preparation of each workload and after the workload itself
# (outside the timing): a CP, so that the wire bytes include it.
sys_settle() {
    case $1 in
    twinfs*) "$TW" checkpoint "$M" >/dev/null ;;
    esac
}

# Cumulative counters: "wire written" (empty when not applicable).
sys_counters() {
    case $1 in
    twinfs-async | twinfs-sync) tw_json "$M" bytes.wire_total bytes.written | paste -sd' ' ;;
    twinfs) echo "0 $(tw_json "$M" bytes.written)" ;;
    gluster) echo "$(python3 "$work_py" sswire "${gl_ports[@]}") 0" ;;
    *) echo "" ;;
    esac
}

# Processes whose CPU time a workload on system S is charged with (the file
# system's own daemons; native has none, its work is the kernel's).
sys_cpu_pids() {
    case $1 in
    bindfs) echo "$bindfs_pid" ;;
    gluster) echo "$gl_pid"; gluster_pids ;;
    twinfs*) echo "$tw_mount_pid" "$tw_peer_pid" ;;
    esac
}

# User + system CPU ticks of the processes given (all their threads; gone ones count 0).
cpu_ticks() { # pid...
    local pid t=0 f
    for pid in "$@"; do
        [[ -n $pid ]] || continue
        f=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null) || continue
        # After "pid (comm)": field 12 is utime, 13 stime.
        t=$((t + $(awk '{ print $12 + $13 }' <<<"$f")))
    done
    echo "$t"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# ---- the compare part ------------------------------------------------------------------

declare -A R=()     # "workload|system" -> figure
declare -A WIRE=()  # "workload|system" -> bytes
declare -A WRIT=()  # "workload|system" -> bytes written (twinfs)
declare -A CKT=()   # "workload|system" -> seconds of the checkpoint after it (twinfs)
declare -A CPU=()   # "workload|system" -> CPU seconds of the system's daemons
clk_tck=$(getconf CLK_TCK)
declare -A unit=(
    [cp1g]="MiB/s" [cpa]="files/s" [rsync]="files/s" [untar]="files/s"
    [git-status]="s" [git-commit]="s" [read]="MiB/s" [rm]="files/s" [fio]="IOPS"
)
declare -A wl_label=(
    [cp1g]="cp ${FILE_MB} MiB file + sync" [cpa]="cp -a /usr/include + sync"
    [rsync]="rsync -a /usr/include + sync" [untar]="tar xzf (/usr/include) + sync"
    [git-status]="git status (${GIT_COPIES}x /usr/include)" [git-commit]="git commit -a, 1-line change"
    [read]="cold read ${FILE_MB} MiB file" [rm]="rm -rf of the trees + sync"
    [fio]="4 KiB rand. writes, fsync/16"
)
rows=()
for wl in $WORKLOADS; do
    if [[ $wl == git ]]; then rows+=(git-status git-commit); else rows+=("$wl"); fi
done

inputs="$W/inputs"
rand="$inputs/rand"
mkdir -p "$inputs"

prepare_inputs() {
    if has "$PARTS" compare || has "$PARTS" latency || has "$PARTS" rss || has "$PARTS" resync; then
        say "preparing $FILE_MB MiB of random bytes"
        head -c $((FILE_MB << 20)) /dev/urandom >"$rand"
    fi
    if has "$PARTS" compare; then
        include_n=$(find /usr/include | wc -l)
        if has "$WORKLOADS" untar; then
            say "preparing the tarball"
            tar czf "$inputs/src.tar.gz" -C /usr include
            untar_n=$(tar tzf "$inputs/src.tar.gz" | wc -l)
        fi
        if has "$WORKLOADS" git; then
            say "preparing the git checkout ($GIT_COPIES copies of /usr/include)"
            mkdir -p "$inputs/repo"
            for i in $(seq "$GIT_COPIES"); do cp -a /usr/include "$inputs/repo/include$i"; done
            (cd "$inputs/repo" && git -c init.defaultBranch=main init -q && git add -A &&
                git -c user.name=bench -c user.email=bench@localhost commit -q -m import &&
                git repack -adq && git prune-packed)
            git_n=$(git -C "$inputs/repo" ls-files | wc -l)
        fi
        if has "$WORKLOADS" fio && ! command -v fio >/dev/null; then
            apt_install fio || say "fio could not be installed; a python loop does the random writes"
        fi
    fi
}

git_q() { git -C "$M/repo" -c user.name=bench -c user.email=bench@localhost -c gc.auto=0 "$@"; }

# The timed parts of the workloads.
wl_cp1g() { cp "$rand" "$M/big" && sync; }
wl_cpa() { cp -a /usr/include "$M/cpa" && sync; }
wl_rsync() { rsync -a /usr/include/ "$M/rs/" && sync; }
wl_untar() { tar xzf "$inputs/src.tar.gz" -C "$M/untar" && sync; }
wl_read() { cat "$M/big" >/dev/null; }
wl_rm() { rm -rf "$@" && sync; }

elapsed=0
timed() { # command... -> sets elapsed (seconds)
    local t0=$EPOCHREALTIME
    "$@" || return 1
    elapsed=$(since "$t0")
}

# Runs WORKLOAD's preparation, the timed part and the bookkeeping on system S.
measure() { # system workload
    local s=$1 wl=$2 c0 c1 n
    case $wl in
    read)
        [[ -f $M/big ]] || cp "$rand" "$M/big" || return 1
        sys_remount "$s" || return 1
        ;;
    git)
        cp -a "$inputs/repo" "$M/repo" && git_q status >/dev/null && git_q update-index --refresh >/dev/null || return 1
        ;;
    rm)
        local trees=()
        for t in cpa rs untar repo; do [[ -e $M/$t ]] && trees+=("$M/$t"); done
        if [[ ${#trees[@]} -eq 0 ]]; then return 0; fi
        n=$(find "${trees[@]}" | wc -l)
        ;;
    esac
    sys_settle "$s" || return 1
    c0=$(sys_counters "$s")
    local cpu_pids cpu0
    read -r -a cpu_pids <<<"$(sys_cpu_pids "$s" | tr '\n' ' ')"
    cpu0=$(cpu_ticks "${cpu_pids[@]}")
    case $wl in
    cp1g)
        timed wl_cp1g || return 1
        R["cp1g|$s"]=$(calc "$FILE_MB / $elapsed")
        ;;
    cpa)
        timed wl_cpa || return 1
        R["cpa|$s"]=$(calc "$include_n / $elapsed")
        ;;
    rsync)
        timed wl_rsync || return 1
        R["rsync|$s"]=$(calc "$include_n / $elapsed")
        ;;
    untar)
        mkdir -p "$M/untar"
        timed wl_untar || return 1
        R["untar|$s"]=$(calc "$untar_n / $elapsed")
        ;;
    git)
        timed git_q status >/dev/null || return 1
        R["git-status|$s"]=$elapsed
        echo "/* compare.sh */" >>"$M/repo/include1/stdio.h"
        timed git_q commit -q -a -m change || return 1
        R["git-commit|$s"]=$elapsed
        ;;
    read)
        drop_caches
        timed wl_read || return 1
        R["read|$s"]=$(calc "$FILE_MB / $elapsed")
        ;;
    rm)
        timed wl_rm "${trees[@]}" || return 1
        R["rm|$s"]=$(calc "$n / $elapsed")
        ;;
    fio)
        if command -v fio >/dev/null; then
            timed fio --name=randw --filename="$M/fio.dat" --rw=randwrite --bs=4k --size="${FIO_MB}m" \
                --fsync=16 --ioengine=psync --fallocate=none --runtime="$FIO_SECS" --time_based \
                --output-format=json --output="$W/fio-$s.json" >/dev/null || return 1
            R["fio|$s"]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"])' "$W/fio-$s.json")
        else
            R["fio|$s"]=$(python3 "$work_py" randwrite "$M/fio.dat" "$FIO_MB" "$FIO_SECS" |
                python3 "$work_py" jget iops)
            elapsed=$FIO_SECS
        fi
        rm -f "$M/fio.dat"
        ;;
    esac
    local t_settle=$EPOCHREALTIME key=$wl
    [[ $wl == git ]] && key=git-commit
    sys_settle "$s" || return 1
    case $s in twinfs*) CKT["$key|$s"]=$(since "$t_settle") ;; esac
    [[ $s == native ]] || CPU["$key|$s"]=$(calc "($(cpu_ticks "${cpu_pids[@]}") - $cpu0) / $clk_tck")
    c1=$(sys_counters "$s")
    if [[ -n $c0 && -n $c1 ]]; then
        local a0 b0 a1 b1
        read -r a0 b0 <<<"$c0"
        read -r a1 b1 <<<"$c1"
        WIRE["$key|$s"]=$((a1 - a0))
        WRIT["$key|$s"]=$((b1 - b0))
    fi
    say "[$s] $wl done (last timed step $(fmt "$elapsed" 2) s)"
}

part_compare() {
    local s wl
    for s in $SYSTEMS; do
        say "[$s] setting up"
        if ! sys_up "$s"; then
            say "[$s] could not be set up: shown as n/a"
            [[ $s == gluster && -n $gl_pid ]] && gluster_down
            for wl in "${rows[@]}"; do R["$wl|$s"]="n/a"; done
            continue
        fi
        for wl in $WORKLOADS; do
            say "[$s] $wl"
            if ! measure "$s" "$wl"; then
                say "[$s] $wl FAILED"
                if [[ $wl == git ]]; then
                    R["git-status|$s"]=${R["git-status|$s"]:-fail}
                    R["git-commit|$s"]=${R["git-commit|$s"]:-fail}
                else
                    R["$wl|$s"]=fail
                fi
            fi
        done
        if [[ $s == gluster ]]; then gluster_note_rss; fi
        sys_down "$s"
    done
}

report_compare() {
    local s wl header rule row v nv
    echo
    echo "## Workloads (figure, and in brackets the speed relative to native: for s, native's time / this time)"
    echo
    header="| workload | unit |"
    rule="|---|---|"
    for s in $SYSTEMS; do
        header+=" ${sys_label[$s]} |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for wl in "${rows[@]}"; do
        row="| ${wl_label[$wl]} | ${unit[$wl]} |"
        nv=${R["$wl|native"]:-}
        for s in $SYSTEMS; do
            v=${R["$wl|$s"]:-}
            if [[ -z $v ]]; then
                row+=" - |"
            elif [[ ! $v =~ ^[0-9.e+-]+$ ]]; then
                row+=" $v |"
            else
                local shown r=""
                if [[ ${unit[$wl]} == s ]]; then shown=$(fmt "$v" 2); else shown=$(fmt "$v" 0); fi
                if [[ $s != native && $nv =~ ^[0-9.e+-]+$ ]]; then
                    if [[ ${unit[$wl]} == s ]]; then r=$(calc "$nv / $v"); else r=$(calc "$v / $nv"); fi
                    r=" ($(fmt "$r" 2))"
                fi
                row+=" $shown$r |"
            fi
        done
        echo "$row"
    done
    local wsys=()
    for s in $SYSTEMS; do
        case $s in twinfs-async | twinfs-sync | gluster) wsys+=("$s") ;; esac
    done
    if [[ ${#wsys[@]} -gt 0 ]]; then
        echo
        echo "## Bytes between the replicas, MiB (twinfs: wire_total incl. the CP after the workload, sent by the mount; GlusterFS: TCP payload to and from the brick ports, both directions)"
        echo
        header="| workload |"
        rule="|---|"
        for s in "${wsys[@]}"; do
            header+=" ${sys_label[$s]} |"
            rule+="---:|"
            [[ $s == gluster ]] || { header+=" ${sys_label[$s]} written |"; rule+="---:|"; }
        done
        echo "$header"
        echo "$rule"
        for wl in "${rows[@]}"; do
            [[ $wl == git-status ]] && continue
            row="| ${wl_label[$wl]} |"
            [[ $wl == git-commit ]] && row="| git status + git commit -a |"
            for s in "${wsys[@]}"; do
                v=${WIRE["$wl|$s"]:-}
                if [[ -n $v ]]; then row+=" $(mib "$v") |"; else row+=" - |"; fi
                if [[ $s != gluster ]]; then
                    v=${WRIT["$wl|$s"]:-}
                    if [[ -n $v ]]; then row+=" $(mib "$v") |"; else row+=" - |"; fi
                fi
            done
            echo "$row"
        done
    fi
}

# A table of seconds per workload (git status and commit as one row) and
# system, from the array named MAP; nothing when no system is given.
report_seconds() { # title map system...
    local title=$1 s wl row header="| workload |" rule="|---|"
    local -n map=$2
    shift 2
    [[ $# -gt 0 ]] || return 0
    for s in "$@"; do
        header+=" ${sys_label[$s]} |"
        rule+="---:|"
    done
    echo
    echo "$title"
    echo
    echo "$header"
    echo "$rule"
    for wl in "${rows[@]}"; do
        [[ $wl == git-status ]] && continue
        row="| ${wl_label[$wl]} |"
        [[ $wl == git-commit ]] && row="| git status + git commit -a |"
        for s in "$@"; do
            if [[ -n ${map["$wl|$s"]:-} ]]; then row+=" $(fmt "${map["$wl|$s"]}" 2) |"; else row+=" - |"; fi
        done
        echo "$row"
    done
}

report_cpu() {
    local s csys=()
    for s in $SYSTEMS; do [[ $s == native ]] || csys+=("$s"); done
    report_seconds "## CPU seconds (user + system) of each file system's own processes per workload, timed part and the settling after it (twinfs: mount + peer; GlusterFS: glusterd, bricks, self-heal daemon, client; the kernel's FUSE and page-cache work is not in it). Steadier than the wall-clock figures on a shared machine." \
        CPU "${csys[@]}"
}

report_checkpoints() {
    local s tsys=()
    for s in $SYSTEMS; do case $s in twinfs*) tsys+=("$s") ;; esac; done
    report_seconds "## twinfs: seconds of the \`twinfs checkpoint\` after each workload, outside the timing (the workload's \`sync\` already takes a CP; with a peer this also waits until the peer has applied the CP, i.e. the catch-up of async mode)" \
        CKT "${tsys[@]}"
}

report_rss() {
    [[ ${#rss_keys[@]} -gt 0 ]] || return 0
    echo
    echo "## Peak RSS (VmHWM) per process, MiB (over the whole part; twinfs mounts: the largest of each mount instance)"
    echo
    echo "| system / part | process | peak RSS MiB |"
    echo "|---|---|---:|"
    local k
    for k in "${rss_keys[@]}"; do
        echo "| ${k%%|*} | ${k#*|} | $(awk -v v="${RSS[$k]}" 'BEGIN { printf "%.1f", v / 1024 }') |"
    done
}

# ---- latency part --------------------------------------------------------------------

declare -A LAT=()  # system -> JSON summary
cp_stats=""

cp_loop() { # mountpoint stopfile out
    while [[ ! -e $2 ]]; do
        local t0=$EPOCHREALTIME
        if "$TW" checkpoint "$1" >/dev/null 2>>"$3.err"; then
            awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN { printf "%.0f\n", (a - b) * 1e9 }' >>"$3"
        else
            echo "checkpoint failed" >>"$3.err"
            sleep 0.5
        fi
    done
}

part_latency() {
    say "[latency] native"
    mkdir -p "$W/lat-native"
    LAT[native]=$(python3 "$work_py" stream "$W/lat-native/f" "$LAT_MB" "$rand" --lat "$W/lat-native.txt")
    rm -rf "$W/lat-native"
    say "[latency] twinfs sync with peer, checkpoints back to back"
    tw_up "$W/lat-tw" sync "$TW_SIZE" || return 1
    local stop="$W/lat-tw.stop" loop_pid
    cp_loop "$tw_d/mnt" "$stop" "$W/lat-cps.txt" &
    loop_pid=$!
    pids+=("$loop_pid")
    LAT[twinfs-sync]=$(python3 "$work_py" stream "$tw_d/mnt/f" "$LAT_MB" "$rand" --lat "$W/lat-tw.txt") || say "latency writer failed"
    touch "$stop"
    wait "$loop_pid" || true
    "$TW" checkpoint "$tw_d/mnt" >/dev/null
    if [[ -s $W/lat-cps.txt ]]; then cp_stats=$(python3 "$work_py" lat "$W/lat-cps.txt"); fi
    if [[ -s $W/lat-cps.txt.err ]]; then
        say "checkpoint errors during the latency run:"
        sort "$W/lat-cps.txt.err" | uniq -c | head >&2
    fi
    tw_down "latency: twinfs sync"
}

report_latency() {
    echo
    echo "## write() latency, 1 MiB writes, ${LAT_MB} MiB in one file (twinfs: sync mode with a peer, \`twinfs checkpoint\` back to back)"
    echo
    echo "| system | MiB/s | p50 ms | p99 ms | p99.9 ms | max ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    local s
    for s in native twinfs-sync; do
        [[ -n ${LAT[$s]:-} ]] || continue
        mapfile -t v < <(python3 "$work_py" jget mib_s p50_ms p99_ms p999_ms max_ms <<<"${LAT[$s]}")
        echo "| ${sys_label[$s]} | ${v[0]} | ${v[1]} | ${v[2]} | ${v[3]} | ${v[4]} |"
    done
    if [[ -n $cp_stats ]]; then
        mapfile -t v < <(python3 "$work_py" jget count p50_ms p99_ms max_ms <<<"$cp_stats")
        echo
        echo "Checkpoints during the twinfs run: ${v[0]}, duration p50 ${v[1]} ms, p99 ${v[2]} ms, max ${v[3]} ms."
    fi
}

# ---- fsync part ------------------------------------------------------------------------

declare -A FS=()
fsync_systems="native twinfs twinfs-async twinfs-sync"

fsync_rtt=""

part_fsync() {
    local s
    say "[fsync] loopback round trip"
    fsync_rtt=$(python3 "$work_py" rtt "$FSYNC_N") || fsync_rtt=""
    for s in $fsync_systems; do
        say "[fsync] $s"
        case $s in
        native)
            mkdir -p "$W/fsync-native"
            FS[$s]=$(python3 "$work_py" fsync "$W/fsync-native/f" "$FSYNC_N")
            rm -rf "$W/fsync-native"
            ;;
        *)
            tw_up "$W/fsync-$s" "$(tw_variant_of "$s")" "$TW_SIZE" || { FS[$s]=fail; continue; }
            FS[$s]=$(python3 "$work_py" fsync "$tw_d/mnt/f" "$FSYNC_N") || FS[$s]=fail
            tw_down "fsync: ${sys_label[$s]}"
            ;;
        esac
    done
}

report_fsync() {
    echo
    echo "## 4 KiB write + fsync latency, ${FSYNC_N} appends to one file"
    echo
    echo "| system | ops/s | p50 ms | p99 ms | max ms |"
    echo "|---|---:|---:|---:|---:|"
    local s
    for s in $fsync_systems; do
        if [[ ${FS[$s]:-fail} == fail ]]; then
            echo "| ${sys_label[$s]} | fail | | | |"
            continue
        fi
        mapfile -t v < <(python3 "$work_py" jget ops_s p50_ms p99_ms max_ms <<<"${FS[$s]}")
        echo "| ${sys_label[$s]} | ${v[0]} | ${v[1]} | ${v[2]} | ${v[3]} |"
    done
    [[ -n $fsync_rtt ]] || return 0
    local rtt local_p50 peer_p50 sync_p50
    rtt=$(python3 "$work_py" jget p50_ms <<<"$fsync_rtt")
    echo
    echo "Loopback TCP round trip (64 bytes, echo in another process): p50 $rtt ms."
    if [[ ${FS[twinfs]:-fail} != fail && ${FS[native]:-fail} != fail && ${FS[twinfs-sync]:-fail} != fail ]]; then
        local_p50=$(python3 "$work_py" jget p50_ms <<<"${FS[twinfs]}")
        peer_p50=$(python3 "$work_py" jget p50_ms <<<"${FS[native]}")
        sync_p50=$(python3 "$work_py" jget p50_ms <<<"${FS[twinfs-sync]}")
        echo "Target for twinfs sync, p50: local fsync (twinfs without a peer) $local_p50 +" \
            "round trip $rtt + the peer's fsync (native) $peer_p50 =" \
            "$(python3 -c "print(round($local_p50 + $rtt + $peer_p50, 3))") ms; measured $sync_p50 ms."
    fi
}

# ---- rss part ----------------------------------------------------------------------------

rss_result=""

part_rss() {
    say "[rss] twinfs sync with peer, $RSS_MB MiB"
    tw_up "$W/rss" sync "$TW_SIZE" || return 1
    local base_m base_p
    base_m=$(vmhwm "$tw_mount_pid")
    base_p=$(vmhwm "$tw_peer_pid")
    local t0=$EPOCHREALTIME json
    json=$(python3 "$work_py" stream "$tw_d/mnt/big" "$RSS_MB" "$rand" --file-mb "$FILE_MB") || say "rss writer failed"
    sync
    "$TW" checkpoint "$tw_d/mnt" >/dev/null
    local secs
    secs=$(since "$t0")
    local hm hp
    hm=$(vmhwm "$tw_mount_pid")
    hp=$(vmhwm "$tw_peer_pid")
    rss_result="$base_m $base_p $hm $hp $secs"
    say "[rss] writer: $json"
    tw_down "rss: twinfs sync"
}

report_rss_part() {
    [[ -n $rss_result ]] || return 0
    local bm bp hm hp secs
    read -r bm bp hm hp secs <<<"$rss_result"
    echo
    echo "## Peak RSS during a ${RSS_MB} MiB copy into twinfs (sync mode, peer on loopback; $(fmt "$secs" 1) s incl. sync + checkpoint, $(fmt "$(calc "$RSS_MB / $secs")" 0) MiB/s)"
    echo
    echo "| process | VmHWM after mount, MiB | VmHWM after the copy, MiB |"
    echo "|---|---:|---:|"
    echo "| twinfs mount | $(fmt "$(calc "$bm / 1024")") | $(fmt "$(calc "$hm / 1024")") |"
    echo "| twinfs peer | $(fmt "$(calc "$bp / 1024")") | $(fmt "$(calc "$hp / 1024")") |"
}

# ---- flood part ------------------------------------------------------------------------

flood_result=""

part_flood() {
    say "[flood] $FLOOD_N connections at a twinfs peer, strict-mode source"
    tw_d="$W/flood"
    tw_variant=strict
    mkdir -p "$tw_d/mnt"
    head -c 32 /dev/urandom >"$tw_d/secret"
    chmod 600 "$tw_d/secret"
    "$TW" keygen "$tw_d/key" >/dev/null 2>&1
    cp "$tw_d/key.pub" "$tw_d/trusted-keys"
    "$TW" mkfs "$tw_d/img" --size 2G >/dev/null || return 1
    tw_port=$(free_port)
    tw_peer_start || return 1
    sleep 1
    local rss0 rss1 stop="$tw_d/stop-flood" fpid
    rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$tw_peer_pid/status")
    python3 "$work_py" flood "$tw_port" "$FLOOD_N" 120 "$stop" >"$tw_d/flood.json" &
    fpid=$!
    pids+=("$fpid")
    sleep 5
    local t0=$EPOCHREALTIME connect_s fsync_json
    "$TW" mount -f "$tw_d/img" "$tw_d/mnt" --peer "127.0.0.1:$tw_port" --secret "$tw_d/secret" \
        --mode strict >>"$tw_d/mount.log" 2>&1 &
    tw_mount_pid=$!
    pids+=("$tw_mount_pid")
    mounts+=("$tw_d/mnt")
    wait_until "the twinfs mount" mountpoint -q "$tw_d/mnt" || return 1
    wait_until "the twinfs peer to catch up" tw_caught_up "$tw_d/mnt" || return 1
    connect_s=$(since "$t0")
    fsync_json=$(python3 "$work_py" fsync "$tw_d/mnt/f" 100) || say "[flood] fsync loop failed"
    rss1=$(awk '/^VmRSS:/ { print $2 }' "/proc/$tw_peer_pid/status")
    touch "$stop"
    wait "$fpid" || true
    flood_result="$rss0 $rss1 $connect_s $(python3 "$work_py" jget opened <"$tw_d/flood.json") $(echo "$fsync_json" | python3 "$work_py" jget p50_ms p99_ms | tr '\n' ' ')"
    tw_down "flood: twinfs strict"
}

report_flood() {
    [[ -n $flood_result ]] || return 0
    local r0 r1 cs opened p50 p99
    read -r r0 r1 cs opened p50 p99 <<<"$flood_result"
    echo
    echo "## A flood of $FLOOD_N connections at the peer (a tenth sending a byte a second; each reopened when dropped)"
    echo
    echo "| peer RSS before, MiB | peer RSS under the flood, MiB | connections opened | strict source connected and caught up after, s | strict fsync p50 / p99, ms |"
    echo "|---:|---:|---:|---:|---|"
    echo "| $(fmt "$(calc "$r0 / 1024")") | $(fmt "$(calc "$r1 / 1024")") | $opened | $(fmt "$cs" 2) | $p50 / $p99 |"
}

# ---- resync part -----------------------------------------------------------------------

declare -A RS=()  # size -> "seconds wire_bytes connect_s verify cp_ckpt_s"
netcopy=""
localcp=""

part_resync() {
    local size
    for size in $RESYNC_SIZES; do
        say "[resync] volume $size"
        tw_up "$W/resync-$size" sync "$size" || { RS[$size]=fail; continue; }
        local m="$tw_d/mnt"
        if ! { python3 "$work_py" stream "$m/base" "$RESYNC_BASE_MB" "$rand" --file-mb 256 >/dev/null &&
            "$TW" checkpoint "$m" >/dev/null &&
            wait_until "the peer to catch up" tw_caught_up "$m"; }; then
            RS[$size]=fail
            tw_down "resync $size"
            continue
        fi
        note_rss "resync $size" "twinfs peer" "$tw_peer_pid"
        stop_pid "$tw_peer_pid"
        local t0=$EPOCHREALTIME ck wr
        python3 "$work_py" stream "$m/new" "$RESYNC_CHANGE_MB" "$rand" --file-mb 256 --shift 2048 >/dev/null || { RS[$size]=fail; tw_down "resync $size"; continue; }
        wr=$(since "$t0")
        t0=$EPOCHREALTIME
        "$TW" checkpoint "$m" >/dev/null || say "[resync] checkpoint without the peer failed"
        ck=$(since "$t0")
        local target w0
        mapfile -t v < <(tw_json "$m" cp bytes.wire_total peer.state)
        target=${v[0]} w0=${v[1]}
        say "[resync] source at CP $target, peer state ${v[2]}; restarting the peer"
        t0=$EPOCHREALTIME
        tw_peer_start
        local t_conn="" state acked
        while :; do
            mapfile -t v < <(tw_json "$m" peer.state peer.acked_cp)
            state=${v[0]} acked=${v[1]}
            if [[ -z $t_conn && $state != disconnected && $state != connecting && $state != degraded-async ]]; then
                t_conn=$(since "$t0")
            fi
            if [[ $state == streaming && $acked =~ ^[0-9]+$ ]] && ((acked >= target)); then break; fi
            if (($(awk -v e="$(since "$t0")" 'BEGIN { print (e > 900) }'))); then
                say "[resync] no catch-up after 900 s (state $state, acked $acked)"
                break
            fi
            sleep 0.1
        done
        local secs w1 ver=ok
        secs=$(since "$t0")
        [[ $state == streaming ]] || secs="timeout"
        w1=$(tw_json "$m" bytes.wire_total)
        "$TW" verify "$m" >"$W/verify-$size.txt" 2>&1 || { ver=MISMATCH; say "verify: $(cat "$W/verify-$size.txt")"; }
        RS[$size]="$secs $((w1 - w0)) ${t_conn:-?} $ver $ck $wr"
        tw_down "resync $size"
    done
    say "[resync] plain copies of $FILE_MB MiB for reference"
    netcopy=$(python3 "$work_py" netcopy "$rand" "$W/netcopy.out" | python3 "$work_py" jget mib_s)
    rm -f "$W/netcopy.out"
    local t0=$EPOCHREALTIME
    cp "$rand" "$W/localcp.out" && sync
    localcp=$(calc "$FILE_MB / $(since "$t0")")
    rm -f "$W/localcp.out"
}

report_resync() {
    echo
    echo "## Resync after the peer was away: ${RESYNC_BASE_MB} MiB before, ${RESYNC_CHANGE_MB} MiB of new files while away (sync mode)"
    echo
    echo "| volume | writing the new files w/o peer, s | checkpoint w/o peer, s | restart -> connected, s | restart -> streaming at the source's CP, s | connected -> streaming, s | MiB/s from restart | MiB/s from connect | wire MiB | verify |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    local size first="" ratio="" first_rs="" ratio_rs=""
    for size in $RESYNC_SIZES; do
        if [[ ${RS[$size]:-fail} == fail ]]; then
            echo "| $size | fail | | | | | | | | |"
            continue
        fi
        local secs wire conn ver ck wr
        read -r secs wire conn ver ck wr <<<"${RS[$size]}"
        if [[ $secs == timeout ]]; then
            echo "| $size | $(fmt "$wr" 2) | $(fmt "$ck" 2) | $conn | timeout | | | | $(mib "$wire") | $ver |"
            continue
        fi
        local rs
        rs=$(calc "$secs - $conn")
        echo "| $size | $(fmt "$wr" 2) | $(fmt "$ck" 2) | $(fmt "$conn" 2) | $(fmt "$secs" 2) | $(fmt "$rs" 2) | $(fmt "$(calc "$RESYNC_CHANGE_MB / $secs")" 0) | $(fmt "$(calc "$RESYNC_CHANGE_MB / $rs")" 0) | $(mib "$wire") | $ver |"
        if [[ -z $first ]]; then
            first=$secs first_rs=$rs
        else
            ratio=$(calc "$secs / $first") ratio_rs=$(calc "$rs / $first_rs")
        fi
    done
    echo
    if [[ -n $ratio ]]; then
        echo "Resync time ratio, last / first volume: $(fmt "$ratio" 2) from the peer's restart, $(fmt "$ratio_rs" 2) from the reconnection (target <= 1.2)."
    fi
    echo "Reference: plain copy of $FILE_MB MiB over a loopback TCP connection (to disk, fsync): ${netcopy:-?} MiB/s; cp + sync on the same disk: $(fmt "${localcp:-0}" 0) MiB/s."
}

# ---- main -------------------------------------------------------------------------------

{
    echo "# twinfs comparison benchmark"
    echo
    echo "- twinfs: $("$TW" --version) ($TWINFS), kernel $(uname -r), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- work directory on: $(df --output=source,fstype "$W" | tail -1 | tr -s ' ')"
    echo "- PARTS=\"$PARTS\" SYSTEMS=\"$SYSTEMS\" WORKLOADS=\"$WORKLOADS\""
    echo "- FILE_MB=$FILE_MB GIT_COPIES=$GIT_COPIES FIO_MB=$FIO_MB FIO_SECS=$FIO_SECS TW_SIZE=$TW_SIZE"
    echo "- LAT_MB=$LAT_MB FSYNC_N=$FSYNC_N RSS_MB=$RSS_MB RESYNC_SIZES=\"$RESYNC_SIZES\" RESYNC_BASE_MB=$RESYNC_BASE_MB RESYNC_CHANGE_MB=$RESYNC_CHANGE_MB"
}

start_all=$EPOCHREALTIME
prepare_inputs
if has "$PARTS" compare; then
    echo "- /usr/include: $include_n entries; tarball: ${untar_n:-?} entries; git checkout: ${git_n:-?} files"
fi

if has "$PARTS" compare; then part_compare; fi
if has "$PARTS" latency; then part_latency || say "latency part failed"; fi
if has "$PARTS" fsync; then part_fsync; fi
if has "$PARTS" rss; then part_rss || say "rss part failed"; fi
if has "$PARTS" resync; then part_resync; fi
if has "$PARTS" flood; then part_flood || say "flood part failed"; fi

if has "$PARTS" compare; then
    report_compare
    report_cpu
    report_checkpoints
fi
report_rss
if has "$PARTS" latency; then report_latency; fi
if has "$PARTS" fsync; then report_fsync; fi
if has "$PARTS" rss; then report_rss_part; fi
if has "$PARTS" resync; then report_resync; fi
if has "$PARTS" flood; then report_flood; fi
if [[ -s $W/log-summary.txt ]]; then
    echo
    echo "## WARN/ERROR lines in the daemons' logs (count, message)"
    echo
    echo '```'
    cat "$W/log-summary.txt"
    echo '```'
fi
echo
echo "Total time: $(fmt "$(since "$start_all")" 0) s."
