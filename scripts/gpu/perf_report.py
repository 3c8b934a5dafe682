"""Prints issue #11's table from the JSON records of scripts/gpu/run-perf.sh's logs: ours
(inferbox-bench --json, in-process and through the daemon), the peer
(scripts/gpu/hf_peer_bench.py), ours/peer, and the targets with a verdict.

    python3 scripts/gpu/perf_report.py --gpu NAME --commit SHA LOG...

A log named ours-* holds in-process records, daemon-* records over HTTP, peer* the peer's,
eager-* in-process records with CUDA graphs off (INFERBOX_CUDA_GRAPHS=0), fp8-* in-process
records with the linear layers in FP8 (--quantization fp8), kvfp8-* in-process records with
the KV cache in FP8 (--kv-cache-dtype fp8), cublas-* in-process records with decode steps of up
to 8 sequences on cuBLASLt instead of the small-batch linear kernel (INFERBOX_CUDA_GEMV=0;
cublas-fp8-* with --quantization fp8), kvblock-* in-process records over a block-major KV cache
(INFERBOX_CUDA_KV_BLOCK_MAJOR=1), pdl-* in-process records with the small-batch kernel
launched as a programmatic dependent (INFERBOX_CUDA_PDL=1), ldm-* in-process records with the
decode kernel's fragments by ldmatrix (INFERBOX_CUDA_DECODE_LDMATRIX=1; ldm-fp8-* and ldm-kvfp8-*
with the linear layers or the KV cache in FP8, compared with fp8-* and kvfp8-*); a record is a line
that starts with {"bench". Missing logs and runs count as not measured.
"""
import argparse
import json
import pathlib

ONE_STREAM_FLOOR_SHARE = 90.0  # Percent of the bandwidth floor.
THROUGHPUT_TARGETS = {(1000, 1000, 256): 17000.0, (128, 128, 256): 25000.0}  # Output tok/s per GPU.
PREFILL_MFU_TARGET = (8192, 60.0)  # Prompt tokens, percent.
DAEMON_MAX_LOSS = 3.0  # Percent below in-process.


def read_records(paths):
    records = {"ours": [], "daemon": [], "peer": [], "eager": [], "kvfp8": [], "fp8": [], "cublas": [],
               "cublasfp8": [], "kvblock": [], "pdl": [], "ldm": [], "ldmfp8": [], "ldmkvfp8": []}
    for path in map(pathlib.Path, paths):
        if not path.is_file():
            continue
        side = next((s for s in ("peer", "daemon", "eager", "kvfp8", "kvblock", "pdl", "fp8", "cublas-fp8",
                                 "cublas", "ldm-kvfp8", "ldm-fp8", "ldm")
                     if path.name.startswith(s)), "ours").replace("-", "")
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith('{"bench"'):
                try:
                    records[side].append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def workload(record):
    config = record.get("config", {})
    return config.get("input_len"), config.get("output_len"), config.get("concurrency")


def offline(records, input_len, output_len, concurrency=None):
    """The offline records of this shape (any concurrency when None), without errors first."""
    found = [r for r in records if r.get("bench") == "offline" and workload(r)[:2] == (input_len, output_len)
             and (concurrency is None or workload(r)[2] == concurrency)]
    return sorted(found, key=lambda r: "error" in r)


def ttft_points(records):
    points = {}
    for record in records:
        if record.get("bench") != "ttft":
            continue
        for prompt in record.get("prompts", []):
            points[prompt["input_len"]] = dict(prompt, peak_tflops=record.get("peak_tflops"),
                                               mode=record.get("mode"))
    return points


