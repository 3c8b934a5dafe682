#include "inferbox/daemon/daemon.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <boost/json.hpp>

#include "inferbox/admin/admin_service.h"
#include "inferbox/admin/audit_log.h"
#include "inferbox/admin/status_board.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/logging.h"
#include "inferbox/common/version.h"
#include "inferbox/daemon/config.h"
#include "inferbox/daemon/engine_frontend.h"
#include "inferbox/daemon/engine_metrics.h"
#include "inferbox/daemon/inference_service.h"
#include "inferbox/daemon/key_quotas.h"
#include "inferbox/daemon/key_store.h"
#include "inferbox/daemon/model_manager.h"
#include "inferbox/daemon/openai_gateway.h"
#include "inferbox/daemon/placement.h"
#include "inferbox/daemon/supervisor.h"
#include "inferbox/daemon/systemd_notifier.h"
#include "inferbox/daemon/usage_ledger.h"
#include "inferbox/daemon/usage_meter.h"
#include "inferbox/monitoring/daemon_metrics.h"
#include "inferbox/monitoring/filesystem_collector.h"
#include "inferbox/monitoring/gpu_collector.h"
#include "inferbox/monitoring/metrics_server.h"
#include "inferbox/monitoring/process_collector.h"
#include "inferbox/monitoring/serving_metrics.h"

namespace inferbox::daemon {
namespace {

using google::protobuf::util::TimeUtil;

constexpr std::string_view kEmbeddedConfigName = "(embedded default)";
constexpr std::string_view kAdminServiceName = "inferbox.v1.Admin";
constexpr std::string_view kInferenceServiceName = "inferbox.v1.Inference";
// Largest request message accepted, in bytes: prompts and chats fit easily; anything larger
// is refused with RESOURCE_EXHAUSTED by gRPC before it reaches a handler.
constexpr int kMaxReceiveMessageBytes = 16 * 1024 * 1024;
// Name of the file in the runtime directory that lists the bound addresses (useful when
// the config asks for port 0); written before READY=1, removed at exit.
constexpr std::string_view kListenersFileName = "listeners.toml";

// The HTTP acceptor turns at least once a second; this long without a turn is a stuck
// acceptor (Responsive), well past any pause of a loaded machine.
constexpr std::chrono::seconds kAcceptorStall{10};
// How often the main loop refreshes the STATUS= line (R4.1), when it changed.
constexpr std::chrono::seconds kProgressInterval{2};

// Fault injection for the watchdog's tests: INFERBOX_TEST_FAULT_STALL (serving-state or
// http) and INFERBOX_TEST_FAULT_STALL_AFTER_MS (when, after the start; 0 if unset).
std::optional<std::pair<std::string, std::chrono::milliseconds>> FaultStall() {
  const char* what = std::getenv("INFERBOX_TEST_FAULT_STALL");
  if (what == nullptr || *what == '\0') return std::nullopt;
  const char* after = std::getenv("INFERBOX_TEST_FAULT_STALL_AFTER_MS");
  return std::pair{std::string(what),
                   std::chrono::milliseconds(after != nullptr ? std::atoll(after) : 0)};
}

// Takes gRPC's reflection plugin out of a server: the reflection library registers it for
// every ServerBuilder by a static initializer once it is linked (calling
// InitProtoReflectionServerBuilderPlugin or not), so grpc_reflection = false needs this.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

// The signals only the main loop receives (blocked everywhere, taken with sigwaitinfo).
sigset_t MainLoopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  return signals;
}

Result<DaemonConfig> LoadConfig(const DaemonOptions& options) {
  if (options.config_path) return LoadConfigFile(*options.config_path);
  return ParseConfig(EmbeddedDefaultConfig(), kEmbeddedConfigName);
}

std::filesystem::path ResolveDirectory(const std::optional<std::filesystem::path>& flag,
                                       const std::optional<std::filesystem::path>& configured,
                                       const char* systemd_variable, std::string_view fallback) {
  if (flag) return std::filesystem::absolute(*flag).lexically_normal();
  if (configured) return *configured;
  if (const char* value = std::getenv(systemd_variable); value != nullptr && *value != '\0') {
    // systemd passes a colon-separated list when a unit names several directories.
    const std::string_view list(value);
    return std::filesystem::path(std::string(list.substr(0, list.find(':'))));
  }
  return std::filesystem::path(fallback);
}

Status EnsureDirectory(const std::filesystem::path& path, std::string_view what) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) {
    return FailedPreconditionError(
        fmt::format("cannot create the {} {}: {}", what, path.string(), error.message()));
  }
  return Status::Ok();
}

// The key store as the APIs' authenticator, counting refusals for /metrics.
class CountingAuthenticator final : public Authenticator {
 public:
  CountingAuthenticator(const Authenticator& inner, monitoring::ServingMetrics& metrics)
      : inner_(inner), metrics_(metrics) {}
  Result<Caller> Authenticate(std::string_view authorization) const override {
    Result<Caller> caller = inner_.Authenticate(authorization);
    if (!caller.ok()) metrics_.RecordRejected("unauthenticated");
    return caller;
  }

 private:
  const Authenticator& inner_;
  monitoring::ServingMetrics& metrics_;
};

