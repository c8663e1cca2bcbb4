//! ONNX Runtime loading: the real library that `scripts/setup` installs, and a clear error that
//! names the set-up command when it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::PathBuf;

use monovlm_runtime::Error;
use monovlm_runtime::ortlib::{self, ProviderSupport};

#[test]
fn loads_the_real_library_and_reports_the_cpu_provider() {
    let info = ortlib::init().expect("run `bash scripts/setup` first (make test does)");
    assert!(info.library.is_file());
    assert!(info.build_info.contains("ORT Build Info"), "{}", info.build_info);
    let support = ortlib::provider_support().expect("loaded");
    assert_eq!(support.last(), Some(&("cpu", ProviderSupport::Available)));
    // A second call is the same library, not a second load.
    assert_eq!(ortlib::init().expect("loaded").library, info.library);
}

#[test]
fn a_missing_library_names_the_setup_command() {
    let missing = PathBuf::from("/nonexistent/libonnxruntime.so");
    let err = ortlib::resolve_library(Some(missing.clone().into_os_string()), &[]).expect_err("missing");
    assert!(matches!(&err, Error::OrtLibraryNotFound { searched } if searched == &vec![missing]));
    let msg = err.to_string();
    assert!(msg.contains("scripts/setup") && msg.contains("ORT_DYLIB_PATH"), "{msg}");

    let candidates = vec![PathBuf::from("/nonexistent/a.so"), PathBuf::from("/nonexistent/b.so")];
    let err = ortlib::resolve_library(None, &candidates).expect_err("none exist");
    assert!(err.to_string().contains("/nonexistent/b.so"));
}

#[test]
fn the_first_existing_candidate_wins_and_an_empty_variable_is_ignored() {
    let dir = std::env::temp_dir().join(format!("monovlm-ortlib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let present = dir.join("libonnxruntime.so");
    std::fs::write(&present, b"not really a library").expect("write");
    let candidates = vec![dir.join("absent.so"), present.clone()];
    assert_eq!(ortlib::resolve_library(Some("".into()), &candidates).expect("found"), present);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
