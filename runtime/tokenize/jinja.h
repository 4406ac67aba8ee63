// A renderer for the Jinja subset that chat templates use, with the semantics of Python's jinja2
// as HuggingFace's apply_chat_template runs it (ImmutableSandboxedEnvironment with trim_blocks,
// lstrip_blocks and the loopcontrols extension; tojson as json.dumps(ensure_ascii=False, keys in
// their order); globals raise_exception(msg) and strftime_now(format)). The aim is byte-identical
// output, and the same exception (Python class name and message) where jinja2 raises one;
// tests/chat_template_check.py compares the two on real templates.
//
// The language:
//   {{ expr }}, {% stmt %}, {# comment #}; whitespace control with '-' ({%- -%}, {{- -}}, {#- -#})
//   and '+' ({%+ to keep the indentation lstrip_blocks would remove, +%} to keep the newline
//   trim_blocks would remove); {% raw %}...{% endraw %}
//   statements: if / elif / else; for x in xs [if cond] ... [else] (tuple targets, loop.index,
//   index0, revindex, revindex0, first, last, length, previtem, nextitem, depth, cycle(),
//   changed()), break, continue; set x = expr, set a, b = expr, set ns.attr = expr,
//   set x %}...{% endset (block set, with filters); macro (defaults, keyword arguments, varargs,
//   kwargs, caller) and call blocks; filter blocks; with
//   expressions: literals (strings with Python escapes, ints, floats, true/false/none, lists,
//   tuples, dicts), attribute and item access, slices with negative indices and steps, calls with
//   keyword arguments, filters, tests (is / is not), `in` / `not in`, comparisons (chained),
//   + - * / // % **, ~, and / or / not, `a if c else b`
//   filters: abs capitalize count d default e escape first float indent int items join last length
//   list lower map max min reject rejectattr replace reverse safe select selectattr sort string
//   sum title tojson trim unique upper
//   tests: boolean callable defined divisibleby eq equalto escaped even false filter float ge gt
//   in integer iterable le lower lt mapping ne none number odd sameas sequence string test true
//   undefined upper, and == != < <= > >=
//   methods: str startswith endswith split rsplit splitlines strip lstrip rstrip replace upper
//   lower capitalize title find rfind index rindex count join isspace islower isupper; dict items
//   keys values get; list count index
//   globals: range namespace dict raise_exception strftime_now
// Not supported (an error naming them): extends, block, include, import, recursive loops,
// `*args` / `**kwargs` in calls, the % string formatting operator.
//
// Templates are untrusted input: the parser limits the template's size and nesting, rendering
// limits the work (steps, charged per operation and per byte produced), the output and string
// sizes, the depth of macro calls and of values; every failure is an Error with the template's
// name, line and column, never a crash or a hang.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace pqvk::jinja {

// Template variables are JSON values whose objects keep their key order (as Python dicts do).
using json = nlohmann::ordered_json;

class Error : public std::runtime_error {
 public:
  Error(std::string type, std::string message, std::string where, int line, int column);

  // The class of the exception jinja2 would raise: "TemplateSyntaxError" (parsing),
  // "TemplateError" (raise_exception), "UndefinedError", "TypeError", "ValueError",
  // "ZeroDivisionError", "SecurityError", "TemplateRuntimeError", "TemplateAssertionError"
  // (unknown filter or test), "OverflowError"; "LimitError" for this renderer's own limits.
  const std::string& type() const { return type_; }
  // The message alone, as jinja2's str(exception) (raise_exception: the template's text).
  const std::string& message() const { return message_; }
  // Where: the template's name, 1-based line and column (0 when unknown). what() is
  // "<where>:<line>:<column>: <type>: <message>".
  const std::string& where() const { return where_; }
  int line() const { return line_; }
  int column() const { return column_; }

 private:
  std::string type_, message_, where_;
  int line_, column_;
};

struct Limits {
  size_t max_source_bytes = size_t{1} << 20;   // the template text
  int max_nesting = 100;                       // blocks inside blocks, and brackets / operators inside an expression
  size_t max_output_bytes = size_t{16} << 20;  // the rendered text, and any string made while rendering
  uint64_t max_steps = 20'000'000;             // evaluation steps (about 1 per operation, loop iteration and 16 bytes made)
  int max_call_depth = 32;                     // macro calls inside macro calls
  int max_value_depth = 128;                   // lists and dicts inside lists and dicts
};

struct RenderOptions {
  Limits limits;
  // strftime_now's clock (local time); empty: the system clock.
  std::function<std::time_t()> now;
};

class Template {
 public:
  // Parses a template. `name` names it in errors (e.g. the file). Throws Error
  // ("TemplateSyntaxError", or "LimitError" for an oversized or too deeply nested template).
  explicit Template(std::string_view source, std::string name = "template", Limits limits = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  const std::string& name() const;

  // Renders with `variables` (a JSON object: each key becomes a variable) and the globals above.
  // Throws Error. A Template may render on several threads at once.
  std::string render(const json& variables, const RenderOptions& options = {}) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace pqvk::jinja
