#!/bin/bash
# Builds the end-to-end test guest: Debian's cloud kernel plus a busybox initramfs with
# tpm2-tools, the openssl CLI with the tpm2 provider (tpm2-openssl), the trusted-connection
# guest helpers and virtio-net. Usage: build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz, OUTDIR/initrd.img (gzip'ed newc cpio) and OUTDIR/kernel-version.
# Idempotent: does nothing when vmlinuz and initrd.img exist and are newer than this script and
# the guest helpers it installs (trusted-connection/guest/*).
# Exit status 3 means the kernel package could not be fetched (apt unreachable); callers may
# treat that as "skip", every other failure is a real error.
#
# Environment:
#   VTM_GUEST_KERNEL_DEB  use this kernel .deb instead of downloading one
#   VTM_GUEST_FORCE=1     rebuild even if the outputs are up to date
set -euo pipefail

die() { echo "build-guest: error: $*" >&2; exit 1; }
die_apt() { echo "build-guest: apt unreachable: $*" >&2; exit 3; }
log() { echo "build-guest: $*" >&2; }

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT")/../.." && pwd)"
# Scripts installed into the image as /usr/bin/<name>; a change to any of them rebuilds it.
HELPERS=("$REPO"/trusted-connection/guest/vtm-*)
mkdir -p "$1"
OUT="$(readlink -f "$1")"

# One builder at a time per OUTDIR (tests may run in parallel).
exec 9>"$OUT/.build.lock"
flock 9

