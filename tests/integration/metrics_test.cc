// /metrics of the real daemon after real traffic through a real engine: the counters say
// exactly what the clients saw (requests, tokens, finish reasons, refusals, cancels), the
// engine gauges are there, and every name follows the Prometheus conventions.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "daemon_fixture.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "http_client.h"
#include "inferbox/v1/inference.grpc.pb.h"
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
      // the price per million tokens only while tokens flow (this test sends none).
      if (name.starts_with("inferbox_gpu_") || name == "inferbox_cost_per_million_output_tokens")
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

// The GPU names against a daemon whose NVML is the fake one (tests/support/fake_nvml): one
// GPU that reports every reading, and an Xid event queued once the daemon listens for them.
TEST(GpuMetricsTest, DashboardsAlertsAndCatalogueNameOnlyGpuMetricsTheBoxExports) {
  TempDir dir;
  const auto state = dir.path() / "nvml-state";
  const std::string gpu =
      "gpus 1\n"
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

// /health/live and /health/ready on the metrics listener (no key, like /metrics): readiness
// shows every layer, and a GPU fault (here an Xid 79 from the fake NVML: the GPU fell off
// the bus) takes the box out of it, on the probe and in gRPC health alike.
TEST(HealthProbeTest, ReadinessShowsEveryLayerAndFailsClosedOnAGpuFault) {
  TempDir dir;
  MakeTinyModel(dir.path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "8"}, dir.path());
  const auto state = dir.path() / "nvml-state";
  const std::string gpu =
      "gpus 1\n"
      "gpu0.name NVIDIA H100 80GB HBM3\n"
      "gpu0.uuid GPU-0d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b\n"
      "gpu0.memory_total 85520809984\n";
  std::ofstream(state) << gpu;
  const std::string config = TestConfig() +
                             "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
                             "\"\nhealth_interval_seconds = 0.2\n[[models]]\nname = \"tiny\"\n"
                             "path = \"" +
                             (dir.path() / "model").string() + "\"\nkv_cache_gib = 0.1\n";
  DaemonProcess daemon(dir,
                       DaemonOptions{.config_text = config,
                                     .extra_env = {"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH,
                                                   "INFERBOX_FAKE_NVML_STATE=" + state.string()}});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());
  const std::string base = "http://" + daemon.metrics_address();

  EXPECT_EQ(HttpGet(base + "/health/live").status, 200);
  HttpResponse ready = HttpGet(base + "/health/ready");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.content_type, "application/json");
  auto body = boost::json::parse(ready.body).as_object();
  EXPECT_EQ(body.at("status").as_string(), "ready");
  const auto& model = body.at("models").as_array().at(0).as_object();
  EXPECT_EQ(model.at("name").as_string(), "tiny");
  EXPECT_EQ(model.at("state").as_string(), "MODEL_STATE_READY");
  EXPECT_EQ(model.at("engines").as_array().at(0).as_object().at("state").as_string(),
            "ENGINE_STATE_READY");
  EXPECT_TRUE(body.at("gpus").as_array().at(0).as_object().at("healthy").as_bool());

  // The GPU falls off the bus: within the health watcher's period, readiness drops.
  std::ofstream(dir.path() / "nvml-state.next") << gpu << "xid 0 79\n";
  std::filesystem::rename(dir.path() / "nvml-state.next", state);
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

  // gRPC health follows from the GPU health watcher (every 5 s).
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckResponse response;
  do {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service("inferbox.v1.Inference");
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    ASSERT_TRUE(health->Check(&context, request, &response).ok());
    if (response.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING) break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING)
      << "gRPC health agrees with the probe";
}

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
