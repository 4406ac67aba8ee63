// The renderer's built-ins, with jinja2's (and Python's) semantics: attribute and item access as
// the sandbox does it, methods of str / dict / list, filters, tests and globals.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "tokenize/jinja_ast.h"

namespace pqvk::jinja::detail {

Value arith(Interp& in, BinOp op, const Value& a, const Value& b);  // jinja_eval.cpp

namespace {

[[noreturn]] void undefined_fail(const Value& v) { fail("UndefinedError", v.undefined_message()); }

Value undefined_attr(const Value& obj, const std::string& attr) {
  return Value::undefined(repr_string(object_type_repr(obj)) + " has no attribute " + repr_string(attr));
}
Value undefined_element(const Value& obj, const Value& key) {
  return Value::undefined(object_type_repr(obj) + " has no element " + repr(key));
}

Value function(std::string name, std::function<Value(Interp&, const Args&)> call,
               std::string type = "builtin_function_or_method") {
  auto f = std::make_shared<Function>();
  f->name = std::move(name);
  f->type_name = std::move(type);
  f->call = std::move(call);
  return Value(std::shared_ptr<const Function>(std::move(f)));
}

Value generator(std::string type, std::function<std::optional<Value>(Interp&)> produce) {
  auto it = std::make_shared<Iterator>();
  it->type_name = std::move(type);
  it->produce = std::move(produce);
  return Value(std::move(it));
}

// The items of an iterable, one at a time, from the first call on (errors surface then, as
// Python's generators raise when consumed).
std::function<std::optional<Value>(Interp&)> items_of(Value v) {
  struct State {
    Value v;
    std::vector<Value> items;
    size_t next = 0;
    bool started = false;
  };
  auto st = std::make_shared<State>();
  st->v = std::move(v);
  return [st](Interp& in) -> std::optional<Value> {
    if (st->v.is(Value::Type::iterator)) return st->v.iterator()->next(in);
    if (!st->started) {
      st->started = true;
      if (!st->v.is(Value::Type::list)) st->items = to_vector(in, st->v);
    }
    const std::vector<Value>& items = st->v.is(Value::Type::list) ? st->v.list().items : st->items;
    if (st->next >= items.size()) return std::nullopt;
    return items[st->next++];
  };
}

int64_t as_index(const Value& v, const char* what) {
  if (v.is_int()) return v.integer();
  if (v.is_undefined()) undefined_fail(v);
  fail("TypeError", std::string("'") + type_name(v) + "' object cannot be interpreted as an integer" +
                        (std::strlen(what) ? std::string(" (") + what + ")" : ""));
}

std::string as_string_arg(const Value& v, const char* fname, const char* what = "argument") {
  if (v.is_string()) return v.str();
  if (v.is_undefined()) undefined_fail(v);
  fail("TypeError", std::string(fname) + "() " + what + " must be str, not " + type_name(v));
}

std::optional<std::string> opt_chars(const std::optional<Value>& v, const char* fname) {
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) fail("TypeError", std::string(fname) + " arg must be None or str");
  return v->str();
}

// ---- str methods --------------------------------------------------------------------------------

bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

std::vector<std::string> splitlines(std::string_view s, bool keepends) {
  const std::u32string cps = code_points(s);
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t i = 0; i < cps.size();) {
    if (!is_line_break(cps[i])) {
      ++i;
      continue;
    }
    size_t e = i + 1;
    if (cps[i] == '\r' && e < cps.size() && cps[e] == '\n') ++e;
    out.push_back(utf8(std::u32string_view(cps).substr(b, (keepends ? e : i) - b)));
    b = i = e;
  }
  if (b < cps.size()) out.push_back(utf8(std::u32string_view(cps).substr(b)));
  return out;
}

// str.split / rsplit
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (!sep) {
    std::u32string cps = code_points(s);
    if (from_right) std::reverse(cps.begin(), cps.end());
    size_t i = 0;
    while (true) {
      while (i < cps.size() && py_isspace(cps[i])) ++i;
      if (i >= cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {  // the rest, as it is
        std::u32string rest = cps.substr(i);
        if (from_right) std::reverse(rest.begin(), rest.end());
        out.push_back(utf8(rest));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !py_isspace(cps[j])) ++j;
      std::u32string word = cps.substr(i, j - i);
      if (from_right) std::reverse(word.begin(), word.end());
      out.push_back(utf8(word));
      i = j;
    }
    if (from_right) std::reverse(out.begin(), out.end());
    return out;
  }
  if (sep->empty()) fail("ValueError", "empty separator");
  if (!from_right) {
    size_t b = 0;
    for (size_t at = s.find(*sep); at != std::string_view::npos && (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit);
         at = s.find(*sep, b)) {
      out.emplace_back(s.substr(b, at - b));
      b = at + sep->size();
    }
    out.emplace_back(s.substr(b));
    return out;
  }
  size_t e = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    if (e < sep->size()) break;
    const size_t at = s.rfind(*sep, e - sep->size());
    if (at == std::string_view::npos) break;
    out.emplace_back(s.substr(at + sep->size(), e - at - sep->size()));
    e = at;
  }
  out.emplace_back(s.substr(0, e));
  std::reverse(out.begin(), out.end());
  return out;
}

// str.replace; LimitError when the result would exceed `max` bytes (checked before it is made).
std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count, size_t max) {
  size_t n = 0;  // replacements
  if (old.empty()) {
    n = static_cast<size_t>(length(Value(s))) + 1;
  } else {
    for (size_t at = s.find(old); at != std::string::npos; at = s.find(old, at + old.size())) ++n;
  }
  if (count >= 0) n = std::min(n, static_cast<size_t>(count));
  if (with.size() > old.size() && n > 0 && (with.size() - old.size()) > (max - std::min(max, s.size())) / n)
    fail("LimitError", "replace() would make a string of more than " + std::to_string(max) + " bytes");
  std::string out;
  size_t done = 0;
  if (old.empty()) {
    const std::u32string cps = code_points(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (done < n) {
        out += with;
        ++done;
      }
      if (i < cps.size()) out += utf8(std::u32string(1, cps[i]));
    }
    return out;
  }
  size_t b = 0;
  for (size_t at = s.find(old); at != std::string::npos && done < n; at = s.find(old, b), ++done) {
    out.append(s, b, at - b);
    out += with;
    b = at + old.size();
  }
  out.append(s, b, std::string::npos);
  return out;
}

// str.title(): a cased character after an uncased one in title case, the others in lower case.
std::string title_method(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t c : code_points(s)) {
    const std::string ch = utf8(std::u32string(1, c));
    if (prev_cased) {
      out += py_lower(ch);
    } else {
      icu::UnicodeString u = icu::UnicodeString::fromUTF8(ch);
      u.toTitle(nullptr, icu::Locale::getRoot());
      u.toUTF8String(out);
    }
    const auto uc = static_cast<UChar32>(c);
    prev_cased = u_hasBinaryProperty(uc, UCHAR_LOWERCASE) || u_hasBinaryProperty(uc, UCHAR_UPPERCASE) || u_istitle(uc);
  }
  return out;
}

