#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine (as root): installs what is missing, builds, starts
# vtmd on a SIMULATED host TPM, creates a vTPM for a demo VM, boots a small QEMU guest on it
# and shows the guest's TPM PCRs as the guest reads them, attests it, then migrates the vTPM
# sealed to a second (simulated) host and shows it kept its identity. Everything lives in
# ${VTM_DEMO_DIR:-/tmp/vtm-demo} and every process it started is stopped at the end.
# tests/e2e/demo_test.cc runs it on the build tree under test: VTM_DEMO_BUILD_DIR names that
# tree and VTM_DEMO_SKIP_SETUP=1 skips the install and build (done already).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${VTM_DEMO_DIR:-/tmp/vtm-demo}
build=${VTM_DEMO_BUILD_DIR:-$repo/build}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (vtmd runs each vTPM under its own uid)" >&2
  exit 1
fi

if [[ ${VTM_DEMO_SKIP_SETUP:-0} != 1 ]]; then
  step "Installing what is missing and building"
  "$repo/scripts/setup.sh" "$build"
fi
step "Building the demo guest (Debian cloud kernel + busybox/tpm2-tools initramfs)"
"$repo/tests/guest/build-guest.sh" "$build/guest"

rm -rf "$demo"
mkdir -p "$demo"
chmod 0711 "$demo"
# Host A is the demo's host; host B (under $demo/host-b) only appears for the migration.
vtmctl() { "$build/vtm-manager/vtmctl" --socket "$demo/run/vtmd.sock" "$@"; }
vtmctl_b() { "$build/vtm-manager/vtmctl" --socket "$demo/host-b/run/vtmd.sock" "$@"; }

vtmd_pid=""
vtmd_b_pid=""
# stop_vtmd PID_VARIABLE: stops that vtmd (SIGTERM) and waits for it.
stop_vtmd() {
  local pid=${!1}
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill "$pid" && wait "$pid" 2>/dev/null || true; fi
  printf -v "$1" '%s' ""
}
cleanup() {
  vtmctl stop demo-vm >/dev/null 2>&1 || true
  vtmctl_b stop demo-vm >/dev/null 2>&1 || true
  stop_vtmd vtmd_pid
  stop_vtmd vtmd_b_pid
}
trap cleanup EXIT

# start_vtmd PID_VARIABLE DIR [OPTION...]: vtmd on its own simulated host TPM, state in
# DIR/state, socket in DIR/run, log in DIR/vtmd.log; returns once it serves.
start_vtmd() {
  local var=$1 dir=$2
  shift 2
  "$build/vtm-manager/vtmd" --config /dev/null --host-tpm simulated --state-dir "$dir/state" \
    --run-dir "$dir/run" --group "" "$@" >>"$dir/vtmd.log" 2>&1 &
  printf -v "$var" '%s' $!
  for _ in $(seq 100); do
    [[ -S $dir/run/vtmd.sock ]] && kill -0 "${!var}" 2>/dev/null && return 0
    kill -0 "${!var}" 2>/dev/null || { cat "$dir/vtmd.log"; exit 1; }
    sleep 0.1
  done
  echo "demo: vtmd did not come up; its log: $dir/vtmd.log" >&2
  exit 1
}

step "Starting vtmd on a simulated host TPM (state in $demo/state, log in $demo/vtmd.log)"
start_vtmd vtmd_pid "$demo" --host-name host-a
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
uuid=$(vtmctl --json show demo-vm | sed -n 's/.*"uuid": "\(.*\)".*/\1/p')
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

