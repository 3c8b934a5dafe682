// /metrics of the real daemon after real traffic through a real engine: the counters say
// exactly what the clients saw (requests, tokens, finish reasons, refusals, cancels), the
// engine gauges are there, and every name follows the Prometheus conventions.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "cpu_engine.h"
#include "daemon_fixture.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "http_client.h"
#include "inferbox/common/version.h"
#include "inferbox/v1/admin.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "openai_client.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

// One scrape: series (name and sorted labels, as "name{a=\"x\",b=\"y\"}") to value, and the
// declared type of each family.
struct Scrape {
  std::map<std::string, double> series;
  std::map<std::string, std::string> types;

  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const;
};

// "name{a=\"x\",b=\"y\"}" with the labels sorted; just the name without labels.
std::string SeriesKey(const std::string& name, const std::map<std::string, std::string>& labels) {
  std::string key = name;
  if (labels.empty()) return key;
  key += "{";
  bool first = true;
  for (const auto& [label, value] : labels) {
    key += (first ? "" : ",") + label + "=\"" + value + "\"";
    first = false;
  }
  return key + "}";
}

double Scrape::Value(const std::string& name,
                     const std::map<std::string, std::string>& labels) const {
  const auto found = series.find(SeriesKey(name, labels));
  return found == series.end() ? -1.0 : found->second;
}

Scrape Parse(const std::string& text) {
  Scrape scrape;
  std::istringstream lines(text);
  std::string line;
  static const std::regex kType(R"(^# TYPE (\S+) (\S+)$)");
  static const std::regex kSample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)")re");
  while (std::getline(lines, line)) {
    std::smatch match;
    if (std::regex_match(line, match, kType)) {
      scrape.types[match[1]] = match[2];
    } else if (std::regex_match(line, match, kSample)) {
      std::map<std::string, std::string> labels;
      const std::string label_text = match[3];
      for (auto it = std::sregex_iterator(label_text.begin(), label_text.end(), kLabel);
           it != std::sregex_iterator(); ++it) {
        labels[(*it)[1]] = (*it)[2];
      }
      scrape.series[SeriesKey(match[1], labels)] = std::stod(match[4]);
    }
  }
  return scrape;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeTinyModel(dir_.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir_.path());
    const std::string config =
        TestConfig() +
        "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
        "\"\nhealth_interval_seconds = 0.2\n[[models]]\nname = \"tiny\"\npath = \"" +
        (dir_.path() / "model").string() +
        "\"\nkv_cache_gib = 0.1\n"
        // 43800 over 60 months of 730 h is 1.0 an hour, 1 kW at 0.2 another 0.2.
        "[economics]\ncurrency = \"EUR\"\nhardware_price = 43800\namortization_months = 60\n"
        "power_price_per_kwh = 0.2\npower_watts = 1000\n";
    daemon_ = std::make_unique<DaemonProcess>(dir_, DaemonOptions{.config_text = config});
    ASSERT_TRUE(daemon_->WaitReady());
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    ASSERT_TRUE(daemon_->WaitInferenceServing());
  }

  Scrape ScrapeMetrics() {
    const HttpResponse response = HttpGet("http://" + daemon_->metrics_address() + "/metrics");
    EXPECT_EQ(response.status, 200) << response.error;
    return Parse(response.body);
  }

  static api::ChatRequest Chat(const std::string& model, uint32_t max_tokens, int i) {
    api::ChatRequest request;
    request.set_model(model);
    auto* message = request.add_messages();
    message->set_role("user");
    message->set_content("Count to " + std::to_string(i));
    request.mutable_sampling()->set_temperature(0.0f);
    request.mutable_stop()->set_max_tokens(max_tokens);
    request.mutable_stop()->set_ignore_eos(true);
    return request;
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Inference::Stub> inference_;
};

