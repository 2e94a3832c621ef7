// Running the project's command-line programs from a test as a user runs them: a scratch
// directory, files in and out, and one run with its exit status, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace ntk::test {

// A scratch directory for this test process, removed when the process exits.
struct ScratchDir {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("ntk-test-" + std::to_string(::getpid()));
  ScratchDir() { std::filesystem::create_directories(path); }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

inline const std::filesystem::path& scratch() {
  static const ScratchDir dir;
  return dir.path;
}

// Writes `text` to scratch()/name; returns the path.
inline std::string write_file(const std::string& name, const std::string& text) {
  const std::filesystem::path p = scratch() / name;
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Run {
  int status = -1;  // exit status; -1 when the program did not exit normally
  std::string out, err;
};

// Runs `program` with `args` (each single-quoted for the shell), standard input from
// `stdin_path`, standard output to `stdout_path` (empty: a scratch file read back into
// Run::out) and standard error read back into Run::err.
inline Run run_program(const std::string& program, const std::vector<std::string>& args,
                       const std::string& stdin_path = "/dev/null",
                       const std::string& stdout_path = "") {
  std::string cmd = "'" + program + "'";
  for (const std::string& a : args) cmd += " '" + a + "'";
  const std::string out = stdout_path.empty() ? (scratch() / "stdout.txt").string() : stdout_path;
  const std::string err = (scratch() / "stderr.txt").string();
  cmd += " < '" + stdin_path + "' > '" + out + "' 2> '" + err + "'";
  const int raw = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  if (stdout_path.empty()) r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

}  // namespace ntk::test
