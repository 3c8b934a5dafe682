// Key events' journal fields (CONVENTIONS R4.5): which fields, in which order, and how they
// appear when the log goes to stderr.
#include "inferbox/common/logging.h"

#include <memory>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

namespace inferbox {
namespace {

using ::testing::ElementsAre;

TEST(JournalFields, NameWhatIsSetInAFixedOrder) {
  EXPECT_THAT(JournalFields({.model = "tiny", .engine = "tiny/0", .gpu = "0,1"}),
              ElementsAre("MODEL=tiny", "ENGINE=tiny/0", "GPU=0,1"));
  EXPECT_THAT(JournalFields({.gpu = "3", .xid = "79"}), ElementsAre("GPU=3", "XID=79"));
  EXPECT_THAT(JournalFields({.model = "m", .request_id = "chatcmpl-1"}),
              ElementsAre("MODEL=m", "REQUEST_ID=chatcmpl-1"));
  EXPECT_TRUE(JournalFields({}).empty());
  EXPECT_THAT(JournalFields({.engine = "m/0", .gpu = "0,1"}, /*one_gpu_per_field=*/true),
              ElementsAre("ENGINE=m/0", "GPU=0", "GPU=1"))
      << "the journal gets a field per GPU, so that GPU=1 finds a tensor-parallel engine";
}

TEST(LogEvent, OnStderrTheFieldsFollowTheMessage) {
  std::ostringstream out;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  logger->set_pattern("%v");
  spdlog::set_default_logger(logger);
  LogEvent(spdlog::level::warn, message_ids::kRequestFailed, "stream failed",
           {.model = "tiny", .request_id = "chatcmpl-7"});
  LogEvent(spdlog::level::info, message_ids::kReady, "ready");
  spdlog::set_default_logger(previous);
  EXPECT_EQ(out.str(), "stream failed [MODEL=tiny REQUEST_ID=chatcmpl-7]\nready\n");
}

}  // namespace
}  // namespace inferbox
