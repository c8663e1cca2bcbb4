//! The Mono3DRefer layout, as the Mono3DVG code reads it: reader ([`Dataset`]) and writer
//! ([`DatasetWriter`]).
//!
//! ```text
//! ROOT/images/NNNNNN.png            6-digit image names
//! ROOT/calib/NNNNNN.txt             KITTI calibration (P0..P3, R0_rect, Tr_velo_to_cam); camera = P2
//! ROOT/Mono3DRefer_{train,val,test}_image.txt   one image name per line, no extension
//! ROOT/Mono3DRefer.json             array of {"im_name", "instanceID", "ann_id", "objectName",
//!                                   "description", "label_2"}; label_2 is a KITTI label written as a
//!                                   Python list literal string: "['Car', 0.0, 0, -1.58, ...]"
//! ROOT/test_instanceID_split.json   {"Unique": [ids], "Multiple": [...], "Near", "Medium", "Far",
//!                                   "Easy", "Moderate", "Hard"} (optional)
//! ```
//!
//! As in the Mono3DVG code, an image name is a decimal integer and its files are
//! `'%06d.png' % int(name)` and `'%06d.txt' % int(name)`; a record belongs to the split whose list
//! holds its `im_name`.
//!
//! Nothing is dropped silently: every malformed record, line or file is a [`Problem`] naming the file
//! and the record index (0-based, in the JSON array) or line (1-based). With [`Strictness::Lenient`]
//! the offending record is skipped and the problem listed in [`LoadReport`]; with
//! [`Strictness::Strict`] loading fails with [`Error::Rejected`] listing all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use monovlm_calib::kitti::{Difficulty, KittiCalib, KittiLabel};
use monovlm_calib::{Box3d, Intrinsics};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Folder of the images, under the dataset root.
pub const IMAGES_DIR: &str = "images";
/// Folder of the KITTI calibration files, under the dataset root.
pub const CALIB_DIR: &str = "calib";
/// The annotation file (JSON array of records), under the dataset root.
pub const ANNOTATIONS_FILE: &str = "Mono3DRefer.json";
/// The instance categories of the test split (Unique/Multiple, Near/Medium/Far, Easy/Moderate/Hard).
pub const INSTANCE_SPLIT_FILE: &str = "test_instanceID_split.json";
/// The KITTI camera whose projection matrix (`P2`) describes the images.
pub const KITTI_CAMERA: usize = 2;

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images.
    Val,
    /// Test images (the published numbers).
    Test,
}

impl Split {
    /// All splits, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// The split's image list, e.g. `Mono3DRefer_test_image.txt`.
    pub fn file_name(self) -> String {
        format!("Mono3DRefer_{}_image.txt", self.as_str())
    }

    fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::UnknownSplit(s.to_owned())),
        }
    }
}

/// What to do with malformed records, lines and files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strictness {
    /// Fail with [`Error::Rejected`] (listing every problem) when anything is malformed.
    Strict,
    /// Skip what is malformed and list it in [`LoadReport::problems`].
    #[default]
    Lenient,
}

/// Where in a file a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// The file as a whole (missing, unreadable, wrong shape).
    File,
    /// A record of a JSON array, 0-based index.
    Record(usize),
    /// A line of a text file, 1-based.
    Line(usize),
    /// A key of a JSON object.
    Key(&'static str),
}

/// One malformed thing found while reading a dataset: the file, where in it, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Where in the file.
    pub location: Location,
    /// What was wrong.
    pub message: String,
}

impl Problem {
    fn new(file: &Path, location: Location, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), location, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.location {
            Location::File => write!(f, "{file}: {}", self.message),
            Location::Record(i) => write!(f, "{file}: record {i}: {}", self.message),
            Location::Line(n) => write!(f, "{file}:{n}: {}", self.message),
            Location::Key(k) => write!(f, "{file}: key {k:?}: {}", self.message),
        }
    }
}

/// The key that identifies a sample (one description of one object): `instanceID` + `ann_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleKey {
    /// The object (`instanceID`); several descriptions may share it.
    pub instance_id: u64,
    /// The description of that object (`ann_id`).
    pub ann_id: u64,
}

impl fmt::Display for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instanceID {} ann_id {}", self.instance_id, self.ann_id)
    }
}

