// The Jinja engine against jinja2: every snippet in the chat_templates/snippets.json fixture (written by
// tests/fixtures/make_chat_templates.py with the jinja2 environment transformers renders chat templates
// in) must render to the same text, or fail where jinja2 fails. Constructs the engine does not implement
// must be refused up front with UnsupportedError naming them.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "test_support.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/jinja/value.h"
#include "util/error.h"

namespace cartridge {
namespace {

nlohmann::ordered_json load_fixture(const std::string& relative) {
  std::ifstream file(testing::fixture_path(relative));
  if (!file) return nlohmann::ordered_json();
  return nlohmann::ordered_json::parse(file);
}

std::tm to_tm(const nlohmann::ordered_json& now) {
  std::tm time{};
  time.tm_year = now.at("year").get<int>() - 1900;
  time.tm_mon = now.at("month").get<int>() - 1;
  time.tm_mday = now.at("day").get<int>();
  time.tm_hour = now.at("hour").get<int>();
  time.tm_min = now.at("minute").get<int>();
  time.tm_sec = now.at("second").get<int>();
  std::mktime(&time);  // fills in the weekday and day of the year
  return time;
}

// Whether our error agrees with the exception jinja2 raised ("Class: message"): the same message for a
// template's own raise_exception(), the same Python exception class otherwise.
bool agrees_with_oracle(const std::string& ours, const std::string& oracle) {
  const size_t colon = oracle.find(": ");
  const std::string name = oracle.substr(0, colon);
  std::string message = colon == std::string::npos ? "" : oracle.substr(colon + 2);
  std::replace(message.begin(), message.end(), '\n', ' ');  // our messages are one line
  if (name == "TemplateError") return ours.find(message) != std::string::npos;
  return ours.find(name + ": ") != std::string::npos;
}

jinja::Dict to_variables(const nlohmann::ordered_json& object) {
  jinja::Dict variables;
  for (const auto& [key, value] : object.items()) variables.set(key, jinja::value_from_json(value));
  return variables;
}

TEST(Jinja, SnippetsMatchJinja2) {
  const nlohmann::ordered_json fixture = load_fixture("chat_templates/snippets.json");
  ASSERT_TRUE(fixture.contains("snippets"));
  const std::tm now = to_tm(fixture["now"]);
  int checked = 0;
  for (const auto& snippet : fixture["snippets"]) {
    const std::string source = snippet["template"].get<std::string>();
    SCOPED_TRACE("template: " + source);
    const jinja::Dict variables = to_variables(snippet["variables"]);
    if (snippet.contains("expected")) {
      try {
        const jinja::Template compiled(source, "snippet");
        EXPECT_EQ(compiled.render(variables, now), snippet["expected"].get<std::string>());
      } catch (const Error& error) {
        ADD_FAILURE() << "jinja2 renders it, we threw: " << error.what();
      }
    } else {
      // jinja2 fails: we must fail too (at parse or render time), with a one-line message.
      try {
        const jinja::Template compiled(source, "snippet");
        const std::string output = compiled.render(variables, now);
        ADD_FAILURE() << "jinja2 raised " << snippet["error"] << " but we rendered: " << output;
      } catch (const UnsupportedError& error) {
        ADD_FAILURE() << "jinja2 raised " << snippet["error"]
                      << "; we called it unsupported: " << error.what();
      } catch (const Error& error) {
        EXPECT_TRUE(agrees_with_oracle(error.what(), snippet["error"].get<std::string>()))
            << "jinja2: " << snippet["error"] << "; ours: " << error.what();
        EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
        EXPECT_EQ(std::string(error.what()).rfind("snippet", 0), 0u) << error.what();
      }
    }
    ++checked;
  }
  EXPECT_GT(checked, 80);
}

struct UnsupportedCase {
  const char* source;
  const char* construct;  // what the error message must name
};

TEST(Jinja, RefusesWhatItDoesNotImplement) {
  const UnsupportedCase cases[] = {
      {"{% include 'other.jinja' %}", "{% include %}"},
      {"{% extends 'base.jinja' %}", "{% extends %}"},
      {"{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}", "{% call %}"},
      {"{% block body %}x{% endblock %}", "{% block %}"},
      {"{% autoescape true %}{{ x }}{% endautoescape %}", "{% autoescape %}"},
      {"{% for x in xs recursive %}{{ loop(x.children) }}{% endfor %}", "recursive for loops"},
      {"{{ xs|groupby('a') }}", "filter 'groupby'"},
      {"{% if x %}{{ xs|truncate(5) }}{% endif %}", "filter 'truncate'"},
      {"{{ lipsum(2) }}", "global 'lipsum'"},
      {"{{ 'A'.casefold() }}", "method 'casefold()'"},
      {"{{ text.translate(table) }}", "method 'translate()'"},
  };
  for (const UnsupportedCase& unsupported : cases) {
    SCOPED_TRACE(unsupported.source);
    try {
      jinja::Template compiled(unsupported.source, "probe.jinja");
      ADD_FAILURE() << "accepted a template using " << unsupported.construct;
    } catch (const UnsupportedError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(unsupported.construct), std::string::npos) << message;
      EXPECT_EQ(message.rfind("probe.jinja line 1: ", 0), 0u) << message;
    }
  }
}

TEST(Jinja, IntOfANumberBeyond64BitsIsRefusedNotUndefined) {
  // jinja2's int is Python's (unbounded); ours is 64 bits. A float or a numeric string beyond it is refused
  // (converting such a double to int64 is undefined behaviour; the chat_template fuzz target found the string
  // case, fuzz/corpus/chat_template/int_filter_beyond_64_bits.jinja).
  const std::tm now{};
  for (const char* source :
       {"{{ 4.3e39|int }}", "{{ '4333333333333333333333333333333333333333.5'|int }}", "{{ '-1e19'|int }}"}) {
    SCOPED_TRACE(source);
    jinja::Template compiled(source, "int.jinja");
    EXPECT_THROW(compiled.render(jinja::Dict(), now), UnsupportedError);
  }
  EXPECT_EQ(jinja::Template("{{ '-9.1e18'|int }}", "int.jinja").render(jinja::Dict(), now),
            "-9100000000000000000");
}

TEST(Jinja, ErrorsNameTemplateAndLine) {
  const std::tm now{};
  try {
    jinja::Template compiled("line one\n{% if x %}\n{{ raise_exception('bad roles') }}\n{% endif %}",
                             "roles.jinja");
    jinja::Dict variables;
    variables.set("x", jinja::Value::boolean(true));
    compiled.render(variables, now);
    FAIL() << "raise_exception did not raise";
  } catch (const UnsupportedError& error) {
    FAIL() << error.what();
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "roles.jinja line 3: the template refused to render: bad roles (check the "
              "messages and options passed to it)");
  }
  try {
    jinja::Template compiled("ok\n{{ 'open", "broken.jinja");
    FAIL() << "parsed an unterminated string";
  } catch (const FormatError& error) {
    EXPECT_EQ(std::string(error.what()).rfind("broken.jinja line 2: not a valid Jinja template", 0), 0u)
        << error.what();
  }
}

