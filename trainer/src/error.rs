//! The error type of this crate: one enum, one section per module.

use std::path::PathBuf;

use crate::data::mono3drefer::Problem;

/// Everything that can go wrong in `monovlm-trainer`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- files ---
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or not of the expected shape.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// An image could not be read, decoded or encoded.
    #[error("{path}: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    // --- datasets (data::mono3drefer) ---
    /// A KITTI label written as a Python list literal (`label_2` of `Mono3DRefer.json`) is malformed.
    #[error("label_2: {0}")]
    Label2(String),
    /// An image name is not a non-negative integer (the Mono3DVG code opens `'%06d.png' % int(name)`).
    #[error("invalid image name {0:?}: expected decimal digits, e.g. \"000123\"")]
    ImageName(String),
    /// A split name is not `train`, `val` or `test`.
    #[error("unknown split {0:?}: expected train, val or test")]
    UnknownSplit(String),
    /// A dataset was read in strict mode and has malformed parts; every problem is listed.
    #[error("{} problem(s) in the dataset; first: {}", problems.len(), problems.first().map(ToString::to_string).unwrap_or_default())]
    Rejected {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// Geometry from `monovlm-calib` (KITTI calibration, boxes, intrinsics) failed.
    #[error(transparent)]
    Calib(#[from] monovlm_calib::Error),

    // --- synthetic data (data::synth) ---
    /// The synthetic data generator was asked for something it cannot do.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    // --- evaluation (eval) ---
    /// There is nothing to evaluate (the split has no records).
    #[error("nothing to evaluate: {0}")]
    NothingToEvaluate(String),
    /// A plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The PNG being drawn.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    // --- tokenizer ---
    /// The `tokenizers` crate failed (training, a pre-tokeniser pattern, serialising).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A BPE vocabulary was asked for that cannot hold the special tokens and the 256 bytes.
    #[error("vocabulary size {requested} is too small: at least {min} (special tokens + 256 bytes)")]
    VocabTooSmall {
        /// The size asked for.
        requested: usize,
        /// The smallest size possible.
        min: usize,
    },

    // --- model (model) ---
    /// A model configuration (`config.json`) is missing a field, has a wrong value, or describes
    /// an architecture we do not implement.
    #[error("model config: {0}")]
    ModelConfig(String),
    /// A checkpoint lacks a tensor the configuration requires.
    #[error("checkpoint: tensor {name} is missing")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
    },
    /// A checkpoint tensor has another shape than the configuration implies.
    #[error("checkpoint: tensor {name} has shape {found:?}, the config implies {expected:?}")]
    TensorShape {
        /// The Hugging Face tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A checkpoint holds tensors the configuration does not use (a config/weights disagreement).
    #[error("checkpoint: {} unexpected tensor(s), first {}", names.len(), names.first().map(String::as_str).unwrap_or(""))]
    UnexpectedTensors {
        /// Their names.
        names: Vec<String>,
    },
    /// A safetensors file is truncated or malformed, or holds a dtype we do not read.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Model inputs are inconsistent (token count vs image grid, shapes, ids out of range).
    #[error("model input: {0}")]
    ModelInput(String),
    /// A libtorch operation failed (out of memory, device errors, shape errors from torch).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A device string is not `cpu` or `cuda[:N]`, or the device is not available.
    #[error("device {0:?}: expected cpu or cuda[:N] (with a CUDA build of libtorch)")]
    Device(String),
    /// `monovlm-runtime` failed: preprocessing (images, index tensors), the shared `config.json`
    /// reader, or the answer protocol.
    #[error(transparent)]
    Runtime(#[from] monovlm_runtime::Error),
    /// Training produced a non-finite loss, gradient or reward.
    #[error("non-finite value: {0}")]
    NonFinite(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
