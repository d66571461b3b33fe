# kvm_host_lib.sh — shared by the test scripts that run-in-kvm-host.sh runs on
# its level-1 KVM host (POSIX sh: dash in L1). Source it after setting LEVEL
# (the name printed with each step, e.g. "L1 nested") and T (a work dir).
#
# Every failure says the level, the step number and the step: "FAIL [L1 nested
# step 7: GET /hello ...]: HTTP 502 ...", then the last lines of each log in $T.

step_no=0 step_name=""
step() { step_no=$((step_no + 1)); step_name=$*; echo "== [$LEVEL $step_no] $* (at $(now) s)"; }
note() { echo "   $*"; }
show_logs() {
  for f in "$T"/*.log "$T"/*.err; do
    [ -s "$f" ] || continue
    echo "---- $f (last 30 lines)"
    tail -n 30 "$f" | tr -d '\r'
  done
}
# The verdict is printed again after the logs: a reader who sees only the
# end of a long output (a CI summary does) still learns which step failed.
fail() {
  echo "FAIL [$LEVEL step $step_no: $step_name]: $*"
  show_logs
  echo "FAIL [$LEVEL step $step_no: $step_name]: $*"
  exit 1
}
# lost WHY: the emulated level-2 machine itself failed (its QEMU died or
# never finished booting), not a step of vmgate's: exit 125, which the
# runner's retry-if-lost.sh runs once more.
lost() {
  echo "LOST [$LEVEL step $step_no: $step_name]: $*"
  show_logs
  echo "LOST [$LEVEL step $step_no: $step_name]: $*"
  exit 125
}
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# wait_for SECONDS DESCRIPTION CMD...: run CMD every 0.2 s until it succeeds.
# SECONDS only bounds a wait for something to come up; no check depends on it.
wait_for() {
  limit=$1 what=$2; shift 2
  start=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b - a >= l)}' && return 1
    sleep 0.2
  done
  note "$what after $(elapsed "$start") s"
}
# last_request_has PATTERN: hostd's latest event=request line matches PATTERN.
# hostd writes a request's record when the request ends, which can be just
# after its client has the answer (a refused CONNECT) or, for a tunnel, when
# the client closes it: wait for the line rather than race it.
last_request_is() { grep 'event=request' "$T/hostd.log" | tail -n 1 | grep -q "$1"; }
last_request_has() { wait_for 10 "hostd logged $1" last_request_is "$1"; }
alive() { kill -0 "$1" 2>/dev/null || fail "$2 exited unexpectedly"; }

# http CURL-ARGS...: one request; sets $code and $body (stderr in $T/curl.err).
http() {
  out=$(curl -sS --max-time 60 -w '\n%{http_code}' "$@" 2>"$T/curl.err") || true
  code=$(printf '%s\n' "$out" | tail -n 1)
  body=$(printf '%s\n' "$out" | sed '$d')
}
# expect_http CODE BODY-PREFIX CURL-ARGS...: fail unless the answer matches.
expect_http() {
  want_code=$1 want_body=$2; shift 2
  http "$@"
  [ "$code" = "$want_code" ] || fail "curl $*: HTTP $code (want $want_code), body: $body $(cat "$T/curl.err")"
  case $body in "$want_body"*) ;; *) fail "curl $*: body '$body' does not start with '$want_body'" ;; esac
  note "$code $(printf '%s' "$body" | head -n 1)"
}

# l2_qemu NAME CID: boot $L2_INITRD as a KVM guest with a vhost-vsock device at
# CID; console in $T/l2-NAME.log; its pid in $T/l2-NAME.pid.
l2_qemu() {
  nice -n 10 qemu-system-x86_64 -accel kvm -cpu host -M pc -m 256M -smp 1 \
    -display none -vga none -monitor none -nodefaults -no-user-config -no-reboot \
    -serial "file:$T/l2-$1.log" -device "vhost-vsock-pci,guest-cid=$2" \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init vmgate.name=$1" \
    </dev/null >"$T/l2-$1.err" 2>&1 &
  echo $! >"$T/l2-$1.pid"
}

# l2ctl CID COMMANDS: run shell COMMANDS in the L2 guest at CID, through the
# control listener guest_l2.sh keeps on vsock port 5600; prints their output.
L2CTL_PORT=5600
l2ctl() {
  printf '%s\n' "$2" | socat -t 60 -T 60 - "VSOCK-CONNECT:$1:$L2CTL_PORT" 2>"$T/l2ctl.err"
}
l2_up() { [ "$(l2ctl "$1" 'echo up')" = up ]; }

# field NAME: the value of NAME= in the key=value line on stdin.
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }

# libvirtd_prepare: the configuration libvirtd's QEMU driver needs in L1;
# libvirtd_start: libvirtd with qemu:///system as root, its log in
# $T/libvirtd.log, $libvirtd_pid. This machine has libvirt's QEMU driver but not
# libvirt-daemon-system, whose postinst creates the libvirt-qemu user the
# driver needs even when qemu.conf runs QEMU as root; L1's /etc is a
# throw-away overlay, so create it there. No polkit or D-Bus in L1: sockets
# without authentication. QEMU runs as root without a security driver: L1
# is itself the sandbox.
libvirtd_prepare() {
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --no-create-home --gid libvirt-qemu --home-dir /var/lib/libvirt libvirt-qemu
  mkdir -p /etc/libvirt
  printf '%s\n' 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' 'security_driver = "none"' \
    'stdio_handler = "file"' 'namespaces = [ ]' >/etc/libvirt/qemu.conf
  printf '%s\n' 'auth_unix_ro = "none"' 'auth_unix_rw = "none"' 'log_outputs = "3:stderr"' \
    >/etc/libvirt/libvirtd.conf
}
libvirtd_start() {
  libvirtd_prepare
  libvirtd 2>>"$T/libvirtd.log" &
  # shellcheck disable=SC2034  # for the caller, to stop it
  libvirtd_pid=$!
  wait_for 60 "libvirtd answering on qemu:///system" virsh -c qemu:///system version ||
    fail "libvirtd did not answer on qemu:///system within 60 s"
}

# l2_domain_xml NAME: a KVM domain booting $L2_KERNEL + $L2_INITRD directly,
# with a virtio vsock device whose CID libvirt assigns when it starts.
l2_domain_xml() {
  cat <<XML
<domain type='kvm'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$L2_KERNEL</kernel>
    <initrd>$L2_INITRD</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 rdinit=/init vmgate.name=$1</cmdline>
  </os>
  <cpu mode='host-passthrough'/>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='$T/l2-$1.log' append='on'/></serial>
    <memballoon model='none'/>
    <vsock model='virtio'><cid auto='yes'/></vsock>
  </devices>
</domain>
XML
}
# live_cid NAME: the CID libvirt gave the running domain (its live XML).
live_cid() {
  virsh -c qemu:///system dumpxml "$1" | sed -n "s/.*<cid auto='yes' address='\([0-9]*\)'.*/\1/p"
}
