//! Camera-intrinsics files: OpenCV `FileStorage` YAML, ROS `camera_info` YAML and KITTI `calib.txt`,
//! read (the format detected from the text) and written.
//!
//! # What each format carries
//! - **OpenCV** (`%YAML:1.0`, as `cv::FileStorage` and OpenCV's calibration sample write it):
//!   `image_width`, `image_height`, `camera_matrix` (3x3 `!!opencv-matrix`) and
//!   `distortion_coefficients` (1xN or Nx1). Other keys (`avg_reprojection_error`,
//!   `extrinsic_parameters`, ...) are ignored. We also write, and read when present,
//!   `camera_name` and a 3x4 `projection_matrix` (only when the KITTI offset is non-zero), keys that
//!   OpenCV readers skip.
//! - **ROS** `camera_info` (as `camera_calibration` and `camera_info_manager` write it): `image_width`,
//!   `image_height`, `camera_name`, `camera_matrix`, `distortion_model`, `distortion_coefficients`,
//!   `rectification_matrix`, `projection_matrix`, each matrix a `{rows, cols, data}` map. The
//!   intrinsics are `camera_matrix` and the distortion (the raw, unrectified image);
//!   `projection_matrix` contributes only its translation column, read as our offset
//!   `tx = P[0][3] / -P[0][0]`, `ty = P[1][3] / -P[1][1]` (a stereo pair's baseline);
//!   `rectification_matrix` is checked (3x3, finite) and otherwise ignored. A missing
//!   `distortion_model` means `plumb_bob`, as in ROS's own reader.
//! - **KITTI** `calib.txt` (see [`crate::kitti::KittiCalib`]): `P0..P3`, `R0_rect`, `Tr_*`. It carries
//!   no image size, so reading needs [`ReadOptions::image_size`], and no distortion (KITTI images are
//!   rectified), so writing a distorted camera is an error.
//!
//! Distortion is OpenCV `plumb_bob` with 4 (`k1 k2 p1 p2`, `k3 = 0`) or 5 coefficients; none, an
//! empty vector or all zeros mean no distortion. Other models (`rational_polynomial`, `equidistant`,
//! OpenCV's 8/12/14-coefficient vectors) are rejected, never truncated.
//!
//! # The YAML subset read here
//! OpenCV's `%YAML:1.0` header and `!!opencv-matrix` tags are not accepted by YAML 1.2 parsers, and
//! both formats use little of YAML, so a small parser reads exactly this subset and rejects the rest
//! with an error naming the line:
//! - `%` directive lines and a `---` line before the document, `...` after it; `#` comments (at the
//!   start of a line or after whitespace, outside quotes);
//! - `key: scalar` and `key:` followed by a nested block map indented deeper (spaces, no tabs),
//!   an optional `!tag` after the colon (`!!opencv-matrix`);
//! - scalars plain, `"double-quoted"` (escapes `\\ \" \n \t \r \/`) or `'single-quoted'` (`''`),
//!   on one line;
//! - flow sequences of scalars `[a, b, ...]`, which may span several lines.
//!
//! Not supported: block sequences (`- item`), flow maps (`{...}`), nested flow sequences, block
//! scalars (`|`, `>`), anchors and aliases, multi-line plain or quoted scalars, several documents.
//!
//! # Errors
//! A bad file gives [`Error::Format`] naming the file, the field (with its line where known, e.g.
//! `camera_matrix.data[4] (line 15)`) and what was expected; KITTI files give the
//! [`Error::Parse`] of [`crate::kitti::KittiCalib::parse`], which names the same. The parser is
//! total: no input panics it.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::camera::{Distortion, Intrinsics};
use crate::error::{Error, Result};
use crate::kitti::KittiCalib;

/// The KITTI camera read by default: `P2`, KITTI's left colour camera.
pub const KITTI_DEFAULT_CAMERA: usize = 2;

/// The `source_name` of errors about text that came from no file.
const IN_MEMORY_SOURCE: &str = "<string>";

/// Characters of offending text quoted in an error message.
const SNIPPET_CHARS: usize = 40;

/// Matrices larger than this along a side are rejected (ours are at most 3x4; bounds allocations).
const MAX_MATRIX_SIDE: usize = 64;