TEST(Jinja, HostileTemplatesFailCleanly) {
  const std::tm now{};
  // Unbounded recursion stops with an error instead of exhausting the stack.
  jinja::Template recursive("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursive.jinja");
  EXPECT_THROW(recursive.render(jinja::Dict(), now), Error);
  // Huge ranges are refused like jinja2's sandbox does.
  jinja::Template huge("{% for i in range(10**9) %}x{% endfor %}", "huge.jinja");
  EXPECT_THROW(huge.render(jinja::Dict(), now), Error);
  // Deeply nested brackets are a syntax error, not a crash.
  EXPECT_THROW(jinja::Template("{{ " + std::string(100000, '(') + " }}", "nested.jinja"), FormatError);
  EXPECT_THROW(jinja::Template("{{ " + std::string(100000, '[') + " }}", "nested.jinja"), FormatError);
  std::string nested_ifs;
  for (int i = 0; i < 100000; ++i) nested_ifs += "{% if x %}";
  EXPECT_THROW(jinja::Template(nested_ifs, "nested.jinja"), FormatError);
  // Values nested deeper than Python could print fail like Python's RecursionError.
  jinja::Template deep(
      "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}"
      "{{ ns.x }}",
      "deep.jinja");
  EXPECT_THROW(deep.render(jinja::Dict(), now), Error);
  // A string doubled in a loop stops at a size limit instead of exhausting memory.
  jinja::Template doubling(
      "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
      "{% endfor %}{{ ns.s|length }}",
      "doubling.jinja");
  EXPECT_THROW(doubling.render(jinja::Dict(), now), UnsupportedError);
  jinja::Template repeated("{{ 'x' * 10**15 }}", "repeated.jinja");
  EXPECT_THROW(repeated.render(jinja::Dict(), now), UnsupportedError);
}

}  // namespace
}  // namespace cartridge
