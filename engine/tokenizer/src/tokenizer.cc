#include "inferbox/engine/tokenizer/tokenizer.h"
#include "inferbox/common/json.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <unordered_map>

#include <utf8proc.h>
#include <boost/json.hpp>

#include "bpe.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/engine/tokenizer/utf8.h"
#include "regex_split.h"

namespace inferbox::engine {
namespace json = boost::json;
namespace {

// GPT-2's byte-to-unicode alphabet: printable bytes stand for themselves, the others are
// shifted to U+0100 upwards. Returns, per code point of the alphabet, its byte (or -1).
std::unordered_map<char32_t, unsigned char> UnicodeToByte() {
  std::unordered_map<char32_t, unsigned char> map;
  int shifted = 0;
  for (int byte = 0; byte < 256; ++byte) {
    const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                           (byte >= 0xAE && byte <= 0xFF);
    map[printable ? static_cast<char32_t>(byte) : static_cast<char32_t>(256 + shifted++)] =
        static_cast<unsigned char>(byte);
  }
  return map;
}

// Converts a token spelled in the byte-level alphabet back to its bytes; false if some
// character is outside the alphabet.
bool ByteLevelToBytes(std::string_view token,
                      const std::unordered_map<char32_t, unsigned char>& alphabet,
                      std::string& bytes) {
  bytes.clear();
  const auto* data = reinterpret_cast<const utf8proc_uint8_t*>(token.data());
  utf8proc_ssize_t offset = 0;
  while (offset < static_cast<utf8proc_ssize_t>(token.size())) {
    utf8proc_int32_t code_point = 0;
    const utf8proc_ssize_t length = utf8proc_iterate(
        data + offset, static_cast<utf8proc_ssize_t>(token.size()) - offset, &code_point);
    if (length <= 0) return false;
    const auto found = alphabet.find(static_cast<char32_t>(code_point));
    if (found == alphabet.end()) return false;
    bytes += static_cast<char>(found->second);
    offset += length;
  }
  return true;
}

// JavaScript's String.prototype.trim whitespace (for added tokens' lstrip/rstrip).
bool IsJsWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000 || c == 0xFEFF;
}

std::string_view TrimJsWhitespace(std::string_view text, bool front, bool back) {
  auto code_point_at = [&](size_t offset, utf8proc_int32_t& code_point) {
    return utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data()) + offset,
                            static_cast<utf8proc_ssize_t>(text.size() - offset), &code_point);
  };
  if (front) {
    size_t offset = 0;
    utf8proc_int32_t code_point = 0;
    while (offset < text.size()) {
      const auto length = code_point_at(offset, code_point);
      if (length <= 0 || !IsJsWhitespace(static_cast<char32_t>(code_point))) break;
      offset += static_cast<size_t>(length);
    }
    text.remove_prefix(offset);
  }
  if (back) {
    while (!text.empty()) {
      size_t start = text.size() - 1;
      while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      utf8proc_int32_t code_point = 0;
      if (code_point_at(start, code_point) <= 0 ||
          !IsJsWhitespace(static_cast<char32_t>(code_point))) {
        break;
      }
      text.remove_suffix(text.size() - start);
    }
  }
  return text;
}

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
};

// Finds added tokens in text: longest match at the leftmost position, as the reference's
// dictionary splitter does.
class AddedTokenMatcher {
 public:
  void Add(const std::string& content, size_t index) {
    int node = 0;
    for (const char c : content) {
      auto& children = nodes_[static_cast<size_t>(node)].children;
      const auto found = children.find(c);
      if (found != children.end()) {
        node = found->second;
      } else {
        nodes_.push_back({});
        const int child = static_cast<int>(nodes_.size()) - 1;
        nodes_[static_cast<size_t>(node)].children[c] = child;
        node = child;
      }
    }
    nodes_[static_cast<size_t>(node)].token = static_cast<int>(index);
  }

  // The token (index) matching longest at `offset`, and its length; -1 when none.
  std::pair<int, size_t> LongestAt(std::string_view text, size_t offset) const {
    int node = 0;
    std::pair<int, size_t> best{-1, 0};
    for (size_t i = offset; i < text.size(); ++i) {
      const auto& children = nodes_[static_cast<size_t>(node)].children;
      const auto found = children.find(text[i]);
      if (found == children.end()) break;
      node = found->second;
      if (nodes_[static_cast<size_t>(node)].token >= 0) {
        best = {nodes_[static_cast<size_t>(node)].token, i + 1 - offset};
      }
    }
    return best;
  }