// The parts of a running daemon that exist once startup succeeded. Destruction order
// (reverse of declaration) stops the gRPC server before the objects its handlers use.
class RunningDaemon {
 public:
  RunningDaemon(const DaemonOptions& options, DaemonConfig config,
                std::optional<TlsCredentials> tls)
      : options_(options),
        config_(std::move(config)),
        tls_(std::move(tls)),
        board_(kVersion, kGitCommit),
        metrics_({.version = std::string(kVersion),
                  .commit = std::string(kGitCommit),
                  .cuda = std::string(kCudaVersion),
                  .driver = gpu_collector_->driver_version().empty()
                                ? "none"
                                : gpu_collector_->driver_version()}) {}

  ~RunningDaemon() {
    // The GPU health watcher calls UpdateServingState, which uses what goes away below.
    gpu_collector_->StopWatchingHealth();
    // The metrics server reads the supervisor (engine collector) while it serves scrapes.
    metrics_server_.reset();
    board_.SetEngineSource(nullptr);
    board_.SetEconomicsSource(nullptr);
    board_.SetHealthSource(nullptr);
    if (supervisor_) {
      // The health service the listener updates goes away with the gRPC server.
      supervisor_->SetStateListener(nullptr);
      supervisor_->Stop(std::chrono::milliseconds(0));
    }
    if (!listeners_file_.empty()) {
      std::error_code ignored;
      std::filesystem::remove(listeners_file_, ignored);
    }
  }

  Status Start();
  void Serve();
  void Shutdown();

 private:
  // Whether the box's working parts still turn, asked before each systemd watchdog ping: its
  // health as /health and gRPC Health compute it (the serving state's, the supervisor's and
  // every replica's locks: a deadlock there blocks this thread, and the pings stop) and the
  // HTTP acceptor's loop (false, logged once, when it has not turned for kAcceptorStall).
  bool Responsive();
  // Fault injection for the watchdog's tests (INFERBOX_TEST_FAULT_STALL=serving-state): a
  // thread takes the serving state's lock and never gives it back, `after` from now.
  void InjectServingStateDeadlock(std::chrono::milliseconds after);
  Status OpenDatabase(const std::filesystem::path& state_dir);
  // The model store (<state_dir>/models) and the models loaded at run time before.
  Status OpenModelStore(const std::filesystem::path& state_dir);
  // Memory of each GPU found, in bytes, from the GPU collector's latest reading.
  std::vector<uint64_t> GpuMemory() const;
  Status StartMetrics();
  Status StartEngines(const std::filesystem::path& state_dir,
                      const std::filesystem::path& runtime_dir);
  Status StartGrpc();
  // The STATUS= line while serving: models ready (and what the others are doing), requests
  // running and waiting, e.g. "serving: 2 of 2 models ready; 14 running, 3 waiting".
  std::string ProgressLine();
  // TLS (mutual with a client CA) when [server.tls] is set, else plain TCP.
  std::shared_ptr<grpc::ServerCredentials> GrpcCredentials() const;
  // For status: "" (plain TCP), "TLS", or "TLS, client certificates required".
  std::string ListenerSecurity(bool client_certificates) const;
  Status StartHttp();
  void Reload();
  DaemonConfig Applicable(DaemonConfig next, bool warn) const;
  // Health, status and readiness from the engines' states (any thread).
  void UpdateServingState();
  // Gives the supervisor the GPUs' verdict now, so that engines on an unhealthy GPU stop
  // (any thread; one at a time, so an older verdict never overwrites a newer one).
  void FenceGpus();
  // Every layer of the box's health (daemon, models and their engines' canaries, GPUs) and
  // whether it can serve a generation (any thread).
  inferbox::v1::BoxHealth HealthReport() const;
  // /health/ready on the metrics listener: HealthReport as JSON; 200 when ready, else 503.
  monitoring::ProbeResponse Readiness() const;

  const DaemonOptions& options_;
  DaemonConfig config_;  // Main thread only.
  // What the listeners serve TLS with (config_.tls, as read at start); unset: plain TCP.
  const std::optional<TlsCredentials> tls_;
  SystemdNotifier notifier_;
  admin::StatusBoard board_;
  // Before the metrics: their build info names the driver it found.
  std::shared_ptr<monitoring::GpuCollector> gpu_collector_ =
      std::make_shared<monitoring::GpuCollector>();
  monitoring::DaemonMetrics metrics_;
  std::shared_ptr<monitoring::ProcessCollector> process_collector_ =
      std::make_shared<monitoring::ProcessCollector>();
  std::unique_ptr<monitoring::MetricsServer> metrics_server_;
  // API keys (state_dir/inferbox.db); also the Authenticator of every API.
  std::unique_ptr<KeyStore> keys_;
  // The usage ledger, the keys' quotas (rebuilt from the ledger at start), the meter that
  // applies both to every generation, and the Admin service's audit log; all in the same
  // database. Declared before the frontend, so they outlive every stream.
  std::unique_ptr<UsageLedger> usage_ledger_;
  KeyQuotas key_quotas_;
  std::unique_ptr<UsageMeter> usage_meter_;
  std::unique_ptr<admin::AuditLog> audit_log_;
  // The model store and the served set behind the Admin model RPCs.
  std::unique_ptr<ModelManager> model_manager_;
  std::unique_ptr<admin::AdminServiceImpl> admin_service_;
  monitoring::ServingMetrics serving_metrics_{*metrics_.registry(), config_.metrics_per_key,
                                              config_.metric_buckets};
  std::unique_ptr<CountingAuthenticator> api_authenticator_;
  std::shared_ptr<EngineMetricsCollector> engine_collector_;
  std::shared_ptr<EconomicsCollector> economics_collector_;
  // Free space where the box writes: the state directory and the model store in it.
  std::shared_ptr<monitoring::FilesystemCollector> filesystem_collector_;
  // Declared before the gRPC server, so they outlive its handlers.
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<EngineFrontend> frontend_;
  std::unique_ptr<InferenceServiceImpl> inference_service_;
  std::atomic<bool> draining_{false};
  // How recent a READY engine's last passed canary must be for it to count as ready: the
  // canary interval and timeout, plus a second. Set before the engines start.
  std::chrono::milliseconds canary_period_{0};
  std::mutex serving_state_mutex_;
  std::mutex gpu_fence_mutex_;  // Serialises FenceGpus.
  std::unique_ptr<OpenAiGateway> http_gateway_;
  bool watchdog_withheld_ = false;  // Responsive said no (main thread only).
  // The GPUs' health as the watcher last saw it (the progress line reads it without NVML).
  std::atomic<bool> gpus_healthy_{true};
  bool reload_refused_ = false;  // The last reload was refused (main thread only).
  std::unique_ptr<grpc::Server> grpc_server_;
  std::string grpc_address_;
  std::string http_address_;
  std::string metrics_address_;
  std::filesystem::path listeners_file_;
};

