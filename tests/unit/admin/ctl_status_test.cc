// `inferboxctl status`'s health rows from a GetStatus reply: every layer is shown, and a
// fault says where it is.
#include "ctl_status.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

namespace inferbox::ctl {
namespace {

namespace api = ::inferbox::v1;
using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;

std::string Text(const std::vector<std::pair<std::string, std::string>>& rows) {
  std::string text;
  for (const auto& [label, value] : rows) text += label + " | " + value + "\n";
  return text;
}

api::GetStatusResponse TwoEnginesOneOnAFaultyGpu() {
  api::GetStatusResponse status;
  api::BoxHealth& health = *status.mutable_health();
  health.set_daemon_live(true);
  health.set_ready(true);
  health.set_status("ready");
  health.set_gpu_monitoring("nvml");
  api::ModelHealth& model = *health.add_models();
  model.set_name("tiny");
  model.set_state(api::MODEL_STATE_READY);
  model.set_ready(true);
  model.set_engines_live(1);
  model.set_engines_ready(1);
  api::EngineInfo& serving = *status.add_engines();
  serving.set_name("tiny/0");
  serving.set_model("tiny");
  serving.set_state(api::ENGINE_STATE_READY);
  serving.set_process_live(true);
  *serving.mutable_last_canary_at() = TimeUtil::SecondsToTimestamp(1'000'000);
  api::EngineInfo& held = *status.add_engines();
  held.set_name("tiny/1");
  held.set_model("tiny");
  held.set_replica(1);
  held.set_state(api::ENGINE_STATE_RESTARTING);
  held.set_gpu_fault("GPU 1 (GPU-b): Xid 79: GPU has fallen off the bus");
  for (uint32_t index : {0u, 1u}) {
    api::GpuVerdict& gpu = *health.add_gpus();
    gpu.set_index(index);
    gpu.set_uuid(index == 0 ? "GPU-a" : "GPU-b");
    gpu.set_name("NVIDIA H100");
    gpu.set_healthy(index == 0);
    if (index == 1) gpu.set_reason("Xid 79: GPU has fallen off the bus");
  }
  return status;
}

TEST(HealthRowsTest, ShowsEveryLayer) {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'000'007));
  const std::string text = Text(HealthRows(TwoEnginesOneOnAFaultyGpu(), now));
  EXPECT_THAT(text, HasSubstr("health | READY (ready: 1 of 1 models ready, 1 of 2 GPUs healthy)"));
  EXPECT_THAT(text, HasSubstr("  daemon | live\n"));
  EXPECT_THAT(text, HasSubstr("  model | tiny"));
  EXPECT_THAT(text, HasSubstr("1 of 2 engines ready"));
  EXPECT_THAT(text, HasSubstr("process live, canary passed 7s ago"));
  EXPECT_THAT(text, HasSubstr("process down, no canary passed yet, held off its GPU: GPU 1"));
  EXPECT_THAT(text, HasSubstr("  gpu 0 | healthy"));
  EXPECT_THAT(text, HasSubstr("  gpu 1 | UNHEALTHY           Xid 79: GPU has fallen off the bus"));
}

TEST(HealthRowsTest, SaysWhyGpusAreNotMonitored) {
  api::GetStatusResponse status;
  status.mutable_health()->set_status("no_model_ready");
  status.mutable_health()->set_gpu_monitoring("libnvidia-ml.so.1: cannot open shared object file");
  const std::string text = Text(HealthRows(status, std::chrono::system_clock::now()));
  EXPECT_THAT(text, HasSubstr("health | NOT READY (no_model_ready: 0 of 0 models ready)"));
  EXPECT_THAT(text, HasSubstr("gpus | not monitored: libnvidia-ml.so.1"));
}

TEST(HealthRowsTest, NothingFromAnOlderDaemon) {
  EXPECT_TRUE(HealthRows(api::GetStatusResponse(), std::chrono::system_clock::now()).empty())
      << "a reply without health (an older daemon) prints no health rows";
}

}  // namespace
}  // namespace inferbox::ctl
