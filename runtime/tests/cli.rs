//! `monovlm-edge` on bad inputs: a clear message on stderr and a non-zero exit, never a panic.
//! Every case here fails before a model is needed (queries, devices, images and intrinsics are
//! checked first) or on a package of the wrong architecture.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn edge(args: &[&str], cwd: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_monovlm-edge")).args(args).current_dir(cwd).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// A 64x48 image, a valid OpenCV intrinsics file and a package directory of the wrong architecture.
fn fixture(dir: &Path) {
    image::RgbImage::new(64, 48).save(dir.join("frame.png")).unwrap();
    std::fs::write(dir.join("corrupt.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let yaml = |fx: &str| {
        format!(
            "%YAML:1.0\n---\nimage_width: 64\nimage_height: 48\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   data: [ {fx}, 0., 32., 0., 50., 24., 0., 0., 1. ]\n"
        )
    };
    std::fs::write(dir.join("cam.yaml"), yaml("50.")).unwrap();
    std::fs::write(dir.join("nan.yaml"), yaml("nan")).unwrap();
    std::fs::write(dir.join("zero.yaml"), yaml("0.")).unwrap();
    let pkg = dir.join("llava");
    std::fs::create_dir_all(pkg.join("onnx")).unwrap();
    std::fs::write(
        pkg.join("config.json"),
        r#"{"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}"#,
    )
    .unwrap();
    std::fs::write(pkg.join("monovlm.json"), r#"{"package": {"format": 1}}"#).unwrap();
}

fn fails_with(args: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    fixture(tmp.path());
    let (code, stderr) = edge(args, tmp.path());
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in:\n{stderr}");
}

const BASE: [&str; 6] = ["--image", "frame.png", "--intrinsics", "cam.yaml", "--model", "llava"];

#[test]
fn an_empty_query_is_refused() {
    fails_with(&[&BASE[..], &["--query", "   "]].concat(), "the query is empty");
}

#[test]
fn a_10_kb_query_is_refused() {
    let long = "a".repeat(10_240);
    fails_with(&[&BASE[..], &["--query", &long]].concat(), "at most 512 are allowed");
}

#[test]
fn an_unknown_device_is_refused() {
    fails_with(&[&BASE[..], &["--query", "the car", "--device", "trt,npu"]].concat(), "unknown device 'npu'");
}

#[test]
fn a_missing_image_is_named() {
    fails_with(&["--image", "nope.png", "--intrinsics", "cam.yaml", "--query", "the car"], "nope.png");
}

#[test]
fn a_corrupt_image_is_named() {
    fails_with(&["--image", "corrupt.png", "--intrinsics", "cam.yaml", "--query", "the car"], "corrupt.png");
}

#[test]
fn a_nan_focal_length_is_refused() {
    fails_with(&["--image", "frame.png", "--intrinsics", "nan.yaml", "--query", "the car"], "nan.yaml");
}

#[test]
fn a_zero_focal_length_is_refused() {
    fails_with(&["--image", "frame.png", "--intrinsics", "zero.yaml", "--query", "the car"], "zero.yaml");
}

#[test]
fn a_package_of_another_architecture_is_refused() {
    fails_with(&[&BASE[..], &["--query", "the car"]].concat(), "is not qwen2_5_vl");
}

#[test]
fn no_intrinsics_is_explained() {
    fails_with(&["--image", "frame.png", "--query", "the car"], "--intrinsics");
}

#[test]
fn version_reports_the_providers() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _) = edge(&["--version"], tmp.path());
    assert_eq!(code, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_monovlm-edge")).arg("--version").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("monovlm-edge"), "{stdout}");
    assert!(stdout.contains("active provider"), "{stdout}");
}

#[test]
fn a_missing_camera_is_named() {
    fails_with(
        &["--camera", "/dev/video-missing", "--intrinsics", "cam.yaml", "--query", "the car"],
        "/dev/video-missing",
    );
}

#[test]
fn a_bad_camera_size_is_refused() {
    fails_with(
        &[
            "--camera",
            "/dev/video0",
            "--camera-size",
            "big",
            "--intrinsics",
            "cam.yaml",
            "--query",
            "the car",
        ],
        "--camera-size",
    );
}

#[test]
fn serve_refuses_an_exposed_address_without_an_api_key() {
    fails_with(
        &["serve", "--listen", "0.0.0.0:8080", "--image", "frame.png", "--intrinsics", "cam.yaml"],
        "without an API key",
    );
}

#[test]
fn serve_refuses_a_zero_queue() {
    fails_with(
        &["serve", "--queue", "0", "--image", "frame.png", "--intrinsics", "cam.yaml"],
        "queue capacity",
    );
}

#[test]
fn demo_alone_reads_assets_demo() {
    fails_with(&["--demo", "--query", "the car"], "assets/demo");
}

#[test]
fn listen_on_a_plain_run_is_the_daemon_and_checks_the_address() {
    fails_with(
        &["--listen", "0.0.0.0:8080", "--image", "frame.png", "--intrinsics", "cam.yaml"],
        "--api-key",
    );
}

#[test]
fn daemon_options_without_serve_are_refused() {
    fails_with(&[&BASE[..], &["--query", "the car", "--queue", "2"]].concat(), "need `serve` or --listen");
}
