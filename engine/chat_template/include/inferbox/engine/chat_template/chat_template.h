// Renders a Hugging Face `chat_template` (Jinja) exactly as @huggingface/jinja 0.5.11 does,
// which is what Hugging Face's JavaScript libraries use; tests/unit/engine/chat_template
// compares the two byte for byte on the real templates of our models.
//
// Parse once at model load; Render per request. A parsed ChatTemplate is immutable: Render
// may be called from many threads at once.
//
// What the reference does not do (a `{% call %}` or `{% filter %}` block, `*args`/`**kwargs`
// unpacking) and what it can only fail on at run time (an unknown filter, test or method, a
// member access on a filter call) fail Parse instead, naming the construct and its line.
//
// Known differences from the reference, outside what chat templates do: `first`/`last` of an
// empty list give undefined where the reference fails with a JavaScript TypeError; case
// mapping covers Unicode's simple mappings plus the common one-to-many ones (ß -> SS), not all
// of SpecialCasing; tojson(sort_keys=true) orders keys by bytes, not by locale; numbers are
// doubles as in JavaScript, so integers beyond 2^53 round the same way; strftime_now uses
// English month names.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <boost/json/object.hpp>

#include "inferbox/common/status.h"

namespace inferbox::engine {

namespace chat_template {
struct Program;
}

class ChatTemplate {
 public:
  // An unsupported or malformed construct is INVALID_ARGUMENT naming it and its line:
  // "chat template line 12: unsupported filter 'xyz'".
  static Result<ChatTemplate> Parse(std::string_view source);

  // Renders with the given variables (messages, tools, add_generation_prompt, bos_token,
  // eos_token, any extra kwargs). A run-time error of the template (raise_exception, a type
  // error, calling what is not a function) is INVALID_ARGUMENT with the reference's message,
  // e.g. the text given to raise_exception.
  Result<std::string> Render(const boost::json::object& variables) const;

 private:
  explicit ChatTemplate(std::shared_ptr<const chat_template::Program> program);

  std::shared_ptr<const chat_template::Program> program_;
};

}  // namespace inferbox::engine
