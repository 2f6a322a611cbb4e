#!/usr/bin/env bash
# tests/external/pjdfstest.sh — the pjdfstest POSIX conformance suite on a
# real twinfs mount. Fails on any failed test; prints the failures and the
# summary; the full log goes to target/external/pjdfstest/.
#
#   bash tests/external/pjdfstest.sh [PATTERN...]   (patterns filter test names)
#
#   PJD_MOUNT_OPTS     options for twinfs mount (default: -o allow_other,default_permissions;
#                      pjdfstest switches to other users, which FUSE refuses without allow_other)
#   PJDFSTEST_TIMEOUT  seconds before the run is stopped (default 1200)
#   and those of tests/external/common.sh (TWINFS, TOOLS, IMAGE_SIZE, ...)
set -euo pipefail
SUITE=pjdfstest
source "$(dirname "$0")/common.sh"
ARTIFACTS="$ROOT/target/external/pjdfstest"
rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"

[ "$(id -u)" -eq 0 ] || die "pjdfstest needs root (it changes owners and switches users)"
pjdfstest="$(find_tool pjdfstest)"
make_workdir pjd
work="$WORKDIR"
trap cleanup EXIT

# The configuration of STYLE.md, known to work on Debian (no group "nobody",
# no user "tests").
cat >"$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
TOML
cp "$work/pjdfstest.toml" "$ARTIFACTS/"

read -r -a mount_opts <<<"${PJD_MOUNT_OPTS--o allow_other,default_permissions}"
mount_volume "$work" "${mount_opts[@]}"
# A short directory under the mount: pjdfstest binds Unix sockets below it
# (108-byte path limit).
mkdir "$MNT/p"

log "running $pjdfstest -c pjdfstest.toml -p $MNT/p $*"
run_log="$ARTIFACTS/pjdfstest.log"
set +e
NO_COLOR=1 timeout --kill-after=30 "${PJDFSTEST_TIMEOUT:-1200}" \
    "$pjdfstest" -c "$work/pjdfstest.toml" -p "$MNT/p" "$@" >"$run_log" 2>&1
rc=$?
set -e
# Strip colour codes in case the tool emits them anyway.
sed -i 's/\x1b\[[0-9;]*m//g' "$run_log"

if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    tail -n 20 "$run_log" >&2
    die "pjdfstest did not finish within ${PJDFSTEST_TIMEOUT:-1200}s (log: $run_log)"
fi
summary="$(grep -a -E '^Summary: ' "$run_log" | tail -n 1 || true)"
if [ -z "$summary" ]; then
    tail -n 30 "$run_log" >&2
    show_daemon_log
    die "pjdfstest (exit $rc) printed no summary (log: $run_log)"
fi
# Summary: N failed, N skipped, N passed, N expected failures, N total
failed="$(sed -E -n 's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed.*/\1/p' <<<"$summary")"
passed="$(sed -E -n 's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed.*/\3/p' <<<"$summary")"
[ -n "$failed" ] && [ -n "$passed" ] || die "cannot parse the summary line: $summary"

# The ETXTBSY cases race the kernel: the test opens the file for writing as
# soon as spawn() returns, and on a loaded machine the child's exec may not
# yet deny writers (seen on 6.18 with 2 busy cores; the mount is not asked:
# the kernel answers ETXTBSY itself). Those alone get one rerun; anything
# else that fails, or a rerun that fails again, fails the suite.
failed_names="$(awk '/[[:space:]]FAILED$/ { print $1 }' "$run_log")"
racy="$(grep -E '::etxtbsy$' <<<"$failed_names" || true)"
others="$(grep -v -E '::etxtbsy$' <<<"$failed_names" || true)"
if [ "$failed" -ne 0 ] && [ "$rc" -eq 1 ] && [ -n "$racy" ] && [ -z "$others" ] &&
    [ "$failed" -eq "$(wc -l <<<"$racy")" ]; then
    log "rerunning the ETXTBSY cases once (a kernel race on a loaded machine): $(tr '\n' ' ' <<<"$racy")"
    rerun_log="$ARTIFACTS/pjdfstest-rerun.log"
    set +e
    # shellcheck disable=SC2046
    NO_COLOR=1 timeout --kill-after=30 300 \
        "$pjdfstest" -c "$work/pjdfstest.toml" -p "$MNT/p" -e $(tr '\n' ' ' <<<"$racy") >"$rerun_log" 2>&1
    rerun_rc=$?
    set -e
    if [ "$rerun_rc" -eq 0 ] && grep -a -q -E '^Summary: 0 failed' "$rerun_log"; then
        log "WARNING: passed on rerun: $(tr '\n' ' ' <<<"$racy")(log: $rerun_log)"
        failed=0
        rc=0
        passed=$((passed + $(wc -l <<<"$racy")))
        summary="$summary; the failed ETXTBSY cases passed on one rerun"
    fi
fi

if [ "$failed" -ne 0 ] || [ "$rc" -ne 0 ]; then
    echo "failed tests:" >&2
    # A failed test is a line "NAME   FAILED" followed by its message.
    awk '/[[:space:]]FAILED$/ { name = $1; getline msg; sub(/^[[:space:]]+/, "", msg);
         printf "  %s: %s\n", name, msg }' "$run_log" >&2
    echo "$summary" >&2
    show_daemon_log
    die "$failed pjdfstest tests failed (exit $rc; full log: $run_log)"
fi
if [ "$passed" -eq 0 ]; then
    die "pjdfstest passed no test: $summary"
fi
log "$summary"
