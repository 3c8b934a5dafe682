#include "inferbox/common/json.h"

#include <cmath>

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

namespace inferbox {
namespace {

TEST(ParseJson, RefusesNumbersPastADouble) {
  // Boost.JSON alone reads each of these as infinity and serializes it as the non-JSON token
  // Infinity.
  for (const char* text :
       {"1e400", "-1e400", "1.7976931348623159e308", R"({"a": [1, {"b": 1e999}]})",
        R"([[[[[-1e999]]]]])", R"([0e400, 1e400])"}) {
    boost::system::error_code error;
    const boost::json::value value = ParseJson(text, error);
    EXPECT_EQ(error, NumberPastDouble()) << text;
    EXPECT_EQ(error.message(), "a number is past the range of a double");
    EXPECT_TRUE(value.is_null()) << text;
  }
}

TEST(ParseJson, AZeroWithAHugeExponentIsZeroNotNaN) {
  // Boost.JSON alone reads these as 0 * infinity = NaN, which passes range checks written as
  // `x < low || x > high` and serializes as the non-JSON token NaN.
  for (const char* text : {"0e400", "-0.0e999", "0.000E+99999"}) {
    boost::system::error_code error;
    const boost::json::value value = ParseJson(text, error);
    ASSERT_FALSE(error) << text << ": " << error.message();
    ASSERT_TRUE(value.is_double()) << text;
    EXPECT_EQ(value.get_double(), 0.0) << text;
  }
  boost::system::error_code error;
  const boost::json::value nested = ParseJson(R"({"t": [1, {"u": 0e400}], "v": 0.5})", error);
  ASSERT_FALSE(error);
  EXPECT_EQ(nested, boost::json::parse(R"({"t": [1, {"u": 0.0}], "v": 0.5})"));
}

TEST(ParseJson, ReadsWhatBoostReads) {
  for (const char* text : {"0", "1e308", "-1e-400", "1.7976931348623157e308",
                           "99999999999999999999999", R"({"t": 0.7, "xs": [1, -2.5e-3]})"}) {
    boost::system::error_code error;
    const boost::json::value value = ParseJson(text, error);
    ASSERT_FALSE(error) << text << ": " << error.message();
    EXPECT_EQ(value, boost::json::parse(text)) << text;
  }
  boost::system::error_code error;
  ParseJson("{", error);
  EXPECT_TRUE(error) << "a syntax error is still an error";
}

}  // namespace
}  // namespace inferbox
