//! The `monovlm-calib` command at its edges: requests it must refuse before doing any work, and
//! KITTI calib files (which carry no image size) read with the image's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::Path;
use std::process::Command;

fn calib() -> Command {
    Command::new(env!("CARGO_BIN_EXE_monovlm-calib"))
}

#[test]
fn calibrate_refuses_kitti_output_before_reading_images() {
    let tmp = tempfile_dir("kitti_out");
    let out = tmp.join("calib.txt");
    let run = calib()
        .args(["calibrate", "--images", "/nonexistent/*.png", "--board", "9x6", "--square-mm", "40"])
        .args(["--format", "kitti", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    // The refusal, not a complaint about the (missing) images: nothing was read.
    assert!(stderr.contains("a KITTI calib file has no lens distortion"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn undistort_reads_a_kitti_calib_with_the_image_size() {
    let tmp = tempfile_dir("kitti_undistort");
    let kitti = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kitti_calib_000000.txt");
    let input = tmp.join("frame.png");
    image::RgbImage::from_pixel(1242, 375, image::Rgb([90, 120, 200])).save(&input).unwrap();
    let (output, camera) = (tmp.join("out.png"), tmp.join("camera.yml"));
    let run = calib()
        .args(["undistort", "--calib"])
        .arg(&kitti)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--write-calib")
        .arg(&camera)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = image::open(&output).unwrap().to_rgb8();
    // No distortion: the frame comes back unchanged, at its size, and the written camera says so.
    assert_eq!(out.dimensions(), (1242, 375));
    assert!(out.pixels().all(|p| p.0 == [90, 120, 200]));
    let show = calib().arg("show").arg(&camera).arg("--json").output().unwrap();
    let k: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!((k["width"].as_u64(), k["height"].as_u64()), (Some(1242), Some(375)), "{k}");
}

/// A fresh directory under the target dir (no tempfile dependency in this crate).
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("calib_cli").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
