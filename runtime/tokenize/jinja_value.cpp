#include "tokenize/jinja_value.h"

#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/locid.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "tokenize/utf8.h"

namespace pqvk::jinja::detail {

void fail(std::string type, std::string message) { throw Fault{std::move(type), std::move(message)}; }

namespace {

// repr() and json_dumps() recurse through values; namespaces can chain without bound.
constexpr int kMaxRecursion = 256;

void check_recursion(int depth) {
  if (depth > kMaxRecursion) fail("LimitError", "a value is nested more than " + std::to_string(kMaxRecursion) + " levels deep");
}

const std::string& empty_string() {
  static const std::string e;
  return e;
}

}  // namespace

// ---- Value ------------------------------------------------------------------------------------

const std::string& Value::undefined_message() const {
  const Undefined& u = std::get<Undefined>(v_);
  return u.message ? *u.message : empty_string();
}

const void* Value::identity() const {
  switch (type()) {
    case Type::string: return std::get<std::shared_ptr<const std::string>>(v_).get();
    case Type::list: return std::get<std::shared_ptr<const List>>(v_).get();
    case Type::dict: return std::get<std::shared_ptr<const Dict>>(v_).get();
    case Type::ns: return ns().get();
    case Type::function: return std::get<std::shared_ptr<const Function>>(v_).get();
    case Type::iterator: return iterator().get();
    case Type::loop: return loop().get();
    default: return nullptr;
  }
}

std::optional<Value> Iterator::next(Interp& in) {
  if (done) return std::nullopt;
  std::optional<Value> v = produce(in);
  if (!v) {
    done = true;
    produce = nullptr;  // release what the generator held
  }
  return v;
}

int value_depth(const Value& v) {
  if (v.is(Value::Type::list)) return v.list().depth;
  if (v.is(Value::Type::dict)) return v.dict().depth;
  return 0;
}

Value make_list(std::vector<Value> items, ListKind kind, int max_depth) {
  auto l = std::make_shared<List>();
  int d = 0;
  for (const Value& v : items) d = std::max(d, value_depth(v));
  l->depth = d + 1;
  if (l->depth > max_depth) fail("LimitError", "lists and dicts are nested more than " + std::to_string(max_depth) + " levels deep");
  l->items = std::move(items);
  l->kind = kind;
  return Value(std::shared_ptr<const List>(std::move(l)));
}

Value make_dict(Dict d, int max_depth) {
  int depth = 0;
  for (const auto& [k, v] : d.items) depth = std::max({depth, value_depth(k), value_depth(v)});
  d.depth = depth + 1;
  if (d.depth > max_depth) fail("LimitError", "lists and dicts are nested more than " + std::to_string(max_depth) + " levels deep");
  return Value(std::make_shared<const Dict>(std::move(d)));
}

namespace {

bool hashable(const Value& v) {
  switch (v.type()) {
    case Value::Type::dict: return false;
    case Value::Type::list: {
      const List& l = v.list();
      if (l.kind != ListKind::tuple && l.kind != ListKind::range) return false;
      return std::all_of(l.items.begin(), l.items.end(), hashable);
    }
    default: return true;
  }
}

}  // namespace

const Value* Dict::find(const Value& key) const {
  if (key.is_string()) {
    auto it = by_string.find(key.str());
    return it == by_string.end() ? nullptr : &items[it->second].second;
  }
  if (!hashable(key)) fail("TypeError", std::string("unhashable type: '") + type_name(key) + "'");
  for (const auto& [k, v] : items)
    if (!k.is_string() && equal(k, key)) return &v;
  return nullptr;
}

void Dict::set(Value key, Value value) {
  if (key.is_string()) {
    auto [it, fresh] = by_string.emplace(key.str(), items.size());
    if (!fresh) {
      items[it->second].second = std::move(value);
      return;
    }
    items.emplace_back(std::move(key), std::move(value));
    return;
  }
  if (!hashable(key)) fail("TypeError", std::string("unhashable type: '") + type_name(key) + "'");
  for (auto& [k, v] : items)
    if (!k.is_string() && equal(k, key)) {
      v = std::move(value);
      return;
    }
  items.emplace_back(std::move(key), std::move(value));
}

// ---- type names -------------------------------------------------------------------------------

const char* type_name(const Value& v) {
  switch (v.type()) {
    case Value::Type::undefined: return "Undefined";
    case Value::Type::none: return "NoneType";
    case Value::Type::boolean: return "bool";
    case Value::Type::integer: return "int";
    case Value::Type::floating: return "float";
    case Value::Type::string: return "str";
    case Value::Type::list:
      switch (v.list().kind) {
        case ListKind::list: return "list";
        case ListKind::tuple: return "tuple";
        case ListKind::range: return "range";
        case ListKind::dict_items: return "dict_items";
        case ListKind::dict_keys: return "dict_keys";
        case ListKind::dict_values: return "dict_values";
      }
      return "list";
    case Value::Type::dict: return "dict";
    case Value::Type::ns: return "Namespace";
    case Value::Type::function: return v.function().type_name.c_str();
    case Value::Type::iterator: return v.iterator()->type_name.c_str();
    case Value::Type::loop: return "LoopContext";
  }
  return "object";
}

std::string object_type_repr(const Value& v) {
  switch (v.type()) {
    case Value::Type::none: return "None";
    case Value::Type::undefined: return "jinja2.runtime.Undefined object";
    case Value::Type::ns: return "jinja2.utils.Namespace object";
    case Value::Type::loop: return "jinja2.runtime.LoopContext object";
    case Value::Type::function:
      if (v.function().type_name == "Macro") return "jinja2.runtime.Macro object";
      return v.function().type_name + " object";
    default: return std::string(type_name(v)) + " object";
  }
}

// ---- truth, str, repr -------------------------------------------------------------------------

bool truthy(const Value& v) {
  switch (v.type()) {
    case Value::Type::undefined:
    case Value::Type::none: return false;
    case Value::Type::boolean: return v.boolean();
    case Value::Type::integer: return v.integer() != 0;
    case Value::Type::floating: return v.number() != 0.0;
    case Value::Type::string: return !v.str().empty();
    case Value::Type::list: return !v.list().items.empty();
    case Value::Type::dict: return !v.dict().items.empty();
    case Value::Type::loop: return v.loop()->items && !v.loop()->items->empty();
    default: return true;
  }
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view s(buf, static_cast<size_t>(r.ptr - buf));
  std::string sign;
  if (!s.empty() && s[0] == '-') {
    sign = "-";
    s.remove_prefix(1);
  }
  const size_t e = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e))
    if (c != '.') digits += c;
  int exp = 0;
  std::from_chars(s.data() + e + 1 + (s[e + 1] == '+' ? 1 : 0), s.data() + s.size(), exp);
  const int decpt = exp + 1;  // digits[0] is at 10^(decpt - 1)
  const int n = static_cast<int>(digits.size());
  std::string out = sign;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
    } else if (decpt >= n) {
      out += digits + std::string(static_cast<size_t>(decpt - n), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
    }
  } else {
    out += digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    const int x = decpt - 1;
    out += x < 0 ? "e-" : "e+";
    const std::string xs = std::to_string(std::abs(x));
    out += (xs.size() < 2 ? "0" : "") + xs;
  }
  return out;
}

