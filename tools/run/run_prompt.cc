// inferbox-run: runs one prompt through the engine in-process (tokenizer, chat template,
// model on the CPU or CUDA backend, sampler, streaming detokenizer, stop conditions) and streams
// the text to stdout; statistics go to stderr. For people checking a model folder, and as
// the CPU forward benchmark:
//
//   inferbox-run --model DIR --prompt "Why is the sky blue?" --chat --max-tokens 64
//   inferbox-run --model DIR --prompt-tokens 512 --max-tokens 32 --ignore-eos   (benchmark)
#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include "inferbox/engine/backend/factory.h"
#include "inferbox/engine/chat_template/chat_format.h"
#include "inferbox/engine/model/model.h"
#include "inferbox/engine/sampling/sampler.h"
#include "inferbox/engine/sampling/stop.h"
#include "inferbox/engine/tokenizer/incremental_decoder.h"
#include "inferbox/engine/tokenizer/tokenizer.h"

namespace {

using namespace inferbox;
using namespace inferbox::engine;

struct Options {
  std::filesystem::path model;
  std::string device = "cpu";
  std::string prompt;
  int64_t prompt_tokens = 0;
  bool chat = false;
  std::string system;
  int64_t max_tokens = 64;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  SamplingParams sampling;
  bool floor = false;
};

Result<std::string> RenderChat(const Options& options, const Tokenizer& tokenizer) {
  auto format = ChatFormat::LoadFromDirectory(options.model, tokenizer);
  if (!format.ok()) return format.status();
  boost::json::array messages;
  if (!options.system.empty())
    messages.push_back({{"role", "system"}, {"content", options.system}});
  messages.push_back({{"role", "user"}, {"content", options.prompt}});
  return format->Render({{"messages", messages}, {"add_generation_prompt", true}});
}

int Run(const Options& options) {
  auto tokenizer = Tokenizer::LoadFromDirectory(options.model);
  if (!tokenizer.ok()) {
    fmt::print(stderr, "inferbox-run: {}\n", tokenizer.status().ToString());
    return 1;
  }
  auto made = MakeBackend(options.device);
  if (!made.ok()) {
    fmt::print(stderr, "inferbox-run: {}\n", made.status().ToString());
    return 1;
  }
  const std::unique_ptr<Backend> backend = std::move(made).value();
  auto model = Model::Load(options.model, *backend);
  if (!model.ok()) {
    fmt::print(stderr, "inferbox-run: {}\n", model.status().ToString());
    return 1;
  }
  if (Status status = ValidateSamplingParams(options.sampling); !status.ok()) {
    fmt::print(stderr, "inferbox-run: {}\n", status.message());
    return 2;
  }

  std::vector<int32_t> prompt;
  if (options.prompt_tokens > 0) {
    // Benchmark input: a fixed, valid sequence of ids.
    for (int64_t i = 0; i < options.prompt_tokens; ++i)
      prompt.push_back(static_cast<int32_t>((i * 7919 + 13) % 30000));
  } else {
    std::string text = options.prompt;
    if (options.chat) {
      auto rendered = RenderChat(options, **tokenizer);
      if (!rendered.ok()) {
        fmt::print(stderr, "inferbox-run: {}\n", rendered.status().message());
        return 1;
      }
      text = *rendered;
    }
    // A rendered chat carries its own special tokens.
    prompt = (*tokenizer)->Encode(text, !options.chat);
  }
  const ModelConfig& config = (*model)->config();
  const int64_t context = static_cast<int64_t>(prompt.size()) + options.max_tokens;
  if (prompt.empty() || context > config.max_position_embeddings) {
    fmt::print(stderr,
               "inferbox-run: {} prompt tokens + {} new ones do not fit the context of {}\n",
               prompt.size(), options.max_tokens, config.max_position_embeddings);
    return 2;
  }

  constexpr int64_t kBlockSize = 16;
  const int64_t num_blocks = (context + kBlockSize - 1) / kBlockSize;
  auto cache = backend->AllocateKvCache((*model)->KvShape(num_blocks, kBlockSize));
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks));
  std::iota(block_table.begin(), block_table.end(), 0);

  StopCriteria criteria;
  criteria.eos_token_ids = (*model)->EosTokenIds();
  criteria.max_tokens = options.max_tokens;
  criteria.ignore_eos = options.ignore_eos;
  Sampler sampler(options.sampling, prompt);
  IncrementalDecoder detokenizer(**tokenizer, true);
  StopStringMatcher stops(options.stop, false);

  const auto start = std::chrono::steady_clock::now();
  ForwardSequence step{prompt, 0, block_table};
  auto logits = (*model)->Forward(std::span(&step, 1), *cache, false);
  if (!logits.ok()) {
    fmt::print(stderr, "inferbox-run: {}\n", logits.status().ToString());
    return 1;
  }
  const auto prefilled = std::chrono::steady_clock::now();
  int64_t generated = 0;
  FinishReason finish = FinishReason::kNone;
  int32_t token = 0;
  while (finish == FinishReason::kNone) {
    token = sampler.Next(*logits).token;
    ++generated;
    finish = CheckTokenStop(criteria, token, generated);
    auto delta = detokenizer.Append(std::span(&token, 1));
    if (!delta.ok()) {
      fmt::print(stderr, "inferbox-run: {}\n", delta.status().ToString());
      return 1;
    }
    std::cout << stops.Feed(*delta) << std::flush;
    if (stops.stopped()) finish = FinishReason::kStop;
    if (finish != FinishReason::kNone) break;
    step = {std::span<const int32_t>(&token, 1),
            static_cast<int64_t>(prompt.size()) + generated - 1, block_table};
    logits = (*model)->Forward(std::span(&step, 1), *cache, false);
    if (!logits.ok()) {
      fmt::print(stderr, "inferbox-run: {}\n", logits.status().ToString());
      return 1;
    }
  }
  if (!stops.stopped()) std::cout << stops.Feed(detokenizer.Finish()) << stops.Flush();
  std::cout << std::endl;
  const auto done = std::chrono::steady_clock::now();

  if (options.floor) {
    // The decode floor: every weight is read once per step, at the machine's copy bandwidth.
    const double bandwidth = backend->MeasureCopyBandwidth();
    const double bytes_per_step = static_cast<double>((*model)->WeightBytesPerDecodeStep());
    fmt::print(stderr,
               "floor: {:.1f} MB of weights per decode step at {:.1f} GB/s measured copy bandwidth "
               "= {:.1f} tokens/s\n",
               bytes_per_step / 1e6, bandwidth / 1e9, bandwidth / bytes_per_step);
  }
  const double prefill_seconds = std::chrono::duration<double>(prefilled - start).count();
  const double decode_seconds = std::chrono::duration<double>(done - prefilled).count();
  fmt::print(stderr,
             "{} ({} layers, hidden {}, vocab {}): {} prompt tokens in {:.3f} s ({:.1f} tokens/s), "
             "{} generated in "
             "{:.3f} s ({:.2f} tokens/s), finish: {}\n",
             ArchitectureName(config.architecture), config.num_hidden_layers, config.hidden_size,
             config.vocab_size, prompt.size(), prefill_seconds,
             static_cast<double>(prompt.size()) / prefill_seconds, generated, decode_seconds,
             static_cast<double>(generated - 1) / std::max(decode_seconds, 1e-9),
             finish == FinishReason::kLength ? "length" : "stop");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Run one prompt through the inferbox engine in-process (CPU or CUDA)"};
  Options options;
  app.add_option("--model", options.model, "Model folder (Hugging Face layout)")->required();
  app.add_option("--device", options.device, "cpu, cuda or cuda:N")->capture_default_str();
  auto* prompt = app.add_option("--prompt", options.prompt, "Prompt text");
  app.add_option("--prompt-tokens", options.prompt_tokens,
                 "Benchmark: a synthetic prompt of this many tokens")
      ->excludes(prompt);
  app.add_flag("--chat", options.chat,
               "Render the prompt as a user message with the model's chat template");
  app.add_option("--system", options.system, "System message (with --chat)");
  app.add_option("--max-tokens", options.max_tokens, "Most tokens to generate")
      ->capture_default_str();
  app.add_flag("--ignore-eos", options.ignore_eos, "Keep generating past end-of-sequence tokens");
  app.add_option("--stop", options.stop, "Stop string (repeatable)");
  app.add_option("--temperature", options.sampling.temperature, "0 is greedy")
      ->capture_default_str();
  app.add_option("--top-p", options.sampling.top_p)->capture_default_str();
  app.add_option("--top-k", options.sampling.top_k)->capture_default_str();
  app.add_option("--min-p", options.sampling.min_p)->capture_default_str();
  app.add_option("--seed", options.sampling.seed)->capture_default_str();
  app.add_flag("--floor", options.floor,
               "Also print the memory-bandwidth floor of decoding on this machine");
  CLI11_PARSE(app, argc, argv);
  if (options.prompt.empty() && options.prompt_tokens == 0) {
    fmt::print(stderr, "inferbox-run: give --prompt or --prompt-tokens\n");
    return 2;
  }
  return Run(options);
}
