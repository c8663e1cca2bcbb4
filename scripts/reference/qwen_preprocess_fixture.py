#!/usr/bin/env python3
"""Golden fixtures for `runtime::preprocess`, from the real Hugging Face transformers code.

What it runs (nothing here re-implements the reference):
- `smart_resize` and `Qwen2VLImageProcessorPil` (the PIL backend: PIL bicubic on uint8, rescale 1/255,
  OpenAI CLIP mean/std, patchify) from `transformers.models.qwen2_vl`;
- `get_vision_position_ids`, `get_vision_window_index`, `get_vision_cu_seqlens` from
  `transformers.vision_utils` (what `Qwen2_5_VisionTransformerPretrainedModel.forward` calls), and
  `Qwen2_5_VLModel.get_rope_index` — these need torch; without it the index fixtures are skipped.

Test images are not stored: both sides generate them from `pattern()` below (integer hash, no RNG).

It installs nothing. Versions used for the committed fixtures:

    python3 -m venv /tmp/pp
    /tmp/pp/bin/pip install transformers==5.23.0 pillow==13.0.0 numpy==2.4.6 safetensors==0.8.0
    /tmp/pp/bin/pip install torch==2.15.0        # optional (index tensors); a large download

Usage:
    /tmp/pp/bin/python scripts/reference/qwen_preprocess_fixture.py --out runtime/tests/fixtures
    /tmp/pp/bin/python scripts/reference/qwen_preprocess_fixture.py --bench   # 1280x720, one thread
"""
import argparse
import json
import os
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    Qwen2VLImageProcessorPil,
    smart_resize,
)

try:
    import torch

    torch.set_num_threads(1)
    from transformers import vision_utils
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    HAVE_TORCH = True
except Exception:  # noqa: BLE001 - torch is optional
    HAVE_TORCH = False

FACTOR = 28
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
# Qwen2.5-VL vision config.
SPATIAL_MERGE_SIZE = 2
WINDOW_SIZE = 112
PATCH_SIZE = 14
# Rows of pixel_values stored in full for large cases (the rest is checked by per-row sums).
SAMPLE_ROWS = 8
# Cases whose pixel_values are stored in full have at most this many rows (~110 kB each).
FULL_ROWS_MAX = 24
# The PIL-resized uint8 image is stored when it is at most this large (else its row sums).
RESIZED_BYTES_MAX = 120_000
# Per-patch index tensors (vision positions, rope ids) are stored for grids up to this many patches.
INDEX_PATCHES_MAX = 2500


def pattern(height, width):
    """The test image, uint8 [H, W, 3]: a wrapped gradient plus 6 bits of hashed noise.

    v = (3x + 5y + 85c + (hash(x, y, c) & 63)) & 255, hash = a 32-bit multiply-xorshift."""
    y, x, c = np.meshgrid(
        np.arange(height, dtype=np.uint64),
        np.arange(width, dtype=np.uint64),
        np.arange(3, dtype=np.uint64),
        indexing="ij",
    )
    mask = np.uint64(0xFFFFFFFF)
    h = (x * np.uint64(2654435761) + y * np.uint64(40503) + c * np.uint64(97)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(2246822519)) & mask
    h ^= h >> np.uint64(13)
    v = (x * np.uint64(3) + y * np.uint64(5) + c * np.uint64(85) + (h & np.uint64(63))) & np.uint64(255)
    return v.astype(np.uint8)


# (name, height, width, min_pixels, max_pixels)
CASES = [
    ("tiny", 20, 30, MIN_PIXELS, MAX_PIXELS),  # below min_pixels: upscaled to 56x84
    ("small", 56, 84, MIN_PIXELS, MAX_PIXELS),  # already a multiple of 28: identity resize
    ("medium", 100, 170, MIN_PIXELS, MAX_PIXELS),  # 112x168: windows of 4x4 and 4x2 merged tokens
    ("down", 300, 500, MIN_PIXELS, 28 * 28 * 64),  # over max_pixels: downscaled (wider bicubic support)
    ("tall", 900, 200, MIN_PIXELS, 28 * 28 * 64),  # 448x84: Pillow runs the vertical pass first
    ("strip", 40, 900, MIN_PIXELS, MAX_PIXELS),  # 28x896: one merged row, border windows of 1 row
    ("kitti", 375, 1242, MIN_PIXELS, MAX_PIXELS),  # KITTI frame: 364x1232
    ("hd", 720, 1280, MIN_PIXELS, MAX_PIXELS),  # 1280x720 camera: 728x1288
]

# Text tokens around the image for the rope-index fixture.
TEXT_BEFORE = 5
TEXT_AFTER = 7


def smart_resize_table():
    sizes = set()
    for h in [1, 2, 9, 10, 13, 14, 15, 27, 28, 29, 41, 42, 43, 55, 56, 57, 69, 70, 71, 97, 98, 99]:
        for w in [1, 3, 10, 28, 42, 70, 84, 98, 126, 200, 201, 1000]:
            sizes.add((h, w))
    sizes |= {(375, 1242), (720, 1280), (1080, 1920), (2160, 3840), (480, 640), (1242, 375), (3000, 4000),
              (10, 2000), (10, 2001), (1, 200), (1, 201), (5, 1000), (7, 1401), (4096, 4096), (13, 13),
              (1500, 100), (28, 5600), (28, 5601), (100000, 700), (33, 6600), (1, 1)}
    bounds = [(MIN_PIXELS, MAX_PIXELS), (MIN_PIXELS, 28 * 28 * 64), (256 * 28 * 28, 1024 * 28 * 28),
              (4 * 28 * 28, 16384 * 28 * 28)]
    rows = []
    for (h, w) in sorted(sizes):
        for (lo, hi) in bounds:
            try:
                out = list(smart_resize(h, w, factor=FACTOR, min_pixels=lo, max_pixels=hi))
                err = None
            except ValueError as e:
                out, err = None, str(e)
            rows.append({"height": h, "width": w, "min_pixels": lo, "max_pixels": hi, "out": out, "error": err})
    return rows


