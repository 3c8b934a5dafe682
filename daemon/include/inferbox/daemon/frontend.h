// What the public APIs (gRPC inferbox.v1.Inference and the OpenAI-compatible HTTP gateway)
// call: one interface in front of the router and the supervised engines, so both APIs
// behave the same, and so each can be tested against a fake. Requests and chunks are the
// inferbox.v1 messages; the HTTP gateway translates OpenAI JSON to and from them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"
#include "inferbox/v1/inference.pb.h"

namespace inferbox::daemon {

// Who is calling, after authentication.
struct Caller {
  // Public id of the API key; empty for an anonymous caller (a keyless loopback listener).
  std::string key_id;
  inferbox::v1::KeyRole role = inferbox::v1::KEY_ROLE_INFERENCE;
  // Models the key may use; empty: all.
  std::vector<std::string> models;
  // The key's quotas (KeyLimits; 0: none), enforced by KeyQuotas.
  uint64_t tokens_per_minute = 0;
  uint64_t tokens_per_day = 0;
  uint32_t max_concurrent_requests = 0;
  // The public API the call came through, "grpc" or "http" (for the usage ledger); set by
  // that API after authentication.
  std::string api;
};

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // `authorization` is the Authorization header (HTTP) or metadata (gRPC) value, empty when
  // absent. UNAUTHENTICATED with a message a person can act on when it is required and
  // missing, malformed, unknown or revoked.
  virtual Result<Caller> Authenticate(std::string_view authorization) const = 0;
};

// One generation in flight, read one of two ways: pulled with Read by one thread at a time,
// or pushed to a Sink (Watch) on the thread that receives each piece, so that a consumer
// that only passes chunks on (the HTTP gateway's SSE streams) spends no thread wake a token.
class GenerationStream {
 public:
  enum class Next {
    kChunk,    // *chunk holds the next piece of output.
    kEnd,      // The stream is over: status() says how.
    kTimeout,  // Nothing yet; call again (and check the client meanwhile).
  };

  // What Watch hands the stream's events to: in order, one call at a time, on whichever
  // thread received them (a gRPC thread for an engine's stream), so a Sink must not block.
  class Sink {
   public:
    virtual ~Sink() = default;
    // The next piece of output. True: go on reading. False: hold the stream until Resume
    // (what the engine sends meanwhile waits in the call's flow-control window, ~64 KiB; once
    // that is full, the engine's writes wait).
    virtual bool OnChunk(inferbox::v1::GenerateChunk& chunk) = 0;
    // The stream is over: status() says how. Nothing follows.
    virtual void OnEnd() = 0;
  };

  virtual ~GenerationStream() = default;
  virtual Next Read(inferbox::v1::GenerateChunk* chunk, std::chrono::milliseconds timeout) = 0;
  // Hands every event from now on to `sink` (chunks Read has not taken included), which the
  // stream keeps until its last call. Once, and Read is not called after it.
  virtual void Watch(std::shared_ptr<Sink> sink) = 0;
  // Reading goes on after the sink returned false from OnChunk. Any thread, but not once the
  // stream's destruction has begun.
  virtual void Resume() = 0;
  // Once Read returned kEnd (or the sink's OnEnd came): OK after the last chunk (the one with
  // finish_reason), or the error that ended the request: INVALID_ARGUMENT, NOT_FOUND,
  // RESOURCE_EXHAUSTED, UNAVAILABLE (engine loading, restarting, died mid-stream, draining),
  // DEADLINE_EXCEEDED.
  virtual Status status() const = 0;
  // Abandons the request (client gone): the engine frees it within a step. Idempotent.
  virtual void Cancel() = 0;
};

class InferenceFrontend {
 public:
  virtual ~InferenceFrontend() = default;

  // Starts a generation. Errors found before any engine work (unknown model, a model the
  // caller's key may not use, no ready engine, bad arguments) come back here; errors from
  // the engine come through the stream, before its first chunk when they concern the input.
  virtual Result<std::unique_ptr<GenerationStream>> Generate(
      const inferbox::v1::GenerateRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) = 0;
  virtual Result<std::unique_ptr<GenerationStream>> Chat(
      const inferbox::v1::ChatRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) = 0;
  virtual Result<inferbox::v1::TokenizeResponse> Tokenize(
      const inferbox::v1::TokenizeRequest& request, const Caller& caller) = 0;
  virtual std::vector<inferbox::v1::ModelInfo> ListModels() const = 0;
  // The model a request that names `model` goes to: the default model for "default" (or an
  // empty name) when one is set; any other name as it is.
  virtual std::string ResolveModel(const std::string& model) const = 0;
  // For the OpenAI API's reasoning_content: an output that starts with "<think>" is
  // reasoning up to "</think>". True when the model's chat prompt already opens that block
  // (DeepSeek-R1's template ends with "<think>\n"), so its output is reasoning from the
  // start up to "</think>". False for unknown models.
  virtual bool ChatPromptOpensReasoning(std::string_view model) const = 0;
  // How the model's chat template asks it to call tools ("hermes", "deepseek", "json"), so
  // that its calls can be read out of its output; empty when unknown.
  virtual std::string ToolCallFormat(std::string_view model) const = 0;
};

}  // namespace inferbox::daemon
