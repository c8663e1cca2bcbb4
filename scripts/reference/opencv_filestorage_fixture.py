#!/usr/bin/env python3
"""An intrinsics file written by OpenCV itself, for calib's format tests (calib/tests/formats.rs).

`cv2.FileStorage` writes the keys OpenCV's calibration sample writes
(samples/cpp/tutorial_code/calib3d/camera_calibration/camera_calibration.cpp, `saveCameraParams`):
calibration_time, nr_of_frames, image_width, image_height, board_width, board_height, square_size,
flags (with its comment), camera_matrix (3x3), distortion_coefficients (1x5, as `calibrateCamera`
returns them), avg_reprojection_error, per_view_reprojection_errors and extrinsic_parameters.
The values are fixed (no calibration runs), so the output is reproducible byte for byte.

Usage:
    python3 -m venv /tmp/fmt-venv
    /tmp/fmt-venv/bin/pip install numpy opencv-python-headless==4.14.0.94
    /tmp/fmt-venv/bin/python scripts/reference/opencv_filestorage_fixture.py \
        --out calib/tests/fixtures/opencv_camera.yml
"""
import argparse

import cv2
import numpy as np

# A 1280x720 camera with visible barrel distortion; the values the Rust test expects.
CAMERA_MATRIX = np.array([
    [912.3456789012345, 0.0, 641.2345678901234],
    [0.0, 910.9876543210987, 358.7654321098765],
    [0.0, 0.0, 1.0],
])
DISTORTION = np.array([[-0.2843451234567891, 0.0912345678901234, 0.0012345678901234,
                        -0.0006543210987654, -0.0123456789012345]])
IMAGE_WIDTH, IMAGE_HEIGHT = 1280, 720
N_FRAMES = 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output .yml path")
    args = ap.parse_args()

    fs = cv2.FileStorage(args.out, cv2.FILE_STORAGE_WRITE)
    if not fs.isOpened():
        raise SystemExit(f"cannot open {args.out} for writing")
    fs.write("calibration_time", "Sun Nov 23 16:45:00 2025")
    fs.write("nr_of_frames", N_FRAMES)
    fs.write("image_width", IMAGE_WIDTH)
    fs.write("image_height", IMAGE_HEIGHT)
    fs.write("board_width", 9)
    fs.write("board_height", 6)
    fs.write("square_size", 25.0)
    fs.writeComment("flags:  +fix_principal_point +zero_tangent_dist")
    fs.write("flags", 0)
    fs.write("fisheye_model", 0)
    fs.write("camera_matrix", CAMERA_MATRIX)
    fs.write("distortion_coefficients", DISTORTION)
    fs.write("avg_reprojection_error", 0.2345678901234567)
    fs.write("per_view_reprojection_errors", np.array([[0.21], [0.25], [0.2436]], dtype=np.float32))
    # One row per view: rotation vector (3) then translation vector (3), as the sample writes them.
    fs.write("extrinsic_parameters", np.array([
        [0.01, -0.02, 0.03, -120.5, -80.25, 600.0],
        [-0.11, 0.05, 0.002, -60.0, -75.5, 720.125],
        [0.2, 0.1, -0.05, 10.0, -70.0, 650.5],
    ]))
    fs.release()
    print(f"wrote {args.out} (OpenCV {cv2.__version__})")


if __name__ == "__main__":
    main()
