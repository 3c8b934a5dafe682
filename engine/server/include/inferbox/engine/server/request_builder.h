// Turns a public API request (inferbox.v1 Generate or Chat) into what the engine runs:
// the prompt's token ids (text tokenized, chats rendered with the model's chat template),
// sampling parameters with the model's generation_config.json defaults, and stop
// conditions with the model's end-of-sequence ids and context length. Every refusal is
// INVALID_ARGUMENT naming the field. Immutable after construction: any thread may use it.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "inferbox/common/status.h"
#include "inferbox/engine/chat_template/chat_format.h"
#include "inferbox/engine/model/model_config.h"
#include "inferbox/engine/runtime/runtime.h"
#include "inferbox/engine/tokenizer/tokenizer.h"
#include "inferbox/v1/inference.pb.h"

namespace inferbox::engine {

class RequestBuilder {
 public:
  // `tokenizer` must outlive the builder; `chat` is absent for a model without a template.
  RequestBuilder(const Tokenizer& tokenizer, std::optional<ChatFormat> chat,
                 const ModelConfig& model, GenerationConfig generation,
                 std::vector<int32_t> eos_token_ids, int64_t max_model_len);

  Result<RequestOptions> FromCompletion(const inferbox::v1::GenerateRequest& request) const;
  Result<RequestOptions> FromChat(const inferbox::v1::ChatRequest& request) const;
  // The prompt text a chat renders to.
  Result<std::string> RenderChat(const inferbox::v1::ChatRequest& request) const;

  int64_t max_model_len() const { return max_model_len_; }
  bool has_chat_template() const { return chat_.has_value(); }
  // The rendered generation prompt ends inside an opened "<think>" block (DeepSeek-R1).
  bool chat_prompt_opens_reasoning() const { return chat_prompt_opens_reasoning_; }
  // ChatFormat::tool_call_format; empty without a chat template.
  std::string tool_call_format() const { return chat_ ? chat_->tool_call_format : ""; }

 private:
  Result<RequestOptions> Build(std::vector<int32_t> prompt,
                               const inferbox::v1::SamplingParams& sampling,
                               const inferbox::v1::StopConditions& stop,
                               const inferbox::v1::LogprobsOptions& logprobs,
                               inferbox::v1::Priority priority) const;

  const Tokenizer& tokenizer_;
  std::optional<ChatFormat> chat_;
  int64_t vocab_size_;
  GenerationConfig generation_;
  std::vector<int32_t> eos_token_ids_;
  int64_t max_model_len_;
  bool chat_prompt_opens_reasoning_ = false;
};

}  // namespace inferbox::engine