/// Coefficient counts of OpenCV's non-`plumb_bob` distortion vectors (rational, thin prism, tilted).
const OPENCV_EXTENDED_DISTORTION_LENS: [usize; 3] = [8, 12, 14];

/// A camera-intrinsics file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalibFormat {
    /// OpenCV `FileStorage` YAML (`%YAML:1.0`, `!!opencv-matrix`).
    OpenCv,
    /// ROS `camera_info` YAML (`camera_calibration`, `camera_info_manager`).
    Ros,
    /// KITTI object-benchmark `calib.txt` (`P0..P3`, `R0_rect`, `Tr_*`).
    Kitti,
}

impl CalibFormat {
    /// Every format.
    pub const ALL: [CalibFormat; 3] = [CalibFormat::OpenCv, CalibFormat::Ros, CalibFormat::Kitti];

    /// The name used on command lines (`--format opencv|ros|kitti`).
    pub fn name(self) -> &'static str {
        match self {
            CalibFormat::OpenCv => "opencv",
            CalibFormat::Ros => "ros",
            CalibFormat::Kitti => "kitti",
        }
    }
}

impl fmt::Display for CalibFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CalibFormat {
    type Err = Error;

    /// Parses `opencv`, `ros` or `kitti` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        CalibFormat::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            format_error("<argument>", "format", format!("opencv, ros or kitti, got '{}'", snippet(s)))
        })
    }
}

/// How to read an intrinsics file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// The file's format; `None` detects it from the text ([`detect_format`]).
    pub format: Option<CalibFormat>,
    /// Which KITTI camera to read, `0..=3` (`P0..P3`); default [`KITTI_DEFAULT_CAMERA`].
    pub kitti_camera: usize,
    /// `(width, height)` of the images, pixels. Required for KITTI files, which carry no size;
    /// ignored for the YAML formats, which carry their own (resize with [`Intrinsics::resized`]).
    pub image_size: Option<(u32, u32)>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { format: None, kitti_camera: KITTI_DEFAULT_CAMERA, image_size: None }
    }
}

impl ReadOptions {
    /// These options with the image size `width x height` pixels (needed for KITTI files).
    pub fn with_image_size(mut self, width: u32, height: u32) -> Self {
        self.image_size = Some((width, height));
        self
    }

    /// These options with the format forced to `format` (no detection).
    pub fn with_format(mut self, format: CalibFormat) -> Self {
        self.format = Some(format);
        self
    }
}

fn format_error(source_name: &str, field: impl Into<String>, expected: impl Into<String>) -> Error {
    Error::Format { source_name: source_name.to_owned(), field: field.into(), expected: expected.into() }
}

/// The first [`SNIPPET_CHARS`] characters of `s`, control characters escaped, for error messages.
fn snippet(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(SNIPPET_CHARS) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(SNIPPET_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// `field (line N)`.
fn at(field: &str, line: usize) -> String {
    format!("{field} (line {line})")
}

/// The format of an intrinsics file's text, or `None` when it looks like none of them.
///
/// OpenCV: a `%YAML:1.0` header or an `!!opencv-matrix` tag. KITTI: a top-level key `P0..P3`,
/// `R0_rect`/`R_rect` or `Tr_*`. ROS: a top-level `distortion_model`, `rectification_matrix`,
/// `projection_matrix` or `camera_name`. Else a top-level `camera_matrix` is read as OpenCV (the
/// two YAML readers accept the same keys).
pub fn detect_format(text: &str) -> Option<CalibFormat> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .collect();
    if lines.first().is_some_and(|l| l.starts_with("%YAML:")) || text.contains("!!opencv-matrix") {
        return Some(CalibFormat::OpenCv);
    }
    let top_keys: Vec<&str> = lines
        .iter()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split(|c: char| c == ':' || c.is_whitespace()).next())
        .collect();
    let has = |pred: &dyn Fn(&str) -> bool| top_keys.iter().any(|k| pred(k));
    if has(&|k| matches!(k, "P0" | "P1" | "P2" | "P3" | "R0_rect" | "R_rect") || k.starts_with("Tr_")) {
        return Some(CalibFormat::Kitti);
    }
    if has(&|k| {
        matches!(k, "distortion_model" | "rectification_matrix" | "projection_matrix" | "camera_name")
    }) {
        return Some(CalibFormat::Ros);
    }
    if has(&|k| k == "camera_matrix") {
        return Some(CalibFormat::OpenCv);
    }
    None
}

