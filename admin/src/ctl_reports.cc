#include "ctl_reports.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <functional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>

namespace inferbox::ctl {
namespace {

namespace api = ::inferbox::v1;
using google::protobuf::util::TimeUtil;

struct UsageColumn {
  std::string_view csv_header;
  std::string_view table_header;
  std::function<std::string(const api::UsageRow&)> cell;
  // Summed in the table's total row.
  std::function<uint64_t(const api::UsageRow&)> count;
};

uint64_t TotalTokens(const api::UsageRow& row) {
  return row.prompt_tokens() + row.completion_tokens();
}

std::vector<UsageColumn> UsageColumns(const std::vector<api::UsageDimension>& group_by) {
  auto grouped = [&](api::UsageDimension dimension) {
    return std::find(group_by.begin(), group_by.end(), dimension) != group_by.end();
  };
  std::vector<UsageColumn> columns;
  if (grouped(api::USAGE_DIMENSION_DAY)) {
    columns.push_back({"day", "DAY", [](const api::UsageRow& row) { return row.day(); }, {}});
  }
  if (grouped(api::USAGE_DIMENSION_KEY)) {
    columns.push_back({"key_id", "KEY", [](const api::UsageRow& row) { return row.key_id(); }, {}});
    columns.push_back(
        {"key_name", "NAME", [](const api::UsageRow& row) { return row.key_name(); }, {}});
  }
  if (grouped(api::USAGE_DIMENSION_MODEL)) {
    columns.push_back({"model", "MODEL", [](const api::UsageRow& row) { return row.model(); }, {}});
  }
  auto counter = [&](std::string_view csv, std::string_view table,
                     std::function<uint64_t(const api::UsageRow&)> count) {
    columns.push_back({csv, table,
                       [count](const api::UsageRow& row) { return std::to_string(count(row)); },
                       count});
  };
  counter("requests", "REQUESTS", [](const api::UsageRow& row) { return row.requests(); });
  counter("failed_requests", "FAILED",
          [](const api::UsageRow& row) { return row.failed_requests(); });
  counter("cancelled_requests", "CANCELLED",
          [](const api::UsageRow& row) { return row.cancelled_requests(); });
  counter("prompt_tokens", "PROMPT", [](const api::UsageRow& row) { return row.prompt_tokens(); });
  counter("cached_prompt_tokens", "CACHED",
          [](const api::UsageRow& row) { return row.cached_prompt_tokens(); });
  counter("completion_tokens", "COMPLETION",
          [](const api::UsageRow& row) { return row.completion_tokens(); });
  counter("total_tokens", "TOTAL", TotalTokens);
  return columns;
}

std::string Lower(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  return text;
}

}  // namespace

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t column = 0; column < row.size(); ++column) {
      widths[column] = std::max(widths[column], row[column].size());
    }
  }
  std::string text;
  for (const auto& row : rows) {
    std::string line;
    for (size_t column = 0; column < row.size(); ++column) {
      if (column + 1 == row.size()) {
        line += row[column];
      } else {
        line += fmt::format("{:<{}}  ", row[column], widths[column]);
      }
    }
    text += line + "\n";
  }
  return text;
}

std::string FormatTime(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  const auto seconds = static_cast<std::time_t>(time.seconds());
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%SZ", &utc);
  return text;
}

