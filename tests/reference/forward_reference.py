#!/usr/bin/python3
"""Reference forward pass and greedy decode for the CPU engine's tests, in float64 numpy.

    forward_reference.py --model DIR --prompt-ids 1,2,3 [--steps 32] [--top 20] [--debug]

Written from Hugging Face transformers' modeling code (4.5x) for LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM, not from our engine. The stored
weights (float32, bfloat16 or float16) are widened exactly and all arithmetic is float64.

Prints one JSON object:
  prompt_ids   the prompt
  greedy_ids   --steps ids, each the argmax (lowest id on ties) of the logits after the
               previous one was fed back
  positions    for every position of prompt + greedy_ids except the last generated one:
               top_ids (--top ids by descending logit, lower id first on ties) and top_logits
  dtype, model_type
--debug writes the largest |hidden state| after each layer to stderr for the prompt pass.
"""
import argparse
import json
import math
import mmap
import pathlib
import sys

import numpy as np

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}
STORAGE = {"F32": ("<f4", 4), "BF16": ("<u2", 2), "F16": ("<f2", 2)}
# A float64 copy of every weight is kept when the model is this small; larger tensors are
# widened one block of rows at a time.
CACHE_FLOAT64_ELEMENTS = 64 << 20
ROW_BLOCK_ELEMENTS = 16 << 20


class ModelError(Exception):
    pass


class SafeTensors:
    """Read-only view of one .safetensors file: tensors as float32 (an exact widening)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._map) < 8:
            raise ModelError(f"{path}: shorter than a safetensors header")
        header_len = int.from_bytes(self._map[:8], "little")
        if 8 + header_len > len(self._map):
            raise ModelError(f"{path}: header length {header_len} runs past the end of the file")
        try:
            header = json.loads(bytes(self._map[8:8 + header_len]).decode("utf-8"))
        except ValueError as e:
            raise ModelError(f"{path}: header is not JSON: {e}")
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self._entries = header
        data_len = len(self._map) - self._data_start
        for name, entry in header.items():
            if entry.get("dtype") not in STORAGE:
                raise ModelError(f"{path}: tensor {name} has dtype {entry.get('dtype')}, "
                                 f"expected one of {sorted(STORAGE)}")
            begin, end = entry["data_offsets"]
            expected = math.prod(entry["shape"]) * STORAGE[entry["dtype"]][1]
            if end - begin != expected or not 0 <= begin <= end <= data_len:
                raise ModelError(f"{path}: tensor {name}: data_offsets {begin}..{end} do not hold "
                                 f"shape {entry['shape']} of {entry['dtype']} within {data_len} bytes")

    def names(self):
        return set(self._entries)

    def dtype(self, name):
        return self._entries[name]["dtype"]

    def get(self, name: str, shape) -> np.ndarray:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelError(f"{self.path}: tensor {name} is missing")
        if tuple(entry["shape"]) != tuple(shape):
            raise ModelError(f"{self.path}: tensor {name} has shape {entry['shape']}, expected {list(shape)}")
        storage, _ = STORAGE[entry["dtype"]]
        begin, end = entry["data_offsets"]
        raw = np.frombuffer(self._map, dtype=storage, count=math.prod(shape),
                            offset=self._data_start + begin).reshape(shape)
        if entry["dtype"] == "BF16":
            return Widened(raw)
        return raw


class Widened:
    """bfloat16 bits that widen to float32 on slicing (shift left by 16)."""

    def __init__(self, bits):
        self.bits = bits
        self.shape = bits.shape

    def __getitem__(self, index):
        return (self.bits[index].astype(np.uint32) << np.uint32(16)).view(np.float32)

    def astype(self, dtype):
        return self[...].astype(dtype)


class Weights:
    def __init__(self, tensors: SafeTensors, cache: bool):
        self.tensors = tensors
        self.cache = cache
        self._float64 = {}

    def vector(self, name, shape):
        return np.asarray(self.tensors.get(name, shape)[...], dtype=np.float64)

    def matrix(self, name, shape):
        """A float64 matrix, or the stored one when it is too big to copy."""
        if name in self._float64:
            return self._float64[name]
        stored = self.tensors.get(name, shape)
        if not self.cache:
            return stored
        widened = np.asarray(stored[...], dtype=np.float64)
        self._float64[name] = widened
        return widened

    def rows(self, name, shape, ids):
        return np.asarray(self.tensors.get(name, shape)[np.asarray(ids)], dtype=np.float64)


def linear(x: np.ndarray, w) -> np.ndarray:
    """x [n, in] times w [out, in] transposed, in float64 (w widened block by block if stored)."""
    if isinstance(w, np.ndarray) and w.dtype == np.float64:
        return x @ w.T
    out_features, in_features = w.shape
    block = max(1, ROW_BLOCK_ELEMENTS // in_features)
    y = np.empty((x.shape[0], out_features), dtype=np.float64)
    for begin in range(0, out_features, block):
        end = min(out_features, begin + block)
        y[:, begin:end] = x @ np.asarray(w[begin:end], dtype=np.float64).T
    return y


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def inverse_frequencies(config: dict, head_dim: int) -> np.ndarray:
    theta = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    scaling = config.get("rope_scaling")
    if scaling is None:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ModelError(f"rope_scaling type {rope_type!r} is not supported (only llama3)")
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """x [n, heads, head_dim] at positions [n]."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    return x * cos + rotate_half(x) * sin


