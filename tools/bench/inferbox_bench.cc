// inferbox-bench: throughput and latency of the inferbox engine, in-process on a backend
// (--device cpu, cuda) or through an OpenAI-compatible server (--url: the daemon's HTTP path)
// or inferboxd's gRPC API (--grpc),
// printed beside the memory-bandwidth floor of decoding measured on the backend's memory.
//
//   inferbox-bench --model DIR [--num-requests 64] [--input-len 128] [--output-len 64]
//       [--concurrency 1] [--tensor-parallel 1] [--json]                  (offline run)
//   inferbox-bench --model DIR --ttft 1024,4096,8192 [--peak-tflops 989]   (time to first token)
//   inferbox-bench --model DIR --url http://127.0.0.1:8080 [--served-model NAME] ...
//   inferbox-bench --model DIR --grpc 127.0.0.1:7070 [--served-model NAME] ...
//
// Every request is a prompt of random token ids decoded for exactly --output-len tokens (EOS
// ignored): greedily, or sampled at --temperature. At most --concurrency requests are in flight: a
// new one is submitted as soon as one finishes. With --ttft, each prompt length runs on its own,
// one request at a time, for one output token, and the prefill's model FLOPs over its time give the
// MFU. A benchmark, not a test: it exits 1 only when loading fails or a request fails or comes back
// short, 2 on bad arguments. docs/performance.md says what each number means.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "bench/bench_options.h"
#include "bench/bench_report.h"
#include "bench/fixed_time_model.h"
#include "bench/grpc_stream_runner.h"
#include "bench/in_process_runner.h"
#include "bench/openai_stream_runner.h"
#include "bench/prefill_flops.h"
#include "bench/request_record.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/grpc_process.h"
#include "inferbox/engine/model/model_config.h"
#include "inferbox/engine/runtime/runtime.h"

namespace {

using namespace inferbox;
using namespace inferbox::engine;
using namespace inferbox::engine::bench;

// How long to wait for the loop to publish its final stats once every request has finished.
constexpr std::chrono::seconds kIdleTimeout{60};
// KV-cache blocks sized by default on a GPU leave this share of its memory free for the
// step's activations (as the engine's --gpu-memory-fraction 0.9 does).
constexpr double kGpuMemoryKeptBack = 0.1;

// How the flows reach the requests: a runner, and (in-process) the engine's counters once
// the loop is idle.
struct RequestPath {
  RequestRunner run;
  std::function<std::optional<RuntimeStats>()> idle_stats;
};

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int64_t length, int64_t vocab_size) {
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(length));
  for (int32_t& id : prompt) id = token(rng);
  return prompt;
}

std::vector<std::vector<int32_t>> RandomPrompts(std::mt19937& rng, int64_t count, int64_t length,
                                                int64_t vocab_size) {
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < count; ++i) prompts.push_back(RandomPrompt(rng, length, vocab_size));
  return prompts;
}

// Runs `prompts` and checks that each came back whole.
Status RunChecked(RequestPath& path, const std::vector<std::vector<int32_t>>& prompts,
                  int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records) {
  Status status = path.run(prompts, output_len, concurrency, records);
  if (status.ok()) status = CheckRecords(records, output_len);
  return status;
}

// The ids random prompts are drawn below.
int64_t PromptVocab(const Options& options, const ModelConfig& config) {
  return options.prompt_vocab > 0 ? std::min(options.prompt_vocab, config.vocab_size)
                                  : config.vocab_size;
}

Result<OfflineResult> MeasureOffline(const Options& options, const ModelConfig& config,
                                     RequestPath& path) {
  std::mt19937 rng(options.seed);
  const int64_t vocab = PromptVocab(options, config);
  const auto prompts = RandomPrompts(rng, options.num_requests, options.input_len, vocab);
  const auto warmup = RandomPrompts(rng, options.warmup, options.input_len, vocab);
  std::vector<RequestRecord> records;
  if (Status status = RunChecked(path, warmup, options.output_len, options.concurrency, records);
      !status.ok()) {
    return status;
  }
  // Once idle, the loop has published the warmup's steps: `before` includes them.
  const std::optional<RuntimeStats> before = path.idle_stats();
  if (Status status = RunChecked(path, prompts, options.output_len, options.concurrency, records);
      !status.ok()) {
    return status;
  }
  const std::optional<RuntimeStats> after = path.idle_stats();
  OfflineResult result;
  result.latency = SummarizeRecords(records);
  if (before && after) result.engine = DiffStats(*before, *after);
  return result;
}

