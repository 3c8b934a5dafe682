// What the model store tests build their inputs from: tiny Hugging Face folders written by
// hand, ed25519 key pairs, tar archives with whatever members a test needs (hostile ones
// included), and a snapshot of the store's visible state.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "safetensors_writer.h"

namespace inferbox::provisioning::testing {

inline void WriteFile(const std::filesystem::path& path, std::string_view contents) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

inline std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline constexpr uint64_t kFakeModelParameters = 10;  // BF16 [2, 3] + F32 [4].

// A tiny model folder: config.json, model.safetensors (10 parameters, most of them BF16),
// tokenizer.json, generation_config.json and a nested file. `variant` changes the weights
// only, so two variants share every other file (and so their blobs).
inline void WriteFakeModel(const std::filesystem::path& dir, int variant = 0) {
  WriteFile(
      dir / "config.json",
      R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "torch_dtype": "bfloat16",
                "hidden_size": 4, "num_hidden_layers": 1})");
  std::string bf16(12, '\0');
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<char>(i + 16 * variant);
  std::string f32(16, '\0');
  const float values[4] = {1.0f, 2.0f, 3.0f, static_cast<float>(variant)};
  std::memcpy(f32.data(), values, sizeof(values));
  WriteFile(dir / "model.safetensors", inferbox::testing::BuildSafetensors(
                                           {{"model.embed_tokens.weight", "BF16", {2, 3}, bf16},
                                            {"model.norm.weight", "F32", {4}, f32}}));
  WriteFile(dir / "tokenizer.json",
            R"({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}})");
  WriteFile(dir / "generation_config.json", R"({"eos_token_id": 0})");
  WriteFile(dir / "original" / "params.txt", "dim 4\n");
}

struct KeyPair {
  std::string private_pem;
  std::string public_pem;
};

inline KeyPair GenerateEd25519() {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), &EVP_PKEY_free);
  EXPECT_NE(key, nullptr) << "OpenSSL cannot make an ed25519 key";
  KeyPair pair;
  auto write = [&](bool is_private) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
    if (is_private) {
      PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    } else {
      PEM_write_bio_PUBKEY(bio.get(), key.get());
    }
    char* data = nullptr;
    const long size = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<size_t>(size));
  };
  pair.private_pem = write(true);
  pair.public_pem = write(false);
  return pair;
}

struct TarMember {
  enum class Type { kFile, kSymlink, kHardlink, kDirectory };
  std::string name;
  std::string contents;
  Type type = Type::kFile;
  std::string link_target;
};

// Writes a tar archive (zstd-compressed when asked) with exactly these members, in order.
inline void WriteTar(const std::filesystem::path& path, const std::vector<TarMember>& members,
                     bool zstd = false) {
  std::unique_ptr<archive, decltype(&archive_write_free)> tar(archive_write_new(),
                                                              &archive_write_free);
  archive_write_set_format_pax_restricted(tar.get());
  if (zstd) archive_write_add_filter_zstd(tar.get());
  ASSERT_EQ(archive_write_open_filename(tar.get(), path.c_str()), ARCHIVE_OK);
  for (const TarMember& member : members) {
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(),
                                                                        &archive_entry_free);
    archive_entry_set_pathname(entry.get(), member.name.c_str());
    archive_entry_set_perm(entry.get(), 0644);
    switch (member.type) {
      case TarMember::Type::kFile:
        archive_entry_set_filetype(entry.get(), AE_IFREG);
        archive_entry_set_size(entry.get(), static_cast<la_int64_t>(member.contents.size()));
        break;
      case TarMember::Type::kSymlink:
        archive_entry_set_filetype(entry.get(), AE_IFLNK);
        archive_entry_set_symlink(entry.get(), member.link_target.c_str());
        break;
      case TarMember::Type::kHardlink:
        archive_entry_set_filetype(entry.get(), AE_IFREG);
        archive_entry_set_hardlink(entry.get(), member.link_target.c_str());
        break;
      case TarMember::Type::kDirectory:
        archive_entry_set_filetype(entry.get(), AE_IFDIR);
        archive_entry_set_perm(entry.get(), 0755);
        break;
    }
    ASSERT_EQ(archive_write_header(tar.get(), entry.get()), ARCHIVE_OK) << member.name;
    if (member.type == TarMember::Type::kFile && !member.contents.empty()) {
      ASSERT_EQ(archive_write_data(tar.get(), member.contents.data(), member.contents.size()),
                static_cast<la_ssize_t>(member.contents.size()));
    }
  }
  ASSERT_EQ(archive_write_close(tar.get()), ARCHIVE_OK);
}

// Every path the store shows (the models folder without .staging), with file sizes; two
// equal snapshots mean an install changed nothing anyone can see.
inline std::map<std::string, uint64_t> Snapshot(const std::filesystem::path& models_dir) {
  std::map<std::string, uint64_t> paths;
  for (auto it = std::filesystem::recursive_directory_iterator(models_dir);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    const std::string relative = it->path().lexically_relative(models_dir).generic_string();
    if (relative == ".staging") {
      it.disable_recursion_pending();
      continue;
    }
    paths[relative] = it->is_regular_file() && !it->is_symlink() ? it->file_size() : 0;
  }
  return paths;
}

// Entries of a folder, by name; an empty list when it does not exist.
inline std::vector<std::string> Entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (std::filesystem::directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace inferbox::provisioning::testing
