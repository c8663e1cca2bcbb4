//! Predictions of an exported model package (`monovlm-export`) on a dataset split, made by the
//! runtime the vehicle runs ([`monovlm_runtime::grounder::Grounder`] on ONNX Runtime): the numbers
//! of `docs/results.md` are those of the shipped artefact, not of the training-time model.
//!
//! Each image is encoded once and its descriptions are decoded together in batches of at most
//! `batch` queries (the runtime's batched greedy decoding), so a split of thousands of
//! descriptions is scored in minutes on a CPU.

use std::collections::BTreeMap;
use std::time::Instant;

use monovlm_runtime::grounder::Grounder;
use monovlm_runtime::protocol::Query;
use monovlm_runtime::source::{Frame, read_image};
use serde_json::json;

use crate::data::mono3drefer::{Dataset, Record, Split};
use crate::error::Result;

/// What a package run over a split produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PackagePredictions {
    /// One JSON line per record ([`crate::eval::predictions`] format): the parsed boxes in camera
    /// pixels and the camera frame, or the raw text when it did not parse (scored as a format
    /// failure).
    pub lines: Vec<String>,
    /// Images encoded.
    pub images: usize,
    /// Wall-clock seconds of the whole run (image reading included).
    pub seconds: f64,
    /// Tokens generated over all queries.
    pub new_tokens: usize,
}

/// Grounds every description of `split` with `grounder`, at most `batch` queries per decoder
/// batch (0 counts as 1). `on_record` is called after each record (progress).
///
/// # Errors
/// Unreadable images or calibration ([`crate::Error::Io`], [`crate::Error::Runtime`]),
/// inference errors. A description the protocol refuses is not an error: its line holds no
/// boxes, only the reason as `text`, so the evaluator scores it as a format failure.
pub fn predict_split(
    dataset: &Dataset,
    split: Split,
    grounder: &mut Grounder,
    batch: usize,
    mut on_record: impl FnMut(),
) -> Result<PackagePredictions> {
    let t0 = Instant::now();
    let records = dataset.records(split);
    // Records of one image together, images in name order.
    let mut by_image: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_image.entry(r.image.as_str()).or_default().push(r);
    }
    let mut lines = Vec::with_capacity(records.len());
    let mut new_tokens = 0;
    for (index, (image_name, recs)) in by_image.iter().enumerate() {
        let path = dataset.image_path(image_name)?;
        let camera = dataset.intrinsics(image_name)?;
        let frame = Frame {
            image: read_image(&path)?,
            index: index as u64,
            name: (*image_name).to_owned(),
            intrinsics: Some(camera.clone()),
            captured: Instant::now(),
        };
        for chunk in recs.chunks(batch.max(1)) {
            // A description the protocol refuses (too long, control characters, chat-template
            // markers) is a sample like any other: written as an answerless line, so the evaluator
            // scores it IoU 0 in every denominator instead of the whole run stopping.
            let queries: Vec<_> = chunk.iter().map(|r| Query::new(&r.description)).collect();
            let valid: Vec<Query> = queries.iter().filter_map(|q| q.as_ref().ok().cloned()).collect();
            let mut groundings = grounder.ground(&frame, &valid, &camera)?.into_iter();
            for (r, q) in chunk.iter().zip(&queries) {
                if let Err(e) = q {
                    let text = format!("the protocol refused the description: {e}");
                    lines.push(
                        json!({ "instance_id": r.instance_id, "ann_id": r.ann_id, "text": text }).to_string(),
                    );
                    on_record();
                    continue;
                }
                let g = groundings.next().ok_or_else(|| monovlm_runtime::Error::Inference {
                    graph: "decoder",
                    message: "fewer groundings than queries".into(),
                })?;
                new_tokens += g.tokens;
                let line = match &g.answer {
                    Some(b) => json!({
                        "instance_id": r.instance_id,
                        "ann_id": r.ann_id,
                        "bbox_3d": b.bbox_3d_cam,
                        "bbox_2d": b.bbox_2d_px,
                    }),
                    None => json!({ "instance_id": r.instance_id, "ann_id": r.ann_id, "text": g.text }),
                };
                lines.push(line.to_string());
                on_record();
            }
        }
    }
    Ok(PackagePredictions { lines, images: by_image.len(), seconds: t0.elapsed().as_secs_f64(), new_tokens })
}
