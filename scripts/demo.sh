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
# Two fresh nonces from the verifier: the guest quotes its vTPM with its AK on each (the first
# evidence teaches the verifier a policy, the second is appraised against it).
verify=$build/attest/vtm-verify
nonce_a=$("$verify" nonce)
nonce_b=$("$verify" nonce)
{
  echo "nonce_a=$nonce_a nonce_b=$nonce_b"
  cat <<'GUEST'
echo "guest: TPM devices: $(ls /dev/tpm*)"
echo "guest: TPM manufacturer: $(tpm2_getcap properties-fixed | grep -A2 TPM2_PT_MANUFACTURER | sed -n 's/.*value: *"\(.*\)"/\1/p')"
echo "guest: PCRs, as the guest reads them (firmware measured 0-7, the kernel's IMA 10):"
tpm2_pcrread sha256:0,1,2,3,4,5,6,7,10
tpm2_nvread 0x01C0000A -C o -o /tmp/ek.der 2>/dev/null
echo "guest: EK certificate at NV 0x01C0000A: $(wc -c </tmp/ek.der) bytes"
tpm2_nvread 0x01C10003 -C o -o /tmp/ik.der 2>/dev/null
echo "guest: IK certificate at NV 0x01C10003: $(wc -c </tmp/ik.der) bytes; the IK is at 0x81000003"
hex() { od -An -tx1 -v "$1" | tr -d ' \n'; }
q() { tpm2_quote -c 0x81000002 -l sha256:0,1,2,3,4,5,6,7,10 -q "$1" -g sha256 \
        -m "/tmp/$2.msg" -s "/tmp/$2.sig" -o "/tmp/$2.pcrs" >/dev/null &&
      echo "Q$2MSG=$(hex /tmp/$2.msg)" && echo "Q$2SIG=$(hex /tmp/$2.sig)" && echo "Q$2PCRS=$(hex /tmp/$2.pcrs)"; }
q 00 warm >/dev/null  # IMA measures tpm2_quote once; PCR 10 then stays put between the two quotes
echo "QLOG=$(hex /sys/kernel/security/tpm0/binary_bios_measurements)"
q "$nonce_a" a
q "$nonce_b" b
echo "guest: quoted PCRs 0-7 and 10 with the AK (0x81000002) on the verifier's two nonces"
GUEST
} >"$demo/guest.sh"
"$repo/tests/guest/make-script-initrd.sh" "$build/guest/initrd.img" "$demo/guest.sh" "$demo/initrd.img"
timeout 180 qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nographic -no-reboot -nodefaults \
  -serial "file:$demo/console.log" -kernel "$build/guest/vmlinuz" -initrd "$demo/initrd.img" \
  -append "console=ttyS0 quiet panic=-1 ima_policy=tcb" \
  -chardev "socket,id=chrtpm,path=$socket" -tpmdev emulator,id=tpm0,chardev=chrtpm \
  -device tpm-crb,tpmdev=tpm0 >"$demo/qemu.log" 2>&1 || { cat "$demo/qemu.log"; exit 1; }
tr -d '\r' <"$demo/console.log" | sed -n '/VTM-GUEST: boot ok/,/VTM-GUEST: exit/p' | grep -v '^VTM-GUEST' \
  | grep -v '^Q[a-zA-Z]*='

step "Remote attestation: the guest's quote linked to the host TPM, appraised by the verifier"
# The guest's quote files and firmware event log, from its console.
unhex() { tr -d '\r' <"$demo/console.log" | sed -n "s/^$1=//p" | head -1 | perl -ne 'chomp; print pack "H*", $_'; }
unhex QLOG >"$demo/guest-event-log.bin"
for q in a b; do
  for part in MSG SIG PCRS; do unhex "Q$q$part" >"$demo/quote-$q.$part"; done
done
for q in a b; do
  nonce_var=nonce_$q
  vtmctl attest deep demo-vm --nonce "${!nonce_var}" --quote-message "$demo/quote-$q.MSG" \
    --quote-signature "$demo/quote-$q.SIG" --quote-pcrs "$demo/quote-$q.PCRS" \
    --guest-event-log "$demo/guest-event-log.bin" --output "$demo/deep-$q.pb"
done
# The policy learned from the first evidence, trusting the (test) manufacturer of the simulated
# host TPM; a real verifier names its TPM vendors' CAs and reviews the learned digests.
"$verify" learn --deep --evidence "$demo/deep-a.pb" \
  --host-ek-ca "$demo/state/simulated-host-tpm/test-manufacturer-ca.pem" >"$demo/policy.json"
"$verify" deep --evidence "$demo/deep-b.pb" --policy "$demo/policy.json" --nonce "$nonce_b"

step "Stopping"
vtmctl stop demo-vm
kill "$vtmd_pid" && wait "$vtmd_pid" 2>/dev/null || true
vtmd_pid=""
echo "demo: done. vtmd's log: $demo/vtmd.log; the VM's logs: $demo/state/vms/*/log/"
