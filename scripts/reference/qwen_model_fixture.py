#!/usr/bin/env python3
"""Golden fixtures for the trainer's Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`), from the real
Hugging Face transformers code.

Two tiny random-weight models are built from configs written below, saved with `save_pretrained`, and run
on fixed prompts with images. Nothing here re-implements the reference: the model, the image processor,
`get_rope_index`, `generate` are transformers' own.

For each config `<name>` in CONFIGS it writes `<out>/<name>/`:

- `config.json`, `model.safetensors`, `generation_config.json` from `model.save_pretrained(dir)`.
  transformers 5.x always writes safetensors, and by default (`save_original_format=True`) it writes the
  *legacy Hub tensor names*, the ones of the published Qwen2.5-VL checkpoints:
      model.embed_tokens.weight, model.layers.{i}.*, model.norm.weight, visual.*, lm_head.weight
  whereas `model.state_dict()` names the same tensors
      model.language_model.embed_tokens.weight, model.language_model.layers.{i}.*,
      model.language_model.norm.weight, model.visual.*, lm_head.weight
  With `tie_word_embeddings: true` the file holds no `lm_head.weight` (it is the embedding matrix).
  `config.json` is the v5 nested schema: `text_config` / `vision_config`, RoPE under
  `text_config.rope_parameters = {rope_type: "default", rope_theta, mrope_section}` (v4 / Hub configs are
  flat and write `rope_scaling: {type: "mrope", mrope_section}` + `rope_theta`; v5 reads both).
- `io.safetensors`:
      pixel_values       f32 [N, 1176]   Qwen2VLImageProcessorPil output, all images concatenated
      image_grid_thw     i64 [n_images, 3]
      input_ids          i64 [1, S]
      mm_token_type_ids  i64 [1, S]      1 at image-pad tokens (id 502), else 0
      position_ids       i64 [3, 1, S]   model.model.get_rope_index(...) (t, h, w rows)
      rope_deltas        i64 [1, 1]
      vision_embeds      f32 [N/4, D]    model.model.get_image_features(...).pooler_output, concatenated
      logits             f32 [1, S, V]   prefill logits of the whole prompt
      greedy_tokens      i64 [8]         8 new tokens of greedy `generate`
      greedy_logits      f32 [8, V]      raw logits (output_logits) of each of the 8 decode steps;
                                         row 0 = logits[0, S-1]; argmax(row i) == greedy_tokens[i]
- `io.json`: the same metadata in words (sizes, ids, S, checks, versions).

Weights: the HF init (normal(0, 0.02), norms 1, biases 0) is too flat to test anything (all logits ~0,
norm weights and biases invisible), so after construction every parameter is overwritten, in
sorted-name order, from one seeded `torch.Generator` (see `randomize_`): norm weights 1 + 0.1 n, biases
0.1 n, embeddings embed_std n, other weights n / sqrt(fan_in) (lm_head 2 n / sqrt(fan_in)). Seed and
embed_std are chosen per config so that greedy decoding does not just repeat one token (random tied
models love to) and the top-1/top-2 margins stay >= 0.01. The saved safetensors are the ground truth;
the generator only has to be deterministic here.

Inputs: test images come from `pattern()` of `qwen_preprocess_fixture.py` (integer hash, no RNG), at sizes
that are multiples of 28 so the processor keeps them (min_pixels 56*56, max_pixels 1e6). Prompt text ids
are arbitrary ids < 500 from a fixed formula.

transformers 5.x quirk: `mm_token_type_ids` must be passed to forward/generate. Without it the model
silently falls back to 1-D positions (arange) for the image tokens; this script checks that the logits
with it match the logits with explicit `get_rope_index` positions, and differ without it.

Checks run (all asserted, results in io.json): grid_thw as designed; position_ids rows differ over the image
(true 3-D mrope); save -> from_pretrained round trip reproduces the logits; greedy tokens are the argmax
of the raw step logits (min_new_tokens=8 masks eos; asserted it never mattered); the KV-cache decode logits
equal a cache-free full forward over prompt + generated prefix; sdpa vs eager max abs difference.

Versions used for the committed fixtures (CPU, float32, one thread):

    python 3.11.7, torch==2.13.0, transformers==5.23.0, safetensors==0.8.0, numpy==2.4.6,
    pillow==13.0.0, accelerate==1.15.0 (torchvision not installed: the PIL image processor is used)

Usage:
    python scripts/reference/qwen_model_fixture.py --out trainer/tests/fixtures/qwen25vl
"""
import argparse
import json
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qwen_preprocess_fixture import pattern  # noqa: E402

