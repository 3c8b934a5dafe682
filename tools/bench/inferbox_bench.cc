// inferbox-bench, offline mode: throughput and latency of the engine loop (Runtime) run
// in-process on a backend (--device cpu, cuda), printed beside the memory-bandwidth ceiling
// of decoding measured on that backend's memory.
//
//   inferbox-bench --model DIR [--num-requests 64] [--input-len 128] [--output-len 64]
//       [--concurrency 1] [--tensor-parallel 1] [--json]
//
// Every request is a prompt of random token ids decoded greedily for exactly --output-len
// tokens (EOS ignored). At most --concurrency requests are in flight: a new one is submitted
// as soon as one finishes. Token arrival times are taken in the delta callback, on the
// engine thread, so latencies include the loop's own overhead and nothing outside it (no
// network, no detokenizing). A benchmark, not a test: it exits 1 only when a request fails or
// comes back short, 2 on bad arguments.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <iostream>
#include <limits>
#include <mutex>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include "inferbox/engine/backend/factory.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/parallel/tensor_parallel_model.h"
#include "inferbox/engine/runtime/runtime.h"

namespace {

using namespace inferbox;
using namespace inferbox::engine;
using Clock = std::chrono::steady_clock;

// How long to wait for the loop to publish its final stats once every request has finished.
constexpr std::chrono::seconds kIdleTimeout{60};

struct Options {
  std::filesystem::path model;
  std::string device = "cpu";
  int32_t tensor_parallel = 1;
  int64_t num_requests = 64;
  int64_t input_len = 128;
  int64_t output_len = 64;
  int64_t concurrency = 1;
  int32_t block_size = 16;
  int32_t num_blocks = 0;   // From the shape unless given (see main).
  int64_t max_running = 0;  // The concurrency unless given.
  int64_t token_budget = 512;
  uint32_t seed = 0;
  int64_t warmup = 1;
  bool json = false;
};

// One request's timeline. Written by the submitting thread up to Submit, then by the engine
// thread (the callback) up to the final delta, then read by the submitting thread once the
// request's index has come out of Completions.
struct RequestRecord {
  Clock::time_point submitted;
  std::vector<Clock::time_point> token_arrivals;
  Clock::time_point finished;
  FinishReason finish = FinishReason::kNone;
  Status error;
};

// Indices of finished requests, handed from the engine thread to the submitting thread.
class Completions {
 public:
  void Push(size_t index) {
    {
      std::lock_guard lock(mutex_);
      finished_.push_back(index);
    }
    ready_.notify_one();
  }
  size_t Pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [this] { return !finished_.empty(); });
    const size_t index = finished_.front();
    finished_.pop_front();
    return index;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<size_t> finished_;
};

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int64_t length, int64_t vocab_size) {
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(length));
  for (int32_t& id : prompt) id = token(rng);
  return prompt;
}

RequestOptions GreedyRequest(std::vector<int32_t> prompt, int64_t output_len) {
  RequestOptions request;
  request.prompt = std::move(prompt);
  request.sampling.temperature = 0.0f;
  request.stop.max_tokens = output_len;
  request.stop.ignore_eos = true;
  return request;
}

// Runs every prompt with at most `concurrency` requests in flight, submitting the next one
// as each finishes; fills `records` (one per prompt). Returns once all have finished, or
// with the first Submit error once those already in flight have finished.
Status RunRequests(Runtime& runtime, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records) {
  records.assign(prompts.size(), RequestRecord{});
  Completions completions;
  size_t next = 0;
  int64_t in_flight = 0;
  Status failure;
  while (next < prompts.size() || in_flight > 0) {
    while (failure.ok() && next < prompts.size() && in_flight < concurrency) {
      RequestRecord& record = records[next];
      record.token_arrivals.reserve(static_cast<size_t>(output_len));
      auto callback = [&record, &completions, index = next](Delta&& delta) {
        const Clock::time_point now = Clock::now();
        record.token_arrivals.insert(record.token_arrivals.end(), delta.token_ids.size(), now);
        if (!delta.finished) return;
        record.finished = now;
        record.finish = delta.finish;
        record.error = std::move(delta.error);
        completions.Push(index);
      };
      record.submitted = Clock::now();
      Result<int64_t> id = runtime.Submit(GreedyRequest(prompts[next], output_len), callback);
      if (!id.ok()) {
        failure = id.status();
        break;
      }
      ++next;
      ++in_flight;
    }
    if (in_flight == 0) break;
    completions.Pop();
    --in_flight;
  }
  return failure;
}