namespace {

bool py_isprintable(char32_t c) {
  if (c == ' ') return true;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR: return false;
    default: return true;
  }
}

void append_hex(std::string& out, uint32_t v, int digits) {
  static const char* hex = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) out += hex[(v >> (4 * i)) & 0xF];
}

// repr() into `out`, which must not grow past `max` bytes (a list holding one long string many
// times is small, its repr need not be).
void repr_into(std::string& out, const Value& v, int depth, size_t max);

void check_size(const std::string& out, size_t max) {
  if (out.size() > max)
    fail("LimitError", "a string would exceed " + std::to_string(max) + " bytes (the repr() or str() of a value)");
}

void repr_items(std::string& out, const std::vector<Value>& items, int depth, size_t max) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    repr_into(out, items[i], depth + 1, max);
  }
}

void repr_dict(std::string& out, const Dict& d, int depth, size_t max) {
  out += '{';
  for (size_t i = 0; i < d.items.size(); ++i) {
    if (i) out += ", ";
    repr_into(out, d.items[i].first, depth + 1, max);
    out += ": ";
    repr_into(out, d.items[i].second, depth + 1, max);
  }
  out += '}';
}

void repr_into(std::string& out, const Value& v, int depth, size_t max) {
  check_recursion(depth);
  switch (v.type()) {
    case Value::Type::undefined: out += "Undefined"; break;
    case Value::Type::string: out += repr_string(v.str()); break;
    case Value::Type::list: {
      const List& l = v.list();
      static const char* open[] = {"[", "(", "", "dict_items([", "dict_keys([", "dict_values(["};
      static const char* close[] = {"]", ")", "", "])", "])", "])"};
      const auto k = static_cast<size_t>(l.kind);
      if (l.kind == ListKind::range) {
        out += "range(" + std::to_string(l.range_start) + ", " + std::to_string(l.range_stop) +
               (l.range_step == 1 ? "" : ", " + std::to_string(l.range_step)) + ")";
        break;
      }
      out += open[k];
      repr_items(out, l.items, depth, max);
      out += l.kind == ListKind::tuple && l.items.size() == 1 ? ",)" : close[k];
      break;
    }
    case Value::Type::dict: repr_dict(out, v.dict(), depth, max); break;
    case Value::Type::ns:
      out += "<Namespace ";
      repr_dict(out, v.ns()->attrs, depth, max);
      out += ">";
      break;
    default: out += to_str(v, max);
  }
  check_size(out, max);
}

}  // namespace