 private:
  struct Node {
    std::map<char, int> children;
    int token = -1;
  };
  std::vector<Node> nodes_{Node{}};
};

enum class Normalizer { kNone, kNfc };

struct PreTokenizerStep {
  std::unique_ptr<RegexSplitter> split;  // Split step; null for ByteLevel.
  bool add_prefix_space = false;         // ByteLevel step.
};

constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

Status Unsupported(std::string_view component, std::string_view type, std::string_view supported) {
  return InvalidArgumentError("tokenizer.json: " + std::string(component) + " type \"" +
                              std::string(type) +
                              "\" is not supported (supported: " + std::string(supported) + ")");
}

// The component's "type"; a view into `node`. The object overload keeps a json::object from
// converting to a temporary json::value, whose copy of the string the view would outlive.
std::string_view TypeOf(const json::object& node) {
  const auto* type = node.if_contains("type");
  return type != nullptr && type->is_string() ? std::string_view(type->as_string()) : "";
}
std::string_view TypeOf(const json::value& node) {
  return node.is_object() ? TypeOf(node.as_object()) : "";
}

bool BoolField(const json::object& object, std::string_view key, bool fallback) {
  const auto* value = object.if_contains(key);
  return value != nullptr && value->is_bool() ? value->as_bool() : fallback;
}

// A special token named in tokenizer_config.json: a string, or {"__type": "AddedToken",
// "content": ...}.
std::optional<std::string> ConfigToken(const json::object& config, std::string_view key) {
  const auto* value = config.if_contains(key);
  if (value == nullptr) return std::nullopt;
  if (value->is_string()) return std::string(value->as_string());
  if (value->is_object()) {
    if (const auto* content = value->as_object().if_contains("content");
        content && content->is_string()) {
      return std::string(content->as_string());
    }
  }
  return std::nullopt;
}

}  // namespace

struct Tokenizer::Impl {
  Normalizer normalizer = Normalizer::kNone;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::unique_ptr<BytePairEncoder> bpe;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher added_matcher;
  std::unordered_map<std::string, TokenId> token_to_id;  // Vocabulary spelling -> id.
  // Per id: the bytes it decodes to, whether it is an added special token, whether it exists.
  std::vector<std::string> id_bytes;
  std::vector<char> id_is_special;
  std::vector<char> id_exists;
  std::vector<TokenId> prefix_ids;  // Added by add_special_tokens.
  std::vector<TokenId> suffix_ids;
  std::optional<TokenId> bos;
  std::optional<TokenId> eos;

  Status LoadModel(const json::object& model);
  Status LoadNormalizer(const json::value& node);
  Status LoadPreTokenizer(const json::value& node);
  Status LoadPostProcessor(const json::value& node, const json::object& config);
  Status LoadDecoder(const json::value& node);
  void EncodeSection(std::string_view text, std::vector<TokenId>& out) const;
};