up_to_date() {
  [[ "${VTM_GUEST_FORCE:-0}" != 1 && -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" ]] || return 1
  local input
  for input in "$SCRIPT" "${HELPERS[@]}"; do
    [[ "$OUT/vmlinuz" -nt "$input" && "$OUT/initrd.img" -nt "$input" ]] || return 1
  done
}
if up_to_date; then
  log "up to date: $OUT"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip ldd objcopy; do
  command -v "$tool" >/dev/null || die "'$tool' not found"
done
BUSYBOX=""
for cand in /bin/busybox /usr/bin/busybox; do
  if [[ -x "$cand" ]] && ! ldd "$cand" >/dev/null 2>&1; then BUSYBOX="$cand"; break; fi
done
[[ -n "$BUSYBOX" ]] || die "a statically linked busybox is needed (apt-get install busybox-static)"
TPM2="$(command -v tpm2 || true)"
[[ -n "$TPM2" ]] || die "tpm2-tools not installed (/usr/bin/tpm2 missing)"
OPENSSL="$(command -v openssl || true)"
[[ -n "$OPENSSL" ]] || die "the openssl CLI is not installed (apt-get install openssl)"
LIBDIR=/usr/lib/x86_64-linux-gnu
TPM2_PROVIDER="$LIBDIR/ossl-modules/tpm2.so"
[[ -f "$TPM2_PROVIDER" ]] || die "$TPM2_PROVIDER missing (apt-get install tpm2-openssl)"
for h in "${HELPERS[@]}"; do [[ -f "$h" ]] || die "guest helper $h missing"; done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vtm-guest-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# 1. Kernel package.
CACHE="$OUT/.cache"
mkdir -p "$CACHE"
if [[ -n "${VTM_GUEST_KERNEL_DEB:-}" ]]; then
  [[ -f "$VTM_GUEST_KERNEL_DEB" ]] || die "VTM_GUEST_KERNEL_DEB=$VTM_GUEST_KERNEL_DEB does not exist"
  DEB="$(readlink -f "$VTM_GUEST_KERNEL_DEB")"
else
  # linux-image-cloud-amd64 depends on the signed linux-image-<abi>-cloud-amd64; its
  # -unsigned twin carries the same kernel without the signing wrapper package.
  signed="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1)" || true
  [[ -n "$signed" ]] ||
    die_apt "apt-cache knows no linux-image-cloud-amd64 (run apt-get update?)"
  candidates=("${signed}-unsigned" "$signed")
  # As root, apt downloads as the _apt user, which cannot write into our private temp dir.
  DL="$WORK/dl"
  mkdir -p "$DL"
  sandbox=()
  [[ $(id -u) -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
  DEB=""
  for pkg in "${candidates[@]}"; do
    ver="$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    [[ -n "$ver" && "$ver" != "(none)" ]] || continue
    cached="$(ls "$CACHE/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
    if [[ -n "$cached" ]]; then
      DEB="$cached"
      log "using cached $(basename "$DEB")"
      break
    fi
    log "downloading $pkg $ver"
    if (cd "$DL" && apt-get download -q "${sandbox[@]}" "$pkg=$ver" >&2); then
      f="$(ls "$DL"/"${pkg}"_*.deb | head -n1)"
      rm -f "$CACHE"/*.deb
      mv "$f" "$CACHE/"
      DEB="$CACHE/$(basename "$f")"
      break
    fi
    log "download of $pkg failed"
  done
  [[ -n "$DEB" ]] || die_apt "could not download any of: ${candidates[*]}"
fi

KX="$WORK/kernel"
mkdir -p "$KX"
dpkg-deb -x "$DEB" "$KX" || die "cannot extract $DEB"
VMLINUZ="$(ls "$KX"/boot/vmlinuz-* 2>/dev/null | head -n1)"
CONFIG="$(ls "$KX"/boot/config-* 2>/dev/null | head -n1)"
[[ -n "$VMLINUZ" && -n "$CONFIG" ]] || die "$DEB holds no /boot/vmlinuz-* and /boot/config-*"
KVER="${VMLINUZ##*/vmlinuz-}"
log "kernel $KVER"

cfg() { sed -n "s/^$1=//p" "$CONFIG"; }
for opt in CONFIG_BLK_DEV_INITRD CONFIG_DEVTMPFS CONFIG_SERIAL_8250_CONSOLE CONFIG_ACPI; do
  [[ "$(cfg "$opt")" == y ]] || die "kernel $KVER lacks $opt=y"
done
[[ "$(cfg CONFIG_RD_GZIP)" == y ]] || die "kernel $KVER cannot unpack a gzip initramfs"

# ---------------------------------------------------------------------------------------------
# 2. Initramfs tree.
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,dev,proc,sys,tmp,run,etc,root}
mkdir -p "$R/lib/x86_64-linux-gnu"
cp "$BUSYBOX" "$R/bin/busybox"
# The cpio holds real files and symlinks only; --install -s cannot run on the host, so the
# applet list is asked from busybox and the links are made here (same result).
for applet in $("$BUSYBOX" --list-full); do
  [[ -e "$R/$applet" || -L "$R/$applet" ]] && continue
  mkdir -p "$R/$(dirname "$applet")"
  ln -s /bin/busybox "$R/$applet"
done

# tpm2-tools: the multicall binary and every tpm2_* alias.
rm -f "$R/usr/bin/tpm2"
cp "$TPM2" "$R/usr/bin/tpm2"
for link in /usr/bin/tpm2_*; do
  [[ -L "$link" ]] || continue
  ln -sf tpm2 "$R/usr/bin/$(basename "$link")"
done

# openssl with the tpm2 provider where OpenSSL looks for providers (MODULESDIR) and Debian's
# openssl.cnf where it looks for its configuration (OPENSSLDIR /usr/lib/ssl).
cp "$OPENSSL" "$R/usr/bin/openssl"
mkdir -p "$R/lib/x86_64-linux-gnu/ossl-modules" "$R/etc/ssl" "$R/usr/lib/ssl"
cp "$TPM2_PROVIDER" "$R/lib/x86_64-linux-gnu/ossl-modules/tpm2.so"
cp -L /etc/ssl/openssl.cnf "$R/etc/ssl/openssl.cnf"
ln -s /etc/ssl/openssl.cnf "$R/usr/lib/ssl/openssl.cnf"
# The trusted-connection helpers (POSIX sh) a service in the VM uses.
for h in "${HELPERS[@]}"; do install -m 0755 "$h" "$R/usr/bin/$(basename "$h")"; done

# Shared libraries: what ldd reports for tpm2, openssl and the tpm2 provider, plus the TCTIs
# that libtss2-tctildr dlopen()s at run time, plus what those need.
shopt -s nullglob
dlopened=("$LIBDIR"/libtss2-tcti-*.so.[0-9] "$LIBDIR"/libtss2-tctildr.so.[0-9])
shopt -u nullglob
[[ ${#dlopened[@]} -gt 0 ]] || die "no libtss2-tcti-*.so.N in $LIBDIR (libtss2-tcti-device0 missing?)"
libs_of() { ldd "$1" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}'; }
declare -A seen=()
queue=("$TPM2" "$OPENSSL" "$TPM2_PROVIDER" "${dlopened[@]}")
while [[ ${#queue[@]} -gt 0 ]]; do
  f="${queue[0]}"; queue=("${queue[@]:1}")
  [[ -n "${seen[$f]:-}" ]] && continue
  seen[$f]=1
  while read -r dep; do
    [[ -n "$dep" && -z "${seen[$dep]:-}" ]] && queue+=("$dep")
  done < <(libs_of "$f")
done
for f in "${!seen[@]}"; do
  [[ "$f" == "$TPM2" || "$f" == "$OPENSSL" || "$f" == "$TPM2_PROVIDER" ]] && continue
  case "$f" in
    */ld-linux-x86-64.so.2) cp -L "$f" "$R/lib64/ld-linux-x86-64.so.2" ;;
    *) cp -L "$f" "$R/lib/x86_64-linux-gnu/$(basename "$f")" ;;
  esac
done
[[ -f "$R/lib64/ld-linux-x86-64.so.2" ]] || die "dynamic loader not found by ldd"
# libtss2-tctildr asks for "libtss2-tcti-device.so.0" and also tries the unversioned name.
for f in "$R"/lib/x86_64-linux-gnu/libtss2-*.so.[0-9]; do
  ln -sf "$(basename "$f")" "${f%.[0-9]}"
done
mkdir -p "$R/usr/lib"
ln -s ../../lib/x86_64-linux-gnu "$R/usr/lib/x86_64-linux-gnu"
printf '/lib/x86_64-linux-gnu\n' >"$R/etc/ld.so.conf"

# TPM drivers: built into Debian's cloud kernel; if a future kernel has them as modules,
# they and their dependencies (read from each module's .modinfo) go into the image.
MODLIST="$R/etc/vtm-modules"
: >"$MODLIST"
MODROOT="$KX/lib/modules/$KVER"
declare -A modseen=()
add_module() {  # add_module NAME: dependencies first, then NAME (files per module: it recurses)
  local name="$1" path deps d
  [[ -n "${modseen[$name]:-}" ]] && return 0
  modseen[$name]=1
  path="$(find "$MODROOT" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)"
  [[ -n "$path" ]] || die "module $name not found under $MODROOT"
  case "$path" in
    *.ko.xz) xz -dc "$path" >"$WORK/$name.ko" ;;
    *.ko.zst) zstd -qdc "$path" >"$WORK/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" >"$WORK/$name.ko" ;;
    *) cp "$path" "$WORK/$name.ko" ;;
  esac
  objcopy -O binary --only-section=.modinfo "$WORK/$name.ko" "$WORK/$name.modinfo"
  deps="$(tr '\0' '\n' <"$WORK/$name.modinfo" | sed -n 's/^depends=//p' | tr ',' ' ')"
  for d in $deps; do add_module "$d"; done
  mkdir -p "$R/lib/modules"
  mv "$WORK/$name.ko" "$R/lib/modules/$name.ko"
  echo "$name" >>"$MODLIST"
}
# need_drivers CONFIG_X:module ...: each driver built in (=y) or its module added (=m).
need_drivers() {
  local pair opt mod
  for pair in "$@"; do
    opt="${pair%%:*}" mod="${pair##*:}"
    case "$(cfg "$opt")" in
      y) ;;
      m) add_module "$mod" ;;
      *) die "kernel $KVER has no $opt" ;;
    esac
  done
}
need_drivers CONFIG_TCG_TPM:tpm CONFIG_HW_RANDOM:rng_core CONFIG_TCG_TIS_CORE:tpm_tis_core \
             CONFIG_TCG_TIS:tpm_tis CONFIG_TCG_CRB:tpm_crb