Result<TtftResult> MeasureTtft(const Options& options, const ModelConfig& config,
                               RequestPath& path) {
  std::mt19937 rng(options.seed);
  const int64_t vocab = PromptVocab(options, config);
  TtftResult result;
  for (const int64_t length : options.ttft_lengths) {
    std::vector<RequestRecord> records;
    const auto warmup = RandomPrompts(rng, options.warmup, length, vocab);
    if (Status status = RunChecked(path, warmup, 1, 1, records); !status.ok()) return status;
    const std::optional<RuntimeStats> before = path.idle_stats();
    const auto prompts = RandomPrompts(rng, options.ttft_repeats, length, vocab);
    if (Status status = RunChecked(path, prompts, 1, 1, records); !status.ok()) return status;
    const std::optional<RuntimeStats> after = path.idle_stats();

    TtftPoint point;
    point.input_len = length;
    point.flops = CountPrefillFlops(config, length);
    for (const RequestRecord& record : records)
      point.ttft_ms.push_back(Milliseconds(record.submitted, record.arrivals.front()));
    if (before && after) {
      point.forward_ms = 1e3 *
                         (after->step_seconds_total.forward - before->step_seconds_total.forward) /
                         static_cast<double>(options.ttft_repeats);
    }
    result.points.push_back(std::move(point));
  }
  return result;
}

// Exit status 2 with a message when a request cannot fit the model's context.
int CheckLengths(const Options& options, const ModelConfig& config) {
  const auto fits = [&config](int64_t input_len, int64_t output_len) {
    // Each length is at least 1; compared one at a time so that neither sum can overflow.
    return input_len <= config.max_position_embeddings &&
           output_len <= config.max_position_embeddings - input_len;
  };
  if (options.ttft()) {
    for (const int64_t length : options.ttft_lengths) {
      if (fits(length, 1)) continue;
      fmt::print(stderr,
                 "inferbox-bench: a {}-token prompt and its first token do not fit the model's "
                 "context of {}\n",
                 length, config.max_position_embeddings);
      return 2;
    }
    return 0;
  }
  if (!fits(options.input_len, options.output_len)) {
    fmt::print(stderr,
               "inferbox-bench: {} prompt + {} output tokens do not fit the model's context of "
               "{}\n",
               options.input_len, options.output_len, config.max_position_embeddings);
    return 2;
  }
  return 0;
}

// Tokens one request holds at its longest (in double: before CheckLengths, absurd lengths
// must not overflow), and how many requests hold KV at once.
double LongestRequest(const Options& options) {
  if (!options.ttft())
    return static_cast<double>(options.input_len) + static_cast<double>(options.output_len);
  return static_cast<double>(
             *std::max_element(options.ttft_lengths.begin(), options.ttft_lengths.end())) +
         1;
}
int64_t RequestsHoldingKv(const Options& options) {
  return options.ttft() ? 1 : std::min(options.concurrency, options.max_running);
}

void Print(const Options& options, const ModelConfig& config, const OfflineResult& result) {
  options.json ? PrintOfflineJson(options, config, result)
               : PrintOfflineTable(options, config, result);
}
void Print(const Options& options, const ModelConfig& config, const TtftResult& result) {
  options.json ? PrintTtftJson(options, config, result) : PrintTtftTable(options, config, result);
}

template <typename T>
int PrintOrFail(const Options& options, const ModelConfig& config, const Result<T>& result) {
  if (!result.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", result.status().ToString());
    return 1;
  }
  Print(options, config, *result);
  return 0;
}

