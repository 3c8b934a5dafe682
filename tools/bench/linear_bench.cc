// inferbox-linear-bench: the linear layers of decode steps of a few sequences on the CUDA
// backend's own small-batch kernel (LaunchSmallBatchLinear) beside cuBLASLt, as the backend
// runs each, and beside the memory floor. With few rows a linear layer reads its weight once
// and does little arithmetic with it, so its floor is the weight's bytes over the device's
// copy bandwidth (a device-to-device copy, read + write).
//
//   inferbox-linear-bench [--model llama3.1-8b|qwen2.5-7b] [--rows 1,2,4,8]
//       [--dtype bf16,fp8] [--iterations 50] [--cold-mib 256]
//       [--hidden N --intermediate N --heads N --kv-heads N --head-dim N --vocab N
//        --qkv-bias]
//
// Per layer of the model's shapes (q, k and v as one call of three weights, with biases
// where the model has them; o; gate and up as one call; down; the LM head), rows and weight
// type (BF16, or FP8 E4M3 with one scale, the input quantised per call): the microseconds
// per call of each way, recorded as a CUDA graph so that the launches' host time is left
// out, the calls taking copies of the weights in turn (--cold-mib) so that they read them
// from memory as a decode step does, each as a share of the floor, and ours against
// cuBLASLt's.
//   cuBLASLt: a GEMM (its algorithm chosen once per shape), the kernel that splits a group's
//     output into its weights' outputs with their biases (ScatterColumns) or a bias kernel,
//     and for FP8 the input's quantisation first;
//   ours: one launch writing every output (for FP8 it quantises an input of up to 32K
//     values itself; a larger one is quantised first).
// Their outputs are compared: it exits 1 when they differ by more than the tolerance (a
// benchmark of a wrong kernel means nothing), 2 on bad arguments. Needs a CUDA device (or
// the CUDA emulator, which makes it a correctness check).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cuda_bench.h"
#include "kernels.h"
#include "lt_gemm.h"