// jinja2's title filter: each run between '-', whitespace, '(', '{', '[' and '<' starts upper case,
// the rest lower case.
std::string title_filter(const std::string& s) {
  std::string out;
  bool word_start = true;
  for (char32_t c : code_points(s)) {
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
    const std::string ch = utf8(std::u32string(1, c));
    out += sep ? ch : word_start ? py_upper(ch) : py_lower(ch);
    word_start = sep;
  }
  return out;
}

std::string capitalize(const std::string& s) {
  const std::u32string cps = code_points(s);
  if (cps.empty()) return s;
  return py_upper(utf8(cps.substr(0, 1))) + py_lower(utf8(cps.substr(1)));
}

// Python's optional start / end of startswith, find, count: code point offsets, clamped.
std::pair<size_t, size_t> str_range(const std::u32string& cps, const std::optional<Value>& start, const std::optional<Value>& end) {
  const int64_t n = static_cast<int64_t>(cps.size());
  auto clamp = [&](const std::optional<Value>& v, int64_t dflt) {
    if (!v || v->is_none()) return dflt;
    int64_t i = as_index(*v, "slice index");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  return {static_cast<size_t>(clamp(start, 0)), static_cast<size_t>(clamp(end, n))};
}

Value str_method(Interp& in, const std::string& self_str, const std::string& m, const Args& args) {
  const Value self(self_str);
  auto list_of = [&](const std::vector<std::string>& parts) {
    std::vector<Value> v;
    v.reserve(parts.size());
    for (const std::string& p : parts) v.emplace_back(p);
    return in.make_list(std::move(v));
  };
  in.charge(self_str.size());
  if (m == "startswith" || m == "endswith") {
    auto a = bind_args(m.c_str(), args, {"prefix", "start", "end"});
    if (!a[0]) fail("TypeError", m + "() takes at least 1 argument (0 given)");
    std::vector<std::string> affixes;
    if (a[0]->is_string()) {
      affixes.push_back(a[0]->str());
    } else if (a[0]->is(Value::Type::list) && a[0]->list().kind == ListKind::tuple) {
      for (const Value& x : a[0]->list().items) {
        if (!x.is_string())
          fail("TypeError", "tuple for " + m + " must only contain str, not " + type_name(x));
        affixes.push_back(x.str());
      }
    } else {
      fail("TypeError", m + " first arg must be str or a tuple of str, not " + type_name(*a[0]));
    }
    const std::u32string cps = code_points(self_str);
    const auto [b, e] = str_range(cps, a[1], a[2]);
    const std::u32string part = b <= e ? cps.substr(b, e - b) : std::u32string();
    if (b > cps.size()) return Value(false);
    for (const std::string& x : affixes) {
      const std::u32string ax = code_points(x);
      if (ax.size() > part.size()) continue;
      if (m == "startswith" ? part.compare(0, ax.size(), ax) == 0 : part.compare(part.size() - ax.size(), ax.size(), ax) == 0)
        return Value(true);
    }
    return Value(false);
  }
  if (m == "split" || m == "rsplit") {
    auto a = bind_args(m.c_str(), args, {"sep", "maxsplit"});
    const std::optional<std::string> sep =
        a[0] && !a[0]->is_none() ? std::optional<std::string>(as_string_arg(*a[0], m.c_str())) : std::nullopt;
    const int64_t maxsplit = a[1] ? as_index(*a[1], "") : -1;
    return list_of(split(self_str, sep, maxsplit, m == "rsplit"));
  }
  if (m == "splitlines") {
    auto a = bind_args("splitlines", args, {"keepends"});
    return list_of(splitlines(self_str, a[0] && truthy(*a[0])));
  }
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    auto a = bind_args(m.c_str(), args, {"chars"});
    return Value(py_strip(self_str, opt_chars(a[0], m.c_str()), m != "rstrip", m != "lstrip"));
  }
  if (m == "replace") {
    auto a = bind_args("replace", args, {"old", "new", "count"});
    if (!a[0] || !a[1]) fail("TypeError", "replace expected at least 2 arguments");
    const std::string r = replace(self_str, as_string_arg(*a[0], "replace", "argument 1"),
                                  as_string_arg(*a[1], "replace", "argument 2"), a[2] ? as_index(*a[2], "") : -1,
                                  in.limits.max_output_bytes);
    in.charge(r.size());
    return Value(r);
  }
  if (m == "upper" || m == "lower" || m == "capitalize" || m == "title") {
    bind_args(m.c_str(), args, {});
    return Value(m == "upper" ? py_upper(self_str) : m == "lower" ? py_lower(self_str)
                 : m == "title" ? title_method(self_str) : capitalize(self_str));
  }
  if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
    auto a = bind_args(m.c_str(), args, {"sub", "start", "end"});
    if (!a[0]) fail("TypeError", m + "() takes at least 1 argument (0 given)");
    const std::u32string cps = code_points(self_str);
    const std::u32string sub = code_points(as_string_arg(*a[0], m.c_str()));
    const auto [b, e] = str_range(cps, a[1], a[2]);
    if (m == "count") {
      if (b > e) return Value(int64_t{0});
      if (sub.empty()) return Value(static_cast<int64_t>(e - b + 1));
      int64_t n = 0;
      for (size_t at = cps.find(sub, b); at != std::u32string::npos && at + sub.size() <= e; at = cps.find(sub, at + sub.size())) ++n;
      return Value(n);
    }
    size_t found = std::u32string::npos;
    if (b <= e && sub.size() <= e - b) {
      const std::u32string part = cps.substr(b, e - b);
      const size_t at = m[0] == 'r' ? part.rfind(sub) : part.find(sub);
      if (at != std::u32string::npos) found = b + at;
    }
    if (found == std::u32string::npos) {
      if (m == "index" || m == "rindex") fail("ValueError", "substring not found");
      return Value(int64_t{-1});
    }
    return Value(static_cast<int64_t>(found));
  }
  if (m == "join") {
    auto a = bind_args("join", args, {"iterable"});
    if (!a[0]) fail("TypeError", "join() takes exactly one argument (0 given)");
    std::string out;
    size_t i = 0;
    iterate(in, *a[0], [&](const Value& x) {
      if (!x.is_string())
        fail("TypeError", "sequence item " + std::to_string(i) + ": expected str instance, " + type_name(x) + " found");
      if (i++) out += self_str;
      out += x.str();
      in.check_string(out.size());
      in.charge(x.str().size());
      return true;
    });
    return Value(std::move(out));
  }
  if (m == "isspace") {
    bind_args("isspace", args, {});
    const std::u32string cps = code_points(self_str);
    return Value(!cps.empty() && std::all_of(cps.begin(), cps.end(), py_isspace));
  }
  if (m == "islower" || m == "isupper") {
    bind_args(m.c_str(), args, {});
    return Value(m == "islower" ? py_islower(self_str) : py_isupper(self_str));
  }
  fail("AttributeError", "'str' object has no attribute '" + m + "'");
}

