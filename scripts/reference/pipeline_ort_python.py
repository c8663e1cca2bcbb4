#!/usr/bin/env python3
"""Reference pipeline: what `monovlm-edge` does for one frame and one query, in Python.

Loads a model package (docs/model-package.md) with onnxruntime, and for each frame:

1. preprocess   smart_resize to multiples of 28 within min/max pixels, PIL bicubic, rescale 1/255,
                CLIP mean/std, patch rows [N, 3*2*14*14] in 2x2-merge-block order, and the vision index
                inputs (runtime/src/preprocess.rs: vision_position_ids, window_index_sized, cu_seqlens);
2. tokenize     the chat prompt of runtime/src/protocol.rs `chat_prompt` (intrinsics scaled to the
                resized image), tokenised around the image block as `Grounder::prompt_tokens` does
                (text before and after encoded without special-token additions, the
                <|vision_start|> <|image_pad|>*M <|vision_end|> block inserted by id);
3. vision       vision_encoder -> image_features [M, D];
4. prefill      embed_tokens, image rows substituted in order, 3-row rotary positions
                (preprocess.rs `rope_index_tokens`), decoder_model_merged with an empty cache;
5. decode       greedy (argmax, never <|image_pad|> / <|video_pad|>, first maximum on ties) one token
                at a time through the KV cache until <|im_end|> or --max-new-tokens;
6. postprocess  token ids -> text (special tokens skipped).

Each stage is timed per frame; the same frame is run --frames times after --warmup untimed runs and
the medians are printed. Output: JSON lines, one per timed frame with --per-frame, then one with the
answer text and one with the per-stage medians (milliseconds).

This is a benchmark and parity baseline for the Rust runtime (same package, same image, same greedy
tokens), not part of the product. It needs onnxruntime, numpy, pillow and tokenizers.

Example:
    python scripts/reference/pipeline_ort_python.py --model /tmp/bpk/b30 \
        --image frame.png --intrinsics calib.txt --query "the red car" --frames 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

# Architecture constants of Qwen2.5-VL (runtime/src/preprocess.rs).
PATCH = 14
TEMPORAL = 2
MERGE = 2
FACTOR = PATCH * MERGE
MAX_ASPECT_RATIO = 200.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"

ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


# ----------------------------------------------------------------------------------------------
# Package


class Package:
    """The graphs, tokenizer and settings of one model package directory."""

    def __init__(self, root: Path, threads: int):
        self.root = root
        meta = json.loads((root / "monovlm.json").read_text())
        graphs = meta["package"]["graphs"]
        config = json.loads((root / "config.json").read_text())
        text_cfg = config.get("text_config", config)
        pre_path = root / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text()) if pre_path.exists() else {}

        self.min_pixels = int(pre.get("min_pixels", meta.get("min_pixels", 56 * 56)))
        self.max_pixels = int(pre.get("max_pixels", meta.get("max_pixels", 28 * 28 * 1280)))
        self.mean = tuple(pre.get("image_mean", CLIP_MEAN))
        self.std = tuple(pre.get("image_std", CLIP_STD))
        self.window_size = int(config["vision_config"].get("window_size", 112))
        self.image_token_id = int(config["image_token_id"])
        self.video_token_id = int(config["video_token_id"])
        self.num_layers = int(text_cfg["num_hidden_layers"])

        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.im_end = self._token_id(IM_END)
        self.vision_start = self._token_id(VISION_START)
        self.vision_end = self._token_id(VISION_END)
        self.image_pad = self._token_id(IMAGE_PAD)
        if self.image_pad != self.image_token_id:
            raise ValueError(f"{IMAGE_PAD} is {self.image_pad} in the tokenizer, "
                             f"{self.image_token_id} in config.json")

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(root / graphs["vision_encoder"]), opts, providers=providers)
        self.embed = ort.InferenceSession(str(root / graphs["embed_tokens"]), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(root / graphs["decoder"]), opts, providers=providers)

        # Cache geometry and float type from the decoder's interface: past_key_values.0.key [B, kv, P, hd].
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        past = inputs["past_key_values.0.key"]
        self.kv_heads, self.head_dim = int(past.shape[1]), int(past.shape[3])
        self.float_type = ORT_FLOAT[inputs["inputs_embeds"].type]

    def _token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise ValueError(f"the tokenizer has no {token}")
        return i


# ----------------------------------------------------------------------------------------------
# Intrinsics


def read_intrinsics(path: Path) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from a KITTI object calib (P2) or an OpenCV YAML (camera_matrix / K data)."""
    text = path.read_text()
    m = re.search(r"^P2:\s*(.+)$", text, re.M)
    if m:
        p = [float(v) for v in m.group(1).split()]
        return p[0], p[5], p[2], p[6]
    m = re.search(r"(?:camera_matrix|K)\s*:.*?data\s*:\s*\[([^\]]+)\]", text, re.S)
    if m:
        k = [float(v) for v in m.group(1).replace("\n", " ").split(",")]
        return k[0], k[4], k[2], k[5]
    raise ValueError(f"{path}: no KITTI P2 line and no OpenCV camera_matrix")


