//! IoU properties and known answers, checked against independent references: a Monte-Carlo volume
//! estimate that never looks at polygons, and the closed-form axis-aligned IoU.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Box3d, iou_2d, iou_3d, iou3d_mono3dvg};
use proptest::prelude::*;

/// `cases` random cases; no failure-persistence files (integration tests have no lib.rs for them).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Float round-off of the polygon clipping on boxes of metres in size.
const EXACT_TOL: f64 = 1e-9;
/// Monte-Carlo tolerance required by the foundation issue (the estimate's standard error at
/// 200k samples is ~2e-3).
const MC_TOL: f64 = 1e-2;
const MC_SAMPLES: usize = 200_000;

fn boxes() -> impl Strategy<Value = Box3d> {
    (-20.0..20.0f64, -2.0..3.0f64, 2.0..60.0f64, 0.3..12.0f64, 0.3..4.0f64, 0.5..4.0f64, -PI..PI)
        .prop_map(|(x, y, z, l, w, h, yaw)| Box3d::new(x, y, z, l, w, h, yaw).expect("valid by construction"))
}

/// A second box near the first, so that most pairs overlap.
fn pairs() -> impl Strategy<Value = (Box3d, Box3d)> {
    (boxes(), -1.5..1.5f64, -0.5..0.5f64, -1.5..1.5f64, 0.5..2.0f64, 0.5..2.0f64, 0.5..2.0f64, -PI..PI)
        .prop_map(|(a, dx, dy, dz, sl, sw, sh, yaw)| {
            let b =
                Box3d::new(a.x + dx, a.y + dy, a.z + dz, a.l * sl, a.w * sw, a.h * sh, yaw).expect("valid");
            (a, b)
        })
}

/// Rotation about the camera y axis applied to a box-frame offset (l along x, h along y, w along z).
fn rot_y(yaw: f64, v: [f64; 3]) -> [f64; 3] {
    let (s, c) = yaw.sin_cos();
    [c * v[0] + s * v[2], v[1], -s * v[0] + c * v[2]]
}

fn inside(b: &Box3d, p: [f64; 3]) -> bool {
    let local = rot_y(-b.yaw, [p[0] - b.x, p[1] - b.y, p[2] - b.z]);
    local[0].abs() <= 0.5 * b.l && local[1].abs() <= 0.5 * b.h && local[2].abs() <= 0.5 * b.w
}

/// IoU estimated by sampling points uniformly inside `a` and counting those inside `b`.
fn monte_carlo_iou(a: &Box3d, b: &Box3d, seed: u64) -> f64 {
    let mut rng = SplitMix64::new(seed);
    let mut hits = 0usize;
    for _ in 0..MC_SAMPLES {
        let off =
            rot_y(a.yaw, [(rng.unit() - 0.5) * a.l, (rng.unit() - 0.5) * a.h, (rng.unit() - 0.5) * a.w]);
        hits += usize::from(inside(b, [a.x + off[0], a.y + off[1], a.z + off[2]]));
    }
    let inter = a.volume() * hits as f64 / MC_SAMPLES as f64;
    inter / (a.volume() + b.volume() - inter)
}

/// Closed-form IoU of two yaw-0 boxes (l along x, w along z).
fn axis_aligned_iou(a: &Box3d, b: &Box3d) -> f64 {
    let overlap = |ca: f64, ea: f64, cb: f64, eb: f64| {
        ((ca + ea / 2.0).min(cb + eb / 2.0) - (ca - ea / 2.0).max(cb - eb / 2.0)).max(0.0)
    };
    let inter = overlap(a.x, a.l, b.x, b.l) * overlap(a.y, a.h, b.y, b.h) * overlap(a.z, a.w, b.z, b.w);
    inter / (a.volume() + b.volume() - inter)
}

fn moved(b: &Box3d, t: [f64; 3]) -> Box3d {
    Box3d::new(b.x + t[0], b.y + t[1], b.z + t[2], b.l, b.w, b.h, b.yaw).expect("valid")
}

