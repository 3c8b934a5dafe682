// The real inferbox-engine process on a tiny model, driven over its unix socket the way
// inferboxd drives it: streamed generation, health, stats, drain, SIGTERM, cancellation by
// the client or its deadline, bad requests, and a model folder that cannot load.
#include <sys/stat.h>

#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace wire = ::inferbox::engine::v1;
namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

// Which engine executable runs, in what environment.
struct EngineBinary {
  std::string path = INFERBOX_ENGINE_PATH;
  std::vector<std::string> env;
  bool fixed_kv_cache = true;  // --kv-cache-gib 0.25 rather than sized from device memory.
};

class EngineProcess {
 public:
  EngineProcess(const std::filesystem::path& model, const std::filesystem::path& dir,
                std::vector<std::string> extra_args = {}, const EngineBinary& binary = {})
      : socket_(dir / "engine.sock") {
    std::vector<std::string> argv = {binary.path,      "--model",    model.string(), "--socket",
                                     socket_.string(), "--model-id", "tiny"};
    if (binary.fixed_kv_cache) argv.insert(argv.end(), {"--kv-cache-gib", "0.25"});
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    process_ = std::make_unique<Subprocess>(SubprocessOptions{argv,
                                                              binary.env,
                                                              {"JOURNAL_STREAM", "NOTIFY_SOCKET"},
                                                              dir / "engine.out",
                                                              dir / "engine.err"});
  }

  // Waits until Health says READY.
  ::testing::AssertionResult WaitReady() {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto exited = process_->WaitForExit(0ms)) {
        return ::testing::AssertionFailure()
               << "the engine exited with " << *exited << ": " << process_->ReadStderr();
      }
      if (std::filesystem::exists(socket_)) {
        wire::HealthResponse health;
        if (Health(health).ok() && health.health() == wire::ENGINE_HEALTH_READY)
          return ::testing::AssertionSuccess();
      }
      std::this_thread::sleep_for(50ms);
    }
    return ::testing::AssertionFailure() << "not READY in 60 s: " << process_->ReadStderr();
  }

  wire::Engine::Stub& stub() {
    if (!stub_) {
      stub_ = wire::Engine::NewStub(
          grpc::CreateChannel("unix:" + socket_.string(), grpc::InsecureChannelCredentials()));
    }
    return *stub_;
  }

  grpc::Status Health(wire::HealthResponse& response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 2s);
    return stub().Health(&context, wire::HealthRequest(), &response);
  }

  wire::StatsResponse Stats() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    wire::StatsResponse response;
    EXPECT_TRUE(stub().Stats(&context, wire::StatsRequest(), &response).ok());
    return response;
  }

  // Polls Stats until nothing runs, waits or holds KV blocks.
  ::testing::AssertionResult WaitEmpty() {
    wire::StatsResponse stats;
    for (int i = 0; i < 200; ++i) {
      stats = Stats();
      if (stats.num_requests_running() == 0 && stats.num_requests_waiting() == 0 &&
          stats.num_kv_blocks_used() == 0) {
        return ::testing::AssertionSuccess();
      }
      std::this_thread::sleep_for(50ms);
    }
    return ::testing::AssertionFailure() << "still busy: " << stats.ShortDebugString();
  }

  const std::filesystem::path& socket() const { return socket_; }
  Subprocess& process() { return *process_; }

 private:
  std::filesystem::path socket_;
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<wire::Engine::Stub> stub_;
};

// Everything one Generate call streamed.
struct Streamed {
  std::vector<api::GenerateChunk> chunks;
  std::vector<uint32_t> tokens;
  std::string text;
  grpc::Status status;
  const api::GenerateChunk& last() const { return chunks.back(); }
};

