#include "bench/request_record.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace inferbox::engine::bench {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// A request submitted at `start` whose tokens arrived at the given offsets (ms).
RequestRecord Record(Clock::time_point start, std::vector<int> arrival_ms) {
  RequestRecord record;
  record.submitted = start;
  for (const int ms : arrival_ms) record.arrivals.push_back(start + milliseconds(ms));
  record.num_tokens = static_cast<int64_t>(arrival_ms.size());
  record.finished = record.arrivals.back();
  record.finished_by_length = true;
  return record;
}

TEST(Summarize, InterpolatesBetweenRanksAndGivesTheMean) {
  const Percentiles p = Summarize({4, 1, 3, 2});
  EXPECT_DOUBLE_EQ(p.p50, 2.5);
  EXPECT_DOUBLE_EQ(p.p90, 3.7);
  EXPECT_DOUBLE_EQ(p.mean, 2.5);
  EXPECT_DOUBLE_EQ(Summarize({}).p99, 0.0);
}

TEST(SummarizeRecords, TimePerOutputTokenExcludesTheFirstToken) {
  const Clock::time_point start = Clock::now();
  // TTFT 100 ms, then 3 more tokens over 30 ms: 10 ms per output token.
  const std::vector<RequestRecord> records = {Record(start, {100, 110, 120, 130}),
                                              Record(start + milliseconds(30), {50, 70, 90, 110})};
  const LatencySummary summary = SummarizeRecords(records);
  EXPECT_EQ(summary.num_requests, 2);
  EXPECT_EQ(summary.num_output_tokens, 8);
  EXPECT_NEAR(summary.wall_seconds, 0.140, 1e-9) << "first submit to last finish";
  EXPECT_NEAR(summary.time_to_first_token_ms.mean, 75.0, 1e-6);
  EXPECT_NEAR(summary.time_per_output_token_ms.mean, 15.0, 1e-6);
  EXPECT_NEAR(summary.stream_tokens_per_second(), 1000.0 / 15.0, 1e-6);
  EXPECT_NEAR(summary.output_tokens_per_second(), 8 / 0.140, 1e-6);
}

TEST(CheckRecords, SaysWhichRequestCameBackShortOrFailed) {
  const Clock::time_point start = Clock::now();
  std::vector<RequestRecord> records = {Record(start, {1, 2, 3}), Record(start, {1, 2})};
  EXPECT_TRUE(CheckRecords(records, 2).ok() == false);
  EXPECT_THAT(CheckRecords(records, 3).message(), HasSubstr("request 1 ended with 2 tokens"));
  records[1] = Record(start, {1, 2, 3});
  EXPECT_TRUE(CheckRecords(records, 3).ok());
  records[0].finished_by_length = false;
  EXPECT_THAT(CheckRecords(records, 3).message(), HasSubstr("not by length"));
  records[0].error = UnavailableError("the server went away");
  EXPECT_THAT(CheckRecords(records, 3).message(), HasSubstr("request 0: the server went away"));
}

}  // namespace
}  // namespace inferbox::engine::bench
