// A safetensors file from untrusted bytes (R6.12): SafetensorsFile::Open must refuse it or
// hand out tensors that each lie inside the file, have the bytes their dtype and shape say,
// and overlap no other tensor.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "fuzz_input.h"
#include "inferbox/engine/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  const fuzz::MemoryFile file("model.safetensors", fuzz::AsText(data, size));
  auto opened = engine::SafetensorsFile::Open(file.path());
  if (!opened.ok()) return 0;
  fuzz::Reached("opened");
  std::vector<std::pair<const std::byte*, const std::byte*>> spans;
  for (const auto& [name, tensor] : (*opened)->tensors()) {
    if (name != tensor.name) fuzz::Fail("a tensor's name differs from its key");
    int64_t elements = 1;
    for (const int64_t dim : tensor.shape) {
      if (dim < 0) fuzz::Fail("a negative dimension was accepted");
      if (__builtin_mul_overflow(elements, dim, &elements))
        fuzz::Fail("a shape whose element count overflows int64 on the way was accepted");
    }
    if (elements != tensor.num_elements()) fuzz::Fail("num_elements() is not the shape's product");
    if (tensor.data.size() != static_cast<size_t>(elements) * engine::DTypeSize(tensor.dtype))
      fuzz::Fail("a tensor's byte count is not its shape times its dtype's size");
    if (!tensor.data.empty())
      spans.emplace_back(tensor.data.data(), tensor.data.data() + tensor.data.size());
  }
  // All tensors lie in one mapping of the file: together they span at most the file (less
  // the 8-byte length and the header), and none overlaps the next.
  std::sort(spans.begin(), spans.end());
  if (!spans.empty()) {
    const std::byte* end = spans.front().second;
    for (size_t i = 1; i < spans.size(); ++i) {
      if (spans[i].first < spans[i - 1].second) fuzz::Fail("two tensors overlap");
      end = std::max(end, spans[i].second);
    }
    if (static_cast<size_t>(end - spans.front().first) + 8 > size)
      fuzz::Fail("tensors reach past the end of the file");
    // Touch every byte: a span outside the mapping faults.
    unsigned sum = 0;
    for (const auto& [begin, span_end] : spans) {
      for (const std::byte* p = begin; p < span_end; ++p) sum += static_cast<unsigned>(*p);
    }
    volatile unsigned sink = sum;
    (void)sink;
  }
  return 0;
}
