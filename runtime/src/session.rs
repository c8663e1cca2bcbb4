//! ONNX Runtime sessions: the execution-provider order of the vehicle (TensorRT -> CUDA -> CPU,
//! DESIGN.md "Execution providers") and plain CPU sessions for tools and benchmarks.
//!
//! [`open_session`] tries each [`Device`] of [`SessionOptions::devices`] in order. A provider that
//! is not compiled in (cargo features `tensorrt`, `cuda`), missing from the loaded ONNX Runtime, or
//! refused by it, is skipped; the reason is logged once per process and provider (not once per
//! graph), and the next one is tried. The provider that opened the graph is returned with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::error::{Error, Result};
use crate::ortlib;

/// An execution provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// NVIDIA TensorRT (fp16, engine and timing caches).
    #[serde(rename = "tensorrt")]
    TensorRt,
    /// NVIDIA CUDA.
    Cuda,
    /// ONNX Runtime's CPU kernels.
    Cpu,
}

impl Device {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::TensorRt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trt" | "tensorrt" => Ok(Self::TensorRt),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "cpu" => Ok(Self::Cpu),
            _ => Err(Error::UnknownDevice(s.to_owned())),
        }
    }
}

/// Parses a `--device` list such as `trt,cuda,cpu` (order kept, duplicates dropped).
///
/// # Errors
/// [`Error::UnknownDevice`] for an entry that is no provider, or an empty list.
///
/// # Example
/// ```
/// use monovlm_runtime::session::{parse_devices, Device};
/// assert_eq!(parse_devices("trt,cpu")?, vec![Device::TensorRt, Device::Cpu]);
/// assert!(parse_devices("tpu").is_err());
/// # Ok::<(), monovlm_runtime::Error>(())
/// ```
pub fn parse_devices(list: &str) -> Result<Vec<Device>> {
    let mut out = Vec::new();
    for part in list.split(',') {
        let d: Device = part.parse()?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    if out.is_empty() {
        return Err(Error::UnknownDevice(list.to_owned()));
    }
    Ok(out)
}

/// TensorRT settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRtOptions {
    /// Build fp16 engines.
    pub fp16: bool,
    /// Where built engines and timing caches are kept between runs (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Builder workspace limit, bytes.
    pub workspace_bytes: usize,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        Self { fp16: true, cache_dir: Some(PathBuf::from(".cache/tensorrt")), workspace_bytes: 2 << 30 }
    }
}

/// How sessions are opened.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionOptions {
    /// Execution providers in preference order.
    pub devices: Vec<Device>,
    /// Threads inside one operator (0: ONNX Runtime's default, one per core).
    pub intra_threads: usize,
    /// Threads across operators (0: default; used only by parallel execution).
    pub inter_threads: usize,
    /// TensorRT settings.
    pub tensorrt: TensorRtOptions,
    /// Graph optimisation level (ONNX Runtime 1.31's CPU provider needs `Level2` for fp16 graphs).
    pub optimization: GraphOptimizationLevel,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            devices: vec![Device::TensorRt, Device::Cuda, Device::Cpu],
            intra_threads: 0,
            inter_threads: 0,
            tensorrt: TensorRtOptions::default(),
            optimization: GraphOptimizationLevel::All,
        }
    }
}

/// Providers whose failure was already logged, with the reason (one line per provider and process).
static LOGGED: Mutex<BTreeMap<Device, String>> = Mutex::new(BTreeMap::new());

/// Logs `reason` for `device` unless it was logged before; returns whether it logged.
fn log_fallback_once(device: Device, reason: &str) -> bool {
    let mut logged = match LOGGED.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if logged.contains_key(&device) {
        return false;
    }
    logged.insert(device, reason.to_owned());
    tracing::warn!(provider = device.name(), "execution provider unavailable, trying the next: {reason}");
    true
}

/// The providers this process skipped so far, with the reason logged for each (once).
pub fn skipped_providers() -> Vec<(Device, String)> {
    let logged = match LOGGED.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    logged.iter().map(|(d, r)| (*d, r.clone())).collect()
}

fn session_err(model: &Path, e: impl std::fmt::Display) -> Error {
    Error::OrtSession { path: model.to_path_buf(), message: e.to_string() }
}

fn options_err(e: impl std::fmt::Display) -> Error {
    Error::SessionOptions(e.to_string())
}

fn base_builder(opts: &SessionOptions) -> Result<SessionBuilder> {
    let env = ortlib::environment()?;
    let mut builder = Session::builder(env)
        .map_err(options_err)?
        .with_optimization_level(opts.optimization)
        .map_err(options_err)?;
    if opts.intra_threads > 0 {
        builder = builder.with_intra_threads(opts.intra_threads).map_err(options_err)?;
    }
    if opts.inter_threads > 0 {
        builder = builder.with_inter_threads(opts.inter_threads).map_err(options_err)?;
    }
    Ok(builder)
}

