// The engine loop thread on a real tiny model: requests submitted from several threads get
// the tokens they get alone, text that decodes their tokens, stop strings, cancellation that
// frees every block, lanes, queue limits, and exactly one final delta per request whatever
// ends it.
#include "inferbox/engine/runtime/runtime.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::engine {
namespace {

using namespace std::chrono_literals;

// Everything one request received.
struct Collected {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  int num_deltas = 0;
  int num_finals = 0;
  Delta final_delta;
  std::chrono::steady_clock::time_point first_token;

  DeltaCallback Callback() {
    return [this](Delta&& delta) {
      std::lock_guard lock(mutex);
      if (tokens.empty() && !delta.token_ids.empty())
        first_token = std::chrono::steady_clock::now();
      ++num_deltas;
      tokens.insert(tokens.end(), delta.token_ids.begin(), delta.token_ids.end());
      text += delta.text;
      for (auto& entry : delta.logprobs) logprobs.push_back(entry);
      if (delta.finished) {
        ++num_finals;
        final_delta = std::move(delta);
      }
      changed.notify_all();
    };
  }
  bool WaitFinal(std::chrono::seconds timeout = 120s) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [this] { return num_finals > 0; });
  }
  // Reads under the mutex: the delivery thread may be appending.
  template <typename F>
  auto Locked(F read) {
    std::lock_guard lock(mutex);
    return read();
  }
  bool WaitTokens(size_t count) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 120s, [&] { return tokens.size() >= count || num_finals > 0; });
  }
};

// Holds up a callback (the delivery of a delta) until opened.
struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  bool entered = false;
  bool open = false;

  void Pass() {
    std::unique_lock lock(mutex);
    entered = true;
    changed.notify_all();
    changed.wait(lock, [this] { return open; });
  }
  bool WaitEntered() {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 120s, [this] { return entered; });
  }
  void Open() {
    std::lock_guard lock(mutex);
    open = true;
    changed.notify_all();
  }
  // `inner`, with each delta (or only the final one) held here first.
  DeltaCallback Holding(DeltaCallback inner, bool final_only) {
    return [this, inner = std::move(inner), final_only](Delta&& delta) {
      if (!final_only || delta.finished) Pass();
      inner(std::move(delta));
    };
  }
};

// The model with each forward step held until allowed.
class SteppedModel final : public ForwardingModelRunner {
 public:
  explicit SteppedModel(Model& inner) : ForwardingModelRunner(inner) {}
  Result<std::span<const float>> ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                  KvCache& cache, bool all_positions) override {
    {
      std::unique_lock lock(mutex_);
      ++entered_;
      changed_.notify_all();
      changed_.wait(lock, [this] { return allowed_ > 0; });
      --allowed_;
    }
    return inner().ForwardOnBackend(batch, cache, all_positions);
  }

  void Allow(int steps) {
    std::lock_guard lock(mutex_);
    allowed_ += steps;
    changed_.notify_all();
  }
  // Until `steps` steps have started.
  bool WaitEntered(int steps) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 120s, [&] { return entered_ >= steps; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int entered_ = 0;
  int allowed_ = 0;
};

// Opens a gate when the scope ends: declared after the runtime, a failed assertion cannot
// leave the runtime's delivery thread held (its destructor would wait forever).
struct GateOpener {
  Gate& gate;
  ~GateOpener() { gate.Open(); }
};

// The same for a SteppedModel's steps.
struct StepsAllowed {
  SteppedModel& model;
  ~StepsAllowed() { model.Allow(1 << 20); }
};

class RuntimeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new inferbox::testing::TempDir();
    inferbox::testing::MakeTinyModel(scratch_->path() / "model", "qwen3",
                                     {"--arch", "qwen3", "--seed", "7"}, scratch_->path());
    backend_ = MakeCpuBackend().release();
    auto model = Model::Load(scratch_->path() / "model", *backend_);
    if (model.ok()) model_ = std::move(model).value().release();
    auto tokenizer = Tokenizer::LoadFromDirectory(scratch_->path() / "model");
    if (tokenizer.ok()) tokenizer_ = std::move(tokenizer).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
    delete backend_;
    delete scratch_;
  }
  void SetUp() override {
    ASSERT_NE(model_, nullptr) << "the tiny model did not load";
    ASSERT_NE(tokenizer_, nullptr) << "the tokenizer did not load";
  }

  static RuntimeOptions Options(int32_t num_blocks, int64_t max_running, int64_t budget = 64) {
    RuntimeOptions options;
    options.num_blocks = num_blocks;
    options.block_size = 4;
    options.limits = {max_running, budget, 512};
    return options;
  }

  static RequestOptions Greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
    RequestOptions request;
    request.prompt = std::move(prompt);
    request.sampling.temperature = 0.0f;
    request.stop.max_tokens = max_tokens;
    request.stop.ignore_eos = true;
    return request;
  }

  // Submits a 100-token request to `runtime` over `model` and lets its prefill and a decode
  // run: with one request at a time, the next one submitted waits.
  static void StartOneRunning(Runtime& runtime, SteppedModel& model, Collected& running, int seed) {
    ASSERT_TRUE(runtime.Submit(Greedy(Prompt(seed, 6), 100), running.Callback()).ok());
    model.Allow(2);  // Its prefill and a decode.
    ASSERT_TRUE(running.WaitTokens(2));
  }

  static std::vector<int32_t> Prompt(int seed, int length) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_int_distribution<int32_t> token(1, 150000);
    std::vector<int32_t> prompt;
    for (int t = 0; t < length; ++t) prompt.push_back(token(rng));
    return prompt;
  }

  // The request run on its own.
  std::vector<int32_t> Alone(const RequestOptions& request) {
    Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 1));
    Collected collected;
    EXPECT_TRUE(runtime.Submit(request, collected.Callback()).ok());
    EXPECT_TRUE(collected.WaitFinal());
    return collected.tokens;
  }

  static inferbox::testing::TempDir* scratch_;
  static Backend* backend_;
  static Model* model_;
  static Tokenizer* tokenizer_;
};

inferbox::testing::TempDir* RuntimeTest::scratch_ = nullptr;
Backend* RuntimeTest::backend_ = nullptr;
Model* RuntimeTest::model_ = nullptr;
Tokenizer* RuntimeTest::tokenizer_ = nullptr;

TEST_F(RuntimeTest, SixtyFourConcurrentRequestsFromManyThreadsGetTheirTokensAlone) {
  constexpr int kRequests = 64;
  std::vector<RequestOptions> requests;
  for (int i = 0; i < kRequests; ++i)
    requests.push_back(Greedy(Prompt(i, 2 + (i * 7) % 23), 2 + i % 7));
  std::vector<Collected> collected(kRequests);
  {
    Runtime runtime(*model_, *backend_, tokenizer_, Options(1024, 64, 96));
    std::vector<std::thread> submitters;
    for (int t = 0; t < 4; ++t) {
      submitters.emplace_back([&, t] {
        for (int i = t; i < kRequests; i += 4) {
          auto id = runtime.Submit(requests[i], collected[i].Callback());
          EXPECT_TRUE(id.ok()) << id.status().ToString();
        }
      });
    }
    for (auto& thread : submitters) thread.join();
    EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 300s));
    const RuntimeStats stats = runtime.stats();
    EXPECT_EQ(stats.num_blocks_used, 0);
    EXPECT_EQ(stats.requests_in_flight, 0);
    int64_t prompt_tokens = 0, generated = 0;
    for (const auto& request : requests) {
      prompt_tokens += static_cast<int64_t>(request.prompt.size());
      generated += request.stop.max_tokens;
    }
    EXPECT_EQ(stats.prompt_tokens_total, prompt_tokens);
    EXPECT_EQ(stats.generation_tokens_total, generated);
    EXPECT_GT(stats.steps_total, 0);
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(collected[i].num_finals, 1) << "request " << i;
    const Delta& last = collected[i].final_delta;
    EXPECT_TRUE(last.error.ok()) << last.error.ToString();
    EXPECT_EQ(last.finish, FinishReason::kLength);
    EXPECT_EQ(last.usage.prompt_tokens, static_cast<int64_t>(requests[i].prompt.size()));
    EXPECT_EQ(last.usage.completion_tokens, requests[i].stop.max_tokens);
    EXPECT_GE(last.timings.total, last.timings.first_token);
    EXPECT_EQ(collected[i].tokens, Alone(requests[i])) << "request " << i << " differs from alone";
  }
}

