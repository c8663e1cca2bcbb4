//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `monovlm-exporter`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- checkpoints ---
    /// A checkpoint file cannot be read or is not a safetensors file.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the config needs is not in the checkpoint.
    #[error("checkpoint: tensor {name} is missing (the config needs it)")]
    MissingTensor {
        /// Hugging Face name.
        name: String,
    },
    /// A tensor's shape disagrees with the config.
    #[error("checkpoint: tensor {name} has shape {found:?}, the config needs {expected:?}")]
    TensorShape {
        /// Hugging Face name.
        name: String,
        /// Shape derived from `config.json`.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// A tensor holding NaN or an infinity (a diverged training run): exported, it would make
    /// every answer NaN or quantise its blocks to garbage.
    #[error("checkpoint: tensor {name} holds a non-finite value ({value}) at element {index}")]
    NonFiniteTensor {
        /// Hugging Face name.
        name: String,
        /// The first bad element (flat index).
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A tensor of a type we cannot convert to floats.
    #[error("checkpoint: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")]
    TensorDtype {
        /// Hugging Face name.
        name: String,
        /// The safetensors dtype.
        dtype: String,
    },
    /// A tensor's data runs past the end of its file (a truncated download or copy).
    #[error(
        "checkpoint {path}: tensor {name} is truncated ({needed} bytes of data needed, {available} present)"
    )]
    TruncatedTensor {
        /// The file.
        path: PathBuf,
        /// Hugging Face name.
        name: String,
        /// Bytes the header says the data section holds up to this tensor's end.
        needed: u64,
        /// Bytes present after the header.
        available: u64,
    },
    /// The checkpoint holds model tensors the config does not account for (more layers, other heads).
    #[error("checkpoint: tensor {name} is not used by the config (config and weights disagree)")]
    UnexpectedTensor {
        /// Hugging Face name.
        name: String,
    },

    // --- graphs and files ---
    /// An inconsistency while building a graph (a bug or an unsupported configuration).
    #[error("graph: {0}")]
    Graph(String),
    /// A file or directory cannot be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The output package exists and overwriting was not asked for.
    #[error("{0} exists; pass --force to replace it")]
    OutputExists(PathBuf),

    // --- validation ---
    /// ONNX Runtime failed to load or run a graph.
    #[error("ONNX Runtime, {graph}: {message}")]
    Ort {
        /// The graph file or stage.
        graph: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// Reference inputs/outputs (`io.safetensors`) are missing or malformed.
    #[error("reference data: {0}")]
    Reference(String),

    /// An error from the runtime crate (config reading, preprocessing, ONNX Runtime loading).
    #[error(transparent)]
    Runtime(#[from] monovlm_runtime::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
