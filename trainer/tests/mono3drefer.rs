//! The Mono3DRefer reader and writer: a hand-written fixture in the layout of the Mono3DVG code
//! (with a real KITTI label line and KITTI's P2 of training frame 000000) parses as expected;
//! malformed records are reported with file and record index; writer -> reader is exact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

use monovlm_calib::kitti::{KittiCalib, KittiLabel};
use monovlm_calib::{Box2d, Box3d};
use monovlm_trainer::Error;
use monovlm_trainer::data::mono3drefer::{
    Dataset, DatasetWriter, InstanceSplit, Location, Record, SampleKey, Split, Strictness, format_label_2,
    image_name, parse_label_2,
};

/// The real KITTI label line of the issue, as Mono3DRefer writes it.
const REAL_LABEL_2: &str =
    "['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mono3drefer_mini")
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mono3drefer").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_real_label_line_parses_field_by_field() {
    let label = parse_label_2(REAL_LABEL_2).unwrap();
    assert_eq!(label.class, "Car");
    assert_eq!((label.truncated, label.occluded, label.alpha), (0.0, 0, -1.58));
    assert_eq!(label.bbox, Box2d::new(587.0, 173.3, 614.1, 200.1).unwrap());
    assert_eq!(label.hwl_m, [1.65, 1.67, 3.64]);
    assert_eq!(label.location_m, [-0.65, 1.71, 46.70]);
    assert_eq!(label.rotation_y, -1.59);
    assert_eq!(label.score, None);
    // Same label as the KITTI text line read by monovlm-calib.
    let kitti = KittiLabel::parse_line(
        "Car 0.00 0 -1.58 587.00 173.30 614.10 200.10 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59",
        "line",
        1,
    )
    .unwrap();
    assert_eq!(label, kitti);
    // Other spellings: double quotes, ints, no spaces, float occlusion, trailing comma, a score.
    let variants = [
        r#"["Car",0,0.0,-1.58,587,173.3,614.1,200.1,1.65,1.67,3.64,-0.65,1.71,46.7,-1.59,]"#,
        "[ 'Car' , 0.0 , 0 , -1.58 , 587.0 , 173.3 , 614.1 , 200.1 , 1.65 , 1.67 , 3.64 , -0.65 , 1.71 , 46.70 , -1.59 ]",
    ];
    for v in variants {
        assert_eq!(parse_label_2(v).unwrap(), label, "{v}");
    }
    let scored = parse_label_2("['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59, 0.93]").unwrap();
    assert_eq!(scored.score, Some(0.93));
}

#[test]
fn malformed_label_literals_name_the_element() {
    let cases = [
        ("['Car', 0.0, 0, -1.58]", "15 elements"),
        (
            "[0.0, 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]",
            "element 0",
        ),
        (
            "['Car', 'x', 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]",
            "element 1",
        ),
        (
            "['Car', 0.0, 7, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]",
            "occluded",
        ),
        (
            "['Car', 0.0, 0, -1.58, 587.0, 173.3, 500.0, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]",
            "bbox",
        ),
        (
            "['Car', 0.0, 0, nan, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]",
            "element 3",
        ),
        ("Car 0.0 0 -1.58 587.0 173.3 614.1 200.1 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59", "'['"),
    ];
    for (text, needle) in cases {
        let err = parse_label_2(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err:?} should mention {needle:?}");
    }
}

#[test]
fn the_fixture_parses_as_expected() {
    let ds = Dataset::load(&fixture(), Strictness::Strict).unwrap();
    let report = ds.report();
    assert_eq!((report.records_in_file, report.records_loaded, report.records_without_split), (7, 7, 0));
    assert!(report.problems.is_empty());
    assert_eq!(report.images_per_split, [1, 1, 1]);
    assert_eq!(ds.records(Split::Test).len(), 4);
    assert_eq!(ds.records(Split::Train).len(), 2);
    assert_eq!(ds.records(Split::Val).len(), 1);
    assert_eq!(ds.images(Split::Test), ["000000"]);

    let car = &ds.records(Split::Test)[0];
    assert_eq!(car.key(), SampleKey { instance_id: 4567, ann_id: 0 });
    assert_eq!((car.image.as_str(), car.object_name.as_str()), ("000000", "car"));
    assert_eq!(car.description, "the white car far ahead in the middle of the road");
    assert_eq!(car.label, parse_label_2(REAL_LABEL_2).unwrap());
    // Geometric centre = bottom centre - h/2; l, w, h from (h, w, l).
    let expected = Box3d::new(-0.65, 1.71 - 0.5 * 1.65, 46.70, 3.64, 1.67, 1.65, -1.59).unwrap();
    assert_eq!(car.box3d, expected);

    // The second spelling (double quotes, ints) and the third (odd spacing) parse too.
    let parked = &ds.records(Split::Test)[2];
    assert_eq!(parked.label.class, "Car");
    assert_eq!((parked.label.truncated, parked.label.occluded), (0.12, 1));
    assert_eq!(parked.label.bbox, Box2d::new(110.0, 182.5, 380.25, 290.0).unwrap());
    let walker = &ds.records(Split::Test)[3];
    assert_eq!(walker.label.location_m, [1.84, 1.47, 8.41]);

    // Instance categories.
    let split = ds.instance_split().unwrap();
    assert_eq!(split.unique.iter().copied().collect::<Vec<_>>(), [4569]);
    assert!(split.multiple.is_empty() && split.medium.is_empty() && split.hard.is_empty());
    assert!(split.far.contains(&4567) && split.near.contains(&4568));

    // Per-image intrinsics: KITTI's P2 of frame 000000 and the PNG's size.
    let k = ds.intrinsics("000000").unwrap();
    assert_eq!((k.fx(), k.fy(), k.cx(), k.cy()), (707.0493, 707.0493, 604.0814, 180.5066));
    assert_eq!((k.width(), k.height()), (1224, 370));
    assert!((k.offset_m().0 - 45.75831 / -707.0493).abs() < 1e-15);
    assert_eq!(ds.image_size_px("000001").unwrap(), (1224, 370));
    assert!(ds.check_files(|| {}).is_empty());
}