torch.set_num_threads(1)

# Special token ids (inside the 512-token vocabulary).
VISION_START = 500
VISION_END = 501
IMAGE_PAD = 502
VIDEO_PAD = 503
EOS = 504  # also <|im_end|>
PAD = 505
VOCAB = 512

MIN_PIXELS = 56 * 56
MAX_PIXELS = 1_000_000
GREEDY_NEW = 8


def make_config(text, vision, tie):
    """A Qwen2_5_VLConfig with the shared special ids; `text` / `vision` override the sub-configs."""
    text_config = dict(
        vocab_size=VOCAB,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=EOS,
        pad_token_id=PAD,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    text_config.update(text)
    vision_config = dict(patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                         hidden_act="silu", window_size=112)
    vision_config.update(vision)
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_PAD,
        video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )


CONFIGS = {
    "tiny_a": dict(
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128),
        vision=dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, fullatt_block_indexes=[1, 3],
                    out_hidden_size=64),
        tie=True,
        weight_seed=4,
        embed_std=0.15,
        # (height, width) in pixels -> grid 1x8x12, merged 4x6, windows 4x4 + 4x2
        images=[(112, 168)],
        expect_grids=[[1, 8, 12]],
    ),
    "tiny_b": dict(
        text=dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=160),
        vision=dict(depth=3, hidden_size=48, num_heads=3, intermediate_size=96, fullatt_block_indexes=[2],
                    out_hidden_size=96),
        tie=False,
        weight_seed=5678,
        embed_std=0.5,
        # grid 1x4x6 (merged 2x3, one window); grid 1x12x14 (merged 6x7, windows 4x4 4x3 2x4 2x3)
        images=[(56, 84), (168, 196)],
        expect_grids=[[1, 4, 6], [1, 12, 14]],
    ),
}


def text_ids(start, n):
    """n arbitrary text token ids in [10, 490), a fixed formula."""
    return [10 + (37 * (start + i) + 11) % 480 for i in range(n)]