/// One referring expression and the object it refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Image name as written in the annotation file (decimal digits, normally 6).
    pub image: String,
    /// The object (`instanceID`).
    pub instance_id: u64,
    /// The description of that object (`ann_id`).
    pub ann_id: u64,
    /// The object's class as the descriptions name it (`objectName`, lower case: `car`, `pedestrian`, ...).
    pub object_name: String,
    /// The referring expression.
    pub description: String,
    /// The object's KITTI label (`label_2`): 2D box, truncation, occlusion, bottom-centre 3D box.
    pub label: KittiLabel,
    /// The label's 3D box (geometric centre convention of [`Box3d`]).
    pub box3d: Box3d,
}

impl Record {
    /// A record; the 3D box is computed from the label.
    ///
    /// # Errors
    /// [`Error::ImageName`] when `image` is not decimal digits; [`Error::Calib`] when the label's
    /// dimensions are not positive.
    pub fn new(
        image: &str,
        key: SampleKey,
        object_name: &str,
        description: &str,
        label: KittiLabel,
    ) -> Result<Self> {
        image_number(image)?;
        let box3d = label.box3d()?;
        Ok(Self {
            image: image.to_owned(),
            instance_id: key.instance_id,
            ann_id: key.ann_id,
            object_name: object_name.to_owned(),
            description: description.to_owned(),
            label,
            box3d,
        })
    }

    /// The sample key (`instanceID` + `ann_id`).
    pub fn key(&self) -> SampleKey {
        SampleKey { instance_id: self.instance_id, ann_id: self.ann_id }
    }
}

/// The image name of image number `index`: 6 digits, zero-padded (`000123`).
pub fn image_name(index: u32) -> String {
    format!("{index:06}")
}

/// The number of an image name (`"000123"` -> 123), as `int(im_name)` in the Mono3DVG code.
///
/// # Errors
/// [`Error::ImageName`] unless the name is 1 to 18 decimal digits.
pub fn image_number(name: &str) -> Result<u64> {
    if name.is_empty() || name.len() > 18 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::ImageName(name.to_owned()));
    }
    name.parse::<u64>().map_err(|_| Error::ImageName(name.to_owned()))
}

/// The file stem of an image's files: `'%06d' % int(name)`.
fn file_stem(name: &str) -> Result<String> {
    Ok(format!("{:06}", image_number(name)?))
}

// ------------------------------------------------------------------------------------------------
// label_2: a KITTI label as a Python list literal

/// One element of a Python list literal: a string or the text of a number.
#[derive(Debug, PartialEq)]
enum PyItem {
    Str(String),
    Num(String),
}

/// Splits a flat Python list literal (`['Car', 0.0, 0, -1.58]`) into its elements. Strings in `'`
/// or `"` with backslash escapes; numbers as written, optionally wrapped in a call such as
/// `np.float64(1.5)` or `float(1.5)`; a trailing comma is allowed.
fn parse_py_list(text: &str) -> std::result::Result<Vec<PyItem>, String> {
    let chars: Vec<char> = text.trim().chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    if chars.first() != Some(&'[') {
        return Err("expected a Python list literal starting with '['".to_owned());
    }
    i += 1;
    let mut items = Vec::new();
    loop {
        skip_ws(&mut i);
        match chars.get(i) {
            None => return Err("unterminated list: missing ']'".to_owned()),
            Some(']') => {
                i += 1;
                break;
            }
            Some(&q) if q == '\'' || q == '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!("unterminated string starting at element {}", items.len()));
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(&c) => s.push(c),
                                None => return Err("dangling backslash".to_owned()),
                            }
                            i += 2;
                        }
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                items.push(PyItem::Str(s));
            }
            Some(_) => {
                let start = i;
                let mut depth = 0usize;
                while let Some(&c) = chars.get(i) {
                    match c {
                        '(' => depth += 1,
                        ')' => depth = depth.saturating_sub(1),
                        ',' | ']' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                let raw: String = chars[start..i].iter().collect();
                items.push(PyItem::Num(number_text(raw.trim(), items.len())?));
            }
        }
        skip_ws(&mut i);
        match chars.get(i) {
            Some(',') => i += 1,
            Some(']') => {}
            Some(c) => {
                return Err(format!("expected ',' or ']' after element {}, got '{c}'", items.len() - 1));
            }
            None => return Err("unterminated list: missing ']'".to_owned()),
        }
    }
    skip_ws(&mut i);
    if i != chars.len() {
        return Err("unexpected text after the closing ']'".to_owned());
    }
    Ok(items)
}