const char* const kStrMethods[] = {"startswith", "endswith", "split",  "rsplit", "splitlines", "strip", "lstrip", "rstrip",
                                   "replace",    "upper",    "lower",  "capitalize", "title", "find",   "rfind", "index",  "rindex",
                                   "count",      "join",     "isspace", "islower", "isupper"};
const char* const kDictMethods[] = {"items", "keys", "values", "get"};
const char* const kDictMutators[] = {"clear", "pop", "popitem", "setdefault", "update"};
const char* const kListMethods[] = {"count", "index"};
const char* const kListMutators[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};

template <size_t N>
bool one_of(const std::string& s, const char* const (&names)[N]) {
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return s == n; });
}

// The sandbox refuses methods that change a list or dict: calling one is a SecurityError.
Value unsafe_method(const Value& obj, const std::string& m) {
  const std::string msg = "access to attribute '" + m + "' of '" + type_name(obj) + "' object is unsafe.";
  return function(m, [msg](Interp&, const Args&) -> Value { fail("SecurityError", msg); });
}

Value dict_method(Interp& in, const Value& self, const std::string& m, const Args& args) {
  const Dict& d = self.dict();
  if (m == "get") {
    auto a = bind_args("get", args, {"key", "default"});
    if (!a[0]) fail("TypeError", "get expected at least 1 argument, got 0");
    const Value* v = d.find(*a[0]);
    return v ? *v : (a[1] ? *a[1] : Value::none());
  }
  bind_args(m.c_str(), args, {});
  std::vector<Value> out;
  out.reserve(d.items.size());
  for (const auto& [k, v] : d.items) {
    if (m == "keys") out.push_back(k);
    else if (m == "values") out.push_back(v);
    else out.push_back(in.make_list({k, v}, ListKind::tuple));
  }
  return in.make_list(std::move(out), m == "keys" ? ListKind::dict_keys : m == "values" ? ListKind::dict_values
                                                                                        : ListKind::dict_items);
}

Value list_method(Interp& in, const Value& self, const std::string& m, const Args& args) {
  auto a = bind_args(m.c_str(), args, {"value"});
  if (!a[0]) fail("TypeError", m + "() takes exactly one argument (0 given)");
  const auto& items = self.list().items;
  if (m == "count") {
    return Value(static_cast<int64_t>(std::count_if(items.begin(), items.end(), [&](const Value& x) { return equal(x, *a[0]); })));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    in.step();
    if (equal(items[i], *a[0])) return Value(static_cast<int64_t>(i));
  }
  fail("ValueError", repr(*a[0]) + " is not in list");
}

Value bound(const Value& self, const std::string& m, Value (*impl)(Interp&, const Value&, const std::string&, const Args&)) {
  return function(m, [self, m, impl](Interp& in, const Args& args) { return impl(in, self, m, args); });
}

// The method `m` of obj, or nullopt.
std::optional<Value> method(const Value& obj, const std::string& m) {
  switch (obj.type()) {
    case Value::Type::string:
      if (one_of(m, kStrMethods))
        return bound(obj, m, [](Interp& in, const Value& s, const std::string& name, const Args& a) {
          return str_method(in, s.str(), name, a);
        });
      return std::nullopt;
    case Value::Type::dict:
      if (one_of(m, kDictMethods)) return bound(obj, m, dict_method);
      if (one_of(m, kDictMutators)) return unsafe_method(obj, m);
      return std::nullopt;
    case Value::Type::list:
      if (obj.list().kind != ListKind::list && obj.list().kind != ListKind::tuple) return std::nullopt;
      if (one_of(m, kListMethods)) return bound(obj, m, list_method);
      if (obj.list().kind == ListKind::list && one_of(m, kListMutators)) return unsafe_method(obj, m);
      return std::nullopt;
    default: return std::nullopt;
  }
}

// ---- loop ---------------------------------------------------------------------------------------

Value loop_attr(Interp&, const Value& lv, const std::string& attr) {
  const std::shared_ptr<Loop>& l = lv.loop();
  const auto n = static_cast<int64_t>(l->items->size());
  const auto i = static_cast<int64_t>(l->index0);
  if (attr == "index0") return Value(i);
  if (attr == "index") return Value(i + 1);
  if (attr == "revindex0") return Value(n - i - 1);
  if (attr == "revindex") return Value(n - i);
  if (attr == "first") return Value(i == 0);
  if (attr == "last") return Value(i == n - 1);
  if (attr == "length") return Value(n);
  if (attr == "depth0") return Value(int64_t{l->depth0});
  if (attr == "depth") return Value(int64_t{l->depth0 + 1});
  if (attr == "previtem") return i > 0 ? (*l->items)[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item");
  if (attr == "nextitem") return i + 1 < n ? (*l->items)[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item");
  if (attr == "cycle")
    return function("cycle", [l](Interp&, const Args& a) -> Value {
      if (!a.kw.empty()) fail("TypeError", "cycle() got an unexpected keyword argument '" + a.kw[0].first + "'");
      if (a.pos.empty()) fail("TypeError", "no items for cycling given");
      return a.pos[l->index0 % a.pos.size()];
    }, "method");
  if (attr == "changed")
    return function("changed", [l](Interp& in, const Args& a) -> Value {
      if (!a.kw.empty()) fail("TypeError", "changed() got an unexpected keyword argument '" + a.kw[0].first + "'");
      Value now = in.make_list(a.pos, ListKind::tuple);
      if (l->last_changed && equal(*l->last_changed, now)) return Value(false);
      l->last_changed = std::move(now);
      return Value(true);
    }, "method");
  return undefined_attr(lv, attr);
}

}  // namespace

// ---- access -------------------------------------------------------------------------------------

Value get_attr(Interp& in, const Value& obj, const std::string& attr) {
  switch (obj.type()) {
    case Value::Type::undefined: undefined_fail(obj);
    case Value::Type::dict: {
      if (std::optional<Value> m = method(obj, attr)) return *m;
      if (const Value* v = obj.dict().find(Value(attr))) return *v;
      return undefined_attr(obj, attr);
    }
    case Value::Type::ns:
      if (const Value* v = obj.ns()->attrs.find(Value(attr))) return *v;
      return undefined_attr(obj, attr);
    case Value::Type::loop: return loop_attr(in, obj, attr);
    default:
      if (std::optional<Value> m = method(obj, attr)) return *m;
      return undefined_attr(obj, attr);
  }
}

Value get_item(Interp& in, const Value& obj, const Value& key) {
  auto fallback = [&]() -> Value {  // obj[key] failed: jinja2 tries the attribute
    if (key.is_string()) {
      if (obj.is(Value::Type::ns) || obj.is(Value::Type::loop)) return get_attr(in, obj, key.str());
      if (std::optional<Value> m = method(obj, key.str())) return *m;
      return undefined_attr(obj, key.str());
    }
    return undefined_element(obj, key);
  };
  switch (obj.type()) {
    case Value::Type::undefined: undefined_fail(obj);
    case Value::Type::dict: {
      if (const Value* v = obj.dict().find(key)) return *v;
      return fallback();
    }
    case Value::Type::list: {
      const List& l = obj.list();
      if (!key.is_int() || l.kind == ListKind::dict_items || l.kind == ListKind::dict_keys || l.kind == ListKind::dict_values)
        return fallback();
      int64_t i = key.integer();
      const auto n = static_cast<int64_t>(l.items.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return fallback();
      return l.items[static_cast<size_t>(i)];
    }
    case Value::Type::string: {
      if (!key.is_int()) return fallback();
      const std::u32string cps = code_points(obj.str());
      int64_t i = key.integer();
      const auto n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return fallback();
      return Value(utf8(cps.substr(static_cast<size_t>(i), 1)));
    }
    default: return fallback();
  }
}

Value slice(Interp& in, const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_fail(obj);
  auto index = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (!v.is_int()) fail("TypeError", "slice indices must be integers or None or have an __index__ method");
    return v.integer();
  };
  const bool sliceable = obj.is_string() || (obj.is(Value::Type::list) && (obj.list().kind == ListKind::list ||
                                                                           obj.list().kind == ListKind::tuple ||
                                                                           obj.list().kind == ListKind::range));
  if (!sliceable) {
    return Value::undefined(object_type_repr(obj) + " has no element slice(" + repr(start) + ", " + repr(stop) + ", " +
                            repr(step) + ")");
  }
  const std::optional<int64_t> a = index(start), b = index(stop), c = index(step);
  const int64_t st = c.value_or(1);
  if (st == 0) fail("ValueError", "slice step cannot be zero");
  std::u32string cps;
  if (obj.is_string()) cps = code_points(obj.str());
  const auto n = static_cast<int64_t>(obj.is_string() ? cps.size() : obj.list().items.size());
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t lo = adjust(a, st > 0 ? 0 : n - 1), hi = adjust(b, st > 0 ? n : -1);
  std::vector<size_t> picks;
  for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) {
    in.step();
    picks.push_back(static_cast<size_t>(i));
  }
  if (obj.is_string()) {
    std::u32string r;
    r.reserve(picks.size());
    for (size_t i : picks) r += cps[i];
    return Value(utf8(r));
  }
  std::vector<Value> items;
  items.reserve(picks.size());
  for (size_t i : picks) items.push_back(obj.list().items[i]);
  const ListKind k = obj.list().kind == ListKind::tuple ? ListKind::tuple : ListKind::list;
  return in.make_list(std::move(items), k);
}

