// inferbox-loop-bench: what the engine loop costs on the host, beside the floor of a model
// step that takes a fixed time. On a GPU the step is the device's; everything the engine
// thread does outside it (scheduling, sampling, detokenizing, handing out deltas) leaves the
// GPU idle, and at many streams that is where a daemon loses to in-process.
//
//   inferbox-loop-bench --model DIR [--streams 256] [--output-len 256] [--step-ms 19]
//
// The model folder gives the tokenizer (the server detokenizes every token) and the shapes
// of a KV cache; its forward pass is replaced by a wait of --step-ms (sleeping: the host's
// cores are free meanwhile, as while a GPU runs the step) and logits that pick varied
// tokens. Each stream is one greedy request of 8 prompt tokens and --output-len new ones.
// Two ways of taking the output are run, one after the other:
//   - callbacks only: the callback records the tokens (inferbox-bench in-process);
//   - a handler woken per delta: one thread per stream waits on a DeltaQueue, as the engine
//     server's synchronous gRPC handlers did before they wrote each chunk (its Generate is
//     a callback reactor now, written from the delivery thread: the whole engine server is
//     measured by tools/bench/daemon-path-bench).
// Per way: output tokens/s, that as a share of the floor (streams / step time: no host time
// at all), the engine thread's milliseconds per step outside the model, and steps; timed
// from the first request's submission to the last one's end, so the first steps' ramp-up
// (requests still being submitted) is in it, as in a real run's. Exits 1
// when a stream did not receive all its tokens, 2 on bad arguments.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "bench/bench_report.h"
#include "bench/delta_queue.h"
#include "bench/fixed_time_model.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/runtime/runtime.h"

