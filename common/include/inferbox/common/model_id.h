// Model ids: the name clients put in `model`, the folder name under the model store and the
// key a config's [[models]] entry is known by. One definition for every place that checks one.
#pragma once

#include <string_view>

namespace inferbox {

// The pattern, for error messages.
inline constexpr std::string_view kModelIdPattern = "[a-z0-9][a-z0-9._-]{0,63}";

// True when `id` matches kModelIdPattern: it is then safe as a file name and in a URL path.
bool IsModelId(std::string_view id);

}  // namespace inferbox
