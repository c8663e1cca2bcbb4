//! Predictions to score: a JSON-lines file, one line per sample, keyed by `instance_id` + `ann_id`.
//!
//! Each line carries either a parsed box
//!
//! ```text
//! {"instance_id": 4567, "ann_id": 0, "bbox_3d": [x, y, z, l, w, h, yaw], "bbox_2d": [x1, y1, x2, y2]}
//! ```
//!
//! (`bbox_2d` optional) or the model's raw text, parsed with [`monovlm_runtime::protocol::parse_answer`]:
//!
//! ```text
//! {"instance_id": 4567, "ann_id": 0, "text": "<think>...</think><answer>{...}</answer>"}
//! ```
//!
//! 3D boxes are in the camera frame (metres, radians, geometric centre); 2D boxes in pixels of the
//! dataset's image (raw model text must have been mapped back from the model-input image). When a
//! line has both, `bbox_3d` is used. `instanceID` is accepted for `instance_id`.
//!
//! A line whose key cannot be read is a [`Problem`] (its sample then counts as missing); a line
//! whose boxes are malformed, or whose text does not parse, is a [`Predicted::FormatFailure`]
//! (IoU 0). A repeated key is a problem; the first line is kept.

use std::collections::BTreeMap;
use std::path::Path;

use monovlm_calib::{Box2d, Box3d};
use monovlm_runtime::protocol::parse_answer;
use serde::Serialize;
use serde_json::Value;

use crate::data::mono3drefer::{Location, Problem, SampleKey};
use crate::error::{Error, Result};

/// What a prediction line gave for one sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Predicted {
    /// A box (and maybe a 2D box).
    Boxes {
        /// 3D box in the camera frame.
        bbox_3d: Box3d,
        /// 2D box in image pixels, when given.
        bbox_2d: Option<Box2d>,
    },
    /// The line's boxes or text could not be parsed: scored as IoU 0.
    FormatFailure {
        /// Why.
        reason: String,
    },
}

/// One prediction as written to a JSON-lines file (parsed boxes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PredictionLine {
    /// `instanceID`.
    pub instance_id: u64,
    /// `ann_id`.
    pub ann_id: u64,
    /// `[x, y, z, l, w, h, yaw]`, camera frame, metres and radians.
    pub bbox_3d: [f64; 7],
    /// `[x1, y1, x2, y2]`, image pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbox_2d: Option<[f64; 4]>,
}

impl PredictionLine {
    /// A line for `key` with the given boxes.
    pub fn new(key: SampleKey, bbox_3d: &Box3d, bbox_2d: Option<&Box2d>) -> Self {
        Self {
            instance_id: key.instance_id,
            ann_id: key.ann_id,
            bbox_3d: bbox_3d.to_array(),
            bbox_2d: bbox_2d.map(Box2d::to_array),
        }
    }