Streamed Generate(wire::Engine::Stub& stub, const wire::GenerateRequest& request,
                  std::chrono::milliseconds deadline = 120s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub.Generate(&context, request);
  Streamed streamed;
  wire::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    streamed.tokens.insert(streamed.tokens.end(), chunk.chunk().token_ids().begin(),
                           chunk.chunk().token_ids().end());
    streamed.text += chunk.chunk().text();
    streamed.chunks.push_back(chunk.chunk());
  }
  streamed.status = reader->Finish();
  return streamed;
}

wire::GenerateRequest Completion(const std::string& text, uint32_t max_tokens) {
  wire::GenerateRequest request;
  request.set_request_id("engine-test");
  api::GenerateRequest& completion = *request.mutable_completion();
  completion.set_model("tiny");
  completion.set_text(text);
  completion.mutable_sampling()->set_temperature(0.0f);
  completion.mutable_stop()->set_max_tokens(max_tokens);
  completion.mutable_stop()->set_ignore_eos(true);
  return request;
}

class EngineProcessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "11"},
                  scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(model() / "config.json")) << "no tiny model";
  }
  static std::filesystem::path model() { return scratch_->path() / "model"; }

  static TempDir* scratch_;
  TempDir dir_;
};

TempDir* EngineProcessTest::scratch_ = nullptr;

TEST_F(EngineProcessTest, StreamsAGenerationAndReportsUsage) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  struct stat info {};
  ASSERT_EQ(stat(engine.socket().c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u) << "the socket is for the daemon's user only";

  const std::string prompt =
      "The capital of France is Paris, and the capital of Italy is Rome. Both cities are old, "
      "crowded in summer, and full of museums that take days to see. The capital of Spain is";
  const Streamed first = Generate(engine.stub(), Completion(prompt, 24));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_GT(first.chunks.size(), 1u) << "tokens should stream as they are produced";
  EXPECT_EQ(first.tokens.size(), 24u);
  for (const auto& chunk : first.chunks) {
    EXPECT_EQ(chunk.request_id(), "engine-test");
    EXPECT_EQ(chunk.model(), "tiny");
  }
  EXPECT_EQ(first.last().finish_reason(), api::FINISH_REASON_LENGTH);
  EXPECT_EQ(first.last().usage().completion_tokens(), 24u);
  EXPECT_GT(first.last().usage().prompt_tokens(), 32u);
  EXPECT_GE(first.last().usage().total_seconds(),
            first.last().usage().time_to_first_token_seconds());

  // Greedy is deterministic, and the second run's prompt comes from the prefix cache.
  const Streamed second = Generate(engine.stub(), Completion(prompt, 24));
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(second.text, first.text);

  // A prompt given as token ids.
  wire::GenerateRequest by_ids = Completion("", 24);
  by_ids.mutable_completion()->clear_text();
  for (const uint32_t id : {785u, 6722u, 315u, 9625u, 374u})
    by_ids.mutable_completion()->mutable_token_ids()->add_ids(id);
  const Streamed ids = Generate(engine.stub(), by_ids);
  ASSERT_TRUE(ids.status.ok()) << ids.status.error_message();
  EXPECT_EQ(ids.tokens.size(), 24u);

  wire::HealthResponse health;
  ASSERT_TRUE(engine.Health(health).ok());
  EXPECT_EQ(health.health(), wire::ENGINE_HEALTH_READY);
  EXPECT_EQ(health.model(), "tiny");
  EXPECT_GT(health.steps_completed(), 24u);
  EXPECT_GT(health.max_model_len(), 0u);

  const wire::StatsResponse stats = engine.Stats();
  EXPECT_EQ(stats.generation_tokens_total(), 72u);
  EXPECT_EQ(stats.num_kv_blocks_used(), 0u);
  EXPECT_EQ(stats.kv_block_size(), 16u);
  EXPECT_GT(stats.num_kv_blocks_total(), 0u);
  EXPECT_EQ(first.last().usage().cached_prompt_tokens(), 0u);
  const uint32_t full_blocks = first.last().usage().prompt_tokens() / 16;
  EXPECT_EQ(second.last().usage().cached_prompt_tokens(),
            16 * (first.last().usage().prompt_tokens() % 16 == 0 ? full_blocks - 1 : full_blocks))
      << "the second run reuses the first one's full prompt blocks";
  EXPECT_EQ(stats.prefix_cache_hit_tokens_total(), second.last().usage().cached_prompt_tokens());
}

