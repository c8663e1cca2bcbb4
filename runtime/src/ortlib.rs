//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH` when set (it must then exist; `.cargo/config.toml` sets it for cargo
//! runs, Jetson users point it at the JetPack build), else `.ort/libonnxruntime.so` in the current
//! directory or an ancestor of it, next to the executable, and in this source tree's workspace
//! (where `scripts/setup` puts it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable naming the library file.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The library's file name on this platform.
pub const LIBRARY_FILE: &str = if cfg!(target_os = "windows") {
    "onnxruntime.dll"
} else if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else {
    "libonnxruntime.so"
};

/// The directory `scripts/setup` installs into, relative to the repository root.
pub const SETUP_DIR: &str = ".ort";

/// What was loaded.
#[derive(Clone, Debug)]
pub struct OrtInfo {
    /// The library file.
    pub library: PathBuf,
    /// ONNX Runtime's build string (version, commit, flags).
    pub build_info: String,
}

/// Where to look when `ORT_DYLIB_PATH` is not set, in order.
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        out.extend(cwd.ancestors().map(|d| d.join(SETUP_DIR).join(LIBRARY_FILE)));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(exe_dir.join(LIBRARY_FILE));
        out.push(exe_dir.join(SETUP_DIR).join(LIBRARY_FILE));
    }
    // The workspace this crate was built in (cargo test / cargo run from anywhere).
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        out.push(workspace.join(SETUP_DIR).join(LIBRARY_FILE));
    }
    out.dedup();
    out
}

/// The library to load: `env_value` (the value of `ORT_DYLIB_PATH`) when given, else the first
/// existing candidate.
///
/// # Errors
/// [`Error::OrtLibraryNotFound`] listing what was tried and naming the set-up command.
pub fn resolve_library(env_value: Option<OsString>, candidates: &[PathBuf]) -> Result<PathBuf> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(v);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::OrtLibraryNotFound { searched: vec![path] })
        };
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::OrtLibraryNotFound { searched: candidates.to_vec() })
}

/// A load failure, kept so that later calls report the same error.
#[derive(Clone, Debug)]
enum Failure {
    NotFound(Vec<PathBuf>),
    Init { path: PathBuf, message: String },
}

impl From<&Failure> for Error {
    fn from(f: &Failure) -> Self {
        match f.clone() {
            Failure::NotFound(searched) => Error::OrtLibraryNotFound { searched },
            Failure::Init { path, message } => Error::OrtInit { path, message },
        }
    }
}

static ORT: OnceLock<std::result::Result<OrtInfo, Failure>> = OnceLock::new();
/// The process's ONNX Runtime environment. `ort` allows one per process and releases it when the
/// last handle is dropped, so it is kept here for the sessions ([`crate::session`]).
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Loads ONNX Runtime once per process (later calls return the first outcome) and creates its
/// global environment.
///
/// # Errors
/// [`Error::OrtLibraryNotFound`] when no library is found, [`Error::OrtInit`] when it does not
/// load (wrong file, version older than 1.20) or the environment cannot be created.
pub fn init() -> Result<&'static OrtInfo> {
    let outcome = ORT.get_or_init(|| {
        let path = match resolve_library(std::env::var_os(ORT_DYLIB_ENV), &default_candidates()) {
            Ok(path) => path,
            Err(Error::OrtLibraryNotFound { searched }) => return Err(Failure::NotFound(searched)),
            Err(other) => return Err(Failure::Init { path: PathBuf::new(), message: other.to_string() }),
        };
        let fail = |message: String| Failure::Init { path: path.clone(), message };
        let builder = ort::init_from(&path).map_err(|e| fail(e.to_string()))?;
        let environment = builder.with_name("monovlm-edge").build().map_err(|e| fail(e.to_string()))?;
        let _ = ENVIRONMENT.set(environment);
        tracing::debug!(library = %path.display(), "ONNX Runtime loaded");
        Ok(OrtInfo { library: path, build_info: ort::info().to_owned() })
    });
    outcome.as_ref().map_err(Error::from)
}

/// The ONNX Runtime environment sessions are created in, loading the library first ([`init`]).
///
/// # Errors
/// As [`init`].
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let info = init()?;
    ENVIRONMENT.get().ok_or_else(|| Error::OrtInit {
        path: info.library.clone(),
        message: "the ONNX Runtime environment was not kept".into(),
    })
}

/// Whether an execution provider can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderSupport {
    /// Compiled into this binary and present in the loaded ONNX Runtime.
    Available,
    /// Compiled in, but the loaded ONNX Runtime was built without it.
    NotInLibrary,
    /// This binary was built without the cargo feature of the same name.
    NotCompiled,
}

impl std::fmt::Display for ProviderSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Available => "available",
            Self::NotInLibrary => "not in the loaded ONNX Runtime",
            Self::NotCompiled => "not compiled in (cargo feature off)",
        })
    }
}

fn in_library(available: ort::Result<bool>) -> ProviderSupport {
    match available {
        Ok(true) => ProviderSupport::Available,
        _ => ProviderSupport::NotInLibrary,
    }
}

/// The execution providers this project uses, in the runtime's preference order, with whether
/// each can be used here.
///
/// # Errors
/// As [`init`].
pub fn provider_support() -> Result<Vec<(&'static str, ProviderSupport)>> {
    use ort::ep::ExecutionProvider;
    init()?;
    #[cfg(feature = "tensorrt")]
    let tensorrt = in_library(ort::ep::TensorRT::is_available());
    #[cfg(not(feature = "tensorrt"))]
    let tensorrt = ProviderSupport::NotCompiled;
    #[cfg(feature = "cuda")]
    let cuda = in_library(ort::ep::CUDA::is_available());
    #[cfg(not(feature = "cuda"))]
    let cuda = ProviderSupport::NotCompiled;
    Ok(vec![("tensorrt", tensorrt), ("cuda", cuda), ("cpu", in_library(ort::ep::CPU::is_available()))])
}