/// The number inside `raw` (unwrapping one call such as `np.float64(...)`), checked to be a finite
/// decimal number.
fn number_text(raw: &str, index: usize) -> std::result::Result<String, String> {
    let inner = match (raw.find('('), raw.strip_suffix(')')) {
        (Some(open), Some(body)) => body.get(open + 1..).unwrap_or_default().trim(),
        _ => raw,
    };
    let ok = !inner.is_empty()
        && inner.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        && inner.parse::<f64>().is_ok_and(f64::is_finite);
    if ok { Ok(inner.to_owned()) } else { Err(format!("element {index}: '{raw}' is not a finite number")) }
}

/// Parses a KITTI label written as a Python list literal, the `label_2` field of `Mono3DRefer.json`:
/// `['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]`
/// (type, truncated, occluded, alpha, x1 y1 x2 y2, h w l, bottom-centre x y z, rotation_y, optional
/// score). Quotes `'` or `"`, integers or floats (`0` or `0.0` for occluded), any spacing.
///
/// # Errors
/// [`Error::Label2`] naming the element when the literal is malformed or a field invalid.
///
/// # Example
/// ```
/// use monovlm_trainer::data::mono3drefer::parse_label_2;
/// let label = parse_label_2("['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]")?;
/// assert_eq!(label.class, "Car");
/// assert_eq!(label.location_m, [-0.65, 1.71, 46.70]);
/// # Ok::<(), monovlm_trainer::Error>(())
/// ```
pub fn parse_label_2(text: &str) -> Result<KittiLabel> {
    let items = parse_py_list(text).map_err(Error::Label2)?;
    label_from_items(items)
}

fn label_from_items(items: Vec<PyItem>) -> Result<KittiLabel> {
    if !(15..=16).contains(&items.len()) {
        return Err(Error::Label2(format!(
            "a KITTI label has 15 elements (16 with score), got {}",
            items.len()
        )));
    }
    let mut fields = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match (i, item) {
            (0, PyItem::Str(class)) => {
                if class.is_empty() || class.chars().any(char::is_whitespace) {
                    return Err(Error::Label2(format!("element 0 (type) {class:?} must be one word")));
                }
                fields.push(class);
            }
            (0, PyItem::Num(n)) => {
                return Err(Error::Label2(format!("element 0 (type) must be a string, got {n}")));
            }
            (_, PyItem::Str(s)) => {
                return Err(Error::Label2(format!("element {i} must be a number, got the string {s:?}")));
            }
            // occluded is an integer in KITTI's files; `0.0` as written by float() is accepted.
            (2, PyItem::Num(n)) => match n.parse::<f64>() {
                Ok(v) if v.fract() == 0.0 && (-1.0..=3.0).contains(&v) => fields.push(format!("{v:.0}")),
                _ => fields.push(n),
            },
            (_, PyItem::Num(n)) => fields.push(n),
        }
    }
    // One KITTI line: the label parser of monovlm-calib does the field checks.
    KittiLabel::parse_line(&fields.join(" "), "label_2", 1).map_err(|e| match e {
        monovlm_calib::Error::Parse { message, .. } => Error::Label2(message),
        other => Error::Label2(other.to_string()),
    })
}

/// A Python float literal that reads back to the same `f64` (shortest round-trip digits, `.0` kept).
fn py_float(v: f64) -> String {
    format!("{v:?}")
}

/// A Python string literal in single quotes.
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A KITTI label as the Python list literal of `label_2` (`str()` of the Mono3DRefer list):
/// `['Car', 0.0, 0, -1.58, ...]`. Floats are written with the shortest digits that read back to the
/// same `f64`, so [`parse_label_2`] gives the label back exactly.
pub fn format_label_2(label: &KittiLabel) -> String {
    let b = &label.bbox;
    let mut items = vec![py_str(&label.class), py_float(label.truncated), label.occluded.to_string()];
    items.extend(
        [label.alpha, b.x1, b.y1, b.x2, b.y2]
            .into_iter()
            .chain(label.hwl_m)
            .chain(label.location_m)
            .chain([label.rotation_y])
            .chain(label.score)
            .map(py_float),
    );
    format!("[{}]", items.join(", "))
}

// ------------------------------------------------------------------------------------------------
// files

/// One record of `Mono3DRefer.json` as stored (field names and order of the Mono3DVG files).
#[derive(Debug, Serialize, Deserialize)]
struct RecordJson {
    im_name: String,
    #[serde(rename = "instanceID")]
    instance_id: u64,
    ann_id: u64,
    #[serde(rename = "objectName")]
    object_name: String,
    description: String,
    label_2: Label2Json,
}

