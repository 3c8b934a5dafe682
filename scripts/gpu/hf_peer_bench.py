"""The peer for inferbox-bench: Hugging Face transformers on the same GPU and model folder,
measuring the same workloads, printed as JSON lines under inferbox-bench --json's field
names (scripts/gpu/perf_report.py puts the two side by side).

    python3 scripts/gpu/hf_peer_bench.py --model DIR [--one-stream 128,256]
        [--ttft 1024,4096,8192] [--batch IN,OUT,BATCH]... [--peak-tflops 989] [--no-compile]

Each line is printed (and flushed) as soon as it is measured, so a run stopped by a time
limit keeps what it finished. What it measures (run in the order 1, 2, 3, the first --batch,
5, the other --batch values):
  1. {"bench": "device"}: GPU, versions, and the copy bandwidth measured as inferbox's CUDA
     backend measures it (1 GiB device-to-device copies, each byte counted twice);
  2. one stream, eager (dynamic cache): generate() of --one-stream's output length and of
     one token; time per output token = (t(n) - t(1)) / (n - 1);
  3. TTFT per prompt length: one forward pass over the prompt with the cache on, the next
     token chosen (argmax) and copied to the host; prefill MFU from the same FLOP count as
     tools/bench/prefill_flops.h;
  4. batched generate() per --batch: BATCH prompts of IN random ids together, OUT tokens
     each (eager, dynamic cache): output tokens/s;
  5. one stream again with a static cache and torch.compile (transformers' automatic
     compile of the decode step where it has one, else torch.compile(model.forward,
     mode="reduce-overhead", fullgraph=True)); "mode" says which, and a failure is a line
     with "error".
Every generation is greedy with EOS disabled, so each makes exactly the tokens asked for
(checked). Prompts are random token ids from a fixed seed. Needs torch and transformers;
no network.
"""
import argparse
import inspect
import json
import statistics
import sys
import time
import traceback


def log(message):
    print(f"hf_peer_bench: {message}", file=sys.stderr, flush=True)


def emit(record):
    print(json.dumps(record), flush=True)


def int_list(text):
    return [int(x) for x in text.split(",") if x]


