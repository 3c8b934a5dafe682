#include "inferbox/daemon/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "inferbox/common/logging.h"
#include "inferbox/common/model_id.h"
#include "inferbox/daemon/placement.h"

extern char** environ;

namespace inferbox::daemon {
namespace {

// The journal fields of a replica's key events (MODEL=, ENGINE=, GPU=; logging.h).
class ReplicaFields {
 public:
  explicit ReplicaFields(const EngineReplica& replica)
      : model_(replica.model()),
        engine_(replica.name()),
        gpus_(fmt::format("{}", fmt::join(replica.gpus(), ","))) {}
  EventFields get() const { return {.model = model_, .engine = engine_, .gpu = gpus_}; }

 private:
  std::string model_;
  std::string engine_;
  std::string gpus_;
};

namespace wire = ::inferbox::engine::v1;
namespace api = ::inferbox::v1;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// The engine's "this model or setting cannot work" exit status (EX_CONFIG).
constexpr int kEngineExitConfig = 78;
// How often a starting engine is asked whether it is ready.
constexpr auto kStartupPollInterval = 100ms;
// Health misses in a row that mean a hung engine.
constexpr int kMaxHealthMisses = 3;
// SIGTERM → SIGKILL grace at shutdown.
constexpr auto kStopGrace = 8s;
// An engine that stayed ready this long has its restart backoff reset.
constexpr auto kStableUptime = 60s;
// After a replacement switched new requests to the new engines, the old ones keep taking
// requests this long before they drain: a request routed to an old replica just before the
// switch must reach its engine before the engine's Drain refuses new work.
constexpr auto kSwitchGrace = 1s;
// An engine on a GPU that turned unhealthy finishes its requests for this long, then stops.
constexpr auto kGpuFaultDrain = 10s;

std::string DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) {
    const int code = WEXITSTATUS(wait_status);
    if (code == kEngineExitConfig) return "exited with status 78: it cannot serve this model";
    return fmt::format("exited with status {}", code);
  }
  if (WIFSIGNALED(wait_status)) {
    return fmt::format("killed by signal {} ({})", WTERMSIG(wait_status),
                       strsignal(WTERMSIG(wait_status)));
  }
  return "ended";
}

// A running engine process: its pid and a pidfd that becomes readable when it exits.
class EngineProcess {
 public:
  static Result<std::unique_ptr<EngineProcess>> Spawn(const std::vector<std::string>& argv,
                                                      const std::vector<std::string>& env) {
    std::vector<char*> args;
    for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    std::vector<char*> envp;
    for (const auto& entry : env) envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    // The daemon blocks its signals for the main loop; the engine starts clean.
    sigset_t empty;
    sigset_t all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attributes, &empty);
    posix_spawnattr_setsigdefault(&attributes, &all);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = 0;
    const int error = posix_spawn(&pid, args[0], &actions, &attributes, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (error != 0) {
      return UnavailableError(fmt::format("cannot start {}: {}", argv[0], strerror(error)));
    }
    auto process = std::unique_ptr<EngineProcess>(new EngineProcess(pid));
    process->pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (process->pidfd_ < 0) {
      kill(pid, SIGKILL);
      process->Reap();
      return UnavailableError(fmt::format("pidfd_open failed: {}", strerror(errno)));
    }
    return process;
  }

  ~EngineProcess() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      // A process stuck in the kernel (a wedged GPU driver) may not die at once; do not
      // hang the daemon on it (it is reaped as a zombie when the daemon exits).
      if (!WaitExit(std::chrono::seconds(5)))
        spdlog::error("engine pid {} did not exit after SIGKILL", pid_);
    }
    if (pidfd_ >= 0) close(pidfd_);
  }

  pid_t pid() const { return pid_; }

  // Waits up to `timeout` for the process to exit; true once it has (wait status kept).
  bool WaitExit(std::chrono::milliseconds timeout) {
    if (exited_) return true;
    pollfd entry{pidfd_, POLLIN, 0};
    const int ready = poll(&entry, 1, static_cast<int>(timeout.count()));
    if (ready <= 0) return false;
    Reap();
    return true;
  }

  void Signal(int signal_number) const {
    if (!exited_) kill(pid_, signal_number);
  }
  int wait_status() const { return wait_status_; }

 private:
  explicit EngineProcess(pid_t pid) : pid_(pid) {}

  void Reap() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    wait_status_ = status;
    exited_ = true;
  }

  pid_t pid_;
  int pidfd_ = -1;
  bool exited_ = false;
  int wait_status_ = 0;
};

std::vector<std::string> EngineEnvironment(const ModelServeConfig& model,
                                           const std::vector<uint32_t>& gpus) {
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view value(*entry);
    // systemd's notify socket belongs to the daemon: an engine must not report READY for it.
    if (value.starts_with("CUDA_VISIBLE_DEVICES=") || value.starts_with("NOTIFY_SOCKET=") ||
        value.starts_with("CUDA_DEVICE_ORDER="))
      continue;
    env.emplace_back(value);
  }
  // CUDA numbers devices fastest first by default; in PCI bus order its indices are NVML's,
  // so a GPU fault NVML reports lands on the engines that really use that GPU.
  env.emplace_back("CUDA_DEVICE_ORDER=PCI_BUS_ID");
  std::string visible;
  if (model.device == "cuda") {
    for (const uint32_t gpu : gpus) visible += (visible.empty() ? "" : ",") + std::to_string(gpu);
  }
  env.push_back("CUDA_VISIBLE_DEVICES=" + visible);
  return env;
}

