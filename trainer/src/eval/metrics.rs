//! Per-sample IoUs and the aggregate metrics: Acc@0.25, Acc@0.5 (strictly greater than, as the
//! reference evaluator's `iou > 0.5`), mIoU (plain mean), with the exact rotated 3D IoU
//! ([`iou_3d`]) and the Mono3DVG-compatible one ([`iou3d_mono3dvg`]); 2D Acc@0.5; mean absolute
//! centre, size and yaw errors; where the predicted 2D boxes land ([`Landing`]: on the described
//! object, on another object of the image, on none), which tells wrong picks from poor boxes.

use std::collections::HashMap;

use monovlm_calib::{Box2d, Box3d, iou_2d, iou_3d, iou3d_mono3dvg, wrap_angle};
use serde::Serialize;

use crate::data::mono3drefer::{Record, SampleKey};
use crate::eval::categories::Categories;
use crate::eval::predictions::Predicted;

/// The lower accuracy threshold: a sample counts when its IoU is strictly greater.
pub const IOU_THRESHOLD_LOW: f64 = 0.25;
/// The higher accuracy threshold: a sample counts when its IoU is strictly greater.
pub const IOU_THRESHOLD_HIGH: f64 = 0.5;

/// How a sample was answered.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// A box was predicted.
    Predicted,
    /// No prediction line for this sample: IoU 0.
    Missing,
    /// The prediction could not be parsed: IoU 0.
    FormatFailure {
        /// Why.
        reason: String,
    },
}

/// Where a predicted 2D box lands, at 2D IoU strictly greater than [`IOU_THRESHOLD_HIGH`].
///
/// The described object takes precedence: a box that overlaps it and another object by more
/// than the threshold is [`Landing::Target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Landing {
    /// On the described object (the sample counts for 2D Acc@0.5).
    Target,
    /// On another annotated object of the same image: a wrong pick.
    OtherObject,
    /// On no annotated object: a poor box (or one on an object nobody described).
    NoObject,
}

/// The 2D boxes of the objects of each image, keyed by image name: the candidates a predicted
/// box can land on. Built from `records` (every description of an object carries its label),
/// one box per `instanceID`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageObjects {
    by_image: HashMap<String, Vec<(u64, Box2d)>>,
}

impl ImageObjects {
    /// The objects of `records`' images.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut by_image: HashMap<String, Vec<(u64, Box2d)>> = HashMap::new();
        for r in records {
            let objects = by_image.entry(r.image.clone()).or_default();
            if !objects.iter().any(|(id, _)| *id == r.instance_id) {
                objects.push((r.instance_id, r.label.bbox));
            }
        }
        Self { by_image }
    }

    /// The 2D boxes of `image`'s objects other than `instance_id` (empty for an unknown image).
    pub fn others<'a>(&'a self, image: &str, instance_id: u64) -> impl Iterator<Item = &'a Box2d> + 'a {
        self.by_image
            .get(image)
            .into_iter()
            .flatten()
            .filter(move |(id, _)| *id != instance_id)
            .map(|(_, b)| b)
    }
}

/// Where `pred` lands, given its IoU with the described object and the other objects' boxes.
fn landing_of<'a>(pred: &Box2d, iou_target: f64, others: impl IntoIterator<Item = &'a Box2d>) -> Landing {
    if iou_target > IOU_THRESHOLD_HIGH {
        Landing::Target
    } else if others.into_iter().any(|o| iou_2d(pred, o) > IOU_THRESHOLD_HIGH) {
        Landing::OtherObject
    } else {
        Landing::NoObject
    }
}

/// One scored sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleResult {
    /// `instanceID` + `ann_id`.
    pub key: SampleKey,
    /// Image name.
    pub image: String,
    /// `objectName`.
    pub object_name: String,
    /// Its breakdown categories.
    pub categories: Categories,
    /// Predicted, missing or unparsable.
    pub outcome: Outcome,
    /// Ground-truth 3D box.
    pub gt_box3d: Box3d,
    /// Ground-truth 2D box.
    pub gt_box2d: Box2d,
    /// Predicted 3D box.
    pub pred_box3d: Option<Box3d>,
    /// Predicted 2D box.
    pub pred_box2d: Option<Box2d>,
    /// Exact rotated 3D IoU (0 without a prediction).
    pub iou_3d: f64,
    /// Mono3DVG-compatible 3D IoU (0 without a prediction).
    pub iou_3d_mono3dvg: f64,
    /// 2D IoU (0 without a predicted 2D box).
    pub iou_2d: f64,
    /// Where the predicted 2D box lands (`None` without one).
    pub landing: Option<Landing>,
}

