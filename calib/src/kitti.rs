//! KITTI object files: `calib/*.txt` (projection matrices) and `label_2/*.txt` (objects).

use std::path::Path;

use crate::box2d::Box2d;
use crate::box3d::Box3d;
use crate::camera::Intrinsics;
use crate::error::{Error, Result};

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn parse_error(source_name: &str, line: usize, message: impl Into<String>) -> Error {
    Error::Parse { source_name: source_name.to_owned(), line, message: message.into() }
}

/// The matrices of a KITTI object calibration file: `P0..P3` (3x4, rectified camera `i` from the
/// rectified reference camera), `R0_rect` (3x3) and the sensor transforms when present.
#[derive(Clone, Debug, PartialEq)]
pub struct KittiCalib {
    /// `P0`, `P1`, `P2`, `P3`: projection matrices, row-major.
    pub p: [[[f64; 4]; 3]; 4],
    /// `R0_rect`, the rectifying rotation, when present.
    pub r0_rect: Option<[[f64; 3]; 3]>,
    /// `Tr_velo_to_cam` (3x4), when present.
    pub tr_velo_to_cam: Option<[[f64; 4]; 3]>,
    /// `Tr_imu_to_velo` (3x4), when present.
    pub tr_imu_to_velo: Option<[[f64; 4]; 3]>,
}

fn rows<const C: usize>(v: &[f64]) -> [[f64; C]; 3] {
    std::array::from_fn(|r| std::array::from_fn(|c| v[r * C + c]))
}

/// The keys [`KittiCalib::parse`] reads; any other line is skipped unparsed.
const KEYS: [&str; 10] = [
    "P0",
    "P1",
    "P2",
    "P3",
    "R0_rect",
    "R_rect",
    "Tr_velo_to_cam",
    "Tr_velo_cam",
    "Tr_imu_to_velo",
    "Tr_imu_velo",
];

/// `v` as C's `%.12e` writes it (`7.215377000000e+02`: a signed exponent of at least two digits),
/// the form KITTI's files use.
fn c_exponent(v: f64) -> String {
    let s = format!("{v:.12e}");
    match s.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn fmt_values(name: &str, values: impl IntoIterator<Item = f64>) -> String {
    let body: Vec<String> = values.into_iter().map(c_exponent).collect();
    format!("{name}: {}\n", body.join(" "))
}

impl KittiCalib {
    /// Parses the text of a KITTI calibration file. `source_name` names it in errors.
    /// Accepts the object-benchmark keys (`P0..P3`, `R0_rect`, `Tr_velo_to_cam`, `Tr_imu_to_velo`)
    /// and the tracking-benchmark aliases (`R_rect`, `Tr_velo_cam`, `Tr_imu_velo`).
    ///
    /// # Errors
    /// [`Error::Parse`] naming the line and field for a missing `P0..P3`, a value that is not a
    /// finite number, or a matrix with the wrong number of values.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let mut p: [Option<[[f64; 4]; 3]>; 4] = [None; 4];
        let mut calib =
            Self { p: [[[0.0; 4]; 3]; 4], r0_rect: None, tr_velo_to_cam: None, tr_imu_to_velo: None };
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // A line without a separator (a stray token) is no key of ours either.
            let Some((key, rest)) = line.split_once(':').or_else(|| line.split_once(' ')) else {
                continue;
            };
            let key = key.trim();
            if !KEYS.contains(&key) {
                continue; // other sensors' keys (and comments) are not ours to interpret
            }
            let values = rest
                .split_whitespace()
                .map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
                .collect::<Option<Vec<f64>>>()
                .ok_or_else(|| {
                    parse_error(source_name, line_no, format!("{key}: values must be finite numbers"))
                })?;
            let expect = |n: usize| {
                if values.len() == n {
                    Ok(())
                } else {
                    Err(parse_error(
                        source_name,
                        line_no,
                        format!("{key}: expected {n} values, got {}", values.len()),
                    ))
                }
            };
            match key {
                "P0" | "P1" | "P2" | "P3" => {
                    expect(12)?;
                    let idx = usize::from(key.as_bytes()[1] - b'0');
                    p[idx] = Some(rows::<4>(&values));
                }
                "R0_rect" | "R_rect" => {
                    expect(9)?;
                    calib.r0_rect = Some(rows::<3>(&values));
                }
                "Tr_velo_to_cam" | "Tr_velo_cam" => {
                    expect(12)?;
                    calib.tr_velo_to_cam = Some(rows::<4>(&values));
                }
                "Tr_imu_to_velo" | "Tr_imu_velo" => {
                    expect(12)?;
                    calib.tr_imu_to_velo = Some(rows::<4>(&values));
                }
                _ => {} // not in KEYS: skipped above
            }
        }
        for (i, m) in p.iter().enumerate() {
            calib.p[i] = m.ok_or_else(|| parse_error(source_name, 0, format!("missing P{i} (12 values)")))?;
        }
        Ok(calib)
    }

    /// Reads and parses a KITTI calibration file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, else as [`KittiCalib::parse`].
    pub fn read(path: &Path) -> Result<Self> {
        Self::parse(&read_text(path)?, &path.display().to_string())
    }

    /// The file text, in KITTI's layout (`%.12e` values).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.p.iter().enumerate() {
            out += &fmt_values(&format!("P{i}"), m.iter().flatten().copied());
        }
        if let Some(r) = &self.r0_rect {
            out += &fmt_values("R0_rect", r.iter().flatten().copied());
        }
        if let Some(t) = &self.tr_velo_to_cam {
            out += &fmt_values("Tr_velo_to_cam", t.iter().flatten().copied());
        }
        if let Some(t) = &self.tr_imu_to_velo {
            out += &fmt_values("Tr_imu_to_velo", t.iter().flatten().copied());
        }
        out
    }

    /// Intrinsics of camera `cam` (2 is KITTI's left colour camera) for a `width x height` image
    /// (KITTI calibration files do not carry the image size; take it from the image).
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] for `cam > 3`; else as [`Intrinsics::from_projection_matrix`].
    pub fn intrinsics(&self, cam: usize, width: u32, height: u32) -> Result<Intrinsics> {
        let p = self
            .p
            .get(cam)
            .ok_or_else(|| Error::InvalidRegion(format!("KITTI has cameras 0..3, not {cam}")))?;
        Intrinsics::from_projection_matrix(p, width, height)
    }
}

