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
  std::string message(int) const override { return "a number is past the range of a double"; }
};
#pragma GCC diagnostic pop

}  // namespace

boost::system::error_code NumberPastDouble() {
  static const JsonCategory category;
  return {1, category};
}

namespace {

// Gives a zero with an overflowing exponent ("0e400", which Boost 1.81 reads as 0 * infinity
// = NaN) the value JSON means, zero; false when a number is infinite ("1e400").
bool MakeNumbersFinite(boost::json::value& value) {
  // Iterative, so a deeply nested document costs no stack.
  std::vector<boost::json::value*> pending{&value};
  while (!pending.empty()) {
    boost::json::value* next = pending.back();
    pending.pop_back();
    switch (next->kind()) {
      case boost::json::kind::double_: {
        double& number = next->get_double();
        if (std::isnan(number)) number = std::copysign(0.0, number);
        if (std::isinf(number)) return false;
        break;
      }
      case boost::json::kind::array:
        for (auto& item : next->get_array()) pending.push_back(&item);
        break;
      case boost::json::kind::object:
        for (auto& entry : next->get_object()) pending.push_back(&entry.value());
        break;
      default: break;
    }
  }
  return true;
}

}  // namespace

std::string JsonObjectProblem(const boost::json::value& value,
                              const boost::system::error_code& error) {
  if (error) return "not valid JSON: " + error.message();
  return value.is_object() ? "" : "not a JSON object";
}

boost::json::value ParseJson(std::string_view text, boost::system::error_code& error) {
  boost::json::value value = boost::json::parse(text, error);
  if (!error && !MakeNumbersFinite(value)) {
    error = NumberPastDouble();
    return nullptr;
  }
  return value;
}

}  // namespace inferbox