// One-token generation through the engine: the proof that it can really generate.
// `context` is the caller's, so that another thread may cancel the canary (TryCancel).
grpc::Status RunCanary(wire::Engine::Stub& stub, std::chrono::milliseconds timeout,
                       grpc::ClientContext& context) {
  wire::GenerateRequest request;
  request.set_request_id("canary");
  api::GenerateRequest& completion = *request.mutable_completion();
  completion.mutable_token_ids()->add_ids(0);
  completion.mutable_sampling()->set_temperature(0.0f);
  completion.mutable_stop()->set_max_tokens(1);
  completion.mutable_stop()->set_ignore_eos(true);
  completion.set_priority(api::PRIORITY_INTERACTIVE);
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub.Generate(&context, request);
  wire::GenerateChunk chunk;
  int tokens = 0;
  while (reader->Read(&chunk)) tokens += chunk.chunk().token_ids_size();
  grpc::Status status = reader->Finish();
  if (status.ok() && tokens != 1) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        fmt::format("the canary generated {} tokens, not 1", tokens));
  }
  return status;
}

// Asks the engine to finish its requests within `drain` (none when 0), then stops it:
// SIGTERM, and SIGKILL when it is still there kStopGrace later.
void DrainAndStop(const std::string& name, wire::Engine::Stub& stub, EngineProcess& process,
                  std::chrono::milliseconds drain) {
  if (drain.count() > 0) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + drain + 2s);
    wire::DrainRequest request;
    request.set_timeout_seconds(static_cast<double>(drain.count()) / 1000.0);
    wire::DrainResponse response;
    if (stub.Drain(&context, request, &response).ok() && response.num_requests_aborted() > 0) {
      spdlog::warn("engine {}: drain timeout, {} requests aborted", name,
                   response.num_requests_aborted());
    }
  }
  process.Signal(SIGTERM);
  if (!process.WaitExit(kStopGrace)) {
    spdlog::warn("engine {}: still running {} s after SIGTERM; killing it", name,
                 std::chrono::duration_cast<std::chrono::seconds>(kStopGrace).count());
    process.Signal(SIGKILL);
    process.WaitExit(kStopGrace);
  }
}

}  // namespace

std::shared_ptr<wire::Engine::Stub> EngineReplica::stub() const {
  std::lock_guard lock(mutex_);
  return stub_;
}

EngineTraits EngineReplica::traits() const {
  std::lock_guard lock(mutex_);
  return traits_;
}

std::optional<wire::StatsResponse> EngineReplica::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

api::EngineInfo EngineReplica::Info() const {
  api::EngineInfo info;
  info.set_name(name());
  info.set_model(model_);
  info.set_replica(replica_);
  info.set_generation(generation_);
  for (const uint32_t gpu : gpus_) info.add_gpus(gpu);
  std::lock_guard lock(mutex_);
  info.set_state(state_.load());
  info.set_pid(pid_);
  info.set_restarts(restarts_);
  info.set_last_exit(last_exit_);
  info.set_process_live(pid_ != 0);
  if (last_canary_at_ != std::chrono::system_clock::time_point{}) {
    *info.mutable_last_canary_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        std::chrono::duration_cast<std::chrono::nanoseconds>(last_canary_at_.time_since_epoch())
            .count());
  }
  info.set_last_canary_error(last_canary_error_);
  info.set_canary_failures(canary_failures_);
  info.set_gpu_fault(gpu_fault_);
  if (started_at_ != std::chrono::system_clock::time_point{}) {
    *info.mutable_started_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        std::chrono::duration_cast<std::chrono::nanoseconds>(started_at_.time_since_epoch())
            .count());
  }
  return info;
}

std::pair<uint32_t, uint32_t> EngineReplica::canaries() const {
  std::lock_guard lock(mutex_);
  return {canary_passes_, canary_failures_};
}

std::string EngineReplica::Unavailability() const {
  std::lock_guard lock(mutex_);
  switch (state_.load()) {
    case api::ENGINE_STATE_STARTING: return "its engine is loading the model";
    case api::ENGINE_STATE_RESTARTING:
      if (!gpu_fault_.empty())
        return "its engine is stopped while its GPU is unhealthy (" + gpu_fault_ + ")";
      return "its engine is restarting (it " + last_exit_ + ")";
    case api::ENGINE_STATE_FAILED:
      return "its engine failed and is not restarted (it " + last_exit_ +
             "); see `inferboxctl status` and the journal";
    case api::ENGINE_STATE_DRAINING:
      if (!gpu_fault_.empty()) {
        return "its engine is draining: its GPU is unhealthy (" + gpu_fault_ + ")";
      }
      return "its engine is draining: the box is shutting down or the model is being unloaded";
    default: return "its engine is not ready";
  }
}

struct Supervisor::Watcher {
  std::shared_ptr<EngineReplica> replica;
  std::shared_ptr<const ModelServeConfig> model;
  std::filesystem::path socket;
  std::unique_ptr<EngineProcess> process;  // Watcher thread only.
  std::mutex process_mutex;                // Guards `process` (reset vs. reads).
  // Set by Stop or Retire; guarded by the supervisor's stop_mutex_.
  bool stop = false;
  std::chrono::milliseconds drain{0};
  // The canary generation in flight, which Stop and Retire cancel (a canary on a busy engine
  // may take its whole timeout); guarded by the supervisor's stop_mutex_.
  grpc::ClientContext* canary = nullptr;

  // Under the supervisor's models_mutex_.
  void Launch(Supervisor& supervisor) {
    if (launched) return;
    launched = true;
    thread = std::thread([&supervisor, this] { supervisor.Watch(*this); });
  }
  // Any thread; returns once the watcher thread (if launched) has ended.
  void Join() {
    std::lock_guard lock(join_mutex);
    if (thread.joinable()) thread.join();
  }