namespace {

using namespace inferbox::engine::cuda;
using namespace inferbox::tools::bench;

// Agreement required between the two ways, relative to the largest output: both sum the
// same products in float32 (about 1e-6 apart; a piece of 16 bytes left out or read twice is
// about 1e-2); FP8 tensor cores sum in a narrower format between promotions to float32
// (about 14 bits).
constexpr double kMaxBf16Difference = 1e-4;
constexpr double kMaxFp8Difference = 2e-3;

struct Shape {
  int64_t hidden = 4096;
  int64_t intermediate = 14336;
  int64_t heads = 32;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  int64_t vocab = 128256;
  bool qkv_bias = false;
};

Shape ModelShape(const std::string& model) {
  Shape shape;
  if (model == "qwen2.5-7b") {
    shape = {3584, 18944, 28, 4, 128, 152064, true};
  }
  return shape;
}

// One linear call of the model: its weights' rows (all of `cols` columns). The LM head stays
// BF16 with FP8 linear layers (--quantization fp8).
struct Layer {
  std::string name;
  std::vector<int64_t> rows;
  int64_t cols;
  bool bias;
  bool fp8 = true;
};

std::vector<Layer> Layers(const Shape& s) {
  const int64_t q = s.heads * s.head_dim;
  const int64_t kv = s.kv_heads * s.head_dim;
  return {
      {"q,k,v", {q, kv, kv}, s.hidden, s.qkv_bias},
      {"o", {s.hidden}, q, false},
      {"gate,up", {s.intermediate, s.intermediate}, s.hidden, false},
      {"down", {s.hidden}, s.intermediate, false},
      {"lm_head", {s.vocab}, s.hidden, false, false},
  };
}

struct Options {
  std::string model = "llama3.1-8b";
  Shape shape;
  std::vector<int64_t> rows{1, 2, 4, 8};
  std::vector<std::string> dtypes{"bf16", "fp8"};
  int iterations = 50;
  int64_t cold_mib = 256;  // Weight copies the calls rotate through (0: one copy).
};

// One layer at one row count and weight type; false when the two ways differ.
bool RunCase(const Options& options, const Layer& layer, int64_t m, bool fp8, int multiprocessors,
             double copy_bandwidth, cudaStream_t stream, LtGemm& gemm, std::mt19937& rng) {
  int64_t total_rows = 0;
  for (const int64_t rows : layer.rows) total_rows += rows;
  const int64_t cols = layer.cols;
  const auto weight_values = static_cast<size_t>(total_rows * cols);
  const size_t element = fp8 ? 1 : 2;
  // The group's weights one after another in one allocation, as the backend loads them; in
  // as many copies as make --cold-mib, which the calls take in turn: in a decode step the
  // whole model passes between two uses of a layer's weights, so they come from memory, never
  // from L2 (50 MB on an H100 or H200, as large as some layers).
  const size_t copies =
      std::max<size_t>(1, static_cast<size_t>(options.cold_mib << 20) / (weight_values * element));
  DeviceBuffer<uint16_t> weights(copies * weight_values);
  FillRandomBf16(weights, rng);
  DeviceBuffer<uint16_t> x(static_cast<size_t>(m * cols));
  FillRandomBf16(x, rng);
  INFERBOX_CUDA_CHECK(cudaDeviceSynchronize());  // The fills ran on the default stream.
  DeviceBuffer<uint8_t> codes(fp8 ? copies * weight_values : 0);
  DeviceBuffer<float> weight_work(kFp8WorkFloats);
  if (fp8) {  // One scale for every copy.
    LaunchQuantizeToFp8(weights.get(), static_cast<int64_t>(copies) * total_rows, cols, nullptr,
                        weight_work.get(), codes.get(), stream);
  }
  DeviceBuffer<uint8_t> x_codes(fp8 ? static_cast<size_t>(m * cols) : 0);
  DeviceBuffer<float> x_work(kFp8WorkFloats);
  DeviceBuffer<float> biases(static_cast<size_t>(total_rows));
  std::vector<float> bias_values(static_cast<size_t>(total_rows));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& value : bias_values) value = uniform(rng);
  biases.Upload(bias_values);
  DeviceBuffer<float> stacked(static_cast<size_t>(m * total_rows));
  DeviceBuffer<float> outputs(static_cast<size_t>(m * total_rows));  // Each weight's in turn.

  const float* weight_scale = weight_work.get() + kFp8ScaleSlot;
  const float* x_scale = x_work.get() + kFp8ScaleSlot;
  // As the backend runs it: a small FP8 input quantised by the kernel itself (in at most two
  // blocks a multiprocessor), a larger one first.
  SmallBatchLinearParams params;
  params.fp8 = fp8;
  params.quantize = fp8 && SmallBatchQuantizes(m, cols);
  params.x = fp8 && !params.quantize ? static_cast<const void*>(x_codes.get()) : x.get();
  params.x_scale = fp8 && !params.quantize ? x_scale : nullptr;
  if (params.quantize) params.max_blocks = 2 * static_cast<int64_t>(multiprocessors);
  params.m = m;
  params.cols = cols;
  params.count = static_cast<int>(layer.rows.size());
  ColumnSlices slices;
  slices.count = params.count;
  int64_t begin = 0;
  const auto* first_copy = fp8 ? static_cast<const uint8_t*>(codes.get())
                               : reinterpret_cast<const uint8_t*>(weights.get());
  for (int i = 0; i < params.count; ++i) {
    const int64_t rows = layer.rows[static_cast<size_t>(i)];
    params.weight[i] = first_copy + static_cast<size_t>(begin * cols) * element;
    params.weight_scale[i] = weight_scale;
    params.rows[i] = rows;
    params.out[i] = outputs.get() + m * begin;
    params.bias[i] = layer.bias ? biases.get() + begin : nullptr;
    slices.out[i] = params.out[i];
    slices.bias[i] = params.bias[i];
    slices.begin[i] = begin;
    begin += rows;
  }
  slices.begin[params.count] = begin;
  if (!SmallBatchLinearFits(params)) {
    fmt::print(stderr, "{}: the small-batch kernel does not take {} columns\n", layer.name, cols);
    return false;
  }