TEST_F(RuntimeTest, TextDeltasConcatenateToTheDecodedTokens) {
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 8));
  RequestOptions request = Greedy(Prompt(100, 9), 24);
  request.logprobs = true;
  request.sampling.num_top_logprobs = 3;
  Collected collected;
  ASSERT_TRUE(runtime.Submit(request, collected.Callback()).ok());
  ASSERT_TRUE(collected.WaitFinal());
  ASSERT_EQ(collected.tokens.size(), 24u);
  EXPECT_GT(collected.num_deltas, 1) << "output should stream, not arrive at the end";
  EXPECT_EQ(collected.text, *tokenizer_->Decode(collected.tokens, true));
  ASSERT_EQ(collected.logprobs.size(), 24u);
  for (size_t i = 0; i < 24; ++i) {
    EXPECT_EQ(collected.logprobs[i].token, collected.tokens[i]);
    EXPECT_LE(collected.logprobs[i].logprob, 0.0f);
    ASSERT_EQ(collected.logprobs[i].top.size(), 3u);
    // Greedy: the sampled token is the most likely one.
    EXPECT_EQ(collected.logprobs[i].top[0].first, collected.tokens[i]);
  }
}

TEST_F(RuntimeTest, AStopStringEndsTheOutputBeforeIt) {
  const RequestOptions plain = Greedy(Prompt(200, 7), 32);
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 8));
  Collected full;
  ASSERT_TRUE(runtime.Submit(plain, full.Callback()).ok());
  ASSERT_TRUE(full.WaitFinal());
  // A stop string from the middle of the output, cut at character boundaries.
  const std::string& text = full.text;
  auto boundary = [&](size_t at) {
    while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
    return at;
  };
  const size_t begin = boundary(text.size() / 2);
  const size_t end = boundary(begin + 3);
  ASSERT_LT(begin, end) << "the output is too short: " << text;
  const std::string stop = text.substr(begin, end - begin);

  RequestOptions stopped = plain;
  stopped.stop_strings = {stop};
  Collected collected;
  ASSERT_TRUE(runtime.Submit(stopped, collected.Callback()).ok());
  ASSERT_TRUE(collected.WaitFinal());
  EXPECT_EQ(collected.final_delta.finish, FinishReason::kStop);
  EXPECT_EQ(collected.final_delta.matched_stop, stop);
  EXPECT_EQ(collected.text, text.substr(0, text.find(stop)));
  EXPECT_LT(collected.tokens.size(), full.tokens.size());
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(runtime.stats().num_blocks_used, 0);
  EXPECT_EQ(runtime.stats().num_running, 0);
}

TEST_F(RuntimeTest, CancelMidStreamFreesEveryBlock) {
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 8));
  EXPECT_EQ(runtime.stats().num_blocks_used, 0);
  Collected collected;
  auto id = runtime.Submit(Greedy(Prompt(300, 20), 400), collected.Callback());
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(collected.WaitTokens(3));
  EXPECT_GT(runtime.stats().num_blocks_used, 0);
  runtime.Cancel(*id);
  ASSERT_TRUE(collected.WaitFinal());
  EXPECT_EQ(collected.final_delta.error.code(), StatusCode::kCancelled);
  EXPECT_LT(collected.tokens.size(), 400u);
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 10s));
  EXPECT_EQ(runtime.stats().num_blocks_used, 0);
  EXPECT_EQ(collected.num_finals, 1);
  runtime.Cancel(*id);  // Finished: ignored.
}

