#include "value.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <boost/json.hpp>

#include "js_text.h"

namespace inferbox::engine::chat_template {
namespace {

// JavaScript orders an object's "array index" keys (canonical decimal below 2^32 - 1) first.
std::optional<uint32_t> ArrayIndexKey(std::string_view key) {
  if (key.empty() || key.size() > 10 || (key.size() > 1 && key[0] == '0')) return std::nullopt;
  uint64_t index = 0;
  for (char c : key) {
    if (c < '0' || c > '9') return std::nullopt;
    index = index * 10 + static_cast<uint64_t>(c - '0');
  }
  if (index >= 4294967295ULL) return std::nullopt;
  return static_cast<uint32_t>(index);
}

// ToNumber of a string, as JavaScript's loose equality applies it.
double JsStringToNumber(std::string_view text) {
  text = Trim(text);
  if (text.empty()) return 0;
  if (text == "Infinity" || text == "+Infinity") return INFINITY;
  if (text == "-Infinity") return -INFINITY;
  const std::string copy(text);
  if (copy.find_first_of("iInN") != std::string::npos) return NAN;
  char* end = nullptr;
  const double value = std::strtod(copy.c_str(), &end);
  return end == copy.c_str() + copy.size() ? value : NAN;
}

bool IsJsPrimitive(const Value& value) {
  return value.is(Value::Kind::kBoolean) || value.is_number() || value.is_string();
}

}  // namespace

const Value* ObjectMap::Find(std::string_view key) const {
  for (const auto& [name, value] : entries_) {
    if (name == key) return &value;
  }
  return nullptr;
}

void ObjectMap::Set(std::string key, Value value) {
  nesting_ = std::max(nesting_, value.nesting() + 1);
  for (auto& [name, existing] : entries_) {
    if (name == key) {
      existing = std::move(value);
      return;
    }
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

bool ObjectMap::Erase(std::string_view key) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == key) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

Value Value::Boolean(bool b) {
  Value value(Kind::kBoolean);
  value.boolean_ = b;
  return value;
}

Value Value::Integer(double number) {
  Value value(Kind::kInteger);
  value.number_ = number;
  return value;
}

Value Value::Float(double number) {
  Value value(Kind::kFloat);
  value.number_ = number;
  return value;
}

Value Value::String(std::string text) {
  Value value(Kind::kString);
  value.string_ = std::make_shared<const std::string>(std::move(text));
  return value;
}

const std::string& Value::string() const {
  static const std::string kEmpty;
  return string_ != nullptr ? *string_ : kEmpty;
}

Value Value::Array(std::vector<Value> items, Kind kind) {
  Value value(kind);
  uint32_t deepest = 0;
  for (const Value& item : items) deepest = std::max(deepest, item.nesting());
  CheckNesting(deepest + 1);
  value.array_nesting_ = deepest + 1;
  value.array_ = std::make_shared<const std::vector<Value>>(std::move(items));
  return value;
}

Value Value::Object(ObjectMap map, Kind kind) {
  CheckNesting(map.nesting());
  Value value(kind);
  value.object_ = std::make_shared<ObjectMap>(std::move(map));
  return value;
}

Value Value::MakeFunction(std::function<Value(Interpreter&, CallArgs&, Scope&)> call) {
  Value value(Kind::kFunction);
  value.function_ = std::make_shared<const Function>(Function{std::move(call)});
  return value;
}

Value Value::FromJson(const boost::json::value& json) {
  switch (json.kind()) {
    case boost::json::kind::null: return Null();
    case boost::json::kind::bool_: return Boolean(json.get_bool());
    case boost::json::kind::int64: return Integer(static_cast<double>(json.get_int64()));
    case boost::json::kind::uint64: return Integer(static_cast<double>(json.get_uint64()));
    case boost::json::kind::double_: {
      const double number = json.get_double();
      const bool is_whole = std::isfinite(number) && std::trunc(number) == number;
      return is_whole ? Integer(number == 0 ? 0 : number) : Float(number);
    }
    case boost::json::kind::string: return String(std::string(json.get_string()));
    case boost::json::kind::array: {
      std::vector<Value> items;
      items.reserve(json.get_array().size());
      for (const auto& item : json.get_array()) items.push_back(FromJson(item));
      return Array(std::move(items));
    }
    case boost::json::kind::object: {
      std::vector<std::pair<uint32_t, const boost::json::key_value_pair*>> index_keys;
      std::vector<const boost::json::key_value_pair*> other_keys;
      for (const auto& entry : json.get_object()) {
        if (auto index = ArrayIndexKey(entry.key())) {
          index_keys.emplace_back(*index, &entry);
        } else {
          other_keys.push_back(&entry);
        }
      }
      std::stable_sort(index_keys.begin(), index_keys.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      ObjectMap map;
      for (const auto& [index, entry] : index_keys) {
        map.Set(std::string(entry->key()), FromJson(entry->value()));
      }
      for (const auto* entry : other_keys) {
        map.Set(std::string(entry->key()), FromJson(entry->value()));
      }
      return Object(std::move(map));
    }
  }
  return Value();
}

void CheckStringSize(size_t bytes) {
  if (bytes > kMaxStringBytes) {
    throw TemplateError{"the chat template builds a string over " +
                        std::to_string(kMaxStringBytes >> 20) + " MiB"};
  }
}

void CheckNesting(uint32_t nesting) {
  if (nesting > kMaxNesting) {
    throw TemplateError{"values nest deeper than " + std::to_string(kMaxNesting)};
  }
}

uint32_t Value::nesting() const {
  if (is_array()) return array_nesting_;
  if (is_attribute_container()) return object_->nesting();
  return 0;
}

std::string_view Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "UndefinedValue";
    case Kind::kNull: return "NullValue";
    case Kind::kBoolean: return "BooleanValue";
    case Kind::kInteger: return "IntegerValue";
    case Kind::kFloat: return "FloatValue";
    case Kind::kString: return "StringValue";
    case Kind::kArray: return "ArrayValue";
    case Kind::kTuple: return "TupleValue";
    case Kind::kObject: return "ObjectValue";
    case Kind::kNamespace: return "NamespaceValue";
    case Kind::kFunction: return "FunctionValue";
  }
  return "RuntimeValue";
}

bool Value::IsTruthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNull: return false;
    case Kind::kBoolean: return boolean_;
    case Kind::kInteger:
    case Kind::kFloat: return number_ != 0 && !std::isnan(number_);
    case Kind::kString: return !string().empty();
    case Kind::kArray:
    case Kind::kTuple: return !array_->empty();
    case Kind::kObject: return object_->size() > 0;
    case Kind::kNamespace:
    case Kind::kFunction: return true;
  }
  return false;
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNull: return "undefined";
    case Kind::kBoolean: return boolean_ ? "true" : "false";
    case Kind::kInteger: return JsNumberToString(number_);
    case Kind::kFloat:
      if (number_ == 0 && std::signbit(number_)) return "-0.0";
      if (std::isfinite(number_) && std::trunc(number_) == number_) return JsToFixed1(number_);
      return JsNumberToString(number_);
    case Kind::kString: return string();
    case Kind::kArray:
    case Kind::kTuple:
    case Kind::kObject:
    case Kind::kNamespace: return ToJson(*this, {}, /*convert_undefined_to_null=*/false);
    case Kind::kFunction: throw TemplateError{"Cannot convert a function to a string"};
  }
  return "";
}

