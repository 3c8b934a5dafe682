// Real child processes for integration tests: started with posix_spawn, output captured in
// files, exit awaited through a pidfd (no polling sleeps), killed if the test ends first.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace inferbox::testing {

struct SubprocessOptions {
  std::vector<std::string> argv;
  // Added to (or replacing in) the test's own environment, as "NAME=value".
  std::vector<std::string> set_env;
  // Removed from the environment the child inherits.
  std::vector<std::string> unset_env;
  // Where the child's stdout and stderr go.
  std::filesystem::path stdout_path;
  std::filesystem::path stderr_path;
};

class Subprocess {
 public:
  explicit Subprocess(const SubprocessOptions& options);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int signal_number) const;

  // Waits up to `timeout` for the child to exit. Returns its exit code, or 128 + signal when
  // a signal killed it, or nullopt when it is still running.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout);

  std::string ReadStdout() const;
  std::string ReadStderr() const;

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> exit_code_;
  std::filesystem::path stdout_path_;
  std::filesystem::path stderr_path_;
};

struct CommandResult {
  int exit_code = -1;  // -1: did not finish within the timeout (then killed).
  std::string out;
  std::string err;
};

// Runs a command to completion (killing it after `timeout`), capturing its output in
// files under `scratch_dir`.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::filesystem::path& scratch_dir,
                         std::chrono::milliseconds timeout = std::chrono::seconds(30),
                         const std::vector<std::string>& set_env = {});

}  // namespace inferbox::testing