TEST_F(RuntimeTest, InteractiveRequestsStartBeforeQueuedBatchWork) {
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 2));
  constexpr int kBatch = 6;
  std::vector<Collected> batch(kBatch);
  for (int i = 0; i < kBatch; ++i) {
    RequestOptions request = Greedy(Prompt(400 + i, 8), 12);
    request.lane = Lane::kBatch;
    ASSERT_TRUE(runtime.Submit(request, batch[i].Callback()).ok());
  }
  ASSERT_TRUE(batch[0].WaitTokens(1));  // Two batch requests run; four wait.
  Collected interactive;
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(500, 8), 4), interactive.Callback()).ok());
  ASSERT_TRUE(interactive.WaitFinal());
  for (auto& request : batch) ASSERT_TRUE(request.WaitFinal());
  int started_after = 0;
  for (int i = 2; i < kBatch; ++i) {
    if (batch[i].first_token > interactive.first_token) ++started_after;
  }
  EXPECT_EQ(started_after, kBatch - 2)
      << "every batch request still waiting should start after the interactive one";
}

TEST_F(RuntimeTest, CachedPromptTokensAreReported) {
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 8));
  const RequestOptions request = Greedy(Prompt(600, 17), 3);
  Collected first, second;
  ASSERT_TRUE(runtime.Submit(request, first.Callback()).ok());
  ASSERT_TRUE(first.WaitFinal());
  ASSERT_TRUE(runtime.Submit(request, second.Callback()).ok());
  ASSERT_TRUE(second.WaitFinal());
  EXPECT_EQ(first.final_delta.usage.cached_prompt_tokens, 0);
  EXPECT_EQ(second.final_delta.usage.cached_prompt_tokens, 16) << "four full blocks of 4";
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(runtime.stats().prefix_hit_tokens_total, 16);
}

TEST_F(RuntimeTest, BadRequestsAndAFullQueueAreRefusedAtSubmit) {
  RuntimeOptions options = Options(256, 1);
  options.max_waiting = 2;
  Runtime runtime(*model_, *backend_, tokenizer_, options);
  Collected unused;
  EXPECT_EQ(runtime.Submit(Greedy({}, 4), unused.Callback()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(runtime.Submit(Greedy({1, 2}, 600), unused.Callback()).status().code(),
            StatusCode::kInvalidArgument)
      << "longer than the model length";
  RequestOptions bad_temperature = Greedy({1, 2}, 4);
  bad_temperature.sampling.temperature = -1.0f;
  EXPECT_EQ(runtime.Submit(bad_temperature, unused.Callback()).status().code(),
            StatusCode::kInvalidArgument);

  std::vector<Collected> accepted(4);
  int refused = 0;
  for (auto& collected : accepted) {
    auto id = runtime.Submit(Greedy(Prompt(700, 6), 200), collected.Callback());
    if (!id.ok()) {
      EXPECT_EQ(id.status().code(), StatusCode::kResourceExhausted);
      ++refused;
    }
  }
  EXPECT_GE(refused, 1) << "one running and two waiting at most: the fourth must be refused";
  runtime.CancelAll(Status(StatusCode::kUnavailable, "draining"));
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  for (auto& collected : accepted) {
    if (collected.num_finals == 0) continue;
    EXPECT_EQ(collected.num_finals, 1);
    EXPECT_EQ(collected.final_delta.error.code(), StatusCode::kUnavailable);
  }
  EXPECT_EQ(unused.num_finals, 0) << "a refused request gets no delta";
}

// R6.5: the queue is bounded in prompt tokens too. A request is refused when the tokens still
// to prefill would pass the limit, but never when nothing waits (the context length bounds
// one prompt).
TEST_F(RuntimeTest, WaitingPromptTokensAreBounded) {
  RuntimeOptions options = Options(256, 1);
  options.max_waiting_tokens = 20;
  Runtime runtime(*model_, *backend_, tokenizer_, options);
  std::vector<Collected> accepted(3);
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(1, 30), 400), accepted[0].Callback()).ok())
      << "a prompt over the limit is taken when nothing waits";
  ASSERT_TRUE(accepted[0].WaitTokens(1));  // It runs: the only slot is taken.
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(2, 12), 4), accepted[1].Callback()).ok());
  Collected refused;
  const auto over = runtime.Submit(Greedy(Prompt(3, 12), 4), refused.Callback());
  ASSERT_FALSE(over.ok()) << "12 waiting + 12 passes 20";
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(over.status().reason(), error_reason::kQueueFull);
  EXPECT_THAT(over.status().message(),
              ::testing::HasSubstr("12 prompt tokens are already waiting"));
  EXPECT_TRUE(runtime.Submit(Greedy(Prompt(4, 8), 4), accepted[2].Callback()).ok())
      << "12 + 8 is within 20";
  EXPECT_EQ(runtime.stats().num_waiting_tokens, 20);
  runtime.CancelAll(Status(StatusCode::kUnavailable, "draining"));
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(refused.num_finals, 0) << "a refused request gets no delta";
}

