// What the CUDA benchmarks (inferbox-attention-bench, inferbox-linear-bench) share: device
// buffers, random fills, timing of launches and the copy bandwidth that is their floor.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "kernels.h"

namespace inferbox::tools::bench {

using engine::cuda::LaunchConvertToBf16;
using engine::cuda::SourceType;

// A device buffer freed on scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0) INFERBOX_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), Bytes()));
  }
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return data_; }
  size_t Bytes() const { return count_ * sizeof(T); }
  void Upload(const std::vector<T>& host) {
    INFERBOX_CUDA_CHECK(
        cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(count_);
    INFERBOX_CUDA_CHECK(cudaMemcpy(host.data(), data_, Bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  size_t count_;
  T* data_ = nullptr;
};

// The first `pattern` elements of `buffer` copied over the rest of it on the device.
template <typename T>
void RepeatOnDevice(DeviceBuffer<T>& buffer, size_t pattern) {
  const size_t count = buffer.Bytes() / sizeof(T);
  for (size_t done = pattern; done < count;) {
    const size_t n = std::min(done, count - done);
    INFERBOX_CUDA_CHECK(
        cudaMemcpy(buffer.get() + done, buffer.get(), n * sizeof(T), cudaMemcpyDeviceToDevice));
    done += n;
  }
}

// Elements of the random pattern the fills make once (up to 8 MiB of BF16).
inline constexpr size_t kPatternElements = size_t{4} << 20;

// Fills a BF16 buffer with random values in [-1, 1]: a random pattern made once (rounded to
// BF16 by the backend's own conversion) and copied over the rest on the device.
inline void FillRandomBf16(DeviceBuffer<uint16_t>& buffer, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const size_t pattern = std::min(buffer.Bytes() / sizeof(uint16_t), kPatternElements);
  std::vector<float> host(pattern);
  for (auto& value : host) value = uniform(rng);
  DeviceBuffer<float> floats(pattern);
  floats.Upload(host);
  LaunchConvertToBf16(floats.get(), SourceType::kF32, buffer.get(), static_cast<int64_t>(pattern),
                      nullptr);
  RepeatOnDevice(buffer, pattern);
}

// Fills a buffer with `random()`'s values: a pattern made once, copied over the rest.
template <typename T, typename Random>
void FillRandom(DeviceBuffer<T>& buffer, Random&& random) {
  std::vector<T> host(std::min(buffer.Bytes() / sizeof(T), kPatternElements));
  for (auto& value : host) value = random();
  buffer.Upload(host);
  RepeatOnDevice(buffer, host.size());
}

// The largest |a[i] − b[i]| (infinite where one is a NaN): how far one kernel's output is
// from another's.
inline double LargestDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double largest = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double delta = std::fabs(static_cast<double>(a[i]) - b[i]);
    largest = std::isnan(delta) ? INFINITY : std::max(largest, delta);
  }
  return largest;
}

// Seconds the work `issue` puts into `stream` takes on the device, between two events.
template <typename Issue>
double DeviceSeconds(cudaStream_t stream, Issue&& issue) {
  cudaEvent_t start, stop;
  INFERBOX_CUDA_CHECK(cudaEventCreate(&start));
  INFERBOX_CUDA_CHECK(cudaEventCreate(&stop));
  INFERBOX_CUDA_CHECK(cudaEventRecord(start, stream));
  issue();
  INFERBOX_CUDA_CHECK(cudaEventRecord(stop, stream));
  INFERBOX_CUDA_CHECK(cudaEventSynchronize(stop));
  float milliseconds = 0.0f;
  INFERBOX_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
  INFERBOX_CUDA_CHECK(cudaEventDestroy(start));
  INFERBOX_CUDA_CHECK(cudaEventDestroy(stop));
  return milliseconds / 1e3;
}

// Seconds per call of `launch` (into the default stream), over `iterations` calls after one
// warm-up.
template <typename Launch>
double SecondsPerCall(int iterations, Launch&& launch) {
  launch();
  return DeviceSeconds(nullptr,
                       [&] {
                         for (int i = 0; i < iterations; ++i) launch();
                       }) /
         iterations;
}

// Seconds per call of `launch(stream)` with the launches' host cost left out: `iterations`
// calls recorded as one CUDA graph (after a warm-up call outside it, which may allocate and
// choose algorithms), the graph launched once untimed and once timed.
template <typename Launch>
double SecondsPerCallInGraph(int iterations, cudaStream_t stream, Launch&& launch) {
  launch(stream);
  INFERBOX_CUDA_CHECK(cudaStreamSynchronize(stream));
  INFERBOX_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < iterations; ++i) launch(stream);
  cudaGraph_t graph = nullptr;
  INFERBOX_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  INFERBOX_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  INFERBOX_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  const double seconds =
      DeviceSeconds(stream, [&] { INFERBOX_CUDA_CHECK(cudaGraphLaunch(exec, stream)); });
  INFERBOX_CUDA_CHECK(cudaGraphExecDestroy(exec));
  INFERBOX_CUDA_CHECK(cudaGraphDestroy(graph));
  return seconds / iterations;
}

// Bytes per second of a device-to-device copy (read and write counted) of 1 GiB, or of
// `bytes` when smaller.
inline double CopyBandwidth(size_t bytes, int iterations) {
  const size_t size = std::min<size_t>(bytes, size_t{1} << 30);
  DeviceBuffer<uint8_t> source(size);
  DeviceBuffer<uint8_t> target(size);
  INFERBOX_CUDA_CHECK(cudaMemset(source.get(), 1, size));
  const double seconds = SecondsPerCall(iterations, [&] {
    INFERBOX_CUDA_CHECK(
        cudaMemcpyAsync(target.get(), source.get(), size, cudaMemcpyDeviceToDevice, nullptr));
  });
  return 2.0 * static_cast<double>(size) / seconds;
}

}  // namespace inferbox::tools::bench
