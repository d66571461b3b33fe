#!/bin/bash
# run-in-vsock-guest.sh — run a test script inside a throw-away QEMU guest whose
# kernel has real AF_VSOCK with the loopback transport, and return its exit code.
#
#   run-in-vsock-guest.sh [--timeout S] [--mem M] [--smp N] [--log FILE]
#                         [--env NAME=VALUE]... --script TEST.sh [FILE...]
#
# Inside the guest, CID 1 (VMADDR_CID_LOCAL) is the guest itself: a process
# listening on vsock:ANY:PORT is reached by connecting to vsock:1:PORT, over a
# real kernel AF_VSOCK socket (vsock + vmw_vsock_virtio_transport_common +
# vsock_loopback; vsock_diag too, so `ss --vsock` works if you pass ss in).
#
# The guest is the host's own Debian kernel (/boot/vmlinuz-*, package
# linux-image-amd64) under QEMU with TCG software emulation (no KVM needed)
# and a busybox initramfs built on every run:
#   * FILE... are copied to /opt/vmgate/ (on PATH, the working directory).
#     ELF files bring their shared libraries (ldd) and the dynamic loader, so
#     ordinary dynamically linked programs (curl, a daemon linking libvirt) run;
#     their debug info is dropped on the way (objcopy --strip-debug).
#   * TEST.sh runs as `sh /opt/vmgate/test.sh` under busybox, as root, with
#     HOME=/root, /tmp and /run on tmpfs, `lo` up, stdin from /dev/null.
#     Its stdout/stderr come back on this script's stdout.
#   * --env NAME=VALUE is exported to TEST.sh.
#
# Exit status:
#   the script's own status (keep test scripts to 0..119)
#   2    usage error, or a host prerequisite is missing (the message names the
#        Debian package to install)
#   124  timeout (--timeout, default 300 s): the guest was killed
#   125  the guest died without reporting a status (panic, out of memory, QEMU
#        error)
#   126  the guest booted but could not load the vsock modules
#
# Boot time: the bzImage's uncompressed ELF kernel is extracted once on the host
# and booted directly (PVH entry), which saves the ~4 s the kernel would spend
# decompressing itself under emulation; it is cached in VMGATE_GUEST_CACHE
# (default ~/.cache/vmgate-guest, ~65 MB). Boot to script: ~4-5 s on an idle
# 2-core machine.
#
# Environment: VMGATE_GUEST_KERNEL (a vmlinuz to use instead of the newest
# /boot one; its modules must be under /lib/modules/<version>),
# VMGATE_GUEST_CACHE, VMGATE_GUEST_QEMU_ARGS (extra QEMU arguments).
#
# Needs (Debian 12): apt-get install --no-install-recommends \
#     qemu-system-x86 busybox-static cpio linux-image-amd64
# `-accel kvm` is not used: on nested/paravirtual hosts it can hang, and TCG is
# fast enough for proving behaviour (not for benchmarks). QEMU's default CPU model is
# kept on purpose: `-cpu max` makes TCG several times slower.
set -euo pipefail

me=run-in-vsock-guest
timeout_s=300 mem=1024 smp=2 script="" keep_log=""
files=() envs=()

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}
# shellcheck source=qemu_runner_lib.sh
. "$(dirname "$0")/qemu_runner_lib.sh"

while (($#)); do
  case "$1" in
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --log) keep_log=${2:?}; shift 2 ;;
    --env) [[ ${2:-} == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE"; envs+=("$2"); shift 2 ;;
    --script) script=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    --) shift; files+=("$@"); break ;;
    -*) echo "$me: unknown option $1" >&2; usage ;;
    *) files+=("$1"); shift ;;
  esac
done
[[ -n "$script" ]] || { echo "$me: --script is required" >&2; usage; }
[[ -f "$script" && -r "$script" ]] || die "script not found: $script"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die "--timeout wants seconds"
for f in "${files[@]+"${files[@]}"}"; do
  [[ -f "$f" && -r "$f" ]] || die "file not found (or not a regular file): $f"
done

# ---- host prerequisites --------------------------------------------------------------
command -v qemu-system-x86_64 >/dev/null || missing qemu-system-x86_64 qemu-system-x86
command -v cpio >/dev/null || missing cpio cpio
command -v ldd >/dev/null || missing ldd libc-bin
command -v gzip >/dev/null || missing gzip gzip
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  # busybox-static's binary; the dynamic `busybox` package would need its libraries.
  if [[ -x $b ]] && ! ldd "$b" >/dev/null 2>&1; then busybox=$b; break; fi
done
[[ -n "$busybox" ]] || missing "a static busybox" busybox-static

