// The models loaded at run time (Admin.LoadModel) and the default model, kept in the state
// directory (served-models.toml) so that they survive a restart. The file is TOML in the
// config file's own [[models]] schema, plus one top-level key, default_model, and is checked
// by the same parser: a hand-edited file is validated like the configuration.
//
// At start the daemon serves the config file's [[models]] and then the file's; on a name
// clash the config file's entry wins (the file's is dropped, with a warning).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/daemon/config.h"

namespace inferbox::daemon {

inline constexpr std::string_view kServedModelsFileName = "served-models.toml";

struct ServedModels {
  // Loaded at run time, in load order.
  std::vector<ModelServeConfig> models;
  // Empty: none.
  std::string default_model;

  bool operator==(const ServedModels&) const = default;
};

// An absent file is an empty set; a malformed one is INVALID_ARGUMENT naming the file.
Result<ServedModels> ReadServedModels(const std::filesystem::path& file);
// Replaces the file atomically (a crash leaves the old or the new one).
Status WriteServedModels(const std::filesystem::path& file, const ServedModels& served);

// The config file's models, then those of `loaded` whose names the config does not use.
// The names dropped are appended to `overridden`.
std::vector<ModelServeConfig> MergeServedModels(const std::vector<ModelServeConfig>& configured,
                                                const std::vector<ModelServeConfig>& loaded,
                                                std::vector<std::string>* overridden);

}  // namespace inferbox::daemon