std::string CsvField(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

Result<std::vector<api::UsageDimension>> ParseUsageDimensions(std::string_view by) {
  std::vector<api::UsageDimension> dimensions;
  size_t start = 0;
  while (start <= by.size()) {
    const size_t end = std::min(by.find(',', start), by.size());
    const std::string word = Lower(Trim(by.substr(start, end - start)));
    api::UsageDimension dimension = api::USAGE_DIMENSION_UNSPECIFIED;
    if (word == "key") dimension = api::USAGE_DIMENSION_KEY;
    if (word == "model") dimension = api::USAGE_DIMENSION_MODEL;
    if (word == "day") dimension = api::USAGE_DIMENSION_DAY;
    if (dimension == api::USAGE_DIMENSION_UNSPECIFIED) {
      return InvalidArgumentError(fmt::format(
          "--by: \"{}\" is not key, model or day (give one or more, comma-separated)", word));
    }
    if (std::find(dimensions.begin(), dimensions.end(), dimension) == dimensions.end())
      dimensions.push_back(dimension);
    start = end + 1;
  }
  return dimensions;
}

Result<google::protobuf::Timestamp> ParseTimeArgument(std::string_view text,
                                                      std::chrono::system_clock::time_point now) {
  text = Trim(text);
  const std::string_view kForms =
      "a date (2026-01-31, UTC), a time (2026-01-31T12:00:00Z) or an age (90m, 36h, 7d)";
  google::protobuf::Timestamp time;
  if (text.size() == 10 && text[4] == '-' && text[7] == '-') {
    if (TimeUtil::FromString(std::string(text) + "T00:00:00Z", &time)) return time;
    return InvalidArgumentError(fmt::format("\"{}\" is not a valid date", text));
  }
  if (text.find('T') != std::string_view::npos) {
    if (TimeUtil::FromString(std::string(text), &time)) return time;
    return InvalidArgumentError(fmt::format("\"{}\" is not {}", text, kForms));
  }
  if (text.size() >= 2) {
    int64_t amount = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size() - 1, amount);
    const char unit = text.back();
    const int64_t unit_seconds = unit == 'm' ? 60 : unit == 'h' ? 3600 : unit == 'd' ? 86400 : 0;
    if (error == std::errc() && end == text.data() + text.size() - 1 && amount >= 0 &&
        unit_seconds > 0 && amount < int64_t{1} << 32) {
      const auto then = now - std::chrono::seconds(amount * unit_seconds);
      return TimeUtil::MillisecondsToTimestamp(
          std::chrono::duration_cast<std::chrono::milliseconds>(then.time_since_epoch()).count());
    }
  }
  return InvalidArgumentError(fmt::format("\"{}\" is not {}", text, kForms));
}

std::string UsageCsv(const api::GetUsageResponse& usage,
                     const std::vector<api::UsageDimension>& group_by) {
  const auto columns = UsageColumns(group_by);
  std::string csv;
  for (size_t i = 0; i < columns.size(); ++i) {
    csv += (i == 0 ? "" : ",") + std::string(columns[i].csv_header);
  }
  csv += "\r\n";
  for (const auto& row : usage.rows()) {
    for (size_t i = 0; i < columns.size(); ++i) {
      csv += (i == 0 ? "" : ",") + CsvField(columns[i].cell(row));
    }
    csv += "\r\n";
  }
  return csv;
}

std::string UsageTable(const api::GetUsageResponse& usage,
                       const std::vector<api::UsageDimension>& group_by) {
  const auto columns = UsageColumns(group_by);
  std::vector<std::vector<std::string>> rows(1);
  for (const auto& column : columns) rows[0].emplace_back(column.table_header);
  std::vector<uint64_t> totals(columns.size(), 0);
  for (const auto& row : usage.rows()) {
    auto& line = rows.emplace_back();
    for (size_t i = 0; i < columns.size(); ++i) {
      std::string cell = columns[i].cell(row);
      // Requests without a key: a keyless box's anonymous callers.
      if (cell.empty() && columns[i].csv_header == "key_id") cell = "(none)";
      line.push_back(std::move(cell));
      if (columns[i].count) totals[i] += columns[i].count(row);
    }
  }
  auto& total = rows.emplace_back();
  for (size_t i = 0; i < columns.size(); ++i) {
    total.push_back(columns[i].count ? std::to_string(totals[i]) : i == 0 ? "total" : "");
  }
  return FormatTable(rows);
}

std::string AuditTable(const api::ListAuditEventsResponse& events) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "TIME", "CALLER", "PEER", "RPC", "OUTCOME", "DETAILS"}};
  for (auto event = events.events().rbegin(); event != events.events().rend(); ++event) {
    std::vector<std::string> details;
    for (const std::string* part : {&event->detail(), &event->message(), &event->request()}) {
      if (!part->empty() && *part != "{}") details.push_back(*part);
    }
    rows.push_back({std::to_string(event->id()), FormatTime(event->time()),
                    event->caller_key_id().empty() ? "(none)" : event->caller_key_id(),
                    event->peer(), event->rpc(), event->code(),
                    fmt::format("{}", fmt::join(details, "  "))});
  }
  return FormatTable(rows);
}

}  // namespace inferbox::ctl
