# Guest-side system test: hostd -> real AF_VSOCK -> guestd -> agent, inside the
# QEMU guest started by run-in-vsock-guest.sh (busybox sh; CID 1 is the guest).
#
#   curl --> hostd tcp:127.0.0.1:8080 --(vsock:1:5500)--> guestd --> agent 127.0.0.1:15986
#
# hostd finds VM `labvm` through libvirt's test driver (test:///tmp/node.xml,
# opened in-process) and reaches it through its transport template
# `vsock:1:5500`, so every VM maps to the guest itself over vsock_loopback.
#
# Needs among the runner's FILEs: vmgate-hostd vmgate-guestd vmgate-test-agent
# curl; optional: ss (iproute2) to watch the vsock sockets themselves.
# Exit: 0 pass, 1 fail (the message says which step and why).
set -u
SIZE=67108864          # 64 MiB each way
HOSTD_HTTP=http://127.0.0.1:8080
VSOCK_PORT=5500
T=/tmp/vmgate-test
mkdir -p $T
cd $T || exit 1

step_no=0
step() { step_no=$((step_no + 1)); echo "== [$step_no] $*"; }
note() { echo "   $*"; }
show_logs() {
  for f in agent.out agent.err guestd.log hostd.log; do
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
lower() { tr 'A-F' 'a-f'; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.1 s until it succeeds,
# for at most SECONDS of guest uptime.
wait_for() {
  limit=$1; what=$2; shift 2
  start=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b - a >= l)}' && return 1
    sleep 0.1
  done
  note "$what after $(elapsed "$start") s"
}
alive() {  # alive PID NAME: fail when a daemon has exited
  kill -0 "$1" 2>/dev/null || fail "$2 exited unexpectedly"
}

for b in vmgate-hostd vmgate-guestd vmgate-test-agent curl; do
  command -v $b >/dev/null || fail "$b was not copied into the guest"
done
grep -q '^vsock_loopback ' /proc/modules || fail "vsock_loopback is not loaded"
have_ss=0
ss --vsock -l -n >/dev/null 2>&1 && have_ss=1

# ---------------------------------------------------------------------------------------
step "writing the libvirt node file and the daemons' configs"
cat >$T/node.xml <<'EOF'
<node>
  <domain type='test'>
    <name>labvm</name>
    <uuid>0d1c4a0e-7f1b-4a55-9d2e-6c1f0a7b9e01</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <devices>
      <vsock model='virtio'><cid auto='no' address='3'/></vsock>
    </devices>
  </domain>
</node>
EOF
cp $T/node.xml /tmp/node.xml
cat >$T/guestd.toml <<EOF
listen = "vsock:ANY:$VSOCK_PORT"
allowed_peer_cids = [1]      # vsock_loopback: the peer is the guest itself
allowed_ports = [5986]

[agents]
"5986" = "tcp:127.0.0.1:15986"
EOF
cat >$T/hostd.toml <<EOF
[libvirt]
uri = "test:///tmp/node.xml"

[channel]
transport = "vsock:1:$VSOCK_PORT"  # every VM maps to this guest, over real AF_VSOCK
# Pooled channels close soon after their last request, so guestd logs their
# sessions (it logs a channel when it ends) before step 8 reads its log.
pool_idle_timeout_ms = 300

[[listener]]
address = "tcp:127.0.0.1:8080"
guest_port = 5986
trusted = true
EOF

# The upload's random payload: /dev/urandom is slow under emulation (several
# seconds for 64 MiB), so make it in the background while the daemons start.
head -c $SIZE /dev/urandom >$T/up.bin &
urandom_pid=$!

# ---------------------------------------------------------------------------------------
step "starting the agent on 127.0.0.1:15986"
vmgate-test-agent --listen 127.0.0.1:15986 --name labvm >$T/agent.out 2>$T/agent.err &
agent_pid=$!
wait_for 20 "agent listening" grep -q '^listening ' $T/agent.out ||
  { alive $agent_pid agent; fail "agent did not print 'listening PORT' within 20 s"; }

