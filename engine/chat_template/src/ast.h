// The parsed template: immutable after Parse, shared by every Render.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "value.h"

namespace inferbox::engine::chat_template {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

// Operands live in `children`, by kind:
//   kLiteral: none (the value is `literal`); kIdentifier: none (`name`);
//   kArray, kTuple: the elements; kObject: key0, value0, key1, value1, ...;
//   kMember: object, property (a kSlice for `x[a:b]`; `.name` is a string literal);
//   kSlice: start, stop, step (each may be null);
//   kCall: callee, then the arguments (kKeywordArg for `name=value`);
//   kKeywordArg: the value (`name` is the keyword);
//   kUnary: operand (`name` is "not", "-" or "+"); kBinary: left, right (`name` the operator);
//   kFilter: operand, then the arguments when `is_call` (`name` is the filter);
//   kTest: operand (`name` is the test, `negate` for `is not`);
//   kSelect (`a if c` without else): a, c; kTernary: condition, if_true, if_false.
struct Expr {
  Expr() = default;
  // Frees its subtree without recursion: `a + a + ... + a` parses into a tree as deep as it
  // is long.
  ~Expr() {
    std::vector<ExprPtr> pending = std::move(children);
    while (!pending.empty()) {
      ExprPtr node = std::move(pending.back());
      pending.pop_back();
      if (node == nullptr) continue;
      for (ExprPtr& child : node->children) pending.push_back(std::move(child));
      node->children.clear();
    }
  }
  Expr(const Expr&) = delete;
  Expr& operator=(const Expr&) = delete;

  enum class Kind {
    kLiteral,
    kIdentifier,
    kArray,
    kTuple,
    kObject,
    kMember,
    kSlice,
    kCall,
    kKeywordArg,
    kUnary,
    kBinary,
    kFilter,
    kTest,
    kSelect,
    kTernary,
  };
  Kind kind;
  int line = 0;
  std::string name;
  Value literal;
  bool is_call = false;
  bool negate = false;
  std::vector<ExprPtr> children;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;

struct Stmt {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kMacro, kBreak, kContinue };
  Kind kind;
  int line = 0;
  std::string text;  // kText: the text; kMacro: the name
  // kOutput: the expression; kIf: the test; kFor: the iterable; kSet: the value (null for a
  // block set, whose value is `body` rendered).
  ExprPtr expr;
  ExprPtr target;       // kFor: loop variable(s); kSet: the assignee
  ExprPtr loop_filter;  // kFor: the `if` test of `for x in xs if test`, or null
  std::vector<StmtPtr> body;
  std::vector<StmtPtr> alternate;  // kIf: the else/elif branch; kFor: the else block
  std::vector<ExprPtr> params;     // kMacro: identifiers and keyword args (defaults)
  bool uses_kwargs = false;        // kMacro: the body reads `kwargs`
  bool uses_varargs = false;       // kMacro: the body reads `varargs`
};

struct Program {
  std::vector<StmtPtr> body;
};

}  // namespace inferbox::engine::chat_template
