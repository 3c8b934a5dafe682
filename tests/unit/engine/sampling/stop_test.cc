#include "inferbox/engine/sampling/stop.h"

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

TEST(CheckTokenStop, EosStopIdsAndLength) {
  StopCriteria criteria;
  criteria.eos_token_ids = {2};
  criteria.stop_token_ids = {7};
  criteria.max_tokens = 10;
  criteria.min_tokens = 3;
  EXPECT_EQ(CheckTokenStop(criteria, 5, 1), FinishReason::kNone);
  EXPECT_EQ(CheckTokenStop(criteria, 2, 2), FinishReason::kNone) << "EOS before min_tokens";
  EXPECT_EQ(CheckTokenStop(criteria, 2, 3), FinishReason::kStop);
  EXPECT_EQ(CheckTokenStop(criteria, 7, 1), FinishReason::kStop) << "stop ids ignore min_tokens";
  EXPECT_EQ(CheckTokenStop(criteria, 5, 10), FinishReason::kLength);
  criteria.ignore_eos = true;
  EXPECT_EQ(CheckTokenStop(criteria, 2, 5), FinishReason::kNone);
}

TEST(StopStringMatcher, StopSpanningDeltasIsNeverEmitted) {
  StopStringMatcher matcher({"STOP"}, false);
  EXPECT_EQ(matcher.Feed("abc ST"), "abc ") << "\"ST\" may begin the stop string";
  EXPECT_EQ(matcher.Feed("O"), "");
  EXPECT_EQ(matcher.Feed("P and more"), "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.matched(), "STOP");
  EXPECT_EQ(matcher.Feed("later"), "");
}

TEST(StopStringMatcher, FalseAlarmReleasesTheWithheldText) {
  StopStringMatcher matcher({"STOP", "\n\n"}, false);
  EXPECT_EQ(matcher.Feed("go ST"), "go ");
  EXPECT_EQ(matcher.Feed("ay\n"), "STay");
  EXPECT_EQ(matcher.Flush(), "\n");
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopStringMatcher, EarliestStopWinsAndCanBeIncluded) {
  StopStringMatcher matcher({"world", "o w"}, true);
  EXPECT_EQ(matcher.Feed("hello world"), "hello w");
  EXPECT_EQ(matcher.matched(), "o w");
}

TEST(StopStringMatcher, MultibyteStopStrings) {
  StopStringMatcher matcher({"。\n"}, false);
  EXPECT_EQ(matcher.Feed("你好。"), "你好");
  EXPECT_EQ(matcher.Feed("\n再见"), "");
  EXPECT_TRUE(matcher.stopped());
}

}  // namespace
}  // namespace inferbox::engine
