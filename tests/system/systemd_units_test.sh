# systemd_units_test.sh — the packages under a real systemd (issue 15,
# part 3). Runs on the level-1 KVM host that `run-in-kvm-host.sh --systemd
# --debs BUILD_DIR` boots, systemd 252 as PID 1:
#
#   dpkg -i vmgate-host, systemctl start vmgate-hostd (packaged unit and
#   hostd.toml, User=vmgate, SupplementaryGroups=libvirt, hardened)
#     --> libvirtd (qemu:///system, a transient unit) --> L2 `l2a` (auto CID)
#   curl --> the unit's hostd --vsock--> guestd in l2a --> agent
#
# and vmgate-guest's unit in L1 as a stand-in guest (L2 is a busybox
# initramfs, too small for systemd): it must accept AF_VSOCK connections
# under its hardening, refuse l2a (CID 3) with its packaged "host CID 2 only",
# and serve l2a once a configuration allows CID 3.
#
# Environment: VMGATE_DEBS (from --debs), L2_INITRD/L2_KERNEL (--l2-script),
# VMGATE_TEST_AGENT (the test agent, run in L1 behind the stand-in guestd).
# Exit: 0 pass, 1 fail (the message names the level and the step).
set -u
LEVEL="L1 systemd"
T=/tmp/vmgate-l1/systemd
mkdir -p $T && cd $T || exit 1
# shellcheck source=tests/system/kvm_host_lib.sh
. "$VMGATE_KVM_LIB"
HOSTD=http://127.0.0.1:5986
V="virsh -q -c qemu:///system"
U=vmgate-hostd

prop() { systemctl show -P "$2" "$1"; }
is_state() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
journal() { journalctl -q -u "$1" -o cat --no-pager; }
in_journal() { journal "$1" | grep -q -- "$2"; }
show_logs_systemd() {
  for u in $U vmgate-guestd vmgate-test-libvirtd; do
    journal $u >$T/journal-$u.log 2>&1
  done
  # fail() shows 30 lines of each: hostd's view of libvirt and of the
  # domains is kept apart, so that request lines cannot push it out.
  journal $U | grep -E 'event=(libvirt|vm_|domain|inventory)|vm=l2a' >$T/journal-$U-libvirt.log 2>&1
  $V list --all >$T/virsh-list.log 2>&1
}
# fail() shows $T/*.log: put the units' journals there first.
fail_unit() { show_logs_systemd; fail "$@"; }

step "systemd is PID 1 and L1 is a VM"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm)"
virt=$(systemd-detect-virt) || fail "systemd-detect-virt says no VM"
note "systemd $(systemctl --version | head -n 1 | cut -d' ' -f2), virtualization: $virt"
systemctl --failed --no-legend | sed 's/^/   failed unit: /'

step "dpkg -i vmgate-host vmgate-guest: the vmgate user in the libvirt group, nothing started"
# man-db's trigger would re-index every manual page over 9p, under TCG; one
# dpkg run for both, as reading dpkg's database over 9p is slow too.
rm -f /var/lib/man-db/auto-update
timeout 120 dpkg -i "$VMGATE_DEBS"/vmgate-host_*.deb "$VMGATE_DEBS"/vmgate-guest_*.deb >$T/dpkg.log 2>&1 ||
  fail "dpkg -i: $(tail -n 5 $T/dpkg.log)"
grep -E "^Creating (user|group)" $T/dpkg.log | sed 's/^/   /'
id -nG vmgate | tr ' ' '\n' | grep -qx libvirt || fail "vmgate is not in the libvirt group: $(id vmgate)"
for u in $U vmgate-guestd; do
  is_state $u inactive || fail "installing started $u ($(prop $u ActiveState))"
done

step "systemctl start $U without libvirtd: listeners bound, but not active before a libvirt sync"
systemctl start --no-block $U
failed_twice() { [ "$(journal $U | grep -c 'event=libvirt_connect_failed')" -ge 2 ]; }
wait_for 60 "two libvirt connection attempts failed" failed_twice ||
  fail_unit "hostd did not log event=libvirt_connect_failed twice ($(prop $U ActiveState))"
in_journal $U 'event=listening listener=wsman' || fail_unit "the wsman listener is not bound"
st=$(prop $U ActiveState)/$(prop $U SubState)
[ "$st" = activating/start ] || fail_unit "$U is $st before any libvirt sync (want activating/start)"
note "$U: $st"

