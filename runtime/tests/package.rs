//! Model package checks: every wrong or incomplete package names the file and the problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use monovlm_runtime::model_config::Qwen25VlConfig;
use monovlm_runtime::package::{ModelPackage, Precision, byte_level_tokenizer_json};
use monovlm_runtime::protocol::PromptLayout;

fn tiny_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a/config.json")
}

/// A package whose graphs are placeholders (the checks here run before ONNX Runtime sees them).
fn package(dir: &Path) {
    std::fs::create_dir_all(dir.join("onnx")).unwrap();
    std::fs::copy(tiny_config(), dir.join("config.json")).unwrap();
    let cfg = Qwen25VlConfig::from_file(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, 504)).unwrap();
    for g in ["vision_encoder", "embed_tokens", "decoder_model_merged"] {
        std::fs::write(dir.join(format!("onnx/{g}.onnx")), [8u8; 64]).unwrap();
    }
    let meta = serde_json::json!({
        "protocol_version": 1, "min_pixels": 3136, "max_pixels": 50176,
        "package": {"format": 1, "precision": "int4", "graphs": {
            "vision_encoder": "onnx/vision_encoder.onnx", "embed_tokens": "onnx/embed_tokens.onnx",
            "decoder": "onnx/decoder_model_merged.onnx"}}
    });
    std::fs::write(dir.join("monovlm.json"), meta.to_string()).unwrap();
}

fn error_of(dir: &Path) -> String {
    ModelPackage::open(dir).unwrap_err().to_string()
}

#[test]
fn a_complete_package_loads_with_its_limits_and_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    package(tmp.path());
    let p = ModelPackage::open(tmp.path()).unwrap();
    assert_eq!(p.precision, Precision::Int4);
    assert_eq!((p.preprocess.min_pixels, p.preprocess.max_pixels), (3136, 50176));
    assert_eq!(
        (p.special_tokens.im_start, p.special_tokens.im_end, p.special_tokens.image_pad),
        (504, 505, 502)
    );
    // A v1 package keeps its image-first prompts; v2 and packages without a version are text first.
    assert_eq!(p.layout, PromptLayout::ImageFirst);
    for (version, layout) in [(Some(2), PromptLayout::TextFirst), (None, PromptLayout::TextFirst)] {
        let path = tmp.path().join("monovlm.json");
        let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        match version {
            Some(v) => meta["protocol_version"] = v.into(),
            None => drop(meta.as_object_mut().unwrap().remove("protocol_version")),
        }
        std::fs::write(&path, meta.to_string()).unwrap();
        assert_eq!(ModelPackage::open(tmp.path()).unwrap().layout, layout, "{version:?}");
    }
}

#[test]
fn missing_and_broken_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    package(d);
    std::fs::write(d.join("onnx/embed_tokens.onnx"), b"x").unwrap();
    let e = error_of(d);
    assert!(e.contains("embed_tokens.onnx") && e.contains("truncated"), "{e}");
    std::fs::remove_file(d.join("onnx/embed_tokens.onnx")).unwrap();
    assert!(error_of(d).contains("embed_tokens.onnx"));

    package(d);
    std::fs::write(d.join("monovlm.json"), b"{ not json").unwrap();
    let e = error_of(d);
    assert!(e.contains("monovlm.json") && e.contains("not valid JSON"), "{e}");
    std::fs::write(d.join("monovlm.json"), br#"{"package": {"format": 7}}"#).unwrap();
    assert!(error_of(d).contains("format"));

    package(d);
    std::fs::write(d.join("monovlm.json"), br#"{"protocol_version": 9, "package": {"format": 1}}"#).unwrap();
    assert!(error_of(d).contains("protocol v9"));

    package(d);
    let mut cfg = Qwen25VlConfig::from_file(d).unwrap();
    cfg.image_token_id = 400;
    std::fs::write(d.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, 504)).unwrap();
    let e = error_of(d);
    assert!(e.contains("tokenizer.json") && e.contains("<|image_pad|>"), "{e}");
    std::fs::write(d.join("tokenizer.json"), b"{}").unwrap();
    assert!(error_of(d).contains("tokenizer.json"));

    package(d);
    let text = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), text.replace("\"qwen2_5_vl\"", "\"llava\"")).unwrap();
    let e = error_of(d);
    assert!(e.contains("config.json") && e.contains("llava"), "{e}");
    assert!(error_of(&d.join("nowhere")).contains("not a directory"));
}

#[test]
fn pixel_limits_are_checked_without_a_preprocessor_config() {
    // The limits of monovlm.json alone: inverted, zero, or large enough to allocate gigabytes.
    for (min, max) in [(1_000_000u64, 50_176u64), (0, 50_176), (3136, 1 << 40)] {
        let tmp = tempfile::tempdir().unwrap();
        package(tmp.path());
        let path = tmp.path().join("monovlm.json");
        let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        meta["min_pixels"] = min.into();
        meta["max_pixels"] = max.into();
        std::fs::write(&path, meta.to_string()).unwrap();
        assert!(!tmp.path().join("preprocessor_config.json").exists());
        let err = error_of(tmp.path());
        assert!(err.contains("monovlm.json") && err.contains("no valid size"), "{min}/{max}: {err}");
    }
}
