// The evaluator: expressions with Python's operators, statements with jinja2's scoping (a for
// loop's body and a macro's body have their own variables; if does not), and Template.
#include <cmath>
#include <limits>

#include "tokenize/jinja_ast.h"

namespace pqvk::jinja {

Error::Error(std::string type, std::string message, std::string where, int line, int column)
    : std::runtime_error(where + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + type + ": " + message),
      type_(std::move(type)),
      message_(std::move(message)),
      where_(std::move(where)),
      line_(line),
      column_(column) {}

namespace detail {

namespace {

// Bounds the C++ recursion of evaluate() / execute() whatever the template does (the parser
// bounds one template's nesting; macro calls nest those).
constexpr int kMaxRecursion = 3000;

struct Enter {
  Interp& in;
  explicit Enter(Interp& i) : in(i) {
    if (++in.depth > kMaxRecursion) {
      --in.depth;
      fail("LimitError", "the template recurses more than " + std::to_string(kMaxRecursion) + " levels deep");
    }
  }
  ~Enter() { --in.depth; }
};

template <class F>
auto at_node(Interp& in, const Node& n, F&& f) {
  try {
    Enter enter(in);
    in.step();
    return f();
  } catch (const Fault& fault) {
    throw Error(fault.type, fault.message, in.name, n.line, n.col);
  }
}

[[noreturn]] void undefined_fail(const Value& v) { fail("UndefinedError", v.undefined_message()); }

[[noreturn]] void overflow() { fail("OverflowError", "integer overflow (the renderer's integers are 64-bit)"); }

template <class Op>
int64_t checked_op(Op op, int64_t a, int64_t b) {
  int64_t r = 0;
  if (op(a, b, &r)) overflow();
  return r;
}
int64_t add(int64_t a, int64_t b) { return checked_op([](int64_t x, int64_t y, int64_t* r) { return __builtin_add_overflow(x, y, r); }, a, b); }
int64_t sub(int64_t a, int64_t b) { return checked_op([](int64_t x, int64_t y, int64_t* r) { return __builtin_sub_overflow(x, y, r); }, a, b); }
int64_t mul(int64_t a, int64_t b) { return checked_op([](int64_t x, int64_t y, int64_t* r) { return __builtin_mul_overflow(x, y, r); }, a, b); }

Value py_floordiv(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int()) {
    const int64_t x = a.integer(), y = b.integer();
    if (y == 0) fail("ZeroDivisionError", "integer division or modulo by zero");
    if (x == std::numeric_limits<int64_t>::min() && y == -1) overflow();
    int64_t q = x / y;
    if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
    return Value(q);
  }
  const double x = a.number(), y = b.number();
  if (y == 0) fail("ZeroDivisionError", "float floor division by zero");
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0 && ((y < 0) != (mod < 0))) div -= 1.0;
  if (div != 0) {
    double fl = std::floor(div);
    if (div - fl > 0.5) fl += 1.0;
    return Value(fl);
  }
  return Value(std::copysign(0.0, x / y));
}

Value py_mod(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int()) {
    const int64_t x = a.integer(), y = b.integer();
    if (y == 0) fail("ZeroDivisionError", "integer modulo by zero");
    if (y == -1) return Value(int64_t{0});
    int64_t r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) r += y;
    return Value(r);
  }
  const double x = a.number(), y = b.number();
  if (y == 0) fail("ZeroDivisionError", "float modulo");
  double mod = std::fmod(x, y);
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) mod += y;
  } else {
    mod = std::copysign(0.0, y);
  }
  return Value(mod);
}

Value py_pow(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int() && b.integer() >= 0) {
    int64_t base = a.integer(), e = b.integer(), r = 1;
    while (e > 0) {
      if (e & 1) r = mul(r, base);
      e >>= 1;
      if (e > 0) base = mul(base, base);
    }
    return Value(r);
  }
  const double x = a.number(), y = b.number();
  if (x == 0 && y < 0) fail("ZeroDivisionError", "0.0 cannot be raised to a negative power");
  if (x < 0 && y != std::floor(y)) fail("TypeError", "a negative number raised to a fractional power is complex");
  const double r = std::pow(x, y);
  if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) fail("OverflowError", "(34, 'Numerical result out of range')");
  return Value(r);
}

