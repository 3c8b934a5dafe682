// inferboxd's configuration: a TOML file (default /etc/inferbox/inferbox.toml), validated
// strictly. Unknown keys, wrong types and bad values are errors that name the key and the
// line, so a typo never silently falls back to a default.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/common.h>

#include "inferbox/common/status.h"
#include "inferbox/daemon/tls.h"
#include "inferbox/monitoring/economics.h"
#include "inferbox/monitoring/serving_metrics.h"

namespace inferbox::daemon {

inline constexpr std::string_view kDefaultConfigPath = "/etc/inferbox/inferbox.toml";
inline constexpr std::string_view kDefaultStateDir = "/var/lib/inferbox";
inline constexpr std::string_view kDefaultRuntimeDir = "/run/inferbox";

// A TCP listen address. `host` is a numeric IPv4 or IPv6 address ("localhost" is stored as
// 127.0.0.1); port 0 asks the kernel for a free port.
struct ListenAddress {
  std::string host;
  uint16_t port = 0;

  // "127.0.0.1:7070" or "[::1]:7070": the form gRPC and the metrics server accept.
  std::string ToString() const;
  bool IsLoopback() const;
  bool operator==(const ListenAddress&) const = default;
};

// Parses "host:port" / "[v6]:port". Host names other than localhost are refused: a listen
// address must not depend on DNS.
Result<ListenAddress> ParseListenAddress(std::string_view text);

// The values ModelServeConfig::quantization takes.
inline bool IsQuantization(std::string_view value) {
  return value == "none" || value == "fp8";
}
// The values ModelServeConfig::kv_cache_dtype takes.
inline bool IsKvCacheDType(std::string_view value) {
  return value == "auto" || value == "fp8";
}
// The values ModelServeConfig::sampling_defaults takes.
inline bool IsSamplingDefaults(std::string_view value) {
  return value == "model" || value == "openai";
}

// One [[models]] entry: a model the box serves, and how its engines run.
struct ModelServeConfig {
  // Id clients put in `model`: a model id (inferbox/common/model_id.h).
  std::string name;
  // The model folder (Hugging Face layout); a relative path is under the state directory.
  std::filesystem::path path;
  // "cpu", or "cuda" with the GPU indices in `gpus` (replicas x tensor_parallel of them,
  // replica r on the r-th run of tensor_parallel). A cuda model that lists none is placed by
  // the daemon on free GPUs by its profile (placement.h).
  std::string device = "cpu";
  std::vector<uint32_t> gpus;
  // Engine processes serving the model; the router balances them. 0 only for a cuda model
  // not placed yet: as many as the free GPUs allow.
  uint32_t replicas = 1;
  // Ranks of each engine's tensor-parallel group (GPUs with cuda, threads on the CPU); 0:
  // unset (gpus / replicas, or 1; placement by profile chooses it). TensorParallelOf().
  uint32_t tensor_parallel = 0;
  // Engine options (inferbox-engine flags of the same names). kv_cache_gib 0: the engine's
  // default (1 GiB on the CPU; on a GPU, what gpu_memory_fraction leaves after the weights).
  double kv_cache_gib = 0.0;
  double gpu_memory_fraction = 0.9;
  int64_t max_running = 64;
  int64_t token_budget = 512;
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings.
  int64_t max_waiting = 1024;
  // Prompt tokens the engine's queue holds at most (R6.5); a request past it is refused as
  // max_waiting's are (503 / RESOURCE_EXHAUSTED), unless none waits. 0: no limit.
  int64_t max_waiting_tokens = 0;
  // Seconds a request may wait in an engine's queue without starting; then it ends with 503
  // and Retry-After (gRPC RESOURCE_EXHAUSTED): shed load rather than answer too late. 0: no
  // limit (a batch-lane request may wait long behind interactive ones by design).
  double queue_timeout_seconds = 0.0;
  // The linear layers' weights: "none" (as the model file has them) or "fp8" (FP8 E4M3,
  // quantised by the engine at load; a GPU needs compute capability 8.9 or later).
  std::string quantization = "none";
  // The KV cache: "auto" (the engine's precision: BF16 on a GPU, float32 on the CPU) or "fp8"
  // (FP8 E4M3 with a scale per token and KV head: twice the tokens in the same memory).
  std::string kv_cache_dtype = "auto";
  // Sampling parameters a request leaves unset: "model" (the model's generation_config.json,
  // else the OpenAI defaults) or "openai" (the OpenAI defaults only) (CONVENTIONS R1.11).
  std::string sampling_defaults = "model";