TEST_F(MetricsTest, CountersMatchWhatClientsReceived) {
  uint32_t prompt_tokens = 0;
  uint32_t received_tokens = 0;
  constexpr int kRequests = 5;
  for (int i = 0; i < kRequests; ++i) {
    grpc::ClientContext context;
    auto reader = inference_->Chat(&context, Chat("tiny", 7, i));
    api::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
      received_tokens += static_cast<uint32_t>(chunk.token_ids_size());
      if (chunk.has_usage()) prompt_tokens += chunk.usage().prompt_tokens();
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  {
    grpc::ClientContext context;
    auto reader = inference_->Chat(&context, Chat("no-such-model", 7, 0));
    api::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  ASSERT_EQ(received_tokens, kRequests * 7u);

  const Scrape scrape = ScrapeMetrics();
  const std::map<std::string, std::string> tiny = {{"model", "tiny"}};
  EXPECT_EQ(scrape.Value("inferbox_request_success_total",
                         {{"model", "tiny"}, {"finish_reason", "length"}}),
            kRequests);
  EXPECT_EQ(scrape.Value("inferbox_generation_tokens_total", tiny), received_tokens);
  EXPECT_EQ(scrape.Value("inferbox_prompt_tokens_total", tiny), prompt_tokens);
  EXPECT_EQ(scrape.Value("inferbox_time_to_first_token_seconds_count", tiny), kRequests);
  EXPECT_EQ(scrape.Value("inferbox_e2e_request_latency_seconds_count", tiny), kRequests);
  EXPECT_EQ(scrape.Value("inferbox_request_generation_tokens_sum", tiny), received_tokens);
  EXPECT_EQ(scrape.Value("inferbox_request_prompt_tokens_sum", tiny), prompt_tokens);
  // 6 gaps between 7 tokens, per request.
  EXPECT_EQ(scrape.Value("inferbox_inter_token_latency_seconds_count", tiny), kRequests * 6);
  EXPECT_EQ(scrape.Value("inferbox_request_decode_time_seconds_count", tiny), kRequests);
  EXPECT_EQ(scrape.Value("inferbox_requests_rejected_total", {{"reason", "unknown_model"}}), 1);
  EXPECT_GT(scrape.Value("inferbox_e2e_request_latency_seconds_sum", tiny), 0);

  // The box's economics from the configured prices.
  EXPECT_NEAR(scrape.Value("inferbox_cost_per_hour", {{"currency", "EUR"}}), 1.2, 1e-9);
  EXPECT_GE(scrape.Value("inferbox_output_tokens_per_second"), 0.0);

  // Engine gauges (from the supervisor's latest health round).
  const std::map<std::string, std::string> replica = {{"model", "tiny"}, {"replica", "0"}};
  EXPECT_EQ(scrape.Value("inferbox_engine_up", replica), 1);
  EXPECT_EQ(scrape.Value("inferbox_engine_restarts_total", replica), 0);
  auto passed = replica;
  passed["result"] = "passed";
  EXPECT_GE(scrape.Value("inferbox_engine_canaries_total", passed), 1) << "the startup canary";
  auto failed = replica;
  failed["result"] = "failed";
  EXPECT_EQ(scrape.Value("inferbox_engine_canaries_total", failed), 0);

  // The state directory's file system (the daemon's --state-dir).
  const std::map<std::string, std::string> state_dir = {
      {"dir", "state"}, {"path", (dir_.path() / "daemon-state").string()}};
  EXPECT_GT(scrape.Value("inferbox_filesystem_size_bytes", state_dir), 0);
  EXPECT_GT(scrape.Value("inferbox_filesystem_free_bytes", state_dir), 0);
  EXPECT_LE(scrape.Value("inferbox_filesystem_free_bytes", state_dir),
            scrape.Value("inferbox_filesystem_size_bytes", state_dir));
  for (const auto& [name, type] : scrape.types) {
    EXPECT_FALSE(name.starts_with("inferbox_key_")) << name << ": per-key series are off";
  }
  double kv = -1;
  for (int i = 0; i < 100 && kv < 0; ++i) {
    kv = ScrapeMetrics().Value("inferbox_kv_cache_usage_ratio", replica);
    if (kv < 0) std::this_thread::sleep_for(50ms);
  }
  EXPECT_GE(kv, 0.0);
  EXPECT_LE(kv, 1.0);

  // A cancelled stream is a failure with reason "cancelled", not a success.
  {
    grpc::ClientContext context;
    auto reader = inference_->Chat(&context, Chat("tiny", 2000, 99));
    api::GenerateChunk chunk;
    ASSERT_TRUE(reader->Read(&chunk));
    context.TryCancel();
    while (reader->Read(&chunk)) {
    }
    reader->Finish();
  }
  double cancelled = 0;
  for (int i = 0; i < 100 && cancelled < 1; ++i) {
    cancelled = ScrapeMetrics().Value("inferbox_request_failures_total",
                                      {{"model", "tiny"}, {"reason", "cancelled"}});
    if (cancelled < 1) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(cancelled, 1);
  EXPECT_EQ(ScrapeMetrics().Value("inferbox_request_success_total",
                                  {{"model", "tiny"}, {"finish_reason", "length"}}),
            kRequests);
}

std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The metric families a text names: inferbox_* with a histogram's _bucket/_sum/_count cut.
std::set<std::string> NamedFamilies(const std::string& text, const Scrape& scrape) {
  std::set<std::string> names;
  static const std::regex kName(R"(inferbox_[a-z0-9_]*[a-z0-9])");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kName);
       it != std::sregex_iterator(); ++it) {
    std::string name = (*it)[0];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string base = name.substr(0, name.size() - std::strlen(suffix));
      if (name.ends_with(suffix) && scrape.types.contains(base) &&
          scrape.types.at(base) == "histogram") {
        name = base;
      }
    }
    names.insert(name);
  }
  return names;
}

// The files whose metric names must be ones the box exports: every dashboard, the alert rules
// and the catalogue.
std::vector<std::filesystem::path> FilesNamingMetrics() {
  const std::filesystem::path source(INFERBOX_SOURCE_DIR);
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(source / "deploy/grafana")) {
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  files.push_back(source / "deploy/prometheus/alerts.yml");
  files.push_back(source / "docs/metrics.md");
  return files;
}

// promtool's own lint of an exposition (written into `dir` to be read).
void ExpectPromtoolAccepts(const std::string& exposition, const std::filesystem::path& dir) {
  const auto scrape_file = dir / "scrape.txt";
  std::ofstream(scrape_file) << exposition;
  const CommandResult lint =
      RunCommand({"/bin/sh", "-c",
                  std::string(INFERBOX_PROMTOOL) + " check metrics < " + scrape_file.string()},
                 dir);
  EXPECT_EQ(lint.exit_code, 0) << lint.out << lint.err;
}

