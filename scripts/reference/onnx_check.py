#!/usr/bin/env python3
"""Checks exported model packages with the reference tools: ONNX's full checker and Python onnxruntime.

For every graph under PKG/onnx/: `onnx.checker.check_model(path, full_check=True)` (strict shape
inference included), then a run in Python onnxruntime. With a fixture directory (config.json +
io.safetensors of trainer/tests/fixtures/qwen25vl/*) the package is run on the fixture's prompt:
image features and prompt logits are compared with the golden transformers outputs, and 8 greedy
tokens are decoded over the KV cache. The vision index tensors are computed here by an independent
numpy implementation of transformers' window/position logic, a cross-check of runtime::preprocess.

Usage:
  python scripts/reference/onnx_check.py PKG --fixture FIXTURE_DIR   # one package
  python scripts/reference/onnx_check.py                             # export tiny_a/tiny_b (fp32, fp16,
                                                                     # int4, plain decoder) and check all
Environment: a venv with scripts/reference/requirements-onnx.txt (onnx 1.23.2, onnxruntime 1.31.1, numpy):
  python3 -m venv .cache/onnxcheck && .cache/onnxcheck/bin/pip install -r scripts/reference/requirements-onnx.txt
  .cache/onnxcheck/bin/python scripts/reference/onnx_check.py
Exit status 1 when a checker fails or an fp32 package misses the 1e-4 parity bound.
"""