if [[ -s "$MODLIST" ]]; then log "TPM modules: $(tr '\n' ' ' <"$MODLIST")"
else log "TPM drivers (tpm, tpm_tis, tpm_crb) are built into $KVER"; fi
# virtio-net for tests that reach a service in the guest (QEMU user-mode networking).
before=$(wc -l <"$MODLIST")
need_drivers CONFIG_VIRTIO_PCI:virtio_pci CONFIG_VIRTIO_NET:virtio_net
log "network modules: $(tail -n +$((before + 1)) "$MODLIST" | tr '\n' ' ')"
[[ "$(cfg CONFIG_IMA)" == y ]] || log "warning: CONFIG_IMA is off, PCR 10 stays zero"

cat >"$R/init" <<'EOF'
#!/bin/sh
# vtm test guest /init: mount, report, run /vtm-test.sh (appended per test), power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export HOME=/root
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
export TPM2OPENSSL_TCTI=device:/dev/tpmrm0
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
if [ -s /etc/vtm-modules ]; then
  for m in $(cat /etc/vtm-modules); do insmod /lib/modules/$m.ko || echo "VTM-GUEST: insmod $m failed"; done
fi
# The TPM character devices appear asynchronously after a driver probe.
i=0
while [ ! -e /dev/tpmrm0 ] && [ ! -e /dev/tpm0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -e /dev/tpmrm0 ] || export TPM2TOOLS_TCTI=device:/dev/tpm0 TPM2OPENSSL_TCTI=device:/dev/tpm0
# QEMU user-mode networking (-netdev user): the guest is 10.0.2.15, the host 10.0.2.2.
ip link set lo up
# A virtio device of type 1 is a NIC; its eth0 appears once virtio_net has probed it.
if grep -qx 0x0001 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
fi
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
    echo "VTM-GUEST: network setup failed"
