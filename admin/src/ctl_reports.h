// What inferboxctl prints for usage and audit (and the table layout its commands share):
// pure functions of the Admin replies, so that they are unit-tested without a daemon.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/timestamp.pb.h>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::ctl {

// Rows of cells as columns aligned two spaces apart, one line each; the last column is not
// padded.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);

// "2026-01-31 12:00:00Z" (UTC); "-" when unset.
std::string FormatTime(const google::protobuf::Timestamp& time);

// One CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote, a
// CR or a LF.
std::string CsvField(std::string_view text);

// `--by`: comma-separated "key", "model", "day" (any order, case-insensitive), in the order
// given; INVALID_ARGUMENT names what is not one.
Result<std::vector<inferbox::v1::UsageDimension>> ParseUsageDimensions(std::string_view by);

// `--since` / `--until`: a UTC date ("2026-01-31", its midnight), an RFC 3339 time
// ("2026-01-31T12:00:00Z"), or an age before `now` ("90m", "36h", "7d").
Result<google::protobuf::Timestamp> ParseTimeArgument(std::string_view text,
                                                      std::chrono::system_clock::time_point now);

// The usage rows as CSV with a header row: the grouped columns (day, key_id and key_name,
// model, in that order), then requests, failed_requests, cancelled_requests, prompt_tokens,
// cached_prompt_tokens, completion_tokens, total_tokens. CRLF line ends (RFC 4180).
std::string UsageCsv(const inferbox::v1::GetUsageResponse& usage,
                     const std::vector<inferbox::v1::UsageDimension>& group_by);
// The same as an aligned table with a total row.
std::string UsageTable(const inferbox::v1::GetUsageResponse& usage,
                       const std::vector<inferbox::v1::UsageDimension>& group_by);

// Audit events (as ListAuditEvents returns them, newest first) as a table, oldest first.
std::string AuditTable(const inferbox::v1::ListAuditEventsResponse& events);

}  // namespace inferbox::ctl