    /// The JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes prediction lines as a JSON-lines file.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn write_prediction_lines(path: &Path, lines: &[PredictionLine]) -> Result<()> {
    let mut text = String::new();
    for line in lines {
        text += &line.to_json_line();
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The predictions of a JSON-lines file, by sample key.
#[derive(Clone, Debug, Default)]
pub struct PredictionSet {
    /// The predictions, by key.
    pub by_key: BTreeMap<SampleKey, Predicted>,
    /// Lines that could not be attributed to a sample, and repeated keys.
    pub problems: Vec<Problem>,
    /// Non-blank lines read.
    pub lines: usize,
}

fn key_field(obj: &serde_json::Map<String, Value>, names: &[&str]) -> std::result::Result<u64, String> {
    let (name, v) = names
        .iter()
        .find_map(|n| obj.get(*n).map(|v| (*n, v)))
        .ok_or_else(|| format!("missing {}", names.first().copied().unwrap_or_default()))?;
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| format!("{name} must be a non-negative integer, got {v}"))
}

fn numbers<const N: usize>(v: &Value, field: &str) -> std::result::Result<[f64; N], String> {
    let arr = v
        .as_array()
        .filter(|a| a.len() == N)
        .ok_or_else(|| format!("{field} must be an array of {N} numbers"))?;
    let mut out = [0.0; N];
    for (i, (slot, x)) in out.iter_mut().zip(arr).enumerate() {
        *slot = x
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{field}[{i}] = {x} is not a finite number"))?;
    }
    Ok(out)
}

/// The boxes of a line, and why its optional `bbox_2d` was ignored when it was (the 3D box, which
/// is what Mono3DVG scores, is kept; the 2D box then counts as missing).
fn parse_boxes(obj: &serde_json::Map<String, Value>) -> (Predicted, Option<String>) {
    let mut ignored_2d = None;
    let result = if let Some(v) = obj.get("bbox_3d") {
        (|| {
            let [x, y, z, l, w, h, yaw] = numbers::<7>(v, "bbox_3d")?;
            let bbox_3d = Box3d::new(x, y, z, l, w, h, yaw).map_err(|e| e.to_string())?;
            let bbox_2d = match obj.get("bbox_2d") {
                None | Some(Value::Null) => None,
                Some(v) => numbers::<4>(v, "bbox_2d")
                    .and_then(|[x1, y1, x2, y2]| Box2d::new(x1, y1, x2, y2).map_err(|e| e.to_string()))
                    .map_err(|e| ignored_2d = Some(format!("bbox_2d ignored (2D scored as missing): {e}")))
                    .ok(),
            };
            Ok(Predicted::Boxes { bbox_3d, bbox_2d })
        })()
    } else if let Some(v) = obj.get("text") {
        match v.as_str() {
            Some(text) => parse_answer(text)
                .map(|a| Predicted::Boxes { bbox_3d: a.bbox_3d, bbox_2d: Some(a.bbox_2d) })
                .map_err(|e| e.to_string()),
            None => Err("text must be a string".to_owned()),
        }
    } else {
        Err("neither bbox_3d nor text".to_owned())
    };
    (result.unwrap_or_else(|reason| Predicted::FormatFailure { reason }), ignored_2d)
}

impl PredictionSet {
    /// Parses JSON-lines text; `file` names it in problems.
    pub fn parse(text: &str, file: &Path) -> Self {
        let mut set = Self::default();
        let mut first_line: BTreeMap<SampleKey, usize> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            set.lines += 1;
            let value: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    set.problems.push(Problem {
                        file: file.to_path_buf(),
                        location: Location::Line(line_no),
                        message: format!("not JSON: {e}"),
                    });
                    continue;
                }
            };
            let Some(obj) = value.as_object() else {
                set.problems.push(Problem {
                    file: file.to_path_buf(),
                    location: Location::Line(line_no),
                    message: "expected a JSON object".to_owned(),
                });
                continue;
            };
            let key = key_field(obj, &["instance_id", "instanceID"]).and_then(|instance_id| {
                key_field(obj, &["ann_id"]).map(|ann_id| SampleKey { instance_id, ann_id })
            });
            let key = match key {
                Ok(k) => k,
                Err(message) => {
                    set.problems.push(Problem {
                        file: file.to_path_buf(),
                        location: Location::Line(line_no),
                        message,
                    });
                    continue;
                }
            };
            if let Some(first) = first_line.get(&key) {
                set.problems.push(Problem {
                    file: file.to_path_buf(),
                    location: Location::Line(line_no),
                    message: format!("{key} repeats line {first}; the first is kept"),
                });
                continue;
            }
            first_line.insert(key, line_no);
            let (predicted, ignored_2d) = parse_boxes(obj);
            if let Some(message) = ignored_2d {
                set.problems.push(Problem {
                    file: file.to_path_buf(),
                    location: Location::Line(line_no),
                    message,
                });
            }
            set.by_key.insert(key, predicted);
        }
        set
    }

    /// Reads a JSON-lines file.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::parse(&text, path))
    }
}
