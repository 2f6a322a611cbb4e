#!/usr/bin/env bash
# tests/setup.sh — install what the test suite needs on a fresh machine
# (Debian 12, root, Rust toolchain with cargo-nextest already present).
#
# Idempotent and cheap when everything is there: apt-get runs only when a
# package is missing, and each cargo tool is installed only when the cache
# does not already hold it at the pinned version.
#
#   TOOLS   where the cargo-installed test tools go
#           (default ${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools; binaries in $TOOLS/bin)
#
# Run on its own (`bash tests/setup.sh`) or through tests/all.sh.
set -euo pipefail

TOOLS="${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/twinfs-tools}"
PJDFSTEST_VERSION="0.2.2"
FSX_VERSION="0.3.2"

# Debian packages: fuse3 (fusermount3, for AutoUnmount and unmounting),
# rsync/acl/attr (real tools used by the end-to-end tests), libacl1-dev and
# pkg-config (to build pjdfstest), git, prometheus (promtool and the server
# the metrics test scrapes with).
APT_PACKAGES=(fuse3 rsync acl libacl1-dev attr pkg-config git prometheus)

say() { printf 'setup: %s\n' "$*"; }

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "Debian packages present: ${APT_PACKAGES[*]}"
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# cargo_tool CRATE VERSION: install CRATE at VERSION into $TOOLS unless there.
cargo_tool() {
    local crate="$1" version="$2"
    if cargo install --list --root "$TOOLS" 2>/dev/null | grep -qx "$crate v$version:"; then
        say "$crate $version present in $TOOLS"
        return 0
    fi
    say "installing $crate $version into $TOOLS"
    cargo install --locked --quiet --root "$TOOLS" --version "=$version" "$crate"
}

install_apt_packages
mkdir -p "$TOOLS"
cargo_tool pjdfstest "$PJDFSTEST_VERSION"
cargo_tool fsx "$FSX_VERSION"
say "tools ready in $TOOLS/bin"
