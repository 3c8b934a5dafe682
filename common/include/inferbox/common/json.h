// Parsing JSON from outside the box (request bodies, model files, model output) with
// Boost.JSON, minus its one surprise: Boost.JSON 1.81 reads a number past the range of a
// double as a non-finite double ("1e400" as infinity, "0e400" as NaN) instead of failing.
// A NaN temperature passes every range check written as `x < low || x > high`, and
// serializing one writes "NaN", which is not JSON. Every parse of untrusted JSON goes
// through here.
#pragma once

#include <string_view>

#include <boost/json/value.hpp>
#include <boost/system/error_code.hpp>

namespace inferbox {

// boost::json::parse(text, error), except that a document holding a number that is not a
// finite double fails with NumberPastDouble() ("a number is past the range of a double").
boost::json::value ParseJson(std::string_view text, boost::system::error_code& error);

// The error ParseJson gives for such a number.
boost::system::error_code NumberPastDouble();

// True when `value` or anything inside it is a non-finite double.
bool HoldsNonFiniteNumber(const boost::json::value& value);

}  // namespace inferbox
