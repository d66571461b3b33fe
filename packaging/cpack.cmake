# Packages: vmgate-host and vmgate-guest, each as .deb and .rpm, from the
# install components of packaging/CMakeLists.txt. Included last by the
# top-level CMakeLists.txt, once every target exists.
#   cmake --preset dev -B build/pkg -DCMAKE_INSTALL_PREFIX=/usr -DVMGATE_DISTRO_FLAGS=ON &&
#     cmake --build build/pkg   (or the ci preset's tree, build/ci, configured so)
#   cd build/pkg && cpack          -> build/pkg/packages/*.deb, *.rpm
# packaging/ci-install-check.sh builds, lints, installs and removes them.

include(GNUInstallDirs)

# vmgatectl is optional (tools/vmgatectl); when it is built, it ships in vmgate-host.
if(TARGET vmgatectl)
  install(TARGETS vmgatectl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT host)
  install(FILES ${PROJECT_BINARY_DIR}/packaging/man/vmgatectl.1.gz
          DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT host)
endif()

set(CPACK_PACKAGE_NAME vmgate)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "vmgate developers")
set(CPACK_PACKAGE_CONTACT "vmgate developers <vmgate@example.org>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR}/packages)
set(CPACK_GENERATOR DEB RPM)
set(CPACK_SOURCE_GENERATOR "")
set(CPACK_STRIP_FILES ON)
set(CPACK_VERBATIM_VARIABLES ON)
set(CPACK_COMPONENTS_ALL host guest)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_RPM_COMPONENT_INSTALL ON)

set(vmgate_host_summary "HTTP gateway from management apps into KVM guests (host)")
set(vmgate_host_description
    "vmgate gives management applications (WinRM / WS-Management, BITS, any
HTTP agent) a way into KVM guests that have no network path from them,
over the virtio-vsock channel every KVM host has to each of its guests.

This package runs on the KVM host: vmgate-hostd follows libvirt, accepts
requests that name a VM (CONNECT, a VM header, proxy form or a DNS-style
name) and passes each one to vmgate-guestd inside that VM. It also ships
the systemd service (not enabled on install) and its system user.")
set(vmgate_guest_summary "HTTP gateway from management apps into KVM guests (guest)")
set(vmgate_guest_description
    "vmgate gives management applications (WinRM / WS-Management, BITS, any
HTTP agent) a way into KVM guests that have no network path from them,
over the virtio-vsock channel every KVM host has to each of its guests.

This package goes into guest images: vmgate-guestd accepts channel
connections from the host only, checks the requested port against its
allowlist and relays to the agent on loopback. It also ships the systemd
service (not enabled on install).")

# --- .deb --------------------------------------------------------------------
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${VMGATE_PACKAGE_RELEASE})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies from dpkg-shlibdeps, appended to the ones below.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(deb_dir ${CMAKE_CURRENT_LIST_DIR}/deb)

set(CPACK_DEBIAN_HOST_PACKAGE_NAME vmgate-host)
set(CPACK_DEBIAN_HOST_DESCRIPTION "${vmgate_host_summary}\n${vmgate_host_description}")
# postinst creates the vmgate user with systemd-sysusers.
# procps: the unit's ExecReload= is /bin/kill -HUP.
set(CPACK_DEBIAN_HOST_PACKAGE_DEPENDS "systemd | systemd-standalone-sysusers | systemd-sysusers, procps")
set(CPACK_DEBIAN_HOST_PACKAGE_RECOMMENDS "libvirt-daemon-system")
set(CPACK_DEBIAN_HOST_PACKAGE_CONTROL_EXTRA
    ${deb_dir}/host/postinst ${deb_dir}/host/prerm ${deb_dir}/host/postrm ${deb_dir}/host/conffiles)

set(CPACK_DEBIAN_GUEST_PACKAGE_NAME vmgate-guest)
set(CPACK_DEBIAN_GUEST_DESCRIPTION "${vmgate_guest_summary}\n${vmgate_guest_description}")
set(CPACK_DEBIAN_GUEST_PACKAGE_CONTROL_EXTRA
    ${deb_dir}/guest/postinst ${deb_dir}/guest/prerm ${deb_dir}/guest/postrm ${deb_dir}/guest/conffiles)

# --- .rpm --------------------------------------------------------------------
set(CPACK_RPM_FILE_NAME RPM-DEFAULT)
set(CPACK_RPM_PACKAGE_RELEASE ${VMGATE_PACKAGE_RELEASE})
set(CPACK_RPM_PACKAGE_LICENSE Apache-2.0)
set(CPACK_RPM_PACKAGE_GROUP "System Environment/Daemons")
set(CPACK_RPM_PACKAGE_AUTOREQ ON)
# Units and configs name /usr/sbin and /etc/vmgate: not relocatable.
set(CPACK_PACKAGE_RELOCATABLE OFF)
# Stripped binaries: /usr/lib/.build-id links would point at no debug info.
set(CPACK_RPM_SPEC_MORE_DEFINE "%define _build_id_links none")
# Directories other packages own (filesystem, systemd, man-pages) stay theirs.
list(APPEND CPACK_RPM_EXCLUDE_FROM_AUTO_FILELIST_ADDITION
     /usr/sbin /usr/lib/systemd /usr/lib/systemd/system /usr/lib/sysusers.d
     /usr/share/man /usr/share/man/man1 /usr/share/man/man8
     /usr/share/lintian /usr/share/lintian/overrides)
set(rpm_dir ${CMAKE_CURRENT_LIST_DIR}/rpm)

set(CPACK_RPM_HOST_PACKAGE_NAME vmgate-host)
set(CPACK_RPM_HOST_PACKAGE_SUMMARY "${vmgate_host_summary}")
set(CPACK_RPM_HOST_PACKAGE_DESCRIPTION "${vmgate_host_description}")
set(CPACK_RPM_HOST_PACKAGE_REQUIRES_POST systemd)
set(CPACK_RPM_HOST_USER_FILELIST "%config(noreplace) /etc/vmgate/hostd.toml"
    "%exclude /usr/share/lintian/overrides/vmgate-host")
set(CPACK_RPM_HOST_POST_INSTALL_SCRIPT_FILE ${rpm_dir}/host/post.sh)
set(CPACK_RPM_HOST_PRE_UNINSTALL_SCRIPT_FILE ${rpm_dir}/host/preun.sh)
set(CPACK_RPM_HOST_POST_UNINSTALL_SCRIPT_FILE ${rpm_dir}/host/postun.sh)

set(CPACK_RPM_GUEST_PACKAGE_NAME vmgate-guest)
set(CPACK_RPM_GUEST_PACKAGE_SUMMARY "${vmgate_guest_summary}")
set(CPACK_RPM_GUEST_PACKAGE_DESCRIPTION "${vmgate_guest_description}")
set(CPACK_RPM_GUEST_USER_FILELIST "%config(noreplace) /etc/vmgate/guestd.toml"
    "%exclude /usr/share/lintian/overrides/vmgate-guest")
set(CPACK_RPM_GUEST_POST_INSTALL_SCRIPT_FILE ${rpm_dir}/guest/post.sh)
set(CPACK_RPM_GUEST_PRE_UNINSTALL_SCRIPT_FILE ${rpm_dir}/guest/preun.sh)
set(CPACK_RPM_GUEST_POST_UNINSTALL_SCRIPT_FILE ${rpm_dir}/guest/postun.sh)

include(CPack)