class Model:
    def __init__(self, model_dir: pathlib.Path):
        config_path = model_dir / "config.json"
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{config_path}: {e}")
        c = self.config
        self.model_type = c.get("model_type")
        if self.model_type not in SUPPORTED:
            raise ModelError(f"{config_path}: model_type {self.model_type!r} is not one of {sorted(SUPPORTED)}")
        if c.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{config_path}: hidden_act {c.get('hidden_act')!r} is not silu")
        if c.get("attention_bias", False) and self.model_type != "qwen2":
            raise ModelError(f"{config_path}: attention_bias true is not supported")
        if c.get("mlp_bias", False):
            raise ModelError(f"{config_path}: mlp_bias true is not supported")
        if self.model_type in ("qwen2", "qwen3") and c.get("use_sliding_window", False):
            raise ModelError(f"{config_path}: use_sliding_window true is not supported")
        self.hidden = c["hidden_size"]
        self.inter = c["intermediate_size"]
        self.num_layers = c["num_hidden_layers"]
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads") or self.num_heads
        head_dim = c.get("head_dim") if self.model_type != "qwen2" else None
        self.head_dim = head_dim or self.hidden // self.num_heads
        self.vocab = c["vocab_size"]
        self.eps = float(c["rms_norm_eps"])
        self.tie = bool(c.get("tie_word_embeddings", False))
        # Mistral applies a sliding window whenever config.sliding_window is set: a query at
        # position p sees keys at positions > p - sliding_window.
        self.sliding_window = c.get("sliding_window") if self.model_type == "mistral" else None
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"{config_path}: {self.num_heads} heads do not divide into "
                             f"{self.num_kv_heads} kv heads")
        self.inv_freq = inverse_frequencies(c, self.head_dim)

        path = model_dir / "model.safetensors"
        if not path.is_file():
            raise ModelError(f"{path} not found (sharded checkpoints are not supported)")
        self.tensors = SafeTensors(path)
        dtypes = {self.tensors.dtype(n) for n in self.tensors.names()}
        self.dtype = c.get("torch_dtype") or c.get("dtype")
        num_elements = 2 * self.vocab * self.hidden + self.num_layers * (
            self.hidden * self.head_dim * 2 * (self.num_heads + self.num_kv_heads) + 3 * self.hidden * self.inter)
        self.w = Weights(self.tensors, cache=num_elements <= CACHE_FLOAT64_ELEMENTS)
        self.stored_dtypes = sorted(dtypes)
        self._load_small()

    def _load_small(self):
        h, hd, nh, nkv = self.hidden, self.head_dim, self.num_heads, self.num_kv_heads
        self.layers = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            layer = {
                "input_norm": self.w.vector(p + "input_layernorm.weight", (h,)),
                "post_norm": self.w.vector(p + "post_attention_layernorm.weight", (h,)),
                "q": self.w.matrix(p + "self_attn.q_proj.weight", (nh * hd, h)),
                "k": self.w.matrix(p + "self_attn.k_proj.weight", (nkv * hd, h)),
                "v": self.w.matrix(p + "self_attn.v_proj.weight", (nkv * hd, h)),
                "o": self.w.matrix(p + "self_attn.o_proj.weight", (h, nh * hd)),
                "gate": self.w.matrix(p + "mlp.gate_proj.weight", (self.inter, h)),
                "up": self.w.matrix(p + "mlp.up_proj.weight", (self.inter, h)),
                "down": self.w.matrix(p + "mlp.down_proj.weight", (h, self.inter)),
            }
            if self.model_type == "qwen2":
                layer["q_bias"] = self.w.vector(p + "self_attn.q_proj.bias", (nh * hd,))
                layer["k_bias"] = self.w.vector(p + "self_attn.k_proj.bias", (nkv * hd,))
                layer["v_bias"] = self.w.vector(p + "self_attn.v_proj.bias", (nkv * hd,))
            if self.model_type == "qwen3":
                layer["q_norm"] = self.w.vector(p + "self_attn.q_norm.weight", (hd,))
                layer["k_norm"] = self.w.vector(p + "self_attn.k_norm.weight", (hd,))
            self.layers.append(layer)
        self.final_norm = self.w.vector("model.norm.weight", (h,))
        head_name = "model.embed_tokens.weight" if self.tie else "lm_head.weight"
        self.lm_head = self.w.matrix(head_name, (self.vocab, h))
        self.tensors.get("model.embed_tokens.weight", (self.vocab, h))

    def new_cache(self):
        return [{"k": np.zeros((0, self.num_kv_heads, self.head_dim)),
                 "v": np.zeros((0, self.num_kv_heads, self.head_dim))} for _ in range(self.num_layers)]

    def forward(self, ids, start: int, cache, debug=None) -> np.ndarray:
        """Runs ids at positions start.. against the cache (extended in place); returns logits [n, vocab]."""
        n = len(ids)
        positions = np.arange(start, start + n)
        x = self.w.rows("model.embed_tokens.weight", (self.vocab, self.hidden), ids)
        for index, (layer, kv) in enumerate(zip(self.layers, cache)):
            x = x + self._attention(rms_norm(x, layer["input_norm"], self.eps), positions, layer, kv)
            n_ = rms_norm(x, layer["post_norm"], self.eps)
            x = x + linear(silu(linear(n_, layer["gate"])) * linear(n_, layer["up"]), layer["down"])
            if debug is not None:
                debug.append({"layer": index, "max_abs_hidden": float(np.max(np.abs(x)))})
        return linear(rms_norm(x, self.final_norm, self.eps), self.lm_head)

    def _attention(self, x, positions, layer, kv):
        n, nh, nkv, hd = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = linear(x, layer["q"]), linear(x, layer["k"]), linear(x, layer["v"])
        if self.model_type == "qwen2":
            q, k, v = q + layer["q_bias"], k + layer["k_bias"], v + layer["v_bias"]
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        if self.model_type == "qwen3":
            q = rms_norm(q, layer["q_norm"], self.eps)
            k = rms_norm(k, layer["k_norm"], self.eps)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        kv["k"] = np.concatenate([kv["k"], k])
        kv["v"] = np.concatenate([kv["v"], v])
        keys, values = kv["k"], kv["v"]
        key_positions = np.arange(keys.shape[0])
        group = nh // nkv
        keys = np.repeat(keys, group, axis=1)  # repeat_kv: query head h reads kv head h // group
        values = np.repeat(values, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, keys) / math.sqrt(hd)
        visible = key_positions[None, :] <= positions[:, None]
        if self.sliding_window is not None:
            visible &= key_positions[None, :] > positions[:, None] - self.sliding_window
        scores = np.where(visible[None, :, :], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, values).reshape(n, nh * hd)
        return linear(out, layer["o"])


