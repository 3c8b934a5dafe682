// What inferbox-bench records of each request, whichever path ran it (the engine loop
// in-process, or the daemon over HTTP), and the latency summary both paths print.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine::bench {

using Clock = std::chrono::steady_clock;

// One request's timeline. A runner writes it while the request is in flight and hands it
// back finished (see RequestRunner).
struct RequestRecord {
  Clock::time_point submitted;
  // In-process: one entry per generated token. Over HTTP: one per streamed event that
  // carries text or the finish reason (the daemon sends nothing for a token whose text is
  // withheld, e.g. half a UTF-8 character), so the first entry is the first event a client
  // can show.
  std::vector<Clock::time_point> arrivals;
  int64_t num_tokens = 0;  // Generated, as the engine (or the response's usage) counts them.
  Clock::time_point finished;
  bool finished_by_length = false;
  Status error;
};

// Runs every prompt, greedily and with EOS ignored, for exactly `output_len` tokens each, at
// most `concurrency` requests in flight (the next submitted as one finishes); fills
// `records`, one per prompt. Returns once every request has finished, or with the first
// error that stopped submitting once those in flight have finished.
using RequestRunner =
    std::function<Status(const std::vector<std::vector<int32_t>>& prompts, int64_t output_len,
                         int64_t concurrency, std::vector<RequestRecord>& records)>;

// Every request finished by length with exactly output_len tokens; otherwise says which did
// not and why.
Status CheckRecords(const std::vector<RequestRecord>& records, int64_t output_len);

struct Percentiles {
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double mean = 0;
};

// Linear interpolation between the closest ranks (numpy's default); zeros when empty.
Percentiles Summarize(std::vector<double> values);

double Milliseconds(Clock::time_point from, Clock::time_point to);

// Of records that passed CheckRecords.
struct LatencySummary {
  double wall_seconds = 0;  // First submit to last finish.
  int64_t num_requests = 0;
  int64_t num_output_tokens = 0;
  Percentiles time_to_first_token_ms;  // Submit to the first arrival.
  // Per request: (finish - first arrival) / (tokens - 1); requests of one token left out.
  Percentiles time_per_output_token_ms;
  Percentiles inter_arrival_ms;  // Gaps between consecutive arrivals, pooled.
  Percentiles end_to_end_ms;

  double output_tokens_per_second() const {
    return static_cast<double>(num_output_tokens) / wall_seconds;
  }
  double requests_per_second() const { return static_cast<double>(num_requests) / wall_seconds; }
  // One stream's decode rate: 1000 / the mean time per output token.
  double stream_tokens_per_second() const {
    return time_per_output_token_ms.mean > 0 ? 1e3 / time_per_output_token_ms.mean : 0;
  }
};

LatencySummary SummarizeRecords(const std::vector<RequestRecord>& records);

}  // namespace inferbox::engine::bench