/// Writes `records` (JSON text) with one test image listed, returns the root.
fn dataset_with_json(name: &str, json: &str) -> PathBuf {
    let root = scratch(name);
    std::fs::write(root.join("Mono3DRefer.json"), json).unwrap();
    std::fs::write(root.join("Mono3DRefer_train_image.txt"), "").unwrap();
    std::fs::write(root.join("Mono3DRefer_val_image.txt"), "").unwrap();
    std::fs::write(root.join("Mono3DRefer_test_image.txt"), "000007\n\n").unwrap();
    root
}

#[test]
fn malformed_records_are_reported_with_file_and_index() {
    let good = |id: u64, ann: u64| {
        format!(
            r#"{{"im_name": "000007", "instanceID": {id}, "ann_id": {ann}, "objectName": "car", "description": "a car", "label_2": "{REAL_LABEL_2}"}}"#
        )
    };
    let records = [
        good(1, 0),                                                                                             // 0 ok
        r#"{"im_name": "000007", "instanceID": 2, "ann_id": 0, "objectName": "car", "description": "x", "label_2": "['Car', 0.0]"}"#.to_owned(), // 1 short label
        r#"{"im_name": "000007", "instanceID": 3, "ann_id": 0, "objectName": "car", "label_2": "[]"}"#.to_owned(), // 2 no description
        good(1, 0),                                                                                             // 3 duplicate key
        r#"{"im_name": "7a", "instanceID": 4, "ann_id": 0, "objectName": "car", "description": "x", "label_2": "['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]"}"#.to_owned(), // 4 bad image name
        r#"{"im_name": "000007", "instanceID": 5, "ann_id": 0, "objectName": "car", "description": "x", "label_2": "['DontCare', -1, -1, -10, 503.89, 169.71, 590.61, 190.13, -1, -1, -1, -1000, -1000, -1000, -10]"}"#.to_owned(), // 5 no 3D box
        good(1, 1),                                                                                             // 6 ok
        r#"{"im_name": "000009", "instanceID": 6, "ann_id": 0, "objectName": "car", "description": "x", "label_2": "['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.70, -1.59]"}"#.to_owned(), // 7 in no split
        "42".to_owned(),                                                                                       // 8 not an object
    ];
    let root = dataset_with_json("malformed", &format!("[{}]", records.join(",\n")));
    std::fs::write(root.join("Mono3DRefer_val_image.txt"), "000008\nimage9\n").unwrap();
    std::fs::write(root.join("Mono3DRefer_test_image.txt"), "000007\n\n000008\n").unwrap();

    let ds = Dataset::load(&root, Strictness::Lenient).unwrap();
    let report = ds.report();
    assert_eq!(report.records_in_file, 9);
    assert_eq!(report.records_loaded, 2, "records 0 and 6");
    assert_eq!(report.records_without_split, 1, "record 7");
    let keys: Vec<SampleKey> = ds.records(Split::Test).iter().map(Record::key).collect();
    assert_eq!(keys, [SampleKey { instance_id: 1, ann_id: 0 }, SampleKey { instance_id: 1, ann_id: 1 }]);

    let json = root.join("Mono3DRefer.json");
    let at = |index: usize| {
        report
            .problems
            .iter()
            .find(|p| p.file == json && p.location == Location::Record(index))
            .unwrap_or_else(|| panic!("no problem reported for record {index}: {:#?}", report.problems))
    };
    assert!(at(1).message.contains("15 elements"), "{}", at(1));
    assert!(at(2).message.contains("description"), "{}", at(2));
    assert!(at(3).message.contains("duplicate"), "{}", at(3));
    assert!(at(4).message.contains("image name"), "{}", at(4));
    assert!(at(5).message.contains("3D box"), "{}", at(5));
    assert!(at(8).to_string().contains("record 8: expected a JSON object"), "{}", at(8));
    // The split lists: a bad name (val, line 2) and an image already in the val split (test, line 3).
    let lines: Vec<(PathBuf, Location)> =
        report.problems.iter().filter(|p| p.file != json).map(|p| (p.file.clone(), p.location)).collect();
    assert_eq!(
        lines,
        [
            (root.join("Mono3DRefer_val_image.txt"), Location::Line(2)),
            (root.join("Mono3DRefer_test_image.txt"), Location::Line(3))
        ]
    );
    assert_eq!(report.problems.len(), 6 + 2, "{:#?}", report.problems);

    // Strict: rejected, listing the same problems.
    match Dataset::load(&root, Strictness::Strict) {
        Err(Error::Rejected { problems }) => assert_eq!(problems, report.problems),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn missing_files_are_problems_or_errors() {
    let root = dataset_with_json("missing", "[]");
    std::fs::remove_file(root.join("Mono3DRefer_val_image.txt")).unwrap();
    let ds = Dataset::load(&root, Strictness::Lenient).unwrap();
    assert_eq!(ds.report().problems.len(), 1);
    assert_eq!(ds.report().problems[0].location, Location::File);
    // The test image listed has neither PNG nor calibration.
    let problems = ds.check_files(|| {});
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(ds.intrinsics("000007").is_err());
    // No annotation file at all: an error in any mode.
    std::fs::remove_file(root.join("Mono3DRefer.json")).unwrap();
    assert!(matches!(Dataset::load(&root, Strictness::Lenient), Err(Error::Io { .. })));
    // Not an array.
    std::fs::write(root.join("Mono3DRefer.json"), "{}").unwrap();
    assert!(matches!(Dataset::load(&root, Strictness::Lenient), Err(Error::Json { .. })));
}

#[test]
fn writer_then_reader_gives_identical_boxes() {
    let root = scratch("round_trip");
    let calib = KittiCalib::read(&fixture().join("calib/000000.txt")).unwrap();
    let mut writer = DatasetWriter::create(&root).unwrap();
    // Random values, so the round trip covers many digits.
    let mut rng = monovlm_calib::synth::SplitMix64::new(7);
    let mut written = Vec::new();
    for i in 0..6u32 {
        let name = image_name(i);
        let split = Split::ALL[i as usize % 3];
        writer.write_image(&name, &image::RgbImage::new(64, 48)).unwrap();
        writer.write_calib(&name, &calib).unwrap();
        writer.add_image(split, &name).unwrap();
        for j in 0..3u64 {
            let b = Box3d::new(
                rng.range(-20.0, 20.0),
                rng.range(0.5, 2.0),
                rng.range(3.0, 70.0),
                rng.range(0.5, 12.0),
                rng.range(0.4, 3.0),
                rng.range(0.8, 4.0),
                rng.range(-4.0, 4.0),
            )
            .unwrap();
            let x1 = rng.range(0.0, 60.0);
            let y1 = rng.range(0.0, 40.0);
            let bbox = Box2d::new(x1, y1, x1 + rng.range(0.1, 4.0), y1 + rng.range(0.1, 8.0)).unwrap();
            let class = ["Car", "Pedestrian", "Cyclist"][j as usize];
            let label = KittiLabel::from_box3d(class, &b, bbox, rng.range(0.0, 0.5), (j % 3) as i8);
            let key = SampleKey { instance_id: u64::from(i) * 10 + j, ann_id: j % 2 };
            let desc = format!("the {} with \"quotes\" and 'apostrophes' number {j}", class.to_lowercase());
            let record = Record::new(&name, key, &class.to_lowercase(), &desc, label).unwrap();
            written.push((split, record.clone()));
            writer.add_record(record).unwrap();
        }
    }
    let mut categories = InstanceSplit::default();
    categories.unique.extend([0, 10, 20]);
    categories.far.insert(31);
    writer.set_instance_split(categories.clone());
    writer.finish().unwrap();

    let ds = Dataset::load(&root, Strictness::Strict).unwrap();
    assert_eq!(ds.report().records_loaded, written.len());
    for split in Split::ALL {
        let expected: Vec<&Record> = written.iter().filter(|(s, _)| *s == split).map(|(_, r)| r).collect();
        let got: Vec<&Record> = ds.records(split).iter().collect();
        assert_eq!(got, expected, "{split}");
        for (g, e) in got.iter().zip(&expected) {
            // Bit for bit, not just within a tolerance.
            assert_eq!(g.box3d.to_array().map(f64::to_bits), e.box3d.to_array().map(f64::to_bits));
        }
    }
    assert_eq!(ds.instance_split(), Some(&categories));
    assert_eq!(ds.intrinsics("000004").unwrap().width(), 64);
    assert!(ds.check_files(|| {}).is_empty());
}

#[test]
fn format_label_2_is_a_python_literal_that_reads_back() {
    let label = parse_label_2(REAL_LABEL_2).unwrap();
    let text = format_label_2(&label);
    assert_eq!(
        text,
        "['Car', 0.0, 0, -1.58, 587.0, 173.3, 614.1, 200.1, 1.65, 1.67, 3.64, -0.65, 1.71, 46.7, -1.59]"
    );
    assert_eq!(parse_label_2(&text).unwrap(), label);
    let odd = KittiLabel { class: "It's".to_owned(), score: Some(1e-9), ..label };
    assert_eq!(parse_label_2(&format_label_2(&odd)).unwrap(), odd);
}
