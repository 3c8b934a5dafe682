// inferboxd as systemd sees it: READY=1 only once it can be used, watchdog pings, reload on
// SIGHUP that never breaks a running box, graceful stop on SIGTERM, clear startup failures.
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <fstream>
#include <string_view>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "inferbox/v1/admin.grpc.pb.h"

namespace inferbox::testing {
namespace {

using ::testing::HasSubstr;

grpc::health::v1::HealthCheckResponse::ServingStatus CheckHealth(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

inferbox::v1::GetStatusResponse GetStatus(const std::string& address) {
  auto stub = inferbox::v1::Admin::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  inferbox::v1::GetStatusResponse response;
  const grpc::Status status = stub->GetStatus(&context, {}, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

TEST(DaemonLifecycle, ReadyOnlyOnceEveryListenerAccepts) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  // READY=1 came first: by then both ports must already accept connections.
  EXPECT_TRUE(AcceptsConnections(daemon.grpc_address())) << daemon.grpc_address();
  EXPECT_TRUE(AcceptsConnections(daemon.metrics_address())) << daemon.metrics_address();
  const auto status = NotifyField(daemon.ready_message(), "STATUS");
  ASSERT_TRUE(status) << "READY=1 should carry a STATUS= line: " << daemon.ready_message();
  EXPECT_THAT(*status, HasSubstr(daemon.grpc_address()));
  EXPECT_THAT(*status, HasSubstr(daemon.metrics_address()));
  // Nothing said READY=1 before the real one.
  for (size_t i = 0; i + 1 < daemon.notify().received().size(); ++i) {
    EXPECT_THAT(daemon.notify().received()[i], ::testing::Not(HasSubstr("READY=1")));
  }
}

TEST(DaemonLifecycle, SigtermStopsGracefullyWithinTheDeadline) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  const auto listeners_file = daemon.runtime_dir() / "listeners.toml";
  ASSERT_TRUE(std::filesystem::exists(listeners_file));

  daemon.process().Signal(SIGTERM);
  const auto stopping = daemon.notify().WaitFor("STOPPING=1", std::chrono::seconds(10));
  ASSERT_TRUE(stopping) << "no STOPPING=1 after SIGTERM; log:\n" << daemon.Logs();
  EXPECT_THAT(NotifyField(*stopping, "STATUS").value_or(""), HasSubstr("draining"));
  // The config's shutdown deadline is 5 s; with nothing in flight it stops at once, and
  // must in any case be gone before the deadline plus a margin.
  const auto exit_code = daemon.process().WaitForExit(std::chrono::seconds(8));
  ASSERT_TRUE(exit_code) << "inferboxd still running after SIGTERM; log:\n" << daemon.Logs();
  EXPECT_EQ(*exit_code, 0) << daemon.Logs();
  EXPECT_FALSE(std::filesystem::exists(listeners_file)) << "listeners.toml left behind";
  EXPECT_FALSE(AcceptsConnections(daemon.grpc_address()));
}

TEST(DaemonLifecycle, DrainTurnsHealthNotServingAndCutsLongRpcsAtTheDeadline) {
  TempDir dir;
  DaemonProcess daemon(dir, {.config_text = "[server]\ngrpc_listen = \"127.0.0.1:0\"\n"
                                            "metrics_listen = \"127.0.0.1:0\"\n"
                                            "shutdown_timeout_seconds = 1\n"});
  ASSERT_TRUE(daemon.WaitReady());
  // A health Watch is an RPC that never ends by itself: the drain must not wait for it
  // beyond the deadline, and the watcher must see NOT_SERVING before the stream is cut.
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::health::v1::HealthCheckRequest request;
  auto watch = stub->Watch(&context, request);
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  daemon.process().Signal(SIGTERM);
  ASSERT_TRUE(watch->Read(&response)) << "the watch ended without reporting NOT_SERVING";
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&response)) << "the stream should end when the deadline passes";
  const auto exit_code = daemon.process().WaitForExit(std::chrono::seconds(6));
  ASSERT_TRUE(exit_code) << "inferboxd outlived its 1 s drain deadline; log:\n" << daemon.Logs();
  EXPECT_EQ(*exit_code, 0);
}

TEST(DaemonLifecycle, SigintStopsLikeSigterm) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  daemon.process().Signal(SIGINT);
  EXPECT_EQ(daemon.process().WaitForExit(std::chrono::seconds(8)), 0) << daemon.Logs();
}

