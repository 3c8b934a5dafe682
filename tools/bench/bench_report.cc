#include "bench/bench_report.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <boost/json.hpp>

namespace inferbox::engine::bench {
namespace {

namespace json = boost::json;

double OtherSeconds(const EngineSummary& engine, double wall_seconds) {
  return wall_seconds - engine.step_seconds.schedule - engine.step_seconds.forward -
         engine.step_seconds.sample - engine.step_seconds.commit;
}

std::optional<double> PerGpu(const OfflineResult& result) {
  if (result.num_gpus <= 0) return std::nullopt;
  return result.latency.output_tokens_per_second() / result.num_gpus;
}

// Where the requests ran, for the first line of a table.
std::string PathLine(const Options& options) {
  if (options.over_http()) {
    return fmt::format("over HTTP to {} (model \"{}\")", options.url, options.served_model);
  }
  if (options.over_grpc()) {
    return fmt::format("over gRPC to {} (model \"{}\")", options.grpc, options.served_model);
  }
  return fmt::format("in-process on the {} backend{}", options.device,
                     options.tensor_parallel > 1
                         ? fmt::format(", tensor parallel over {} ranks", options.tensor_parallel)
                         : "");
}

std::string ModelLine(const ModelConfig& config) {
  return fmt::format("{}, {} layers, hidden {}, vocab {}, {}",
                     ArchitectureName(config.architecture), config.num_hidden_layers,
                     config.hidden_size, config.vocab_size, config.torch_dtype);
}

json::object ModelJson(const Options& options, const ModelConfig& config) {
  return {{"dir", options.model.string()},
          {"architecture", ArchitectureName(config.architecture)},
          {"num_hidden_layers", config.num_hidden_layers},
          {"hidden_size", config.hidden_size},
          {"vocab_size", config.vocab_size},
          {"dtype", config.torch_dtype}};
}

// Where the requests ran and the engine settings of this process (the server's own apply
// over HTTP).
json::object ConfigJson(const Options& options) {
  json::object config{{"num_requests", options.num_requests}, {"warmup", options.warmup},
                      {"input_len", options.input_len},       {"output_len", options.output_len},
                      {"concurrency", options.concurrency},   {"seed", options.seed},
                      {"temperature", options.temperature}};
  if (options.prompt_vocab > 0) config["prompt_vocab"] = options.prompt_vocab;
  if (options.over_server()) {
    if (options.over_http()) config["url"] = options.url;
    if (options.over_grpc()) config["grpc"] = options.grpc;
    config["served_model"] = options.served_model;
  } else {
    config["device"] = options.device;
    config["tensor_parallel"] = options.tensor_parallel;
    config["quantization"] = options.fp8 ? "fp8" : "none";
    config["kv_cache_dtype"] = options.kv_fp8 ? "fp8" : "auto";
    config["max_running"] = options.max_running;
    config["token_budget"] = options.token_budget;
    config["block_size"] = options.block_size;
    config["num_blocks"] = options.num_blocks;
    // The model's step replaced by a wait (no model ran).
    if (options.fixed_step()) {
      config["fixed_step_ms"] = options.fixed_step_ms;
      config["fixed_step_ms_per_token"] = options.fixed_step_ms_per_token;
    }
    // The CUDA backend's decode steps as graphs, unless the environment turned them off.
    if (options.device != "cpu") {
      const char* graphs = std::getenv("INFERBOX_CUDA_GRAPHS");
      config["cuda_graphs"] = graphs == nullptr || std::string_view(graphs) != "0";
    }
  }
  return config;
}

json::object PercentilesJson(const Percentiles& percentiles) {
  return {{"p50", percentiles.p50},
          {"p90", percentiles.p90},
          {"p99", percentiles.p99},
          {"mean", percentiles.mean}};
}

json::value OptionalJson(std::optional<double> value) {
  return value ? json::value(*value) : json::value(nullptr);
}

}  // namespace

EngineSummary DiffStats(const RuntimeStats& before, const RuntimeStats& after) {
  EngineSummary engine;
  engine.num_steps = after.steps_total - before.steps_total;
  engine.step_seconds = {after.step_seconds_total.schedule - before.step_seconds_total.schedule,
                         after.step_seconds_total.forward - before.step_seconds_total.forward,
                         after.step_seconds_total.sample - before.step_seconds_total.sample,
                         after.step_seconds_total.commit - before.step_seconds_total.commit};
  engine.num_prompt_tokens = after.prompt_tokens_total - before.prompt_tokens_total;
  engine.num_generated_tokens = after.generation_tokens_total - before.generation_tokens_total;
  engine.num_preemptions = after.preemptions_total - before.preemptions_total;
  engine.num_prefix_queried_tokens =
      after.prefix_queried_tokens_total - before.prefix_queried_tokens_total;
  engine.num_prefix_hit_tokens = after.prefix_hit_tokens_total - before.prefix_hit_tokens_total;
  return engine;
}

void PrintOfflineTable(const Options& options, const ModelConfig& config,
                       const OfflineResult& result) {
  const LatencySummary& m = result.latency;
  fmt::print("inferbox-bench, offline, {}: {}\n", PathLine(options), ModelLine(config));
  if (options.over_server()) {
    fmt::print(
        "{} requests (+{} warmup) of {} prompt + {} output tokens; concurrency {} (the server's "
        "own batching limits apply)\n\n",
        options.num_requests, options.warmup, options.input_len, options.output_len,
        options.concurrency);
  } else {
    fmt::print(
        "{} requests (+{} warmup) of {} prompt + {} output tokens; concurrency {}, max running "
        "{}, token budget {}, {} blocks of {}{}\n\n",
        options.num_requests, options.warmup, options.input_len, options.output_len,
        options.concurrency, options.max_running, options.token_budget, options.num_blocks,
        options.block_size,
        options.num_blocks_capped ? " (as many as the GPU's memory holds)" : "");
  }

  fmt::print("throughput\n");
  fmt::print("  {:<30}{:>10.3f} s\n", "wall time", m.wall_seconds);
  fmt::print("  {:<30}{:>10.1f}\n", "output tokens/s", m.output_tokens_per_second());
  if (const auto per_gpu = PerGpu(result)) {
    fmt::print("  {:<30}{:>10.1f} ({} GPU{})\n", "output tokens/s per GPU", *per_gpu,
               result.num_gpus, result.num_gpus == 1 ? "" : "s");
  } else {
    fmt::print("  {:<30}{:>10} ({})\n", "output tokens/s per GPU", "n/a",
               options.over_server() ? "give --num-gpus" : "no GPU");
  }
  fmt::print("  {:<30}{:>10.2f}\n", "requests/s", m.requests_per_second());

  fmt::print("{:<32}{:>10}{:>10}{:>10}{:>10}\n", "latency, ms", "p50", "p90", "p99", "mean");
  const auto latency_row = [](std::string_view name, const Percentiles& p) {
    fmt::print("  {:<30}{:>10.2f}{:>10.2f}{:>10.2f}{:>10.2f}\n", name, p.p50, p.p90, p.p99, p.mean);
  };
  latency_row("time to first token", m.time_to_first_token_ms);
  latency_row("time per output token", m.time_per_output_token_ms);
  latency_row(options.over_server() ? "between streamed events" : "inter-token",
              m.inter_arrival_ms);
  latency_row("end-to-end", m.end_to_end_ms);
  fmt::print("  {:<30}{:>10.1f} tokens/s (1000 / mean time per output token)\n",
             "one stream's decode rate", m.stream_tokens_per_second());

  if (result.engine) {
    const EngineSummary& engine = *result.engine;
    const double steps = static_cast<double>(std::max<int64_t>(engine.num_steps, 1));
    fmt::print("engine\n");
    fmt::print("  {:<30}{:>10} (on average {:.1f} generated + {:.1f} prompt tokens each)\n",
               "steps", engine.num_steps, static_cast<double>(engine.num_generated_tokens) / steps,
               static_cast<double>(engine.num_prompt_tokens) / steps);
    fmt::print("  {:<30}{:>10}\n", "preemptions", engine.num_preemptions);
    fmt::print("  {:<30}{:>10} of {} queried prompt tokens\n", "prefix cache hits",
               engine.num_prefix_hit_tokens, engine.num_prefix_queried_tokens);

    fmt::print("{:<32}{:>10}{:>10}{:>10}\n", "step time", "total s", "ms/step", "of wall");
    const auto step_row = [&](std::string_view name, double seconds) {
      fmt::print("  {:<30}{:>10.3f}{:>10.3f}{:>9.1f}%\n", name, seconds, 1e3 * seconds / steps,
                 100.0 * seconds / m.wall_seconds);
    };
    step_row("schedule", engine.step_seconds.schedule);
    step_row("forward", engine.step_seconds.forward);
    step_row("sample", engine.step_seconds.sample);
    step_row("commit", engine.step_seconds.commit);
    step_row("other (loop, callbacks, idle)", OtherSeconds(engine, m.wall_seconds));
  }

  if (result.floor) {
    const BandwidthFloor& floor = *result.floor;
    fmt::print(
        "floor from memory bandwidth only (weights read once per decode step at the measured "
        "copy bandwidth; KV reads, prefill and compute not counted)\n");
    fmt::print("  {:<30}{:>10.1f} MB\n", "weights read per decode step",
               floor.weight_bytes_per_step / 1e6);
    fmt::print("  {:<30}{:>10.1f} GB/s\n", "measured copy bandwidth", floor.copy_bandwidth / 1e9);
    fmt::print("  {:<30}{:>10.3f} ms\n", "decode step at least", floor.step_ms());
    fmt::print("  {:<30}{:>10.1f} tokens/s\n", "1 stream at most",
               floor.single_stream_tokens_per_second());
    fmt::print("  {:<30}{:>10.1f} tokens/s, {:.3f} ms/step: {:.1f}% of the floor{}\n",
               "1 stream measured", m.stream_tokens_per_second(), m.time_per_output_token_ms.mean,
               100.0 * m.stream_tokens_per_second() / floor.single_stream_tokens_per_second(),
               options.concurrency > 1 ? " (meaningful at --concurrency 1)" : "");
    fmt::print("  {:<30}{:>10.1f} tokens/s (measured: {:.1f}% of it)\n",
               fmt::format("batch of {} at most", floor.batch_size),
               floor.batch_tokens_per_second(),
               100.0 * m.output_tokens_per_second() / floor.batch_tokens_per_second());
  }
}

void PrintOfflineJson(const Options& options, const ModelConfig& config,
                      const OfflineResult& result) {
  const LatencySummary& m = result.latency;
  json::object out{{"bench", "offline"},
                   {"path", options.path_name()},
                   {"model", ModelJson(options, config)},
                   {"config", ConfigJson(options)},
                   {"wall_seconds", m.wall_seconds},
                   {"output_tokens", m.num_output_tokens},
                   {"output_tokens_per_second", m.output_tokens_per_second()},
                   {"num_gpus", result.num_gpus},
                   {"output_tokens_per_second_per_gpu", OptionalJson(PerGpu(result))},
                   {"requests_per_second", m.requests_per_second()},
                   {"time_to_first_token_ms", PercentilesJson(m.time_to_first_token_ms)},
                   {"time_per_output_token_ms", PercentilesJson(m.time_per_output_token_ms)},
                   {"stream_tokens_per_second", m.stream_tokens_per_second()},
                   {"inter_token_ms", PercentilesJson(m.inter_arrival_ms)},
                   {"end_to_end_ms", PercentilesJson(m.end_to_end_ms)}};
  if (result.engine) {
    const EngineSummary& engine = *result.engine;
    out["steps"] = {{"num_steps", engine.num_steps},
                    {"prompt_tokens", engine.num_prompt_tokens},
                    {"generated_tokens", engine.num_generated_tokens},
                    {"preemptions", engine.num_preemptions},
                    {"prefix_queried_tokens", engine.num_prefix_queried_tokens},
                    {"prefix_hit_tokens", engine.num_prefix_hit_tokens}};
    out["step_seconds"] = {{"schedule", engine.step_seconds.schedule},
                           {"forward", engine.step_seconds.forward},
                           {"sample", engine.step_seconds.sample},
                           {"commit", engine.step_seconds.commit},
                           {"other", OtherSeconds(engine, m.wall_seconds)}};
  }
  if (result.floor) {
    const BandwidthFloor& floor = *result.floor;
    out["bandwidth_ceiling"] = {
        {"note",
         "decode floor from memory bandwidth only (weights read once per step at the measured "
         "copy bandwidth; KV reads, prefill and compute not counted)"},
        {"weight_bytes_per_decode_step", floor.weight_bytes_per_step},
        {"copy_bandwidth_bytes_per_second", floor.copy_bandwidth},
        {"decode_step_ms", floor.step_ms()},
        {"single_stream_tokens_per_second", floor.single_stream_tokens_per_second()},
        {"stream_percent_of_floor",
         100.0 * m.stream_tokens_per_second() / floor.single_stream_tokens_per_second()},
        {"batch_size", floor.batch_size},
        {"batch_tokens_per_second", floor.batch_tokens_per_second()},
        {"batch_percent_of_ceiling",
         100.0 * m.output_tokens_per_second() / floor.batch_tokens_per_second()}};
  }
  std::cout << json::serialize(out) << std::endl;
}

namespace {

struct TtftRow {
  Percentiles ttft;
  double min_ms = 0;
  double max_ms = 0;
  double achieved_tflops = 0;
  double mfu_percent = 0;
};

// MFU from the median TTFT.
TtftRow Row(const Options& options, const TtftPoint& point) {
  TtftRow row;
  row.ttft = Summarize(point.ttft_ms);
  row.min_ms = *std::min_element(point.ttft_ms.begin(), point.ttft_ms.end());
  row.max_ms = *std::max_element(point.ttft_ms.begin(), point.ttft_ms.end());
  row.achieved_tflops = point.flops.total() / (row.ttft.p50 / 1e3) / 1e12;
  row.mfu_percent = 100.0 * row.achieved_tflops / options.peak_tflops;
  return row;
}

}  // namespace

void PrintTtftTable(const Options& options, const ModelConfig& config, const TtftResult& result) {
  fmt::print("inferbox-bench, time to first token, {}: {}\n", PathLine(options), ModelLine(config));
  fmt::print("{} requests per prompt length (+{} warmup), one at a time, 1 output token each",
             options.ttft_repeats, options.warmup);
  if (options.over_server()) {
    fmt::print(" (the server's token budget applies)\n");
  } else {
    fmt::print("; token budget {} (a longer prompt is prefilled in chunks of it)\n",
               options.token_budget);
  }
  fmt::print(
      "prefill MFU = model FLOPs of the prefill (2 x layer matmul weights x tokens + LM head "
      "once + causal attention) / TTFT p50 / peak; peak used: {:.1f} TFLOP/s (--peak-tflops)\n\n",
      options.peak_tflops);
  fmt::print("  {:>13}{:>13}{:>10}{:>10}{:>12}{:>15}{:>11}{:>10}\n", "prompt tokens", "TTFT p50 ms",
             "min ms", "max ms", "forward ms", "prefill GFLOP", "TFLOP/s", "MFU");
  for (const TtftPoint& point : result.points) {
    const TtftRow row = Row(options, point);
    fmt::print("  {:>13}{:>13.2f}{:>10.2f}{:>10.2f}{:>12}{:>15.4g}{:>11.4g}{:>9.3g}%\n",
               point.input_len, row.ttft.p50, row.min_ms, row.max_ms,
               point.forward_ms ? fmt::format("{:.2f}", *point.forward_ms) : "n/a",
               point.flops.total() / 1e9, row.achieved_tflops, row.mfu_percent);
  }
}

void PrintTtftJson(const Options& options, const ModelConfig& config, const TtftResult& result) {
  json::object run_config = ConfigJson(options);
  for (const char* unused : {"num_requests", "input_len", "output_len", "concurrency"})
    run_config.erase(unused);
  run_config["repeats"] = options.ttft_repeats;
  json::array prompts;
  for (const TtftPoint& point : result.points) {
    const TtftRow row = Row(options, point);
    json::object entry{{"input_len", point.input_len},
                       {"repeats", static_cast<int64_t>(point.ttft_ms.size())},
                       {"time_to_first_token_ms",
                        {{"p50", row.ttft.p50},
                         {"mean", row.ttft.mean},
                         {"min", row.min_ms},
                         {"max", row.max_ms}}},
                       {"prefill_flops", point.flops.total()},
                       {"matmul_flops", point.flops.matmul},
                       {"attention_flops", point.flops.attention},
                       {"achieved_tflops", row.achieved_tflops},
                       {"mfu_percent", row.mfu_percent}};
    if (point.forward_ms) entry["forward_ms"] = *point.forward_ms;
    prompts.push_back(std::move(entry));
  }
  const json::object out{{"bench", "ttft"},
                         {"path", options.path_name()},
                         {"model", ModelJson(options, config)},
                         {"config", std::move(run_config)},
                         {"peak_tflops", options.peak_tflops},
                         {"prompts", std::move(prompts)}};
  std::cout << json::serialize(out) << std::endl;
}

}  // namespace inferbox::engine::bench