step "libvirtd starts: $U becomes active after its first libvirt sync"
libvirtd_prepare
systemd-run --quiet --unit=vmgate-test-libvirtd /usr/sbin/libvirtd ||
  fail "systemd-run libvirtd failed"
wait_for 120 "$U active" is_state $U active || fail_unit "$U is $(prop $U ActiveState)/$(prop $U SubState)"
journal $U >$T/journal.txt
sync_line=$(grep -n 'event=libvirt_sync' $T/journal.txt | head -n 1 | cut -d: -f1)
ready_line=$(grep -n 'event=ready' $T/journal.txt | head -n 1 | cut -d: -f1)
[ -n "$sync_line" ] && [ -n "$ready_line" ] && [ "$sync_line" -lt "$ready_line" ] ||
  fail_unit "the journal does not show event=libvirt_sync before event=ready"
note "$(sed -n "${sync_line}p" $T/journal.txt)"

step "the unit runs as vmgate in the libvirt group"
pid=$(prop $U MainPID)
uid=$(awk '/^Uid:/{print $2}' /proc/$pid/status)
groups=$(awk '/^Groups:/{$1 = ""; print}' /proc/$pid/status)
[ "$uid" = "$(id -u vmgate)" ] || fail "MainPID $pid runs as uid $uid, vmgate is $(id -u vmgate)"
echo " $groups " | grep -q " $(getent group libvirt | cut -d: -f3) " || fail "groups of $pid: $groups, no libvirt"
note "pid $pid uid $uid ($(id -nu "$uid")) groups$groups"

step "under its hardening it opens libvirt's socket and vsock channels: l2a (auto CID) answers"
l2_domain_xml l2a >$T/l2a.xml
$V define $T/l2a.xml >/dev/null 2>$T/virsh.err || fail_unit "virsh define: $(cat $T/virsh.err)"
$V start l2a >/dev/null 2>$T/virsh.err || fail_unit "virsh start: $(cat $T/virsh.err)"
cid=$(live_cid l2a)
note "libvirt gave l2a CID $cid"
wait_for 120 "routable" curl -sf --max-time 10 -H 'X-VM-Id: l2a' $HOSTD/hello ||
  fail_unit "no 200 from l2a through the unit within 120 s"
expect_http 200 "hello from l2a" -H 'X-VM-Id: l2a' $HOSTD/hello

step "the journal holds hostd's key=value lines"
journal $U | grep 'event=request' | tail -n 1 >$T/request-line.txt
grep -Eq '^level=info event=request req=[0-9a-f]+ .*vm=l2a .*status=200' $T/request-line.txt ||
  fail_unit "no 'level=info event=request ... vm=l2a ... status=200' line: $(cat $T/request-line.txt)"
note "$(cat $T/request-line.txt)"

step "systemd-analyze security $U: exposure <= 2.0"
systemd-analyze security $U >$T/security.txt 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' $T/security.txt)
note "$(grep 'Overall exposure' $T/security.txt)"
[ -n "$exposure" ] || fail "no exposure level: $(tail -n 3 $T/security.txt)"
awk -v e="$exposure" 'BEGIN{exit !(e <= 2.0)}' || fail "exposure $exposure > 2.0"

step "systemctl reload $U"
# Reload is SIGHUP: hostd re-reads what it can (TLS files) and keeps running
# as the same process. A unit without ExecReload= must refuse and be untouched.
if [ -n "$(prop $U ExecReload)" ]; then
  systemctl reload $U || fail_unit "systemctl reload failed"
  is_state $U active && [ "$(prop $U MainPID)" = "$pid" ] || fail_unit "reload did not keep $U running as $pid"
  wait_for 10 "hostd logged the reload" in_journal $U 'event=reloading signal=SIGHUP' ||
    fail_unit "no event=reloading in the journal"
else
  systemctl reload $U 2>$T/reload.err && fail_unit "reload succeeded on a unit without ExecReload="
  note "KNOWN GAP: $(cat $T/reload.err)"
  is_state $U active && [ "$(prop $U MainPID)" = "$pid" ] || fail_unit "a refused reload changed $U"
fi
expect_http 200 "hello from l2a" -H 'X-VM-Id: l2a' $HOSTD/hello