TEST_F(MetricsTest, DashboardsAlertsAndCatalogueNameOnlyMetricsTheBoxExports) {
  const HttpResponse response = HttpGet("http://" + daemon_->metrics_address() + "/metrics");
  ASSERT_EQ(response.status, 200);
  const Scrape scrape = Parse(response.body);
  ExpectPromtoolAccepts(response.body, dir_.path());

  const std::filesystem::path source(INFERBOX_SOURCE_DIR);
  for (const auto& file : FilesNamingMetrics()) {
    for (const std::string& name : NamedFamilies(ReadText(file), scrape)) {
      // GPU series exist only where NVML loads (GpuMetricsTest checks them with a fake NVML);
      // the price per million tokens only while tokens flow (this test sends none); per-key
      // series only with [server] metrics_per_key (PerKeySeriesTest checks them); the TLS
      // certificate's expiry only with [server.tls] (DaemonTlsTest checks it).
      if (name.starts_with("inferbox_gpu_") || name == "inferbox_cost_per_million_output_tokens" ||
          name.starts_with("inferbox_key_") ||
          name == "inferbox_tls_certificate_expiry_timestamp_seconds")
        continue;
      EXPECT_TRUE(scrape.types.contains(name))
          << file.filename() << " names " << name << ", which the box does not export";
    }
  }
  // And the catalogue lists every family the box exports.
  const std::set<std::string> catalogue =
      NamedFamilies(ReadText(source / "docs/metrics.md"), scrape);
  for (const auto& [name, type] : scrape.types) {
    if (name.starts_with("inferbox_")) {
      EXPECT_TRUE(catalogue.contains(name)) << name << " is missing from docs/metrics.md";
    }
  }
}

// The probes of deploy/kubernetes/probes.yaml (R6.7) against a serving daemon: each path
// answers 200 on the port it names, and the startup probe's budget is at least the unit's
// TimeoutStartSec (so Kubernetes gives a start as long as systemd does).
TEST_F(MetricsTest, TheKubernetesProbesAnswerAndTheStartupBudgetMatchesTheUnit) {
  const std::filesystem::path source(INFERBOX_SOURCE_DIR);
  std::istringstream yaml(ReadText(source / "deploy/kubernetes/probes.yaml"));
  struct Probe {
    std::string path, port;
    int period = 10, failures = 3;  // Kubernetes' defaults.
  };
  std::map<std::string, Probe> probes;
  std::map<std::string, int> ports;
  std::string current, port_name;
  static const std::regex kField(R"(^\s*-?\s*(\w+):\s*(\S*)\s*$)");
  for (std::string line; std::getline(yaml, line);) {
    std::smatch field;
    if (line.starts_with("#") || !std::regex_match(line, field, kField)) continue;
    const std::string key = field[1], value = field[2];
    if (key.ends_with("Probe")) current = key;
    if (key == "name") port_name = value;
    if (key == "containerPort") ports[port_name] = std::stoi(value);
    if (current.empty()) continue;
    if (key == "path") probes[current].path = value;
    if (key == "port") probes[current].port = value;
    if (key == "periodSeconds") probes[current].period = std::stoi(value);
    if (key == "failureThreshold") probes[current].failures = std::stoi(value);
  }
  ASSERT_EQ(probes.size(), 3u) << "startup, liveness and readiness probes";
  ASSERT_EQ(ports["metrics"], 9400) << "server.metrics_listen's default port";
  for (const auto& [name, probe] : probes) {
    EXPECT_EQ(probe.port, "metrics") << name << ": the keyless, plain-HTTP port";
    const HttpResponse answer = HttpGet("http://" + daemon_->metrics_address() + probe.path);
    EXPECT_EQ(answer.status, 200) << name << " " << probe.path << ": " << answer.body;
  }
  EXPECT_EQ(probes["livenessProbe"].path, "/health/live");
  EXPECT_EQ(probes["readinessProbe"].path, "/health/ready");
  std::smatch timeout;
  const std::string unit = ReadText(source / "packaging/systemd/inferbox.service");
  ASSERT_TRUE(std::regex_search(unit, timeout, std::regex(R"(TimeoutStartSec=(\d+))")));
  EXPECT_GE(probes["startupProbe"].period * probes["startupProbe"].failures, std::stoi(timeout[1]))
      << "Kubernetes would give a start less time than systemd does";
}

// R3.4: the histograms' buckets are vLLM's unless [metrics] says otherwise.
TEST(MetricBucketsTest, TheConfigurationChoosesTheBuckets) {
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  const std::string config =
      TestConfig() +
      "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
      "\"\n[[models]]\nname = \"tiny\"\npath = \"" +
      (dir.path() / "model").string() +
      "\"\nkv_cache_gib = 0.1\n[metrics]\ntime_to_first_token_buckets = [0.25, 60]\n"
      "token_count_buckets = [16, 4096]\n";
  DaemonProcess daemon(dir, DaemonOptions{.config_text = config});
  ASSERT_TRUE(daemon.WaitReady());
  const Scrape scrape = Parse(HttpGet("http://" + daemon.metrics_address() + "/metrics").body);
  const auto bucket = [&](const std::string& name, const std::string& le) {
    return scrape.Value(name + "_bucket", {{"model", "tiny"}, {"le", le}});
  };
  EXPECT_EQ(bucket("inferbox_time_to_first_token_seconds", "0.25"), 0);
  EXPECT_EQ(bucket("inferbox_time_to_first_token_seconds", "60"), 0);
  EXPECT_EQ(bucket("inferbox_time_to_first_token_seconds", "0.001"), -1) << "not vLLM's any more";
  EXPECT_EQ(bucket("inferbox_request_prompt_tokens", "4096"), 0);
  EXPECT_EQ(bucket("inferbox_request_prompt_tokens", "1000"), -1);
  EXPECT_EQ(bucket("inferbox_inter_token_latency_seconds", "0.01"), 0) << "the others keep vLLM's";
}

