// Fakes for the OpenAI gateway's tests: a scripted InferenceFrontend whose streams play back
// chunks (or fail, or hang until cancelled) and record what they were asked, and an
// Authenticator with one good key.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "inferbox/daemon/frontend.h"
#include "openai_client.h"

namespace inferbox::daemon::openai_test {

namespace v1 = inferbox::v1;
using namespace std::chrono_literals;

// What a fake stream plays back: chunks, then either an end status or a hang until cancelled.
struct Script {
  std::vector<v1::GenerateChunk> chunks;
  Status end;  // After the chunks (OK: the normal end).
  bool hang_after_chunks = false;
  std::chrono::milliseconds first_chunk_delay{0};
  // Between one chunk and the next.
  std::chrono::milliseconds chunk_interval{0};
  Status start_error;  // Non-OK: Chat/Generate fail with it.
};

// Seen from the test while the gateway owns the stream.
struct StreamProbe {
  std::mutex mutex;
  std::condition_variable changed;
  bool cancelled = false;
  // Times a watching sink had the stream held and resumed it.
  int resumes = 0;

  bool WaitCancelled(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [this] { return cancelled; });
  }
};

// Read plays the script back on the caller's thread; Watch on a thread of its own, as an
// engine's stream calls its sink from a gRPC thread (held while the sink asks).
class FakeStream : public GenerationStream {
 public:
  FakeStream(Script script, std::shared_ptr<StreamProbe> probe)
      : script_(std::move(script)), probe_(std::move(probe)), started_(Clock::now()) {}

  // A player still going is cancelled, as the engine's stream is when its consumer leaves
  // before the script's end.
  ~FakeStream() override {
    if (!player_.joinable()) return;
    {
      std::lock_guard lock(probe_->mutex);
      const bool ends_by_itself = next_ >= script_.chunks.size() && !script_.hang_after_chunks;
      if (!played_ && !ends_by_itself) {
        probe_->cancelled = true;
        probe_->changed.notify_all();
      }
    }
    player_.join();
  }

  void Watch(std::shared_ptr<Sink> sink) override {
    player_ = std::thread([this, sink = std::move(sink)] {
      v1::GenerateChunk chunk;
      for (;;) {
        const Next next = Read(&chunk, 50ms);
        if (next == Next::kTimeout) continue;
        if (next == Next::kEnd) break;
        if (sink->OnChunk(chunk)) continue;
        std::unique_lock lock(probe_->mutex);
        probe_->changed.wait(lock, [this] { return resumed_ || probe_->cancelled; });
        resumed_ = false;
      }
      {
        std::lock_guard lock(probe_->mutex);
        played_ = true;
      }
      sink->OnEnd();
    });
  }

  void Resume() override {
    std::lock_guard lock(probe_->mutex);
    resumed_ = true;
    ++probe_->resumes;
    probe_->changed.notify_all();
  }

  Next Read(v1::GenerateChunk* chunk, std::chrono::milliseconds timeout) override {
    std::unique_lock lock(probe_->mutex);
    if (probe_->cancelled) {
      status_ = Status(StatusCode::kCancelled, "cancelled");
      return Next::kEnd;
    }
    const auto ready_at =
        started_ + script_.first_chunk_delay + static_cast<int>(next_) * script_.chunk_interval;
    if (next_ < script_.chunks.size() && Clock::now() < ready_at) {
      probe_->changed.wait_until(lock, std::min(Clock::now() + timeout, ready_at),
                                 [this] { return probe_->cancelled; });
      return Next::kTimeout;
    }
    if (next_ < script_.chunks.size()) {
      *chunk = script_.chunks[next_++];
      return Next::kChunk;
    }
    if (script_.hang_after_chunks) {
      probe_->changed.wait_for(lock, timeout, [this] { return probe_->cancelled; });
      return Next::kTimeout;
    }
    status_ = script_.end;
    return Next::kEnd;
  }

  Status status() const override { return status_; }

  void Cancel() override {
    std::lock_guard lock(probe_->mutex);
    probe_->cancelled = true;
    probe_->changed.notify_all();
  }

