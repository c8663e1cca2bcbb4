#!/usr/bin/env python3
"""Golden fixture for supervised fine-tuning (SFT) of Qwen2.5-VL: 5 optimiser steps of the real
transformers model, from the `tiny_a` weights written by `qwen_model_fixture.py`.

Run `qwen_model_fixture.py --out DIR` first; this reads `DIR/tiny_a/` (config.json, model.safetensors,
io.safetensors) and writes `DIR/tiny_a/sft.safetensors` and `DIR/tiny_a/sft.json`.

Procedure (exactly what is computed):

1. Model: `Qwen2_5_VLForConditionalGeneration.from_pretrained(DIR/tiny_a, attn_implementation="eager",
   dtype=float32)`, `model.train()` (all dropouts are 0, so train and eval forwards are the same), CPU,
   one thread.
2. Batch of B=2 sequences, each = the tiny_a prompt of io.safetensors (text, <vision_start>, 24 x
   <image_pad>, <vision_end>, text; 48 tokens) followed by an answer: ANSWERS[0] (12 tokens) and
   ANSWERS[1] (9 tokens), both ending with eos 504. The shorter is right-padded with pad 505 to L = 60.
   attention_mask is 1 on prompt + answer, 0 on padding. Both sequences carry the same image:
   pixel_values = cat([io.pixel_values, io.pixel_values]) (not stored again here),
   image_grid_thw = [[1, 8, 12], [1, 8, 12]]; mm_token_type_ids = (input_ids == 502).
   labels = input_ids on answer tokens (eos included), -100 on prompt and padding tokens.
3. Positions: the model computes them itself (input_ids + mm_token_type_ids + image_grid_thw +
   attention_mask -> `get_rope_index`); stored as `position_ids` [3, 2, L]. With right padding the valid
   prefix gets the usual 3-D mrope positions and padding positions are 0. The attention mask is the causal
   mask AND key-padding mask (padding keys masked; padded query rows still attend to the valid prefix,
   their outputs are unused since their labels are -100).
4. Loss (HF `ForCausalLMLoss`, `num_items_in_batch=None`): the logits at position t predict labels[t+1];
   loss = sum over (b, t < L-1) with labels[b, t+1] != -100 of cross_entropy(logits[b, t], labels[b, t+1])
   divided by the number of such terms (21 = 12 + 9: a mean over all supervised tokens of the batch, not a
   mean of per-sequence means). Logits are float32.
5. Optimiser: torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
   weight_decay=0.01), over ALL parameters (vision tower, merger, language model, embeddings; lm_head is
   tied to the embeddings: one parameter, whose gradient sums both uses), no parameter groups.
   Per parameter p with gradient g at step k (k = 1, 2, ...):
       p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
       p -= lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)
   Schedule: transformers.get_cosine_schedule_with_warmup(num_warmup_steps=2, num_training_steps=5):
   lr_k = 1e-3 * (k/2 for k < 2, else 0.5 (1 + cos(pi (k - 2) / 3))), k = 0..4 -> 0, 5e-4, 1e-3, 7.5e-4,
   2.5e-4. Step 0 has lr 0: the weights do not move but Adam's moments and step count do.
6. Each step: zero_grad; forward with labels -> loss; loss.backward();
   total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0) (2-norm over all gradients;
   if total > 1, every gradient is scaled by 1 / (total + 1e-6)); optimizer.step(); scheduler.step().

Output `sft.safetensors`:
    input_ids [2, L] i64, attention_mask [2, L] i64, labels [2, L] i64, mm_token_type_ids [2, L] i64,
    image_grid_thw [2, 3] i64, position_ids [3, 2, L] i64,
    losses [5] f32 (loss of each step, before its update), grad_norms [5] f32 (clip_grad_norm_'s return,
    the norm before clipping), lrs [5] f32 (lr of each step),
    final.<name> f32: every parameter after the 5 steps, under its `model.named_parameters()` name
    (= `state_dict()` names without the tied alias `lm_head.weight`, which equals
    `final.model.language_model.embed_tokens.weight`). These are the state_dict names
    (model.language_model.*, model.visual.*), NOT the legacy names save_pretrained writes into
    model.safetensors (model.layers.*, visual.*); see qwen_model_fixture.py.

Versions: as qwen_model_fixture.py (torch 2.13.0, transformers 5.23.0, safetensors 0.8.0, numpy 2.4.6).

Usage:
    python scripts/reference/qwen_sft_fixture.py --out trainer/tests/fixtures/qwen25vl
"""
import argparse
import json
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen_model_fixture import EOS, IMAGE_PAD, PAD, load_model, text_ids, versions  # noqa: E402

