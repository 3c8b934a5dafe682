// Request bodies of /v1/chat/completions and /v1/completions from untrusted clients (R6.13).
// The parsers must accept a body or refuse it with a 400 whose error object is JSON; never
// another status, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include <boost/json.hpp>

#include "fuzz_input.h"
#include "openai_json.h"

namespace {

void CheckRefusal(const inferbox::daemon::openai::ApiError& error) {
  if (error.http_status != 400) inferbox::fuzz::Fail("a request body was refused with not 400");
  if (error.message.empty()) inferbox::fuzz::Fail("a refusal without a message");
  boost::system::error_code parse_error;
  const boost::json::value body = boost::json::parse(ErrorBody(error), parse_error);
  if (parse_error || !body.is_object() || !body.as_object().contains("error"))
    inferbox::fuzz::Fail("an error body that is not {\"error\": ...}");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox::daemon::openai;
  const std::string_view body = inferbox::fuzz::AsText(data, size);
  ChatCompletionRequest chat;
  if (auto error = ParseChatCompletionRequest(body, &chat)) {
    inferbox::fuzz::Reached(error->message);
    CheckRefusal(*error);
  } else {
    inferbox::fuzz::Reached("chat parsed");
    std::string wire;
    if (!chat.request.SerializeToString(&wire))
      inferbox::fuzz::Fail("a chat request does not serialize");
  }
  CompletionRequest completion;
  if (auto error = ParseCompletionRequest(body, &completion)) {
    inferbox::fuzz::Reached(error->message);
    CheckRefusal(*error);
  } else {
    inferbox::fuzz::Reached("completion parsed");
    std::string wire;
    if (!completion.request.SerializeToString(&wire))
      inferbox::fuzz::Fail("a completion request does not serialize");
  }
  return 0;
}
