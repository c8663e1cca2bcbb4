#!/usr/bin/env python3
"""Reference 3D IoUs for calib's tests, from implementations no one here wrote the Rust of.

- `iou_mono3dvg`: the Mono3DVG evaluator (lib/helpers/tester_helper.py + utils_helper.calc_iou):
  KITTI [h, w, l, x, y, z] reordered to [x, y, z, h, w, l] in float32, y moved from the bottom to
  the centre, then an axis-aligned IoU with extents (h, w, l) along (x, y, z) and strict overlap.
- `iou_rotated`: exact oriented IoU from shapely's polygon intersection (GEOS) of the bird's-eye
  footprints times the vertical overlap.

Usage:
    PY=$(bash scripts/reference/setup-python)
    $PY scripts/reference/iou_reference.py --out calib/tests/fixtures/iou_reference.json
    $PY scripts/reference/iou_reference.py --bench     # pairs per second in Python, for docs/benchmarks.md
"""
import argparse
import json
import time

import numpy as np
from shapely.geometry import Polygon


def random_pairs(n, seed):
    """Boxes [x, y, z, l, w, h, yaw] (geometric centre, KITTI rotation_y), second box near the first."""
    rng = np.random.default_rng(seed)
    a = np.stack([
        rng.uniform(-20, 20, n), rng.uniform(-2, 3, n), rng.uniform(2, 60, n),
        rng.uniform(0.3, 12, n), rng.uniform(0.3, 4, n), rng.uniform(0.5, 4, n), rng.uniform(-np.pi, np.pi, n),
    ], axis=1)
    b = a.copy()
    b[:, 0] += rng.uniform(-1.5, 1.5, n)
    b[:, 1] += rng.uniform(-0.5, 0.5, n)
    b[:, 2] += rng.uniform(-1.5, 1.5, n)
    b[:, 3:6] *= rng.uniform(0.5, 2.0, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return a, b


def mono3dvg_vector(box):
    """What the evaluator builds from the KITTI label: gt_3dbox = [h, w, l, x, y_bottom, z]."""
    x, y, z, l, w, h, _ = box
    gt = np.array([h, w, l, x, y + h / 2.0, z], dtype=np.float64)
    v = np.array([gt[3], gt[4], gt[5], gt[0], gt[1], gt[2]], dtype=np.float32)
    v[1] -= v[3] / 2
    return v


def calc_iou(box_a, box_b):
    """Axis-aligned IoU of two float32 [cx, cy, cz, ex, ey, ez] vectors, as the evaluator computes it."""
    max_a = box_a[0:3] + box_a[3:6] / 2
    max_b = box_b[0:3] + box_b[3:6] / 2
    min_max = np.array([max_a, max_b]).min(0)
    min_a = box_a[0:3] - box_a[3:6] / 2
    min_b = box_b[0:3] - box_b[3:6] / 2
    max_min = np.array([min_a, min_b]).max(0)
    if not (min_max > max_min).all():
        return 0.0
    inter = (min_max - max_min).prod()
    union = box_a[3:6].prod() + box_b[3:6].prod() - inter
    return float(1.0 * inter / union)


def footprint(box):
    x, _, z, l, w, _, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    pts = [(dl, dw) for dl, dw in [(l / 2, w / 2), (l / 2, -w / 2), (-l / 2, -w / 2), (-l / 2, w / 2)]]
    return Polygon([(x + c * dl + s * dw, z - s * dl + c * dw) for dl, dw in pts])


def iou_rotated(a, b):
    overlap_h = min(a[1] + a[5] / 2, b[1] + b[5] / 2) - max(a[1] - a[5] / 2, b[1] - b[5] / 2)
    if overlap_h <= 0:
        return 0.0
    inter = footprint(a).intersection(footprint(b)).area * overlap_h
    return float(inter / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    if args.out:
        a, b = random_pairs(args.pairs, seed=20261123)
        doc = {
            "generator": "scripts/reference/iou_reference.py (numpy %s, shapely)" % np.__version__,
            "boxes_a": a.tolist(),
            "boxes_b": b.tolist(),
            "iou_mono3dvg": [calc_iou(mono3dvg_vector(p), mono3dvg_vector(q)) for p, q in zip(a, b)],
            "iou_rotated": [iou_rotated(p, q) for p, q in zip(a, b)],
        }
        with open(args.out, "w") as f:
            json.dump(doc, f)
        print(f"wrote {args.pairs} pairs to {args.out}")
    if args.bench:
        a, b = random_pairs(4096, seed=7)
        for name, fn in [("iou_rotated (shapely)", iou_rotated),
                         ("iou3d_mono3dvg (numpy)", lambda p, q: calc_iou(mono3dvg_vector(p), mono3dvg_vector(q)))]:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for p, q in zip(a, b):
                    fn(p, q)
                best = min(best, time.perf_counter() - t0)
            print(f"{name}: {len(a) / best:,.0f} pairs/s ({best / len(a) * 1e6:.2f} us/pair)")


if __name__ == "__main__":
    main()