# ----------------------------------------------------------------------------------------------
# Preprocessing (runtime/src/preprocess.rs)


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) of the Qwen2-VL resize: multiples of 28 within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}")
    h_bar = round(height / FACTOR) * FACTOR  # Python's round: half to even, as the Rust code
    w_bar = round(width / FACTOR) * FACTOR
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w_bar = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


def patch_rows(resized: np.ndarray, mean, std) -> np.ndarray:
    """[grid_h*grid_w, 3*2*14*14] f32 patch rows of an 8-bit RGB image whose sides are multiples of 28.

    Rows by 2x2 merge block (block row-major, then the block's 4 patches row-major); inside a row:
    channel, temporal copy, patch row, patch column. Normalisation in numpy's arithmetic:
    float32(v * (1/255)) then (x - float32(mean)) / float32(std) in f32.
    """
    h, w, _ = resized.shape
    gh, gw = h // PATCH, w // PATCH
    x = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = x.transpose(2, 0, 1)  # [C, H, W]
    x = np.broadcast_to(x[None], (TEMPORAL, 3, h, w))  # a still image repeated over time
    # [T, C, bh, mh, ph, bw, mw, pw] -> [bh, bw, mh, mw, C, T, ph, pw]
    x = x.reshape(TEMPORAL, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.transpose(2, 5, 3, 6, 1, 0, 4, 7)
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * TEMPORAL * PATCH * PATCH), dtype=np.float32)