def build_prompt(grids, merge=2):
    """Text, then for each image `<vision_start> <image_pad>*(t*h*w/merge^2) <vision_end>` + text."""
    ids = text_ids(0, 12)
    for k, (t, h, w) in enumerate(grids):
        ids += [VISION_START] + [IMAGE_PAD] * (t * h * w // merge**2) + [VISION_END]
        ids += text_ids(100 * (k + 1), 9 if k + 1 < len(grids) else 10)
    return ids


def process_images(sizes):
    """The real Qwen2-VL image processor (PIL backend) on pattern images; returns (pixel_values, grid_thw)."""
    proc = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    pvs, grids = [], []
    for h, w in sizes:
        res = proc.preprocess(Image.fromarray(pattern(h, w)), return_tensors="np")
        pvs.append(np.asarray(res["pixel_values"], dtype=np.float32))
        grids.append(np.asarray(res["image_grid_thw"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(pvs)), torch.from_numpy(np.concatenate(grids))


def randomize_(model, seed, embed_std):
    """Overwrite every parameter deterministically (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            n = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("bias"):
                v = 0.1 * n
            elif p.ndim == 1:  # RMSNorm weights
                v = 1.0 + 0.1 * n
            elif "embed_tokens" in name:
                v = embed_std * n
            else:
                fan_in = int(np.prod(p.shape[1:]))
                v = (2.0 if name.startswith("lm_head") else 1.0) * n / fan_in**0.5
            p.copy_(v)


def build_model(name, attn="eager"):
    spec = CONFIGS[name]
    cfg = make_config(spec["text"], spec["vision"], spec["tie"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    randomize_(model, spec["weight_seed"], spec["embed_std"])
    return model.eval()


def load_model(path, attn="eager"):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


def model_inputs(spec):
    pixel_values, grid = process_images(spec["images"])
    assert grid.tolist() == spec["expect_grids"], grid.tolist()
    ids = build_prompt(grid.tolist())
    input_ids = torch.tensor([ids], dtype=torch.long)
    mm = (input_ids == IMAGE_PAD).long()
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixel_values,
                image_grid_thw=grid, mm_token_type_ids=mm)


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def run_case(name, out_dir):
    spec = CONFIGS[name]
    model = build_model(name)
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    model.save_pretrained(case_dir)

    inp = model_inputs(spec)
    input_ids, grid = inp["input_ids"], inp["image_grid_thw"]
    S = input_ids.shape[1]

    position_ids, rope_deltas = model.model.get_rope_index(
        input_ids, mm_token_type_ids=inp["mm_token_type_ids"], image_grid_thw=grid,
        attention_mask=inp["attention_mask"])
    img = (input_ids[0] == IMAGE_PAD)
    # Really 3-D: over the image tokens the h and w rows differ from each other and from t.
    assert not torch.equal(position_ids[1, 0, img], position_ids[2, 0, img])
    assert not torch.equal(position_ids[0, 0, img], position_ids[1, 0, img])

    vision_embeds = torch.cat(model.model.get_image_features(inp["pixel_values"], grid).pooler_output, dim=0)

    model.model.rope_deltas = None
    logits = model(**inp, use_cache=False).logits
    # Same logits with the explicit get_rope_index positions ...
    logits_pos = model(**{k: v for k, v in inp.items() if k != "mm_token_type_ids"},
                       position_ids=position_ids, use_cache=False).logits
    diff_explicit_positions = max_diff(logits, logits_pos)
    assert diff_explicit_positions == 0.0, diff_explicit_positions
    # ... and different ones without mm_token_type_ids (the silent 1-D fallback of transformers 5.x).
    model.model.rope_deltas = None
    logits_1d = model(**{k: v for k, v in inp.items() if k != "mm_token_type_ids"}, use_cache=False).logits
    diff_without_mm_token_type_ids = max_diff(logits, logits_1d)
    assert diff_without_mm_token_type_ids > 1e-3, diff_without_mm_token_type_ids

    # Greedy generation: exactly 8 tokens; min_new_tokens masks eos in the processed scores, the raw
    # logits are what we store, and we assert the masking never changed the choice.
    model.model.rope_deltas = None
    gen = model.generate(**inp, do_sample=False, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW,
                         eos_token_id=EOS, pad_token_id=PAD, output_logits=True, output_scores=True,
                         return_dict_in_generate=True)
    greedy_tokens = gen.sequences[0, S:]
    greedy_logits = torch.cat(gen.logits, dim=0)
    assert greedy_tokens.shape[0] == GREEDY_NEW
    assert torch.equal(greedy_logits.argmax(-1), greedy_tokens), "eos masking changed a greedy choice"
    assert max_diff(greedy_logits[0], logits[0, -1]) < 1e-5
    top2 = greedy_logits.topk(2, dim=-1).values
    greedy_min_margin = float((top2[:, 0] - top2[:, 1]).min())
    assert greedy_min_margin >= 0.01, greedy_min_margin

    # Decode steps with the KV cache == cache-free forward over prompt + generated prefix.
    seq = gen.sequences[:, : S + GREEDY_NEW - 1]
    full_inp = dict(inp, input_ids=seq, attention_mask=torch.ones_like(seq),
                    mm_token_type_ids=(seq == IMAGE_PAD).long())
    model.model.rope_deltas = None
    full_logits = model(**full_inp, use_cache=False).logits[0, S - 1:]
    diff_cache_vs_full = max_diff(full_logits, greedy_logits)
    assert diff_cache_vs_full < 1e-4, diff_cache_vs_full

    # Round trip through the saved files.
    reloaded = load_model(case_dir)
    diff_reload = max_diff(reloaded(**inp, use_cache=False).logits, logits)
    assert diff_reload == 0.0, diff_reload
    # sdpa vs eager (reported, loosely asserted).
    sdpa = load_model(case_dir, attn="sdpa")
    diff_sdpa_logits = max_diff(sdpa(**inp, use_cache=False).logits, logits)
    diff_sdpa_vision = max_diff(
        torch.cat(sdpa.model.get_image_features(inp["pixel_values"], grid).pooler_output, dim=0), vision_embeds)
    sdpa.model.rope_deltas = None
    sdpa_gen = sdpa.generate(**inp, do_sample=False, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW,
                             eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(sdpa_gen[0, S:], greedy_tokens)
    assert diff_sdpa_logits < 1e-4 and diff_sdpa_vision < 1e-4

    tensors = {
        "pixel_values": inp["pixel_values"].contiguous(),
        "image_grid_thw": grid.contiguous(),
        "input_ids": input_ids.contiguous(),
        "mm_token_type_ids": inp["mm_token_type_ids"].contiguous(),
        "position_ids": position_ids.contiguous(),
        "rope_deltas": rope_deltas.reshape(1, 1).long().contiguous(),
        "vision_embeds": vision_embeds.float().contiguous(),
        "logits": logits.float().contiguous(),
        "greedy_tokens": greedy_tokens.long().contiguous(),
        "greedy_logits": greedy_logits.float().contiguous(),
    }
    save_file(tensors, os.path.join(case_dir, "io.safetensors"))

    n_params = sum(p.numel() for p in model.parameters())
    meta = {
        "name": name,
        "versions": versions(),
        "dtype": "float32",
        "attn_implementation": "eager",
        "weight_init": {"seed": spec["weight_seed"], "embed_std": spec["embed_std"],
                        "scheme": "qwen_model_fixture.randomize_"},
        "n_parameters": n_params,
        "tie_word_embeddings": spec["tie"],
        "images_hw": [list(s) for s in spec["images"]],
        "image_grid_thw": grid.tolist(),
        "image_processor": {"class": "Qwen2VLImageProcessorPil", "min_pixels": MIN_PIXELS,
                            "max_pixels": MAX_PIXELS, "image": "qwen_preprocess_fixture.pattern(height, width)"},
        "n_patches": int(inp["pixel_values"].shape[0]),
        "n_image_tokens": int(img.sum()),
        "S": S,
        "vocab_size": VOCAB,
        "token_ids": {"vision_start": VISION_START, "vision_end": VISION_END, "image_pad": IMAGE_PAD,
                      "video_pad": VIDEO_PAD, "eos": EOS, "pad": PAD},
        "input_ids": input_ids[0].tolist(),
        "rope_deltas": int(rope_deltas.reshape(-1)[0]),
        "position_ids_max": int(position_ids.max()),
        "logits_abs_max": float(logits.abs().max()),
        "vision_embeds_abs_max": float(vision_embeds.abs().max()),
        "greedy": {"generate_kwargs": {"do_sample": False, "max_new_tokens": GREEDY_NEW,
                                       "min_new_tokens": GREEDY_NEW, "eos_token_id": EOS, "pad_token_id": PAD,
                                       "output_logits": True},
                   "tokens": greedy_tokens.tolist(),
                   "min_top1_top2_margin": greedy_min_margin},
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in tensors.items()},
        "checks": {
            "max_abs_diff_explicit_position_ids_vs_mm_token_type_ids": diff_explicit_positions,
            "max_abs_diff_logits_without_mm_token_type_ids": diff_without_mm_token_type_ids,
            "max_abs_diff_kv_cache_decode_vs_full_forward": diff_cache_vs_full,
            "max_abs_diff_reload_from_pretrained": diff_reload,
            "max_abs_diff_sdpa_vs_eager_logits": diff_sdpa_logits,
            "max_abs_diff_sdpa_vs_eager_vision_embeds": diff_sdpa_vision,
            "sdpa_greedy_tokens_equal": True,
        },
        "weight_names": {
            "model.safetensors": "legacy Hub names written by save_pretrained (save_original_format=True): "
                                 "model.embed_tokens / model.layers.* / model.norm / visual.* / lm_head",
            "state_dict": "model.language_model.* / model.visual.* / lm_head.weight",
        },
    }
    with open(os.path.join(case_dir, "io.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps({"case": name, "S": S, "n_parameters": n_params, "greedy_tokens": greedy_tokens.tolist(),
                      **meta["checks"], "greedy_min_margin": greedy_min_margin}))


def versions():
    import PIL
    import safetensors

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="fixture directory (trainer/tests/fixtures/qwen25vl)")
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), help="config names to write")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in args.only:
        run_case(name, args.out)


if __name__ == "__main__":
    main()