// The GPU names against a daemon whose NVML is the fake one (tests/support/fake_nvml): one
// GPU that reports every reading, and an Xid event queued once the daemon listens for them.
TEST(GpuMetricsTest, DashboardsAlertsAndCatalogueNameOnlyGpuMetricsTheBoxExports) {
  TempDir dir;
  const auto state = dir.path() / "nvml-state";
  const std::string gpu =
      "gpus 1\n"
      "driver 580.95.05\n"
      "gpu0.name NVIDIA H100 80GB HBM3\n"
      "gpu0.uuid GPU-0d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b\n"
      "gpu0.utilization 50\n"
      "gpu0.memory_used 1073741824\n"
      "gpu0.memory_total 85520809984\n"
      "gpu0.temperature 60\n"
      "gpu0.power 350000\n"
      "gpu0.sm_clock 1755\n"
      "gpu0.retired_sbe 1\n"
      "gpu0.remapped_correctable 2\n";
  std::ofstream(state) << gpu;
  DaemonProcess daemon(dir,
                       DaemonOptions{.extra_env = {"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH,
                                                   "INFERBOX_FAKE_NVML_STATE=" + state.string()}});
  ASSERT_TRUE(daemon.WaitReady());
  // Ready means the collector registered for Xid events: this one is delivered.
  std::ofstream(dir.path() / "nvml-state.next") << gpu << "xid 0 13\n";
  std::filesystem::rename(dir.path() / "nvml-state.next", state);

  const HttpResponse response = HttpGet("http://" + daemon.metrics_address() + "/metrics");
  ASSERT_EQ(response.status, 200) << response.error;
  const Scrape scrape = Parse(response.body);
  ExpectPromtoolAccepts(response.body, dir.path());
  const std::map<std::string, std::string> labels = {
      {"gpu", "0"},
      {"uuid", "GPU-0d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b"},
      {"name", "NVIDIA H100 80GB HBM3"}};
  EXPECT_EQ(scrape.Value("inferbox_gpu_power_watts", labels), 350.0) << daemon.Logs();
  // The driver NVML names (CONVENTIONS R3.2), beside the build's CUDA toolkit.
  EXPECT_EQ(scrape.Value("inferbox_build_info", {{"commit", std::string(kGitCommit)},
                                                 {"cuda", std::string(kCudaVersion)},
                                                 {"driver", "580.95.05"},
                                                 {"version", std::string(kVersion)}}),
            1)
      << response.body;
  EXPECT_EQ(scrape.Value("inferbox_gpu_healthy", labels), 1);
  auto with_xid = labels;
  with_xid["xid"] = "13";
  EXPECT_EQ(scrape.Value("inferbox_gpu_xid_errors_total", with_xid), 1);

  for (const auto& file : FilesNamingMetrics()) {
    for (const std::string& name : NamedFamilies(ReadText(file), scrape)) {
      if (!name.starts_with("inferbox_gpu_")) continue;
      EXPECT_TRUE(scrape.types.contains(name))
          << file.filename() << " names " << name << ", which a box with a GPU does not export";
    }
  }
  const std::filesystem::path source(INFERBOX_SOURCE_DIR);
  const std::set<std::string> catalogue =
      NamedFamilies(ReadText(source / "docs/metrics.md"), scrape);
  for (const auto& [name, type] : scrape.types) {
    if (name.starts_with("inferbox_gpu_")) {
      EXPECT_TRUE(catalogue.contains(name)) << name << " is missing from docs/metrics.md";
    }
  }
}

// Admin.GetStatus through `inferboxctl status --json`.
api::GetStatusResponse CtlStatus(const DaemonProcess& daemon, const std::filesystem::path& dir) {
  const CommandResult result =
      RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "status", "--json"}, dir);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  api::GetStatusResponse status;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &status).ok()) << result.out;
  return status;
}

std::string CtlStatusText(const DaemonProcess& daemon, const std::filesystem::path& dir) {
  const CommandResult result =
      RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "status"}, dir);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  return result.out;
}

const api::EngineInfo* FindEngine(const api::GetStatusResponse& status, const std::string& name) {
  for (const auto& engine : status.engines()) {
    if (engine.name() == name) return &engine;
  }
  return nullptr;
}

grpc::health::v1::HealthCheckResponse::ServingStatus InferenceHealth(const DaemonProcess& daemon) {
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("inferbox.v1.Inference");
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 5s);
  EXPECT_TRUE(health->Check(&context, request, &response).ok());
  return response.status();
}

