// What inferbox-bench measured, and how it prints it: one table for people, or one JSON
// object (--json) with the same numbers for scripts (scripts/gpu/run-perf.sh reads it, and
// scripts/gpu/hf_peer_bench.py prints the peer's numbers under the same field names).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "bench/bench_options.h"
#include "bench/prefill_flops.h"
#include "bench/request_record.h"
#include "inferbox/engine/model/model_config.h"
#include "inferbox/engine/runtime/runtime.h"

namespace inferbox::engine::bench {

// RuntimeStats differences over the measured requests (in-process only).
struct EngineSummary {
  int64_t num_steps = 0;
  StepTimings step_seconds;
  int64_t num_prompt_tokens = 0;
  int64_t num_generated_tokens = 0;
  int64_t num_preemptions = 0;
  int64_t num_prefix_queried_tokens = 0;
  int64_t num_prefix_hit_tokens = 0;
};

EngineSummary DiffStats(const RuntimeStats& before, const RuntimeStats& after);

// The decode floor from memory bandwidth only: every weight read once per decode step at
// the backend's measured copy bandwidth. KV reads, prefill and compute are not counted.
struct BandwidthFloor {
  double weight_bytes_per_step = 0;
  double copy_bandwidth = 0;  // Bytes/s.
  int64_t batch_size = 0;     // Sequences one decode step can carry in this run.

  double step_ms() const { return 1e3 * weight_bytes_per_step / copy_bandwidth; }
  double single_stream_tokens_per_second() const { return copy_bandwidth / weight_bytes_per_step; }
  double batch_tokens_per_second() const {
    return static_cast<double>(batch_size) * single_stream_tokens_per_second();
  }
};

struct OfflineResult {
  LatencySummary latency;
  std::optional<EngineSummary> engine;  // In-process only.
  std::optional<BandwidthFloor> floor;  // In-process only.
  int32_t num_gpus = 0;                 // 0: none (CPU) or unknown (HTTP without --num-gpus).
};

struct TtftPoint {
  int64_t input_len = 0;
  std::vector<double> ttft_ms;       // One per repeat.
  std::optional<double> forward_ms;  // Mean forward time per request (in-process only).
  PrefillFlops flops;
};

struct TtftResult {
  std::vector<TtftPoint> points;
};

void PrintOfflineTable(const Options& options, const ModelConfig& config,
                       const OfflineResult& result);
void PrintOfflineJson(const Options& options, const ModelConfig& config,
                      const OfflineResult& result);
void PrintTtftTable(const Options& options, const ModelConfig& config, const TtftResult& result);
void PrintTtftJson(const Options& options, const ModelConfig& config, const TtftResult& result);

}  // namespace inferbox::engine::bench
