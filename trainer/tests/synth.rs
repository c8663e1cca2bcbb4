#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The synthetic driving-scene generator: the render's geometry, determinism, descriptions, labels,
//! sequences. Run in release (`cargo test --release --test synth`): it renders a few dozen images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use monovlm_calib::kitti::parse_labels;
use monovlm_trainer::data::mono3drefer::{Dataset, Split, Strictness, parse_label_2};
use monovlm_trainer::data::synth::describe::{Truth, evaluate, resolve};
use monovlm_trainer::data::synth::scene::{CameraPreset, ObjClass};
use monovlm_trainer::data::synth::{self, INSTANCE_STRIDE, LABEL_DIR, Sequence, SynthConfig, SynthFrame};

/// How far (pixels) the projected 3D box and the bounding box of the object's rendered pixels may
/// differ. Pixel centres sit at integers and a pixel is the object's when its centre is inside the
/// projection, so the pixel box (centres +- 0.5) is within half a pixel of the projection; the
/// task's tolerance is 2 px.
const PIXEL_BOX_TOLERANCE_PX: f64 = 2.0;

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn frames(camera: CameraPreset, seed: u64, n: u32) -> Vec<SynthFrame> {
    let cfg = SynthConfig { camera, seed, images: n, ..SynthConfig::default() };
    (0..n).map(|i| synth::render_image(&cfg, i).unwrap()).collect()
}

fn all_frames() -> Vec<SynthFrame> {
    let mut out = frames(CameraPreset::Kitti, 11, 10);
    out.extend(frames(CameraPreset::Hd, 12, 4));
    out.extend(frames(CameraPreset::Vga, 13, 4));
    let seq = Sequence::new(&SynthConfig { seed: 14, images: 30, sequence: true, ..SynthConfig::default() })
        .unwrap();
    out.extend([0, 15, 29].map(|i| seq.frame(i).unwrap()));
    out
}

#[test]
fn projected_boxes_match_the_rendered_pixels() {
    let mut checked = 0;
    let mut max_dev: f64 = 0.0;
    for frame in all_frames() {
        let k = &frame.intrinsics;
        for o in frame.objects.iter().filter(|o| o.label.is_some()) {
            let projected = o.box3d.project_to_box2d(k).expect("a labelled object projects into the image");
            let pixels = frame.id_pixel_box(o.id).expect("a labelled object has pixels");
            // Whatever hides it, every pixel of an object lies inside its projected box.
            assert!(
                pixels[0] >= projected.x1 - 1.0
                    && pixels[1] >= projected.y1 - 1.0
                    && pixels[2] <= projected.x2 + 1.0
                    && pixels[3] <= projected.y2 + 1.0,
                "image {} object {}: pixels {pixels:?} outside projection {projected:?}",
                frame.index,
                o.id
            );
            // Unoccluded and untruncated: the two boxes agree.
            if o.visible_px == o.silhouette_px && o.truncation == 0.0 {
                let p = projected.to_array();
                for (a, b) in p.iter().zip(pixels) {
                    max_dev = max_dev.max((a - b).abs());
                    assert!(
                        (a - b).abs() <= PIXEL_BOX_TOLERANCE_PX,
                        "image {} object {} ({:?}): projection {p:?} vs pixels {pixels:?}",
                        frame.index,
                        o.id,
                        o.class
                    );
                }
                // The label's 2D box is that projection (rounded to 2 decimals).
                let label = o.label.as_ref().unwrap();
                for (a, b) in label.bbox.to_array().iter().zip(p) {
                    assert!((a - b).abs() <= 0.005 + 1e-9);
                }
                checked += 1;
            }
        }
    }
    println!("{checked} unoccluded, untruncated objects; largest difference {max_dev:.3} px");
    assert!(checked >= 40, "only {checked} unoccluded, untruncated objects checked");
}

#[test]
fn occlusion_and_truncation_follow_the_id_buffer() {
    for frame in frames(CameraPreset::Kitti, 21, 6) {
        for o in frame.objects.iter() {
            let visible = frame.ids.iter().filter(|v| **v == o.id).count() as u64;
            assert_eq!(visible, o.visible_px);
            assert!(
                o.visible_px <= o.silhouette_px,
                "visible {} > silhouette {}",
                o.visible_px,
                o.silhouette_px
            );
            if let Some(label) = &o.label {
                let expected = if o.visible_fraction > 0.8 {
                    0
                } else if o.visible_fraction > 0.4 {
                    1
                } else {
                    2
                };
                assert_eq!(label.occluded, expected);
                assert!((0.0..=0.85).contains(&label.truncated));
                assert!(label.bbox.height() >= 12.0);
            }
        }
    }
}