TEST_F(RuntimeTest, StoppingEndsEveryRequestInFlight) {
  std::vector<Collected> collected(5);
  {
    Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 2));
    for (auto& request : collected)
      ASSERT_TRUE(runtime.Submit(Greedy(Prompt(800, 10), 400), request.Callback()).ok());
    ASSERT_TRUE(collected[0].WaitTokens(2));
  }
  for (auto& request : collected) {
    EXPECT_EQ(request.num_finals, 1);
    EXPECT_EQ(request.final_delta.error.code(), StatusCode::kUnavailable);
  }
}

TEST_F(RuntimeTest, AClientSlowToTakeItsDeltasDoesNotHoldUpTheSteps) {
  // Callbacks run off the engine thread: a callback that takes its time (in the engine
  // server, each starts a gRPC write) takes none from the steps.
  const RequestOptions other_request = Greedy(Prompt(900, 6), 48);
  const std::vector<int32_t> other_alone = Alone(other_request);
  Gate gate;
  Collected slow;
  Collected other;
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 2));
  GateOpener opener{gate};  // Before the runtime stops, whatever an assertion left.
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(901, 6), 8), gate.Holding(slow.Callback(), false)).ok());
  ASSERT_TRUE(gate.WaitEntered());
  ASSERT_TRUE(runtime.Submit(other_request, other.Callback()).ok());
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (runtime.stats().generation_tokens_total < 8 + 48 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(runtime.stats().generation_tokens_total, 8 + 48)
      << "the engine stopped generating while one callback was blocked";
  gate.Open();
  ASSERT_TRUE(other.WaitFinal());
  EXPECT_EQ(other.tokens, other_alone);
  EXPECT_EQ(other.num_finals, 1);
  ASSERT_TRUE(slow.WaitFinal());
  EXPECT_EQ(slow.tokens.size(), 8u);
  EXPECT_EQ(slow.num_finals, 1);
}

TEST_F(RuntimeTest, WaitIdleWaitsUntilTheFinalDeltaIsDelivered) {
  // What a drain relies on: idle means every client has its answer, not just that the
  // engine has finished the request.
  Gate gate;
  Collected collected;
  Runtime runtime(*model_, *backend_, tokenizer_, Options(256, 2));
  GateOpener opener{gate};
  ASSERT_TRUE(
      runtime.Submit(Greedy(Prompt(902, 6), 4), gate.Holding(collected.Callback(), true)).ok());
  ASSERT_TRUE(gate.WaitEntered());
  EXPECT_FALSE(runtime.WaitIdle(std::chrono::steady_clock::now() + 300ms));
  EXPECT_EQ(runtime.stats().requests_in_flight, 1);
  gate.Open();
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(runtime.stats().requests_in_flight, 0);
  EXPECT_EQ(collected.num_finals, 1);
  EXPECT_EQ(collected.tokens.size(), 4u);
}

