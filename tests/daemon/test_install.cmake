# `cmake --install` into a fresh prefix, then the installed programs run from there: ntkd
# and ntk-replay find the installed libntkcore through their RUNPATH ($ORIGIN/../lib),
# not the build tree's, and the docs, the systemd unit and the Python client are in place.
# With CONSUMER, a separate project builds against the prefix as the README says
# (find_package(ntkstream), ntk::core) and runs.
#   cmake -DBUILD_DIR=<build> -DPREFIX=<scratch prefix> -DPYTHON=<python3>
#         [-DCONSUMER=1 -DGENERATOR=<generator> -DCXX=<compiler> -DEIGEN_INCLUDE=<dirs>]
#         -P test_install.cmake
# With CONSUMER, a compile without CMake must also be refused by the installed
# ntk/core/abi.h when its Eigen alignment differs from the library's, and accepted with
# the definitions the README gives.
cmake_policy(VERSION 3.20)  # script mode starts with no policies (IN_LIST)
foreach(var BUILD_DIR PREFIX PYTHON)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${PREFIX} ${PREFIX}-consumer)
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}):\n${out}${err}")
endif()

set(CMAKE_INSTALL_BINDIR bin)  # GNUInstallDirs' value (it needs a project to be included)
foreach(f ${CMAKE_INSTALL_BINDIR}/ntkd ${CMAKE_INSTALL_BINDIR}/ntk-replay
          ${CMAKE_INSTALL_BINDIR}/ntk-client ${CMAKE_INSTALL_BINDIR}/ntk-kernel
          ${CMAKE_INSTALL_BINDIR}/ntk-accuracy share/doc/ntkstream/README.md
          share/doc/ntkstream/examples/ntkd.service share/doc/ntkstream/examples/ntkd.textproto
          share/ntkstream/python/ntk_client.py share/ntkstream/python/ntk/v1/request_pb2.py)
  if(NOT EXISTS ${PREFIX}/${f})
    message(FATAL_ERROR "not installed: ${PREFIX}/${f}")
  endif()
endforeach()

# The installed unit starts the installed ntkd.
file(STRINGS ${PREFIX}/share/doc/ntkstream/examples/ntkd.service exec REGEX "^ExecStart=")
string(FIND "${exec}" "ExecStart=${PREFIX}/${CMAKE_INSTALL_BINDIR}/ntkd --config " at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "installed ntkd.service: ${exec}")
endif()
file(STRINGS ${BUILD_DIR}/install_manifest.txt manifest)
if(NOT "${PREFIX}/share/doc/ntkstream/examples/ntkd.service" IN_LIST manifest)
  message(FATAL_ERROR "ntkd.service is not in ${BUILD_DIR}/install_manifest.txt")
endif()

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

if(CONSUMER)
  # The README's embedding example, as a project of its own.
  set(src ${PREFIX}-consumer)
  file(WRITE ${src}/CMakeLists.txt [=[
cmake_minimum_required(VERSION 3.20)
project(consumer CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(ntkstream REQUIRED)
add_executable(app main.cc)
target_link_libraries(app PRIVATE ntk::core)
]=])
  file(WRITE ${src}/main.cc [=[
#include <ntk/core/model.h>

#include <cmath>
#include <cstdio>

int main() {
  ntk::ModelConfig config;
  config.forgetting = 0.999;
  ntk::OnlineGP model(config, /*dim=*/7);
  Eigen::VectorXd x(7);
  ntk::UpdateResult r;
  for (int t = 0; t < 200; ++t) {
    for (int i = 0; i < 7; ++i) x(i) = std::sin(0.1 * (t + i));
    r = model.update(x, std::sin(0.1 * (t + 7)));
  }
  // The last forecast, made before its value was seen, is close to it.
  const double error = std::abs(r.prediction.mean - std::sin(0.1 * 206));
  std::printf("error %g\n", error);
  return error < 1e-2 ? 0 : 1;
}
]=])
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${src} -B ${src}/build -G ${GENERATOR}
                          -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${PREFIX}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    execute_process(COMMAND ${CMAKE_COMMAND} --build ${src}/build
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "a project using find_package(ntkstream) does not build:\n${out}${err}")
  endif()
  execute_process(COMMAND ${src}/build/app RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the consumer program failed (${rc}): ${out}${err}")
  endif()

  # Without CMake and without flags (the compiler's default target: Eigen aligns to 16
  # bytes under SSE2): refused unless the library has that alignment too.
  file(STRINGS ${PREFIX}/include/ntk/core/abi.h align
       REGEX "^#define NTK_EIGEN_MAX_ALIGN_BYTES [0-9]+$")
  string(REGEX REPLACE ".* " "" align "${align}")
  set(includes -I${PREFIX}/include)
  foreach(dir ${EIGEN_INCLUDE})
    list(APPEND includes -I${dir})
  endforeach()
  file(WRITE ${src}/plain.cc "#include <ntk/core/series.h>\nint main() { return 0; }\n")
  execute_process(COMMAND ${CXX} -std=c++20 -fsyntax-only ${includes} ${src}/plain.cc
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT align MATCHES "^(16|32|64)$")
    message(FATAL_ERROR "installed abi.h has no alignment: '${align}'")
  elseif(NOT align EQUAL 16 AND
         (rc EQUAL 0 OR NOT err MATCHES "ntk::core was built with EIGEN_MAX_ALIGN_BYTES=${align}"))
    message(FATAL_ERROR "a compile with Eigen's default alignment was not refused (${rc}):\n"
                        "${out}${err}")
  endif()
  # With the README's definitions, where the alignment is pinned (no -march build).
  file(READ ${PREFIX}/include/ntk/core/abi.h abi)
  if(abi MATCHES "-DEIGEN_MAX_ALIGN_BYTES=32 -DEIGEN_MAX_STATIC_ALIGN_BYTES=32")
    execute_process(COMMAND ${CXX} -std=c++20 -fsyntax-only ${includes} -DEIGEN_MAX_ALIGN_BYTES=32
                            -DEIGEN_MAX_STATIC_ALIGN_BYTES=32 ${src}/plain.cc
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "a compile with the README's definitions failed (${rc}):\n${out}${err}")
    endif()
  endif()

  # The README's example built with the installed ntkcore.pc's flags, without CMake, runs.
  find_program(PKG_CONFIG pkg-config)
  if(PKG_CONFIG)
    file(GLOB_RECURSE pc ${PREFIX}/*/pkgconfig/ntkcore.pc)
    get_filename_component(pc_dir "${pc}" DIRECTORY)
    get_filename_component(lib_dir "${pc_dir}" DIRECTORY)
    set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
    execute_process(COMMAND ${PKG_CONFIG} --cflags --libs ntkcore RESULT_VARIABLE rc
                    OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "pkg-config ntkcore (${pc}): ${err}")
    endif()
    separate_arguments(flags UNIX_COMMAND "${flags}")
    execute_process(COMMAND ${CXX} -std=c++20 ${src}/main.cc -o ${src}/app_pc ${flags}
                            -Wl,-rpath,${lib_dir}
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc EQUAL 0)
      execute_process(COMMAND ${src}/app_pc RESULT_VARIABLE rc OUTPUT_VARIABLE out
                      ERROR_VARIABLE err)
    endif()
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "the example built with pkg-config ntkcore (${flags}) failed (${rc}):\n"
                          "${out}${err}")
    endif()
  endif()
endif()
file(REMOVE_RECURSE ${PREFIX} ${PREFIX}-consumer)
