// inferbox-attention-bench: the CUDA backend's decode attention on its own, beside the memory
// floor. Decode reads every cached key and value of every sequence once per step and does
// little arithmetic with them, so its floor is the bytes of the cache read over the device's
// copy bandwidth (measured here with a device-to-device copy, read + write).
//
//   inferbox-attention-bench [--batch 256] [--context 512,1024,2048] [--heads 32]
//       [--kv-heads 8] [--head-dim 128] [--block-size 16] [--iterations 20]
//       [--kernel auto,tensor-core,grouped] [--splits 0] [--kv-cache-dtype bf16,fp8]
//       [--decode-stages 0] [--decode-fragments loads,ldmatrix] [--prefill 1024,4096,8192]
//       [--kv-layout slot,block]
//
// --kv-layout block runs each case again over a block-major cache (KvCacheLayer::block_major:
// a block's keys of one KV head in one run of memory), its column "kv" marked "/blk".
// --decode-fragments runs the tensor-core decode kernel with each way of reading its key and
// value fragments from shared memory (PagedAttentionParams::decode_ldmatrix): "loads" (the
// engine's default) and "ldmatrix" (INFERBOX_CUDA_DECODE_LDMATRIX=1), the latter labelled "/ldm".
//
// With --prefill, prefill instead: one prompt of each length from position 0 through the
// tensor-core prefill kernel in the engine's tiles, microseconds per launch and TFLOP/s (the
// FLOPs prefill MFU counts), its output on 65 tokens checked against the per-token kernels'.
//
// Per batch size and context length: `batch` sequences of `context` cached tokens each
// (random BF16 keys and values, or random FP8 E4M3 codes with a scale per key and value, in
// blocks scattered over the cache, as the engine's allocator leaves them), one decode token each,
// attention launched --iterations times per kernel and split count (0: the one the backend chooses;
// others forced); it prints the splits, microseconds per launch, the cache bytes read per second
// and that as a share of the copy bandwidth. Every kernel's output is compared with the first
// one's: it exits 1 when they differ by more than 1e-3 (a benchmark of a wrong kernel means
// nothing), 2 on bad arguments. Needs a CUDA device (or the CUDA emulator, which makes it a
// correctness check).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cuda_bench.h"
#include "kernels.h"

