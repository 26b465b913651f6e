# Install rules for the two daemons and the Debian packages built from them (make deb, package
# presets deb-amd64/deb-arm64/deb-armhf on the release/aarch64/armhf builds): one package per
# daemon, as CPack components
#   agent     -> vantage-agent:     /usr/bin/vantage-agent, its unit, /etc/vantage/agent.toml
#   collector -> vantage-collector: /usr/bin/vantage-collector, its unit, /etc/vantage/collector.toml
# The units' install rules are in platform/CMakeLists.txt (same components).
include(GNUInstallDirs)

install(TARGETS vantage-agent RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT agent)
install(TARGETS vantage-collector RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT collector)
# CMAKE_INSTALL_FULL_SYSCONFDIR is /etc for the prefix /usr (GNUInstallDirs' special case), where
# the units' ExecStart= looks for the files.
install(FILES packaging/examples/agent.toml
        DESTINATION "${CMAKE_INSTALL_FULL_SYSCONFDIR}/vantage" COMPONENT agent)
install(FILES packaging/examples/collector.toml
        DESTINATION "${CMAKE_INSTALL_FULL_SYSCONFDIR}/vantage" COMPONENT collector)
# The units' Documentation= points here.
install(FILES README.md DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/vantage-agent" COMPONENT agent)
install(FILES README.md DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/vantage-collector" COMPONENT collector)

# VANTAGE_DEB_ARCH, the Debian architecture the toolchain builds for (not the build host's), is
# set by cmake/Arches.cmake from toolchains/arches.env.

set(VANTAGE_PACKAGE_DIR "${PROJECT_BINARY_DIR}/packages" CACHE PATH "Where cpack writes the .deb files")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME vantage)
set(CPACK_PACKAGE_VENDOR "Vantage")
set(CPACK_PACKAGE_CONTACT "Vantage maintainers <vantage@example.net>")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_OUTPUT_FILE_PREFIX "${VANTAGE_PACKAGE_DIR}")
# cmake_install.cmake strips with CMAKE_STRIP, which a toolchain file's cross compiler brings
# along (aarch64-linux-gnu-strip, ...): the host's strip would not understand ARM objects.
set(CPACK_STRIP_FILES ON)
if(CMAKE_CROSSCOMPILING AND NOT CMAKE_STRIP MATCHES "${CMAKE_LIBRARY_ARCHITECTURE}-strip$")
  message(WARNING "CMAKE_STRIP is '${CMAKE_STRIP}', not the ${CMAKE_LIBRARY_ARCHITECTURE} one: "
                  "packaged binaries may be left unstripped")
endif()
set(CPACK_COMPONENTS_ALL agent collector)
set(CPACK_DEB_COMPONENT_INSTALL ON)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # <package>_<version>_<debarch>.deb
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE "${VANTAGE_DEB_ARCH}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://vantage.example.net/")
# Control files keep Debian's modes (0755 scripts, 0644 conffiles) whatever the checkout's are.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
# Depends comes from packaging/deb/depends.sh at cpack time (cmake/PackagingDepends.cmake.in),
# not dpkg-shlibdeps, which cannot see the cross libraries as target packages.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS OFF)

# Each description's first line is the package's Debian synopsis.
set(CPACK_DEBIAN_AGENT_PACKAGE_NAME vantage-agent)
set(CPACK_DEBIAN_AGENT_DESCRIPTION
    "Vantage edge telemetry agent: latency probes and host load for edge PoPs\n\
Measures round-trip time, jitter and loss to peer PoPs and game servers\n\
(UDP echo, TCP, ICMP), samples the host's load, answers peers' probes and\n\
ships spooled batches to vantage-collector over mutually authenticated TLS\n\
(Mbed TLS 3.6, linked statically). Runs as a hardened systemd service with\n\
a dynamic user; configured in /etc/vantage/agent.toml.")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA
    "${PROJECT_SOURCE_DIR}/packaging/deb/agent/conffiles;${PROJECT_SOURCE_DIR}/packaging/deb/postinst;${PROJECT_SOURCE_DIR}/packaging/deb/prerm;${PROJECT_SOURCE_DIR}/packaging/deb/postrm")

set(CPACK_DEBIAN_COLLECTOR_PACKAGE_NAME vantage-collector)
set(CPACK_DEBIAN_COLLECTOR_DESCRIPTION
    "Vantage telemetry collector: receives and stores the agents' batches\n\
Accepts vantage-agent connections over mutual TLS, verifies and\n\
de-duplicates their batches and stores them in SQLite (linked statically).\n\
Runs as a hardened systemd service with a dynamic user; configured in\n\
/etc/vantage/collector.toml.")
set(CPACK_DEBIAN_COLLECTOR_PACKAGE_CONTROL_EXTRA
    "${PROJECT_SOURCE_DIR}/packaging/deb/collector/conffiles;${PROJECT_SOURCE_DIR}/packaging/deb/postinst;${PROJECT_SOURCE_DIR}/packaging/deb/prerm;${PROJECT_SOURCE_DIR}/packaging/deb/postrm")

# Read by cpack before it packages: computes each package's Depends from the built binaries.
# readelf reads any architecture's ELF; the toolchain's own one is used when CMake found it.
if(CMAKE_READELF)
  set(VANTAGE_READELF "${CMAKE_READELF}")
else()
  find_program(VANTAGE_READELF readelf REQUIRED)
endif()
configure_file("${CMAKE_CURRENT_LIST_DIR}/PackagingDepends.cmake.in"
               "${PROJECT_BINARY_DIR}/PackagingDepends.cmake" @ONLY)
file(GENERATE OUTPUT "${PROJECT_BINARY_DIR}/PackagingTargets.cmake" CONTENT
"set(VANTAGE_AGENT_BINARY \"$<TARGET_FILE:vantage-agent>\")
set(VANTAGE_COLLECTOR_BINARY \"$<TARGET_FILE:vantage-collector>\")
")
set(CPACK_PROJECT_CONFIG_FILE "${PROJECT_BINARY_DIR}/PackagingDepends.cmake")

include(CPack)
