// inferbox-bench's other daemon path: the same requests as in-process, sent to inferboxd's
// public gRPC API (inferbox.v1.Inference/Generate, server streaming), so that what the gRPC
// path costs can be set beside the HTTP path's and in-process. Each request gives the prompt
// as token ids, temperature 0 (or the endpoint's, seeded with the request's index),
// ignore_eos and max_tokens = the output length; the generated token count is the last
// chunk's usage. Requests are callback reactors on one channel (gRPC's own threads read
// them), at most `concurrency` in flight.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/request_record.h"
#include "inferbox/common/status.h"

namespace inferbox::engine::bench {

struct GrpcEndpoint {
  std::string address;       // host:port of the daemon's gRPC listener.
  std::string api_key;       // Sent as "authorization: Bearer <key>" when not empty.
  std::string model;         // The served model's name.
  float temperature = 0.0f;  // Every request's (0: greedy), each seeded with its index.
};

// Runs requests against `endpoint` (see RequestRunner). An arrival is a chunk with token ids
// or the finish reason, timed as gRPC hands it over. A request fails (its record's error) on
// a status other than OK (one that runs past 10 minutes: DEADLINE_EXCEEDED), or a stream that
// ends without a finish reason and usage.
Status RunOverGrpc(const GrpcEndpoint& endpoint, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records);

}  // namespace inferbox::engine::bench
