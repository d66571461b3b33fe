# Guest-side system test: traffic a guest starts, over real AF_VSOCK, inside
# the QEMU guest started by run-in-vsock-guest.sh (busybox sh; CID 1 is the
# guest itself, so every peer hostd sees is CID 1).
#
#   vmgate-guestd send / curl -x guestd --(vsock:1:5501)--> hostd [inbound] --> host service
#
# hostd knows the caller only by the kernel's peer CID: first no VM holds
# CID 1 and the request is refused as unknown; then [inbound.peer_cids] maps
# CID 1 to the lab VM (by SIGHUP) and the service sees Forwarded and
# X-VM-Uuid naming it, and a JOIN is recorded for it.
#
# Needs among the runner's FILEs: vmgate-hostd vmgate-guestd vmgate-test-agent curl.
# Exit: 0 pass, 1 fail (the message says which step and why).
set -u
INBOUND_PORT=5501
LAB_UUID=0d1c4a0e-7f1b-4a55-9d2e-6c1f0a7b9e01
T=/tmp/vmgate-guest-traffic
mkdir -p $T
cd $T || exit 1

step_no=0
step() { step_no=$((step_no + 1)); echo "== [$step_no] $*"; }
note() { echo "   $*"; }
show_logs() {
  for f in service.out service.err guestd.log hostd.log cli.out cli.err; do
    [ -s $T/$f ] || continue
    echo "---- $f (last 25 lines)"
    tail -n 25 $T/$f
  done
}
fail() {
  echo "FAIL [$step_no]: $* (guest uptime $(now) s)"
  show_logs
  exit 1
}
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
wait_for() {
  limit=$1; what=$2; shift 2
  start=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b - a >= l)}' && return 1
    sleep 0.1
  done
  note "$what after $(elapsed "$start") s"
}
alive() { kill -0 "$1" 2>/dev/null || fail "$2 exited unexpectedly"; }

for b in vmgate-hostd vmgate-guestd vmgate-test-agent curl; do
  command -v $b >/dev/null || fail "$b was not copied into the guest"
done
grep -q '^vsock_loopback ' /proc/modules || fail "vsock_loopback is not loaded"

# ---------------------------------------------------------------------------------------
step "writing the libvirt node file and the daemons' configs"
cat >$T/node.xml <<EOF
<node>
  <domain type='test'>
    <name>labvm</name>
    <uuid>$LAB_UUID</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <devices>
      <vsock model='virtio'><cid auto='no' address='3'/></vsock>
    </devices>
  </domain>
</node>
EOF
write_hostd_config() {  # write_hostd_config [PEER_CIDS_SECTION]
  cat >$T/hostd.toml <<EOF
[libvirt]
uri = "test://$T/node.xml"

[inbound]
listen = "vsock:ANY:$INBOUND_PORT"

[host_services]
monitor = "tcp:127.0.0.1:19000"

[groups.joinable]
web = ["labvm"]

[directory]
state_file = "$T/directory-state.json"

[[listener]]
address = "tcp:127.0.0.1:8080"
guest_port = 5986
trusted = true
${1:-}
EOF
}
write_hostd_config
cat >$T/guestd.toml <<EOF
listen = "vsock:ANY:5500"
allowed_peer_cids = [1]

[outbound]
listen = "tcp:127.0.0.1:5580"
hostd = "vsock:1:$INBOUND_PORT"   # the host is CID 2 in a real guest; here the guest itself
EOF

step "starting the host service (a test agent on 127.0.0.1:19000) and guestd"
vmgate-test-agent --listen 127.0.0.1:19000 --name host-monitor >$T/service.out 2>$T/service.err &
service_pid=$!
wait_for 20 "service listening" grep -q '^listening ' $T/service.out ||
  { alive $service_pid service; fail "the service did not print 'listening PORT'"; }
vmgate-guestd --config $T/guestd.toml 2>$T/guestd.log &
guestd_pid=$!
wait_for 20 "guestd's outbound proxy listening" grep -q 'event=outbound_listening' $T/guestd.log ||
  { alive $guestd_pid guestd; fail "guestd logged no event=outbound_listening within 20 s"; }

step "starting hostd with [inbound] listen = vsock:ANY:$INBOUND_PORT"
vmgate-hostd --config $T/hostd.toml 2>$T/hostd.log &
hostd_pid=$!
wait_for 30 "hostd's guest listener up" grep -q 'event=guest_listening' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "hostd logged no event=guest_listening within 30 s"; }
wait_for 30 "hostd synced with libvirt" grep -q 'event=libvirt_sync' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "hostd logged no event=libvirt_sync within 30 s"; }

