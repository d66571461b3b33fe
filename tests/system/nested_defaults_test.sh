# nested_defaults_test.sh — the real topology with every packaged default
# (issue 15, part 1). Runs on the level-1 KVM host that run-in-kvm-host.sh
# boots; L2 is a KVM guest with a real virtio-vsock device at CID 3:
#
#   curl --> hostd (L1, packaged hostd.toml) --vsock:3:5500--> guestd (L2, packaged
#            guestd.toml: peer CID 2 only) --> vmgate-test-agent 127.0.0.1:5986 (L2)
#
# hostd's configuration is packaging/hostd.toml with one change, the libvirt
# URI: a test-driver node file whose domain `l2` says <cid address='3'/>. Its
# transport is the default vsock:{cid}:{port} with guestd_port 5500, its
# listeners the default 127.0.0.1:5986 (wsman) and 127.0.0.1:8114 (bits).
# guestd's is guestd/guestd.toml unchanged.
#
# Environment (from the runner's --env): VMGATE_HOSTD VMGATE_HOSTD_TOML,
# optional SIZE (bytes each way, default 64 MiB).
# Exit: 0 pass, 1 fail (the message names the level and the step).
set -u
LEVEL="L1 nested"
T=/tmp/vmgate-l1/nested
mkdir -p $T && cd $T || exit 1
# shellcheck source=tests/system/kvm_host_lib.sh
. "$VMGATE_KVM_LIB"
SIZE=${SIZE:-67108864}
CID=3
HOSTD=http://127.0.0.1:5986    # the packaged wsman listener
ADMIN=http://127.0.0.1:9090    # the packaged admin listener

step "L2 boots as a KVM guest with vhost-vsock-pci guest-cid=$CID"
[ -n "${L2_INITRD:-}" ] || fail "no L2 initramfs (run-in-kvm-host.sh --l2-script)"
l2_qemu l2 $CID
head -c "$SIZE" /dev/urandom >$T/up.bin &
urandom_pid=$!

step "hostd starts with the packaged hostd.toml, libvirt URI test:///…/node.xml"
cat >$T/node.xml <<EOF
<node>
  <domain type='test'>
    <name>l2</name>
    <uuid>6f1a3c52-15a0-4c1e-9d1f-0a0000000003</uuid>
    <memory unit='MiB'>256</memory>
    <os><type>hvm</type></os>
    <devices><vsock model='virtio'><cid auto='no' address='$CID'/></vsock></devices>
  </domain>
</node>
EOF
grep -q '^uri = "qemu:///system"$' "$VMGATE_HOSTD_TOML" ||
  fail "$VMGATE_HOSTD_TOML has no line 'uri = \"qemu:///system\"' to replace"
sed "s|^uri = \"qemu:///system\"\$|uri = \"test://$T/node.xml\"|" "$VMGATE_HOSTD_TOML" >$T/hostd.toml
diff "$VMGATE_HOSTD_TOML" $T/hostd.toml | sed -n 's/^[<>]/   &/p'
"$VMGATE_HOSTD" --config $T/hostd.toml 2>$T/hostd.log &
hostd_pid=$!
wait_for 60 "hostd synced with libvirt" grep -q 'event=libvirt_sync' $T/hostd.log ||
  { alive $hostd_pid hostd; fail "no event=libvirt_sync within 60 s"; }

step "hostd maps l2 to the default transport vsock:$CID:5500"
vms=$(curl -sS --max-time 10 $ADMIN/v1/vms) || fail "admin API $ADMIN/v1/vms unreachable"
note "$vms"
case $vms in *'"transport":"vsock:'$CID':5500"'*) ;; *) fail "/v1/vms does not say transport vsock:$CID:5500" ;; esac

