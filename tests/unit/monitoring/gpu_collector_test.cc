// GPU telemetry without a GPU: a missing NVML (this machine, CI, every CPU box) means no GPU
// series and no failure, with the reason kept; a library that is not NVML is refused the
// same way. With a GPU the values come from the driver (checked on the GPU machine); here
// they come from the fake NVML (tests/support/fake_nvml), whose state file each test writes
// and changes while the collector runs.
#include "inferbox/monitoring/gpu_collector.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "temp_dir.h"

namespace inferbox::monitoring {
namespace {

TEST(GpuCollector, WithoutNvmlThereAreNoSeriesAndNoErrors) {
  GpuCollector collector("libnvidia-ml-that-does-not-exist.so.1");
  EXPECT_FALSE(collector.available());
  EXPECT_NE(collector.unavailable_reason().find("libnvidia-ml-that-does-not-exist"),
            std::string::npos)
      << collector.unavailable_reason();
  EXPECT_TRUE(collector.Collect().empty());
}

TEST(GpuCollector, ALibraryThatIsNotNvmlIsRefused) {
  GpuCollector collector("libm.so.6");
  EXPECT_FALSE(collector.available());
  EXPECT_NE(collector.unavailable_reason().find("lacks an NVML function"), std::string::npos)
      << collector.unavailable_reason();
  EXPECT_TRUE(collector.Collect().empty());
}

TEST(GpuCollector, TheDriversNvmlLoadsWhereThereIsOne) {
  GpuCollector collector;
  if (!collector.available()) {
    GTEST_SKIP() << "no NVML here (" << collector.unavailable_reason() << ")";
  }
  const auto families = collector.Collect();
  ASSERT_FALSE(families.empty());
  EXPECT_EQ(families[0].name, "inferbox_gpu_utilization_ratio");
  for (const auto& metric : families[0].metric) {
    EXPECT_GE(metric.gauge.value, 0.0);
    EXPECT_LE(metric.gauge.value, 1.0);
  }
  // The driver's answers through the box's declarations of NVML (monitoring/src/nvml_api.h):
  // plausible values mean the signatures and structs match the real library.
  const auto [gpus, watts] = collector.CountAndPower();
  EXPECT_GT(watts, 10.0 * gpus) << "idle GPUs draw tens of watts";
  EXPECT_LT(watts, 2000.0 * gpus) << "milliwatts taken for watts?";
  const GpuHealth health = collector.Health();
  EXPECT_EQ(health.gpus.size(), static_cast<size_t>(gpus));
  EXPECT_TRUE(health.healthy()) << "this machine's GPUs: " << health.Summary();
  for (const auto& family : families) {
    if (family.name != "inferbox_gpu_remapped_rows" && family.name != "inferbox_gpu_retired_pages")
      continue;
    for (const auto& metric : family.metric) EXPECT_LT(metric.gauge.value, 100000) << family.name;
  }
}

using Labels = std::map<std::string, std::string>;

// The value of the one series of `name` whose labels include `labels`; nullopt when none.
std::optional<double> Value(const std::vector<prometheus::MetricFamily>& families,
                            const std::string& name, const Labels& labels = {}) {
  for (const auto& family : families) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      Labels found;
      for (const auto& label : metric.label) found[label.name] = label.value;
      bool matches = true;
      for (const auto& [key, value] : labels) matches = matches && found[key] == value;
      if (!matches) continue;
      return family.type == prometheus::MetricType::Counter ? metric.counter.value
                                                            : metric.gauge.value;
    }
  }
  return std::nullopt;
}

const prometheus::MetricFamily* Family(const std::vector<prometheus::MetricFamily>& families,
                                       const std::string& name) {
  for (const auto& family : families) {
    if (family.name == name) return &family;
  }
  return nullptr;
}

constexpr char kUuid0[] = "GPU-0d6f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b";
constexpr char kUuid1[] = "GPU-1e7a2b3c-4d5e-6f7a-8b9c-0d1e2f3a4b5c";

