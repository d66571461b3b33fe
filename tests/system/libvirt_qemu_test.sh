# libvirt_qemu_test.sh — hostd following a real libvirtd and real QEMU (issue
# 15, part 2). Runs on the level-1 KVM host that run-in-kvm-host.sh boots:
# libvirtd with qemu:///system starts the L2 guests from domain XML (direct
# kernel boot of the initramfs holding guestd, <cid auto='yes'/>), and hostd
# runs with packaging/hostd.toml exactly as shipped (qemu:///system,
# read-only, vsock:{cid}:5500).
#
#   curl --> hostd (L1) --vsock:CID:5500--> guestd (L2 `l2a`, started by libvirtd)
#
# Lifecycle, from QEMU's own events: l2a shut off -> 503; start -> the CID
# libvirt assigned is read from the live XML, 200; a CONNECT tunnel open
# while it is destroyed is closed, and requests get 503; l2b started paused
# takes CID 3, l2a started again gets CID 4 and hostd reaches it there.
#
# Environment (from the runner's --env): VMGATE_HOSTD VMGATE_HOSTD_TOML.
# Exit: 0 pass, 1 fail (the message names the level and the step).
set -u
LEVEL="L1 libvirt"
T=/tmp/vmgate-l1/libvirt
mkdir -p $T && cd $T || exit 1
# shellcheck source=tests/system/kvm_host_lib.sh
. "$VMGATE_KVM_LIB"
HOSTD=http://127.0.0.1:5986
ADMIN=http://127.0.0.1:9090
V="virsh -q -c qemu:///system"

# vm NAME KEY: KEY of VM NAME in hostd's /v1/vms ("" when absent).
vm() {
  curl -sS --max-time 10 $ADMIN/v1/vms | /usr/bin/python3 -c '
import json, sys
vms = {v["name"]: v for v in json.load(sys.stdin)}
v = vms.get(sys.argv[1], {}).get(sys.argv[2])
print("" if v is None else v)' "$1" "$2"
}
vm_is() { [ "$(vm "$1" "$2")" = "$3" ]; }

step "libvirtd starts with qemu:///system"
[ -n "${L2_INITRD:-}" ] || fail "no L2 initramfs (run-in-kvm-host.sh --l2-script)"
libvirtd_start
for d in l2a l2b; do
  l2_domain_xml $d >$T/$d.xml
  $V define $T/$d.xml >/dev/null 2>$T/virsh.err || fail "virsh define $d: $(cat $T/virsh.err)"
done
note "defined l2a and l2b, both <cid auto='yes'/>"

step "hostd starts with the packaged hostd.toml as shipped (qemu:///system)"
grep -q '^uri = "qemu:///system"$' "$VMGATE_HOSTD_TOML" || fail "$VMGATE_HOSTD_TOML does not say qemu:///system"
"$VMGATE_HOSTD" --config "$VMGATE_HOSTD_TOML" 2>$T/hostd.log &
hostd_pid=$!
wait_for 60 "hostd synced with libvirtd" grep -q 'event=libvirt_sync.*domains=2' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "no event=libvirt_sync ... domains=2 within 60 s"; }
expect_http 503 "503" -H 'X-VM-Id: l2a' $HOSTD/hello

step "virsh start l2a: hostd reads the CID libvirt assigned from the live XML"
$V start l2a >/dev/null 2>$T/virsh.err || fail "virsh start l2a: $(cat $T/virsh.err)"
cid=$(live_cid l2a)
[ -n "$cid" ] || fail "no <cid auto='yes' address=...> in l2a's live XML"
note "libvirt gave l2a CID $cid"
wait_for 30 "hostd says l2a is running" vm_is l2a state running || fail "hostd: l2a is '$(vm l2a state)'"
[ "$(vm l2a cid)" = "$cid" ] || fail "hostd says CID '$(vm l2a cid)', libvirt $cid"
[ "$(vm l2a transport)" = "vsock:$cid:5500" ] || fail "hostd's transport for l2a is '$(vm l2a transport)'"
note "hostd: l2a running, transport $(vm l2a transport)"

step "l2a's guestd answers through hostd"
wait_for 120 "routable" curl -sf --max-time 10 -H 'X-VM-Id: l2a' $HOSTD/hello ||
  fail "no 200 from l2a within 120 s of its start (console: $(tail -n 3 $T/l2-l2a.log 2>/dev/null))"
expect_http 200 "hello from l2a" -H 'X-VM-Id: l2a' $HOSTD/hello

step "virsh destroy l2a: open CONNECT tunnels end, then 503"
# An idle tunnel (nothing in flight: both directions of hostd's relay wait to
# read) and one carrying a download the client reads slowly (hostd's relay
# waits to write to the client, with megabytes buffered on the way).
/usr/bin/python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", 5986))
s.sendall(b"CONNECT l2a:5986 HTTP/1.1\r\nHost: l2a:5986\r\n\r\n")
head = s.recv(4096)
print(head.split(b"\r\n")[0].decode(), flush=True)
if b" 200 " not in head.split(b"\r\n")[0]: sys.exit(3)
try:
    rest = s.recv(4096)
    print("closed" if not rest else "data", flush=True)
