// The renderer's values (runtime/tokenize/jinja.h) and Python's semantics for them: str(),
// repr(), truth, ==, <, len(), iteration, json.dumps. Internal to the renderer.
//
// Values are immutable and shared (copying one is cheap), as in the sandbox HuggingFace runs,
// except namespaces (namespace() objects, changed by {% set ns.attr = ... %}) and iterators
// (single pass, like Python's generators: select, map, reverse ... return them).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "tokenize/jinja.h"

namespace pqvk::jinja::detail {

// An error without a position yet: the evaluator adds the template's name, line and column of
// the innermost node it was evaluating. `type` is the Python exception class (jinja.h: Error).
struct Fault {
  std::string type;
  std::string message;
};
[[noreturn]] void fail(std::string type, std::string message);

struct List;
struct Dict;
struct Namespace;
struct Function;
struct Iterator;
struct Loop;

struct Undefined {
  // What an operation on this undefined value raises (UndefinedError), e.g. "'x' is undefined".
  std::shared_ptr<const std::string> message;
};
struct None {};

class Value {
 public:
  enum class Type : uint8_t { undefined, none, boolean, integer, floating, string, list, dict, ns, function, iterator, loop };

  Value() : v_(Undefined{}) {}
  static Value undefined(std::string message) { return Value(Undefined{std::make_shared<const std::string>(std::move(message))}); }
  static Value none() { return Value(None{}); }
  explicit Value(bool b) : v_(b) {}
  explicit Value(int64_t i) : v_(i) {}
  explicit Value(int i) : v_(static_cast<int64_t>(i)) {}
  explicit Value(double d) : v_(d) {}
  explicit Value(std::string s) : v_(std::make_shared<const std::string>(std::move(s))) {}
  explicit Value(const char* s) : Value(std::string(s)) {}
  explicit Value(std::shared_ptr<const List> l) : v_(std::move(l)) {}
  explicit Value(std::shared_ptr<const Dict> d) : v_(std::move(d)) {}
  explicit Value(std::shared_ptr<Namespace> n) : v_(std::move(n)) {}
  explicit Value(std::shared_ptr<const Function> f) : v_(std::move(f)) {}
  explicit Value(std::shared_ptr<Iterator> i) : v_(std::move(i)) {}
  explicit Value(std::shared_ptr<Loop> l) : v_(std::move(l)) {}

  Type type() const { return static_cast<Type>(v_.index()); }
  bool is(Type t) const { return type() == t; }
  bool is_undefined() const { return is(Type::undefined); }
  bool is_none() const { return is(Type::none); }
  bool is_string() const { return is(Type::string); }
  // int or bool (Python's bool is an int)
  bool is_int() const { return is(Type::integer) || is(Type::boolean); }
  bool is_number() const { return is_int() || is(Type::floating); }

  bool boolean() const { return std::get<bool>(v_); }
  int64_t integer() const { return is(Type::boolean) ? (boolean() ? 1 : 0) : std::get<int64_t>(v_); }
  double number() const { return is(Type::floating) ? std::get<double>(v_) : static_cast<double>(integer()); }
  const std::string& str() const { return *std::get<std::shared_ptr<const std::string>>(v_); }
  const List& list() const { return *std::get<std::shared_ptr<const List>>(v_); }
  const Dict& dict() const { return *std::get<std::shared_ptr<const Dict>>(v_); }
  const std::shared_ptr<Namespace>& ns() const { return std::get<std::shared_ptr<Namespace>>(v_); }
  const Function& function() const { return *std::get<std::shared_ptr<const Function>>(v_); }
  const std::shared_ptr<Iterator>& iterator() const { return std::get<std::shared_ptr<Iterator>>(v_); }
  const std::shared_ptr<Loop>& loop() const { return std::get<std::shared_ptr<Loop>>(v_); }
  const std::string& undefined_message() const;
  // Identity of the shared object behind a container, function or iterator (Python's `is`).
  const void* identity() const;