class _RopeSelf:
    """The attributes `Qwen2_5_VLModel.get_rope_index` reads from `self` (no weights needed)."""

    class config:  # noqa: N801
        class vision_config:  # noqa: N801
            spatial_merge_size = SPATIAL_MERGE_SIZE
            tokens_per_second = 2

    get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids if HAVE_TORCH else None


def index_tensors(grid_thw, prefix):
    grid = torch.tensor([grid_thw], dtype=torch.long)
    out = {}
    small = grid_thw[0] * grid_thw[1] * grid_thw[2] <= INDEX_PATCHES_MAX
    pos = vision_utils.get_vision_position_ids(grid, SPATIAL_MERGE_SIZE)
    if small:
        out[f"{prefix}.vision_position_ids"] = pos.numpy().astype(np.int64)
    win, cu_win = vision_utils.get_vision_window_index(grid, SPATIAL_MERGE_SIZE, WINDOW_SIZE, PATCH_SIZE)
    out[f"{prefix}.window_index"] = win.numpy().astype(np.int64)
    out[f"{prefix}.cu_window_seqlens"] = cu_win.numpy().astype(np.int32)
    out[f"{prefix}.cu_seqlens"] = vision_utils.get_vision_cu_seqlens(grid).numpy().astype(np.int32)
    n_img = grid_thw[0] * grid_thw[1] * grid_thw[2] // SPATIAL_MERGE_SIZE**2
    types = [0] * TEXT_BEFORE + [1] * n_img + [0] * TEXT_AFTER
    ids = torch.zeros(1, len(types), dtype=torch.long)
    tt = torch.tensor([types], dtype=torch.int)
    position_ids, deltas = Qwen2_5_VLModel.get_rope_index(_RopeSelf(), ids, tt, image_grid_thw=grid)
    if small:
        out[f"{prefix}.rope_position_ids"] = position_ids[:, 0, :].numpy().astype(np.int64)
    out[f"{prefix}.rope_delta"] = deltas.reshape(-1).numpy().astype(np.int64)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="fixture directory (runtime/tests/fixtures)")
    ap.add_argument("--bench", action="store_true", help="time the processor on a 1280x720 frame")
    args = ap.parse_args()

    if args.bench:
        bench()
        return
    if not args.out:
        ap.error("--out or --bench")

    tensors = {}
    meta = {
        "versions": {"transformers": transformers.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__, "torch": torch.__version__ if HAVE_TORCH else None},
        "text_before": TEXT_BEFORE,
        "text_after": TEXT_AFTER,
        "cases": [],
        "smart_resize": smart_resize_table(),
    }
    for name, h, w, lo, hi in CASES:
        proc = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)
        img = pattern(h, w)
        res = proc.preprocess(Image.fromarray(img), return_tensors="np")
        pv = np.ascontiguousarray(res["pixel_values"], dtype=np.float32)
        grid = [int(v) for v in res["image_grid_thw"][0]]
        rh, rw = smart_resize(h, w, factor=FACTOR, min_pixels=lo, max_pixels=hi)
        resized = np.asarray(Image.fromarray(img).resize((rw, rh), resample=Image.BICUBIC))
        case = {"name": name, "height": h, "width": w, "min_pixels": lo, "max_pixels": hi,
                "grid_thw": grid, "rows": pv.shape[0], "resized": [rh, rw], "full": pv.shape[0] <= FULL_ROWS_MAX}
        if case["full"]:
            tensors[f"{name}.pixel_values"] = pv
        else:
            sample = np.unique(np.linspace(0, pv.shape[0] - 1, SAMPLE_ROWS).round().astype(np.int64))
            tensors[f"{name}.sample_rows"] = sample
            tensors[f"{name}.pixel_values_sample"] = np.ascontiguousarray(pv[sample])
            tensors[f"{name}.row_sums"] = pv.astype(np.float64).sum(axis=1)
        case["resized_full"] = resized.nbytes <= RESIZED_BYTES_MAX
        if case["resized_full"]:
            tensors[f"{name}.resized"] = np.ascontiguousarray(resized)
        # The resized uint8 image, summarised: per-row sums (exact in int64).
        tensors[f"{name}.resized_row_sums"] = resized.astype(np.int64).sum(axis=(1, 2))
        if HAVE_TORCH:
            tensors.update(index_tensors(grid, name))
        meta["cases"].append(case)

    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "qwen_preprocess.safetensors"),
              metadata={"generator": "scripts/reference/qwen_preprocess_fixture.py"})
    with open(os.path.join(args.out, "qwen_preprocess.json"), "w") as f:
        json.dump(meta, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(tensors)} tensors, {len(meta['smart_resize'])} smart_resize rows, torch={HAVE_TORCH}",
          file=sys.stderr)


def bench():
    proc = Qwen2VLImageProcessorPil()
    img = Image.fromarray(pattern(720, 1280))
    for _ in range(3):
        proc.preprocess(img, return_tensors="np")
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        proc.preprocess(img, return_tensors="np")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(20):
        img.resize((1288, 728), resample=Image.BICUBIC)
    resize_ms = (time.perf_counter() - t0) / 20 * 1e3
    print(f"Qwen2VLImageProcessorPil 1280x720 -> 1288x728, one thread: median {np.median(times) * 1e3:.1f} ms, "
          f"min {min(times) * 1e3:.1f} ms (PIL bicubic resize alone: {resize_ms:.1f} ms)")


if __name__ == "__main__":
    main()
