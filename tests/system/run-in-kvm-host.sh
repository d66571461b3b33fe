#!/bin/bash
# run-in-kvm-host.sh — run a test script on a throw-away KVM host (level 1) that
# can start real KVM guests (level 2) with real virtio-vsock, and return its
# exit code.
#
#   run-in-kvm-host.sh [--systemd] [--timeout S] [--mem M] [--log FILE]
#                      [--env NAME=VALUE]... [--debs BUILD_DIR] [--shell]
#                      [--l2-script GUEST.sh [--l2-file FILE]...]
#                      --script HOST.sh
#
# Level 1 (L1) is this machine's own Debian kernel under QEMU with software
# emulation (TCG) and an emulated AMD-V CPU (-cpu qemu64,+svm,+npt), so
# kvm-amd loads in it and gives /dev/kvm, and vhost_vsock gives
# /dev/vhost-vsock: L1 is a KVM host. Its root filesystem is this machine's
# own, shared read-only over 9p with a tmpfs overlay on top, so L1 has every
# installed program (libvirtd, QEMU, systemd, curl) and the binaries just
# built, at the same paths, without building an image; what L1 writes stays
# in L1.
#   * HOST.sh runs as root in L1 (`sh HOST.sh`, working directory
#     /tmp/vmgate-l1, stdin from /dev/null), after kvm-amd and vhost_vsock
#     are loaded; its output comes back on this script's stdout.
#   * --systemd: systemd is PID 1 in L1 and HOST.sh runs from a oneshot unit
#     as the only job of the boot target vmgate-l1.target (basic.target and
#     the test; none of this machine's enabled services); without it, busybox init (~3 s).
#   * --env NAME=VALUE is exported to HOST.sh (and to GUEST.sh).
#   * --l2-script GUEST.sh builds a level-2 initramfs on this machine (busybox,
#     the virtio-pci and virtio-vsock modules, vsock_loopback, GUEST.sh and
#     each --l2-file with its shared libraries, in /opt/vmgate on PATH).
#     HOST.sh finds it in $L2_INITRD and the kernel to boot it in $L2_KERNEL:
#     it starts L2 itself (QEMU -accel kvm, or libvirt), see l2_qemu in
#     kvm_host_lib.sh. GUEST.sh runs as root in L2 once the modules are
#     loaded, with HOME=/root, /tmp and /run on tmpfs, `lo` up.
#   * --debs BUILD_DIR: build the vmgate-host and vmgate-guest .debs from
#     that configured and built tree (cpack, here, before L1 boots); HOST.sh
#     finds them in the directory $VMGATE_DEBS.
#   * --shell: no test, an interactive shell in L1 on this terminal (the
#     environment is set up as for HOST.sh; `poweroff -f` ends it).
#
# Exit status:
#   HOST.sh's own status (keep test scripts to 0..119; 125 when a test finds
#        an emulated level-2 machine dead: kvm_host_lib.sh's lost)
#   2    usage error, or a host prerequisite is missing (named in the message)
#   124  timeout (--timeout, default 420 s): L1 was killed
#   125  L1 died without reporting a status (panic, QEMU error)
#   126  L1 booted but could not mount the shared root or load kvm-amd /
#        vhost_vsock
#
# Needs (Debian 12): qemu-system-x86 busybox-static cpio linux-image-amd64;
# for --systemd also systemd. The kernel must have 9p, 9pnet_virtio, overlay,
# kvm-amd and vhost_vsock as modules (Debian's has).
set -euo pipefail

