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
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "inferbox/daemon/config.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"
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
};

// One replica. Shared between its watcher thread, the router and request handlers.
class EngineReplica {
 public:
  EngineReplica(std::string model, uint32_t replica, std::vector<uint32_t> gpus)
      : model_(std::move(model)), replica_(replica), gpus_(std::move(gpus)) {}

  const std::string& model() const { return model_; }
  uint32_t replica() const { return replica_; }
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

  // Router load signal: tokens (prompt + budget) of requests in flight on this replica.
  std::atomic<int64_t> outstanding_tokens{0};

 private:
  friend class Supervisor;

  const std::string model_;
  const uint32_t replica_;
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
};

class Supervisor {
 public:
  Supervisor(SupervisorOptions options, std::vector<ModelServeConfig> models);
  // Stops every engine (no drain) if Stop was not called.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts a watcher per replica; returns at once (engines load in the background).
  void Start();
  // Lets each ready engine finish its requests for up to `drain`, then stops every engine
  // (SIGTERM, SIGKILL after a grace period). Returns when all have exited.
  void Stop(std::chrono::milliseconds drain);

  // Called on a watcher thread whenever a replica's state changes.
  void SetStateListener(std::function<void()> listener);

  const std::vector<ModelServeConfig>& models() const { return models_; }
  const ModelServeConfig* FindModel(std::string_view name) const;
  std::vector<std::shared_ptr<EngineReplica>> Replicas(std::string_view model) const;
  std::vector<inferbox::v1::EngineInfo> Engines() const;
  // READY if a replica is ready; else LOADING while one starts, RESTARTING while one waits
  // to restart, FAILED when all failed.
  inferbox::v1::ModelState ModelStateOf(std::string_view model) const;
  // The model folder's absolute path.
  std::filesystem::path ModelPath(const ModelServeConfig& model) const;

 private:
  struct Watcher;

  void Watch(Watcher& watcher);
  void SetState(EngineReplica& replica, inferbox::v1::EngineState state);
  // Waits until `until` or Stop; false when stopping.
  bool SleepUntil(std::chrono::steady_clock::time_point until);

  const SupervisorOptions options_;
  const std::vector<ModelServeConfig> models_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
  std::mutex listener_mutex_;
  std::function<void()> listener_;
  std::mutex stop_mutex_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  std::chrono::milliseconds drain_{0};
};

// The inferbox-engine next to this inferboxd: in the build tree (../engine/server) or an
// install (../libexec/inferbox). NOT_FOUND naming the places looked at.
Result<std::filesystem::path> FindEngineExecutable();

}  // namespace inferbox::daemon