fn read_dir_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn generate_with_threads(cfg: &SynthConfig, out: &Path, threads: usize) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| synth::generate(cfg, out, &|| {}).unwrap());
}

#[test]
fn the_same_seed_gives_identical_files_whatever_the_thread_count() {
    for sequence in [false, true] {
        let cfg = SynthConfig { images: 5, seed: 7, sequence, ..SynthConfig::default() };
        let (a, b) = (tmp(&format!("det_a_{sequence}")), tmp(&format!("det_b_{sequence}")));
        generate_with_threads(&cfg, &a, 1);
        generate_with_threads(&cfg, &b, 3);
        let (fa, fb) = (read_dir_files(&a), read_dir_files(&b));
        assert!(fa.len() >= 5 * 3 + 5, "files: {:?}", fa.keys().collect::<Vec<_>>());
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (path, bytes) in &fa {
            assert!(fb.get(path) == Some(bytes), "{} differs", path.display());
        }
        // Another seed gives other pictures.
        let c = tmp(&format!("det_c_{sequence}"));
        generate_with_threads(&SynthConfig { seed: 8, ..cfg.clone() }, &c, 2);
        let fc = read_dir_files(&c);
        assert_ne!(fa.get(Path::new("images/000000.png")), fc.get(Path::new("images/000000.png")));
    }
}

#[test]
fn every_description_resolves_to_exactly_its_target() {
    let mut descriptions = 0;
    let mut kinds = [0usize; 3]; // superlative, relation, other
    for frame in all_frames() {
        let facts = frame.facts();
        for d in &frame.descriptions {
            assert_eq!(
                resolve(&d.expr, &facts),
                Some(d.target),
                "image {}: {:?} -> {}",
                frame.index,
                d.expr,
                d.text
            );
            let truths = evaluate(&d.expr, &facts);
            assert_eq!(truths[d.target], Truth::Yes);
            assert_eq!(truths.iter().filter(|t| **t != Truth::No).count(), 1);
            let target = &frame.objects[d.target];
            assert!(target.describable());
            assert_eq!(d.expr.class, target.class);
            assert!(d.text.to_lowercase().contains(target.class.noun()), "{}", d.text);
            assert!(d.text.ends_with('.'));
            kinds[if d.expr.superlative.is_some() {
                0
            } else if d.expr.relation.is_some() {
                1
            } else {
                2
            }] += 1;
            descriptions += 1;
        }
        // Descriptions of one object are distinct.
        for (i, a) in frame.descriptions.iter().enumerate() {
            for b in &frame.descriptions[i + 1..] {
                let norm = |e: &monovlm_trainer::data::synth::describe::Expr| {
                    let mut e = e.clone();
                    e.attributes.sort();
                    e
                };
                assert!(a.target != b.target || norm(&a.expr) != norm(&b.expr), "{} / {}", a.text, b.text);
            }
        }
    }
    assert!(descriptions >= 100, "{descriptions} descriptions");
    assert!(kinds.iter().all(|k| *k >= 10), "kinds (superlative, relation, other): {kinds:?}");
}