me=run-in-kvm-host
here=$(cd "$(dirname "$0")" && pwd)
timeout_s=420 mem=3072 script="" l2_script="" debs_from="" keep_log="" mode=busybox shell=0
envs=() l2_files=()

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
    --log) keep_log=${2:?}; shift 2 ;;
    --systemd) mode=systemd; shift ;;
    --shell) shell=1; shift ;;
    --debs) debs_from=${2:?}; shift 2 ;;
    --env) [[ ${2:-} == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE"; envs+=("$2"); shift 2 ;;
    --script) script=${2:?}; shift 2 ;;
    --l2-script) l2_script=${2:?}; shift 2 ;;
    --l2-file) l2_files+=("${2:?}"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "$me: unknown argument $1" >&2; usage ;;
  esac
done
((shell)) && script=${script:-/dev/null}
[[ -n "$script" ]] || { echo "$me: --script is required" >&2; usage; }
[[ -r "$script" ]] || die "script not found: $script"
[[ -z "$l2_script" || -r "$l2_script" ]] || die "L2 script not found: $l2_script"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die "--timeout wants seconds"
for f in "${l2_files[@]+"${l2_files[@]}"}"; do
  [[ -f "$f" && -r "$f" ]] || die "L2 file not found (or not a regular file): $f"
done

command -v qemu-system-x86_64 >/dev/null || missing qemu-system-x86_64 qemu-system-x86
command -v cpio >/dev/null || missing cpio cpio
[[ $mode == busybox ]] || [[ -x /lib/systemd/systemd ]] || missing systemd systemd
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  if [[ -x $b ]] && ! ldd "$b" >/dev/null 2>&1; then busybox=$b; break; fi
done
[[ -n "$busybox" ]] || missing "a static busybox" busybox-static

# The newest /boot kernel whose modules include everything both levels load.
l1_mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         netfs fscache 9pnet 9pnet_virtio 9p overlay)
l2_mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback vsock_diag)
kernel="" kver=""
while read -r k; do
  v=${k#/boot/vmlinuz-}
  ok=1
  for m in "${l1_mods[@]}" "${l2_mods[@]}" kvm_amd vhost_vsock; do
    modinfo -k "$v" -F filename "$m" >/dev/null 2>&1 || { ok=0; break; }
  done
  ((ok)) && { kernel=$k; kver=$v; }
done < <(printf '%s\n' /boot/vmlinuz-* | sort -V)
[[ -n $kernel ]] || missing "a /boot kernel with 9p, overlay, kvm-amd and vhost_vsock modules" linux-image-amd64
[[ -r $kernel ]] || die "cannot read $kernel (run as root)"

# L1 sees this machine's /, so the work directory is visible there at the same
# path (read-only): the L2 initramfs and the scripts travel that way. Not in
# /tmp, which systemd-tmpfiles empties when L1 boots with systemd.
work=$(mktemp -d /var/tmp/vmgate-kvm.XXXXXX)
chmod 755 "$work"
qemu_pidfile=$work/qemu.pid
install_cleanup "$work/l1.initrd"

modpath() { modinfo -k "$kver" -F filename "$1"; }
new_root() {  # new_root DIR: busybox, merged-/usr layout like Debian 12
  mkdir -p "$1"/{usr/bin,usr/lib,usr/lib64,proc,sys,dev,tmp,run,root,etc,mods,opt/vmgate}
  ln -s usr/bin "$1/bin"; ln -s usr/bin "$1/sbin"; ln -s usr/lib "$1/lib"; ln -s usr/lib64 "$1/lib64"
  cp "$busybox" "$1/usr/bin/busybox"
}
pack() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"; }

# L1 sees this machine's / read-only, but not its /tmp when it boots with
# systemd (which mounts a fresh tmpfs there), and a clone may live in /tmp:
# a file handed over by --env travels in the work directory instead.
mkdir -p "$work/env-files"
{
  printf 'export VMGATE_KVM_WORK=%q VMGATE_KVM_LIB=%q\n' "$work" "$work/lib.sh"
  for e in "${envs[@]+"${envs[@]}"}"; do
    name=${e%%=*} value=${e#*=}
    if [[ -f $value ]]; then
      cp -p "$value" "$work/env-files/$name-$(basename "$value")"
      value=$work/env-files/$name-$(basename "$value")
    fi
    printf 'export %s=%q\n' "$name" "$value"
  done
} >"$work/env"
if [[ -n $debs_from ]]; then
  [[ -f $debs_from/CPackConfig.cmake ]] || die "--debs $debs_from: no CPackConfig.cmake (configure and build it first)"
  command -v cpack >/dev/null || missing cpack cmake
  cpack -G DEB --config "$debs_from/CPackConfig.cmake" -B "$work/cpack" >"$work/cpack.log" 2>&1 ||
    die "cpack failed: $(tail -n 5 "$work/cpack.log")"
  mkdir -p "$work/debs" && mv "$work"/cpack/*.deb "$work/debs/" && rm -rf "$work/cpack"
  echo "export VMGATE_DEBS=$work/debs" >>"$work/env"
fi
cp "$script" "$work/host.sh"
cp "$here/kvm_host_lib.sh" "$work/lib.sh"

# ---- L2 initramfs ----------------------------------------------------------------------
if [[ -n $l2_script ]]; then
  r=$work/l2root
  new_root "$r"
  for m in "${l2_mods[@]}"; do cp "$(modpath "$m")" "$r/mods/$m.ko"; done
  for f in "${l2_files[@]+"${l2_files[@]}"}"; do
    dst=$r/opt/vmgate/$(basename "$f")
    [[ -e $dst ]] && die "two L2 files named $(basename "$f")"
    if is_elf "$f" && objcopy --strip-debug "$f" "$dst" 2>/dev/null; then :; else cp -L "$f" "$dst"; fi
    if is_elf "$f"; then chmod +x "$dst"; copy_libs "$f" "$r"; fi
  done
  cp "$l2_script" "$r/opt/vmgate/guest.sh"
  cp "$work/env" "$r/opt/vmgate/.env"
  echo "127.0.0.1 localhost" >"$r/etc/hosts"
  echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
  echo "root:x:0:" >"$r/etc/group"
  cat >"$r/init" <<INIT
#!/bin/busybox sh
# PID 1 of a level-2 guest: mount, load virtio-vsock, run the guest script.
/bin/busybox --install -s /bin
export PATH=/opt/vmgate:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
ip link set lo up
for m in ${l2_mods[*]}; do insmod /mods/\$m.ko || echo "L2: insmod \$m failed"; done
echo "L2: up \$(cut -d' ' -f1 /proc/uptime)s"
cd /opt/vmgate && ( . /opt/vmgate/.env; exec sh /opt/vmgate/guest.sh </dev/null 2>&1 )
echo "L2: guest script exited \$?"
while :; do sleep 3600; done
INIT
  chmod +x "$r/init"
  pack "$r" "$work/l2.initrd"
  rm -rf "$r"
  echo "export L2_INITRD=$work/l2.initrd L2_KERNEL=$kernel" >>"$work/env"
fi

# ---- L1 initramfs: mount the shared root, overlay it, switch to it ---------------------
r=$work/l1root
new_root "$r"
mkdir -p "$r"/{lower,upper,newroot}
for m in "${l1_mods[@]}"; do cp "$(modpath "$m")" "$r/mods/$m.ko"; done
# What L1 runs once it is up: load KVM and vhost-vsock, run HOST.sh, report.
cat >"$work/l1-run.sh" <<RUN
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
export SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_URLIFY=0
. $work/env
rc=0
# vhost_vsock for the host side of virtio-vsock; vsock_diag for ss --vsock.
for m in kvm_amd vhost_vsock vsock_diag; do
  modprobe \$m || { echo "L1: modprobe \$m failed"; rc=126; }
done
[ -c /dev/kvm ] || { echo "L1: no /dev/kvm after modprobe kvm_amd"; rc=126; }
ip link set lo up
echo "L1: kernel \$(uname -r), \$(nproc) cpus, up \$(cut -d' ' -f1 /proc/uptime)s, init \$(cat /proc/1/comm)"
echo "@@VMGATE_L1_BEGIN@@"
mkdir -p /tmp/vmgate-l1 && cd /tmp/vmgate-l1
if [ $shell = 1 ]; then
  echo "L1: shell (test script: sh $work/host.sh; L2 initramfs: \\\$L2_INITRD; end with poweroff -f)"
  PS1='L1# ' sh -i </dev/console >/dev/console 2>&1
elif [ \$rc = 0 ]; then
  ( exec sh $work/host.sh </dev/null 2>&1 )
  rc=\$?
fi
echo "@@VMGATE_L1_EXIT=\$rc@@"
# Power off at once: stopping the test unit would wait for what it started.
if [ "\$(cat /proc/1/comm)" = systemd ]; then systemctl poweroff --force --force; fi
RUN
if [[ $mode == systemd ]]; then
  l1_exec="switch_root /newroot /lib/systemd/systemd"
else
  # Should the test die without its exit marker (OOM killer, a signal), the
  # kernel's last words say why.
  l1_exec="switch_root /newroot /bin/sh -c 'sh $work/l1-run.sh || { echo L1: test runner died; dmesg | tail -n 25; }; $busybox poweroff -f'"
fi
cat >"$r/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "L1: \$*"; echo "@@VMGATE_L1_EXIT=126@@"; echo o >/proc/sysrq-trigger; sleep 10; }
for m in ${l1_mods[*]}; do insmod /mods/\$m.ko || fail "insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail "9p mount of the shared root failed"
mount -t tmpfs -o size=75% tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay mount failed"
for d in proc sys dev; do mount --move /\$d /newroot/\$d; done
# systemd 252 cannot mount its tmpfs API filesystems on overlay-over-9p
# ("Function not implemented"): mount them here, systemd skips mounted ones.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/lock /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev,noexec,size=5m tmpfs /newroot/run/lock
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /newroot/sys/fs/cgroup
echo vmgate-l1 >/newroot/etc/hostname
# A CI machine that is a container has /.dockerenv: systemd would take L1 for
# a container too (ignoring the kernel command line, failing
# ConditionVirtualization=vm). L1 is a VM.
rm -f /newroot/.dockerenv /newroot/run/.containerenv
u=/newroot/etc/systemd/system
# The boot target is the test alone on top of basic.target: none of this
# machine's own services (enabled in its multi-user.target) start in L1.
printf '%s\n' '[Unit]' 'Description=vmgate L1 test' 'Requires=basic.target' 'After=basic.target' \
  'Wants=vmgate-l1-test.service' 'AllowIsolate=yes' >\$u/vmgate-l1.target
printf '%s\n' '[Unit]' 'Description=vmgate L1 test script' \
  '[Service]' 'Type=oneshot' 'StandardInput=tty' 'StandardOutput=tty' 'StandardError=tty' 'TTYPath=/dev/ttyS0' \
  'ExecStart=/bin/sh $work/l1-run.sh' 'ExecStopPost=/bin/systemctl poweroff --force --force' >\$u/vmgate-l1-test.service
exec $l1_exec
INIT
chmod +x "$r/init"
pack "$r" "$work/l1.initrd"
rm -rf "$r"

# ---- boot L1 ---------------------------------------------------------------------------
log=$work/console.log
cmdline="console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init systemd.show_status=no systemd.unit=vmgate-l1.target"
# shellcheck disable=SC2054  # the commas are inside QEMU arguments
qemu=(nice -n 10 timeout -k 5 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt
      -M pc -m "$mem" -smp 2 -display none -vga none -monitor none -no-reboot -nodefaults
      -no-user-config -pidfile "$qemu_pidfile" -kernel "$kernel" -initrd "$work/l1.initrd"
      -d cpu_reset,guest_errors -D "$work/qemu-debug.log"
      -append "$cmdline"
      -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,id=hostroot,multidevs=remap)
t0=$EPOCHREALTIME
if ((shell)); then
  "${qemu[@]}" -serial mon:stdio
  exit 0
fi
(
  set +e
  "${qemu[@]}" -serial stdio </dev/null 2>&1 |
    while IFS= read -r line || [[ -n $line ]]; do
      line=${line//$'\r'/}
      printf '%s\n' "$line" >>"$log"
      case $line in
        "@@VMGATE_L1_BEGIN@@") echo "$EPOCHREALTIME" >"$work/t_begin" ;;
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
rc=$(grep -a -o "@@VMGATE_L1_EXIT=[0-9]*@@" "$log" | tail -1 | sed "s/[^=]*=\([0-9]*\).*/\1/" || true)
if [[ -n "$rc" ]]; then
  echo "$me: exit $rc ($mode L1); $timing" >&2
  exit "$rc"
fi
if [[ $qrc == 124 || $qrc == 137 ]]; then
  echo "$me: TIMEOUT after ${timeout_s}s, L1 killed; $timing" >&2
  exit 124
fi
# QEMU's own view (-d cpu_reset,guest_errors): a run that ends normally logs
# 6 CPU resets (3 per CPU); anything else there is a clue (a triple fault
# ends L1 as -no-reboot turns its reset into an exit).
resets=$(grep -c '^CPU Reset' "$work/qemu-debug.log" 2>/dev/null || true)
echo "$me: L1 died without reporting a status (qemu exit $qrc, ${resets:-0} CPU resets" \
     "logged, 6 in a normal run); $timing" >&2
tail -n 5 "$work/qemu-debug.log" 2>/dev/null | sed 's/^/qemu: /' >&2
exit 125
