#!/usr/bin/env bash
# tests/external/fsx.sh — the fsx file-system exerciser (random reads, writes,
# mmap, truncate, fallocate, hole punching, copy_file_range, fsync, ...
# checked against an in-memory model) on a real twinfs mount.
#
#   bash tests/external/fsx.sh
#
#   FSX_OPS      operations (default 100000)
#   FSX_SEED     seed (default random; printed, so a failure can be replayed)
#   FSX_TIMEOUT  seconds before the run is stopped (default 1200)
#   FSX_MOUNT_OPTS  extra options for twinfs mount (default none)
#   and those of tests/external/common.sh (TWINFS, TOOLS, IMAGE_SIZE, ...)
set -euo pipefail
SUITE=fsx
source "$(dirname "$0")/common.sh"
ARTIFACTS="$ROOT/target/external/fsx"
rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"

fsx="$(find_tool fsx)"
ops="${FSX_OPS:-100000}"
seed="${FSX_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
make_workdir fsx
work="$WORKDIR"
trap cleanup EXIT

# Beyond the defaults (read, write, mapread, mapwrite, truncate), every
# operation fsx knows, once each.
cat >"$work/fsx.toml" <<'TOML'
flen = 262144

[weights]
close_open = 1
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
copy_file_range = 1
sendfile = 1
posix_fadvise = 1
TOML
cp "$work/fsx.toml" "$ARTIFACTS/"

read -r -a mount_opts <<<"${FSX_MOUNT_OPTS:-}"
mount_volume "$work" "${mount_opts[@]}"

run_fsx() { # seed file log
    timeout --kill-after=30 "${FSX_TIMEOUT:-1200}" \
        "$fsx" -N "$ops" -S "$1" -f "$work/fsx.toml" -P "$ARTIFACTS" "$2" >"$3" 2>&1
}

log "seed $seed, $ops operations (replay with FSX_SEED=$seed)"
run_log="$ARTIFACTS/fsx.log"
set +e
run_fsx "$seed" "$MNT/fsx.file" "$run_log"
rc=$?
set -e

# Some seeds make fsx itself fail (it issues a zero-length posix_fallocate,
# which every Linux file system refuses with EINVAL). A failure is checked
# against the same seed on a plain directory of the same disk: if that fails
# too, the seed is fsx's problem, and one fresh seed decides instead.
if [ "$rc" -ne 0 ] && [ -z "${FSX_SEED:-}" ]; then
    native_dir="$(mktemp -d "${TMPDIR:-/var/tmp}/twinfs-fsx-native.XXXXXX")"
    set +e
    run_fsx "$seed" "$native_dir/fsx.file" "$ARTIFACTS/fsx-native.log"
    native_rc=$?
    set -e
    rm -rf "$native_dir"
    if [ "$native_rc" -ne 0 ]; then
        log "WARNING: seed $seed fails on the native file system too (an fsx problem; see $ARTIFACTS/fsx-native.log)"
        mv "$run_log" "$ARTIFACTS/fsx-seed-$seed.log"
        rm -f "$MNT/fsx.file"
        seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
        log "seed $seed, $ops operations (replay with FSX_SEED=$seed)"
        set +e
        run_fsx "$seed" "$MNT/fsx.file" "$run_log"
        rc=$?
        set -e
    fi
fi

if [ "$rc" -ne 0 ] || ! grep -q 'All operations completed A-OK!' "$run_log"; then
    tail -n 40 "$run_log" >&2
    show_daemon_log
    [ "$rc" -eq 124 ] && log "fsx did not finish within ${FSX_TIMEOUT:-1200}s"
    die "fsx failed (exit $rc, seed $seed); log and fsx artifacts in $ARTIFACTS"
fi
log "All operations completed A-OK! ($ops operations, seed $seed)"
