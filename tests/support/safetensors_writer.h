// Lays out small safetensors files by hand, for tests that need weights without a model
// generator. Header-only; the including target links Boost::json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <boost/json.hpp>

namespace inferbox::testing {

struct TensorBytes {
  std::string name;
  std::string dtype;  // As safetensors spells it: "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;
};

// 8-byte little-endian header length, the JSON header (or `header_override` when given),
// then the tensors' bytes back to back.
inline std::string BuildSafetensors(const std::vector<TensorBytes>& tensors,
                                    const std::string& header_override = "") {
  boost::json::object header;
  std::string data;
  for (const auto& tensor : tensors) {
    boost::json::array shape;
    for (const auto dim : tensor.shape) shape.push_back(dim);
    header[tensor.name] = {{"dtype", tensor.dtype},
                           {"shape", shape},
                           {"data_offsets", {data.size(), data.size() + tensor.bytes.size()}}};
    data += tensor.bytes;
  }
  header["__metadata__"] = {{"format", "pt"}};
  const std::string text =
      header_override.empty() ? boost::json::serialize(header) : header_override;
  std::string file(8, '\0');
  const uint64_t size = text.size();
  for (int i = 0; i < 8; ++i) {
    file[static_cast<size_t>(i)] = static_cast<char>((size >> (8 * i)) & 0xFF);
  }
  return file + text + data;
}

}  // namespace inferbox::testing