Value repeat(Interp& in, const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value(std::string()) : in.make_list({}, seq.list().kind);
  if (seq.is_string()) {
    const size_t bytes = seq.str().size() * static_cast<size_t>(std::min<int64_t>(n, int64_t{1} << 40));
    in.check_string(bytes);
    in.charge(bytes);
    std::string out;
    out.reserve(bytes);
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value(std::move(out));
  }
  const List& l = seq.list();
  const size_t count = l.items.size() * static_cast<size_t>(std::min<int64_t>(n, int64_t{1} << 40));
  in.check_string(count);
  in.charge(count * 16);
  std::vector<Value> items;
  items.reserve(count);
  for (int64_t i = 0; i < n; ++i) items.insert(items.end(), l.items.begin(), l.items.end());
  return in.make_list(std::move(items), l.kind);
}

bool concatenable(const Value& v) {
  return v.is(Value::Type::list) && (v.list().kind == ListKind::list || v.list().kind == ListKind::tuple);
}

[[noreturn]] void unsupported(const char* op, const Value& a, const Value& b) {
  fail("TypeError", std::string("unsupported operand type(s) for ") + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

}  // namespace

Value arith(Interp& in, BinOp op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_fail(a);
  if (b.is_undefined()) undefined_fail(b);
  const bool ints = a.is_int() && b.is_int();
  const bool nums = a.is_number() && b.is_number();
  switch (op) {
    case BinOp::add:
      if (ints) return Value(add(a.integer(), b.integer()));
      if (nums) return Value(a.number() + b.number());
      if (a.is_string()) {
        if (!b.is_string()) fail("TypeError", std::string("can only concatenate str (not \"") + type_name(b) + "\") to str");
        in.check_string(a.str().size() + b.str().size());
        in.charge(a.str().size() + b.str().size());
        return Value(a.str() + b.str());
      }
      if (concatenable(a)) {
        if (!b.is(Value::Type::list) || b.list().kind != a.list().kind)
          fail("TypeError", std::string("can only concatenate ") + type_name(a) + " (not \"" + type_name(b) + "\") to " +
                                type_name(a));
        std::vector<Value> items = a.list().items;
        in.charge(16 * (items.size() + b.list().items.size()));
        items.insert(items.end(), b.list().items.begin(), b.list().items.end());
        return in.make_list(std::move(items), a.list().kind);
      }
      unsupported("+", a, b);
    case BinOp::sub:
      if (ints) return Value(sub(a.integer(), b.integer()));
      if (nums) return Value(a.number() - b.number());
      unsupported("-", a, b);
    case BinOp::mul:
      if (ints) return Value(mul(a.integer(), b.integer()));
      if (nums) return Value(a.number() * b.number());
      if ((a.is_string() || concatenable(a)) && b.is_int()) return repeat(in, a, b.integer());
      if ((b.is_string() || concatenable(b)) && a.is_int()) return repeat(in, b, a.integer());
      if (a.is_string() || concatenable(a))
        fail("TypeError", std::string("can't multiply sequence by non-int of type '") + type_name(b) + "'");
      if (b.is_string() || concatenable(b))
        fail("TypeError", std::string("can't multiply sequence by non-int of type '") + type_name(a) + "'");
      unsupported("*", a, b);
    case BinOp::div:
      if (nums) {
        if (b.number() == 0) fail("ZeroDivisionError", ints ? "division by zero" : "float division by zero");
        if (ints) return Value(static_cast<double>(static_cast<long double>(a.integer()) / b.integer()));
        return Value(a.number() / b.number());
      }
      unsupported("/", a, b);
    case BinOp::floordiv:
      if (nums) return py_floordiv(a, b);
      unsupported("//", a, b);
    case BinOp::mod:
      if (nums) return py_mod(a, b);
      if (a.is_string()) fail("TypeError", "the % string formatting operator is not supported by this renderer");
      unsupported("%", a, b);
    case BinOp::pow:
      if (nums) return py_pow(a, b);
      fail("TypeError", std::string("unsupported operand type(s) for ** or pow(): '") + type_name(a) + "' and '" +
                            type_name(b) + "'");
  }
  fail("TypeError", "unknown operator");
}

// ---- Interp -------------------------------------------------------------------------------------

void Interp::step(uint64_t n) {
  steps += n;
  if (steps > limits.max_steps)
    fail("LimitError", "the template took more than " + std::to_string(limits.max_steps) +
                           " steps (a loop that does not end, or too much work)");
}

void Interp::check_string(size_t bytes) const {
  if (bytes > limits.max_output_bytes)
    fail("LimitError", "a string of " + std::to_string(bytes) + " bytes would exceed the limit of " +
                           std::to_string(limits.max_output_bytes));
}

void Interp::emit(std::string_view s) {
  charge(s.size());
  if (out->size() + s.size() > limits.max_output_bytes)
    fail("LimitError", "the output would exceed " + std::to_string(limits.max_output_bytes) + " bytes");
  out->append(s);
}

const Value* Interp::lookup(const std::string& id) const {
  for (const Scope* s = scope.get(); s; s = s->parent.get()) {
    auto it = s->vars.find(id);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

Value evaluate(Interp& in, const Expr& e) {
  return at_node(in, e, [&] { return e.eval(in); });
}

Flow execute(Interp& in, const Body& body) {
  for (const StmtPtr& s : body) {
    const Flow f = at_node(in, *s, [&] { return s->exec(in); });
    if (f != Flow::normal) return f;
  }
  return Flow::normal;
}

std::string capture(Interp& in, const Body& body, std::shared_ptr<Scope> scope) {
  std::string text;
  ScopeGuard guard(in, std::move(scope));
  struct Redirect {
    Interp& in;
    std::string* out;
    ~Redirect() { in.out = out; }
  } redirect{in, std::exchange(in.out, &text)};
  execute(in, body);
  return text;
}

// ---- expressions --------------------------------------------------------------------------------

Value Name::eval(Interp& in) const {
  if (const Value* v = in.lookup(name)) return *v;
  return Value::undefined("'" + name + "' is undefined");
}

Value ListExpr::eval(Interp& in) const {
  std::vector<Value> v;
  v.reserve(items.size());
  for (const ExprPtr& e : items) v.push_back(evaluate(in, *e));
  return in.make_list(std::move(v), tuple ? ListKind::tuple : ListKind::list);
}

Value DictExpr::eval(Interp& in) const {
  Dict d;
  for (const auto& [k, v] : items) {
    Value key = evaluate(in, *k);
    d.set(std::move(key), evaluate(in, *v));
  }
  return make_dict(std::move(d), in.limits.max_value_depth);
}

Value Getattr::eval(Interp& in) const { return get_attr(in, evaluate(in, *object), attr); }

Value SliceExpr::eval(Interp&) const { fail("TypeError", "a slice (a:b) can only be used inside [ ]"); }

Value Getitem::eval(Interp& in) const {
  const Value obj = evaluate(in, *object);
  if (const auto* s = dynamic_cast<const SliceExpr*>(key.get())) {
    auto part = [&](const ExprPtr& e) { return e ? evaluate(in, *e) : Value::none(); };
    const Value a = part(s->start), b = part(s->stop), c = part(s->step);
    return slice(in, obj, a, b, c);
  }
  return get_item(in, obj, evaluate(in, *key));
}

Args CallArgs::evaluate(Interp& in) const {
  Args a;
  for (const ExprPtr& e : pos) a.pos.push_back(detail::evaluate(in, *e));
  for (const auto& [k, e] : kw) a.kw.emplace_back(k, detail::evaluate(in, *e));
  return a;
}

Value Call::eval(Interp& in) const {
  const Value f = evaluate(in, *callee);
  return call_value(in, f, args.evaluate(in));
}

Value Filter::eval(Interp& in) const {
  const Value v = value ? evaluate(in, *value) : *in.filter_input;
  const FilterFn f = find_filter(name);
  if (!f) fail("TemplateAssertionError", "No filter named '" + name + "'.");
  return f(in, v, args.evaluate(in));
}

Value Test::eval(Interp& in) const {
  const Value v = evaluate(in, *value);
  const TestFn f = find_test(name);
  if (!f) fail("TemplateAssertionError", "No test named '" + name + "'.");
  return Value(f(in, v, args.evaluate(in)));
}

Value Unary::eval(Interp& in) const {
  const Value v = evaluate(in, *operand);
  if (op == not_) return Value(!truthy(v));
  if (v.is_undefined()) undefined_fail(v);
  if (v.is_int()) {
    if (op == pos) return Value(v.integer());
    if (v.integer() == std::numeric_limits<int64_t>::min()) overflow();
    return Value(-v.integer());
  }
  if (v.is(Value::Type::floating)) return Value(op == pos ? v.number() : -v.number());
  fail("TypeError", std::string("bad operand type for unary ") + (op == pos ? "+" : "-") + ": '" + type_name(v) + "'");
}

Value Binary::eval(Interp& in) const {
  const Value a = evaluate(in, *left);
  const Value b = evaluate(in, *right);
  return arith(in, op, a, b);
}

Value Logic::eval(Interp& in) const {
  Value a = evaluate(in, *left);
  if (truthy(a) != is_and) return a;
  return evaluate(in, *right);
}

Value Concat::eval(Interp& in) const {
  std::string s;
  for (const ExprPtr& p : parts) {
    const std::string piece = to_str(evaluate(in, *p), in.limits.max_output_bytes);
    in.check_string(s.size() + piece.size());
    in.charge(piece.size());
    s += piece;
  }
  return Value(std::move(s));
}

Value Compare::eval(Interp& in) const {
  Value a = evaluate(in, *first);
  for (const auto& [op, e] : rest) {
    Value b = evaluate(in, *e);
    bool r = false;
    switch (op) {
      case CmpOp::eq: r = equal(a, b); break;
      case CmpOp::ne: r = !equal(a, b); break;
      case CmpOp::lt: r = less(a, b, "<"); break;
      case CmpOp::le: r = less(a, b, "<="); break;
      case CmpOp::gt: r = less(a, b, ">"); break;
      case CmpOp::ge: r = less(a, b, ">="); break;
      case CmpOp::in: r = contains(in, b, a); break;
      case CmpOp::not_in: r = !contains(in, b, a); break;
    }
    if (!r) return Value(false);
    a = std::move(b);
  }
  return Value(true);
}

Value CondExpr::eval(Interp& in) const {
  if (truthy(evaluate(in, *test))) return evaluate(in, *then);
  if (otherwise) return evaluate(in, *otherwise);
  return Value::undefined("the inline if-expression on line " + std::to_string(line) +
                          " evaluated to false and no else section was defined.");
}

// ---- statements ---------------------------------------------------------------------------------

namespace {

void assign(Interp& in, Scope& scope, const Target& t, const Value& v) {
  switch (t.kind) {
    case Target::name: scope.vars[t.id] = v; return;
    case Target::ns_attr: {
      const Value* ns = in.lookup(t.id);
      if (!ns || !ns->is(Value::Type::ns)) fail("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
      ns->ns()->attrs.set(Value(t.attr), v);
      return;
    }
    case Target::tuple: {
      const std::vector<Value> items = to_vector(in, v);
      const size_t n = t.items.size();
      if (items.size() < n)
        fail("ValueError", "not enough values to unpack (expected " + std::to_string(n) + ", got " +
                               std::to_string(items.size()) + ")");
      if (items.size() > n) fail("ValueError", "too many values to unpack (expected " + std::to_string(n) + ")");
      for (size_t i = 0; i < n; ++i) assign(in, scope, t.items[i], items[i]);
      return;
    }
  }
}

}  // namespace

Flow Text::exec(Interp& in) const {
  in.emit(text);
  return Flow::normal;
}

Flow Print::exec(Interp& in) const {
  in.emit(to_str(evaluate(in, *expr), in.limits.max_output_bytes));
  return Flow::normal;
}

Flow If::exec(Interp& in) const {
  for (const auto& [test, body] : branches)
    if (truthy(evaluate(in, *test))) return execute(in, body);
  return execute(in, otherwise);
}

Flow For::exec(Interp& in) const {
  const Value seq = evaluate(in, *iterable);
  auto items = std::make_shared<std::vector<Value>>();
  if (filter) {  // the loop variables are set while the filter looks at each item
    auto probe = std::make_shared<Scope>(in.scope);
    ScopeGuard guard(in, probe);
    iterate(in, seq, [&](const Value& x) {
      in.step();
      assign(in, *probe, target, x);
      if (truthy(evaluate(in, *filter))) items->push_back(x);
      return true;
    });
  } else {
    iterate(in, seq, [&](const Value& x) {
      in.step();
      items->push_back(x);
      return true;
    });
  }
  if (items->empty()) {
    ScopeGuard guard(in, std::make_shared<Scope>(in.scope));
    return execute(in, otherwise);
  }
  auto loop = std::make_shared<Loop>();
  loop->items = items;
  struct Forget {  // loop.changed(loop) would make a cycle
    std::shared_ptr<Loop> loop;
    ~Forget() { loop->last_changed.reset(); }
  } forget{loop};
  const Value loop_value(loop);
  ScopeGuard guard(in, in.scope);
  const std::shared_ptr<Scope>& outer = guard.outer();
  for (size_t i = 0; i < items->size(); ++i) {  // each iteration has its own variables
    in.step();
    loop->index0 = i;
    auto scope = std::make_shared<Scope>(outer);
    assign(in, *scope, target, (*items)[i]);
    scope->vars["loop"] = loop_value;
    in.scope = std::move(scope);
    const Flow f = execute(in, body);
    if (f == Flow::break_loop) break;
  }
  return Flow::normal;
}

Flow Set::exec(Interp& in) const {
  assign(in, *in.scope, target, evaluate(in, *value));
  return Flow::normal;
}

namespace {

// A block's text through a filter chain ({% set x | f %}, {% filter f %}).
Value filter_text(Interp& in, const Expr& filter, const Value& text) {
  struct Input {
    Interp& in;
    const Value* saved;
    ~Input() { in.filter_input = saved; }
  } input{in, std::exchange(in.filter_input, &text)};
  return evaluate(in, filter);
}

}  // namespace

Flow SetBlock::exec(Interp& in) const {
  const Value text(capture(in, body, std::make_shared<Scope>(in.scope)));
  assign(in, *in.scope, target, filter ? filter_text(in, *filter, text) : text);
  return Flow::normal;
}

Flow FilterBlock::exec(Interp& in) const {
  const Value text(capture(in, body, std::make_shared<Scope>(in.scope)));
  in.emit(to_str(filter_text(in, *filter, text)));
  return Flow::normal;
}

Flow With::exec(Interp& in) const {
  auto scope = std::make_shared<Scope>(in.scope);
  for (const auto& [t, e] : assignments) assign(in, *scope, t, evaluate(in, *e));
  ScopeGuard guard(in, std::move(scope));
  return execute(in, body);
}

namespace {

// A macro (or a call block's caller) as a callable value: jinja2's argument rules. A macro sees
// the variables of the scope it was defined in. It is stored in that scope, so it holds it weakly
// (no cycle); the scope outlives every call but one through a macro put in a namespace and called
// after its loop iteration or macro call ended, which is an error.
Value make_macro(const std::string& name, std::shared_ptr<MacroSignature> sig, std::shared_ptr<Body> body,
                 const std::shared_ptr<Scope>& defined_in, bool weak) {
  auto f = std::make_shared<Function>();
  f->name = name;
  f->type_name = "Macro";
  std::weak_ptr<Scope> weak_scope = defined_in;
  std::shared_ptr<Scope> strong_scope = weak ? nullptr : defined_in;
  f->call = [name, sig, body, weak_scope, strong_scope](Interp& in, const Args& args) -> Value {
    if (in.call_depth >= in.limits.max_call_depth)
      fail("LimitError", "macro calls nest more than " + std::to_string(in.limits.max_call_depth) + " deep");
    std::shared_ptr<Scope> closure = strong_scope ? strong_scope : weak_scope.lock();
    if (!closure)
      fail("TemplateRuntimeError", "macro '" + name + "' is called after the loop or macro call that defined it ended");
    auto scope = std::make_shared<Scope>(closure);
    const size_t n = sig->params.size();
    std::vector<std::optional<Value>> bound(n);
    for (size_t i = 0; i < n && i < args.pos.size(); ++i) bound[i] = args.pos[i];
    std::vector<std::pair<std::string, Value>> rest_kw;
    std::optional<Value> caller;
    for (const auto& [k, v] : args.kw) {
      size_t i = args.pos.size();
      while (i < n && sig->params[i] != k) ++i;
      if (i < n) bound[i] = v;
      else if (k == "caller" && sig->uses_caller) caller = v;
      else rest_kw.emplace_back(k, v);
    }
    Dict kwargs;
    if (sig->uses_kwargs) {
      for (auto& [k, v] : rest_kw) kwargs.set(Value(k), v);
    } else if (!rest_kw.empty()) {
      if (rest_kw[0].first == "caller")
        fail("TypeError", "macro '" + name + "' was invoked with two values for the special caller argument. This is most likely a bug.");
      fail("TypeError", "macro '" + name + "' takes no keyword argument '" + rest_kw[0].first + "'");
    }
    std::vector<Value> varargs;
    if (args.pos.size() > n) {
      if (!sig->uses_varargs)
        fail("TypeError", "macro '" + name + "' takes not more than " + std::to_string(n) + " argument(s)");
      varargs.assign(args.pos.begin() + static_cast<std::ptrdiff_t>(n), args.pos.end());
    }
    ++in.call_depth;
    struct Leave {
      Interp& in;
      ~Leave() { --in.call_depth; }
    } leave{in};
    ScopeGuard guard(in, scope);  // defaults see the parameters before them
    const size_t first_default = n - sig->defaults.size();
    for (size_t i = 0; i < n; ++i) {
      if (!bound[i]) {
        if (i >= first_default) bound[i] = evaluate(in, *sig->defaults[i - first_default]);
        else bound[i] = Value::undefined("parameter '" + sig->params[i] + "' was not provided");
      }
      scope->vars[sig->params[i]] = *bound[i];
    }
    if (sig->uses_caller) scope->vars["caller"] = caller ? *caller : Value::undefined("No caller defined");
    if (sig->uses_varargs) scope->vars["varargs"] = in.make_list(std::move(varargs), ListKind::tuple);
    if (sig->uses_kwargs) scope->vars["kwargs"] = make_dict(std::move(kwargs), in.limits.max_value_depth);
    return Value(capture(in, *body, scope));
  };
  return Value(std::shared_ptr<const Function>(std::move(f)));
}

}  // namespace

Flow Macro::exec(Interp& in) const {
  in.assign(name, make_macro(name, sig, body, in.scope, true));
  return Flow::normal;
}

Flow CallBlock::exec(Interp& in) const {
  const Value callee = evaluate(in, *call->callee);
  Args args = call->args.evaluate(in);
  args.kw.emplace_back("caller", make_macro("caller", sig, body, in.scope, false));
  in.emit(to_str(call_value(in, callee, args)));
  return Flow::normal;
}

}  // namespace detail

// ---- Template -----------------------------------------------------------------------------------

struct Template::Impl {
  std::string name;
  Limits limits;
  detail::Body body;
};

Template::Template(std::string_view source, std::string name, Limits limits) {
  auto impl = std::make_shared<Impl>();
  impl->name = std::move(name);
  impl->limits = limits;
  impl->body = detail::parse_template(source, impl->name, impl->limits);
  impl_ = std::move(impl);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

const std::string& Template::name() const { return impl_->name; }

std::string Template::render(const json& variables, const RenderOptions& options) const {
  using namespace detail;
  const Impl& I = *impl_;
  if (!variables.is_object()) throw Error("TypeError", "the template variables must be a JSON object", I.name, 0, 0);
  Interp in(options.limits, I.name);
  in.now = options.now;
  auto globals = std::make_shared<Scope>(nullptr);
  add_globals(*globals);
  auto context = std::make_shared<Scope>(globals);
  try {
    for (const auto& [k, v] : variables.items()) context->vars[k] = from_json(v, options.limits.max_value_depth);
  } catch (const Fault& f) {
    throw Error(f.type, "the template variables: " + f.message, I.name, 0, 0);
  }
  in.scope = std::make_shared<Scope>(context);
  std::string out;
  in.out = &out;
  struct Cleanup {  // namespaces may refer to each other: break the cycles
    Interp& in;
    ~Cleanup() {
      for (auto& ns : in.namespaces) ns->attrs = Dict{};
    }
  } cleanup{in};
  try {
    execute(in, I.body);
  } catch (const Fault& f) {  // from outside any node (should not happen)
    throw Error(f.type, f.message, I.name, 0, 0);
  }
  return out;
}

}  // namespace pqvk::jinja