torch.set_num_threads(1)

ANSWERS = [
    text_ids(300, 11) + [EOS],
    text_ids(400, 8) + [EOS],
]
STEPS = 5
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
WARMUP = 2
MAX_GRAD_NORM = 1.0


def build_batch(io):
    prompt = io["input_ids"][0].tolist()
    rows = [prompt + a for a in ANSWERS]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    for b, (r, a) in enumerate(zip(rows, ANSWERS)):
        input_ids[b, : len(r)] = torch.tensor(r)
        attention_mask[b, : len(r)] = 1
        labels[b, len(prompt): len(r)] = torch.tensor(a)
    n = len(rows)
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        mm_token_type_ids=(input_ids == IMAGE_PAD).long(),
        pixel_values=torch.cat([io["pixel_values"]] * n, dim=0),
        image_grid_thw=io["image_grid_thw"].repeat(n, 1),
    )


def manual_loss(logits, labels):
    """The documented loss, written out, to cross-check the model's."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != -100
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
    return ce / keep.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="fixture directory (trainer/tests/fixtures/qwen25vl)")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    case_dir = os.path.join(args.out, "tiny_a")
    io = load_file(os.path.join(case_dir, "io.safetensors"))
    model = load_model(case_dir)
    model.train()
    batch = build_batch(io)

    position_ids, rope_deltas = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"])

    # The model's own positions are these: same loss with them passed explicitly; the loss is the documented one.
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        out_pos = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"},
                        position_ids=position_ids, use_cache=False)
        assert float((out.logits - out_pos.logits).abs().max()) == 0.0
        diff_manual = abs(float(out.loss) - float(manual_loss(out.logits, batch["labels"])))
        assert diff_manual < 1e-6, diff_manual

    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)

    losses, grad_norms, lrs = [], [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        grad_norms.append(float(total))

    tensors = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "mm_token_type_ids": batch["mm_token_type_ids"],
        "image_grid_thw": batch["image_grid_thw"].contiguous(),
        "position_ids": position_ids.contiguous(),
        "losses": torch.tensor(losses, dtype=torch.float32),
        "grad_norms": torch.tensor(grad_norms, dtype=torch.float32),
        "lrs": torch.tensor(lrs, dtype=torch.float32),
    }
    for name, p in model.named_parameters():
        tensors[f"final.{name}"] = p.detach().float().contiguous().clone()
    save_file(tensors, os.path.join(case_dir, "sft.safetensors"))

    n_sup = int((batch["labels"][:, 1:] != -100).sum())
    meta = {
        "versions": versions(),
        "procedure": "see scripts/reference/qwen_sft_fixture.py docstring",
        "B": int(batch["input_ids"].shape[0]),
        "L": int(batch["input_ids"].shape[1]),
        "prompt_len": int(io["input_ids"].shape[1]),
        "answers": ANSWERS,
        "pad_token_id": PAD,
        "n_supervised_tokens": n_sup,
        "pixel_values": "cat([io.safetensors pixel_values] * 2) (not stored again)",
        "rope_deltas": rope_deltas.reshape(-1).tolist(),
        "optimizer": {"class": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "params": "model.parameters() (all, one group)"},
        "scheduler": {"fn": "transformers.get_cosine_schedule_with_warmup", "num_warmup_steps": WARMUP,
                      "num_training_steps": STEPS},
        "clip_grad_norm": MAX_GRAD_NORM,
        "losses": losses,
        "grad_norms": grad_norms,
        "lrs": lrs,
        "manual_vs_model_loss_abs_diff": diff_manual,
        "final_names": "model.named_parameters() names (state_dict names minus tied alias lm_head.weight)",
        "n_final_tensors": len(names),
    }
    with open(os.path.join(case_dir, "sft.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps({"losses": losses, "grad_norms": grad_norms, "lrs": lrs, "n_supervised": n_sup}))


if __name__ == "__main__":
    main()
