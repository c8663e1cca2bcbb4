//! Truncated or mismatched checkpoints fail with an error that names the tensor and leave nothing
//! behind; an existing package is replaced only when asked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

use monovlm_exporter::Error;
use monovlm_exporter::package::{ExportOptions, export};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a")
}

/// A copy of tiny_a's config and weights in a fresh directory.
fn copy_checkpoint(root: &Path) -> PathBuf {
    let dir = root.join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites the weights without the tensor `drop`.
fn drop_tensor(dir: &Path, drop: &str) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView<'_>)> = st.tensors().into_iter().filter(|(n, _)| n != drop).collect();
    assert_eq!(kept.len() + 1, st.len(), "{drop} is not in the fixture");
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

/// Exports and returns the error; checks that neither the package nor a temporary directory is left.
fn export_error(root: &Path, ckpt: &Path) -> Error {
    let out = root.join("out").join("pkg");
    let err = export(ckpt, &out, &ExportOptions::default(), &mut |_| {}).expect_err("the export must fail");
    assert!(!out.exists(), "a partial package was left at {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(root.join("out")).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    err
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    drop_tensor(&ckpt, "model.layers.1.mlp.down_proj.weight");
    let err = export_error(tmp.path(), &ckpt);
    assert!(
        matches!(&err, Error::MissingTensor { name } if name == "model.layers.1.mlp.down_proj.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("model.layers.1.mlp.down_proj.weight"));
}

#[test]
fn a_shape_the_config_does_not_predict_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    edit_config(&ckpt, |v| v["text_config"]["intermediate_size"] = 96.into());
    let err = export_error(tmp.path(), &ckpt);
    match &err {
        Error::TensorShape { name, expected, found } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected.as_slice(), found.as_slice()), (&[96, 64][..], &[128, 64][..]));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn weights_with_more_layers_than_the_config_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    edit_config(&ckpt, |v| v["text_config"]["num_hidden_layers"] = 1.into());
    let err = export_error(tmp.path(), &ckpt);
    assert!(matches!(&err, Error::UnexpectedTensor { name } if name.starts_with("model.layers.1.")), "{err}");
}

#[test]
fn a_truncated_file_names_the_first_cut_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    let path = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // The tensor whose data ends last is the one a truncation cuts first.
    let (last, _) =
        st.tensors().into_iter().max_by_key(|(_, t)| t.data().as_ptr() as usize + t.data().len()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = export_error(tmp.path(), &ckpt);
    assert!(matches!(&err, Error::TruncatedTensor { name, .. } if *name == last), "{err}");
}

#[test]
fn an_existing_package_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("old.txt"), "old").unwrap();
    let err = export(&fixture(), &out, &ExportOptions::default(), &mut |_| {}).expect_err("exists");
    assert!(matches!(err, Error::OutputExists(_)));
    assert!(out.join("old.txt").is_file());
    let opts = ExportOptions { force: true, ..ExportOptions::default() };
    export(&fixture(), &out, &opts, &mut |_| {}).unwrap();
    assert!(!out.join("old.txt").exists());
    for f in ["config.json", "preprocessor_config.json", "monovlm.json", "onnx/decoder_model_merged.onnx"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["pkg"], "only the package is left");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("monovlm.json")).unwrap()).unwrap();
    assert_eq!(meta["package"]["graphs"]["decoder"], "onnx/decoder_model_merged.onnx");
    assert_eq!(meta["package"]["precision"], "fp32");
}

#[test]
fn tokenizer_and_training_metadata_are_carried_into_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    std::fs::write(ckpt.join("tokenizer.json"), r#"{"model": {"type": "BPE"}}"#).unwrap();
    let meta = r#"{"protocol_version": 1, "min_pixels": 3136, "max_pixels": 200704,
                   "stages": [{"name": "sft", "steps": 3, "details": {}}]}"#;
    std::fs::write(ckpt.join("monovlm.json"), meta).unwrap();
    let out = tmp.path().join("pkg");
    export(&ckpt, &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    let read =
        |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap() };
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(ckpt.join("tokenizer.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(ckpt.join("config.json")).unwrap()
    );
    let m = read("monovlm.json");
    assert_eq!(m["stages"][0]["name"], "sft");
    assert_eq!(m["max_pixels"], 200704);
    assert_eq!(m["package"]["format"], 1);
    let pre = read("preprocessor_config.json");
    assert_eq!((pre["min_pixels"].as_u64(), pre["max_pixels"].as_u64()), (Some(3136), Some(200704)));
    assert_eq!(pre["patch_size"], 14);
}