/// One object of a KITTI `label_2` file (15 fields, a 16th `score` in result files).
#[derive(Clone, Debug, PartialEq)]
pub struct KittiLabel {
    /// Object class: `Car`, `Van`, `Truck`, `Pedestrian`, `Person_sitting`, `Cyclist`, `Tram`,
    /// `Misc` or `DontCare`.
    pub class: String,
    /// Fraction of the object leaving the image, in `[0, 1]`.
    pub truncated: f64,
    /// 0 fully visible, 1 partly occluded, 2 largely occluded, 3 unknown, -1 not annotated
    /// (`DontCare` rows).
    pub occluded: i8,
    /// Observation angle, radians.
    pub alpha: f64,
    /// 2D box in the image, pixels.
    pub bbox: Box2d,
    /// Dimensions `(h, w, l)`, metres.
    pub hwl_m: [f64; 3],
    /// Bottom centre of the box in the camera frame, metres.
    pub location_m: [f64; 3],
    /// Rotation about the camera y axis, radians.
    pub rotation_y: f64,
    /// Detection score (result files only).
    pub score: Option<f64>,
}

/// KITTI's difficulty levels, as exclusive categories: the easiest one a label meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Difficulty {
    /// 2D height >= 40 px, truncation <= 0.15, occlusion 0.
    Easy,
    /// 2D height >= 25 px, truncation <= 0.3, occlusion <= 1.
    Moderate,
    /// 2D height >= 25 px, truncation <= 0.5, occlusion <= 2.
    Hard,
}

/// The thresholds of each level: minimum 2D height (px), maximum truncation, maximum occlusion.
const DIFFICULTY_LEVELS: [(Difficulty, f64, f64, i8); 3] = [
    (Difficulty::Easy, 40.0, 0.15, 0),
    (Difficulty::Moderate, 25.0, 0.3, 1),
    (Difficulty::Hard, 25.0, 0.5, 2),
];

/// The names of the 15 label fields, for error messages.
const LABEL_FIELDS: [&str; 16] = [
    "type",
    "truncated",
    "occluded",
    "alpha",
    "bbox.x1",
    "bbox.y1",
    "bbox.x2",
    "bbox.y2",
    "height",
    "width",
    "length",
    "location.x",
    "location.y",
    "location.z",
    "rotation_y",
    "score",
];