/// `label_2` as a Python literal string (the Mono3DVG files) or, leniently, as a JSON array.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Label2Json {
    Text(String),
    List(Vec<Value>),
}

impl Label2Json {
    fn to_label(&self) -> Result<KittiLabel> {
        match self {
            Label2Json::Text(text) => parse_label_2(text),
            Label2Json::List(values) => {
                let items = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(PyItem::Str(s.clone())),
                        Value::Number(n) => number_text(&n.to_string(), i).map(PyItem::Num),
                        other => Err(format!("element {i}: expected a string or number, got {other}")),
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(Error::Label2)?;
                label_from_items(items)
            }
        }
    }
}

fn record_to_json(record: &Record) -> RecordJson {
    RecordJson {
        im_name: record.image.clone(),
        instance_id: record.instance_id,
        ann_id: record.ann_id,
        object_name: record.object_name.clone(),
        description: record.description.clone(),
        label_2: Label2Json::Text(format_label_2(&record.label)),
    }
}

/// Depth (m) up to which an object is Near.
pub const NEAR_MAX_DEPTH_M: f64 = 15.0;
/// Depth (m) up to which an object is Medium; beyond it, Far.
pub const MEDIUM_MAX_DEPTH_M: f64 = 35.0;

/// Depth band of the ground truth (Mono3DRefer's Near / Medium / Far).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DistanceBand {
    /// 0-15 m.
    Near,
    /// 15-35 m.
    Medium,
    /// Over 35 m.
    Far,
}

/// The depth band of a ground-truth depth.
pub fn distance_band(depth_m: f64) -> DistanceBand {
    if depth_m <= NEAR_MAX_DEPTH_M {
        DistanceBand::Near
    } else if depth_m <= MEDIUM_MAX_DEPTH_M {
        DistanceBand::Medium
    } else {
        DistanceBand::Far
    }
}

/// Object categories of the test split (`test_instanceID_split.json`), as sets of `instanceID`s.
///
/// An empty `multiple` means "every instance not in `unique`" (the reference evaluator tests
/// `in Unique` and counts everything else as Multiple).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceSplit {
    /// The only instance of its class in its image.
    pub unique: BTreeSet<u64>,
    /// Not the only one of its class.
    pub multiple: BTreeSet<u64>,
    /// Depth 0-15 m.
    pub near: BTreeSet<u64>,
    /// Depth 15-35 m.
    pub medium: BTreeSet<u64>,
    /// Depth over 35 m.
    pub far: BTreeSet<u64>,
    /// KITTI easy.
    pub easy: BTreeSet<u64>,
    /// KITTI moderate.
    pub moderate: BTreeSet<u64>,
    /// KITTI hard.
    pub hard: BTreeSet<u64>,
}

impl InstanceSplit {
    /// Files instance `id` under its uniqueness, the band of its depth and its difficulty (none
    /// when it meets no level).
    pub fn insert(&mut self, id: u64, unique: bool, depth_m: f64, difficulty: Option<Difficulty>) {
        if unique { &mut self.unique } else { &mut self.multiple }.insert(id);
        match distance_band(depth_m) {
            DistanceBand::Near => &mut self.near,
            DistanceBand::Medium => &mut self.medium,
            DistanceBand::Far => &mut self.far,
        }
        .insert(id);
        if let Some(d) = difficulty {
            match d {
                Difficulty::Easy => &mut self.easy,
                Difficulty::Moderate => &mut self.moderate,
                Difficulty::Hard => &mut self.hard,
            }
            .insert(id);
        }
    }
}

impl InstanceSplit {
    /// The JSON keys, in file order.
    pub const KEYS: [&'static str; 8] =
        ["Unique", "Multiple", "Near", "Medium", "Far", "Easy", "Moderate", "Hard"];

    fn sets(&self) -> [&BTreeSet<u64>; 8] {
        [
            &self.unique,
            &self.multiple,
            &self.near,
            &self.medium,
            &self.far,
            &self.easy,
            &self.moderate,
            &self.hard,
        ]
    }

    fn sets_mut(&mut self) -> [&mut BTreeSet<u64>; 8] {
        [
            &mut self.unique,
            &mut self.multiple,
            &mut self.near,
            &mut self.medium,
            &mut self.far,
            &mut self.easy,
            &mut self.moderate,
            &mut self.hard,
        ]
    }

    /// The file's JSON: every key, ids ascending.
    pub fn to_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = Self::KEYS
            .iter()
            .zip(self.sets())
            .map(|(k, set)| ((*k).to_owned(), Value::from(set.iter().copied().collect::<Vec<u64>>())))
            .collect();
        Value::Object(map)
    }

