// inferbox-engine-fixed-step: inferbox-engine (the same program, engine_main.cc) whose
// model step is a wait of --fixed-step-ms picking known ordinary tokens (FixedTimeModel).
// The model folder is still loaded on the CPU (--device cpu only): its tokenizer detokenizes
// the output and its KV shapes size the cache. The vocabulary ends at 800: prompts are token
// ids below that (a text or chat prompt tokenizes past it and is refused, naming the size).
// Started by inferboxd in place of inferbox-engine ([engines] executable, through a script
// that adds the flag), it lets the daemon's whole path (HTTP, SSE, keys, the router, gRPC,
// the engine server, detokenizing) be measured at a GPU's step time on a machine without a
// GPU (tools/bench/daemon-path-bench). A developer tool: never installed, never for serving.
#include <spdlog/spdlog.h>

#include "bench/fixed_time_model.h"
#include "inferbox/engine/server/engine_main.h"

int main(int argc, char** argv) {
  using namespace inferbox;
  using namespace inferbox::engine;
  double step_ms = 0.0;
  double per_token_ms = 0.0;
  EngineMainHooks hooks;
  hooks.add_options = [&](CLI::App& app) {
    app.add_option("--fixed-step-ms", step_ms,
                   "Each model step is a wait (the host's cores free meanwhile) of this many "
                   "milliseconds, plus --fixed-step-ms-per-token per token in the step, that "
                   "picks known ordinary tokens instead of running the model")
        ->required()
        ->check(CLI::Range(0.0, 10000.0));
    app.add_option("--fixed-step-ms-per-token", per_token_ms,
                   "The wait's part per token (prompt or decode) in the step")
        ->check(CLI::Range(0.0, 1000.0));
  };
  hooks.wrap_runner = [&](ModelRunner& model) -> Result<std::unique_ptr<ModelRunner>> {
    // Its logits are host memory, which a GPU backend would read as device memory.
    if (model.logits_backend().device_memory()) {
      return InvalidArgumentError(
          "inferbox-engine-fixed-step runs with --device cpu only (its logits are host memory)");
    }
    spdlog::warn(
        "inferbox-engine-fixed-step: every model step is a wait of {} ms + {} ms per token that "
        "picks tokens {} to {}: for measuring the daemon's path, not for serving",
        step_ms, per_token_ms, bench::FixedTimeModel::kFirstToken,
        bench::FixedTimeModel::kFirstToken + bench::FixedTimeModel::kTokenRange - 1);
    return std::unique_ptr<ModelRunner>(std::make_unique<bench::FixedTimeModel>(
        model, bench::Milliseconds(step_ms), bench::Milliseconds(per_token_ms)));
  };
  return EngineMain(argc, argv, hooks);
}