std::string Value::ToJsString() const {
  switch (kind_) {
    case Kind::kInteger:
    case Kind::kFloat: return JsNumberToString(number_);
    case Kind::kArray:
    case Kind::kTuple: {
      std::string out;
      for (size_t i = 0; i < array_->size(); ++i) {
        if (i > 0) out.push_back(',');
        out += (*array_)[i].ToString();
        CheckStringSize(out.size());
      }
      return out;
    }
    case Kind::kObject:
    case Kind::kNamespace: return "[object Map]";
    default: return ToString();
  }
}

bool Value::StrictEquals(const Value& other) const {
  const bool this_missing = is_undefined() || is_null();
  const bool other_missing = other.is_undefined() || other.is_null();
  if (this_missing || other_missing) return this_missing && other_missing;
  if (is_number() && other.is_number()) return number_ == other.number_;
  if (kind_ != other.kind_) {
    if (is_array() && other.is_array()) return array_ == other.array_;
    return false;
  }
  switch (kind_) {
    case Kind::kBoolean: return boolean_ == other.boolean_;
    case Kind::kString: return string() == other.string();
    case Kind::kArray:
    case Kind::kTuple: return array_ == other.array_;
    case Kind::kObject:
    case Kind::kNamespace: return object_ == other.object_;
    case Kind::kFunction: return function_ == other.function_;
    default: return false;
  }
}

