// The OpenAI gateway over real loopback TCP (libcurl and raw sockets) against a scripted fake
// InferenceFrontend and a fake Authenticator.
#include "inferbox/daemon/openai_gateway.h"

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "openai_client.h"
#include "openai_fakes.h"

namespace inferbox::daemon {
namespace {

namespace json = boost::json;
namespace v1 = inferbox::v1;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using namespace inferbox::daemon::openai_test;

class OpenAiGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    v1::ModelInfo model;
    model.set_id("m");
    model.set_created(1700000000);
    model.set_owned_by("inferbox");
    model.set_max_model_len(4096);
    model.set_state(v1::MODEL_STATE_READY);
    v1::ModelInfo slashed = model;
    slashed.set_id("org/model-7b");
    frontend_.SetModels({model, slashed});
    frontend_.SetScript(HelloScript());
  }

  void StartGateway(OpenAiGateway::Options options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    auto started = OpenAiGateway::Start(options, frontend_, authenticator_);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    gateway_ = std::move(started).value();
  }

  OpenAiGateway& gateway() {
    if (!gateway_) StartGateway();
    return *gateway_;
  }

  std::string Url(std::string_view path) {
    return fmt::format("http://127.0.0.1:{}{}", gateway().port(), path);
  }

  Reply Post(std::string_view path, const std::string& body,
             std::vector<std::string> headers = {"Authorization: Bearer good"}) {
    Client client;
    return client.Request("POST", Url(path), &body, headers);
  }
  Reply Get(std::string_view path,
            std::vector<std::string> headers = {"Authorization: Bearer good"}) {
    Client client;
    return client.Request("GET", Url(path), nullptr, headers);
  }

  FakeFrontend frontend_;
  FakeAuthenticator authenticator_;
  std::unique_ptr<OpenAiGateway> gateway_;
};

const std::string kChatBody = R"({"model":"m","messages":[{"role":"user","content":"Hi"}]})";

TEST_F(OpenAiGatewayTest, ChatCompletionHasTheOpenAiShape) {
  const Reply reply = Post("/v1/chat/completions", kChatBody);
  ASSERT_EQ(reply.status, 200) << reply.error << reply.body;
  EXPECT_THAT(reply.Header("content-type"), HasSubstr("application/json"));
  const json::object body = reply.Json().as_object();
  const std::string id(body.at("id").as_string());
  EXPECT_TRUE(id.starts_with("chatcmpl-")) << id;
  EXPECT_EQ(body.at("object"), "chat.completion");
  EXPECT_GT(body.at("created").to_number<int64_t>(), 1'600'000'000);
  EXPECT_EQ(body.at("model"), "m");
  const json::array& choices = body.at("choices").as_array();
  ASSERT_EQ(choices.size(), 1u);
  const json::object& choice = choices[0].as_object();
  EXPECT_EQ(choice.at("index"), 0);
  EXPECT_EQ(choice.at("message"), (json::object{{"role", "assistant"}, {"content", "Hello!"}}))
      << "no reasoning_content when the model did not reason";
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_EQ(choice.at("finish_reason"), "stop");
  EXPECT_EQ(body.at("usage"),
            (json::object{{"prompt_tokens", 5},
                          {"completion_tokens", 3},
                          {"total_tokens", 8},
                          {"prompt_tokens_details", json::object{{"cached_tokens", 2}}}}));

  const auto requests = frontend_.chat_requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].model(), "m");
  EXPECT_EQ(requests[0].request_id(), id) << "the proto carries the response id for the logs";
  ASSERT_EQ(requests[0].messages_size(), 1);
  EXPECT_EQ(requests[0].messages(0).role(), "user");
  EXPECT_EQ(requests[0].messages(0).content(), "Hi");
  EXPECT_EQ(frontend_.caller_key_ids(), std::vector<std::string>{"good"});
}

// Replaces what differs between runs (id, created) so that a stream compares with a golden.
std::string Normalized(const std::string& data, std::string* id) {
  if (data == "[DONE]") return data;
  json::object chunk = json::parse(data).as_object();
  if (chunk.contains("error")) return data;
  const std::string chunk_id(chunk.at("id").as_string());
  if (id->empty()) *id = chunk_id;
  EXPECT_EQ(chunk_id, *id) << "every chunk carries the same id";
  EXPECT_GT(chunk.at("created").to_number<int64_t>(), 0);
  chunk["id"] = "ID";
  chunk["created"] = 0;
  return json::serialize(chunk);
}

std::vector<std::string> NormalizedEvents(const std::string& body) {
  std::vector<std::string> events;
  std::string id;
  for (const std::string& data : ParseSse(body).data) events.push_back(Normalized(data, &id));
  return events;
}

TEST_F(OpenAiGatewayTest, ChatStreamFramingMatchesTheGolden) {
  const Reply reply = Post("/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                               "stream":true})");
  ASSERT_EQ(reply.status, 200) << reply.error << reply.body;
  EXPECT_EQ(reply.Header("content-type"), "text/event-stream");
  EXPECT_EQ(reply.Header("cache-control"), "no-cache");
  const std::string head =
      R"({"id":"ID","object":"chat.completion.chunk","created":0,"model":"m",)";
  const std::vector<std::string> golden = {
      head +
          R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"lo"},"logprobs":null,"finish_reason":null}]})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop"}]})",
      "[DONE]",
  };
  EXPECT_EQ(NormalizedEvents(reply.body), golden)
      << "role only first, finish_reason null until the one final, no usage key, [DONE] last";
}

TEST_F(OpenAiGatewayTest, ChatStreamWithIncludeUsageEndsWithOneUsageChunk) {
  const Reply reply = Post("/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                               "stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(reply.status, 200) << reply.error << reply.body;
  const std::string head =
      R"({"id":"ID","object":"chat.completion.chunk","created":0,"model":"m",)";
  const std::vector<std::string> golden = {
      head +
          R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"lo"},"logprobs":null,"finish_reason":null}],"usage":null})",
      head +
          R"("choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop"}],"usage":null})",
      head +
          R"("choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}})",
      "[DONE]",
  };
  EXPECT_EQ(NormalizedEvents(reply.body), golden);
}

TEST_F(OpenAiGatewayTest, FinalChunkWithoutTextHasAnEmptyDelta) {
  frontend_.SetScript({.chunks = {Chunk("Hi"), Final("", v1::FINISH_REASON_LENGTH)}});
  const Reply reply = Post("/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                               "stream":true})");
  ASSERT_EQ(reply.status, 200) << reply.error;
  const Events events = ParseSse(reply.body);
  ASSERT_EQ(events.data.size(), 4u) << reply.body;
  const json::object last = json::parse(events.data[2]).as_object();
  EXPECT_EQ(last.at("choices").as_array()[0].at("delta"), json::object());
  EXPECT_EQ(last.at("choices").as_array()[0].at("finish_reason"), "length");
}