step "starting guestd on vsock:ANY:$VSOCK_PORT"
vmgate-guestd --config $T/guestd.toml 2>$T/guestd.log &
guestd_pid=$!
wait_for 20 "guestd listening" grep -q 'event=listening' $T/guestd.log ||
  { alive $guestd_pid guestd; fail "guestd logged no event=listening within 20 s"; }
if [ $have_ss = 1 ]; then
  ss --vsock -l -n >$T/ss-listen.out
  grep -q ":$VSOCK_PORT " $T/ss-listen.out || { cat $T/ss-listen.out; fail "ss --vsock shows no vsock listener on port $VSOCK_PORT"; }
  note "ss --vsock: $(grep ":$VSOCK_PORT " $T/ss-listen.out | tr -s ' ')"
fi

step "starting hostd (libvirt test:///tmp/node.xml, transport vsock:1:$VSOCK_PORT)"
vmgate-hostd --config $T/hostd.toml 2>$T/hostd.log &
hostd_pid=$!
wait_for 30 "hostd listening" grep -q 'event=listening' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "hostd logged no event=listening within 30 s"; }
wait_for 30 "hostd synced with libvirt" grep -q 'event=libvirt_sync' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "hostd logged no event=libvirt_sync within 30 s (libvirt test driver not working?)"; }
note "$(grep 'event=libvirt_sync' $T/hostd.log | head -1)"
grep -Eq 'event=libvirt_sync.* domains=0( |$)' $T/hostd.log && fail "hostd's libvirt sync found no domains"
alive $agent_pid agent; alive $guestd_pid guestd

# ---------------------------------------------------------------------------------------
step "GET /hello through hostd with X-VM-Id: labvm"
out=$(curl -sS --max-time 30 -H 'X-VM-Id: labvm' -w '\n%{http_code}' $HOSTD_HTTP/hello 2>$T/curl.err) ||
  fail "curl /hello failed: $(cat $T/curl.err)"
code=$(echo "$out" | tail -n 1)
body=$(echo "$out" | sed '$d')
[ "$code" = 200 ] || fail "/hello: HTTP $code, body: $body"
[ "$body" = "hello from labvm" ] || fail "/hello: expected 'hello from labvm', got '$body'"
note "$body"

# ---------------------------------------------------------------------------------------
step "downloading $SIZE bytes (GET /bytes/$SIZE)"
t0=$(now)
code=$(curl -sS --max-time 180 -H 'X-VM-Id: labvm' -D $T/dl.headers -o $T/dl.bin \
  -w '%{http_code}' $HOSTD_HTTP/bytes/$SIZE 2>$T/curl.err) ||
  fail "curl /bytes/$SIZE failed: $(cat $T/curl.err)"