TEST_F(EngineProcessTest, TheEngineIsTheOomKillersChoiceBeforeTheDaemon) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  std::ifstream score("/proc/" + std::to_string(engine.process().pid()) + "/oom_score_adj");
  int adj = 0;
  ASSERT_TRUE(score >> adj);
  EXPECT_EQ(adj, 500) << "an engine (restartable, its requests failed clearly) should be killed "
                         "before the daemon that holds every connection";
}

TEST_F(EngineProcessTest, ChatRendersTheTemplateAndHonoursStopStrings) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  wire::GenerateRequest request;
  api::ChatRequest& chat = *request.mutable_chat();
  chat.set_model("tiny");
  api::ChatMessage& message = *chat.add_messages();
  message.set_role("user");
  message.set_content("Hi there");
  chat.mutable_sampling()->set_temperature(0.0f);
  chat.mutable_stop()->set_max_tokens(40);
  chat.mutable_stop()->set_ignore_eos(true);
  chat.mutable_logprobs()->set_enabled(true);
  chat.mutable_logprobs()->set_top_logprobs(2);
  const Streamed plain = Generate(engine.stub(), request);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  ASSERT_EQ(plain.tokens.size(), 40u);
  // "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n" is more than 5 tokens.
  EXPECT_GT(plain.last().usage().prompt_tokens(), 8u);
  size_t logprobs = 0;
  for (const auto& chunk : plain.chunks) {
    ASSERT_EQ(static_cast<size_t>(chunk.logprobs_size()),
              static_cast<size_t>(chunk.token_ids_size()));
    for (const auto& entry : chunk.logprobs()) {
      EXPECT_EQ(entry.top_logprobs_size(), 2);
      EXPECT_LE(entry.logprob(), 0.0f);
      ++logprobs;
    }
  }
  EXPECT_EQ(logprobs, 40u);

  // Stop at a piece of the text from the middle of the output.
  const std::string& text = plain.text;
  size_t begin = text.size() / 2;
  while (begin < text.size() && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) ++begin;
  size_t end = begin + 2;
  while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
  ASSERT_LT(end, text.size()) << text;
  const std::string stop = text.substr(begin, end - begin);
  chat.mutable_stop()->add_stop(stop);
  const Streamed stopped = Generate(engine.stub(), request);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.last().finish_reason(), api::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.last().matched_stop(), stop);
  EXPECT_EQ(stopped.text, text.substr(0, text.find(stop)));
  EXPECT_TRUE(engine.WaitEmpty());
}

