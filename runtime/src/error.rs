//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `monovlm-runtime`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- queries (runtime::protocol) ---
    /// The query is empty or only white space.
    #[error("the query is empty")]
    EmptyQuery,
    /// The query is longer than the protocol allows.
    #[error("the query has {chars} characters; at most {max} are allowed")]
    QueryTooLong {
        /// Its length in characters.
        chars: usize,
        /// The limit, [`crate::protocol::MAX_QUERY_CHARS`].
        max: usize,
    },
    /// The query holds text that would change the prompt's structure.
    #[error("the query must not contain {what}")]
    QueryForbidden {
        /// What was found, e.g. "chat-template markers '<|' or '|>'".
        what: &'static str,
    },

    // --- model answers (runtime::protocol) ---
    /// No `<answer>` tag in the model's text.
    #[error("no <answer> tag in the model output")]
    MissingAnswerTag,
    /// `<answer>` without a closing `</answer>`.
    #[error("<answer> is not closed by </answer>")]
    UnclosedAnswerTag,
    /// The text inside `<answer>` is not a JSON object.
    #[error("the answer is not valid JSON: {0}")]
    AnswerJson(String),
    /// A required key is missing from the answer object.
    #[error("the answer has no \"{0}\" field")]
    MissingField(&'static str),
    /// A box field has the wrong number of values or is not an array.
    #[error("\"{field}\" must be an array of {expected} numbers, got {got}")]
    WrongArity {
        /// `bbox_2d` or `bbox_3d`.
        field: &'static str,
        /// The number of values the protocol expects.
        expected: usize,
        /// What was found.
        got: String,
    },
    /// A value is not a number, or not a finite one.
    #[error("\"{field}\"[{index}] must be a finite number, got {got}")]
    NotFinite {
        /// `bbox_2d` or `bbox_3d`.
        field: &'static str,
        /// Position in the array.
        index: usize,
        /// What was found.
        got: String,
    },
    /// A 3D size (`l`, `w` or `h`) is not positive.
    #[error("\"bbox_3d\" size {name} = {value} must be > 0")]
    NonPositiveSize {
        /// `l`, `w` or `h`.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A checkpoint or package speaks a protocol version this code does not know.
    #[error("answer protocol v{0}: this build speaks v1 (image first) and v2 (text first)")]
    UnsupportedProtocol(u32),
    /// A 2D box with `x2 < x1` or `y2 < y1`.
    #[error("\"bbox_2d\" [{x1}, {y1}, {x2}, {y2}] has x2 < x1 or y2 < y1")]
    InvertedBox2d {
        /// Left.
        x1: f64,
        /// Top.
        y1: f64,
        /// Right.
        x2: f64,
        /// Bottom.
        y2: f64,
    },

    // --- ONNX Runtime ---
    /// The ONNX Runtime shared library was not found.
    #[error(
        "ONNX Runtime library not found (looked at: {}); run `bash scripts/setup` in the repository, \
         or set ORT_DYLIB_PATH to libonnxruntime.so",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OrtLibraryNotFound {
        /// Every path that was tried.
        searched: Vec<PathBuf>,
    },
    /// ONNX Runtime failed to load or initialise.
    #[error("ONNX Runtime ({path}): {message}")]
    OrtInit {
        /// The library that was loaded.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// ONNX Runtime refused the session options (thread counts, optimisation level).
    #[error("ONNX Runtime refused the session options: {0}")]
    SessionOptions(String),
    /// A model file cannot be loaded into an ONNX Runtime session on the CPU provider (the graph's
    /// fault: invalid, truncated, an unknown operator); GPU providers failing give [`Error::NoProvider`].
    #[error("ONNX Runtime session for {path}: {message}")]
    OrtSession {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's message.
        message: String,
    },

    // --- preprocessing ---
    /// An image (or a requested size) with a zero side.
    #[error("the image is empty ({width}x{height})")]
    EmptyImage {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// An image too elongated for the Qwen2-VL processor.
    #[error("the image {width}x{height} has an aspect ratio over {max}")]
    AspectRatioTooLarge {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// The largest ratio accepted, [`crate::preprocess::MAX_ASPECT_RATIO`].
        max: f64,
    },
    /// The frame and its intrinsics disagree on the image size.
    #[error("the image is {}x{} but the intrinsics are for {}x{}", .image.0, .image.1, .camera.0, .camera.1)]
    ImageSizeMismatch {
        /// Frame (width, height) in pixels.
        image: (u32, u32),
        /// Intrinsics (width, height) in pixels.
        camera: (u32, u32),
    },
    /// A preprocessing setting that cannot work (zero factor, non-positive std, empty output).
    #[error("invalid preprocessing configuration: {0}")]
    InvalidPreprocessConfig(String),
    /// A model `config.json` is unreadable, lacks a field, or describes an architecture we do not
    /// implement.
    #[error("model config: {0}")]
    ModelConfig(String),
    /// A patch grid the vision encoder cannot take.
    #[error("invalid grid_thw {grid_thw:?}: {reason}")]
    InvalidGrid {
        /// `[t, h, w]` in patches.
        grid_thw: [usize; 3],
        /// What is wrong.
        reason: &'static str,
    },

    // --- model packages (runtime::package) ---
    /// A file of a model package is missing, unreadable or wrong.
    #[error("model package {}: {problem}", .path.display())]
    Package {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    // --- execution providers and inference (runtime::session, runtime::grounder) ---
    /// A `--device` entry that names no execution provider.
    #[error("unknown device '{0}': expected a comma-separated list of trt, cuda, cpu")]
    UnknownDevice(String),
    /// No execution provider of the requested list could open a graph.
    #[error("no execution provider could open {}: {reasons}", .path.display())]
    NoProvider {
        /// The model file.
        path: PathBuf,
        /// Why each provider failed.
        reasons: String,
    },
    /// A graph failed while running, or returned something the contract does not describe.
    #[error("inference ({graph}): {message}")]
    Inference {
        /// `vision_encoder`, `embed_tokens` or `decoder`.
        graph: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Grounder options that cannot run (e.g. consensus decoding with zero samples).
    #[error("invalid grounder options: {0}")]
    InvalidOptions(String),
    /// Tokenising or detokenising failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    // --- frames (runtime::source) ---
    /// An image file that cannot be read or decoded.
    #[error("image {}: {message}", .path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's or the file system's message.
        message: String,
    },
    /// A frame source that cannot be opened or read (directory, intrinsics, camera).
    #[error("frame source {source_name}: {message}")]
    Source {
        /// The directory, file or device.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A live source that delivered no frame in time: transient, the capture goes on and may
    /// recover (a camera unplugged and plugged back, a USB bus reset).
    #[error("frame source {source_name}: no frame for {waited_s:.1} s (camera stalled or disconnected)")]
    SourceStalled {
        /// The device.
        source_name: String,
        /// How long it waited, seconds.
        waited_s: f64,
    },
    /// A camera buffer that does not hold a frame of the announced format and size.
    #[error("camera buffer: {0}")]
    PixelFormat(String),

    // --- the daemon (runtime::serve) ---
    /// A daemon configuration that is refused (an exposed address without an API key, a zero
    /// limit, ...).
    #[error("serve: {0}")]
    ServeConfig(String),
    /// The daemon's listening socket cannot be opened.
    #[error("serve: cannot listen on {addr}: {message}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's message.
        message: String,
    },

    // --- geometry ---
    /// An error from the geometry crate (invalid intrinsics, boxes, ...).
    #[error(transparent)]
    Calib(#[from] monovlm_calib::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
