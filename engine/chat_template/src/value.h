// The runtime values of the template interpreter, mirroring @huggingface/jinja's RuntimeValue
// classes (their type names appear in error messages, as in the reference).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/json/value.hpp>

namespace inferbox::engine::chat_template {

// A run-time error of the template (raise_exception, a type error); Render turns it into
// INVALID_ARGUMENT. Never leaves the library.
struct TemplateError {
  std::string message;
};

class Value;
class Interpreter;
class Scope;

// How deep arrays, objects and namespaces may nest inside each other: deeper ones would take
// the engine's stack to print or free. JSON input nests at most 32 deep (Boost.JSON's limit).
inline constexpr uint32_t kMaxNesting = 64;
// The longest string a template may build (and its output); builders check as they grow, so
// that one step cannot multiply a string past it (join, replace, indent, tojson).
inline constexpr size_t kMaxStringBytes = size_t{64} << 20;
// Throws TemplateError when `bytes` is past kMaxStringBytes.
void CheckStringSize(size_t bytes);
// Throws TemplateError when a container's `nesting` (Value::nesting) is past kMaxNesting.
void CheckNesting(uint32_t nesting);

// Insertion-ordered string map, like JavaScript's Map.
class ObjectMap {
 public:
  const Value* Find(std::string_view key) const;
  void Set(std::string key, Value value);
  bool Erase(std::string_view key);
  size_t size() const;  // Defined below Value: clang needs Value complete here.
  const std::vector<std::pair<std::string, Value>>& entries() const { return entries_; }
  // 1 + the deepest nesting of a value set in it (never lowered).
  uint32_t nesting() const { return nesting_; }

 private:
  std::vector<std::pair<std::string, Value>> entries_;
  uint32_t nesting_ = 1;
};

struct CallArgs {
  std::vector<Value> positional;
  ObjectMap keywords;
};

struct Function {
  std::function<Value(Interpreter&, CallArgs&, Scope&)> call;
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNull,
    kBoolean,
    kInteger,
    kFloat,
    kString,
    kArray,
    kTuple,
    kObject,
    kNamespace,
    kFunction,
  };

  Value() = default;
  static Value Null() { return Value(Kind::kNull); }
  static Value Boolean(bool b);
  static Value Integer(double number);
  static Value Float(double number);
  static Value String(std::string text);
  // Both throw TemplateError for a value nested deeper than kMaxNesting.
  static Value Array(std::vector<Value> items, Kind kind = Kind::kArray);
  static Value Object(ObjectMap map, Kind kind = Kind::kObject);
  static Value MakeFunction(std::function<Value(Interpreter&, CallArgs&, Scope&)> call);
  // JavaScript's conversion of a parsed JSON value: whole numbers become integers, and an
  // object's integer-like keys come first in ascending order, then the others in order.
  static Value FromJson(const boost::json::value& json);

  Kind kind() const { return kind_; }
  bool is(Kind kind) const { return kind_ == kind; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kInteger || kind_ == Kind::kFloat; }
  // ArrayValue or its subclass TupleValue.
  bool is_array() const { return kind_ == Kind::kArray || kind_ == Kind::kTuple; }
  bool is_object() const { return kind_ == Kind::kObject; }
  // ObjectValue or NamespaceValue: what attribute lookups read.
  bool is_attribute_container() const {
    return kind_ == Kind::kObject || kind_ == Kind::kNamespace;
  }

  bool boolean() const { return boolean_; }
  double number() const { return number_; }
  const std::string& string() const;
  const std::vector<Value>& items() const { return *array_; }
  const ObjectMap& map() const { return *object_; }
  // Namespaces are the one mutable value ({% set ns.x = ... %}).
  ObjectMap& mutable_map() const { return *object_; }
  const Function& function() const { return *function_; }
  // Containers nested in one another down to the deepest leaf: 0 for a scalar, 1 for a flat
  // array. An array's is fixed when made; an object's or namespace's is its map's, which a
  // namespace assignment may raise later (the interpreter bounds the namespaces, and so how
  // far an array's count can fall behind).
  uint32_t nesting() const;

  // The reference's class name, e.g. "StringValue", for error messages.
  std::string_view TypeName() const;
  // __bool__(): Python truthiness.
  bool IsTruthy() const;
  // RuntimeValue.toString(): how {{ value }} prints.
  std::string ToString() const;
  // String(value.value): what `~`, `+` and join use.
  std::string ToJsString() const;
  // JavaScript's `a.value == b.value` (loose equality; containers by identity).
  bool LooseEquals(const Value& other) const;
  // JavaScript's `a.value === b.value`.
  bool StrictEquals(const Value& other) const;

 private:
  explicit Value(Kind kind) : kind_(kind) {}

  Kind kind_ = Kind::kUndefined;
  bool boolean_ = false;
  double number_ = 0;
  // Shared: copies of a value (every variable lookup, member access and loop item makes one)
  // share its text, so that a template cannot multiply one 64 MiB string into gigabytes.
  std::shared_ptr<const std::string> string_;
  std::shared_ptr<const std::vector<Value>> array_;
  uint32_t array_nesting_ = 0;
  std::shared_ptr<ObjectMap> object_;
  std::shared_ptr<const Function> function_;
};

inline size_t ObjectMap::size() const {
  return entries_.size();
}

struct JsonOptions {
  std::optional<int> indent;
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::optional<std::pair<std::string, std::string>> separators;
};

// The reference's toJSON(): tojson, and how containers print.
std::string ToJson(const Value& value, const JsonOptions& options,
                   bool convert_undefined_to_null = true, int depth = 0);

}  // namespace inferbox::engine::chat_template