Status RunningDaemon::OpenDatabase(const std::filesystem::path& state_dir) {
  const std::filesystem::path database = state_dir / "inferbox.db";
  auto keys = KeyStore::Open(database, config_.require_keys);
  if (!keys.ok()) return keys.status().WithContext("cannot open the key database");
  keys_ = std::move(keys).value();
  auto ledger = UsageLedger::Open(database);
  if (!ledger.ok()) return ledger.status().WithContext("cannot open the usage ledger");
  usage_ledger_ = std::move(ledger).value();
  // Quotas carry over a restart: the windows are rebuilt from what the ledger recorded.
  auto recent = usage_ledger_->Recent(key_quotas_.Now());
  if (!recent.ok()) return recent.status().WithContext("cannot read recent usage");
  key_quotas_.Restore(*recent);
  usage_meter_ = std::make_unique<UsageMeter>(key_quotas_, usage_ledger_.get());
  auto audit = admin::AuditLog::Open(database);
  if (!audit.ok()) return audit.status().WithContext("cannot open the audit log");
  audit_log_ = std::move(audit).value();
  admin_service_ = std::make_unique<admin::AdminServiceImpl>(
      board_, keys_.get(), nullptr, usage_ledger_.get(), audit_log_.get(), model_manager_.get());
  return Status::Ok();
}

Status RunningDaemon::StartMetrics() {
  auto server = monitoring::MetricsServer::Start(config_.metrics_listen.ToString());
  if (!server.ok()) return server.status();
  metrics_server_ = std::move(server).value();
  if (tls_) {
    metrics_.SetTlsCertificateExpiry(static_cast<double>(
        std::chrono::duration_cast<std::chrono::seconds>(tls_->not_after.time_since_epoch())
            .count()));
  }
  metrics_server_->Register(metrics_.registry());
  metrics_server_->Register(process_collector_);
  metrics_server_->Register(engine_collector_);
  metrics_server_->Register(gpu_collector_);
  metrics_server_->Register(economics_collector_);
  metrics_server_->Register(filesystem_collector_);
  // Probes for load balancers and orchestrators, keyless like /metrics: live while this
  // process answers, ready as Readiness() says.
  metrics_server_->AddProbe("/health/live", [] {
    return monitoring::ProbeResponse{200, "application/json", R"({"status":"live"})"};
  });
  metrics_server_->AddProbe("/health/ready", [this] { return Readiness(); });
  ListenAddress bound = config_.metrics_listen;
  bound.port = metrics_server_->port();
  metrics_address_ = bound.ToString();
  return Status::Ok();
}

Status RunningDaemon::OpenModelStore(const std::filesystem::path& state_dir) {
  ModelManagerOptions options;
  options.state_dir = state_dir;
  options.store = config_.model_store;
  options.gpu_memory = [this] { return GpuMemory(); };
  options.on_default_changed = [this](const std::string& model) {
    if (frontend_) frontend_->SetDefaultModel(model);
  };
  auto manager = ModelManager::Open(std::move(options), *metrics_.registry());
  if (!manager.ok()) return manager.status();
  model_manager_ = std::move(manager).value();
  return Status::Ok();
}

std::vector<uint64_t> RunningDaemon::GpuMemory() const {
  // Indexed by the GPU's NVML index (its "gpu" label), not by the order of the series: a GPU
  // that reports no memory (lost) counts as 0 bytes rather than shifting the ones after it.
  std::vector<uint64_t> memory;
  for (const auto& family : gpu_collector_->Collect()) {
    if (family.name != "inferbox_gpu_memory_total_bytes") continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) {
        if (label.name != "gpu") continue;
        const auto index = static_cast<size_t>(std::stoul(label.value));
        if (index >= memory.size()) memory.resize(index + 1, 0);
        memory[index] = static_cast<uint64_t>(metric.gauge.value);
      }
    }
  }
  return memory;
}

