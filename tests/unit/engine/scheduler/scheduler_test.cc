// The scheduler against a simulated engine: a fake KV cache stores each token id in the slot
// its block table names, and the fake model's next token is a hash of everything it reads
// back through the block table. A wrong block table, a stale prefix-cache hit or a lost
// token therefore changes the output, which must equal what each request gives alone.
#include "inferbox/engine/scheduler/scheduler.h"

#include <map>
#include <random>

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

class SimulatedEngine {
 public:
  SimulatedEngine(int32_t num_blocks, int32_t block_size, SchedulerLimits limits)
      : blocks_(num_blocks, block_size),
        scheduler_(blocks_, limits),
        slots_(static_cast<size_t>(num_blocks * block_size), -1) {}

  Status Add(int64_t id, std::vector<int32_t> prompt, int64_t max_new_tokens,
             Lane lane = Lane::kInteractive) {
    auto sequence = std::make_unique<Sequence>();
    sequence->id = id;
    sequence->lane = lane;
    sequence->tokens = std::move(prompt);
    sequence->max_new_tokens = max_new_tokens;
    return scheduler_.Add(std::move(sequence));
  }

  // Runs one step; returns the work it did.
  std::vector<ScheduledWork> Step() {
    auto work = scheduler_.Schedule();
    for (auto& cancelled : scheduler_.TakeCancelled()) cancelled_.push_back(cancelled->id);
    std::vector<int32_t> sampled;
    for (const ScheduledWork& item : work) {
      const Sequence& sequence = *item.sequence;
      const int32_t block_size = blocks_.block_size();
      auto slot = [&](int64_t position) {
        return static_cast<size_t>(
            sequence.kv.block_table.at(static_cast<size_t>(position / block_size)) * block_size +
            position % block_size);
      };
      // Write the fed tokens' "KV", then read back the whole prefix through the table.
      for (int64_t p = item.start; p < item.start + item.num_tokens; ++p) {
        slots_[slot(p)] = sequence.tokens[static_cast<size_t>(p)];
      }
      if (!item.samples) continue;
      uint64_t hash = 1469598103934665603ull;
      for (int64_t p = 0; p < item.start + item.num_tokens; ++p) {
        hash = (hash ^ static_cast<uint64_t>(slots_[slot(p)] + 7)) * 1099511628211ull;
      }
      sampled.push_back(static_cast<int32_t>(hash % 1000));
    }
    auto finished =
        scheduler_.Commit(work, sampled, [](const Sequence& s) { return s.tokens.back() == 0; });
    for (auto& sequence : finished) {
      outputs_[sequence->id] = std::vector<int32_t>(
          sequence->tokens.begin() + sequence->num_prompt_tokens, sequence->tokens.end());
    }
    return work;
  }

  void RunToCompletion(int max_steps = 100000) {
    for (int step = 0;
         step < max_steps && (scheduler_.num_running() > 0 || scheduler_.num_waiting() > 0);
         ++step) {
      Step();
    }
    ASSERT_EQ(scheduler_.num_running() + scheduler_.num_waiting(), 0) << "requests never finished";
  }

  BlockManager blocks_;
  Scheduler scheduler_;
  std::vector<int32_t> slots_;
  std::map<int64_t, std::vector<int32_t>> outputs_;
  std::vector<int64_t> cancelled_;
};

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length,
                                  const std::vector<int32_t>& prefix = {}) {
  std::vector<int32_t> prompt = prefix;
  std::uniform_int_distribution<int32_t> token(1, 999);
  while (static_cast<int>(prompt.size()) < length) prompt.push_back(token(rng));
  return prompt;
}

// What a request gives when it has the engine to itself.
std::vector<int32_t> Alone(const std::vector<int32_t>& prompt, int64_t max_new_tokens) {
  SimulatedEngine engine(256, 4, {1, 1 << 20, 1 << 20});
  EXPECT_TRUE(engine.Add(1, prompt, max_new_tokens).ok());
  engine.RunToCompletion();
  return engine.outputs_[1];
}

struct Request {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens;
};

void ExpectSameAsAlone(SimulatedEngine& engine, const std::vector<Request>& requests) {
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(
        engine.Add(static_cast<int64_t>(i), requests[i].prompt, requests[i].max_new_tokens).ok());
  }
  engine.RunToCompletion();
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(engine.outputs_[static_cast<int64_t>(i)],
              Alone(requests[i].prompt, requests[i].max_new_tokens))
        << "request " << i << " differs from its output alone";
  }
  EXPECT_EQ(engine.blocks_.num_free_blocks(), engine.blocks_.num_blocks()) << "blocks leaked";
}

TEST(Scheduler, SixtyFourConcurrentRequestsGiveTheirOutputsAlone) {
  std::mt19937 rng(1);
  std::vector<Request> requests;
  for (int i = 0; i < 64; ++i) requests.push_back({RandomPrompt(rng, 1 + i % 37), 1 + i % 23});
  SimulatedEngine engine(512, 4, {64, 96, 4096});
  ExpectSameAsAlone(engine, requests);
}

