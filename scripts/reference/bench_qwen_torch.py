#!/usr/bin/env python3
"""Speed anchor for the trainer: a ~3M-parameter Qwen2.5-VL in PyTorch + transformers, CPU, float32, ONE
thread, eager and sdpa attention.

Model (random weights, HF init): text hidden 256, 4 layers, 4 heads / 2 kv heads (head_dim 64),
intermediate 512, vocab 2048, mrope_section [8, 12, 12], rope theta 1e6, tied embeddings; vision depth 2,
hidden 64, 2 heads, intermediate 128, out_hidden 256, window 112, full attention in block 1.

Measurements (each printed as one JSON line, also written as JSON lines to --json FILE):
  train     forward + backward + AdamW step (lr 1e-4) on a text-only batch of 8 x 128 random ids < 2000,
            labels = input_ids (HF shifted mean loss); tokens/s = 8*128 / median step time of 10 steps
            after 2 warm-up steps.
  sample    one 64-token text prompt, model.generate(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            max_new_tokens=32, min_new_tokens=32, num_return_sequences=8): generated tokens/s =
            8*32 / median wall time of 5 runs (after 1 warm-up). top_k=0 is passed explicitly because
            transformers' default is top_k=50.
  greedy    the same prompt, batch 1, do_sample=False, 32 new tokens (min_new_tokens=32): tokens/s =
            32 / median wall time of 5 runs (after 1 warm-up).
Both include the KV cache; text-only inputs (no image), so positions are the plain 1-D ones.

Versions: python 3.11.7, torch==2.13.0 (CUDA build, run on CPU), transformers==5.23.0.

Usage:
    python scripts/reference/bench_qwen_torch.py [--json out.jsonl] [--attn eager sdpa]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

torch.set_num_threads(1)

VOCAB = 2048
EOS = 2047
PAD = 2046
TRAIN_B, TRAIN_T = 8, 128
TRAIN_WARMUP, TRAIN_STEPS = 2, 10
PROMPT = 64
NEW = 32
G = 8
GEN_RUNS = 5


def config():
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=512, rms_norm_eps=1e-6, bos_token_id=None,
                         eos_token_id=EOS, pad_token_id=PAD,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, out_hidden_size=256,
                           window_size=112, fullatt_block_indexes=[1], patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2),
        image_token_id=2042, video_token_id=2043, vision_start_token_id=2040, vision_end_token_id=2041,
        tie_word_embeddings=True,
    )


def build(attn):
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration._from_config(config(), attn_implementation=attn, dtype=torch.float32)


def bench_train(model, gen):
    model.train()
    ids = torch.randint(0, 2000, (TRAIN_B, TRAIN_T), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(TRAIN_WARMUP + TRAIN_STEPS):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= TRAIN_WARMUP:
            times.append(dt)
    med = statistics.median(times)
    return {"tokens_per_s": TRAIN_B * TRAIN_T / med, "median_step_s": med, "min_step_s": min(times),
            "batch": [TRAIN_B, TRAIN_T], "steps": TRAIN_STEPS}


@torch.no_grad()
def bench_generate(model, gen, sample):
    model.eval()
    prompt = torch.randint(0, 2000, (1, PROMPT), generator=gen)
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD,
                  attention_mask=torch.ones_like(prompt))
    if sample:
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=G)
    else:
        kwargs.update(do_sample=False)
    n_seq = G if sample else 1
    times = []
    for i in range(1 + GEN_RUNS):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        out = model.generate(prompt, **kwargs)
        dt = time.perf_counter() - t0
        assert out.shape == (n_seq, PROMPT + NEW), out.shape
        if i >= 1:
            times.append(dt)
    med = statistics.median(times)
    return {"tokens_per_s": n_seq * NEW / med, "median_s": med, "min_s": min(times), "sequences": n_seq,
            "prompt": PROMPT, "new_tokens": NEW, "runs": GEN_RUNS}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the JSON lines to this file")
    ap.add_argument("--attn", nargs="+", default=["eager", "sdpa"])
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()

    common = {"threads": torch.get_num_threads(), "dtype": "float32", "device": "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "cpu": cpu_name(), "loadavg_1m": os.getloadavg()[0]}
    lines = []
    for attn in args.attn:
        model = build(attn)
        n_params = sum(p.numel() for p in model.parameters())
        n_vision = sum(p.numel() for p in model.model.visual.parameters())
        gen = torch.Generator().manual_seed(0)
        for name, fn in (("train", lambda: bench_train(model, gen)),
                         ("sample", lambda: bench_generate(model, gen, sample=True)),
                         ("greedy", lambda: bench_generate(model, gen, sample=False))):
            rec = {"bench": name, "attn": attn, "n_parameters": n_params, "n_parameters_vision": n_vision, **fn(), **common}
            line = json.dumps(rec)
            print(line, flush=True)
            lines.append(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
