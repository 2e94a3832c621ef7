# `cmake --install` into a fresh prefix, then the installed programs run from there: ntkd
# and ntk-replay find the installed libntkcore through their RUNPATH ($ORIGIN/../lib),
# not the build tree's, and the docs, the systemd unit and the Python client are in place.
#   cmake -DBUILD_DIR=<build> -DPREFIX=<scratch prefix> -DPYTHON=<python3> -P test_install.cmake
foreach(var BUILD_DIR PREFIX PYTHON)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${PREFIX})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}):\n${out}${err}")
endif()

include(GNUInstallDirs)
foreach(f ${CMAKE_INSTALL_BINDIR}/ntkd ${CMAKE_INSTALL_BINDIR}/ntk-replay
          ${CMAKE_INSTALL_BINDIR}/ntk-client ${CMAKE_INSTALL_BINDIR}/ntk-kernel
          ${CMAKE_INSTALL_BINDIR}/ntk-accuracy share/doc/ntkstream/README.md
          share/doc/ntkstream/examples/ntkd.service share/doc/ntkstream/examples/ntkd.textproto
          share/ntkstream/python/ntk_client.py share/ntkstream/python/ntk/v1/request_pb2.py)
  if(NOT EXISTS ${PREFIX}/${f})
    message(FATAL_ERROR "not installed: ${PREFIX}/${f}")
  endif()
endforeach()

# The installed programs run, and resolve libntkcore inside the prefix (ldd names the
# file the loader picks: lib/ or its glibc-hwcaps/x86-64-v3/ copy).
foreach(prog ntkd ntk-replay)
  set(bin ${PREFIX}/${CMAKE_INSTALL_BINDIR}/${prog})
  execute_process(COMMAND ${bin} --version RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "^${prog} [0-9.]+ \\(ntk::core: ")
    message(FATAL_ERROR "${bin} --version: exit ${rc}\n${out}${err}")
  endif()
  execute_process(COMMAND ldd ${bin} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(out MATCHES "libntkcore")  # a static core (NTK_HWCAPS=OFF) links into the program
    string(REGEX MATCH "libntkcore[^\n]*=> ([^ \n]+)" line "${out}")
    set(resolved ${CMAKE_MATCH_1})
    file(REAL_PATH ${PREFIX} real_prefix)
    file(REAL_PATH "${resolved}" real_resolved)
    string(FIND "${real_resolved}" "${real_prefix}/" at)
    if(NOT at EQUAL 0)
      message(FATAL_ERROR "${bin} loads libntkcore from ${resolved}, outside ${PREFIX}:\n${out}")
    endif()
  endif()
endforeach()

execute_process(COMMAND ${PYTHON} ${PREFIX}/share/ntkstream/python/ntk_client.py --help
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "installed ntk_client.py --help: exit ${rc}\n${out}${err}")
endif()
file(REMOVE_RECURSE ${PREFIX})