std::string repr_string(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : code_points(s)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      out += "\\x";
      append_hex(out, c, 2);
    } else if (c < 0x7F || py_isprintable(c)) {
      tokenize::utf8_append(out, c);
    } else if (c <= 0xFF) {
      out += "\\x";
      append_hex(out, c, 2);
    } else if (c <= 0xFFFF) {
      out += "\\u";
      append_hex(out, c, 4);
    } else {
      out += "\\U";
      append_hex(out, c, 8);
    }
  }
  out += quote;
  return out;
}

std::string repr(const Value& v, size_t max_bytes) {
  std::string out;
  repr_into(out, v, 0, max_bytes);
  return out;
}

std::string to_str(const Value& v, size_t max_bytes) {
  switch (v.type()) {
    case Value::Type::undefined: return "";
    case Value::Type::none: return "None";
    case Value::Type::boolean: return v.boolean() ? "True" : "False";
    case Value::Type::integer: return std::to_string(v.integer());
    case Value::Type::floating: return float_repr(v.number());
    case Value::Type::string: return v.str();
    case Value::Type::function: {
      const Function& f = v.function();
      if (f.type_name == "Macro") return "<Macro " + f.name + ">";
      return "<" + f.type_name + " " + f.name + ">";
    }
    case Value::Type::iterator: return "<" + v.iterator()->type_name + " object>";
    case Value::Type::loop: {
      const Loop& l = *v.loop();
      return "<LoopContext " + std::to_string(l.index0 + 1) + "/" + std::to_string(l.items ? l.items->size() : 0) + ">";
    }
    default: return repr(v, max_bytes);
  }
}

// ---- comparison -------------------------------------------------------------------------------

namespace {

// i < d and d < i exactly, as Python compares an int with a float.
bool int_less_double(int64_t i, double d) {
  if (std::isnan(d)) return false;
  const double c = std::ceil(d);
  if (c >= 9223372036854775808.0) return true;
  if (c < -9223372036854775808.0) return false;
  return i < static_cast<int64_t>(c);
}
bool double_less_int(double d, int64_t i) {
  if (std::isnan(d)) return false;
  const double f = std::floor(d);
  if (f >= 9223372036854775808.0) return false;
  if (f < -9223372036854775808.0) return true;
  return static_cast<int64_t>(f) < i;
}

bool numbers_equal(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int()) return a.integer() == b.integer();
  if (a.is(Value::Type::floating) && b.is(Value::Type::floating)) return a.number() == b.number();
  const int64_t i = a.is_int() ? a.integer() : b.integer();
  const double d = a.is_int() ? b.number() : a.number();
  return !int_less_double(i, d) && !double_less_int(d, i) && !std::isnan(d);
}

