//! Dense vision pre-training: per-token targets from the labels, and a training loop that changes
//! the vision tower only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use monovlm_runtime::preprocess::PreprocessConfig;
use monovlm_trainer::data::mono3drefer::{Dataset, Split, Strictness};
use monovlm_trainer::data::synth::{self, SynthConfig};
use monovlm_trainer::train::dense::{
    DENSE_CLASSES, DenseConfig, REGRESSION_TARGETS, build_dense_images, dense_class, train_dense,
};
use tch::Kind;

const TOKEN_PX: f64 = 28.0;

fn dataset(name: &str, images: u32) -> Dataset {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    synth::generate(&SynthConfig { images, seed: 11, ..SynthConfig::default() }, &root, &|| {}).unwrap();
    Dataset::load(&root, Strictness::Strict).unwrap()
}

#[test]
fn every_token_shows_the_nearest_object_covering_its_centre() {
    let dataset = dataset("dense_targets", 6);
    let pre = PreprocessConfig { max_pixels: 62720, ..PreprocessConfig::default() };
    let images = build_dense_images(&dataset, Split::Train, &pre, None, || {}).unwrap();
    assert_eq!(images.len(), dataset.images(Split::Train).len());
    assert_eq!(dense_class("Car"), 1);
    assert_eq!(dense_class("Tram"), 7);
    assert_eq!(dense_class("Bus"), DENSE_CLASSES.len() as i64, "unknown types are Misc");
    let mut checked_tokens = 0;
    for d in &images {
        let [_, gh, gw] = d.image.grid_thw;
        let (rows, cols) = (gh / 2, gw / 2);
        assert_eq!(d.classes.len(), rows * cols);
        assert_eq!(d.classes.len(), d.image.num_image_tokens);
        assert_eq!(d.regression.len(), rows * cols * REGRESSION_TARGETS);
        let (w, h) = d.image.input_size_px();
        let name = &d.name;
        let mut objects: Vec<_> = dataset.records(Split::Train).iter().filter(|r| &r.image == name).collect();
        objects.sort_by_key(|r| r.instance_id);
        objects.dedup_by_key(|r| r.instance_id);
        for row in 0..rows {
            for col in 0..cols {
                let (x, y) = ((col as f64 + 0.5) * TOKEN_PX, (row as f64 + 0.5) * TOKEN_PX);
                let covering = objects
                    .iter()
                    .filter(|r| {
                        let b = d.image.resize_map.map_box(&r.label.bbox);
                        x >= b.x1 && x <= b.x2 && y >= b.y1 && y <= b.y2
                    })
                    .min_by(|a, b| a.box3d.z.total_cmp(&b.box3d.z));
                let t = row * cols + col;
                let targets = &d.regression[t * REGRESSION_TARGETS..(t + 1) * REGRESSION_TARGETS];
                match covering {
                    Some(r) => {
                        assert_eq!(d.classes[t], dense_class(&r.label.class), "token ({row}, {col})");
                        let b = d.image.resize_map.map_box(&r.label.bbox);
                        let expect = [
                            b.x1 / f64::from(w),
                            b.y1 / f64::from(h),
                            b.x2 / f64::from(w),
                            b.y2 / f64::from(h),
                        ];
                        for (got, want) in targets[..4].iter().zip(expect) {
                            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
                        }
                        assert!((f64::from(targets[6]) - r.box3d.z.ln() / 4.0).abs() < 1e-5);
                        let (s, c) = (f64::from(targets[10]), f64::from(targets[11]));
                        assert!((s * s + c * c - 1.0).abs() < 1e-5, "yaw as a unit vector");
                        checked_tokens += 1;
                    }
                    // A token no box covers is background, unless a small object claims it by
                    // its centre.
                    None if d.classes[t] == 0 => assert!(targets.iter().all(|&v| v == 0.0)),
                    None => {
                        let claimed = objects.iter().any(|r| {
                            let b = d.image.resize_map.map_box(&r.label.bbox);
                            let (cx, cy) = (0.5 * (b.x1 + b.x2), 0.5 * (b.y1 + b.y2));
                            ((cx / TOKEN_PX).floor().max(0.0) as usize).min(cols - 1) == col
                                && ((cy / TOKEN_PX).floor().max(0.0) as usize).min(rows - 1) == row
                        });
                        assert!(claimed, "token ({row}, {col}) is an object with no box over it");
                    }
                }
            }
        }
        // Every object claims at least one token (unless nearer objects hide it entirely).
        assert!(d.object_tokens() > 0);
    }
    assert!(checked_tokens > 20, "only {checked_tokens} object tokens checked");
}

#[test]
fn dense_pretraining_learns_and_changes_the_vision_tower_only() {
    tch::set_num_threads(2);
    let dataset = dataset("dense_train", 10);
    let pre = PreprocessConfig { max_pixels: 62720, ..PreprocessConfig::default() };
    let train = build_dense_images(&dataset, Split::Train, &pre, None, || {}).unwrap();
    let (mut model, _) = common::tiny_model(&common::tokenizer(), 0);
    let before: Vec<(String, tch::Tensor)> =
        model.params().params().iter().map(|p| (p.name.clone(), p.tensor.detach().copy())).collect();
    let cfg = DenseConfig { steps: 120, images_per_step: 4, eval_every: 0, ..DenseConfig::default() };
    let log = train_dense(&mut model, &train, &train, &cfg, |_| {}).unwrap();
    assert_eq!(log.len(), 120);
    let first: f64 = log[..10].iter().map(|l| l.class_loss).sum::<f64>() / 10.0;
    let last: f64 = log[110..].iter().map(|l| l.class_loss).sum::<f64>() / 10.0;
    assert!(last < 0.6 * first, "class loss {first:.3} -> {last:.3}");
    let val = log.last().unwrap().val.clone().expect("validated after the last step");
    assert!(val.background_pct > 80.0 && val.box2d_mae < 0.2, "{val:?}");
    for (p, (name, old)) in model.params().params().iter().zip(&before) {
        let changed = p
            .tensor
            .detach()
            .to_kind(Kind::Float)
            .ne_tensor(&old.to_kind(Kind::Float))
            .any()
            .int64_value(&[])
            == 1;
        assert_eq!(changed, name.starts_with("visual."), "{name} changed: {changed}");
        assert!(p.trainable, "{name}: trainability is restored");
    }
}
