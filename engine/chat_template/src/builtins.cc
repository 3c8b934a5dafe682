// Methods of strings and objects and the global functions, as @huggingface/jinja defines them.
#include <algorithm>
#include <ctime>
#include <limits>
#include <string>
#include <utility>

#include "interpreter.h"
#include "js_text.h"

namespace inferbox::engine::chat_template {
namespace {

[[noreturn]] void Fail(std::string message) {
  throw TemplateError{std::move(message)};
}

// The reference passes keyword arguments to a method as one trailing KeywordArgumentsValue.
std::vector<Value> WithKeywords(const CallArgs& args) {
  std::vector<Value> values = args.positional;
  if (args.keywords.size() > 0) values.push_back(Value::Object(args.keywords));
  return values;
}

Value BindMethod(std::function<Value(const CallArgs&)> method) {
  return Value::MakeFunction(
      [method = std::move(method)](Interpreter&, CallArgs& args, Scope&) { return method(args); });
}

// JavaScript's String.prototype.split with a non-empty separator.
// split() makes at most as many parts as range() makes items: 64 MiB of separators would be
// 64 million values (gigabytes) before the work they cost could be charged.
void CheckSplitParts(size_t parts) {
  if (parts >= kMaxRangeItems) {
    Fail("split() into more than " + std::to_string(kMaxRangeItems) + " parts");
  }
}

std::vector<std::string> SplitOn(std::string_view text, std::string_view separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t found; (found = text.find(separator, start)) != std::string_view::npos;) {
    CheckSplitParts(parts.size());
    parts.emplace_back(text.substr(start, found - start));
    start = found + separator.size();
  }
  parts.emplace_back(text.substr(start));
  return parts;
}

Value Split(const std::string& text, const std::vector<Value>& args) {
  const Value separator = args.size() > 0 ? args[0] : Value::Null();
  if (!separator.is_string() && !separator.is_null()) {
    Fail("sep argument must be a string or null");
  }
  const Value max_split = args.size() > 1 ? args[1] : Value::Integer(-1);
  if (!max_split.is(Value::Kind::kInteger)) Fail("maxsplit argument must be a number");
  const double limit = max_split.number();
  std::vector<std::string> parts;
  if (separator.is_null()) {
    const std::string_view rest = TrimStart(text);
    size_t pos = 0;
    while (pos < rest.size()) {
      const size_t word_start = rest.size() - TrimStart(rest.substr(pos)).size();
      if (word_start >= rest.size()) break;
      size_t word_end = word_start;
      while (word_end < rest.size()) {
        size_t next = word_end;
        if (IsJsWhitespace(DecodeUtf8At(rest, next))) break;
        word_end = next;
      }
      if (limit != -1 && static_cast<double>(parts.size()) >= limit) {
        parts.emplace_back(rest.substr(word_start));
        break;
      }
      CheckSplitParts(parts.size());
      parts.emplace_back(rest.substr(word_start, word_end - word_start));
      pos = word_end;
    }
  } else {
    if (separator.string().empty()) Fail("empty separator");
    parts = SplitOn(text, separator.string());
    if (limit != -1 && static_cast<double>(parts.size()) > limit) {
      // parts.splice(maxsplit) joined back with the separator.
      const auto size = static_cast<double>(parts.size());
      const double start = limit < 0 ? std::max(size + limit, 0.0) : std::min(limit, size);
      const auto first = static_cast<size_t>(start);
      std::string joined;
      for (size_t i = first; i < parts.size(); ++i) {
        if (i > first) joined += separator.string();
        joined += parts[i];
      }
      parts.resize(first);
      parts.push_back(std::move(joined));
    }
  }
  std::vector<Value> values;
  for (auto& part : parts) values.push_back(Value::String(std::move(part)));
  return Value::Array(std::move(values));
}

Value Replace(const std::string& text, const CallArgs& call) {
  const std::vector<Value> args = WithKeywords(call);
  if (args.size() < 2) Fail("replace() requires at least two arguments");
  const Value& old_value = args[0];
  const Value& new_value = args[1];
  if (!old_value.is_string() || !new_value.is_string()) Fail("replace() arguments must be strings");
  Value count = Value::Null();
  if (call.positional.size() > 2) {
    count = call.positional[2];
  } else if (args.size() > 2) {
    if (const Value* keyword = call.keywords.Find("count")) count = *keyword;
  }
  if (!count.is(Value::Kind::kInteger) && !count.is_null()) {
    Fail("replace() count argument must be a number or null");
  }
  if (count.is(Value::Kind::kInteger) && count.number() == 0) return Value::String(text);
  double remaining = count.is_null() || count.number() < 0 ? std::numeric_limits<double>::infinity()
                                                           : count.number();
  const std::string& from = old_value.string();
  const std::string& to = new_value.string();
  std::string out;
  if (from.empty()) {
    // Matches at every code point boundary, both ends included.
    size_t pos = 0;
    while (true) {
      if (remaining > 0) {
        out += to;
        --remaining;
        CheckStringSize(out.size());
      }
      if (pos >= text.size()) break;
      size_t next = pos + 1;
      while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
      out.append(text, pos, next - pos);
      pos = next;
    }
    return Value::String(std::move(out));
  }
  size_t start = 0;
  for (size_t found; remaining > 0 && (found = text.find(from, start)) != std::string::npos;) {
    out.append(text, start, found - start);
    out += to;
    CheckStringSize(out.size());
    start = found + from.size();
    --remaining;
  }
  out.append(text, start);
  return Value::String(std::move(out));
}

Value StartsOrEndsWith(const std::string& text, const CallArgs& call, bool is_start) {
  const std::string name = is_start ? "startswith" : "endswith";
  const std::vector<Value> args = WithKeywords(call);
  if (args.empty()) Fail(name + "() requires at least one argument");
  auto matches = [&](const std::string& affix) {
    return is_start ? std::string_view(text).starts_with(affix)
                    : std::string_view(text).ends_with(affix);
  };
  if (args[0].is_string()) return Value::Boolean(matches(args[0].string()));
  if (args[0].is_array()) {
    for (const Value& item : args[0].items()) {
      if (!item.is_string()) Fail(name + "() tuple elements must be strings");
      if (matches(item.string())) return Value::Boolean(true);
    }
    return Value::Boolean(false);
  }
  Fail(name + "() argument must be a string or tuple of strings");
}

// `string`'s methods. Each captures the Value, which shares its text: a method of a 64 MiB
// string is not a 64 MiB copy (a list of 64 of them was gigabytes).
Value StringMember(const Value& string, std::string_view name) {
  const std::string& text = string.string();
  auto unary = [&string](std::string (*transform)(std::string_view)) {
    return BindMethod(
        [string, transform](const CallArgs&) { return Value::String(transform(string.string())); });
  };
  if (name == "length") return Value::Integer(static_cast<double>(Utf16Length(text)));
  if (name == "upper") return unary(&ToUpper);
  if (name == "lower") return unary(&ToLower);
  if (name == "title") return unary(&TitleCase);
  if (name == "strip") return unary([](std::string_view s) { return std::string(Trim(s)); });
  if (name == "lstrip") return unary([](std::string_view s) { return std::string(TrimStart(s)); });
  if (name == "rstrip") return unary([](std::string_view s) { return std::string(TrimEnd(s)); });
  if (name == "capitalize") {
    return unary(&CapitalizeFirst);
  }
  if (name == "startswith" || name == "endswith") {
    const bool is_start = name == "startswith";
    return BindMethod([string, is_start](const CallArgs& args) {
      return StartsOrEndsWith(string.string(), args, is_start);
    });
  }
  if (name == "split") {
    return BindMethod(
        [string](const CallArgs& args) { return Split(string.string(), WithKeywords(args)); });
  }
  if (name == "replace") {
    return BindMethod([string](const CallArgs& args) { return Replace(string.string(), args); });
  }
  return Value();
}

Value Items(const Value& object) {
  std::vector<Value> items;
  for (const auto& [key, value] : object.map().entries()) {
    items.push_back(Value::Array({Value::String(key), value}));
  }
  return Value::Array(std::move(items));
}

Value DictSort(const Value& object, const CallArgs& args) {
  auto argument = [&](size_t index, std::string_view name, Value fallback) {
    if (index < args.positional.size()) return args.positional[index];
    if (const Value* keyword = args.keywords.Find(name)) return *keyword;
    return fallback;
  };
  const Value case_sensitive = argument(0, "case_sensitive", Value::Boolean(false));
  if (!case_sensitive.is(Value::Kind::kBoolean)) Fail("case_sensitive must be a boolean");
  const Value by = argument(1, "by", Value::String("key"));
  if (!by.is_string()) Fail("by must be a string");
  if (by.string() != "key" && by.string() != "value") Fail("by must be either 'key' or 'value'");
  const Value reverse = argument(2, "reverse", Value::Boolean(false));
  if (!reverse.is(Value::Kind::kBoolean)) Fail("reverse must be a boolean");
  std::vector<Value> items = Items(object).items();
  const size_t index = by.string() == "key" ? 0 : 1;
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    const int result = CompareValues(a.items()[index], b.items()[index], case_sensitive.boolean());
    return (reverse.boolean() ? -result : result) < 0;
  });
  return Value::Array(std::move(items));
}

