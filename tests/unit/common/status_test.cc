#include "inferbox/common/status.h"

#include <gtest/gtest.h>

namespace inferbox {
namespace {

TEST(Status, OkByDefault) {
  const Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.ToString(), "OK");
}

TEST(Status, ErrorCarriesCodeAndMessage) {
  const Status status = NotFoundError("model qwen3 is not installed");
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.ToString(), "NOT_FOUND: model qwen3 is not installed");
}

TEST(Status, WithContextPrependsAndKeepsCode) {
  const Status status = InvalidArgumentError("bad port").WithContext("server.grpc_listen");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "server.grpc_listen: bad port");
  EXPECT_TRUE(Status::Ok().WithContext("ignored").ok()) << "context must not turn OK into an error";
}

TEST(Result, HoldsValueOrStatus) {
  Result<int> value = 42;
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 42);
  EXPECT_TRUE(value.status().ok());

  Result<int> error = UnavailableError("engine restarting");
  ASSERT_FALSE(error.ok());
  EXPECT_EQ(error.status().code(), StatusCode::kUnavailable);
}

TEST(ResultDeathTest, ConstructingFromOkStatusAborts) {
  EXPECT_DEATH({ Result<int> broken(Status::Ok()); }, "OK status without a value");
}

TEST(ResultDeathTest, ValueOfAnErrorAbortsNamingTheError) {
  Result<int> error = NotFoundError("no such model");
  EXPECT_DEATH({ (void)error.value(); }, "NOT_FOUND: no such model");
}

}  // namespace
}  // namespace inferbox
