#include "inferbox/engine/model/safetensors.h"
#include "inferbox/common/json.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <boost/json.hpp>

#include "inferbox/common/atomic_file.h"

namespace inferbox::engine {
namespace json = boost::json;
namespace {

// A header larger than this is refused before it is parsed (the format's own limit).
constexpr uint64_t kMaxHeaderBytes = 100 * 1024 * 1024;

constexpr std::pair<std::string_view, DType> kDTypes[] = {
    {"F32", DType::kF32}, {"F16", DType::kF16},   {"BF16", DType::kBF16},      {"F64", DType::kF64},
    {"I64", DType::kI64}, {"I32", DType::kI32},   {"I16", DType::kI16},        {"I8", DType::kI8},
    {"U8", DType::kU8},   {"BOOL", DType::kBool}, {"F8_E4M3", DType::kF8E4M3},
};

Status FileError(const std::filesystem::path& path, std::string_view message) {
  return InvalidArgumentError(fmt::format("{}: {}", path.string(), message));
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const auto& [name, value] : kDTypes) {
    if (value == dtype) return name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64: return 8;
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16: return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
    case DType::kF8E4M3: return 1;
  }
  return 1;
}

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (const int64_t dim : shape) count *= dim;
  return count;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status(errno == ENOENT ? StatusCode::kNotFound : StatusCode::kFailedPrecondition,
                  fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(info.st_size);
  if (file_size < 8) {
    ::close(fd);
    return FileError(path, fmt::format("{} bytes is too short for a safetensors file", file_size));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (file->mapping_ == MAP_FAILED) {
    file->mapping_ = nullptr;
    return FileError(path, std::string("mmap failed: ") + std::strerror(errno));
  }
  file->mapping_size_ = file_size;
  const auto* bytes = static_cast<const std::byte*>(file->mapping_);

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(bytes[i]);
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    return FileError(path,
                     fmt::format("header length {} does not fit the file of {} bytes (truncated?)",
                                 header_size, file_size));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_size);
  boost::system::error_code error;
  const json::value root = inferbox::ParseJson(header, error);
  if (auto problem = JsonObjectProblem(root, error); !problem.empty())
    return FileError(path, "header is " + problem);

  const uint64_t data_size = file_size - 8 - header_size;
  const std::byte* data = bytes + 8 + header_size;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [key, value] : root.as_object()) {
    const std::string name(key);
    if (name == "__metadata__") {
      if (!value.is_object()) return FileError(path, "__metadata__ is not an object");
      for (const auto& [meta_key, meta_value] : value.as_object()) {
        if (meta_value.is_string())
          file->metadata_[std::string(meta_key)] = std::string(meta_value.as_string());
      }
      continue;
    }
    auto tensor_error = [&](std::string_view what) {
      return FileError(path, fmt::format("tensor \"{}\": {}", name, what));
    };
    if (!value.is_object()) return tensor_error("entry is not an object");
    const auto& entry = value.as_object();
    const auto* dtype = entry.if_contains("dtype");
    const auto* shape = entry.if_contains("shape");
    const auto* offsets = entry.if_contains("data_offsets");
    if (dtype == nullptr || !dtype->is_string() || shape == nullptr || !shape->is_array() ||
        offsets == nullptr || !offsets->is_array() || offsets->as_array().size() != 2) {
      return tensor_error("needs dtype, shape and data_offsets [begin, end]");
    }
    TensorView view;
    view.name = name;
    bool known = false;
    for (const auto& [dtype_name, dtype_value] : kDTypes) {
      if (dtype->as_string() == dtype_name) {
        view.dtype = dtype_value;
        known = true;
      }
    }
    if (!known)
      return tensor_error(
          fmt::format("unknown dtype \"{}\"", std::string_view(dtype->as_string())));

    // Element count and byte size, refusing negative dimensions and overflow.
    uint64_t elements = 1;
    for (const auto& dim : shape->as_array()) {
      if (!dim.is_int64() && !dim.is_uint64()) return tensor_error("shape holds a non-integer");
      if (dim.is_int64() && dim.as_int64() < 0)
        return tensor_error("shape holds a negative dimension");
      const uint64_t extent = dim.to_number<uint64_t>();
      // Shapes are int64 (TensorView::shape): a dimension past that would read as negative,
      // and with a 0 elsewhere in the shape the element count would not catch it.
      if (extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return tensor_error("shape holds a dimension past 2^63 - 1");
      // The count must fit int64 at every step (TensorView::num_elements multiplies in int64,
      // in this order), even when a later 0 makes the tensor empty.
      if (extent != 0 &&
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / extent) {
        return tensor_error("shape overflows");
      }
      elements *= extent;
      view.shape.push_back(static_cast<int64_t>(extent));
    }
    const uint64_t element_size = DTypeSize(view.dtype);
    if (elements > std::numeric_limits<uint64_t>::max() / element_size)
      return tensor_error("shape overflows");
    uint64_t begin = 0;
    uint64_t end = 0;
    const auto& pair = offsets->as_array();
    if ((!pair[0].is_uint64() && !(pair[0].is_int64() && pair[0].as_int64() >= 0)) ||
        (!pair[1].is_uint64() && !(pair[1].is_int64() && pair[1].as_int64() >= 0))) {
      return tensor_error("data_offsets are not non-negative integers");
    }
    begin = pair[0].to_number<uint64_t>();
    end = pair[1].to_number<uint64_t>();
    if (begin > end || end > data_size) {
      return tensor_error(
          fmt::format("data_offsets [{}, {}] fall outside the {} data bytes (truncated file?)",
                      begin, end, data_size));
    }
    if (end - begin != elements * element_size) {
      return tensor_error(fmt::format("{} bytes of data for shape of {} {} elements ({} bytes)",
                                      end - begin, elements, DTypeName(view.dtype),
                                      elements * element_size));
    }
    view.data = std::span<const std::byte>(data + begin, end - begin);
    ranges.emplace_back(begin, end);
    file->tensors_.emplace(name, std::move(view));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return FileError(path, fmt::format("tensors overlap at data offset {}", ranges[i].first));
    }
  }
  return file;
}