// Health in layers on a box with two GPUs (the fake NVML) and a model with one replica on
// each (run on the CPU by a wrapper: there is no GPU here): /health/live and /health/ready on
// the metrics listener (no key, like /metrics), and the same layers in Admin.GetStatus and
// `inferboxctl status`. A GPU fault (an Xid 79: the GPU fell off the bus) stops only the
// engine on that GPU while the box keeps serving on the other; with both GPUs faulty the box
// leaves readiness, on the probe and in gRPC health alike.
TEST(HealthProbeTest, EveryLayerIsShownAndAGpuFaultStopsOnlyItsEngines) {
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  WriteCpuEngineWrapper(dir.path() / "engine-on-cpu", INFERBOX_ENGINE_PATH,
                        dir.path() / "devices.log");
  const auto state = dir.path() / "nvml-state";
  const std::string gpus =
      "gpus 2\n"
      "gpu0.name NVIDIA H100 80GB HBM3\n"
      "gpu0.uuid GPU-0d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b\n"
      "gpu0.memory_total 85520809984\n"
      "gpu1.name NVIDIA H100 80GB HBM3\n"
      "gpu1.uuid GPU-1d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b\n"
      "gpu1.memory_total 85520809984\n";
  std::ofstream(state) << gpus;
  auto set_state = [&](const std::string& text) {
    std::ofstream(dir.path() / "nvml-state.next") << text;
    std::filesystem::rename(dir.path() / "nvml-state.next", state);
  };
  const std::string config = TestConfig() + "[engines]\nexecutable = \"" +
                             (dir.path() / "engine-on-cpu").string() +
                             "\"\nhealth_interval_seconds = 0.2\n[[models]]\nname = \"tiny\"\n"
                             "path = \"" +
                             (dir.path() / "model").string() +
                             "\"\nkv_cache_gib = 0.1\ndevice = \"cuda\"\ngpus = [0, 1]\n"
                             "replicas = 2\n";
  DaemonProcess daemon(dir,
                       DaemonOptions{.config_text = config,
                                     .extra_env = {"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH,
                                                   "INFERBOX_FAKE_NVML_STATE=" + state.string()}});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());
  const std::string base = "http://" + daemon.metrics_address();
  auto wait_for_status = [&](const std::function<bool(const api::GetStatusResponse&)>& done) {
    api::GetStatusResponse status;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    do {
      status = CtlStatus(daemon, dir.path());
      if (done(status)) break;
      std::this_thread::sleep_for(100ms);
    } while (std::chrono::steady_clock::now() < deadline);
    return status;
  };

  api::GetStatusResponse status = wait_for_status(
      [](const api::GetStatusResponse& s) { return s.health().models(0).engines_ready() == 2; });
  const api::BoxHealth& health = status.health();
  EXPECT_TRUE(health.daemon_live());
  EXPECT_FALSE(health.draining());
  EXPECT_TRUE(health.ready());
  EXPECT_EQ(health.status(), "ready");
  ASSERT_EQ(health.models_size(), 1);
  EXPECT_EQ(health.models(0).name(), "tiny");
  EXPECT_TRUE(health.models(0).ready());
  EXPECT_EQ(health.models(0).engines_live(), 2u);
  EXPECT_EQ(health.models(0).engines_ready(), 2u) << daemon.Logs();
  ASSERT_EQ(status.engines_size(), 2);
  for (const auto& engine : status.engines()) {
    EXPECT_TRUE(engine.process_live()) << engine.name();
    EXPECT_TRUE(engine.has_last_canary_at()) << engine.name() << ": the startup canary passed";
    EXPECT_EQ(engine.last_canary_error(), "");
  }
  EXPECT_EQ(health.gpu_monitoring(), "nvml");
  ASSERT_EQ(health.gpus_size(), 2);
  EXPECT_TRUE(health.gpus(0).healthy());
  EXPECT_TRUE(health.gpus(1).healthy());
  const std::string text = CtlStatusText(daemon, dir.path());
  EXPECT_THAT(text,
              ::testing::HasSubstr("health       READY (ready: 1 of 1 models ready, 2 of 2 GPUs "
                                   "healthy)"));
  EXPECT_THAT(text, ::testing::HasSubstr("  daemon     live"));
  EXPECT_THAT(text, ::testing::HasSubstr("process live, canary passed"));
  EXPECT_THAT(text, ::testing::HasSubstr("  gpu 1      healthy"));

  EXPECT_EQ(HttpGet(base + "/health/live").status, 200);
  HttpResponse ready = HttpGet(base + "/health/ready");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.content_type, "application/json");
  auto body = boost::json::parse(ready.body).as_object();
  EXPECT_EQ(body.at("status").as_string(), "ready");
  const auto& model = body.at("models").as_array().at(0).as_object();
  EXPECT_EQ(model.at("name").as_string(), "tiny");
  EXPECT_EQ(model.at("state").as_string(), "MODEL_STATE_READY");
  EXPECT_TRUE(model.at("ready").as_bool());
  const auto& engine = model.at("engines").as_array().at(0).as_object();
  EXPECT_EQ(engine.at("state").as_string(), "ENGINE_STATE_READY");
  EXPECT_TRUE(engine.at("process_live").as_bool());
  EXPECT_TRUE(engine.contains("last_canary_at"));
  EXPECT_TRUE(body.at("gpus").as_array().at(1).as_object().at("healthy").as_bool());

  // GPU 1 falls off the bus: within the GPU watcher's period (5 s) its engine is drained and
  // stopped; the one on GPU 0 keeps serving, so the box stays ready, degraded.
  set_state(gpus + "xid 1 79\n");
  status = wait_for_status([](const api::GetStatusResponse& s) {
    const api::EngineInfo* held = FindEngine(s, "tiny/1");
    return held != nullptr && !held->gpu_fault().empty() && !held->process_live();
  });
  const api::EngineInfo* held = FindEngine(status, "tiny/1");
  ASSERT_NE(held, nullptr);
  EXPECT_THAT(held->gpu_fault(), ::testing::HasSubstr("Xid 79")) << daemon.Logs();
  EXPECT_FALSE(held->process_live());
  const api::EngineInfo* serving = FindEngine(status, "tiny/0");
  ASSERT_NE(serving, nullptr);
  EXPECT_EQ(serving->state(), api::ENGINE_STATE_READY);
  EXPECT_EQ(serving->restarts(), 0u);
  EXPECT_TRUE(status.health().ready());
  EXPECT_EQ(status.health().status(), "degraded");
  EXPECT_EQ(status.state(), api::DAEMON_STATE_DEGRADED);
  EXPECT_FALSE(status.health().gpus(1).healthy());
  EXPECT_THAT(status.health().gpus(1).reason(), ::testing::HasSubstr("79"));
  EXPECT_THAT(CtlStatusText(daemon, dir.path()),
              ::testing::AllOf(::testing::HasSubstr("  gpu 1      UNHEALTHY"),
                               ::testing::HasSubstr("held off its GPU: GPU 1")));
  ready = HttpGet(base + "/health/ready");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(boost::json::parse(ready.body).as_object().at("status").as_string(), "degraded");
  EXPECT_EQ(InferenceHealth(daemon), grpc::health::v1::HealthCheckResponse::SERVING);
  auto inference = api::Inference::NewStub(
      grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 3; ++i) {
    const ChatResult chat = RunChat(*inference, TinyChat(4));
    EXPECT_TRUE(chat.status.ok()) << chat.status.error_message();
    EXPECT_EQ(chat.tokens, 4u);
  }
  EXPECT_THAT(daemon.Logs(), ::testing::HasSubstr("its GPU is unhealthy"));
  // Both key events carry what they are about (the journal's fields, here on stderr; R4.5).
  EXPECT_THAT(daemon.Logs(), ::testing::HasSubstr("[GPU=1 XID=79]"));
  EXPECT_THAT(daemon.Logs(), ::testing::HasSubstr("[MODEL=tiny ENGINE=tiny/1 GPU=1]"));
  const Scrape scrape = Parse(HttpGet(base + "/metrics").body);
  EXPECT_EQ(scrape.Value("inferbox_engine_gpu_fault", {{"model", "tiny"}, {"replica", "1"}}), 1);
  EXPECT_EQ(scrape.Value("inferbox_engine_gpu_fault", {{"model", "tiny"}, {"replica", "0"}}), 0);
  EXPECT_EQ(scrape.Value("inferbox_engine_up", {{"model", "tiny"}, {"replica", "1"}}), 0);

  // GPU 0 too: nothing can serve, so the box leaves readiness; the daemon itself lives.
  set_state(gpus + "xid 1 79\nxid 0 79\n");
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  do {
    ready = HttpGet(base + "/health/ready");
    if (ready.status == 503) break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  ASSERT_EQ(ready.status, 503) << ready.body << daemon.Logs();
  body = boost::json::parse(ready.body).as_object();
  EXPECT_EQ(body.at("status").as_string(), "gpu_unhealthy");
  const auto& faulty = body.at("gpus").as_array().at(0).as_object();
  EXPECT_FALSE(faulty.at("healthy").as_bool());
  EXPECT_NE(std::string(faulty.at("reason").as_string()).find("79"), std::string::npos)
      << ready.body;
  EXPECT_EQ(HttpGet(base + "/health/live").status, 200) << "the daemon itself is alive";
  auto inference_health = InferenceHealth(daemon);
  while (inference_health != grpc::health::v1::HealthCheckResponse::NOT_SERVING &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
    inference_health = InferenceHealth(daemon);
  }
  EXPECT_EQ(inference_health, grpc::health::v1::HealthCheckResponse::NOT_SERVING)
      << "gRPC health agrees with the probe";
  // The engine on GPU 0 drains, then its process stops too.
  status = wait_for_status(
      [](const api::GetStatusResponse& s) { return s.health().models(0).engines_live() == 0; });
  EXPECT_FALSE(status.health().ready());
  EXPECT_FALSE(status.health().models(0).ready());
  EXPECT_EQ(status.health().models(0).engines_live(), 0u);

  // Each engine was given its own GPU, numbered in PCI bus order as NVML numbers them.
  std::ifstream log(dir.path() / "devices.log");
  const std::string devices((std::istreambuf_iterator<char>(log)),
                            std::istreambuf_iterator<char>());
  EXPECT_THAT(devices, ::testing::HasSubstr("0 PCI_BUS_ID\n"));
  EXPECT_THAT(devices, ::testing::HasSubstr("1 PCI_BUS_ID\n"));
}