 private:
  std::mutex join_mutex;
  std::thread thread;
  bool launched = false;
};

Supervisor::Supervisor(SupervisorOptions options, std::vector<ModelServeConfig> models)
    : options_(std::move(options)) {
  for (ModelServeConfig& model : models) {
    auto config = std::make_shared<const ModelServeConfig>(std::move(model));
    last_generation_[config->name] = 1;
    auto watchers = MakeWatchers(config, 1);
    watchers_.insert(watchers_.end(), watchers.begin(), watchers.end());
    served_.push_back({std::move(config), std::move(watchers)});
  }
}

std::vector<std::shared_ptr<Supervisor::Watcher>> Supervisor::MakeWatchers(
    std::shared_ptr<const ModelServeConfig> model, uint32_t generation) const {
  std::vector<std::shared_ptr<Watcher>> watchers;
  const size_t per_replica = model->gpus.size() / model->replicas;
  for (uint32_t r = 0; r < model->replicas; ++r) {
    auto watcher = std::make_shared<Watcher>();
    std::vector<uint32_t> gpus(model->gpus.begin() + static_cast<ptrdiff_t>(r * per_replica),
                               model->gpus.begin() + static_cast<ptrdiff_t>((r + 1) * per_replica));
    watcher->replica = std::make_shared<EngineReplica>(model->name, r, std::move(gpus), generation);
    // The first generation keeps the plain name; later ones run beside an older one.
    const std::string socket = generation == 1
                                   ? fmt::format("{}-{}.sock", model->name, r)
                                   : fmt::format("{}-{}.g{}.sock", model->name, r, generation);
    watcher->socket = options_.runtime_dir / "engines" / socket;
    watcher->model = model;
    watchers.push_back(std::move(watcher));
  }
  return watchers;
}

Status Supervisor::CheckModel(const ModelServeConfig& model) const {
  if (!IsModelId(model.name))
    return InvalidArgumentError(
        fmt::format("model name \"{}\" is not {}", model.name, kModelIdPattern));
  if (model.path.empty()) return InvalidArgumentError("model " + model.name + ": path is empty");
  if (auto error = CheckGpuSettings(model, Placed::kRequired)) {
    return InvalidArgumentError(
        fmt::format("model {}: {}: {}", model.name, error->key, error->message));
  }
  std::error_code error;
  if (!std::filesystem::is_directory(ModelPath(model), error)) {
    return InvalidArgumentError(fmt::format("model {}: the model folder {} does not exist",
                                            model.name, ModelPath(model).string()));
  }
  return Status::Ok();
}

Status Supervisor::CheckGpusFreeLocked(const ModelServeConfig& model) const {
  std::vector<ModelServeConfig> others;
  for (const Served& served : served_) others.push_back(*served.config);
  return CheckGpusFree(model, others);
}

Supervisor::~Supervisor() {
  Stop(0ms);
}

void Supervisor::SetGpuHealth(monitoring::GpuHealth health) {
  {
    std::lock_guard lock(gpu_mutex_);
    gpu_health_ = std::move(health);
  }
  {
    // Watchers wait for a GPU to heal on this condition variable.
    std::lock_guard lock(stop_mutex_);
  }
  stop_changed_.notify_all();
}

std::optional<std::string> Supervisor::GpuFault(const EngineReplica& replica) const {
  std::lock_guard lock(gpu_mutex_);
  return monitoring::GpuFaultFor(replica.gpus_, gpu_health_);
}

void Supervisor::SetStateListener(std::function<void()> listener) {
  std::lock_guard lock(listener_mutex_);
  listener_ = std::move(listener);
}

std::vector<ModelServeConfig> Supervisor::models() const {
  std::lock_guard lock(models_mutex_);
  std::vector<ModelServeConfig> models;
  models.reserve(served_.size());
  for (const Served& served : served_) models.push_back(*served.config);
  return models;
}

std::shared_ptr<const ModelServeConfig> Supervisor::FindModel(std::string_view name) const {
  std::lock_guard lock(models_mutex_);
  for (const Served& served : served_) {
    if (served.config->name == name) return served.config;
  }
  return nullptr;
}

std::filesystem::path Supervisor::ModelPath(const ModelServeConfig& model) const {
  if (model.path.is_absolute()) return model.path;
  return (options_.state_dir / model.path).lexically_normal();
}

std::vector<std::shared_ptr<EngineReplica>> Supervisor::Replicas(std::string_view model) const {
  std::vector<std::shared_ptr<EngineReplica>> replicas;
  std::lock_guard lock(models_mutex_);
  for (const Served& served : served_) {
    if (served.config->name != model) continue;
    for (const auto& watcher : served.watchers) replicas.push_back(watcher->replica);
  }
  return replicas;
}

std::vector<api::EngineInfo> Supervisor::Engines() const {
  std::vector<std::shared_ptr<EngineReplica>> replicas;
  {
    std::lock_guard lock(models_mutex_);
    for (const auto& watcher : watchers_) replicas.push_back(watcher->replica);
  }
  std::vector<api::EngineInfo> engines;
  for (const auto& replica : replicas) engines.push_back(replica->Info());
  return engines;
}

api::ModelState Supervisor::ModelStateOf(std::string_view model) const {
  bool starting = false;
  bool restarting = false;
  bool draining = false;
  bool any = false;
  for (const auto& replica : Replicas(model)) {
    any = true;
    switch (replica->state()) {
      case api::ENGINE_STATE_READY: return api::MODEL_STATE_READY;
      case api::ENGINE_STATE_STARTING: starting = true; break;
      case api::ENGINE_STATE_RESTARTING: restarting = true; break;
      case api::ENGINE_STATE_DRAINING: draining = true; break;
      default: break;
    }
  }
  if (!any) return api::MODEL_STATE_UNSPECIFIED;
  if (draining) return api::MODEL_STATE_DRAINING;
  if (starting) return api::MODEL_STATE_LOADING;
  if (restarting) return api::MODEL_STATE_RESTARTING;
  return api::MODEL_STATE_FAILED;
}

