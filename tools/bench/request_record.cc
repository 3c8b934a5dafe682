#include "bench/request_record.h"

#include <algorithm>
#include <numeric>

#include <fmt/format.h>

namespace inferbox::engine::bench {

Status CheckRecords(const std::vector<RequestRecord>& records, int64_t output_len) {
  for (size_t i = 0; i < records.size(); ++i) {
    const RequestRecord& record = records[i];
    if (!record.error.ok())
      return Status(record.error.code(), fmt::format("request {}: {}", i, record.error.message()));
    if (!record.finished_by_length || record.num_tokens != output_len || record.arrivals.empty()) {
      return InternalError(
          fmt::format("request {} ended with {} tokens{}, expected {}", i, record.num_tokens,
                      record.finished_by_length ? "" : " and not by length", output_len));
    }
  }
  return Status();
}

Percentiles Summarize(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const auto at = [&values](double quantile) {
    const double rank = quantile * static_cast<double>(values.size() - 1);
    const size_t below = static_cast<size_t>(rank);
    const size_t above = std::min(below + 1, values.size() - 1);
    const double fraction = rank - static_cast<double>(below);
    return values[below] + fraction * (values[above] - values[below]);
  };
  const double mean =
      std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  return {at(0.50), at(0.90), at(0.99), mean};
}

double Milliseconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

LatencySummary SummarizeRecords(const std::vector<RequestRecord>& records) {
  LatencySummary summary;
  Clock::time_point first_submit = Clock::time_point::max();
  Clock::time_point last_finish = Clock::time_point::min();
  std::vector<double> first_token, per_output_token, inter_arrival, end_to_end;
  for (const RequestRecord& record : records) {
    first_submit = std::min(first_submit, record.submitted);
    last_finish = std::max(last_finish, record.finished);
    first_token.push_back(Milliseconds(record.submitted, record.arrivals.front()));
    if (record.num_tokens > 1) {
      per_output_token.push_back(Milliseconds(record.arrivals.front(), record.finished) /
                                 static_cast<double>(record.num_tokens - 1));
    }
    for (size_t i = 1; i < record.arrivals.size(); ++i)
      inter_arrival.push_back(Milliseconds(record.arrivals[i - 1], record.arrivals[i]));
    end_to_end.push_back(Milliseconds(record.submitted, record.finished));
    summary.num_output_tokens += record.num_tokens;
  }
  summary.num_requests = static_cast<int64_t>(records.size());
  summary.wall_seconds = std::chrono::duration<double>(last_finish - first_submit).count();
  summary.time_to_first_token_ms = Summarize(std::move(first_token));
  summary.time_per_output_token_ms = Summarize(std::move(per_output_token));
  summary.inter_arrival_ms = Summarize(std::move(inter_arrival));
  summary.end_to_end_ms = Summarize(std::move(end_to_end));
  return summary;
}

}  // namespace inferbox::engine::bench