Value call_value(Interp& in, const Value& callee, const Args& args) {
  if (callee.is(Value::Type::function)) return callee.function().call(in, args);
  if (callee.is_undefined()) undefined_fail(callee);
  fail("TypeError", std::string("'") + type_name(callee) + "' object is not callable");
}

std::vector<std::optional<Value>> bind_args(const char* fname, const Args& args, std::initializer_list<const char*> names) {
  std::vector<std::optional<Value>> out(names.size());
  if (args.pos.size() > names.size())
    fail("TypeError", std::string(fname) + "() takes at most " + std::to_string(names.size()) + " argument" +
                          (names.size() == 1 ? "" : "s") + " (" + std::to_string(args.pos.size()) + " given)");
  for (size_t i = 0; i < args.pos.size(); ++i) out[i] = args.pos[i];
  for (const auto& [k, v] : args.kw) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) fail("TypeError", std::string(fname) + "() got an unexpected keyword argument '" + k + "'");
    if (out[i]) fail("TypeError", std::string(fname) + "() got multiple values for argument '" + k + "'");
    out[i] = v;
  }
  return out;
}

// ---- filters ------------------------------------------------------------------------------------

namespace {

// jinja2's make_attrgetter: "a.b.0" looked up part by part with getitem (digits as integers).
std::function<Value(Interp&, const Value&)> attr_getter(const std::optional<Value>& attribute,
                                                        std::optional<Value> dflt = std::nullopt) {
  std::vector<Value> parts;
  if (attribute && !attribute->is_none()) {
    if (attribute->is_string()) {
      for (const std::string& p : split(attribute->str(), std::string("."), -1, false)) {
        const bool digits = !p.empty() && std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; });
        parts.push_back(digits && p.size() < 18 ? Value(static_cast<int64_t>(std::stoll(p))) : Value(p));
      }
    } else {
      parts.push_back(*attribute);
    }
  }
  return [parts, dflt](Interp& in, const Value& item) {
    Value v = item;
    for (const Value& p : parts) {
      v = get_item(in, v, p);
      if (dflt && !dflt->is_none() && v.is_undefined()) v = *dflt;
    }
    return v;
  };
}

Value lower_if_string(const Value& v) { return v.is_string() ? Value(py_lower(v.str())) : v; }

Value f_abs(Interp&, const Value& v, const Args& args) {
  bind_args("abs", args, {});
  if (v.is_int()) {
    if (v.integer() == std::numeric_limits<int64_t>::min()) fail("OverflowError", "integer overflow");
    return Value(std::abs(v.integer()));
  }
  if (v.is(Value::Type::floating)) return Value(std::fabs(v.number()));
  if (v.is_undefined()) undefined_fail(v);
  fail("TypeError", std::string("bad operand type for abs(): '") + type_name(v) + "'");
}

Value f_capitalize(Interp&, const Value& v, const Args& args) {
  bind_args("capitalize", args, {});
  return Value(capitalize(to_str(v)));
}

Value f_title(Interp&, const Value& v, const Args& args) {
  bind_args("title", args, {});
  return Value(title_filter(to_str(v)));
}

Value f_length(Interp&, const Value& v, const Args& args) {
  bind_args("length", args, {});
  return Value(length(v));
}

Value f_default(Interp&, const Value& v, const Args& args) {
  auto a = bind_args("default", args, {"default_value", "boolean"});
  const bool boolean = a[1] && truthy(*a[1]);
  if (v.is_undefined() || (boolean && !truthy(v))) return a[0] ? *a[0] : Value(std::string());
  return v;
}

Value f_escape(Interp& in, const Value& v, const Args& args) {
  bind_args("escape", args, {});
  const std::string s = to_str(v);
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  in.charge(out.size());
  return Value(std::move(out));
}

Value f_first(Interp& in, const Value& v, const Args& args) {
  bind_args("first", args, {});
  std::optional<Value> first;
  iterate(in, v, [&](const Value& x) {
    first = x;
    return false;
  });
  return first ? *first : Value::undefined("No first item, sequence was empty.");
}

Value f_last(Interp& in, const Value& v, const Args& args) {
  bind_args("last", args, {});
  if (v.is(Value::Type::iterator)) fail("TypeError", std::string("'") + type_name(v) + "' object is not reversible");
  if (v.is_undefined()) undefined_fail(v);
  const std::vector<Value> items = to_vector(in, v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

std::optional<double> parse_float(std::string s) {
  s = py_strip(s, std::nullopt, true, true);
  std::string t;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1])))
        return std::nullopt;
      continue;
    }
    t += s[i];
  }
  if (t.empty()) return std::nullopt;
  const std::string l = py_lower(t);
  const std::string body = (l[0] == '+' || l[0] == '-') ? l.substr(1) : l;
  if (body == "inf" || body == "infinity" || body == "nan") {
    const double x = body == "nan" ? std::nan("") : std::numeric_limits<double>::infinity();
    return l[0] == '-' ? -x : x;
  }
  if (body.empty() || !(std::isdigit(static_cast<unsigned char>(body[0])) || body[0] == '.')) return std::nullopt;
  for (char c : body)
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-')) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (*end != '\0') return std::nullopt;
  return d;
}