 private:
  explicit Value(Undefined u) : v_(std::move(u)) {}
  explicit Value(None n) : v_(n) {}
  std::variant<Undefined, None, bool, int64_t, double, std::shared_ptr<const std::string>, std::shared_ptr<const List>,
               std::shared_ptr<const Dict>, std::shared_ptr<Namespace>, std::shared_ptr<const Function>,
               std::shared_ptr<Iterator>, std::shared_ptr<Loop>>
      v_;
};

// list, tuple, range(...) and the views of dict.items() / keys() / values(): sequences that
// differ in repr(), equality and what may be done with them.
enum class ListKind : uint8_t { list, tuple, range, dict_items, dict_keys, dict_values };

struct List {
  std::vector<Value> items;
  ListKind kind = ListKind::list;
  int64_t range_start = 0, range_stop = 0, range_step = 1;  // kind range: its arguments, for repr()
  int depth = 1;                                            // containers nested, this one included
};

// Keys in insertion order; string keys indexed.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::unordered_map<std::string, size_t> by_string;
  int depth = 1;
  const Value* find(const Value& key) const;  // throws TypeError for an unhashable key
  void set(Value key, Value value);           // replaces the value of an existing key in place
};

struct Namespace {
  Dict attrs;
};

struct Interp;

// Positional and keyword arguments of a call.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Function {
  std::string name;       // for errors: "startswith", "macro 'render'", "range"
  std::string type_name;  // Python's type: "function", "builtin_function_or_method", "Macro"
  std::function<Value(Interp&, const Args&)> call;
};

// A single-pass iterator; next() returns nullopt at the end, and every time after.
struct Iterator {
  std::string type_name;  // "generator", "list_reverseiterator", ...
  std::function<std::optional<Value>(Interp&)> produce;
  bool done = false;
  std::optional<Value> next(Interp& in);
};

// The `loop` variable of a for loop.
struct Loop {
  std::shared_ptr<const std::vector<Value>> items;
  size_t index0 = 0;
  int depth0 = 0;
  std::optional<Value> last_changed;  // loop.changed()'s memory
};

// ---- constructors -----------------------------------------------------------------------------

// Throw LimitError when the nesting would exceed `max_depth`.
Value make_list(std::vector<Value> items, ListKind kind, int max_depth);
Value make_dict(Dict d, int max_depth);
int value_depth(const Value& v);

// ---- Python semantics -------------------------------------------------------------------------

const char* type_name(const Value& v);         // type(v).__name__: "str", "int", "NoneType", "dict", ...
std::string object_type_repr(const Value& v);  // jinja2's: "dict object", "None", "jinja2.utils.Namespace object"
bool truthy(const Value& v);
// What one str() / repr() / tojson may make at most unless told (LimitError beyond).
inline constexpr size_t kMaxText = size_t{64} << 20;
std::string to_str(const Value& v, size_t max_bytes = kMaxText);  // str(v) (an undefined value: "")
std::string repr(const Value& v, size_t max_bytes = kMaxText);
std::string repr_string(std::string_view s);   // repr() of a str
std::string float_repr(double d);
bool equal(const Value& a, const Value& b);
// a < b, <=, >, >= with Python's rules; TypeError "'<' not supported between instances of ..."
bool less(const Value& a, const Value& b, const char* op = "<");
int64_t length(const Value& v);                // len(v); TypeError when it has none

// The items of an iterable (a dict's keys, a string's characters); TypeError when it is not.
// `visit` returns false to stop early.
void iterate(Interp& in, const Value& v, const std::function<bool(const Value&)>& visit);
std::vector<Value> to_vector(Interp& in, const Value& v);
bool contains(Interp& in, const Value& container, const Value& item);  // `item in container`

// json.dumps(v, ensure_ascii, indent, separators, sort_keys) as HuggingFace's tojson calls it.
struct JsonStyle {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: one line
  std::string item_separator = ", ", key_separator = ": ";
  bool sort_keys = false;
  size_t max_bytes = kMaxText;  // LimitError beyond
};
std::string json_dumps(const Value& v, const JsonStyle& style);
// JSON input (the template variables) as values.
Value from_json(const json& j, int max_depth);

// ---- strings as Python sees them: code points ------------------------------------------------

std::u32string code_points(std::string_view utf8);
std::string utf8(std::u32string_view cps);
bool py_isspace(char32_t c);
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
std::string py_lower(std::string_view s);
std::string py_upper(std::string_view s);
bool py_islower(std::string_view s);
bool py_isupper(std::string_view s);

}  // namespace pqvk::jinja::detail