/// Intrinsics from the text of an intrinsics file, and the file's format. `source_name` names the
/// file in errors.
///
/// # Arguments
/// - `text`: the whole file.
/// - `source_name`: the file's name, for errors (`"<string>"` for text that came from no file).
/// - `opts`: format (`None`: detected), KITTI camera and image size (needed for KITTI only).
///
/// # Errors
/// [`Error::Format`] naming the file, the field and what was expected when the format cannot be
/// detected, a field is missing, not a finite number, a matrix has the wrong size, the distortion
/// model is not `plumb_bob`, or a KITTI file is read without an image size; [`Error::Parse`] for a
/// malformed KITTI file.
///
/// # Example
/// ```
/// use monovlm_calib::formats::{CalibFormat, ReadOptions, parse_intrinsics};
/// let text = "\
/// image_width: 640
/// image_height: 480
/// camera_name: cam
/// camera_matrix:
///   rows: 3
///   cols: 3
///   data: [500, 0, 320, 0, 500, 240, 0, 0, 1]
/// ";
/// let opts = ReadOptions::default();
/// let (k, format) = parse_intrinsics(text, "cam.yaml", &opts)?;
/// assert_eq!((format, k.fx(), k.width()), (CalibFormat::Ros, 500.0, 640));
/// let err = parse_intrinsics(&text.replace("500, 0, 320", "nan, 0, 320"), "cam.yaml", &opts).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "cam.yaml: camera_matrix.data[0] (line 7): expected a finite number, got 'nan'"
/// );
/// # Ok::<(), monovlm_calib::Error>(())
/// ```
pub fn parse_intrinsics(
    text: &str,
    source_name: &str,
    opts: &ReadOptions,
) -> Result<(Intrinsics, CalibFormat)> {
    let format = match opts.format {
        Some(format) => format,
        None => detect_format(text).ok_or_else(|| {
            let got = if text.trim().is_empty() {
                "an empty file".to_owned()
            } else {
                format!("'{}'", snippet(text.trim_start()))
            };
            format_error(
                source_name,
                "format",
                format!(
                    "an OpenCV FileStorage YAML (%YAML:1.0, camera_matrix), a ROS camera_info YAML \
                     (camera_matrix, distortion_model, projection_matrix) or a KITTI calib.txt \
                     (P0..P3), got {got}"
                ),
            )
        })?,
    };
    let k = match format {
        CalibFormat::OpenCv | CalibFormat::Ros => read_yaml_intrinsics(text, source_name)?,
        CalibFormat::Kitti => read_kitti_intrinsics(text, source_name, opts)?,
    };
    Ok((k, format))
}

/// Reads an intrinsics file: [`parse_intrinsics`] of its text, named by its path.
///
/// # Errors
/// [`Error::Io`] when it cannot be read, [`Error::Format`] (field `encoding`) when it is not UTF-8
/// text, else as [`parse_intrinsics`].
pub fn read_intrinsics(path: &Path, opts: &ReadOptions) -> Result<(Intrinsics, CalibFormat)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let source_name = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        format_error(
            &source_name,
            "encoding",
            format!("UTF-8 text, got invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
    })?;
    parse_intrinsics(&text, &source_name, opts)
}

/// The text of an intrinsics file holding `k` in `format`, readable by [`parse_intrinsics`] back to
/// the same values (floats are written with the shortest digits that round-trip; KITTI's layout
/// keeps 13 significant digits).
///
/// `camera_name` is written as ROS's `camera_name` and as an extra `camera_name` key of OpenCV files;
/// KITTI files have no place for it. KITTI files get `P2` = this camera (with its offset),
/// `P0`, `P1`, `P3` = `K [I | 0]`, `R0_rect` = identity and `Tr_velo_to_cam` = `Tr_imu_to_velo` =
/// `[I | 0]`: placeholders that make a complete file, not a calibration of those sensors.
///
/// # Errors
/// [`Error::Format`] (field `distortion`) when `k` has distortion and `format` is KITTI, whose
/// files describe rectified (undistorted) images: undistort first.
pub fn format_intrinsics(k: &Intrinsics, format: CalibFormat, camera_name: &str) -> Result<String> {
    format_intrinsics_for(k, format, camera_name, IN_MEMORY_SOURCE)
}

