#!/usr/bin/env bash
# tests/external/mount-smoke.sh — can twinfs mount at all? mkfs a volume,
# mount it in the foreground, write a file, read it back, unmount, mount
# again and read it back. Run before the external suites so that a broken
# mount fails fast with a clear message.
set -euo pipefail
SUITE=mount-smoke
source "$(dirname "$0")/common.sh"
ARTIFACTS="$ROOT/target/external/mount-smoke"
rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"

"$TWINFS" mount --help >/dev/null || die "twinfs mount --help failed"
make_workdir smoke
work="$WORKDIR"
trap cleanup EXIT

IMAGE_SIZE=64M mount_volume "$work"
head -c 1000000 /dev/urandom >"$work/data"
cp "$work/data" "$MNT/data"
sync "$MNT/data"
cmp "$work/data" "$MNT/data" || die "a file read back differs from what was written"
mnt="$MNT"
unmount_volume
if mountpoint -q "$mnt"; then die "$mnt is still mounted after umount"; fi
mount_volume "$work"
cmp "$work/data" "$MNT/data" || die "the file differs after unmount and mount"
log "mkfs, mount, write, read back, unmount, mount, read back: ok"