// Two H100s as NVML would describe them: GPU 0 busy and with a memory history, GPU 1 idle.
std::string TwoGpus(const std::string& extra = "") {
  return std::string("gpus 2\n") +
         "gpu0.name NVIDIA H100 80GB HBM3\n"
         "gpu0.uuid " +
         kUuid0 +
         "\n"
         "gpu0.utilization 37\n"
         "gpu0.memory_used 21474836480\n"
         "gpu0.memory_total 85520809984\n"
         "gpu0.temperature 64\n"
         "gpu0.power 312500\n"
         "gpu0.sm_clock 1980\n"
         "gpu0.ecc_corrected_volatile 3\n"
         "gpu0.ecc_corrected_aggregate 10\n"
         "gpu0.ecc_uncorrected_aggregate 1\n"
         "gpu0.retired_sbe 2\n"
         "gpu0.retired_dbe 1\n"
         "gpu0.retired_pending 1\n"
         "gpu0.remapped_correctable 4\n"
         "gpu0.remapped_uncorrectable 1\n"
         "gpu0.remap_pending 1\n"
         "gpu1.name NVIDIA H100 80GB HBM3\n"
         "gpu1.uuid " +
         kUuid1 +
         "\n"
         "gpu1.memory_total 85520809984\n"
         "gpu1.temperature 31\n"
         "gpu1.power 69000\n" +
         extra;
}

// Points the fake NVML at a state file of the test's own; the file can change at any time.
class FakeNvmlTest : public ::testing::Test {
 protected:
  void SetUp() override { setenv("INFERBOX_FAKE_NVML_STATE", state_.c_str(), 1); }
  void TearDown() override {
    unsetenv("INFERBOX_FAKE_NVML_STATE");
    unsetenv("INFERBOX_NVML_LIBRARY");
  }

  // Replaces the state in one rename, so a reader on another thread never sees half of it.
  void Write(const std::string& text) {
    const auto next = dir_ / "state.next";
    std::ofstream(next) << text;
    std::filesystem::rename(next, state_);
  }
  void Append(const std::string& line) {
    std::ifstream in(state_);
    std::stringstream text;
    text << in.rdbuf() << line << "\n";
    Write(text.str());
  }

  testing::TempDir dir_;
  std::filesystem::path state_ = dir_ / "nvml-state";
};

