//! `monovlm-edge` on a real package: JSON lines on stdout, and Ctrl-C (SIGINT) ends a run cleanly
//! after the frame in flight. The binary is the runtime crate's, built by `cargo test --workspace`
//! next to this test's directory; when it is absent (this crate tested alone) the test says so and
//! passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use monovlm_exporter::package::{ExportOptions, export};
use monovlm_runtime::model_config::Qwen25VlConfig;
use monovlm_runtime::package::byte_level_tokenizer_json;

fn edge_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("monovlm-edge");
    bin.is_file().then_some(bin)
}

fn setup(root: &Path) -> PathBuf {
    let pkg = root.join("pkg");
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a");
    export(&ckpt, &pkg, &ExportOptions::default(), &mut |_| {}).unwrap();
    let cfg = Qwen25VlConfig::from_file(&pkg).unwrap();
    std::fs::write(pkg.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, 504)).unwrap();
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..300 {
        image::RgbImage::from_pixel(112, 84, image::Rgb([i as u8, 90, 30]))
            .save(frames.join(format!("{i:06}.png")))
            .unwrap();
    }
    std::fs::write(
        root.join("cam.yaml"),
        "%YAML:1.0\n---\nimage_width: 112\nimage_height: 84\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   data: [ 100., 0., 56., 0., 100., 42., 0., 0., 1. ]\n",
    )
    .unwrap();
    pkg
}

#[test]
fn ctrl_c_stops_a_run_cleanly_after_json_lines() {
    let Some(bin) = edge_binary() else {
        eprintln!("monovlm-edge not built next to this test (run cargo test --workspace): skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let mut child = Command::new(bin)
        .args(["--images", "frames", "--intrinsics", "cam.yaml", "--model", "pkg", "--device", "trt,cpu"])
        .args([
            "--query",
            "the car",
            "--query",
            "the van on the left",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ])
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["provider"], "cpu");
    assert_eq!(v["frame_index"], 0);
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest = lines.count();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    // Stopped early, with both queries of every frame it finished.
    assert!(rest < 599 && rest % 2 == 1, "{rest} more lines");
    // TensorRT was skipped with one line.
    assert_eq!(stderr.matches("execution provider unavailable").count(), 1, "{stderr}");
}