  // cuBLASLt's single weights without a bias write their output in place of the split.
  const bool split = params.count > 1 || layer.bias;
  const auto quantise = [&](cudaStream_t s) {
    if (fp8) LaunchQuantizeToFp8(x.get(), m, cols, nullptr, x_work.get(), x_codes.get(), s);
  };
  // Where the next call's copy of the weights starts (values from the first): both ways take
  // the same turns.
  const auto next_copy = [&](size_t& call) { return (call++ % copies) * weight_values; };
  size_t cublaslt_calls = 0, our_calls = 0;
  const auto cublaslt = [&](cudaStream_t s) {
    const size_t at = next_copy(cublaslt_calls);
    quantise(s);
    if (fp8) {
      gemm.RunFp8(x_codes.get(), x_scale, codes.get() + at, weight_scale, stacked.get(), m,
                  total_rows, cols, s);
    } else {
      gemm.Run(x.get(), weights.get() + at, stacked.get(), m, total_rows, cols, s);
    }
    if (split) LaunchScatterColumns(stacked.get(), m, total_rows, slices, s);
  };
  const auto ours = [&](cudaStream_t s) {
    const size_t at = next_copy(our_calls);
    SmallBatchLinearParams call = params;
    for (int i = 0; i < call.count; ++i)
      call.weight[i] = static_cast<const uint8_t*>(call.weight[i]) + at * element;
    if (!call.quantize) quantise(s);
    LaunchSmallBatchLinear(call, s);
  };
  const double cublaslt_seconds = SecondsPerCallInGraph(options.iterations, stream, cublaslt);
  const std::vector<float> expected = split ? outputs.Download() : stacked.Download();
  INFERBOX_CUDA_CHECK(cudaMemsetAsync(outputs.get(), 0xff, outputs.Bytes(), stream));  // NaNs.
  const double ours_seconds = SecondsPerCallInGraph(options.iterations, stream, ours);
  const std::vector<float> got = outputs.Download();

  double largest = 0.0;
  for (const float value : expected) largest = std::max(largest, std::fabs(double{value}));
  const double difference = LargestDifference(got, expected);
  const double relative = largest > 0.0 ? difference / largest : difference;
  const bool ok = relative <= (fp8 ? kMaxFp8Difference : kMaxBf16Difference);

  const double weight_bytes = static_cast<double>(weight_values) * (fp8 ? 1.0 : 2.0);
  const double floor_us = weight_bytes / copy_bandwidth * 1e6;
  const auto share = [&](double seconds) { return 100.0 * floor_us / (seconds * 1e6); };
  fmt::print(
      "{:<8} {:>6}x{:<6} {:>4} {:<4} {:>9.1f} {:>8.1f} {:>9.1f} {:>6.1f}% {:>9.1f} {:>6.1f}% "
      "{:>7.2f}x {:>9.1e}{}\n",
      layer.name, total_rows, cols, m, fp8 ? "fp8" : "bf16", weight_bytes / 1e6, floor_us,
      cublaslt_seconds * 1e6, share(cublaslt_seconds), ours_seconds * 1e6, share(ours_seconds),
      cublaslt_seconds / ours_seconds, relative, ok ? "" : "  DIFFERS from cuBLASLt's");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  Shape custom;
  CLI::App app{"The small-batch linear kernel beside cuBLASLt and the memory floor"};
  app.add_option("--model", options.model, "Shapes of: llama3.1-8b or qwen2.5-7b")
      ->check(CLI::IsMember({"llama3.1-8b", "qwen2.5-7b"}));
  app.add_option("--rows", options.rows, "Input rows (sequences of a decode step), 1-8")
      ->delimiter(',')
      ->check(CLI::Range(1, static_cast<int>(kSmallBatchMaxRows)));
  app.add_option("--dtype", options.dtypes, "Weights: bf16 and/or fp8 (E4M3, one scale)")
      ->delimiter(',')
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("--iterations", options.iterations, "Timed calls per case")
      ->check(CLI::PositiveNumber);
  app.add_option("--cold-mib", options.cold_mib,
                 "MiB of weight copies the calls take in turn, so that they read from memory as "
                 "in a decode step, not from L2 (0: one copy)")
      ->check(CLI::Range(0, 1 << 16));
  auto* hidden = app.add_option("--hidden", custom.hidden, "Hidden size (instead of the model's)")
                     ->check(CLI::PositiveNumber);
  app.add_option("--intermediate", custom.intermediate, "MLP width")->needs(hidden);
  app.add_option("--heads", custom.heads, "Query heads")->needs(hidden);
  app.add_option("--kv-heads", custom.kv_heads, "KV heads")->needs(hidden);
  app.add_option("--head-dim", custom.head_dim, "Head size")->needs(hidden);
  app.add_option("--vocab", custom.vocab, "Vocabulary")->needs(hidden);
  app.add_flag("--qkv-bias", custom.qkv_bias, "q, k and v have biases (as Qwen2.5's)")
      ->needs(hidden);
  CLI11_PARSE(app, argc, argv);
  options.shape = hidden->count() > 0 ? custom : ModelShape(options.model);
  const Shape& s = options.shape;
  for (const int64_t value : {s.intermediate, s.heads, s.kv_heads, s.head_dim, s.vocab}) {
    if (value < 1) {
      fmt::print(stderr, "every size must be positive\n");
      return 2;
    }
  }
  if ((s.heads * s.head_dim) % 16 != 0 || s.hidden % 16 != 0 || s.intermediate % 16 != 0) {
    fmt::print(stderr,
               "the hidden size, the MLP width and heads × head size must be multiples "
               "of 16 (FP8 GEMMs take no others)\n");
    return 2;
  }
  if (const auto& lt = LoadCublasLt(); !lt.ok()) {
    fmt::print(stderr, "{}\n", lt.status().ToString());
    return 1;
  }

