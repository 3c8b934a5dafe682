// Evaluates a parsed template with @huggingface/jinja's semantics: its scoping (a for loop
// has one scope for all iterations; a macro runs in a child of its caller's scope), its
// value printing and its error messages. One Interpreter per Render call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ast.h"
#include "value.h"

namespace inferbox::engine::chat_template {

// A variable scope; lookups walk up to the global scope.
class Scope {
 public:
  explicit Scope(Scope* parent) : parent_(parent) {}
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Undefined when no scope up the chain declares `name`.
  Value Lookup(std::string_view name) const;
  bool IsDeclaredHere(std::string_view name) const { return variables_.Find(name) != nullptr; }
  void Set(std::string name, Value value) { variables_.Set(std::move(name), std::move(value)); }

 private:
  Scope* parent_;
  ObjectMap variables_;
};

// What one Render may do. A model's chat template is input the box did not write: one that
// goes past a limit fails with a TemplateError naming it, instead of exhausting the engine's
// stack, memory or time. Real templates stay far below each (a conversation of thousands of
// messages renders in well under a million units of work).
// Work: one unit per statement run and expression evaluated, kWorkPerIteration per loop
// iteration (its `loop` object), one per array element and per kBytesPerWork of string built
// by an operator, a slice, or returned by a filter, method or macro, one per element range()
// makes (so at most 320 MB of strings built in all, each under kMaxStringBytes; copies of a
// value share its string). kMaxWork is a second or two of one core.
inline constexpr uint64_t kMaxWork = 20'000'000;
inline constexpr uint64_t kWorkPerIteration = 16;
inline constexpr size_t kBytesPerWork = 16;
inline constexpr int kMaxEvaluationDepth = 256;  // Expressions inside expressions, calls included.
inline constexpr int kMaxMacroDepth = 64;        // Macros calling macros (or themselves).
inline constexpr size_t kMaxRangeItems = 1'000'000;
// namespace() calls: with kMaxNesting (value.h) they bound how deep values can nest.
inline constexpr int kMaxNamespaces = 32;

class Interpreter {
 public:
  // Throws TemplateError.
  std::string Run(const Program& program, Scope& globals);

  // Counts `units` of work against kMaxWork; throws TemplateError past it.
  void Charge(uint64_t units);
  // Charges the text a filter, method or macro returned, as for a string an operator builds
  // (replace, join, tojson and indent make new strings as large as kMaxStringBytes).
  Value ChargeBuilt(Value value) {
    if (value.is_string()) Charge(value.string().size() / kBytesPerWork);
    if (value.is_array()) Charge(value.items().size());
    return value;
  }
  // Counts a namespace() call against kMaxNamespaces.
  void CountNamespace();

  Value Evaluate(const Expr& expr, Scope& scope);
  CallArgs EvaluateArgs(const std::vector<ExprPtr>& args, size_t first, Scope& scope);
  // Runs a macro's body in a child of the caller's scope (the reference's dynamic scoping).
  Value CallMacro(const Stmt& macro, CallArgs& args, Scope& caller);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Value EvaluateNode(const Expr& expr, Scope& scope);
  // {% set ns.name = value %}: refuses a value that contains the namespace (a cycle) or nests
  // deeper than kMaxNesting.
  void AssignToNamespace(const Value& target, const std::string& name, Value value);

  uint64_t work_ = 0;
  int evaluation_depth_ = 0;
  int macro_depth_ = 0;
  int namespaces_ = 0;

  Flow Execute(const std::vector<StmtPtr>& statements, Scope& scope, std::string& out);
  Flow ExecuteFor(const Stmt& stmt, Scope& scope, std::string& out);
  void ExecuteSet(const Stmt& stmt, Scope& scope);
  void DefineMacro(const Stmt& stmt, Scope& scope);

  Value EvaluateBinary(const Expr& expr, Scope& scope);
  Value EvaluateUnary(const Expr& expr, Scope& scope);
  Value EvaluateMember(const Expr& expr, Scope& scope);
  Value EvaluateSlice(const Value& object, const Expr& slice, Scope& scope);
  Value EvaluateCall(const Expr& expr, Scope& scope);
};

// filters.cc
Value ApplyFilter(Interpreter& interpreter, const Expr& filter, Value operand, Scope& scope);
bool ApplyTest(std::string_view name, const Value& operand, const Value* argument);

// builtins.cc
// `object.name` where the object has no such key: string and object methods, `length`.
Value GetBuiltinMember(const Value& object, std::string_view name);
// The globals @huggingface/jinja's Template defines (namespace, raise_exception, range,
// strftime_now, true/false/none and their Python spellings).
void DeclareGlobals(Scope& globals);
// Python's three-way comparison as the reference's sort uses it; throws TemplateError.
int CompareValues(const Value& a, const Value& b, bool case_sensitive);
// The value at `path` ("a.b.0") inside objects and arrays, or Undefined.
Value GetAttributePath(const Value& item, std::string_view path);

}  // namespace inferbox::engine::chat_template