TEST_F(RuntimeTest, EveryRequestInFlightCountsAsRunningOrWaiting) {
  // The engine's Stats (the daemon's queue metrics, its tests) read these numbers; they are
  // those of the last step's end, and a request the loop has taken from its inbox since
  // counts as waiting, never nowhere.
  SteppedModel model(*model_);
  Runtime runtime(model, tokenizer_, Options(256, 1));
  StepsAllowed allowed{model};  // Before the runtime stops, whatever an assertion left.
  Collected first;
  Collected second;
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(910, 6), 20), first.Callback()).ok());
  ASSERT_TRUE(model.WaitEntered(1));
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(911, 6), 20), second.Callback()).ok());
  RuntimeStats stats = runtime.stats();
  EXPECT_EQ(stats.requests_in_flight, 2);
  EXPECT_EQ(stats.num_running + stats.num_waiting, 2);
  model.Allow(1);
  // The second step runs the first request; the loop took the second from its inbox before it.
  ASSERT_TRUE(model.WaitEntered(2));
  stats = runtime.stats();
  EXPECT_EQ(stats.requests_in_flight, 2);
  EXPECT_EQ(stats.num_running, 1);
  EXPECT_EQ(stats.num_waiting, 1) << "the queued request vanished from the stats";
  runtime.CancelAll(Status(StatusCode::kCancelled, "done"));
  model.Allow(1000);
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(first.num_finals, 1);
  EXPECT_EQ(second.num_finals, 1);
}

// R6.6: a request that waits past the queue timeout without starting ends with
// RESOURCE_EXHAUSTED (503 + Retry-After at the API); the running one, older than the timeout
// too, is not touched.
TEST_F(RuntimeTest, ARequestQueuedPastTheQueueTimeoutEndsAndTheRunningOneGoesOn) {
  SteppedModel model(*model_);
  RuntimeOptions options = Options(256, 1);
  options.queue_timeout = 200ms;
  Runtime runtime(model, tokenizer_, options);
  StepsAllowed allowed{model};
  Collected running;
  Collected queued;
  ASSERT_NO_FATAL_FAILURE(StartOneRunning(runtime, model, running, 920));
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(921, 6), 20), queued.Callback()).ok());
  std::this_thread::sleep_for(300ms);  // The queued one's timeout passes while no step runs.
  for (int i = 0; i < 4 && !queued.WaitFinal(0s); ++i) {
    model.Allow(1);
    queued.WaitFinal(2s);
  }
  ASSERT_TRUE(queued.WaitFinal(0s));
  EXPECT_EQ(queued.Locked([&] { return queued.num_finals; }), 1);
  EXPECT_EQ(queued.final_delta.error.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(queued.final_delta.error.message(),
              ::testing::HasSubstr("in the queue without starting"));
  EXPECT_TRUE(queued.tokens.empty());
  const size_t tokens_then = running.Locked([&] { return running.tokens.size(); });
  model.Allow(3);
  ASSERT_TRUE(running.WaitTokens(tokens_then + 3));
  EXPECT_EQ(running.Locked([&] { return running.num_finals; }), 0)
      << "the running request must go on";
  runtime.CancelAll(Status(StatusCode::kCancelled, "done"));
  model.Allow(1000);
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(running.final_delta.error.code(), StatusCode::kCancelled);
}

// R6.3: a cancel is taken at every stage, within one step. Queued: the request ends CANCELLED
// without a token and no longer waits; the running one goes on.
TEST_F(RuntimeTest, CancellingAQueuedRequestEndsItWithinAStepWithoutRunningIt) {
  SteppedModel model(*model_);
  Runtime runtime(model, tokenizer_, Options(256, 1));
  StepsAllowed allowed{model};
  Collected running;
  Collected queued;
  ASSERT_NO_FATAL_FAILURE(StartOneRunning(runtime, model, running, 930));
  const Result<int64_t> id = runtime.Submit(Greedy(Prompt(931, 6), 20), queued.Callback());
  ASSERT_TRUE(id.ok());
  runtime.Cancel(*id);
  // The step in flight when the cancel came, then the next one, which reports it.
  model.Allow(2);
  ASSERT_TRUE(queued.WaitFinal(10s)) << "the cancel was not taken within a step";
  EXPECT_EQ(queued.final_delta.error.code(), StatusCode::kCancelled);
  EXPECT_TRUE(queued.tokens.empty());
  EXPECT_EQ(queued.Locked([&] { return queued.num_finals; }), 1);
  const size_t tokens_then = running.Locked([&] { return running.tokens.size(); });
  model.Allow(2);
  ASSERT_TRUE(running.WaitTokens(tokens_then + 2)) << "the running request must go on";
  EXPECT_EQ(runtime.stats().num_waiting, 0);
  runtime.CancelAll(Status(StatusCode::kCancelled, "done"));
  model.Allow(1000);
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(runtime.stats().num_blocks_used, 0);
}

