// inferbox-bench's daemon path: the same requests as in-process, sent to an OpenAI-compatible
// server (inferboxd, or any other) as streamed completions, so that the two paths can be
// compared. Each request is POST {base}/v1/completions with the prompt as token ids (exact
// lengths, no tokenizer involved), temperature 0, ignore_eos, max_tokens = the output length,
// stream = true and stream_options.include_usage = true; the generated token count is the
// usage's completion_tokens. Requests run on up to 4 client threads, each with its own
// libcurl multi handle and an equal share of the concurrency (connections are kept and
// reused).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/request_record.h"
#include "inferbox/common/status.h"

namespace inferbox::engine::bench {

struct OpenAiEndpoint {
  std::string base_url;      // http://host:port; a trailing "/" or "/v1" is dropped.
  std::string api_key;       // Sent as "Authorization: Bearer <key>" when not empty.
  std::string model;         // The served model's name.
  float temperature = 0.0f;  // Every request's (0: greedy), each seeded with its index.
};

// Server-sent events as their bytes arrive in pieces: hands over each event's data (its
// `data:` lines joined by newlines), ignoring comments and other fields.
class SseParser {
 public:
  using DataHandler = std::function<void(std::string_view data)>;
  void Feed(std::string_view bytes, const DataHandler& on_data);

 private:
  std::string line_;
  std::string data_;
  bool has_data_ = false;
};

// The completions URL for `base_url` (see OpenAiEndpoint).
std::string CompletionsUrl(std::string_view base_url);

// The JSON body of one streamed completion of exactly `output_len` tokens: greedy, or
// sampled at `temperature` with `seed`.
std::string CompletionRequestBody(const std::string& model, const std::vector<int32_t>& prompt,
                                  int64_t output_len, float temperature = 0.0f, uint64_t seed = 0);

// Runs requests against `endpoint` (see RequestRunner). Arrival times are taken as each
// event's bytes reach this process. A request fails (its record's error) on a transport
// error, a status other than 200, an error event, or a stream that ends without a finish
// reason, usage and [DONE].
Status RunOverHttp(const OpenAiEndpoint& endpoint, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records);

}  // namespace inferbox::engine::bench
