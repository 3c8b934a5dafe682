#include "inferbox/common/json.h"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

namespace inferbox {
namespace {

TEST(ParseJson, RefusesNumbersThatAreNotFiniteDoubles) {
  // Boost.JSON alone reads each of these as NaN or infinity and serializes it as the
  // non-JSON token NaN or Infinity.
  for (const char* text : {"0e400", "-0.0e999", "1e400", "-1e400", "1.7976931348623159e308",
                           R"({"a": [1, {"b": 0e400}]})", R"([[[[[1e999]]]]])"}) {
    boost::system::error_code error;
    const boost::json::value value = ParseJson(text, error);
    EXPECT_EQ(error, NumberPastDouble()) << text;
    EXPECT_EQ(error.message(),
              "a number is past the range of a double (it would read as infinity or NaN)");
    EXPECT_TRUE(value.is_null()) << text;
  }
}

TEST(ParseJson, ReadsWhatBoostReads) {
  for (const char* text : {"0", "1e308", "-1e-400", "1.7976931348623157e308",
                           "99999999999999999999999", R"({"t": 0.7, "xs": [1, -2.5e-3]})"}) {
    boost::system::error_code error;
    const boost::json::value value = ParseJson(text, error);
    ASSERT_FALSE(error) << text << ": " << error.message();
    EXPECT_EQ(value, boost::json::parse(text)) << text;
    EXPECT_FALSE(HoldsNonFiniteNumber(value));
  }
  boost::system::error_code error;
  ParseJson("{", error);
  EXPECT_TRUE(error) << "a syntax error is still an error";
}

}  // namespace
}  // namespace inferbox