TEST_F(EngineProcessTest, BadRequestsGetClearErrorsAndChangeNothing) {
  EngineProcess engine(model(), dir_.path(), {"--max-model-len", "64"});
  ASSERT_TRUE(engine.WaitReady());
  auto expect_invalid = [&](const wire::GenerateRequest& request, const std::string& words) {
    const Streamed streamed = Generate(engine.stub(), request);
    EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << streamed.status.error_message();
    EXPECT_NE(streamed.status.error_message().find(words), std::string::npos)
        << streamed.status.error_message();
    EXPECT_TRUE(streamed.chunks.empty());
    return FromGrpcStatus(streamed.status).reason();
  };
  expect_invalid(Completion("", 4), "prompt is empty");
  std::string long_prompt;
  for (int i = 0; i < 80; ++i) long_prompt += " word";
  EXPECT_EQ(expect_invalid(Completion(long_prompt, 4), "context"), error_reason::kPromptTooLong)
      << "the daemon maps the reason, not the words, to context_length_exceeded";
  wire::GenerateRequest bad_id = Completion("", 4);
  bad_id.mutable_completion()->mutable_token_ids()->add_ids(10'000'000);
  expect_invalid(bad_id, "vocabulary");
  wire::GenerateRequest bad_temperature = Completion("hello", 4);
  bad_temperature.mutable_completion()->mutable_sampling()->set_temperature(-1.0f);
  expect_invalid(bad_temperature, "temperature");
  wire::GenerateRequest many_stops = Completion("hello", 4);
  for (int i = 0; i < 17; ++i) many_stops.mutable_completion()->mutable_stop()->add_stop("x");
  expect_invalid(many_stops, "at most 16");
  wire::GenerateRequest bad_role;
  bad_role.mutable_chat()->add_messages()->set_role("wizard");
  expect_invalid(bad_role, "wizard");
  expect_invalid(wire::GenerateRequest(), "give completion or chat");

  // max_tokens beyond the context is clamped to it, not refused.
  const Streamed clamped = Generate(engine.stub(), Completion("hello", 1000));
  ASSERT_TRUE(clamped.status.ok()) << clamped.status.error_message();
  EXPECT_EQ(clamped.tokens.size() + clamped.last().usage().prompt_tokens(), 64u);
  EXPECT_EQ(clamped.last().finish_reason(), api::FINISH_REASON_LENGTH);
  EXPECT_EQ(engine.Stats().prompt_tokens_total(), clamped.last().usage().prompt_tokens());
}

TEST_F(EngineProcessTest, ClientCancelAndDeadlineFreeTheRequest) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  {
    grpc::ClientContext context;
    auto reader = engine.stub().Generate(&context, Completion("tell me a long story", 3000));
    wire::GenerateChunk chunk;
    int chunks = 0;
    while (chunks < 3 && reader->Read(&chunk)) ++chunks;
    ASSERT_EQ(chunks, 3);
    EXPECT_EQ(engine.Stats().num_requests_running(), 1u);
    EXPECT_GT(engine.Stats().num_kv_blocks_used(), 0u);
    context.TryCancel();
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(engine.WaitEmpty()) << "a cancelled request must free its KV blocks";
  EXPECT_LT(engine.Stats().generation_tokens_total(), 3000u);

  const Streamed late = Generate(engine.stub(), Completion("tell me a long story", 3000), 400ms);
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(engine.WaitEmpty()) << "a request past its deadline must free its KV blocks";
}