// Through a server: --url (the OpenAI API) or --grpc (inferboxd's own).
int RunOverServerPath(const Options& options) {
  auto text = ReadFile(options.model / "config.json");
  if (!text.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", text.status().ToString());
    return 1;
  }
  auto config = ParseModelConfig(*text);
  if (!config.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", config.status().ToString());
    return 1;
  }
  if (const int bad = CheckLengths(options, *config); bad != 0) return bad;
  const OpenAiEndpoint http{options.url, options.api_key, options.served_model,
                            options.temperature};
  const GrpcEndpoint grpc{options.grpc, options.api_key, options.served_model, options.temperature};
  RequestPath path{[&](const std::vector<std::vector<int32_t>>& prompts, int64_t output_len,
                       int64_t concurrency, std::vector<RequestRecord>& records) {
                     if (options.over_grpc())
                       return RunOverGrpc(grpc, prompts, output_len, concurrency, records);
                     return RunOverHttp(http, prompts, output_len, concurrency, records);
                   },
                   [] { return std::optional<RuntimeStats>(); }};
  if (options.ttft()) return PrintOrFail(options, *config, MeasureTtft(options, *config, path));
  Result<OfflineResult> result = MeasureOffline(options, *config, path);
  if (result.ok()) result->num_gpus = options.num_gpus;
  return PrintOrFail(options, *config, result);
}