def prefill_flops(config, tokens):
    """tools/bench/prefill_flops.h's count: 2 x layer matmul weights x tokens + the LM head
    once + causal attention (4 x layers x heads x head_dim x L(L+1)/2)."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layers = config.num_hidden_layers
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    per_layer = hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * config.intermediate_size
    matmul = 2.0 * layers * per_layer * tokens + 2.0 * config.vocab_size * hidden
    attention = 4.0 * layers * heads * head_dim * tokens * (tokens + 1) / 2.0
    return matmul, attention


def percentiles(values):
    ordered = sorted(values)

    def at(q):
        rank = q * (len(ordered) - 1)
        below = int(rank)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (rank - below) * (ordered[above] - ordered[below])

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": statistics.fmean(ordered)}


def version_tuple(text):
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class Peer:
    def __init__(self, args):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.transformers = transformers
        self.args = args
        self.device = args.device
        self.generator = torch.Generator(device="cpu").manual_seed(args.seed)
        # transformers 4.56 renamed torch_dtype to dtype.
        dtype_key = "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
        started = time.perf_counter()
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                args.model, **{dtype_key: torch.bfloat16}, device_map=self.device)
        except (ImportError, ValueError) as error:  # device_map needs accelerate on old versions.
            log(f"loading with device_map failed ({error}); loading on the CPU, then moving")
            self.model = AutoModelForCausalLM.from_pretrained(args.model, **{dtype_key: torch.bfloat16})
            self.model.to(self.device)
        self.model.eval()
        dtype = next(self.model.parameters()).dtype
        if dtype != torch.bfloat16:
            raise RuntimeError(f"the model loaded as {dtype}, not bfloat16")
        self.load_seconds = time.perf_counter() - started
        config = self.model.generation_config
        # Exactly the tokens asked for: no end-of-sequence, greedy.
        config.eos_token_id = None
        config.pad_token_id = 0
        config.do_sample = False
        self.config = self.model.config
        self.vocab_size = self.config.vocab_size
        forward_parameters = inspect.signature(self.model.forward).parameters
        if "logits_to_keep" in forward_parameters:
            self.last_logits_only = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in forward_parameters:
            self.last_logits_only = {"num_logits_to_keep": 1}
        else:
            self.last_logits_only = {}
        self.attention = getattr(self.config, "_attn_implementation", "?")

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def prompts(self, batch, length):
        ids = self.torch.randint(0, self.vocab_size, (batch, length), generator=self.generator)
        return ids.to(self.device)

    def generate(self, ids, new_tokens, **extra):
        """Seconds for generate() of exactly `new_tokens` tokens per row."""
        torch = self.torch
        self.sync()
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, **extra)
        self.sync()
        seconds = time.perf_counter() - started
        made = out.shape[1] - ids.shape[1]
        if made != new_tokens:
            raise RuntimeError(f"generate() made {made} tokens, not {new_tokens}")
        return seconds

    def base_record(self, bench, mode):
        return {"bench": bench, "path": "transformers", "mode": mode,
                "model": {"dir": self.args.model, "architecture": (self.config.architectures or ["?"])[0],
                          "num_hidden_layers": self.config.num_hidden_layers,
                          "hidden_size": self.config.hidden_size, "vocab_size": self.vocab_size,
                          "dtype": "bfloat16"},
                "attention": self.attention}

    def device_record(self):
        torch = self.torch
        record = {"bench": "device", "path": "transformers", "torch": torch.__version__,
                  "transformers": self.transformers.__version__, "attention": self.attention,
                  "load_seconds": self.load_seconds}
        if self.device.startswith("cuda"):
            record["gpu"] = torch.cuda.get_device_name()
            size = 1 << 30
            source = torch.ones(size, dtype=torch.uint8, device=self.device)
            target = torch.empty_like(source)
            target.copy_(source)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                target.copy_(source)
            stop.record()
            stop.synchronize()
            record["copy_bandwidth_bytes_per_second"] = 2.0 * 10 * size / (start.elapsed_time(stop) / 1e3)
            del source, target
            torch.cuda.empty_cache()
        emit(record)

    def one_stream(self, mode, warmup_tokens, repeats, **extra):
        """Warm-up (with a static cache, the compilation too) with `warmup_tokens`, twice; the
        longest call comes first so that the shorter ones reuse its static cache."""
        in_len, out_len = self.args.one_stream
        ids = self.prompts(1, in_len)
        for _ in range(2):
            self.generate(ids, warmup_tokens, **extra)
        whole = [self.generate(ids, out_len, **extra) for _ in range(repeats)]
        first = [self.generate(ids, 1, **extra) for _ in range(repeats)]
        ttft = statistics.median(first)
        per_token = [(t - ttft) / (out_len - 1) * 1e3 for t in whole]
        record = self.base_record("offline", mode)
        mean_per_token = statistics.fmean(per_token)
        record.update({
            "config": {"num_requests": repeats, "input_len": in_len, "output_len": out_len, "concurrency": 1},
            "wall_seconds": sum(whole), "output_tokens": repeats * out_len,
            "output_tokens_per_second": repeats * out_len / sum(whole),
            "num_gpus": 1, "output_tokens_per_second_per_gpu": repeats * out_len / sum(whole),
            "time_to_first_token_ms": percentiles([t * 1e3 for t in first]),
            "time_per_output_token_ms": percentiles(per_token),
            "stream_tokens_per_second": 1e3 / mean_per_token})
        emit(record)

    def ttft(self):
        torch = self.torch
        for length in self.args.ttft:
            record = self.base_record("ttft", "eager")
            record["peak_tflops"] = self.args.peak_tflops
            try:
                times = []
                for attempt in range(1 + self.args.ttft_repeats):
                    ids = self.prompts(1, length)
                    self.sync()
                    started = time.perf_counter()
                    with torch.inference_mode():
                        out = self.model(input_ids=ids, use_cache=True, **self.last_logits_only)
                        int(out.logits[0, -1].argmax())
                    seconds = time.perf_counter() - started
                    del out
                    if attempt > 0:  # The first is the warm-up.
                        times.append(seconds * 1e3)
                matmul, attention = prefill_flops(self.config, length)
                p50 = statistics.median(times)
                achieved = (matmul + attention) / (p50 / 1e3) / 1e12
                record["prompts"] = [{
                    "input_len": length, "repeats": len(times),
                    "time_to_first_token_ms": {"p50": p50, "mean": statistics.fmean(times),
                                               "min": min(times), "max": max(times)},
                    "prefill_flops": matmul + attention, "matmul_flops": matmul, "attention_flops": attention,
                    "achieved_tflops": achieved, "mfu_percent": 100.0 * achieved / self.args.peak_tflops}]
            except torch.cuda.OutOfMemoryError as error:
                record["prompts"] = []
                record["error"] = f"{length}-token prompt: out of GPU memory: {error}"
                torch.cuda.empty_cache()
            emit(record)

    def batched(self, in_len, out_len, batch):
        torch = self.torch
        record = self.base_record("offline", "eager, dynamic cache")
        record["config"] = {"num_requests": batch, "input_len": in_len, "output_len": out_len,
                            "concurrency": batch}
        try:
            ids = self.prompts(batch, in_len)
            self.generate(ids, 2)  # Warm-up at this batch size.
            seconds = self.generate(ids, out_len)
            tokens = batch * out_len
            record.update({
                "wall_seconds": seconds, "output_tokens": tokens,
                "output_tokens_per_second": tokens / seconds, "num_gpus": 1,
                "output_tokens_per_second_per_gpu": tokens / seconds,
                # One batch: every request waits for the whole prefill, then steps together.
                "time_per_output_token_ms": None, "time_to_first_token_ms": None})
        except torch.cuda.OutOfMemoryError as error:
            record["error"] = f"out of GPU memory at batch {batch}: {error}"
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        emit(record)

    def compiled_one_stream(self):
        torch = self.torch
        generation_config = self.model.generation_config
        original_forward = self.model.forward
        if hasattr(generation_config, "compile_config"):
            mode = "static cache + torch.compile (generate's automatic compile of the decode step)"
        else:
            mode = "static cache + torch.compile(model.forward, mode=reduce-overhead, fullgraph=True)"
            self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)
        log(f"one stream, {mode}: compiling")
        try:
            self.one_stream(mode, self.args.one_stream[1], 3, cache_implementation="static")
        except Exception as error:  # Whatever compile raises: the peer says so and goes on.
            record = self.base_record("offline", mode)
            record["config"] = {"num_requests": 0, "input_len": self.args.one_stream[0],
                                "output_len": self.args.one_stream[1], "concurrency": 1}
            record["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            traceback.print_exc(file=sys.stderr)
            emit(record)
        finally:
            # The batched runs after this one use the eager model with a dynamic cache.
            self.model.forward = original_forward


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--one-stream", type=int_list, default=[128, 256], help="IN,OUT")
    parser.add_argument("--ttft", type=int_list, default=[1024, 4096, 8192])
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int_list, action="append", default=[], help="IN,OUT,BATCH (repeatable)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="989: H100 SXM, dense BF16")
    parser.add_argument("--no-compile", action="store_true", help="leave out the static cache + torch.compile run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.one_stream) != 2 or any(len(b) != 3 for b in args.batch):
        parser.error("--one-stream takes IN,OUT and --batch IN,OUT,BATCH")

    try:
        peer = Peer(args)
        peer.device_record()
    except Exception as error:  # Nothing to measure without the model: say why, once.
        traceback.print_exc(file=sys.stderr)
        emit({"bench": "error", "path": "transformers", "phase": "load",
              "error": f"{type(error).__name__}: {error}".splitlines()[0][:500]})
        sys.exit(1)
    batches = [(f"batched generate: {batch} x {in_len}/{out_len}",
                lambda i=in_len, o=out_len, b=batch: peer.batched(i, o, b))
               for in_len, out_len, batch in args.batch]
    phases = [("one stream, eager", lambda: peer.one_stream("eager, dynamic cache", 8, 2)),
              ("time to first token", peer.ttft)] + batches[:1]
    if not args.no_compile and args.device.startswith("cuda"):
        phases.append(("one stream, static cache + torch.compile", peer.compiled_one_stream))
    phases += batches[1:]
    for name, phase in phases:
        log(name)
        try:
            phase()
        except Exception as error:  # One phase failing leaves the others to run.
            traceback.print_exc(file=sys.stderr)
            emit({"bench": "error", "path": "transformers", "phase": name,
                  "error": f"{type(error).__name__}: {error}".splitlines()[0][:500]})
            if args.device.startswith("cuda"):
                peer.torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