// Many streams at once, some cancelled by their clients mid-stream and some past their
// deadline: each one left alone gets its whole answer (every token once, in order: the same
// as the prompt alone gives), each cancelled one ends CANCELLED or DEADLINE_EXCEEDED, and the
// engine is left empty and serving. Generate is a reactor written from the runtime's delivery
// thread, its deltas merged while a write is in flight: a lost, doubled or reordered delta,
// or a call finished twice, shows here.
TEST_F(EngineProcessTest, ManyStreamsAtOnceEachGetTheirWholeAnswerWhileOthersAreCancelled) {
  EngineProcess engine(model(), dir_.path(), {"--max-running", "64"});
  ASSERT_TRUE(engine.WaitReady());
  constexpr int kStreams = 36;
  constexpr uint32_t kTokens = 40;
  const auto prompt = [](int stream) { return "stream " + std::to_string(stream % 4) + " says"; };
  // Each prompt's answer alone.
  std::vector<std::vector<uint32_t>> alone;
  for (int p = 0; p < 4; ++p) {
    const Streamed answer = Generate(engine.stub(), Completion(prompt(p), kTokens));
    ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
    ASSERT_EQ(answer.tokens.size(), kTokens);
    alone.push_back(answer.tokens);
  }

  {
    // A client that reads only once its whole answer (chunks of 20 alternatives each, ~100 KB)
    // was generated gets every token and its logprobs once. (Whether deltas pile up during a
    // write, and go out merged, depends on timing: gRPC completes writes before the client
    // reads. Unloaded, this run merges about a quarter of them.)
    wire::GenerateRequest request = Completion(prompt(0), 300);
    request.mutable_completion()->mutable_logprobs()->set_enabled(true);
    request.mutable_completion()->mutable_logprobs()->set_top_logprobs(20);
    const uint64_t before = engine.Stats().generation_tokens_total();
    grpc::ClientContext context;
    auto reader = engine.stub().Generate(&context, request);
    // Reads only once the engine has generated all of it.
    for (int wait = 0; wait < 1200 && engine.Stats().generation_tokens_total() < before + 300;
         ++wait) {
      std::this_thread::sleep_for(50ms);
    }
    Streamed late;
    wire::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
      late.tokens.insert(late.tokens.end(), chunk.chunk().token_ids().begin(),
                         chunk.chunk().token_ids().end());
      late.chunks.push_back(chunk.chunk());
    }
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_EQ(late.tokens.size(), 300u) << "every token once";
    EXPECT_TRUE(std::equal(alone[0].begin(), alone[0].end(), late.tokens.begin())) << "in order";
    size_t logprobs = 0;
    for (const api::GenerateChunk& merged : late.chunks) {
      EXPECT_EQ(merged.logprobs_size(), merged.token_ids_size());
      logprobs += static_cast<size_t>(merged.logprobs_size());
    }
    EXPECT_EQ(logprobs, 300u);
  }

  std::vector<Streamed> results(kStreams);
  std::vector<std::thread> clients;
  for (int stream = 0; stream < kStreams; ++stream) {
    clients.emplace_back([&, stream] {
      // Those to be cancelled ask for far more than they get before they are.
      const bool whole = stream % 3 == 0 || (stream % 3 == 2 && stream % 2 == 1);
      const wire::GenerateRequest request = Completion(prompt(stream), whole ? kTokens : 3000);
      if (stream % 3 == 1) {
        // Cancelled by its client after two chunks.
        grpc::ClientContext context;
        auto reader = engine.stub().Generate(&context, request);
        wire::GenerateChunk chunk;
        for (int read = 0; read < 2 && reader->Read(&chunk); ++read) {
        }
        context.TryCancel();
        while (reader->Read(&chunk)) {
        }
        results[static_cast<size_t>(stream)].status = reader->Finish();
      } else if (stream % 3 == 2 && stream % 2 == 0) {
        // Past its deadline long before its last token.
        results[static_cast<size_t>(stream)] = Generate(engine.stub(), request, 30ms);
      } else {
        results[static_cast<size_t>(stream)] = Generate(engine.stub(), request);
      }
    });
  }
  for (std::thread& client : clients) client.join();
  int whole = 0;
  for (int stream = 0; stream < kStreams; ++stream) {
    const Streamed& result = results[static_cast<size_t>(stream)];
    if (stream % 3 == 1) {
      EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED) << "stream " << stream;
    } else if (stream % 3 == 2 && stream % 2 == 0) {
      EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
          << "stream " << stream;
    } else {
      ++whole;
      ASSERT_TRUE(result.status.ok())
          << "stream " << stream << ": " << result.status.error_message();
      EXPECT_EQ(result.tokens, alone[static_cast<size_t>(stream % 4)]) << "stream " << stream;
      EXPECT_EQ(result.last().usage().completion_tokens(), kTokens) << "stream " << stream;
      EXPECT_EQ(result.chunks.front().request_id(), "engine-test");
    }
  }
  EXPECT_GE(whole, kStreams / 2);
  EXPECT_TRUE(engine.WaitEmpty()) << "cancelled requests must free their KV blocks";
  const Streamed after = Generate(engine.stub(), Completion(prompt(0), kTokens));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, alone[0]);
  EXPECT_FALSE(engine.process().WaitForExit(0ms).has_value()) << "the engine must still run";
}