Value f_float(Interp&, const Value& v, const Args& args) {
  auto a = bind_args("float", args, {"default"});
  const Value dflt = a[0] ? *a[0] : Value(0.0);
  if (v.is_number()) return Value(v.number());
  if (v.is_string())
    if (std::optional<double> d = parse_float(v.str())) return Value(*d);
  return dflt;
}

Value f_int(Interp&, const Value& v, const Args& args) {
  auto a = bind_args("int", args, {"default", "base"});
  const Value dflt = a[0] ? *a[0] : Value(int64_t{0});
  if (v.is_int()) return Value(v.integer());
  if (v.is(Value::Type::floating)) {
    const double d = std::trunc(v.number());
    if (!std::isfinite(d)) fail(std::isnan(d) ? "ValueError" : "OverflowError", "cannot convert float to integer");
    if (std::fabs(d) >= 9.2e18) fail("OverflowError", "integer overflow (the renderer's integers are 64-bit)");
    return Value(static_cast<int64_t>(d));
  }
  if (!v.is_string()) return dflt;
  int64_t base = a[1] ? (a[1]->is_int() ? a[1]->integer() : 10) : 10;
  std::string s = py_strip(v.str(), std::nullopt, true, true);
  bool neg = false;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i + 1 < s.size() && s[i] == '0') {
    const char k = static_cast<char>(s[i + 1] | 0x20);
    if ((k == 'x' && (base == 16 || base == 0)) || (k == 'o' && (base == 8 || base == 0)) || (k == 'b' && (base == 2 || base == 0))) {
      base = k == 'x' ? 16 : k == 'o' ? 8 : 2;
      i += 2;
    }
  }
  if (base == 0) base = 10;
  int64_t r = 0;
  bool any = false, ok = base >= 2 && base <= 36;
  for (; ok && i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_' && any && i + 1 < s.size() && s[i + 1] != '_') continue;
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') d = (c | 0x20) - 'a' + 10;
    if (d < 0 || d >= base) {
      ok = false;
      break;
    }
    if (__builtin_mul_overflow(r, base, &r) || __builtin_add_overflow(r, d, &r))
      fail("OverflowError", "integer overflow (the renderer's integers are 64-bit)");
    any = true;
  }
  if (ok && any) return Value(neg ? -r : r);
  if (std::optional<double> d = parse_float(v.str())) {  // "42.23"|int is 42
    if (!std::isfinite(*d)) return dflt;
    if (std::fabs(*d) >= 9.2e18) fail("OverflowError", "integer overflow (the renderer's integers are 64-bit)");
    return Value(static_cast<int64_t>(std::trunc(*d)));
  }
  return dflt;
}

Value f_indent(Interp& in, const Value& v, const Args& args) {
  auto a = bind_args("indent", args, {"width", "first", "blank"});
  std::string indention;
  if (a[0] && a[0]->is_string()) {
    indention = a[0]->str();
  } else {
    const int64_t w = a[0] ? as_index(*a[0], "") : 4;
    indention = std::string(static_cast<size_t>(std::clamp<int64_t>(w, 0, 1 << 16)), ' ');
  }
  const bool first = a[1] && truthy(*a[1]), blank = a[2] && truthy(*a[2]);
  std::vector<std::string> lines = splitlines(to_str(v) + "\n", false);
  std::string rv;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) rv += "\n" + (blank || !lines[i].empty() ? indention : "");
    rv += lines[i];
    in.check_string(rv.size());
  }
  if (first) rv = indention + rv;
  in.check_string(rv.size());
  in.charge(rv.size());
  return Value(std::move(rv));
}

Value f_items(Interp&, const Value& v, const Args& args) {
  bind_args("items", args, {});
  if (v.is_undefined()) return generator("generator", [](Interp&) { return std::optional<Value>(); });
  if (!v.is(Value::Type::dict)) fail("TypeError", "Can only get item pairs from a mapping.");
  auto i = std::make_shared<size_t>(0);
  return generator("generator", [v, i](Interp& it) -> std::optional<Value> {
    const Dict& d = v.dict();
    if (*i >= d.items.size()) return std::nullopt;
    const auto& kv = d.items[(*i)++];
    return it.make_list({kv.first, kv.second}, ListKind::tuple);
  });
}

Value f_join(Interp& in, const Value& v, const Args& args) {
  auto a = bind_args("join", args, {"d", "attribute"});
  const std::string sep = a[0] ? to_str(*a[0]) : "";
  auto get = attr_getter(a[1]);
  std::string out;
  bool first = true;
  iterate(in, v, [&](const Value& x) {
    const std::string piece = to_str(a[1] ? get(in, x) : x, in.limits.max_output_bytes);
    if (!first) out += sep;
    first = false;
    out += piece;
    in.check_string(out.size());
    in.charge(piece.size() + sep.size());
    return true;
  });
  return Value(std::move(out));
}

Value f_list(Interp& in, const Value& v, const Args& args) {
  bind_args("list", args, {});
  if (v.is(Value::Type::list) && v.list().kind == ListKind::list) return v;
  return in.make_list(to_vector(in, v));
}

Value f_lower(Interp&, const Value& v, const Args& args) {
  bind_args("lower", args, {});
  return Value(py_lower(to_str(v)));
}

Value f_upper(Interp&, const Value& v, const Args& args) {
  bind_args("upper", args, {});
  return Value(py_upper(to_str(v)));
}

Value call_filter(Interp& in, const std::string& name, const Value& v, const Args& args) {
  const FilterFn f = find_filter(name);
  if (!f) fail("TemplateRuntimeError", "No filter named '" + name + "'.");
  return f(in, v, args);
}

Value f_map(Interp&, const Value& v, const Args& args) {
  std::function<Value(Interp&, const Value&)> fn;
  bool by_attribute = false;
  for (const auto& kv : args.kw) by_attribute |= kv.first == "attribute";
  if (args.pos.empty() && by_attribute) {
    std::optional<Value> attribute, dflt;
    for (const auto& [k, x] : args.kw) {
      if (k == "attribute") attribute = x;
      else if (k == "default") dflt = x;
      else fail("FilterArgumentError", "Unexpected keyword argument '" + k + "'");
    }
    fn = attr_getter(attribute, dflt);
  } else {
    if (args.pos.empty()) fail("FilterArgumentError", "map requires a filter argument");
    const std::string name = to_str(args.pos[0]);
    Args rest;
    rest.pos.assign(args.pos.begin() + 1, args.pos.end());
    rest.kw = args.kw;
    fn = [name, rest](Interp& in, const Value& x) { return call_filter(in, name, x, rest); };
  }
  if (!truthy(v) && !v.is(Value::Type::iterator)) return generator("generator", [](Interp&) { return std::optional<Value>(); });
  auto source = items_of(v);
  return generator("generator", [source, fn](Interp& in) -> std::optional<Value> {
    std::optional<Value> x = source(in);
    if (!x) return std::nullopt;
    return fn(in, *x);
  });
}