step "guestd in L2 answers through hostd (L2 boot, then GET /hello with X-VM-Id: l2)"
wait_for 120 "L2 console says its guestd started" grep -q 'agent and guestd started' $T/l2-l2.log ||
  { kill -0 "$(cat $T/l2-l2.pid)" 2>/dev/null || lost "L2's QEMU exited: $(cat $T/l2-l2.err)"
    lost "L2 did not finish booting within 120 s"; }
wait_for 30 "routable" curl -sf --max-time 10 -H 'X-VM-Id: l2' $HOSTD/hello ||
  fail "no 200 from l2 within 30 s of its guestd starting"
expect_http 200 "hello from l2" -H 'X-VM-Id: l2' $HOSTD/hello

step "the VM header, proxy (absolute) and CONNECT forms, and the UUID"
expect_http 200 "hello from l2" -x $HOSTD http://l2:5986/hello
last_request_has 'form=absolute' || fail "the last request is not form=absolute"
expect_http 200 "hello from l2" -p -x $HOSTD http://l2:5986/hello
last_request_has 'form=connect' || fail "the last request is not form=connect"
expect_http 200 "hello from l2" -H 'X-VM-Id: 6f1a3c52-15a0-4c1e-9d1f-0a0000000003' $HOSTD/hello

step "$SIZE bytes down (GET /bytes/$SIZE), SHA-256 against X-Content-SHA256"
code=$(curl -sS --max-time 180 -H 'X-VM-Id: l2' -D $T/dl.headers -o $T/dl.bin -w '%{http_code}' \
  $HOSTD/bytes/$SIZE 2>$T/curl.err) || fail "curl: $(cat $T/curl.err)"
[ "$code" = 200 ] || fail "HTTP $code"
want=$(tr -d '\r' <$T/dl.headers | awk -F': *' 'tolower($1)=="x-content-sha256"{print tolower($2)}')
got=$(sha256sum $T/dl.bin | cut -d' ' -f1)
[ "$(wc -c <$T/dl.bin)" -eq "$SIZE" ] || fail "received $(wc -c <$T/dl.bin) bytes"
[ -n "$want" ] && [ "$got" = "$want" ] || fail "sha256 $got, the agent says '$want'"
note "sha256 $got matches"
rm -f $T/dl.bin

step "$SIZE bytes up (PUT /sha256), the agent's SHA-256 against ours"
wait $urandom_pid || fail "cannot make $SIZE random bytes"
want=$(sha256sum $T/up.bin | cut -d' ' -f1)
http --max-time 180 -H 'X-VM-Id: l2' -T $T/up.bin $HOSTD/sha256
[ "$code" = 200 ] || fail "HTTP $code: $body $(cat $T/curl.err)"
[ "$body" = "$want $SIZE" ] || fail "the agent says '$body', we sent $want $SIZE"
note "agent: $body"
rm -f $T/up.bin

step "the channels came from the host, peer CID 2 (guestd's log in L2)"
# guestd logs a channel when it ends; hostd closes pooled channels after the
# packaged pool_idle_timeout_ms (4 s), so the upload's channel shows up soon.
upload_logged() {
  l2ctl $CID 'cat /tmp/guestd.log' >$T/guestd.log &&
    grep 'event=channel' $T/guestd.log | awk -v s=$SIZE '{for (i = 1; i <= NF; i++)
      if ($i ~ /^bytes_in=/) { split($i, a, "="); if (a[2] + 0 >= s) f = 1 }} END {exit !f}'
}
wait_for 30 "guestd logged the channel that carried the upload" upload_logged ||
  fail "guestd logged no channel carrying $SIZE bytes in within 30 s"
grep 'event=listening' $T/guestd.log | sed 's/^/   /'
grep -q 'event=listening.*allowed_peer_cids=2\( \|$\)' $T/guestd.log ||
  fail "guestd does not say allowed_peer_cids=2 (the packaged default)"
grep 'event=channel' $T/guestd.log >$T/channels.txt
sed 's/^/   /' $T/channels.txt
n=$(wc -l <$T/channels.txt)
[ "$(grep -c 'peer=vsock:2:[0-9]' $T/channels.txt)" = "$n" ] || fail "not every channel came from peer=vsock:2:*"
note "$n channel sessions, all from peer vsock:2:*"

