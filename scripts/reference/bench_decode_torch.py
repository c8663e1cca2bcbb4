#!/usr/bin/env python3
"""Per-token decode latency of a Qwen2.5-VL checkpoint in PyTorch + transformers (CPU, float32, ONE thread),
the reference for the exported ONNX decoders (exporter/benches/decode.rs, docs/benchmarks.md).

Same protocol as the Rust benchmark: a 64-token text prompt is prefilled, then 32 tokens are decoded one
at a time over the KV cache (model forward with past_key_values, greedy); each step is timed and the
median over 5 rounds of 32 steps is reported, per attention implementation (eager, sdpa).

The checkpoint is the one the Rust benchmark writes (random weights, ~30M parameters):
    cargo bench -p monovlm-exporter --bench decode        # writes target/monovlm-bench/qwen25vl-30m
    python scripts/reference/bench_decode_torch.py target/monovlm-bench/qwen25vl-30m
Versions: torch==2.13.0, transformers==5.23.0 (the .cache/pyhf environment).
"""
import argparse
import json
import os
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

torch.set_num_threads(1)
PROMPT, NEW, ROUNDS = 64, 32, 5


@torch.no_grad()
def bench(path, attn):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[(i * 37 + 11) % 8000 for i in range(PROMPT)]])
    steps, prefills = [], []
    for _ in range(ROUNDS + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        prefills.append(time.perf_counter() - t0)
        past, mask = out.past_key_values, torch.ones_like(ids)
        nxt = out.logits[:, -1:].argmax(-1)
        round_steps = []
        for _ in range(NEW):
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=1)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
            round_steps.append(time.perf_counter() - t0)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        steps.append(round_steps)
    steps = [s for r in steps[1:] for s in r]  # the first round warms up
    n_params = sum(p.numel() for p in model.parameters())
    return {"attn": attn, "n_parameters": n_params, "decode_step_ms_median": 1e3 * statistics.median(steps),
            "decode_step_ms_min": 1e3 * min(steps), "prefill_64_ms_median": 1e3 * statistics.median(prefills[1:]),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "loadavg_1m": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--attn", nargs="+", default=["eager", "sdpa"])
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    for attn in args.attn:
        print(json.dumps(bench(args.checkpoint, attn)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
