#!/usr/bin/env bash
# Builds the Debian package with CPack from BUILD_DIR and checks it as dpkg and systemd see it:
# its contents (binaries, unit, config, the hook where libvirtd looks for it, AppArmor rule,
# docs), its control data (dependencies, conffiles, maintainer scripts), the unit
# (systemd-analyze verify), and an install, reinstall and removal with dpkg into a scratch root
# (maintainer scripts run chrootless with DPKG_ROOT): the vtm group, /var/lib/vtm and the
# AppArmor include appear once, the installed hook leaves an unmarked domain alone, and vTPM
# state survives removal and purge.
#   tests/integration/deb_package_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "deb_package_test: $*" >&2; exit 1; }

(cd "$work" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/out" >"$work/cpack.log" 2>&1) ||
  { cat "$work/cpack.log"; fail "cpack failed"; }
deb=$(ls "$work"/out/vtm_*.deb)
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

contents=$(dpkg-deb -c "$deb")
for f in ./usr/sbin/vtmd ./usr/sbin/vtmctl ./usr/sbin/vtm-instance ./usr/bin/vtm-verify ./usr/sbin/vtm-live-migrate \
         ./usr/lib/systemd/system/vtmd.service ./etc/vtm/vtmd.conf ./etc/libvirt/hooks/qemu.d/vtm \
         ./usr/share/vtm/apparmor/libvirt-qemu ./usr/share/doc/vtm/operator-guide.md \
         ./usr/lib/vtm/python/vtm_pb2.py ./usr/lib/vtm/python/attestation_pb2.py; do
  grep -q " $f\$" <<<"$contents" || fail "package lacks $f"
done
grep -E ' \./etc/libvirt/hooks/qemu\.d/vtm$' <<<"$contents" | grep -q '^-rwxr-xr-x' ||
  fail "the hook is not executable in the package"
grep -E ' \./usr/sbin/vtmd$' <<<"$contents" | grep -q '^-rwxr-xr-x root/root' || fail "vtmd is not root's 0755"
# Nothing of the build tree (tests, benchmarks) is shipped.
if grep -E '_test$|_bench$|/tests?/' <<<"$contents"; then fail "the package ships test or bench files"; fi

# libvirtd looks for hooks in <sysconfdir>/libvirt/hooks, compiled into this libvirt.
if lib=$(ls /usr/lib/*/libvirt.so.0 2>/dev/null | head -1) && [[ -n $lib ]]; then
  grep -qa '/etc/libvirt/hooks' "$lib" || fail "this libvirt does not read hooks from /etc/libvirt/hooks"
fi

control=$(dpkg-deb -f "$deb")
grep -q '^Depends:.*\bswtpm\b' <<<"$control" || fail "Depends lacks swtpm: $control"
grep -q '^Depends:.*libtss2-esys' <<<"$control" || fail "Depends lacks the shared libraries (shlibdeps): $control"
dpkg-deb -e "$deb" "$work/control"
grep -qx '/etc/vtm/vtmd.conf' "$work/control/conffiles" || fail "vtmd.conf is not a conffile"
grep -qx '/etc/libvirt/hooks/qemu.d/vtm' "$work/control/conffiles" || fail "the hook is not a conffile"
for s in postinst prerm postrm; do
  [[ -x $work/control/$s ]] || fail "no executable $s"
  sh -n "$work/control/$s" || fail "$s is not valid sh"
done

# A scratch root with what the maintainer scripts touch: dpkg's database, the account files,
# and an AppArmor tree as on a host with AppArmor.
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc/apparmor.d/local/abstractions"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'root:*::\n' >"$root/etc/gshadow"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
install_deb() {
  dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" >"$work/dpkg.log" 2>&1 ||
    { cat "$work/dpkg.log"; fail "dpkg -i failed"; }
}
install_deb
grep -q '^Status: install ok installed' <(dpkg --root="$root" -s vtm) || fail "dpkg does not list vtm as installed"

hook=$root/etc/libvirt/hooks/qemu.d/vtm
[[ -x $hook ]] || fail "the hook is not installed executable at /etc/libvirt/hooks/qemu.d/vtm"
grep -q '^exec /usr/sbin/vtmctl libvirt hook "\$@"$' "$hook" || fail "the hook does not run /usr/sbin/vtmctl: $(cat "$hook")"
# The installed hook, with the installed vtmctl, leaves a domain without vtm's marker alone.
sed "s|/usr/sbin/vtmctl|$root/usr/sbin/vtmctl --socket $root/no-vtmd.sock|" "$hook" >"$work/hook"
xml='<domain type="kvm"><name>plain</name><uuid>0f3c1a52-8f5e-4a1e-9d7b-3e2a1b0c9d8e</uuid></domain>'
out=$(echo "$xml" | sh "$work/hook" plain prepare begin - 2>&1) || fail "the installed hook failed an unmarked domain: $out"
# The installed vtm-live-migrate loads the installed API bindings (its commit's fast path).
out=$(/usr/bin/python3 -c '
import importlib.machinery, sys
script = importlib.machinery.SourceFileLoader("vtm_live_migrate", sys.argv[1]).load_module()
pb, why = script.api_bindings()
print(pb.__file__ if pb else why)' "$root/usr/sbin/vtm-live-migrate" 2>&1) || fail "loading the installed vtm-live-migrate: $out"
[[ $out == "$root/usr/lib/vtm/python/vtm_pb2.py" ]] || fail "the installed vtm-live-migrate does not load its API bindings: $out"
grep -q '^vtm:x:[0-9]*:$' "$root/etc/group" || fail "no vtm group: $(cat "$root/etc/group")"
[[ $(stat -c %a "$root/var/lib/vtm") == 711 ]] || fail "/var/lib/vtm is not 0711"
aa=$root/etc/apparmor.d/local/abstractions/libvirt-qemu
grep -qx 'include "/usr/share/vtm/apparmor/libvirt-qemu"  # added by the vtm package' "$aa" || fail "no AppArmor include: $(cat "$aa")"
if command -v apparmor_parser >/dev/null; then
  printf 'profile t {\n  #include "%s"\n}\n' "$root/usr/share/vtm/apparmor/libvirt-qemu" >"$work/profile"
  apparmor_parser -Q -K "$work/profile" >/dev/null || fail "apparmor_parser refuses the rule"
else
  echo "deb_package_test: SKIPPED the AppArmor rule's parse: no apparmor_parser (scripts/setup.sh installs apparmor)"
fi
unit=$root/usr/lib/systemd/system/vtmd.service
grep -qx 'ExecStart=/usr/sbin/vtmd --config /etc/vtm/vtmd.conf' "$unit" || fail "the unit does not start /usr/sbin/vtmd"
grep -qx 'Documentation=file:///usr/share/doc/vtm/operator-guide.md' "$unit" || fail "the unit's Documentation is wrong"
if command -v systemd-analyze >/dev/null; then
  # Syntax and known directives, with ExecStart pointing at the installed vtmd (systemd checks
  # that it exists and is executable).
  mkdir "$work/unit"
  sed "s|=/usr/sbin/vtmd |=$root/usr/sbin/vtmd |" "$unit" >"$work/unit/vtmd.service"
  SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$work/unit/vtmd.service" >"$work/verify.log" 2>&1 ||
    { cat "$work/verify.log"; fail "systemd-analyze verify refuses vtmd.service"; }
  if grep . "$work/verify.log"; then fail "systemd-analyze verify warns about vtmd.service"; fi
  systemd-analyze security --offline=yes "$work/unit/vtmd.service" 2>/dev/null | grep 'Overall exposure' || true
else
  echo "deb_package_test: SKIPPED the unit's check: no systemd-analyze"
fi

# An edited config survives a reinstall (upgrade path); the scripts stay idempotent.
echo "# edited by the operator" >>"$root/etc/vtm/vtmd.conf"
install_deb
grep -qx '# edited by the operator' "$root/etc/vtm/vtmd.conf" || fail "a reinstall overwrote the edited config"
[[ $(grep -c vtm/apparmor "$aa") == 1 ]] || fail "AppArmor include added twice"
[[ $(grep -c '^vtm:' "$root/etc/group") == 1 ]] || fail "group added twice"

# Remove, then purge: binaries and the include go, vTPM state stays.
echo state >"$root/var/lib/vtm/registry.db"
dpkg --root="$root" --force-script-chrootless --log=/dev/null -r vtm >"$work/dpkg-r.log" 2>&1 ||
  { cat "$work/dpkg-r.log"; fail "dpkg -r failed"; }
[[ ! -e $root/usr/sbin/vtmd ]] || fail "vtmd still there after removal"
! grep -q vtm/apparmor "$aa" || fail "AppArmor include left behind"
dpkg --root="$root" --force-script-chrootless --log=/dev/null -P vtm >"$work/dpkg-p.log" 2>&1 ||
  { cat "$work/dpkg-p.log"; fail "dpkg -P failed"; }
grep -q 'was kept' "$work/dpkg-p.log" || fail "purge does not say the state was kept: $(cat "$work/dpkg-p.log")"
[[ $(cat "$root/var/lib/vtm/registry.db") == state ]] || fail "removal deleted vTPM state"
echo "deb_package_test: ok"