impl SampleResult {
    /// Scores the sample of `record`; `None` prediction means missing. `objects` holds the
    /// image's annotated objects, for [`SampleResult::landing`].
    pub fn score(
        record: &Record,
        categories: Categories,
        objects: &ImageObjects,
        prediction: Option<&Predicted>,
    ) -> Self {
        let (gt_box3d, gt_box2d) = (record.box3d, record.label.bbox);
        let (outcome, pred_box3d, pred_box2d) = match prediction {
            None => (Outcome::Missing, None, None),
            Some(Predicted::FormatFailure { reason }) => {
                (Outcome::FormatFailure { reason: reason.clone() }, None, None)
            }
            Some(Predicted::Boxes { bbox_3d, bbox_2d }) => (Outcome::Predicted, Some(*bbox_3d), *bbox_2d),
        };
        let iou3 = |f: fn(&Box3d, &Box3d) -> f64| pred_box3d.map_or(0.0, |p| f(&p, &gt_box3d));
        let iou2 = pred_box2d.map_or(0.0, |p| iou_2d(&p, &gt_box2d));
        let landing =
            pred_box2d.map(|p| landing_of(&p, iou2, objects.others(&record.image, record.instance_id)));
        Self {
            key: record.key(),
            image: record.image.clone(),
            object_name: record.object_name.clone(),
            categories,
            outcome,
            gt_box3d,
            gt_box2d,
            pred_box3d,
            pred_box2d,
            iou_3d: iou3(iou_3d),
            iou_3d_mono3dvg: iou3(iou3d_mono3dvg),
            iou_2d: iou2,
            landing,
        }
    }
}

/// Accuracy at the two thresholds (percent) and mean IoU (fraction) of a set of IoUs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AccuracyStats {
    /// Percentage of IoUs strictly above 0.25.
    pub acc_at_025_pct: f64,
    /// Percentage of IoUs strictly above 0.5.
    pub acc_at_050_pct: f64,
    /// Mean IoU, in `[0, 1]`.
    pub miou: f64,
}

/// The accuracies and mean of `ious`; `None` for an empty set.
///
/// # Example
/// ```
/// use monovlm_trainer::eval::metrics::accuracy_stats;
/// let s = accuracy_stats(&[1.0, 0.5, 0.25, 0.0]).unwrap_or_else(|| unreachable!());
/// assert_eq!((s.acc_at_025_pct, s.acc_at_050_pct), (50.0, 25.0)); // strictly greater than
/// assert_eq!(s.miou, 0.4375);
/// ```
pub fn accuracy_stats(ious: &[f64]) -> Option<AccuracyStats> {
    if ious.is_empty() {
        return None;
    }
    let n = ious.len() as f64;
    let pct_above = |t: f64| 100.0 * ious.iter().filter(|&&v| v > t).count() as f64 / n;
    Some(AccuracyStats {
        acc_at_025_pct: pct_above(IOU_THRESHOLD_LOW),
        acc_at_050_pct: pct_above(IOU_THRESHOLD_HIGH),
        miou: ious.iter().sum::<f64>() / n,
    })
}

/// Mean absolute errors of the predicted boxes against the ground truth (samples with a box only).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ErrorStats {
    /// Samples with a predicted box.
    pub samples: usize,
    /// Mean `|dx|`, `|dy|`, `|dz|` of the centres, metres.
    pub mean_abs_centre_err_m: [f64; 3],
    /// Mean `|dl|`, `|dw|`, `|dh|`, metres.
    pub mean_abs_size_err_m: [f64; 3],
    /// Mean of the three size errors, metres.
    pub mean_abs_size_err_avg_m: f64,
    /// Mean `|wrap(yaw_pred - yaw_gt)|`, radians in `[0, pi]` (no `pi` symmetry folded).
    pub mean_abs_yaw_err_rad: f64,
}