int RunInProcessPath(Options options, bool num_blocks_given) {
  auto loaded = LoadModel(options.model, options.device, options.tensor_parallel,
                          options.fp8 ? Quantization::kFp8 : Quantization::kNone,
                          options.kv_fp8 ? KvCacheDType::kFp8E4M3 : KvCacheDType::kAuto);
  if (!loaded.ok()) {
    fmt::print(stderr, "inferbox-bench: {}\n", loaded.status().ToString());
    return loaded.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::optional<FixedTimeModel> fixed;
  if (options.fixed_step()) {
    fixed.emplace(loaded->runner(), Milliseconds(options.fixed_step_ms),
                  Milliseconds(options.fixed_step_ms_per_token));
  }
  ModelRunner& runner = fixed ? static_cast<ModelRunner&>(*fixed) : loaded->runner();
  const ModelConfig& config = runner.config();
  if (const int bad = CheckLengths(options, config); bad != 0) return bad;

  // On a GPU, the default KV cache is no larger than its free memory allows.
  const std::optional<DeviceMemory> memory = loaded->front_backend().device_memory();
  if (!num_blocks_given && memory) {
    const double usable = static_cast<double>(memory->free_bytes) -
                          kGpuMemoryKeptBack * static_cast<double>(memory->total_bytes);
    const double fit = std::max(
        0.0, usable / static_cast<double>(runner.KvCacheBytesPerBlock(options.block_size)));
    if (fit < options.num_blocks) {
      options.num_blocks = static_cast<int32_t>(fit);
      options.num_blocks_capped = true;
    }
  }
  const auto longest = static_cast<int64_t>(LongestRequest(options));
  if (int64_t{options.num_blocks} * options.block_size < longest) {
    fmt::print(stderr, "inferbox-bench: {} blocks of {} cannot hold one request of {} tokens{}\n",
               options.num_blocks, options.block_size, longest,
               options.num_blocks_capped ? " (all the GPU's free memory holds)" : "");
    return 2;
  }

  RuntimeOptions runtime_options;
  runtime_options.num_blocks = options.num_blocks;
  runtime_options.block_size = options.block_size;
  runtime_options.limits = {options.max_running, options.token_budget,
                            config.max_position_embeddings};
  runtime_options.max_waiting = std::max<int64_t>(1024, options.concurrency);

  std::optional<Result<OfflineResult>> offline;
  std::optional<Result<TtftResult>> ttft;
  {
    Runtime runtime(runner, nullptr, runtime_options);
    RequestPath path{[&runtime, temperature = options.temperature](
                         const std::vector<std::vector<int32_t>>& prompts, int64_t output_len,
                         int64_t concurrency, std::vector<RequestRecord>& records) {
                       return RunInProcess(runtime, prompts, output_len, concurrency, records,
                                           temperature);
                     },
                     [&runtime] {
                       runtime.WaitIdle(Clock::now() + kIdleTimeout);
                       return std::optional<RuntimeStats>(runtime.stats());
                     }};
    if (options.ttft()) {
      ttft = MeasureTtft(options, config, path);
    } else {
      offline = MeasureOffline(options, config, path);
    }
    runtime.WaitIdle(Clock::now() + kIdleTimeout);
  }
  if (ttft) return PrintOrFail(options, config, *ttft);
  if (offline->ok() && !fixed) {
    OfflineResult& result = **offline;
    // Measured after the run, once the KV cache is freed, so that its buffers fit and it does
    // not disturb the run.
    BandwidthFloor floor;
    floor.copy_bandwidth = loaded->front_backend().MeasureCopyBandwidth();
    floor.weight_bytes_per_step = static_cast<double>(loaded->WeightBytesPerDecodeStep());
    floor.batch_size = std::min(
        {options.concurrency, options.max_running, options.num_requests, options.token_budget});
    result.floor = floor;
    result.num_gpus = options.num_gpus > 0 ? options.num_gpus
                      : memory             ? options.tensor_parallel
                                           : 0;
  }
  return PrintOrFail(options, config, *offline);
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
  inferbox::DisableMutexDeadlockDetection();  // As inferboxd's: the gRPC path's client.
  CLI::App app{
      "Benchmark of the inferbox engine, in-process (CPU or CUDA) or through an OpenAI-compatible "
      "server: throughput, latency and step-time breakdown beside the memory-bandwidth floor, or "
      "time to first token and prefill MFU (--ttft)"};
  Options options;
  app.add_option("--model", options.model,
                 "Model folder (Hugging Face layout); with --url or --grpc only its config.json "
                 "is read")
      ->required();
  app.add_option("--device", options.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--tensor-parallel", options.tensor_parallel,
                 "Ranks the model is split over (CPU: threads, each with its share of the cores)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--quantization", options.fp8,
                 "The linear layers' weights: none (as the model file has them) or fp8 (FP8 "
                 "E4M3, as inferbox-engine --quantization fp8)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, bool>{{"none", false}, {"fp8", true}}, CLI::ignore_case))
      ->default_str("none");
  app.add_option("--kv-cache-dtype", options.kv_fp8,
                 "The KV cache: auto (the backend's precision) or fp8 (E4M3 with a scale per "
                 "token and KV head, as inferbox-engine --kv-cache-dtype fp8)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, bool>{{"auto", false}, {"fp8", true}}, CLI::ignore_case))
      ->default_str("auto");
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
  app.add_option("--temperature", options.temperature,
                 "0: greedy (default); else every request sampled at this temperature (seeded "
                 "by its index), as clients that leave it unset are (the model's default)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--block-size", options.block_size, "KV cache block size, in tokens")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--num-blocks", options.num_blocks,
                 "KV cache blocks (default: min(concurrency, max running) requests' worth, "
                 "plus a quarter; on a GPU no more than 90% of its memory holds)")
      ->check(AtLeast(1));
  app.add_option("--max-running", options.max_running,
                 "Sequences holding KV at once (default: the concurrency)")
      ->check(AtLeast(1));
  app.add_option("--token-budget", options.token_budget, "Tokens fed to the model per step")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed of the random prompts")->capture_default_str();
  app.add_option("--prompt-vocab", options.prompt_vocab,
                 "Draw the prompts' token ids below this (default: the model's vocabulary; "
                 "inferbox-engine-fixed-step's vocabulary ends at 800)")
      ->check(AtLeast(1));
  app.add_option("--warmup", options.warmup,
                 "Requests run first and not measured (with --ttft: before each length)")
      ->check(AtLeast(0))
      ->capture_default_str();
  app.add_option("--ttft", options.ttft_lengths,
                 "Measure time to first token and prefill MFU for these prompt lengths instead "
                 "(comma-separated, e.g. 1024,4096,8192)")
      ->delimiter(',')
      ->check(AtLeast(1));
  app.add_option("--ttft-repeats", options.ttft_repeats, "Requests measured per --ttft length")
      ->check(AtLeast(1))
      ->capture_default_str();
  app.add_option("--peak-tflops", options.peak_tflops,
                 "Peak TFLOP/s the prefill MFU is taken against (989: H100 SXM, dense BF16)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  CLI::Option* url = app.add_option(
      "--url", options.url,
      "Send the requests to this OpenAI-compatible server (http://host:port) as streamed "
      "/v1/completions instead of running the engine in-process");
  app.add_option("--grpc", options.grpc,
                 "Send the requests to this inferboxd's gRPC API (host:port) as streamed "
                 "Generate calls instead of running the engine in-process")
      ->excludes(url);
  app.add_option("--api-key", options.api_key,
                 "API key for --url or --grpc (default: $INFERBOX_API_KEY; none if unset)")
      ->envname("INFERBOX_API_KEY");
  app.add_option("--served-model", options.served_model,
                 "The model's name on the server (default: the --model folder's name)");
  app.add_option("--num-gpus", options.num_gpus,
                 "GPUs the model runs on, for output tokens/s per GPU (default: in-process, the "
                 "backend's; through a server, unknown)")
      ->check(AtLeast(1));
  CLI::Option* fixed_step =
      app.add_option(
             "--fixed-step-ms", options.fixed_step_ms,
             "In-process, replace the model's step by a wait of this many milliseconds (plus "
             "--fixed-step-ms-per-token per token in the step) that picks known tokens: the "
             "host's own costs at a GPU's step time (tools/bench/daemon-path-bench)")
          ->check(CLI::Range(0.0, 10000.0));
  app.add_option("--fixed-step-ms-per-token", options.fixed_step_ms_per_token,
                 "With --fixed-step-ms: the wait's part per token in the step")
      ->check(CLI::Range(0.0, 1000.0))
      ->needs(fixed_step);
  app.add_flag("--json", options.json, "Print one JSON object instead of the table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    // --help exits 0; anything else is a bad argument.
    return app.exit(error) == 0 ? 0 : 2;
  }

  if (options.fixed_step() && (options.ttft() || options.device != "cpu")) {
    fmt::print(stderr,
               "inferbox-bench: --fixed-step-ms runs the offline workload on the CPU only (no "
               "model runs: no prefill MFU to measure, and its logits are host memory)\n");
    return 2;
  }
  if (options.over_server()) {
    if (options.fixed_step()) {
      fmt::print(stderr,
                 "inferbox-bench: --fixed-step-ms is in-process only: through a server, start "
                 "the server's engine as inferbox-engine-fixed-step\n");
      return 2;
    }
    if (options.fp8 || options.kv_fp8) {
      fmt::print(stderr,
                 "inferbox-bench: --quantization and --kv-cache-dtype are the engine's: "
                 "through a server, the server's model config sets them (quantization = \"fp8\", "
                 "kv_cache_dtype = \"fp8\")\n");
      return 2;
    }
    if (options.served_model.empty()) options.served_model = options.model.filename().string();
    return RunOverServerPath(options);
  }
  if (app.count("--max-running") == 0) {
    options.max_running = options.ttft() ? 1 : options.concurrency;
  }
  const bool num_blocks_given = app.count("--num-blocks") > 0;
  if (!num_blocks_given) {
    // Computed in double: absurd lengths or concurrencies must not overflow on the way.
    const double blocks_per_request = std::ceil(LongestRequest(options) / options.block_size);
    const double num_blocks =
        std::floor(static_cast<double>(RequestsHoldingKv(options)) * blocks_per_request * 1.25) + 1;
    if (num_blocks > std::numeric_limits<int32_t>::max()) {
      fmt::print(stderr, "inferbox-bench: {:.0f} KV blocks are too many; give --num-blocks\n",
                 num_blocks);
      return 2;
    }
    options.num_blocks = static_cast<int32_t>(num_blocks);
  }
  return RunInProcessPath(options, num_blocks_given);
}