TEST_F(OpenAiGatewayTest, CompletionsNonStreamingAndStreaming) {
  Reply reply = Post("/v1/completions", R"({"model":"m","prompt":"Say"})");
  ASSERT_EQ(reply.status, 200) << reply.error << reply.body;
  json::object body = reply.Json().as_object();
  EXPECT_TRUE(std::string(body.at("id").as_string()).starts_with("cmpl-"));
  EXPECT_EQ(body.at("object"), "text_completion");
  const json::object& choice = body.at("choices").as_array()[0].as_object();
  EXPECT_EQ(choice.at("text"), "Hello!");
  EXPECT_EQ(choice.at("finish_reason"), "stop");
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_EQ(body.at("usage").at("total_tokens"), 8);
  ASSERT_EQ(frontend_.generate_requests().size(), 1u);
  const v1::GenerateRequest request = frontend_.generate_requests()[0];
  EXPECT_EQ(request.text(), "Say");
  EXPECT_EQ(request.stop().max_tokens(), 16u) << "the legacy default when max_tokens is absent";
  EXPECT_EQ(request.request_id(), std::string(body.at("id").as_string()));

  reply = Post("/v1/completions", R"({"model":"m","prompt":"Say","stream":true})");
  ASSERT_EQ(reply.status, 200) << reply.error;
  const std::string head = R"({"id":"ID","object":"text_completion","created":0,"model":"m",)";
  const std::vector<std::string> golden = {
      head + R"("choices":[{"index":0,"text":"Hel","logprobs":null,"finish_reason":null}]})",
      head + R"("choices":[{"index":0,"text":"lo","logprobs":null,"finish_reason":null}]})",
      head + R"("choices":[{"index":0,"text":"!","logprobs":null,"finish_reason":"stop"}]})",
      "[DONE]",
  };
  EXPECT_EQ(NormalizedEvents(reply.body), golden);
}

TEST_F(OpenAiGatewayTest, CompletionPromptForms) {
  ASSERT_EQ(Post("/v1/completions", R"({"model":"m","prompt":[1,2,3],"max_tokens":null})").status,
            200);
  ASSERT_EQ(Post("/v1/completions", R"({"model":"m","prompt":["one"]})").status, 200);
  ASSERT_EQ(Post("/v1/completions", R"({"model":"m","prompt":[[7,8]]})").status, 200);
  const auto requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 3u);
  ASSERT_TRUE(requests[0].has_token_ids());
  EXPECT_THAT(requests[0].token_ids().ids(), ::testing::ElementsAre(1u, 2u, 3u));
  EXPECT_EQ(requests[0].stop().max_tokens(), 0u) << "null max_tokens: up to the context";
  EXPECT_EQ(requests[1].text(), "one");
  EXPECT_THAT(requests[2].token_ids().ids(), ::testing::ElementsAre(7u, 8u));

  for (const std::string body :
       {R"({"model":"m","prompt":["a","b"]})", R"({"model":"m","prompt":"a","echo":true})",
        R"({"model":"m","prompt":[1,-2]})", R"({"model":"m"})",
        R"({"model":"m","prompt":"a","best_of":3})"}) {
    const Reply reply = Post("/v1/completions", body);
    EXPECT_EQ(reply.status, 400) << body << " -> " << reply.body;
  }
  EXPECT_EQ(frontend_.generate_requests().size(), 3u) << "rejected requests never reach it";
}

TEST_F(OpenAiGatewayTest, CompletionLegacyLogprobs) {
  v1::GenerateChunk first = Chunk("Hel");
  AddLogprob(&first, "Hel", -0.5f, {{"Hel", -0.5f}, {"He", -1.25f}});
  v1::GenerateChunk last = Final("lo");
  AddLogprob(&last, "lo", -0.25f, {{"lo", -0.25f}, {"la", -2.0f}});
  frontend_.SetScript({.chunks = {first, last}});
  const Reply reply = Post("/v1/completions", R"({"model":"m","prompt":"x","logprobs":2})");
  ASSERT_EQ(reply.status, 200) << reply.body;
  const json::value logprobs = reply.Json().at("choices").as_array()[0].at("logprobs");
  EXPECT_EQ(logprobs, json::parse(R"({"tokens":["Hel","lo"],"token_logprobs":[-0.5,-0.25],
      "top_logprobs":[{"Hel":-0.5,"He":-1.25},{"lo":-0.25,"la":-2.0}],"text_offset":[0,3]})"));
  const v1::GenerateRequest request = frontend_.generate_requests().back();
  EXPECT_TRUE(request.logprobs().enabled());
  EXPECT_EQ(request.logprobs().top_logprobs(), 2u);
}

TEST_F(OpenAiGatewayTest, ChatLogprobsHaveTheOpenAiShape) {
  v1::GenerateChunk chunk = Final("é");
  AddLogprob(&chunk, "\xC3\xA9", -0.125f, {{"\xC3\xA9", -0.125f}, {"\xC3", -3.0f}});
  frontend_.SetScript({.chunks = {chunk}});
  const Reply reply =
      Post("/v1/chat/completions",
           R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"logprobs":true,
               "top_logprobs":2})");
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.Json().at("choices").as_array()[0].at("logprobs"),
            json::parse(R"({"content":[{"token":"é","logprob":-0.125,"bytes":[195,169],
                "top_logprobs":[{"token":"é","logprob":-0.125,"bytes":[195,169]},
                                {"token":"\uFFFD","logprob":-3.0,"bytes":[195]}]}]})"))
      << "a partial UTF-8 token is replaced in `token` and exact in `bytes`";
}

TEST_F(OpenAiGatewayTest, ModelsListAndLookup) {
  Reply reply = Get("/v1/models");
  ASSERT_EQ(reply.status, 200) << reply.body;
  const json::object list = reply.Json().as_object();
  EXPECT_EQ(list.at("object"), "list");
  ASSERT_EQ(list.at("data").as_array().size(), 2u);
  EXPECT_EQ(list.at("data").as_array()[0], (json::object{{"id", "m"},
                                                         {"object", "model"},
                                                         {"created", 1700000000},
                                                         {"owned_by", "inferbox"},
                                                         {"max_model_len", 4096}}));

  reply = Get("/v1/models/m");
  ASSERT_EQ(reply.status, 200);
  EXPECT_EQ(reply.Json().at("id"), "m");
  reply = Get("/v1/models/org/model-7b");
  ASSERT_EQ(reply.status, 200) << "ids with a slash are the rest of the path";
  EXPECT_EQ(reply.Json().at("id"), "org/model-7b");
  reply = Get("/v1/models/org%2Fmodel-7b");
  EXPECT_EQ(reply.status, 200) << "percent-encoded ids are decoded";

  reply = Get("/v1/models/nope");
  EXPECT_EQ(reply.status, 404);
  EXPECT_EQ(reply.Json().at("error").at("code"), "model_not_found");
}

