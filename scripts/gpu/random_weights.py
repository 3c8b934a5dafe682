"""Rewrites a model folder's weights with random BF16 values of the shapes its config.json
names, generated on the GPU with torch (seconds for an 8B model, where numpy on the CPU takes
minutes). For load-and-generate sanity runs and benchmarks of real shapes, never for accuracy.

    python3 scripts/gpu/random_weights.py MODEL_DIR [--layers N]

MODEL_DIR comes from tools/inferbox-make-model (config, tokenizer and generation config);
--layers sets num_hidden_layers in its config.json first.
"""
import argparse
import json
import math
import pathlib

import torch
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("--layers", type=int)
    args = parser.parse_args()
    config_path = args.model / "config.json"
    config = json.loads(config_path.read_text())
    if args.layers:
        config["num_hidden_layers"] = args.layers
        config_path.write_text(json.dumps(config, indent=2))
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    vocab = config["vocab_size"]
    generator = torch.Generator(device="cuda").manual_seed(0)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        values = torch.empty(rows, cols, device="cuda", dtype=torch.bfloat16)
        values.uniform_(-1.0, 1.0, generator=generator)
        return (values / math.sqrt(cols)).cpu()

    def norm(size: int) -> torch.Tensor:
        return torch.ones(size, dtype=torch.bfloat16)

    tensors = {"model.embed_tokens.weight": matrix(vocab, hidden) * math.sqrt(hidden),
               "model.norm.weight": norm(hidden)}
    if not config.get("tie_word_embeddings", False):
        tensors["lm_head.weight"] = matrix(vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm(hidden)
        tensors[p + "post_attention_layernorm.weight"] = norm(hidden)
        tensors[p + "self_attn.q_proj.weight"] = matrix(heads * head_dim, hidden)
        tensors[p + "self_attn.k_proj.weight"] = matrix(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.v_proj.weight"] = matrix(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.o_proj.weight"] = matrix(hidden, heads * head_dim)
        # Qwen2's config has no attention_bias key: its q/k/v projections always have biases.
        if config.get("attention_bias") or config["architectures"][0].startswith("Qwen2"):
            for name, size in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                tensors[p + f"self_attn.{name}_proj.bias"] = torch.zeros(size * head_dim, dtype=torch.bfloat16)
        if config["architectures"][0].startswith("Qwen3"):
            tensors[p + "self_attn.q_norm.weight"] = norm(head_dim)
            tensors[p + "self_attn.k_norm.weight"] = norm(head_dim)
        tensors[p + "mlp.gate_proj.weight"] = matrix(inter, hidden)
        tensors[p + "mlp.up_proj.weight"] = matrix(inter, hidden)
        tensors[p + "mlp.down_proj.weight"] = matrix(hidden, inter)
    for stale in args.model.glob("*.safetensors*"):
        stale.unlink()
    save_file(tensors, str(args.model / "model.safetensors"), metadata={"format": "pt"})
    total = sum(t.numel() for t in tensors.values())
    print(f"wrote {total / 1e9:.2f} B parameters ({2 * total / 2**30:.1f} GiB) to {args.model}")


if __name__ == "__main__":
    main()