// select / reject / selectattr / rejectattr
Value select_or_reject(const Value& v, const Args& args, bool keep_if, bool lookup_attr) {
  if (!args.kw.empty() && lookup_attr && args.pos.empty())
    fail("FilterArgumentError", "Missing parameter for attribute name");
  std::function<Value(Interp&, const Value&)> transform = [](Interp&, const Value& x) { return x; };
  size_t off = 0;
  if (lookup_attr) {
    if (args.pos.empty()) fail("FilterArgumentError", "Missing parameter for attribute name");
    transform = attr_getter(args.pos[0]);
    off = 1;
  }
  std::function<bool(Interp&, const Value&)> test = [](Interp&, const Value& x) { return truthy(x); };
  if (args.pos.size() > off) {
    const std::string name = to_str(args.pos[off]);
    Args rest;
    rest.pos.assign(args.pos.begin() + static_cast<std::ptrdiff_t>(off) + 1, args.pos.end());
    rest.kw = args.kw;
    test = [name, rest](Interp& in, const Value& x) { return call_test(in, name, x, rest); };
  }
  if (!truthy(v) && !v.is(Value::Type::iterator)) return generator("generator", [](Interp&) { return std::optional<Value>(); });
  auto source = items_of(v);
  return generator("generator", [source, transform, test, keep_if](Interp& in) -> std::optional<Value> {
    while (std::optional<Value> x = source(in)) {
      in.step();
      if (test(in, transform(in, *x)) == keep_if) return x;
    }
    return std::nullopt;
  });
}

Value f_select(Interp&, const Value& v, const Args& a) { return select_or_reject(v, a, true, false); }
Value f_reject(Interp&, const Value& v, const Args& a) { return select_or_reject(v, a, false, false); }
Value f_selectattr(Interp&, const Value& v, const Args& a) { return select_or_reject(v, a, true, true); }
Value f_rejectattr(Interp&, const Value& v, const Args& a) { return select_or_reject(v, a, false, true); }

Value min_or_max(Interp& in, const Value& v, const Args& args, bool is_max) {
  auto a = bind_args(is_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  const bool case_sensitive = a[0] && truthy(*a[0]);
  auto get = attr_getter(a[1]);
  std::optional<Value> best, best_key;
  iterate(in, v, [&](const Value& x) {
    Value k = get(in, x);
    if (!case_sensitive) k = lower_if_string(k);
    if (!best || (is_max ? less(*best_key, k) : less(k, *best_key))) {
      best = x;
      best_key = std::move(k);
    }
    return true;
  });
  return best ? *best : Value::undefined("No aggregated item, sequence was empty.");
}

Value f_max(Interp& in, const Value& v, const Args& a) { return min_or_max(in, v, a, true); }
Value f_min(Interp& in, const Value& v, const Args& a) { return min_or_max(in, v, a, false); }

Value f_replace(Interp& in, const Value& v, const Args& args) {
  auto a = bind_args("replace", args, {"old", "new", "count"});
  if (!a[0] || !a[1]) fail("TypeError", "replace() missing required arguments 'old' and 'new'");
  const int64_t count = a[2] && !a[2]->is_none() ? as_index(*a[2], "") : -1;
  std::string r = replace(to_str(v), to_str(*a[0]), to_str(*a[1]), count, in.limits.max_output_bytes);
  in.charge(r.size());
  return Value(std::move(r));
}

Value f_reverse(Interp& in, const Value& v, const Args& args) {
  bind_args("reverse", args, {});
  if (v.is_string()) {
    std::u32string cps = code_points(v.str());
    std::reverse(cps.begin(), cps.end());
    return Value(utf8(cps));
  }
  if (v.is(Value::Type::list) || v.is(Value::Type::dict)) {  // reversed(): an iterator
    std::vector<Value> items = to_vector(in, v);
    std::reverse(items.begin(), items.end());
    auto held = std::make_shared<std::vector<Value>>(std::move(items));
    auto i = std::make_shared<size_t>(0);
    const char* type = v.is(Value::Type::dict) ? "dict_reversekeyiterator"
                       : v.list().kind == ListKind::list ? "list_reverseiterator"
                       : v.list().kind == ListKind::range ? "range_iterator" : "reversed";
    return generator(type, [held, i](Interp&) -> std::optional<Value> {
      if (*i >= held->size()) return std::nullopt;
      return (*held)[(*i)++];
    });
  }
  if (v.is_undefined()) undefined_fail(v);
  if (!v.is(Value::Type::iterator)) fail("FilterArgumentError", "argument must be iterable");
  std::vector<Value> items = to_vector(in, v);
  std::reverse(items.begin(), items.end());
  return in.make_list(std::move(items));
}

Value f_safe(Interp&, const Value& v, const Args& args) {
  bind_args("safe", args, {});
  return v.is_string() ? v : Value(to_str(v));
}

Value f_sort(Interp& in, const Value& v, const Args& args) {
  auto a = bind_args("sort", args, {"reverse", "case_sensitive", "attribute"});
  const bool reverse = a[0] && truthy(*a[0]);
  const bool case_sensitive = a[1] && truthy(*a[1]);
  std::vector<std::function<Value(Interp&, const Value&)>> getters;
  if (a[2] && a[2]->is_string()) {
    for (const std::string& part : split(a[2]->str(), std::string(","), -1, false)) getters.push_back(attr_getter(Value(part)));
  } else {
    getters.push_back(attr_getter(a[2]));
  }
  struct Item {
    Value v;
    std::vector<Value> key;
  };
  std::vector<Item> items;
  iterate(in, v, [&](const Value& x) {
    Item it{x, {}};
    for (auto& g : getters) {
      Value k = g(in, x);
      it.key.push_back(case_sensitive ? k : lower_if_string(k));
    }
    items.push_back(std::move(it));
    return true;
  });
  auto key_order = [&](const Item& x, const Item& y) {  // Python's list < list
    in.step();
    for (size_t i = 0; i < x.key.size(); ++i)
      if (!equal(x.key[i], y.key[i])) return less(x.key[i], y.key[i]);
    return false;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Item& x, const Item& y) { return reverse ? key_order(y, x) : key_order(x, y); });
  std::vector<Value> out;
  out.reserve(items.size());
  for (Item& it : items) out.push_back(std::move(it.v));
  return in.make_list(std::move(out));
}

Value f_string(Interp& in, const Value& v, const Args& args) {
  bind_args("string", args, {});
  return v.is_string() ? v : Value(to_str(v, in.limits.max_output_bytes));
}

