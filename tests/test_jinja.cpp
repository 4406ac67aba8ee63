// The Jinja chat-template renderer (runtime/tokenize/jinja.h) on its own: the API, errors with
// their positions, the limits that keep untrusted templates from crashing or hanging, and a
// seeded mutation run over the real templates (every outcome a rendering or a jinja::Error).
// Byte-for-byte agreement with Python's jinja2 is checked by tests/chat_template_check.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tokenize/jinja.h"

namespace pqvk::jinja {
namespace {

std::string render(const std::string& src, const json& vars = json::object(), const Limits& limits = {}) {
  RenderOptions o;
  o.limits = limits;
  return Template(src, "t.jinja", limits).render(vars, o);
}

// The error a template raises (parsing or rendering); fails the test when there is none.
Error error_of(const std::string& src, const json& vars = json::object(), const Limits& limits = {}) {
  try {
    const std::string out = render(src, vars, limits);
    ADD_FAILURE() << "no error; rendered: " << out.substr(0, 200);
  } catch (const Error& e) {
    return e;
  }
  return Error("none", "", "", 0, 0);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

const json kMessages = json::parse(R"([
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi"},
  {"role": "assistant", "content": "Hello!"},
  {"role": "user", "content": "Bye"}])");

TEST(Jinja, RendersVariablesStatementsAndFilters) {
  const json vars = {{"messages", kMessages}, {"add_generation_prompt", true}};
  EXPECT_EQ(render("{% for m in messages %}<{{ m.role }}>{{ m['content'] | upper }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<assistant>{% endif %}",
                   vars),
            "<system>BE BRIEF.\n<user>HI\n<assistant>HELLO!\n<user>BYE\n<assistant>");
  EXPECT_EQ(render("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(', ') }}", vars),
            "Hi, Bye");
  EXPECT_EQ(render("{{ messages[1:] | length }} {{ messages[-1].content }} {{ (messages | last).role }}", vars),
            "3 Bye user");
  EXPECT_EQ(render("{{ {'b': [1, 2.5, none, true], 'a': 'é'} | tojson }}"), R"({"b": [1, 2.5, null, true], "a": "é"})");
  EXPECT_EQ(render("{{ x | tojson(indent=2) }}", {{"x", {{"k", json::array({1})}}}}), "{\n  \"k\": [\n    1\n  ]\n}");
}

TEST(Jinja, KeepsTheKeyOrderOfItsVariables) {
  const json vars = json::parse(R"({"d": {"zeta": 1, "alpha": 2, "mid": 3}})");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}{{ d | tojson }}", vars),
            R"(zeta=1 alpha=2 mid=3 {"zeta": 1, "alpha": 2, "mid": 3})");
}