bool numbers_less(const Value& a, const Value& b) {
  if (a.is_int() && b.is_int()) return a.integer() < b.integer();
  if (a.is(Value::Type::floating) && b.is(Value::Type::floating)) return a.number() < b.number();
  if (a.is_int()) return int_less_double(a.integer(), b.number());
  return double_less_int(a.number(), b.integer());
}

bool sequence_kind(const List& l) { return l.kind == ListKind::list || l.kind == ListKind::tuple; }

bool equal_at(const Value& a, const Value& b, int depth);

bool lists_equal(const List& a, const List& b, int depth) {
  if (a.kind != b.kind) return false;
  if (a.items.size() != b.items.size()) return false;
  for (size_t i = 0; i < a.items.size(); ++i)
    if (!equal_at(a.items[i], b.items[i], depth + 1)) return false;
  return true;
}

bool equal_at(const Value& a, const Value& b, int depth) {
  check_recursion(depth);
  if (a.is_number() && b.is_number()) return numbers_equal(a, b);
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Value::Type::undefined:
    case Value::Type::none: return true;
    case Value::Type::string: return a.str() == b.str();
    case Value::Type::list:
      if (a.list().kind == ListKind::dict_values) return a.identity() == b.identity();
      return lists_equal(a.list(), b.list(), depth);
    case Value::Type::dict: {
      const Dict& x = a.dict();
      const Dict& y = b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* w = y.find(k);
        if (!w || !equal_at(v, *w, depth + 1)) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

[[noreturn]] void not_orderable(const Value& a, const Value& b, const char* op) {
  if (a.is_undefined()) fail("UndefinedError", a.undefined_message());
  if (b.is_undefined()) fail("UndefinedError", b.undefined_message());
  fail("TypeError", std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" +
                        type_name(b) + "'");
}

// -1, 0, 1 as Python orders a and b; TypeError (with `op`) when it does not.
int compare_at(const Value& a, const Value& b, const char* op, int depth) {
  check_recursion(depth);
  if (a.is_number() && b.is_number()) return numbers_less(a, b) ? -1 : numbers_less(b, a) ? 1 : 0;
  if (a.is_string() && b.is_string()) {
    const int c = a.str().compare(b.str());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is(Value::Type::list) && b.is(Value::Type::list) && a.list().kind == b.list().kind && sequence_kind(a.list())) {
    const auto& x = a.list().items;
    const auto& y = b.list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equal_at(x[i], y[i], depth + 1)) return compare_at(x[i], y[i], op, depth + 1);
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  not_orderable(a, b, op);
}

}  // namespace

bool equal(const Value& a, const Value& b) { return equal_at(a, b, 0); }

bool less(const Value& a, const Value& b, const char* op) {
  const std::string_view o(op);
  if (o == "<") return compare_at(a, b, op, 0) < 0;
  if (o == "<=") return compare_at(a, b, op, 0) <= 0;
  if (o == ">") return compare_at(a, b, op, 0) > 0;
  return compare_at(a, b, op, 0) >= 0;
}

int64_t length(const Value& v) {
  switch (v.type()) {
    case Value::Type::undefined: return 0;
    case Value::Type::string: {
      int64_t n = 0;
      for (char c : v.str()) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
      return n;
    }
    case Value::Type::list: return static_cast<int64_t>(v.list().items.size());
    case Value::Type::dict: return static_cast<int64_t>(v.dict().items.size());
    case Value::Type::loop: return v.loop()->items ? static_cast<int64_t>(v.loop()->items->size()) : 0;
    default: fail("TypeError", std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

// ---- iteration --------------------------------------------------------------------------------

void iterate(Interp& in, const Value& v, const std::function<bool(const Value&)>& visit) {
  switch (v.type()) {
    case Value::Type::undefined: return;
    case Value::Type::string: {
      const std::string& s = v.str();
      for (size_t i = 0; i < s.size();) {
        size_t n = 1;
        while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
        if (!visit(Value(s.substr(i, n)))) return;
        i += n;
      }
      return;
    }
    case Value::Type::list:
      for (const Value& x : v.list().items)
        if (!visit(x)) return;
      return;
    case Value::Type::dict:
      for (const auto& kv : v.dict().items)
        if (!visit(kv.first)) return;
      return;
    case Value::Type::iterator: {
      Iterator& it = *v.iterator();
      while (std::optional<Value> x = it.next(in))
        if (!visit(*x)) return;
      return;
    }
    default: fail("TypeError", std::string("'") + type_name(v) + "' object is not iterable");
  }
}

std::vector<Value> to_vector(Interp& in, const Value& v) {
  if (v.is(Value::Type::list)) return v.list().items;
  std::vector<Value> out;
  iterate(in, v, [&](const Value& x) {
    out.push_back(x);
    return true;
  });
  return out;
}

bool contains(Interp& in, const Value& container, const Value& item) {
  switch (container.type()) {
    case Value::Type::string:
      if (!item.is_string())
        fail("TypeError", std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      return container.str().find(item.str()) != std::string::npos;
    case Value::Type::dict: return container.dict().find(item) != nullptr;
    case Value::Type::list:
    case Value::Type::iterator:
    case Value::Type::undefined: {
      bool found = false;
      iterate(in, container, [&](const Value& x) {
        found = equal(x, item);
        return !found;
      });
      return found;
    }
    default: fail("TypeError", std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

// ---- JSON -------------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : code_points(s)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u";
          append_hex(out, c, 4);
        } else if (c < 0x7F || !ensure_ascii) {
          tokenize::utf8_append(out, c);
        } else if (c <= 0xFFFF) {
          out += "\\u";
          append_hex(out, c, 4);
        } else {
          const uint32_t v = c - 0x10000;
          out += "\\u";
          append_hex(out, 0xD800 + (v >> 10), 4);
          out += "\\u";
          append_hex(out, 0xDC00 + (v & 0x3FF), 4);
        }
    }
  }
  out += '"';
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return float_repr(d);
}

[[noreturn]] void not_serializable(const Value& v) {
  fail("TypeError", std::string("Object of type ") + type_name(v) + " is not JSON serializable");
}

void json_value(std::string& out, const Value& v, const JsonStyle& st, int level) {
  check_recursion(level);
  check_size(out, st.max_bytes);
  auto newline = [&](int indents) {
    if (!st.indent) return;
    out += '\n';
    for (int i = 0; i < indents; ++i) out += *st.indent;
  };
  auto open = [&](char c) {
    out += c;
    newline(level + 1);
  };
  auto separator = [&] {
    out += st.item_separator;
    newline(level + 1);
  };
  auto close = [&](char c) {
    newline(level);
    out += c;
  };
  switch (v.type()) {
    case Value::Type::none: out += "null"; return;
    case Value::Type::boolean: out += v.boolean() ? "true" : "false"; return;
    case Value::Type::integer: out += std::to_string(v.integer()); return;
    case Value::Type::floating: out += json_float(v.number()); return;
    case Value::Type::string: json_string(out, v.str(), st.ensure_ascii); return;
    case Value::Type::list: {
      const List& l = v.list();
      if (!sequence_kind(l)) not_serializable(v);
      if (l.items.empty()) {
        out += "[]";
        return;
      }
      open('[');
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) separator();
        json_value(out, l.items[i], st, level + 1);
      }
      close(']');
      return;
    }
    case Value::Type::dict: {
      const Dict& d = v.dict();
      if (d.items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : d.items) items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return less(a->first, b->first); });
      open('{');
      for (size_t i = 0; i < items.size(); ++i) {
        const Value& k = items[i]->first;
        std::string key;
        if (k.is_string()) key = k.str();
        else if (k.is(Value::Type::boolean)) key = k.boolean() ? "true" : "false";
        else if (k.is(Value::Type::integer)) key = std::to_string(k.integer());
        else if (k.is(Value::Type::floating)) key = json_float(k.number());
        else if (k.is_none()) key = "null";
        else fail("TypeError", std::string("keys must be str, int, float, bool or None, not ") + type_name(k));
        if (i) separator();
        json_string(out, key, st.ensure_ascii);
        out += st.key_separator;
        json_value(out, items[i]->second, st, level + 1);
      }
      close('}');
      return;
    }
    default: not_serializable(v);
  }
}

}  // namespace