void Supervisor::Start() {
  std::error_code error;
  std::filesystem::create_directories(options_.runtime_dir / "engines", error);
  std::filesystem::permissions(options_.runtime_dir / "engines", std::filesystem::perms::owner_all,
                               error);
  std::lock_guard lock(models_mutex_);
  if (closed_) return;
  started_ = true;
  StartWatchersLocked(watchers_);
}

void Supervisor::StartWatchersLocked(const std::vector<std::shared_ptr<Watcher>>& watchers) {
  if (!started_) return;
  for (const auto& watcher : watchers) watcher->Launch(*this);
}

void Supervisor::Stop(std::chrono::milliseconds drain) {
  std::vector<std::shared_ptr<Watcher>> watchers;
  {
    // Once closed_, no watcher is added: every thread that may run is in this snapshot.
    std::lock_guard lock(models_mutex_);
    closed_ = true;
    watchers = watchers_;
  }
  {
    std::lock_guard lock(stop_mutex_);
    if (stopping_) {
      // Second call (the destructor after Stop): just make sure the threads are gone.
    } else {
      stopping_ = true;
      drain_ = drain;
    }
    for (const auto& watcher : watchers) {
      if (watcher->canary != nullptr) watcher->canary->TryCancel();
    }
  }
  stop_changed_.notify_all();
  for (const auto& watcher : watchers) watcher->Join();
}

void Supervisor::Retire(const std::vector<std::shared_ptr<Watcher>>& watchers,
                        std::chrono::milliseconds drain) {
  {
    std::lock_guard lock(stop_mutex_);
    for (const auto& watcher : watchers) {
      watcher->stop = true;
      watcher->drain = drain;
      if (watcher->canary != nullptr) watcher->canary->TryCancel();
    }
  }
  stop_changed_.notify_all();
  for (const auto& watcher : watchers) watcher->Join();
  std::lock_guard lock(models_mutex_);
  std::erase_if(watchers_, [&](const std::shared_ptr<Watcher>& watcher) {
    return std::find(watchers.begin(), watchers.end(), watcher) != watchers.end();
  });
}

Status Supervisor::AddModel(ModelServeConfig model) {
  if (Status status = CheckModel(model); !status.ok()) return status;
  auto config = std::make_shared<const ModelServeConfig>(std::move(model));
  uint32_t generation = 0;
  {
    std::lock_guard lock(models_mutex_);
    if (closed_) return UnavailableError("the box is shutting down");
    for (const Served& served : served_) {
      if (served.config->name == config->name)
        return Status(StatusCode::kAlreadyExists,
                      "model " + config->name + " is already served; replace it instead");
    }
    if (Status free = CheckGpusFreeLocked(*config); !free.ok()) return free;
    generation = ++last_generation_[config->name];
    auto watchers = MakeWatchers(config, generation);
    watchers_.insert(watchers_.end(), watchers.begin(), watchers.end());
    StartWatchersLocked(watchers);
    served_.push_back({config, std::move(watchers)});
  }
  spdlog::info("model {}: added (generation {}, {} replica(s), folder {})", config->name,
               generation, config->replicas, ModelPath(*config).string());
  NotifyListener();
  return Status::Ok();
}

Status Supervisor::RemoveModel(std::string_view name, std::chrono::milliseconds drain) {
  std::vector<std::shared_ptr<Watcher>> watchers;
  {
    std::lock_guard lock(models_mutex_);
    const auto served = std::find_if(served_.begin(), served_.end(), [&](const Served& entry) {
      return entry.config->name == name;
    });
    if (served == served_.end())
      return NotFoundError(fmt::format("model {} is not served by this box", name));
    if (served->replacing)
      return FailedPreconditionError(
          fmt::format("model {} is being replaced; remove it once that is done", name));
    watchers = std::move(served->watchers);
    served_.erase(served);
  }
  // From here new requests for the model are NOT_FOUND; those in flight drain.
  NotifyListener();
  spdlog::info("model {}: removed; draining its engines for up to {} ms", name, drain.count());
  Retire(watchers, drain);
  spdlog::info("model {}: its engines stopped", name);
  return Status::Ok();
}