TEST(Scheduler, PreemptedRequestsFinishWithTheirOutputsAlone) {
  std::mt19937 rng(2);
  std::vector<Request> requests;
  for (int i = 0; i < 12; ++i) requests.push_back({RandomPrompt(rng, 6 + i), 14});
  SimulatedEngine engine(16, 4, {12, 64, 4096});  // Far fewer blocks than 12 requests want.
  ExpectSameAsAlone(engine, requests);
  EXPECT_GT(engine.scheduler_.num_preemptions(), 0)
      << "the KV budget should have forced preemption";
}

TEST(Scheduler, SharedPrefixesHitTheCacheWithoutChangingOutputs) {
  std::mt19937 rng(3);
  const auto system_prompt = RandomPrompt(rng, 16);
  std::vector<Request> requests;
  for (int i = 0; i < 10; ++i)
    requests.push_back({RandomPrompt(rng, 16 + 1 + i, system_prompt), 5});
  SimulatedEngine engine(128, 4, {2, 64, 4096});  // Two at a time, so later ones find the prefix.
  ExpectSameAsAlone(engine, requests);
  EXPECT_GE(engine.blocks_.num_prefix_hit_tokens(), 16 * 8)
      << "most requests should reuse the system prompt";
}

TEST(Scheduler, ALongPromptNeverStallsRunningDecodes) {
  std::mt19937 rng(4);
  SimulatedEngine engine(256, 4, {8, 16, 4096});
  ASSERT_TRUE(engine.Add(1, RandomPrompt(rng, 3), 50).ok());
  engine.Step();  // Prefills the short request.
  ASSERT_TRUE(engine.Add(2, RandomPrompt(rng, 200), 5).ok());
  for (int step = 0; step < 12; ++step) {
    const auto work = engine.Step();
    const bool decoded = std::any_of(work.begin(), work.end(), [](const ScheduledWork& w) {
      return w.sequence->id == 1 && w.num_tokens == 1;
    });
    EXPECT_TRUE(decoded) << "step " << step << ": the running stream got no token";
    int64_t fed = 0;
    for (const auto& w : work) fed += w.num_tokens;
    EXPECT_LE(fed, 16) << "the token budget was exceeded";
  }
}

TEST(Scheduler, InteractiveRequestsGoBeforeQueuedBatchWork) {
  std::mt19937 rng(5);
  SimulatedEngine engine(256, 4, {2, 64, 4096});
  for (int i = 0; i < 6; ++i)
    ASSERT_TRUE(engine.Add(100 + i, RandomPrompt(rng, 8), 30, Lane::kBatch).ok());
  engine.Step();  // Two batch requests run; four wait.
  ASSERT_TRUE(engine.Add(1, RandomPrompt(rng, 8), 3, Lane::kInteractive).ok());
  // The interactive request is admitted as soon as a slot frees, before the waiting batch.
  for (int step = 0; step < 200 && !engine.outputs_.count(1); ++step) engine.Step();
  ASSERT_TRUE(engine.outputs_.count(1));
  for (int i = 2; i < 6; ++i) {
    EXPECT_FALSE(engine.outputs_.count(100 + i))
        << "batch request " << 100 + i << " finished before the interactive one";
  }
}

TEST(Scheduler, CancelFreesBlocksAtTheNextStep) {
  std::mt19937 rng(6);
  SimulatedEngine engine(64, 4, {8, 64, 4096});
  const int32_t free_at_start = engine.blocks_.num_free_blocks();
  ASSERT_TRUE(engine.Add(1, RandomPrompt(rng, 20), 100).ok());
  ASSERT_TRUE(engine.Add(2, RandomPrompt(rng, 20), 100).ok());
  engine.Step();
  engine.Step();
  EXPECT_LT(engine.blocks_.num_free_blocks(), free_at_start);
  EXPECT_TRUE(engine.scheduler_.Cancel(1));
  EXPECT_TRUE(engine.scheduler_.Cancel(2));
  EXPECT_FALSE(engine.scheduler_.Cancel(99));
  engine.Step();
  EXPECT_EQ(engine.cancelled_, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(engine.blocks_.num_free_blocks(), free_at_start);
  EXPECT_EQ(engine.scheduler_.num_running(), 0);
}

TEST(Scheduler, RequestsThatCanNeverFitAreRefusedClearly) {
  SimulatedEngine engine(8, 4, {8, 64, 64});
  const Status too_long = engine.Add(1, std::vector<int32_t>(60, 1), 10);
  EXPECT_EQ(too_long.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("exceed the model's context of 64"), std::string::npos)
      << too_long.message();
  EXPECT_EQ(too_long.reason(), error_reason::kPromptTooLong);
  const Status too_big = engine.Add(2, std::vector<int32_t>(30, 1), 10);
  EXPECT_NE(too_big.message().find("the cache has 8"), std::string::npos) << too_big.message();
  EXPECT_EQ(too_big.reason(), error_reason::kPromptTooLong)
      << "a prompt the KV cache cannot hold is too long for this box, to the client";
  const Status empty = engine.Add(3, {}, 1);
  EXPECT_EQ(empty.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.reason(), "");
}

}  // namespace
}  // namespace inferbox::engine
