#include "inferbox/common/grpc_status.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