namespace {

using namespace inferbox;
using namespace inferbox::engine;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// The prompts use the tokens the model picks: ordinary ids of any real vocabulary.
constexpr int64_t kFirstToken = bench::FixedTimeModel::kFirstToken;
constexpr int64_t kTokenRange = bench::FixedTimeModel::kTokenRange;
constexpr int64_t kPromptLength = 8;
using bench::FixedTimeModel;

struct Options {
  std::string model;
  int64_t streams = 256;
  int64_t output_len = 256;
  double step_ms = 19.0;
};

struct WayResult {
  double wall_seconds = 0;
  int64_t tokens = 0;
  bench::EngineSummary engine;  // Steps and the step's phases over the run.
  bool complete = false;
};

// Runs every stream to its end and returns what it measured.
WayResult RunWay(ModelRunner& model, const Tokenizer& tokenizer, const Options& options,
                 bool handlers) {
  RuntimeOptions runtime_options;
  runtime_options.block_size = 16;
  const int64_t max_len = kPromptLength + options.output_len;
  runtime_options.num_blocks = static_cast<int32_t>(options.streams * (max_len / 16 + 2));
  runtime_options.limits = {options.streams, std::max<int64_t>(2048, options.streams), max_len};
  runtime_options.max_waiting = options.streams;
  // The callbacks' counters outlive the runtime.
  std::atomic<int64_t> received{0};
  std::atomic<int64_t> finished{0};
  Runtime runtime(model, &tokenizer, runtime_options);
  const RuntimeStats before = runtime.stats();

  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int64_t stream = 0; stream < options.streams; ++stream) {
    RequestOptions request;
    for (int64_t t = 0; t < kPromptLength; ++t)
      request.prompt.push_back(static_cast<int32_t>(kFirstToken + (stream * 31 + t) % kTokenRange));
    request.sampling.temperature = 0.0f;
    request.stop.max_tokens = options.output_len;
    request.stop.ignore_eos = true;
    auto queue = handlers ? std::make_shared<bench::DeltaQueue>() : nullptr;
    DeltaCallback callback;
    if (handlers) {
      callback = bench::DeltaQueue::Callback(queue);
    } else {
      callback = [&](Delta&& delta) {
        received += static_cast<int64_t>(delta.token_ids.size());
        if (delta.finished) ++finished;
      };
    }
    if (Result<int64_t> id = runtime.Submit(std::move(request), std::move(callback)); !id.ok()) {
      std::fprintf(stderr, "inferbox-loop-bench: %s\n", id.status().ToString().c_str());
      break;
    }
    if (handlers) {
      threads.emplace_back([&received, &finished, queue] {
        for (;;) {
          std::optional<Delta> delta = queue->Take(50ms);
          if (!delta) continue;
          received += static_cast<int64_t>(delta->token_ids.size());
          if (delta->finished) {
            ++finished;
            return;
          }
        }
      });
    }
  }
  for (std::thread& thread : threads) thread.join();
  const bool idle = runtime.WaitIdle(Clock::now() + 600s);
  WayResult result;
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.engine = bench::DiffStats(before, runtime.stats());
  result.tokens = received.load();
  result.complete = idle && finished.load() == options.streams &&
                    result.tokens == options.streams * options.output_len;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"The engine loop's host time per step beside a model step of fixed time"};
  app.add_option("--model", options.model, "A model folder (its tokenizer and KV shapes)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--streams", options.streams, "Requests in flight")->check(CLI::Range(1, 4096));
  app.add_option("--output-len", options.output_len, "New tokens per request")
      ->check(CLI::Range(1, 100000));
  app.add_option("--step-ms", options.step_ms, "The model step's time, milliseconds")
      ->check(CLI::Range(0.0, 10000.0));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  std::unique_ptr<Backend> backend = MakeCpuBackend();
  auto shapes = Model::Load(options.model, *backend);
  if (!shapes.ok()) {
    std::fprintf(stderr, "inferbox-loop-bench: %s\n", shapes.status().ToString().c_str());
    return 2;
  }
  auto tokenizer = Tokenizer::LoadFromDirectory(options.model);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "inferbox-loop-bench: %s\n", tokenizer.status().ToString().c_str());
    return 2;
  }
  FixedTimeModel model(**shapes, bench::Milliseconds(options.step_ms));

  const double floor =
      options.step_ms > 0 ? static_cast<double>(options.streams) / (options.step_ms / 1e3) : 0.0;
  fmt::print(
      "inferbox-loop-bench: {} streams x {} output tokens, a model step of {:.2f} ms "
      "(slept: the host is free meanwhile); {} hardware threads\n\n",
      options.streams, options.output_len, options.step_ms, std::thread::hardware_concurrency());
  fmt::print(
      "| output taken by | output tok/s | of the floor | engine thread outside the "
      "model, ms/step | schedule | sample | commit | loop (text, deltas) | steps "
      "|\n|---|---|---|---|---|---|---|---|---|\n");
  fmt::print("| floor: no host time | {:.0f} | 100% | 0 | | | | | {} |\n", floor,
             options.output_len);
  bool complete = true;
  for (const bool handlers : {false, true}) {
    const WayResult result = RunWay(model, **tokenizer, options, handlers);
    complete = complete && result.complete;
    const double tokens_per_second = static_cast<double>(result.tokens) / result.wall_seconds;
    const std::string share =
        floor > 0 ? fmt::format("{:.1f}%", 100.0 * tokens_per_second / floor) : "-";
    // Per step: outside the model, then its parts: the step's own (EngineCore) and the
    // loop's (detokenizing, handing out deltas).
    const StepTimings& step = result.engine.step_seconds;
    const double per_step =
        1e3 / static_cast<double>(std::max<int64_t>(result.engine.num_steps, 1));
    const double host = result.wall_seconds - step.forward;
    const double loop = host - step.schedule - step.sample - step.commit;
    fmt::print("| {} | {:.0f} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {} |\n",
               handlers ? "a handler thread woken per delta (a thread per stream)"
                        : "callbacks only (in-process)",
               tokens_per_second, share, per_step * host, per_step * step.schedule,
               per_step * step.sample, per_step * step.commit, per_step * loop,
               result.engine.num_steps);
  }
  if (!complete) {
    std::fprintf(stderr, "inferbox-loop-bench: a stream did not receive all its tokens\n");
    return 1;
  }
  return 0;
}
