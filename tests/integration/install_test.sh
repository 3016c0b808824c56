#!/usr/bin/env bash
# `cmake --install` of a build into a scratch root (prefix /usr, as the Debian package will):
# binaries, the default config (kept on reinstall), the systemd unit and libvirt's qemu hook
# land where libvirtd and systemd look, and the installed hook runs the installed vtmctl, which
# leaves an unmarked domain alone (exit 0) even with no vtmd running and fails a marked one
# saying vtmd is unreachable.
#   install_test.sh BUILD_DIR
set -euo pipefail
build=$1
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
DESTDIR=$root cmake --install "$build" --prefix /usr >/dev/null
fail() { echo "install_test: $*" >&2; exit 1; }
for f in usr/sbin/vtmd usr/sbin/vtmctl usr/sbin/vtm-instance etc/libvirt/hooks/qemu.d/vtm; do
  [[ -x $root/$f ]] || fail "$f is missing or not executable"
done
for f in etc/vtm/vtmd.conf usr/lib/systemd/system/vtmd.service; do
  [[ -f $root/$f ]] || fail "$f is missing"
done
# A reinstall keeps an edited config.
echo "# edited" >>"$root/etc/vtm/vtmd.conf"
DESTDIR=$root cmake --install "$build" --prefix /usr >/dev/null
grep -q '^# edited$' "$root/etc/vtm/vtmd.conf" || fail "a reinstall overwrote /etc/vtm/vtmd.conf"
hook=$root/etc/libvirt/hooks/qemu.d/vtm
grep -q '^exec /usr/sbin/vtmctl libvirt hook "\$@"$' "$hook" || fail "the hook does not call /usr/sbin/vtmctl: $(cat "$hook")"
# Run it with the installed vtmctl in place of /usr/sbin/vtmctl, and a vtmd socket nobody serves.
sed "s|/usr/sbin/vtmctl|$root/usr/sbin/vtmctl --socket $root/no-vtmd.sock|" "$hook" >"$root/hook"
xml='<domain type="kvm"><name>plain</name><uuid>0f3c1a52-8f5e-4a1e-9d7b-3e2a1b0c9d8e</uuid></domain>'
out=$(echo "$xml" | sh "$root/hook" plain prepare begin - 2>&1) || fail "the hook failed on an unmarked domain: $out"
# A marked domain needs vtmd: the hook says it cannot reach it and fails the start.
marked="<domain type='qemu'><name>web1</name><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid>
<metadata><vtm:vtpm xmlns:vtm='https://vtm.example/ns/1' create='yes'/></metadata></domain>"
if out=$(echo "$marked" | sh "$root/hook" web1 prepare begin - 2>&1); then
  fail "the hook started a marked domain without vtmd: $out"
fi
[[ $out == *"cannot reach vtmd at $root/no-vtmd.sock"* ]] || fail "the hook's error does not say vtmd is unreachable: $out"
echo "install_test: ok"
