#include "interpreter.h"

#include <cmath>
#include <string>
#include <unordered_set>
#include <utility>

#include "js_text.h"

namespace inferbox::engine::chat_template {
namespace {

[[noreturn]] void Fail(std::string message) {
  throw TemplateError{std::move(message)};
}

bool IsNumericLike(const Value& value) {
  return value.is_number() || value.is(Value::Kind::kBoolean);
}

double NumericValue(const Value& value) {
  if (value.is(Value::Kind::kBoolean)) return value.boolean() ? 1 : 0;
  return value.number();
}

// Counts a depth up for its lifetime (unwinding included).
class DepthGuard {
 public:
  explicit DepthGuard(int& depth) : depth_(++depth) {}
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

// Whether `value` holds the namespace `target` anywhere inside it (arrays, objects and
// namespaces walked once each); `visited` counts the containers seen.
bool Holds(const Value& value, const Value& target, std::unordered_set<const void*>& visited) {
  if (value.is(Value::Kind::kNamespace) && value.StrictEquals(target)) return true;
  if (value.is_array()) {
    if (!visited.insert(&value.items()).second) return false;
    for (const Value& item : value.items()) {
      if (Holds(item, target, visited)) return true;
    }
  } else if (value.is_attribute_container()) {
    if (!visited.insert(&value.map()).second) return false;
    for (const auto& entry : value.map().entries()) {
      if (Holds(entry.second, target, visited)) return true;
    }
  }
  return false;
}

// The reference's slice(): Python slicing semantics over `length` elements.
std::vector<size_t> SliceIndices(size_t length, const Value& start_value, const Value& stop_value,
                                 const Value& step_value) {
  const double size = static_cast<double>(length);
  const double step = step_value.is_undefined() ? 1 : step_value.number();
  double start = 0;
  double stop = 0;
  if (step >= 0) {
    start = start_value.is_undefined() ? 0 : start_value.number();
    start = start < 0 ? std::max(size + start, 0.0) : std::min(start, size);
    stop = stop_value.is_undefined() ? size : stop_value.number();
    stop = stop < 0 ? std::max(size + stop, 0.0) : std::min(stop, size);
  } else {
    start = start_value.is_undefined() ? size - 1 : start_value.number();
    start = start < 0 ? std::max(size + start, -1.0) : std::min(start, size - 1);
    stop = stop_value.is_undefined() ? -1 : stop_value.number();
    stop = stop < -1 ? std::max(size + stop, -1.0) : std::min(stop, size - 1);
  }
  std::vector<size_t> indices;
  const double direction = step > 0 ? 1 : step < 0 ? -1 : 0;
  for (double i = start; direction * i < direction * stop; i += step) {
    indices.push_back(static_cast<size_t>(i));
  }
  return indices;
}

}  // namespace

Value Scope::Lookup(std::string_view name) const {
  for (const Scope* scope = this; scope != nullptr; scope = scope->parent_) {
    if (const Value* value = scope->variables_.Find(name)) return *value;
  }
  return Value();
}

void Interpreter::Charge(uint64_t units) {
  work_ += units;
  if (work_ > kMaxWork) {
    Fail("the chat template does too much work (over " + std::to_string(kMaxWork) +
         " steps): a loop without end, or values that grow without bound");
  }
}

void Interpreter::CountNamespace() {
  if (++namespaces_ > kMaxNamespaces) {
    Fail("the chat template makes more than " + std::to_string(kMaxNamespaces) + " namespaces");
  }
}

std::string Interpreter::Run(const Program& program, Scope& globals) {
  std::string out;
  if (Execute(program.body, globals, out) != Flow::kNormal) {
    Fail("'break' or 'continue' outside of a loop");
  }
  return out;
}

Interpreter::Flow Interpreter::Execute(const std::vector<StmtPtr>& statements, Scope& scope,
                                       std::string& out) {
  for (const auto& stmt : statements) {
    Charge(1);
    switch (stmt->kind) {
      case Stmt::Kind::kText: out += stmt->text; break;
      case Stmt::Kind::kOutput: {
        const Value value = Evaluate(*stmt->expr, scope);
        if (!value.is_null() && !value.is_undefined()) out += value.ToString();
        if (out.size() > kMaxStringBytes) {
          Fail("the chat template's output is over " + std::to_string(kMaxStringBytes >> 20) +
               " MiB");
        }
        break;
      }
      case Stmt::Kind::kIf: {
        const bool test = Evaluate(*stmt->expr, scope).IsTruthy();
        const Flow flow = Execute(test ? stmt->body : stmt->alternate, scope, out);
        if (flow != Flow::kNormal) return flow;
        break;
      }
      case Stmt::Kind::kFor: {
        const Flow flow = ExecuteFor(*stmt, scope, out);
        if (flow != Flow::kNormal) return flow;
        break;
      }
      case Stmt::Kind::kSet: ExecuteSet(*stmt, scope); break;
      case Stmt::Kind::kMacro: DefineMacro(*stmt, scope); break;
      case Stmt::Kind::kBreak: return Flow::kBreak;
      case Stmt::Kind::kContinue: return Flow::kContinue;
    }
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::ExecuteFor(const Stmt& stmt, Scope& parent, std::string& out) {
  Scope scope(&parent);
  const Value iterable = Evaluate(*stmt.expr, scope);
  std::vector<Value> candidates;
  if (iterable.is_array()) {
    candidates = iterable.items();
  } else if (iterable.is_object()) {
    for (const auto& entry : iterable.map().entries()) {
      candidates.push_back(Value::String(entry.first));
    }
  } else {
    Fail("Expected iterable or object type in for loop: got " + std::string(iterable.TypeName()));
  }

  const Expr& target = *stmt.target;
  auto bind = [&](const Value& item, Scope& into) {
    if (target.kind == Expr::Kind::kIdentifier) {
      into.Set(target.name, item);
      return;
    }
    if (!item.is(Value::Kind::kArray)) {
      Fail("Cannot unpack non-iterable type: " + std::string(item.TypeName()));
    }
    if (item.items().size() != target.children.size()) {
      Fail(std::string("Too ") + (target.children.size() > item.items().size() ? "few" : "many") +
           " items to unpack");
    }
    for (size_t j = 0; j < target.children.size(); ++j) {
      if (target.children[j]->kind != Expr::Kind::kIdentifier) {
        Fail("Cannot unpack non-identifier type in a loop variable");
      }
      into.Set(target.children[j]->name, item.items()[j]);
    }
  };

  std::vector<Value> items;
  for (const Value& candidate : candidates) {
    if (stmt.loop_filter) {
      Scope loop_scope(&scope);
      bind(candidate, loop_scope);
      if (!Evaluate(*stmt.loop_filter, loop_scope).IsTruthy()) continue;
    } else if (target.kind == Expr::Kind::kTuple) {
      Scope check_scope(&scope);
      bind(candidate, check_scope);
    }
    items.push_back(candidate);
  }

  bool completed_any = false;
  const size_t length = items.size();
  for (size_t i = 0; i < length; ++i) {
    Charge(kWorkPerIteration);
    ObjectMap loop;
    loop.Set("index", Value::Integer(static_cast<double>(i + 1)));
    loop.Set("index0", Value::Integer(static_cast<double>(i)));
    loop.Set("revindex", Value::Integer(static_cast<double>(length - i)));
    loop.Set("revindex0", Value::Integer(static_cast<double>(length - i - 1)));
    loop.Set("first", Value::Boolean(i == 0));
    loop.Set("last", Value::Boolean(i == length - 1));
    loop.Set("length", Value::Integer(static_cast<double>(length)));
    loop.Set("previtem", i > 0 ? items[i - 1] : Value());
    loop.Set("nextitem", i + 1 < length ? items[i + 1] : Value());
    scope.Set("loop", Value::Object(std::move(loop)));
    bind(items[i], scope);
    // An iteration ended by break or continue contributes no output, as in the reference.
    const size_t mark = out.size();
    const Flow flow = Execute(stmt.body, scope, out);
    if (flow != Flow::kNormal) {
      out.resize(mark);
      if (flow == Flow::kBreak) break;
      continue;
    }
    completed_any = true;
  }
  if (!completed_any) return Execute(stmt.alternate, scope, out);
  return Flow::kNormal;
}

void Interpreter::ExecuteSet(const Stmt& stmt, Scope& scope) {
  Value value;
  if (stmt.expr) {
    value = Evaluate(*stmt.expr, scope);
  } else {
    std::string rendered;
    if (Execute(stmt.body, scope, rendered) != Flow::kNormal) {
      Fail("'break' or 'continue' inside a set block");
    }
    value = Value::String(std::move(rendered));
  }
  const Expr& target = *stmt.target;
  switch (target.kind) {
    case Expr::Kind::kIdentifier: scope.Set(target.name, std::move(value)); return;
    case Expr::Kind::kTuple: {
      if (!value.is_array()) {
        Fail("Cannot unpack non-iterable type in set: " + std::string(value.TypeName()));
      }
      const auto& items = value.items();
      if (items.size() != target.children.size()) {
        Fail(std::string("Too ") + (target.children.size() > items.size() ? "few" : "many") +
             " items to unpack in set");
      }
      for (size_t i = 0; i < items.size(); ++i) {
        if (target.children[i]->kind != Expr::Kind::kIdentifier) {
          Fail("Cannot unpack to non-identifier in set");
        }
        scope.Set(target.children[i]->name, items[i]);
      }
      return;
    }
    case Expr::Kind::kMember: {
      const Value object = Evaluate(*target.children[0], scope);
      if (!object.is(Value::Kind::kNamespace)) {
        Fail("cannot assign attribute on non-namespace object");
      }
      const Expr& property = *target.children[1];
      if (property.kind != Expr::Kind::kLiteral || !property.literal.is_string()) {
        Fail("Cannot assign to member with non-identifier property");
      }
      AssignToNamespace(object, property.literal.string(), std::move(value));
      return;
    }
    default: Fail("Invalid LHS inside assignment expression");
  }
}

void Interpreter::DefineMacro(const Stmt& stmt, Scope& scope) {
  const Stmt* macro = &stmt;
  scope.Set(stmt.text,
            Value::MakeFunction([macro](Interpreter& interpreter, CallArgs& args, Scope& caller) {
              return interpreter.CallMacro(*macro, args, caller);
            }));
}

void Interpreter::AssignToNamespace(const Value& target, const std::string& name, Value value) {
  std::unordered_set<const void*> visited;
  if (Holds(value, target, visited)) Fail("a namespace cannot hold itself");
  Charge(visited.size());
  CheckNesting(value.nesting() + 1);  // The namespace's, once it holds the value.
  target.mutable_map().Set(name, std::move(value));
}

Value Interpreter::CallMacro(const Stmt& macro, CallArgs& args, Scope& caller) {
  const DepthGuard depth(macro_depth_);
  if (macro_depth_ > kMaxMacroDepth) {
    Fail("macros call each other more than " + std::to_string(kMaxMacroDepth) +
         " deep (a macro that calls itself without end?)");
  }
  Scope scope(&caller);
  ObjectMap keywords = args.keywords;
  std::vector<std::pair<std::string, const Expr*>> pending_defaults;
  for (size_t i = 0; i < macro.params.size(); ++i) {
    const Expr& param = *macro.params[i];
    const Expr* default_value =
        param.kind == Expr::Kind::kKeywordArg ? param.children[0].get() : nullptr;
    Value value;
    bool bound = false;
    if (i < args.positional.size()) {
      value = args.positional[i];
      bound = true;
    } else if (const Value* keyword = keywords.Find(param.name)) {
      value = *keyword;
      keywords.Erase(param.name);
      bound = true;
    }
    if (!bound && default_value != nullptr)
      pending_defaults.emplace_back(param.name, default_value);
    scope.Set(param.name, std::move(value));
  }
  const std::string display_name = "'" + macro.text + "'";
  if (macro.uses_kwargs) {
    scope.Set("kwargs", Value::Object(keywords));
  } else if (keywords.size() > 0) {
    Fail("macro " + display_name + " takes no keyword argument '" + keywords.entries()[0].first +
         "'");
  }
  if (macro.uses_varargs) {
    std::vector<Value> rest;
    for (size_t i = macro.params.size(); i < args.positional.size(); ++i) {
      rest.push_back(args.positional[i]);
    }
    scope.Set("varargs", Value::Array(std::move(rest)));
  } else if (args.positional.size() > macro.params.size()) {
    Fail("macro " + display_name + " takes not more than " + std::to_string(macro.params.size()) +
         " argument(s)");
  }
  for (const auto& [name, default_value] : pending_defaults) {
    scope.Set(name, Evaluate(*default_value, scope));
  }
  std::string out;
  if (Execute(macro.body, scope, out) != Flow::kNormal) {
    Fail("'break' or 'continue' outside of a loop");
  }
  return Value::String(std::move(out));
}

CallArgs Interpreter::EvaluateArgs(const std::vector<ExprPtr>& args, size_t first, Scope& scope) {
  CallArgs result;
  for (size_t i = first; i < args.size(); ++i) {
    if (args[i]->kind != Expr::Kind::kKeywordArg) {
      result.positional.push_back(Evaluate(*args[i], scope));
    }
  }
  for (size_t i = first; i < args.size(); ++i) {
    if (args[i]->kind == Expr::Kind::kKeywordArg) {
      if (result.keywords.Find(args[i]->name) != nullptr) {
        Fail("Got multiple values for keyword argument '" + args[i]->name + "'");
      }
      result.keywords.Set(args[i]->name, Evaluate(*args[i]->children[0], scope));
    }
  }
  return result;
}

Value Interpreter::Evaluate(const Expr& expr, Scope& scope) {
  Charge(1);
  const DepthGuard depth(evaluation_depth_);
  if (evaluation_depth_ > kMaxEvaluationDepth) {
    Fail("expressions nest more than " + std::to_string(kMaxEvaluationDepth) + " deep");
  }
  return EvaluateNode(expr, scope);
}

Value Interpreter::EvaluateNode(const Expr& expr, Scope& scope) {
  switch (expr.kind) {
    case Expr::Kind::kLiteral: return expr.literal;
    case Expr::Kind::kIdentifier: return scope.Lookup(expr.name);
    case Expr::Kind::kArray:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      items.reserve(expr.children.size());
      for (const auto& child : expr.children) items.push_back(Evaluate(*child, scope));
      return Value::Array(std::move(items), expr.kind == Expr::Kind::kArray ? Value::Kind::kArray
                                                                            : Value::Kind::kTuple);
    }
    case Expr::Kind::kObject: {
      ObjectMap map;
      for (size_t i = 0; i + 1 < expr.children.size(); i += 2) {
        const Value key = Evaluate(*expr.children[i], scope);
        if (!key.is_string()) {
          Fail("Object keys must be strings: got " + std::string(key.TypeName()));
        }
        map.Set(key.string(), Evaluate(*expr.children[i + 1], scope));
      }
      return Value::Object(std::move(map));
    }
    case Expr::Kind::kMember: return EvaluateMember(expr, scope);
    case Expr::Kind::kCall: return EvaluateCall(expr, scope);
    case Expr::Kind::kUnary: return EvaluateUnary(expr, scope);
    case Expr::Kind::kBinary: return EvaluateBinary(expr, scope);
    case Expr::Kind::kFilter:
      return ChargeBuilt(ApplyFilter(*this, expr, Evaluate(*expr.children[0], scope), scope));
    case Expr::Kind::kTest: {
      const bool result = ApplyTest(expr.name, Evaluate(*expr.children[0], scope), nullptr);
      return Value::Boolean(expr.negate ? !result : result);
    }
    case Expr::Kind::kSelect:
      if (!Evaluate(*expr.children[1], scope).IsTruthy()) return Value();
      return Evaluate(*expr.children[0], scope);
    case Expr::Kind::kTernary:
      return Evaluate(*expr.children[Evaluate(*expr.children[0], scope).IsTruthy() ? 1 : 2], scope);
    case Expr::Kind::kSlice:
    case Expr::Kind::kKeywordArg: Fail("unexpected slice or keyword argument");
  }
  return Value();
}

Value Interpreter::EvaluateCall(const Expr& expr, Scope& scope) {
  CallArgs args = EvaluateArgs(expr.children, 1, scope);
  const Value callee = Evaluate(*expr.children[0], scope);
  if (!callee.is(Value::Kind::kFunction)) {
    Fail("Cannot call something that is not a function: got " + std::string(callee.TypeName()));
  }
  return ChargeBuilt(callee.function().call(*this, args, scope));
}

Value Interpreter::EvaluateMember(const Expr& expr, Scope& scope) {
  const Value object = Evaluate(*expr.children[0], scope);
  const Expr& property_expr = *expr.children[1];
  if (property_expr.kind == Expr::Kind::kSlice)
    return ChargeBuilt(EvaluateSlice(object, property_expr, scope));
  const Value property = Evaluate(property_expr, scope);
  if (object.is_attribute_container()) {
    if (!property.is_string()) {
      Fail("Cannot access property with non-string: got " + std::string(property.TypeName()));
    }
    if (const Value* value = object.map().Find(property.string())) return *value;
    return object.is_object() ? GetBuiltinMember(object, property.string()) : Value();
  }
  if (object.is_array() || object.is_string()) {
    if (property.is(Value::Kind::kInteger)) {
      if (object.is_array()) {
        const auto size = static_cast<double>(object.items().size());
        double index = std::trunc(property.number());
        if (index < 0) index += size;
        if (!(index >= 0 && index < size)) return Value();  // NaN included (0 % 0).
        return object.items()[static_cast<size_t>(index)];
      }
      // Indexing decodes the whole string (UTF-16 units, as JavaScript counts): charged as
      // building it would be.
      Charge(object.string().size() / kBytesPerWork);
      std::vector<char32_t> units;
      for (char32_t c : DecodeUtf8(object.string())) {
        if (c >= 0x10000) {
          units.push_back(0xD800);  // a lone surrogate half prints as U+FFFD, as Node writes it
          units.push_back(0xDC00);
        } else {
          units.push_back(c);
        }
      }
      const auto size = static_cast<double>(units.size());
      double index = std::trunc(property.number());
      if (index < 0) index += size;
      if (!(index >= 0 && index < size)) return Value();  // NaN included (0 % 0).
      const char32_t unit = units[static_cast<size_t>(index)];
      std::string character;
      AppendUtf8(unit >= 0xD800 && unit < 0xE000 ? 0xFFFD : unit, character);
      return Value::String(std::move(character));
    }
    if (property.is_string()) return GetBuiltinMember(object, property.string());
    Fail("Cannot access property with non-string/non-number: got " +
         std::string(property.TypeName()));
  }
  if (!property.is_string()) {
    Fail("Cannot access property with non-string: got " + std::string(property.TypeName()));
  }
  return Value();
}

Value Interpreter::EvaluateSlice(const Value& object, const Expr& slice, Scope& scope) {
  if (!object.is_array() && !object.is_string()) Fail("Slice object must be an array or string");
  Value parts[3];
  static constexpr const char* kNames[] = {"start", "stop", "step"};
  for (int i = 0; i < 3; ++i) {
    if (slice.children[i]) parts[i] = Evaluate(*slice.children[i], scope);
    if (!parts[i].is(Value::Kind::kInteger) && !parts[i].is_undefined()) {
      Fail(std::string("Slice ") + kNames[i] + " must be numeric or undefined");
    }
  }
  if (object.is_array()) {
    std::vector<Value> items;
    for (size_t i : SliceIndices(object.items().size(), parts[0], parts[1], parts[2])) {
      items.push_back(object.items()[i]);
    }
    return Value::Array(std::move(items));
  }
  const std::vector<char32_t> code_points = DecodeUtf8(object.string());
  std::string out;
  for (size_t i : SliceIndices(code_points.size(), parts[0], parts[1], parts[2])) {
    AppendUtf8(code_points[i], out);
  }
  return Value::String(std::move(out));
}

Value Interpreter::EvaluateUnary(const Expr& expr, Scope& scope) {
  const Value argument = Evaluate(*expr.children[0], scope);
  if (expr.name == "not") return Value::Boolean(!argument.IsTruthy());
  if (!IsNumericLike(argument)) {
    Fail("Unknown operator \"" + expr.name + "\" for " + std::string(argument.TypeName()));
  }
  const double result = (expr.name == "-" ? -1 : 1) * NumericValue(argument);
  return argument.is(Value::Kind::kFloat) ? Value::Float(result) : Value::Integer(result);
}

Value Interpreter::EvaluateBinary(const Expr& expr, Scope& scope) {
  const std::string& op = expr.name;
  Value left = Evaluate(*expr.children[0], scope);
  if (op == "and") return left.IsTruthy() ? Evaluate(*expr.children[1], scope) : left;
  if (op == "or") return left.IsTruthy() ? left : Evaluate(*expr.children[1], scope);
  const Value right = Evaluate(*expr.children[1], scope);
  if (op == "==") return Value::Boolean(left.LooseEquals(right));
  if (op == "!=") return Value::Boolean(!left.LooseEquals(right));
  const bool is_membership = op == "in" || op == "not in";
  if (left.is_undefined() || right.is_undefined()) {
    if (right.is_undefined() && is_membership) return Value::Boolean(op == "not in");
    Fail("Cannot perform operation " + op + " on undefined values");
  }
  if (left.is_null() || right.is_null()) Fail("Cannot perform operation on null values");
  const auto concatenate = [this](std::string text) {
    CheckStringSize(text.size());
    Charge(text.size() / kBytesPerWork);
    return Value::String(std::move(text));
  };
  if (op == "~") return concatenate(left.ToJsString() + right.ToJsString());
  if (op == "**" && IsNumericLike(left) && IsNumericLike(right)) {
    const double a = NumericValue(left);
    const double b = NumericValue(right);
    if (a == 0 && b < 0) Fail("0.0 cannot be raised to a negative power");
    const double result = std::pow(a, b);
    if (!std::isfinite(result)) Fail("Exponentiation result is not a finite real number");
    const bool is_float = left.is(Value::Kind::kFloat) || right.is(Value::Kind::kFloat) || b < 0;
    return is_float ? Value::Float(result) : Value::Integer(result);
  }
  if (left.is_number() && right.is_number()) {
    const double a = left.number();
    const double b = right.number();
    const bool is_float = left.is(Value::Kind::kFloat) || right.is(Value::Kind::kFloat);
    auto number = [is_float](double result) {
      return is_float ? Value::Float(result) : Value::Integer(result);
    };
    if (op == "+") return number(a + b);
    if (op == "-") return number(a - b);
    if (op == "*") return number(a * b);
    if (op == "/") return Value::Float(a / b);
    if (op == "//") return number(std::floor(a / b));
    if (op == "%") return number(std::fmod(a, b));
    if (op == "<") return Value::Boolean(a < b);
    if (op == ">") return Value::Boolean(a > b);
    if (op == ">=") return Value::Boolean(a >= b);
    if (op == "<=") return Value::Boolean(a <= b);
  } else if (left.is_array() && right.is_array()) {
    if (op == "+") {
      Charge(left.items().size() + right.items().size());
      std::vector<Value> items = left.items();
      items.insert(items.end(), right.items().begin(), right.items().end());
      return Value::Array(std::move(items));
    }
  } else if (right.is_array()) {
    bool found = false;
    for (const Value& item : right.items()) {
      if (item.StrictEquals(left)) {
        found = true;
        break;
      }
    }
    if (op == "in") return Value::Boolean(found);
    if (op == "not in") return Value::Boolean(!found);
  }
  if ((left.is_string() || right.is_string()) && op == "+") {
    return concatenate(left.ToJsString() + right.ToJsString());
  }
  if (left.is_string() && right.is_string() && is_membership) {
    const bool found = right.string().find(left.string()) != std::string::npos;
    return Value::Boolean(op == "in" ? found : !found);
  }
  if (left.is_string() && right.is_object() && is_membership) {
    const bool found = right.map().Find(left.string()) != nullptr;
    return Value::Boolean(op == "in" ? found : !found);
  }
  Fail("Unknown operator \"" + op + "\" between " + std::string(left.TypeName()) + " and " +
       std::string(right.TypeName()));
}

}  // namespace inferbox::engine::chat_template
