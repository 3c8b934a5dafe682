// Drives a running inferboxd with the official `openai` npm client, as users' applications
// do, and checks what they rely on. Prints one line per check; exits 1 on the first failure.
//
//   node openai_conformance.mjs --base-url http://127.0.0.1:8080/v1 --model tiny \
//        [--api-key KEY] [--concurrent 200]
import OpenAI from "openai";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const baseURL = args["base-url"];
const model = args["model"];
const apiKey = args["api-key"] ?? "no-key";
const concurrent = Number(args["concurrent"] ?? 0);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });

function check(condition, what, detail) {
  if (!condition) {
    console.log(`FAIL ${what}${detail === undefined ? "" : ": " + JSON.stringify(detail)}`);
    process.exit(1);
  }
}

async function expectError(what, status, call) {
  try {
    await call();
  } catch (error) {
    check(error instanceof OpenAI.APIError, `${what}: an API error`, String(error));
    check(error.status === status, `${what}: status ${status}`, { status: error.status, error: error.error });
    check(typeof error.error?.message === "string" && error.error.message.length > 0,
          `${what}: an error object with a message`, error.error);
    console.log(`ok ${what} -> ${status} ${error.error.message}`);
    return;
  }
  check(false, `${what}: should have failed with ${status}`);
}

const chatRequest = {
  model,
  messages: [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Say something about the sea." },
  ],
  max_tokens: 8,
  temperature: 0,
};

// Models.
const models = [];
for await (const entry of client.models.list()) models.push(entry);
check(models.some((m) => m.id === model && m.object === "model" && typeof m.owned_by === "string"),
      "models.list names the model", models);
console.log(`ok models.list: ${models.map((m) => m.id).join(", ")}`);

// Chat, non-streaming.
const chat = await client.chat.completions.create(chatRequest);
check(chat.object === "chat.completion", "chat object", chat.object);
check(chat.model === model, "chat model", chat.model);
check(chat.choices.length === 1, "one choice", chat.choices.length);
check(chat.choices[0].message.role === "assistant", "assistant role", chat.choices[0].message);
check(typeof chat.choices[0].message.content === "string", "content is a string", chat.choices[0].message);
check(chat.choices[0].finish_reason === "length", "finish_reason length", chat.choices[0].finish_reason);
check(chat.usage.completion_tokens === 8, "completion_tokens", chat.usage);
check(chat.usage.prompt_tokens > 10, "prompt_tokens counts the template", chat.usage);
check(chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens, "total_tokens", chat.usage);
console.log(`ok chat.completions: ${JSON.stringify(chat.choices[0].message.content)}`);

// Chat, streaming with usage: the same text as non-streaming (greedy).
const stream = await client.chat.completions.create({
  ...chatRequest,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let finishes = 0;
let usage = null;
let ids = new Set();
let index = 0;
for await (const chunk of stream) {
  ids.add(chunk.id);
  check(chunk.object === "chat.completion.chunk", "chunk object", chunk);
  if (chunk.choices.length === 0) {
    check(chunk.usage && usage === null, "one usage chunk", chunk);
    usage = chunk.usage;
  } else {
    check(usage === null, "usage chunk comes last", chunk);
    const choice = chunk.choices[0];
    if (index === 0) check(choice.delta.role === "assistant", "role in the first chunk", chunk);
    else check(choice.delta.role === undefined, "role only in the first chunk", chunk);
    text += choice.delta.content ?? "";
    if (choice.finish_reason !== null) finishes += 1;
  }
  index += 1;
}
check(ids.size === 1, "one id for the whole stream", [...ids]);
check(finishes === 1, "exactly one finish_reason", finishes);
check(usage && usage.completion_tokens === 8 && usage.prompt_tokens === chat.usage.prompt_tokens,
      "stream usage equals the non-streamed usage", usage);
check(text === chat.choices[0].message.content, "streamed text equals the non-streamed text",
      { text, expected: chat.choices[0].message.content });
console.log(`ok chat.completions stream: ${index} chunks`);

// Completions (legacy), both ways.
const completion = await client.completions.create({ model, prompt: "The sea is", max_tokens: 6, temperature: 0 });
check(completion.object === "text_completion", "completion object", completion.object);
check(completion.usage.completion_tokens === 6, "completion usage", completion.usage);
let completionText = "";
for await (const chunk of await client.completions.create({
  model, prompt: "The sea is", max_tokens: 6, temperature: 0, stream: true,
})) {
  completionText += chunk.choices[0]?.text ?? "";
}
check(completionText === completion.choices[0].text, "streamed completion equals non-streamed",
      { completionText, expected: completion.choices[0].text });
console.log(`ok completions: ${JSON.stringify(completion.choices[0].text)}`);

// Errors a user can act on.
await expectError("unknown model", 404, () => client.chat.completions.create({ ...chatRequest, model: "no-such-model" }));
await expectError("n = 2", 400, () => client.chat.completions.create({ ...chatRequest, n: 2 }));
await expectError("negative temperature", 400, () => client.chat.completions.create({ ...chatRequest, temperature: -1 }));
await expectError("prompt longer than the context", 400, () =>
  client.completions.create({ model, prompt: "word ".repeat(5000), max_tokens: 4 }));
{
  // Malformed JSON, sent by hand (no SDK sends it): a 400 error object, and the box goes on.
  const response = await fetch(`${baseURL}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey}` },
    body: '{"model": "' + model + '", "messages": [',
  });
  const body = await response.json();
  check(response.status === 400 && body.error?.type === "invalid_request_error",
        "malformed JSON is a 400 invalid_request_error", { status: response.status, body });
  console.log(`ok malformed JSON -> 400 ${body.error.message}`);
}
if (args["api-key"] !== undefined) {
  const anonymous = new OpenAI({ baseURL, apiKey: "ibx_wrong.key", maxRetries: 0 });
  await expectError("a wrong API key", 401, () => anonymous.chat.completions.create(chatRequest));
}

// Many users at once: every stream completes with its own correct usage.
if (concurrent > 0) {
  const started = Date.now();
  const results = await Promise.all(Array.from({ length: concurrent }, async (_, i) => {
    const s = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: `Request number ${i}` }],
      max_tokens: 4,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let tokens = null;
    let finish = null;
    for await (const chunk of s) {
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    }
    return { tokens, finish };
  }));
  const bad = results.filter((r) => r.tokens !== 4 || r.finish !== "length");
  check(bad.length === 0, `${concurrent} concurrent streams each report 4 completion tokens`, bad.slice(0, 5));
  console.log(`ok ${concurrent} concurrent streams in ${Date.now() - started} ms`);
}
console.log("PASS");
