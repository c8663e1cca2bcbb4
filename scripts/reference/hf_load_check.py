#!/usr/bin/env python3
"""Does a checkpoint written by our trainer load in Hugging Face transformers and compute the same
logits? (Issue: "a checkpoint we save must load in transformers".)

The Rust test `lora_trains_adapters_only_merges_on_save_and_switches_off` (trainer/tests/
model_training.rs) LoRA-tunes the tiny_a fixture model, saves it with the adapters merged, and, with
MONOVLM_HF_CHECK_DIR set, writes the checkpoint and its prefill logits there:

    MONOVLM_HF_CHECK_DIR=/tmp/hfcheck cargo test -p monovlm-trainer --test model_training lora
    .cache/pyhf/bin/python scripts/reference/hf_load_check.py /tmp/hfcheck

This script loads `checkpoint/` with `Qwen2_5_VLForConditionalGeneration.from_pretrained` (strict:
missing or unexpected keys fail), runs the tiny_a fixture prompt and image through it and compares
the logits. Versions: torch 2.13.0, transformers 5.23.0, safetensors 0.8.0 (the .cache/pyhf venv).
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    out = sys.argv[1]
    torch.set_num_threads(1)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        os.path.join(out, "checkpoint"), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        print("loading problems:", problems)
        return 1
    io = load_file(os.path.join(ROOT, "trainer/tests/fixtures/qwen25vl/tiny_a/io.safetensors"))
    with torch.no_grad():
        logits = model(
            input_ids=io["input_ids"],
            pixel_values=io["pixel_values"],
            image_grid_thw=io["image_grid_thw"],
            mm_token_type_ids=io["mm_token_type_ids"],
        ).logits
    want = load_file(os.path.join(out, "expected_logits.safetensors"))["logits"]
    diff = (logits - want).abs().max().item()
    scale = want.abs().max().item()
    print(f"transformers loaded our checkpoint; prefill logits max |diff| {diff:.2e} (scale {scale:.2f})")
    return 0 if diff < 1e-4 * max(scale, 1.0) else 1


if __name__ == "__main__":
    sys.exit(main())