TEST_F(FakeNvmlTest, ValuesComeInBaseUnitsWithTheGpusLabels) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_PATH);
  ASSERT_TRUE(collector.available()) << collector.unavailable_reason();
  const auto families = collector.Collect();
  const Labels gpu0 = {{"gpu", "0"}, {"uuid", kUuid0}, {"name", "NVIDIA H100 80GB HBM3"}};
  EXPECT_EQ(Value(families, "inferbox_gpu_utilization_ratio", gpu0), 0.37) << "percent / 100";
  EXPECT_EQ(Value(families, "inferbox_gpu_memory_used_bytes", gpu0), 21474836480.0);
  EXPECT_EQ(Value(families, "inferbox_gpu_memory_total_bytes", gpu0), 85520809984.0);
  EXPECT_EQ(Value(families, "inferbox_gpu_temperature_celsius", gpu0), 64);
  EXPECT_EQ(Value(families, "inferbox_gpu_power_watts", gpu0), 312.5) << "milliwatts / 1000";
  EXPECT_EQ(Value(families, "inferbox_gpu_sm_clock_hertz", gpu0), 1980e6) << "MHz * 10^6";
  EXPECT_EQ(Value(families, "inferbox_gpu_ecc_errors_total", {{"gpu", "0"}, {"type", "corrected"}}),
            10);
  EXPECT_EQ(
      Value(families, "inferbox_gpu_ecc_errors_total", {{"gpu", "0"}, {"type", "uncorrected"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_ecc_volatile_errors_total",
                  {{"gpu", "0"}, {"type", "corrected"}}),
            3);
  EXPECT_EQ(Value(families, "inferbox_gpu_ecc_volatile_errors_total",
                  {{"gpu", "0"}, {"type", "uncorrected"}}),
            0);
  EXPECT_EQ(
      Value(families, "inferbox_gpu_retired_pages", {{"gpu", "0"}, {"cause", "single_bit_ecc"}}),
      2);
  EXPECT_EQ(
      Value(families, "inferbox_gpu_retired_pages", {{"gpu", "0"}, {"cause", "double_bit_ecc"}}),
      1);
  EXPECT_EQ(Value(families, "inferbox_gpu_retired_pages_pending", gpu0), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_remapped_rows", {{"gpu", "0"}, {"cause", "correctable"}}),
            4);
  EXPECT_EQ(
      Value(families, "inferbox_gpu_remapped_rows", {{"gpu", "0"}, {"cause", "uncorrectable"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_row_remap_pending", gpu0), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_row_remap_failure", gpu0), 0);
  EXPECT_EQ(Value(families, "inferbox_gpu_last_xid", gpu0), 0) << "no Xid yet";
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", gpu0), 1)
      << "a pending row remap leaves the GPU in service (applied at the next reset)";
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", {{"gpu", "1"}, {"uuid", kUuid1}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_utilization_ratio", {{"gpu", "1"}}), 0);
  EXPECT_EQ(Family(families, "inferbox_gpu_xid_errors_total"), nullptr) << "no Xid yet";
  EXPECT_EQ(Family(families, "inferbox_gpu_ecc_errors_total")->type,
            prometheus::MetricType::Counter);
  EXPECT_EQ(Family(families, "inferbox_gpu_healthy")->type, prometheus::MetricType::Gauge);

  const auto [gpus, watts] = collector.CountAndPower();
  EXPECT_EQ(gpus, 2);
  EXPECT_DOUBLE_EQ(watts, 312.5 + 69.0);
  EXPECT_TRUE(collector.Health().healthy()) << collector.Health().Summary();
}

// The driver's version, for inferbox_build_info's driver label: read at start; empty where
// NVML does not say (or is not there).
TEST_F(FakeNvmlTest, TheDriverVersionIsReadAtStart) {
  Write(TwoGpus("driver 580.95.05\n"));
  EXPECT_EQ(GpuCollector(FAKE_NVML_PATH).driver_version(), "580.95.05");
  Write(TwoGpus());
  EXPECT_EQ(GpuCollector(FAKE_NVML_PATH).driver_version(), "");
  EXPECT_EQ(GpuCollector("/no/such/libnvidia-ml.so.1").driver_version(), "");
}

TEST_F(FakeNvmlTest, WhatAGpuDoesNotSupportIsLeftOutWithoutALogLine) {
  Write(
      TwoGpus("gpu1.unsupported ecc,power,temperature,clock,retired_pages,remapped_rows,events\n"));
  GpuCollector collector(FAKE_NVML_PATH);
  ASSERT_TRUE(collector.available()) << collector.unavailable_reason();
  std::ostringstream log;
  const auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_st>(log)));
  std::vector<prometheus::MetricFamily> families;
  for (int scrape = 0; scrape < 3; ++scrape) families = collector.Collect();
  const GpuHealth health = collector.Health();
  spdlog::set_default_logger(previous);

  EXPECT_EQ(log.str(), "") << "unsupported readings are expected, not news";
  const Labels gpu1 = {{"gpu", "1"}};
  for (const char* name : {"inferbox_gpu_temperature_celsius", "inferbox_gpu_power_watts",
                           "inferbox_gpu_sm_clock_hertz", "inferbox_gpu_ecc_errors_total",
                           "inferbox_gpu_ecc_volatile_errors_total", "inferbox_gpu_retired_pages",
                           "inferbox_gpu_retired_pages_pending", "inferbox_gpu_remapped_rows",
                           "inferbox_gpu_row_remap_pending", "inferbox_gpu_row_remap_failure",
                           "inferbox_gpu_last_xid"}) {
    EXPECT_EQ(Value(families, name, gpu1), std::nullopt) << name << " for the GPU without it";
    EXPECT_NE(Value(families, name, {{"gpu", "0"}}), std::nullopt) << name << " for GPU 0";
  }
  EXPECT_EQ(Value(families, "inferbox_gpu_memory_total_bytes", gpu1), 85520809984.0);
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", gpu1), 1);
  EXPECT_TRUE(health.healthy()) << health.Summary();
}