  int device = 0;
  INFERBOX_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties{};
  INFERBOX_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  const bool any_fp8 =
      std::find(options.dtypes.begin(), options.dtypes.end(), "fp8") != options.dtypes.end();
  if (any_fp8 && properties.major * 10 + properties.minor < 89) {
    fmt::print(stderr, "FP8 needs compute capability 8.9 or later; {} is {}.{}\n", properties.name,
               properties.major, properties.minor);
    return 2;
  }
  int64_t largest = 0;  // Bytes of the largest layer's weights.
  for (const Layer& layer : Layers(s)) {
    int64_t rows = 0;
    for (const int64_t r : layer.rows) rows += r;
    largest = std::max(largest, 2 * rows * layer.cols);
  }
  const double copy_bandwidth = CopyBandwidth(static_cast<size_t>(largest), 20);
  fmt::print("device: {} ({} multiprocessors); copy bandwidth {:.1f} GB/s (read + write)\n",
             properties.name, properties.multiProcessorCount, copy_bandwidth / 1e9);
  fmt::print(
      "shapes: hidden {}, MLP {}, heads {}/{} of {}, vocabulary {}{}; µs per call in a "
      "CUDA graph\n",
      s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim, s.vocab,
      s.qkv_bias ? ", q/k/v biases" : "");
  fmt::print("{:<8} {:>13} {:>4} {:<4} {:>9} {:>8} {:>9} {:>7} {:>9} {:>7} {:>8} {:>9}\n", "linear",
             "rows x cols", "m", "w", "weight MB", "floor us", "cuBLASLt", "floor", "ours", "floor",
             "speed-up", "max diff");
  cudaStream_t stream = nullptr;
  INFERBOX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  bool agree = true;
  {
    LtGemm gemm;
    std::mt19937 rng(1);
    for (const Layer& layer : Layers(s)) {
      for (const std::string& dtype : options.dtypes) {
        if (dtype == "fp8" && !layer.fp8) continue;
        for (const int64_t m : options.rows) {
          agree = RunCase(options, layer, m, dtype == "fp8", properties.multiProcessorCount,
                          copy_bandwidth, stream, gemm, rng) &&
                  agree;
        }
      }
    }
  }
  INFERBOX_CUDA_CHECK(cudaStreamDestroy(stream));
  return agree ? 0 : 1;
}