# ---------------------------------------------------------------------------------------
step "a caller whose peer CID no VM holds is refused (cid 1 is not labvm's 3)"
vmgate-guestd send host:monitor --path /hello --config $T/guestd.toml >$T/cli.out 2>$T/cli.err &&
  fail "send from an unknown CID succeeded: $(cat $T/cli.out)"
grep -q "refused (403 unknown-vm).*no vm holds cid 1" $T/cli.err ||
  fail "the refusal does not name the unknown CID: $(cat $T/cli.err)"
note "$(cat $T/cli.err)"
grep -q 'event=guest_refused.*via="vsock cid 1"' $T/hostd.log ||
  fail "hostd logged no guest_refused for vsock cid 1"

# ---------------------------------------------------------------------------------------
step "SIGHUP with [inbound.peer_cids] \"1\" = \"labvm\""
write_hostd_config '[inbound.peer_cids]
"1" = "labvm"'
# The listener is restart-only; the aliases follow the reload.
reloads=$(grep -c 'event=config_reloaded' $T/hostd.log)
kill -HUP $hostd_pid
wait_for 20 "hostd reloaded" sh -c "[ \$(grep -c 'event=config_reloaded' $T/hostd.log) -gt $reloads ]" ||
  fail "hostd logged no second config_reloaded"

step "vmgate-guestd send host:monitor: the service sees labvm in Forwarded and X-VM-Uuid"
vmgate-guestd send host:monitor --path /echo-headers --config $T/guestd.toml \
  --header 'Forwarded: for="vm:spoofed"' >$T/cli.out 2>$T/cli.err ||
  fail "send failed: $(cat $T/cli.err)"
grep -q '^Forwarded: for="vm:labvm"' $T/cli.out || fail "no Forwarded for labvm: $(cat $T/cli.out)"
grep -q "^X-VM-Uuid: $LAB_UUID" $T/cli.out || fail "no X-VM-Uuid of labvm: $(cat $T/cli.out)"
grep -q 'spoofed' $T/cli.out && fail "the guest's own Forwarded reached the service"
sed 's/^/   /' $T/cli.out

step "curl through guestd's outbound proxy: http://monitor.host/hello"
body=$(curl -sS --max-time 30 -x http://127.0.0.1:5580 http://monitor.host/hello 2>$T/curl.err) ||
  fail "curl -x failed: $(cat $T/curl.err)"
[ "$body" = "hello from host-monitor" ] || fail "expected 'hello from host-monitor', got '$body'"
note "$body"
# hostd logs guest_request when the exchange ends, which can be just after
# curl has the answer (a refusal is logged before it is written): wait for it.
wait_for 10 "hostd logged guest_request" grep -q 'event=guest_request.*vm=labvm.*to=host:monitor' $T/hostd.log ||
  fail "hostd logged no guest_request from labvm to host:monitor"

step "vmgate-guestd join web: hostd records it for labvm, shown by /v1/groups"
vmgate-guestd join web --config $T/guestd.toml >$T/cli.out 2>$T/cli.err ||
  fail "join failed: $(cat $T/cli.err)"
[ "$(cat $T/cli.out)" = "joined web" ] || fail "join printed '$(cat $T/cli.out)'"
curl -sS --max-time 30 http://127.0.0.1:9090/v1/groups >$T/groups.json 2>$T/curl.err ||
  fail "GET /v1/groups failed: $(cat $T/curl.err)"
tr -d ' \n' <$T/groups.json | grep -q '"name":"labvm"[^]]*"from":"guest_join"\|"from":"guest_join"[^]]*"name":"labvm"' ||
  fail "/v1/groups does not show labvm joined to web: $(cat $T/groups.json)"
grep -q "$LAB_UUID" $T/directory-state.json || fail "the state file does not hold labvm's join"
note "$(grep 'event=guest_membership' $T/hostd.log | head -1)"
vmgate-guestd leave web --config $T/guestd.toml >$T/cli.out 2>$T/cli.err ||
  fail "leave failed: $(cat $T/cli.err)"
grep -q "$LAB_UUID" $T/directory-state.json && fail "the state file still holds labvm's join after LEAVE"

# ---------------------------------------------------------------------------------------
step "no daemon logged an error"
errors=$(grep -h 'level=error' $T/hostd.log $T/guestd.log)
[ -z "$errors" ] || fail "errors logged: $(echo "$errors" | head -5)"

step "stopping the daemons: each exits on SIGTERM"
kill $hostd_pid $guestd_pid $service_pid 2>/dev/null
exited() { for pid in $hostd_pid $guestd_pid; do kill -0 $pid 2>/dev/null && return 1; done; return 0; }
wait_for 20 "all daemons exited" exited || fail "a daemon did not exit within 20 s of SIGTERM"
echo "== PASS: guest -> AF_VSOCK -> hostd -> host service and JOIN, caller known by peer CID only"
exit 0