import argparse
import json
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "trainer" / "tests" / "fixtures" / "qwen25vl"
FP32_TOL = 1e-4
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = data[8 + n + begin : 8 + n + end]
        out[name] = np.frombuffer(buf, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def vision_indices(grids, window_px=112, patch=14, merge=2):
    """transformers' rot_pos_emb positions, get_window_index and cu_seqlens, written afresh."""
    pos, win, cu_win, cu = [], [], [0], [0]
    offset = 0
    tokens_per_window = window_px // (patch * merge)
    for t, h, w in grids:
        lh, lw = h // merge, w // merge
        for _ in range(t):
            for bh in range(lh):
                for bw in range(lw):
                    for mh in range(merge):
                        for mw in range(merge):
                            pos.append((bh * merge + mh, bw * merge + mw))
        for ti in range(t):
            for r0 in range(0, lh, tokens_per_window):
                for c0 in range(0, lw, tokens_per_window):
                    r1, c1 = min(r0 + tokens_per_window, lh), min(c0 + tokens_per_window, lw)
                    for r in range(r0, r1):
                        for c in range(c0, c1):
                            win.append(offset + (ti * lh + r) * lw + c)
                    cu_win.append(cu_win[-1] + (r1 - r0) * (c1 - c0) * merge * merge)
            cu.append(cu[-1] + h * w)
        offset += t * lh * lw
    return (
        np.array(pos, dtype=np.int64),
        np.array(win, dtype=np.int64),
        np.array(cu_win, dtype=np.int32),
        np.array(cu, dtype=np.int32),
    )


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if "_fp16" in pathlib.Path(path).name:
        # ORT 1.31.1's CPU layout optimisations (level 3) crash on f16 decoders; fp16 targets GPUs.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_graphs(pkg):
    ok = True
    for path in sorted((pkg / "onnx").glob("*.onnx")):
        try:
            onnx.checker.check_model(str(path), full_check=True)
            session(path)
            print(f"  {path.name:<44} checker: ok (full_check)  onnxruntime: loads")
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            ok = False
            print(f"  {path.name:<44} FAILED: {type(e).__name__}: {str(e)[:400]}")
    return ok


def run_fixture(pkg, fixture):
    meta = json.loads((pkg / "monovlm.json").read_text())
    graphs = meta["package"]["graphs"]
    precision = meta["package"]["precision"]
    config = json.loads((fixture / "config.json").read_text())
    text = config.get("text_config", config)
    io = read_safetensors(fixture / "io.safetensors")
    grids = [tuple(int(v) for v in g) for g in io["image_grid_thw"]]
    image_token = config["image_token_id"]

    vision = session(pkg / graphs["vision_encoder"])
    embed = session(pkg / graphs["embed_tokens"])
    decoders = {"decoder": graphs["decoder"]}
    if "decoder_plain" in graphs:
        decoders["decoder_plain"] = graphs["decoder_plain"]

    pos, win, cu_win, cu = vision_indices(grids, config["vision_config"].get("window_size", 112))
    float_in = np.float16 if precision == "fp16" else np.float32
    feats = vision.run(
        None,
        {
            "pixel_values": io["pixel_values"].astype(np.float32),
            "vision_position_ids": pos,
            "window_index": win,
            "cu_window_seqlens": cu_win,
            "cu_seqlens": cu,
        },
    )[0].astype(np.float32)
    vision_diff = float(np.abs(feats - io["vision_embeds"]).max())

    ids = io["input_ids"]
    layers, kv = text["num_hidden_layers"], text["num_key_value_heads"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    results = {"vision": vision_diff}
    all_ok = True
    for label, rel in decoders.items():
        dec = session(pkg / rel)
        embeds = embed.run(None, {"input_ids": ids})[0]
        embeds[0, ids[0] == image_token] = feats.astype(embeds.dtype)
        positions = io["position_ids"]
        past = {}
        for i in range(layers):
            for kind in ("key", "value"):
                past[f"past_key_values.{i}.{kind}"] = np.zeros((1, kv, 0, head_dim), dtype=float_in)
        seq = ids.shape[1]
        feed = {"inputs_embeds": embeds.astype(float_in), "attention_mask": np.ones((1, seq), np.int64),
                "position_ids": positions, **past}
        names = [o.name for o in dec.get_outputs()]
        outs = dict(zip(names, dec.run(None, feed)))
        logits = outs["logits"].astype(np.float32)
        logits_diff = float(np.abs(logits - io["logits"]).max())
        rope_delta = int(positions.max()) + 1 - seq
        tokens = []
        last = logits[0, -1]
        for step in range(len(io["greedy_tokens"])):
            nxt = int(np.argmax(last))
            tokens.append(nxt)
            if step + 1 == len(io["greedy_tokens"]):
                break
            past = {f"past_key_values.{i}.{kind}": outs[f"present.{i}.{kind}"] for i in range(layers) for kind in ("key", "value")}
            total = seq + step + 1
            p = seq + step + rope_delta
            feed = {"inputs_embeds": embed.run(None, {"input_ids": np.array([[nxt]], np.int64)})[0].astype(float_in),
                    "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.full((3, 1, 1), p, np.int64), **past}
            outs = dict(zip(names, dec.run(None, feed)))
            last = outs["logits"].astype(np.float32)[0, -1]
        equal = tokens == [int(t) for t in io["greedy_tokens"]]
        scale = float(np.abs(io["logits"]).max())
        print(f"  {precision} {label}: image features max|diff| {vision_diff:.2e}, prompt logits {logits_diff:.2e} "
              f"(scale {scale:.2f}), greedy tokens {'identical' if equal else 'DIFFERENT'} {tokens}")
        if precision == "fp32":
            all_ok &= vision_diff < FP32_TOL and logits_diff < FP32_TOL * max(scale, 1.0) and equal
        results[label] = (logits_diff, equal)
    return all_ok


def export_all(out_root):
    exe = ["cargo", "run", "-q", "-j", "1", "-p", "monovlm-exporter", "--bin", "monovlm-export", "--"]
    jobs = []
    for name in ("tiny_a", "tiny_b"):
        for precision in ("fp32", "fp16", "int4"):
            pkg = out_root / f"{name}_{precision}"
            subprocess.run(exe + ["--checkpoint", str(FIXTURES / name), "--out", str(pkg), "--precision", precision,
                                  "--plain-decoder", "--force"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            jobs.append((pkg, FIXTURES / name))
    return jobs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", nargs="?", type=pathlib.Path)
    ap.add_argument("--fixture", type=pathlib.Path)
    args = ap.parse_args()
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(args.package, args.fixture)] if args.package else export_all(pathlib.Path(tmp))
        ok = True
        for pkg, fixture in jobs:
            print(f"{pkg.name}:")
            ok &= check_graphs(pkg)
            if fixture is not None:
                try:
                    ok &= run_fixture(pkg, fixture)
                except Exception as e:  # noqa: BLE001
                    ok = False
                    print(f"  run FAILED: {type(e).__name__}: {str(e)[:400]}")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
