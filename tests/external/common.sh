# tests/external/common.sh — shared by the scripts that run external suites
# against a real twinfs mount. Source it; it defines:
#
#   find_tool NAME            path of a tool installed by tests/setup.sh
#   make_workdir TAG          sets WORKDIR to a new short temp dir (Unix socket
#                             paths below it must stay short)
#   mount_volume WORKDIR ARGS...  mkfs WORKDIR/img (unless it exists), mount it
#                             with -f in the background on WORKDIR/m, wait until
#                             mounted; sets MNT and DAEMON_PID
#   unmount_volume            unmount and wait for the daemon to exit
#   cleanup                   unmount_volume, then remove the workdir
#                             (install it with: trap cleanup EXIT)
#
# Environment:
#   TWINFS         the binary (default: target/release/twinfs of this checkout)
#   TOOLS          where tests/setup.sh installed the tools
#   IMAGE_SIZE     size of the test volume (default 1G; the image is sparse)
#   MOUNT_TIMEOUT  seconds to wait for the mount (default 30)
#   KEEP_WORKDIR   set to 1 to keep the workdir (image, daemon log) for debugging
#   ARTIFACTS      set by the suite script: where logs are copied for CI

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools}"
TWINFS="${TWINFS:-$ROOT/target/release/twinfs}"
IMAGE_SIZE="${IMAGE_SIZE:-1G}"
MOUNT_TIMEOUT="${MOUNT_TIMEOUT:-30}"
WORKDIR=""
MNT=""
DAEMON_PID=""

log() { printf '%s: %s\n' "${SUITE:-external}" "$*"; }
die() { printf '%s: FAILED: %s\n' "${SUITE:-external}" "$*" >&2; exit 1; }

find_tool() {
    local name="$1"
    if [ -x "$TOOLS/bin/$name" ]; then
        printf '%s\n' "$TOOLS/bin/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        die "$name is not installed; run: bash tests/setup.sh"
    fi
}

make_workdir() {
    WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/twinfs-$1.XXXXXX")"
    # mktemp makes it 0700; tests that switch to other users must get through.
    chmod 0755 "$WORKDIR"
}

# Prints the daemon's log (the last lines) to stderr.
show_daemon_log() {
    if [ -s "$WORKDIR/daemon.log" ]; then
        echo "--- last lines of the twinfs daemon log ($WORKDIR/daemon.log):" >&2
        tail -n 30 "$WORKDIR/daemon.log" >&2
        echo "---" >&2
    fi
}

mount_volume() {
    local work="$1"
    shift
    [ -x "$TWINFS" ] || die "no twinfs binary at $TWINFS; run: cargo build --release"
    MNT="$work/m"
    mkdir -p "$MNT"
    if [ ! -e "$work/img" ]; then
        "$TWINFS" mkfs "$work/img" --size "$IMAGE_SIZE" >"$work/mkfs.log" 2>&1 ||
            { cat "$work/mkfs.log" >&2; die "twinfs mkfs failed"; }
    fi
    "$TWINFS" mount "$work/img" "$MNT" -f "$@" >"$work/daemon.log" 2>&1 &
    DAEMON_PID=$!
    local waited=0
    until mountpoint -q "$MNT"; do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            local rc=0
            wait "$DAEMON_PID" 2>/dev/null || rc=$?
            DAEMON_PID=""
            show_daemon_log
            die "twinfs mount exited (status $rc) before the mount was ready"
        fi
        if [ "$waited" -ge $((MOUNT_TIMEOUT * 10)) ]; then
            show_daemon_log
            die "$MNT was not mounted after ${MOUNT_TIMEOUT}s"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "mounted $work/img on $MNT (daemon pid $DAEMON_PID)"
}

# Unmounts (retrying while busy, lazily as a last resort) and waits for the
# daemon we started to exit (signalling it by its PID only if it does not).
unmount_volume() {
    if [ -n "$MNT" ] && mountpoint -q "$MNT" 2>/dev/null; then
        local _
        for _ in 1 2 3 4 5; do
            umount "$MNT" 2>/dev/null && break
            sleep 1
        done
        if mountpoint -q "$MNT" 2>/dev/null; then
            log "unmount of $MNT kept failing; detaching it lazily"
            umount -l "$MNT" || true
        fi
    fi
    if [ -n "$DAEMON_PID" ]; then
        local i
        for i in $(seq 1 100); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            [ "$i" -eq 50 ] && kill -TERM "$DAEMON_PID" 2>/dev/null
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            log "daemon $DAEMON_PID did not exit after unmount; killing it"
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
        fi
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=""
    fi
}

# Unmounts, stops the daemon, keeps the logs in $ARTIFACTS, removes the
# workdir. Safe to call twice.
cleanup() {
    local status=$?
    unmount_volume
    if [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
        if [ -n "${ARTIFACTS:-}" ]; then
            mkdir -p "$ARTIFACTS"
            cp "$WORKDIR"/*.log "$ARTIFACTS"/ 2>/dev/null || true
        fi
        if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
            log "kept $WORKDIR"
        else
            rm -rf --one-file-system "$WORKDIR"
        fi
    fi
    MNT=""
    WORKDIR=""
    return "$status"
}