step "systemctl stop $U: a clean stop, logged"
systemctl stop $U || fail_unit "systemctl stop failed"
is_state $U inactive || fail_unit "$U is $(prop $U ActiveState) after stop"
[ "$(prop $U Result)" = success ] || fail_unit "Result=$(prop $U Result) after stop"
in_journal $U 'event=stopping signal=15' || fail_unit "no event=stopping signal=15 in the journal"
in_journal $U 'event=stopped' || fail_unit "no event=stopped in the journal"
http -H 'X-VM-Id: l2a' $HOSTD/hello
[ "$code" = 000 ] || fail "the wsman listener still answers ($code) after stop"
note "stopped: Result=success, journal has event=stopping and event=stopped"

# --- vmgate-guest's unit, with L1 standing in for a guest -------------------------------
G=vmgate-guestd
step "systemctl start $G (L1 as a stand-in guest)"
# hostd is stopped: its 5986 is free for an agent here.
/usr/bin/setsid "$VMGATE_TEST_AGENT" --listen 127.0.0.1:5986 --name l1 </dev/null >$T/agent.log 2>&1 &
systemctl start $G || fail_unit "systemctl start $G failed"
wait_for 30 "$G listening" in_journal $G 'event=listening' || fail_unit "$G logged no event=listening"
journal $G | grep 'event=listening' | sed 's/^/   /'
in_journal $G 'allowed_peer_cids=2 ' || fail_unit "$G's packaged configuration does not say allowed_peer_cids=2"

step "$G under its hardening refuses l2a (CID $cid): the packaged host-CID-only default"
l2ctl "$cid" "printf 'VMGATE/1 CONNECT 5986\r\n\r\n' | socat -t 5 - VSOCK-CONNECT:2:5500" >$T/from-l2.out 2>&1
grep -q 'VMGATE/1 200' $T/from-l2.out && fail_unit "$G answered CID $cid"
wait_for 10 "$G logged peer_refused" in_journal $G "event=peer_refused peer=vsock:$cid:" ||
  fail_unit "$G logged no event=peer_refused peer=vsock:$cid:*"

step "$G allowing CID $cid serves l2a through its unit (AF_VSOCK, loopback agent)"
sed 's/^allowed_peer_cids = \[2\]$/allowed_peer_cids = ['"$cid"']/' /etc/vmgate/guestd.toml >$T/guestd.toml
cp $T/guestd.toml /etc/vmgate/guestd.toml
systemctl restart $G || fail_unit "systemctl restart $G failed"
wait_for 30 "$G listening for CID $cid" in_journal $G "allowed_peer_cids=$cid " ||
  fail_unit "$G did not restart with allowed_peer_cids=$cid"
l2ctl "$cid" "printf 'GET /hello HTTP/1.1\r\nHost: l1\r\nConnection: close\r\n\r\n' >/tmp/get.txt
  (printf 'VMGATE/1 CONNECT 5986\r\n\r\n'; cat /tmp/get.txt) | socat -t 5 - VSOCK-CONNECT:2:5500" >$T/from-l2.out 2>&1
tr -d '\r' <$T/from-l2.out | head -n 1 | grep -q '^VMGATE/1 200' || fail_unit "from l2a: $(head -c 300 $T/from-l2.out)"
grep -q 'hello from l1' $T/from-l2.out || fail_unit "no 'hello from l1' from the agent: $(head -c 300 $T/from-l2.out)"
note "l2a -> vsock:2:5500 -> $G -> agent: $(grep 'hello from' $T/from-l2.out)"
in_journal $G "event=channel .*peer=vsock:$cid:.*status=200" || fail_unit "no event=channel ... status=200 in the journal"

step "systemd-analyze security $G: exposure <= 2.0; stop"
systemd-analyze security $G >$T/security.txt 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' $T/security.txt)
note "$(grep 'Overall exposure' $T/security.txt)"
[ -n "$exposure" ] || fail "no exposure level: $(tail -n 3 $T/security.txt)"
awk -v e="$exposure" 'BEGIN{exit !(e <= 2.0)}' || fail "exposure $exposure > 2.0"
systemctl stop $G && is_state $G inactive && [ "$(prop $G Result)" = success ] ||
  fail_unit "$G: $(prop $G ActiveState) Result=$(prop $G Result) after stop"

echo "== PASS [$LEVEL]: vmgate-host and vmgate-guest under systemd $(systemctl --version | head -n 1 | cut -d' ' -f2)"
$V destroy l2a >/dev/null 2>&1
exit 0