namespace {

using namespace inferbox::engine::cuda;
using namespace inferbox::tools::bench;

// Agreement required between the kernels (outputs are weighted averages of values in
// [-1, 1]; the kernels keep float32 accuracy, about 1e-5).
constexpr double kMaxDifference = 1e-3;
// The prefill kernel's with the per-token kernels: it multiplies BF16 queries and
// probabilities (2⁻⁹ relative each; up to 3e-3 seen on the CPU emulation over 300 keys),
// where a wrong kernel is off by tenths.
constexpr double kMaxPrefillDifference = 1e-2;

struct Options {
  std::vector<int64_t> batches{256};
  std::vector<int64_t> contexts{512, 1024, 2048};
  int64_t heads = 32;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  int64_t block_size = 16;
  int iterations = 20;
  std::vector<std::string> kernels{"auto", "tensor-core", "grouped"};
  std::vector<int> splits{0};
  std::vector<std::string> dtypes{"bf16"};
  std::vector<std::string> layouts{"slot"};  // "slot", "block": KvCacheLayer::block_major.
  std::vector<int> decode_stages{0};         // The tensor-core decode kernel's; 0: its default.
  std::vector<std::string> decode_fragments{"loads"};  // "loads", "ldmatrix": decode_ldmatrix.
  std::vector<int64_t> prefills;  // Prompts for the prefill kernel, instead of decodes.
};

DecodeAttentionKernel KernelNamed(const std::string& name) {
  if (name == "tensor-core") return DecodeAttentionKernel::kTensorCore;
  if (name == "grouped") return DecodeAttentionKernel::kGrouped;
  return DecodeAttentionKernel::kAuto;
}

// A paged cache of `sequences` sequences of `tokens` cached tokens each: random BF16 keys and
// values, or random FP8 E4M3 codes with a scale per key and value, in blocks scattered over
// the cache as the engine's allocator leaves them, with the block tables; Point() sets a
// launch's cache and tables to it.
class PagedCache {
 public:
  PagedCache(const Options& options, int64_t sequences, int64_t tokens, bool fp8, bool block_major,
             std::mt19937& rng)
      : block_major_(block_major),
        blocks_per_sequence_((tokens + options.block_size - 1) / options.block_size),
        cached_(static_cast<size_t>(sequences * blocks_per_sequence_ * options.block_size *
                                    options.kv_heads * options.head_dim)),
        keys_(fp8 ? 0 : cached_),
        values_(fp8 ? 0 : cached_),
        key_codes_(fp8 ? cached_ : 0),
        value_codes_(fp8 ? cached_ : 0),
        key_scales_(fp8 ? cached_ / static_cast<size_t>(options.head_dim) : 0),
        value_scales_(fp8 ? cached_ / static_cast<size_t>(options.head_dim) : 0),
        tables_(static_cast<size_t>(sequences * blocks_per_sequence_)),
        offsets_(static_cast<size_t>(sequences)) {
    if (fp8) {
      // Codes of every finite E4M3 value; scales that make them about [-1, 1].
      std::uniform_int_distribution<int> code(0, 0xFD);
      auto finite_code = [&] {
        const int c = code(rng);
        return static_cast<uint8_t>(c >= 0x7F ? c + 1 : c);  // 0x7F and 0xFF are NaN.
      };
      std::uniform_real_distribution<float> scale(0.5f / 448.0f, 1.0f / 448.0f);
      FillRandom(key_codes_, finite_code);
      FillRandom(value_codes_, finite_code);
      FillRandom(key_scales_, [&] { return scale(rng); });
      FillRandom(value_scales_, [&] { return scale(rng); });
    } else {
      FillRandomBf16(keys_, rng);
      FillRandomBf16(values_, rng);
    }
    // Each sequence's blocks anywhere in the cache.
    std::vector<int32_t> tables(static_cast<size_t>(sequences * blocks_per_sequence_));
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng);
    std::vector<int64_t> offsets(static_cast<size_t>(sequences));
    for (int64_t s = 0; s < sequences; ++s) offsets[s] = s * blocks_per_sequence_;
    tables_.Upload(tables);
    offsets_.Upload(offsets);
  }

  void Point(const Options& options, PagedAttentionParams& params) const {
    params.cache.keys = keys_.get();
    params.cache.values = values_.get();
    params.cache.key_codes = key_codes_.get();
    params.cache.value_codes = value_codes_.get();
    params.cache.key_scales = key_scales_.get();
    params.cache.value_scales = value_scales_.get();
    params.cache.block_major = block_major_;
    params.table_offsets = offsets_.get();
    params.block_tables = tables_.get();
    params.num_heads = options.heads;
    params.num_kv_heads = options.kv_heads;
    params.head_dim = options.head_dim;
    params.block_size = options.block_size;
    params.scale = 1.0f / std::sqrt(static_cast<float>(options.head_dim));
  }

 private:
  bool block_major_;
  int64_t blocks_per_sequence_;
  size_t cached_;
  DeviceBuffer<uint16_t> keys_;
  DeviceBuffer<uint16_t> values_;
  DeviceBuffer<uint8_t> key_codes_;
  DeviceBuffer<uint8_t> value_codes_;
  DeviceBuffer<float> key_scales_;
  DeviceBuffer<float> value_scales_;
  DeviceBuffer<int32_t> tables_;
  DeviceBuffer<int64_t> offsets_;
};

// The "kv" column: the cache's element type, "/blk" for a block-major one.
std::string CacheLabel(bool fp8, bool block_major) {
  return fmt::format("{}{}", fp8 ? "fp8" : "bf16", block_major ? "/blk" : "");
}