/// The mean errors of the samples with a predicted 3D box; `None` when there are none.
pub fn error_stats<'a>(samples: impl IntoIterator<Item = &'a SampleResult>) -> Option<ErrorStats> {
    let mut n = 0usize;
    let mut centre = [0.0; 3];
    let mut size = [0.0; 3];
    let mut yaw = 0.0;
    for s in samples {
        let Some(p) = s.pred_box3d else { continue };
        let g = s.gt_box3d;
        n += 1;
        for (acc, d) in centre.iter_mut().zip([p.x - g.x, p.y - g.y, p.z - g.z]) {
            *acc += d.abs();
        }
        for (acc, d) in size.iter_mut().zip([p.l - g.l, p.w - g.w, p.h - g.h]) {
            *acc += d.abs();
        }
        yaw += wrap_angle(p.yaw - g.yaw).abs();
    }
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let size = size.map(|v| v / nf);
    Some(ErrorStats {
        samples: n,
        mean_abs_centre_err_m: centre.map(|v| v / nf),
        mean_abs_size_err_m: size,
        mean_abs_size_err_avg_m: size.iter().sum::<f64>() / 3.0,
        mean_abs_yaw_err_rad: yaw / nf,
    })
}

/// Where the predicted 2D boxes land, in percent of all the samples (those without a 2D box
/// count in none of the three, so the three sum to at most 100).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LandingStats {
    /// On the described object: equals 2D Acc@0.5.
    pub target_pct: f64,
    /// On another annotated object of the image: wrong picks.
    pub other_object_pct: f64,
    /// On no annotated object: poor boxes.
    pub no_object_pct: f64,
}

/// The landing percentages of `samples`; `None` for an empty set.
pub fn landing_stats(samples: &[&SampleResult]) -> Option<LandingStats> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as f64;
    let pct = |l: Landing| 100.0 * samples.iter().filter(|s| s.landing == Some(l)).count() as f64 / n;
    Some(LandingStats {
        target_pct: pct(Landing::Target),
        other_object_pct: pct(Landing::OtherObject),
        no_object_pct: pct(Landing::NoObject),
    })
}

/// The metrics of one breakdown (Overall, Unique, Near, ...).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryMetrics {
    /// `Overall`, `Unique`, `Multiple`, `Near`, `Medium`, `Far`, `Easy`, `Moderate` or `Hard`.
    pub name: String,
    /// Samples in it.
    pub samples: usize,
    /// Of which with a predicted box.
    pub predicted: usize,
    /// With the exact rotated 3D IoU.
    pub iou_3d: Option<AccuracyStats>,
    /// With the Mono3DVG-compatible 3D IoU (compare with published numbers).
    pub iou_3d_mono3dvg: Option<AccuracyStats>,
    /// With the 2D IoU.
    pub iou_2d: Option<AccuracyStats>,
    /// Where the predicted 2D boxes land.
    pub landing: Option<LandingStats>,
    /// Centre, size and yaw errors of the predicted boxes.
    pub errors: Option<ErrorStats>,
}

impl CategoryMetrics {
    /// The metrics of `samples` under `name`.
    pub fn of<'a>(name: &str, samples: impl IntoIterator<Item = &'a SampleResult>) -> Self {
        let samples: Vec<&SampleResult> = samples.into_iter().collect();
        let ious = |f: fn(&SampleResult) -> f64| samples.iter().map(|s| f(s)).collect::<Vec<f64>>();
        Self {
            name: name.to_owned(),
            samples: samples.len(),
            predicted: samples.iter().filter(|s| s.pred_box3d.is_some()).count(),
            iou_3d: accuracy_stats(&ious(|s| s.iou_3d)),
            iou_3d_mono3dvg: accuracy_stats(&ious(|s| s.iou_3d_mono3dvg)),
            iou_2d: accuracy_stats(&ious(|s| s.iou_2d)),
            landing: landing_stats(&samples),
            errors: error_stats(samples.iter().copied()),
        }
    }
}

/// The breakdowns, in report order.
pub const BREAKDOWNS: [&str; 9] =
    ["Overall", "Unique", "Multiple", "Near", "Medium", "Far", "Easy", "Moderate", "Hard"];

/// The metrics of every breakdown ([`BREAKDOWNS`] order; empty ones have `samples == 0`).
pub fn breakdown_metrics(samples: &[SampleResult]) -> Vec<CategoryMetrics> {
    BREAKDOWNS
        .iter()
        .map(|&name| {
            let members =
                samples.iter().filter(|s| name == "Overall" || s.categories.names().contains(&name));
            CategoryMetrics::of(name, members)
        })
        .collect()
}
