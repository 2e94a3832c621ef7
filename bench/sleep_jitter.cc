// ntk-sleep-jitter: how late does this host wake a sleeping thread?
//
// Sleeps --period-us microseconds (default 250, ntk-load's open-loop tick) in a loop for
// --seconds (default 8) and prints the oversleep (actual sleep - requested) at p50, p99,
// p999 and its maximum. Every open-loop request through ntkd waits for at least one such
// wake-up, so these figures bound the server's latency tail from below on this host; run
// it alone and next to a load to see what the scheduler adds (BENCHMARKS.md, "Streaming
// server").
//
//   ntk-sleep-jitter [--period-us 250] [--seconds 8]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "ntk-sleep-jitter: %s\nusage: ntk-sleep-jitter [--period-us 250] [--seconds 8]\n",
               why);
  std::exit(2);
}

long positive(const char* flag, const char* value) {
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v <= 0 || v > 100000000) {
    usage((std::string(flag) + " wants a positive integer, got '" + value + "'").c_str());
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  long period_us = 250;
  long seconds = 8;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--period-us") == 0 && has_value) {
      period_us = positive(argv[i], argv[i + 1]);
      ++i;
    } else if (std::strcmp(argv[i], "--seconds") == 0 && has_value) {
      seconds = positive(argv[i], argv[i + 1]);
      ++i;
    } else if (std::strcmp(argv[i], "--help") == 0) {
      usage("how late this host wakes a thread that sleeps --period-us in a loop");
    } else {
      usage((std::string("unknown or incomplete argument '") + argv[i] + "'").c_str());
    }
  }

  using Clock = std::chrono::steady_clock;
  const auto period = std::chrono::microseconds(period_us);
  std::vector<double> late;
  late.reserve(static_cast<std::size_t>(seconds * 1000000 / period_us) + 1);
  const auto end = Clock::now() + std::chrono::seconds(seconds);
  for (auto t0 = Clock::now(); t0 < end;) {
    std::this_thread::sleep_for(period);
    const auto t1 = Clock::now();
    late.push_back(std::chrono::duration<double, std::micro>(t1 - t0 - period).count());
    t0 = t1;
  }
  std::sort(late.begin(), late.end());
  const auto at = [&](double q) {
    return late[static_cast<std::size_t>(q * static_cast<double>(late.size() - 1))];
  };
  std::printf(
      "%zu sleeps of %ld us: oversleep p50 %.0f us, p99 %.0f us, p999 %.0f us, max %.0f us\n",
      late.size(), period_us, at(0.5), at(0.99), at(0.999), late.back());
  std::printf("RESULT oversleep_p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n", at(0.5),
              at(0.99), at(0.999), late.back());
  return 0;
}