    /// Reads the file's JSON; ids may be integers or digit strings. Missing keys are empty sets;
    /// malformed ids are problems (and left out).
    fn from_json(value: &Value, file: &Path, problems: &mut Vec<Problem>) -> Option<Self> {
        let Some(obj) = value.as_object() else {
            problems.push(Problem::new(file, Location::File, "expected a JSON object of id lists"));
            return None;
        };
        let mut split = Self::default();
        for (key, set) in Self::KEYS.iter().zip(split.sets_mut()) {
            let Some(v) = obj.get(*key) else { continue };
            let Some(arr) = v.as_array() else {
                problems.push(Problem::new(file, Location::Key(key), "expected an array of instance ids"));
                continue;
            };
            for (i, id) in arr.iter().enumerate() {
                let parsed = id.as_u64().or_else(|| id.as_str().and_then(|s| s.trim().parse::<u64>().ok()));
                match parsed {
                    Some(n) => {
                        set.insert(n);
                    }
                    None => problems.push(Problem::new(
                        file,
                        Location::Key(key),
                        format!("element {i}: {id} is not an instance id"),
                    )),
                }
            }
        }
        Some(split)
    }
}

/// What loading a dataset found, beyond the records themselves.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Records in `Mono3DRefer.json`.
    pub records_in_file: usize,
    /// Records kept (well-formed, unique key, image in a split).
    pub records_loaded: usize,
    /// Well-formed records whose image is in none of the split lists (kept out of every split,
    /// as the Mono3DVG code does).
    pub records_without_split: usize,
    /// Images listed per split (train, val, test).
    pub images_per_split: [usize; 3],
    /// Whether `test_instanceID_split.json` was found and read.
    pub instance_split_file: bool,
    /// Every malformed record, line or file; the offending item was skipped.
    pub problems: Vec<Problem>,
}

