// Checks a staged model before it is installed (R6.12): the files the engine parses must
// parse, and every offset in a weights header must lie inside its file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/model_store.h"
#include "model_files.h"

namespace inferbox::provisioning {

// What the manifest records about the model, learnt while validating it.
struct ModelFacts {
  std::string architecture;
  uint64_t num_parameters = 0;
  std::string dtype;
};

// Validates the model folder `dir` holding `files`: config.json exists and is a JSON object
// naming architectures[0]; every top-level *.json file parses; there is at least one
// top-level *.safetensors file and each header is valid against its file (the engine's own
// reader); model.safetensors.index.json, when present, maps every tensor to a shard that
// holds it. INVALID_ARGUMENT naming the file and the problem.
Result<ModelFacts> ValidateModelFolder(const std::filesystem::path& dir,
                                       const std::vector<ModelFile>& files,
                                       const StoreLimits& limits);

}  // namespace inferbox::provisioning
