// The engine supervisor: one inferbox-engine process per model replica, each watched by its
// own thread. A watcher spawns its engine (socket in the runtime directory, GPUs made
// visible by CUDA_VISIBLE_DEVICES), waits for Health READY, then watches the process (exit
// through a pidfd) and its health (a Health call with a deadline every interval; three
// misses in a row mean a hung engine, which is killed). A dead engine is restarted with
// exponential backoff; an engine that refuses its model (exit 78) or exits too often is
// marked FAILED and left alone, so a bad model degrades the box instead of spinning.
//
// Requests in flight on an engine that dies see their stream fail at once (the socket
// closes), which the frontend turns into UNAVAILABLE.
//
// The set of models changes at run time (AddModel, RemoveModel, ReplaceModel). Each start of
// a model's engines is a generation (1 for the configured models, +1 per replacement or
// re-add); engine sockets carry it, so the engines of two generations never collide. A
// replacement is blue/green: the new generation starts beside the serving one and takes new
// requests only once every new replica is READY; the old one then drains and stops.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "inferbox/daemon/config.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"
#include "inferbox/monitoring/gpu_health.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::daemon {

struct SupervisorOptions {
  std::filesystem::path engine_executable;
  // Sockets go to <runtime_dir>/engines.
  std::filesystem::path runtime_dir;
  // Relative model paths are under it.
  std::filesystem::path state_dir;
  EngineSupervisionConfig supervision;
  std::string log_level = "info";
};

// What the latest Health call said about the model an engine serves.
struct EngineTraits {
  uint32_t max_model_len = 0;
  bool has_chat_template = false;
  bool chat_prompt_opens_reasoning = false;
  std::string tool_call_format;  // As the engine's Health says it.
};

// One replica. Shared between its watcher thread, the router and request handlers.
class EngineReplica {
 public:
  EngineReplica(std::string model, uint32_t replica, std::vector<uint32_t> gpus,
                uint32_t generation = 1)
      : model_(std::move(model)),
        replica_(replica),
        generation_(generation),
        gpus_(std::move(gpus)) {}

  const std::string& model() const { return model_; }
  uint32_t replica() const { return replica_; }
  // Which start of the model's engines this replica belongs to (see the file comment).
  uint32_t generation() const { return generation_; }
  std::string name() const { return model_ + "/" + std::to_string(replica_); }

  inferbox::v1::EngineState state() const { return state_.load(); }
  // The stub for calls to the engine; null unless READY.
  std::shared_ptr<inferbox::engine::v1::Engine::Stub> stub() const;
  EngineTraits traits() const;
  // The engine's load and cache counters from the latest health round (absent until the
  // engine was first ready).
  std::optional<inferbox::engine::v1::StatsResponse> stats() const;
  inferbox::v1::EngineInfo Info() const;
  // Why it cannot serve, for errors: "restarting after it was killed by signal 9", ...
  std::string Unavailability() const;
  // Canary generations that passed and that failed since the daemon started.
  std::pair<uint32_t, uint32_t> canaries() const;
  // The GPU indices the engine runs on (empty: CPU).
  const std::vector<uint32_t>& gpus() const { return gpus_; }

  // Router load signal: tokens (prompt + budget) of requests in flight on this replica.
  std::atomic<int64_t> outstanding_tokens{0};

 private:
  friend class Supervisor;

  const std::string model_;
  const uint32_t replica_;
  const uint32_t generation_;
  const std::vector<uint32_t> gpus_;
  std::atomic<inferbox::v1::EngineState> state_{inferbox::v1::ENGINE_STATE_STARTING};
  mutable std::mutex mutex_;  // Guards the fields below.
  std::shared_ptr<inferbox::engine::v1::Engine::Stub> stub_;
  EngineTraits traits_;
  std::optional<inferbox::engine::v1::StatsResponse> stats_;
  pid_t pid_ = 0;
  uint32_t restarts_ = 0;
  std::string last_exit_;
  std::chrono::system_clock::time_point started_at_{};
  // The canaries: when one last passed, why the latest failed (empty when it passed).
  std::chrono::system_clock::time_point last_canary_at_{};
  std::string last_canary_error_;
  uint32_t canary_passes_ = 0;
  uint32_t canary_failures_ = 0;
  // Why the engine is held off its GPUs (Supervisor::SetGpuHealth); empty when it is not.
  std::string gpu_fault_;
};

