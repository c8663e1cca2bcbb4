//! A geometric baseline: the floor a learned model must beat, and a sanity check of the data and
//! the metrics. It reads no pixels and no text beyond the object's class.
//!
//! For each sample, from the **ground-truth 2D box** and the class (`objectName`):
//! - **size**: the mean `(l, w, h)` of the class over the fitting split's objects (each instance
//!   once); a class absent there takes the mean over all its objects; with no fitting objects at all,
//!   the class means of the Mono3DVG code (KITTI) for pedestrian, car and cyclist, and the car's
//!   for anything else.
//! - **yaw**: `-pi/2`: along the road (the camera's z axis), heading away, as most vehicles ahead
//!   are; the footprint of `pi/2` (oncoming) is the same.
//! - **depth**: flat ground at `y = camera_height` in the camera frame (the ground plane parallel to
//!   the camera's x-z plane). The bottom edge of the 2D box is where the box's nearest footprint
//!   edge meets the ground: the ray through `(u_centre, y2)` hits the ground at depth
//!   `z_contact = (camera_height - ty) / ((y2 - cy) / fy)`; the centre lies half the footprint's
//!   extent along z further, `z = z_contact + |sin yaw| l/2 + |cos yaw| w/2`, clamped to
//!   `[MIN_DEPTH_M, MAX_DEPTH_M]` (also when the bottom edge is at or above the horizon).
//! - **camera height**: the median bottom-centre `y` of the fitting split's labels (each instance
//!   once), which is the ground's height below the camera when the ground is flat; with no fitting
//!   objects, [`DEFAULT_CAMERA_HEIGHT_M`] (KITTI's camera, 1.65 m above the road).
//! - **x**: the 2D box's centre column back-projected at the near face's depth
//!   ([`monovlm_calib::Intrinsics::unproject`]); exact when the near face spans the 2D box.
//! - **y**: `camera_height - h/2` (standing on the ground).
//! - **2D box**: the ground-truth one (so its 2D accuracy is 100% by construction).

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::FRAC_PI_2;

use monovlm_calib::{Box3d, Intrinsics, Point2};
use serde::Serialize;

use crate::data::mono3drefer::{Dataset, Location, Problem, Record, Split};
use crate::error::Result;
use crate::eval::predictions::PredictionLine;

/// KITTI's camera height above the road, metres (used when there is nothing to fit it on).
pub const DEFAULT_CAMERA_HEIGHT_M: f64 = 1.65;
/// The nearest depth the baseline predicts, metres.
pub const MIN_DEPTH_M: f64 = 1.0;
/// The farthest depth the baseline predicts (also for boxes whose bottom edge is at or above the
/// horizon), metres.
pub const MAX_DEPTH_M: f64 = 100.0;
/// The yaw the baseline predicts: along the road, heading away from the camera (`+z`), the most
/// common pose in driving data.
pub const BASELINE_YAW_RAD: f64 = -FRAC_PI_2;
/// Class-mean sizes `(l, w, h)` in metres when there is nothing to fit them on: the `cls_mean_size`
/// of the Mono3DVG code (KITTI training set), reordered from its `(h, w, l)`.
pub const DEFAULT_MEAN_SIZES_LWH_M: [(&str, [f64; 3]); 3] = [
    ("pedestrian", [0.84422524, 0.66068622, 1.76255119]),
    ("car", [3.88311640418, 1.62856739989, 1.52563191462]),
    ("cyclist", [1.76282397, 0.59706367, 1.73698127]),
];

/// Where a fitted quantity came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum Fitted {
    /// Fitted on this many objects of a split.
    Split {
        /// The split.
        split: Split,
        /// How many objects.
        objects: usize,
    },
    /// A built-in default.
    Default,
}

impl std::fmt::Display for Fitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fitted::Split { split, objects } => write!(f, "fitted on {objects} {split} objects"),
            Fitted::Default => f.write_str("built-in default"),
        }
    }
}

/// The fitted baseline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Baseline {
    /// Height of the camera above the (flat) ground, metres.
    pub camera_height_m: f64,
    /// Where the camera height came from.
    pub camera_height_from: Fitted,
    /// Mean `(l, w, h)` per class (lower-case `objectName`), metres.
    pub mean_size_lwh_m: BTreeMap<String, [f64; 3]>,
    /// `(l, w, h)` for classes not in `mean_size_lwh_m`, metres.
    pub fallback_size_lwh_m: [f64; 3],
    /// Where the sizes came from.
    pub sizes_from: Fitted,
    /// The yaw predicted for every object, radians.
    pub yaw_rad: f64,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let upper = values.get(mid).copied()?;
    if values.len() % 2 == 1 { Some(upper) } else { values.get(mid - 1).map(|lower| 0.5 * (lower + upper)) }
}

fn mean3(sizes: &[[f64; 3]]) -> Option<[f64; 3]> {
    if sizes.is_empty() {
        return None;
    }
    let n = sizes.len() as f64;
    Some(std::array::from_fn(|i| sizes.iter().map(|s| s[i]).sum::<f64>() / n))
}