// Every request finished by length with exactly output_len tokens; otherwise says which did
// not and why.
Status CheckRecords(const std::vector<RequestRecord>& records, int64_t output_len) {
  for (size_t i = 0; i < records.size(); ++i) {
    const RequestRecord& record = records[i];
    if (!record.error.ok())
      return Status(record.error.code(), fmt::format("request {}: {}", i, record.error.message()));
    if (record.finish != FinishReason::kLength ||
        static_cast<int64_t>(record.token_arrivals.size()) != output_len) {
      return InternalError(fmt::format("request {} ended with {} tokens, expected {}", i,
                                       record.token_arrivals.size(), output_len));
    }
  }
  return Status();
}

struct Percentiles {
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
};

// Linear interpolation between the closest ranks (numpy's default); zeros when empty.
Percentiles Summarize(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const auto at = [&values](double quantile) {
    const double rank = quantile * static_cast<double>(values.size() - 1);
    const size_t below = static_cast<size_t>(rank);
    const size_t above = std::min(below + 1, values.size() - 1);
    const double fraction = rank - static_cast<double>(below);
    return values[below] + fraction * (values[above] - values[below]);
  };
  return {at(0.50), at(0.90), at(0.99)};
}

double Milliseconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

struct Measurement {
  double wall_seconds = 0;
  int64_t num_requests = 0;
  int64_t num_output_tokens = 0;
  Percentiles time_to_first_token_ms;
  Percentiles inter_token_ms;
  Percentiles end_to_end_ms;
  // RuntimeStats differences over the measured run.
  int64_t num_steps = 0;
  StepTimings step_seconds;
  int64_t num_prompt_tokens = 0;
  int64_t num_generated_tokens = 0;
  int64_t num_preemptions = 0;
  int64_t num_prefix_queried_tokens = 0;
  int64_t num_prefix_hit_tokens = 0;
  // The ceiling.
  double weight_bytes_per_step = 0;
  double copy_bandwidth = 0;  // Bytes/s.
  int64_t batch_size = 0;     // Sequences one decode step can carry here.

  double other_seconds() const {
    return wall_seconds - step_seconds.schedule - step_seconds.forward - step_seconds.sample -
           step_seconds.commit;
  }
  double output_tokens_per_second() const {
    return static_cast<double>(num_output_tokens) / wall_seconds;
  }
  double requests_per_second() const { return static_cast<double>(num_requests) / wall_seconds; }
  double single_stream_ceiling() const { return copy_bandwidth / weight_bytes_per_step; }
  double batch_ceiling() const { return static_cast<double>(batch_size) * single_stream_ceiling(); }
};