// Thread safety: every public member may be called from any thread (request handlers, the
// admin RPC thread, watcher threads through the state listener), except that Start and the
// destructor must not race with the others.
class Supervisor {
 public:
  // `models` must have distinct names and valid settings (the config parser checks them).
  Supervisor(SupervisorOptions options, std::vector<ModelServeConfig> models);
  // Stops every engine (no drain) if Stop was not called. No AddModel, RemoveModel or
  // ReplaceModel may still be running.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts a watcher per replica; returns at once (engines load in the background).
  void Start();
  // Lets each ready engine finish its requests for up to `drain`, then stops every engine
  // (SIGTERM, SIGKILL after a grace period). Returns when all have exited. A running
  // ReplaceModel then fails with UNAVAILABLE; AddModel is refused from then on.
  void Stop(std::chrono::milliseconds drain);

  // Called on a watcher thread whenever a replica's state changes, and on the calling thread
  // when AddModel, RemoveModel or ReplaceModel changed the set of models or replicas served.
  void SetStateListener(std::function<void()> listener);

  // A snapshot of the models served, in the order they were configured or added.
  std::vector<ModelServeConfig> models() const;
  // The served model of that name, or null.
  std::shared_ptr<const ModelServeConfig> FindModel(std::string_view name) const;

  // Starts serving `model` (a name not served yet): its replicas' engines start in the
  // background (at once if Start was called, else with Start). ALREADY_EXISTS when the name
  // is served; INVALID_ARGUMENT for a bad config (name, device and GPUs as the config file
  // requires them, placed: a cuda model lists its GPUs; a model folder that does not exist);
  // FAILED_PRECONDITION when another served model uses one of its GPUs; UNAVAILABLE after
  // Stop.
  Status AddModel(ModelServeConfig model);
  // Stops serving `name`: new requests for it fail at once with NOT_FOUND (as for an unknown
  // model); requests in flight get up to `drain` to finish (the engine's Drain RPC), then its
  // engines stop. Returns when they have exited. NOT_FOUND when not served;
  // FAILED_PRECONDITION while a ReplaceModel of it runs.
  Status RemoveModel(std::string_view name, std::chrono::milliseconds drain);
  // Blue/green: starts engines for `next` (same name as a served model; new folder and/or
  // options) beside the current ones, waits until every new replica is READY (health and
  // the startup canary) within `ready_timeout`, then switches new requests to them, drains
  // the old replicas for up to `drain` (in-flight requests finish on the old engines) and
  // stops them. Returns when the old engines have exited. If a new engine exits, fails or is
  // not ready in time, the new engines are stopped and the old ones keep serving:
  // UNAVAILABLE (DEADLINE_EXCEEDED for the timeout) with why, e.g. "the new engine tiny/0
  // (generation 2) exited with status 78: ...". NOT_FOUND when the name is not served;
  // FAILED_PRECONDITION when a replacement of that model is already running;
  // INVALID_ARGUMENT for a bad config (as AddModel).
  Status ReplaceModel(ModelServeConfig next, std::chrono::milliseconds ready_timeout,
                      std::chrono::milliseconds drain);

  // The replicas of `model` that take new requests: during a replacement the old ones until
  // the switch, then the new ones. A handle stays valid after its replica is retired.
  std::vector<std::shared_ptr<EngineReplica>> Replicas(std::string_view model) const;
  // Every engine, including those of a replacement still starting and those draining.
  std::vector<inferbox::v1::EngineInfo> Engines() const;
  // READY if a replica is ready; else LOADING while one starts, RESTARTING while one waits
  // to restart, FAILED when all failed.
  inferbox::v1::ModelState ModelStateOf(std::string_view model) const;
  // The model folder's absolute path.
  std::filesystem::path ModelPath(const ModelServeConfig& model) const;