step "Sealed migration of the stopped vTPM to host B (a second vtmd on its own simulated host TPM)"
vtmctl stop demo-vm >/dev/null
# A fleet CA certifies both host CAs (in production: the operator's PKI, not a key in /tmp).
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$demo/fleet.key" \
  -out "$demo/fleet.pem" -subj "/CN=vtm demo fleet root" -days 7 2>/dev/null)
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$demo/ca-ext.cnf"
# join_fleet VTMCTL TAG: the host CA's CSR (it carries the host AK's TPM2_Certify of the CA
# key), certified by the fleet CA and installed.
join_fleet() {
  "$1" ca csr >"$demo/$2.csr"
  openssl x509 -req -in "$demo/$2.csr" -CA "$demo/fleet.pem" -CAkey "$demo/fleet.key" -CAcreateserial \
    -out "$demo/$2-ca.pem" -days 7 -extfile "$demo/ca-ext.cnf" -copy_extensions copy 2>/dev/null
  printf '%s: %s\n' "$2" "$("$1" ca install "$demo/$2-ca.pem" "$demo/fleet.pem")"
}
join_fleet vtmctl host-a
mkdir -p "$demo/host-b"
start_vtmd vtmd_b_pid "$demo/host-b" --host-name host-b
join_fleet vtmctl_b host-b
shred -u "$demo/fleet.key"  # the demo's fleet CA has signed what it needs to; its key is gone
stop_vtmd vtmd_b_pid
start_vtmd vtmd_b_pid "$demo/host-b" --host-name host-b --migration-peer-ca "$demo/fleet.pem" \
  --migration-listen 127.0.0.1:0
port=$(sed -n 's/.*migration endpoint on 127.0.0.1:0 (port \([0-9]*\)).*/\1/p' "$demo/host-b/vtmd.log" | tail -1)
echo "host B accepts migrations on 127.0.0.1:$port (mutual TLS 1.3, peers certified under the fleet CA)"
# Host A seals a VM only to a destination that meets its policy: here learned from host B's
# own evidence (a real operator reviews it, or writes it from the fleet's reference values).
nonce=$("$verify" nonce)
vtmctl_b attest host --nonce "$nonce" --output "$demo/host-b-evidence.pb"
"$verify" learn --evidence "$demo/host-b-evidence.pb" --host-ca-issuer "$demo/fleet.pem" \
  --host-ek-ca "$demo/host-b/state/simulated-host-tpm/test-manufacturer-ca.pem" >"$demo/migration-policy.json"
stop_vtmd vtmd_pid
start_vtmd vtmd_pid "$demo" --host-name host-a --migration-peer-ca "$demo/fleet.pem" \
  --migration-policy "$demo/migration-policy.json"
openssl x509 -in "$demo/ik.pem" -noout -pubkey >"$demo/ik-before.pub"
vtmctl migrate cold demo-vm --to "127.0.0.1:$port"
echo "on host A now:"
vtmctl show "$uuid" 2>&1 | sed 's/^/  /' || true  # by UUID: the tombstone says where it went
vtmctl migrate status | sed 's/^/  /'
echo "on host B now:"
vtmctl_b show demo-vm | sed 's/^/  /'
vtmctl_b certs demo-vm --kind ik >"$demo/ik-host-b.pem"
openssl x509 -in "$demo/ik-host-b.pem" -noout -pubkey >"$demo/ik-after.pub"
printf 'IK certificate re-issued by host B: %s\n' \
  "$(openssl verify -CAfile "$demo/fleet.pem" -untrusted "$demo/host-b-ca.pem" "$demo/ik-host-b.pem")"
if cmp -s "$demo/ik-before.pub" "$demo/ik-after.pub"; then
  echo "the IK is the same key as on host A: the service's identity moved with its vTPM"
else
  echo "demo: the IK changed in the move" >&2
  exit 1
fi
vtmctl_b start demo-vm >/dev/null
vtmctl_b list

step "Stopping"
vtmctl_b stop demo-vm >/dev/null
stop_vtmd vtmd_b_pid
stop_vtmd vtmd_pid
echo "demo: done. vtmd's logs: $demo/vtmd.log (host A), $demo/host-b/vtmd.log (host B); the VM's logs:" \
  "$demo/host-b/state/vms/*/log/"