// `records` passed CheckRecords (every one has its tokens); `before` and `after` bracket them.
Measurement Measure(const std::vector<RequestRecord>& records, const RuntimeStats& before,
                    const RuntimeStats& after) {
  Measurement measurement;
  Clock::time_point first_submit = Clock::time_point::max();
  Clock::time_point last_finish = Clock::time_point::min();
  std::vector<double> first_token, inter_token, end_to_end;
  for (const RequestRecord& record : records) {
    first_submit = std::min(first_submit, record.submitted);
    last_finish = std::max(last_finish, record.finished);
    first_token.push_back(Milliseconds(record.submitted, record.token_arrivals.front()));
    for (size_t i = 1; i < record.token_arrivals.size(); ++i)
      inter_token.push_back(Milliseconds(record.token_arrivals[i - 1], record.token_arrivals[i]));
    end_to_end.push_back(Milliseconds(record.submitted, record.finished));
    measurement.num_output_tokens += static_cast<int64_t>(record.token_arrivals.size());
  }
  measurement.num_requests = static_cast<int64_t>(records.size());
  measurement.wall_seconds = std::chrono::duration<double>(last_finish - first_submit).count();
  measurement.time_to_first_token_ms = Summarize(std::move(first_token));
  measurement.inter_token_ms = Summarize(std::move(inter_token));
  measurement.end_to_end_ms = Summarize(std::move(end_to_end));

  measurement.num_steps = after.steps_total - before.steps_total;
  measurement.step_seconds = {
      after.step_seconds_total.schedule - before.step_seconds_total.schedule,
      after.step_seconds_total.forward - before.step_seconds_total.forward,
      after.step_seconds_total.sample - before.step_seconds_total.sample,
      after.step_seconds_total.commit - before.step_seconds_total.commit};
  measurement.num_prompt_tokens = after.prompt_tokens_total - before.prompt_tokens_total;
  measurement.num_generated_tokens = after.generation_tokens_total - before.generation_tokens_total;
  measurement.num_preemptions = after.preemptions_total - before.preemptions_total;
  measurement.num_prefix_queried_tokens =
      after.prefix_queried_tokens_total - before.prefix_queried_tokens_total;
  measurement.num_prefix_hit_tokens =
      after.prefix_hit_tokens_total - before.prefix_hit_tokens_total;
  return measurement;
}

boost::json::object PercentilesJson(const Percentiles& percentiles) {
  return {{"p50", percentiles.p50}, {"p90", percentiles.p90}, {"p99", percentiles.p99}};
}

void PrintJson(const Options& options, const ModelConfig& config, const Measurement& m) {
  boost::json::object result{
      {"model",
       {{"dir", options.model.string()},
        {"architecture", ArchitectureName(config.architecture)},
        {"num_hidden_layers", config.num_hidden_layers},
        {"hidden_size", config.hidden_size},
        {"vocab_size", config.vocab_size},
        {"dtype", config.torch_dtype}}},
      {"config",
       {{"num_requests", options.num_requests},
        {"warmup", options.warmup},
        {"input_len", options.input_len},
        {"output_len", options.output_len},
        {"concurrency", options.concurrency},
        {"tensor_parallel", options.tensor_parallel},
        {"max_running", options.max_running},
        {"token_budget", options.token_budget},
        {"block_size", options.block_size},
        {"num_blocks", options.num_blocks},
        {"seed", options.seed}}},
      {"wall_seconds", m.wall_seconds},
      {"output_tokens", m.num_output_tokens},
      {"output_tokens_per_second", m.output_tokens_per_second()},
      {"requests_per_second", m.requests_per_second()},
      {"time_to_first_token_ms", PercentilesJson(m.time_to_first_token_ms)},
      {"inter_token_ms", PercentilesJson(m.inter_token_ms)},
      {"end_to_end_ms", PercentilesJson(m.end_to_end_ms)},
      {"steps",
       {{"num_steps", m.num_steps},
        {"prompt_tokens", m.num_prompt_tokens},
        {"generated_tokens", m.num_generated_tokens},
        {"preemptions", m.num_preemptions},
        {"prefix_queried_tokens", m.num_prefix_queried_tokens},
        {"prefix_hit_tokens", m.num_prefix_hit_tokens}}},
      {"step_seconds",
       {{"schedule", m.step_seconds.schedule},
        {"forward", m.step_seconds.forward},
        {"sample", m.step_seconds.sample},
        {"commit", m.step_seconds.commit},
        {"other", m.other_seconds()}}},
      {"bandwidth_ceiling",
       {{"note",
         "decode throughput ceiling from memory bandwidth only (weights read once per "
         "step; KV reads, prefill and compute not counted)"},
        {"weight_bytes_per_decode_step", m.weight_bytes_per_step},
        {"copy_bandwidth_bytes_per_second", m.copy_bandwidth},
        {"decode_step_ms", 1e3 * m.weight_bytes_per_step / m.copy_bandwidth},
        {"single_stream_tokens_per_second", m.single_stream_ceiling()},
        {"batch_size", m.batch_size},
        {"batch_tokens_per_second", m.batch_ceiling()}}}};
  std::cout << boost::json::serialize(result) << std::endl;
}

