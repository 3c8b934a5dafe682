#include "subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace inferbox::testing {
namespace {

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::vector<std::string> ChildEnvironment(const SubprocessOptions& options) {
  std::map<std::string, std::string> variables;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text(*entry);
    const auto equals = text.find('=');
    if (equals != std::string::npos) variables[text.substr(0, equals)] = text.substr(equals + 1);
  }
  for (const auto& name : options.unset_env) variables.erase(name);
  for (const auto& assignment : options.set_env) {
    const auto equals = assignment.find('=');
    variables[assignment.substr(0, equals)] = assignment.substr(equals + 1);
  }
  std::vector<std::string> result;
  for (const auto& [name, value] : variables) result.push_back(name + "=" + value);
  return result;
}

}  // namespace

Subprocess::Subprocess(const SubprocessOptions& options)
    : stdout_path_(options.stdout_path), stderr_path_(options.stderr_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);

  // The child starts with default signal handling and an empty mask, whatever the test
  // runner set.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t empty;
  sigemptyset(&empty);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &empty);
  posix_spawnattr_setsigdefault(&attributes, &all);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const auto environment = ChildEnvironment(options);
  std::vector<char*> envp;
  for (const auto& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  const int error = posix_spawn(&pid_, argv[0], &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (error != 0) {
    throw std::runtime_error("cannot start " + options.argv[0] + ": " + std::strerror(error));
  }
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd_ < 0) {
    throw std::runtime_error(std::string("pidfd_open failed: ") + std::strerror(errno));
  }
}

Subprocess::~Subprocess() {
  if (!exit_code_) {
    ::kill(pid_, SIGKILL);
    WaitForExit(std::chrono::seconds(10));
  }
  if (pidfd_ >= 0) ::close(pidfd_);
}

void Subprocess::Signal(int signal_number) const {
  ::kill(pid_, signal_number);
}

std::optional<int> Subprocess::WaitForExit(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  pollfd descriptor{pidfd_, POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int ready = ::poll(&descriptor, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return std::nullopt;
    break;
  }
  int status = 0;
  if (::waitpid(pid_, &status, 0) != pid_) return std::nullopt;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exit_code_;
}

std::string Subprocess::ReadStdout() const {
  return ReadAll(stdout_path_);
}
std::string Subprocess::ReadStderr() const {
  return ReadAll(stderr_path_);
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::filesystem::path& scratch_dir,
                         std::chrono::milliseconds timeout,
                         const std::vector<std::string>& set_env) {
  static std::atomic<int> counter{0};
  const std::string stem = "command-" + std::to_string(counter++);
  SubprocessOptions options;
  options.argv = argv;
  options.set_env = set_env;
  options.stdout_path = scratch_dir / (stem + ".out");
  options.stderr_path = scratch_dir / (stem + ".err");
  Subprocess process(options);
  CommandResult result;
  result.exit_code = process.WaitForExit(timeout).value_or(-1);
  result.out = process.ReadStdout();
  result.err = process.ReadStderr();
  return result;
}

}  // namespace inferbox::testing