fn rotated_about_y(b: &Box3d, angle: f64) -> Box3d {
    let c = rot_y(angle, [b.x, b.y, b.z]);
    Box3d::new(c[0], c[1], c[2], b.l, b.w, b.h, b.yaw + angle).expect("valid")
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn iou_is_symmetric_and_bounded((a, b) in pairs()) {
        let (ab, ba) = (iou_3d(&a, &b), iou_3d(&b, &a));
        prop_assert!((0.0..=1.0).contains(&ab));
        prop_assert!((ab - ba).abs() < EXACT_TOL, "{ab} vs {ba}");
    }

    #[test]
    fn iou_of_a_box_with_itself_is_one(a in boxes()) {
        prop_assert!((iou_3d(&a, &a) - 1.0).abs() < EXACT_TOL);
    }

    #[test]
    fn iou_is_invariant_to_a_common_translation((a, b) in pairs(), t in prop::array::uniform3(-30.0..30.0f64)) {
        let (before, after) = (iou_3d(&a, &b), iou_3d(&moved(&a, t), &moved(&b, t)));
        prop_assert!((before - after).abs() < EXACT_TOL, "{before} vs {after}");
    }

    #[test]
    fn iou_is_invariant_to_a_common_rotation_about_y((a, b) in pairs(), angle in -PI..PI) {
        let (before, after) = (iou_3d(&a, &b), iou_3d(&rotated_about_y(&a, angle), &rotated_about_y(&b, angle)));
        prop_assert!((before - after).abs() < EXACT_TOL, "{before} vs {after}");
    }

    #[test]
    fn iou_at_zero_yaw_equals_the_axis_aligned_formula((a, b) in pairs()) {
        let a0 = Box3d { yaw: 0.0, ..a };
        let b0 = Box3d { yaw: 0.0, ..b };
        prop_assert!((iou_3d(&a0, &b0) - axis_aligned_iou(&a0, &b0)).abs() < EXACT_TOL);
    }

    #[test]
    fn iou_2d_is_symmetric_bounded_and_one_on_itself(c in prop::array::uniform4(0.0..500.0f64)) {
        let a = Box2d::new(c[0].min(c[1]), c[2].min(c[3]), c[0].max(c[1]), c[2].max(c[3])).expect("ordered");
        let b = Box2d::new(a.x1 + 7.0, a.y1 - 3.0, a.x2 + 11.0, a.y2 + 2.0).expect("ordered");
        let v = iou_2d(&a, &b);
        prop_assert!((0.0..=1.0).contains(&v));
        prop_assert!((v - iou_2d(&b, &a)).abs() < EXACT_TOL);
        if a.area() > 0.0 {
            prop_assert!((iou_2d(&a, &a) - 1.0).abs() < EXACT_TOL);
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn iou_matches_a_monte_carlo_estimate((a, b) in pairs(), seed in any::<u64>()) {
        let (exact, estimate) = (iou_3d(&a, &b), monte_carlo_iou(&a, &b, seed));
        prop_assert!((exact - estimate).abs() < MC_TOL, "exact {exact} vs Monte Carlo {estimate}");
    }
}

fn cube(x: f64, yaw: f64) -> Box3d {
    Box3d::new(x, 0.0, 10.0, 1.0, 1.0, 1.0, yaw).expect("valid")
}

#[test]
fn unit_cubes_offset_by_half_have_iou_one_third() {
    // Overlap 0.5 x 1 x 1; union 1 + 1 - 0.5.
    assert!((iou_3d(&cube(0.0, 0.0), &cube(0.5, 0.0)) - 1.0 / 3.0).abs() < EXACT_TOL);
    let lifted = Box3d { y: 0.5, ..cube(0.0, 0.0) };
    assert!((iou_3d(&cube(0.0, 0.0), &lifted) - 1.0 / 3.0).abs() < EXACT_TOL);
    let deeper = Box3d { z: 10.5, ..cube(0.0, 0.0) };
    assert!((iou_3d(&cube(0.0, 0.0), &deeper) - 1.0 / 3.0).abs() < EXACT_TOL);
}

#[test]
fn cube_rotated_45_degrees_about_its_axis() {
    // The footprints meet in a regular octagon of area 2 (sqrt 2 - 1); IoU = 1 / sqrt 2.
    let v = iou_3d(&cube(0.0, 0.0), &cube(0.0, FRAC_PI_4));
    assert!((v - 1.0 / 2f64.sqrt()).abs() < EXACT_TOL, "{v}");
    // A quarter turn maps a square footprint onto itself.
    assert!((iou_3d(&cube(0.0, 0.0), &cube(0.0, FRAC_PI_2)) - 1.0).abs() < EXACT_TOL);
}

#[test]
fn long_box_turned_90_degrees_crosses_itself() {
    // 4 x 1 footprints crossing at right angles: intersection 1 x 1 (x h 1), union 4 + 4 - 1.
    let a = Box3d::new(0.0, 0.0, 10.0, 4.0, 1.0, 1.0, 0.0).expect("valid");
    let b = Box3d { yaw: FRAC_PI_2, ..a };
    assert!((iou_3d(&a, &b) - 1.0 / 7.0).abs() < EXACT_TOL);
}

#[test]
fn disjoint_and_degenerate_boxes_have_zero_iou() {
    assert_eq!(iou_3d(&cube(0.0, 0.0), &cube(1.0, 0.0)), 0.0); // touching faces
    assert_eq!(iou_3d(&cube(0.0, 0.0), &cube(5.0, 0.3)), 0.0);
    let flat = Box3d { h: 0.0, ..cube(0.0, 0.0) };
    assert_eq!(iou_3d(&flat, &flat), 0.0);
    let nan = Box3d { x: f64::NAN, ..cube(0.0, 0.0) };
    assert_eq!(iou_3d(&nan, &cube(0.0, 0.0)), 0.0);
}

#[test]
fn mono3dvg_iou_ignores_yaw_and_lays_height_along_x() {
    // h = 1, w = 2, l = 4, shifted 0.5 m along x. The evaluator puts h (1 m) along x: overlap
    // 0.5 x 2 x 4 = 4 of 8 + 8 - 4 -> 1/3. The exact IoU has l (4 m) along x: 3.5 x 1 x 2 = 7 of 9.
    let a = Box3d::new(0.0, 1.0, 20.0, 4.0, 2.0, 1.0, 0.0).expect("valid");
    let b = Box3d { x: 0.5, ..a };
    assert!((iou3d_mono3dvg(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
    assert!((iou_3d(&a, &b) - 7.0 / 9.0).abs() < EXACT_TOL);
    // Yaw does not matter to it.
    let turned = Box3d { yaw: 1.2, ..b };
    assert_eq!(iou3d_mono3dvg(&a, &b), iou3d_mono3dvg(&a, &turned));
    // Touching on one axis is no overlap (strict `>`).
    let touching = Box3d { x: 1.0, ..a };
    assert_eq!(iou3d_mono3dvg(&a, &touching), 0.0);
}

#[test]
fn two_d_known_answers() {
    let a = Box2d::new(0.0, 0.0, 10.0, 10.0).expect("valid");
    let b = Box2d::new(5.0, 0.0, 15.0, 10.0).expect("valid");
    assert!((iou_2d(&a, &b) - 50.0 / 150.0).abs() < EXACT_TOL);
    let c = Box2d::new(10.0, 0.0, 20.0, 10.0).expect("valid");
    assert_eq!(iou_2d(&a, &c), 0.0);
    assert!(Box2d::new(5.0, 0.0, 1.0, 1.0).is_err());
    assert!(Box2d::new(f64::NAN, 0.0, 1.0, 1.0).is_err());
}

/// Reference values from `scripts/reference/iou_reference.py`: the Mono3DVG evaluator's
/// `calc_iou` in numpy float32, and shapely's (GEOS) polygon intersection for the exact IoU.
#[derive(serde::Deserialize)]
struct Reference {
    boxes_a: Vec<[f64; 7]>,
    boxes_b: Vec<[f64; 7]>,
    iou_mono3dvg: Vec<f64>,
    iou_rotated: Vec<f64>,
}

#[test]
fn both_ious_match_the_python_references() {
    let text = include_str!("fixtures/iou_reference.json");
    let r: Reference = serde_json::from_str(text).unwrap();
    assert!(r.boxes_a.len() >= 400);
    let to_box = |v: &[f64; 7]| Box3d::new(v[0], v[1], v[2], v[3], v[4], v[5], v[6]).unwrap();
    let mut overlapping = 0;
    for i in 0..r.boxes_a.len() {
        let (a, b) = (to_box(&r.boxes_a[i]), to_box(&r.boxes_b[i]));
        let ours = iou_3d(&a, &b);
        assert!(
            (ours - r.iou_rotated[i]).abs() < EXACT_TOL,
            "pair {i}: {ours} vs shapely {}",
            r.iou_rotated[i]
        );
        // Both sides in float32, same operation order: equal up to the f64 -> f32 casts of inputs.
        let compat = iou3d_mono3dvg(&a, &b);
        assert!(
            (compat - r.iou_mono3dvg[i]).abs() < 1e-6,
            "pair {i}: {compat} vs evaluator {}",
            r.iou_mono3dvg[i]
        );
        overlapping += usize::from(ours > 0.0);
    }
    assert!(overlapping > 200, "the fixture must exercise the clipping ({overlapping} overlapping pairs)");
}