  // The GPUs' latest verdict (the daemon's GPU health watcher). An engine on an unhealthy GPU
  // (monitoring::GpuFaultFor, which fails closed) leaves READY at once, so it takes no new
  // requests, drains for up to kGpuFaultDrain, is stopped and waits, without counting as a
  // crash, until its GPUs are healthy again; then it starts afresh. Engines on other GPUs
  // and CPU engines are left alone.
  void SetGpuHealth(monitoring::GpuHealth health);
  // Why `replica` must not serve on its GPUs now; nullopt when it may.
  std::optional<std::string> GpuFault(const EngineReplica& replica) const;

 private:
  struct Watcher;
  // A model served: its config and the watchers of the generation taking new requests.
  struct Served {
    std::shared_ptr<const ModelServeConfig> config;
    std::vector<std::shared_ptr<Watcher>> watchers;
    bool replacing = false;  // A ReplaceModel runs.
  };

  // Watchers (threads not started) for a generation of `model`.
  std::vector<std::shared_ptr<Watcher>> MakeWatchers(std::shared_ptr<const ModelServeConfig> model,
                                                     uint32_t generation) const;
  Status CheckModel(const ModelServeConfig& model) const;
  // FAILED_PRECONDITION when another served model uses one of `model`'s GPUs. Requires
  // models_mutex_.
  Status CheckGpusFreeLocked(const ModelServeConfig& model) const;
  // Requires models_mutex_.
  void StartWatchersLocked(const std::vector<std::shared_ptr<Watcher>>& watchers);
  // Asks the watchers to drain for up to `drain` and stop, waits for their threads, and
  // forgets them.
  void Retire(const std::vector<std::shared_ptr<Watcher>>& watchers,
              std::chrono::milliseconds drain);
  void NotifyListener();

  void Watch(Watcher& watcher);
  void SetState(EngineReplica& replica, inferbox::v1::EngineState state);
  // The drain to stop `watcher` with, once Stop or Retire asked it to stop.
  std::optional<std::chrono::milliseconds> StopRequested(const Watcher& watcher);
  // Waits until `until` or a stop request; false when asked to stop.
  bool SleepUntil(const Watcher& watcher, std::chrono::steady_clock::time_point until);
  // A one-token generation on the engine within `timeout`, cancelled (CANCELLED) by Stop or
  // Retire of `watcher`.
  grpc::Status Canary(Watcher& watcher, inferbox::engine::v1::Engine::Stub& stub,
                      std::chrono::milliseconds timeout);

  const SupervisorOptions options_;
  // Guards served_, watchers_, last_generation_, started_ and closed_.
  mutable std::mutex models_mutex_;
  std::vector<Served> served_;
  // Every watcher whose thread may run (all generations); the one that removes a watcher
  // from here joins its thread first.
  std::vector<std::shared_ptr<Watcher>> watchers_;
  std::map<std::string, uint32_t, std::less<>> last_generation_;  // By model name.
  bool started_ = false;
  bool closed_ = false;  // Stop was called.
  std::mutex listener_mutex_;
  std::function<void()> listener_;
  // Guards stopping_, drain_ and each watcher's stop request. stop_changed_ is also notified
  // on every replica state change (ReplaceModel waits on it). Never held with models_mutex_.
  std::mutex stop_mutex_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  std::chrono::milliseconds drain_{0};
  mutable std::mutex gpu_mutex_;  // Guards gpu_health_; taken after stop_mutex_, never before.
  monitoring::GpuHealth gpu_health_;
};

// The inferbox-engine next to this inferboxd: in the build tree (../engine/server) or an
// install (../libexec/inferbox). NOT_FOUND naming the places looked at.
Result<std::filesystem::path> FindEngineExecutable();

}  // namespace inferbox::daemon