TEST_F(EngineProcessTest, DrainFinishesInFlightWorkThenRefusesNewWork) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  Streamed in_flight;
  std::thread client([&] { in_flight = Generate(engine.stub(), Completion("drain me", 48)); });
  while (engine.Stats().generation_tokens_total() == 0) std::this_thread::sleep_for(5ms);

  grpc::ClientContext context;
  wire::DrainRequest drain;
  drain.set_timeout_seconds(60);
  wire::DrainResponse drained;
  ASSERT_TRUE(engine.stub().Drain(&context, drain, &drained).ok());
  client.join();
  EXPECT_EQ(drained.num_requests_aborted(), 0u);
  ASSERT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  EXPECT_EQ(in_flight.tokens.size(), 48u) << "the drain let the request finish";

  const Streamed refused = Generate(engine.stub(), Completion("too late", 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  wire::HealthResponse health;
  ASSERT_TRUE(engine.Health(health).ok());
  EXPECT_EQ(health.health(), wire::ENGINE_HEALTH_DRAINING);
}

// A request the runtime has finished may still be writing its last chunks to a reader that is
// behind (flow control holds them): the drain waits for its call to end too, within its
// timeout, since the engine is stopped once the drain returns (before: the drain returned as
// the runtime went idle, and the stop cut the answer off).
TEST_F(EngineProcessTest, DrainWaitsForAFinishedAnswerStillBeingWrittenToASlowReader) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  // As many tokens as the tiny model's context holds (~500), 20 alternatives each: ~150 KB of
  // chunks, over a channel whose flow-control window is 4 KiB (no growing it by BDP probes).
  wire::GenerateRequest request = Completion("slow reader", 2000);
  request.mutable_completion()->mutable_logprobs()->set_enabled(true);
  request.mutable_completion()->mutable_logprobs()->set_top_logprobs(20);
  grpc::ChannelArguments narrow;
  narrow.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
  narrow.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  const auto stub = wire::Engine::NewStub(grpc::CreateCustomChannel(
      "unix:" + engine.socket().string(), grpc::InsecureChannelCredentials(), narrow));
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, request);
  wire::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk)) << reader->Finish().error_message();
  // The runtime finishes the request while the client reads nothing more.
  const auto in_flight = [&engine] {
    wire::HealthResponse health;
    return engine.Health(health).ok() ? health.requests_in_flight() : 1u;
  };
  for (int i = 0; i < 3000 && in_flight() != 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(in_flight(), 0u) << "the runtime did not finish";

  std::atomic<bool> drained{false};
  std::thread drain([&] {
    grpc::ClientContext drain_context;
    wire::DrainRequest drain_request;
    drain_request.set_timeout_seconds(60);
    wire::DrainResponse response;
    EXPECT_TRUE(engine.stub().Drain(&drain_context, drain_request, &response).ok());
    drained = true;
    engine.process().Signal(SIGTERM);  // What the supervisor does once the drain returns.
  });
  std::this_thread::sleep_for(1s);
  EXPECT_FALSE(drained) << "the drain returned while the answer was still being written";
  uint32_t tokens = chunk.chunk().token_ids_size();
  while (reader->Read(&chunk)) tokens += chunk.chunk().token_ids_size();
  const grpc::Status status = reader->Finish();
  drain.join();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(tokens, 400u);
  EXPECT_EQ(tokens, chunk.chunk().usage().completion_tokens()) << "the whole answer arrived";
  EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(0));
}

TEST_F(EngineProcessTest, DrainTimeoutAbortsWhatIsLeftWithUnavailable) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  Streamed in_flight;
  std::thread client([&] { in_flight = Generate(engine.stub(), Completion("long", 3000)); });
  while (engine.Stats().generation_tokens_total() == 0) std::this_thread::sleep_for(5ms);
  grpc::ClientContext context;
  wire::DrainRequest drain;
  drain.set_timeout_seconds(0.2);
  wire::DrainResponse drained;
  ASSERT_TRUE(engine.stub().Drain(&context, drain, &drained).ok());
  client.join();
  EXPECT_EQ(drained.num_requests_aborted(), 1u);
  EXPECT_EQ(in_flight.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(in_flight.status.error_message().find("drain"), std::string::npos);
  EXPECT_TRUE(engine.WaitEmpty());
}

