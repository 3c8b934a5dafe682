#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numbers>

#include <fmt/format.h>

#include "inferbox/common/atomic_file.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/model/safetensors.h"
#include "inferbox/engine/parallel/communicator.h"

namespace inferbox::engine {

RopeTable MakeRopeTable(const ModelConfig& config) {
  RopeTable table;
  const int64_t half = config.head_dim / 2;
  for (int64_t j = 0; j < half; ++j) {
    // As transformers computes it: 1 / theta^(2j / head_dim), in float32.
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(config.head_dim);
    double inv_freq = 1.0 / std::pow(config.rope_theta, static_cast<double>(exponent));
    if (config.rope_scaling) {
      const Llama3RopeScaling& s = *config.rope_scaling;
      const double original = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = original / s.low_freq_factor;
      const double high_freq_wavelen = original / s.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / inv_freq;
      if (wavelen > low_freq_wavelen) {
        inv_freq /= s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth =
            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv_freq = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq;
      }
    }
    table.inv_freq.push_back(static_cast<float>(inv_freq));
  }
  return table;
}

namespace {

struct LayerWeights {
  Weight input_norm;
  Weight post_attention_norm;
  Weight q_proj, k_proj, v_proj, o_proj;
  Weight q_bias, k_bias, v_bias;  // Qwen2.
  Weight q_norm, k_norm;          // Qwen3.
  Weight gate_proj, up_proj, down_proj;
};

// The part of a tensor a tensor-parallel rank holds. Column-parallel projections (q/k/v,
// gate/up, and their biases) keep `count` of the output rows from `begin`: contiguous in
// the file. Row-parallel ones (o_proj, down_proj) keep `count` of the input columns:
// strided, so they are copied.
struct Split {
  enum Kind { kWhole, kRows, kColumns };
  Kind kind = kWhole;
  int64_t begin = 0;
  int64_t count = 0;
};

}  // namespace

// Activation buffers reused from step to step, grown to the largest step seen.
class Workspace {
 public:
  explicit Workspace(Backend& backend) : backend_(backend) {}
  // Buffer `index` with room for at least `num_floats`; its first num_floats are returned.
  std::span<float> Get(size_t index, int64_t num_floats) {
    if (index >= buffers_.size()) buffers_.resize(index + 1);
    auto& buffer = buffers_[index];
    if (buffer == nullptr || static_cast<int64_t>(buffer->data().size()) < num_floats) {
      buffer.reset();  // Free first: device memory may not hold both.
      buffer = backend_.Allocate(std::max<int64_t>(num_floats, 1));
      version_ = ++last_version_;
    }
    return buffer->data().first(static_cast<size_t>(num_floats));
  }
  // Changes whenever a buffer moves, and no two workspaces share one (Backend::RunRecorded's
  // buffers_version: a backend may serve more than one model).
  int64_t version() const { return version_; }

 private:
  Backend& backend_;
  std::vector<std::unique_ptr<Buffer>> buffers_;
  int64_t version_ = 0;
  static inline std::atomic<int64_t> last_version_{0};
};

struct Model::Impl {
  Backend* backend = nullptr;
  std::unique_ptr<Workspace> workspace;
  std::vector<float> host_logits;  // ReadBack's copy where the backend's memory is not the host's.
  ModelConfig config;
  GenerationConfig generation_config;
  std::unique_ptr<WeightStore> store;
  Weight embed_tokens;
  Weight final_norm;
  Weight lm_head;  // This rank's rows of it when vocab_parallel.
  std::vector<LayerWeights> layers;
  RopeTable rope;
  TensorParallelShard shard;
  Quantization quantization = Quantization::kNone;
  KvCacheDType kv_cache_dtype = KvCacheDType::kAuto;
  int64_t num_heads = 0;          // This rank's query heads,
  int64_t num_kv_heads = 0;       // KV heads,
  int64_t first_kv_head = 0;      // the first of those in the whole model,
  int64_t intermediate_size = 0;  // and MLP columns.
  // Each rank computes vocab_size / world_size of the logits (the ranks divide the vocabulary
  // evenly) and all-gathers the rest; else every rank computes them all.
  bool vocab_parallel = false;
  // Copied row-parallel slices that the backend computes from in place (the CPU backend);
  // a backend that keeps its own copy lets them go at once.
  std::vector<std::vector<std::byte>> owned_slices;