// The OpenAI gateway stops reading an engine stream at its finishing chunk (the client has
// its answer). Even when the engine's OK status comes half a second after that chunk (fault
// injection; normally they travel together), the request is a success in the metrics, not a
// cancelled failure.
TEST(MetricsLateStatus, AFinishedHttpRequestIsASuccessWhenItsStatusComesLate) {
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  const std::string config = TestConfig() +
                             "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
                             "\"\n[[models]]\nname = \"tiny\"\npath = \"" +
                             (dir.path() / "model").string() + "\"\nkv_cache_gib = 0.1\n";
  DaemonProcess daemon(dir, DaemonOptions{.config_text = config,
                                          .extra_env = {"INFERBOX_TEST_FAULT_LATE_STATUS_MS=500"}});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());

  daemon::openai_test::Client client;
  const std::string url = "http://" + daemon.http_address() + "/v1/completions";
  for (const bool stream : {true, false}) {
    const std::string body =
        fmt::format(R"({{"model":"tiny","prompt":"Count to three","max_tokens":4,"temperature":0,)"
                    R"("ignore_eos":true,"stream":{}}})",
                    stream ? "true" : "false");
    const daemon::openai_test::Reply reply = client.Request("POST", url, &body, {});
    ASSERT_EQ(reply.status, 200) << reply.error << reply.body;
    if (stream) {
      const auto events = daemon::openai_test::ParseSse(reply.body);
      ASSERT_FALSE(events.data.empty());
      EXPECT_EQ(events.data.back(), "[DONE]");
    }
  }
  const std::map<std::string, std::string> success = {{"model", "tiny"},
                                                      {"finish_reason", "length"}};
  Scrape scrape;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  do {
    scrape = Parse(HttpGet("http://" + daemon.metrics_address() + "/metrics").body);
    if (scrape.Value("inferbox_request_success_total", success) >= 2) break;
    std::this_thread::sleep_for(50ms);
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(scrape.Value("inferbox_request_success_total", success), 2) << daemon.Logs();
  EXPECT_LT(
      scrape.Value("inferbox_request_failures_total", {{"model", "tiny"}, {"reason", "cancelled"}}),
      1)
      << "a finished request counted as cancelled";
}