TEST_F(FakeNvmlTest, AnOlderDriverWithoutTheNewerFunctionsStillReportsTheRest) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_LEGACY_PATH);
  ASSERT_TRUE(collector.available()) << collector.unavailable_reason();
  Append("xid 0 79");  // No event set to see it with.
  const auto families = collector.Collect();
  EXPECT_EQ(Value(families, "inferbox_gpu_power_watts", {{"gpu", "0"}}), 312.5);
  EXPECT_EQ(Value(families, "inferbox_gpu_ecc_volatile_errors_total",
                  {{"gpu", "0"}, {"type", "corrected"}}),
            3);
  for (const char* name : {"inferbox_gpu_retired_pages", "inferbox_gpu_retired_pages_pending",
                           "inferbox_gpu_remapped_rows", "inferbox_gpu_row_remap_pending",
                           "inferbox_gpu_row_remap_failure", "inferbox_gpu_xid_errors_total",
                           "inferbox_gpu_last_xid"}) {
    EXPECT_EQ(Family(families, name), nullptr) << name << " needs a newer driver";
  }
  EXPECT_TRUE(collector.Health().healthy());
}

TEST_F(FakeNvmlTest, EachXidEventIsCountedOnceByGpuAndCode) {
  Write(TwoGpus("xid 0 13\n"));  // Before the collector registered: never delivered to it.
  GpuCollector collector(FAKE_NVML_PATH);
  EXPECT_EQ(Family(collector.Collect(), "inferbox_gpu_xid_errors_total"), nullptr);

  Append("xid 0 13");
  auto families = collector.Collect();
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "0"}, {"xid", "13"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_last_xid", {{"gpu", "0"}}), 13);
  families = collector.Collect();
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "0"}, {"xid", "13"}}), 1)
      << "a second scrape must not count the same event again";

  Append("xid 0 13");
  Append("xid 1 31");
  Append("xid 0 43");
  EXPECT_TRUE(collector.Health().healthy()) << "application faults leave the GPUs in service";
  families = collector.Collect();
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "0"}, {"xid", "13"}}), 2);
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "0"}, {"xid", "43"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "1"}, {"xid", "31"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_last_xid", {{"gpu", "0"}}), 43);
  EXPECT_EQ(Value(families, "inferbox_gpu_last_xid", {{"gpu", "1"}}), 31);
}

TEST_F(FakeNvmlTest, AFatalXidTakesTheGpuOutOfServiceUntilTheDaemonRestarts) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_PATH);
  Append("xid 1 79");
  GpuHealth health = collector.Health();
  ASSERT_EQ(health.gpus.size(), 2u);
  EXPECT_TRUE(health.gpus[0].healthy);
  EXPECT_FALSE(health.gpus[1].healthy);
  EXPECT_EQ(health.gpus[1].uuid, kUuid1);
  EXPECT_EQ(health.gpus[1].reason, "Xid 79: GPU has fallen off the bus");
  EXPECT_EQ(health.Summary(),
            std::string("GPU 1 (") + kUuid1 + "): Xid 79: GPU has fallen off the bus");
  const auto families = collector.Collect();
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", {{"gpu", "1"}}), 0);
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", {{"gpu", "0"}}), 1);
  EXPECT_EQ(Value(families, "inferbox_gpu_xid_errors_total", {{"gpu", "1"}, {"xid", "79"}}), 1);
  EXPECT_FALSE(collector.Health().healthy()) << "a fatal Xid is not forgotten at the next look";

  GpuCollector restarted(FAKE_NVML_PATH);
  EXPECT_TRUE(restarted.Health().healthy()) << "a new daemon (after the reset) starts clean";
}

TEST_F(FakeNvmlTest, ALostGpuTurnsUnhealthyAndTheScrapeGoesOn) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_PATH);
  Write(TwoGpus("gpu1.lost 1\n"));
  const auto families = collector.Collect();
  const Labels gpu1 = {{"gpu", "1"}, {"uuid", kUuid1}, {"name", "NVIDIA H100 80GB HBM3"}};
  EXPECT_EQ(Value(families, "inferbox_gpu_healthy", gpu1), 0) << "labels kept from the start";
  EXPECT_EQ(Value(families, "inferbox_gpu_memory_total_bytes", gpu1), std::nullopt);
  EXPECT_EQ(Value(families, "inferbox_gpu_power_watts", {{"gpu", "0"}}), 312.5);
  const GpuHealth health = collector.Health();
  EXPECT_TRUE(health.gpus[0].healthy);
  EXPECT_FALSE(health.gpus[1].healthy);
  EXPECT_TRUE(health.gpus[1].reason.starts_with("GPU lost")) << health.gpus[1].reason;
  const auto [gpus, watts] = collector.CountAndPower();
  EXPECT_EQ(gpus, 2);
  EXPECT_DOUBLE_EQ(watts, 312.5);
}