impl KittiLabel {
    /// The easiest KITTI difficulty level the label meets, `None` when it meets none. The height is
    /// `y2 - y1` (the exclusive-edge convention of the KITTI devkit; the Mono3DVG code adds 1
    /// pixel, which only matters for boxes 24 or 39 px high).
    pub fn difficulty(&self) -> Option<Difficulty> {
        let height_px = self.bbox.height();
        DIFFICULTY_LEVELS
            .iter()
            .find(|(_, min_h, max_trunc, max_occ)| {
                height_px >= *min_h && self.truncated <= *max_trunc && (0..=*max_occ).contains(&self.occluded)
            })
            .map(|(d, ..)| *d)
    }

    /// Parses one label line.
    ///
    /// # Errors
    /// [`Error::Parse`] naming the field when there are not 15 or 16 fields, or a field is not a
    /// finite number of its kind.
    pub fn parse_line(line: &str, source_name: &str, line_no: usize) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(15..=16).contains(&fields.len()) {
            return Err(parse_error(
                source_name,
                line_no,
                format!("a KITTI label has 15 fields (16 with score), got {}", fields.len()),
            ));
        }
        let num = |i: usize| -> Result<f64> {
            fields[i].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                parse_error(
                    source_name,
                    line_no,
                    format!(
                        "field {} ({}) must be a finite number, got '{}'",
                        i + 1,
                        LABEL_FIELDS[i],
                        fields[i]
                    ),
                )
            })
        };
        let occluded = fields[2].parse::<i8>().ok().filter(|v| (-1..=3).contains(v)).ok_or_else(|| {
            parse_error(
                source_name,
                line_no,
                format!("field 3 (occluded) must be -1, 0, 1, 2 or 3, got '{}'", fields[2]),
            )
        })?;
        let bbox = Box2d::new(num(4)?, num(5)?, num(6)?, num(7)?)
            .map_err(|e| parse_error(source_name, line_no, format!("bbox: {e}")))?;
        Ok(Self {
            class: fields[0].to_owned(),
            truncated: num(1)?,
            occluded,
            alpha: num(3)?,
            bbox,
            hwl_m: [num(8)?, num(9)?, num(10)?],
            location_m: [num(11)?, num(12)?, num(13)?],
            rotation_y: num(14)?,
            score: if fields.len() == 16 { Some(num(15)?) } else { None },
        })
    }

    /// The label line in KITTI's layout (2 decimals, as the benchmark's files).
    pub fn to_line(&self) -> String {
        let b = &self.bbox;
        let [h, w, l] = self.hwl_m;
        let [x, y, z] = self.location_m;
        let mut line = format!(
            "{} {:.2} {} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2} {:.2}",
            self.class,
            self.truncated,
            self.occluded,
            self.alpha,
            b.x1,
            b.y1,
            b.x2,
            b.y2,
            h,
            w,
            l,
            x,
            y,
            z,
            self.rotation_y
        );
        if let Some(s) = self.score {
            line += &format!(" {s:.4}");
        }
        line
    }

    /// The 3D box (centre convention of [`Box3d`]).
    ///
    /// # Errors
    /// [`Error::InvalidBox3d`] for non-positive dimensions (KITTI's `DontCare` rows carry `-1`).
    pub fn box3d(&self) -> Result<Box3d> {
        Box3d::from_kitti(self.location_m, self.hwl_m, self.rotation_y)
    }

    /// A label for `box3d` with its image box and visibility; `alpha` is derived from the box.
    pub fn from_box3d(class: &str, box3d: &Box3d, bbox: Box2d, truncated: f64, occluded: i8) -> Self {
        let (location_m, hwl_m, rotation_y) = box3d.to_kitti();
        Self {
            class: class.to_owned(),
            truncated,
            occluded,
            alpha: box3d.alpha(),
            bbox,
            hwl_m,
            location_m,
            rotation_y,
            score: None,
        }
    }
}

/// Parses a whole label file; blank lines are skipped.
///
/// # Errors
/// The first line's [`Error::Parse`].
pub fn parse_labels(text: &str, source_name: &str) -> Result<Vec<KittiLabel>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| KittiLabel::parse_line(l, source_name, i + 1))
        .collect()
}

/// Reads and parses a label file.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, else as [`parse_labels`].
pub fn read_labels(path: &Path) -> Result<Vec<KittiLabel>> {
    parse_labels(&read_text(path)?, &path.display().to_string())
}