// Mid-prefill (a 60-token prompt in chunks of 8 a step): the chunks' blocks come back and no
// token is generated.
TEST_F(RuntimeTest, CancellingMidPrefillEndsItWithinAStepAndFreesItsBlocks) {
  SteppedModel model(*model_);
  Runtime runtime(model, tokenizer_, Options(256, 1, 8));
  StepsAllowed allowed{model};
  Collected collected;
  const Result<int64_t> id = runtime.Submit(Greedy(Prompt(940, 60), 5), collected.Callback());
  ASSERT_TRUE(id.ok());
  model.Allow(2);  // Two chunks of the prompt.
  ASSERT_TRUE(model.WaitEntered(3));
  EXPECT_GT(runtime.stats().num_blocks_used, 0) << "the first chunks hold blocks";
  EXPECT_TRUE(collected.Locked([&] { return collected.tokens.empty(); }));
  runtime.Cancel(*id);
  model.Allow(1);  // The chunk in flight; the next step reports the cancel without a forward.
  ASSERT_TRUE(collected.WaitFinal(10s)) << "the cancel was not taken within a step";
  EXPECT_EQ(collected.final_delta.error.code(), StatusCode::kCancelled);
  EXPECT_TRUE(collected.tokens.empty());
  model.Allow(1000);
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(runtime.stats().num_blocks_used, 0);
  EXPECT_EQ(runtime.stats().num_running, 0);
  EXPECT_LT(runtime.stats().steps_total, 8) << "the prompt's remaining chunks must not run";
}

TEST_F(RuntimeTest, AFinishedRequestWhoseFinalIsStillOnItsWayIsNotWaiting) {
  // The queue limit counts requests waiting to run; one that has finished is not, even
  // while its final delta waits for the delivery thread.
  Gate gate;
  Collected first;
  Collected running;
  Collected next;
  RuntimeOptions options = Options(256, 2);
  options.max_waiting = 1;
  Runtime runtime(*model_, *backend_, tokenizer_, options);
  GateOpener opener{gate};
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(920, 6), 3), gate.Holding(first.Callback(), true)).ok());
  ASSERT_TRUE(first.WaitTokens(1));
  ASSERT_TRUE(runtime.Submit(Greedy(Prompt(921, 6), 400), running.Callback()).ok());
  ASSERT_TRUE(gate.WaitEntered());
  // The first has finished (its final is being delivered); wait for the second to run.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (runtime.stats().num_running != 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  ASSERT_EQ(runtime.stats().num_running, 1);
  // One runs, one has finished: nothing waits, so one more may.
  const Result<int64_t> accepted = runtime.Submit(Greedy(Prompt(922, 6), 2), next.Callback());
  EXPECT_TRUE(accepted.ok()) << accepted.status().ToString();
  gate.Open();
  runtime.CancelAll(Status(StatusCode::kCancelled, "done"));
  EXPECT_TRUE(runtime.WaitIdle(std::chrono::steady_clock::now() + 60s));
  EXPECT_EQ(first.num_finals, 1);
  EXPECT_EQ(first.tokens.size(), 3u);
  EXPECT_EQ(running.num_finals, 1);
  EXPECT_EQ(next.num_finals, accepted.ok() ? 1 : 0);
}

}  // namespace
}  // namespace inferbox::engine
