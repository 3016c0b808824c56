#!/bin/bash
# Makes a per-test initrd: BASE_INITRD followed by a small newc cpio holding SCRIPT as
# /vtm-test.sh. Linux unpacks concatenated archives in order, so the base is not rebuilt.
# Usage: make-script-initrd.sh BASE_INITRD SCRIPT OUT
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 BASE_INITRD SCRIPT OUT" >&2
  exit 2
fi
base="$1" script="$2" out="$3"
[[ -f "$base" ]] || { echo "make-script-initrd: error: base initrd '$base' not found" >&2; exit 1; }
[[ -f "$script" ]] || { echo "make-script-initrd: error: script '$script' not found" >&2; exit 1; }
command -v cpio >/dev/null || { echo "make-script-initrd: error: cpio not installed" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/vtm-script-initrd.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
install -m 0755 "$script" "$tmp/vtm-test.sh"

cp "$base" "$tmp/out"
# The kernel only recognises an archive that starts on a 4-byte boundary (zeros are skipped).
size=$(stat -c %s "$tmp/out")
pad=$(( (4 - size % 4) % 4 ))
[[ $pad -eq 0 ]] || head -c "$pad" /dev/zero >>"$tmp/out"
(cd "$tmp" && echo vtm-test.sh | cpio --quiet -o -H newc -R 0:0) >>"$tmp/out"
mv -f "$tmp/out" "$out"