/// A Mono3DRefer-layout dataset: records per split, the test instance categories, and access to
/// each image's calibration and size.
#[derive(Clone, Debug)]
pub struct Dataset {
    root: PathBuf,
    records: [Vec<Record>; 3],
    images: [Vec<String>; 3],
    instance_split: Option<InstanceSplit>,
    report: LoadReport,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

impl Dataset {
    /// Reads the split lists, `Mono3DRefer.json` and (when present) `test_instanceID_split.json`
    /// under `root`. Images and calibration files are read on demand ([`Dataset::intrinsics`],
    /// [`Dataset::check_files`]).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`] when `Mono3DRefer.json` cannot be read or is not a JSON array;
    /// with [`Strictness::Strict`], [`Error::Rejected`] listing every problem found.
    pub fn load(root: &Path, strictness: Strictness) -> Result<Self> {
        let mut report = LoadReport::default();
        let mut problems = Vec::new();

        // Split lists.
        let mut images: [Vec<String>; 3] = Default::default();
        let mut split_of: HashMap<String, Split> = HashMap::new();
        for split in Split::ALL {
            let path = root.join(split.file_name());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem::new(
                        &path,
                        Location::File,
                        format!("cannot read the split list: {e}"),
                    ));
                    continue;
                }
            };
            for (i, line) in text.lines().enumerate() {
                let name = line.trim();
                if name.is_empty() {
                    continue;
                }
                if let Err(e) = image_number(name) {
                    problems.push(Problem::new(&path, Location::Line(i + 1), e.to_string()));
                    continue;
                }
                if let Some(first) = split_of.get(name) {
                    problems.push(Problem::new(
                        &path,
                        Location::Line(i + 1),
                        format!("image {name} is already listed in the {first} split; kept there"),
                    ));
                    continue;
                }
                split_of.insert(name.to_owned(), split);
                images[split.index()].push(name.to_owned());
            }
            report.images_per_split[split.index()] = images[split.index()].len();
        }

        // Records.
        let path = root.join(ANNOTATIONS_FILE);
        let value: Value = serde_json::from_str(&read_text(&path)?)
            .map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
        let Value::Array(raw_records) = value else {
            return Err(Error::Json { path, message: "expected a JSON array of records".to_owned() });
        };
        report.records_in_file = raw_records.len();
        let mut records: [Vec<Record>; 3] = Default::default();
        let mut seen: HashMap<SampleKey, usize> = HashMap::new();
        for (index, raw) in raw_records.into_iter().enumerate() {
            let record = Some(raw)
                .filter(Value::is_object)
                .ok_or_else(|| "expected a JSON object (one record)".to_owned())
                .and_then(|raw| serde_json::from_value::<RecordJson>(raw).map_err(|e| e.to_string()))
                .and_then(|r| {
                    let label = r.label_2.to_label().map_err(|e| e.to_string())?;
                    let key = SampleKey { instance_id: r.instance_id, ann_id: r.ann_id };
                    Record::new(&r.im_name, key, &r.object_name, &r.description, label)
                        .map_err(|e| e.to_string())
                });
            let record = match record {
                Ok(r) => r,
                Err(message) => {
                    problems.push(Problem::new(&path, Location::Record(index), message));
                    continue;
                }
            };
            if let Some(first) = seen.get(&record.key()) {
                problems.push(Problem::new(
                    &path,
                    Location::Record(index),
                    format!("duplicate {} (first at record {first}); skipped", record.key()),
                ));
                continue;
            }
            seen.insert(record.key(), index);
            match split_of.get(&record.image) {
                Some(split) => records[split.index()].push(record),
                None => report.records_without_split += 1,
            }
        }
        report.records_loaded = records.iter().map(Vec::len).sum();

        // Instance categories (optional file).
        let path = root.join(INSTANCE_SPLIT_FILE);
        let instance_split = if path.is_file() {
            report.instance_split_file = true;
            match read_text(&path).and_then(|t| {
                serde_json::from_str::<Value>(&t)
                    .map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })
            }) {
                Ok(v) => InstanceSplit::from_json(&v, &path, &mut problems),
                Err(e) => {
                    problems.push(Problem::new(&path, Location::File, e.to_string()));
                    None
                }
            }
        } else {
            None
        };

        if strictness == Strictness::Strict && !problems.is_empty() {
            return Err(Error::Rejected { problems });
        }
        report.problems = problems;
        Ok(Self { root: root.to_path_buf(), records, images, instance_split, report })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The records of one split, in file order.
    pub fn records(&self, split: Split) -> &[Record] {
        &self.records[split.index()]
    }

    /// Every loaded record: train, then val, then test, each in file order.
    pub fn all_records(&self) -> impl Iterator<Item = &Record> + '_ {
        self.records.iter().flatten()
    }

    /// Keeps only the first `n` images of `split` (in file order) and their records: scoring a
    /// subset of a split with every description of each image kept, so per-image breakdowns
    /// (unique/multiple) are those of the full split.
    pub fn keep_first_images(&mut self, split: Split, n: usize) {
        let i = split.index();
        self.images[i].truncate(n);
        let kept: std::collections::HashSet<&str> = self.images[i].iter().map(String::as_str).collect();
        self.records[i].retain(|r| kept.contains(r.image.as_str()));
    }

    /// The images listed for one split, in file order.
    pub fn images(&self, split: Split) -> &[String] {
        &self.images[split.index()]
    }

    /// The categories of `test_instanceID_split.json`, when the file was present.
    pub fn instance_split(&self) -> Option<&InstanceSplit> {
        self.instance_split.as_ref()
    }

    /// What loading found: counts and problems.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The PNG of an image: `images/%06d.png`.
    ///
    /// # Errors
    /// [`Error::ImageName`] when `image` is not decimal digits.
    pub fn image_path(&self, image: &str) -> Result<PathBuf> {
        Ok(self.root.join(IMAGES_DIR).join(format!("{}.png", file_stem(image)?)))
    }

    /// The KITTI calibration file of an image: `calib/%06d.txt`.
    ///
    /// # Errors
    /// [`Error::ImageName`] when `image` is not decimal digits.
    pub fn calib_path(&self, image: &str) -> Result<PathBuf> {
        Ok(self.root.join(CALIB_DIR).join(format!("{}.txt", file_stem(image)?)))
    }

    /// The KITTI calibration of an image.
    ///
    /// # Errors
    /// [`Error::Calib`] when the file cannot be read or parsed.
    pub fn calib(&self, image: &str) -> Result<KittiCalib> {
        Ok(KittiCalib::read(&self.calib_path(image)?)?)
    }

    /// `(width, height)` of an image in pixels, from its PNG header only.
    ///
    /// # Errors
    /// [`Error::Image`] when the file cannot be read or is not an image.
    pub fn image_size_px(&self, image: &str) -> Result<(u32, u32)> {
        let path = self.image_path(image)?;
        image::image_dimensions(&path).map_err(|e| Error::Image { path, message: e.to_string() })
    }

    /// The intrinsics of an image: `P2` of its calibration file (with the KITTI offset) and the size
    /// of its PNG.
    ///
    /// # Errors
    /// As [`Dataset::calib`] and [`Dataset::image_size_px`]; [`Error::Calib`] when `P2` is not a
    /// pinhole projection.
    pub fn intrinsics(&self, image: &str) -> Result<Intrinsics> {
        let (width, height) = self.image_size_px(image)?;
        Ok(self.calib(image)?.intrinsics(KITTI_CAMERA, width, height)?)
    }

    /// The intrinsics of every image of `split`; images whose files are missing or malformed are
    /// returned as problems instead. `on_image` is called after each image (progress).
    pub fn split_intrinsics(
        &self,
        split: Split,
        mut on_image: impl FnMut(),
    ) -> (BTreeMap<String, Intrinsics>, Vec<Problem>) {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for image in self.images(split) {
            match self.intrinsics(image) {
                Ok(k) => {
                    out.insert(image.clone(), k);
                }
                Err(e) => problems.push(self.file_problem(image, e)),
            }
            on_image();
        }
        (out, problems)
    }

    /// Reads every listed image's PNG header and calibration file (all splits) and checks that each
    /// record's 2D box lies in its image; returns what is wrong. `on_image` is called after each
    /// image (progress). Nothing is read beyond the PNG headers.
    pub fn check_files(&self, mut on_image: impl FnMut()) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut sizes: HashMap<&str, (u32, u32)> = HashMap::new();
        for split in Split::ALL {
            for image in self.images(split) {
                match self.intrinsics(image) {
                    Ok(k) => {
                        sizes.insert(image, (k.width(), k.height()));
                    }
                    Err(e) => problems.push(self.file_problem(image, e)),
                }
                on_image();
            }
        }
        let path = self.root.join(ANNOTATIONS_FILE);
        for record in self.all_records() {
            let Some(&(w, h)) = sizes.get(record.image.as_str()) else { continue };
            let b = &record.label.bbox;
            // Half a pixel of slack: KITTI boxes are clipped to pixel centres of the last row/column.
            let slack_px = 0.5;
            if b.x1 < -slack_px
                || b.y1 < -slack_px
                || b.x2 > w as f64 + slack_px
                || b.y2 > h as f64 + slack_px
            {
                problems.push(Problem::new(
                    &path,
                    Location::File,
                    format!(
                        "{}: 2D box [{}, {}, {}, {}] leaves the {w}x{h} image {}",
                        record.key(),
                        b.x1,
                        b.y1,
                        b.x2,
                        b.y2,
                        record.image
                    ),
                ));
            }
        }
        problems
    }

    fn file_problem(&self, image: &str, e: Error) -> Problem {
        let file = match &e {
            Error::Image { path, .. } => path.clone(),
            _ => self.calib_path(image).unwrap_or_else(|_| self.root.join(CALIB_DIR)),
        };
        Problem::new(&file, Location::File, format!("image {image}: {e}"))
    }
}

