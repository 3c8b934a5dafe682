// inferbox-bench's command line (tools/bench/inferbox_bench.cc parses it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace inferbox::engine::bench {

struct Options {
  std::filesystem::path model;
  std::string device = "cpu";
  int32_t tensor_parallel = 1;
  bool fp8 = false;     // --quantization fp8: the linear layers in FP8 E4M3.
  bool kv_fp8 = false;  // --kv-cache-dtype fp8.
  int64_t num_requests = 64;
  int64_t input_len = 128;
  int64_t output_len = 64;
  int64_t concurrency = 1;
  float temperature = 0.0f;  // 0: greedy; else every request sampled at it.
  int32_t block_size = 16;
  int32_t num_blocks = 0;          // From the workload (and the GPU's free memory) unless given.
  bool num_blocks_capped = false;  // The default was cut to what the GPU's memory holds.
  int64_t max_running = 0;         // The concurrency unless given.
  int64_t token_budget = 512;
  uint32_t seed = 0;
  // In-process, the model's step replaced by a wait of fixed_step_ms plus
  // fixed_step_ms_per_token per token in the step (FixedTimeModel; negative: off).
  double fixed_step_ms = -1.0;
  double fixed_step_ms_per_token = 0.0;
  // Prompt token ids are drawn below this (0: the model's vocabulary size).
  int64_t prompt_vocab = 0;
  int64_t warmup = 1;
  bool json = false;
  // Time to first token instead of the offline run: these prompt lengths, each run
  // `ttft_repeats` times on its own (after `warmup` requests of the same length).
  std::vector<int64_t> ttft_lengths;
  int64_t ttft_repeats = 3;
  double peak_tflops = 989.0;  // H100 SXM, dense BF16.
  // The daemon path: requests go to this OpenAI-compatible server instead of an engine loop
  // in this process (the model folder is then read for its config only).
  std::string url;
  // Or to this daemon's gRPC API (host:port: inferbox.v1.Inference/Generate).
  std::string grpc;
  std::string api_key;
  std::string served_model;  // The model's name on the server.
  int32_t num_gpus = 0;      // GPUs the server's model runs on, for per-GPU numbers (0: unknown).

  bool over_http() const { return !url.empty(); }
  bool over_grpc() const { return !grpc.empty(); }
  bool over_server() const { return over_http() || over_grpc(); }
  // The path's name in the JSON output.
  const char* path_name() const {
    return over_http() ? "http" : over_grpc() ? "grpc" : "in-process";
  }
  bool ttft() const { return !ttft_lengths.empty(); }
  bool fixed_step() const { return fixed_step_ms >= 0.0; }
};

}  // namespace inferbox::engine::bench