fi
[ -e /dev/tpm0 ] || echo "VTM-GUEST: no TPM device found"
echo "VTM-GUEST: boot ok"
if [ -f /vtm-test.sh ]; then
  cd /root
  sh /vtm-test.sh
  echo "VTM-GUEST: exit $?"
else
  ls -l /dev/tpm* 2>&1
  tpm2_pcrread sha256
  echo "VTM-GUEST: exit $?"
fi
sync
poweroff -f
EOF
chmod 0755 "$R/init"

# ---------------------------------------------------------------------------------------------
# 3. Pack. Sorted names and fixed timestamps: the same inputs give the same archive.
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort |
   cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 >"$WORK/initrd.img"
# Keep the archive 4-byte aligned so a per-test cpio can be appended directly.
size=$(stat -c %s "$WORK/initrd.img")
pad=$(( (4 - size % 4) % 4 ))
[[ $pad -eq 0 ]] || head -c "$pad" /dev/zero >>"$WORK/initrd.img"

cp "$VMLINUZ" "$WORK/vmlinuz"
echo "$KVER" >"$WORK/kernel-version"
mv -f "$WORK/kernel-version" "$OUT/kernel-version"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
log "built $OUT/vmlinuz ($(stat -c %s "$OUT/vmlinuz") bytes)," \
    "$OUT/initrd.img ($(stat -c %s "$OUT/initrd.img") bytes) in $(( $(date +%s) - START )) s"