bool Value::LooseEquals(const Value& other) const {
  if (!IsJsPrimitive(*this) || !IsJsPrimitive(other)) return StrictEquals(other);
  if (is_string() && other.is_string()) return string() == other.string();
  if (is(Kind::kBoolean) && other.is(Kind::kBoolean)) return boolean_ == other.boolean_;
  auto to_number = [](const Value& value) {
    if (value.is_string()) return JsStringToNumber(value.string());
    if (value.is(Kind::kBoolean)) return value.boolean() ? 1.0 : 0.0;
    return value.number();
  };
  return to_number(*this) == to_number(other);
}

std::string ToJson(const Value& value, const JsonOptions& options, bool convert_undefined_to_null,
                   int depth) {
  const int indent = options.indent.value_or(0);
  std::string item_separator = indent > 0 ? "," : ", ";
  std::string key_separator = ": ";
  if (options.separators) std::tie(item_separator, key_separator) = *options.separators;
  switch (value.kind()) {
    case Value::Kind::kNull: return "null";
    case Value::Kind::kUndefined: return convert_undefined_to_null ? "null" : "undefined";
    case Value::Kind::kInteger:
    case Value::Kind::kFloat:
      return std::isfinite(value.number()) ? JsNumberToString(value.number()) : "null";
    case Value::Kind::kBoolean: return value.boolean() ? "true" : "false";
    case Value::Kind::kString: {
      std::string out;
      AppendJsonQuoted(value.string(), options.ensure_ascii, out);
      return out;
    }
    case Value::Kind::kArray:
    case Value::Kind::kObject:
    case Value::Kind::kNamespace: {
      // Bounds the recursion: a namespace may hold values it was given after an array that
      // holds it was made (Value::nesting).
      if (depth >= static_cast<int>(kMaxNesting)) {
        throw TemplateError{"Cannot convert to JSON: values nest deeper than " +
                            std::to_string(kMaxNesting)};
      }
      const std::string indent_unit(indent > 0 ? indent : 0, ' ');
      std::string base_padding = "\n";
      for (int i = 0; i < depth; ++i) base_padding += indent_unit;
      const std::string children_padding = base_padding + indent_unit;
      std::vector<std::string> parts;
      if (value.is_array()) {
        size_t bytes = 0;
        for (const auto& item : value.items()) {
          parts.push_back(ToJson(item, options, convert_undefined_to_null, depth + 1));
          CheckStringSize(bytes += parts.back().size());
        }
      } else {
        std::vector<const std::pair<std::string, Value>*> entries;
        for (const auto& entry : value.map().entries()) entries.push_back(&entry);
        if (options.sort_keys) {
          std::stable_sort(entries.begin(), entries.end(),
                           [](const auto* a, const auto* b) { return a->first < b->first; });
        }
        size_t bytes = 0;
        for (const auto* entry : entries) {
          std::string part = indent > 0 ? children_padding : "";
          AppendJsonQuoted(entry->first, options.ensure_ascii, part);
          part += key_separator;
          part += ToJson(entry->second, options, convert_undefined_to_null, depth + 1);
          CheckStringSize(bytes += part.size());
          parts.push_back(std::move(part));
        }
      }
      const bool is_array = value.is_array();
      std::string out(1, is_array ? '[' : '{');
      if (indent > 0 && !parts.empty() && is_array) out += children_padding;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (i > 0)
          out += is_array && indent > 0 ? item_separator + children_padding : item_separator;
        out += parts[i];
      }
      if (indent > 0 && !parts.empty()) out += base_padding;
      out.push_back(is_array ? ']' : '}');
      return out;
    }
    default: throw TemplateError{"Cannot convert to JSON: " + std::string(value.TypeName())};
  }
}

}  // namespace inferbox::engine::chat_template
