# guest_l2.sh — what a level-2 KVM guest runs at boot (busybox sh, in the
# initramfs run-in-kvm-host.sh builds): the test agent on 127.0.0.1:5986,
# vmgate-guestd with its packaged configuration (/opt/vmgate/guestd.toml is
# guestd/guestd.toml as shipped: vsock:ANY:5500, peer CID 2 only, ports 5986
# and 8114), and a control listener on vsock port 5600 through which the test
# on L1 runs commands here (kvm_host_lib.sh: l2ctl).
#
# Nothing listens on 8114: a request for it is the "agent unreachable" case.
# The guest's name (the agent answers "hello from NAME") comes from the
# kernel command line, vmgate.name=NAME.
name=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vmgate\.name=//p')
name=${name:-l2}
cd /tmp || exit 1

cat >/tmp/start-guestd <<'EOF'
#!/bin/sh
# Detached from the control connection, so that it outlives it.
setsid vmgate-guestd --config /opt/vmgate/guestd.toml </dev/null >/dev/null 2>>/tmp/guestd.log &
EOF
cat >/tmp/stop-guestd <<'EOF'
#!/bin/sh
pid=$(pidof vmgate-guestd) || exit 0
kill $pid
while kill -0 $pid 2>/dev/null; do sleep 0.1; done
EOF
chmod +x /tmp/start-guestd /tmp/stop-guestd

setsid vmgate-test-agent --listen 127.0.0.1:5986 --name "$name" </dev/null >/tmp/agent.log 2>&1 &
/tmp/start-guestd
echo "L2 $name: agent and guestd started"
# The control listener: each connection is one shell reading commands. Once
# the commands are in, socat waits for the shell's output for up to -t seconds
# (its default is 0.5): a command that waits, as stop-guestd does for
# guestd's drain, would otherwise lose its output and its exit.
exec socat -t 60 VSOCK-LISTEN:5600,reuseaddr,fork SYSTEM:'cd /tmp; exec sh 2>&1'
