# Install rules for the two daemons and the Debian packages built from them (make deb, package
# presets deb-amd64/deb-arm64/deb-armhf on the release/aarch64/armhf builds): one package per
# daemon, as CPack components
#   agent     -> vantage-agent:     /usr/bin/vantage-agent, its unit, /etc/vantage/agent.toml
#   collector -> vantage-collector: /usr/bin/vantage-collector, its unit, /etc/vantage/collector.toml
include(GNUInstallDirs)

install(TARGETS vantage-agent RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT agent)
install(TARGETS vantage-collector RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT collector)
# The hardened service units (packaging/systemd). A relative directory lands under
# CMAKE_INSTALL_PREFIX; packagers pass their distribution's path (the .deb presets:
# /lib/systemd/system) instead of the build probing the build host's systemd, which need not be
# the target's.
set(VANTAGE_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "Where the systemd service units are installed (relative to CMAKE_INSTALL_PREFIX, or absolute)")
install(FILES packaging/systemd/vantage-agent.service DESTINATION "${VANTAGE_SYSTEMD_UNIT_DIR}" COMPONENT agent)
install(FILES packaging/systemd/vantage-collector.service
        DESTINATION "${VANTAGE_SYSTEMD_UNIT_DIR}" COMPONENT collector)
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

# What Debian asks of each package beside the README: the copyright file (DEP-5), the changelog
# (changelog.gz: a version without a Debian revision is a native package), a manual page per
# daemon, both gzipped -9n (lintian checks the compression), and the lintian override that gives
# the reason for the statically linked Mbed TLS. A release bumps the project version and adds a
# packaging/deb/changelog entry together.
set(vantage_debian_dir "${PROJECT_BINARY_DIR}/debian")
file(STRINGS packaging/deb/changelog vantage_changelog_head LIMIT_COUNT 1)
if(NOT vantage_changelog_head MATCHES "^vantage \\(${PROJECT_VERSION}\\) ")
  message(FATAL_ERROR "packaging/deb/changelog: the latest entry is '${vantage_changelog_head}', "
                      "not version ${PROJECT_VERSION}")
endif()
file(STRINGS packaging/deb/changelog vantage_changelog_trailer REGEX "^ -- " LIMIT_COUNT 1)
string(REGEX MATCH "[0-9]+ [A-Z][a-z]+ [0-9]+" vantage_release_date "${vantage_changelog_trailer}")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/packaging/deb/changelog")
file(MAKE_DIRECTORY "${vantage_debian_dir}")
execute_process(COMMAND gzip -9nc "${PROJECT_SOURCE_DIR}/packaging/deb/changelog"
                OUTPUT_FILE "${vantage_debian_dir}/changelog.gz" COMMAND_ERROR_IS_FATAL ANY)
# The manual pages come from the built binaries' --help and --config-reference (see
# packaging/deb/manpage.sh), run at install time: under the cross-compiling emulator for ARM.
set(vantage_run_binary "")
foreach(word IN LISTS CMAKE_CROSSCOMPILING_EMULATOR)
  string(APPEND vantage_run_binary " [==[${word}]==]")
endforeach()
foreach(daemon IN ITEMS agent collector)
  string(TOUPPER "${daemon}" component)
  set(package "vantage-${daemon}")
  install(FILES packaging/deb/copyright "${vantage_debian_dir}/changelog.gz"
          DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/${package}" COMPONENT ${daemon})
  configure_file(packaging/deb/lintian-overrides.in "${vantage_debian_dir}/${package}.lintian-overrides" @ONLY)
  install(FILES "${vantage_debian_dir}/${package}.lintian-overrides" RENAME "${package}"
          DESTINATION "${CMAKE_INSTALL_DATADIR}/lintian/overrides" COMPONENT ${daemon})
  # The page's NAME line is the package's synopsis, its DESCRIPTION the package's description.
  set(description "${CPACK_DEBIAN_${component}_DESCRIPTION}")
  string(FIND "${description}" "\n" newline)
  string(SUBSTRING "${description}" 0 ${newline} summary)
  math(EXPR newline "${newline} + 1")
  string(SUBSTRING "${description}" ${newline} -1 description)
  string(REPLACE "\n" " " description "${description}")
  set(page "${vantage_debian_dir}/${package}.8")
  install(CODE "execute_process(COMMAND sh [==[${PROJECT_SOURCE_DIR}/packaging/deb/manpage.sh]==] [==[${page}]==] 8
    [==[${vantage_release_date}]==] ${PROJECT_VERSION} [==[${summary}]==] [==[${description}]==]
    [==[${PROJECT_SOURCE_DIR}/packaging/systemd/${package}.service]==] --${vantage_run_binary} [==[$<TARGET_FILE:${package}>]==]
    COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND gzip -9nf [==[${page}]==] COMMAND_ERROR_IS_FATAL ANY)" COMPONENT ${daemon})
  install(FILES "${page}.gz" DESTINATION "${CMAKE_INSTALL_MANDIR}/man8" COMPONENT ${daemon})
endforeach()

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