Value ObjectMember(const Value& object, std::string_view name) {
  if (name == "get") {
    return BindMethod([object](const CallArgs& call) {
      const std::vector<Value> args = WithKeywords(call);
      const Value key = args.empty() ? Value() : args[0];
      if (!key.is_string()) Fail("Object key must be a string: got " + std::string(key.TypeName()));
      if (const Value* value = object.map().Find(key.string())) return *value;
      return args.size() > 1 ? args[1] : Value::Null();
    });
  }
  if (name == "items") return BindMethod([object](const CallArgs&) { return Items(object); });
  if (name == "keys") {
    return BindMethod([object](const CallArgs&) {
      std::vector<Value> keys;
      for (const auto& entry : object.map().entries()) keys.push_back(Value::String(entry.first));
      return Value::Array(std::move(keys));
    });
  }
  if (name == "values") {
    return BindMethod([object](const CallArgs&) {
      std::vector<Value> values;
      for (const auto& entry : object.map().entries()) values.push_back(entry.second);
      return Value::Array(std::move(values));
    });
  }
  if (name == "dictsort") {
    return BindMethod([object](const CallArgs& args) { return DictSort(object, args); });
  }
  return Value();
}

Value Namespace(const CallArgs& args) {
  if (args.positional.size() > 1) {
    Fail("namespace expected at most 1 argument, got " + std::to_string(args.positional.size()));
  }
  ObjectMap entries;
  if (args.positional.size() == 1) {
    const Value& source = args.positional[0];
    if (source.is_object()) {
      for (const auto& [key, value] : source.map().entries()) entries.Set(key, value);
    } else if (source.is_array()) {
      for (const Value& pair : source.items()) {
        if (!pair.is_array() || pair.items().size() != 2) {
          Fail("namespace expected an object or an iterable of [key, value] pairs");
        }
        if (!pair.items()[0].is_string()) Fail("namespace keys must be strings");
        entries.Set(pair.items()[0].string(), pair.items()[1]);
      }
    } else {
      Fail("'" + std::string(source.TypeName()) + "' object is not iterable");
    }
  }
  for (const auto& [key, value] : args.keywords.entries()) entries.Set(key, value);
  return Value::Object(std::move(entries), Value::Kind::kNamespace);
}