  // A tensor of the model file, this rank's part of it (a column slice copied into `copy`).
  Result<Weight> HostView(const std::string& name, const std::vector<int64_t>& shape, Split split,
                          std::vector<std::byte>& copy);
  // A tensor loaded by the backend.
  Result<Weight> Get(const std::string& name, const std::vector<int64_t>& shape, Split split = {});
  // Tensors one Linears call takes together, loaded by the backend as one group into their
  // slots (in FP8 when the model is quantised and they are linear layers' weights, not norms).
  struct TensorPart {
    Weight* slot;
    std::string name;
    std::vector<int64_t> shape;
    Split split;
  };
  Status LoadTogether(std::span<const TensorPart> parts);
  Status SplitForShard();
  Status LoadWeights();
  // Sums the ranks' partial outputs of a row-parallel projection (nothing on one rank).
  void AllReduce(std::span<float> data) const {
    if (shard.world_size > 1) shard.communicator->AllReduceSum(data);
  }
};

Result<Weight> Model::Impl::HostView(const std::string& name, const std::vector<int64_t>& shape,
                                     Split split, std::vector<std::byte>& copy) {
  auto view = store->GetFloat(name, shape);
  if (!view.ok()) return view.status();
  Weight host = Weight::FromView(**view);
  const auto element = static_cast<int64_t>(DTypeSize(host.dtype));
  const auto* bytes = static_cast<const std::byte*>(host.data);
  if (split.kind == Split::kRows && shape.size() == 1) {  // A bias: its elements.
    host.data = bytes + split.begin * element;
    host.cols = split.count;
  } else if (split.kind == Split::kRows) {
    host.data = bytes + split.begin * host.cols * element;
    host.rows = split.count;
  } else if (split.kind == Split::kColumns) {
    copy.resize(static_cast<size_t>(host.rows * split.count * element));
    for (int64_t row = 0; row < host.rows; ++row) {
      std::memcpy(copy.data() + row * split.count * element,
                  bytes + (row * host.cols + split.begin) * element,
                  static_cast<size_t>(split.count * element));
    }
    host.data = copy.data();
    host.cols = split.count;
  }
  return host;
}

Result<Weight> Model::Impl::Get(const std::string& name, const std::vector<int64_t>& shape,
                                Split split) {
  std::vector<std::byte> copy;
  auto host = HostView(name, shape, split, copy);
  if (!host.ok()) return host.status();
  auto loaded = backend->LoadWeight(*host);
  if (!loaded.ok()) return loaded.status();
  if (!copy.empty() && loaded->data == copy.data()) owned_slices.push_back(std::move(copy));
  return loaded;
}

Status Model::Impl::LoadTogether(std::span<const TensorPart> parts) {
  const bool linear = parts.front().shape.size() == 2;
  std::vector<std::vector<std::byte>> copies(parts.size());
  std::vector<Weight> hosts;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto host = HostView(parts[i].name, parts[i].shape, parts[i].split, copies[i]);
    if (!host.ok()) return host.status();
    hosts.push_back(*host);
  }
  auto loaded = linear && quantization == Quantization::kFp8 ? backend->LoadFp8Weights(hosts)
                                                             : backend->LoadWeights(hosts);
  if (!loaded.ok()) return loaded.status();
  for (size_t i = 0; i < parts.size(); ++i) {
    *parts[i].slot = (*loaded)[i];
    if (!copies[i].empty() && (*loaded)[i].data == copies[i].data())
      owned_slices.push_back(std::move(copies[i]));
  }
  return Status::Ok();
}

Status Model::Impl::SplitForShard() {
  const ModelConfig& c = config;
  const int64_t ranks = shard.world_size;
  INFERBOX_CHECK(ranks >= 1 && shard.rank >= 0 && shard.rank < ranks);
  INFERBOX_CHECK(ranks == 1 ||
                 (shard.communicator != nullptr && shard.communicator->world_size() == ranks &&
                  shard.communicator->rank() == shard.rank));
  if (c.num_attention_heads % ranks != 0) {
    return InvalidArgumentError(
        fmt::format("tensor parallel size {} does not divide the model's {} attention heads", ranks,
                    c.num_attention_heads));
  }
  // Each rank's query heads must use KV heads of its own: a share of them, or a single one
  // (replicated on the ranks whose heads use it).
  if (c.num_key_value_heads % ranks != 0 && ranks % c.num_key_value_heads != 0) {
    return InvalidArgumentError(fmt::format(
        "tensor parallel size {} and the model's {} KV heads: one must divide the other", ranks,
        c.num_key_value_heads));
  }
  if (c.intermediate_size % ranks != 0) {
    return InvalidArgumentError(
        fmt::format("tensor parallel size {} does not divide the model's intermediate_size {}",
                    ranks, c.intermediate_size));
  }
  num_heads = c.num_attention_heads / ranks;
  num_kv_heads = std::max<int64_t>(1, c.num_key_value_heads / ranks);
  first_kv_head = shard.rank * c.num_key_value_heads / ranks;
  intermediate_size = c.intermediate_size / ranks;
  vocab_parallel = ranks > 1 && c.vocab_size % ranks == 0;
  return Status::Ok();
}