 private:
  using Clock = std::chrono::steady_clock;
  Script script_;
  std::shared_ptr<StreamProbe> probe_;
  Clock::time_point started_;
  size_t next_ = 0;
  Status status_;
  bool resumed_ = false;
  bool played_ = false;  // The player has read the end.
  std::thread player_;
};

class FakeFrontend : public InferenceFrontend {
 public:
  void SetScript(Script script) {
    std::lock_guard lock(mutex_);
    script_ = std::move(script);
  }
  void SetModels(std::vector<v1::ModelInfo> models) {
    std::lock_guard lock(mutex_);
    models_ = std::move(models);
  }
  void SetReasoningModel(std::string model) {
    std::lock_guard lock(mutex_);
    reasoning_model_ = std::move(model);
  }
  void SetToolCallFormat(std::string model, std::string format) {
    std::lock_guard lock(mutex_);
    tool_model_ = std::move(model);
    tool_format_ = std::move(format);
  }
  void SetDefaultModel(std::string model) {
    std::lock_guard lock(mutex_);
    default_model_ = std::move(model);
  }
  std::vector<v1::ChatRequest> chat_requests() const {
    std::lock_guard lock(mutex_);
    return chat_requests_;
  }
  std::vector<v1::GenerateRequest> generate_requests() const {
    std::lock_guard lock(mutex_);
    return generate_requests_;
  }
  std::vector<std::string> caller_key_ids() const {
    std::lock_guard lock(mutex_);
    return caller_key_ids_;
  }
  std::shared_ptr<StreamProbe> last_probe() const {
    std::lock_guard lock(mutex_);
    return last_probe_;
  }
  // The probe of the first stream started, once one is; null after 5 s.
  std::shared_ptr<StreamProbe> WaitForStream() {
    std::unique_lock lock(mutex_);
    stream_started_.wait_for(lock, 5s, [this] { return last_probe_ != nullptr; });
    return last_probe_;
  }

  Result<std::unique_ptr<GenerationStream>> Generate(
      const v1::GenerateRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) override {
    std::lock_guard lock(mutex_);
    generate_requests_.push_back(request);
    return StartLocked(caller, deadline);
  }
  Result<std::unique_ptr<GenerationStream>> Chat(
      const v1::ChatRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) override {
    std::lock_guard lock(mutex_);
    chat_requests_.push_back(request);
    return StartLocked(caller, deadline);
  }
  Result<v1::TokenizeResponse> Tokenize(const v1::TokenizeRequest&, const Caller&) override {
    return Status(StatusCode::kInternal, "not used");
  }
  std::vector<v1::ModelInfo> ListModels() const override {
    std::lock_guard lock(mutex_);
    return models_;
  }
  std::string ResolveModel(const std::string& model) const override {
    std::lock_guard lock(mutex_);
    return model == "default" && !default_model_.empty() ? default_model_ : model;
  }
  std::string ToolCallFormat(std::string_view model) const override {
    std::lock_guard lock(mutex_);
    return model == tool_model_ ? tool_format_ : "";
  }
  bool ChatPromptOpensReasoning(std::string_view model) const override {
    std::lock_guard lock(mutex_);
    return model == reasoning_model_;
  }

 private:
  Result<std::unique_ptr<GenerationStream>> StartLocked(
      const Caller& caller, std::optional<std::chrono::system_clock::time_point> deadline) {
    caller_key_ids_.push_back(caller.key_id);
    EXPECT_FALSE(deadline.has_value()) << "HTTP requests carry no deadline";
    if (!script_.start_error.ok()) return script_.start_error;
    last_probe_ = std::make_shared<StreamProbe>();
    stream_started_.notify_all();
    return std::unique_ptr<GenerationStream>(std::make_unique<FakeStream>(script_, last_probe_));
  }

  mutable std::mutex mutex_;
  std::condition_variable stream_started_;
  Script script_;
  std::vector<v1::ModelInfo> models_;
  std::string reasoning_model_;
  std::string default_model_;
  std::string tool_model_;
  std::string tool_format_;
  std::vector<v1::ChatRequest> chat_requests_;
  std::vector<v1::GenerateRequest> generate_requests_;
  std::vector<std::string> caller_key_ids_;
  std::shared_ptr<StreamProbe> last_probe_;
};

