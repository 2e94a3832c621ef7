#!/usr/bin/env bash
# The README's two commands: install what is missing, build, and run.
#   bash cmake/quickstart.sh demo   # build and run the demo
#   bash cmake/quickstart.sh test   # build and pass the whole test suite (release, ASan/UBSan,
#                                   # and core built for this CPU)
# Environment: BUILD_DIR (default build), JOBS (default: cores, at most 2 under CI).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  demo | test | deps) ;;
  *) echo "usage: $0 demo|test|deps" >&2; exit 2 ;;
esac

# --- dependencies (Debian packages), idempotent --------------------------------------
packages=(build-essential cmake ninja-build pkg-config libeigen3-dev libboost-dev
          libprotobuf-dev protobuf-compiler doctest-dev libbenchmark-dev libdlib-dev
          gnuplot-nox python3 python3-protobuf nlohmann-json3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ "$mode" = deps ] && exit 0

jobs=${JOBS:-$(nproc)}
if [ "${CI:-}" = true ] && [ "$jobs" -gt 2 ]; then jobs=2; fi
build=${BUILD_DIR:-build}

# -O2 with line tables only (-g1): stack traces keep file and line, and the compile takes
# 60% of the time of CMake's default -O2 -g (test_cholesky.cc: 33 against 58 s), which
# keeps CI within its 20 minutes on slow 2-core runners.
configure() {  # dir, flags, extra cmake args...
  local dir=$1 flags=$2; shift 2
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNTK_WERROR=ON \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" "$@" >/dev/null
}
release_flags="-O2 -g1 -DNDEBUG"

case "$mode" in
  demo)
    configure "$build/release" "$release_flags"
    cmake --build "$build/release" -j "$jobs"
    exec bash examples/demo.sh "$build/release"
    ;;
  test)
    echo "== release build"
    configure "$build/release" "$release_flags"
    cmake --build "$build/release" -j "$jobs"
    echo "== tests (release)"
    ctest --test-dir "$build/release" --output-on-failure -j "$jobs"
    echo "== AddressSanitizer + UndefinedBehaviorSanitizer build"
    # -O1 -g1: the sanitizers' usual optimization level, line tables for their stack
    # traces, and a third of the compile time of -O2 -g under instrumentation. Without
    # NDEBUG, so that Eigen's and our own assertions are checked too.
    configure "$build/asan" "-O1 -g1" -DNTK_SANITIZE=ON -DNTK_BUILD_EXAMPLES=ON
    cmake --build "$build/asan" -j "$jobs"
    echo "== tests (ASan/UBSan; long-running 'slow' tests run only in the release pass)"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir "$build/asan" --output-on-failure -j "$jobs" -LE slow
    echo "== core tests built for this CPU (-march=native: the widest SIMD code paths)"
    # The default builds test libntkcore's x86-64-v3 copy on a CPU with AVX2 and FMA, and
    # its baseline (SSE2) copy in the *_x86_64 tests (tests/CMakeLists.txt); the 8-wide
    # (AVX-512) branches of the kernels, the triangular solves and the covariance updates
    # run only here, on a machine that has them.
    configure "$build/native" "$release_flags" -DNTK_NATIVE=ON -DNTK_BUILD_STREAM=OFF \
      -DNTK_BUILD_EXAMPLES=OFF
    cmake --build "$build/native" -j "$jobs"
    ctest --test-dir "$build/native" --output-on-failure -j "$jobs"
    ;;
esac
