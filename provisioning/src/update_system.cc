// The real package manager, service restart and readiness probe of the updater
// (update_system.h).
#include "inferbox/provisioning/update_system.h"
#include "inferbox/common/json.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <toml++/toml.h>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/posix_file.h"

extern char** environ;

namespace inferbox::provisioning {
namespace {

std::string Trim(std::string_view text) {
  constexpr std::string_view kBlank = " \t\r\n";
  const auto first = text.find_first_not_of(kBlank);
  if (first == std::string_view::npos) return {};
  return std::string(text.substr(first, text.find_last_not_of(kBlank) - first + 1));
}

std::string Tail(std::string_view output, size_t max_chars = 2000) {
  std::string text = Trim(output);
  if (text.size() > max_chars) text = "..." + text.substr(text.size() - max_chars);
  return text;
}

// Runs a command that must succeed; FAILED_PRECONDITION with its output otherwise.
Result<std::string> Check(const std::vector<std::string>& argv) {
  auto result = RunProgram(argv);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return FailedPreconditionError(fmt::format("{} exited {}: {}", fmt::join(argv, " "),
                                               result->exit_code, Tail(result->output)));
  }
  return std::move(result->output);
}

// Versions go to package tools as arguments (rpm: inside a macro): only well-formed ones.
Status CheckVersionText(const std::string& version) {
  if (IsPackageVersion(version)) return Status::Ok();
  return InvalidArgumentError(
      fmt::format("\"{}\" is not a package version", version.substr(0, 80)));
}

// "Field: value" lines of dpkg-deb -f / dpkg-query -s, one-line fields only.
std::string ControlField(std::string_view control, std::string_view field) {
  std::istringstream lines{std::string(control)};
  const std::string prefix = std::string(field) + ":";
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with(prefix)) return Trim(line.substr(prefix.size()));
  }
  return {};
}

// Copies one installed path into the rebuild tree, keeping its type, mode and owner.
// Where Debian's minimal images exclude files (dpkg path-exclude): documentation only.
bool IsExcludableDocumentation(std::string_view path) {
  for (const std::string_view prefix :
       {"/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/"}) {
    if (path.starts_with(prefix)) return true;
  }
  return false;
}

Status CopyInstalled(const std::filesystem::path& source, const std::filesystem::path& target) {
  struct stat info {};
  if (::lstat(source.c_str(), &info) != 0) return ErrnoStatus("cannot read", source, errno);
  std::error_code error;
  if (S_ISDIR(info.st_mode)) {
    std::filesystem::create_directories(target, error);
    if (error) return ErrnoStatus("cannot create", target, error.value());
  } else if (S_ISLNK(info.st_mode)) {
    std::filesystem::create_directories(target.parent_path(), error);
    const auto link = std::filesystem::read_symlink(source, error);
    if (!error) std::filesystem::create_symlink(link, target, error);
    if (error) return ErrnoStatus("cannot copy the symlink", source, error.value());
    if (::lchown(target.c_str(), info.st_uid, info.st_gid) != 0) {
      return ErrnoStatus("cannot set the owner of", target, errno);
    }
    return Status::Ok();
  } else if (S_ISREG(info.st_mode)) {
    std::filesystem::create_directories(target.parent_path(), error);
    std::filesystem::copy_file(source, target, error);
    if (error) return ErrnoStatus("cannot copy", source, error.value());
  } else {
    return FailedPreconditionError(
        fmt::format("{} is a special file; the package cannot be rebuilt", source.string()));
  }
  if (::chown(target.c_str(), info.st_uid, info.st_gid) != 0 ||
      ::chmod(target.c_str(), info.st_mode & 07777) != 0) {
    return ErrnoStatus("cannot set the owner and mode of", target, errno);
  }
  return Status::Ok();
}

class DebPackageManager final : public PackageManager {
 public:
  std::string format() const override { return "deb"; }

  Result<std::string> Architecture() override {
    auto output = Check({"dpkg", "--print-architecture"});
    if (!output.ok()) return output.status();
    return Trim(*output);
  }

