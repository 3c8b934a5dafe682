#include "inferbox/common/grpc_status.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace inferbox {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;

TEST(GrpcStatus, CodeAndMessageSurviveTheRoundTrip) {
  const grpc::Status wire = ToGrpcStatus(InvalidArgumentError("messages[1].role: unknown"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(wire.error_message(), "messages[1].role: unknown");
  const Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(back.message(), "messages[1].role: unknown");
}

// An error quoting a client's 100 KB field must still fit a header the peer accepts (it came
// back as "received initial metadata size exceeds limit", a 503, before).
TEST(GrpcStatus, TheReasonTravelsAsAnErrorInfo) {
  const grpc::Status wire = ToGrpcStatus(Status(StatusCode::kResourceExhausted, "waited 2.0 s")
                                             .WithReason(error_reason::kQueueTimeout));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(wire.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_EQ(details.message(), "waited 2.0 s");
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info)) << "any gRPC client can read it";
  EXPECT_EQ(info.reason(), "QUEUE_TIMEOUT");
  EXPECT_EQ(info.domain(), "inferbox");

  const Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(back.message(), "waited 2.0 s");
  EXPECT_EQ(back.reason(), error_reason::kQueueTimeout);
  EXPECT_EQ(back.WithContext("model m").reason(), error_reason::kQueueTimeout);

  EXPECT_TRUE(ToGrpcStatus(InvalidArgumentError("x")).error_details().empty())
      << "no reason, no details";
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "x", "not a proto")).reason(),
            "");
  google::rpc::ErrorInfo foreign;
  foreign.set_reason("QUEUE_TIMEOUT");
  foreign.set_domain("example.com");
  google::rpc::Status theirs;
  theirs.add_details()->PackFrom(foreign);
  EXPECT_EQ(FromGrpcStatus(
                grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "x", theirs.SerializeAsString()))
                .reason(),
            "")
      << "another domain's reason is not ours";
  EXPECT_EQ(Status::Ok().WithReason(error_reason::kQueueFull).reason(), "");
}

TEST(GrpcStatus, AHugeMessageIsCutOnACharacterBoundary) {
  // The 1024th byte is the second of the two of "é": the cut comes before the character.
  const std::string quoted =
      "unknown role \"" + std::string(1009, 'x') + "\xC3\xA9" + std::string(100'000, 'y') + "\"";
  const grpc::Status wire = ToGrpcStatus(InvalidArgumentError(quoted));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(wire.error_message().size(), 1100u);
  EXPECT_THAT(wire.error_message(), StartsWith("unknown role \"xxx"));
  EXPECT_THAT(wire.error_message(), EndsWith("xxx... (100003 more bytes cut)"))
      << "the cut must not split the two bytes of \xC3\xA9";
}

}  // namespace
}  // namespace inferbox
