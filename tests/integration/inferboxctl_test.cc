// inferboxctl against a real daemon, and against none.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "inferbox/common/version.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::testing {
namespace {

using ::testing::HasSubstr;

TEST(Inferboxctl, StatusJsonParsesAsTheAdminMessage) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  const auto result = RunCommand(
      {INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "status", "--json"}, dir.path());
  ASSERT_EQ(result.exit_code, 0) << result.err;

  inferbox::v1::GetStatusResponse status;
  const auto parsed = google::protobuf::util::JsonStringToMessage(result.out, &status);
  ASSERT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << result.out;
  EXPECT_EQ(status.version(), kVersion);
  EXPECT_EQ(status.state(), inferbox::v1::DAEMON_STATE_SERVING);
  EXPECT_EQ(status.pid(), daemon.process().pid());
  EXPECT_THAT(result.out, HasSubstr("\"state\": \"DAEMON_STATE_SERVING\""));
  EXPECT_THAT(result.out, HasSubstr("\"config_path\"")) << "field names follow admin.proto";
}

TEST(Inferboxctl, StatusTableIsReadable) {
  TempDir dir;
  DaemonProcess daemon(dir, {});
  ASSERT_TRUE(daemon.WaitReady());
  const auto result =
      RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "status"}, dir.path());
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("state        serving"));
  EXPECT_THAT(result.out, HasSubstr("version      " + std::string(kVersion)));
  EXPECT_THAT(result.out, HasSubstr(daemon.grpc_address()));
  EXPECT_THAT(result.out, HasSubstr(daemon.metrics_address()));
}

TEST(Inferboxctl, UnreachableDaemonIsAClearErrorAndNonZeroExit) {
  TempDir dir;
  // A port that is bound but not listening: connections are refused, and no other process
  // can take it while the test holds it.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));

  const auto result =
      RunCommand({INFERBOXCTL_PATH, "--address", target, "--timeout", "2", "status"}, dir.path());
  ::close(fd);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.exit_code, -1) << "inferboxctl hung instead of giving up";
  EXPECT_THAT(result.err, HasSubstr("cannot reach inferboxd at " + target));
  EXPECT_EQ(result.out, "") << "nothing on stdout that a script could mistake for status";
}

}  // namespace
}  // namespace inferbox::testing