def vision_position_ids(grid: tuple[int, int, int]) -> np.ndarray:
    """[t*h*w, 2] i64 (row, column) of each patch in patch-row order."""
    t, h, w = grid
    bh, bw, mh, mw = np.meshgrid(np.arange(h // MERGE), np.arange(w // MERGE), np.arange(MERGE),
                                 np.arange(MERGE), indexing="ij")
    rows = (bh * MERGE + mh).reshape(-1)
    cols = (bw * MERGE + mw).reshape(-1)
    ids = np.stack([rows, cols], axis=1).astype(np.int64)
    return np.tile(ids, (t, 1))


def window_index(grid: tuple[int, int, int], window_size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(window_index [M] i64, cu_window_seqlens [W+1] i32) as `window_index_sized` computes them."""
    t, h, w = grid
    tokens = window_size_px // FACTOR
    llm_h, llm_w = h // MERGE, w // MERGE
    index, cu, patches = [], [0], 0
    for ti in range(t):
        for r0 in range(0, llm_h, tokens):
            for c0 in range(0, llm_w, tokens):
                r1, c1 = min(r0 + tokens, llm_h), min(c0 + tokens, llm_w)
                for r in range(r0, r1):
                    index.extend((ti * llm_h + r) * llm_w + c for c in range(c0, c1))
                patches += (r1 - r0) * (c1 - c0) * MERGE * MERGE
                cu.append(patches)
    return np.asarray(index, np.int64), np.asarray(cu, np.int32)


def cu_seqlens(grid: tuple[int, int, int]) -> np.ndarray:
    t, h, w = grid
    return np.arange(t + 1, dtype=np.int32) * (h * w)


def rope_index_tokens(ids: list[int], image_token_id: int, grid: tuple[int, int, int]):
    """([3, S] i64 positions, rope_delta) of a prompt holding one image block (`rope_index_tokens`)."""
    t, h, w = grid
    llm_h, llm_w = h // MERGE, w // MERGE
    pos = np.zeros((3, len(ids)), np.int64)
    nxt, i, images = 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            pos[:, i] = nxt
            nxt += 1
            i += 1
            continue
        images += 1
        run = t * llm_h * llm_w
        if images > 1 or ids[i:i + run] != [image_token_id] * run:
            raise ValueError("the prompt's image-token run does not match the grid")
        tt, rr, cc = np.meshgrid(np.arange(t), np.arange(llm_h), np.arange(llm_w), indexing="ij")
        pos[0, i:i + run] = nxt + tt.reshape(-1)
        pos[1, i:i + run] = nxt + rr.reshape(-1)
        pos[2, i:i + run] = nxt + cc.reshape(-1)
        nxt += max(t, llm_h, llm_w)
        i += run
    return pos, int(pos.max()) + 1 - len(ids)


def preprocess(pkg: Package, rgb: Image.Image, camera):
    """Patch rows, grid, vision index inputs and the intrinsics of the resized (model input) image."""
    width, height = rgb.size
    out_h, out_w = smart_resize(height, width, pkg.min_pixels, pkg.max_pixels)
    resized = np.asarray(rgb.resize((out_w, out_h), Image.BICUBIC))
    grid = (1, out_h // PATCH, out_w // PATCH)
    fx, fy, cx, cy = camera
    sx, sy = out_w / width, out_h / height
    # calib `Intrinsics::resized`: f scaled, principal point by u' = (u + 0.5) sx - 0.5.
    intrinsics = (fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, out_w, out_h)
    win, cu_win = window_index(grid, pkg.window_size)
    vision_inputs = {
        "pixel_values": patch_rows(resized, pkg.mean, pkg.std),
        "vision_position_ids": vision_position_ids(grid),
        "window_index": win,
        "cu_window_seqlens": cu_win,
        "cu_seqlens": cu_seqlens(grid),
    }
    return vision_inputs, grid, intrinsics


# ----------------------------------------------------------------------------------------------
# Prompt (runtime/src/protocol.rs)


def normalise_query(text: str) -> str:
    """`Query::new`: white space folded, no chat-template markers."""
    folded = " ".join(text.split())
    if not folded or "<|" in folded or "|>" in folded:
        raise ValueError(f"invalid query {text!r}")
    return folded


def user_text(query: str, intrinsics) -> str:
    fx, fy, cx, cy, w, h = intrinsics
    return (
        f"Camera intrinsics of this {w}x{h} image: fx={fx:.1f} fy={fy:.1f} cx={cx:.1f} cy={cy:.1f}.\n"
        f"Find: {query}\n"
        'Answer with <answer>{"bbox_2d": [x1, y1, x2, y2], "bbox_3d": [x, y, z, l, w, h, yaw]}</answer>: '
        "the 2D box in pixels of this image, the 3D box centre, length, width, height in metres in the camera "
        "frame (x right, y down, z forward) and yaw in radians about the y axis."
    )


def prompt_tokens(pkg: Package, query: str, intrinsics, image_tokens: int) -> list[int]:
    """`chat_prompt` tokenised as `Grounder::prompt_tokens`: text around the image block encoded
    without added special tokens, the block inserted by id."""
    before = f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n"
    after = f"{user_text(query, intrinsics)}{IM_END}\n{IM_START}assistant\n"
    enc = lambda s: pkg.tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    return enc(before) + [pkg.vision_start] + [pkg.image_pad] * image_tokens + [pkg.vision_end] + enc(after)


# ----------------------------------------------------------------------------------------------
# Inference


def greedy(logits_row: np.ndarray, banned: list[int]) -> int:
    """Argmax (first maximum) over the vocabulary, never a banned id."""
    row = logits_row.astype(np.float32, copy=True)
    row[banned] = -np.inf
    return int(np.argmax(row))


def run_frame(pkg: Package, rgb: Image.Image, camera, query: str, max_new: int):
    """One query on one frame. Returns (text, generated ids, stopped, per-stage milliseconds)."""
    ms: dict[str, float] = {}
    t_total = time.perf_counter()

    t = time.perf_counter()
    vision_inputs, grid, intrinsics = preprocess(pkg, rgb, camera)
    ms["preprocess"] = (time.perf_counter() - t) * 1e3
    image_tokens = grid[0] * grid[1] * grid[2] // (MERGE * MERGE)

    t = time.perf_counter()
    ids = prompt_tokens(pkg, query, intrinsics, image_tokens)
    ms["tokenize"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    (features,) = pkg.vision.run(["image_features"], vision_inputs)
    ms["vision"] = (time.perf_counter() - t) * 1e3

    # Prefill: embeddings with image rows substituted, 3-row positions, empty cache.
    t = time.perf_counter()
    positions, rope_delta = rope_index_tokens(ids, pkg.image_token_id, grid)
    ids_arr = np.asarray([ids], np.int64)
    (embeds,) = pkg.embed.run(["inputs_embeds"], {"input_ids": ids_arr})
    is_image = ids_arr[0] == pkg.image_token_id
    if int(is_image.sum()) != features.shape[0]:
        raise ValueError(f"{int(is_image.sum())} image tokens, {features.shape[0]} image features")
    embeds[0, is_image] = features.astype(embeds.dtype, copy=False)
    s = len(ids)
    empty = np.zeros((1, pkg.kv_heads, 0, pkg.head_dim), pkg.float_type)
    feed = {
        "inputs_embeds": embeds,
        "attention_mask": np.ones((1, s), np.int64),
        "position_ids": positions[:, None, :],
    }
    for i in range(pkg.num_layers):
        feed[f"past_key_values.{i}.key"] = empty
        feed[f"past_key_values.{i}.value"] = empty
    out_names = ["logits"] + [f"present.{i}.{kv}" for i in range(pkg.num_layers) for kv in ("key", "value")]
    out = pkg.decoder.run(out_names, feed)
    banned = [pkg.image_token_id, pkg.video_token_id]
    nxt = greedy(out[0][0, -1], banned)
    ms["prefill"] = (time.perf_counter() - t) * 1e3

    # Decode: one token at a time; a token at sequence index i has position i + rope_delta.
    t = time.perf_counter()
    generated, stopped, cached = [], False, s
    for step in range(max_new):
        generated.append(nxt)
        if nxt == pkg.im_end:
            stopped = True
            break
        if step + 1 == max_new:
            break
        (emb,) = pkg.embed.run(["inputs_embeds"], {"input_ids": np.asarray([[nxt]], np.int64)})
        feed = {
            "inputs_embeds": emb,
            "attention_mask": np.ones((1, cached + 1), np.int64),
            "position_ids": np.full((3, 1, 1), s + step + rope_delta, np.int64),
        }
        for i in range(pkg.num_layers):
            feed[f"past_key_values.{i}.key"] = out[1 + 2 * i]
            feed[f"past_key_values.{i}.value"] = out[2 + 2 * i]
        out = pkg.decoder.run(out_names, feed)
        nxt = greedy(out[0][0, -1], banned)
        cached += 1
    ms["decode"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    text = pkg.tokenizer.decode(generated, skip_special_tokens=True)
    ms["postprocess"] = (time.perf_counter() - t) * 1e3
    ms["total"] = (time.perf_counter() - t_total) * 1e3
    ms["new_tokens"] = len(generated)
    return text, generated, stopped, ms


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model package directory")
    ap.add_argument("--image", type=Path, required=True, help="one image file (converted to 8-bit RGB)")
    ap.add_argument("--intrinsics", type=Path, help="KITTI calib (P2) or OpenCV YAML camera_matrix")
    ap.add_argument("--camera", help="fx,fy,cx,cy instead of --intrinsics")
    ap.add_argument("--query", required=True, help="referring expression")
    ap.add_argument("--frames", type=int, default=10, help="timed frames (default 10)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed frames first (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0: one per core; default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--per-frame", action="store_true", help="also print each timed frame's timings")
    args = ap.parse_args()

    if args.camera:
        camera = tuple(float(v) for v in args.camera.split(","))
    elif args.intrinsics:
        camera = read_intrinsics(args.intrinsics)
    else:
        ap.error("give --intrinsics or --camera")
    query = normalise_query(args.query)

    t = time.perf_counter()
    pkg = Package(args.model, args.threads)
    load_ms = (time.perf_counter() - t) * 1e3
    rgb = Image.open(args.image).convert("RGB")

    runs = []
    for k in range(args.warmup + args.frames):
        text, ids, stopped, ms = run_frame(pkg, rgb, camera, query, args.max_new_tokens)
        if k >= args.warmup:
            runs.append(ms)
            if args.per_frame:
                print(json.dumps({"frame": k - args.warmup, "ms": ms}))

    print(json.dumps({"query": query, "text": text, "tokens": len(ids), "stopped": stopped, "ids": ids}))
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]} if runs else {}
    print(json.dumps({
        "model": str(args.model), "image": str(args.image), "size": list(rgb.size),
        "frames": len(runs), "threads": args.threads, "load_ms": round(load_ms, 2),
        "onnxruntime": ort.__version__, "loadavg": list(os.getloadavg()),
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
