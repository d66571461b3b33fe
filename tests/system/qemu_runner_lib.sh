# shellcheck shell=bash disable=SC2154  # me, work, qemu_pidfile, keep_log: set by the runner
# What both QEMU runners (run-in-vsock-guest.sh, run-in-kvm-host.sh) share:
# their error exits, the copy of an ELF's shared libraries into a guest root,
# and the clean-up of a run's QEMU and work directory. Sourced; the runner
# sets `me` (its name for messages) and, before install_cleanup, `work`,
# `qemu_pidfile` and `keep_log`.

die() { echo "$me: $*" >&2; exit 2; }
missing() { die "$1 not found: apt-get install --no-install-recommends $2"; }
is_elf() { [[ "$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' ')" == 7f454c46 ]]; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

copy_libs() {  # copy_libs ELF ROOT: the shared libraries (and the loader) ELF needs
  local out lib
  # A static binary makes ldd fail with "not a dynamic executable".
  out=$(ldd "$1" 2>&1) || return 0
  if grep -q 'not found' <<<"$out"; then
    die "$1: shared libraries missing on this host:"$'\n'"$(grep 'not found' <<<"$out")"
  fi
  while read -r lib; do
    [[ -e $2$lib ]] && continue
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done < <(grep -o '/[^ ]*' <<<"$out" | grep -v ':$' || true)
}

# install_cleanup INITRD: on exit, stop this run's QEMU (the one whose command
# line names INITRD, so a recycled pid is never hit), keep the console log if
# asked and not yet kept, remove the work directory; say why on SIGINT/SIGTERM.
install_cleanup() {
  cleanup_initrd=$1
  trap run_cleanup EXIT
  trap 'echo "$me: interrupted (SIGINT)" >&2; exit 130' INT
  trap 'echo "$me: terminated by SIGTERM from outside" >&2; exit 143' TERM
}
# shellcheck disable=SC2317  # called by the EXIT trap
run_cleanup() {
  local pid
  pid=$(cat "$qemu_pidfile" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
      grep -qF -- "$cleanup_initrd"; then
    kill "$pid" 2>/dev/null || true
  fi
  [[ -n ${boot_pid:-} ]] && wait "$boot_pid" 2>/dev/null
  if [[ -n $keep_log && -z ${log_copied:-} && -f $work/console.log ]]; then
    cp "$work/console.log" "$keep_log" || true
  fi
  rm -rf "$work"
}