// Accepts "Bearer good"; rejects any other key; a missing key is anonymous unless keys are
// required.
class FakeAuthenticator : public Authenticator {
 public:
  Result<Caller> Authenticate(std::string_view authorization) const override {
    if (authorization == "Bearer good") return Caller{.key_id = "good"};
    if (authorization.empty() && !require_key) return Caller{};
    return Status(StatusCode::kUnauthenticated,
                  authorization.empty() ? "an API key is required" : "unknown API key");
  }
  std::atomic<bool> require_key = true;
};

inline v1::GenerateChunk Chunk(std::string text) {
  v1::GenerateChunk chunk;
  chunk.set_model("m");
  chunk.set_text(std::move(text));
  return chunk;
}

inline v1::GenerateChunk Final(std::string text, v1::FinishReason finish = v1::FINISH_REASON_STOP) {
  v1::GenerateChunk chunk = Chunk(std::move(text));
  chunk.set_finish_reason(finish);
  chunk.mutable_usage()->set_prompt_tokens(5);
  chunk.mutable_usage()->set_completion_tokens(3);
  chunk.mutable_usage()->set_cached_prompt_tokens(2);
  return chunk;
}

inline void AddLogprob(v1::GenerateChunk* chunk, std::string token, float logprob,
                       std::vector<std::pair<std::string, float>> top = {}) {
  v1::TokenLogprob* entry = chunk->add_logprobs();
  entry->set_token(std::move(token));
  entry->set_logprob(logprob);
  for (auto& [text, value] : top) {
    v1::TopLogprob* alternative = entry->add_top_logprobs();
    alternative->set_token(text);
    alternative->set_logprob(value);
  }
}

inline Script HelloScript() {
  return {.chunks = {Chunk("Hel"), Chunk("lo"), Final("!")}};
}

// A stream of `num_chunks` events of 16 kB, each its number as a tag ("<0000>") then 16,000
// bytes of filler, then "<end>": more than a socket's buffers take, for clients that read
// slowly.
inline Script NumberedScript(int num_chunks) {
  Script script;
  for (int i = 0; i < num_chunks; ++i)
    script.chunks.push_back(Chunk(fmt::format("<{:04}>{}", i, std::string(16000, 'x'))));
  script.chunks.push_back(Final("<end>"));
  return script;
}

// Checks a whole chunked SSE response to NumberedScript(num_chunks): every chunk framed
// right (none interleaved with another), nothing after the last, every event once and in
// order, then the finishing one and [DONE].
inline void ExpectEveryNumberedEventInOrder(const std::string& received, int num_chunks) {
  size_t at = received.find("\r\n\r\n");
  ASSERT_NE(at, std::string::npos) << "no headers";
  at += 4;
  std::string body;
  for (;;) {
    const size_t line_end = received.find("\r\n", at);
    ASSERT_NE(line_end, std::string::npos) << "the body ends inside a chunk's size line";
    const size_t size = std::stoul(received.substr(at, line_end - at), nullptr, 16);
    ASSERT_LE(line_end + 2 + size + 2, received.size()) << "the body ends inside a chunk";
    ASSERT_EQ(received.substr(line_end + 2 + size, 2), "\r\n") << "a chunk's size is wrong";
    body += received.substr(line_end + 2, size);
    at = line_end + 2 + size + 2;
    if (size == 0) break;
  }
  EXPECT_EQ(at, received.size()) << "bytes after the last chunk";
  const Events events = ParseSse(body);
  ASSERT_EQ(events.data.size(), num_chunks + 2u) << "every chunk, the finishing one and [DONE]";
  EXPECT_EQ(events.data.back(), "[DONE]");
  at = 0;
  for (int i = 0; i < num_chunks; ++i) {
    const size_t found = body.find(fmt::format("<{:04}>", i), at);
    ASSERT_NE(found, std::string::npos) << "event " << i << " missing or out of order";
    at = found;
  }
  EXPECT_NE(body.find("<end>", at), std::string::npos);
}

}  // namespace inferbox::daemon::openai_test
