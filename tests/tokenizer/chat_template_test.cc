// ChatTemplate against transformers' apply_chat_template on real chat templates: every template in the
// chat_templates/templates.json fixture (llama.cpp's models/templates, the SmolLM2 GGUF's own template,
// the Qwen3 and Llama-3 tokenizer_config.json templates) rendered on several conversations, with the
// generation prompt off and on, must give byte-identical text, or fail where transformers fails, or be
// refused as unsupported. Never different text. docs/chat_templates.md is generated from these results.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "util/error.h"

namespace cartridge {
namespace {

nlohmann::ordered_json load_templates_fixture() {
  std::ifstream file(testing::fixture_path("chat_templates/templates.json"));
  if (!file) return nlohmann::ordered_json();
  return nlohmann::ordered_json::parse(file);
}

const nlohmann::ordered_json& fixture() {
  static const nlohmann::ordered_json loaded = load_templates_fixture();
  return loaded;
}

std::tm fixed_now() {
  const auto& now = fixture().at("now");
  std::tm time{};
  time.tm_year = now.at("year").get<int>() - 1900;
  time.tm_mon = now.at("month").get<int>() - 1;
  time.tm_mday = now.at("day").get<int>();
  time.tm_hour = now.at("hour").get<int>();
  time.tm_min = now.at("minute").get<int>();
  time.tm_sec = now.at("second").get<int>();
  std::mktime(&time);  // weekday and day of the year
  return time;
}

ChatTemplateOptions options_for(const nlohmann::ordered_json& test_case) {
  ChatTemplateOptions options;
  options.add_generation_prompt = test_case.at("add_generation_prompt").get<bool>();
  options.extra_variables = test_case.at("extra_variables");
  options.now = fixed_now();
  return options;
}

const nlohmann::ordered_json& messages_of(const nlohmann::ordered_json& test_case) {
  return fixture().at("conversations").at(test_case.at("conversation").get<std::string>());
}

const nlohmann::ordered_json* find_template(const std::string& name) {
  for (const auto& entry : fixture().at("templates")) {
    if (entry.at("name") == name) return &entry;
  }
  return nullptr;
}

ChatTemplate make_template(const nlohmann::ordered_json& entry) {
  return ChatTemplate(entry.at("source").get<std::string>(), entry.at("bos_token").get<std::string>(),
                      entry.at("eos_token").get<std::string>(), entry.at("name").get<std::string>());
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

// Where the first difference is, for a readable failure.
std::string first_difference(const std::string& ours, const std::string& expected) {
  size_t i = 0;
  while (i < ours.size() && i < expected.size() && ours[i] == expected[i]) ++i;
  const size_t from = i > 40 ? i - 40 : 0;
  return "byte " + std::to_string(i) + ": ours ..." + ours.substr(from, 120) + "... expected ..." +
         expected.substr(from, 120) + "...";
}

struct TemplateResult {
  std::string name;
  std::string origin;
  enum class Status { kIdentical, kUnsupported, kWrong } status = Status::kIdentical;
  int rendered = 0;            // cases rendered byte-identically
  int failed_like_oracle = 0;  // cases where transformers raised and so did we
  int cases = 0;
  std::string reason;  // why unsupported, or the first mismatch
};

TemplateResult check_template(const nlohmann::ordered_json& entry) {
  TemplateResult result;
  result.name = entry.at("name").get<std::string>();
  result.origin = entry.at("origin").get<std::string>();
  result.cases = static_cast<int>(entry.at("cases").size());
  std::optional<ChatTemplate> chat_template;
  try {
    chat_template.emplace(make_template(entry));
  } catch (const UnsupportedError& error) {
    result.status = TemplateResult::Status::kUnsupported;
    result.reason = error.what();
    return result;
  } catch (const Error& error) {
    // transformers compiles every template that reaches a render; a template it fails on at compile time
    // fails every case there, which counts as agreeing.
    bool oracle_failed_everywhere = true;
    for (const auto& test_case : entry.at("cases")) {
      oracle_failed_everywhere &= test_case.contains("error") &&
                                  agrees_with_oracle(error.what(), test_case.at("error").get<std::string>());
    }
    if (!oracle_failed_everywhere) {
      result.status = TemplateResult::Status::kWrong;
      result.reason = std::string("we refused to parse it: ") + error.what();
    } else {
      result.failed_like_oracle = result.cases;
    }
    return result;
  }
  for (const auto& test_case : entry.at("cases")) {
    const std::string id = test_case.at("id").get<std::string>();
    try {
      const std::string ours = chat_template->render_json(messages_of(test_case), options_for(test_case));
      if (!test_case.contains("expected")) {
        result.status = TemplateResult::Status::kWrong;
        result.reason = id + ": transformers raised " + test_case.at("error").get<std::string>() +
                        " but we rendered " + std::to_string(ours.size()) + " bytes";
        return result;
      }
      const std::string expected = test_case.at("expected").get<std::string>();
      if (ours != expected) {
        result.status = TemplateResult::Status::kWrong;
        result.reason = id + ": " + first_difference(ours, expected);
        return result;
      }
      ++result.rendered;
    } catch (const UnsupportedError& error) {
      if (test_case.contains("error")) {
        ++result.failed_like_oracle;
        continue;
      }
      result.status = TemplateResult::Status::kUnsupported;
      result.reason = id + ": " + error.what();
    } catch (const Error& error) {
      if (!test_case.contains("error")) {
        result.status = TemplateResult::Status::kWrong;
        result.reason = id + ": transformers renders it, we raised: " + error.what();
        return result;
      }
      if (!agrees_with_oracle(error.what(), test_case.at("error").get<std::string>())) {
        result.status = TemplateResult::Status::kWrong;
        result.reason = id + ": transformers raised " + test_case.at("error").get<std::string>() +
                        ", we raised: " + error.what();
        return result;
      }
      ++result.failed_like_oracle;
    }
  }
  // Raising wherever transformers raises proves little on its own: a template counts as identical only
  // when at least one of its renders was compared byte for byte.
  if (result.status == TemplateResult::Status::kIdentical && result.rendered == 0) {
    result.status = TemplateResult::Status::kWrong;
    result.reason =
        "transformers rendered none of its cases: add a conversation it accepts to "
        "tests/fixtures/make_chat_templates.py";
  }
  return result;
}

std::string escape_table_cell(std::string text) {
  std::string out;
  for (char c : text) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n') {
      out += ' ';
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string render_docs(const std::vector<TemplateResult>& results) {
  int identical = 0;
  int unsupported = 0;
  for (const TemplateResult& result : results) {
    identical += result.status == TemplateResult::Status::kIdentical;
    unsupported += result.status == TemplateResult::Status::kUnsupported;
  }
  std::ostringstream out;
  out << "# Chat templates: what cartridge.cpp renders\n\n"
      << "Generated by `tests/tokenizer/chat_template_test.cc` (test "
         "`ChatTemplate.RealTemplatesMatchTransformers`)\n"
      << "from its results; do not edit by hand. Regenerate with\n"
      << "`CARTRIDGE_UPDATE_DOCS=1 build/tokenizer_test --gtest_filter='ChatTemplate.RealTemplates*'`\n"
      << "(the fixtures must exist: `.venv/bin/python tests/fixtures/make_all.py --out build/fixtures --only "
         "chat_templates`).\n\n"
      << "Each template is rendered on the conversations of `tests/fixtures/make_chat_templates.py` (user "
         "only,\n"
      << "system + user, multi-turn, ending with the assistant, unicode, reasoning, tool calls with a tool "
         "list),\n"
      << "each with `add_generation_prompt` off and on, plus `enable_thinking` false/true, documents, a tool "
         "list\n"
      << "without tool calls, and firefunction's `functions`/`datetime` variables, and compared with\n"
      << "transformers' `apply_chat_template(..., tokenize=False)` (strftime_now fixed to one date).\n\n"
      << "- **identical**: every render is byte-identical to transformers (at least one render per "
         "template),\n"
      << "  and where transformers raises (the template refuses the conversation, e.g. a system role it "
         "does\n"
      << "  not support) we raise too.\n"
      << "- **unsupported**: the template uses Jinja that cartridge.cpp's engine does not implement; it is\n"
      << "  refused with an error naming the construct, never rendered approximately.\n\n"
      << identical << " of " << results.size() << " templates render identically; " << unsupported
      << " are unsupported.\n\n"
      << "| template | source | result | renders identical | transformers raises, we raise | note |\n"
      << "|---|---|---|---|---|---|\n";
  for (const TemplateResult& result : results) {
    const char* status = result.status == TemplateResult::Status::kIdentical     ? "identical"
                         : result.status == TemplateResult::Status::kUnsupported ? "unsupported"
                                                                                 : "WRONG";
    out << "| " << escape_table_cell(result.name) << " | " << escape_table_cell(result.origin) << " | "
        << status << " | " << result.rendered << "/" << result.cases << " | " << result.failed_like_oracle
        << " | " << escape_table_cell(result.reason) << " |\n";
  }
  return out.str();
}

TEST(ChatTemplate, RealTemplatesMatchTransformers) {
  ASSERT_TRUE(fixture().contains("templates"));
  std::vector<TemplateResult> results;
  for (const auto& entry : fixture().at("templates")) {
    results.push_back(check_template(entry));
    const TemplateResult& result = results.back();
    EXPECT_NE(result.status, TemplateResult::Status::kWrong) << result.name << ": " << result.reason;
  }
  EXPECT_GE(results.size(), 70u);
  // The templates the project relies on must render, not just be refused.
  for (const char* required : {"SmolLM2-135M-Instruct.Q4_1.gguf", "qwen3/tokenizer_config.json",
                               "llama3/tokenizer_config.json", "meta-llama-Llama-3.1-8B-Instruct.jinja",
                               "Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja"}) {
    const auto found =
        std::find_if(results.begin(), results.end(), [&](const auto& r) { return r.name == required; });
    ASSERT_NE(found, results.end()) << required;
    EXPECT_EQ(found->status, TemplateResult::Status::kIdentical) << required << ": " << found->reason;
    EXPECT_GT(found->rendered, 0) << required;
  }

  const std::string docs = render_docs(results);
  const std::string docs_path = testing::repo_root() + "/docs/chat_templates.md";
  const char* update = std::getenv("CARTRIDGE_UPDATE_DOCS");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream(docs_path) << docs;
  } else {
    std::ifstream file(docs_path);
    std::stringstream committed;
    committed << file.rdbuf();
    EXPECT_EQ(committed.str(), docs) << docs_path
                                     << " is out of date; regenerate it with CARTRIDGE_UPDATE_DOCS=1";
  }
}

TEST(ChatTemplate, ConcurrentRendersAgree) {
  // One ChatTemplate shared by many threads (as the server shares it) renders every case correctly.
  std::vector<const nlohmann::ordered_json*> entries;
  for (const char* name :
       {"meta-llama-Llama-3.1-8B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja", "openai-gpt-oss-120b.jinja"}) {
    if (const auto* entry = find_template(name)) entries.push_back(entry);
  }
  ASSERT_FALSE(entries.empty());
  for (const auto* entry : entries) {
    const ChatTemplate shared = make_template(*entry);
    std::atomic<int> mismatches{0};
    std::atomic<int> renders{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int repeat = 0; repeat < 5; ++repeat) {
          for (size_t i = t % 3; i < entry->at("cases").size(); ++i) {
            const auto& test_case = entry->at("cases")[i];
            if (!test_case.contains("expected")) continue;
            try {
              if (shared.render_json(messages_of(test_case), options_for(test_case)) !=
                  test_case.at("expected")) {
                ++mismatches;
              }
            } catch (const Error&) {
              ++mismatches;
            }
            ++renders;
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(mismatches.load(), 0) << entry->at("name");
    EXPECT_GT(renders.load(), 0);
  }
}

TEST(ChatTemplate, RenderOfRoleContentMessagesEqualsRenderJson) {
  const auto* entry = find_template("qwen3/tokenizer_config.json");
  ASSERT_NE(entry, nullptr);
  const ChatTemplate chat_template = make_template(*entry);
  for (const auto& test_case : entry->at("cases")) {
    if (!test_case.contains("expected")) continue;
    std::vector<ChatMessage> messages;
    bool plain = true;
    for (const auto& message : messages_of(test_case)) {
      plain &= message.size() == 2 && message.contains("role") && message.contains("content") &&
               message["content"].is_string();
      if (plain)
        messages.push_back({message["role"].get<std::string>(), message["content"].get<std::string>()});
    }
    if (!plain) continue;
    EXPECT_EQ(chat_template.render(messages, options_for(test_case)), test_case.at("expected"))
        << test_case.at("id");
  }
}

TEST(ChatTemplate, DateDefaultsToTodayAndCanBeFixed) {
  // Llama 3.2 prints strftime_now("%d %b %Y") (Llama 3.1 has a fixed date instead).
  const auto* entry = find_template("meta-llama-Llama-3.2-3B-Instruct.jinja");
  ASSERT_NE(entry, nullptr);
  const ChatTemplate chat_template = make_template(*entry);
  auto today = [] {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buffer[64];
    std::strftime(buffer, sizeof(buffer), "%d %b %Y", &local);
    return std::string(buffer);
  };
  const std::string before = today();
  const std::string rendered = chat_template.render({{"user", "hi"}});
  const std::string after = today();
  EXPECT_TRUE(rendered.find("Today Date: " + before) != std::string::npos ||
              rendered.find("Today Date: " + after) != std::string::npos)
      << rendered;

  ChatTemplateOptions options;
  options.now = fixed_now();
  char fixed[64];
  std::strftime(fixed, sizeof(fixed), "%d %b %Y", &*options.now);
  EXPECT_NE(chat_template.render({{"user", "hi"}}, options).find(std::string("Today Date: ") + fixed),
            std::string::npos);
}

TEST(ChatTemplate, RejectsBadConversations) {
  const auto* entry = find_template("Qwen-Qwen2.5-7B-Instruct.jinja");
  ASSERT_NE(entry, nullptr);
  const ChatTemplate chat_template = make_template(*entry);
  EXPECT_THROW(chat_template.render({}), InvalidArgumentError);
  EXPECT_THROW(chat_template.render_json(nlohmann::ordered_json::array({"not an object"})),
               InvalidArgumentError);
  EXPECT_THROW(chat_template.render_json(nlohmann::ordered_json::object()), InvalidArgumentError);
  ChatTemplateOptions options;
  options.extra_variables = nlohmann::ordered_json::array();
  EXPECT_THROW(chat_template.render({{"user", "hi"}}, options), InvalidArgumentError);
}

TEST(ChatTemplate, TemplateRefusalsAreOneLineErrorsNamingTheTemplate) {
  // gemma-2 refuses a system message through raise_exception (transformers raises the same).
  const auto* entry = find_template("google-gemma-2-2b-it.jinja");
  ASSERT_NE(entry, nullptr);
  const ChatTemplate chat_template = make_template(*entry);
  try {
    chat_template.render({{"system", "be brief"}, {"user", "hi"}});
    FAIL() << "gemma-2 accepted a system message";
  } catch (const UnsupportedError& error) {
    FAIL() << error.what();
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("google-gemma-2-2b-it.jinja line ", 0), 0u) << message;
    EXPECT_NE(message.find("System role not supported"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(ChatTemplate, JsonArgumentConvertsImplicitly) {
  // A plain nlohmann::json (sorted keys) works as well as an ordered one.
  const auto* entry = find_template("SmolLM2-135M-Instruct.Q4_1.gguf");
  ASSERT_NE(entry, nullptr);
  const ChatTemplate chat_template = make_template(*entry);
  const nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(chat_template.render_json(messages), chat_template.render({{"user", "hi"}}));
  ChatTemplateOptions options;
  options.extra_variables = nlohmann::json{{"add_generation_prompt", true}};
  EXPECT_EQ(chat_template.render_json(messages, options), chat_template.render({{"user", "hi"}}, options));
  EXPECT_NE(chat_template.render_json(messages, options), chat_template.render_json(messages));
}

}  // namespace
}  // namespace cartridge
