#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine (as root): installs what is missing, builds, starts
# vtmd on a SIMULATED host TPM, creates a vTPM for a demo VM, boots a small QEMU guest on it
# and shows the guest's TPM PCRs as the guest reads them. Everything lives in
# ${VTM_DEMO_DIR:-/tmp/vtm-demo} and every process it started is stopped at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${VTM_DEMO_DIR:-/tmp/vtm-demo}
build=$repo/build

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (vtmd runs each vTPM under its own uid)" >&2
  exit 1
fi

step "Installing what is missing and building"
"$repo/scripts/setup.sh" "$build"
step "Building the demo guest (Debian cloud kernel + busybox/tpm2-tools initramfs)"
"$repo/tests/guest/build-guest.sh" "$build/guest"

rm -rf "$demo"
mkdir -p "$demo"
chmod 0711 "$demo"
vtmctl() { "$build/vtm-manager/vtmctl" --socket "$demo/run/vtmd.sock" "$@"; }

vtmd_pid=""
cleanup() {
  if [[ -n $vtmd_pid ]] && kill -0 "$vtmd_pid" 2>/dev/null; then
    vtmctl stop demo-vm >/dev/null 2>&1 || true
    kill "$vtmd_pid" && wait "$vtmd_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

step "Starting vtmd on a simulated host TPM (state in $demo/state, log in $demo/vtmd.log)"
"$build/vtm-manager/vtmd" --config /dev/null --host-tpm simulated \
  --state-dir "$demo/state" --run-dir "$demo/run" --group "" >"$demo/vtmd.log" 2>&1 &
vtmd_pid=$!
for _ in $(seq 100); do
  [[ -S $demo/run/vtmd.sock ]] && break
  kill -0 "$vtmd_pid" 2>/dev/null || { cat "$demo/vtmd.log"; exit 1; }
  sleep 0.1
done
grep -m1 "SIMULATED HOST TPM" "$demo/vtmd.log" || true
vtmctl host

step "Creating the vTPM of VM demo-vm: keys, EKs, AK, IK and their certificates"
vtmctl create --name demo-vm --service demo-shop
vtmctl ca show >"$demo/ca.pem"
vtmctl certs demo-vm | grep '^#'
for kind in ek-ecc ek-rsa ak ik; do
  vtmctl certs demo-vm --kind "$kind" >"$demo/$kind.pem"
  printf '%-7s %s\n' "$kind:" "$(openssl verify -CAfile "$demo/ca.pem" "$demo/$kind.pem")"
done
openssl x509 -in "$demo/ik.pem" -noout -subject -ext subjectAltName

step "Starting the vTPM"
vtmctl start demo-vm
socket=$(vtmctl --json show demo-vm | sed -n 's/.*"tpm_socket": "\(.*\)".*/\1/p')
vtmctl list

step "Booting a QEMU guest (TCG) attached to $socket"
cat >"$demo/guest.sh" <<'GUEST'
echo "guest: TPM devices: $(ls /dev/tpm*)"
echo "guest: TPM manufacturer: $(tpm2_getcap properties-fixed | grep -A2 TPM2_PT_MANUFACTURER | sed -n 's/.*value: *"\(.*\)"/\1/p')"
echo "guest: PCRs, as the guest reads them (firmware measured 0-7, the kernel's IMA 10):"
tpm2_pcrread sha256:0,1,2,3,4,5,6,7,10
tpm2_nvread 0x01C0000A -C o -o /tmp/ek.der 2>/dev/null
echo "guest: EK certificate at NV 0x01C0000A: $(wc -c </tmp/ek.der) bytes"
tpm2_nvread 0x01C10003 -C o -o /tmp/ik.der 2>/dev/null
echo "guest: IK certificate at NV 0x01C10003: $(wc -c </tmp/ik.der) bytes; the IK is at 0x81000003"
GUEST
"$repo/tests/guest/make-script-initrd.sh" "$build/guest/initrd.img" "$demo/guest.sh" "$demo/initrd.img"
timeout 180 qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nographic -no-reboot -nodefaults \
  -serial "file:$demo/console.log" -kernel "$build/guest/vmlinuz" -initrd "$demo/initrd.img" \
  -append "console=ttyS0 quiet panic=-1 ima_policy=tcb" \
  -chardev "socket,id=chrtpm,path=$socket" -tpmdev emulator,id=tpm0,chardev=chrtpm \
  -device tpm-crb,tpmdev=tpm0 >"$demo/qemu.log" 2>&1 || { cat "$demo/qemu.log"; exit 1; }
tr -d '\r' <"$demo/console.log" | sed -n '/VTM-GUEST: boot ok/,/VTM-GUEST: exit/p' | grep -v '^VTM-GUEST'

step "Stopping"
vtmctl stop demo-vm
kill "$vtmd_pid" && wait "$vtmd_pid" 2>/dev/null || true
vtmd_pid=""
echo "demo: done. vtmd's log: $demo/vtmd.log; the VM's logs: $demo/state/vms/*/log/"