TEST_F(EngineProcessTest, SigtermDrainsThenExitsZero) {
  EngineProcess engine(model(), dir_.path());
  ASSERT_TRUE(engine.WaitReady());
  Streamed in_flight;
  std::thread client([&] { in_flight = Generate(engine.stub(), Completion("finish me", 40)); });
  while (engine.Stats().generation_tokens_total() == 0) std::this_thread::sleep_for(5ms);
  engine.process().Signal(SIGTERM);
  client.join();
  ASSERT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  EXPECT_EQ(in_flight.tokens.size(), 40u);
  EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(0))
      << engine.process().ReadStderr();
  EXPECT_FALSE(std::filesystem::exists(engine.socket())) << "the socket is removed at exit";
}

TEST_F(EngineProcessTest, AModelThatCannotLoadExitsWithItsReason) {
  {
    EngineProcess engine(dir_.path() / "no-such-model", dir_.path());
    EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(78));
    const std::string err = engine.process().ReadStderr();
    EXPECT_NE(err.find("no-such-model"), std::string::npos) << err;
    EXPECT_FALSE(std::filesystem::exists(engine.socket()));
  }
  {
    // Tensor parallelism over more GPUs than any machine has: refused before loading, saying
    // what is missing (NCCL, a CUDA device, or CUDA in this build).
    EngineProcess engine(model(), dir_.path(), {"--device", "cuda", "--tensor-parallel", "64"});
    EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(78));
    EXPECT_NE(engine.process().ReadStderr().find("--tensor-parallel 64 on --device cuda"),
              std::string::npos)
        << engine.process().ReadStderr();
  }
  // A device that is not there (no machine has 100 GPUs) or not a device at all.
  for (const char* device : {"cuda:99", "tpu"}) {
    EngineProcess engine(model(), dir_.path(), {"--device", device});
    EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(78)) << device;
    EXPECT_NE(engine.process().ReadStderr().find(std::string("--device ") + device),
              std::string::npos)
        << engine.process().ReadStderr();
  }
  {
    // A broken config.json is named, with the key.
    TempDir broken;
    std::filesystem::copy(model(), broken.path() / "model");
    std::filesystem::remove(broken.path() / "model" / "config.json");
    { std::ofstream(broken.path() / "model" / "config.json") << "{\"architectures\": [\"Gpt5\"]}"; }
    EngineProcess engine(broken.path() / "model", dir_.path());
    EXPECT_EQ(engine.process().WaitForExit(30s), std::optional<int>(78));
    EXPECT_NE(engine.process().ReadStderr().find("config.json"), std::string::npos)
        << engine.process().ReadStderr();
  }
}

