// The metrics listener answers probes beside /metrics: the daemon's /health/live and
// /health/ready live there so load balancers and Kubernetes-style checks can read them
// without a key, on the port operators already scrape.
#include "inferbox/monitoring/metrics_server.h"

#include <atomic>

#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include "http_client.h"

namespace inferbox::monitoring {
namespace {

using inferbox::testing::HttpGet;

TEST(MetricsServer, AnswersProbesBesideTheMetrics) {
  auto server = MetricsServer::Start("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("probe_test_total")
      .Help("test")
      .Register(*registry)
      .Add({})
      .Increment();
  (*server)->Register(registry);
  std::atomic<bool> ready{false};
  (*server)->AddProbe("/health/ready", [&ready] {
    return ready ? ProbeResponse{200, "application/json", R"({"status":"ready"})"}
                 : ProbeResponse{503, "application/json", R"({"status":"not_ready"})"};
  });
  const std::string base = "http://127.0.0.1:" + std::to_string((*server)->port());

  auto response = HttpGet(base + "/health/ready");
  EXPECT_EQ(response.status, 503) << response.error;
  EXPECT_EQ(response.body, R"({"status":"not_ready"})");
  EXPECT_EQ(response.content_type, "application/json");
  ready = true;
  response = HttpGet(base + "/health/ready");
  EXPECT_EQ(response.status, 200) << response.error;
  EXPECT_EQ(response.body, R"({"status":"ready"})");

  response = HttpGet(base + "/metrics");
  EXPECT_EQ(response.status, 200);
  EXPECT_NE(response.body.find("probe_test_total 1"), std::string::npos) << response.body;
  EXPECT_EQ(HttpGet(base + "/health/other").status, 404) << "only registered paths answer";
}

TEST(MetricsServer, TwoServersKeepTheirOwnProbes) {
  auto first = MetricsServer::Start("127.0.0.1:0");
  auto second = MetricsServer::Start("127.0.0.1:0");
  ASSERT_TRUE(first.ok() && second.ok());
  (*first)->AddProbe("/health/live", [] { return ProbeResponse{200, "text/plain", "first"}; });
  (*second)->AddProbe("/health/live", [] { return ProbeResponse{200, "text/plain", "second"}; });
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string((*first)->port()) + "/health/live").body,
            "first");
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string((*second)->port()) + "/health/live").body,
            "second");
  const uint16_t port = (*first)->port();
  first->reset();
  EXPECT_EQ(HttpGet("http://127.0.0.1:" + std::to_string(port) + "/health/live").status, 0)
      << "a stopped server answers nothing";
}

}  // namespace
}  // namespace inferbox::monitoring