std::string json_dumps(const Value& v, const JsonStyle& style) {
  std::string out;
  json_value(out, v, style, 0);
  check_size(out, style.max_bytes);
  return out;
}

Value from_json(const json& j, int max_depth) {
  switch (j.type()) {
    case json::value_t::null: return Value::none();
    case json::value_t::boolean: return Value(j.get<bool>());
    case json::value_t::number_integer: return Value(j.get<int64_t>());
    case json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("OverflowError", "the integer " + std::to_string(u) + " is too large (the renderer's integers are 64-bit)");
      return Value(static_cast<int64_t>(u));
    }
    case json::value_t::number_float: return Value(j.get<double>());
    case json::value_t::string: return Value(j.get<std::string>());
    case json::value_t::array: {
      if (max_depth <= 0) fail("LimitError", "the variables are nested too deeply");
      std::vector<Value> items;
      items.reserve(j.size());
      for (const json& x : j) items.push_back(from_json(x, max_depth - 1));
      return make_list(std::move(items), ListKind::list, std::numeric_limits<int>::max());
    }
    case json::value_t::object: {
      if (max_depth <= 0) fail("LimitError", "the variables are nested too deeply");
      Dict d;
      for (const auto& [k, x] : j.items()) d.set(Value(k), from_json(x, max_depth - 1));
      return make_dict(std::move(d), std::numeric_limits<int>::max());
    }
    default: fail("TypeError", "a JSON value of an unsupported type (binary)");
  }
}