Result<std::unique_ptr<WeightStore>> WeightStore::OpenModelDirectory(
    const std::filesystem::path& dir) {
  auto store = std::make_unique<WeightStore>();
  std::vector<std::string> shard_names;
  const auto index_path = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    auto text = ReadFile(index_path);
    if (!text.ok()) return text.status();
    boost::system::error_code error;
    const json::value root = inferbox::ParseJson(*text, error);
    const json::value* weight_map =
        !error && root.is_object() ? root.as_object().if_contains("weight_map") : nullptr;
    if (weight_map == nullptr || !weight_map->is_object()) {
      return FileError(index_path, "needs a \"weight_map\" object");
    }
    std::map<std::string, std::string> expected;
    for (const auto& [tensor, file] : weight_map->as_object()) {
      if (!file.is_string())
        return FileError(index_path,
                         fmt::format("\"{}\" maps to a non-string", std::string_view(tensor)));
      const std::string name(file.as_string());
      // Only plain file names in the model folder: an index must not reach elsewhere.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        return FileError(
            index_path,
            fmt::format("shard name \"{}\" is not a file name in the model folder", name));
      }
      expected[std::string(tensor)] = name;
      if (std::find(shard_names.begin(), shard_names.end(), name) == shard_names.end())
        shard_names.push_back(name);
    }
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& name : shard_names) {
      auto file = SafetensorsFile::Open(dir / name);
      if (!file.ok()) return file.status();
      shards[name] = file->get();
      store->files_.push_back(std::move(file).value());
    }
    for (const auto& [tensor, shard] : expected) {
      const auto& tensors = shards.at(shard)->tensors();
      const auto found = tensors.find(tensor);
      if (found == tensors.end()) {
        return FileError(index_path,
                         fmt::format("tensor \"{}\" is not in its shard {}", tensor, shard));
      }
      store->index_[tensor] = &found->second;
    }
    return store;
  }
  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  if (!file.ok()) return file.status();
  store->files_.push_back(std::move(file).value());
  for (const auto& [name, view] : store->files_.front()->tensors()) store->index_[name] = &view;
  return store;
}

Result<const TensorView*> WeightStore::GetFloat(std::string_view name,
                                                std::span<const int64_t> shape) const {
  const auto found = index_.find(std::string(name));
  if (found == index_.end()) return NotFoundError(fmt::format("model has no tensor \"{}\"", name));
  const TensorView& view = *found->second;
  if (view.dtype != DType::kF32 && view.dtype != DType::kF16 && view.dtype != DType::kBF16) {
    return InvalidArgumentError(
        fmt::format("tensor \"{}\" is {}, expected F32, F16 or BF16", name, DTypeName(view.dtype)));
  }
  if (!std::equal(view.shape.begin(), view.shape.end(), shape.begin(), shape.end())) {
    auto show = [](auto dims) { return fmt::format("[{}]", fmt::join(dims, ", ")); };
    return InvalidArgumentError(fmt::format("tensor \"{}\" has shape {}, the config implies {}",
                                            name, show(view.shape), show(shape)));
  }
  return &view;
}

}  // namespace inferbox::engine