Value f_sum(Interp& in, const Value& v, const Args& args) {
  auto a = bind_args("sum", args, {"attribute", "start"});
  Value total = a[1] ? *a[1] : Value(int64_t{0});
  if (total.is_string()) fail("TypeError", "sum() can't sum strings [use ''.join(seq) instead]");
  auto get = attr_getter(a[0]);
  iterate(in, v, [&](const Value& x) {
    total = arith(in, BinOp::add, total, get(in, x));
    return true;
  });
  return total;
}

Value f_tojson(Interp& in, const Value& v, const Args& args) {
  // HuggingFace's: json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=False)
  auto a = bind_args("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle st;
  st.ensure_ascii = a[0] && truthy(*a[0]);
  if (a[1] && !a[1]->is_none()) {
    if (a[1]->is_string()) st.indent = a[1]->str();
    else st.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(as_index(*a[1], ""), 0, 1 << 16)), ' ');
    st.item_separator = ",";
  }
  if (a[2] && !a[2]->is_none()) {
    const Value& sep = *a[2];
    if (!sep.is(Value::Type::list) || sep.list().items.size() != 2 || !sep.list().items[0].is_string() ||
        !sep.list().items[1].is_string())
      fail("ValueError", "separators must be a pair of strings (item separator, key separator)");
    st.item_separator = sep.list().items[0].str();
    st.key_separator = sep.list().items[1].str();
  }
  st.sort_keys = a[3] && truthy(*a[3]);
  st.max_bytes = in.limits.max_output_bytes;
  std::string out = json_dumps(v, st);
  in.check_string(out.size());
  in.charge(out.size());
  return Value(std::move(out));
}

Value f_trim(Interp&, const Value& v, const Args& args) {
  auto a = bind_args("trim", args, {"chars"});
  return Value(py_strip(to_str(v), opt_chars(a[0], "strip"), true, true));
}

Value f_unique(Interp&, const Value& v, const Args& args) {
  auto a = bind_args("unique", args, {"case_sensitive", "attribute"});
  const bool case_sensitive = a[0] && truthy(*a[0]);
  auto get = attr_getter(a[1]);
  auto source = items_of(v);
  auto seen = std::make_shared<Dict>();
  return generator("generator", [source, get, case_sensitive, seen](Interp& in) -> std::optional<Value> {
    while (std::optional<Value> x = source(in)) {
      in.step();
      Value k = get(in, *x);
      if (!case_sensitive) k = lower_if_string(k);
      if (seen->find(k)) continue;
      seen->set(k, Value::none());
      return x;
    }
    return std::nullopt;
  });
}

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const std::map<std::string, FilterFn, std::less<>> table = {
      {"abs", f_abs},         {"capitalize", f_capitalize}, {"count", f_length},     {"d", f_default},
      {"default", f_default}, {"e", f_escape},              {"escape", f_escape},    {"first", f_first},
      {"float", f_float},     {"indent", f_indent},         {"int", f_int},          {"items", f_items},
      {"join", f_join},       {"last", f_last},             {"length", f_length},    {"list", f_list},
      {"lower", f_lower},     {"map", f_map},               {"max", f_max},          {"min", f_min},
      {"reject", f_reject},   {"rejectattr", f_rejectattr}, {"replace", f_replace},  {"reverse", f_reverse},
      {"safe", f_safe},       {"select", f_select},         {"selectattr", f_selectattr}, {"sort", f_sort},
      {"string", f_string},   {"sum", f_sum},               {"title", f_title},      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},   {"upper", f_upper},
  };
  return table;
}

// ---- tests --------------------------------------------------------------------------------------

const Value& one_arg(const char* name, const Args& args) {
  if (args.pos.size() != 1 || !args.kw.empty())
    fail("TypeError", std::string(name) + "() takes exactly one argument besides the value");
  return args.pos[0];
}
void no_args(const char* name, const Args& args) {
  if (!args.pos.empty() || !args.kw.empty()) fail("TypeError", std::string(name) + "() takes no arguments besides the value");
}

bool t_odd(Interp& in, const Value& v, const Args& a) {
  no_args("odd", a);
  return equal(arith(in, BinOp::mod, v, Value(int64_t{2})), Value(int64_t{1}));
}
bool t_even(Interp& in, const Value& v, const Args& a) {
  no_args("even", a);
  return equal(arith(in, BinOp::mod, v, Value(int64_t{2})), Value(int64_t{0}));
}
bool t_divisibleby(Interp& in, const Value& v, const Args& a) {
  return equal(arith(in, BinOp::mod, v, one_arg("divisibleby", a)), Value(int64_t{0}));
}
bool t_defined(Interp&, const Value& v, const Args& a) {
  no_args("defined", a);
  return !v.is_undefined();
}
bool t_undefined(Interp&, const Value& v, const Args& a) {
  no_args("undefined", a);
  return v.is_undefined();
}
bool t_filter(Interp&, const Value& v, const Args& a) {
  no_args("filter", a);
  return v.is_string() && find_filter(v.str());
}
bool t_test(Interp&, const Value& v, const Args& a) {
  no_args("test", a);
  return v.is_string() && find_test(v.str());
}
bool t_none(Interp&, const Value& v, const Args& a) {
  no_args("none", a);
  return v.is_none();
}
bool t_boolean(Interp&, const Value& v, const Args& a) {
  no_args("boolean", a);
  return v.is(Value::Type::boolean);
}
bool t_false(Interp&, const Value& v, const Args& a) {
  no_args("false", a);
  return v.is(Value::Type::boolean) && !v.boolean();
}
bool t_true(Interp&, const Value& v, const Args& a) {
  no_args("true", a);
  return v.is(Value::Type::boolean) && v.boolean();
}
bool t_integer(Interp&, const Value& v, const Args& a) {
  no_args("integer", a);
  return v.is(Value::Type::integer);
}
bool t_float(Interp&, const Value& v, const Args& a) {
  no_args("float", a);
  return v.is(Value::Type::floating);
}
bool t_lower(Interp&, const Value& v, const Args& a) {
  no_args("lower", a);
  return py_islower(to_str(v));
}
bool t_upper(Interp&, const Value& v, const Args& a) {
  no_args("upper", a);
  return py_isupper(to_str(v));
}
bool t_string(Interp&, const Value& v, const Args& a) {
  no_args("string", a);
  return v.is_string();
}
bool t_mapping(Interp&, const Value& v, const Args& a) {
  no_args("mapping", a);
  return v.is(Value::Type::dict);
}
bool t_number(Interp&, const Value& v, const Args& a) {
  no_args("number", a);
  return v.is_number();
}
bool t_sequence(Interp&, const Value& v, const Args& a) {
  no_args("sequence", a);
  if (v.is(Value::Type::list)) {
    const ListKind k = v.list().kind;
    return k == ListKind::list || k == ListKind::tuple || k == ListKind::range;
  }
  return v.is_string() || v.is(Value::Type::dict) || v.is_undefined();
}
bool t_iterable(Interp&, const Value& v, const Args& a) {
  no_args("iterable", a);
  switch (v.type()) {
    case Value::Type::string:
    case Value::Type::list:
    case Value::Type::dict:
    case Value::Type::iterator:
    case Value::Type::undefined:
    case Value::Type::loop: return true;
    default: return false;
  }
}
bool t_callable(Interp&, const Value& v, const Args& a) {
  no_args("callable", a);
  return v.is(Value::Type::function) || v.is_undefined() || v.is(Value::Type::loop);
}
bool t_sameas(Interp&, const Value& v, const Args& a) {
  const Value& o = one_arg("sameas", a);
  if (v.type() != o.type()) return false;
  switch (v.type()) {
    case Value::Type::none: return true;
    case Value::Type::boolean: return v.boolean() == o.boolean();
    case Value::Type::integer: return v.integer() == o.integer() && v.integer() >= -5 && v.integer() <= 256;
    case Value::Type::undefined:
    case Value::Type::floating: return false;
    default: return v.identity() == o.identity();
  }
}
bool t_escaped(Interp&, const Value&, const Args& a) {
  no_args("escaped", a);
  return false;
}
bool t_in(Interp& in, const Value& v, const Args& a) { return contains(in, one_arg("in", a), v); }
bool t_eq(Interp&, const Value& v, const Args& a) { return equal(v, one_arg("eq", a)); }
bool t_ne(Interp&, const Value& v, const Args& a) { return !equal(v, one_arg("ne", a)); }
bool t_lt(Interp&, const Value& v, const Args& a) { return less(v, one_arg("lt", a), "<"); }
bool t_le(Interp&, const Value& v, const Args& a) { return less(v, one_arg("le", a), "<="); }
bool t_gt(Interp&, const Value& v, const Args& a) { return less(v, one_arg("gt", a), ">"); }
bool t_ge(Interp&, const Value& v, const Args& a) { return less(v, one_arg("ge", a), ">="); }

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const std::map<std::string, TestFn, std::less<>> table = {
      {"odd", t_odd},         {"even", t_even},       {"divisibleby", t_divisibleby}, {"defined", t_defined},
      {"undefined", t_undefined}, {"filter", t_filter}, {"test", t_test},           {"none", t_none},
      {"boolean", t_boolean}, {"false", t_false},     {"true", t_true},             {"integer", t_integer},
      {"float", t_float},     {"lower", t_lower},     {"upper", t_upper},           {"string", t_string},
      {"mapping", t_mapping}, {"number", t_number},   {"sequence", t_sequence},     {"iterable", t_iterable},
      {"callable", t_callable}, {"sameas", t_sameas}, {"escaped", t_escaped},       {"in", t_in},
      {"==", t_eq},           {"eq", t_eq},           {"equalto", t_eq},            {"!=", t_ne},
      {"ne", t_ne},           {">", t_gt},            {"gt", t_gt},                 {"greaterthan", t_gt},
      {">=", t_ge},           {"ge", t_ge},           {"<", t_lt},                  {"lt", t_lt},
      {"lessthan", t_lt},     {"<=", t_le},           {"le", t_le},
  };
  return table;
}