#[test]
fn written_labels_and_records_read_back() {
    let cfg = SynthConfig { images: 10, seed: 31, ..SynthConfig::default() };
    let root = tmp("readback");
    let summary = synth::generate(&cfg, &root, &|| {}).unwrap();
    let frames: Vec<SynthFrame> = (0..cfg.images).map(|i| synth::render_image(&cfg, i).unwrap()).collect();

    // label_2 files parse with the calib crate's parser and equal the frames' labels.
    let mut labels = 0;
    for frame in &frames {
        let path = root.join(LABEL_DIR).join(format!("{:06}.txt", frame.index));
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = parse_labels(&text, &path.display().to_string()).unwrap();
        let expected: Vec<_> = frame.labels().cloned().collect();
        assert_eq!(parsed, expected);
        for l in &parsed {
            assert!(ObjClass::ALL.iter().any(|c| c.kitti_type() == l.class));
        }
        labels += parsed.len();
    }
    assert_eq!(labels, summary.labels);

    // The Mono3DRefer reader accepts the dataset strictly; records match the frames.
    let dataset = Dataset::load(&root, Strictness::Strict).unwrap();
    assert_eq!(dataset.report().records_loaded, summary.records);
    assert_eq!(dataset.images(Split::Train).len(), 8);
    assert_eq!(dataset.images(Split::Val).len(), 1);
    assert_eq!(dataset.images(Split::Test).len(), 1);
    for record in dataset.all_records() {
        let frame = &frames[(record.instance_id / INSTANCE_STRIDE) as usize];
        let target = (record.instance_id % INSTANCE_STRIDE) as usize;
        let object = &frame.objects[target];
        assert_eq!(record.image, format!("{:06}", frame.index));
        assert_eq!(Some(&record.label), object.label.as_ref());
        assert_eq!(record.object_name, object.class.object_name());
        let texts: Vec<&str> =
            frame.descriptions.iter().filter(|d| d.target == target).map(|d| d.text.as_str()).collect();
        assert_eq!(texts.get(record.ann_id as usize), Some(&record.description.as_str()));
        // The Python literal reads back to the label file's line.
        let line = parse_label_2(&monovlm_trainer::data::mono3drefer::format_label_2(&record.label)).unwrap();
        assert_eq!(line, record.label);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("Mono3DRefer.json")).unwrap()).unwrap();
    let first = &json[0];
    assert!(first["label_2"].as_str().unwrap().starts_with("['"));
    assert_eq!(first["im_name"].as_str().unwrap().len(), 6);

    // The calibration files give back the frames' cameras (P2 with the KITTI offset).
    for frame in &frames {
        let calib = dataset.calib(&format!("{:06}", frame.index)).unwrap();
        let k = calib.intrinsics(2, frame.image.width(), frame.image.height()).unwrap();
        assert!((k.fx() - frame.intrinsics.fx()).abs() < 1e-6);
        assert!((k.offset_m().0 - frame.intrinsics.offset_m().0).abs() < 1e-9);
        assert!(frame.intrinsics.offset_m().0 < -0.05, "KITTI preset carries the P2 offset");
    }

    // The instance categories of the test split partition its described objects.
    let split = dataset.instance_split().unwrap();
    let test_ids: std::collections::BTreeSet<u64> =
        dataset.records(Split::Test).iter().map(|r| r.instance_id).collect();
    let union = |sets: [&std::collections::BTreeSet<u64>; 3]| -> std::collections::BTreeSet<u64> {
        sets.iter().flat_map(|s| s.iter().copied()).collect()
    };
    assert_eq!(union([&split.near, &split.medium, &split.far]), test_ids);
    assert_eq!(union([&split.easy, &split.moderate, &split.hard]), test_ids);
    assert_eq!(union([&split.unique, &split.multiple, &Default::default()]), test_ids);
}

#[test]
fn sequences_keep_their_objects_and_move_the_camera() {
    let cfg = SynthConfig { images: 20, seed: 41, sequence: true, ..SynthConfig::default() };
    let seq = Sequence::new(&cfg).unwrap();
    let v = seq.ego_speed_mps();
    assert!((5.0..15.0).contains(&v));
    let f0 = seq.frame(0).unwrap();
    let f1 = seq.frame(1).unwrap();
    let mut parked = 0;
    let mut moving = 0;
    for o0 in &f0.objects {
        let Some(o1) = f1.objects.iter().find(|o| o.actor == o0.actor) else { continue };
        assert_eq!(o0.class, o1.class);
        assert_eq!(o0.colour, o1.colour);
        let actor = &seq.world().actors[o0.actor];
        let dz = o1.box3d.z - o0.box3d.z;
        if actor.speed_mps == 0.0 {
            // A standing object comes closer by the distance the camera drove in 0.1 s.
            assert!((dz + v * 0.1).abs() < 0.05, "dz {dz} at {v} m/s");
            parked += 1;
        } else {
            moving += 1;
        }
    }
    assert!(parked + moving >= 3, "{parked} standing, {moving} moving objects in both frames");
}

