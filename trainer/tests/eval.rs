//! The evaluator: ground truth scores 100 / 100 / 1.0; hand-computed small cases; strict `>`;
//! raw model text; missing predictions; the Mono3DVG-compatible IoU equals its reference
//! evaluator's formula on random boxes; the baseline runs and is scored; outputs are written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

use monovlm_calib::kitti::KittiLabel;
use monovlm_calib::{Box2d, Box3d, iou_3d};
use monovlm_runtime::protocol::{Answer, format_answer};
use monovlm_trainer::data::mono3drefer::{
    Dataset, DatasetWriter, Record, SampleKey, Split, Strictness, image_name,
};
use monovlm_trainer::eval::categories::{CategorySource, Difficulty, DistanceBand, Uniqueness};
use monovlm_trainer::eval::metrics::{Landing, Outcome, accuracy_stats};
use monovlm_trainer::eval::predictions::{Predicted, PredictionLine, PredictionSet, write_prediction_lines};
use monovlm_trainer::eval::report::{Evaluation, write_outputs};
use monovlm_trainer::eval::{baseline, evaluate};

/// Exact IoU of identical boxes: the polygon clipping may lose a few ulps.
const SAME_BOX_TOL: f64 = 1e-12;
/// The Mono3DVG IoU is computed in float32 on both sides.
const F32_TOL: f64 = 1e-6;

