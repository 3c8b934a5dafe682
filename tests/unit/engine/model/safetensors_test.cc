// Safetensors files are untrusted input: every malformed header must be an error that names
// the file and tensor, never a crash or a read outside the file.
#include "inferbox/engine/model/safetensors.h"

#include <cstring>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "temp_dir.h"

namespace inferbox::engine {
namespace {

using ::testing::HasSubstr;

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Lays out a safetensors file: 8-byte little-endian header length, JSON header, data.
std::string Build(const std::vector<Entry>& entries, const std::string& header_override = "") {
  boost::json::object header;
  std::string data;
  for (const auto& entry : entries) {
    boost::json::array shape;
    for (const auto dim : entry.shape) shape.push_back(dim);
    header[entry.name] = {{"dtype", entry.dtype},
                          {"shape", shape},
                          {"data_offsets", {data.size(), data.size() + entry.bytes.size()}}};
    data += entry.bytes;
  }
  header["__metadata__"] = {{"format", "pt"}};
  const std::string text =
      header_override.empty() ? boost::json::serialize(header) : header_override;
  std::string file(8, '\0');
  const uint64_t size = text.size();
  for (int i = 0; i < 8; ++i)
    file[static_cast<size_t>(i)] = static_cast<char>((size >> (8 * i)) & 0xFF);
  return file + text + data;
}

std::string Floats(std::initializer_list<float> values) {
  std::string bytes(values.size() * 4, '\0');
  std::memcpy(bytes.data(), std::data(values), bytes.size());
  return bytes;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::filesystem::path Write(const std::string& name, const std::string& contents) {
    const auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }
  std::string ErrorOpening(const std::string& contents) {
    auto file = SafetensorsFile::Open(Write("bad.safetensors", contents));
    EXPECT_FALSE(file.ok()) << "a malformed file was accepted";
    return file.ok() ? "" : file.status().message();
  }
  inferbox::testing::TempDir dir_;
};

TEST_F(SafetensorsTest, ReadsTensorsAndMetadata) {
  auto file = SafetensorsFile::Open(
      Write("m.safetensors", Build({{"a", "F32", {2, 2}, Floats({1, 2, 3, 4})},
                                    {"b", "BF16", {3}, std::string(6, '\x3f')}})));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const auto& tensors = (*file)->tensors();
  ASSERT_EQ(tensors.size(), 2u);
  const TensorView& a = tensors.at("a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a.num_elements(), 4);
  float values[4];
  std::memcpy(values, a.data.data(), sizeof(values));
  EXPECT_EQ(values[3], 4.0f);
  EXPECT_EQ(tensors.at("b").data.size(), 6u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, TruncatedFilesAreRefused) {
  const std::string good = Build({{"w", "F32", {4}, Floats({1, 2, 3, 4})}});
  EXPECT_THAT(ErrorOpening(good.substr(0, 5)), HasSubstr("too short"));
  EXPECT_THAT(ErrorOpening(good.substr(0, 20)), HasSubstr("does not fit the file"));
  EXPECT_THAT(ErrorOpening(good.substr(0, good.size() - 1)),
              AllOf(HasSubstr("tensor \"w\""), HasSubstr("outside")));
}

TEST_F(SafetensorsTest, HostileHeadersAreRefusedNamingTheTensor) {
  std::string huge(8, '\xff');
  EXPECT_THAT(ErrorOpening(huge + "{}"), HasSubstr("header length"));
  EXPECT_THAT(ErrorOpening(Build({}, "[1,2]")), HasSubstr("not a JSON object"));
  EXPECT_THAT(
      ErrorOpening(Build({}, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})")),
      AllOf(HasSubstr("tensor \"w\""), HasSubstr("outside")));
  const std::string data = Floats({1, 2});
  auto with_data = [&](const std::string& header) { return Build({}, header) + data; };
  EXPECT_THAT(
      ErrorOpening(with_data(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})")),
      HasSubstr("8 bytes of data for shape of 3 F32 elements (12 bytes)"));
  EXPECT_THAT(
      ErrorOpening(with_data(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})")),
      HasSubstr("negative dimension"));
  EXPECT_THAT(
      ErrorOpening(with_data(R"({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}})")),
      HasSubstr("unknown dtype \"Q4_K\""));
  EXPECT_THAT(
      ErrorOpening(with_data(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})")),
      HasSubstr("outside"));
  EXPECT_THAT(
      ErrorOpening(with_data(
          R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})")),
      HasSubstr("overflows"));
  // 2^64 - 1 times 0 elements is no data, but the shape would hold -1 (tests/fuzz found it).
  EXPECT_THAT(
      ErrorOpening(with_data(
          R"({"w": {"dtype": "F32", "shape": [18446744073709551615, 0], "data_offsets": [0, 0]}})")),
      HasSubstr("shape holds a dimension past 2^63 - 1"));
  // 2^62 x 2 is past int64 before the 0 (TensorView::num_elements would overflow).
  EXPECT_THAT(
      ErrorOpening(with_data(
          R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 2, 0], "data_offsets": [0, 0]}})")),
      HasSubstr("shape overflows"));
  EXPECT_THAT(
      ErrorOpening(with_data(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})")),
      HasSubstr("overlap"));
  EXPECT_THAT(ErrorOpening(with_data(R"({"w": {"dtype": "F32", "shape": [2]}})")),
              HasSubstr("data_offsets"));
}

TEST_F(SafetensorsTest, WeightStoreChecksShapeAndDtype) {
  std::filesystem::create_directory(dir_ / "model");
  std::ofstream(dir_ / "model" / "model.safetensors", std::ios::binary) << Build(
      {{"w", "F32", {2, 2}, Floats({1, 2, 3, 4})}, {"ids", "I64", {1}, std::string(8, '\0')}});
  auto store = WeightStore::OpenModelDirectory(dir_ / "model");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const int64_t good_shape[] = {2, 2};
  EXPECT_TRUE((*store)->GetFloat("w", good_shape).ok());
  const int64_t wrong_shape[] = {4};
  auto wrong = (*store)->GetFloat("w", wrong_shape);
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(),
              HasSubstr("tensor \"w\" has shape [2, 2], the config implies [4]"));
  const int64_t one[] = {1};
  EXPECT_THAT((*store)->GetFloat("ids", one).status().message(), HasSubstr("is I64"));
  EXPECT_EQ((*store)->GetFloat("missing", one).status().code(), StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ShardedModelsFollowTheIndexAndStayInTheFolder) {
  const auto model = dir_ / "sharded";
  std::filesystem::create_directory(model);
  std::ofstream(model / "model-00001-of-00002.safetensors", std::ios::binary)
      << Build({{"a", "F32", {1}, Floats({1})}});
  std::ofstream(model / "model-00002-of-00002.safetensors", std::ios::binary)
      << Build({{"b", "F32", {1}, Floats({2})}});
  std::ofstream(model / "model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})";
  auto store = WeightStore::OpenModelDirectory(model);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->num_tensors(), 2u);
  EXPECT_TRUE((*store)->Contains("b"));

  std::ofstream(model / "model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})";
  auto misplaced = WeightStore::OpenModelDirectory(model);
  ASSERT_FALSE(misplaced.ok());
  EXPECT_THAT(misplaced.status().message(), HasSubstr("tensor \"a\" is not in its shard"));

  std::ofstream(model / "model.safetensors.index.json")
      << R"({"weight_map": {"a": "../secrets.safetensors"}})";
  auto escaping = WeightStore::OpenModelDirectory(model);
  ASSERT_FALSE(escaping.ok());
  EXPECT_THAT(escaping.status().message(), HasSubstr("is not a file name in the model folder"));
}

TEST_F(SafetensorsTest, MissingWeightsAreNotFound) {
  std::filesystem::create_directory(dir_ / "empty");
  auto store = WeightStore::OpenModelDirectory(dir_ / "empty");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(store.status().message(), HasSubstr("model.safetensors"));
}

}  // namespace
}  // namespace inferbox::engine