[ "$code" = 200 ] || fail "/bytes/$SIZE: HTTP $code: $(head -c 300 $T/dl.bin)"
got_size=$(wc -c <$T/dl.bin)
[ "$got_size" -eq $SIZE ] || fail "/bytes/$SIZE: received $got_size bytes"
want=$(tr -d '\r' <$T/dl.headers | awk -F': *' 'tolower($1)=="x-content-sha256"{print $2}' | lower)
[ -n "$want" ] || { cat $T/dl.headers; fail "/bytes/$SIZE: no X-Content-SHA256 header"; }
got=$(sha256sum $T/dl.bin | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "/bytes/$SIZE: sha256 $got, header says $want"
note "$SIZE bytes in $(elapsed "$t0") s, sha256 $got matches X-Content-SHA256"
rm -f $T/dl.bin

# ---------------------------------------------------------------------------------------
step "uploading $SIZE random bytes (PUT /sha256)"
wait $urandom_pid || fail "cannot write $SIZE random bytes to $T/up.bin"
[ "$(wc -c <$T/up.bin)" -eq $SIZE ] || fail "$T/up.bin is not $SIZE bytes"
want=$(sha256sum $T/up.bin | cut -d' ' -f1)
t0=$(now)
out=$(curl -sS --max-time 180 -H 'X-VM-Id: labvm' -T $T/up.bin -w '\n%{http_code}' \
  $HOSTD_HTTP/sha256 2>$T/curl.err) || fail "curl -T /sha256 failed: $(cat $T/curl.err)"
code=$(echo "$out" | tail -n 1)
body=$(echo "$out" | sed '$d')
[ "$code" = 200 ] || fail "/sha256: HTTP $code, body: $body"
# shellcheck disable=SC2086  # split "HEX BYTES" into words
set -- $body
got=$(echo "${1:-}" | lower)
[ "$got" = "$want" ] || fail "/sha256: agent saw sha256 '$got', sent $want (body: $body)"
[ "${2:-}" = "$SIZE" ] || fail "/sha256: agent saw '${2:-}' bytes, sent $SIZE (body: $body)"
note "$SIZE bytes in $(elapsed "$t0") s, agent's sha256 $got matches"
rm -f $T/up.bin

# ---------------------------------------------------------------------------------------
step "the requests went over AF_VSOCK (guestd's view of its peers)"
# hostd reuses idle channels, so the three requests may have used one channel
# or three; guestd logs a channel when it ends, which the pool's short idle
# timeout brings about soon after the upload (the last request) finished.
carried_upload() {
  grep 'event=channel' $T/guestd.log | awk -v s=$SIZE '{for (i = 1; i <= NF; i++)
    if ($i ~ /^bytes_in=/) { split($i, a, "="); if (a[2] + 0 >= s) found = 1 }} END {exit !found}'
}
wait_for 15 "guestd logged the channel that carried the upload" carried_upload ||
  fail "guestd logged no channel carrying the $SIZE-byte upload within 15 s"
grep 'event=channel' $T/guestd.log >$T/channels.log
n=$(wc -l <$T/channels.log)
vs=$(grep -c 'peer=vsock:1:[0-9]' $T/channels.log)
reused=$(grep 'event=request' $T/hostd.log | grep -c 'channel=reused' || true)
note "hostd reused a pooled channel for $reused of the 3 requests"
[ "$vs" -ge 1 ] || fail "expected channel sessions with peer=vsock:1:PORT, got $vs of $n"
[ "$vs" -eq "$n" ] || fail "some channel sessions did not come over vsock:1 ($vs of $n)"
big_out=$(awk -v s=$SIZE '{for(i=1;i<=NF;i++) if($i ~ /^bytes_out=/){split($i,a,"="); if(a[2]+0>=s) c++}} END{print c+0}' $T/channels.log)
big_in=$(awk -v s=$SIZE '{for(i=1;i<=NF;i++) if($i ~ /^bytes_in=/){split($i,a,"="); if(a[2]+0>=s) c++}} END{print c+0}' $T/channels.log)
note "$vs/$n channel sessions from peer vsock:1:*, $big_out carried >= $SIZE bytes out, $big_in >= $SIZE in"
sed 's/^/   /' $T/channels.log
[ "$big_out" -ge 1 ] || fail "no channel session carried the $SIZE-byte download"
[ "$big_in" -ge 1 ] || fail "no channel session carried the $SIZE-byte upload"

if [ $have_ss = 1 ]; then
  step "ss --vsock sees hostd's connection to guestd while a transfer is in flight"
  curl -sS --max-time 60 --limit-rate 1M -H 'X-VM-Id: labvm' -o /dev/null \
    $HOSTD_HTTP/bytes/$SIZE 2>/dev/null &
  slow_pid=$!
  seen=0
  wait_for 15 "vsock connection seen" sh -c "ss --vsock -n state established | grep -q ':$VSOCK_PORT'" && seen=1
  ss --vsock -n -a >$T/ss-all.out
  kill $slow_pid 2>/dev/null; wait $slow_pid 2>/dev/null
  [ $seen = 1 ] || { cat $T/ss-all.out; fail "no established AF_VSOCK connection to port $VSOCK_PORT during a transfer"; }
  sed 's/^/   /' $T/ss-all.out
fi

alive $agent_pid agent; alive $guestd_pid guestd; alive $hostd_pid hostd