fn fixture() -> Dataset {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mono3drefer_mini");
    Dataset::load(&root, Strictness::Strict).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// JSON lines of the given predictions.
fn jsonl(lines: &[PredictionLine]) -> String {
    lines.iter().map(|l| l.to_json_line() + "\n").collect()
}

fn score(ds: &Dataset, text: &str) -> Evaluation {
    let set = PredictionSet::parse(text, Path::new("predictions.jsonl"));
    evaluate(ds, Split::Test, &set, "predictions.jsonl", || {}).unwrap()
}

#[test]
fn ground_truth_as_prediction_gives_100_100_1() {
    let ds = fixture();
    let lines: Vec<PredictionLine> = ds
        .records(Split::Test)
        .iter()
        .map(|r| PredictionLine::new(r.key(), &r.box3d, Some(&r.label.bbox)))
        .collect();
    let ev = score(&ds, &jsonl(&lines));
    let r = &ev.report;
    assert_eq!(
        (r.samples, r.predicted, r.missing, r.format_failures, r.unexpected_predictions),
        (4, 4, 0, 0, 0)
    );
    for b in r.breakdowns.iter().filter(|b| b.samples > 0) {
        for (stats, tol) in [(b.iou_3d, SAME_BOX_TOL), (b.iou_3d_mono3dvg, F32_TOL), (b.iou_2d, SAME_BOX_TOL)]
        {
            let s = stats.unwrap();
            assert_eq!((s.acc_at_025_pct, s.acc_at_050_pct), (100.0, 100.0), "{}", b.name);
            assert!((s.miou - 1.0).abs() < tol, "{}: {}", b.name, s.miou);
        }
        let e = b.errors.unwrap();
        assert_eq!(e.mean_abs_centre_err_m, [0.0; 3]);
        assert_eq!((e.mean_abs_size_err_avg_m, e.mean_abs_yaw_err_rad), (0.0, 0.0));
    }
    // The fixture's categories come from its split file: the far car is in no difficulty there.
    assert_eq!(r.category_sources.uniqueness, CategorySource::SplitFile);
    let count = |name: &str| r.breakdown(name).unwrap().samples;
    assert_eq!(
        ["Overall", "Unique", "Multiple", "Near", "Medium", "Far", "Easy", "Moderate", "Hard"].map(count),
        [4, 1, 3, 2, 0, 2, 1, 1, 0]
    );
    assert!(r.breakdown("Medium").unwrap().iou_3d.is_none());
}

#[test]
fn half_a_length_off_is_one_third_counted_at_025_not_at_05() {
    let ds = fixture();
    let car = &ds.records(Split::Test)[0];
    let g = car.box3d;
    // Half a length along the heading (cos yaw, 0, -sin yaw): overlap l/2 of 3l/2.
    let shifted =
        Box3d::new(g.x + 0.5 * g.l * g.yaw.cos(), g.y, g.z - 0.5 * g.l * g.yaw.sin(), g.l, g.w, g.h, g.yaw)
            .unwrap();
    assert!((iou_3d(&shifted, &g) - 1.0 / 3.0).abs() < 1e-9);
    let ev = score(&ds, &jsonl(&[PredictionLine::new(car.key(), &shifted, Some(&car.label.bbox))]));
    let sample = &ev.samples[0];
    assert!((sample.iou_3d - 1.0 / 3.0).abs() < 1e-9);
    // Over the one predicted sample of four: 25% at 0.25, none at 0.5, mIoU (1/3)/4.
    let all = ev.report.breakdown("Overall").unwrap().iou_3d.unwrap();
    assert_eq!((all.acc_at_025_pct, all.acc_at_050_pct), (25.0, 0.0));
    assert!((all.miou - 1.0 / 12.0).abs() < 1e-9);
    assert_eq!(ev.report.missing, 3);
    // Far holds this car and the other description of it (missing).
    let far = ev.report.breakdown("Far").unwrap().iou_3d.unwrap();
    assert_eq!((far.acc_at_025_pct, far.acc_at_050_pct), (50.0, 0.0));
    // Centre error: the shift; the errors average over predicted samples only.
    let e = ev.report.breakdown("Overall").unwrap().errors.unwrap();
    assert_eq!(e.samples, 1);
    assert!((e.mean_abs_centre_err_m[0] - (0.5 * g.l * g.yaw.cos()).abs()).abs() < 1e-12);
    assert!((e.mean_abs_centre_err_m[2] - (0.5 * g.l * g.yaw.sin()).abs()).abs() < 1e-12);
}

#[test]
fn a_box_on_another_object_is_a_wrong_pick_and_one_on_nothing_a_poor_box() {
    let ds = fixture();
    let recs = ds.records(Split::Test);
    let find =
        |id: u64, ann: u64| recs.iter().find(|r| r.key() == SampleKey { instance_id: id, ann_id: ann });
    let (own, second, other, missing) =
        (find(4567, 0).unwrap(), find(4567, 1).unwrap(), find(4568, 0).unwrap(), find(4569, 0).unwrap());
    assert!(recs.iter().all(|r| r.image == own.image), "the fixture's test objects share one image");
    let sky = Box2d::new(1000.0, 0.0, 1100.0, 40.0).unwrap();
    assert!([own, other, missing].iter().all(|r| monovlm_calib::iou_2d(&sky, &r.label.bbox) == 0.0));
    let lines = [
        PredictionLine::new(own.key(), &own.box3d, Some(&own.label.bbox)),
        PredictionLine::new(second.key(), &own.box3d, Some(&other.label.bbox)),
        PredictionLine::new(other.key(), &other.box3d, Some(&sky)),
    ];
    let ev = score(&ds, &jsonl(&lines));
    let landing = |r: &Record| ev.samples.iter().find(|s| s.key == r.key()).unwrap().landing;
    assert_eq!(landing(own), Some(Landing::Target));
    assert_eq!(landing(second), Some(Landing::OtherObject));
    assert_eq!(landing(other), Some(Landing::NoObject));
    assert_eq!(landing(missing), None);
    let l = ev.report.breakdown("Overall").unwrap().landing.unwrap();
    assert_eq!((l.target_pct, l.other_object_pct, l.no_object_pct), (25.0, 25.0, 25.0));
    assert_eq!(l.target_pct, ev.report.breakdown("Overall").unwrap().iou_2d.unwrap().acc_at_050_pct);
    let md = ev.report.to_markdown();
    assert!(md.contains("| on another object | on no object |"), "{md}");
}

#[test]
fn the_mono3dvg_iou_of_a_half_side_shift_is_one_third_too() {
    // A 2 m cube shifted by 1 m along x: both IoUs are 1/3 (the Mono3DVG one in float32).
    let a = Box3d::new(0.0, 1.0, 20.0, 2.0, 2.0, 2.0, 0.3).unwrap();
    let b = Box3d::new(1.0, 1.0, 20.0, 2.0, 2.0, 2.0, 0.3).unwrap();
    assert!((monovlm_calib::iou3d_mono3dvg(&a, &b) - 1.0 / 3.0).abs() < F32_TOL);
}

#[test]
fn accuracy_is_strictly_greater_than_the_threshold() {
    let s = accuracy_stats(&[0.5, 0.25]).unwrap();
    assert_eq!((s.acc_at_025_pct, s.acc_at_050_pct), (50.0, 0.0));
    let s = accuracy_stats(&[0.5000001, 0.2500001]).unwrap();
    assert_eq!((s.acc_at_025_pct, s.acc_at_050_pct), (100.0, 50.0));
    assert!(accuracy_stats(&[]).is_none());
    // An IoU of exactly 0.5 from geometry: 3 m cubes 1 m apart overlap 2 of 3 m, 18 / 36.
    let a = Box3d::new(0.0, 0.0, 10.0, 3.0, 3.0, 3.0, 0.0).unwrap();
    let b = Box3d::new(1.0, 0.0, 10.0, 3.0, 3.0, 3.0, 0.0).unwrap();
    assert_eq!(iou_3d(&a, &b), 0.5);
    let s = accuracy_stats(&[iou_3d(&a, &b)]).unwrap();
    assert_eq!(s.acc_at_050_pct, 0.0);
}

#[test]
fn raw_text_is_parsed_failures_and_missing_count_zero() {
    let ds = fixture();
    let recs = ds.records(Split::Test);
    let answer = |r: &Record| format_answer(&Answer { bbox_2d: r.label.bbox, bbox_3d: r.box3d });
    let text_line = |r: &Record, text: &str| {
        serde_json::json!({"instance_id": r.instance_id, "ann_id": r.ann_id, "text": text}).to_string()
    };
    let lines = [
        // 0: the model's text, with a think block.
        text_line(&recs[0], &format!("<think>far ahead</think>{}", answer(&recs[0]))),
        // 1: not an answer.
        text_line(&recs[1], "the car is far ahead"),
        // 2: an invalid parsed box (negative length).
        format!(
            r#"{{"instanceID": {}, "ann_id": 0, "bbox_3d": [0, 1, 10, -4, 1.6, 1.5, 0]}}"#,
            recs[2].instance_id
        ),
        // 3 (pedestrian): no line. Then: an unknown key, a line without key, a repeated key, junk.
        r#"{"instance_id": 999, "ann_id": 0, "bbox_3d": [0, 1, 10, 4, 1.6, 1.5, 0]}"#.to_owned(),
        r#"{"bbox_3d": [0, 1, 10, 4, 1.6, 1.5, 0]}"#.to_owned(),
        text_line(&recs[0], "<answer>{}</answer>"),
        "not json".to_owned(),
    ];
    let ev = score(&ds, &(lines.join("\n") + "\n"));
    let r = &ev.report;
    assert_eq!((r.predicted, r.format_failures, r.missing, r.unexpected_predictions), (1, 2, 1, 1));
    assert_eq!(r.missing_keys, [recs[3].key()]);
    assert_eq!(r.unexpected_keys, [SampleKey { instance_id: 999, ann_id: 0 }]);
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems); // no key, repeated key, junk
    assert!(r.problems.iter().any(|p| p.to_string().contains("predictions.jsonl:6")), "{:?}", r.problems);
    assert!(matches!(ev.samples[1].outcome, Outcome::FormatFailure { .. }));
    assert!(matches!(ev.samples[2].outcome, Outcome::FormatFailure { .. }));
    assert_eq!(ev.samples[3].outcome, Outcome::Missing);
    // The text answer is rounded to the protocol's 0.01: nearly exact.
    assert!(ev.samples[0].iou_3d > 0.95 && ev.samples[0].iou_2d > 0.95, "{:?}", ev.samples[0]);
    for s in &ev.samples[1..] {
        assert_eq!((s.iou_3d, s.iou_3d_mono3dvg, s.iou_2d), (0.0, 0.0, 0.0));
    }
    let all = r.breakdown("Overall").unwrap().iou_3d.unwrap();
    assert_eq!((all.acc_at_025_pct, all.acc_at_050_pct), (25.0, 25.0));
    // A predicted 3D box without a 2D box scores 2D IoU 0 and is counted.
    let no_2d = format!(r#"{{"instance_id": 4567, "ann_id": 0, "bbox_3d": {:?}}}"#, recs[0].box3d.to_array());
    let ev = score(&ds, &no_2d);
    assert_eq!((ev.report.missing_2d, ev.samples[0].iou_2d), (1, 0.0));
}

/// Reference values of `scripts/reference/iou_reference.py` (calib's fixture): the Mono3DVG
/// evaluator's `calc_iou` in numpy float32 on random box pairs.
#[derive(serde::Deserialize)]
struct Reference {
    boxes_a: Vec<[f64; 7]>,
    boxes_b: Vec<[f64; 7]>,
    iou_mono3dvg: Vec<f64>,
    iou_rotated: Vec<f64>,
}

#[test]
fn the_evaluator_reproduces_the_reference_evaluator_on_random_boxes() {
    let r: Reference =
        serde_json::from_str(include_str!("../../calib/tests/fixtures/iou_reference.json")).unwrap();
    // A dataset whose ground truth are the `a` boxes, scored with the `b` boxes as predictions.
    let root = scratch("reference");
    let mut w = DatasetWriter::create(&root).unwrap();
    w.add_image(Split::Test, &image_name(0)).unwrap();
    let to_box = |v: &[f64; 7]| Box3d::new(v[0], v[1], v[2], v[3], v[4], v[5], v[6]).unwrap();
    let bbox = Box2d::new(10.0, 10.0, 50.0, 60.0).unwrap();
    let mut lines = Vec::new();
    for (i, (a, b)) in r.boxes_a.iter().zip(&r.boxes_b).enumerate() {
        let key = SampleKey { instance_id: i as u64, ann_id: 0 };
        let label = KittiLabel::from_box3d("Car", &to_box(a), bbox, 0.0, 0);
        w.add_record(Record::new(&image_name(0), key, "car", "a car", label).unwrap()).unwrap();
        lines.push(PredictionLine::new(key, &to_box(b), Some(&bbox)));
    }
    w.finish().unwrap();
    let ds = Dataset::load(&root, Strictness::Strict).unwrap();
    let ev = score(&ds, &jsonl(&lines));
    assert_eq!(ev.samples.len(), r.iou_mono3dvg.len());
    for (i, s) in ev.samples.iter().enumerate() {
        assert!((s.iou_3d_mono3dvg - r.iou_mono3dvg[i]).abs() < F32_TOL, "pair {i}");
        assert!((s.iou_3d - r.iou_rotated[i]).abs() < 1e-9, "pair {i}");
    }
    // The reference evaluator's aggregates: sum(iou > t) / n and sum(iou) / n.
    let n = r.iou_mono3dvg.len() as f64;
    let pct = |t: f64| 100.0 * r.iou_mono3dvg.iter().filter(|&&v| v > t).count() as f64 / n;
    let m = ev.report.breakdown("Overall").unwrap().iou_3d_mono3dvg.unwrap();
    assert_eq!((m.acc_at_025_pct, m.acc_at_050_pct), (pct(0.25), pct(0.5)));
    assert!((m.miou - r.iou_mono3dvg.iter().sum::<f64>() / n).abs() < F32_TOL);
    // Without a split file, categories come from the labels.
    assert_eq!(ev.report.category_sources.distance, CategorySource::Labels);
}

#[test]
fn categories_from_labels_follow_design_md() {
    let ds = fixture();
    let recs = ds.records(Split::Test);
    // Copy the fixture without its split file: categories are computed.
    let (cats, sources) = monovlm_trainer::eval::categories::categorize(recs, ds.all_records(), None);
    assert_eq!(sources.difficulty, CategorySource::Labels);
    assert_eq!(cats[0].uniqueness, Uniqueness::Multiple); // two cars in image 000000
    assert_eq!(cats[3].uniqueness, Uniqueness::Unique); // the only pedestrian
    assert_eq!(cats[0].distance, Some(DistanceBand::Far)); // z = 46.7 m
    assert_eq!(cats[2].distance, Some(DistanceBand::Near)); // z = 13.2 m
    // The far car: 26.8 px high -> Moderate (not Easy: < 40 px); the parked car: occluded 1 -> Moderate.
    assert_eq!(cats[0].difficulty, Some(Difficulty::Moderate));
    assert_eq!(cats[2].difficulty, Some(Difficulty::Moderate));
    assert_eq!(cats[3].difficulty, Some(Difficulty::Easy));
    let mut hard = recs[2].label.clone();
    hard.truncated = 0.45;
    assert_eq!(hard.difficulty(), Some(Difficulty::Hard));
    hard.occluded = 3;
    assert_eq!(hard.difficulty(), None);
}

#[test]
fn the_baseline_runs_on_the_fixture_and_is_scored() {
    let ds = fixture();
    let (fitted, lines, problems) = baseline::run(&ds, Split::Train, Split::Test, || {});
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(lines.len(), ds.records(Split::Test).len());
    // Fitted on the two training cars: camera height = median bottom y = (1.60 + 1.70) / 2.
    assert!((fitted.camera_height_m - 1.65).abs() < 1e-12);
    assert!(fitted.mean_size_lwh_m.contains_key("car"));
    // The far car: the ground seen at its bottom edge (v = 200.1 px), plus half the mean length.
    let k = ds.intrinsics("000000").unwrap();
    let [l, _, h] = fitted.size_lwh_m("car");
    let z_contact = (1.65 - k.offset_m().1) / ((200.1 - k.cy()) / k.fy());
    let far = &lines[0];
    assert!((far.bbox_3d[2] - (z_contact + 0.5 * l)).abs() < 1e-9, "{far:?}");
    assert!((far.bbox_3d[1] - (1.65 - 0.5 * h)).abs() < 1e-12);
    // Written and read back through the predictions file, scored by the same evaluator.
    let out = scratch("baseline");
    let path = out.join("baseline_predictions.jsonl");
    write_prediction_lines(&path, &lines).unwrap();
    let set = PredictionSet::read(&path).unwrap();
    let ev = evaluate(&ds, Split::Test, &set, "baseline", || {}).unwrap();
    assert_eq!((ev.report.predicted, ev.report.missing), (4, 0));
    let overall = ev.report.breakdown("Overall").unwrap();
    assert_eq!(overall.iou_2d.unwrap().acc_at_050_pct, 100.0); // ground-truth 2D boxes
    let files = write_outputs(&ev, &out).unwrap();
    for png in [&files.accuracy_plot, &files.depth_plot] {
        assert_eq!(image::image_dimensions(png).unwrap(), (1200, 700));
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(json["samples"], 4);
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("| Overall | 4 |"), "{md}");
    assert_eq!(std::fs::read_to_string(&files.samples).unwrap().lines().count(), 4);
}

#[test]
fn an_empty_split_is_an_error() {
    let ds = fixture();
    let set = PredictionSet::default();
    assert!(evaluate(&ds, Split::Val, &set, "x", || {}).is_ok());
    let root = scratch("empty");
    DatasetWriter::create(&root).unwrap().finish().unwrap();
    let empty = Dataset::load(&root, Strictness::Strict).unwrap();
    assert!(evaluate(&empty, Split::Test, &set, "x", || {}).is_err());
}

#[test]
fn the_baseline_recovers_a_box_on_flat_ground_with_the_mean_size() {
    // Training objects all on the ground 1.65 m below the camera; one size per class.
    let root = scratch("flat_ground");
    let calib = monovlm_calib::kitti::KittiCalib::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mono3drefer_mini/calib/000000.txt"),
    )
    .unwrap();
    let k = calib.intrinsics(2, 1224, 370).unwrap();
    let mut w = DatasetWriter::create(&root).unwrap();
    let (l, wd, h) = (4.0, 1.6, 1.5);
    let mut add = |i: u32, split: Split, x: f64, z: f64| {
        let name = image_name(i);
        w.write_image(&name, &image::RgbImage::new(1224, 370)).unwrap();
        w.write_calib(&name, &calib).unwrap();
        w.add_image(split, &name).unwrap();
        let b = Box3d::new(x, 1.65 - 0.5 * h, z, l, wd, h, std::f64::consts::FRAC_PI_2).unwrap();
        let bbox = b.project_to_box2d(&k).unwrap();
        let label = KittiLabel::from_box3d("Car", &b, bbox, 0.0, 0);
        let key = SampleKey { instance_id: u64::from(i), ann_id: 0 };
        w.add_record(Record::new(&name, key, "car", "a car", label).unwrap()).unwrap();
    };
    add(0, Split::Train, -3.0, 15.0);
    add(1, Split::Train, 4.0, 30.0);
    add(2, Split::Test, 0.5, 22.0);
    w.finish().unwrap();
    let ds = Dataset::load(&root, Strictness::Strict).unwrap();
    let (fitted, lines, _) = baseline::run(&ds, Split::Train, Split::Test, || {});
    assert!((fitted.camera_height_m - 1.65).abs() < 1e-12);
    assert_eq!(fitted.size_lwh_m("car"), [l, wd, h]);
    // The 2D box's bottom edge is the footprint's near edge at z - l/2: depth comes back exactly;
    // here the near face spans the 2D box, so the centre column gives x exactly too.
    let p = lines[0].bbox_3d;
    assert!((p[2] - 22.0).abs() < 1e-9, "{p:?}");
    assert!((p[1] - (1.65 - 0.5 * h)).abs() < 1e-12);
    assert!((p[0] - 0.5).abs() < 1e-9, "{p:?}");
    let set = PredictionSet::parse(&jsonl(&lines), Path::new("baseline"));
    let ev = evaluate(&ds, Split::Test, &set, "baseline", || {}).unwrap();
    assert!((ev.samples[0].iou_3d - 1.0).abs() < 1e-9, "{}", ev.samples[0].iou_3d);
}