void PrintTable(const Options& options, const ModelConfig& config, const Measurement& m) {
  fmt::print("inferbox-bench, offline, {} backend{}: {}, {} layers, hidden {}, vocab {}, {}\n",
             options.device,
             options.tensor_parallel > 1
                 ? fmt::format(", tensor parallel over {} ranks", options.tensor_parallel)
                 : "",
             ArchitectureName(config.architecture), config.num_hidden_layers, config.hidden_size,
             config.vocab_size, config.torch_dtype);
  fmt::print(
      "{} requests (+{} warmup) of {} prompt + {} output tokens; concurrency {}, max running {}, "
      "token budget {}, {} blocks of {}\n\n",
      options.num_requests, options.warmup, options.input_len, options.output_len,
      options.concurrency, options.max_running, options.token_budget, options.num_blocks,
      options.block_size);

  fmt::print("throughput\n");
  fmt::print("  {:<30}{:>10.3f} s\n", "wall time", m.wall_seconds);
  fmt::print("  {:<30}{:>10.1f}\n", "output tokens/s", m.output_tokens_per_second());
  fmt::print("  {:<30}{:>10.2f}\n", "requests/s", m.requests_per_second());

  fmt::print("{:<32}{:>10}{:>10}{:>10}\n", "latency, ms", "p50", "p90", "p99");
  const auto latency_row = [](std::string_view name, const Percentiles& p) {
    fmt::print("  {:<30}{:>10.2f}{:>10.2f}{:>10.2f}\n", name, p.p50, p.p90, p.p99);
  };
  latency_row("time to first token", m.time_to_first_token_ms);
  latency_row("inter-token", m.inter_token_ms);
  latency_row("end-to-end", m.end_to_end_ms);

  const double steps = static_cast<double>(std::max<int64_t>(m.num_steps, 1));
  fmt::print("engine\n");
  fmt::print("  {:<30}{:>10} (on average {:.1f} generated + {:.1f} prompt tokens each)\n", "steps",
             m.num_steps, static_cast<double>(m.num_generated_tokens) / steps,
             static_cast<double>(m.num_prompt_tokens) / steps);
  fmt::print("  {:<30}{:>10}\n", "preemptions", m.num_preemptions);
  fmt::print("  {:<30}{:>10} of {} queried prompt tokens\n", "prefix cache hits",
             m.num_prefix_hit_tokens, m.num_prefix_queried_tokens);

  fmt::print("{:<32}{:>10}{:>10}{:>10}\n", "step time", "total s", "ms/step", "of wall");
  const auto step_row = [&](std::string_view name, double seconds) {
    fmt::print("  {:<30}{:>10.3f}{:>10.3f}{:>9.1f}%\n", name, seconds, 1e3 * seconds / steps,
               100.0 * seconds / m.wall_seconds);
  };
  step_row("schedule", m.step_seconds.schedule);
  step_row("forward", m.step_seconds.forward);
  step_row("sample", m.step_seconds.sample);
  step_row("commit", m.step_seconds.commit);
  step_row("other (loop, callbacks, idle)", m.other_seconds());

  fmt::print(
      "ceiling from memory bandwidth only (weights read once per decode step; KV reads, "
      "prefill and compute not counted)\n");
  fmt::print("  {:<30}{:>10.1f} MB\n", "weights read per decode step",
             m.weight_bytes_per_step / 1e6);
  fmt::print("  {:<30}{:>10.1f} GB/s\n", "measured copy bandwidth", m.copy_bandwidth / 1e9);
  fmt::print("  {:<30}{:>10.3f} ms\n", "decode step at least",
             1e3 * m.weight_bytes_per_step / m.copy_bandwidth);
  fmt::print("  {:<30}{:>10.1f} tokens/s\n", "1 stream at most", m.single_stream_ceiling());
  fmt::print("  {:<30}{:>10.1f} tokens/s (measured: {:.1f}% of it)\n",
             fmt::format("batch of {} at most", m.batch_size), m.batch_ceiling(),
             100.0 * m.output_tokens_per_second() / m.batch_ceiling());
}