// R1.8: a model that is not loaded is 404 by id and missing from the list; one whose engine is
// restarting or draining is still loaded (its requests get 503 with Retry-After meanwhile).
TEST_F(OpenAiGatewayTest, ModelsNotLoadedAreNotFoundAndNotListed) {
  v1::ModelInfo model;
  model.set_id("m");
  model.set_owned_by("inferbox");
  for (const auto& [state, reason] : std::vector<std::pair<v1::ModelState, std::string>>{
           {v1::MODEL_STATE_LOADING, "still loading"},
           {v1::MODEL_STATE_FAILED, "engine failed to start"},
           {v1::MODEL_STATE_UNSPECIFIED, "has no engine"}}) {
    model.set_state(state);
    frontend_.SetModels({model});
    Reply reply = Get("/v1/models/m");
    EXPECT_EQ(reply.status, 404) << v1::ModelState_Name(state);
    const json::value error = reply.Json();
    EXPECT_EQ(error.at("error").at("code"), "model_not_found");
    EXPECT_THAT(json::value_to<std::string>(error.at("error").at("message")), HasSubstr(reason));
    reply = Get("/v1/models");
    EXPECT_EQ(reply.Json().at("data").as_array().size(), 0u) << v1::ModelState_Name(state);
  }
  for (const v1::ModelState state : {v1::MODEL_STATE_RESTARTING, v1::MODEL_STATE_DRAINING}) {
    model.set_state(state);
    frontend_.SetModels({model});
    EXPECT_EQ(Get("/v1/models/m").status, 200) << v1::ModelState_Name(state);
    EXPECT_EQ(Get("/v1/models").Json().at("data").as_array().size(), 1u);
  }
}

TEST_F(OpenAiGatewayTest, HealthFollowsModelStatesAndIsAnonymous) {
  v1::ModelInfo model;
  model.set_id("m");
  model.set_state(v1::MODEL_STATE_LOADING);
  frontend_.SetModels({model});
  Reply reply = Get("/health", {});
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.body, R"({"status":"loading"})");
  EXPECT_EQ(Get("/health/ready", {}).status, 503);
  EXPECT_EQ(Get("/health/live", {}).status, 200) << "liveness does not depend on models";

  model.set_state(v1::MODEL_STATE_FAILED);
  frontend_.SetModels({model});
  EXPECT_EQ(Get("/health", {}).body, R"({"status":"unavailable"})");

  model.set_state(v1::MODEL_STATE_READY);
  frontend_.SetModels({model});
  reply = Get("/health", {});
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, R"({"status":"ok"})");
  EXPECT_EQ(Get("/health/ready", {}).status, 200);
}

TEST_F(OpenAiGatewayTest, NotServingAnswers503WithRetryAfter) {
  gateway().SetServing(false);
  Reply reply = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.Json().at("error").at("type"), "service_unavailable_error");
  EXPECT_FALSE(reply.Header("retry-after").empty());
  EXPECT_EQ(Get("/health", {}).body, R"({"status":"draining"})");
  EXPECT_EQ(Get("/health/live", {}).status, 200);
  EXPECT_TRUE(frontend_.chat_requests().empty());

  gateway().SetServing(true);
  EXPECT_EQ(Post("/v1/chat/completions", kChatBody).status, 200);
}

TEST_F(OpenAiGatewayTest, UnknownFieldsAreIgnored) {
  // R1.2: the request that broke clients of providers that reject unknown fields.
  const Reply reply = Post("/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                               "foo":1,"stream_options":{"include_usage":true},
                               "user":"u","store":false})");
  EXPECT_EQ(reply.status, 200) << reply.body;
}

// OpenAI's newer clients send system instructions as role "developer" (was a 400 from the
// engine's role check: the templates know "system").
TEST_F(OpenAiGatewayTest, ADeveloperMessageIsASystemMessage) {
  const Reply reply = Post("/v1/chat/completions",
                           R"({"model":"m","messages":[{"role":"developer","content":"Be brief"},
                               {"role":"user","content":"Hi"}]})");
  ASSERT_EQ(reply.status, 200) << reply.body;
  const v1::ChatRequest request = frontend_.chat_requests().back();
  ASSERT_EQ(request.messages_size(), 2);
  EXPECT_EQ(request.messages(0).role(), "system");
  EXPECT_EQ(request.messages(0).content(), "Be brief");
}

