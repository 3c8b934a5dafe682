// Parsing JSON from outside the box (request bodies, model files, model output) with
// Boost.JSON, minus its surprise with exponents: Boost.JSON 1.81 reads a number past the range
// of a double as infinity ("1e400") and a zero with a huge exponent ("0e400") as NaN, instead
// of failing or reading zero. A NaN temperature passes every range check written as
// `x < low || x > high`, and serializing one writes "NaN", which is not JSON. Every parse of
// untrusted JSON goes through here.
#pragma once

#include <string>
#include <string_view>

#include <boost/json/value.hpp>
#include <boost/system/error_code.hpp>

namespace inferbox {

// boost::json::parse(text, error), except that a zero with a huge exponent reads as zero, and
// a document holding a number past the range of a double fails with NumberPastDouble() ("a
// number is past the range of a double"). No double in what it returns is NaN or infinite.
boost::json::value ParseJson(std::string_view text, boost::system::error_code& error);

// The error ParseJson gives for such a number.
boost::system::error_code NumberPastDouble();

// What is wrong with a document that must be a JSON object, as ParseJson returned it with
// `error`: "not valid JSON: <why>", "not a JSON object", or "" when it is one.
std::string JsonObjectProblem(const boost::json::value& value,
                              const boost::system::error_code& error);

}  // namespace inferbox