TEST(Jinja, WhitespaceControlAsHuggingFaceSetsIt) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: the indentation before one.
  EXPECT_EQ(render("  {% if true %}\n  x\n  {% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render("a  \n  {%- if true -%}  \n  b {% endif %}"), "ab ");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
  EXPECT_EQ(render("x\n"), "x");  // one trailing newline is dropped
  EXPECT_EQ(render("a\r\nb\rc"), "a\nb\nc");
}

TEST(Jinja, ErrorsCarryTypeMessageAndPosition) {
  Error e = error_of("line one\n  {{ raise_exception('Roles must alternate') }}");
  EXPECT_EQ(e.type(), "TemplateError");
  EXPECT_EQ(e.message(), "Roles must alternate");
  EXPECT_EQ(e.line(), 2);
  EXPECT_EQ(e.column(), 6);
  EXPECT_EQ(e.where(), "t.jinja");
  EXPECT_STREQ(e.what(), "t.jinja:2:6: TemplateError: Roles must alternate");

  e = error_of("{{ messages[0].role }}", {{"messages", json::array()}});
  EXPECT_EQ(e.type(), "UndefinedError");
  EXPECT_EQ(e.message(), "list object has no element 0");

  e = error_of("{{ 'a' + 1 }}");
  EXPECT_EQ(e.type(), "TypeError");
  EXPECT_EQ(e.message(), "can only concatenate str (not \"int\") to str");

  e = error_of("ok\n{% for x in y %}\n{% endif %}");
  EXPECT_EQ(e.type(), "TemplateSyntaxError");
  EXPECT_EQ(e.line(), 3);
  EXPECT_NE(e.message().find("unknown tag 'endif'"), std::string::npos) << e.message();

  e = error_of("{{ 'abc }}");
  EXPECT_EQ(e.type(), "TemplateSyntaxError");
  EXPECT_EQ(error_of("{{ x | nosuchfilter }}").type(), "TemplateAssertionError");
  EXPECT_EQ(error_of("{% include 'other.jinja' %}").type(), "TemplateSyntaxError");
  EXPECT_EQ(error_of("{% for x in y recursive %}{% endfor %}").type(), "TemplateSyntaxError");
  EXPECT_EQ(error_of("{% break %}").type(), "TemplateSyntaxError");
  EXPECT_EQ(error_of("{{ 1 }}", json::array()).type(), "TypeError");  // variables must be an object
}

TEST(Jinja, RejectsTemplatesThatAreNotUtf8) {
  const Error e = error_of("ok \xC3\x28 bad");
  EXPECT_EQ(e.type(), "TemplateSyntaxError");
  EXPECT_NE(e.message().find("not valid UTF-8"), std::string::npos);
}

TEST(Jinja, LimitsStopRunawayTemplates) {
  Limits small;
  small.max_steps = 200000;
  small.max_output_bytes = 1 << 16;
  // Work: nested loops.
  EXPECT_EQ(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", json::object(), small).type(),
            "LimitError");
  // Output and string sizes.
  EXPECT_EQ(error_of("{% for i in range(100000) %}xxxxxxxx{% endfor %}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of("{{ 'a' * 100000000 }}", json::object(), small).type(), "LimitError");
  // Values that are small but whose text is not: one long string many times in a list.
  const std::string big = "{% set s = 'x' * 60000 %}{% set l = [s] * 100000 %}";
  EXPECT_EQ(error_of(big + "{{ l }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of(big + "{{ l | tojson }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of(big + "{{ l | join }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of(big + "{{ 'a' ~ l }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of(big + "{{ s.replace('', s) }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of(big + "{{ (s | replace('x', 'x\n')) | indent(60000) }}", json::object(), small).type(), "LimitError");
  EXPECT_EQ(error_of("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                     json::object(), small).type(),
            "LimitError");
  // Recursion through macros.
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").type(), "LimitError");
  // Nesting in the template itself.
  std::string deep;
  for (int i = 0; i < 500; ++i) deep += "(";
  deep = "{{ " + deep + "1";
  for (int i = 0; i < 500; ++i) deep += ")";
  EXPECT_EQ(error_of(deep + " }}").type(), "LimitError");
  std::string ifs;
  for (int i = 0; i < 300; ++i) ifs += "{% if true %}";
  EXPECT_EQ(error_of(ifs).type(), "LimitError");
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  EXPECT_EQ(error_of(chain + " }}").type(), "LimitError");
  // Values nested without bound, through lists and through namespaces.
  EXPECT_EQ(error_of("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}").type(),
            "LimitError");
  EXPECT_EQ(error_of("{% set ns = namespace() %}{% set ns.self = ns %}{{ ns }}").type(), "LimitError");
  // The template's size.
  Limits tiny;
  tiny.max_source_bytes = 16;
  EXPECT_EQ(error_of("{{ 'this template is too long' }}", json::object(), tiny).type(), "LimitError");
  // Deeply nested variables.
  json v = json::array();
  for (int i = 0; i < 1000; ++i) v = json::array({v});
  EXPECT_EQ(error_of("{{ v }}", {{"v", v}}).type(), "LimitError");
}

TEST(Jinja, MacroCalledAfterItsScopeEndedIsAnError) {
  // jinja2 would still run it; here a macro holds its scope weakly (no reference cycle).
  const Error e = error_of("{% set ns = namespace() %}{% for i in [1] %}{% macro m() %}x{% endmacro %}"
                           "{% set ns.m = m %}{{ ns.m() }}{% endfor %}|{{ ns.m() }}");
  EXPECT_EQ(e.type(), "TemplateRuntimeError");
  EXPECT_NE(e.message().find("macro 'm' is called after"), std::string::npos) << e.message();
}

TEST(Jinja, StrftimeNowUsesTheGivenClock) {
  RenderOptions o;
  o.now = [] { return std::time_t{86400 * 365}; };  // 1971-01-01 00:00 UTC
  const std::string s = Template("{{ strftime_now('%Y') }}").render(json::object(), o);
  EXPECT_TRUE(s == "1971" || s == "1970") << s;  // local time
}

TEST(Jinja, RendersConcurrently) {
  const Template t("{% for m in messages %}{{ m.content }}{% endfor %}");
  std::vector<std::string> out(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < out.size(); ++i)
    threads.emplace_back([&, i] { out[i] = t.render({{"messages", kMessages}}); });
  for (auto& th : threads) th.join();
  for (const std::string& s : out) EXPECT_EQ(s, "Be brief.HiHello!Bye");
}

// Mutations of the real templates (deleted, duplicated and swapped bytes and tokens) render or
// raise a jinja::Error: never another exception, a crash or a hang.
TEST(Jinja, MutatedRealTemplatesFailCleanly) {
  const std::string dir = std::string(PQVK_TEST_DATA) + "/chat-templates";
  std::vector<std::string> sources;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".jinja") sources.push_back(read_file(e.path().string()));
  ASSERT_GE(sources.size(), 5u);
  const json conv = json::parse(read_file(std::string(PQVK_TEST_DATA) + "/chat/conversations/tools.json"));
  json vars = conv;
  vars["add_generation_prompt"] = true;
  vars["bos_token"] = "<s>";
  vars["eos_token"] = "</s>";
  static const char* pieces[] = {"{%", "%}", "{{", "}}", "{#", "#}", "-", "+", "(", ")", "[", "]", "{", "}", "'",
                                 "\"", "|", ".", ",", ":", "=", " if ", " for ", " in ", " set ", "endif", "endfor",
                                 "not ", "\\", "\n", "loop", "ns", "1", "macro", "call", "caller()", "raw"};
  std::mt19937 rng(12345);
  Limits limits;
  limits.max_steps = 2'000'000;
  RenderOptions o;
  o.limits = limits;
  int rendered = 0, failed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = sources[rng() % sources.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      const size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0: s.erase(at, 1 + rng() % 8); break;
        case 1: s.insert(at, pieces[rng() % (sizeof pieces / sizeof *pieces)]); break;
        case 2: s.insert(at, s.substr(rng() % s.size(), 1 + rng() % 40)); break;
        default: std::swap(s[at], s[rng() % s.size()]); break;
      }
    }
    try {
      Template(s, "mutant", limits).render(vars, o);
      ++rendered;
    } catch (const Error&) {
      ++failed;
    }
  }
  EXPECT_GT(rendered, 100);
  EXPECT_GT(failed, 100);
}

}  // namespace
}  // namespace pqvk::jinja
