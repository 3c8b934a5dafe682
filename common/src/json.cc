#include "inferbox/common/json.h"

#include <cmath>
#include <string>
#include <vector>

#include <boost/json/parse.hpp>

namespace inferbox {
namespace {

// Boost's error_category has a protected non-virtual destructor, by design (categories are
// never deleted through a base pointer); -Wnon-virtual-dtor does not know that.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class JsonCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "inferbox.json"; }
  std::string message(int) const override {
    return "a number is past the range of a double (it would read as infinity or NaN)";
  }
};
#pragma GCC diagnostic pop

}  // namespace

boost::system::error_code NumberPastDouble() {
  static const JsonCategory category;
  return {1, category};
}

bool HoldsNonFiniteNumber(const boost::json::value& value) {
  // Iterative, so a deeply nested document costs no stack.
  std::vector<const boost::json::value*> pending{&value};
  while (!pending.empty()) {
    const boost::json::value* next = pending.back();
    pending.pop_back();
    switch (next->kind()) {
      case boost::json::kind::double_:
        if (!std::isfinite(next->get_double())) return true;
        break;
      case boost::json::kind::array:
        for (const auto& item : next->get_array()) pending.push_back(&item);
        break;
      case boost::json::kind::object:
        for (const auto& entry : next->get_object()) pending.push_back(&entry.value());
        break;
      default: break;
    }
  }
  return false;
}

boost::json::value ParseJson(std::string_view text, boost::system::error_code& error) {
  boost::json::value value = boost::json::parse(text, error);
  if (!error && HoldsNonFiniteNumber(value)) {
    error = NumberPastDouble();
    return nullptr;
  }
  return value;
}

}  // namespace inferbox
