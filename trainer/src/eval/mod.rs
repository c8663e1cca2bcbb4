//! Evaluation of 3D visual grounding, as Mono3DVG reports it and more.
//!
//! - Per sample ([`metrics::SampleResult`]): the exact rotated 3D IoU (`monovlm_calib::iou_3d`),
//!   the Mono3DVG-compatible one (`monovlm_calib::iou3d_mono3dvg`, for published numbers) and the
//!   2D IoU. A missing or unparsable prediction scores 0 and is counted.
//! - Per breakdown ([`metrics::CategoryMetrics`]): Acc@0.25 and Acc@0.5 (strictly greater than),
//!   mIoU (plain mean) with both 3D IoUs; 2D Acc@0.5; where the 2D boxes land (on the described
//!   object, another described object of the image, none); mean `|dx|`, `|dy|`, `|dz|`, size and yaw
//!   errors. Breakdowns: Overall, Unique/Multiple, Near/Medium/Far, Easy/Moderate/Hard
//!   ([`categories`]).
//! - Input: a JSON-lines predictions file ([`predictions`]); output: JSON, Markdown, per-sample
//!   lines and PNG plots ([`report::write_outputs`]).
//! - [`baseline`]: the geometric floor a learned model must beat.
//! - [`package`]: predictions of an exported model package, made by the runtime.
//! - [`compare`]: several evaluations of the same samples side by side (tables and plots).

pub mod baseline;
pub mod categories;
pub mod compare;
pub mod metrics;
pub mod package;
pub mod plots;
pub mod predictions;
pub mod report;

use std::collections::BTreeSet;

use crate::data::mono3drefer::{Dataset, SampleKey, Split};
use crate::error::{Error, Result};
use metrics::{ImageObjects, Outcome, SampleResult, breakdown_metrics};
use predictions::PredictionSet;
use report::{EvalReport, Evaluation, MAX_LISTED_KEYS};

/// Scores `predictions` on the records of `split`. `source` names the predictions in the report;
/// `on_sample` is called after each sample (progress). Categories come from
/// `test_instanceID_split.json` for the test split when it has them, else from the labels.
///
/// # Errors
/// [`Error::NothingToEvaluate`] when the split has no records.
pub fn evaluate(
    dataset: &Dataset,
    split: Split,
    predictions: &PredictionSet,
    source: &str,
    mut on_sample: impl FnMut(),
) -> Result<Evaluation> {
    let records = dataset.records(split);
    if records.is_empty() {
        return Err(Error::NothingToEvaluate(format!(
            "the {split} split of {} has no records",
            dataset.root().display()
        )));
    }
    // `test_instanceID_split.json` describes the test split only.
    let instance_split = if split == Split::Test { dataset.instance_split() } else { None };
    let (categories, category_sources) =
        categories::categorize(records, dataset.all_records(), instance_split);
    let objects = ImageObjects::from_records(dataset.all_records());
    let mut samples = Vec::with_capacity(records.len());
    for (record, cats) in records.iter().zip(categories) {
        samples.push(SampleResult::score(record, cats, &objects, predictions.by_key.get(&record.key())));
        on_sample();
    }
    let keys: BTreeSet<SampleKey> = records.iter().map(|r| r.key()).collect();
    let unexpected: Vec<SampleKey> =
        predictions.by_key.keys().filter(|k| !keys.contains(k)).copied().collect();
    let missing: Vec<SampleKey> =
        samples.iter().filter(|s| s.outcome == Outcome::Missing).map(|s| s.key).collect();
    let failures: Vec<(SampleKey, String)> = samples
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::FormatFailure { reason } => Some((s.key, reason.clone())),
            _ => None,
        })
        .collect();
    let report = EvalReport {
        dataset: dataset.root().to_path_buf(),
        split,
        predictions: source.to_owned(),
        samples: samples.len(),
        predicted: samples.iter().filter(|s| s.pred_box3d.is_some()).count(),
        missing: missing.len(),
        format_failures: failures.len(),
        missing_2d: samples.iter().filter(|s| s.pred_box3d.is_some() && s.pred_box2d.is_none()).count(),
        unexpected_predictions: unexpected.len(),
        category_sources,
        breakdowns: breakdown_metrics(&samples),
        missing_keys: missing.into_iter().take(MAX_LISTED_KEYS).collect(),
        format_failure_examples: failures.into_iter().take(MAX_LISTED_KEYS).collect(),
        unexpected_keys: unexpected.into_iter().take(MAX_LISTED_KEYS).collect(),
        problems: predictions.problems.clone(),
    };
    Ok(Evaluation { report, samples })
}