  Result<std::string> InstalledVersion(const std::string& name) override {
    auto result = RunProgram({"dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name});
    if (!result.ok()) return result.status();
    if (result->exit_code != 0) return std::string();  // Not known to dpkg.
    const std::string text = Trim(result->output);
    const auto space = text.find(' ');
    const std::string status = text.substr(0, space);
    if (status == "not-installed" || status == "config-files") return std::string();
    if (status != "installed") {
      return FailedPreconditionError(
          fmt::format("package {} is {}: an earlier dpkg run was interrupted; finish it with "
                      "`dpkg --configure -a` first",
                      name, status));
    }
    return space == std::string::npos ? std::string() : text.substr(space + 1);
  }

  Result<int> CompareVersions(const std::string& a, const std::string& b) override {
    for (const std::string* version : {&a, &b}) {
      if (Status valid = CheckVersionText(*version); !valid.ok()) return valid;
    }
    // dpkg --compare-versions exits 0 when the relation holds, 1 when not, 2 on bad input.
    for (const auto& [relation, order] : {std::pair{"lt", -1}, std::pair{"eq", 0}}) {
      auto result = RunProgram({"dpkg", "--compare-versions", a, relation, b});
      if (!result.ok()) return result.status();
      if (result->exit_code == 0) return order;
      if (result->exit_code != 1) {
        return InvalidArgumentError(
            fmt::format("dpkg cannot compare {} and {}: {}", a, b, Trim(result->output)));
      }
    }
    return 1;
  }

  Result<PackageInfo> Inspect(const std::filesystem::path& file) override {
    auto output = Check({"dpkg-deb", "-f", file.string(), "Package", "Version", "Architecture"});
    if (!output.ok()) return output.status();
    PackageInfo info{ControlField(*output, "Package"), ControlField(*output, "Version"),
                     ControlField(*output, "Architecture")};
    if (info.name.empty() || info.version.empty()) {
      return InvalidArgumentError(fmt::format("{} is not a Debian package", file.string()));
    }
    return info;
  }

  // As dpkg-repack does: the files dpkg lists for the package (as they are now, conffiles
  // included), its control paragraph without the database's own fields, and its control
  // parts (maintainer scripts, conffiles, md5sums), built with dpkg-deb. Only through
  // dpkg-query's interfaces, never dpkg's database files.
  Result<std::filesystem::path> RebuildInstalled(const std::string& name,
                                                 const std::filesystem::path& dir) override {
    auto control = Check({"dpkg-query", "-s", name});
    if (!control.ok()) return control.status();
    const std::string version = ControlField(*control, "Version");
    const std::string architecture = ControlField(*control, "Architecture");
    auto list = Check({"dpkg-query", "-L", name});
    if (!list.ok()) return list.status();
    auto parts = Check({"dpkg-query", "--control-list", name});
    if (!parts.ok()) return parts.status();

    const std::filesystem::path tree = dir / (".rebuild-" + name);
    std::error_code error;
    std::filesystem::remove_all(tree, error);
    auto built = [&]() -> Result<std::filesystem::path> {
      if (Status made = MakeDirectories(tree / "DEBIAN"); !made.ok()) return made;
      std::istringstream lines(*list);
      for (std::string path; std::getline(lines, path);) {
        // Diversion notes ("diverted by ...") are not paths.
        if (!path.starts_with('/') || path == "/.") continue;
        // Minimal images drop documentation with dpkg's path-exclude, and dpkg still lists
        // it: a missing file there is left out; anywhere else it is an error.
        if (std::error_code missing;
            !std::filesystem::exists(std::filesystem::symlink_status(path, missing)) &&
            IsExcludableDocumentation(path)) {
          spdlog::warn(
              "update: {} is not on disk (dpkg path-exclude?); the rebuilt {} leaves it out", path,
              name);
          continue;
        }
        if (Status copied = CopyInstalled(path, tree / path.substr(1)); !copied.ok()) {
          return copied.WithContext(fmt::format("rebuilding {} {}", name, version));
        }
      }
      // The status paragraph less the database's own fields; its Conffiles lines
      // (" <path> <md5> [obsolete]") become DEBIAN/conffiles, which --control-list omits.
      std::string paragraph;
      std::string conffiles;
      std::istringstream fields(*control);
      bool skipping = false;
      bool in_conffiles = false;
      for (std::string line; std::getline(fields, line);) {
        if (line.empty()) continue;
        if (line.front() != ' ' && line.front() != '\t') {
          in_conffiles = line.starts_with("Conffiles:");
          skipping =
              in_conffiles || line.starts_with("Status:") || line.starts_with("Config-Version:");
        } else if (in_conffiles) {
          std::istringstream entry(line);
          std::string path, md5, flag;
          entry >> path >> md5 >> flag;
          if (path.starts_with('/') && flag.empty()) conffiles += path + "\n";
        }
        if (!skipping) paragraph += line + "\n";
      }
      if (Status written = WriteFileAtomically(tree / "DEBIAN/control", paragraph); !written.ok())
        return written;
      if (!conffiles.empty()) {
        if (Status written = WriteFileAtomically(tree / "DEBIAN/conffiles", conffiles);
            !written.ok()) {
          return written;
        }
      }
      std::istringstream part_names(*parts);
      for (std::string part; std::getline(part_names, part);) {
        part = Trim(part);
        if (part.empty() || part == "control" || part == "conffiles" ||
            part.find('/') != std::string::npos) {
          continue;
        }
        auto contents = Check({"dpkg-query", "--control-show", name, part});
        if (!contents.ok()) return contents.status();
        const bool script = part == "preinst" || part == "postinst" || part == "prerm" ||
                            part == "postrm" || part == "config";
        if (Status written =
                WriteFileAtomically(tree / "DEBIAN" / part, *contents, script ? 0755 : 0644);
            !written.ok()) {
          return written;
        }
      }
      const std::filesystem::path out =
          dir / fmt::format("{}_{}_{}.deb", name, version, architecture);
      if (auto made = Check({"dpkg-deb", "-Zgzip", "-z1", "-b", tree.string(), out.string()});
          !made.ok()) {
        return made.status();
      }
      return out;
    }();
    std::filesystem::remove_all(tree, error);
    return built;
  }

  Status Install(const std::vector<std::filesystem::path>& files) override {
    // The updater restarts the service itself, within its deadline: the postinst's own
    // try-restart (synchronous, bound only by the unit's start timeout) stands aside.
    std::vector<std::string> argv = {
        "env", "INFERBOX_UPDATER_RESTARTS=1", "dpkg", "--force-confdef", "--force-confold", "-i"};
    for (const auto& file : files) argv.push_back(file.string());
    return Check(argv).status();
  }

  Status Remove(const std::vector<std::string>& names) override {
    std::vector<std::string> argv = {"dpkg", "--remove"};
    argv.insert(argv.end(), names.begin(), names.end());
    return Check(argv).status();
  }
};

class RpmPackageManager final : public PackageManager {
 public:
  std::string format() const override { return "rpm"; }

  Result<std::string> Architecture() override {
    auto output = Check({"rpm", "--eval", "%{_arch}"});
    if (!output.ok()) return output.status();
    return Trim(*output);
  }

  Result<std::string> InstalledVersion(const std::string& name) override {
    auto result = RunProgram({"rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}\\n", name});
    if (!result.ok()) return result.status();
    const std::string text = Trim(result->output);
    if (result->exit_code != 0) {
      // Anything but "not installed" (a locked database, say) is an error, never "absent":
      // a rollback would remove a package recorded as absent.
      if (text.find("is not installed") != std::string::npos) return std::string();
      return FailedPreconditionError(
          fmt::format("rpm -q {} exited {}: {}", name, result->exit_code, Tail(text)));
    }
    if (text.find('\n') != std::string::npos) {
      return FailedPreconditionError(
          fmt::format("package {} is installed in several versions ({}): an earlier rpm run was "
                      "interrupted; finish or clean it up first",
                      name, text));
    }
    return text;
  }

  Result<int> CompareVersions(const std::string& a, const std::string& b) override {
    for (const std::string* version : {&a, &b}) {
      if (Status valid = CheckVersionText(*version); !valid.ok()) return valid;
    }
    auto output =
        Check({"rpm", "--eval", fmt::format("%{{lua: print(rpm.vercmp('{}', '{}'))}}", a, b)});
    if (!output.ok()) return output.status();
    const std::string text = Trim(*output);
    if (text == "-1" || text == "0" || text == "1") return std::stoi(text);
    return InvalidArgumentError(fmt::format("rpm cannot compare {} and {}: {}", a, b, text));
  }

  Result<PackageInfo> Inspect(const std::filesystem::path& file) override {
    auto output = Check(
        {"rpm", "-qp", "--qf", "%{NAME}\\n%{VERSION}-%{RELEASE}\\n%{ARCH}\\n", file.string()});
    if (!output.ok()) return output.status();
    std::istringstream lines(*output);
    PackageInfo info;
    std::getline(lines, info.name);
    std::getline(lines, info.version);
    std::getline(lines, info.architecture);
    if (info.name.empty() || info.version.empty()) {
      return InvalidArgumentError(fmt::format("{} is not an RPM package", file.string()));
    }
    return info;
  }

  Result<std::filesystem::path> RebuildInstalled(const std::string& name,
                                                 const std::filesystem::path& dir) override {
    return FailedPreconditionError(fmt::format(
        "the installed {} was not installed by an update, and an RPM cannot be rebuilt from the "
        "package database: put its .rpm file into {} to allow a rollback to it",
        name, dir.string()));
  }

  Status Install(const std::vector<std::filesystem::path>& files) override {
    std::vector<std::string> argv = {
        "env", "INFERBOX_UPDATER_RESTARTS=1", "rpm", "-U", "--oldpackage", "--replacepkgs"};
    for (const auto& file : files) argv.push_back(file.string());
    return Check(argv).status();
  }

  Status Remove(const std::vector<std::string>& names) override {
    std::vector<std::string> argv = {"rpm", "-e"};
    argv.insert(argv.end(), names.begin(), names.end());
    return Check(argv).status();
  }
};

class CommandServiceControl final : public ServiceControl {
 public:
  explicit CommandServiceControl(std::string restart_command)
      : restart_command_(std::move(restart_command)) {}

  Status CheckUsable() override {
    if (!restart_command_.empty()) return Status::Ok();
    std::error_code error;
    if (!std::filesystem::is_directory("/run/systemd/system", error)) {
      return FailedPreconditionError(
          "systemd is not running here, so inferbox.service cannot be restarted; set "
          "INFERBOX_UPDATE_RESTART_COMMAND to the command that restarts inferboxd");
    }
    return Status::Ok();
  }

  Status Restart() override {
    const std::vector<std::string> argv =
        restart_command_.empty()
            // --no-block: the probe's deadline bounds the wait, not TimeoutStartSec.
            ? std::vector<std::string>{"systemctl", "--no-block", "restart", "inferbox.service"}
            : std::vector<std::string>{"/bin/sh", "-c", restart_command_};
    return Check(argv).status().WithContext("restarting inferboxd");
  }

 private:
  const std::string restart_command_;
};

struct CurlFree {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};

size_t AppendBody(char* data, size_t size, size_t count, void* body) {
  static_cast<std::string*>(body)->append(data, size * count);
  return size * count;
}

struct HttpReply {
  long code = 0;
  std::string body;
};

Result<HttpReply> HttpGet(const std::string& url) {
  static std::once_flag once;
  std::call_once(once, [] { INFERBOX_CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK); });
  std::unique_ptr<CURL, CurlFree> handle(curl_easy_init());
  INFERBOX_CHECK(handle != nullptr);
  HttpReply reply;
  curl_easy_setopt(handle.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(handle.get(), CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(handle.get(), CURLOPT_NOPROXY, "*");
  curl_easy_setopt(handle.get(), CURLOPT_TIMEOUT_MS, 3000L);
  curl_easy_setopt(handle.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(handle.get(), CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(handle.get(), CURLOPT_WRITEDATA, &reply.body);
  const CURLcode result = curl_easy_perform(handle.get());
  if (result != CURLE_OK) {
    return UnavailableError(fmt::format("GET {}: {}", url, curl_easy_strerror(result)));
  }
  curl_easy_getinfo(handle.get(), CURLINFO_RESPONSE_CODE, &reply.code);
  return reply;
}

// The version label of inferbox_build_info in a Prometheus text exposition.
std::optional<std::string> BuildInfoVersion(std::string_view metrics) {
  constexpr std::string_view kName = "inferbox_build_info{";
  constexpr std::string_view kLabel = "version=\"";
  for (size_t at = metrics.find(kName); at != std::string_view::npos;
       at = metrics.find(kName, at + 1)) {
    if (at != 0 && metrics[at - 1] != '\n') continue;
    const std::string_view line = metrics.substr(at, metrics.find('\n', at) - at);
    const auto label = line.find(kLabel);
    if (label == std::string_view::npos) continue;
    const auto start = label + kLabel.size();
    const auto end = line.find('"', start);
    if (end == std::string_view::npos) continue;
    return std::string(line.substr(start, end - start));
  }
  return std::nullopt;
}

class HttpReadinessProbe final : public ReadinessProbe {
 public:
  explicit HttpReadinessProbe(std::filesystem::path runtime_dir)
      : listeners_file_(std::move(runtime_dir) / "listeners.toml") {}

  Status WaitReady(std::string_view expected_version,
                   std::chrono::system_clock::time_point restarted_at,
                   std::chrono::milliseconds deadline) override {
    const auto until = std::chrono::steady_clock::now() + deadline;
    std::string last = "no daemon wrote " + listeners_file_.string() + " since the restart";
    for (;;) {
      auto seen = Probe(expected_version, restarted_at);
      if (seen.ok()) return Status::Ok();
      last = seen.message();
      if (std::chrono::steady_clock::now() >= until) break;
      // Polls a process outside this one; nothing to wait on instead.
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return Status(
        StatusCode::kDeadlineExceeded,
        fmt::format("inferboxd {} was not ready within {} s: {}", expected_version,
                    std::chrono::duration_cast<std::chrono::seconds>(deadline).count(), last));
  }

  Result<std::string> RunningVersion() override {
    auto address = MetricsAddress();
    if (!address.ok()) return address.status();
    auto metrics = HttpGet("http://" + *address + "/metrics");
    if (!metrics.ok()) return metrics.status();
    auto version = BuildInfoVersion(metrics->body);
    if (metrics->code != 200 || !version) {
      return UnavailableError(fmt::format("http://{}/metrics (HTTP {}) has no inferbox_build_info",
                                          *address, metrics->code));
    }
    return *version;
  }

 private:
  Result<std::string> MetricsAddress() const {
    auto text = ReadFile(listeners_file_);
    if (!text.ok()) return text.status().WithContext("the daemon's listeners");
    try {
      const toml::table table = toml::parse(*text, listeners_file_.string());
      if (auto metrics = table["metrics"].value<std::string>(); metrics && !metrics->empty()) {
        return *metrics;
      }
    } catch (const toml::parse_error& error) {
      return UnavailableError(
          fmt::format("{} cannot be read: {}", listeners_file_.string(), error.description()));
    }
    return UnavailableError(fmt::format("{} names no metrics listener", listeners_file_.string()));
  }

  // OK when a daemon started since `restarted_at` is ready and reports `expected_version`;
  // else what is not so.
  Status Probe(std::string_view expected_version,
               std::chrono::system_clock::time_point restarted_at) {
    struct stat info {};
    if (::stat(listeners_file_.c_str(), &info) != 0) {
      return UnavailableError("no daemon is running (no " + listeners_file_.string() + ")");
    }
    const auto written = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(info.st_mtim.tv_sec) +
            std::chrono::nanoseconds(info.st_mtim.tv_nsec)));
    if (written < restarted_at) {
      return UnavailableError(
          "the daemon running was started before the restart, and no new "
          "one has bound its listeners");
    }
    auto address = MetricsAddress();
    if (!address.ok()) return address.status();
    auto ready = HttpGet("http://" + *address + "/health/ready");
    if (!ready.ok()) return ready.status();
    if (baseline_known_ && baseline_ready_.empty()) {
      auto live = HttpGet("http://" + *address + "/health/live");
      if (!live.ok()) return live.status();
      if (live->code != 200)
        return UnavailableError(fmt::format("/health/live answers {}", live->code));
    } else {
      if (ready->code != 200) {
        return UnavailableError(
            fmt::format("/health/ready answers {}: {}", ready->code, Tail(ready->body, 300)));
      }
      const std::set<std::string> now = ReadyModels(ready->body);
      for (const std::string& model : baseline_ready_) {
        if (!now.contains(model)) {
          return UnavailableError(fmt::format("model {}, ready before the update, is not ready: {}",
                                              model, Tail(ready->body, 300)));
        }
      }
    }
    auto version = RunningVersion();
    if (!version.ok()) return version.status();
    if (*version != expected_version) {
      return UnavailableError(
          fmt::format("the new daemon reports version {}, not {}", *version, expected_version));
    }
    return Status::Ok();
  }

  void NoteBaseline() override {
    baseline_known_ = false;
    baseline_ready_.clear();
    auto address = MetricsAddress();
    if (!address.ok()) return;  // No daemon runs: the new one must be fully ready.
    auto ready = HttpGet("http://" + *address + "/health/ready");
    if (!ready.ok()) return;
    baseline_known_ = true;
    baseline_ready_ = ReadyModels(ready->body);
  }

  // The models /health/ready's body lists as ready; none when it is not that JSON.
  static std::set<std::string> ReadyModels(const std::string& body) {
    std::set<std::string> ready;
    boost::system::error_code error;
    const boost::json::value parsed = inferbox::ParseJson(body, error);
    if (error || !parsed.is_object()) return ready;
    const auto* models = parsed.as_object().if_contains("models");
    if (models == nullptr || !models->is_array()) return ready;
    for (const auto& model : models->as_array()) {
      if (!model.is_object()) continue;
      const auto* name = model.as_object().if_contains("name");
      const auto* is_ready = model.as_object().if_contains("ready");
      if (name != nullptr && name->is_string() && is_ready != nullptr && is_ready->is_bool() &&
          is_ready->as_bool()) {
        ready.emplace(name->as_string());
      }
    }
    return ready;
  }

  const std::filesystem::path listeners_file_;
  bool baseline_known_ = false;
  std::set<std::string> baseline_ready_;
};

}  // namespace

Result<ProgramResult> RunProgram(const std::vector<std::string>& argv) {
  INFERBOX_CHECK(!argv.empty());
  UniqueFd output(::memfd_create("inferbox-program-output", MFD_CLOEXEC));
  if (!output.valid()) return ErrnoStatus("cannot capture the output of", argv[0], errno);
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, output.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, output.get(), STDERR_FILENO);
  pid_t pid = -1;
  const int spawned = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return ErrnoStatus("cannot run", argv[0], spawned);
  int wait_status = 0;
  while (::waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) return ErrnoStatus("cannot wait for", argv[0], errno);
  }
  ProgramResult result;
  result.exit_code =
      WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
  if (::lseek(output.get(), 0, SEEK_SET) == 0) {
    const Status read = ReadChunks(output.get(), argv[0], [&](std::string_view chunk) {
      result.output.append(chunk);
      return Status::Ok();
    });
    if (!read.ok()) result.output += "\n(" + read.message() + ")";
  }
  return result;
}

std::unique_ptr<PackageManager> MakeDebPackageManager() {
  return std::make_unique<DebPackageManager>();
}

std::unique_ptr<PackageManager> MakeRpmPackageManager() {
  return std::make_unique<RpmPackageManager>();
}

std::unique_ptr<PackageManager> MakeSystemPackageManager() {
  if (::access("/usr/bin/dpkg-query", X_OK) == 0) return MakeDebPackageManager();
  return MakeRpmPackageManager();
}

std::unique_ptr<ServiceControl> MakeServiceControl(std::string restart_command) {
  return std::make_unique<CommandServiceControl>(std::move(restart_command));
}

std::unique_ptr<ReadinessProbe> MakeHttpReadinessProbe(std::filesystem::path runtime_dir) {
  return std::make_unique<HttpReadinessProbe>(std::move(runtime_dir));
}

}  // namespace inferbox::provisioning