// --device cuda on the CPU emulation of CUDA (tests/support/cuda_emu), whose device memory
// INFERBOX_CUDA_EMU_MEMORY_MIB sets: without --kv-cache-gib the KV cache takes what the
// weights and a warm-up step left, within --gpu-memory-fraction (more memory, more blocks); a
// --kv-cache-gib that does not fit is refused; greedy tokens are the CPU engine's.
TEST_F(EngineProcessTest, OnACudaDeviceTheKvCacheTakesTheMemoryLeftAfterTheWeights) {
  auto emulated = [](int mib) {
    return EngineBinary{INFERBOX_ENGINE_CUDA_EMU_PATH,
                        {"INFERBOX_CUDA_EMU_MEMORY_MIB=" + std::to_string(mib)},
                        false};
  };
  // The tiny model's weights, the emulated cuBLASLt workspace and the warm-up step (logits of
  // 256 rows of a 151,669-token vocabulary) take about 220 MiB; 256 sequences of 512 tokens
  // would take 64 MiB of cache, more than 272 or 304 MiB of device memory leave.
  const std::vector<std::string> args = {"--device", "cuda", "--max-running", "256"};
  const wire::GenerateRequest request =
      Completion("The capital of France is Paris, and the capital of Spain is", 16);

  Streamed on_cpu;
  {
    EngineProcess cpu(model(), dir_.path());
    ASSERT_TRUE(cpu.WaitReady());
    on_cpu = Generate(cpu.stub(), request);
    ASSERT_TRUE(on_cpu.status.ok()) << on_cpu.status.error_message();
  }
  std::map<int, uint64_t> blocks;
  for (const int mib : {272, 304}) {
    TempDir dir;
    EngineProcess engine(model(), dir.path(), args, emulated(mib));
    ASSERT_TRUE(engine.WaitReady()) << mib << " MiB";
    const std::string log = engine.process().ReadStderr();
    EXPECT_NE(log.find("free after weights and a"), std::string::npos) << log;
    EXPECT_NE(log.find("KV cache on cuda:"), std::string::npos) << log;
    blocks[mib] = engine.Stats().num_kv_blocks_total();
    const Streamed on_device = Generate(engine.stub(), request);
    ASSERT_TRUE(on_device.status.ok()) << on_device.status.error_message();
    EXPECT_EQ(on_device.tokens, on_cpu.tokens) << mib << " MiB";
    EXPECT_EQ(on_device.text, on_cpu.text) << mib << " MiB";
  }
  // 32 MiB more device memory, 90 % of it for the cache: thousands more blocks of 16 tokens
  // (8 KiB each for the tiny model).
  EXPECT_GT(blocks[272], 0u);
  EXPECT_GT(blocks[304], blocks[272] + 2000) << blocks[272] << " then " << blocks[304];

  TempDir dir;
  std::vector<std::string> too_much = args;
  too_much.insert(too_much.end(), {"--kv-cache-gib", "1"});
  EngineProcess engine(model(), dir.path(), too_much, emulated(304));
  EXPECT_EQ(engine.process().WaitForExit(60s), std::optional<int>(78));
  EXPECT_NE(engine.process().ReadStderr().find("--kv-cache-gib 1 does not fit"), std::string::npos)
      << engine.process().ReadStderr();
}

// A device fault (injected into the CUDA emulation once the engine serves: the next kernel
// fails and the context is lost, as after an illegal address on a GPU): the engine stops at
// once with the failing call and CUDA's reason, for its supervisor to restart it, and the
// request in flight ends with an error rather than hanging or streaming garbage.
TEST_F(EngineProcessTest, ADeviceFaultStopsTheEngineWithTheCudaReason) {
  const std::filesystem::path fault = dir_.path() / "fault";
  EngineProcess engine(model(), dir_.path(), {"--device", "cuda", "--max-running", "16"},
                       EngineBinary{INFERBOX_ENGINE_CUDA_EMU_PATH,
                                    {"INFERBOX_CUDA_EMU_MEMORY_MIB=256",
                                     "INFERBOX_CUDA_EMU_FAULT_FILE=" + fault.string()},
                                    false});
  ASSERT_TRUE(engine.WaitReady());
  { std::ofstream(fault) << "now"; }
  const Streamed streamed =
      Generate(engine.stub(), Completion("The capital of France is", 16), 60s);
  EXPECT_FALSE(streamed.status.ok());
  EXPECT_NE(streamed.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << "the request hung instead of failing";
  EXPECT_TRUE(streamed.tokens.empty()) << "tokens streamed from a faulted device";
  const std::optional<int> exit = engine.process().WaitForExit(30s);
  ASSERT_TRUE(exit.has_value()) << "the engine still runs after a device fault";
  EXPECT_NE(*exit, 0);
  const std::string err = engine.process().ReadStderr();
  EXPECT_NE(err.find("fatal CUDA error"), std::string::npos) << err;
  EXPECT_NE(err.find("unspecified launch failure"), std::string::npos) << err;
  EXPECT_NE(err.find("supervisor restarts it"), std::string::npos) << err;
}

}  // namespace
}  // namespace inferbox::testing