Status Tokenizer::Impl::LoadModel(const json::object& model) {
  const std::string_view type = TypeOf(model);
  if (type != "BPE") return Unsupported("model", type, "BPE");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const auto* value = model.if_contains(key);
        value && value->is_string() && !value->as_string().empty()) {
      return InvalidArgumentError(std::string("tokenizer.json: BPE ") + key + " is not supported");
    }
  }
  if (BoolField(model, "byte_fallback", false)) {
    return InvalidArgumentError("tokenizer.json: BPE byte_fallback is not supported");
  }
  const auto* vocab = model.if_contains("vocab");
  const auto* merges = model.if_contains("merges");
  if (vocab == nullptr || !vocab->is_object() || merges == nullptr || !merges->is_array()) {
    return InvalidArgumentError(
        "tokenizer.json: BPE model needs a vocab object and a merges array");
  }

  const auto alphabet = UnicodeToByte();
  std::unordered_map<std::string, TokenId> byte_vocab;
  std::string bytes;
  for (const auto& [spelling, id_value] : vocab->as_object()) {
    if (!id_value.is_int64() || id_value.as_int64() < 0 || id_value.as_int64() > (1 << 24)) {
      return InvalidArgumentError("tokenizer.json: vocab entry \"" + std::string(spelling) +
                                  "\" has no valid id");
    }
    const auto id = static_cast<TokenId>(id_value.as_int64());
    if (static_cast<size_t>(id) >= id_bytes.size()) {
      id_bytes.resize(static_cast<size_t>(id) + 1);
      id_exists.resize(static_cast<size_t>(id) + 1, 0);
    }
    token_to_id.emplace(std::string(spelling), id);
    id_exists[static_cast<size_t>(id)] = 1;
    if (ByteLevelToBytes(spelling, alphabet, bytes)) {
      id_bytes[static_cast<size_t>(id)] = bytes;
      byte_vocab.emplace(bytes, id);
    } else {
      // Not in the byte-level alphabet (e.g. a special token kept in the vocab): BPE can
      // never produce it; it decodes to its own UTF-8 text.
      id_bytes[static_cast<size_t>(id)] = std::string(spelling);
    }
  }

  bpe = std::make_unique<BytePairEncoder>(std::move(byte_vocab),
                                          BoolField(model, "ignore_merges", false));
  if (!bpe->HasAllBytes()) {
    return InvalidArgumentError(
        "tokenizer.json: the BPE vocabulary lacks single-byte tokens; only "
        "byte-level BPE is supported");
  }
  std::string left_bytes;
  std::string right_bytes;
  for (const auto& merge : merges->as_array()) {
    std::string_view left;
    std::string_view right;
    if (merge.is_string()) {
      const std::string_view text = merge.as_string();
      const auto space = text.find(' ');
      if (space == std::string_view::npos) {
        return InvalidArgumentError("tokenizer.json: merge \"" + std::string(text) +
                                    "\" is not \"left right\"");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.as_array().size() == 2 &&
               merge.as_array()[0].is_string() && merge.as_array()[1].is_string()) {
      left = merge.as_array()[0].as_string();
      right = merge.as_array()[1].as_string();
    } else {
      return InvalidArgumentError(
          "tokenizer.json: a merge is neither \"left right\" nor [left, right]");
    }
    if (ByteLevelToBytes(left, alphabet, left_bytes) &&
        ByteLevelToBytes(right, alphabet, right_bytes)) {
      bpe->AddMerge(left_bytes, right_bytes);
    }
  }
  return Status::Ok();
}

Status Tokenizer::Impl::LoadNormalizer(const json::value& node) {
  if (node.is_null()) return Status::Ok();
  const std::string_view type = TypeOf(node);
  if (type == "NFC") {
    normalizer = Normalizer::kNfc;
    return Status::Ok();
  }
  if (type == "Sequence") {
    const auto* steps = node.as_object().if_contains("normalizers");
    if (steps == nullptr || !steps->is_array()) {
      return InvalidArgumentError("tokenizer.json: Sequence normalizer without normalizers");
    }
    if (steps->as_array().size() > 1) {
      return InvalidArgumentError(
          "tokenizer.json: normalizer Sequence of more than one step is not supported");
    }
    return steps->as_array().empty() ? Status::Ok() : LoadNormalizer(steps->as_array()[0]);
  }
  return Unsupported("normalizer", type, "NFC, Sequence");
}