#[test]
fn a_malformed_optional_2d_box_keeps_the_3d_box_and_is_listed() {
    let text = concat!(
        r#"{"instance_id": 7, "ann_id": 0, "bbox_3d": [0, 1, 10, 4, 1.6, 1.5, 0], "bbox_2d": [50, 10, 20, 40]}"#,
        "\n",
        r#"{"instance_id": 8, "ann_id": 0, "bbox_3d": [0, 1, 10, 4, 1.6, 1.5, 0], "bbox_2d": [1, 2, 3]}"#,
        "\n",
    );
    let set = PredictionSet::parse(text, Path::new("p.jsonl"));
    for id in [7, 8] {
        let got = &set.by_key[&SampleKey { instance_id: id, ann_id: 0 }];
        let Predicted::Boxes { bbox_3d, bbox_2d } = got else { panic!("{id}: {got:?}") };
        assert_eq!(bbox_3d.to_array()[2], 10.0);
        assert!(bbox_2d.is_none(), "{id}: {got:?}");
    }
    assert_eq!(set.problems.len(), 2, "{:?}", set.problems);
    assert!(set.problems.iter().all(|p| p.to_string().contains("bbox_2d ignored")), "{:?}", set.problems);
    assert!(set.problems[0].to_string().contains("p.jsonl:1"), "{:?}", set.problems);
}