step "a port guestd does not allow is refused (CONNECT l2:9999 -> 403)"
code=$(curl -sS --max-time 30 -p -x $HOSTD -o /dev/null -w '%{http_connect}' http://l2:9999/hello 2>$T/curl.err)
[ "$code" = 403 ] || fail "CONNECT answered $code (want 403): $(cat $T/curl.err)"
last_request_has 'port=9999 status=403.*port-not-allowed' ||
  fail "hostd's last request line is not port=9999 status=403 ... port-not-allowed"
note "403: $(grep 'event=request' $T/hostd.log | tail -n 1 | sed 's/.*reason=//')"

step "an allowed port with no agent behind it (the bits listener, 8114 -> 502)"
expect_http 502 "502" -H 'X-VM-Id: l2' http://127.0.0.1:8114/
case $body in *agent*) ;; *) fail "502 without the agent named as the reason: $body" ;; esac

step "guestd stopped in L2 -> 502; started again -> 200"
stop_out=$(l2ctl $CID '/tmp/stop-guestd; pidof vmgate-guestd || echo stopped')
[ "$(printf '%s\n' "$stop_out" | tail -n 1)" = stopped ] ||
  fail "could not stop guestd in L2: '$stop_out' $(cat $T/l2ctl.err)"
expect_http 502 "502" -H 'X-VM-Id: l2' $HOSTD/hello
l2ctl $CID '/tmp/start-guestd' || fail "could not start guestd in L2"
listening_twice() { l2ctl $CID 'grep -c event=listening /tmp/guestd.log' | grep -qx 2; }
wait_for 30 "guestd listening again" listening_twice ||
  fail "guestd did not log event=listening a second time"
expect_http 200 "hello from l2" -H 'X-VM-Id: l2' $HOSTD/hello

step "a connection from a CID other than 2 is refused (L2 dials itself: vsock_loopback, CID 1)"
# Positive control first: the same preamble from L1 (CID 2) is answered 200.
printf 'VMGATE/1 CONNECT 5986\r\n\r\n' | socat -t 5 - VSOCK-CONNECT:$CID:5500 >$T/from-l1.out 2>&1
head -n 1 $T/from-l1.out | grep -q '^VMGATE/1 200' || fail "from L1 (CID 2): '$(head -c 200 $T/from-l1.out)'"
note "from CID 2: $(head -n 1 $T/from-l1.out | tr -d '\r')"
l2ctl $CID "printf 'VMGATE/1 CONNECT 5986\r\n\r\n' | socat -t 5 - VSOCK-CONNECT:1:5500; echo socat=\$?" >$T/self.out
note "from CID 1: $(tr -d '\r' <$T/self.out | tr '\n' ' ')"
grep -q 'VMGATE/1 200' $T/self.out && fail "guestd answered a peer that is not CID 2"
refused_logged() { l2ctl $CID 'cat /tmp/guestd.log' | grep -q 'event=peer_refused.*peer=vsock:1:'; }
wait_for 10 "guestd logged peer_refused" refused_logged ||
  fail "guestd logged no event=peer_refused peer=vsock:1:*"

step "hostd and guestd still serve; their logs hold no errors"
expect_http 200 "hello from l2" -H 'X-VM-Id: l2' $HOSTD/hello
alive $hostd_pid hostd
l2ctl $CID 'cat /tmp/guestd.log' >$T/guestd.log
grep -h 'level=error' $T/hostd.log $T/guestd.log >$T/errors.txt && fail "errors logged: $(head -n 3 $T/errors.txt)"
echo "== PASS [$LEVEL]: hostd (L1) -> virtio-vsock CID $CID -> guestd (L2), packaged defaults"
kill $hostd_pid "$(cat $T/l2-l2.pid)" 2>/dev/null
exit 0
