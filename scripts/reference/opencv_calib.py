#!/usr/bin/env python3
"""OpenCV on the same calibration images as monovlm-calib, for docs/benchmarks.md.

    cargo run --release -p monovlm-calib -- synth-views --out /tmp/sv      # 20 views + truth
    PY=$(bash scripts/reference/setup-python)
    $PY scripts/reference/opencv_calib.py /tmp/sv

Runs findChessboardCorners + cornerSubPix (11x11 window) on every view, calibrateCamera with
CALIB_FIX_K3 (monovlm-calib's default), and remap of a 1280x720 RGB frame with fixed-point maps
(CV_16SC2, OpenCV's fast path), all on one thread; prints accuracy against the truth and timings.
"""
import glob
import json
import os
import sys
import time

import cv2
import numpy as np


def main():
    d = sys.argv[1]
    cv2.setNumThreads(1)
    files = sorted(glob.glob(os.path.join(d, "view_*.png")))
    truth = json.load(open(os.path.join(d, "truth_corners.json")))
    fs = cv2.FileStorage(os.path.join(d, "truth.yaml"), cv2.FILE_STORAGE_READ)
    k_true, dist_true = fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat().ravel()
    pattern, square = (9, 6), 0.04
    obj = np.zeros((54, 3), np.float32)
    obj[:, :2] = np.mgrid[0:9, 0:6].T.reshape(-1, 2) * square
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.001)
    img_pts, obj_pts, errs, t_detect = [], [], [], []
    for f, tc in zip(files, truth):
        gray = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        t0 = time.perf_counter()
        ok, corners = cv2.findChessboardCorners(gray, pattern, None)
        if ok:
            corners = cv2.cornerSubPix(gray, corners, (11, 11), (-1, -1), criteria)
        t_detect.append(time.perf_counter() - t0)
        if not ok:
            print(f"{f}: not found")
            continue
        c = corners.reshape(-1, 2)
        tc = np.array(tc)
        # OpenCV may number the corners from the opposite end; compare in the better order.
        e = min(np.linalg.norm(c - tc, axis=1).max(), np.linalg.norm(c[::-1] - tc, axis=1).max())
        e_rms = min(np.sqrt((np.linalg.norm(c - tc, axis=1) ** 2).mean()),
                    np.sqrt((np.linalg.norm(c[::-1] - tc, axis=1) ** 2).mean()))
        errs.append((e_rms, e))
        img_pts.append(corners)
        obj_pts.append(obj)
    h, w = gray.shape
    t0 = time.perf_counter()
    rms, k, dist, _, _ = cv2.calibrateCamera(obj_pts, img_pts, (w, h), None, None, flags=cv2.CALIB_FIX_K3)
    t_cal = time.perf_counter() - t0
    # Repeat the calibration for a stable time.
    reps = []
    for _ in range(5):
        t0 = time.perf_counter()
        cv2.calibrateCamera(obj_pts, img_pts, (w, h), None, None, flags=cv2.CALIB_FIX_K3)
        reps.append(time.perf_counter() - t0)
    new_k, _ = cv2.getOptimalNewCameraMatrix(k, dist, (w, h), 0)
    m1, m2 = cv2.initUndistortRectifyMap(k, dist, None, new_k, (w, h), cv2.CV_16SC2)
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    t_remap = []
    for _ in range(50):
        t0 = time.perf_counter()
        cv2.remap(frame, m1, m2, cv2.INTER_LINEAR)
        t_remap.append(time.perf_counter() - t0)
    print(f"OpenCV {cv2.__version__}, {len(img_pts)}/{len(files)} views found")
    print(f"corners vs truth: rms {np.sqrt(np.mean([e[0] ** 2 for e in errs])):.4f} px, worst {max(e[1] for e in errs):.3f} px")
    print(f"detect (findChessboardCorners + cornerSubPix): median {1e3 * np.median(t_detect):.1f} ms per view")
    print(f"calibrateCamera: rms {rms:.4f} px, median {1e3 * np.median(reps):.1f} ms")
    print(f"  fx {k[0, 0]:.3f} fy {k[1, 1]:.3f} cx {k[0, 2]:.3f} cy {k[1, 2]:.3f} dist {np.round(dist.ravel(), 5)}")
    print(f"  truth fx {k_true[0, 0]:.3f} fy {k_true[1, 1]:.3f} cx {k_true[0, 2]:.3f} cy {k_true[1, 2]:.3f} dist {dist_true}")
    print(f"remap 1280x720 RGB (CV_16SC2, bilinear): median {1e3 * np.median(t_remap):.2f} ms")


if __name__ == "__main__":
    main()