Status RunningDaemon::StartEngines(const std::filesystem::path& state_dir,
                                   const std::filesystem::path& runtime_dir) {
  SupervisorOptions options;
  if (config_.engines.executable) {
    options.engine_executable = *config_.engines.executable;
  } else if (auto found = FindEngineExecutable(); found.ok()) {
    options.engine_executable = *found;
  } else if (!config_.models.empty()) {
    return found.status();
  }
  options.runtime_dir = runtime_dir;
  options.state_dir = state_dir;
  options.supervision = config_.engines;
  options.log_level = spdlog::level::to_string_view(config_.log_level).data();
  // The config file's models, then those loaded at run time before (config wins on a clash).
  // Models that list no GPUs go on the GPUs the others leave free, by their profile.
  std::vector<ModelServeConfig> configured;
  std::vector<ModelServeConfig> loaded;
  for (ModelServeConfig& model : model_manager_->ModelsToServe(config_.models)) {
    const bool in_config = std::any_of(config_.models.begin(), config_.models.end(),
                                       [&](const auto& entry) { return entry.name == model.name; });
    (in_config ? configured : loaded).push_back(std::move(model));
  }
  auto placed =
      PlaceForStart(std::move(configured), loaded, GpuMemory(), [&](const ModelServeConfig& model) {
        return ReadModelFootprint(model.path.is_absolute() ? model.path : state_dir / model.path,
                                  model.quantization);
      });
  if (!placed.ok()) return placed.status();
  for (const auto& [name, why] : placed->dropped) {
    LogEvent(spdlog::level::err, message_ids::kModelNotRestored,
             fmt::format("model {}, loaded at run time before, is not served: {}. Free its GPUs "
                         "and load it again (inferboxctl models load {}), or unload it",
                         name, why.message(), name),
             {.model = name});
  }
  const std::vector<ModelServeConfig> served = std::move(placed->served);
  for (const auto& model : served) {
    if (model.device == "cuda")
      spdlog::info("model {}: {} replica(s) of tensor parallel {} on GPUs [{}]", model.name,
                   model.replicas, TensorParallelOf(model), fmt::join(model.gpus, ", "));
  }
  supervisor_ = std::make_unique<Supervisor>(std::move(options), served);
  for (const auto& model : served) serving_metrics_.RegisterModel(model.name);
  frontend_ = std::make_unique<EngineFrontend>(*supervisor_, &serving_metrics_, usage_meter_.get());
  frontend_->SetRequestTimeout(config_.request_timeout);
  model_manager_->Attach(*supervisor_);
  api_authenticator_ = std::make_unique<CountingAuthenticator>(*keys_, serving_metrics_);
  inference_service_ = std::make_unique<InferenceServiceImpl>(*frontend_, *api_authenticator_);
  engine_collector_ = std::make_shared<EngineMetricsCollector>(*supervisor_);
  economics_collector_ =
      std::make_shared<EconomicsCollector>(config_.economics, serving_metrics_, *gpu_collector_);
  board_.SetEconomicsSource([this] { return economics_collector_->Snapshot(); });
  board_.SetEngineSource([this] { return supervisor_->Engines(); });
  // A busy engine's canary may wait out its timeout and the health and stats calls that follow
  // it in the same loop: the margin keeps a working model from flapping out of readiness.
  canary_period_ = config_.engines.canary_interval + config_.engines.canary_timeout +
                   2 * config_.engines.health_timeout + std::chrono::seconds(1);
  board_.SetHealthSource([this] { return HealthReport(); });
  return Status::Ok();
}

void RunningDaemon::UpdateServingState() {
  // Watcher threads call this concurrently: read the states and publish them as one step,
  // so a stale view can never be published after a fresher one.
  std::lock_guard lock(serving_state_mutex_);
  if (draining_.load() || !grpc_server_) return;
  bool all_ready = true;
  bool any_ready = false;
  bool any_down = false;  // Failed or restarting.
  for (const auto& model : supervisor_->models()) {
    // Models added at run time get their series too (idempotent for the others).
    serving_metrics_.RegisterModel(model.name);
    const auto state = supervisor_->ModelStateOf(model.name);
    all_ready = all_ready && state == inferbox::v1::MODEL_STATE_READY;
    any_ready = any_ready || state == inferbox::v1::MODEL_STATE_READY;
    any_down = any_down || state == inferbox::v1::MODEL_STATE_FAILED ||
               state == inferbox::v1::MODEL_STATE_RESTARTING;
  }
  // Inference serves when a generation can run; the box as a whole when every model can. A
  // GPU fault stops the engines on that GPU (Supervisor::SetGpuHealth), whose models then
  // count here; the box is degraded while any GPU is unhealthy.
  const bool gpus_healthy = gpu_collector_->Health().healthy();
  auto* health = grpc_server_->GetHealthCheckService();
  health->SetServingStatus(std::string(kInferenceServiceName), any_ready);
  health->SetServingStatus("", all_ready);
  board_.SetState(all_ready && gpus_healthy   ? inferbox::v1::DAEMON_STATE_SERVING
                  : any_down || !gpus_healthy ? inferbox::v1::DAEMON_STATE_DEGRADED
                                              : inferbox::v1::DAEMON_STATE_STARTING);
}

