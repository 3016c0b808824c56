#!/usr/bin/env bash
# Installs what vtm needs from Debian's archive (idempotent: apt runs only when something is
# missing), then configures and builds the project with CMake.
#   scripts/setup.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${1:-$repo/build}
shift || true

packages=(
  build-essential cmake ninja-build pkg-config git
  libssl-dev libsqlite3-dev libseccomp-dev libtss2-dev libtpms-dev libxml2-dev
  libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev
  swtpm swtpm-tools swtpm-dev tpm2-tools tpm2-openssl
  qemu-system-x86 busybox-static cpio
  libvirt-daemon-system libvirt-clients
  clang libclang-rt-14-dev clang-tidy openssl python3 python3-protobuf apparmor
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages: ${missing[*]}" >&2
    echo "setup: run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S "$repo" -B "$build_dir" -G Ninja "$@" >/dev/null
# VTM_BUILD_TARGETS (space-separated) builds only those targets.
targets=()
for t in ${VTM_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j"$(nproc)" "${targets[@]}"