impl Baseline {
    /// Fits the camera height and class-mean sizes on the objects of `split` (each instance once).
    pub fn fit(dataset: &Dataset, split: Split) -> Self {
        let mut seen = BTreeSet::new();
        let objects: Vec<&Record> =
            dataset.records(split).iter().filter(|r| seen.insert(r.instance_id)).collect();
        let heights: Vec<f64> = objects.iter().map(|r| r.label.location_m[1]).collect();
        let (camera_height_m, camera_height_from) = match median(heights) {
            Some(h) if h > 0.0 => (h, Fitted::Split { split, objects: objects.len() }),
            _ => (DEFAULT_CAMERA_HEIGHT_M, Fitted::Default),
        };
        let mut per_class: BTreeMap<String, Vec<[f64; 3]>> = BTreeMap::new();
        for r in &objects {
            per_class
                .entry(r.object_name.to_lowercase())
                .or_default()
                .push([r.box3d.l, r.box3d.w, r.box3d.h]);
        }
        let all: Vec<[f64; 3]> = per_class.values().flatten().copied().collect();
        let (mean_size_lwh_m, fallback_size_lwh_m, sizes_from) = match mean3(&all) {
            Some(overall) => (
                per_class.iter().filter_map(|(k, v)| mean3(v).map(|m| (k.clone(), m))).collect(),
                overall,
                Fitted::Split { split, objects: objects.len() },
            ),
            None => (
                DEFAULT_MEAN_SIZES_LWH_M.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                DEFAULT_MEAN_SIZES_LWH_M[1].1,
                Fitted::Default,
            ),
        };
        Self {
            camera_height_m,
            camera_height_from,
            mean_size_lwh_m,
            fallback_size_lwh_m,
            sizes_from,
            yaw_rad: BASELINE_YAW_RAD,
        }
    }

    /// The `(l, w, h)` the baseline predicts for a class.
    pub fn size_lwh_m(&self, object_name: &str) -> [f64; 3] {
        self.mean_size_lwh_m.get(&object_name.to_lowercase()).copied().unwrap_or(self.fallback_size_lwh_m)
    }

    /// The baseline's prediction for `record` in an image with intrinsics `k`.
    ///
    /// # Errors
    /// [`crate::Error::Calib`] when the box's pixels cannot be back-projected (strong distortion)
    /// or the box is degenerate.
    pub fn predict(&self, record: &Record, k: &Intrinsics) -> Result<PredictionLine> {
        let bbox = record.label.bbox;
        let [l, w, h] = self.size_lwh_m(&record.object_name);
        let (_, ty_m) = k.offset_m();
        let u_px = 0.5 * (bbox.x1 + bbox.x2);
        // Normalised image y of the bottom edge: the ray's y per metre of depth.
        let ray = k.unproject(&Point2::new(u_px, bbox.y2), 1.0)?;
        let y_per_m = ray.y - ty_m;
        let z_contact = if y_per_m > 0.0 { (self.camera_height_m - ty_m) / y_per_m } else { MAX_DEPTH_M };
        let (sin, cos) = self.yaw_rad.sin_cos();
        let half_extent_z = sin.abs() * 0.5 * l + cos.abs() * 0.5 * w;
        let z = (z_contact + half_extent_z).clamp(MIN_DEPTH_M, MAX_DEPTH_M);
        // The 2D box's centre column at the near face's depth: exact when the near face spans the
        // 2D box (objects seen roughly head-on), which is where a centre column means most.
        let near_face = k.unproject(&Point2::new(u_px, bbox.y2), (z - half_extent_z).max(MIN_DEPTH_M))?;
        let box3d = Box3d::new(near_face.x, self.camera_height_m - 0.5 * h, z, l, w, h, self.yaw_rad)?;
        Ok(PredictionLine::new(record.key(), &box3d, Some(&bbox)))
    }
}

/// The baseline fitted on `fit_split`, its predictions for every record of `eval_split`, and the
/// images it could not predict for (missing or malformed image or calibration). `on_image` is
/// called after each image's intrinsics are read (progress).
pub fn run(
    dataset: &Dataset,
    fit_split: Split,
    eval_split: Split,
    on_image: impl FnMut(),
) -> (Baseline, Vec<PredictionLine>, Vec<Problem>) {
    let baseline = Baseline::fit(dataset, fit_split);
    let (intrinsics, mut problems) = dataset.split_intrinsics(eval_split, on_image);
    let mut lines = Vec::new();
    for record in dataset.records(eval_split) {
        let Some(k) = intrinsics.get(&record.image) else { continue };
        match baseline.predict(record, k) {
            Ok(line) => lines.push(line),
            Err(e) => problems.push(Problem {
                file: dataset.root().join(crate::data::mono3drefer::ANNOTATIONS_FILE),
                location: Location::File,
                message: format!("baseline, {}: {e}", record.key()),
            }),
        }
    }
    (baseline, lines, problems)
}
