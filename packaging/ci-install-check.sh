#!/bin/bash
# Builds the vmgate-host and vmgate-guest packages (.deb and .rpm), lints the
# .debs, inspects the .rpms, installs both .debs with apt (pulling their
# dependencies), checks the installed daemons, configs, users and units, then
# purges them and checks that nothing is left. For CI: a fresh Debian 12, as
# root. Safe to run again (it purges what an earlier run left installed).
#
#   packaging/ci-install-check.sh [BUILD_DIR]      (default: build/pkg)
#
# BUILD_DIR may be a tree configured with VMGATE_DISTRO_FLAGS=ON and the /usr
# prefix (the ci preset: scripts/test passes build/ci), packaged as built;
# otherwise it is configured and built here with those flags.
#
# Debian packages it installs when missing: the build block of
# scripts/debian-packages.txt, and for packaging:
packaging_packages=(lintian rpm systemd man-db file dpkg-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/pkg}
packages=(vmgate-host vmgate-guest)
daemons=(/usr/sbin/vmgate-hostd /usr/sbin/vmgate-guestd)
units=(/usr/lib/systemd/system/vmgate-hostd.service /usr/lib/systemd/system/vmgate-guestd.service)
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 -y -qq "$@"; }

step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "ci-install-check: $*" >&2
  exit 1
}

status() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true; }
installed() { [[ $(status "$1") == installed ]]; }
# Installed, or removed with its conffiles still there.
known() { [[ -n $(status "$1") && $(status "$1") != not-installed ]]; }
purge_ours() {
  local present=()
  for p in "${packages[@]}"; do
    if known "$p"; then present+=("$p"); fi
  done
  if ((${#present[@]})); then apt_get purge "${present[@]}" >/dev/null; fi
}

[[ $(id -u) == 0 ]] || fail "run as root: it installs and removes packages"

step "dependencies"
mapfile -t build_packages < <(awk '/^# build/ {on = 1; next} /^#/ {on = 0} on && NF {print $1}' \
  scripts/debian-packages.txt)
missing=()
for p in "${build_packages[@]}" "${packaging_packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt_get update
  apt_get install --no-install-recommends "${missing[@]}" >/dev/null
fi
# A run that stopped half-way may have left our packages installed.
purge_ours

step "build ($build)"
# Distribution build flags (fortify, stack protector, relro/now), as a
# Debian package build would use them: VMGATE_DISTRO_FLAGS. A tree already
# configured so (the ci preset's, which scripts/test has built and tested) is
# packaged as it is, so the packages hold the binaries the tests ran; any
# other is configured here, without tests.
cache=$build/CMakeCache.txt
if [[ -f $cache ]]; then
  grep -qE '^VMGATE_DISTRO_FLAGS:[A-Z]+=ON$' "$cache" ||
    fail "$build is not configured with VMGATE_DISTRO_FLAGS=ON (the ci preset is): its binaries lack the distribution's build flags"
  grep -qE '^CMAKE_INSTALL_PREFIX:[A-Z]+=/usr$' "$cache" ||
    fail "$build is not configured with CMAKE_INSTALL_PREFIX=/usr (the ci preset is)"
  echo "packaging the configured tree $build"
else
  cmake --preset dev -B "$build" -DVMGATE_TESTS=OFF -DVMGATE_DISTRO_FLAGS=ON \
    -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
fi
# Nothing to do when it is built already.
cmake --build "$build" -j "$(nproc)"

step "cpack"
rm -rf "$build/packages"
(cd "$build" && cpack -G "DEB;RPM") | grep -E 'CPack: - package: |CPack Error' || true
shopt -s nullglob
debs=("$build"/packages/vmgate-{host,guest}_*.deb)
rpms=("$build"/packages/vmgate-{host,guest}-*.rpm)
shopt -u nullglob
((${#debs[@]} == 2)) || fail "expected 2 .deb in $build/packages, found: ${debs[*]:-none}"
((${#rpms[@]} == 2)) || fail "expected 2 .rpm in $build/packages, found: ${rpms[*]:-none}"

# systemd-analyze verify, run once before installing anything and once on the
# installed system. It warns about problems it only prints (exit status 0),
# so any line naming our units fails the check.
verify_units() {
  local log
  log=$(mktemp)
  if ! SYSTEMD_LOG_LEVEL=notice "$@" 2>&1 | tee "$log"; then
    rm -f "$log"
    fail "systemd-analyze verify failed"
  fi
  if grep -qE 'vmgate-(hostd|guestd)\.service' "$log"; then
    rm -f "$log"
    fail "systemd-analyze verify reported problems with our units"
  fi
  rm -f "$log"
}

step "systemd units, staged (before installing)"
# A root holding the packages' files and this system's own units (verify
# needs sysinit.target and friends), so that --root finds our binaries;
# MANPATH lets it find our man pages for Documentation=.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/usr/lib/systemd/system"
cp -r /lib/systemd/system/. "$stage/usr/lib/systemd/system/"
# hostd's ExecReload= runs /bin/kill (procps, a dependency of the package).
mkdir -p "$stage/bin"
cp /bin/kill "$stage/bin/kill"
for component in host guest; do
  DESTDIR=$stage cmake --install "$build" --prefix /usr --component "$component" >/dev/null
done
verify_units env MANPATH="$stage/usr/share/man" systemd-analyze --root="$stage" verify \
  vmgate-hostd.service vmgate-guestd.service
echo "systemd-analyze verify (staged): clean"

step "lintian (errors fail)"
lintian --fail-on error --tag-display-limit 0 "${debs[@]}" 2> >(grep -v "root privileges" >&2)
echo "lintian: no errors"

step "rpm"
for rpm in "${rpms[@]}"; do
  rpm -qip "$rpm"
  rpm -qlp "$rpm"
  echo "requires:"
  rpm -qp --requires "$rpm" | sed 's/^/  /'
  rpm -qp --configfiles "$rpm" | grep -qx '/etc/vmgate/\(hostd\|guestd\).toml' ||
    fail "$rpm: the configuration is not marked %config"
  rpm -qp --scripts "$rpm" | grep -q 'postinstall scriptlet' || fail "$rpm: no %post scriptlet"
done

step "install (apt, with dependencies)"
apt_get install --no-install-recommends "$(realpath "${debs[0]}")" "$(realpath "${debs[1]}")" >/dev/null
for p in "${packages[@]}"; do
  installed "$p" || fail "$p is not installed"
  dpkg-query -W -f='${Package} ${Version}: ${Depends}\n' "$p"
done
dpkg-query -W -f='${Conffiles}\n' vmgate-host | grep -q ' /etc/vmgate/hostd.toml ' ||
  fail "vmgate-host: /etc/vmgate/hostd.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' vmgate-guest | grep -q ' /etc/vmgate/guestd.toml ' ||
  fail "vmgate-guest: /etc/vmgate/guestd.toml is not a conffile"

step "installed daemons and their packaged configs"
/usr/sbin/vmgate-hostd --version
/usr/sbin/vmgate-guestd --version
/usr/sbin/vmgate-hostd --config /etc/vmgate/hostd.toml --check-config
/usr/sbin/vmgate-guestd --config /etc/vmgate/guestd.toml --check-config
# As the users the units run them as: vmgate, and a dynamic user (nobody
# stands in for it) — the configs must be readable by them.
getent passwd vmgate >/dev/null || fail "postinst did not create the vmgate user"
id -nG vmgate | tr ' ' '\n' | grep -qx libvirt || fail "vmgate is not in the libvirt group"
setpriv --reuid=vmgate --regid=vmgate --init-groups \
  /usr/sbin/vmgate-hostd --config /etc/vmgate/hostd.toml --check-config
setpriv --reuid=nobody --regid=nogroup --clear-groups \
  /usr/sbin/vmgate-guestd --config /etc/vmgate/guestd.toml --check-config

step "systemd units, installed"
# verify also checks each Documentation=man: page; an image that keeps no
# man pages (dpkg path-exclude) cannot have them checked.
man_check=yes
man -w vmgate-hostd vmgate-guestd >/dev/null 2>&1 || {
  man_check=no
  echo "man pages not installed here (dpkg path-exclude?): not checking Documentation="
}
verify_units systemd-analyze verify --man="$man_check" "${units[@]}"
echo "systemd-analyze verify (installed): clean"

step "purge"
apt_get purge "${packages[@]}" >/dev/null
for p in "${packages[@]}"; do
  if known "$p"; then fail "$p is still known to dpkg: $(status "$p")"; fi
done
left=()
for f in "${daemons[@]}" /usr/bin/vmgatectl "${units[@]}" /usr/lib/sysusers.d/vmgate.conf /etc/vmgate \
  /var/lib/vmgate /usr/share/doc/vmgate-host /usr/share/doc/vmgate-guest; do
  if [[ -e $f || -L $f ]]; then left+=("$f"); fi
done
shopt -s nullglob
left+=(/usr/sbin/vmgate* /etc/systemd/system/*/vmgate-* /etc/systemd/system/vmgate-*)
shopt -u nullglob
((${#left[@]} == 0)) || fail "left behind after purge: ${left[*]}"
echo "purged: nothing left (the vmgate system user stays, as Debian policy asks)"

echo
echo "ci-install-check: OK (${debs[*]##*/} ${rpms[*]##*/})"
