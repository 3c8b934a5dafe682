#pragma once
// The inferbox-engine program as a function, so that a developer tool can be the same
// program with a change made through hooks (tools/bench/fixed_step_engine.cc: the model's
// step replaced by one of fixed time, to measure the daemon's path on a machine without a
// GPU). inferbox-engine itself passes no hooks.
#include <functional>
#include <memory>

#include <CLI/CLI.hpp>

#include "inferbox/common/status.h"
#include "inferbox/engine/model/model_runner.h"

namespace inferbox::engine {

struct EngineMainHooks {
  // Adds options to the command line (before it is parsed).
  std::function<void(CLI::App&)> add_options;
  // Given the loaded model, returns the runner the engine loop runs instead (it may forward
  // to the model, which outlives it), or the reason it cannot (loading fails with it);
  // unset: the model.
  std::function<Result<std::unique_ptr<ModelRunner>>(ModelRunner& model)> wrap_runner;
};

// Parses the command line and runs the engine; returns the exit status (engine_main.cc).
int EngineMain(int argc, char** argv, const EngineMainHooks& hooks);

}  // namespace inferbox::engine