TEST(DaemonLifecycle, WatchdogPingsComeFromTheMainLoop) {
  TempDir dir;
  DaemonProcess daemon(dir, {.extra_env = {"WATCHDOG_USEC=200000"}});
  ASSERT_TRUE(daemon.WaitReady());
  // Pings every 100 ms (half of WATCHDOG_USEC); three in a row within 5 s.
  for (int ping = 0; ping < 3; ++ping) {
    ASSERT_TRUE(daemon.notify().WaitFor("WATCHDOG=1", std::chrono::seconds(5)))
        << "watchdog ping " << ping << " missing; log:\n"
        << daemon.Logs();
  }
}

// Waits up to `timeout` for `text` in the daemon's log, reading its notifications meanwhile
// as systemd does (a full notification socket would block the daemon's sd_notify, and with it
// the main loop).
bool WaitForLog(DaemonProcess& daemon, std::string_view text, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (daemon.Logs().find(text) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    daemon.notify().ReceivePending();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

// No WATCHDOG=1 within `quiet`, once the pings sent before now (at most a few, 100 ms apart)
// are read.
bool PingsStopped(DaemonProcess& daemon, std::chrono::milliseconds quiet) {
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  daemon.notify().ReceivePending();
  return !daemon.notify().WaitFor("WATCHDOG=1", quiet);
}

// The pings come from the box's working parts turning, not from a loop that turns whatever
// they do (CONVENTIONS R4.2): a deadlock on the serving state's lock (which every engine state
// change, /health and gRPC Health take) stops them, so that systemd restarts the daemon.
TEST(DaemonLifecycle, WatchdogPingsStopWhenTheServingStateDeadlocks) {
  TempDir dir;
  DaemonProcess daemon(
      dir, {.extra_env = {"WATCHDOG_USEC=200000", "INFERBOX_TEST_FAULT_STALL=serving-state",
                          "INFERBOX_TEST_FAULT_STALL_AFTER_MS=1500"}});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.notify().WaitFor("WATCHDOG=1", std::chrono::seconds(5))) << daemon.Logs();
  ASSERT_TRUE(
      WaitForLog(daemon, "holding the serving state's lock for good", std::chrono::seconds(20)))
      << daemon.Logs();
  EXPECT_TRUE(PingsStopped(daemon, std::chrono::seconds(2)))
      << "a deadlocked daemon still told systemd it was alive; log:\n"
      << daemon.Logs();
}

// A stuck HTTP acceptor (no new connection accepted) stops them too, with the reason in the
// journal (MESSAGE_ID b59e2375…), 10 s after its loop last turned.
TEST(DaemonLifecycle, WatchdogPingsStopWhenTheHttpAcceptorIsStuck) {
  TempDir dir;
  DaemonProcess daemon(dir, {.extra_env = {"WATCHDOG_USEC=200000", "INFERBOX_TEST_FAULT_STALL=http",
                                           "INFERBOX_TEST_FAULT_STALL_AFTER_MS=1500"}});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(WaitForLog(daemon, "stalled by fault injection", std::chrono::seconds(20)))
      << daemon.Logs();
  // Still pinging while the acceptor has been idle less than 10 s.
  ASSERT_TRUE(daemon.notify().WaitFor("WATCHDOG=1", std::chrono::seconds(5))) << daemon.Logs();
  ASSERT_TRUE(WaitForLog(daemon, "the HTTP acceptor has not turned for", std::chrono::seconds(20)))
      << daemon.Logs();
  EXPECT_TRUE(PingsStopped(daemon, std::chrono::seconds(2)))
      << "a daemon that accepts no connection still told systemd it was alive; log:\n"
      << daemon.Logs();
  EXPECT_THAT(daemon.Logs(), HasSubstr("the systemd watchdog ping is withheld"));
}

// grpc_reflection = false takes reflection off (CONVENTIONS R2.3: on by default, for grpcurl).
TEST(DaemonLifecycle, ReflectionTurnedOffAnswersUnimplemented) {
  TempDir dir;
  DaemonProcess daemon(dir, {.config_text = TestConfig("grpc_reflection = false\n")});
  ASSERT_TRUE(daemon.WaitReady());
  auto channel = grpc::CreateChannel(daemon.grpc_address(), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream =
      grpc::reflection::v1alpha::ServerReflection::NewStub(channel)->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  stream->Write(list);
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  EXPECT_FALSE(stream->Read(&response)) << "reflection answered although it is off";
  stream->WritesDone();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CheckHealth(daemon.grpc_address()), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(DaemonLifecycle, NoWatchdogPingsWhenSystemdDidNotAskForThem) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  EXPECT_FALSE(daemon.notify().WaitFor("WATCHDOG=1", std::chrono::milliseconds(300)));
}

TEST(DaemonLifecycle, SighupWithBrokenConfigKeepsServingTheOldOne) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());

  std::ofstream(daemon.config_path()) << "[server]\ngrpc_listen = \"127.0.0.1:0\"\nbogus = 1\n";
  daemon.process().Signal(SIGHUP);
  ASSERT_TRUE(daemon.notify().WaitFor("RELOADING=1", std::chrono::seconds(10))) << daemon.Logs();
  const auto ready = daemon.notify().WaitFor("READY=1", std::chrono::seconds(10));
  ASSERT_TRUE(ready) << "no READY=1 after the refused reload; log:\n" << daemon.Logs();
  EXPECT_THAT(NotifyField(*ready, "STATUS").value_or(""), HasSubstr("reload refused"));
  // And the progress lines that follow keep saying so (R4.1).
  EXPECT_TRUE(
      daemon.notify().WaitFor("STATUS=serving: 0 of 0 models ready; 0 running, 0 "
                              "waiting; the last configuration reload was refused "
                              "(inferboxctl status)",
                              std::chrono::seconds(10)))
      << "the progress line forgot the refused reload";

  EXPECT_EQ(CheckHealth(daemon.grpc_address()), grpc::health::v1::HealthCheckResponse::SERVING);
  const auto status = GetStatus(daemon.grpc_address());
  EXPECT_EQ(status.config_generation(), 1u) << "a refused reload must not count as applied";
  EXPECT_THAT(status.last_reload_error(), HasSubstr(daemon.config_path().string() + ":3:"));
  EXPECT_THAT(status.last_reload_error(), HasSubstr("server.bogus: unknown key"));
  EXPECT_THAT(daemon.Logs(), HasSubstr("configuration reload refused"));
  EXPECT_FALSE(daemon.process().WaitForExit(std::chrono::milliseconds(0)));
}