// A canary that fails (the engine's loop stalls after 3 steps: the startup canary passes, a
// periodic one does not) is counted, logged and shown, takes the box out of readiness, and
// the engine is restarted, after which the box is ready again.
TEST(CanaryTest, AFailedCanaryIsCountedShownAndRestartsTheEngine) {
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  const std::string config = TestConfig() +
                             "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
                             "\"\nhealth_interval_seconds = 0.2\ncanary_interval_seconds = 0.3\n"
                             "canary_timeout_seconds = 1\n[[models]]\nname = \"tiny\"\n"
                             "path = \"" +
                             (dir.path() / "model").string() + "\"\nkv_cache_gib = 0.1\n";
  DaemonProcess daemon(dir,
                       DaemonOptions{.config_text = config,
                                     .extra_env = {"INFERBOX_TEST_FAULT_STALL_AFTER_STEPS=3"}});
  ASSERT_TRUE(daemon.WaitReady());
  const std::map<std::string, std::string> replica = {{"model", "tiny"}, {"replica", "0"}};
  auto with_result = [&](const char* result) {
    auto labels = replica;
    labels["result"] = result;
    return labels;
  };
  // Readiness as a load balancer polling /health/ready sees it: ready, then not ready once
  // the canary fails (the engine is killed and restarts), then ready again.
  // (Until the engine has loaded, the box is not ready yet: watched from the first 200.)
  std::vector<long> codes;
  const auto watch_deadline = std::chrono::steady_clock::now() + 40s;
  while (std::chrono::steady_clock::now() < watch_deadline) {
    const long code = HttpGet("http://" + daemon.metrics_address() + "/health/ready").status;
    if ((codes.empty() && code == 200) || (!codes.empty() && codes.back() != code))
      codes.push_back(code);
    if (codes.size() >= 3 && codes.back() == 200) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_GE(codes.size(), 3u) << "readiness never dropped and came back: " << daemon.Logs();
  EXPECT_EQ(codes.front(), 200);
  EXPECT_EQ(codes[1], 503) << "a failed canary takes the box out of readiness";
  EXPECT_EQ(codes.back(), 200) << "the restarted engine makes it ready again";

  Scrape scrape;
  const auto deadline = std::chrono::steady_clock::now() + 40s;
  do {
    const HttpResponse response = HttpGet("http://" + daemon.metrics_address() + "/metrics");
    scrape = Parse(response.body);
    if (scrape.Value("inferbox_engine_canaries_total", with_result("failed")) >= 1 &&
        scrape.Value("inferbox_engine_restarts_total", replica) >= 1)
      break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_GE(scrape.Value("inferbox_engine_canaries_total", with_result("failed")), 1)
      << daemon.Logs();
  EXPECT_GE(scrape.Value("inferbox_engine_canaries_total", with_result("passed")), 1)
      << "the startup canary passed";
  EXPECT_GE(scrape.Value("inferbox_engine_restarts_total", replica), 1);
  EXPECT_GT(scrape.Value("inferbox_engine_last_canary_timestamp_seconds", replica), 1.7e9);
  EXPECT_THAT(daemon.Logs(), ::testing::HasSubstr("the canary generation failed"));
  const api::GetStatusResponse status = CtlStatus(daemon, dir.path());
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_GE(status.engines(0).canary_failures(), 1u);
}

// Series per API key behind [server] metrics_per_key: on, requests and tokens by key id
// equal what each key's clients received (keyless callers count as "anonymous"); off (the
// default), no per-key name and no key id appears on /metrics at all.
class PerKeySeriesTest : public ::testing::TestWithParam<bool> {};

TEST_P(PerKeySeriesTest, CountsRequestsAndTokensByKeyOnlyWhenSwitchedOn) {
  const bool per_key = GetParam();
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  const std::string config = TestConfig(per_key ? "metrics_per_key = true\n" : "") +
                             "[engines]\nexecutable = \"" + INFERBOX_ENGINE_PATH +
                             "\"\n[[models]]\nname = \"tiny\"\npath = \"" +
                             (dir.path() / "model").string() + "\"\nkv_cache_gib = 0.1\n";
  DaemonProcess daemon(dir, DaemonOptions{.config_text = config});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());
  // A keyless loopback box: anyone may create keys, and a valid key still names its caller.
  const CommandResult created = RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(),
                                            "keys", "create", "--name", "team-a", "--json"},
                                           dir.path());
  ASSERT_EQ(created.exit_code, 0) << created.err;
  api::CreateKeyResponse key;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(created.out, &key).ok()) << created.out;
  const std::string secret_part = key.secret().substr(key.secret().find('.') + 1);

  auto inference = api::Inference::NewStub(
      grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials()));
  uint64_t key_tokens = 0;
  uint64_t key_prompt_tokens = 0;
  for (int i = 0; i < 2; ++i) {
    const ChatResult chat = RunChat(*inference, TinyChat(5), key.secret());
    ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
    key_tokens += chat.tokens;
    for (const auto& chunk : chat.chunks) {
      if (chunk.has_usage()) key_prompt_tokens += chunk.usage().prompt_tokens();
    }
  }
  const ChatResult anonymous = RunChat(*inference, TinyChat(3));
  ASSERT_TRUE(anonymous.status.ok()) << anonymous.status.error_message();

  const HttpResponse response = HttpGet("http://" + daemon.metrics_address() + "/metrics");
  ASSERT_EQ(response.status, 200);
  const Scrape scrape = Parse(response.body);
  EXPECT_EQ(response.body.find(secret_part), std::string::npos) << "a secret is never a label";
  if (!per_key) {
    for (const auto& [name, type] : scrape.types) {
      EXPECT_FALSE(name.starts_with("inferbox_key_")) << name << ": per-key series are off";
    }
    EXPECT_EQ(response.body.find(key.key().id()), std::string::npos)
        << "with per-key series off no key id appears on /metrics";
    return;
  }
  ExpectPromtoolAccepts(response.body, dir.path());
  const std::map<std::string, std::string> by_key = {{"key", key.key().id()}, {"model", "tiny"}};
  EXPECT_EQ(scrape.Value("inferbox_key_requests_total", by_key), 2);
  EXPECT_EQ(scrape.Value("inferbox_key_generation_tokens_total", by_key), key_tokens);
  EXPECT_EQ(scrape.Value("inferbox_key_prompt_tokens_total", by_key), key_prompt_tokens);
  const std::map<std::string, std::string> keyless = {{"key", "anonymous"}, {"model", "tiny"}};
  EXPECT_EQ(scrape.Value("inferbox_key_requests_total", keyless), 1);
  EXPECT_EQ(scrape.Value("inferbox_key_generation_tokens_total", keyless), 3);
  // The catalogue names every per-key family the box exports.
  const std::set<std::string> catalogue = NamedFamilies(
      ReadText(std::filesystem::path(INFERBOX_SOURCE_DIR) / "docs/metrics.md"), scrape);
  for (const auto& [name, type] : scrape.types) {
    if (name.starts_with("inferbox_key_")) {
      EXPECT_TRUE(catalogue.contains(name)) << name << " is missing from docs/metrics.md";
      EXPECT_EQ(type, "counter") << name;
    }
  }
  for (const char* name : {"inferbox_key_requests_total", "inferbox_key_prompt_tokens_total",
                           "inferbox_key_generation_tokens_total"}) {
    EXPECT_TRUE(scrape.types.contains(name)) << name;
  }
  // The per-key names the dashboards and alerts use (MetricsTest skips them) exist here.
  for (const auto& file : FilesNamingMetrics()) {
    for (const std::string& name : NamedFamilies(ReadText(file), scrape)) {
      if (!name.starts_with("inferbox_key_")) continue;
      EXPECT_TRUE(scrape.types.contains(name))
          << file.filename() << " names " << name << ", which the box does not export";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Switch, PerKeySeriesTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? "On" : "Off";
                         });

TEST_F(MetricsTest, NamesFollowThePrometheusConventions) {
  const Scrape scrape = ScrapeMetrics();
  ASSERT_FALSE(scrape.types.empty());
  for (const auto& [name, type] : scrape.types) {
    // Ours are inferbox_; process_ (the standard process metrics) and exposer_ (the HTTP
    // library's own) are the conventional names every exporter uses.
    EXPECT_TRUE(name.starts_with("inferbox_") || name.starts_with("process_") ||
                name.starts_with("exposer_"))
        << name;
    if (type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
    for (const char* unit : {"_ms", "_milliseconds", "_mb", "_percent", "_kb"}) {
      EXPECT_EQ(name.find(unit), std::string::npos) << name << " uses a non-base unit";
    }
  }
  EXPECT_EQ(scrape.types.count("inferbox_time_to_first_token_seconds"), 1u);
  EXPECT_EQ(scrape.types.at("inferbox_time_to_first_token_seconds"), "histogram");
  EXPECT_EQ(scrape.types.at("inferbox_num_requests_running"), "gauge");
}

}  // namespace
}  // namespace inferbox::testing