Status Supervisor::ReplaceModel(ModelServeConfig next, std::chrono::milliseconds ready_timeout,
                                std::chrono::milliseconds drain) {
  if (Status status = CheckModel(next); !status.ok()) return status;
  auto config = std::make_shared<const ModelServeConfig>(std::move(next));
  const std::string& name = config->name;
  auto find = [&] {
    return std::find_if(served_.begin(), served_.end(),
                        [&](const Served& entry) { return entry.config->name == name; });
  };
  std::vector<std::shared_ptr<Watcher>> fresh;
  uint32_t generation = 0;
  {
    std::lock_guard lock(models_mutex_);
    if (closed_) return UnavailableError("the box is shutting down");
    const auto served = find();
    if (served == served_.end())
      return NotFoundError(fmt::format("model {} is not served by this box", name));
    if (served->replacing)
      return FailedPreconditionError(fmt::format("model {} is already being replaced", name));
    // Its own GPUs are shared with the generation it replaces (blue/green), no one else's.
    if (Status free = CheckGpusFreeLocked(*config); !free.ok()) return free;
    if (!started_) return FailedPreconditionError("the engines have not been started");
    served->replacing = true;
    generation = ++last_generation_[name];
    fresh = MakeWatchers(config, generation);
    watchers_.insert(watchers_.end(), fresh.begin(), fresh.end());
    StartWatchersLocked(fresh);
  }
  spdlog::info("model {}: starting generation {} from {} beside the serving one", name, generation,
               ModelPath(*config).string());
  NotifyListener();
  auto finish = [&] {
    std::lock_guard lock(models_mutex_);
    if (const auto served = find(); served != served_.end()) served->replacing = false;
  };

  // Every new replica READY, or why not: an exit (RESTARTING or FAILED), the timeout, Stop.
  Status failure = Status::Ok();
  {
    const auto deadline = Clock::now() + ready_timeout;
    std::unique_lock lock(stop_mutex_);
    for (;;) {
      if (stopping_) {
        failure = UnavailableError("the box is shutting down");
        break;
      }
      bool all_ready = true;
      std::string waiting_for;
      for (const auto& watcher : fresh) {
        const EngineReplica& replica = *watcher->replica;
        const api::EngineState state = replica.state();
        if (state == api::ENGINE_STATE_READY) continue;
        all_ready = false;
        if (state == api::ENGINE_STATE_RESTARTING || state == api::ENGINE_STATE_FAILED) {
          std::lock_guard replica_lock(replica.mutex_);
          failure = UnavailableError(fmt::format("the new engine {} (generation {}) {}",
                                                 replica.name(), generation, replica.last_exit_));
          break;
        }
        waiting_for = replica.name();
      }
      if (!failure.ok() || all_ready) break;
      if (Clock::now() >= deadline) {
        failure = Status(StatusCode::kDeadlineExceeded,
                         fmt::format("the new engine {} (generation {}) was not ready within {} ms",
                                     waiting_for, generation, ready_timeout.count()));
        break;
      }
      stop_changed_.wait_until(lock, deadline);
    }
  }
  if (!failure.ok()) {
    LogEvent(spdlog::level::err, message_ids::kEngineFailed,
             fmt::format("model {}: replacement refused, generation {} keeps serving: {}", name,
                         generation - 1, failure.message()),
             {.model = name});
    Retire(fresh, 0ms);
    finish();
    NotifyListener();
    return failure;
  }

  // The switch: new requests go to the new generation from here.
  std::vector<std::shared_ptr<Watcher>> old;
  {
    std::lock_guard lock(models_mutex_);
    const auto served = find();  // RemoveModel leaves a model being replaced alone.
    old = std::exchange(served->watchers, fresh);
    served->config = config;
  }
  NotifyListener();
  spdlog::info("model {}: generation {} serves; draining the previous engines for up to {} ms",
               name, generation, drain.count());
  {
    std::unique_lock lock(stop_mutex_);
    stop_changed_.wait_for(lock, kSwitchGrace, [this] { return stopping_; });
  }
  Retire(old, drain);
  finish();
  NotifyListener();
  spdlog::info("model {}: the previous engines stopped", name);
  return Status::Ok();
}

std::optional<std::chrono::milliseconds> Supervisor::StopRequested(const Watcher& watcher) {
  std::lock_guard lock(stop_mutex_);
  if (watcher.stop) return watcher.drain;
  if (stopping_) return drain_;
  return std::nullopt;
}

grpc::Status Supervisor::Canary(Watcher& watcher, wire::Engine::Stub& stub,
                                std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  {
    std::lock_guard lock(stop_mutex_);
    if (stopping_ || watcher.stop) return grpc::Status(grpc::StatusCode::CANCELLED, "stopping");
    watcher.canary = &context;
  }
  grpc::Status status = RunCanary(stub, timeout, context);
  std::lock_guard lock(stop_mutex_);
  watcher.canary = nullptr;
  return status;
}

bool Supervisor::SleepUntil(const Watcher& watcher, Clock::time_point until) {
  std::unique_lock lock(stop_mutex_);
  return !stop_changed_.wait_until(lock, until, [&] { return stopping_ || watcher.stop; });
}

void Supervisor::NotifyListener() {
  std::function<void()> listener;
  {
    std::lock_guard lock(listener_mutex_);
    listener = listener_;
  }
  if (listener) listener();
}

void Supervisor::SetState(EngineReplica& replica, api::EngineState state) {
  if (replica.state_.exchange(state) == state) return;
  {
    // ReplaceModel waits for states on this condition variable.
    std::lock_guard lock(stop_mutex_);
  }
  stop_changed_.notify_all();
  NotifyListener();
}

