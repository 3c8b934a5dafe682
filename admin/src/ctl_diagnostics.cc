#include "ctl_diagnostics.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "ctl_reports.h"
#include "inferbox/common/redact.h"

extern char** environ;

namespace inferbox::ctl {
namespace {

Status WriteFile(const std::filesystem::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return UnavailableError("cannot write " + path.string());
  return Status::Ok();
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs `argv` (found on PATH) under coreutils' timeout with stdout and stderr into `path`;
// what happened (exit code, or why it did not run) is appended to the file. Never fails the
// bundle: a missing tool is a fact worth reporting, not an error.
void Capture(const std::vector<std::string>& argv, int timeout_seconds,
             const std::filesystem::path& path) {
  std::vector<std::string> command = {"timeout", std::to_string(timeout_seconds)};
  command.insert(command.end(), argv.begin(), argv.end());
  std::vector<char*> args;
  for (auto& arg : command) args.push_back(arg.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  std::string outcome;
  if (spawned != 0) {
    outcome = fmt::format("could not run: {}", std::strerror(spawned));
  } else {
    int wait_status = 0;
    while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
    }
    const int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
    // timeout(1): 124 timed out, 127 the command was not found.
    outcome = code == 0     ? ""
              : code == 124 ? fmt::format("timed out after {} s", timeout_seconds)
              : code == 127 ? "not found on this machine"
                            : fmt::format("exited with {}", code);
  }
  if (outcome.empty()) return;
  std::ofstream(path, std::ios::app)
      << fmt::format("\n[inferboxctl: `{}` {}]\n", fmt::join(argv, " "), outcome);
}

std::string Uname() {
  utsname name{};
  if (::uname(&name) != 0) return "unknown";
  return fmt::format("{} {} {} {}", name.sysname, name.release, name.version, name.machine);
}

Status WriteBundle(const std::filesystem::path& dir, const DiagnosticsInputs& inputs) {
  std::error_code error;
  std::filesystem::create_directory(dir, error);
  if (error)
    return UnavailableError(fmt::format("cannot create {}: {}", dir.string(), error.message()));
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, error);

  const auto now = std::chrono::system_clock::now();
  google::protobuf::Timestamp stamp;
  stamp.set_seconds(
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count());
  if (Status written = WriteFile(
          dir / "README.txt",
          fmt::format("inferbox support bundle, made {} by {}.\n"
                      "versions.txt  versions of inferboxctl, the daemon, the kernel and OS\n"
                      "status.json   Admin.GetStatus (daemon state, listeners, engines)\n"
                      "config.toml   the daemon's configuration, secrets redacted\n"
                      "gpus.txt      nvidia-smi -q\n"
                      "daemon.log    the daemon's recent journal\n"
                      "No API keys, usage or audit records are included.\n",
                      FormatTime(stamp), inputs.ctl_version));
      !written.ok()) {
    return written;
  }

  std::string versions = inputs.ctl_version + "\n";
  if (inputs.status) {
    versions += fmt::format("inferboxd {} ({}), pid {}\n", inputs.status->version(),
                            inputs.status->commit(), inputs.status->pid());
  } else {
    versions += "inferboxd: unknown (" + inputs.status_error + ")\n";
  }
  versions += "kernel: " + Uname() + "\n\n/etc/os-release:\n" + ReadFile("/etc/os-release");
  if (Status written = WriteFile(dir / "versions.txt", versions); !written.ok()) return written;

  std::string status_text;
  if (inputs.status) {
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.always_print_primitive_fields = true;
    options.preserve_proto_field_names = true;
    if (!google::protobuf::util::MessageToJsonString(*inputs.status, &status_text, options).ok())
      status_text = "{}\n";
  } else {
    google::protobuf::Struct failure;
    (*failure.mutable_fields())["error"].set_string_value(inputs.status_error);
    if (!google::protobuf::util::MessageToJsonString(failure, &status_text).ok())
      status_text = "{}";
    status_text += "\n";
  }
  if (Status written = WriteFile(dir / "status.json", status_text); !written.ok()) return written;

  std::string config = "# The daemon runs its embedded default configuration.\n";
  if (inputs.status && !inputs.status->config_path().empty() &&
      inputs.status->config_path().front() == '/') {
    const std::filesystem::path path = inputs.status->config_path();
    std::ifstream in(path, std::ios::binary);
    config = in ? "# " + path.string() + ", secrets redacted.\n" + RedactConfig(ReadFile(path))
                : "# " + path.string() + " cannot be read here (run on the box, as root?).\n";
  } else if (!inputs.status) {
    config = "# Unknown: the daemon's status could not be read.\n";
  }
  if (Status written = WriteFile(dir / "config.toml", config); !written.ok()) return written;

  Capture(inputs.gpu_command, inputs.command_timeout_seconds, dir / "gpus.txt");
  Capture(inputs.log_command, inputs.command_timeout_seconds, dir / "daemon.log");
  return Status::Ok();
}

bool IsArchiveName(const std::filesystem::path& path) {
  const std::string name = path.filename().string();
  return name.ends_with(".tar.gz") || name.ends_with(".tgz");
}

}  // namespace

std::string RedactConfig(std::string_view toml) {
  std::string redacted;
  size_t start = 0;
  while (start < toml.size()) {
    size_t end = toml.find('\n', start);
    if (end == std::string_view::npos) end = toml.size();
    std::string line(toml.substr(start, end - start));
    const size_t equals = line.find('=');
    const size_t first = line.find_first_not_of(" \t");
    if (equals != std::string::npos && first != std::string::npos && line[first] != '#') {
      std::string key = line.substr(first, equals - first);
      key.erase(key.find_last_not_of(" \t") + 1);
      // Quoted and dotted keys: the last part names it.
      const size_t dot = key.find_last_of('.');
      if (dot != std::string::npos) key = key.substr(dot + 1);
      if (key.size() >= 2 && key.front() == '"' && key.back() == '"')
        key = key.substr(1, key.size() - 2);
      if (IsSecretName(key))
        line = line.substr(0, equals + 1) + " \"" + std::string(kRedacted) + "\"";
    }
    RedactUrlCredentials(line);
    redacted += line;
    if (end < toml.size()) redacted += '\n';
    start = end + 1;
  }
  return redacted;
}

Status WriteDiagnostics(const std::filesystem::path& output, const DiagnosticsInputs& inputs) {
  std::error_code error;
  if (std::filesystem::exists(output, error)) {
    return FailedPreconditionError(
        fmt::format("{} exists already; name a new directory or .tar.gz file", output.string()));
  }
  // The bundle may hold host details and logs: only its owner may read it.
  const mode_t old_mask = ::umask(077);
  Status result;
  if (!IsArchiveName(output)) {
    result = WriteBundle(output, inputs);
  } else {
    const std::filesystem::path parent =
        output.has_parent_path() ? output.parent_path() : std::filesystem::path(".");
    std::string stage_template = (parent / ".inferbox-diagnostics-XXXXXX").string();
    if (::mkdtemp(stage_template.data()) == nullptr) {
      result = UnavailableError(fmt::format("cannot create a directory in {}: {}", parent.string(),
                                            std::strerror(errno)));
    } else {
      const std::filesystem::path stage = stage_template;
      std::string name = output.filename().string();
      name = name.substr(0, name.ends_with(".tgz") ? name.size() - 4 : name.size() - 7);
      result = WriteBundle(stage / name, inputs);
      if (result.ok()) {
        const std::filesystem::path log = stage / "tar.log";
        Capture(
            {"tar", "-czf", std::filesystem::absolute(output).string(), "-C", stage.string(), name},
            inputs.command_timeout_seconds * 3, log);
        const std::string tar_output = ReadFile(log);
        if (!std::filesystem::exists(output) || !tar_output.empty()) {
          result = UnavailableError("tar could not write " + output.string() + ": " + tar_output);
        }
      }
      std::filesystem::remove_all(stage, error);
    }
  }
  ::umask(old_mask);
  return result;
}

}  // namespace inferbox::ctl
