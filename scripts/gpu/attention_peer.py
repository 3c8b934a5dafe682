"""The peer for inferbox-attention-bench: PyTorch's scaled_dot_product_attention (its flash or
memory-efficient kernels, whichever PyTorch picks) on the same decode shapes, over a
contiguous BF16 cache [batch, kv_heads, context, head_dim] (no block table: a simpler
problem than the paged one), printed in the same columns.

    python3 scripts/gpu/attention_peer.py [--batch 256] [--context 512,1024,2048]
        [--heads 32] [--kv-heads 8] [--head-dim 128] [--iterations 20]
        [--prefill 1024,4096,8192]

With --prefill, causal prefill of one prompt of each length instead (queries, keys and values
contiguous [1, heads, tokens, head_dim] in BF16, is_causal), in inferbox-attention-bench
--prefill's columns: microseconds per call and TFLOP/s counted as it counts them.

The floor is the cache bytes over the copy bandwidth measured as the bench measures it (a
device-to-device copy of 1 GiB, read + write). Grouped-query attention through enable_gqa
where this PyTorch has it; else the keys and values are expanded to every query head before
timing (the line says so: it then reads `heads / kv_heads` times the bytes). Needs torch with
CUDA; no network.
"""
import argparse

import torch
import torch.nn.functional as F


def seconds_per_call(iterations, launch):
    launch()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        launch()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / 1e3 / iterations


def copy_bandwidth(nbytes, iterations):
    size = min(nbytes, 1 << 30)
    source = torch.ones(size, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2.0 * size / seconds_per_call(iterations, lambda: target.copy_(source))


def gqa_supported():
    try:
        probe = torch.zeros(1, 2, 1, 16, dtype=torch.bfloat16, device="cuda")
        F.scaled_dot_product_attention(probe, probe[:, :1], probe[:, :1], enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


def prefill(args, prompts):
    d = args.head_dim
    gqa = gqa_supported()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"{'tokens':>8} {'kernel':<12} {'us/call':>12} {'TFLOP/s':>10}")
    for tokens in prompts:
        q = torch.rand(1, args.heads, tokens, d, dtype=torch.bfloat16, device="cuda") * 2 - 1
        k = torch.rand(1, args.kv_heads, tokens, d, dtype=torch.bfloat16, device="cuda") * 2 - 1
        v = torch.rand_like(k) * 2 - 1
        if gqa:
            launch = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                            enable_gqa=True)
            name = "torch-sdpa"
        else:
            group = args.heads // args.kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            launch = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            name = "torch-sdpa-x"
        with torch.no_grad():
            seconds = seconds_per_call(args.iterations, launch)
        flops = 2.0 * args.heads * d * tokens * (tokens + 1)
        print(f"{tokens:>8} {name:<12} {seconds * 1e6:>12.1f} {flops / seconds / 1e12:>10.1f}",
              flush=True)
        del q, k, v
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="256")
    parser.add_argument("--context", default="512,1024,2048")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--prefill", default="")
    args = parser.parse_args()
    if args.prefill:
        prefill(args, [int(n) for n in args.prefill.split(",")])
        return
    batches = [int(b) for b in args.batch.split(",")]
    contexts = [int(c) for c in args.context.split(",")]
    d = args.head_dim
    largest = max(batches) * max(contexts) * args.kv_heads * d * 2
    bandwidth = copy_bandwidth(largest, args.iterations)
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
    print(f"{'batch':>6} {'context':>8} {'kernel':<12} {'us/call':>10} {'floor us':>10} "
          f"{'GB/s':>9} {'floor':>8}")
    gqa = gqa_supported()
    for batch in batches:
        for context in contexts:
            q = torch.randn(batch, args.heads, 1, d, dtype=torch.bfloat16, device="cuda")
            k = torch.rand(batch, args.kv_heads, context, d, dtype=torch.bfloat16,
                           device="cuda") * 2 - 1
            v = torch.rand_like(k) * 2 - 1
            cache_bytes = 2.0 * batch * context * args.kv_heads * d * 2
            if gqa:
                launch = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                name = "torch-sdpa"
            else:
                group = args.heads // args.kv_heads
                k = k.repeat_interleave(group, dim=1)
                v = v.repeat_interleave(group, dim=1)
                launch = lambda: F.scaled_dot_product_attention(q, k, v)
                name = "torch-sdpa-x"  # K/V expanded: reads `group` times the bytes.
            with torch.no_grad():
                seconds = seconds_per_call(args.iterations, launch)
            floor_us = cache_bytes / bandwidth * 1e6
            print(f"{batch:>6} {context:>8} {name:<12} {seconds * 1e6:>10.1f} "
                  f"{floor_us:>10.1f} {cache_bytes / seconds / 1e9:>9.1f} "
                  f"{100.0 * floor_us / (seconds * 1e6):>7.1f}%", flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
