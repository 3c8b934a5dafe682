// Filters and tests, as @huggingface/jinja's applyFilter and Environment.TESTS define them:
// which filter applies depends on the operand's type and on whether it is called with
// parentheses (`x|tojson` and `x|tojson(indent=2)` take different paths in the reference).
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "interpreter.h"
#include "js_text.h"

namespace inferbox::engine::chat_template {
namespace {

[[noreturn]] void Fail(std::string message) {
  throw TemplateError{std::move(message)};
}

// The widest indent and tojson indent a template may ask for (a sandbox limit; real ones use
// 2 to 8 columns).
constexpr double kMaxIndent = 256;

std::string Quote(std::string_view name) {
  return "\"" + std::string(name) + "\"";
}

[[noreturn]] void FailCannotApply(std::string_view name, const Value& operand) {
  Fail("Cannot apply filter " + Quote(name) + " to type: " + std::string(operand.TypeName()));
}

// String(x.value) as Array.prototype.join writes an element: null and undefined are empty.
std::string JoinElement(const Value& value) {
  if (value.is_null() || value.is_undefined()) return "";
  return value.ToJsString();
}

std::string Indent(const std::string& text, size_t width, bool first, bool blank) {
  const std::string padding(width, ' ');
  std::string out;
  size_t start = 0;
  for (size_t line = 0;; ++line) {
    const size_t end = text.find('\n', start);
    const std::string_view part =
        std::string_view(text).substr(start, end == std::string::npos ? end : end - start);
    if (line > 0) out.push_back('\n');
    if (!((!first && line == 0) || (!blank && part.empty()))) out += padding;
    out += part;
    CheckStringSize(out.size());
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

Value SortArray(const Value& operand, const CallArgs& args) {
  auto argument = [&](size_t index, std::string_view name, Value fallback) {
    if (index < args.positional.size()) return args.positional[index];
    if (const Value* keyword = args.keywords.Find(name)) return *keyword;
    return fallback;
  };
  const Value reverse = argument(0, "reverse", Value::Boolean(false));
  if (!reverse.is(Value::Kind::kBoolean)) Fail("reverse must be a boolean");
  const Value case_sensitive = argument(1, "case_sensitive", Value::Boolean(false));
  if (!case_sensitive.is(Value::Kind::kBoolean)) Fail("case_sensitive must be a boolean");
  const Value attribute = argument(2, "attribute", Value::Null());
  if (!attribute.is_string() && !attribute.is(Value::Kind::kInteger) && !attribute.is_null()) {
    Fail("attribute must be a string, integer, or null");
  }
  auto sort_value = [&](const Value& item) {
    if (attribute.is_null()) return item;
    return GetAttributePath(
        item, attribute.is_string() ? attribute.string() : JsNumberToString(attribute.number()));
  };
  std::vector<Value> items = operand.items();
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    const int result = CompareValues(sort_value(a), sort_value(b), case_sensitive.boolean());
    return (reverse.boolean() ? -result : result) < 0;
  });
  return Value::Array(std::move(items));
}

Value ToJsonFilter(const Value& operand, const CallArgs& args) {
  JsonOptions options;
  if (const Value* indent = args.keywords.Find("indent")) {
    if (indent->is(Value::Kind::kInteger)) {
      if (!(std::fabs(indent->number()) <= kMaxIndent)) Fail("indent is too large");
      options.indent = static_cast<int>(indent->number());
    } else if (!indent->is_null()) {
      Fail("If set, indent must be a number");
    }
  }
  if (const Value* ensure_ascii = args.keywords.Find("ensure_ascii")) {
    if (!ensure_ascii->is(Value::Kind::kBoolean)) Fail("If set, ensure_ascii must be a boolean");
    options.ensure_ascii = ensure_ascii->boolean();
  }
  if (const Value* sort_keys = args.keywords.Find("sort_keys")) {
    if (!sort_keys->is(Value::Kind::kBoolean)) Fail("If set, sort_keys must be a boolean");
    options.sort_keys = sort_keys->boolean();
  }
  if (const Value* separators = args.keywords.Find("separators")) {
    if (separators->is_array()) {
      const auto& items = separators->items();
      if (items.size() != 2 || !items[0].is_string() || !items[1].is_string()) {
        Fail("separators must be a tuple of two strings");
      }
      options.separators = std::make_pair(items[0].string(), items[1].string());
    } else if (!separators->is_null()) {
      Fail("If set, separators must be a tuple of two strings");
    }
  }
  return Value::String(ToJson(operand, options));
}

Value SelectOrRejectAttr(Interpreter& interpreter, const Expr& filter, const Value& operand,
                         Scope& scope) {
  const bool select = filter.name == "selectattr";
  for (const Value& item : operand.items()) {
    if (!item.is_attribute_container()) {
      Fail("`" + filter.name + "` can only be applied to array of objects");
    }
  }
  for (size_t i = 1; i < filter.children.size(); ++i) {
    const Expr& arg = *filter.children[i];
    if (arg.kind != Expr::Kind::kLiteral || !arg.literal.is_string()) {
      Fail("arguments of `" + filter.name + "` must be strings");
    }
  }
  std::vector<Value> args;
  for (size_t i = 1; i < filter.children.size(); ++i) {
    args.push_back(interpreter.Evaluate(*filter.children[i], scope));
  }
  const std::string attribute = args.empty() ? "undefined" : args[0].string();
  const Value* test_argument = args.size() > 2 ? &args[2] : nullptr;
  std::vector<Value> kept;
  for (const Value& item : operand.items()) {
    const Value* value = item.map().Find(attribute);
    bool result = false;
    if (value != nullptr) {
      result =
          args.size() > 1 ? ApplyTest(args[1].string(), *value, test_argument) : value->IsTruthy();
    }
    if (result == select) kept.push_back(item);
  }
  return Value::Array(std::move(kept));
}

Value MapAttribute(const Value& operand, const CallArgs& args) {
  const Value* attribute = args.keywords.Find("attribute");
  if (attribute == nullptr) {
    Fail("`map` expressions without `attribute` set are not currently supported.");
  }
  if (!attribute->is_string()) Fail("attribute must be a string");
  const Value* default_value = args.keywords.Find("default");
  std::vector<Value> mapped;
  for (const Value& item : operand.items()) {
    if (!item.is_attribute_container()) Fail("items in map must be an object");
    Value value = GetAttributePath(item, attribute->string());
    if (value.is_undefined() && default_value != nullptr) value = *default_value;
    mapped.push_back(std::move(value));
  }
  return Value::Array(std::move(mapped));
}

Value CallObjectBuiltin(const Value& operand, const std::string& name, CallArgs args,
                        Interpreter& interpreter, Scope& scope) {
  const Value builtin = GetBuiltinMember(operand, name);
  if (!builtin.is(Value::Kind::kFunction)) Fail("Unknown ObjectValue filter: " + name);
  return builtin.function().call(interpreter, args, scope);
}

Value ApplyPlainFilter(Interpreter& interpreter, const std::string& name, const Value& operand,
                       Scope& scope) {
  if (name == "safe") return operand;
  if (name == "tojson") return Value::String(ToJson(operand, {}));
  if (operand.is_array()) {
    const auto& items = operand.items();
    if (name == "list") return operand;
    if (name == "first") return items.empty() ? Value() : items.front();
    if (name == "last") return items.empty() ? Value() : items.back();
    if (name == "length") return Value::Integer(static_cast<double>(items.size()));
    if (name == "reverse") return Value::Array(std::vector<Value>(items.rbegin(), items.rend()));
    if (name == "sort") return SortArray(operand, {});
    if (name == "join") {
      std::string out;
      for (const Value& item : items) {
        out += JoinElement(item);
        CheckStringSize(out.size());
      }
      return Value::String(std::move(out));
    }
    if (name == "string") return Value::String(ToJson(operand, {}, false));
    if (name == "unique") {
      std::vector<Value> unique;
      for (const Value& item : items) {
        const bool seen = std::any_of(unique.begin(), unique.end(),
                                      [&](const Value& kept) { return kept.StrictEquals(item); });
        if (!seen) unique.push_back(item);
      }
      return Value::Array(std::move(unique));
    }
    Fail("Unknown ArrayValue filter: " + name);
  }
  if (operand.is_string()) {
    const std::string& text = operand.string();
    if (name == "length") return Value::Integer(static_cast<double>(Utf16Length(text)));
    if (name == "upper") return Value::String(ToUpper(text));
    if (name == "lower") return Value::String(ToLower(text));
    if (name == "title") return Value::String(TitleCase(text));
    if (name == "capitalize") return Value::String(CapitalizeFirst(text));
    if (name == "trim") return Value::String(std::string(Trim(text)));
    if (name == "indent") return Value::String(Indent(text, 4, false, false));
    if (name == "join" || name == "string") return operand;
    double number = 0;
    if (name == "int") return Value::Integer(JsParseInt(text, number) ? number : 0);
    if (name == "float") return Value::Float(JsParseFloat(text, number) ? number : 0);
    Fail("Unknown StringValue filter: " + name);
  }
  if (operand.is_number()) {
    const bool is_integer = operand.is(Value::Kind::kInteger);
    if (name == "abs") {
      const double value = std::fabs(operand.number());
      return is_integer ? Value::Integer(value) : Value::Float(value);
    }
    if (name == "int") return Value::Integer(std::floor(operand.number()));
    if (name == "float") return Value::Float(operand.number());
    if (name == "string") return Value::String(operand.ToString());
    Fail("Unknown NumericValue filter: " + name);
  }
  if (operand.is_object()) {
    if (name == "items") return CallObjectBuiltin(operand, name, {}, interpreter, scope);
    if (name == "length") return Value::Integer(static_cast<double>(operand.map().size()));
    return CallObjectBuiltin(operand, name, {}, interpreter, scope);
  }
  if (operand.is(Value::Kind::kBoolean)) {
    const bool value = operand.boolean();
    if (name == "bool") return operand;
    if (name == "int") return Value::Integer(value ? 1 : 0);
    if (name == "float") return Value::Float(value ? 1 : 0);
    if (name == "string") return Value::String(value ? "true" : "false");
    Fail("Unknown BooleanValue filter: " + name);
  }
  FailCannotApply(name, operand);
}

Value ApplyCalledFilter(Interpreter& interpreter, const Expr& filter, const Value& operand,
                        Scope& scope) {
  const std::string& name = filter.name;
  CallArgs args = interpreter.EvaluateArgs(filter.children, 1, scope);
  auto argument = [&](size_t index, std::string_view keyword, Value fallback) {
    if (index < args.positional.size()) return args.positional[index];
    if (!keyword.empty()) {
      if (const Value* value = args.keywords.Find(keyword)) return *value;
    }
    return fallback;
  };
  if (name == "tojson") return ToJsonFilter(operand, args);
  if (name == "join") {
    std::vector<std::string> parts;
    if (operand.is_string()) {
      for (char32_t c : DecodeUtf8(operand.string())) {
        parts.emplace_back();
        AppendUtf8(c, parts.back());
      }
    } else if (operand.is_array()) {
      for (const Value& item : operand.items()) parts.push_back(JoinElement(item));
    } else {
      FailCannotApply(name, operand);
    }
    const Value separator = argument(0, "separator", Value::String(""));
    if (!separator.is_string()) Fail("separator must be a string");
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) out += separator.string();
      out += parts[i];
    }
    return Value::String(std::move(out));
  }
  if (name == "int" || name == "float") {
    const bool is_int = name == "int";
    const Value fallback = argument(0, "default", is_int ? Value::Integer(0) : Value::Float(0));
    if (operand.is_string()) {
      double number = 0;
      const bool ok =
          is_int ? JsParseInt(operand.string(), number) : JsParseFloat(operand.string(), number);
      if (!ok) return fallback;
      return is_int ? Value::Integer(number) : Value::Float(number);
    }
    if (operand.is_number()) return operand;
    if (operand.is(Value::Kind::kBoolean)) {
      const double number = operand.boolean() ? 1 : 0;
      return is_int ? Value::Integer(number) : Value::Float(number);
    }
    FailCannotApply(name, operand);
  }
  if (name == "default") {
    const Value fallback = argument(0, "", Value::String(""));
    const Value boolean = argument(1, "boolean", Value::Boolean(false));
    if (!boolean.is(Value::Kind::kBoolean)) Fail("`default` filter flag must be a boolean");
    if (operand.is_undefined() || (boolean.boolean() && !operand.IsTruthy())) return fallback;
    return operand;
  }
  if (operand.is_array()) {
    if (name == "sort") return SortArray(operand, args);
    if (name == "map") return MapAttribute(operand, args);
    if (name == "selectattr" || name == "rejectattr") {
      return SelectOrRejectAttr(interpreter, filter, operand, scope);
    }
    Fail("Unknown ArrayValue filter: " + name);
  }
  if (operand.is_string()) {
    if (name == "indent") {
      const Value width = argument(0, "width", Value::Integer(4));
      if (!width.is(Value::Kind::kInteger)) Fail("width must be a number");
      const bool first = argument(1, "first", Value::Boolean(false)).IsTruthy();
      const bool blank = argument(2, "blank", Value::Boolean(false)).IsTruthy();
      if (!(width.number() <= kMaxIndent)) Fail("width is too large");
      const double count = std::max(width.number(), 0.0);
      return Value::String(Indent(operand.string(), static_cast<size_t>(count), first, blank));
    }
    if (name == "replace") {
      return GetBuiltinMember(operand, "replace").function().call(interpreter, args, scope);
    }
    Fail("Unknown StringValue filter: " + name);
  }
  if (operand.is_object())
    return CallObjectBuiltin(operand, name, std::move(args), interpreter, scope);
  FailCannotApply(name, operand);
}

}  // namespace