TEST_F(FakeNvmlTest, AGpuAlreadyLostAtStartIsReportedUnhealthy) {
  Write(TwoGpus("gpu1.lost 1\n"));
  GpuCollector collector(FAKE_NVML_PATH);
  ASSERT_TRUE(collector.available()) << collector.unavailable_reason();
  const GpuHealth health = collector.Health();
  ASSERT_EQ(health.gpus.size(), 2u);
  EXPECT_TRUE(health.gpus[0].healthy);
  EXPECT_FALSE(health.gpus[1].healthy);
  EXPECT_EQ(Value(collector.Collect(), "inferbox_gpu_healthy", {{"gpu", "1"}}), 0);
}

TEST_F(FakeNvmlTest, UncorrectedEccErrorsAndARowRemapFailureAreUnhealthy) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_PATH);
  Write(TwoGpus("gpu0.ecc_uncorrected_volatile 2\n"));
  GpuHealth health = collector.Health();
  EXPECT_EQ(health.gpus[0].reason, "2 uncorrected ECC errors since the driver loaded");
  EXPECT_TRUE(health.gpus[1].healthy);
  Write(TwoGpus("gpu1.remap_failure 1\n"));
  health = collector.Health();
  EXPECT_TRUE(health.gpus[0].healthy) << "the volatile count reset with the GPU";
  EXPECT_EQ(health.gpus[1].reason, "row remapping failure (NVIDIA's replacement condition)");
  EXPECT_EQ(Value(collector.Collect(), "inferbox_gpu_row_remap_failure", {{"gpu", "1"}}), 1);
}

TEST_F(FakeNvmlTest, AWatcherHearsOfEachChangeOfHealth) {
  Write(TwoGpus());
  GpuCollector collector(FAKE_NVML_PATH);
  std::promise<GpuHealth> changed;
  collector.WatchHealth(std::chrono::milliseconds(5),
                        [&changed, called = false](const GpuHealth& health) mutable {
                          if (!called) changed.set_value(health);
                          called = true;
                        });
  Append("xid 0 95");
  auto future = changed.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "the watcher never reported the uncontained ECC error";
  const GpuHealth health = future.get();
  EXPECT_EQ(health.gpus[0].reason, "Xid 95: uncontained ECC error");
  EXPECT_TRUE(health.gpus[1].healthy);
  collector.StopWatchingHealth();
  collector.StopWatchingHealth();  // Idempotent, as the destructor relies on.
}

TEST_F(FakeNvmlTest, AFailedInitIsAReasonNotAnError) {
  Write("init_error 9\n");
  GpuCollector collector(FAKE_NVML_PATH);
  EXPECT_FALSE(collector.available());
  EXPECT_EQ(collector.unavailable_reason(),
            "nvmlInit failed with NVML error 9 (Driver Not Loaded)");
  EXPECT_TRUE(collector.Collect().empty());
  EXPECT_TRUE(collector.Health().gpus.empty());
  EXPECT_TRUE(collector.Health().healthy()) << "no GPU telemetry is not a GPU fault";
}

TEST_F(FakeNvmlTest, TheLibraryComesFromTheEnvironmentWhenSet) {
  EXPECT_EQ(DefaultNvmlLibrary(), "libnvidia-ml.so.1");
  setenv("INFERBOX_NVML_LIBRARY", FAKE_NVML_PATH, 1);
  Write(TwoGpus());
  GpuCollector collector;
  EXPECT_TRUE(collector.available()) << collector.unavailable_reason();
  EXPECT_EQ(collector.CountAndPower().first, 2);
}

}  // namespace
}  // namespace inferbox::monitoring