TEST(DaemonLifecycle, SighupWithValidConfigAppliesIt) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());

  std::ofstream(daemon.config_path()) << TestConfig("grpc_reflection = false\n");
  daemon.process().Signal(SIGHUP);
  ASSERT_TRUE(daemon.notify().WaitFor("RELOADING=1", std::chrono::seconds(10))) << daemon.Logs();
  ASSERT_TRUE(daemon.notify().WaitFor("READY=1", std::chrono::seconds(10))) << daemon.Logs();
  const auto status = GetStatus(daemon.grpc_address());
  EXPECT_EQ(status.config_generation(), 2u);
  EXPECT_EQ(status.last_reload_error(), "");
  EXPECT_THAT(daemon.Logs(),
              HasSubstr("server.grpc_reflection changed; it takes effect at the next restart"));
}

TEST(DaemonLifecycle, NonLoopbackListenerWithoutAuthRefusesToStart) {
  TempDir dir;
  DaemonProcess daemon(dir, {.config_text = "[server]\ngrpc_listen = \"0.0.0.0:0\"\n"
                                            "metrics_listen = \"127.0.0.1:0\"\n"});
  const auto exit_code = daemon.process().WaitForExit(kStartTimeout);
  ASSERT_TRUE(exit_code) << "inferboxd started on 0.0.0.0 without authentication";
  EXPECT_EQ(*exit_code, 78) << "configuration errors exit with EX_CONFIG (78)";
  EXPECT_THAT(daemon.Logs(), HasSubstr("is not a loopback address"));
  daemon.notify().ReceivePending();
  ASSERT_FALSE(daemon.notify().received().empty()) << "systemd should hear why";
  EXPECT_THAT(daemon.notify().received().back(), HasSubstr("STATUS=failed: refusing to start"));
  EXPECT_THAT(daemon.notify().received().back(), ::testing::Not(HasSubstr("READY=1")));
}