// The model on one backend, or split over --tensor-parallel ranks (CPU: threads).
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<TensorParallelModel> parallel_model;

  ModelRunner& runner() {
    return parallel_model ? static_cast<ModelRunner&>(*parallel_model) : *model;
  }
  Backend& front_backend() { return parallel_model ? parallel_model->backend(0) : *backend; }
  int64_t WeightBytesPerDecodeStep() const {
    return parallel_model ? parallel_model->WeightBytesPerDecodeStep()
                          : model->WeightBytesPerDecodeStep();
  }
};

// Exit status 2 with the message for a device or split that cannot be, 1 when loading fails.
int Load(const Options& options, LoadedModel& loaded) {
  if (options.tensor_parallel > 1) {
    if (options.device != "cpu") {
      fmt::print(stderr,
                 "inferbox-bench: --tensor-parallel {} needs --device cpu (the NCCL communicator "
                 "for GPUs is not built yet)\n",
                 options.tensor_parallel);
      return 2;
    }
    auto model =
        TensorParallelModel::Load(options.model, MakeLocalCommunicators(options.tensor_parallel),
                                  [&options](int32_t) { return MakeBackend(options.device); });
    if (!model.ok()) {
      fmt::print(stderr, "inferbox-bench: {}\n", model.status().ToString());
      return model.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
    loaded.parallel_model = std::move(model).value();
    return 0;
  }
  auto made = MakeBackend(options.device);
  if (!made.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", made.status().ToString());
    return 2;
  }
  loaded.backend = std::move(made).value();
  auto model = Model::Load(options.model, *loaded.backend);
  if (!model.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", model.status().ToString());
    return 1;
  }
  loaded.model = std::move(model).value();
  return 0;
}

int Run(const Options& options) {
  LoadedModel loaded;
  if (const int failed = Load(options, loaded); failed != 0) return failed;
  const ModelConfig& config = loaded.runner().config();
  // Each length is at least 1; compared one at a time so that neither sum can overflow.
  if (options.input_len > config.max_position_embeddings ||
      options.output_len > config.max_position_embeddings - options.input_len) {
    fmt::print(stderr,
               "inferbox-bench: {} prompt + {} output tokens do not fit the model's context of "
               "{}\n",
               options.input_len, options.output_len, config.max_position_embeddings);
    return 2;
  }
  const int64_t context = options.input_len + options.output_len;
  if (int64_t{options.num_blocks} * options.block_size < context) {
    fmt::print(stderr, "inferbox-bench: {} blocks of {} cannot hold one request of {} tokens\n",
               options.num_blocks, options.block_size, context);
    return 2;
  }

  std::mt19937 rng(options.seed);
  std::vector<std::vector<int32_t>> prompts, warmup_prompts;
  for (int64_t i = 0; i < options.num_requests; ++i)
    prompts.push_back(RandomPrompt(rng, options.input_len, config.vocab_size));
  for (int64_t i = 0; i < options.warmup; ++i)
    warmup_prompts.push_back(RandomPrompt(rng, options.input_len, config.vocab_size));

  RuntimeOptions runtime_options;
  runtime_options.num_blocks = options.num_blocks;
  runtime_options.block_size = options.block_size;
  runtime_options.limits = {options.max_running, options.token_budget,
                            config.max_position_embeddings};
  runtime_options.max_waiting = std::max<int64_t>(1024, options.concurrency);

  // Declared before the runtime: callbacks write records until the runtime is gone.
  std::vector<RequestRecord> warmup_records, records;
  RuntimeStats before, after;
  Status status;
  {
    Runtime runtime(loaded.runner(), nullptr, runtime_options);
    status = RunRequests(runtime, warmup_prompts, options.output_len, options.concurrency,
                         warmup_records);
    if (status.ok()) status = CheckRecords(warmup_records, options.output_len);
    if (status.ok()) {
      // Once idle the loop has published the warmup's steps: `before` includes them.
      runtime.WaitIdle(Clock::now() + kIdleTimeout);
      before = runtime.stats();
      status = RunRequests(runtime, prompts, options.output_len, options.concurrency, records);
    }
    if (status.ok()) status = CheckRecords(records, options.output_len);
    runtime.WaitIdle(Clock::now() + kIdleTimeout);
    after = runtime.stats();
  }
  if (!status.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", status.ToString());
    return 1;
  }

  Measurement measurement = Measure(records, before, after);
  // Measured after the run, so its gigabyte of buffers does not disturb it.
  // Past one rank on the CPU, the ranks share this memory: the weights of every rank count.
  measurement.copy_bandwidth = loaded.front_backend().MeasureCopyBandwidth();
  measurement.weight_bytes_per_step = static_cast<double>(loaded.WeightBytesPerDecodeStep());
  measurement.batch_size = std::min(
      {options.concurrency, options.max_running, options.num_requests, options.token_budget});
  if (options.json) {
    PrintJson(options, config, measurement);
  } else {
    PrintTable(options, config, measurement);
  }
  return 0;
}

// CLI11's PositiveNumber names the whole double range in its message; this names the bound.
CLI::Validator AtLeast(int64_t minimum) {
  return CLI::Validator(
      [minimum](std::string& input) -> std::string {
        int64_t value = 0;
        const auto [end, error] = std::from_chars(input.data(), input.data() + input.size(), value);
        if (error != std::errc() || end != input.data() + input.size() || value < minimum)
          return fmt::format("{} is not a whole number of at least {}", input, minimum);
        return "";
      },
      "");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Offline benchmark of the inferbox engine loop in-process (CPU or CUDA): throughput, "
      "latency and step-time breakdown beside the memory-bandwidth ceiling"};
  Options options;
  app.add_option("--model", options.model, "Model folder (Hugging Face layout)")->required();
  app.add_option("--device", options.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--tensor-parallel", options.tensor_parallel,
                 "Ranks the model is split over (CPU: threads, each with its share of the cores)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--num-requests", options.num_requests, "Measured requests")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--input-len", options.input_len, "Prompt tokens per request (random ids)")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--output-len", options.output_len, "Tokens generated per request")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--concurrency", options.concurrency, "Requests in flight at once, at most")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--block-size", options.block_size, "KV cache block size, in tokens")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--num-blocks", options.num_blocks,
                 "KV cache blocks (default: min(concurrency, max running) requests' worth, "
                 "plus a quarter)")
      ->check(AtLeast(1));
  app.add_option("--max-running", options.max_running,
                 "Sequences holding KV at once (default: the concurrency)")
      ->check(AtLeast(1));
  app.add_option("--token-budget", options.token_budget, "Tokens fed to the model per step")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed of the random prompts")->capture_default_str();
  app.add_option("--warmup", options.warmup, "Requests run first and not measured")
      ->check(AtLeast(0))
      ->capture_default_str();
  app.add_flag("--json", options.json, "Print one JSON object instead of the table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    // --help exits 0; anything else is a bad argument.
    return app.exit(error) == 0 ? 0 : 2;
  }

  if (app.count("--max-running") == 0) options.max_running = options.concurrency;
  if (app.count("--num-blocks") == 0) {
    // Computed in double: absurd lengths or concurrencies must not overflow on the way.
    const double blocks_per_request = std::ceil(
        (static_cast<double>(options.input_len) + static_cast<double>(options.output_len)) /
        options.block_size);
    const double holding_kv =
        static_cast<double>(std::min(options.concurrency, options.max_running));
    const double num_blocks = std::floor(holding_kv * blocks_per_request * 1.25) + 1;
    if (num_blocks > std::numeric_limits<int32_t>::max()) {
      fmt::print(stderr, "inferbox-bench: {:.0f} KV blocks are too many; give --num-blocks\n",
                 num_blocks);
      return 2;
    }
    options.num_blocks = static_cast<int32_t>(num_blocks);
  }
  return Run(options);
}