// ---- globals ------------------------------------------------------------------------------------

Value g_range(Interp& in, const Args& args) {
  if (!args.kw.empty()) fail("TypeError", "range() takes no keyword arguments");
  if (args.pos.empty() || args.pos.size() > 3)
    fail("TypeError", "range expected at most 3 arguments, got " + std::to_string(args.pos.size()));
  int64_t start = 0, stop, step = 1;
  if (args.pos.size() == 1) {
    stop = as_index(args.pos[0], "");
  } else {
    start = as_index(args.pos[0], "");
    stop = as_index(args.pos[1], "");
    if (args.pos.size() == 3) step = as_index(args.pos[2], "");
  }
  if (step == 0) fail("ValueError", "range() arg 3 must not be zero");
  constexpr int64_t kMaxRange = 100000;  // the sandbox's MAX_RANGE
  const long double count = step > 0 ? std::ceil((static_cast<long double>(stop) - start) / step)
                                     : std::ceil((static_cast<long double>(start) - stop) / -static_cast<long double>(step));
  if (count > kMaxRange)
    fail("OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  auto l = std::make_shared<List>();
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) l->items.emplace_back(i);
  in.charge(16 * l->items.size());
  l->kind = ListKind::range;
  l->range_start = start;
  l->range_stop = stop;
  l->range_step = step;
  return Value(std::shared_ptr<const List>(std::move(l)));
}

// dict(mapping or pairs, **kwargs)
Dict dict_from(Interp& in, const char* fname, const Args& args) {
  Dict d;
  if (args.pos.size() > 1)
    fail("TypeError", std::string(fname) + " expected at most 1 argument, got " + std::to_string(args.pos.size()));
  if (!args.pos.empty()) {
    const Value& src = args.pos[0];
    if (src.is(Value::Type::dict)) {
      d = src.dict();
    } else {
      size_t i = 0;
      iterate(in, src, [&](const Value& pair) {
        const std::vector<Value> kv = to_vector(in, pair);
        if (kv.size() != 2)
          fail("ValueError", "dictionary update sequence element #" + std::to_string(i) + " has length " +
                                 std::to_string(kv.size()) + "; 2 is required");
        d.set(kv[0], kv[1]);
        ++i;
        return true;
      });
    }
  }
  for (const auto& [k, v] : args.kw) d.set(Value(k), v);
  return d;
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  const auto& t = filters();
  auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  const auto& t = tests();
  auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

bool call_test(Interp& in, const std::string& name, const Value& v, const Args& args) {
  const TestFn f = find_test(name);
  if (!f) fail("TemplateRuntimeError", "No test named '" + name + "'.");
  return f(in, v, args);
}

void add_globals(Scope& g) {
  g.vars["range"] = function("range", g_range, "type");
  g.vars["dict"] = function("dict", [](Interp& in, const Args& a) {
    return make_dict(dict_from(in, "dict", a), in.limits.max_value_depth);
  }, "type");
  g.vars["namespace"] = function("namespace", [](Interp& in, const Args& a) {
    auto ns = std::make_shared<Namespace>();
    ns->attrs = dict_from(in, "Namespace", a);
    in.namespaces.push_back(ns);
    return Value(ns);
  }, "type");
  g.vars["raise_exception"] = function("raise_exception", [](Interp&, const Args& a) -> Value {
    if (a.pos.size() != 1 || !a.kw.empty()) fail("TypeError", "raise_exception() takes exactly one argument (the message)");
    fail("TemplateError", to_str(a.pos[0]));
  }, "function");
  g.vars["strftime_now"] = function("strftime_now", [](Interp& in, const Args& a) -> Value {
    auto args = bind_args("strftime_now", a, {"format"});
    if (!args[0]) fail("TypeError", "strftime_now() missing 1 required positional argument: 'format'");
    const std::string fmt = as_string_arg(*args[0], "strftime_now");
    if (fmt.size() > 256) fail("ValueError", "strftime_now(): the format is too long");
    const std::time_t now = in.now ? in.now() : std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    std::string buf(1024, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
    if (n == 0 && !fmt.empty()) fail("ValueError", "strftime_now(): the formatted date is empty or too long");
    buf.resize(n);
    return Value(buf);
  }, "function");
}

}  // namespace pqvk::jinja::detail
