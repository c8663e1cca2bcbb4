//! CPU sessions: a model that cannot be loaded is a typed error naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::Path;

use monovlm_runtime::Error;
use monovlm_runtime::session::cpu_session;

#[test]
fn a_missing_model_is_an_error_naming_it() {
    let path = Path::new("/nonexistent/model.onnx");
    let err = cpu_session(path, 1).expect_err("no such file");
    assert!(matches!(&err, Error::OrtSession { path: p, .. } if p == path), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_is_an_error() {
    let dir = std::env::temp_dir().join(format!("monovlm-session-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("garbage.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let err = cpu_session(&path, 1).expect_err("not a model");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, Error::OrtSession { .. }), "{err}");
}