Value Range(const CallArgs& args) {
  const std::vector<Value> values = WithKeywords(args);
  auto number = [&](size_t i) { return values[i].is_number() ? values[i].number() : 0.0; };
  if (values.empty()) Fail("range() expects at least one argument");
  double start = 0;
  double stop = number(0);
  double step = 1;
  if (values.size() > 1) {
    start = number(0);
    stop = number(1);
  }
  if (values.size() > 2) step = number(2);
  if (step == 0) Fail("range() step must not be zero");
  std::vector<Value> items;
  for (double i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (items.size() == kMaxRangeItems) {
      Fail("range() of more than " + std::to_string(kMaxRangeItems) + " items");
    }
    items.push_back(std::trunc(i) == i ? Value::Integer(i) : Value::Float(i));
  }
  return Value::Array(std::move(items));
}

// The reference's strftime: %Y %m %d %b %B %H %M %% in local time, en-US month names.
Value StrftimeNow(const CallArgs& args) {
  static constexpr const char* kMonths[] = {"January",   "February", "March",    "April",
                                            "May",       "June",     "July",     "August",
                                            "September", "October",  "November", "December"};
  const std::string format =
      !args.positional.empty() && args.positional[0].is_string() ? args.positional[0].string() : "";
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  auto pad2 = [](int n) { return (n < 10 ? "0" : "") + std::to_string(n); };
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 >= format.size()) {
      out.push_back(format[i]);
      continue;
    }
    const char spec = format[i + 1];
    switch (spec) {
      case 'Y': out += std::to_string(local.tm_year + 1900); break;
      case 'm': out += pad2(local.tm_mon + 1); break;
      case 'd': out += pad2(local.tm_mday); break;
      case 'b': out += std::string(kMonths[local.tm_mon]).substr(0, 3); break;
      case 'B': out += kMonths[local.tm_mon]; break;
      case 'H': out += pad2(local.tm_hour); break;
      case 'M': out += pad2(local.tm_min); break;
      case '%': out += "%"; break;
      default: out.push_back('%'); continue;
    }
    ++i;
  }
  return Value::String(std::move(out));
}

}  // namespace

