#!/usr/bin/env bash
# tests/external/not-built.sh — TEMPORARY: exit 0 while `twinfs mkfs` or
# `twinfs mount` are still the scaffolding's placeholders (they answer
# "... is not built yet"), 1 otherwise. tests/all.sh skips the suites that
# need a real mount while this says so. Delete this file and its block in
# tests/all.sh once the mount works: from then on a failing mount must fail
# the run, never skip it.
set -euo pipefail
SUITE=not-built
source "$(dirname "$0")/common.sh"

if ! "$TWINFS" mount --help >/dev/null 2>&1; then
    echo "twinfs mount --help fails"
    exit 0
fi
make_workdir probe
trap cleanup EXIT

# answers_not_built ARGS...: runs twinfs ARGS; true if it failed saying so.
answers_not_built() {
    local out
    # Bounded: a mount that neither mounts nor fails must not hang CI.
    if out="$(timeout --kill-after=10 60 "$TWINFS" "$@" 2>&1)"; then
        return 1
    fi
    if grep -q 'is not built yet' <<<"$out"; then
        printf '%s\n' "$out"
        return 0
    fi
    return 1
}

answers_not_built mkfs "$WORKDIR/img" --size 64M && exit 0
MNT="$WORKDIR/m" # so that cleanup unmounts it if the mount works
mkdir "$MNT"
# Without -f: returns once mounted (then cleanup unmounts), or says not built.
answers_not_built mount "$WORKDIR/img" "$MNT" && exit 0
exit 1