Status Tokenizer::Impl::LoadPreTokenizer(const json::value& node) {
  if (node.is_null()) return Status::Ok();
  if (!node.is_object()) {
    return InvalidArgumentError("tokenizer.json: a pre_tokenizer must be an object");
  }
  const std::string_view type = TypeOf(node);
  const auto& object = node.as_object();
  if (type == "Sequence") {
    const auto* steps = object.if_contains("pretokenizers");
    if (steps == nullptr || !steps->is_array()) {
      return InvalidArgumentError("tokenizer.json: Sequence pre_tokenizer without pretokenizers");
    }
    for (const auto& step : steps->as_array()) {
      if (Status status = LoadPreTokenizer(step); !status.ok()) return status;
    }
    return Status::Ok();
  }
  if (!pre_tokenizer.empty() && !pre_tokenizer.back().split) {
    return InvalidArgumentError("tokenizer.json: a pre_tokenizer after ByteLevel is not supported");
  }
  if (type == "Split") {
    const auto* pattern = object.if_contains("pattern");
    const json::value* regex =
        pattern && pattern->is_object() ? pattern->as_object().if_contains("Regex") : nullptr;
    if (regex == nullptr || !regex->is_string()) {
      return InvalidArgumentError(
          "tokenizer.json: Split pre_tokenizer supports only {\"Regex\": ...} patterns");
    }
    const auto* behavior = object.if_contains("behavior");
    if (behavior == nullptr || !behavior->is_string() || behavior->as_string() != "Isolated" ||
        BoolField(object, "invert", false)) {
      return InvalidArgumentError(
          "tokenizer.json: Split pre_tokenizer supports only behavior \"Isolated\" without invert");
    }
    auto splitter = RegexSplitter::Compile(std::string_view(regex->as_string()));
    if (!splitter.ok()) return splitter.status().WithContext("tokenizer.json: Split pre_tokenizer");
    pre_tokenizer.push_back({std::move(splitter).value(), false});
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    if (BoolField(object, "use_regex", true)) {
      auto splitter = RegexSplitter::Compile(kGpt2Pattern);
      if (!splitter.ok()) return splitter.status();
      pre_tokenizer.push_back({std::move(splitter).value(), false});
    }
    pre_tokenizer.push_back({nullptr, BoolField(object, "add_prefix_space", false)});
    return Status::Ok();
  }
  return Unsupported("pre_tokenizer", type, "Sequence, Split, ByteLevel");
}

Status Tokenizer::Impl::LoadPostProcessor(const json::value& node, const json::object& config) {
  const std::string_view type = TypeOf(node);
  bool template_adds_tokens = false;
  if (type == "Sequence") {
    const auto* steps = node.as_object().if_contains("processors");
    if (steps == nullptr || !steps->is_array()) {
      return InvalidArgumentError("tokenizer.json: Sequence post_processor without processors");
    }
    for (const auto& step : steps->as_array()) {
      if (Status status = LoadPostProcessor(step, json::object()); !status.ok()) return status;
    }
    template_adds_tokens = !prefix_ids.empty() || !suffix_ids.empty();
  } else if (type == "TemplateProcessing") {
    const auto* single = node.as_object().if_contains("single");
    if (single == nullptr || !single->is_array()) {
      return InvalidArgumentError("tokenizer.json: TemplateProcessing without \"single\"");
    }
    bool seen_sequence = false;
    for (const auto& piece : single->as_array()) {
      if (!piece.is_object()) continue;
      if (piece.as_object().contains("Sequence")) {
        seen_sequence = true;
      } else if (const auto* special = piece.as_object().if_contains("SpecialToken")) {
        const auto* id = special->is_object() ? special->as_object().if_contains("id") : nullptr;
        const auto found = id && id->is_string() ? token_to_id.find(std::string(id->as_string()))
                                                 : token_to_id.end();
        if (found == token_to_id.end()) {
          return InvalidArgumentError(
              "tokenizer.json: TemplateProcessing names an unknown special token");
        }
        (seen_sequence ? suffix_ids : prefix_ids).push_back(found->second);
      }
    }
    template_adds_tokens = true;
  } else if (type != "ByteLevel" && !node.is_null()) {
    return Unsupported("post_processor", type, "ByteLevel, TemplateProcessing, Sequence");
  }

  // tokenizer_config.json's add_bos_token / add_eos_token (LlamaTokenizerFast, used by
  // DeepSeek) ask for BOS/EOS where the post-processor itself adds none. transformers'
  // Python tokenizer honours this; the JavaScript reference does not (see the test).
  if (!template_adds_tokens && !config.empty()) {
    if (BoolField(config, "add_bos_token", false) && bos) prefix_ids.push_back(*bos);
    if (BoolField(config, "add_eos_token", false) && eos) suffix_ids.push_back(*eos);
  }
  return Status::Ok();
}

Status Tokenizer::Impl::LoadDecoder(const json::value& node) {
  const std::string_view type = TypeOf(node);
  if (type == "ByteLevel") return Status::Ok();
  return Unsupported("decoder", node.is_null() ? "null" : type, "ByteLevel");
}

