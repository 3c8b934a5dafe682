#include "ctl_status.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

namespace inferbox::ctl {
namespace {

namespace api = ::inferbox::v1;

// "ready" from ENGINE_STATE_READY / MODEL_STATE_READY.
std::string LowerSuffix(const std::string& enum_name) {
  std::string name = enum_name.substr(enum_name.rfind('_') + 1);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return name;
}

std::string Age(const google::protobuf::Timestamp& then,
                std::chrono::system_clock::time_point now) {
  const auto at = std::chrono::system_clock::time_point(
      std::chrono::milliseconds(google::protobuf::util::TimeUtil::TimestampToMilliseconds(then)));
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(now - at).count();
  return fmt::format("{}s ago", std::max<int64_t>(seconds, 0));
}

std::string EngineLayers(const api::EngineInfo& engine, std::chrono::system_clock::time_point now) {
  std::string line = fmt::format("{:<20}{:<11}process {}", engine.name(),
                                 LowerSuffix(api::EngineState_Name(engine.state())),
                                 engine.process_live() ? "live" : "down");
  line += engine.has_last_canary_at() ? ", canary passed " + Age(engine.last_canary_at(), now)
                                      : std::string(", no canary passed yet");
  if (!engine.last_canary_error().empty())
    line += ", last canary failed: " + engine.last_canary_error();
  if (!engine.gpu_fault().empty()) line += ", held off its GPU: " + engine.gpu_fault();
  return line;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> HealthRows(
    const api::GetStatusResponse& status, std::chrono::system_clock::time_point now) {
  std::vector<std::pair<std::string, std::string>> rows;
  if (!status.has_health()) return rows;
  const api::BoxHealth& health = status.health();
  int models_ready = 0;
  for (const auto& model : health.models()) models_ready += model.ready() ? 1 : 0;
  int gpus_healthy = 0;
  for (const auto& gpu : health.gpus()) gpus_healthy += gpu.healthy() ? 1 : 0;
  std::string verdict =
      fmt::format("{} ({}: {} of {} models ready", health.ready() ? "READY" : "NOT READY",
                  health.status(), models_ready, health.models_size());
  if (health.gpus_size() > 0)
    verdict += fmt::format(", {} of {} GPUs healthy", gpus_healthy, health.gpus_size());
  rows.emplace_back("health", verdict + ")");
  rows.emplace_back("  daemon", health.draining() ? "live, draining" : "live");
  for (const auto& model : health.models()) {
    rows.emplace_back("  model",
                      fmt::format("{:<20}{:<11}{} of {} engines ready", model.name(),
                                  model.ready() ? "ready" : "not ready", model.engines_ready(),
                                  std::count_if(status.engines().begin(), status.engines().end(),
                                                [&](const api::EngineInfo& engine) {
                                                  return engine.model() == model.name();
                                                })));
    for (const auto& engine : status.engines()) {
      if (engine.model() == model.name())
        rows.emplace_back("    engine", EngineLayers(engine, now));
    }
  }
  for (const auto& gpu : health.gpus()) {
    rows.emplace_back(fmt::format("  gpu {}", gpu.index()),
                      fmt::format("{:<20}{} ({})", gpu.healthy() ? "healthy" : "UNHEALTHY",
                                  gpu.healthy() ? gpu.name() : gpu.reason(), gpu.uuid()));
  }
  if (health.gpus_size() == 0) {
    rows.emplace_back("  gpus", health.gpu_monitoring() == "nvml"
                                    ? "none found"
                                    : "not monitored: " + health.gpu_monitoring());
  }
  return rows;
}

}  // namespace inferbox::ctl
