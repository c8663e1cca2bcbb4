//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `monovlm-calib`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- camera model ---
    /// An intrinsic parameter is NaN, infinite or out of its valid range.
    #[error("invalid intrinsics: {field} = {value} ({expected})")]
    InvalidIntrinsics {
        /// The offending parameter, e.g. `fx`.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What was expected of it.
        expected: &'static str,
    },
    /// A distortion coefficient is NaN or infinite.
    #[error("invalid distortion coefficient {field} = {value} (must be finite)")]
    InvalidDistortion {
        /// The offending coefficient, e.g. `k1`.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A resize or crop asked for an empty or out-of-range image.
    #[error("invalid image region: {0}")]
    InvalidRegion(String),

    // --- boxes ---
    /// A 3D box has a non-finite parameter or a non-positive size.
    #[error("invalid 3D box: {field} = {value} ({expected})")]
    InvalidBox3d {
        /// The offending parameter, e.g. `l`.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What was expected of it.
        expected: &'static str,
    },
    /// A 2D box has a non-finite coordinate or inverted corners.
    #[error("invalid 2D box [{x1}, {y1}, {x2}, {y2}]: {reason}")]
    InvalidBox2d {
        /// Left edge, pixels.
        x1: f64,
        /// Top edge, pixels.
        y1: f64,
        /// Right edge, pixels.
        x2: f64,
        /// Bottom edge, pixels.
        y2: f64,
        /// Why it is invalid.
        reason: &'static str,
    },

    // --- calibration ---
    /// A checkerboard description is invalid.
    #[error("invalid checkerboard: {0}")]
    InvalidBoard(String),
    /// No checkerboard of the requested size was found in an image.
    #[error("board not found: {0}")]
    BoardNotFound(String),
    /// Calibration cannot run or did not converge.
    #[error("calibration failed: {0}")]
    Calibration(String),

    // --- files ---
    /// A KITTI calibration or label text could not be parsed.
    #[error("{source_name}:{line}: {message}")]
    Parse {
        /// File name (or `<string>` for in-memory text).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong, naming the field and what was expected.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    // --- calibration files ---
    /// A camera-intrinsics file (OpenCV, ROS or KITTI) is malformed or holds an unsupported model.
    #[error("{source_name}: {field}: expected {expected}")]
    Format {
        /// File name (or `<string>` for in-memory text).
        source_name: String,
        /// The offending field, with its line where known, e.g. `camera_matrix.data[4] (line 15)`.
        field: String,
        /// What was expected there, and what was found.
        expected: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