def top_k(logits: np.ndarray, k: int):
    """k ids by descending logit, lower id first on equal logits."""
    k = min(k, logits.shape[0])
    candidates = np.argpartition(-logits, k - 1)[:k]
    threshold = logits[candidates].min()
    candidates = np.flatnonzero(logits >= threshold)
    order = np.lexsort((candidates, -logits[candidates]))[:k]
    ids = candidates[order]
    return ids, logits[ids]


def run(model: Model, prompt, steps: int, top: int, debug: bool) -> dict:
    cache = model.new_cache()
    trace = [] if debug else None
    logits = model.forward(prompt, 0, cache, trace)
    if debug:
        for entry in trace:
            print(f"layer {entry['layer']}: max |hidden| = {entry['max_abs_hidden']:.6g}", file=sys.stderr)
    positions, greedy = [], []
    for step in range(steps):
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"logits at step {step} are not finite")
        for row in logits:
            ids, values = top_k(row, top)
            positions.append({"top_ids": ids.tolist(), "top_logits": values.tolist()})
        next_id = int(np.argmax(logits[-1]))
        greedy.append(next_id)
        if step + 1 < steps:
            logits = model.forward([next_id], len(prompt) + step, cache)
    if debug:
        margins = [p["top_logits"][0] - p["top_logits"][1] for p in positions if len(p["top_logits"]) > 1]
        print(f"top-1 margin: min {min(margins):.6g}, max {max(margins):.6g}", file=sys.stderr)
    return {"prompt_ids": list(prompt), "greedy_ids": greedy, "positions": positions,
            "dtype": model.dtype, "model_type": model.model_type}


def parse_ids(text: str):
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids must be comma-separated integers, got {text!r}")
    if not ids:
        raise argparse.ArgumentTypeError("--prompt-ids is empty")
    return ids


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="forward_reference.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=pathlib.Path)
    p.add_argument("--prompt-ids", required=True, type=parse_ids)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        p.error("--steps and --top must be positive")
    try:
        model = Model(args.model)
        bad = [i for i in args.prompt_ids if not 0 <= i < model.vocab]
        if bad:
            p.error(f"--prompt-ids {bad} outside the vocabulary 0..{model.vocab - 1}")
        limit = model.config.get("max_position_embeddings")
        if limit and len(args.prompt_ids) + args.steps - 1 > limit:
            p.error(f"{len(args.prompt_ids)} prompt ids + {args.steps} steps exceed "
                    f"max_position_embeddings {limit}")
        result = run(model, args.prompt_ids, args.steps, args.top, args.debug)
    except ModelError as e:
        print(f"forward_reference.py: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
