# Guest-side self-test of run-in-vsock-guest.sh, independent of vmgate's daemons:
# proves that the guest has a working AF_VSOCK loopback (CID 1) by moving SIZE bytes
# each way through socat VSOCK-LISTEN / VSOCK-CONNECT:1:PORT and comparing
# SHA-256 digests (SIZE defaults to 64 MiB; ctest passes 16 MiB), and (if virsh
# was copied in) that libvirt's test driver works.
# Runs under busybox sh inside the guest; needs socat among the runner's FILEs.
set -u
SIZE=${SIZE:-67108864}
PORT=5600
step() { echo "== $*"; }
fail() { echo "FAIL: $*"; exit 1; }

step "AF_VSOCK is available"
grep -q vsock_loopback /proc/modules || fail "vsock_loopback is not loaded"
command -v socat >/dev/null || fail "socat was not copied into the guest"

step "generating $SIZE random bytes"
head -c "$SIZE" /dev/urandom >/tmp/src || fail "cannot write /tmp/src"
want=$(sha256sum /tmp/src | cut -d' ' -f1)

# retry CMD...: run CMD until it succeeds, at most 300 times 0.1 s apart (the
# listener started in the background may not be bound yet; under emulation on
# a busy host starting socat alone can take seconds, so the bound is generous)
retry() {
  i=0
  until "$@" 2>/tmp/retry.err; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/retry.err; return 1; }
    sleep 0.1
  done
}

step "guest -> vsock:1:$PORT (listener writes what it receives to a file)"
socat -u VSOCK-LISTEN:$PORT,reuseaddr OPEN:/tmp/recv,creat,trunc &
lpid=$!
t0=$(cut -d' ' -f1 /proc/uptime)
retry socat -u OPEN:/tmp/src VSOCK-CONNECT:1:$PORT || fail "VSOCK-CONNECT:1:$PORT failed"
wait $lpid || fail "listener socat failed"
t1=$(cut -d' ' -f1 /proc/uptime)
got=$(sha256sum /tmp/recv | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "upload digest mismatch: sent $want, received $got"
echo "   $SIZE bytes in $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s, sha256 $got"
rm -f /tmp/recv

step "vsock:1:$PORT -> guest (listener serves the file)"
socat -u OPEN:/tmp/src VSOCK-LISTEN:$PORT,reuseaddr &
lpid=$!
retry socat -u VSOCK-CONNECT:1:$PORT CREATE:/tmp/recv || fail "VSOCK-CONNECT:1:$PORT failed"
wait $lpid || fail "listener socat failed"
got=$(sha256sum /tmp/recv | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "download digest mismatch: served $want, received $got"
echo "   sha256 $got"
rm -f /tmp/recv /tmp/src

if command -v ss >/dev/null; then
  step "ss --vsock sees a vsock listener"
  socat VSOCK-LISTEN:$PORT,reuseaddr /dev/null &
  lpid=$!
  retry sh -c "ss --vsock -l -n | tee /tmp/ss.out | grep -q ':$PORT'" || fail "ss --vsock does not list port $PORT"
  cat /tmp/ss.out
  kill $lpid 2>/dev/null
fi

if command -v virsh >/dev/null; then
  step "libvirt test driver in the guest"
  cat >/tmp/node.xml <<'EOF'
<node>
  <domain type='test'>
    <name>labvm</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices><vsock model='virtio'><cid auto='no' address='3'/></vsock></devices>
  </domain>
</node>
EOF
  virsh -c test:///tmp/node.xml list --all || fail "virsh list failed"
  virsh -c test:///tmp/node.xml dumpxml labvm | grep "cid auto='no' address='3'" ||
    fail "test driver did not keep the vsock CID"
fi
step "PASS"
