#include "served_models_file.h"

#include <algorithm>
#include <sstream>

#include <toml++/toml.h>

#include "inferbox/common/atomic_file.h"

namespace inferbox::daemon {
namespace {

constexpr std::string_view kDefaultModelKey = "default_model";

toml::table ToToml(const ModelServeConfig& model) {
  const ModelServeConfig defaults;
  toml::table table;
  table.insert("name", model.name);
  table.insert("path", model.path.string());
  table.insert("device", model.device);
  if (!model.gpus.empty()) {
    toml::array gpus;
    for (uint32_t gpu : model.gpus) gpus.push_back(static_cast<int64_t>(gpu));
    table.insert("gpus", std::move(gpus));
  }
  table.insert("replicas", static_cast<int64_t>(model.replicas));
  if (model.tensor_parallel > 0)
    table.insert("tensor_parallel", static_cast<int64_t>(model.tensor_parallel));
  // 0 (the engine's default) is not a value the key accepts: leave it out.
  if (model.kv_cache_gib > 0) table.insert("kv_cache_gib", model.kv_cache_gib);
  table.insert("gpu_memory_fraction", model.gpu_memory_fraction);
  table.insert("max_running", model.max_running);
  table.insert("token_budget", model.token_budget);
  table.insert("max_model_len", model.max_model_len);
  table.insert("max_waiting", model.max_waiting);
  if (model.max_waiting_tokens > 0) table.insert("max_waiting_tokens", model.max_waiting_tokens);
  if (model.queue_timeout_seconds > 0)
    table.insert("queue_timeout_seconds", model.queue_timeout_seconds);
  if (model.quantization != defaults.quantization) table.insert("quantization", model.quantization);
  if (model.kv_cache_dtype != defaults.kv_cache_dtype)
    table.insert("kv_cache_dtype", model.kv_cache_dtype);
  if (model.sampling_defaults != defaults.sampling_defaults)
    table.insert("sampling_defaults", model.sampling_defaults);
  return table;
}

}  // namespace

Result<ServedModels> ReadServedModels(const std::filesystem::path& file) {
  std::error_code error;
  if (!std::filesystem::exists(file, error)) return ServedModels{};
  auto text = ReadFile(file);
  if (!text.ok()) return text.status();
  toml::table root;
  try {
    root = toml::parse(*text, file.string());
  } catch (const toml::parse_error& parse_error) {
    return InvalidArgumentError(file.string() +
                                ": invalid TOML: " + std::string(parse_error.description()));
  }
  ServedModels served;
  if (const auto* node = root.get(kDefaultModelKey)) {
    const auto* value = node->as_string();
    if (value == nullptr)
      return InvalidArgumentError(file.string() + ": default_model: expected a string");
    served.default_model = value->get();
    root.erase(kDefaultModelKey);
  }
  // What is left must be [[models]] tables, which the config parser checks.
  std::ostringstream models;
  models << root;
  auto parsed = ParseConfig(models.str(), file.string());
  if (!parsed.ok()) return parsed.status();
  served.models = std::move(parsed->models);
  return served;
}

Status WriteServedModels(const std::filesystem::path& file, const ServedModels& served) {
  toml::table root;
  if (!served.default_model.empty()) root.insert(kDefaultModelKey, served.default_model);
  toml::array models;
  for (const auto& model : served.models) models.push_back(ToToml(model));
  if (!models.empty()) root.insert("models", std::move(models));
  std::ostringstream text;
  text << "# Written by inferboxd: the models loaded and the default set through the Admin API\n"
          "# (inferboxctl models load/unload/default). The config file's [[models]] win on a\n"
          "# name clash.\n"
       << root << "\n";
  return WriteFileAtomically(file, text.str());
}

std::vector<ModelServeConfig> MergeServedModels(const std::vector<ModelServeConfig>& configured,
                                                const std::vector<ModelServeConfig>& loaded,
                                                std::vector<std::string>* overridden) {
  std::vector<ModelServeConfig> merged = configured;
  for (const auto& model : loaded) {
    const bool clashes = std::any_of(configured.begin(), configured.end(),
                                     [&](const auto& other) { return other.name == model.name; });
    if (clashes) {
      overridden->push_back(model.name);
    } else {
      merged.push_back(model);
    }
  }
  return merged;
}

}  // namespace inferbox::daemon
