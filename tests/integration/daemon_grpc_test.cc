// What clients of a running inferboxd see over the wire: gRPC health (per service),
// reflection, Admin.GetStatus, the Prometheus scrape, and refused generations.
#include <unistd.h>

#include <regex>
#include <set>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "http_client.h"
#include "inferbox/common/version.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"

namespace inferbox::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

// One daemon for the whole suite: these tests only read.
class DaemonGrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    daemon_ = new DaemonProcess(*dir_, {});
    ready_ = daemon_->WaitReady();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    delete dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(ready_);
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
  }

  static std::chrono::system_clock::time_point Deadline() {
    return std::chrono::system_clock::now() + std::chrono::seconds(10);
  }

  grpc::Status Check(const std::string& service, HealthCheckResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    return grpc::health::v1::Health::NewStub(channel_)->Check(&context, request, response);
  }

  static TempDir* dir_;
  static DaemonProcess* daemon_;
  static ::testing::AssertionResult ready_;
  std::shared_ptr<grpc::Channel> channel_;
};

TempDir* DaemonGrpcTest::dir_ = nullptr;
DaemonProcess* DaemonGrpcTest::daemon_ = nullptr;
::testing::AssertionResult DaemonGrpcTest::ready_ = ::testing::AssertionFailure();

TEST_F(DaemonGrpcTest, HealthIsServingOverallAndForAdmin) {
  HealthCheckResponse response;
  ASSERT_TRUE(Check("", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(Check("inferbox.v1.Admin", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

TEST_F(DaemonGrpcTest, InferenceIsNotServingWithoutAnEngine) {
  HealthCheckResponse response;
  ASSERT_TRUE(Check("inferbox.v1.Inference", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING)
      << "no engine exists yet: reporting SERVING would be a health check that lies";
}

// Every generation here is refused (no model is served); a client that cancels, or whose
// deadline passes, before the refusal is out must not take the daemon down (gRPC tells the
// refusal's reactor OnCancel too).
TEST_F(DaemonGrpcTest, RefusedGenerationsCancelledByTheirClientsLeaveTheDaemonServing) {
  auto inference = inferbox::v1::Inference::NewStub(channel_);
  inferbox::v1::GenerateRequest request;
  request.set_model("nope");
  request.set_text("Hi");
  for (int i = 0; i < 300; ++i) {
    grpc::ClientContext context;
    if (i % 2 == 0) {
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::microseconds(100 * (i % 10)));
    }
    auto reader = inference->Generate(&context, request);
    if (i % 2 == 1) context.TryCancel();
    inferbox::v1::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
    }
    const grpc::Status status = reader->Finish();
    ASSERT_FALSE(status.ok()) << "call " << i;
  }
  HealthCheckResponse response;
  const grpc::Status health = Check("", &response);
  ASSERT_TRUE(health.ok()) << "the daemon stopped answering: " << health.error_message();
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

// CONVENTIONS R2.7: the receive limit is set on purpose (16 MiB): a larger request is refused
// by gRPC with RESOURCE_EXHAUSTED before any handler, a smaller one reaches the handler (here
// NOT_FOUND for the model), and the daemon serves on.
TEST_F(DaemonGrpcTest, AnOversizedRequestIsRefusedWithResourceExhausted) {
  auto inference = inferbox::v1::Inference::NewStub(channel_);
  const auto generate = [&](size_t text_bytes) {
    inferbox::v1::GenerateRequest request;
    request.set_model("nope");
    request.set_text(std::string(text_bytes, 'a'));
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    auto reader = inference->Generate(&context, request);
    inferbox::v1::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  };
  const grpc::Status large = generate((size_t{16} << 20) + 1);
  EXPECT_EQ(large.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << large.error_message();
  const grpc::Status below = generate(size_t{15} << 20);
  EXPECT_EQ(below.error_code(), grpc::StatusCode::NOT_FOUND) << below.error_message();
  HealthCheckResponse response;
  ASSERT_TRUE(Check("", &response).ok()) << "the daemon stopped answering";
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

TEST_F(DaemonGrpcTest, UnknownServiceIsNotFound) {
  HealthCheckResponse response;
  const grpc::Status status = Check("no.such.Service", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonGrpcTest, HealthWatchSendsTheCurrentStatusAtOnce) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("inferbox.v1.Admin");
  auto reader = grpc::health::v1::Health::NewStub(channel_)->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  context.TryCancel();
}

// R2.6: an idle admin stream survives the client's keepalive pings. The client pings every
// 15 s while nothing else moves (and keeps on: no limit on pings without data); a server
// with gRPC's default policy (one ping per 5 minutes without data) answers the third it
// counts as too early with a GOAWAY "too_many_pings", ending the stream UNAVAILABLE. Ours
// takes one every 10 s.
TEST_F(DaemonGrpcTest, AnIdleStreamSurvivesKeepalivePings) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 15000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto channel = grpc::CreateCustomChannel(daemon_->grpc_address(),
                                           grpc::InsecureChannelCredentials(), arguments);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("inferbox.v1.Admin");
  auto reader = grpc::health::v1::Health::NewStub(channel)->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  // Idle for 65 s (four pings: gRPC's GOAWAY comes with the third ping it counts as too
  // early), watching the connection: it must stay up.
  const auto until = std::chrono::system_clock::now() + std::chrono::seconds(65);
  grpc_connectivity_state state = channel->GetState(false);
  ASSERT_EQ(state, GRPC_CHANNEL_READY);
  while (channel->WaitForStateChange(state, until)) {
    state = channel->GetState(false);
    ADD_FAILURE() << "the connection left READY (state " << state << ") while the stream idled";
    break;
  }
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED)
      << "the stream ended by itself: " << status.error_message();
}

TEST_F(DaemonGrpcTest, ReflectionListsOurServicesAndDescribesThem) {
  using grpc::reflection::v1alpha::ServerReflection;
  using grpc::reflection::v1alpha::ServerReflectionRequest;
  using grpc::reflection::v1alpha::ServerReflectionResponse;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  auto stream = ServerReflection::NewStub(channel_)->ServerReflectionInfo(&context);

  ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> services;
  for (const auto& service : response.list_services_response().service()) {
    services.insert(service.name());
  }
  EXPECT_TRUE(services.count("inferbox.v1.Admin")) << "reflection does not list inferbox.v1.Admin";
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));

  // What grpcurl does next: fetch the descriptor of the service to build requests.
  ServerReflectionRequest describe;
  describe.set_file_containing_symbol("inferbox.v1.Admin");
  ASSERT_TRUE(stream->Write(describe));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.has_file_descriptor_response())
      << "error: " << response.error_response().error_message();
  EXPECT_GE(response.file_descriptor_response().file_descriptor_proto_size(), 1);
  stream->WritesDone();
}

TEST_F(DaemonGrpcTest, GetStatusDescribesTheRunningDaemon) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  inferbox::v1::GetStatusResponse status;
  ASSERT_TRUE(inferbox::v1::Admin::NewStub(channel_)->GetStatus(&context, {}, &status).ok());
  EXPECT_EQ(status.version(), kVersion);
  EXPECT_EQ(status.commit(), kGitCommit);
  EXPECT_EQ(status.state(), inferbox::v1::DAEMON_STATE_SERVING);
  EXPECT_EQ(status.config_path(), daemon_->config_path().string());
  EXPECT_EQ(status.runtime_dir(), daemon_->runtime_dir().string());
  EXPECT_EQ(status.pid(), daemon_->process().pid());
  EXPECT_EQ(status.config_generation(), 1u);
  EXPECT_GE(status.uptime_seconds(), 0.0);
  EXPECT_GT(status.started_at().seconds(), 1700000000);
  std::map<std::string, std::string> listeners;
  for (const auto& listener : status.listeners()) listeners[listener.name()] = listener.address();
  EXPECT_EQ(listeners["grpc"], daemon_->grpc_address());
  EXPECT_EQ(listeners["metrics"], daemon_->metrics_address());
}

TEST_F(DaemonGrpcTest, AdminRpcsOfLaterReleasesAnswerUnimplemented) {
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  inferbox::v1::ListEnginesResponse response;
  const grpc::Status status =
      inferbox::v1::Admin::NewStub(channel_)->ListEngines(&context, {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(DaemonGrpcTest, MetricsScrapeHasBuildInfoAndProcessMetrics) {
  const HttpResponse response = HttpGet("http://" + daemon_->metrics_address() + "/metrics");
  ASSERT_EQ(response.status, 200) << response.error;
  EXPECT_THAT(response.content_type, HasSubstr("text/plain"));
  // No NVML here: driver "none"; cuda as this build was configured.
  const std::string expected_build_info =
      "inferbox_build_info{commit=\"" + std::string(kGitCommit) + "\",cuda=\"" +
      std::string(kCudaVersion) + "\",driver=\"none\",version=\"" + std::string(kVersion) + "\"} 1";
  EXPECT_THAT(response.body, HasSubstr(expected_build_info));
  for (const char* name :
       {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
        "process_start_time_seconds", "inferbox_config_reloads_total"}) {
    EXPECT_THAT(response.body, HasSubstr(std::string("\n") + name)) << "scrape lacks " << name;
  }
  // Prometheus naming: counters end in _total; no non-base units.
  const std::regex type_line("# TYPE (\\S+) (\\S+)");
  for (std::sregex_iterator it(response.body.begin(), response.body.end(), type_line), end;
       it != end; ++it) {
    const std::string name = (*it)[1];
    if ((*it)[2] == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
    EXPECT_FALSE(std::regex_search(name, std::regex("_(ms|milliseconds|mb|percent)(_|$)"))) << name;
  }
}

}  // namespace
}  // namespace inferbox::testing