Status Model::Impl::LoadWeights() {
  const ModelConfig& c = config;
  const int64_t q_size = c.num_attention_heads * c.head_dim;
  const int64_t kv_size = c.num_key_value_heads * c.head_dim;
  // This rank's rows of q/k/v and gate/up, and columns of o_proj and down_proj.
  const Split q_rows{Split::kRows, shard.rank * num_heads * c.head_dim, num_heads * c.head_dim};
  const Split kv_rows{Split::kRows, first_kv_head * c.head_dim, num_kv_heads * c.head_dim};
  const Split mlp_rows{Split::kRows, shard.rank * intermediate_size, intermediate_size};
  const Split o_columns{Split::kColumns, q_rows.begin, q_rows.count};
  const Split down_columns{Split::kColumns, mlp_rows.begin, mlp_rows.count};
  const int64_t vocab_slice = c.vocab_size / shard.world_size;
  const Split vocab_rows =
      vocab_parallel ? Split{Split::kRows, shard.rank * vocab_slice, vocab_slice} : Split{};
  const bool whole = shard.world_size == 1;
  auto take = [&](Weight& slot, const std::string& name, const std::vector<int64_t>& shape,
                  Split split = {}) -> Status {
    auto weight = Get(name, shape, whole ? Split{} : split);
    if (!weight.ok()) return weight.status();
    slot = *weight;
    return Status::Ok();
  };
  if (Status s = take(embed_tokens, "model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
      !s.ok())
    return s;
  if (Status s = take(final_norm, "model.norm.weight", {c.hidden_size}); !s.ok()) return s;
  const std::string lm_head_name =
      c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  if (c.tie_word_embeddings && !vocab_parallel) {
    lm_head = embed_tokens;
  } else if (Status s = take(lm_head, lm_head_name, {c.vocab_size, c.hidden_size}, vocab_rows);
             !s.ok()) {
    return s;
  }
  layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& l = layers[static_cast<size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    // In the file's order, in groups: q, k, v and gate, up are each one Linears call, loaded
    // together (a group of one is LoadWeight's).
    const auto part = [&](Weight& slot, const std::string& name, std::vector<int64_t> shape,
                          Split split) {
      return TensorPart{&slot, p + name, std::move(shape), whole ? Split{} : split};
    };
    const std::vector<TensorPart> groups[] = {
        {part(l.input_norm, "input_layernorm.weight", {c.hidden_size}, {})},
        {part(l.post_attention_norm, "post_attention_layernorm.weight", {c.hidden_size}, {})},
        {part(l.q_proj, "self_attn.q_proj.weight", {q_size, c.hidden_size}, q_rows),
         part(l.k_proj, "self_attn.k_proj.weight", {kv_size, c.hidden_size}, kv_rows),
         part(l.v_proj, "self_attn.v_proj.weight", {kv_size, c.hidden_size}, kv_rows)},
        {part(l.o_proj, "self_attn.o_proj.weight", {c.hidden_size, q_size}, o_columns)},
        {part(l.gate_proj, "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}, mlp_rows),
         part(l.up_proj, "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}, mlp_rows)},
        {part(l.down_proj, "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size},
              down_columns)},
    };
    for (const std::vector<TensorPart>& group : groups) {
      if (Status s = LoadTogether(group); !s.ok()) return s;
    }
    if (c.attention_bias) {
      if (Status s = take(l.q_bias, p + "self_attn.q_proj.bias", {q_size}, q_rows); !s.ok())
        return s;
      if (Status s = take(l.k_bias, p + "self_attn.k_proj.bias", {kv_size}, kv_rows); !s.ok())
        return s;
      if (Status s = take(l.v_bias, p + "self_attn.v_proj.bias", {kv_size}, kv_rows); !s.ok())
        return s;
    }
    if (c.qk_norm) {
      if (Status s = take(l.q_norm, p + "self_attn.q_norm.weight", {c.head_dim}); !s.ok()) return s;
      if (Status s = take(l.k_norm, p + "self_attn.k_norm.weight", {c.head_dim}); !s.ok()) return s;
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& dir, Backend& backend,
                                           const TensorParallelShard& shard,
                                           Quantization quantization, KvCacheDType kv_cache_dtype) {
  auto text = ReadFile(dir / "config.json");
  if (!text.ok()) return text.status();
  auto config = ParseModelConfig(*text);
  if (!config.ok()) return config.status();
  auto store = WeightStore::OpenModelDirectory(dir);
  if (!store.ok()) return store.status();

  auto impl = std::make_unique<Impl>();
  impl->backend = &backend;
  impl->workspace = std::make_unique<Workspace>(backend);
  impl->config = std::move(config).value();
  if (std::filesystem::exists(dir / "generation_config.json")) {
    auto generation_text = ReadFile(dir / "generation_config.json");
    if (!generation_text.ok()) return generation_text.status();
    auto generation = ParseGenerationConfig(*generation_text, impl->config.vocab_size);
    if (!generation.ok()) return generation.status();
    impl->generation_config = std::move(generation).value();
  }
  impl->store = std::move(store).value();
  impl->rope = MakeRopeTable(impl->config);
  impl->shard = shard;
  impl->quantization = quantization;
  impl->kv_cache_dtype = kv_cache_dtype;
  if (Status status = impl->SplitForShard(); !status.ok()) return status.WithContext(dir.string());
  if (Status status = impl->LoadWeights(); !status.ok()) return status.WithContext(dir.string());
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

const ModelConfig& Model::config() const {
  return impl_->config;
}

const TensorParallelShard& Model::shard() const {
  return impl_->shard;
}

const GenerationConfig& Model::generation_config() const {
  return impl_->generation_config;
}

std::vector<int32_t> Model::EosTokenIds() const {
  std::vector<int32_t> ids;
  auto add = [&ids](int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<int32_t>(id));
  };
  for (const int64_t id : impl_->config.eos_token_ids) add(id);
  for (const int64_t id : impl_->generation_config.eos_token_ids) add(id);
  return ids;
}

int64_t Model::WeightBytesPerDecodeStep() const {
  auto bytes = [](const Weight& w) { return w.empty() ? 0 : w.num_bytes(); };
  int64_t total =
      bytes(impl_->final_norm) + bytes(impl_->lm_head) +
      impl_->embed_tokens.cols * static_cast<int64_t>(DTypeSize(impl_->embed_tokens.dtype));
  for (const LayerWeights& l : impl_->layers) {
    for (const Weight* w : {&l.input_norm, &l.post_attention_norm, &l.q_proj, &l.k_proj, &l.v_proj,
                            &l.o_proj, &l.q_bias, &l.k_bias, &l.v_bias, &l.q_norm, &l.k_norm,
                            &l.gate_proj, &l.up_proj, &l.down_proj}) {
      total += bytes(*w);
    }
  }
  return total;
}

KvCacheShape Model::KvShape(int64_t num_blocks, int64_t block_size) const {
  const ModelConfig& c = impl_->config;
  return {c.num_hidden_layers, num_blocks, block_size,
          impl_->num_kv_heads, c.head_dim, impl_->kv_cache_dtype};
}

Backend& Model::logits_backend() {
  return *impl_->backend;
}

int64_t Model::KvCacheBytesPerBlock(int64_t block_size) const {
  return impl_->backend->KvCacheBytes(KvShape(1, block_size));
}

std::unique_ptr<KvCache> Model::AllocateKvCache(int64_t num_blocks, int64_t block_size) {
  return impl_->backend->AllocateKvCache(KvShape(num_blocks, block_size));
}

Result<std::span<const float>> Model::Forward(std::span<const ForwardSequence> batch,
                                              KvCache& cache, bool all_positions) {
  auto logits = ForwardOnBackend(batch, cache, all_positions);
  if (!logits.ok()) return logits.status();
  return impl_->backend->ReadBack(*logits, impl_->host_logits);
}

Result<std::span<const float>> Model::ForwardOnBackend(std::span<const ForwardSequence> batch,
                                                       KvCache& cache, bool all_positions) {
  const ModelConfig& c = impl_->config;
  Backend& backend = *impl_->backend;
  const KvCacheShape& kv = cache.shape();

  const KvCacheShape expected = KvShape(kv.num_blocks, kv.block_size);
  if (kv.num_layers != expected.num_layers || kv.num_kv_heads != expected.num_kv_heads ||
      kv.head_dim != expected.head_dim || kv.dtype != expected.dtype) {
    return InvalidArgumentError(
        fmt::format("the KV cache ({} layers, {} KV heads of {}, {}) was not made for this "
                    "model ({} layers, {} KV heads of {}, {})",
                    kv.num_layers, kv.num_kv_heads, kv.head_dim, KvCacheDTypeName(kv.dtype),
                    expected.num_layers, expected.num_kv_heads, expected.head_dim,
                    KvCacheDTypeName(expected.dtype)));
  }
  // Flatten the batch: token ids, positions and KV slots, validated before any op runs.
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::vector<int64_t> slots;
  std::vector<int64_t> logit_rows;
  std::vector<AttentionSequence> attention;
  for (const ForwardSequence& sequence : batch) {
    const auto count = static_cast<int64_t>(sequence.tokens.size());
    if (count == 0) return InvalidArgumentError("a sequence in the batch has no tokens");
    const int64_t end = sequence.start_position + count;
    if (sequence.start_position < 0 || end > c.max_position_embeddings) {
      return InvalidArgumentError(fmt::format("positions [{}, {}) exceed the context of {}",
                                              sequence.start_position, end,
                                              c.max_position_embeddings));
    }
    if (static_cast<int64_t>(sequence.block_table.size()) * kv.block_size < end) {
      return InvalidArgumentError(fmt::format("block table of {} blocks cannot hold {} positions",
                                              sequence.block_table.size(), end));
    }
    for (const int32_t block : sequence.block_table) {
      if (block < 0 || block >= kv.num_blocks)
        return InvalidArgumentError(fmt::format("KV block {} does not exist", block));
    }
    for (int64_t t = 0; t < count; ++t) {
      const int32_t id = sequence.tokens[static_cast<size_t>(t)];
      if (id < 0 || id >= c.vocab_size)
        return InvalidArgumentError(fmt::format("token id {} is outside the vocabulary", id));
      const int64_t position = sequence.start_position + t;
      if (all_positions) logit_rows.push_back(static_cast<int64_t>(ids.size()));
      ids.push_back(id);
      positions.push_back(position);
      slots.push_back(sequence.block_table[static_cast<size_t>(position / kv.block_size)] *
                          kv.block_size +
                      position % kv.block_size);
    }
    // Logits only where asked: every position, or each sequence's last token.
    if (!all_positions) logit_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
    attention.push_back({sequence.start_position, count, sequence.block_table});
  }
  // A decode step (one token per sequence) that the backend records is padded to the batch
  // size of its recordings (Backend::RecordedBatchSize): tokens at position 0 that write no
  // KV and read one key of the first sequence's first block; their logits are not returned.
  const auto num_sequences = static_cast<int64_t>(batch.size());
  const bool decode_only = !all_positions && static_cast<int64_t>(ids.size()) == num_sequences;
  const int64_t padded =
      decode_only && impl_->shard.world_size == 1 ? backend.RecordedBatchSize(num_sequences) : 0;
  for (int64_t i = num_sequences; i < padded; ++i) {
    logit_rows.push_back(static_cast<int64_t>(ids.size()));
    ids.push_back(0);
    positions.push_back(0);
    slots.push_back(-1);
    attention.push_back({0, 1, batch.front().block_table.first(1)});
  }
  const std::unique_ptr<StepInputs> step = backend.PrepareStep(
      {ids, positions, slots, attention, logit_rows, &impl_->rope, /*recorded=*/padded > 0});

  const auto m = static_cast<int64_t>(ids.size());
  const auto num_rows = static_cast<int64_t>(logit_rows.size());
  const int64_t hidden = c.hidden_size;
  // This rank's share (all of it on one rank).
  const int64_t num_heads = impl_->num_heads;
  const int64_t q_size = num_heads * c.head_dim;
  const int64_t kv_size = impl_->num_kv_heads * c.head_dim;
  const int64_t intermediate = impl_->intermediate_size;
  Workspace& w = *impl_->workspace;
  const std::span<float> residual = w.Get(0, m * hidden);
  const std::span<float> normed = w.Get(1, m * hidden);
  const std::span<float> q = w.Get(2, m * q_size);
  const std::span<float> k = w.Get(3, m * kv_size);
  const std::span<float> v = w.Get(4, m * kv_size);
  const std::span<float> attention_out = w.Get(5, m * q_size);
  const std::span<float> delta = w.Get(6, m * hidden);
  const std::span<float> gate = w.Get(7, m * intermediate);
  const std::span<float> up = w.Get(8, m * intermediate);
  const std::span<float> rows = w.Get(9, num_rows * hidden);
  const std::span<float> logits = w.Get(10, num_rows * c.vocab_size);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  // Every op of the step up to the logits (the vocabulary-parallel LM head's all-gather aside).
  const auto issue = [&] {
    backend.Embedding(*step, impl_->embed_tokens, residual);
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      const LayerWeights& l = impl_->layers[static_cast<size_t>(layer)];
      // The first layer normalises the embeddings; later ones add the previous MLP output.
      const Backend::LinearOutput qkv[] = {{&l.q_proj, c.attention_bias ? &l.q_bias : nullptr, q},
                                           {&l.k_proj, c.attention_bias ? &l.k_bias : nullptr, k},
                                           {&l.v_proj, c.attention_bias ? &l.v_bias : nullptr, v}};
      backend.AddRmsNormLinears(
          residual, layer == 0 ? std::span<const float>() : std::span<const float>(delta), m,
          l.input_norm, eps, normed, qkv);
      if (c.qk_norm) {  // Qwen3: RMSNorm per head before RoPE.
        backend.RmsNormGroups(q, l.q_norm, eps);
        backend.RmsNormGroups(k, l.k_norm, eps);
      }
      backend.RopeWriteKv(*step, q, k, v, num_heads, cache, layer);
      backend.PagedAttentionLinear(*step, cache, layer, q, num_heads, scale, attention_out,
                                   l.o_proj, delta);
      impl_->AllReduce(delta);  // Row-parallel: each rank holds a partial sum.
      const Backend::LinearOutput gate_up[] = {{&l.gate_proj, nullptr, gate},
                                               {&l.up_proj, nullptr, up}};
      backend.AddRmsNormLinears(residual, delta, m, l.post_attention_norm, eps, normed, gate_up);
      backend.SiluMulLinear(gate, up, m, l.down_proj, delta);
      impl_->AllReduce(delta);
    }
    backend.AddRmsNorm(residual, delta, m, impl_->final_norm, eps, normed);
    backend.GatherRows(*step, normed, hidden, rows);
    if (!impl_->vocab_parallel) backend.Linear(rows, num_rows, impl_->lm_head, nullptr, logits);
  };
  if (padded > 0) {
    backend.RunRecorded(*step, cache, w.version(), issue);
    return std::span<const float>(logits).first(static_cast<size_t>(num_sequences * c.vocab_size));
  }
  issue();
  if (!impl_->vocab_parallel) return std::span<const float>(logits);
  // Vocabulary-parallel LM head: this rank's slice of every row's logits, written in place
  // into its part of the all-gather ([rank, row, slice]), then the rows reordered to
  // [row, rank, slice], which is [row, vocab].
  const int64_t slice = impl_->lm_head.rows;
  const int32_t ranks = impl_->shard.world_size;
  const std::span<float> gathered = w.Get(11, num_rows * c.vocab_size);
  const std::span<float> part =
      gathered.subspan(static_cast<size_t>(impl_->shard.rank * num_rows * slice),
                       static_cast<size_t>(num_rows * slice));
  backend.Linear(rows, num_rows, impl_->lm_head, nullptr, part);
  impl_->shard.communicator->AllGather(std::as_bytes(part), std::as_writable_bytes(gathered));
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(num_rows * ranks));
  for (int64_t row = 0; row < num_rows; ++row) {
    for (int32_t r = 0; r < ranks; ++r) order.push_back(r * num_rows + row);
  }
  StepLayout reorder;
  reorder.logit_rows = order;
  backend.GatherRows(*backend.PrepareStep(reorder), gathered, slice, logits);
  return std::span<const float>(logits);
}

}  // namespace inferbox::engine
