#include "model_validation.h"

#include <map>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/common/json.h"
#include "inferbox/engine/model/safetensors.h"

namespace inferbox::provisioning {
namespace {

namespace json = boost::json;

constexpr size_t kMaxArchitectureChars = 128;

bool IsTopLevel(const ModelFile& file) {
  return file.path().find('/') == std::string::npos;
}

Result<json::value> ParseJsonFile(const std::filesystem::path& dir, const ModelFile& file,
                                  const StoreLimits& limits) {
  if (file.size_bytes() > limits.max_json_file_bytes) {
    return InvalidArgumentError(fmt::format("{} is {}, more than the {} a JSON file may have",
                                            file.path(), FormatBytes(file.size_bytes()),
                                            FormatBytes(limits.max_json_file_bytes)));
  }
  auto text = ReadFile(dir / file.path());
  if (!text.ok()) return text.status();
  boost::system::error_code error;
  json::value value = inferbox::ParseJson(*text, error);
  if (error) {
    return InvalidArgumentError(
        fmt::format("{} is not valid JSON: {}", file.path(), error.message()));
  }
  return value;
}

Result<std::string> ArchitectureOf(const json::value& config) {
  const auto invalid = [](std::string_view why) {
    return InvalidArgumentError(fmt::format("config.json {}", why));
  };
  if (!config.is_object()) return invalid("is not a JSON object");
  const json::value* architectures = config.as_object().if_contains("architectures");
  if (architectures == nullptr || !architectures->is_array() || architectures->as_array().empty() ||
      !architectures->as_array().front().is_string()) {
    return invalid(
        "has no \"architectures\" list naming the model class (e.g. \"Qwen3ForCausalLM\")");
  }
  const std::string_view name = architectures->as_array().front().as_string();
  const bool printable = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
  if (name.empty() || name.size() > kMaxArchitectureChars || !printable) {
    return invalid("has an architecture name that is not an identifier");
  }
  return std::string(name);
}

// The engine's reader names files by their full path, here a staging folder the admin never
// sees: name them relative to the model instead. Always INVALID_ARGUMENT: the model is bad.
Status WithoutStagingPath(const Status& status, const std::filesystem::path& dir) {
  std::string message = status.message();
  const std::string prefix = (dir / "").string();
  for (size_t at = message.find(prefix); at != std::string::npos; at = message.find(prefix, at)) {
    message.erase(at, prefix.size());
  }
  return InvalidArgumentError(std::move(message));
}

}  // namespace

Result<ModelFacts> ValidateModelFolder(const std::filesystem::path& dir,
                                       const std::vector<ModelFile>& files,
                                       const StoreLimits& limits) {
  ModelFacts facts;
  bool has_config = false;
  bool has_index = false;
  std::string config_dtype;
  std::map<std::string, uint64_t> parameters_by_dtype;
  for (const ModelFile& file : files) {
    if (!IsTopLevel(file)) continue;
    if (file.path().ends_with(".json")) {
      auto value = ParseJsonFile(dir, file, limits);
      if (!value.ok()) return value.status();
      if (file.path() == "config.json") {
        auto architecture = ArchitectureOf(*value);
        if (!architecture.ok()) return architecture.status();
        facts.architecture = std::move(architecture).value();
        const json::value* dtype = value->as_object().if_contains("torch_dtype");
        if (dtype != nullptr && dtype->is_string()) config_dtype = dtype->as_string();
        has_config = true;
      }
      has_index |= file.path() == "model.safetensors.index.json";
    } else if (file.path().ends_with(".safetensors")) {
      auto weights = engine::SafetensorsFile::Open(dir / file.path());
      if (!weights.ok()) return WithoutStagingPath(weights.status(), dir);
      for (const auto& [name, tensor] : (*weights)->tensors()) {
        const auto elements = static_cast<uint64_t>(tensor.num_elements());
        facts.num_parameters += elements;
        parameters_by_dtype[std::string(engine::DTypeName(tensor.dtype))] += elements;
      }
    }
  }
  if (!has_config) {
    return InvalidArgumentError(
        "the model has no config.json (a Hugging Face model folder has one at its top)");
  }
  if (parameters_by_dtype.empty() &&
      std::none_of(files.begin(), files.end(), [](const ModelFile& file) {
        return IsTopLevel(file) && file.path().ends_with(".safetensors");
      })) {
    return InvalidArgumentError("the model has no *.safetensors weights at its top level");
  }
  if (has_index) {
    auto weights = engine::WeightStore::OpenModelDirectory(dir);
    if (!weights.ok()) return WithoutStagingPath(weights.status(), dir);
  }
  facts.dtype = config_dtype;
  uint64_t most = 0;
  for (const auto& [dtype, count] : parameters_by_dtype) {
    if (count > most) {
      most = count;
      facts.dtype = dtype;
    }
  }
  return facts;
}

}  // namespace inferbox::provisioning