vsock_mods=(vsock vmw_vsock_virtio_transport_common vsock_loopback)
opt_mods=(vsock_diag)
modfile() {  # modfile KVER NAME -> path of the module (any compression), or nothing
  local m
  for m in "/lib/modules/$1/kernel/net/vmw_vsock/$2.ko"{,.xz,.zst,.gz}; do
    [[ -f $m ]] && { echo "$m"; return 0; }
  done
  return 0
}
if [[ -n "${VMGATE_GUEST_KERNEL:-}" ]]; then
  kernel=$VMGATE_GUEST_KERNEL
  [[ -f $kernel ]] || die "VMGATE_GUEST_KERNEL=$kernel does not exist"
  kver=$(basename "$kernel"); kver=${kver#vmlinuz-}
else
  kernel=""
  # Newest /boot kernel that ships vsock_loopback.
  while read -r k; do
    v=${k#/boot/vmlinuz-}
    if [[ -n $(modfile "$v" vsock_loopback) ]]; then kernel=$k; kver=$v; fi
  done < <(printf '%s\n' /boot/vmlinuz-* | sort -V)
  [[ -n "$kernel" ]] || missing "a /boot kernel with vsock_loopback.ko" linux-image-amd64
fi
[[ -r $kernel ]] || die "cannot read $kernel (run as root, or chmod a+r it)"
for m in "${vsock_mods[@]}"; do
  [[ -n $(modfile "$kver" "$m") ]] || die "kernel module $m missing for $kver (/lib/modules/$kver): apt-get install linux-image-$kver"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vmgate-guest.XXXXXX")
qemu_pidfile=$work/qemu.pid
install_cleanup "$work/initrd"


# ---- kernel: boot the uncompressed ELF through PVH when possible -----------------------
# A bzImage decompresses itself inside the guest, which under TCG costs ~4 s of the
# ~8 s boot. The uncompressed vmlinux inside it carries a PVH entry note, and QEMU
# boots such an ELF directly: extract it once on the host (~1 s) and cache it.
extract_vmlinux() {  # extract_vmlinux BZIMAGE OUT -> 0 if OUT is a PVH-bootable ELF
  local img=$1 out=$2 magic tool off
  for pair in '\xfd7zXZ\x00:xz -dc --single-stream' '\x28\xb5\x2f\xfd:zstd -qdc' \
              '\x1f\x8b\x08:gzip -dc' '\x02\x21\x4c\x18:lz4 -dc'; do
    magic=${pair%%:*} tool=${pair#*:}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "$magic" "$img" 2>/dev/null | head -3 | cut -d: -f1); do
      tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null
      if is_elf "$out" &&
         LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$out"; then
        return 0
      fi
    done
  done
  rm -f "$out"; return 1
}
boot_kernel=$kernel
if ! is_elf "$kernel"; then
  cache=${VMGATE_GUEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vmgate-guest}
  key=$(stat -c '%s-%Y' "$kernel")
  cached=$cache/vmlinux-$kver-$key
  if [[ -s $cached ]]; then
    boot_kernel=$cached
  elif mkdir -p "$cache" 2>/dev/null && extract_vmlinux "$kernel" "$cached.$$"; then
    mv -f "$cached.$$" "$cached"; boot_kernel=$cached
  elif extract_vmlinux "$kernel" "$work/vmlinux"; then
    boot_kernel=$work/vmlinux
  fi  # else: boot the bzImage as it is (slower, same result)
fi

# ---- initramfs -------------------------------------------------------------------------

root=$work/root
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,tmp,run,root,etc,opt/vmgate,lib/modules}
# merged-/usr layout, like Debian 12, so library paths from ldd land where expected
ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
cp "$busybox" "$root/usr/bin/busybox"

for m in "${vsock_mods[@]}" "${opt_mods[@]}"; do
  src=$(modfile "$kver" "$m")
  [[ -n $src ]] || continue
  dst=$root/lib/modules/$m.ko
  case $src in
    *.ko) cp "$src" "$dst" ;;
    *.xz) command -v xz >/dev/null || missing xz xz-utils; xz -dc "$src" >"$dst" ;;
    *.zst) command -v zstd >/dev/null || missing zstd zstd; zstd -qdc "$src" >"$dst" ;;
    *.gz) gzip -dc "$src" >"$dst" ;;
  esac
done

for f in "${files[@]+"${files[@]}"}"; do
  dst=$root/opt/vmgate/$(basename "$f")
  [[ -e $dst ]] && die "two files named $(basename "$f")"
  # Debug info only bloats the initramfs (RelWithDebInfo binaries are mostly DWARF).
  if is_elf "$f" && command -v objcopy >/dev/null && objcopy --strip-debug "$f" "$dst" 2>/dev/null; then
    :
  else
    cp -L "$f" "$dst"
  fi
  if is_elf "$f"; then chmod +x "$dst"; copy_libs "$f" "$root"; fi