fn format_intrinsics_for(
    k: &Intrinsics,
    format: CalibFormat,
    camera_name: &str,
    source_name: &str,
) -> Result<String> {
    Ok(match format {
        CalibFormat::OpenCv => write_opencv(k, camera_name),
        CalibFormat::Ros => write_ros(k, camera_name),
        CalibFormat::Kitti => write_kitti(k, source_name)?,
    })
}

/// Distinguishes the temporary files of concurrent writes from one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `k` to `path` in `format` ([`format_intrinsics`]), atomically: into a temporary file
/// next to it, then renamed over it, so readers never see half a file.
///
/// # Errors
/// As [`format_intrinsics`] (naming `path`); [`Error::Io`] when the file cannot be written.
pub fn write_intrinsics(path: &Path, k: &Intrinsics, format: CalibFormat, camera_name: &str) -> Result<()> {
    let text = format_intrinsics_for(k, format, camera_name, &path.display().to_string())?;
    let Some(file_name) = path.file_name() else {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let tmp: PathBuf = path.with_file_name(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(source) = written {
        // Best effort: the write already failed, the error to report is that one.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: tmp, source });
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io { path: path.to_path_buf(), source }
    })
}

// --- reading ---

fn read_kitti_intrinsics(text: &str, source_name: &str, opts: &ReadOptions) -> Result<Intrinsics> {
    let calib = KittiCalib::parse(text, source_name)?;
    let cam = opts.kitti_camera;
    let field = format!("P{cam}");
    if cam > 3 {
        return Err(format_error(source_name, field, "a KITTI camera 0..=3 (P0..P3)"));
    }
    let (width, height) = opts.image_size.ok_or_else(|| {
        format_error(
            source_name,
            "image_size",
            "the image size from the caller (ReadOptions::image_size): KITTI calib files carry none",
        )
    })?;
    calib
        .intrinsics(cam, width, height)
        .map_err(|e| format_error(source_name, field, format!("a pinhole projection matrix ({e})")))
}

/// A matrix of a YAML file: `{rows, cols, data}`.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
    line: usize,
}

fn find<'e>(entries: &'e [yaml::Entry], key: &str) -> Option<&'e yaml::Entry> {
    entries.iter().find(|e| e.key == key)
}

fn scalar<'e>(
    entry: &'e yaml::Entry,
    field: &str,
    source_name: &str,
    expected: &str,
) -> Result<&'e yaml::Scalar> {
    match &entry.value {
        yaml::Value::Scalar(s) => Ok(s),
        _ => Err(format_error(
            source_name,
            at(field, entry.line),
            format!("{expected}, got a map or a sequence"),
        )),
    }
}

fn parse_finite(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `image_width` / `image_height`: required, a positive integer.
fn image_dim(root: &[yaml::Entry], key: &str, source_name: &str) -> Result<u32> {
    let expected = "a positive integer (pixels)";
    let entry = find(root, key)
        .ok_or_else(|| format_error(source_name, key, format!("{expected}; the key is missing")))?;
    let s = scalar(entry, key, source_name, expected)?;
    s.text.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        format_error(source_name, at(key, s.line), format!("{expected}, got '{}'", snippet(&s.text)))
    })
}

/// A non-negative matrix dimension `rows` / `cols` of `matrix_key`.
fn matrix_side(
    fields: &[yaml::Entry],
    matrix_key: &str,
    key: &str,
    line: usize,
    source_name: &str,
) -> Result<usize> {
    let field = format!("{matrix_key}.{key}");
    let expected = format!("an integer 0..={MAX_MATRIX_SIDE}");
    let entry = find(fields, key).ok_or_else(|| {
        format_error(source_name, at(&field, line), format!("{expected}; the key is missing"))
    })?;
    let s = scalar(entry, &field, source_name, &expected)?;
    s.text.parse::<usize>().ok().filter(|v| *v <= MAX_MATRIX_SIDE).ok_or_else(|| {
        format_error(source_name, at(&field, s.line), format!("{expected}, got '{}'", snippet(&s.text)))
    })
}