// ------------------------------------------------------------------------------------------------
// writer

/// Writes a dataset in the Mono3DRefer layout: images and calibration files as they come,
/// `Mono3DRefer.json`, the split lists and the instance categories on [`DatasetWriter::finish`].
///
/// # Example
/// ```no_run
/// use monovlm_trainer::data::mono3drefer::{DatasetWriter, Record, SampleKey, Split, image_name};
/// # fn demo(calib: &monovlm_calib::kitti::KittiCalib, img: &image::RgbImage,
/// #         label: monovlm_calib::kitti::KittiLabel) -> monovlm_trainer::Result<()> {
/// let mut w = DatasetWriter::create(std::path::Path::new("/tmp/synth"))?;
/// let name = image_name(0);
/// w.write_image(&name, img)?;
/// w.write_calib(&name, calib)?;
/// w.add_image(Split::Train, &name)?;
/// let key = SampleKey { instance_id: 1, ann_id: 0 };
/// w.add_record(Record::new(&name, key, "car", "the red car on the left", label)?)?;
/// w.finish()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DatasetWriter {
    root: PathBuf,
    records: Vec<Record>,
    images: [Vec<String>; 3],
    instance_split: Option<InstanceSplit>,
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

impl DatasetWriter {
    /// Creates `root`, `root/images` and `root/calib` (existing folders are fine; files in them may
    /// be overwritten).
    ///
    /// # Errors
    /// [`Error::Io`] when a folder cannot be created.
    pub fn create(root: &Path) -> Result<Self> {
        for dir in [root.to_path_buf(), root.join(IMAGES_DIR), root.join(CALIB_DIR)] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            records: Vec::new(),
            images: Default::default(),
            instance_split: None,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where image `name`'s PNG goes (`images/%06d.png`), for writers that encode it themselves.
    ///
    /// # Errors
    /// [`Error::ImageName`] when `name` is not decimal digits.
    pub fn image_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.root.join(IMAGES_DIR).join(format!("{}.png", file_stem(name)?)))
    }

    /// Writes image `name` as `images/%06d.png`.
    ///
    /// # Errors
    /// [`Error::ImageName`]; [`Error::Image`] when encoding or writing fails.
    pub fn write_image(&self, name: &str, image: &image::RgbImage) -> Result<()> {
        let path = self.image_path(name)?;
        image
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| Error::Image { path, message: e.to_string() })
    }

    /// Writes image `name`'s calibration as `calib/%06d.txt` (the camera is `P2`).
    ///
    /// # Errors
    /// [`Error::ImageName`]; [`Error::Io`] when writing fails.
    pub fn write_calib(&self, name: &str, calib: &KittiCalib) -> Result<()> {
        let path = self.root.join(CALIB_DIR).join(format!("{}.txt", file_stem(name)?));
        write_file(&path, calib.to_text().as_bytes())
    }

    /// Lists image `name` in `split`.
    ///
    /// # Errors
    /// [`Error::ImageName`] when `name` is not decimal digits.
    pub fn add_image(&mut self, split: Split, name: &str) -> Result<()> {
        image_number(name)?;
        self.images[split.index()].push(name.to_owned());
        Ok(())
    }

    /// Adds a record to `Mono3DRefer.json`.
    ///
    /// # Errors
    /// [`Error::Label2`] when a label value is not finite (it could not be read back).
    pub fn add_record(&mut self, record: Record) -> Result<()> {
        let l = &record.label;
        let b = &l.bbox;
        let finite = [l.truncated, l.alpha, b.x1, b.y1, b.x2, b.y2, l.rotation_y]
            .into_iter()
            .chain(l.hwl_m)
            .chain(l.location_m)
            .chain(l.score)
            .all(f64::is_finite);
        if !finite {
            return Err(Error::Label2(format!("{}: every label value must be finite", record.key())));
        }
        self.records.push(record);
        Ok(())
    }

    /// Sets the instance categories written to `test_instanceID_split.json` (not written when unset).
    pub fn set_instance_split(&mut self, split: InstanceSplit) {
        self.instance_split = Some(split);
    }

    /// Writes `Mono3DRefer.json`, the three split lists (empty ones too) and the instance categories.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written.
    pub fn finish(self) -> Result<()> {
        let json: Vec<RecordJson> = self.records.iter().map(record_to_json).collect();
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::Json { path: self.root.join(ANNOTATIONS_FILE), message: e.to_string() })?;
        write_file(&self.root.join(ANNOTATIONS_FILE), text.as_bytes())?;
        for split in Split::ALL {
            let mut text = self.images[split.index()].join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            write_file(&self.root.join(split.file_name()), text.as_bytes())?;
        }
        if let Some(split) = &self.instance_split {
            let text = serde_json::to_string_pretty(&split.to_json()).map_err(|e| Error::Json {
                path: self.root.join(INSTANCE_SPLIT_FILE),
                message: e.to_string(),
            })?;
            write_file(&self.root.join(INSTANCE_SPLIT_FILE), text.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn python_list_literals_split_into_elements() {
        let items = parse_py_list(r#" [ "Car" , 'a\'b', 1, -2.5e-3, np.float64(0.5), ] "#).unwrap();
        assert_eq!(
            items,
            vec![
                PyItem::Str("Car".into()),
                PyItem::Str("a'b".into()),
                PyItem::Num("1".into()),
                PyItem::Num("-2.5e-3".into()),
                PyItem::Num("0.5".into()),
            ]
        );
        for bad in ["", "['Car'", "['Car' 1]", "[1, 2] x", "[nan]", "[inf]", "['x', abc]", "[1,,2]"] {
            assert!(parse_py_list(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn py_floats_read_back_exactly() {
        for v in [0.0, -0.0, 1.0, 46.7, -1.59, 1e-7, 123456789.123, std::f64::consts::PI] {
            assert_eq!(py_float(v).parse::<f64>().unwrap().to_bits(), v.to_bits());
        }
        assert_eq!(py_float(0.0), "0.0");
    }
}