  bool operator==(const ModelServeConfig&) const = default;
};

// [engines]: how the supervisor runs and watches engine processes.
struct EngineSupervisionConfig {
  // The inferbox-engine executable; unset: found next to inferboxd (build tree or
  // ../libexec/inferbox).
  std::optional<std::filesystem::path> executable;
  std::chrono::milliseconds health_interval{std::chrono::seconds(2)};
  // A health call that takes longer counts as a miss; three misses in a row mean a hung
  // engine, which is killed and restarted.
  std::chrono::milliseconds health_timeout{std::chrono::seconds(5)};
  // Loading longer than this is a failed start.
  std::chrono::milliseconds startup_timeout{std::chrono::minutes(10)};
  // An engine with requests in flight whose loop completed no step for this long is stuck
  // (a hung kernel or device): it is killed and restarted.
  std::chrono::milliseconds stall_timeout{std::chrono::minutes(2)};
  // A canary generation (one token) proves an engine ready before it gets traffic, and again
  // every canary_interval; one that fails, or times out while the engine makes no progress,
  // gets the engine restarted.
  std::chrono::milliseconds canary_interval{std::chrono::seconds(30)};
  std::chrono::milliseconds canary_timeout{std::chrono::seconds(30)};
  // More than max_restarts exits within restart_window: a crash loop; the model is marked
  // failed (degraded) instead of restarting forever.
  int max_restarts = 5;
  std::chrono::milliseconds restart_window{std::chrono::minutes(5)};

  bool operator==(const EngineSupervisionConfig&) const = default;
};

// [model_store]: where installs may come from and whose signatures the box trusts. The store
// itself lives in <state_dir>/models.
struct ModelStoreConfig {
  // Refuse every install without a valid signature from a trusted key (folders included).
  bool require_signatures = false;
  // ed25519 public keys (PEM). The file may give the PEM text or an absolute path to it;
  // paths are read when the configuration loads.
  std::vector<std::string> trusted_keys_pem;
  // URL prefixes mirror installs may fetch from (R6.10: nothing else is ever fetched).
  std::vector<std::string> mirrors;
  // CA certificates (PEM) for https mirrors; unset: the system's.
  std::optional<std::filesystem::path> ca_file;
  // Proxy URL for mirrors; empty: none (proxy environment variables are ignored).
  std::string proxy;

  bool operator==(const ModelStoreConfig&) const = default;
};

struct DaemonConfig {
  // [server]
  ListenAddress grpc_listen{"127.0.0.1", 7070};
  // The OpenAI-compatible HTTP API.
  ListenAddress http_listen{"127.0.0.1", 8080};
  ListenAddress metrics_listen{"127.0.0.1", 9400};
  bool grpc_reflection = true;
  // [server.tls]: TLS on the gRPC and HTTP listeners (tls.h).
  TlsConfig tls;
  // Series per API key on /metrics (requests and tokens by key id and model; docs/metrics.md).
  // Off by default: usage per key is in the ledger.
  bool metrics_per_key = false;
  // How long SIGTERM waits for in-flight RPCs before cancelling them.
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(30)};
  // A generation that runs longer ends with DEADLINE_EXCEEDED (HTTP 504); 0: no limit but
  // the client's own deadline (EngineFrontend::SetRequestTimeout).
  std::chrono::milliseconds request_timeout{0};
  // [paths]; unset: --state-dir/--runtime-dir, then $STATE_DIRECTORY/$RUNTIME_DIRECTORY
  // (set by systemd), then the defaults above.
  std::optional<std::filesystem::path> state_dir;
  std::optional<std::filesystem::path> runtime_dir;
  // [log]
  spdlog::level::level_enum log_level = spdlog::level::info;
  // [auth]: every API call must carry a valid API key (loopback-only boxes may run keyless).
  bool require_keys = false;
  // [engines]
  EngineSupervisionConfig engines;
  // [[models]]
  std::vector<ModelServeConfig> models;
  // [model_store]
  ModelStoreConfig model_store;
  // [economics]
  monitoring::EconomicsConfig economics;
  // [metrics]: the histograms' buckets (vLLM's by default).
  monitoring::HistogramBuckets metric_buckets;

  bool operator==(const DaemonConfig&) const = default;
};

// Parses configuration text. `source_name` (usually the file path) prefixes error messages:
// "<source>:<line>:<column>: <key>: <what is wrong>".
Result<DaemonConfig> ParseConfig(std::string_view text, std::string_view source_name);

// Reads and parses a config file; a missing or unreadable file is an error naming the path.
Result<DaemonConfig> LoadConfigFile(const std::filesystem::path& path);

// The configuration compiled into inferboxd (packaging/config/inferbox.toml): used when
// the default config file does not exist, and installed as that file by the packages.
std::string_view EmbeddedDefaultConfig();

// Refuses configurations that would expose the APIs beyond this host without TLS and API
// keys: a non-loopback gRPC or HTTP listener needs [server.tls] and [auth] require_keys,
// unless the operator passed --insecure-allow-unauthenticated. Metrics may listen anywhere
// (read-only data).
Status CheckNetworkExposure(const DaemonConfig& config, bool allow_unauthenticated_remote);

}  // namespace inferbox::daemon