def per_gpu(record):
    """Output tokens/s per GPU; without a GPU (a dry run on the CPU), the whole rate."""
    rate = record.get("output_tokens_per_second_per_gpu")
    return record.get("output_tokens_per_second") if rate is None else rate


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def speed(ours, peer, lower_is_better=False):
    if not ours or not peer:
        return "-"
    return f"{(peer / ours if lower_is_better else ours / peer):.2f}x"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", default="?")
    parser.add_argument("--commit", default="?")
    parser.add_argument("logs", nargs="*")
    args = parser.parse_args()
    records = read_records(args.logs)
    ours, daemon, peer = records["ours"], records["daemon"], records["peer"]
    rows = []

    def row(workload_name, measure, ours_value, peer_value, ratio, target, verdict):
        rows.append((workload_name, measure, ours_value, peer_value, ratio, target, verdict))

    model = next((r["model"] for r in ours + daemon if "model" in r), None)
    print(f"inferbox vs Hugging Face transformers on {args.gpu}, bundle of commit {args.commit}")
    if model:
        print(f"model: {model['architecture']}, {model['num_hidden_layers']} layers, hidden {model['hidden_size']}, "
              f"vocab {model['vocab_size']}, {model['dtype']} (random weights)")

    # One stream: the decode rate beside the bandwidth floor.
    stream = [r for r in ours if r.get("bench") == "offline" and workload(r)[2] == 1]
    peer_stream = [r for r in peer if r.get("bench") == "offline" and workload(r)[2] == 1 and "error" not in r]
    peer_best = max(peer_stream, key=lambda r: r.get("stream_tokens_per_second", 0), default=None)
    floor = stream[0].get("bandwidth_ceiling") if stream else None
    if floor:
        print(f"floor: {floor['weight_bytes_per_decode_step'] / 1e6:,.1f} MB of weights per decode step at "
              f"{floor['copy_bandwidth_bytes_per_second'] / 1e9:,.1f} GB/s measured copy bandwidth = "
              f"{floor['decode_step_ms']:.3f} ms/step, {floor['single_stream_tokens_per_second']:,.1f} tokens/s "
              "for one stream")
    device = next((r for r in peer if r.get("bench") == "device"), None)
    if device:
        bandwidth = device.get("copy_bandwidth_bytes_per_second")
        print(f"peer: torch {device.get('torch')}, transformers {device.get('transformers')}, attention "
              f"{device.get('attention')}, copy bandwidth measured by torch "
              f"{fmt(bandwidth / 1e9 if bandwidth else None)} GB/s")
    print()
    if stream:
        r = stream[0]
        in_len, out_len, _ = workload(r)
        name = f"1 stream {in_len}/{out_len}"
        peer_rate = peer_best["stream_tokens_per_second"] if peer_best else None
        share = r["bandwidth_ceiling"]["stream_percent_of_floor"]
        verdict = (f"met ({share:.1f}% of floor)" if share >= ONE_STREAM_FLOOR_SHARE else
                   f"missed by {ONE_STREAM_FLOOR_SHARE - share:.1f} points ({share:.1f}% of floor)")
        row(name, "decode tokens/s", fmt(r["stream_tokens_per_second"]),
            fmt(peer_rate) + (f" ({peer_best['mode']})" if peer_best else ""),
            speed(r["stream_tokens_per_second"], peer_rate), f">= {ONE_STREAM_FLOOR_SHARE:.0f}% of floor", verdict)
        row("", "ms/step (floor " + fmt(r["bandwidth_ceiling"]["decode_step_ms"], 3) + ")",
            fmt(r["time_per_output_token_ms"]["mean"], 3),
            fmt(peer_best["time_per_output_token_ms"]["mean"], 3) if peer_best else "-", "", "", "")
        row("", "TTFT ms (p50)", fmt(r["time_to_first_token_ms"]["p50"], 2),
            fmt(peer_best["time_to_first_token_ms"]["p50"], 2) if peer_best else "-",
            speed(r["time_to_first_token_ms"]["p50"],
                  peer_best["time_to_first_token_ms"]["p50"] if peer_best else None, True), "", "")
    else:
        row("1 stream", "decode tokens/s", "-", "-", "-", f">= {ONE_STREAM_FLOOR_SHARE:.0f}% of floor", "not measured")

    # Offline throughput.
    shapes = sorted({workload(r) for r in ours if r.get("bench") == "offline" and workload(r)[2] != 1},
                    key=lambda w: (w[0] or 0, w[1] or 0))
    for shape in list(THROUGHPUT_TARGETS) + [s for s in shapes if s not in THROUGHPUT_TARGETS]:
        in_len, out_len, concurrency = shape
        mine = offline(ours, in_len, out_len, concurrency)
        theirs = [r for r in offline(peer, in_len, out_len) if workload(r)[2] != 1]
        name = f"{in_len}/{out_len}, {concurrency} in flight"
        ours_rate = per_gpu(mine[0]) if mine else None
        peer_rate = per_gpu(theirs[0]) if theirs and "error" not in theirs[0] else None
        peer_text = fmt(peer_rate)
        if theirs and "error" in theirs[0]:
            peer_text = "failed"
        elif theirs:
            peer_text += f" (batch {workload(theirs[0])[2]})"
        target = THROUGHPUT_TARGETS.get(shape)
        if ours_rate is None:
            verdict = "not measured"
        elif target is None:
            verdict = "(no target)"
        elif ours_rate >= target:
            verdict = "met"
        else:
            verdict = f"missed by {100 * (1 - ours_rate / target):.1f}%"
        row(name, "output tokens/s/GPU", fmt(ours_rate), peer_text, speed(ours_rate, peer_rate),
            f">= {target:,.0f}" if target else "", verdict)
        if mine and mine[0].get("steps", {}).get("preemptions"):
            row("", "preemptions (KV full)", str(mine[0]["steps"]["preemptions"]), "", "", "", "")

    # Time to first token and prefill MFU.
    mine, theirs = ttft_points(ours), ttft_points(peer)
    for length in sorted(set(mine) | set(theirs) | {PREFILL_MFU_TARGET[0]}):
        a, b = mine.get(length), theirs.get(length)
        a_ms = a["time_to_first_token_ms"]["p50"] if a else None
        b_ms = b["time_to_first_token_ms"]["p50"] if b else None
        row(f"TTFT, {length}-token prompt", "ms (p50)", fmt(a_ms, 2), fmt(b_ms, 2), speed(a_ms, b_ms, True), "", "")
        peak = (a or b or {}).get("peak_tflops")
        target = ""
        verdict = ""
        if length == PREFILL_MFU_TARGET[0]:
            target = f">= {PREFILL_MFU_TARGET[1]:.0f}% MFU"
            verdict = ("not measured" if a is None else "met" if a["mfu_percent"] >= PREFILL_MFU_TARGET[1]
                       else f"missed by {PREFILL_MFU_TARGET[1] - a['mfu_percent']:.1f} points")
        row("", f"prefill MFU (peak {fmt(peak, 0)} TFLOP/s)", fmt(a["mfu_percent"] if a else None) + "%",
            fmt(b["mfu_percent"] if b else None) + "%", "", target, verdict)

    def versus(variant, base, label, measure, old, word, variant_is_new=True, after=None):
        """A row per offline run of `variant` beside the same workload's run in `base`: the new
        way's tokens/s, the old way's (named `old`), and what the new way gains (`word` +x%);
        `after(record, concurrency)` adds rows of its own."""
        for r in [r for r in variant if r.get("bench") == "offline"]:
            in_len, out_len, concurrency = workload(r)
            mine = offline(base, in_len, out_len, concurrency)
            key = "stream_tokens_per_second" if concurrency == 1 else "output_tokens_per_second"
            theirs = mine[0].get(key) if mine else None
            a, b = (r.get(key), theirs) if variant_is_new else (theirs, r.get(key))
            row(f"{label}{in_len}/{out_len}, {concurrency} in flight", measure, fmt(a), fmt(b) + f" ({old})",
                "", "", f"{word} {100 * (a / b - 1):+.1f}%" if a and b else "not measured")
            if after:
                after(r, concurrency)

    # What the CUDA graphs of decode steps save: the same workload with them off.
    versus(records["eager"], ours, "", "tokens/s, CUDA graphs vs op by op", "op by op", "graphs",
           variant_is_new=False)

    # What the small-batch linear kernel saves: the same workload with small batches' linear
    # layers on cuBLASLt, BF16 against in-process, FP8 against the FP8 run.
    for side, base, label in (("cublas", ours, ""), ("cublasfp8", records["fp8"], "FP8 ")):
        versus(records[side], base, label, "tokens/s, small-batch kernel vs cuBLASLt", "cuBLASLt", "kernel",
               variant_is_new=False)

    # The linear layers in FP8 against unquantised (BF16 on a GPU), same workload; one stream
    # also against its own floor (the FP8 weights' bytes).
    def fp8_floor(r, concurrency):
        floor = r.get("bandwidth_ceiling") or {}
        if concurrency == 1 and floor.get("stream_percent_of_floor") is not None:
            share = floor["stream_percent_of_floor"]
            row("", f"% of the FP8 floor ({fmt(floor.get('decode_step_ms'), 2)} ms/step)", fmt(share) + "%",
                "", "", f">= {ONE_STREAM_FLOOR_SHARE:.0f}% of floor",
                "met" if share >= ONE_STREAM_FLOOR_SHARE else f"missed by {ONE_STREAM_FLOOR_SHARE - share:.1f} points")

    versus(records["fp8"], ours, "FP8 ", "tokens/s, FP8 vs unquantised (BF16)", "unquantised", "FP8",
           after=fp8_floor)

    # The KV cache in FP8 against the BF16 cache, same workload.
    versus(records["kvfp8"], ours, "FP8 KV ", "tokens/s, FP8 KV cache vs BF16", "BF16 cache", "FP8 KV")

    # What launching the small-batch kernel as a dependent of the kernel before it saves.
    versus(records["pdl"], ours, "", "tokens/s, dependent launches vs plain", "plain", "dependent")

    # The decode kernel's fragments by ldmatrix against by loads, same workload and caches.
    for side, base, label in (("ldm", ours, ""), ("ldmfp8", records["fp8"], "FP8 "),
                              ("ldmkvfp8", records["kvfp8"], "FP8 KV ")):
        versus(records[side], base, label, "tokens/s, decode fragments by ldmatrix vs loads", "loads",
               "ldmatrix")

    # A block-major KV cache against the slot-major one, same workload.
    versus(records["kvblock"], ours, "block-major KV ", "tokens/s, block-major KV cache vs slot-major",
           "slot-major", "block-major")

    # The daemon's HTTP path against in-process, same workload.
    for r in [r for r in daemon if r.get("bench") == "offline"]:
        in_len, out_len, concurrency = workload(r)
        mine = offline(ours, in_len, out_len, concurrency)
        base = mine[0] if mine else None
        if concurrency == 1:
            a, b = r["stream_tokens_per_second"], base["stream_tokens_per_second"] if base else None
            measure = "decode tokens/s, HTTP vs in-process"
        else:
            a, b = r["output_tokens_per_second"], base["output_tokens_per_second"] if base else None
            measure = "output tokens/s, HTTP vs in-process"
        loss = 100 * (1 - a / b) if b else None
        verdict = ("no in-process run" if loss is None else
                   f"met ({loss:.1f}% below)" if loss <= DAEMON_MAX_LOSS else f"missed: {loss:.1f}% below")
        row(f"daemon {in_len}/{out_len}, {concurrency} in flight", measure, fmt(a), fmt(b) + " (in-process)", "",
            f"<= {DAEMON_MAX_LOSS:.0f}% below", verdict)
        row("", "TTFT ms (p50), HTTP vs in-process", fmt(r["time_to_first_token_ms"]["p50"], 2),
            fmt(base["time_to_first_token_ms"]["p50"], 2) + " (in-process)" if base else "-", "", "", "")
    if not daemon:
        row("daemon (HTTP)", "output tokens/s", "-", "-", "", f"<= {DAEMON_MAX_LOSS:.0f}% below", "not measured")

    headers = ("workload", "measure", "ours", "peer", "ours/peer", "target", "verdict")
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for line in [headers] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    for problem in [r for r in peer if "error" in r]:
        print(f"peer problem ({problem.get('phase') or problem.get('mode') or problem.get('bench')}): "
              f"{problem['error']}")
    print("\nours/peer is a speed ratio (above 1: ours faster). The peer's mode is given beside its one-stream "
          "number; peer batch sizes other than ours are given beside theirs.")


if __name__ == "__main__":
    main()