TEST_F(OpenAiGatewayTest, ChatFieldsReachTheProto) {
  const Reply reply = Post("/v1/chat/completions", R"({
      "model":"m",
      "messages":[
        {"role":"system","content":[{"type":"text","text":"Be"},{"type":"text","text":"brief"}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
          "function":{"name":"get","arguments":"{\"x\":1}"}}]},
        {"role":"tool","tool_call_id":"call_1","content":"42","name":"get"}],
      "tools":[{"type":"function","function":{"name":"get","description":"d",
        "parameters":{"type":"object"}}}],
      "max_tokens":10,"max_completion_tokens":20,"temperature":0.5,"top_p":0.9,"top_k":-1,
      "min_p":0.05,"seed":42,"stop":"END","presence_penalty":0.5,"frequency_penalty":-0.5,
      "repetition_penalty":1.1,"logprobs":true,"top_logprobs":3,"n":1,
      "response_format":{"type":"text"},"chat_template_kwargs":{"enable_thinking":false},
      "priority":"batch"})");
  ASSERT_EQ(reply.status, 200) << reply.body;
  const v1::ChatRequest request = frontend_.chat_requests().back();
  ASSERT_EQ(request.messages_size(), 3);
  EXPECT_EQ(request.messages(0).content(), "Be\nbrief");
  ASSERT_EQ(request.messages(1).tool_calls_size(), 1);
  EXPECT_EQ(request.messages(1).tool_calls(0).id(), "call_1");
  EXPECT_EQ(request.messages(1).tool_calls(0).function_name(), "get");
  EXPECT_EQ(request.messages(1).tool_calls(0).arguments_json(), R"({"x":1})");
  EXPECT_EQ(request.messages(2).tool_call_id(), "call_1");
  EXPECT_EQ(request.messages(2).name(), "get");
  ASSERT_EQ(request.tools_size(), 1);
  EXPECT_EQ(request.tools(0).function().name(), "get");
  EXPECT_EQ(request.tools(0).function().parameters_json(), R"({"type":"object"})");
  EXPECT_EQ(request.stop().max_tokens(), 20u) << "max_completion_tokens wins over max_tokens";
  EXPECT_THAT(request.stop().stop(), ::testing::ElementsAre("END"));
  EXPECT_FLOAT_EQ(request.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(request.sampling().top_p(), 0.9f);
  EXPECT_TRUE(request.sampling().has_top_k());
  EXPECT_EQ(request.sampling().top_k(), 0u) << "top_k -1 means disabled";
  EXPECT_FLOAT_EQ(request.sampling().min_p(), 0.05f);
  EXPECT_EQ(request.sampling().seed(), 42u);
  EXPECT_FLOAT_EQ(request.sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(request.sampling().frequency_penalty(), -0.5f);
  EXPECT_FLOAT_EQ(request.sampling().repetition_penalty(), 1.1f);
  EXPECT_TRUE(request.logprobs().enabled());
  EXPECT_EQ(request.logprobs().top_logprobs(), 3u);
  EXPECT_EQ(request.chat_template_kwargs_json(), R"({"enable_thinking":false})");
  EXPECT_EQ(request.priority(), v1::PRIORITY_BATCH);
}

TEST_F(OpenAiGatewayTest, UnsetFieldsStayUnset) {
  ASSERT_EQ(Post("/v1/chat/completions",
                 R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                     "temperature":null,"max_tokens":7,"stop":["a","b"],"seed":-1})")
                .status,
            200);
  const v1::ChatRequest request = frontend_.chat_requests().back();
  EXPECT_FALSE(request.sampling().has_temperature()) << "null means not given";
  EXPECT_FALSE(request.sampling().has_top_p());
  EXPECT_EQ(request.stop().max_tokens(), 7u);
  EXPECT_THAT(request.stop().stop(), ::testing::ElementsAre("a", "b"));
  EXPECT_EQ(request.sampling().seed(), ~uint64_t{0}) << "a negative seed keeps its bits";
  EXPECT_FALSE(request.logprobs().enabled());
  EXPECT_EQ(request.priority(), v1::PRIORITY_UNSPECIFIED);
}

struct ErrorCase {
  std::string name;
  std::string method = "POST";
  std::string path = "/v1/chat/completions";
  std::string body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}]})";
  std::vector<std::string> headers = {"Authorization: Bearer good"};
  Script script = HelloScript();
  long status = 0;
  std::string type;
  std::string code;   // Empty: null.
  std::string param;  // Empty: null.
  std::string message_part;
  bool retry_after = false;
  // With retry_after: the exact Retry-After expected; empty: a 1-3 s jitter.
  std::string exact_retry_after;
};

void PrintTo(const ErrorCase& row, std::ostream* os) {
  *os << row.name;
}

std::string StreamingBody() {
  return R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true})";
}