except OSError as e:
    print("closed:", e, flush=True)
' >$T/idle-tunnel.out 2>&1 &
idle_pid=$!
curl -sS --max-time 300 --limit-rate 1M -p -x $HOSTD -o $T/tunnel.bin \
  http://l2a:5986/bytes/67108864 2>$T/tunnel.err &
tunnel_pid=$!
tunnel_moving() { [ -s $T/tunnel.bin ] && grep -q ' 200 ' $T/idle-tunnel.out; }
wait_for 30 "both tunnels open, bytes flowing" tunnel_moving ||
  fail "the tunnels did not open: $(cat $T/idle-tunnel.out $T/tunnel.err)"
$V destroy l2a >/dev/null 2>$T/virsh.err || fail "virsh destroy l2a: $(cat $T/virsh.err)"
at_destroy=$(wc -c <$T/tunnel.bin)
ended() { ! kill -0 "$1" 2>/dev/null; }
wait_for 30 "the idle tunnel closed" ended $idle_pid ||
  fail "the idle tunnel is still open 30 s after destroy: $(cat $T/idle-tunnel.out)"
note "idle tunnel: $(tail -n 1 $T/idle-tunnel.out)"
wait_for 120 "the busy tunnel closed" ended $tunnel_pid ||
  fail "the busy tunnel is still open 120 s after destroy ($(wc -c <$T/tunnel.bin) bytes received)"
wait $tunnel_pid && fail "the download through the tunnel completed though l2a was destroyed"
note "busy tunnel: $at_destroy bytes at destroy, $(wc -c <$T/tunnel.bin) at the end: $(cat $T/tunnel.err)"
wait_for 30 "hostd says l2a is shut_off" vm_is l2a state shut_off || fail "hostd: l2a is '$(vm l2a state)'"
expect_http 503 "503" -H 'X-VM-Id: l2a' $HOSTD/hello

step "l2b started paused takes CID $cid; l2a started again gets another, which hostd follows"
$V start --paused l2b >/dev/null 2>$T/virsh.err || fail "virsh start --paused l2b: $(cat $T/virsh.err)"
[ "$(live_cid l2b)" = "$cid" ] || fail "l2b got CID '$(live_cid l2b)', expected the free $cid"
$V start l2a >/dev/null 2>$T/virsh.err || fail "virsh start l2a again: $(cat $T/virsh.err)"
cid2=$(live_cid l2a)
[ -n "$cid2" ] && [ "$cid2" != "$cid" ] || fail "l2a's new CID is '$cid2' (l2b holds $cid)"
note "l2b CID $cid, l2a CID $cid2"
wait_for 30 "hostd says l2a has CID $cid2" vm_is l2a cid "$cid2" || fail "hostd: l2a CID '$(vm l2a cid)'"
[ "$(vm l2a transport)" = "vsock:$cid2:5500" ] || fail "hostd's transport for l2a is '$(vm l2a transport)'"
wait_for 120 "routable at CID $cid2" curl -sf --max-time 10 -H 'X-VM-Id: l2a' $HOSTD/hello ||
  fail "no 200 from l2a within 120 s of its second start"
expect_http 200 "hello from l2a" -H 'X-VM-Id: l2a' $HOSTD/hello
l2ctl "$cid2" 'cat /tmp/guestd.log' | grep -q 'event=listening' || fail "no control channel to l2a at CID $cid2"

step "the changes came as libvirt events, on one connection"
curl -sS --max-time 10 $ADMIN/metrics >$T/metrics.txt || fail "no /metrics"
grep -E '^vmgate_libvirt_(events_total|syncs_total|reconnects_total|connected)' $T/metrics.txt | sed 's/^/   /'
events=$(awk '$1 == "vmgate_libvirt_events_total" {print int($2)}' $T/metrics.txt)
[ "${events:-0}" -ge 4 ] || fail "vmgate_libvirt_events_total is '${events:-}', want >= 4 (start, stop, start, start)"
grep -q '^vmgate_libvirt_reconnects_total 0$' $T/metrics.txt || fail "hostd reconnected to libvirtd"
alive $hostd_pid hostd
grep -h 'level=error' $T/hostd.log >$T/errors.txt && fail "hostd logged errors: $(head -n 3 $T/errors.txt)"

echo "== PASS [$LEVEL]: hostd follows libvirtd's QEMU domains (auto CIDs $cid then $cid2)"
$V destroy l2a >/dev/null 2>&1; $V destroy l2b >/dev/null 2>&1
kill $hostd_pid $libvirtd_pid 2>/dev/null
exit 0
