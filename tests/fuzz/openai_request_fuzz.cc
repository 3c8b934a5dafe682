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

// `parse` accepts the body (and the request it fills serializes) or refuses it as a 400.
template <typename Request, typename Parse>
void Check(std::string_view body, Parse parse, const char* name) {
  Request parsed;
  if (auto error = parse(body, &parsed)) {
    inferbox::fuzz::Reached(error->message);
    CheckRefusal(*error);
    return;
  }
  inferbox::fuzz::Reached(name);
  std::string wire;
  if (!parsed.request.SerializeToString(&wire))
    inferbox::fuzz::Fail("a request does not serialize");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox::daemon::openai;
  const std::string_view body = inferbox::fuzz::AsText(data, size);
  Check<ChatCompletionRequest>(body, &ParseChatCompletionRequest, "chat parsed");
  Check<CompletionRequest>(body, &ParseCompletionRequest, "completion parsed");
  return 0;
}