std::vector<ErrorCase> ErrorCases() {
  return {
      {.name = "MalformedJson",
       .body = R"({"model":)",
       .status = 400,
       .type = "invalid_request_error",
       .message_part = "not valid JSON"},
      // Boost.JSON alone reads 1e400 as infinity, and writes it back as Infinity (not JSON).
      {.name = "NumberPastADouble",
       .body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"temperature":1e400})",
       .status = 400,
       .type = "invalid_request_error",
       .message_part = "not valid JSON: a number is past the range of a double"},
      {.name = "NotAnObject", .body = "[1]", .status = 400, .type = "invalid_request_error"},
      {.name = "TwoChoices",
       .body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"n":2})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "n",
       .message_part = "n: only 1 is supported"},
      {.name = "BadType",
       .body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"temperature":"hot"})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "temperature",
       .message_part = "temperature: must be a number"},
      {.name = "BadNestedType",
       .body = R"({"model":"m","messages":[{"role":7}]})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "messages[0].role"},
      {.name = "MissingMessages",
       .body = R"({"model":"m"})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "messages"},
      {.name = "ImagePart",
       .body = R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url",
                   "image_url":{"url":"x"}}]}]})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "messages[0].content[0].type"},
      {.name = "JsonMode",
       .body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}],
                   "response_format":{"type":"json_object"}})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "response_format",
       .message_part = "not supported yet"},
      {.name = "TopLogprobsOutOfRange",
       .body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"logprobs":true,
                   "top_logprobs":21})",
       .status = 400,
       .type = "invalid_request_error",
       .param = "top_logprobs"},
      {.name = "UnknownModel",
       .script = {.start_error = Status(StatusCode::kNotFound, "model 'x' is not served")},
       .status = 404,
       .type = "invalid_request_error",
       .code = "model_not_found",
       .param = "model"},
      {.name = "ContextTooLong",
       .body = StreamingBody(),
       .script = {.end = InvalidArgumentError("the prompt has 9000 tokens; the model's context "
                                              "is 4096 tokens")
                             .WithReason(error_reason::kPromptTooLong)},
       .status = 400,
       .type = "invalid_request_error",
       .code = "context_length_exceeded",
       .message_part = "9000 tokens"},
      // The code follows the engine's reason, never the words of the message.
      {.name = "ContextInTheWordsOnly",
       .body = StreamingBody(),
       .script = {.end = InvalidArgumentError("tools[0]: the context of this tool is unknown")},
       .status = 400,
       .type = "invalid_request_error",
       .message_part = "context of this tool"},
      {.name = "MissingKey",
       .headers = {},
       .status = 401,
       .type = "authentication_error",
       .code = "invalid_api_key",
       .message_part = "required"},
      {.name = "WrongKey",
       .headers = {"Authorization: Bearer bad"},
       .status = 401,
       .type = "authentication_error",
       .code = "invalid_api_key"},
      {.name = "Forbidden",
       .script = {.start_error = Status(StatusCode::kPermissionDenied, "key may not use m")},
       .status = 403,
       .type = "permission_error"},
      {.name = "Overloaded",
       .script = {.start_error = Status(StatusCode::kResourceExhausted, "queue full")},
       .status = 503,
       .type = "service_unavailable_error",
       .code = "server_is_overloaded",
       .retry_after = true},
      // An API key's quota: 429 with the time the limit frees, rounded up to whole seconds.
      {.name = "KeyTokensPerMinute",
       .script = {.start_error =
                      QuotaExceededError("API key ibx_k reached its limit of 100 tokens per minute",
                                         {.limit = "tokens_per_minute",
                                          .subject = "api_key:ibx_k",
                                          .retry_after = std::chrono::milliseconds(41'200)})},
       .status = 429,
       .type = "rate_limit_error",
       .code = "rate_limit_exceeded",
       .message_part = "100 tokens per minute",
       .retry_after = true,
       .exact_retry_after = "42"},
      {.name = "KeyDailyBudget",
       .script = {.start_error = QuotaExceededError(
                      "API key ibx_k used its daily budget",
                      {.limit = "tokens_per_day", .retry_after = std::chrono::hours(5)})},
       .status = 429,
       .type = "rate_limit_error",
       .code = "daily_budget_exceeded",
       .retry_after = true,
       .exact_retry_after = "18000"},
      {.name = "KeyConcurrency",
       .script = {.start_error =
                      QuotaExceededError("API key ibx_k already has 2 requests in flight",
                                         {.limit = "max_concurrent_requests",
                                          .retry_after = std::chrono::milliseconds(1)})},
       .status = 429,
       .type = "rate_limit_error",
       .code = "concurrency_limit_exceeded",
       .retry_after = true,
       .exact_retry_after = "1"},
      {.name = "UnavailableBeforeFirstChunk",
       .body = StreamingBody(),
       .script = {.end = UnavailableError("engine restarting")},
       .status = 503,
       .type = "service_unavailable_error",
       .message_part = "restarting",
       .retry_after = true},
      {.name = "DeadlineExceeded",
       .script = {.end = Status(StatusCode::kDeadlineExceeded, "too slow")},
       .status = 504,
       .type = "timeout_error"},
      {.name = "NonStreamingErrorAfterOutput",
       .script = {.chunks = {Chunk("partial")}, .end = InternalError("engine crashed")},
       .status = 500,
       .type = "server_error",
       .message_part = "crashed"},
      {.name = "WrongMethod", .method = "GET", .status = 405, .type = "invalid_request_error"},
      {.name = "UnknownPath",
       .path = "/v1/embeddings",
       .status = 404,
       .type = "invalid_request_error",
       .message_part = "/v1/embeddings"},
      {.name = "UnknownRoot",
       .method = "GET",
       .path = "/nothing",
       .headers = {},
       .status = 404,
       .type = "invalid_request_error"},
  };
}

class OpenAiGatewayErrorTest : public OpenAiGatewayTest,
                               public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(OpenAiGatewayErrorTest, AnswersTheStatusAndErrorObject) {
  const ErrorCase& row = GetParam();
  frontend_.SetScript(row.script);
  Client client;
  const Reply reply = client.Request(row.method, Url(row.path),
                                     row.method == "POST" ? &row.body : nullptr, row.headers);
  ASSERT_EQ(reply.status, row.status) << reply.error << reply.body;
  EXPECT_THAT(reply.Header("content-type"), HasSubstr("application/json"));
  const json::value body = reply.Json();
  ASSERT_TRUE(body.is_object() && body.as_object().contains("error")) << reply.body;
  const json::object& error = body.at("error").as_object();
  EXPECT_EQ(error.size(), 4u) << "message, type, param and code, always: " << reply.body;
  ASSERT_TRUE(error.at("message").is_string());
  EXPECT_THAT(std::string(error.at("message").as_string()), HasSubstr(row.message_part));
  EXPECT_EQ(error.at("type"), json::value(row.type));
  EXPECT_EQ(error.at("code"), row.code.empty() ? json::value(nullptr) : json::value(row.code));
  EXPECT_EQ(error.at("param"), row.param.empty() ? json::value(nullptr) : json::value(row.param));
  if (!row.exact_retry_after.empty()) {
    EXPECT_EQ(reply.Header("retry-after"), row.exact_retry_after);
  } else if (row.retry_after) {
    const std::string retry_after = reply.Header("retry-after");
    EXPECT_TRUE(retry_after == "1" || retry_after == "2" || retry_after == "3")
        << "Retry-After should be 1-3 s, got '" << retry_after << "'";
  } else {
    EXPECT_EQ(reply.Header("retry-after"), "");
  }
  if (row.status == 401) {
    EXPECT_EQ(reply.Header("www-authenticate"), "Bearer");
  }
  if (row.status == 405) {
    EXPECT_EQ(reply.Header("allow"), "POST");
  }
}

INSTANTIATE_TEST_SUITE_P(Table, OpenAiGatewayErrorTest, ::testing::ValuesIn(ErrorCases()),
                         [](const auto& test) { return test.param.name; });

TEST_F(OpenAiGatewayTest, OversizedBodyIs413) {
  StartGateway({.max_body_bytes = 1024});
  const std::string body =
      R"({"model":"m","messages":[{"role":"user","content":")" + std::string(4096, 'x') + "\"}]}";
  const Reply reply = Post("/v1/chat/completions", body);
  ASSERT_EQ(reply.status, 413) << reply.error << reply.body;
  EXPECT_EQ(reply.Json().at("error").at("code"), "request_too_large");
  EXPECT_TRUE(frontend_.chat_requests().empty());
}

TEST_F(OpenAiGatewayTest, KeylessAccessOnlyWhenTheAuthenticatorAllowsIt) {
  authenticator_.require_key = false;
  EXPECT_EQ(Post("/v1/chat/completions", kChatBody, {}).status, 200);
  EXPECT_EQ(Post("/v1/chat/completions", kChatBody, {"Authorization: Bearer bad"}).status, 401);
  EXPECT_EQ(frontend_.caller_key_ids(), std::vector<std::string>{""}) << "anonymous caller";
}

TEST_F(OpenAiGatewayTest, ErrorAfterStreamStartSendsOneErrorEventAndNoDone) {
  frontend_.SetScript({.chunks = {Chunk("Hel")}, .end = UnavailableError("the engine died")});
  const Reply reply = Post("/v1/chat/completions", StreamingBody());
  ASSERT_EQ(reply.status, 200) << "the headers were out before the error";
  const Events events = ParseSse(reply.body);
  ASSERT_EQ(events.data.size(), 3u) << reply.body;
  EXPECT_THAT(events.data[1], HasSubstr("\"Hel\""));
  const json::value error = json::parse(events.data[2]);
  EXPECT_EQ(error, json::parse(R"({"error":{"message":"the engine died",
      "type":"service_unavailable_error","param":null,"code":null}})"));
  EXPECT_EQ(reply.body.find("[DONE]"), std::string::npos)
      << "a failed stream must not look complete";
  EXPECT_EQ(reply.body.find("\"finish_reason\":\""), std::string::npos);
}

TEST_F(OpenAiGatewayTest, ClientDisconnectMidStreamCancelsTheGeneration) {
  frontend_.SetScript({.chunks = {Chunk("Hel")}, .hang_after_chunks = true});
  RawConnection connection(gateway().port());
  connection.Send(HttpPost("/v1/chat/completions", StreamingBody()));
  ASSERT_THAT(connection.ReadUntil("Hel"), HasSubstr("\"Hel\""));
  const std::shared_ptr<StreamProbe> probe = frontend_.last_probe();
  ASSERT_NE(probe, nullptr);
  EXPECT_FALSE(probe->WaitCancelled(0ms));
  connection.Close();
  EXPECT_TRUE(probe->WaitCancelled(1s)) << "the stream should see Cancel within 1 s of the close";
}