/// Writes the sample pictures of `docs/synth-samples/` (run by hand:
/// `cargo test --release -p monovlm-trainer --test synth -- --ignored`).
#[test]
#[ignore]
fn write_doc_samples() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/synth-samples");
    std::fs::create_dir_all(&docs).unwrap();
    // Without sensor noise: noise does not compress, and the pictures must stay small.
    let kitti = SynthConfig { seed: 2026, augment: false, ..SynthConfig::default() };
    let hd = SynthConfig { camera: CameraPreset::Hd, ..kitti.clone() };
    let seq = Sequence::new(&SynthConfig { images: 50, sequence: true, ..kitti.clone() }).unwrap();
    let samples = [
        ("kitti-a", synth::render_image(&kitti, 2).unwrap()),
        ("kitti-b", synth::render_image(&kitti, 10).unwrap()),
        ("hd", synth::render_image(&hd, 1).unwrap()),
        ("sequence-frame-40", seq.frame(40).unwrap()),
    ];
    let mut notes = String::new();
    for (name, frame) in &samples {
        let img = synth::preview(frame, if frame.image.width() == 1242 { 828 } else { 640 });
        let path = docs.join(format!("{name}.png"));
        img.save(&path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 200_000, "{} is {size} bytes", path.display());
        notes += &format!("## {name}.png\n\n```\n{}```\n\n", frame.label_text());
        for d in &frame.descriptions {
            notes += &format!("- [{}] {}\n", frame.objects[d.target].class.object_name(), d.text);
        }
        notes += "\n";
    }
    std::fs::write(docs.join("labels.md"), notes).unwrap();
}

/// A hand-made scene: two red cars, one on each side, and a white van.
fn crafted_scene() -> Vec<monovlm_trainer::data::synth::describe::ObjectFacts> {
    use monovlm_calib::Box3d;
    use monovlm_trainer::data::synth::describe::ObjectFacts;
    use monovlm_trainer::data::synth::scene::ColourName;
    let object = |class, colour, x: f64, z: f64, yaw: f64| ObjectFacts {
        class,
        colour,
        box3d: Box3d::new(x, 0.9, z, 4.0, 1.7, 1.5, yaw).unwrap(),
        from_divider_m: x,
        outside_carriageway_m: -3.0,
        from_ego_lane_m: x - 1.75,
        parked: false,
        moving: true,
        labelled: true,
    };
    let away = -std::f64::consts::FRAC_PI_2;
    vec![
        object(ObjClass::Car, ColourName::Red, -3.5, 10.0, -away), // oncoming, left
        object(ObjClass::Car, ColourName::Red, 3.5, 11.5, away),   // same direction, right
        object(ObjClass::Van, ColourName::White, 3.5, 20.0, away), // ahead of the right car
    ]
}

#[test]
fn the_resolver_refuses_ambiguous_and_borderline_expressions() {
    use monovlm_trainer::data::synth::describe::{Attribute, Expr, Facing, Relation, Side, Superlative};
    let scene = crafted_scene();
    let car = Expr::class(ObjClass::Car);
    let with = |f: &dyn Fn(&mut Expr)| {
        let mut e = car.clone();
        f(&mut e);
        e
    };
    // Two red cars: class or colour alone is ambiguous.
    assert_eq!(resolve(&car, &scene), None);
    assert_eq!(resolve(&with(&|e| e.colour = Some(scene[0].colour)), &scene), None);
    // Sides, facing, relations pick one.
    assert_eq!(resolve(&with(&|e| e.attributes = vec![Attribute::EgoSide(Side::Left)]), &scene), Some(0));
    assert_eq!(resolve(&with(&|e| e.attributes = vec![Attribute::Facing(Facing::Towards)]), &scene), Some(0));
    assert_eq!(resolve(&with(&|e| e.attributes = vec![Attribute::RoadSide(Side::Right)]), &scene), Some(1));
    let van = Box::new(Expr::class(ObjClass::Van));
    assert_eq!(resolve(&with(&|e| e.relation = Some((Relation::InFrontOf, van.clone()))), &scene), Some(1));
    assert_eq!(resolve(&with(&|e| e.relation = Some((Relation::Behind, van.clone()))), &scene), None);
    // 10.6 m against 12.0 m: closer, but not by the 2 m margin, so "the nearest car" is refused.
    assert_eq!(resolve(&with(&|e| e.superlative = Some(Superlative::Nearest)), &scene), None);
    // The van is 8 m farther than either car: "the farthest" would pick it, not a car.
    assert_eq!(
        resolve(&Expr { superlative: Some(Superlative::Farthest), ..Expr::class(ObjClass::Van) }, &scene),
        Some(2)
    );
    // An anchor that is itself ambiguous ("the car") decides nothing.
    let van_behind_car =
        Expr { relation: Some((Relation::Behind, Box::new(car.clone()))), ..Expr::class(ObjClass::Van) };
    assert_eq!(resolve(&van_behind_car, &scene), None);
}
