#include "inferbox/monitoring/serving_metrics.h"

#include <utility>

namespace inferbox::monitoring {
namespace {

prometheus::Family<prometheus::Histogram>& Histogram(prometheus::Registry& registry,
                                                     const std::string& name,
                                                     const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Counter>& Counter(prometheus::Registry& registry,
                                                 const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

}  // namespace

ServingMetrics::ServingMetrics(prometheus::Registry& registry, bool per_key_series,
                               HistogramBuckets buckets)
    : buckets_(std::move(buckets)),
      first_token_(Histogram(registry, "inferbox_time_to_first_token_seconds",
                             "Time from acceptance to the first generated token.")),
      inter_token_(
          Histogram(registry, "inferbox_inter_token_latency_seconds",
                    "Time between consecutive generated tokens of a request, as delivered: tokens "
                    "that arrive together share the gap before them (those that "
                    "come with the first token count 0).")),
      e2e_(Histogram(registry, "inferbox_e2e_request_latency_seconds",
                     "Time from acceptance to the end of a request, finished or not.")),
      queue_(Histogram(registry, "inferbox_request_queue_time_seconds",
                       "Time a finished request waited before its first engine step.")),
      prefill_(Histogram(registry, "inferbox_request_prefill_time_seconds",
                         "Time from a finished request's first step to its first token.")),
      decode_(Histogram(registry, "inferbox_request_decode_time_seconds",
                        "Time from a finished request's first to its last token.")),
      prompt_tokens_(Histogram(registry, "inferbox_request_prompt_tokens",
                               "Prompt length of finished requests, in tokens.")),
      generation_tokens_(Histogram(registry, "inferbox_request_generation_tokens",
                                   "Generated tokens of finished requests.")),
      prompt_tokens_total_(Counter(registry, "inferbox_prompt_tokens_total",
                                   "Prompt tokens of finished requests, cached ones included.")),
      cached_prompt_tokens_total_(Counter(registry, "inferbox_prompt_tokens_cached_total",
                                          "Prompt tokens of finished requests served from the "
                                          "prefix cache.")),
      generation_tokens_total_(Counter(registry, "inferbox_generation_tokens_total",
                                       "Generated tokens delivered to clients (of every "
                                       "request, finished or not).")),
      success_(Counter(registry, "inferbox_request_success_total",
                       "Requests that finished, by finish_reason (stop, length).")),
      failures_(Counter(registry, "inferbox_request_failures_total",
                        "Requests that reached an engine and did not finish, by reason "
                        "(engine_failed, cancelled, deadline, invalid, queue_full, error).")),
      rejected_(Counter(registry, "inferbox_requests_rejected_total",
                        "Requests refused before reaching an engine, by reason.")) {
  for (const char* reason :
       {"unauthenticated", "forbidden", "unknown_model", "unavailable", "invalid", "too_long",
        "queue_full", "queue_timeout", "quota_tokens_per_minute", "quota_tokens_per_day",
        "quota_max_concurrent_requests"}) {
    rejected_.Add({{"reason", reason}});
  }
  if (per_key_series) {
    key_requests_ = &Counter(registry, "inferbox_key_requests_total",
                             "Requests that reached an engine, by API key id (anonymous: "
                             "keyless callers) and model.");
    key_prompt_tokens_ =
        &Counter(registry, "inferbox_key_prompt_tokens_total",
                 "Prompt tokens (as inferbox_prompt_tokens_total), by API key id and "
                 "model.");
    key_generation_tokens_ =
        &Counter(registry, "inferbox_key_generation_tokens_total",
                 "Generated tokens delivered (as inferbox_generation_tokens_total), by "
                 "API key id and model.");
  }
}

void ServingMetrics::RegisterModel(const std::string& model) {
  const prometheus::Labels labels{{"model", model}};
  first_token_.Add(labels, buckets_.first_token_seconds);
  inter_token_.Add(labels, buckets_.inter_token_seconds);
  for (auto* family : {&e2e_, &queue_, &prefill_, &decode_})
    family->Add(labels, buckets_.request_seconds);
  prompt_tokens_.Add(labels, buckets_.tokens);
  generation_tokens_.Add(labels, buckets_.tokens);
  prompt_tokens_total_.Add(labels);
  cached_prompt_tokens_total_.Add(labels);
  generation_tokens_total_.Add(labels);
  for (const char* reason : {"stop", "length"})
    success_.Add({{"model", model}, {"finish_reason", reason}});
  for (const char* reason : {"engine_failed", "cancelled", "deadline", "error"})
    failures_.Add({{"model", model}, {"reason", reason}});
}

void ServingMetrics::Record(const RequestRecord& record) {
  const prometheus::Labels model{{"model", record.model}};
  e2e_.Add(model, buckets_.request_seconds).Observe(record.e2e_seconds);
  if (record.first_token_seconds)
    first_token_.Add(model, buckets_.first_token_seconds).Observe(*record.first_token_seconds);
  if (!record.inter_token_seconds.empty()) {
    auto& histogram = inter_token_.Add(model, buckets_.inter_token_seconds);
    for (const double gap : record.inter_token_seconds) histogram.Observe(gap);
  }
  prompt_tokens_total_.Add(model).Increment(static_cast<double>(record.prompt_tokens));
  cached_prompt_tokens_total_.Add(model).Increment(
      static_cast<double>(record.cached_prompt_tokens));
  generation_tokens_total_.Add(model).Increment(static_cast<double>(record.generation_tokens));
  delivered_tokens_.fetch_add(static_cast<double>(record.generation_tokens));
  if (key_requests_ != nullptr) {
    std::string key = record.key.empty() ? "anonymous" : record.key;
    {
      std::lock_guard lock(keys_mutex_);
      if (!keys_.contains(key)) {
        if (keys_.size() < kMaxKeySeries) {
          keys_.insert(key);
        } else {
          key = "other";
        }
      }
    }
    const prometheus::Labels labels{{"key", key}, {"model", record.model}};
    key_requests_->Add(labels).Increment();
    key_prompt_tokens_->Add(labels).Increment(static_cast<double>(record.prompt_tokens));
    key_generation_tokens_->Add(labels).Increment(static_cast<double>(record.generation_tokens));
  }
  if (record.finish_reason.empty()) {
    failures_.Add({{"model", record.model}, {"reason", record.failure}}).Increment();
    return;
  }
  success_.Add({{"model", record.model}, {"finish_reason", record.finish_reason}}).Increment();
  prompt_tokens_.Add(model, buckets_.tokens).Observe(static_cast<double>(record.prompt_tokens));
  generation_tokens_.Add(model, buckets_.tokens)
      .Observe(static_cast<double>(record.generation_tokens));
  if (record.queue_seconds)
    queue_.Add(model, buckets_.request_seconds).Observe(*record.queue_seconds);
  if (record.prefill_seconds)
    prefill_.Add(model, buckets_.request_seconds).Observe(*record.prefill_seconds);
  if (record.decode_seconds)
    decode_.Add(model, buckets_.request_seconds).Observe(*record.decode_seconds);
}

void ServingMetrics::RecordRejected(const std::string& reason) {
  rejected_.Add({{"reason", reason}}).Increment();
}

}  // namespace inferbox::monitoring