# ---------------------------------------------------------------------------------------
step "a guestd that allows only CID 2 refuses CID 1: hostd answers 502, guestd logs it"
REFUSE_PORT=$((VSOCK_PORT + 1))
cat >$T/guestd-refuse.toml <<EOF
listen = "vsock:ANY:$REFUSE_PORT"
allowed_peer_cids = [2]      # the host only; hostd here connects from CID 1
allowed_ports = [5986]

[agents]
"5986" = "tcp:127.0.0.1:15986"
EOF
cat >$T/hostd-refuse.toml <<EOF
[libvirt]
uri = "test:///tmp/node.xml"

[channel]
transport = "vsock:1:$REFUSE_PORT"

[admin]
enabled = false              # the first hostd holds the default admin port

[[listener]]
address = "tcp:127.0.0.1:8081"
guest_port = 5986
trusted = true
EOF
vmgate-guestd --config $T/guestd-refuse.toml 2>$T/guestd-refuse.log &
guestd_refuse_pid=$!
wait_for 20 "refusing guestd listening" grep -q 'event=listening' $T/guestd-refuse.log ||
  { alive $guestd_refuse_pid "refusing guestd"; fail "refusing guestd logged no event=listening within 20 s"; }
vmgate-hostd --config $T/hostd-refuse.toml 2>$T/hostd-refuse.log &
hostd_refuse_pid=$!
wait_for 30 "second hostd synced" grep -q 'event=libvirt_sync' $T/hostd-refuse.log ||
  { alive $hostd_refuse_pid "second hostd"; fail "second hostd logged no event=libvirt_sync within 30 s"; }
out=$(curl -sS --max-time 30 -H 'X-VM-Id: labvm' -w '\n%{http_code}' http://127.0.0.1:8081/hello 2>$T/curl.err) ||
  fail "curl /hello to the second hostd failed: $(cat $T/curl.err)"
code=$(echo "$out" | tail -n 1)
body=$(echo "$out" | sed '$d')
[ "$code" = 502 ] || fail "a refused CID: HTTP $code, body: $body (expected 502)"
case "$body" in
  *"guestd not answering on cid 1 (vm labvm)"*"guestd closed the channel"*) ;;
  *) fail "a refused CID: the 502 does not say guestd closed the channel: $body" ;;
esac
note "$body"
wait_for 10 "guestd logged the refusal" grep -q 'event=peer_refused.*peer=vsock:1:' $T/guestd-refuse.log ||
  { cat $T/guestd-refuse.log; fail "guestd logged no event=peer_refused for peer vsock:1:*"; }
note "$(grep 'event=peer_refused' $T/guestd-refuse.log | head -1)"
if grep -q 'event=channel' $T/guestd-refuse.log; then
  cat $T/guestd-refuse.log
  fail "the refusing guestd served a channel from CID 1"
fi
alive $hostd_refuse_pid "second hostd"; alive $guestd_refuse_pid "refusing guestd"

# ---------------------------------------------------------------------------------------
step "no daemon logged an error"
errors=$(grep -h 'level=error' $T/hostd.log $T/guestd.log $T/hostd-refuse.log $T/guestd-refuse.log)
[ -z "$errors" ] || fail "errors logged: $(echo "$errors" | head -5)"

# ---------------------------------------------------------------------------------------
step "stopping the daemons: each exits on SIGTERM"
daemons="$hostd_pid $guestd_pid $hostd_refuse_pid $guestd_refuse_pid"
# shellcheck disable=SC2086  # one word per pid
kill $daemons $agent_pid 2>/dev/null
exited() { for pid in $daemons; do kill -0 $pid 2>/dev/null && return 1; done; return 0; }
if ! wait_for 20 "all daemons exited" exited; then
  for pid in $daemons; do
    kill -0 $pid 2>/dev/null && echo "   still running: $(tr '\0' ' ' </proc/$pid/cmdline)"
  done
  fail "a daemon did not exit within 20 s of SIGTERM"
fi
echo "== PASS: hostd -> AF_VSOCK -> guestd -> agent, /hello + $SIZE bytes each way; CID 1 refused"
exit 0
