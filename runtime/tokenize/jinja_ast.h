// The renderer's syntax tree (made by jinja_parse.cpp), the interpreter state, and the built-in
// filters, tests, methods and globals (jinja_builtins.cpp). Internal to the renderer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenize/jinja_value.h"

namespace pqvk::jinja::detail {

struct Interp;

struct Node {
  int line = 0, col = 0;
  virtual ~Node() = default;
};

// ---- expressions ------------------------------------------------------------------------------

struct Expr : Node {
  // Evaluates; an error of the operation itself is a Fault (evaluate() adds the position).
  virtual Value eval(Interp& in) const = 0;
};
using ExprPtr = std::unique_ptr<Expr>;

// Evaluates with the step and recursion limits, and turns a Fault into an Error at `e`.
Value evaluate(Interp& in, const Expr& e);

struct Const : Expr {
  Value value;
  Value eval(Interp&) const override { return value; }
};
struct Name : Expr {
  std::string name;
  Value eval(Interp& in) const override;
};
struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  bool tuple = false;
  Value eval(Interp& in) const override;
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  Value eval(Interp& in) const override;
};
struct Getattr : Expr {
  ExprPtr object;
  std::string attr;
  Value eval(Interp& in) const override;
};
struct SliceExpr : Expr {
  ExprPtr start, stop, step;  // each may be null
  Value eval(Interp& in) const override;  // a slice outside [] is an error
};
struct Getitem : Expr {
  ExprPtr object, key;  // key may be a SliceExpr
  Value eval(Interp& in) const override;
};
struct CallArgs {
  std::vector<ExprPtr> pos;
  std::vector<std::pair<std::string, ExprPtr>> kw;
  Args evaluate(Interp& in) const;
};
struct Call : Expr {
  ExprPtr callee;
  CallArgs args;
  Value eval(Interp& in) const override;
};
struct Filter : Expr {
  ExprPtr value;  // null: the filter block's text ({% filter %}, {% set x | f %})
  std::string name;
  CallArgs args;
  Value eval(Interp& in) const override;
};
struct Test : Expr {
  ExprPtr value;
  std::string name;
  CallArgs args;
  Value eval(Interp& in) const override;
};
struct Unary : Expr {
  enum Op { neg, pos, not_ } op = neg;
  ExprPtr operand;
  Value eval(Interp& in) const override;
};
enum class BinOp { add, sub, mul, div, floordiv, mod, pow };
struct Binary : Expr {
  BinOp op = BinOp::add;
  ExprPtr left, right;
  Value eval(Interp& in) const override;
};
struct Logic : Expr {  // and / or: Python's, returning an operand
  bool is_and = true;
  ExprPtr left, right;
  Value eval(Interp& in) const override;
};
struct Concat : Expr {  // a ~ b ~ c
  std::vector<ExprPtr> parts;
  Value eval(Interp& in) const override;
};
enum class CmpOp { eq, ne, lt, le, gt, ge, in, not_in };
struct Compare : Expr {
  ExprPtr first;
  std::vector<std::pair<CmpOp, ExprPtr>> rest;
  Value eval(Interp& in) const override;
};
struct CondExpr : Expr {
  ExprPtr test, then, otherwise;  // otherwise may be null (undefined)
  Value eval(Interp& in) const override;
};

// ---- statements -------------------------------------------------------------------------------

enum class Flow { normal, break_loop, continue_loop };