void Supervisor::Watch(Watcher& watcher) {
  EngineReplica& replica = *watcher.replica;
  const ModelServeConfig& model = *watcher.model;
  std::optional<std::chrono::milliseconds> drain;  // Set once asked to stop.
  const EngineSupervisionConfig& supervision = options_.supervision;
  std::deque<Clock::time_point> exits;  // Within the restart window.
  int consecutive_failures = 0;

  std::vector<std::string> argv = {
      options_.engine_executable.string(), "--model", ModelPath(model).string(), "--socket",
      watcher.socket.string(), "--model-id", model.name, "--device", model.device, "--max-running",
      std::to_string(model.max_running), "--token-budget", std::to_string(model.token_budget),
      "--max-waiting", std::to_string(model.max_waiting), "--log-level", options_.log_level,
      // The supervisor drains with the Drain RPC first; the
      // engine's own SIGTERM drain only covers a failed RPC, and
      // must end well within kStopGrace.
      "--drain-timeout", "5", "--parent-pid", std::to_string(getpid()), "--tensor-parallel",
      std::to_string(TensorParallelOf(model))};
  if (model.sampling_defaults != "model") {
    argv.push_back("--sampling-defaults");
    argv.push_back(model.sampling_defaults);
  }
  if (model.queue_timeout_seconds > 0) {
    argv.push_back("--queue-timeout");
    argv.push_back(fmt::format("{}", model.queue_timeout_seconds));
  }
  if (model.kv_cache_gib > 0) {
    argv.push_back("--kv-cache-gib");
    argv.push_back(fmt::format("{}", model.kv_cache_gib));
  }
  if (model.device == "cuda") {
    argv.push_back("--gpu-memory-fraction");
    argv.push_back(fmt::format("{}", model.gpu_memory_fraction));
  }
  if (model.max_waiting_tokens > 0) {
    argv.push_back("--max-waiting-tokens");
    argv.push_back(std::to_string(model.max_waiting_tokens));
  }
  if (model.max_model_len > 0) {
    argv.push_back("--max-model-len");
    argv.push_back(std::to_string(model.max_model_len));
  }
  if (model.quantization != "none") {
    argv.push_back("--quantization");
    argv.push_back(model.quantization);
  }
  if (model.kv_cache_dtype != "auto") {
    argv.push_back("--kv-cache-dtype");
    argv.push_back(model.kv_cache_dtype);
  }
  const std::vector<std::string> env = EngineEnvironment(model, replica.gpus_);
  // Every canary's outcome, for status and /metrics; a failure is logged (the caller kills
  // the engine).
  auto record_canary = [&](bool passed, const std::string& error) {
    {
      std::lock_guard lock(replica.mutex_);
      if (passed) {
        ++replica.canary_passes_;
        replica.last_canary_at_ = std::chrono::system_clock::now();
        replica.last_canary_error_.clear();
      } else {
        ++replica.canary_failures_;
        replica.last_canary_error_ = error;
      }
    }
    if (!passed) {
      LogEvent(spdlog::level::err, message_ids::kEngineCanaryFailed,
               fmt::format("engine {}: the canary generation failed ({}); killing it",
                           replica.name(), error),
               ReplicaFields(replica).get());
    }
  };

  // Holds the engine off GPUs that are unhealthy until they heal (SetGpuHealth); false when
  // asked to stop meanwhile.
  auto wait_for_healthy_gpus = [&] {
    const std::optional<std::string> fault = GpuFault(replica);
    if (!fault) {
      // Healed by the time the faulted engine stopped: nothing to wait for, nothing to show.
      std::lock_guard lock(replica.mutex_);
      replica.gpu_fault_.clear();
      return true;
    }
    {
      std::lock_guard lock(replica.mutex_);
      replica.gpu_fault_ = *fault;
    }
    SetState(replica, api::ENGINE_STATE_RESTARTING);
    spdlog::warn("engine {}: not started while its GPU is unhealthy ({})", replica.name(), *fault);
    {
      std::unique_lock lock(stop_mutex_);
      stop_changed_.wait(lock, [&] { return stopping_ || watcher.stop || !GpuFault(replica); });
      if (stopping_ || watcher.stop) return false;
    }
    {
      std::lock_guard lock(replica.mutex_);
      replica.gpu_fault_.clear();
    }
    spdlog::info("engine {}: its GPUs are healthy again; starting it", replica.name());
    return true;
  };

  for (;;) {
    if (StopRequested(watcher)) break;
    if (!wait_for_healthy_gpus()) break;
    SetState(replica, api::ENGINE_STATE_STARTING);
    // A socket left by a killed engine would answer nothing and slow the first health call.
    std::error_code ignored;
    std::filesystem::remove(watcher.socket, ignored);
    auto spawned = EngineProcess::Spawn(argv, env);
    if (!spawned.ok()) {
      // Out of processes or memory may pass: retried like an exit, up to the crash-loop limit.
      LogEvent(spdlog::level::err, message_ids::kEngineRestarting,
               fmt::format("engine {}: {}", replica.name(), spawned.status().message()),
               ReplicaFields(replica).get());
      {
        std::lock_guard lock(replica.mutex_);
        replica.last_exit_ = spawned.status().message();
      }
      exits.push_back(Clock::now());
      if (static_cast<int>(exits.size()) > supervision.max_restarts) {
        SetState(replica, api::ENGINE_STATE_FAILED);
        break;
      }
      SetState(replica, api::ENGINE_STATE_RESTARTING);
      if (!SleepUntil(watcher, Clock::now() + std::chrono::seconds(1))) break;
      continue;
    }
    {
      std::lock_guard lock(watcher.process_mutex);
      watcher.process = std::move(spawned).value();
    }
    EngineProcess& process = *watcher.process;
    const auto started = Clock::now();
    {
      std::lock_guard lock(replica.mutex_);
      replica.pid_ = process.pid();
      replica.started_at_ = std::chrono::system_clock::now();
    }
    spdlog::info("engine {}: started (pid {}) for {}", replica.name(), process.pid(),
                 ModelPath(model).string());

    auto channel =
        grpc::CreateChannel("unix:" + watcher.socket.string(), grpc::InsecureChannelCredentials());
    auto stub = std::shared_ptr<wire::Engine::Stub>(wire::Engine::NewStub(channel));
    auto health = [&](std::chrono::milliseconds timeout, wire::HealthResponse& response) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + timeout);
      return stub->Health(&context, wire::HealthRequest(), &response);
    };

    // Startup: until Health says READY, the process exits, or the startup timeout.
    bool ready = false;
    bool stop_requested = false;
    std::optional<std::string> gpu_fault;  // Set when its GPU turned unhealthy.
    std::string load_failure;
    std::string killed_for;  // Why the supervisor killed it, if it did.
    while (!ready) {
      if (process.WaitExit(kStartupPollInterval)) break;
      if ((drain = StopRequested(watcher))) {
        stop_requested = true;
        break;
      }
      if ((gpu_fault = GpuFault(replica))) break;
      if (Clock::now() - started > supervision.startup_timeout) {
        killed_for = fmt::format(
            "not ready after {} s",
            std::chrono::duration_cast<std::chrono::seconds>(supervision.startup_timeout).count());
        spdlog::error("engine {}: {}; killing it", replica.name(), killed_for);
        process.Signal(SIGKILL);
        process.WaitExit(kStopGrace);
        break;
      }
      if (!std::filesystem::exists(watcher.socket)) continue;
      wire::HealthResponse response;
      const bool answered = health(1s, response).ok();
      if (answered && response.health() == wire::ENGINE_HEALTH_FAILED) {
        // Said just before an engine that cannot load exits: the reason, for last_exit.
        load_failure = response.message();
      }
      if (answered && response.health() == wire::ENGINE_HEALTH_READY) {
        // Ready means a generation works, not just that the process answers.
        if (const grpc::Status canary = Canary(watcher, *stub, supervision.canary_timeout);
            !canary.ok()) {
          if ((drain = StopRequested(watcher))) {  // Cancelled by Stop or Retire.
            stop_requested = true;
            break;
          }
          record_canary(false, "startup: " + canary.error_message());
          killed_for = "the startup canary generation failed: " + canary.error_message();
          process.Signal(SIGKILL);
          process.WaitExit(kStopGrace);
          break;
        }
        record_canary(true, "");
        std::lock_guard lock(replica.mutex_);
        replica.traits_ = {response.max_model_len(), response.has_chat_template(),
                           response.chat_prompt_opens_reasoning(), response.tool_call_format()};
        replica.stub_ = stub;
        ready = true;
      }
    }

    auto ready_at = Clock::now();
    if (ready) {
      ready_at = Clock::now();
      SetState(replica, api::ENGINE_STATE_READY);
      LogEvent(spdlog::level::info, message_ids::kReady,
               fmt::format("engine {}: ready (pid {})", replica.name(), process.pid()),
               ReplicaFields(replica).get());
      // Kills the engine as broken, and takes it out of READY at once: the router sends it
      // nothing new, and health says so, even while the process takes its time to exit (one
      // stuck in the GPU driver may take long).
      auto kill = [&](const std::string& why) {
        process.Signal(SIGKILL);
        killed_for = why;
        {
          std::lock_guard lock(replica.mutex_);
          replica.stub_.reset();
          replica.last_exit_ = "was killed: " + why;  // Until it has exited.
        }
        SetState(replica, api::ENGINE_STATE_RESTARTING);
      };
      // Watch: exit through the pidfd, hangs through health calls.
      int misses = 0;
      auto next_health = Clock::now() + supervision.health_interval;
      uint64_t last_steps = 0;
      auto last_progress = Clock::now();
      auto next_canary = Clock::now() + supervision.canary_interval;
      for (;;) {
        const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::max(next_health - Clock::now(), Clock::duration(0)));
        if (process.WaitExit(std::min<std::chrono::milliseconds>(wait, 100ms))) break;
        if ((drain = StopRequested(watcher))) {
          stop_requested = true;
          break;
        }
        if ((gpu_fault = GpuFault(replica))) break;
        if (Clock::now() >= next_canary) {
          const auto steps_before = last_steps;
          const grpc::Status canary = Canary(watcher, *stub, supervision.canary_timeout);
          next_canary = Clock::now() + supervision.canary_interval;
          if ((drain = StopRequested(watcher))) {  // It may have been cancelled for the stop.
            stop_requested = true;
            break;
          }
          bool failed = !canary.ok();
          if (canary.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
              canary.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
            // A busy engine may just be slow to reach the canary, or its queue full (it refuses
            // the canary as it refuses any request then): only a lack of progress counts
            // against it.
            wire::HealthResponse progress;
            failed = !health(supervision.health_timeout, progress).ok() ||
                     progress.steps_completed() == steps_before;
            if (!failed) {
              spdlog::info(
                  "engine {}: the canary generation could not run ({}), but the engine "
                  "completes steps: busy, not stuck",
                  replica.name(), canary.error_message());
            }
          }
          if (!failed) {
            record_canary(true, "");
          } else if (!process.WaitExit(std::chrono::milliseconds(0))) {
            record_canary(false, canary.error_message());
            kill("the canary generation failed: " + canary.error_message());
          }
          continue;
        }
        if (Clock::now() < next_health) continue;
        next_health = Clock::now() + supervision.health_interval;
        wire::HealthResponse response;
        const grpc::Status status = health(supervision.health_timeout, response);
        if (status.ok() && response.health() != wire::ENGINE_HEALTH_FAILED) {
          misses = 0;
          // The load and cache counters for /metrics, fetched along with health.
          grpc::ClientContext stats_context;
          stats_context.set_deadline(std::chrono::system_clock::now() + supervision.health_timeout);
          wire::StatsResponse stats;
          if (stub->Stats(&stats_context, wire::StatsRequest(), &stats).ok()) {
            std::lock_guard lock(replica.mutex_);
            replica.stats_ = std::move(stats);
          }
          // Answering health is not progress: the loop must complete steps while it has work.
          if (response.requests_in_flight() == 0 || response.steps_completed() != last_steps) {
            last_steps = response.steps_completed();
            last_progress = Clock::now();
          } else if (Clock::now() - last_progress > supervision.stall_timeout) {
            const std::string why = fmt::format(
                "{} requests in flight and no step completed for {} ms",
                response.requests_in_flight(),
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_progress)
                    .count());
            spdlog::error("engine {}: {}; killing it as stuck", replica.name(), why);
            kill(why);
          }
          continue;
        }
        if (status.ok()) {
          spdlog::error("engine {}: reports FAILED ({}); killing it", replica.name(),
                        response.message());
          kill("it reported FAILED: " + response.message());
          continue;
        }
        if (++misses >= kMaxHealthMisses) {
          spdlog::error("engine {}: {} health checks in a row failed ({}); killing it as hung",
                        replica.name(), misses, status.error_message());
          kill(fmt::format("{} health checks in a row failed", misses));
          misses = 0;
        }
      }
      // Uptime counts from readiness: a slow load followed by a quick crash is a failure.
      if (Clock::now() - ready_at > kStableUptime) consecutive_failures = 0;
    }
    {
      std::lock_guard lock(replica.mutex_);
      replica.stub_.reset();
    }

    if (gpu_fault && !stop_requested) {
      // Out of READY first, so the router sends nothing new; then the requests in flight get
      // kGpuFaultDrain, and the engine stops until its GPUs heal (not a crash: no backoff).
      {
        std::lock_guard lock(replica.mutex_);
        replica.gpu_fault_ = *gpu_fault;
      }
      SetState(replica, api::ENGINE_STATE_DRAINING);
      LogEvent(
          spdlog::level::err, message_ids::kEngineGpuFault,
          fmt::format("engine {}: its GPU is unhealthy ({}); draining it for up to {} s, "
                      "then stopping it until the GPU is healthy again",
                      replica.name(), *gpu_fault,
                      std::chrono::duration_cast<std::chrono::seconds>(kGpuFaultDrain).count()),
          ReplicaFields(replica).get());
      DrainAndStop(replica.name(), *stub, process,
                   ready && !process.WaitExit(0ms) ? kGpuFaultDrain : 0ms);
      {
        std::lock_guard lock(watcher.process_mutex);
        watcher.process.reset();
      }
      {
        std::lock_guard lock(replica.mutex_);
        replica.pid_ = 0;
        replica.last_exit_ = "was stopped: its GPU is unhealthy";
        ++replica.restarts_;
      }
      continue;
    }

    if (stop_requested) {
      SetState(replica, api::ENGINE_STATE_DRAINING);
      DrainAndStop(replica.name(), *stub, process, ready ? *drain : 0ms);
      spdlog::info("engine {}: stopped", replica.name());
      std::lock_guard lock(replica.mutex_);
      replica.pid_ = 0;
      break;
    }

    // The engine exited on its own (or was killed as hung): restart, or give up.
    const int wait_status = process.wait_status();
    const std::string& cause = killed_for.empty() ? load_failure : killed_for;
    const std::string exit = cause.empty()
                                 ? DescribeExit(wait_status)
                                 : fmt::format("{} ({})", DescribeExit(wait_status), cause);
    {
      std::lock_guard lock(watcher.process_mutex);
      watcher.process.reset();
    }
    // Why it exited, then not READY, then no process (Info reads the state under the lock
    // that guards the pid): a status never shows a READY engine without a process, nor one
    // restarting for no stated reason.
    {
      std::lock_guard lock(replica.mutex_);
      replica.last_exit_ = exit;
    }
    SetState(replica, api::ENGINE_STATE_RESTARTING);
    {
      std::lock_guard lock(replica.mutex_);
      replica.pid_ = 0;
    }
    const auto now = Clock::now();
    exits.push_back(now);
    while (!exits.empty() && now - exits.front() > supervision.restart_window) exits.pop_front();
    const bool refuses_model =
        WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == kEngineExitConfig;
    if (refuses_model || static_cast<int>(exits.size()) > supervision.max_restarts) {
      const std::string why =
          refuses_model
              ? exit
              : fmt::format(
                    "{} exits within {} s, the last: {}", exits.size(),
                    std::chrono::duration_cast<std::chrono::seconds>(supervision.restart_window)
                        .count(),
                    exit);
      LogEvent(spdlog::level::critical, message_ids::kEngineFailed,
               fmt::format("engine {}: not restarted, model {} is degraded: {}", replica.name(),
                           model.name, why),
               ReplicaFields(replica).get());
      SetState(replica, api::ENGINE_STATE_FAILED);
      break;
    }
    ++consecutive_failures;
    const auto backoff = std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(500) * (1 << std::min(consecutive_failures - 1, 6)), 30s);
    LogEvent(
        spdlog::level::err, message_ids::kEngineRestarting,
        fmt::format("engine {}: {}; restarting in {} ms", replica.name(), exit, backoff.count()),
        ReplicaFields(replica).get());
    SetState(replica, api::ENGINE_STATE_RESTARTING);
    {
      std::lock_guard lock(replica.mutex_);
      ++replica.restarts_;
    }
    if (!SleepUntil(watcher, Clock::now() + backoff)) break;
  }
  std::lock_guard lock(watcher.process_mutex);
  watcher.process.reset();
}

Result<std::filesystem::path> FindEngineExecutable() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return NotFoundError("cannot read /proc/self/exe: " + error.message());
  const std::filesystem::path dir = self.parent_path();
  const std::vector<std::filesystem::path> candidates = {
      dir / "inferbox-engine",
      dir / ".." / "engine" / "server" / "inferbox-engine",
      dir / ".." / "libexec" / "inferbox" / "inferbox-engine",
  };
  std::string looked;
  for (const auto& candidate : candidates) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.lexically_normal();
    looked += (looked.empty() ? "" : ", ") + candidate.lexically_normal().string();
  }
  return NotFoundError("inferbox-engine not found (looked at " + looked +
                       "); set [engines] executable");
}

}  // namespace inferbox::daemon