inferbox::v1::BoxHealth RunningDaemon::HealthReport() const {
  namespace api = inferbox::v1;
  api::BoxHealth report;
  report.set_daemon_live(true);
  report.set_draining(draining_.load());
  // A READY replica passed a canary within the canary period; one whose latest canary is
  // older (a canary stuck in flight) does not count as ready.
  const auto now = std::chrono::system_clock::now();
  bool any_ready = false;
  bool all_ready = true;
  for (const auto& model : supervisor_->models()) {
    api::ModelHealth& entry = *report.add_models();
    entry.set_name(model.name);
    entry.set_state(supervisor_->ModelStateOf(model.name));
    for (const auto& replica : supervisor_->Replicas(model.name)) {
      const api::EngineInfo info = replica->Info();
      if (info.process_live()) entry.set_engines_live(entry.engines_live() + 1);
      if (info.state() != api::ENGINE_STATE_READY || !info.has_last_canary_at()) continue;
      const auto last_canary = std::chrono::system_clock::time_point(
          std::chrono::milliseconds(TimeUtil::TimestampToMilliseconds(info.last_canary_at())));
      if (now - last_canary > canary_period_) continue;
      entry.set_engines_ready(entry.engines_ready() + 1);
    }
    entry.set_ready(entry.engines_ready() > 0);
    any_ready = any_ready || entry.ready();
    all_ready = all_ready && entry.ready();
  }
  const monitoring::GpuHealth gpu_health = gpu_collector_->Health();
  for (const auto& gpu : gpu_health.gpus) {
    api::GpuVerdict& verdict = *report.add_gpus();
    verdict.set_index(gpu.index);
    verdict.set_uuid(gpu.uuid);
    verdict.set_name(gpu.name);
    verdict.set_healthy(gpu.healthy);
    verdict.set_reason(gpu.reason);
  }
  report.set_gpu_monitoring(gpu_collector_->available() ? "nvml"
                                                        : gpu_collector_->unavailable_reason());
  // Engines on an unhealthy GPU are stopped (Supervisor::SetGpuHealth): the box is ready
  // while a model can serve on the others.
  report.set_ready(!report.draining() && any_ready);
  report.set_status(report.draining()                                     ? "draining"
                    : report.ready() && all_ready && gpu_health.healthy() ? "ready"
                    : report.ready()                                      ? "degraded"
                    : !gpu_health.healthy()                               ? "gpu_unhealthy"
                                                                          : "no_model_ready");
  return report;
}

void RunningDaemon::FenceGpus() {
  std::lock_guard lock(gpu_fence_mutex_);
  supervisor_->SetGpuHealth(gpu_collector_->Health());
}

monitoring::ProbeResponse RunningDaemon::Readiness() const {
  namespace json = boost::json;
  const inferbox::v1::BoxHealth report = HealthReport();
  json::array models;
  for (const auto& model : report.models()) {
    json::array engines;
    for (const auto& replica : supervisor_->Replicas(model.name())) {
      const inferbox::v1::EngineInfo info = replica->Info();
      json::object engine{{"name", info.name()},
                          {"state", inferbox::v1::EngineState_Name(info.state())},
                          {"process_live", info.process_live()}};
      if (info.has_last_canary_at())
        engine["last_canary_at"] = TimeUtil::ToString(info.last_canary_at());
      if (!info.gpu_fault().empty()) engine["gpu_fault"] = info.gpu_fault();
      engines.push_back(std::move(engine));
    }
    models.push_back({{"name", model.name()},
                      {"state", inferbox::v1::ModelState_Name(model.state())},
                      {"ready", model.ready()},
                      {"engines", std::move(engines)}});
  }
  json::array gpus;
  for (const auto& gpu : report.gpus()) {
    json::object entry{{"index", gpu.index()}, {"uuid", gpu.uuid()}, {"healthy", gpu.healthy()}};
    if (!gpu.healthy()) entry["reason"] = gpu.reason();
    gpus.push_back(std::move(entry));
  }
  const json::object body{{"status", report.status()},
                          {"daemon", report.draining() ? "draining" : "live"},
                          {"models", std::move(models)},
                          {"gpus", std::move(gpus)}};
  return {report.ready() ? 200 : 503, "application/json", json::serialize(body)};
}