// Random queries in [-amplitude, amplitude] for `tokens` tokens' heads.
std::vector<float> RandomQueries(const Options& options, int64_t tokens, std::mt19937& rng,
                                 float amplitude = 1.0f) {
  std::uniform_real_distribution<float> uniform(-amplitude, amplitude);
  std::vector<float> q(static_cast<size_t>(tokens * options.heads * options.head_dim));
  for (auto& value : q) value = uniform(rng);
  return q;
}

// A launch's tokens on the device (their positions, sequences and queries) and its output,
// and the launch's parameters over them and `cache`.
class AttentionTokens {
 public:
  AttentionTokens(const std::vector<int64_t>& positions, const std::vector<int32_t>& sequence_of,
                  const std::vector<float>& q)
      : positions_(positions.size()),
        sequence_of_(sequence_of.size()),
        q_(q.size()),
        out_(q.size()),
        num_tokens_(static_cast<int64_t>(positions.size())),
        max_position_(*std::max_element(positions.begin(), positions.end())) {
    positions_.Upload(positions);
    sequence_of_.Upload(sequence_of);
    q_.Upload(q);
  }

  PagedAttentionParams Params(const Options& options, const PagedCache& cache,
                              int multiprocessors) const {
    PagedAttentionParams params;
    cache.Point(options, params);
    params.q = q_.get();
    params.out = out_.get();
    params.positions = positions_.get();
    params.token_sequence = sequence_of_.get();
    params.num_tokens = num_tokens_;
    params.max_position = max_position_;
    params.num_multiprocessors = multiprocessors;
    return params;
  }
  const DeviceBuffer<float>& out() const { return out_; }

 private:
  DeviceBuffer<int64_t> positions_;
  DeviceBuffer<int32_t> sequence_of_;
  DeviceBuffer<float> q_;
  DeviceBuffer<float> out_;
  int64_t num_tokens_;
  int64_t max_position_;
};

// One (batch, context) case over a BF16 or an FP8 cache; false when a kernel's output
// differs from the first's.
bool RunCase(const Options& options, int64_t batch, int64_t context, bool fp8, bool block_major,
             int multiprocessors, double copy_bandwidth, std::mt19937& rng) {
  const int64_t d = options.head_dim;
  const PagedCache cache(options, batch, context, fp8, block_major, rng);
  const std::string kv = CacheLabel(fp8, block_major);
  std::vector<int32_t> sequence_of(static_cast<size_t>(batch));
  std::iota(sequence_of.begin(), sequence_of.end(), 0);
  const AttentionTokens launch(std::vector<int64_t>(static_cast<size_t>(batch), context - 1),
                               sequence_of, RandomQueries(options, batch, rng));
  PagedAttentionParams params = launch.Params(options, cache, multiprocessors);
  const DeviceBuffer<float>& out = launch.out();

  // Keys and values of every cached token: 2 bytes an element, or 1 and a 4-byte scale per
  // KV head.
  const double cache_bytes = 2.0 * static_cast<double>(batch * context * options.kv_heads) *
                             (fp8 ? static_cast<double>(d + 4) : 2.0 * static_cast<double>(d));
  const double floor_us = cache_bytes / copy_bandwidth * 1e6;
  std::vector<float> first_output;
  bool agree = true;
  // One kernel (splits and stages as the params say), timed and compared with the first.
  const auto run = [&](const std::string& label) {
    DeviceBuffer<float> workspace(static_cast<size_t>(PagedAttentionWorkspaceFloats(params)));
    params.workspace = workspace.get();
    INFERBOX_CUDA_CHECK(cudaMemset(out.get(), 0xff, out.Bytes()));  // NaNs: nothing left over.
    const double seconds =
        SecondsPerCall(options.iterations, [&] { LaunchPagedAttention(params, nullptr); });
    const std::vector<float> output = out.Download();
    const double difference = first_output.empty() ? 0.0 : LargestDifference(output, first_output);
    if (first_output.empty()) first_output = output;
    const bool ok =
        difference <= kMaxDifference &&
        std::all_of(output.begin(), output.end(), [](float v) { return std::isfinite(v); });
    agree = agree && ok;
    fmt::print(
        "{:>6} {:>8} {:<8} {:<20} {:>6} {:>10.1f} {:>10.1f} {:>9.1f} {:>7.1f}% {:>10.2e}{}\n",
        batch, context, kv, label, PagedAttentionSplits(params), seconds * 1e6, floor_us,
        cache_bytes / seconds / 1e9, 100.0 * floor_us / (seconds * 1e6), difference,
        ok ? "" : "  DIFFERS from the first kernel");
  };
  for (const std::string& name : options.kernels) {
    params.decode_kernel = KernelNamed(name);
    for (int forced : options.splits) {
      params.splits = forced;
      if (name == "grouped") {  // It has no stages: run once.
        params.decode_stages = 0;
        run(name);
        continue;
      }
      for (int stages : options.decode_stages) {
        params.decode_stages = stages;
        for (const std::string& fragments : options.decode_fragments) {
          params.decode_ldmatrix = fragments == "ldmatrix";
          run(fmt::format("{}{}{}", name, stages == 0 ? "" : fmt::format("/s{}", stages),
                          params.decode_ldmatrix ? "/ldm" : ""));
        }
      }
    }
  }
  return agree;
}

