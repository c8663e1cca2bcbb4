//! ONNX Runtime sessions on the CPU execution provider, with full graph optimisation (the fusions
//! that turn the package's graphs into ONNX Runtime's fast kernels). The TensorRT -> CUDA -> CPU
//! order of the vehicle arrives with the runtime's model package; the exporter's validation and the
//! benchmarks use this.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::error::{Error, Result};
use crate::ortlib;

/// Opens `model` (an `.onnx` file; external data is found beside it) on the CPU with
/// `intra_threads` threads (0: ONNX Runtime's default, one per core).
///
/// # Errors
/// [`Error::OrtLibraryNotFound`] / [`Error::OrtInit`] when ONNX Runtime cannot be loaded;
/// [`Error::OrtSession`] when the model does not load (missing file, invalid graph, unknown op).
pub fn cpu_session(model: &Path, intra_threads: usize) -> Result<Session> {
    let env = ortlib::environment()?;
    let fail = |e: ort::Error| Error::OrtSession { path: model.to_path_buf(), message: e.to_string() };
    let fail_b = |e: ort::Error<ort::session::builder::SessionBuilder>| Error::OrtSession {
        path: model.to_path_buf(),
        message: e.to_string(),
    };
    let mut builder = Session::builder(env)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(fail_b)?;
    if intra_threads > 0 {
        builder = builder.with_intra_threads(intra_threads).map_err(fail_b)?;
    }
    builder.commit_from_file(model).map_err(fail)
}