std::shared_ptr<grpc::ServerCredentials> RunningDaemon::GrpcCredentials() const {
  if (!tls_) return grpc::InsecureServerCredentials();
  // R2.8: with a client CA, a client without a certificate it signed fails the handshake.
  grpc::SslServerCredentialsOptions options(
      tls_->client_ca_pem.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                  : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls_->client_ca_pem;
  options.pem_key_cert_pairs.push_back({tls_->private_key_pem, tls_->certificate_chain_pem});
  return grpc::SslServerCredentials(options);
}

std::string RunningDaemon::ListenerSecurity(bool client_certificates) const {
  if (!tls_) return "";
  return client_certificates ? "TLS, client certificates required" : "TLS";
}

Status RunningDaemon::StartGrpc() {
  grpc::EnableDefaultHealthCheckService(true);
  if (config_.grpc_reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  if (!config_.grpc_reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  int bound_port = 0;
  builder.AddListeningPort(config_.grpc_listen.ToString(), GrpcCredentials(), &bound_port);
  // gRPC sets SO_REUSEPORT by default: a second daemon would then share the port silently
  // instead of failing to start.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  // Keepalive policy (docs/operations.md): clients may ping every 10 s, even when idle, so
  // long-lived admin streams behind NAT survive without a GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.RegisterService(admin_service_.get());
  builder.RegisterService(inference_service_.get());
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || bound_port == 0) {
    grpc_server_.reset();
    return UnavailableError("cannot listen for gRPC on " + config_.grpc_listen.ToString() +
                            " (address in use, or not an address of this host)");
  }
  ListenAddress bound = config_.grpc_listen;
  bound.port = static_cast<uint16_t>(bound_port);
  grpc_address_ = bound.ToString();

  // Admin serves once the listener is up; Inference and overall health ("") follow the
  // engines (UpdateServingState).
  auto* health = grpc_server_->GetHealthCheckService();
  health->SetServingStatus(std::string(kAdminServiceName), true);
  UpdateServingState();
  return Status::Ok();
}

Status RunningDaemon::StartHttp() {
  OpenAiGateway::Options options;
  options.host = config_.http_listen.host;
  options.port = config_.http_listen.port;
  if (tls_) {
    auto context = TlsServerContext::Create(*tls_);
    if (!context.ok()) return context.status();
    options.tls = std::move(context).value();
  }
  if (const auto fault = FaultStall(); fault && fault->first == "http") {
    options.fault_stall_acceptor_after = fault->second;
  }
  auto gateway = OpenAiGateway::Start(options, *frontend_, *api_authenticator_);
  if (!gateway.ok()) return gateway.status();
  http_gateway_ = std::move(gateway).value();
  ListenAddress bound = config_.http_listen;
  bound.port = http_gateway_->port();
  http_address_ = bound.ToString();
  return Status::Ok();
}

Status RunningDaemon::Start() {
  const auto state_dir =
      ResolveDirectory(options_.state_dir, config_.state_dir, "STATE_DIRECTORY", kDefaultStateDir);
  const auto runtime_dir = ResolveDirectory(options_.runtime_dir, config_.runtime_dir,
                                            "RUNTIME_DIRECTORY", kDefaultRuntimeDir);
  if (Status status = EnsureDirectory(state_dir, "state directory"); !status.ok()) return status;
  if (Status status = EnsureDirectory(runtime_dir, "runtime directory"); !status.ok())
    return status;
  board_.SetPaths(
      options_.config_path ? options_.config_path->string() : std::string(kEmbeddedConfigName),
      state_dir.string(), runtime_dir.string());

  if (Status opened = OpenModelStore(state_dir); !opened.ok()) return opened;
  if (Status opened = OpenDatabase(state_dir); !opened.ok()) return opened;

  filesystem_collector_ =
      std::make_shared<monitoring::FilesystemCollector>(std::vector<monitoring::WatchedDirectory>{
          {"state", state_dir}, {"models", state_dir / "models"}});
  notifier_.Status("binding listeners");
  if (Status status = StartEngines(state_dir, runtime_dir); !status.ok()) return status;
  if (Status status = StartMetrics(); !status.ok()) return status;
  if (Status status = StartGrpc(); !status.ok()) return status;
  if (Status status = StartHttp(); !status.ok()) return status;
  board_.AddListener("grpc", grpc_address_, ListenerSecurity(tls_ && !tls_->client_ca_pem.empty()));
  board_.AddListener("http", http_address_,
                     ListenerSecurity(tls_ && tls_->http_requires_client_certificate));
  board_.AddListener("metrics", metrics_address_, "");

  listeners_file_ = runtime_dir / kListenersFileName;
  const std::string listeners = fmt::format(
      "# Written by inferboxd (pid {}) once its listeners were bound; removed at exit.\n"
      "grpc = \"{}\"\nhttp = \"{}\"\nmetrics = \"{}\"\n",
      ::getpid(), grpc_address_, http_address_, metrics_address_);
  if (Status status = WriteFileAtomically(listeners_file_, listeners); !status.ok()) {
    listeners_file_.clear();
    return status;
  }

  // Engines load in the background; health and status follow them, and the GPUs.
  supervisor_->SetStateListener([this] { UpdateServingState(); });
  gpu_collector_->WatchHealth(std::chrono::seconds(5), [this](const monitoring::GpuHealth& health) {
    gpus_healthy_.store(health.healthy());
    FenceGpus();
    UpdateServingState();
  });
  // After the watcher took its first verdict: a change from here on reaches FenceGpus.
  FenceGpus();
  supervisor_->Start();
  UpdateServingState();
  if (const auto fault = FaultStall(); fault && fault->first == "serving-state") {
    InjectServingStateDeadlock(fault->second);
  }
  const std::string ready = fmt::format("serving: HTTP on {}, gRPC on {}, metrics on {}",
                                        http_address_, grpc_address_, metrics_address_);
  notifier_.Ready(ready);
  LogEvent(spdlog::level::info, message_ids::kReady,
           "inferboxd " + std::string(kVersion) + " " + ready);
  return Status::Ok();
}

// The restart-only settings of `next` replaced by the running ones (config_), so that
// status tells the truth; each that differed is logged.
DaemonConfig RunningDaemon::Applicable(DaemonConfig next, bool warn) const {
  auto keep = [&](auto& value, const auto& running, std::string_view key) {
    if (value == running) return;
    if (warn) spdlog::warn("{} changed; it takes effect at the next restart", key);
    value = running;
  };
  keep(next.grpc_listen, config_.grpc_listen, "server.grpc_listen");
  keep(next.metrics_listen, config_.metrics_listen, "server.metrics_listen");
  keep(next.http_listen, config_.http_listen, "server.http_listen");
  keep(next.models, config_.models, "models");
  keep(next.engines, config_.engines, "engines");
  keep(next.economics, config_.economics, "economics");
  keep(next.model_store, config_.model_store, "model_store");
  keep(next.grpc_reflection, config_.grpc_reflection, "server.grpc_reflection");
  keep(next.tls, config_.tls, "server.tls");
  keep(next.metrics_per_key, config_.metrics_per_key, "server.metrics_per_key");
  keep(next.metric_buckets, config_.metric_buckets, "metrics");
  keep(next.state_dir, config_.state_dir, "paths.state_dir");
  keep(next.runtime_dir, config_.runtime_dir, "paths.runtime_dir");
  return next;
}

void RunningDaemon::Reload() {
  notifier_.Reloading("reloading configuration");
  auto reloaded = LoadConfig(options_);
  // The exposure rules hold for the file (the next start must not be refused) and for what
  // would run now: the running listeners and TLS with the file's require_keys (turning keys
  // off while a listener beyond loopback stays bound is refused).
  Status verdict = reloaded.status();
  if (verdict.ok())
    verdict = CheckNetworkExposure(*reloaded, options_.allow_unauthenticated_remote);
  if (verdict.ok()) {
    verdict = CheckNetworkExposure(Applicable(*reloaded, /*warn=*/false),
                                   options_.allow_unauthenticated_remote)
                  .WithContext("with the listeners running now");
  }
  if (!verdict.ok()) {
    board_.RecordReload(verdict.message());
    metrics_.RecordConfigReload(false);
    LogEvent(
        spdlog::level::err, message_ids::kConfigReloadFailed,
        "configuration reload refused, keeping the running configuration: " + verdict.message());
    notifier_.Ready("serving; configuration reload refused: " + verdict.message());
    reload_refused_ = true;
    return;
  }
  reload_refused_ = false;

  config_ = Applicable(std::move(reloaded).value(), /*warn=*/true);
  spdlog::set_level(config_.log_level);
  if (frontend_) frontend_->SetRequestTimeout(config_.request_timeout);
  keys_->set_require_keys(config_.require_keys);

  board_.RecordReload("");
  metrics_.RecordConfigReload(true);
  LogEvent(spdlog::level::info, message_ids::kConfigReloaded, "configuration reloaded");
  notifier_.Ready("serving: HTTP on " + http_address_ + ", gRPC on " + grpc_address_ +
                  ", metrics on " + metrics_address_);
}

void RunningDaemon::Serve() {
  using Clock = std::chrono::steady_clock;
  const sigset_t signals = MainLoopSignals();

  const auto watchdog = notifier_.watchdog_ping_interval();
  if (watchdog) notifier_.PingWatchdog();
  auto next_ping = Clock::now() + watchdog.value_or(std::chrono::microseconds(0));
  std::string progress;
  while (true) {
    // Wakes for the watchdog's ping and the progress line, whichever is due first.
    auto wait = std::chrono::duration_cast<std::chrono::microseconds>(kProgressInterval);
    if (watchdog) {
      wait = std::clamp(
          std::chrono::duration_cast<std::chrono::microseconds>(next_ping - Clock::now()),
          std::chrono::microseconds(1000), wait);
    }
    const timespec timeout{static_cast<time_t>(wait.count() / 1000000),
                           static_cast<long>(wait.count() % 1000000) * 1000};
    const int signal_number = sigtimedwait(&signals, nullptr, &timeout);
    if (signal_number < 0) {
      if (errno != EAGAIN && errno != EINTR) spdlog::error("waiting for signals failed: {}", errno);
    } else if (signal_number == SIGHUP) {
      spdlog::info("SIGHUP: reloading configuration");
      Reload();
      progress.clear();  // Reload's READY=1 replaced the line: say it again.
    } else {
      spdlog::info("{}: shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      return;
    }
    // The main loop is the watchdog's heartbeat, and it pings only while the box's working
    // parts turn: a wedged loop, or one stuck in Responsive on a deadlock, stops the pings.
    if (watchdog && Clock::now() >= next_ping) {
      next_ping = Clock::now() + *watchdog;
      if (Responsive()) notifier_.PingWatchdog();
    }
    // R4.1: `systemctl status` says what the box is doing, as it changes (a line systemd
    // had no room for is sent again).
    if (!notifier_.has_progress()) continue;
    if (std::string line = ProgressLine(); line != progress && notifier_.Progress(line))
      progress = std::move(line);
  }
}

std::string RunningDaemon::ProgressLine() {
  int num_ready = 0;
  int num_models = 0;
  uint64_t num_running = 0;
  uint64_t num_waiting = 0;
  std::vector<std::string> not_ready;
  for (const auto& model : supervisor_->models()) {
    ++num_models;
    const auto state = supervisor_->ModelStateOf(model.name);
    if (state == inferbox::v1::MODEL_STATE_READY) {
      ++num_ready;
    } else {
      std::string name = inferbox::v1::ModelState_Name(state);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      not_ready.push_back(model.name + " " + name.substr(name.rfind('_') + 1));
    }
    for (const auto& replica : supervisor_->Replicas(model.name)) {
      // A stopped or restarting engine's last stats are history, not requests.
      const auto engine_state = replica->Info().state();
      if (engine_state != inferbox::v1::ENGINE_STATE_READY &&
          engine_state != inferbox::v1::ENGINE_STATE_DRAINING)
        continue;
      if (const auto stats = replica->stats()) {
        num_running += stats->num_requests_running();
        num_waiting += stats->num_requests_waiting();
      }
    }
  }
  std::string state = "serving";
  switch (board_.state()) {
    case inferbox::v1::DAEMON_STATE_STARTING: state = "starting"; break;
    case inferbox::v1::DAEMON_STATE_DEGRADED: state = "degraded"; break;
    default: break;
  }
  std::string line = fmt::format("{}: {} of {} model{} ready", state, num_ready, num_models,
                                 num_models == 1 ? "" : "s");
  if (!not_ready.empty()) line += fmt::format(" ({})", fmt::join(not_ready, ", "));
  if (!gpus_healthy_.load()) line += ", a GPU is unhealthy";
  line += fmt::format("; {} running, {} waiting", num_running, num_waiting);
  if (reload_refused_) line += "; the last configuration reload was refused (inferboxctl status)";
  return line;
}

bool RunningDaemon::Responsive() {
  { std::lock_guard lock(serving_state_mutex_); }
  HealthReport();
  if (http_gateway_) {
    const auto idle = http_gateway_->AcceptorIdle();
    if (idle > kAcceptorStall) {
      if (!watchdog_withheld_) {
        watchdog_withheld_ = true;
        LogEvent(spdlog::level::critical, message_ids::kWatchdogWithheld,
                 fmt::format("the HTTP acceptor has not turned for {} s: no new connection is "
                             "accepted; the systemd watchdog ping is withheld, so systemd "
                             "restarts inferboxd",
                             std::chrono::duration_cast<std::chrono::seconds>(idle).count()));
      }
      return false;
    }
  }
  return true;
}

void RunningDaemon::InjectServingStateDeadlock(std::chrono::milliseconds after) {
  spdlog::warn("INFERBOX_TEST_FAULT_STALL=serving-state: fault injection is on");
  std::thread([this, after] {
    std::this_thread::sleep_for(after);
    spdlog::warn("fault injection: holding the serving state's lock for good");
    serving_state_mutex_.lock();
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }).detach();
}

void RunningDaemon::Shutdown() {
  gpu_collector_->StopWatchingHealth();
  {
    std::lock_guard lock(serving_state_mutex_);
    draining_.store(true);
  }
  board_.SetState(inferbox::v1::DAEMON_STATE_DRAINING);
  const auto timeout = config_.shutdown_timeout;
  const std::string stopping =
      fmt::format("draining: finishing in-flight requests for up to {} ms", timeout.count());
  notifier_.Stopping(stopping);
  LogEvent(spdlog::level::info, message_ids::kStopping, stopping);
  if (grpc_server_) {
    // NOT_SERVING everywhere first, so load balancers stop sending before the port closes.
    grpc_server_->GetHealthCheckService()->Shutdown();
  }
  // New requests are refused; the engines finish what they have (up to the deadline).
  if (http_gateway_) http_gateway_->SetServing(false);
  if (frontend_) frontend_->SetAccepting(false);
  if (supervisor_) {
    supervisor_->SetStateListener(nullptr);
    supervisor_->Stop(timeout);
  }
  if (http_gateway_) http_gateway_->Stop(std::chrono::seconds(5));
  if (grpc_server_) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc_server_->Wait();
  }
  // Every request has ended: write the usage rows still queued before exiting.
  if (usage_ledger_) usage_ledger_->Close();
  metrics_server_.reset();
  spdlog::info("stopped");
}

// Says which certificate the listeners serve, and warns while it is expired or about to be.
void LogTlsCertificate(const TlsCredentials& tls) {
  const auto now = std::chrono::system_clock::now();
  const auto days_left =
      std::chrono::duration_cast<std::chrono::hours>(tls.not_after - now).count() / 24;
  const std::string until = fmt::format("{:%Y-%m-%d %H:%M} UTC", fmt::gmtime(tls.not_after));
  spdlog::info("TLS on the gRPC and HTTP listeners: certificate {}, valid until {}{}", tls.subject,
               until, tls.client_ca_pem.empty() ? "" : "; gRPC clients need a certificate");
  if (tls.not_after <= now) {
    spdlog::error("the TLS certificate ({}) expired on {}: clients will refuse every connection",
                  tls.subject, until);
  } else if (days_left < 30) {
    spdlog::warn("the TLS certificate ({}) expires in {} days ({})", tls.subject, days_left, until);
  }
}

}  // namespace

int RunDaemon(const DaemonOptions& options) {
  // Block the signals the main loop waits for, before any thread exists, so that every
  // thread inherits the mask and only the main loop ever receives them.
  const sigset_t signals = MainLoopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that disconnects must not kill the daemon through a write to a closed socket.
  signal(SIGPIPE, SIG_IGN);

  SystemdNotifier startup_notifier;
  auto fail = [&](std::string_view what, const Status& status, int exit_code) {
    const std::string message = std::string(what) + ": " + status.message();
    LogEvent(spdlog::level::critical, message_ids::kStartupFailed, message);
    startup_notifier.Status("failed: " + message);
    return exit_code;
  };

  auto config = LoadConfig(options);
  if (!config.ok()) return fail("invalid configuration", config.status(), kExitConfig);
  if (Status status = CheckNetworkExposure(*config, options.allow_unauthenticated_remote);
      !status.ok()) {
    return fail("refusing to start", status, kExitConfig);
  }
  spdlog::set_level(config->log_level);
  spdlog::info(
      "inferboxd {} ({}) starting with configuration {}", kVersion, kGitCommit,
      options.config_path ? options.config_path->string() : std::string(kEmbeddedConfigName));

  std::optional<TlsCredentials> tls;
  if (config->tls.enabled()) {
    auto loaded = LoadTlsCredentials(config->tls);
    if (!loaded.ok()) return fail("invalid configuration", loaded.status(), kExitConfig);
    tls = std::move(loaded).value();
    LogTlsCertificate(*tls);
  }

  RunningDaemon daemon(options, std::move(config).value(), std::move(tls));
  if (Status status = daemon.Start(); !status.ok()) {
    return fail("startup failed", status, kExitFailure);
  }
  daemon.Serve();
  daemon.Shutdown();
  return kExitOk;
}

}  // namespace inferbox::daemon