#[test]
fn a_non_finite_weight_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    let path = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    // Element 5 of the tensor becomes NaN, in the file's own dtype.
    let (start, dtype) = {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        (t.data().as_ptr() as usize - bytes.as_ptr() as usize, t.dtype())
    };
    let mut bytes = bytes.clone();
    match dtype {
        safetensors::Dtype::F32 => bytes[start + 20..start + 24].copy_from_slice(&f32::NAN.to_le_bytes()),
        safetensors::Dtype::BF16 | safetensors::Dtype::F16 => {
            bytes[start + 10..start + 12].copy_from_slice(&[0xff, 0x7f]);
        }
        other => panic!("fixture dtype {other:?}"),
    }
    std::fs::write(&path, bytes).unwrap();
    let err = export_error(tmp.path(), &ckpt);
    assert!(matches!(&err, Error::NonFiniteTensor { name: n, index: 5, .. } if n == name), "{err}");
}

#[test]
fn force_does_not_replace_the_checkpoint_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    let opts = ExportOptions { force: true, ..ExportOptions::default() };
    for out in [ckpt.clone(), tmp.path().to_path_buf()] {
        let err = export(&ckpt, &out, &opts, &mut |_| {}).expect_err("would delete the checkpoint");
        assert!(err.to_string().contains("replace the checkpoint"), "{err}");
        assert!(ckpt.join("model.safetensors").is_file());
    }
}

/// A Hugging Face preprocessor (bounds in `size` only) sets the bounds of both package files; a
/// checkpoint whose two files disagree is refused before anything is written.
#[test]
fn the_pixel_bounds_of_both_files_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    let pre = r#"{"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14,
                  "size": {"shortest_edge": 6272, "longest_edge": 100352}}"#;
    std::fs::write(ckpt.join("preprocessor_config.json"), pre).unwrap();
    let out = tmp.path().join("pkg");
    export(&ckpt, &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    let read =
        |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap() };
    let (meta, pre) = (read("monovlm.json"), read("preprocessor_config.json"));
    assert_eq!((meta["min_pixels"].as_u64(), meta["max_pixels"].as_u64()), (Some(6272), Some(100352)));
    assert_eq!((pre["min_pixels"].as_u64(), pre["max_pixels"].as_u64()), (Some(6272), Some(100352)));
    assert_eq!(pre["size"]["longest_edge"], 100352);
    assert_eq!(pre["image_processor_type"], "Qwen2VLImageProcessor");

    std::fs::write(ckpt.join("monovlm.json"), r#"{"max_pixels": 200704}"#).unwrap();
    let err = export_error(tmp.path(), &ckpt);
    assert!(matches!(&err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("max_pixels is 100352 here but 200704 in monovlm.json"), "{err}");
}

/// A shard index naming a file outside the checkpoint directory is refused, naming the tensor.
#[test]
fn a_shard_outside_the_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_checkpoint(tmp.path());
    std::fs::rename(ckpt.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    for shard in [r#""../model.safetensors""#, r#""/etc/passwd""#, "7"] {
        let index = format!(r#"{{"weight_map": {{"model.norm.weight": {shard}}}}}"#);
        std::fs::write(ckpt.join("model.safetensors.index.json"), index).unwrap();
        let err = export_error(tmp.path(), &ckpt);
        let msg = err.to_string();
        assert!(matches!(&err, Error::Checkpoint { .. }), "{msg}");
        assert!(msg.contains("model.norm.weight") && msg.contains("not a file name"), "{msg}");
    }
}