/// Registers `device` on `builder`, or says why it cannot be used.
fn register(
    device: Device,
    builder: SessionBuilder,
    opts: &SessionOptions,
) -> std::result::Result<SessionBuilder, String> {
    #[cfg(any(feature = "cuda", feature = "tensorrt"))]
    use ort::ep::ExecutionProvider;
    match device {
        Device::Cpu => Ok(builder),
        Device::TensorRt => {
            #[cfg(feature = "tensorrt")]
            {
                if !matches!(ort::ep::TensorRT::is_available(), Ok(true)) {
                    return Err("the loaded ONNX Runtime was built without TensorRT".into());
                }
                let t = &opts.tensorrt;
                let mut ep =
                    ort::ep::TensorRT::default().with_fp16(t.fp16).with_max_workspace_size(t.workspace_bytes);
                if let Some(dir) = &t.cache_dir {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("engine cache {}: {e}", dir.display()))?;
                    let d = dir.display().to_string();
                    ep = ep
                        .with_engine_cache(true)
                        .with_engine_cache_path(&d)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&d);
                }
                builder.with_execution_providers([ep.build().error_on_failure()]).map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "tensorrt"))]
            {
                let _ = (builder, opts);
                Err("this binary was built without the `tensorrt` cargo feature".into())
            }
        }
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            {
                if !matches!(ort::ep::CUDA::is_available(), Ok(true)) {
                    return Err("the loaded ONNX Runtime was built without CUDA".into());
                }
                let _ = opts;
                builder
                    .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                    .map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (builder, opts);
                Err("this binary was built without the `cuda` cargo feature".into())
            }
        }
    }
}

/// Opens `model` on the first provider of `opts.devices` that accepts it; returns the session and
/// that provider.
///
/// # Errors
/// [`Error::OrtLibraryNotFound`] / [`Error::OrtInit`] when ONNX Runtime cannot be loaded;
/// [`Error::SessionOptions`] for refused thread or optimisation settings; [`Error::OrtSession`]
/// when the CPU provider cannot load the model (missing file, invalid or truncated graph, unknown
/// operator); [`Error::NoProvider`] when every requested provider was unavailable or failed.
pub fn open_session(model: &Path, opts: &SessionOptions) -> Result<(Session, Device)> {
    let mut reasons = Vec::new();
    for (i, &device) in opts.devices.iter().enumerate() {
        let last = i + 1 == opts.devices.len();
        let builder = base_builder(opts)?;
        let mut builder = match register(device, builder, opts) {
            Ok(b) => b,
            Err(reason) => {
                log_fallback_once(device, &reason);
                reasons.push(format!("{device}: {reason}"));
                continue;
            }
        };
        match builder.commit_from_file(model) {
            Ok(session) => return Ok((session, device)),
            // The CPU provider refusing a graph is the graph's fault: report it as such. A GPU
            // provider failing (out of memory, an engine build) is the provider's: fall back, and
            // when it was the last one, say which providers failed and why.
            Err(e) if device == Device::Cpu => return Err(session_err(model, e)),
            Err(e) => {
                if !last {
                    log_fallback_once(device, &e.to_string());
                }
                reasons.push(format!("{device}: {e}"));
            }
        }
    }
    Err(Error::NoProvider { path: model.to_path_buf(), reasons: reasons.join("; ") })
}

/// Opens `model` (an `.onnx` file; external data is found beside it) on the CPU with
/// `intra_threads` threads (0: ONNX Runtime's default, one per core) and full graph optimisation.
///
/// # Errors
/// As [`open_session`].
pub fn cpu_session(model: &Path, intra_threads: usize) -> Result<Session> {
    let opts = SessionOptions { devices: vec![Device::Cpu], intra_threads, ..SessionOptions::default() };
    open_session(model, &opts).map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn device_lists_parse_in_order_without_duplicates() {
        assert_eq!(parse_devices("trt,cuda,cpu").unwrap(), vec![Device::TensorRt, Device::Cuda, Device::Cpu]);
        assert_eq!(parse_devices(" CPU , cpu").unwrap(), vec![Device::Cpu]);
        assert!(matches!(parse_devices("cpu,npu"), Err(Error::UnknownDevice(d)) if d == "npu"));
        assert!(parse_devices("").is_err());
    }

    #[test]
    fn a_fallback_reason_is_logged_once_per_provider() {
        // Cuda is never registered by the other unit tests of this binary.
        assert!(log_fallback_once(Device::Cuda, "test"));
        assert!(!log_fallback_once(Device::Cuda, "test again"));
    }
}
