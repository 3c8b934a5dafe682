// What inferboxctl prints for usage and audit: CSV that a CSV reader gets the rows back from
// (quoting included), the table with its total, the --by and --since/--until arguments.
#include "ctl_reports.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

namespace inferbox::ctl {
namespace {

namespace api = ::inferbox::v1;
using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

// An RFC 4180 reader: records of fields, quotes and CRLF as the RFC says.
std::vector<std::vector<std::string>> ReadCsv(std::string_view text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
    } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      record.push_back(std::move(field));
      field.clear();
      records.push_back(std::move(record));
      record.clear();
      ++i;
    } else {
      field += c;
    }
  }
  EXPECT_TRUE(field.empty() && record.empty()) << "the last record ends with CRLF";
  return records;
}

api::GetUsageResponse Sample() {
  api::GetUsageResponse usage;
  api::UsageRow* row = usage.add_rows();
  row->set_day("2026-01-31");
  row->set_key_id("ibx_abcdefghijkl");
  row->set_key_name("risk, \"quant\" team");
  row->set_model("qwen3-8b");
  row->set_requests(3);
  row->set_failed_requests(1);
  row->set_cancelled_requests(1);
  row->set_prompt_tokens(100);
  row->set_cached_prompt_tokens(40);
  row->set_completion_tokens(250);
  row = usage.add_rows();
  row->set_day("2026-02-01");
  row->set_model("llama-3.1-8b");
  row->set_requests(1);
  row->set_prompt_tokens(5);
  row->set_completion_tokens(6);
  return usage;
}

TEST(CtlReportsTest, UsageCsvReadsBackWithAHeaderRow) {
  const std::vector<api::UsageDimension> by = {api::USAGE_DIMENSION_DAY, api::USAGE_DIMENSION_KEY,
                                               api::USAGE_DIMENSION_MODEL};
  const auto records = ReadCsv(UsageCsv(Sample(), by));
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0], (std::vector<std::string>{"day", "key_id", "key_name", "model", "requests",
                                                  "failed_requests", "cancelled_requests",
                                                  "prompt_tokens", "cached_prompt_tokens",
                                                  "completion_tokens", "total_tokens"}));
  EXPECT_EQ(records[1],
            (std::vector<std::string>{"2026-01-31", "ibx_abcdefghijkl", "risk, \"quant\" team",
                                      "qwen3-8b", "3", "1", "1", "100", "40", "250", "350"}));
  EXPECT_EQ(records[2][1], "") << "a keyless box's anonymous use has an empty key id";
  EXPECT_EQ(records[2].back(), "11");
}

TEST(CtlReportsTest, UsageColumnsFollowTheGrouping) {
  const auto by_model = ReadCsv(UsageCsv(Sample(), {api::USAGE_DIMENSION_MODEL}));
  EXPECT_EQ(by_model[0].front(), "model");
  EXPECT_EQ(by_model[0].size(), 8u);
  const auto empty = ReadCsv(UsageCsv(api::GetUsageResponse(), {api::USAGE_DIMENSION_KEY}));
  ASSERT_EQ(empty.size(), 1u) << "the header row even without data";
  EXPECT_EQ(empty[0][0], "key_id");
}

TEST(CtlReportsTest, UsageTableAlignsAndTotals) {
  const std::string table = UsageTable(Sample(), {api::USAGE_DIMENSION_KEY});
  EXPECT_THAT(table, HasSubstr("KEY               NAME"));
  EXPECT_THAT(table, HasSubstr("(none)"));
  const std::string last_line = table.substr(table.rfind('\n', table.size() - 2) + 1);
  EXPECT_THAT(last_line, ::testing::StartsWith("total"));
  EXPECT_THAT(last_line, HasSubstr("361")) << "100 + 250 + 5 + 6 tokens in all";
}

TEST(CtlReportsTest, ParsesUsageDimensions) {
  auto parsed = ParseUsageDimensions("Day, key,day");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed,
            (std::vector<api::UsageDimension>{api::USAGE_DIMENSION_DAY, api::USAGE_DIMENSION_KEY}));
  EXPECT_THAT(ParseUsageDimensions("key,team").status().message(), HasSubstr("\"team\""));
  EXPECT_FALSE(ParseUsageDimensions("").ok());
}

TEST(CtlReportsTest, ParsesTimesDatesAndAges) {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1769860800));
  auto date = ParseTimeArgument("2026-01-31", now);
  ASSERT_TRUE(date.ok());
  EXPECT_EQ(TimeUtil::ToString(*date), "2026-01-31T00:00:00Z");
  auto time = ParseTimeArgument("2026-01-31T12:30:00Z", now);
  ASSERT_TRUE(time.ok());
  EXPECT_EQ(time->seconds(), date->seconds() + 12 * 3600 + 1800);
  auto week = ParseTimeArgument("7d", now);
  ASSERT_TRUE(week.ok());
  EXPECT_EQ(week->seconds(), 1769860800 - 7 * 86400);
  EXPECT_EQ(ParseTimeArgument("90m", now)->seconds(), 1769860800 - 5400);
  for (const char* bad : {"yesterday", "7w", "-3d", "2026-13-01", "d"}) {
    EXPECT_FALSE(ParseTimeArgument(bad, now).ok()) << bad;
  }
}

TEST(CtlReportsTest, AuditTableIsChronological) {
  api::ListAuditEventsResponse events;
  for (int id : {2, 1}) {
    api::AuditEvent* event = events.add_events();
    event->set_id(static_cast<uint64_t>(id));
    event->set_rpc(id == 2 ? "RevokeKey" : "CreateKey");
    event->set_code(id == 2 ? "NOT_FOUND" : "OK");
    event->set_message(id == 2 ? "no API key with id ibx_x" : "");
    event->set_detail(id == 1 ? "created key ibx_y" : "");
    event->set_request("{}");
  }
  const std::string table = AuditTable(events);
  EXPECT_LT(table.find("CreateKey"), table.find("RevokeKey"));
  EXPECT_THAT(table, HasSubstr("created key ibx_y"));
  EXPECT_THAT(table, HasSubstr("no API key with id ibx_x"));
  EXPECT_THAT(table, HasSubstr("(none)"));
}

TEST(CtlReportsTest, CsvFieldQuotesOnlyWhenNeeded) {
  EXPECT_EQ(CsvField("plain"), "plain");
  EXPECT_EQ(CsvField("a,b"), "\"a,b\"");
  EXPECT_EQ(CsvField("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(CsvField("two\nlines"), "\"two\nlines\"");
}

}  // namespace
}  // namespace inferbox::ctl
