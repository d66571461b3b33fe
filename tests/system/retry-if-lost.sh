#!/bin/bash
# Runs a nested KVM system test (run-in-kvm-host.sh ...) and, only if the
# emulated machines themselves failed (exit 125: level 1 died without a
# status, or the test found level 2's QEMU dead or never booted: a guest
# kernel panic or a QEMU error under emulation, not a step of the test
# failing), runs it once more, saying so. A failed step (exit 1..119) or a timeout (124) is never
# retried: those are what the test is for.
set -u
"$@"
rc=$?
if [[ $rc == 125 ]]; then
  echo "retry-if-lost: an emulated machine failed (not a step); running the test once more" >&2
  "$@"
  rc=$?
fi
exit "$rc"