// Events go out from the stream's own thread while the socket takes them; a client that
// reads slower than they come holds the stream (bytes are not piled up in the daemon) and
// still gets every event, in order, once it reads.
TEST_F(OpenAiGatewayTest, ASlowClientHoldsTheStreamAndGetsEveryEventInOrder) {
  // 9.6 MB: more than a socket's send buffer grows to (Linux: 4 MiB by default).
  constexpr int kChunks = 600;
  frontend_.SetScript(NumberedScript(kChunks));
  RawConnection connection(gateway().port(), /*receive_buffer=*/4096);
  connection.Send(HttpPost("/v1/completions", R"({"model":"m","prompt":"Hi","stream":true})"));
  const std::shared_ptr<StreamProbe> probe = frontend_.WaitForStream();
  ASSERT_NE(probe, nullptr);
  std::this_thread::sleep_for(300ms);  // Not reading: the socket's buffers fill.
  {
    std::lock_guard lock(probe->mutex);
    EXPECT_FALSE(probe->cancelled);
  }
  ExpectEveryNumberedEventInOrder(connection.ReadUntil("\r\n0\r\n\r\n", 20s), kChunks);
  std::lock_guard lock(probe->mutex);
  EXPECT_GT(probe->resumes, 0) << "the stream was never held for the slow client";
  EXPECT_FALSE(probe->cancelled);
}

TEST_F(OpenAiGatewayTest, ClientDisconnectWhileWaitingForANonStreamingResultCancels) {
  frontend_.SetScript({.hang_after_chunks = true});
  RawConnection connection(gateway().port());
  connection.Send(HttpPost("/v1/chat/completions", kChatBody));
  const std::shared_ptr<StreamProbe> probe = frontend_.WaitForStream();
  ASSERT_NE(probe, nullptr) << "the request never reached the frontend";
  connection.Close();
  EXPECT_TRUE(probe->WaitCancelled(1s));
}

TEST_F(OpenAiGatewayTest, PingsWhileWaitingForTheFirstToken) {
  StartGateway({.sse_keepalive_interval = 50ms});
  Script script = HelloScript();
  script.first_chunk_delay = 400ms;
  frontend_.SetScript(script);
  const Reply reply = Post("/v1/chat/completions", StreamingBody());
  ASSERT_EQ(reply.status, 200) << reply.error;
  const Events events = ParseSse(reply.body);
  EXPECT_GE(events.comments.size(), 2u) << reply.body;
  EXPECT_TRUE(reply.body.starts_with(": ping\n\n")) << reply.body;
  EXPECT_EQ(events.data.size(), 5u) << "the stream itself is unchanged: " << reply.body;
  EXPECT_EQ(events.data.back(), "[DONE]");
}

// Keep-alive comments are for a stream that is quiet: events written from the stream's own
// thread count as writes.
TEST_F(OpenAiGatewayTest, NoPingWhileTokensFlow) {
  StartGateway({.sse_keepalive_interval = 100ms});
  Script script;
  for (int i = 0; i < 40; ++i) script.chunks.push_back(Chunk(fmt::format("<{}>", i)));
  script.chunks.push_back(Final(""));
  script.chunk_interval = 10ms;  // 400 ms of tokens: four keep-alive intervals.
  frontend_.SetScript(script);
  const Reply reply = Post("/v1/completions", R"({"model":"m","prompt":"Hi","stream":true})");
  ASSERT_EQ(reply.status, 200) << reply.error;
  EXPECT_EQ(reply.body.find(": ping"), std::string::npos) << reply.body;
  EXPECT_EQ(ParseSse(reply.body).data.size(), 42u) << reply.body;
}

TEST_F(OpenAiGatewayTest, NoPingWhenTheFirstTokenComesQuickly) {
  const Reply reply = Post("/v1/chat/completions", StreamingBody());
  EXPECT_EQ(reply.body.find(": ping"), std::string::npos);
}

TEST_F(OpenAiGatewayTest, ReasoningWhenThePromptOpensTheBlock) {
  frontend_.SetReasoningModel("m");
  frontend_.SetScript(
      {.chunks = {Chunk("Let me"), Chunk(" think</th"), Chunk("ink>\n\nAns"), Final("wer")}});
  Reply reply = Post("/v1/chat/completions", kChatBody);
  ASSERT_EQ(reply.status, 200);
  EXPECT_EQ(
      reply.Json().at("choices").as_array()[0].at("message"),
      (json::object{
          {"role", "assistant"}, {"content", "Answer"}, {"reasoning_content", "Let me think"}}));

  reply = Post("/v1/chat/completions", StreamingBody());
  std::string reasoning;
  std::string content;
  for (const std::string& data : ParseSse(reply.body).data) {
    if (data == "[DONE]") continue;
    const json::value chunk = json::parse(data);
    const json::object& delta = chunk.at("choices").as_array()[0].at("delta").as_object();
    if (delta.contains("reasoning_content"))
      reasoning += std::string(delta.at("reasoning_content").as_string());
    if (delta.contains("content")) content += std::string(delta.at("content").as_string());
    EXPECT_EQ(data.find("</"), std::string::npos) << "no tag fragment leaks: " << data;
  }
  EXPECT_EQ(reasoning, "Let me think");
  EXPECT_EQ(content, "Answer");
}

// "default" (the OpenAI API has no such name; the box documents it) is the default model: the
// response names the model that served it, and that model's template decides the reasoning
// split (before: "default" in the response, and the whole chain of thought in content).
TEST_F(OpenAiGatewayTest, TheDefaultModelIsResolvedForTheResponseAndItsReasoning) {
  frontend_.SetReasoningModel("r1");
  frontend_.SetDefaultModel("r1");
  frontend_.SetScript({.chunks = {Chunk("Let me think</think>"), Final("\n\nAnswer")}});
  Reply reply = Post("/v1/chat/completions",
                     R"({"model":"default","messages":[{"role":"user","content":"Hi"}]})");
  ASSERT_EQ(reply.status, 200) << reply.error;
  EXPECT_EQ(reply.Json().at("model"), "r1");
  EXPECT_EQ(
      reply.Json().at("choices").as_array()[0].at("message"),
      (json::object{
          {"role", "assistant"}, {"content", "Answer"}, {"reasoning_content", "Let me think"}}));

  frontend_.SetScript({.chunks = {Chunk("Let me think</think>"), Final("\n\nAnswer")}});
  reply = Post("/v1/completions", R"({"model":"default","prompt":"Hi","stream":true})");
  ASSERT_EQ(reply.status, 200) << reply.error;
  for (const std::string& data : ParseSse(reply.body).data) {
    if (data != "[DONE]") {
      EXPECT_EQ(json::parse(data).at("model"), "r1") << data;
    }
  }
}

