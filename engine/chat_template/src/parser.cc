#include "parser.h"

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <string>
#include <utility>

namespace inferbox::engine::chat_template {
namespace {

// What the interpreter implements; the names are those @huggingface/jinja 0.5.11 knows.
constexpr std::string_view kFilters[] = {
    "safe",       "tojson",     "list",    "first",    "last",  "length", "reverse",    "sort",
    "join",       "string",     "unique",  "upper",    "lower", "title",  "capitalize", "trim",
    "indent",     "int",        "float",   "abs",      "items", "bool",   "default",    "map",
    "selectattr", "rejectattr", "replace", "dictsort", "keys",  "values"};
constexpr std::string_view kTests[] = {"boolean",  "callable",  "odd",      "even",   "false",
                                       "true",     "none",      "string",   "number", "integer",
                                       "iterable", "mapping",   "sequence", "lower",  "upper",
                                       "defined",  "undefined", "equalto",  "eq"};
constexpr std::string_view kMethods[] = {
    "upper",    "lower", "strip",   "title", "capitalize", "rstrip", "lstrip", "startswith",
    "endswith", "split", "replace", "get",   "items",      "keys",   "values", "dictsort"};

template <size_t N>
bool Contains(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

ExprPtr MakeExpr(Expr::Kind kind, int line) {
  auto expr = std::make_unique<Expr>();
  expr->kind = kind;
  expr->line = line;
  return expr;
}

// Blocks inside blocks and expressions inside expressions (parentheses, `not not ...`, `- -
// ...`) the parser recurses into: a template nested deeper is refused rather than taking the
// engine's stack (real ones nest under 20).
constexpr int kMaxParseDepth = 128;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Program Run() {
    Program program;
    while (current_ < tokens_.size()) {
      if (auto stmt = ParseAny()) program.body.push_back(std::move(stmt));
    }
    return program;
  }

 private:
  int Line() const {
    if (tokens_.empty()) return 1;
    return tokens_[std::min(current_, tokens_.size() - 1)].line;
  }
  [[noreturn]] void Fail(const std::string& message) const { throw ParseError{Line(), message}; }
  // Counts a level of recursion for its lifetime; past kMaxParseDepth, fails.
  class Nested {
   public:
    explicit Nested(Parser& parser) : depth_(++parser.depth_) {
      if (depth_ > kMaxParseDepth) {
        parser.Fail("nested more than " + std::to_string(kMaxParseDepth) + " deep");
      }
    }
    ~Nested() { --depth_; }
    Nested(const Nested&) = delete;
    Nested& operator=(const Nested&) = delete;

   private:
    int& depth_;
  };
  const Token& Peek(size_t offset = 0) const {
    if (current_ + offset >= tokens_.size()) Fail("unexpected end of template");
    return tokens_[current_ + offset];
  }
  bool Is(TokenType type) const {
    return current_ < tokens_.size() && tokens_[current_].type == type;
  }
  bool IsIdentifier(std::string_view name, size_t offset = 0) const {
    return current_ + offset < tokens_.size() &&
           tokens_[current_ + offset].type == TokenType::kIdentifier &&
           tokens_[current_ + offset].value == name;
  }
  bool IsStatement(std::initializer_list<std::string_view> names) const {
    if (!Is(TokenType::kOpenStatement) || current_ + 1 >= tokens_.size()) return false;
    const Token& name = tokens_[current_ + 1];
    return name.type == TokenType::kIdentifier &&
           std::find(names.begin(), names.end(), name.value) != names.end();
  }
  const Token& Expect(TokenType type, std::string_view what) {
    if (!Is(type)) {
      Fail("expected " + std::string(what) +
           (current_ < tokens_.size() ? ", got '" + tokens_[current_].value + "'" : ""));
    }
    return tokens_[current_++];
  }
  void ExpectEndTag(std::string_view name) {
    Expect(TokenType::kOpenStatement, "'{%'");
    if (!IsIdentifier(name)) Fail("expected '" + std::string(name) + "'");
    ++current_;
    Expect(TokenType::kCloseStatement, "'%}'");
  }
  // Parses statements until one of `names` opens a tag; fails at the end of the template.
  std::vector<StmtPtr> ParseBlock(std::initializer_list<std::string_view> names,
                                  std::string_view opener, int opener_line) {
    std::vector<StmtPtr> body;
    while (!IsStatement(names)) {
      if (current_ >= tokens_.size()) {
        throw ParseError{opener_line, "unclosed '" + std::string(opener) + "' block"};
      }
      if (auto stmt = ParseAny()) body.push_back(std::move(stmt));
    }
    return body;
  }

  StmtPtr ParseAny() {
    const Nested nested(*this);
    const Token& token = Peek();
    switch (token.type) {
      case TokenType::kComment: ++current_; return nullptr;
      case TokenType::kText: {
        auto stmt = std::make_unique<Stmt>();
        stmt->kind = Stmt::Kind::kText;
        stmt->line = token.line;
        stmt->text = token.value;
        ++current_;
        return stmt;
      }
      case TokenType::kOpenStatement: return ParseStatement();
      case TokenType::kOpenExpression: {
        auto stmt = std::make_unique<Stmt>();
        stmt->kind = Stmt::Kind::kOutput;
        stmt->line = token.line;
        ++current_;
        stmt->expr = ParseExpression();
        Expect(TokenType::kCloseExpression, "'}}'");
        return stmt;
      }
      default: Fail("unexpected '" + token.value + "'");
    }
  }

  StmtPtr ParseStatement() {
    Expect(TokenType::kOpenStatement, "'{%'");
    const Token& name_token = Peek();
    if (name_token.type != TokenType::kIdentifier) Fail("expected a tag name");
    const std::string name = name_token.value;
    auto stmt = std::make_unique<Stmt>();
    stmt->line = name_token.line;
    ++current_;
    if (name == "set") {
      ParseSet(*stmt);
    } else if (name == "if") {
      ParseIf(*stmt);
      ExpectEndTag("endif");
    } else if (name == "for") {
      ParseFor(*stmt);
      ExpectEndTag("endfor");
    } else if (name == "macro") {
      ParseMacro(*stmt);
      ExpectEndTag("endmacro");
    } else if (name == "break" || name == "continue") {
      stmt->kind = name == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      Expect(TokenType::kCloseStatement, "'%}'");
    } else {
      throw ParseError{stmt->line, "unsupported tag '" + name + "'"};
    }
    return stmt;
  }

  void ParseSet(Stmt& stmt) {
    stmt.kind = Stmt::Kind::kSet;
    stmt.target = ParseExpressionSequence(false);
    if (Is(TokenType::kEquals)) {
      ++current_;
      stmt.expr = ParseExpressionSequence(false);
    } else {
      Expect(TokenType::kCloseStatement, "'%}'");
      stmt.body = ParseBlock({"endset"}, "set", stmt.line);
      Expect(TokenType::kOpenStatement, "'{%'");
      ++current_;
    }
    Expect(TokenType::kCloseStatement, "'%}'");
  }

  void ParseIf(Stmt& stmt) {
    stmt.kind = Stmt::Kind::kIf;
    stmt.expr = ParseExpression();
    Expect(TokenType::kCloseStatement, "'%}'");
    stmt.body = ParseBlock({"elif", "else", "endif"}, "if", stmt.line);
    if (IsStatement({"elif"})) {
      auto elif = std::make_unique<Stmt>();
      elif->line = tokens_[current_ + 1].line;
      current_ += 2;
      ParseIf(*elif);
      stmt.alternate.push_back(std::move(elif));
    } else if (IsStatement({"else"})) {
      current_ += 2;
      Expect(TokenType::kCloseStatement, "'%}'");
      stmt.alternate = ParseBlock({"endif"}, "if", stmt.line);
    }
  }

  void ParseFor(Stmt& stmt) {
    stmt.kind = Stmt::Kind::kFor;
    stmt.target = ParseExpressionSequence(true);
    if (stmt.target->kind != Expr::Kind::kIdentifier && stmt.target->kind != Expr::Kind::kTuple) {
      Fail("expected a name or names for the loop variable");
    }
    if (!IsIdentifier("in")) Fail("expected 'in' after the loop variable");
    ++current_;
    ExprPtr iterable = ParseExpression();
    if (iterable->kind == Expr::Kind::kSelect) {
      stmt.loop_filter = std::move(iterable->children[1]);
      iterable = std::move(iterable->children[0]);
    }
    stmt.expr = std::move(iterable);
    Expect(TokenType::kCloseStatement, "'%}'");
    stmt.body = ParseBlock({"endfor", "else"}, "for", stmt.line);
    if (IsStatement({"else"})) {
      current_ += 2;
      Expect(TokenType::kCloseStatement, "'%}'");
      stmt.alternate = ParseBlock({"endfor"}, "for", stmt.line);
    }
  }

  void ParseMacro(Stmt& stmt) {
    stmt.kind = Stmt::Kind::kMacro;
    const Token& name = Peek();
    if (name.type != TokenType::kIdentifier) Fail("expected the macro's name");
    stmt.text = name.value;
    ++current_;
    stmt.params = ParseArgs(/*is_declaration=*/true);
    Expect(TokenType::kCloseStatement, "'%}'");
    stmt.body = ParseBlock({"endmacro"}, "macro", stmt.line);
    for (const auto& param : stmt.params) {
      const std::string& param_name = param->name;
      if (param_name == "kwargs" || param_name == "varargs") {
        throw ParseError{stmt.line, "unsupported macro parameter '" + param_name + "'"};
      }
    }
    for (const auto& body_stmt : stmt.body) {
      ScanSpecialNames(*body_stmt, stmt.uses_kwargs, stmt.uses_varargs);
    }
  }

  static void ScanSpecialNames(const Expr& expr, bool& kwargs, bool& varargs) {
    if (expr.kind == Expr::Kind::kIdentifier) {
      kwargs = kwargs || expr.name == "kwargs";
      varargs = varargs || expr.name == "varargs";
    }
    for (const auto& child : expr.children) {
      if (child) ScanSpecialNames(*child, kwargs, varargs);
    }
  }
  static void ScanSpecialNames(const Stmt& stmt, bool& kwargs, bool& varargs) {
    for (const Expr* expr : {stmt.expr.get(), stmt.target.get(), stmt.loop_filter.get()}) {
      if (expr) ScanSpecialNames(*expr, kwargs, varargs);
    }
    for (const auto& param : stmt.params) ScanSpecialNames(*param, kwargs, varargs);
    for (const auto* block : {&stmt.body, &stmt.alternate}) {
      for (const auto& child : *block) ScanSpecialNames(*child, kwargs, varargs);
    }
  }

  ExprPtr ParseExpressionSequence(bool primary) {
    const int line = Line();
    ExprPtr first = primary ? ParsePrimary() : ParseExpression();
    if (!Is(TokenType::kComma)) return first;
    auto tuple = MakeExpr(Expr::Kind::kTuple, line);
    tuple->children.push_back(std::move(first));
    while (Is(TokenType::kComma)) {
      ++current_;
      tuple->children.push_back(primary ? ParsePrimary() : ParseExpression());
    }
    return tuple;
  }

  ExprPtr ParseExpression() {
    const Nested nested(*this);
    ExprPtr a = ParseLogicalOr();
    if (!IsIdentifier("if")) return a;
    const int line = Line();
    ++current_;
    ExprPtr test = ParseLogicalOr();
    if (IsIdentifier("else")) {
      ++current_;
      auto ternary = MakeExpr(Expr::Kind::kTernary, line);
      ternary->children.push_back(std::move(test));
      ternary->children.push_back(std::move(a));
      ternary->children.push_back(ParseExpression());
      return ternary;
    }
    auto select = MakeExpr(Expr::Kind::kSelect, line);
    select->children.push_back(std::move(a));
    select->children.push_back(std::move(test));
    return select;
  }

  ExprPtr MakeBinary(std::string op, ExprPtr left, ExprPtr right, int line) {
    auto binary = MakeExpr(Expr::Kind::kBinary, line);
    binary->name = std::move(op);
    binary->children.push_back(std::move(left));
    binary->children.push_back(std::move(right));
    return binary;
  }

  ExprPtr ParseLogicalOr() {
    ExprPtr left = ParseLogicalAnd();
    while (IsIdentifier("or")) {
      const int line = Line();
      ++current_;
      left = MakeBinary("or", std::move(left), ParseLogicalAnd(), line);
    }
    return left;
  }

  ExprPtr ParseLogicalAnd() {
    ExprPtr left = ParseLogicalNot();
    while (IsIdentifier("and")) {
      const int line = Line();
      ++current_;
      left = MakeBinary("and", std::move(left), ParseLogicalNot(), line);
    }
    return left;
  }

  ExprPtr ParseLogicalNot() {
    if (!IsIdentifier("not")) return ParseComparison();
    const Nested nested(*this);
    const int line = Line();
    ++current_;
    auto unary = MakeExpr(Expr::Kind::kUnary, line);
    unary->name = "not";
    unary->children.push_back(ParseLogicalNot());
    return unary;
  }

  ExprPtr ParseComparison() {
    ExprPtr left = ParseAdditive();
    while (true) {
      const int line = Line();
      std::string op;
      if (IsIdentifier("not") && IsIdentifier("in", 1)) {
        op = "not in";
        current_ += 2;
      } else if (IsIdentifier("in")) {
        op = "in";
        ++current_;
      } else if (Is(TokenType::kComparisonOperator)) {
        op = tokens_[current_++].value;
      } else {
        return left;
      }
      left = MakeBinary(std::move(op), std::move(left), ParseAdditive(), line);
    }
  }

  ExprPtr ParseAdditive() {
    ExprPtr left = ParseMultiplicative();
    while (Is(TokenType::kAdditiveOperator)) {
      const Token& op = tokens_[current_++];
      left = MakeBinary(op.value, std::move(left), ParseMultiplicative(), op.line);
    }
    return left;
  }

  ExprPtr ParseMultiplicative() {
    ExprPtr left = ParsePower();
    while (Is(TokenType::kMultiplicativeOperator)) {
      const Token& op = tokens_[current_++];
      left = MakeBinary(op.value, std::move(left), ParsePower(), op.line);
    }
    return left;
  }

  ExprPtr ParsePower() {
    ExprPtr left = ParseTest();
    while (Is(TokenType::kExponentiationOperator)) {
      const Token& op = tokens_[current_++];
      left = MakeBinary(op.value, std::move(left), ParseTest(), op.line);
    }
    return left;
  }

  ExprPtr ParseTest() {
    ExprPtr operand = ParseFilter();
    while (IsIdentifier("is")) {
      const int line = Line();
      ++current_;
      const bool negate = IsIdentifier("not");
      if (negate) ++current_;
      const Token& test = Peek();
      if (test.type != TokenType::kIdentifier) Fail("expected the name of a test after 'is'");
      if (!Contains(kTests, test.value)) Fail("unsupported test '" + test.value + "'");
      ++current_;
      auto expr = MakeExpr(Expr::Kind::kTest, line);
      expr->name = test.value;
      expr->negate = negate;
      expr->children.push_back(std::move(operand));
      operand = std::move(expr);
    }
    return operand;
  }

  ExprPtr ParseFilter() {
    ExprPtr operand = ParseUnarySign();
    while (Is(TokenType::kPipe)) {
      ++current_;
      const Token& filter = Peek();
      if (filter.type != TokenType::kIdentifier) Fail("expected the name of a filter after '|'");
      if (!Contains(kFilters, filter.value)) Fail("unsupported filter '" + filter.value + "'");
      ++current_;
      auto expr = MakeExpr(Expr::Kind::kFilter, filter.line);
      expr->name = filter.value;
      expr->children.push_back(std::move(operand));
      if (Is(TokenType::kOpenParen)) {
        expr->is_call = true;
        for (auto& arg : ParseArgs(false)) expr->children.push_back(std::move(arg));
        if (Is(TokenType::kDot) || Is(TokenType::kOpenSquareBracket) || Is(TokenType::kOpenParen)) {
          Fail("unsupported member access on a filter call");
        }
      }
      operand = std::move(expr);
    }
    return operand;
  }

  ExprPtr ParseUnarySign() {
    if ((Is(TokenType::kUnaryOperator) || Is(TokenType::kAdditiveOperator)) &&
        (Peek().value == "-" || Peek().value == "+")) {
      const Nested nested(*this);
      auto unary = MakeExpr(Expr::Kind::kUnary, Line());
      unary->name = tokens_[current_++].value;
      unary->children.push_back(ParseUnarySign());
      return unary;
    }
    ExprPtr member = ParseMember(ParsePrimary());
    while (Is(TokenType::kOpenParen)) member = ParseMember(ParseCall(std::move(member)));
    return member;
  }

  ExprPtr ParseCall(ExprPtr callee) {
    if (callee->kind == Expr::Kind::kMember) {
      const Expr& property = *callee->children[1];
      if (property.kind == Expr::Kind::kLiteral && property.literal.is_string() &&
          !Contains(kMethods, property.literal.string())) {
        throw ParseError{callee->line, "unsupported method '" + property.literal.string() + "'"};
      }
    }
    auto call = MakeExpr(Expr::Kind::kCall, callee->line);
    call->children.push_back(std::move(callee));
    for (auto& arg : ParseArgs(false)) call->children.push_back(std::move(arg));
    return call;
  }

  std::vector<ExprPtr> ParseArgs(bool is_declaration) {
    Expect(TokenType::kOpenParen, "'('");
    std::vector<ExprPtr> args;
    bool saw_keyword = false;
    while (!Is(TokenType::kCloseParen)) {
      if (current_ >= tokens_.size()) Fail("unclosed '('");
      if (Is(TokenType::kExponentiationOperator) ||
          (Is(TokenType::kMultiplicativeOperator) && Peek().value == "*")) {
        Fail("unsupported operator '" + Peek().value + "' (argument unpacking)");
      }
      ExprPtr arg = ParseExpression();
      if (Is(TokenType::kEquals)) {
        ++current_;
        if (arg->kind != Expr::Kind::kIdentifier) Fail("expected a name before '='");
        auto keyword = MakeExpr(Expr::Kind::kKeywordArg, arg->line);
        keyword->name = arg->name;
        keyword->children.push_back(ParseExpression());
        arg = std::move(keyword);
        saw_keyword = true;
      } else if (saw_keyword) {
        Fail(is_declaration ? "non-default argument follows default argument"
                            : "positional arguments must come before keyword arguments");
      }
      if (is_declaration && arg->kind != Expr::Kind::kIdentifier &&
          arg->kind != Expr::Kind::kKeywordArg) {
        Fail("expected a name for a macro parameter");
      }
      args.push_back(std::move(arg));
      if (Is(TokenType::kComma)) ++current_;
    }
    ++current_;
    return args;
  }

  ExprPtr ParseSliceOrIndex() {
    const int line = Line();
    std::vector<ExprPtr> parts;
    bool is_slice = false;
    while (!Is(TokenType::kCloseSquareBracket)) {
      if (current_ >= tokens_.size()) Fail("unclosed '['");
      if (Is(TokenType::kColon)) {
        parts.push_back(nullptr);
        ++current_;
        is_slice = true;
      } else {
        parts.push_back(ParseExpression());
        if (Is(TokenType::kColon)) {
          ++current_;
          is_slice = true;
        }
      }
    }
    if (parts.empty()) Fail("expected an index or slice inside '[]'");
    if (!is_slice) return std::move(parts[0]);
    if (parts.size() > 3) Fail("expected at most 3 parts in a slice");
    auto slice = MakeExpr(Expr::Kind::kSlice, line);
    parts.resize(3);
    slice->children = std::move(parts);
    return slice;
  }

  ExprPtr ParseMember(ExprPtr object) {
    while (Is(TokenType::kDot) || Is(TokenType::kOpenSquareBracket)) {
      const bool computed = Is(TokenType::kOpenSquareBracket);
      const int line = Line();
      ++current_;
      ExprPtr property;
      if (computed) {
        property = ParseSliceOrIndex();
        Expect(TokenType::kCloseSquareBracket, "']'");
      } else {
        const Token& name = Peek();
        property = MakeExpr(Expr::Kind::kLiteral, name.line);
        if (name.type == TokenType::kIdentifier) {
          property->literal = Value::String(name.value);
        } else if (name.type == TokenType::kNumericLiteral &&
                   name.value.find('.') == std::string::npos) {
          property->literal = Value::Integer(std::stod(name.value));
        } else {
          Fail("expected a name or integer after '.'");
        }
        ++current_;
      }
      auto member = MakeExpr(Expr::Kind::kMember, line);
      member->children.push_back(std::move(object));
      member->children.push_back(std::move(property));
      object = std::move(member);
    }
    return object;
  }

  ExprPtr ParsePrimary() {
    const Token& token = Peek();
    const int line = token.line;
    ++current_;
    switch (token.type) {
      case TokenType::kNumericLiteral: {
        auto literal = MakeExpr(Expr::Kind::kLiteral, line);
        const double number = std::stod(token.value);
        literal->literal = token.value.find('.') != std::string::npos ? Value::Float(number)
                                                                      : Value::Integer(number);
        return literal;
      }
      case TokenType::kStringLiteral: {
        std::string text = token.value;
        while (Is(TokenType::kStringLiteral)) text += tokens_[current_++].value;
        auto literal = MakeExpr(Expr::Kind::kLiteral, line);
        literal->literal = Value::String(std::move(text));
        return literal;
      }
      case TokenType::kIdentifier: {
        auto identifier = MakeExpr(Expr::Kind::kIdentifier, line);
        identifier->name = token.value;
        return identifier;
      }
      case TokenType::kOpenParen: {
        ExprPtr expr = ParseExpressionSequence(false);
        Expect(TokenType::kCloseParen, "')'");
        return expr;
      }
      case TokenType::kOpenSquareBracket: {
        auto array = MakeExpr(Expr::Kind::kArray, line);
        while (!Is(TokenType::kCloseSquareBracket)) {
          if (current_ >= tokens_.size()) Fail("unclosed '['");
          array->children.push_back(ParseExpression());
          if (Is(TokenType::kComma)) ++current_;
        }
        ++current_;
        return array;
      }
      case TokenType::kOpenCurlyBracket: {
        auto object = MakeExpr(Expr::Kind::kObject, line);
        while (!Is(TokenType::kCloseCurlyBracket)) {
          if (current_ >= tokens_.size()) Fail("unclosed '{'");
          object->children.push_back(ParseExpression());
          Expect(TokenType::kColon, "':' between key and value");
          object->children.push_back(ParseExpression());
          if (Is(TokenType::kComma)) ++current_;
        }
        ++current_;
        return object;
      }
      default: --current_; Fail("unexpected '" + token.value + "'");
    }
  }

  std::vector<Token> tokens_;
  size_t current_ = 0;
  int depth_ = 0;  // Nested counts it.
};

}  // namespace

Program ParseTokens(std::vector<Token> tokens) {
  return Parser(std::move(tokens)).Run();
}

}  // namespace inferbox::engine::chat_template