// ---- strings ----------------------------------------------------------------------------------

std::u32string code_points(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const tokenize::Utf8Step st = tokenize::utf8_step(s, i);
    if (st.kind != tokenize::Utf8Step::complete) fail("ValueError", "a string is not valid UTF-8");
    out += st.code_point;
    i += st.length;
  }
  return out;
}

std::string utf8(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) tokenize::utf8_append(out, c);
  return out;
}

bool py_isspace(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: return true;
    default: return c >= 0x2000 && c <= 0x200A;
  }
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  const std::u32string cps = code_points(s);
  std::u32string set;
  if (chars) set = code_points(*chars);
  auto strip_me = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : py_isspace(c); };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_me(cps[b])) ++b;
  if (right)
    while (e > b && strip_me(cps[e - 1])) --e;
  return utf8(std::u32string_view(cps).substr(b, e - b));
}

namespace {

icu::UnicodeString to_icu(std::string_view s) {
  return icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
}
std::string from_icu(const icu::UnicodeString& u) {
  std::string out;
  u.toUTF8String(out);
  return out;
}

}  // namespace

std::string py_lower(std::string_view s) {
  icu::UnicodeString u = to_icu(s);
  u.toLower(icu::Locale::getRoot());
  return from_icu(u);
}

std::string py_upper(std::string_view s) {
  icu::UnicodeString u = to_icu(s);
  u.toUpper(icu::Locale::getRoot());
  return from_icu(u);
}

namespace {

// Python's islower() / isupper(): every cased character in that case, and at least one.
bool cased_all(std::string_view s, bool lower) {
  bool cased = false;
  for (char32_t c : code_points(s)) {
    const auto u = static_cast<UChar32>(c);
    const bool is_lower = u_hasBinaryProperty(u, UCHAR_LOWERCASE);
    const bool is_upper = u_hasBinaryProperty(u, UCHAR_UPPERCASE);
    const bool is_title = u_istitle(u);
    if (lower ? (is_upper || is_title) : (is_lower || is_title)) return false;
    if (lower ? is_lower : is_upper) cased = true;
  }
  return cased;
}

}  // namespace

bool py_islower(std::string_view s) { return cased_all(s, true); }
bool py_isupper(std::string_view s) { return cased_all(s, false); }

}  // namespace pqvk::jinja::detail