struct Stmt : Node {
  virtual Flow exec(Interp& in) const = 0;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

Flow execute(Interp& in, const Body& body);

// What a set, for or with assigns to: a name, a tuple of targets, or ns.attr.
struct Target {
  enum Kind { name, tuple, ns_attr } kind = name;
  std::string id, attr;
  std::vector<Target> items;
  int line = 0, col = 0;
};

struct Text : Stmt {
  std::string text;
  Flow exec(Interp& in) const override;
};
struct Print : Stmt {
  ExprPtr expr;
  Flow exec(Interp& in) const override;
};
struct If : Stmt {
  std::vector<std::pair<ExprPtr, Body>> branches;  // if, elif...
  Body otherwise;
  Flow exec(Interp& in) const override;
};
struct For : Stmt {
  Target target;
  ExprPtr iterable, filter;  // filter may be null
  Body body, otherwise;
  Flow exec(Interp& in) const override;
};
struct Set : Stmt {
  Target target;
  ExprPtr value;
  Flow exec(Interp& in) const override;
};
struct SetBlock : Stmt {
  Target target;
  ExprPtr filter;  // may be null
  Body body;
  Flow exec(Interp& in) const override;
};
struct MacroSignature {
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  bool uses_caller = false, uses_varargs = false, uses_kwargs = false;
};
struct Macro : Stmt {
  std::string name;
  std::shared_ptr<MacroSignature> sig;
  std::shared_ptr<Body> body;
  Flow exec(Interp& in) const override;
};
struct CallBlock : Stmt {
  std::shared_ptr<MacroSignature> sig;  // of caller()
  std::unique_ptr<Call> call;
  std::shared_ptr<Body> body;
  Flow exec(Interp& in) const override;
};
struct FilterBlock : Stmt {
  ExprPtr filter;
  Body body;
  Flow exec(Interp& in) const override;
};
struct With : Stmt {
  std::vector<std::pair<Target, ExprPtr>> assignments;
  Body body;
  Flow exec(Interp& in) const override;
};
struct LoopControl : Stmt {
  bool is_break = true;
  Flow exec(Interp&) const override { return is_break ? Flow::break_loop : Flow::continue_loop; }
};

// Parses a template (jinja_parse.cpp). Throws Error.
Body parse_template(std::string_view source, const std::string& name, const Limits& limits);

// ---- the interpreter --------------------------------------------------------------------------

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  explicit Scope(std::shared_ptr<Scope> p) : parent(std::move(p)) {}
};

struct Interp {
  const Limits& limits;
  const std::string& name;
  std::function<std::time_t()> now;
  std::string* out = nullptr;
  std::shared_ptr<Scope> scope;
  uint64_t steps = 0;
  int depth = 0;                         // evaluate() / execute() recursion
  int call_depth = 0;                    // macro calls
  const Value* filter_input = nullptr;   // the text a filter block filters
  std::vector<std::shared_ptr<Namespace>> namespaces;  // cleared at the end (they may form cycles)

  Interp(const Limits& l, const std::string& n) : limits(l), name(n) {}
  void step(uint64_t n = 1);
  void charge(size_t bytes) { step(1 + bytes / 16); }  // making `bytes` bytes of output or strings
  void check_string(size_t bytes) const;               // LimitError for a string over max_output_bytes
  void emit(std::string_view s);
  const Value* lookup(const std::string& id) const;
  void assign(const std::string& id, Value v) { scope->vars[id] = std::move(v); }
  Value make_list(std::vector<Value> items, ListKind kind = ListKind::list) const {
    return detail::make_list(std::move(items), kind, limits.max_value_depth);
  }
};

// Makes `scope` the current scope until it ends (then the previous one again).
class ScopeGuard {
 public:
  ScopeGuard(Interp& in, std::shared_ptr<Scope> scope) : in_(in), saved_(std::move(in.scope)) { in.scope = std::move(scope); }
  ~ScopeGuard() { in_.scope = std::move(saved_); }
  ScopeGuard(const ScopeGuard&) = delete;
  ScopeGuard& operator=(const ScopeGuard&) = delete;
  const std::shared_ptr<Scope>& outer() const { return saved_; }

 private:
  Interp& in_;
  std::shared_ptr<Scope> saved_;
};

// Runs `body` with `scope`, writing into a fresh string; returns it.
std::string capture(Interp& in, const Body& body, std::shared_ptr<Scope> scope);

// ---- built-ins (jinja_builtins.cpp) -----------------------------------------------------------

using FilterFn = Value (*)(Interp&, const Value&, const Args&);
using TestFn = bool (*)(Interp&, const Value&, const Args&);
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
bool call_test(Interp& in, const std::string& name, const Value& v, const Args& args);

Value get_attr(Interp& in, const Value& obj, const std::string& attr);  // obj.attr
Value get_item(Interp& in, const Value& obj, const Value& key);         // obj[key]
Value slice(Interp& in, const Value& obj, const Value& start, const Value& stop, const Value& step);
Value call_value(Interp& in, const Value& callee, const Args& args);
void add_globals(Scope& globals);

// Python-style argument binding for built-ins: `names` in order; returns one slot per name.
// TypeError for too many positional arguments, an unknown or repeated keyword.
std::vector<std::optional<Value>> bind_args(const char* fname, const Args& args,
                                            std::initializer_list<const char*> names);

}  // namespace pqvk::jinja::detail