void Tokenizer::Impl::EncodeSection(std::string_view text, std::vector<TokenId>& out) const {
  std::string normalized;
  // ASCII text is its own NFC form; skip the normalizer's copy for it.
  const bool is_ascii = std::all_of(text.begin(), text.end(),
                                    [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (normalizer == Normalizer::kNfc && !is_ascii) {
    utf8proc_uint8_t* result = nullptr;
    const utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &result,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (length >= 0) {
      normalized.assign(reinterpret_cast<char*>(result), static_cast<size_t>(length));
      std::free(result);
      text = normalized;
    }
  }
  if (text.empty()) return;

  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  std::string prefixed;  // Storage when ByteLevel adds a prefix space (single piece only).
  for (const auto& step : pre_tokenizer) {
    if (step.split) {
      next.clear();
      for (const auto piece : pieces) step.split->Split(piece, next);
      pieces.swap(next);
    } else if (step.add_prefix_space && !pieces.empty() && pieces.front().substr(0, 1) != " ") {
      prefixed = " " + std::string(pieces.front());
      pieces.front() = prefixed;
    }
  }
  for (const auto piece : pieces) bpe->Encode(piece, out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromDirectory(const std::filesystem::path& dir) {
  auto tokenizer_json = ReadFile(dir / "tokenizer.json");
  if (!tokenizer_json.ok()) return tokenizer_json.status();
  std::string config_json;
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    auto config = ReadFile(dir / "tokenizer_config.json");
    if (!config.ok()) return config.status();
    config_json = std::move(config).value();
  }
  return LoadFromJson(*tokenizer_json, config_json);
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromJson(std::string_view tokenizer_json,
                                                           std::string_view tokenizer_config_json) {
  boost::system::error_code error;
  const json::value root = inferbox::ParseJson(tokenizer_json, error);
  if (auto problem = JsonObjectProblem(root, error); !problem.empty())
    return InvalidArgumentError("tokenizer.json is " + problem);
  json::object config;
  if (!tokenizer_config_json.empty()) {
    const json::value config_value = inferbox::ParseJson(tokenizer_config_json, error);
    if (auto problem = JsonObjectProblem(config_value, error); !problem.empty())
      return InvalidArgumentError("tokenizer_config.json is " + problem);
    config = config_value.as_object();
  }

  auto impl = std::make_unique<Impl>();
  const auto& object = root.as_object();
  const auto* model = object.if_contains("model");
  if (model == nullptr || !model->is_object())
    return InvalidArgumentError("tokenizer.json has no model");
  if (Status status = impl->LoadModel(model->as_object()); !status.ok()) return status;

  if (const auto* added = object.if_contains("added_tokens"); added && added->is_array()) {
    for (const auto& entry : added->as_array()) {
      const auto* id = entry.is_object() ? entry.as_object().if_contains("id") : nullptr;
      const auto* content = entry.is_object() ? entry.as_object().if_contains("content") : nullptr;
      if (id == nullptr || !id->is_int64() || id->as_int64() < 0 || id->as_int64() > (1 << 24) ||
          content == nullptr || !content->is_string() || content->as_string().empty()) {
        return InvalidArgumentError("tokenizer.json: an added token lacks a valid id or content");
      }
      AddedToken token;
      token.id = static_cast<TokenId>(id->as_int64());
      token.content = std::string(content->as_string());
      token.special = BoolField(entry.as_object(), "special", false);
      token.lstrip = BoolField(entry.as_object(), "lstrip", false);
      token.rstrip = BoolField(entry.as_object(), "rstrip", false);
      const auto index = static_cast<size_t>(token.id);
      if (index >= impl->id_bytes.size()) {
        impl->id_bytes.resize(index + 1);
        impl->id_exists.resize(index + 1, 0);
      }
      impl->id_bytes[index] = token.content;
      impl->id_exists[index] = 1;
      impl->token_to_id[token.content] = token.id;
      impl->added_matcher.Add(token.content, impl->added_tokens.size());
      impl->added_tokens.push_back(std::move(token));
    }
  }
  impl->id_is_special.assign(impl->id_bytes.size(), 0);
  for (const auto& token : impl->added_tokens) {
    if (token.special) impl->id_is_special[static_cast<size_t>(token.id)] = 1;
  }

  auto resolve = [&](std::string_view key) -> std::optional<TokenId> {
    const auto name = ConfigToken(config, key);
    if (!name) return std::nullopt;
    const auto found = impl->token_to_id.find(*name);
    return found == impl->token_to_id.end() ? std::nullopt : std::optional<TokenId>(found->second);
  };
  impl->bos = resolve("bos_token");
  impl->eos = resolve("eos_token");

  static const json::value kNull;
  auto component = [&](std::string_view key) -> const json::value& {
    const auto* value = object.if_contains(key);
    return value != nullptr ? *value : kNull;
  };
  if (Status status = impl->LoadNormalizer(component("normalizer")); !status.ok()) return status;
  if (Status status = impl->LoadPreTokenizer(component("pre_tokenizer")); !status.ok())
    return status;
  if (Status status = impl->LoadPostProcessor(component("post_processor"), config); !status.ok()) {
    return status;
  }
  if (Status status = impl->LoadDecoder(component("decoder")); !status.ok()) return status;
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<TokenId> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  // Text should be UTF-8, but its bytes come from clients and chat templates. Invalid
  // sequences become U+FFFD first, as in the Rust strings Hugging Face's tokenizers get
  // (String::from_utf8_lossy); the split regex matches without PCRE2's UTF check, on which
  // invalid UTF-8 is undefined behaviour (a crash, found by tests/fuzz/tokenizer_fuzz).
  const std::string valid = DecodeUtf8Lossy(text);
  if (valid != text) text = valid;
  std::vector<TokenId> ids;
  if (add_special_tokens) ids = impl.prefix_ids;

  // Sections between added tokens; an added token with lstrip/rstrip eats the whitespace
  // beside it.
  struct Section {
    std::string_view text;
    int added = -1;  // Index into added_tokens, or -1 for plain text.
  };
  std::vector<Section> sections;
  size_t start = 0;
  for (size_t offset = 0; offset < text.size();) {
    const auto [token, length] = impl.added_matcher.LongestAt(text, offset);
    if (token < 0) {
      ++offset;
      continue;
    }
    if (offset > start) sections.push_back({text.substr(start, offset - start)});
    sections.push_back({text.substr(offset, length), token});
    offset += length;
    start = offset;
  }
  if (start < text.size()) sections.push_back({text.substr(start)});
  for (size_t i = 0; i < sections.size(); ++i) {
    if (sections[i].added < 0) continue;
    const AddedToken& token = impl.added_tokens[static_cast<size_t>(sections[i].added)];
    if (token.lstrip && i > 0 && sections[i - 1].added < 0) {
      sections[i - 1].text = TrimJsWhitespace(sections[i - 1].text, false, true);
    }
    if (token.rstrip && i + 1 < sections.size() && sections[i + 1].added < 0) {
      sections[i + 1].text = TrimJsWhitespace(sections[i + 1].text, true, false);
    }
  }

  for (const Section& section : sections) {
    if (section.added >= 0) {
      ids.push_back(impl.added_tokens[static_cast<size_t>(section.added)].id);
    } else {
      impl.EncodeSection(section.text, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), impl.suffix_ids.begin(), impl.suffix_ids.end());
  return ids;
}

bool Tokenizer::AppendTokenBytes(TokenId id, bool skip_special_tokens, std::string& out) const {
  const Impl& impl = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= impl.id_exists.size() ||
      !impl.id_exists[static_cast<size_t>(id)]) {
    return false;
  }
  if (!(skip_special_tokens && impl.id_is_special[static_cast<size_t>(id)])) {
    out += impl.id_bytes[static_cast<size_t>(id)];
  }
  return true;
}

Result<std::string> Tokenizer::Decode(std::span<const TokenId> ids,
                                      bool skip_special_tokens) const {
  std::string bytes;
  for (const TokenId id : ids) {
    if (!AppendTokenBytes(id, skip_special_tokens, bytes)) {
      return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  return DecodeUtf8Lossy(bytes);
}

size_t Tokenizer::vocab_size() const {
  return impl_->id_bytes.size();
}

std::optional<TokenId> Tokenizer::TokenToId(std::string_view token) const {
  const auto found = impl_->token_to_id.find(std::string(token));
  return found == impl_->token_to_id.end() ? std::nullopt : std::optional<TokenId>(found->second);
}

bool Tokenizer::IsSpecial(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_is_special.size() &&
         impl_->id_is_special[static_cast<size_t>(id)];
}

std::optional<TokenId> Tokenizer::bos_token_id() const {
  return impl_->bos;
}
std::optional<TokenId> Tokenizer::eos_token_id() const {
  return impl_->eos;
}

}  // namespace inferbox::engine