// One prompt of `tokens` tokens from position 0, causal, through the prefill kernel in tiles as
// the engine launches a prefill chunk: microseconds per launch and TFLOP/s, counted as prefill
// MFU counts attention (QKᵀ and P·V over the N(N + 1) / 2 (query, key) pairs: 2 · heads ·
// head_dim · N(N + 1)). Its output is compared with the per-token kernels' (float32-exact) for
// every token: false when they differ by more than kMaxPrefillDifference or an output is not
// finite.
bool RunPrefillCase(const Options& options, int64_t tokens, bool fp8, bool block_major,
                    int multiprocessors, std::mt19937& rng) {
  const int64_t d = options.head_dim;
  const PagedCache cache(options, 1, tokens, fp8, block_major, rng);
  std::vector<int64_t> positions(static_cast<size_t>(tokens));
  std::iota(positions.begin(), positions.end(), 0);
  const std::vector<int32_t> sequence_of(static_cast<size_t>(tokens), 0);
  const int64_t tile_rows = TiledAttentionRows(d);
  const int64_t tile_tokens = TiledAttentionTileTokens(options.heads / options.kv_heads, tile_rows);
  std::vector<int32_t> lists;  // The tiles (first token, count), then every token for the check.
  for (int64_t start = 0; start < tokens; start += tile_tokens) {
    lists.push_back(static_cast<int32_t>(start));
    lists.push_back(static_cast<int32_t>(std::min(tile_tokens, tokens - start)));
  }
  const auto num_tiles = static_cast<int64_t>(lists.size() / 2);
  for (int64_t token = 0; token < tokens; ++token) lists.push_back(static_cast<int32_t>(token));
  // Queries of 4 times the keys' range: scores spread over a few units, so that the softmax
  // picks out keys and an output that misses one shows.
  const AttentionTokens launch(positions, sequence_of, RandomQueries(options, tokens, rng, 4.0f));
  DeviceBuffer<int32_t> device_lists(lists.size());
  device_lists.Upload(lists);
  DeviceBuffer<float> reference(launch.out().Bytes() / sizeof(float));

  PagedAttentionParams params = launch.Params(options, cache, multiprocessors);
  const DeviceBuffer<float>& out = launch.out();
  params.tiles = device_lists.get();
  params.num_tiles = num_tiles;
  params.tile_rows = tile_rows;
  params.token_list = device_lists.get() + 2 * num_tiles;
  params.num_listed_tokens = 0;                                   // Every token in tiles.
  INFERBOX_CUDA_CHECK(cudaMemset(out.get(), 0xff, out.Bytes()));  // NaNs: nothing left over.
  const double seconds =
      SecondsPerCall(options.iterations, [&] { LaunchPagedAttention(params, nullptr); });
  const std::vector<float> output = out.Download();

  // Every token through the per-token kernels, into `reference`.
  PagedAttentionParams check = params;
  check.out = reference.get();
  check.num_tiles = 0;
  check.num_listed_tokens = tokens;
  DeviceBuffer<float> workspace(static_cast<size_t>(PagedAttentionWorkspaceFloats(check)));
  check.workspace = workspace.get();
  LaunchPagedAttention(check, nullptr);
  INFERBOX_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> expected = reference.Download();
  const double difference = LargestDifference(output, expected);
  const bool ok =
      difference <= kMaxPrefillDifference &&
      std::all_of(output.begin(), output.end(), [](float v) { return std::isfinite(v); });
  const double flops = 2.0 * static_cast<double>(options.heads * d) * static_cast<double>(tokens) *
                       static_cast<double>(tokens + 1);
  fmt::print("{:>8} {:<8} {:>8} {:>12.1f} {:>10.1f} {:>10.2e}{}\n", tokens,
             CacheLabel(fp8, block_major), num_tiles * options.kv_heads, seconds * 1e6,
             flops / seconds / 1e12, difference, ok ? "" : "  DIFFERS from the per-token kernels");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"The CUDA backend's decode attention beside the memory floor"};
  app.add_option("--batch", options.batches, "Sequences decoding (one token each)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--context", options.contexts, "Cached tokens per sequence")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--heads", options.heads, "Query heads")->check(CLI::PositiveNumber);
  app.add_option("--kv-heads", options.kv_heads, "KV heads")->check(CLI::PositiveNumber);
  app.add_option("--head-dim", options.head_dim, "Head size")->check(CLI::Range(1, 256));
  app.add_option("--block-size", options.block_size, "Tokens per KV-cache block")
      ->check(CLI::PositiveNumber);
  app.add_option("--iterations", options.iterations, "Timed launches per kernel")
      ->check(CLI::PositiveNumber);
  app.add_option("--kernel", options.kernels, "Kernels to run: auto, tensor-core, grouped")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "tensor-core", "grouped"}));
  app.add_option("--splits", options.splits, "Splits per (token, KV head): 0 chosen, else 1-64")
      ->delimiter(',')
      ->check(CLI::Range(0, 64));
  app.add_option("--decode-stages", options.decode_stages,
                 "Tiles each warp of the tensor-core decode kernel holds: 0 its default (2), "
                 "else 2-4 (runs each)")
      ->delimiter(',')
      ->check(CLI::IsMember({0, 2, 3, 4}));
  app.add_option("--decode-fragments", options.decode_fragments,
                 "How the tensor-core decode kernel reads key and value fragments from shared "
                 "memory: loads (the default) and/or ldmatrix (runs each)")
      ->delimiter(',')
      ->check(CLI::IsMember({"loads", "ldmatrix"}));
  app.add_option("--kv-cache-dtype", options.dtypes,
                 "Caches to run: bf16 and/or fp8 (E4M3 codes with a scale per key and value)")
      ->delimiter(',')
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("--kv-layout", options.layouts,
                 "Cache layouts to run: slot (a slot's KV heads side by side) and/or block (a "
                 "block's keys of one KV head side by side)")
      ->delimiter(',')
      ->check(CLI::IsMember({"slot", "block"}));
  app.add_option("--prefill", options.prefills,
                 "Prompt lengths to run through the prefill kernel (one sequence from position "
                 "0, causal) instead of the decode cases")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 20));
  CLI11_PARSE(app, argc, argv);
  if (options.heads % options.kv_heads != 0 || options.heads / options.kv_heads > 8) {
    fmt::print(stderr, "--heads must be a multiple of --kv-heads, at most 8 times it\n");
    return 2;
  }
  const bool tensor_core_named = std::find(options.kernels.begin(), options.kernels.end(),
                                           "tensor-core") != options.kernels.end();
  if (tensor_core_named && (options.head_dim % 16 != 0 || options.head_dim > 128)) {
    fmt::print(stderr,
               "the tensor-core kernel takes a --head-dim that is a multiple of 16 up to "
               "128 (auto picks the grouped kernel for others)\n");
    return 2;
  }

  int device = 0;
  INFERBOX_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties{};
  INFERBOX_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  std::mt19937 rng(1);
  if (!options.prefills.empty()) {
    if (options.head_dim % 16 != 0 || options.head_dim > 128) {
      fmt::print(stderr,
                 "the prefill kernel takes a --head-dim that is a multiple of 16 up to 128\n");
      return 2;
    }
    fmt::print("device: {} ({} multiprocessors)\n", properties.name,
               properties.multiProcessorCount);
    fmt::print(
        "heads {}, KV heads {}, head_dim {}, block {}; prefill of one prompt, causal, tiles of {} "
        "rows\n",
        options.heads, options.kv_heads, options.head_dim, options.block_size,
        TiledAttentionRows(options.head_dim));
    fmt::print("{:>8} {:<8} {:>8} {:>12} {:>10} {:>10}\n", "tokens", "kv", "blocks", "us/call",
               "TFLOP/s", "max diff");
    bool agree = true;
    for (int64_t tokens : options.prefills) {
      for (const std::string& dtype : options.dtypes) {
        for (const std::string& layout : options.layouts) {
          agree = RunPrefillCase(options, tokens, dtype == "fp8", layout == "block",
                                 properties.multiProcessorCount, rng) &&
                  agree;
        }
      }
    }
    return agree ? 0 : 1;
  }
  int64_t largest = 0;
  for (int64_t batch : options.batches) {
    for (int64_t context : options.contexts) largest = std::max(largest, batch * context);
  }
  const double copy_bandwidth = CopyBandwidth(
      static_cast<size_t>(largest * options.kv_heads * options.head_dim * 2), options.iterations);
  fmt::print("device: {} ({} multiprocessors); copy bandwidth {:.1f} GB/s (read + write)\n",
             properties.name, properties.multiProcessorCount, copy_bandwidth / 1e9);
  fmt::print("heads {}, KV heads {}, head_dim {}, block {}; decode, 1 token/sequence\n",
             options.heads, options.kv_heads, options.head_dim, options.block_size);
  for (const std::string& dtype : options.dtypes) {
    for (const int stages : options.decode_stages) {
      for (const std::string& fragments : options.decode_fragments) {
        const DecodeKernelResources kernel =
            TensorCoreDecodeKernelResources(dtype == "fp8", stages, fragments == "ldmatrix");
        fmt::print(
            "tensor-core decode kernel, {} cache, {} stages, fragments by {}: {} registers a "
            "thread, {} bytes spilled, {} bytes of tiles a block, {} blocks of {} warps a "
            "multiprocessor\n",
            dtype, kernel.stages, fragments, kernel.registers, kernel.spill_bytes,
            kernel.shared_bytes, kernel.blocks_per_multiprocessor, kernel.warps_per_block);
      }
    }
  }
  fmt::print("{:>6} {:>8} {:<8} {:<20} {:>6} {:>10} {:>10} {:>9} {:>8} {:>10}\n", "batch",
             "context", "kv", "kernel", "splits", "us/call", "floor us", "GB/s", "floor",
             "max diff");
  bool agree = true;
  for (int64_t batch : options.batches) {
    for (int64_t context : options.contexts) {
      for (const std::string& dtype : options.dtypes) {
        for (const std::string& layout : options.layouts) {
          agree = RunCase(options, batch, context, dtype == "fp8", layout == "block",
                          properties.multiProcessorCount, copy_bandwidth, rng) &&
                  agree;
        }
      }
    }
  }
  return agree ? 0 : 1;
}
