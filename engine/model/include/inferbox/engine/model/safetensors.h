// Memory-mapped safetensors files and model folders (single file or sharded with
// model.safetensors.index.json). Every header field is validated against the file before
// any tensor is handed out: model files are untrusted input, and a truncated, hostile or
// mismatched file must give an error naming the tensor, never an out-of-bounds read.
// Opened files are immutable; any thread may read them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3 };

std::string_view DTypeName(DType dtype);  // As safetensors spells it: "F32", "BF16", ...
size_t DTypeSize(DType dtype);            // Bytes per element.

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // The tensor's bytes inside the mapping (little-endian, row-major).
  std::span<const std::byte> data;

  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // Maps the file and validates its header: size fields, JSON, dtypes, shapes, offsets
  // within the data area and not overlapping.
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::filesystem::path path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All weights of a model folder: model.safetensors, or the shards that
// model.safetensors.index.json names (plain file names inside the folder only).
class WeightStore {
 public:
  static Result<std::unique_ptr<WeightStore>> OpenModelDirectory(const std::filesystem::path& dir);

  // The tensor `name`, checked to have `shape` and a floating-point dtype (F32, F16 or
  // BF16). NOT_FOUND / INVALID_ARGUMENT name the tensor and what was expected.
  Result<const TensorView*> GetFloat(std::string_view name, std::span<const int64_t> shape) const;
  bool Contains(std::string_view name) const { return index_.count(std::string(name)) > 0; }
  size_t num_tensors() const { return index_.size(); }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace inferbox::engine