TEST(DaemonLifecycle, NonLoopbackListenerStartsWithTheExplicitInsecureFlag) {
  TempDir dir;
  DaemonProcess daemon(dir, {.config_text = "[server]\ngrpc_listen = \"0.0.0.0:0\"\n"
                                            "metrics_listen = \"127.0.0.1:0\"\n",
                             .extra_args = {"--insecure-allow-unauthenticated"}});
  ASSERT_TRUE(daemon.WaitReady());
}

TEST(DaemonLifecycle, PortAlreadyInUseFailsWithAClearMessage) {
  TempDir dir;
  DaemonProcess first(dir, {}, "first");
  ASSERT_TRUE(first.WaitReady());
  // Same gRPC port as the running daemon: the second must not share it (SO_REUSEPORT).
  DaemonProcess second(dir,
                       {.config_text = "[server]\ngrpc_listen = \"" + first.grpc_address() +
                                       "\"\n" + "metrics_listen = \"127.0.0.1:0\"\n"},
                       "second");
  const auto exit_code = second.process().WaitForExit(kStartTimeout);
  ASSERT_TRUE(exit_code) << "second daemon started on a port already in use";
  EXPECT_EQ(*exit_code, 1);
  EXPECT_THAT(second.Logs(), HasSubstr("cannot listen for gRPC on " + first.grpc_address()));
  EXPECT_EQ(CheckHealth(first.grpc_address()), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(DaemonLifecycle, MetricsPortInUseFailsWithAClearMessage) {
  TempDir dir;
  DaemonProcess first(dir, {}, "first");
  ASSERT_TRUE(first.WaitReady());
  DaemonProcess second(
      dir,
      {.config_text = "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"" +
                      first.metrics_address() + "\"\n"},
      "second");
  EXPECT_EQ(second.process().WaitForExit(kStartTimeout), 1);
  EXPECT_THAT(second.Logs(), HasSubstr("cannot listen for metrics on " + first.metrics_address()));
}

TEST(DaemonLifecycle, MissingExplicitConfigFileFailsStartup) {
  TempDir dir;
  const auto result =
      RunCommand({INFERBOXD_PATH, "--config", (dir / "absent.toml").string(), "--runtime-dir",
                  (dir / "run").string(), "--state-dir", (dir / "state").string()},
                 dir.path());
  EXPECT_EQ(result.exit_code, 78);
  EXPECT_THAT(result.err, HasSubstr("cannot read the configuration"));
  EXPECT_THAT(result.err, HasSubstr((dir / "absent.toml").string()));
}

TEST(CheckConfig, ExitsZeroForAValidFile) {
  TempDir dir;
  std::ofstream(dir / "ok.toml") << TestConfig();
  const auto result = RunCommand(
      {INFERBOXD_PATH, "--check-config", "--config", (dir / "ok.toml").string()}, dir.path());
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("configuration OK"));
}

TEST(CheckConfig, ExitsOneNamingKeyAndLine) {
  TempDir dir;
  std::ofstream(dir / "bad.toml") << "[server]\nshutdown_timeout_seconds = \"soon\"\n";
  const auto result = RunCommand(
      {INFERBOXD_PATH, "--check-config", "--config", (dir / "bad.toml").string()}, dir.path());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr((dir / "bad.toml").string() + ":2:"));
  EXPECT_THAT(result.err,
              HasSubstr("server.shutdown_timeout_seconds: expected a number, got a string"));
}

TEST(CheckConfig, EmbeddedDefaultIsValidAndPrintable) {
  TempDir dir;
  const auto check = RunCommand({INFERBOXD_PATH, "--check-config", "--default-config"}, dir.path());
  EXPECT_EQ(check.exit_code, 0) << check.err;
  const auto print = RunCommand({INFERBOXD_PATH, "--print-default-config"}, dir.path());
  EXPECT_EQ(print.exit_code, 0);
  EXPECT_THAT(print.out, HasSubstr("grpc_listen = \"127.0.0.1:7070\""));
}

}  // namespace
}  // namespace inferbox::testing