// A request that offers tools to a model whose template asks for Hermes-style calls (Qwen):
// the call in its output comes back as tool_calls with finish_reason "tool_calls", streamed
// or not, and none of its markup reaches the answer text (R1.9). Before, the raw
// <tool_call>{...}</tool_call> text came back as content with "stop".
TEST_F(OpenAiGatewayTest, ToolCallsInTheOutputComeBackAsToolCalls) {
  const std::string tools =
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":)"
      R"({"type":"object","properties":{"city":{"type":"string"}}}}}])";
  const std::string body =
      R"({"model":"m","messages":[{"role":"user","content":"Paris?"}],)" + tools + "}";
  const auto script = [] {
    return Script{.chunks = {Chunk("Checking.<tool_"), Chunk("call>\n{\"name\": \"get_weather\", "),
                             Final("\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>")}};
  };
  frontend_.SetToolCallFormat("m", "hermes");
  frontend_.SetScript(script());
  Reply reply = Post("/v1/chat/completions", body);
  ASSERT_EQ(reply.status, 200) << reply.error;
  const json::value whole = reply.Json();
  const json::object& choice = whole.at("choices").as_array()[0].as_object();
  EXPECT_EQ(choice.at("finish_reason"), "tool_calls");
  const json::object& message = choice.at("message").as_object();
  EXPECT_EQ(message.at("content"), "Checking.");
  ASSERT_EQ(message.at("tool_calls").as_array().size(), 1u) << reply.body;
  const json::object& call = message.at("tool_calls").as_array()[0].as_object();
  EXPECT_TRUE(std::string_view(call.at("id").as_string()).starts_with("call_"));
  EXPECT_EQ(call.at("type"), "function");
  EXPECT_EQ(call.at("function").at("name"), "get_weather");
  EXPECT_EQ(json::parse(call.at("function").at("arguments").as_string()),
            (json::object{{"city", "Paris"}}))
      << "arguments are a JSON string";

  frontend_.SetScript(script());
  reply = Post("/v1/chat/completions",
               R"({"model":"m","stream":true,"messages":[{"role":"user","content":"Paris?"}],)" +
                   tools + "}");
  ASSERT_EQ(reply.status, 200) << reply.error;
  std::string content;
  std::vector<json::object> calls;
  std::vector<std::string> finish_reasons;
  for (const std::string& data : ParseSse(reply.body).data) {
    if (data == "[DONE]") continue;
    const json::value event = json::parse(data);
    const json::object& streamed = event.at("choices").as_array()[0].as_object();
    const json::object& delta = streamed.at("delta").as_object();
    if (delta.contains("content")) content += std::string(delta.at("content").as_string());
    if (delta.contains("tool_calls")) {
      for (const json::value& entry : delta.at("tool_calls").as_array())
        calls.push_back(entry.as_object());
    }
    if (!streamed.at("finish_reason").is_null())
      finish_reasons.push_back(std::string(streamed.at("finish_reason").as_string()));
  }
  EXPECT_EQ(content, "Checking.") << "no markup leaks into the answer";
  ASSERT_EQ(calls.size(), 1u) << reply.body;
  EXPECT_EQ(calls[0].at("index"), 0);
  EXPECT_EQ(calls[0].at("function").at("name"), "get_weather");
  EXPECT_EQ(finish_reasons, std::vector<std::string>{"tool_calls"}) << reply.body;

  // No tools offered (or tool_choice "none"): the same output is the answer.
  for (const std::string& plain :
       {std::string(kChatBody),
        R"({"model":"m","tool_choice":"none","messages":[{"role":"user","content":"Paris?"}],)" +
            tools + "}"}) {
    frontend_.SetScript(script());
    reply = Post("/v1/chat/completions", plain);
    ASSERT_EQ(reply.status, 200) << reply.error;
    EXPECT_EQ(reply.Json().at("choices").as_array()[0].at("finish_reason"), "stop");
    EXPECT_THAT(
        std::string(
            reply.Json().at("choices").as_array()[0].at("message").at("content").as_string()),
        HasSubstr("<tool_call>"));
  }
}

// R1.9 with parallel calls: each call's entry has its own index, the first (and here only)
// fragment of each carries id and type "function", arguments are a JSON string, and the last
// finish_reason is tool_calls. R1.5: max_tokens cutting a call off ends the stream with
// "length", the held-back text coming back as content (nothing lost, no error).
TEST_F(OpenAiGatewayTest, ParallelToolCallsStreamApartAndACutOneEndsWithLength) {
  const std::string request =
      R"({"model":"m","stream":true,"messages":[{"role":"user","content":"Paris and Rome?"}],)"
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":)"
      R"({"type":"object","properties":{"city":{"type":"string"}}}}}]})";
  struct Streamed {
    std::string content;
    std::vector<json::object> calls;
    std::vector<std::string> finish_reasons;
    bool done = false;
  };
  const auto stream = [&](Script script) {
    frontend_.SetScript(std::move(script));
    const Reply reply = Post("/v1/chat/completions", request);
    EXPECT_EQ(reply.status, 200) << reply.error;
    Streamed out;
    for (const std::string& data : ParseSse(reply.body).data) {
      if (data == "[DONE]") {
        out.done = true;
        continue;
      }
      const json::value event = json::parse(data);
      const json::object& choice = event.at("choices").as_array()[0].as_object();
      const json::object& delta = choice.at("delta").as_object();
      if (delta.contains("content") && delta.at("content").is_string())
        out.content += std::string(delta.at("content").as_string());
      if (delta.contains("tool_calls")) {
        for (const json::value& entry : delta.at("tool_calls").as_array())
          out.calls.push_back(entry.as_object());
      }
      if (!choice.at("finish_reason").is_null())
        out.finish_reasons.push_back(std::string(choice.at("finish_reason").as_string()));
    }
    return out;
  };

  frontend_.SetToolCallFormat("m", "hermes");
  const Streamed parallel = stream(
      Script{.chunks = {Chunk("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                              "\"Paris\"}}\n</tool_call>\n"),
                        Final("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                              "\"Rome\"}}\n</tool_call>")}});
  ASSERT_EQ(parallel.calls.size(), 2u);
  std::set<std::string> ids;
  for (size_t i = 0; i < parallel.calls.size(); ++i) {
    const json::object& call = parallel.calls[i];
    EXPECT_EQ(call.at("index"), static_cast<int64_t>(i)) << "parallel calls have distinct indices";
    EXPECT_EQ(call.at("type"), "function");
    ASSERT_TRUE(call.at("id").is_string());
    EXPECT_THAT(std::string(call.at("id").as_string()), ::testing::StartsWith("call_"));
    ids.insert(std::string(call.at("id").as_string()));
    ASSERT_TRUE(call.at("function").at("arguments").is_string()) << "arguments are a string";
  }
  EXPECT_EQ(ids.size(), 2u) << "each call has its own id";
  EXPECT_EQ(json::parse(parallel.calls[1].at("function").at("arguments").as_string()),
            (json::object{{"city", "Rome"}}));
  EXPECT_EQ(parallel.finish_reasons, std::vector<std::string>{"tool_calls"});
  EXPECT_TRUE(parallel.done);

  const std::string cut_text = "<tool_call>\n{\"name\": \"get_weather\", \"argu";
  const Streamed cut = stream(
      Script{.chunks = {Chunk("Let me check. "), Final(cut_text, v1::FINISH_REASON_LENGTH)}});
  EXPECT_TRUE(cut.calls.empty()) << "half a call is not a call";
  EXPECT_EQ(cut.content, "Let me check. " + cut_text) << "the held-back text is not lost";
  EXPECT_EQ(cut.finish_reasons, std::vector<std::string>{"length"});
  EXPECT_TRUE(cut.done) << "a stream cut by max_tokens is complete, not an error";
}