Value GetBuiltinMember(const Value& object, std::string_view name) {
  if (object.is_string()) return StringMember(object, name);
  if (object.is_array()) {
    if (name == "length") return Value::Integer(static_cast<double>(object.items().size()));
    return Value();
  }
  if (object.is_object()) return ObjectMember(object, name);
  return Value();
}

void DeclareGlobals(Scope& globals) {
  globals.Set("namespace",
              Value::MakeFunction([](Interpreter& interpreter, CallArgs& args, Scope&) {
                interpreter.CountNamespace();
                return Namespace(args);
              }));
  globals.Set("range", Value::MakeFunction([](Interpreter& interpreter, CallArgs& args, Scope&) {
                Value items = Range(args);
                interpreter.Charge(items.items().size());
                return items;
              }));
  globals.Set("false", Value::Boolean(false));
  globals.Set("true", Value::Boolean(true));
  globals.Set("none", Value::Null());
  globals.Set("raise_exception", BindMethod([](const CallArgs& args) -> Value {
                const std::vector<Value> values = WithKeywords(args);
                const bool is_empty =
                    values.empty() || values[0].is_null() || values[0].is_undefined();
                Fail(is_empty ? "" : values[0].ToJsString());
              }));
  globals.Set("strftime_now", BindMethod(&StrftimeNow));
  globals.Set("True", Value::Boolean(true));
  globals.Set("False", Value::Boolean(false));
  globals.Set("None", Value::Null());
}

int CompareValues(const Value& a, const Value& b, bool case_sensitive) {
  const std::string pair = std::string(a.TypeName()) + " with " + std::string(b.TypeName());
  if (a.is_null() && b.is_null()) return 0;
  if (a.is_null() || b.is_null()) Fail("Cannot compare " + pair);
  if (a.is_undefined() && b.is_undefined()) return 0;
  if (a.is_undefined() || b.is_undefined()) Fail("Cannot compare " + pair);
  auto is_numeric = [](const Value& v) { return v.is_number() || v.is(Value::Kind::kBoolean); };
  if (is_numeric(a) && is_numeric(b)) {
    auto number = [](const Value& v) {
      return v.is(Value::Kind::kBoolean) ? (v.boolean() ? 1.0 : 0.0) : v.number();
    };
    return number(a) < number(b) ? -1 : number(a) > number(b) ? 1 : 0;
  }
  if (a.kind() != b.kind()) {
    Fail("Cannot compare different types: " + std::string(a.TypeName()) + " and " +
         std::string(b.TypeName()));
  }
  if (!a.is_string()) Fail("Cannot compare type: " + std::string(a.TypeName()));
  const std::string left = case_sensitive ? a.string() : ToLower(a.string());
  const std::string right = case_sensitive ? b.string() : ToLower(b.string());
  return left < right ? -1 : left > right ? 1 : 0;
}

Value GetAttributePath(const Value& item, std::string_view path) {
  Value value = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string_view part =
        path.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (value.is_attribute_container()) {
      const Value* found = value.map().Find(part);
      value = found != nullptr ? *found : Value();
    } else if (value.is_array()) {
      double index = 0;
      if (!JsParseInt(part, index) || index < 0 ||
          index >= static_cast<double>(value.items().size())) {
        return Value();
      }
      value = Value(value.items()[static_cast<size_t>(index)]);
    } else {
      return Value();
    }
    if (dot == std::string_view::npos) return value;
    start = dot + 1;
  }
}

}  // namespace inferbox::engine::chat_template