/// The matrix under `key`, `None` when the key is absent.
fn matrix(root: &[yaml::Entry], key: &str, source_name: &str) -> Result<Option<Matrix>> {
    let Some(entry) = find(root, key) else { return Ok(None) };
    let yaml::Value::Map(fields) = &entry.value else {
        return Err(format_error(
            source_name,
            at(key, entry.line),
            "a matrix: a map of rows, cols and data (a [..] sequence)",
        ));
    };
    let rows = matrix_side(fields, key, "rows", entry.line, source_name)?;
    let cols = matrix_side(fields, key, "cols", entry.line, source_name)?;
    let data_field = format!("{key}.data");
    let data_entry = find(fields, "data").ok_or_else(|| {
        format_error(
            source_name,
            at(&data_field, entry.line),
            "a [..] sequence of numbers; the key is missing",
        )
    })?;
    let yaml::Value::Seq(items) = &data_entry.value else {
        return Err(format_error(
            source_name,
            at(&data_field, data_entry.line),
            "a [..] sequence of numbers",
        ));
    };
    let data = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_finite(&item.text).ok_or_else(|| {
                format_error(
                    source_name,
                    at(&format!("{data_field}[{i}]"), item.line),
                    format!("a finite number, got '{}'", snippet(&item.text)),
                )
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    if data.len() != rows * cols {
        return Err(format_error(
            source_name,
            at(&data_field, data_entry.line),
            format!("rows x cols = {rows}x{cols} = {} values, got {}", rows * cols, data.len()),
        ));
    }
    Ok(Some(Matrix { rows, cols, data, line: entry.line }))
}

fn expect_shape(m: &Matrix, key: &str, rows: usize, cols: usize, source_name: &str) -> Result<()> {
    if (m.rows, m.cols) == (rows, cols) {
        Ok(())
    } else {
        Err(format_error(
            source_name,
            at(key, m.line),
            format!("a {rows}x{cols} matrix, got {}x{}", m.rows, m.cols),
        ))
    }
}

fn read_yaml_intrinsics(text: &str, source_name: &str) -> Result<Intrinsics> {
    let root = yaml::parse(text, source_name)?;
    let width = image_dim(&root, "image_width", source_name)?;
    let height = image_dim(&root, "image_height", source_name)?;

    let key = "camera_matrix";
    let k = matrix(&root, key, source_name)?.ok_or_else(|| {
        format_error(source_name, key, "a 3x3 matrix [fx 0 cx; 0 fy cy; 0 0 1]; the key is missing")
    })?;
    expect_shape(&k, key, 3, 3, source_name)?;
    let &[fx, skew, cx, k10, fy, cy, k20, k21, k22] = k.data.as_slice() else {
        return Err(format_error(source_name, at(key, k.line), "9 values")); // unreachable: shape checked
    };
    if skew != 0.0 {
        return Err(format_error(
            source_name,
            at("camera_matrix.data[1]", k.line),
            format!("0 (zero skew; the camera model has none), got {skew}"),
        ));
    }
    if (k10, k20, k21, k22) != (0.0, 0.0, 0.0, 1.0) {
        return Err(format_error(
            source_name,
            at(key, k.line),
            format!("[fx 0 cx; 0 fy cy; 0 0 1], got rows 2 and 3 [{k10} fy cy; {k20} {k21} {k22}]"),
        ));
    }
    let intrinsics = Intrinsics::new(fx, fy, cx, cy, width, height)
        .map_err(|e| format_error(source_name, at(key, k.line), format!("a pinhole camera ({e})")))?;

    let distortion = read_distortion(&root, source_name)?;

    if let Some(r) = matrix(&root, "rectification_matrix", source_name)? {
        expect_shape(&r, "rectification_matrix", 3, 3, source_name)?;
    }
    let (tx_m, ty_m) = match matrix(&root, "projection_matrix", source_name)? {
        None => (0.0, 0.0),
        Some(p) => {
            let key = "projection_matrix";
            expect_shape(&p, key, 3, 4, source_name)?;
            let &[pfx, _, _, p03, _, pfy, _, p13, ..] = p.data.as_slice() else {
                return Err(format_error(source_name, at(key, p.line), "12 values")); // shape checked
            };
            if !(pfx > 0.0 && pfy > 0.0) {
                return Err(format_error(
                    source_name,
                    at(key, p.line),
                    format!("positive focal lengths P[0][0], P[1][1], got {pfx}, {pfy}"),
                ));
            }
            // `+ 0.0` turns the -0.0 of a zero translation into 0.0.
            (p03 / -pfx + 0.0, p13 / -pfy + 0.0)
        }
    };
    let intrinsics = intrinsics
        .with_offset_m(tx_m, ty_m)
        .map_err(|e| format_error(source_name, "projection_matrix", format!("a finite offset ({e})")))?;
    Ok(match distortion {
        Some(d) => intrinsics.with_distortion(d),
        None => intrinsics,
    })
}

/// The `plumb_bob` distortion of a YAML file (`None`: absent, empty or all zero).
fn read_distortion(root: &[yaml::Entry], source_name: &str) -> Result<Option<Distortion>> {
    let key = "distortion_coefficients";
    let coefficients = match matrix(root, key, source_name)? {
        None => Vec::new(),
        Some(m) if m.rows > 1 && m.cols > 1 => {
            return Err(format_error(
                source_name,
                at(key, m.line),
                format!("a 1xN or Nx1 vector, got {}x{}", m.rows, m.cols),
            ));
        }
        Some(m) => m.data,
    };
    let all_zero = coefficients.iter().all(|c| *c == 0.0);
    if let Some(entry) = find(root, "distortion_model") {
        let expected = "plumb_bob (k1 k2 p1 p2 k3; other models are not supported)";
        let model = scalar(entry, "distortion_model", source_name, expected)?;
        let ok = model.text == "plumb_bob" || (model.text.is_empty() && all_zero);
        if !ok {
            return Err(format_error(
                source_name,
                at("distortion_model", model.line),
                format!("{expected}, got '{}'", snippet(&model.text)),
            ));
        }
    }
    let field = || match find(root, key) {
        Some(e) => at(key, e.line),
        None => key.to_owned(),
    };
    match *coefficients.as_slice() {
        [] => Ok(None),
        [k1, k2, p1, p2] => Distortion::new(k1, k2, p1, p2, 0.0).map(Some),
        [k1, k2, p1, p2, k3] => Distortion::new(k1, k2, p1, p2, k3).map(Some),
        _ => {
            let n = coefficients.len();
            let why = if OPENCV_EXTENDED_DISTORTION_LENS.contains(&n) {
                " (OpenCV's rational / thin-prism / tilted model: not supported, and not truncated)"
            } else {
                ""
            };
            Err(format_error(
                source_name,
                field(),
                format!("4 or 5 plumb_bob coefficients (k1 k2 p1 p2 [k3]), got {n}{why}"),
            ))
        }
    }
    .map_err(|e| match e {
        Error::InvalidDistortion { .. } => format_error(source_name, field(), e.to_string()),
        e => e,
    })
}

// --- writing ---

/// `v` with the shortest digits that parse back to it, always with a `.` and a signed exponent
/// (`1.0e-7`, not `1e-7`), the float form YAML 1.1 readers (PyYAML, used by ROS Python) require.
fn fmt_f64(v: f64) -> String {
    let s = format!("{v:?}");
    match s.split_once('e') {
        None => s,
        Some((mantissa, exponent)) => {
            let mantissa = if mantissa.contains('.') { mantissa.to_owned() } else { format!("{mantissa}.0") };
            let exponent =
                if exponent.starts_with('-') { exponent.to_owned() } else { format!("+{exponent}") };
            format!("{mantissa}e{exponent}")
        }
    }
}

/// `name` as a YAML scalar: plain when it cannot be mistaken for another type, else double-quoted
/// (`\\`, `\"`, `\n`, `\t`, `\r` escaped; other control characters dropped).
fn yaml_string(name: &str) -> String {
    const YAML_WORDS: [&str; 11] = ["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", ""];
    let plain = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !YAML_WORDS.iter().any(|w| w.eq_ignore_ascii_case(name));
    if plain {
        return name.to_owned();
    }
    let mut out = String::from("\"");
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `data: [ ... ]` with one matrix row per line, continuation lines indented by `indent`.
fn flow_rows(data: &[f64], cols: usize, indent: &str) -> String {
    let rows: Vec<String> = data
        .chunks(cols.max(1))
        .map(|row| row.iter().map(|v| fmt_f64(*v)).collect::<Vec<_>>().join(", "))
        .collect();
    format!("[{}]", rows.join(&format!(",\n{indent}")))
}

fn camera_matrix_values(k: &Intrinsics) -> [f64; 9] {
    [k.fx(), 0.0, k.cx(), 0.0, k.fy(), k.cy(), 0.0, 0.0, 1.0]
}

fn distortion_values(k: &Intrinsics) -> [f64; 5] {
    k.distortion().map_or([0.0; 5], Distortion::coefficients)
}

fn projection_values(k: &Intrinsics) -> Vec<f64> {
    // `+ 0.0` writes the -0.0 of `-fx * 0.0` as 0.0.
    k.projection_matrix().iter().flatten().map(|v| v + 0.0).collect()
}

fn write_opencv(k: &Intrinsics, camera_name: &str) -> String {
    let matrix = |key: &str, rows: usize, cols: usize, data: &[f64]| {
        format!(
            "{key}: !!opencv-matrix\n   rows: {rows}\n   cols: {cols}\n   dt: d\n   data: {}\n",
            flow_rows(data, cols, "       ")
        )
    };
    let mut out = String::from("%YAML:1.0\n---\n");
    if !camera_name.is_empty() {
        out += &format!("camera_name: {}\n", yaml_string(camera_name));
    }
    out += &format!("image_width: {}\nimage_height: {}\n", k.width(), k.height());
    out += &matrix("camera_matrix", 3, 3, &camera_matrix_values(k));
    out += &matrix("distortion_coefficients", 1, 5, &distortion_values(k));
    if k.offset_m() != (0.0, 0.0) {
        out += &matrix("projection_matrix", 3, 4, &projection_values(k));
    }
    out
}

fn write_ros(k: &Intrinsics, camera_name: &str) -> String {
    let matrix = |key: &str, rows: usize, cols: usize, data: &[f64]| {
        format!("{key}:\n  rows: {rows}\n  cols: {cols}\n  data: {}\n", flow_rows(data, cols, "         "))
    };
    let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let mut out = format!(
        "image_width: {}\nimage_height: {}\ncamera_name: {}\n",
        k.width(),
        k.height(),
        yaml_string(camera_name)
    );
    out += &matrix("camera_matrix", 3, 3, &camera_matrix_values(k));
    out += "distortion_model: plumb_bob\n";
    out += &matrix("distortion_coefficients", 1, 5, &distortion_values(k));
    out += &matrix("rectification_matrix", 3, 3, &identity);
    out += &matrix("projection_matrix", 3, 4, &projection_values(k));
    out
}

fn write_kitti(k: &Intrinsics, source_name: &str) -> Result<String> {
    if k.distortion().is_some() {
        return Err(format_error(
            source_name,
            "distortion",
            "none: KITTI calib files describe rectified (undistorted) images; undistort first",
        ));
    }
    let reference = [[k.fx(), 0.0, k.cx(), 0.0], [0.0, k.fy(), k.cy(), 0.0], [0.0, 0.0, 1.0, 0.0]];
    let identity_3x4 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
    let mut p = [reference; 4];
    p[KITTI_DEFAULT_CAMERA] = k.projection_matrix();
    let calib = KittiCalib {
        p,
        r0_rect: Some([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        tr_velo_to_cam: Some(identity_3x4),
        tr_imu_to_velo: Some(identity_3x4),
    };
    Ok(calib.to_text())
}

mod yaml;