TEST_F(OpenAiGatewayTest, ReasoningWhenTheOutputOpensTheBlock) {
  frontend_.SetScript({.chunks = {Chunk("<thi"), Chunk("nk>\nPlan</think>"), Final("\nDone")}});
  Reply reply = Post("/v1/chat/completions", kChatBody);
  ASSERT_EQ(reply.status, 200);
  EXPECT_EQ(
      reply.Json().at("choices").as_array()[0].at("message"),
      (json::object{{"role", "assistant"}, {"content", "Done"}, {"reasoning_content", "Plan"}}));

  frontend_.SetScript({.chunks = {Chunk("Hi <think>"), Final("x</think>")}});
  reply = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(reply.Json().at("choices").as_array()[0].at("message").at("content"),
            "Hi <think>x</think>")
      << "tags later in the output are text";
}

TEST_F(OpenAiGatewayTest, KeepAliveServesTwoRequestsOnOneConnection) {
  Client client;
  const std::string body = kChatBody;
  const Reply first = client.Request("POST", Url("/v1/chat/completions"), &body);
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.num_connects, 1);
  const std::string stream_body = StreamingBody();
  const Reply second = client.Request("POST", Url("/v1/chat/completions"), &stream_body);
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(second.num_connects, 0) << "the second request should reuse the connection";
  const Reply third = client.Request("GET", Url("/v1/models"), nullptr);
  ASSERT_EQ(third.status, 200);
  EXPECT_EQ(third.num_connects, 0) << "a finished SSE stream leaves the connection usable";
}

TEST_F(OpenAiGatewayTest, ExpectContinueGetsA100BeforeTheBody) {
  RawConnection connection(gateway().port());
  connection.Send(
      fmt::format("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
                  "Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                  kChatBody.size()));
  ASSERT_THAT(connection.ReadUntil("\r\n\r\n"), HasSubstr("HTTP/1.1 100 Continue"));
  connection.Send(kChatBody);
  EXPECT_THAT(connection.ReadUntil("\"usage\""), HasSubstr("HTTP/1.1 200 OK"));
}

TEST_F(OpenAiGatewayTest, Http10StreamsWithoutChunkingAndCloses) {
  RawConnection connection(gateway().port());
  const std::string body = StreamingBody();
  connection.Send(
      fmt::format("POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer good\r\n"
                  "Content-Length: {}\r\n\r\n{}",
                  body.size(), body));
  const std::string response = connection.ReadUntil("never");
  ASSERT_THAT(response, HasSubstr("HTTP/1.0 200 OK"));
  EXPECT_THAT(response, ::testing::Not(HasSubstr("chunked")));
  const std::string payload = response.substr(response.find("\r\n\r\n") + 4);
  EXPECT_TRUE(payload.starts_with("data: {")) << payload;
  EXPECT_TRUE(payload.ends_with("data: [DONE]\n\n")) << "the gateway closes after [DONE]";
}

TEST_F(OpenAiGatewayTest, ConnectionsOverTheLimitGet503) {
  StartGateway({.max_connections = 1});
  RawConnection idle(gateway().port());
  idle.Send("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_THAT(idle.ReadUntil("\"ok\""), HasSubstr("200 OK"));
  const Reply reply = Get("/v1/models");
  EXPECT_EQ(reply.status, 503) << reply.error;
  EXPECT_EQ(reply.Json().at("error").at("code"), "server_is_overloaded");
  idle.Close();
}

TEST_F(OpenAiGatewayTest, IdleConnectionsAreClosed) {
  StartGateway({.idle_timeout = std::chrono::seconds(1)});
  RawConnection idle(gateway().port());
  const auto start = std::chrono::steady_clock::now();
  idle.ReadUntil("never", 5s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s) << "the gateway should close it";
}

TEST_F(OpenAiGatewayTest, StopCancelsStreamsAfterTheDrainDeadline) {
  frontend_.SetScript({.chunks = {Chunk("Hel")}, .hang_after_chunks = true});
  RawConnection connection(gateway().port());
  connection.Send(HttpPost("/v1/chat/completions", StreamingBody()));
  ASSERT_THAT(connection.ReadUntil("Hel"), HasSubstr("\"Hel\""));
  const auto start = std::chrono::steady_clock::now();
  gateway().Stop(200ms);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 200ms) << "the stream may run until the drain deadline";
  EXPECT_LT(took, 2s);
  EXPECT_TRUE(frontend_.last_probe()->WaitCancelled(0ms));
  EXPECT_THAT(connection.ReadUntil("never", 1s), HasSubstr("\"error\""))
      << "the cut stream ends with an error event";
}

TEST_F(OpenAiGatewayTest, StopLetsFinishingStreamsComplete) {
  Script script = HelloScript();
  script.first_chunk_delay = 300ms;
  frontend_.SetScript(script);
  RawConnection connection(gateway().port());
  connection.Send(HttpPost("/v1/chat/completions", StreamingBody()));
  ASSERT_NE(frontend_.WaitForStream(), nullptr);
  gateway().Stop(5s);
  EXPECT_THAT(connection.ReadUntil("[DONE]", 1s), HasSubstr("data: [DONE]"));
  EXPECT_FALSE(frontend_.last_probe()->WaitCancelled(0ms));
}

}  // namespace
}  // namespace inferbox::daemon