done
cp "$script" "$root/opt/vmgate/test.sh"
{
  for e in "${envs[@]+"${envs[@]}"}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
} >"$root/opt/vmgate/.env"

echo "127.0.0.1 localhost" >"$root/etc/hosts"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "hosts: files" >"$root/etc/nsswitch.conf"

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# PID 1 of the vsock test guest: mount, load vsock, run the test, report, power off.
/bin/busybox --install -s /bin
export PATH=/opt/vmgate:/bin:/sbin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
ip link set lo up; hostname vsock-guest
rc=0
for m in vsock vmw_vsock_virtio_transport_common vsock_loopback; do
  insmod /lib/modules/$m.ko || { echo "vmgate-guest: insmod $m failed"; rc=126; }
done
[ -e /lib/modules/vsock_diag.ko ] && insmod /lib/modules/vsock_diag.ko 2>/dev/null
echo "vmgate-guest: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB, up $(cut -d' ' -f1 /proc/uptime)s"
echo "@@VMGATE_GUEST_BEGIN@@"
if [ $rc = 0 ]; then
  cd /opt/vmgate
  ( . /opt/vmgate/.env; exec sh /opt/vmgate/test.sh </dev/null 2>&1 )
  rc=$?
fi
echo "@@VMGATE_GUEST_EXIT=$rc@@"
poweroff -f
INIT
chmod +x "$root/init"
# lz4 decompresses fastest under emulation; gzip is the fallback every kernel has.
if command -v lz4 >/dev/null && grep -qs '^CONFIG_RD_LZ4=y' "/boot/config-$kver"; then
  (cd "$root" && find . | cpio -o -H newc --quiet | lz4 -l -1 -q) >"$work/initrd"
else
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd"
fi

# ---- boot ------------------------------------------------------------------------------
log=$work/console.log
t0=$EPOCHREALTIME
# The boot runs in the background and this shell waits for it, so that a signal
# (ctest's timeout, Ctrl-C) is acted on at once: the traps stop QEMU.
(
  set +e  # QEMU's status is wanted, not an early exit
  # shellcheck disable=SC2086  # VMGATE_GUEST_QEMU_ARGS is a word list
  timeout -k 5 "$timeout_s" qemu-system-x86_64 -accel tcg -M pc -m "$mem" -smp "$smp" \
      -display none -vga none -monitor none -serial stdio -no-reboot -nodefaults \
      -no-user-config -pidfile "$qemu_pidfile" ${VMGATE_GUEST_QEMU_ARGS:-} \
      -kernel "$boot_kernel" -initrd "$work/initrd" \
      -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" </dev/null 2>&1 |
    while IFS= read -r line || [[ -n $line ]]; do
      line=${line//$'\r'/}
      printf '%s\n' "$line" >>"$log"
      case $line in
        "@@VMGATE_GUEST_BEGIN@@") echo "$EPOCHREALTIME" >"$work/t_begin" ;;
        "@@VMGATE_GUEST_EXIT="*) echo "$EPOCHREALTIME" >"$work/t_end"; printf '%s\n' "$line" ;;
        *) printf '%s\n' "$line" ;;
      esac
    done
  echo "${PIPESTATUS[0]}" >"$work/qemu.rc"
) &
boot_pid=$!
wait "$boot_pid" || true
boot_pid=""
qrc=$(cat "$work/qemu.rc" 2>/dev/null || echo unknown)
t1=$EPOCHREALTIME
# shellcheck disable=SC2034  # read by run_cleanup (qemu_runner_lib.sh)
if [[ -n "$keep_log" ]]; then cp "$log" "$keep_log"; log_copied=1; fi

timing="total $(secs "$t0" "$t1")s"
[[ -s $work/t_begin ]] && timing="boot to script $(secs "$t0" "$(cat "$work/t_begin")")s, $timing"
[[ -s $work/t_begin && -s $work/t_end ]] &&
  timing="$timing (script $(secs "$(cat "$work/t_begin")" "$(cat "$work/t_end")")s)"

rc=$(grep -a -o '@@VMGATE_GUEST_EXIT=[0-9]*@@' "$log" | tail -1 | tr -dc 0-9 || true)
if [[ -n "$rc" ]]; then
  echo "$me: exit $rc; $timing" >&2
  exit "$rc"
fi
if [[ $qrc == 124 || $qrc == 137 ]]; then
  echo "$me: TIMEOUT after ${timeout_s}s, guest killed; $timing" >&2
  exit 124
fi
echo "$me: guest died without reporting a status (qemu exit $qrc); $timing" >&2
exit 125