Value ApplyFilter(Interpreter& interpreter, const Expr& filter, Value operand, Scope& scope) {
  if (filter.is_call) return ApplyCalledFilter(interpreter, filter, operand, scope);
  return ApplyPlainFilter(interpreter, filter.name, operand, scope);
}

bool ApplyTest(std::string_view name, const Value& operand, const Value* argument) {
  using Kind = Value::Kind;
  if (name == "boolean") return operand.is(Kind::kBoolean);
  if (name == "callable") return operand.is(Kind::kFunction);
  if (name == "odd" || name == "even") {
    if (!operand.is(Kind::kInteger)) {
      Fail("cannot " + std::string(name) + " on " + std::string(operand.TypeName()));
    }
    const bool is_odd = std::fmod(operand.number(), 2) != 0;
    return name == "odd" ? is_odd : !is_odd;
  }
  if (name == "false") return operand.is(Kind::kBoolean) && !operand.boolean();
  if (name == "true") return operand.is(Kind::kBoolean) && operand.boolean();
  if (name == "none") return operand.is_null();
  if (name == "string") return operand.is_string();
  if (name == "number") return operand.is_number();
  if (name == "integer") return operand.is(Kind::kInteger);
  if (name == "iterable") return operand.is(Kind::kArray) || operand.is_string();
  if (name == "mapping") return operand.is_object();
  if (name == "sequence") return operand.is_array() || operand.is_object() || operand.is_string();
  if (name == "lower") return operand.is_string() && operand.string() == ToLower(operand.string());
  if (name == "upper") return operand.is_string() && operand.string() == ToUpper(operand.string());
  if (name == "defined") return !operand.is_undefined();
  if (name == "undefined") return operand.is_undefined();
  if (name == "equalto" || name == "eq") {
    if (argument == nullptr) Fail("Cannot read properties of undefined (reading 'value')");
    return operand.StrictEquals(*argument);
  }
  Fail("Unknown test: " + std::string(name));
}

}  // namespace inferbox::engine::chat_template
