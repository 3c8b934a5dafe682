// The serving metrics of the box, recorded where every request passes (the daemon's
// frontend, for gRPC and HTTP alike). Names map one to one onto vLLM's (docs/metrics.md),
// with vLLM's histogram buckets; labels are bounded: model (from the configuration),
// finish_reason, reason. Thread-safe: any thread may record.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace inferbox::monitoring {

// One request that reached an engine and ended (finished, failed or cancelled).
struct RequestRecord {
  std::string model;
  // The caller's API key id (its public half, never the secret); empty for an anonymous
  // caller. Recorded only with per-key series on.
  std::string key;
  // "stop" or "length" when it finished; empty when it failed.
  std::string finish_reason;
  // Why it failed, when it did: "engine_failed", "cancelled", "deadline", "invalid",
  // "queue_full", "error".
  std::string failure;
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  double e2e_seconds = 0;
  std::optional<double> first_token_seconds;
  std::vector<double> inter_token_seconds;
  // From the engine (set when it finished).
  std::optional<double> queue_seconds;
  std::optional<double> prefill_seconds;
  std::optional<double> decode_seconds;
};

// Upper bounds of the histograms' buckets (CONVENTIONS R3.4): vLLM's by default, so that
// dashboards and SLOs port; each strictly increasing ([metrics] in the configuration).
struct HistogramBuckets {
  // inferbox_time_to_first_token_seconds: 1 ms to 2560 s.
  std::vector<double> first_token_seconds = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                             0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                             20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
  // inferbox_inter_token_latency_seconds: 10 ms to 80 s.
  std::vector<double> inter_token_seconds = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                             0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                             7.5,  10.0,  20.0, 40.0,  80.0};
  // inferbox_e2e_request_latency_seconds and the queue, prefill and decode times: 0.3 s to
  // about 2 h.
  std::vector<double> request_seconds = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                         5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                         60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  // inferbox_request_prompt_tokens and inferbox_request_generation_tokens: 1-2-5 up to a
  // million tokens (longer than any model's context).
  std::vector<double> tokens = {1,     2,      5,      10,     20,     50,    100,
                                200,   500,    1000,   2000,   5000,   10000, 20000,
                                50000, 100000, 200000, 500000, 1000000};

  bool operator==(const HistogramBuckets&) const = default;
};

class ServingMetrics {
 public:
  // At most this many keys get series of their own; requests of further keys count under
  // key="other", so a box with very many keys cannot blow up the scrape.
  static constexpr size_t kMaxKeySeries = 1000;

  // Registers the families in `registry`; the per-key ones (inferbox_key_*) only with
  // `per_key_series` ([server] metrics_per_key in the configuration).
  explicit ServingMetrics(prometheus::Registry& registry, bool per_key_series = false,
                          HistogramBuckets buckets = {});

  // Creates the model's series at 0, so they exist (and rate() works) before any traffic.
  void RegisterModel(const std::string& model);
  void Record(const RequestRecord& record);
  // A request refused before it reached an engine, by reason: "unauthenticated",
  // "forbidden", "unknown_model", "unavailable", "invalid", "too_long", "queue_full", or an
  // API key's quota: "quota_tokens_per_minute", "quota_tokens_per_day",
  // "quota_max_concurrent_requests".
  void RecordRejected(const std::string& reason);
  // Generated tokens delivered since start, all models (for the throughput of the box).
  double generation_tokens() const { return delivered_tokens_.load(); }

 private:
  const HistogramBuckets buckets_;
  prometheus::Family<prometheus::Histogram>& first_token_;
  prometheus::Family<prometheus::Histogram>& inter_token_;
  prometheus::Family<prometheus::Histogram>& e2e_;
  prometheus::Family<prometheus::Histogram>& queue_;
  prometheus::Family<prometheus::Histogram>& prefill_;
  prometheus::Family<prometheus::Histogram>& decode_;
  prometheus::Family<prometheus::Histogram>& prompt_tokens_;
  prometheus::Family<prometheus::Histogram>& generation_tokens_;
  prometheus::Family<prometheus::Counter>& prompt_tokens_total_;
  prometheus::Family<prometheus::Counter>& cached_prompt_tokens_total_;
  prometheus::Family<prometheus::Counter>& generation_tokens_total_;
  prometheus::Family<prometheus::Counter>& success_;
  prometheus::Family<prometheus::Counter>& failures_;
  prometheus::Family<prometheus::Counter>& rejected_;
  // Null unless per-key series are on.
  prometheus::Family<prometheus::Counter>* key_requests_ = nullptr;
  prometheus::Family<prometheus::Counter>* key_prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* key_generation_tokens_ = nullptr;
  std::mutex keys_mutex_;
  std::set<std::string> keys_;  // Keys with series of their own. Guarded by keys_mutex_.
  std::atomic<double> delivered_tokens_{0};
};

}  // namespace inferbox::monitoring
