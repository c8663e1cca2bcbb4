//! Camera model: projection round trips, distortion inversion, resize/crop consistency, box
//! projection with near-plane clipping, and rejection of invalid parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::f64::consts::FRAC_PI_2;

use monovlm_calib::{BOX_EDGES, Box3d, Distortion, Intrinsics, NEAR_PLANE_M, Point2, Point3};
use proptest::prelude::*;

/// `cases` random cases; no failure-persistence files (integration tests have no lib.rs for them).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// project(unproject(p)) tolerance, pixels (the foundation issue's bound).
const ROUND_TRIP_PX: f64 = 1e-9;
/// Distortion inversion tolerance, pixels (the foundation issue's bound).
const DISTORTION_PX: f64 = 1e-6;

fn kitti_like() -> Intrinsics {
    Intrinsics::new(721.5377, 721.5377, 609.5593, 172.854, 1242, 375)
        .and_then(|k| k.with_offset_m(-0.06216, -0.0003))
        .expect("valid")
}

/// A 1280x720 camera with a typical automotive lens (~65 degrees across, barrel distortion). Its
/// model is monotonic in the radius over the image, as a real lens's is (with fx = 700 and
/// k1 = -0.3 the image corners would lie past the model's maximum radius: no ray maps there).
fn lens_camera() -> Intrinsics {
    Intrinsics::new(1000.0, 1002.0, 641.3, 358.9, 1280, 720)
        .expect("valid")
        .with_distortion(Distortion::new(-0.28, 0.07, 0.001, -0.0005, 0.0).expect("finite"))
}

fn mild_distortion() -> impl Strategy<Value = Distortion> {
    (-0.15..0.15f64, -0.03..0.03f64, -0.002..0.002f64, -0.002..0.002f64)
        .prop_map(|(k1, k2, p1, p2)| Distortion::new(k1, k2, p1, p2, 0.0).expect("finite"))
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn project_unproject_round_trip(u in 0.0..1242.0f64, v in 0.0..375.0f64, depth in 0.5..120.0f64) {
        let k = kitti_like();
        let p = Point2::new(u, v);
        let back = k.project(&k.unproject(&p, depth).expect("no distortion")).expect("in front");
        prop_assert!((back - p).norm() < ROUND_TRIP_PX, "{p} -> {back}");
    }

    #[test]
    fn project_unproject_round_trip_with_distortion(
        u in 0.0..1280.0f64, v in 0.0..720.0f64, depth in 0.5..120.0f64, d in mild_distortion()
    ) {
        let k = lens_camera().with_distortion(d);
        let p = Point2::new(u, v);
        let back = k.project(&k.unproject(&p, depth).expect("invertible")).expect("in front");
        prop_assert!((back - p).norm() < ROUND_TRIP_PX, "{p} -> {back}");
    }

    #[test]
    fn distortion_round_trips_over_the_image(u in 0.0..1280.0f64, v in 0.0..720.0f64, d in mild_distortion()) {
        let k = lens_camera().with_distortion(d);
        let p = Point2::new(u, v);
        let there = k.distort_pixel(&k.undistort_pixel(&p).expect("invertible"));
        let back = k.undistort_pixel(&k.distort_pixel(&p)).expect("invertible");
        prop_assert!((there - p).norm() < DISTORTION_PX && (back - p).norm() < DISTORTION_PX);
    }

    #[test]
    fn resized_intrinsics_project_where_the_resize_maps(
        x in -10.0..10.0f64, y in -2.0..3.0f64, z in 1.0..80.0f64, w in 100u32..2000, h in 100u32..1200
    ) {
        let k = kitti_like();
        let (small, map) = k.resized(w, h).expect("non-empty");
        let p = Point3::new(x, y, z);
        let direct = small.project(&p).expect("in front");
        let mapped = map.map_point(&k.project(&p).expect("in front"));
        prop_assert!((direct - mapped).norm() < 1e-9);
        prop_assert!((map.unmap_point(&mapped) - k.project(&p).expect("in front")).norm() < 1e-9);
    }
}

#[test]
fn a_real_automotive_lens_inverts_over_the_whole_image() {
    let k = lens_camera();
    let mut worst: f64 = 0.0;
    for v in (0..=720).step_by(8) {
        for u in (0..=1280).step_by(8) {
            let p = Point2::new(u as f64, v as f64);
            let back = k.distort_pixel(&k.undistort_pixel(&p).expect("invertible"));
            worst = worst.max((back - p).norm());
        }
    }
    assert!(worst < DISTORTION_PX, "worst round-trip error {worst} px");
}

#[test]
fn crop_shifts_the_principal_point() {
    let k = kitti_like();
    let c = k.cropped(100, 50, 640, 300).expect("fits");
    let p = Point3::new(1.0, 0.5, 12.0);
    let (a, b) = (k.project(&p).expect("front"), c.project(&p).expect("front"));
    assert!((a.x - 100.0 - b.x).abs() < 1e-12 && (a.y - 50.0 - b.y).abs() < 1e-12);
    assert!(k.cropped(1000, 0, 300, 100).is_err());
    assert!(k.resized(0, 10).is_err());
}

#[test]
fn invalid_intrinsics_are_rejected_with_the_field_named() {
    for (fx, fy, cx, want) in [
        (f64::NAN, 700.0, 600.0, "fx"),
        (0.0, 700.0, 600.0, "fx"),
        (700.0, -1.0, 600.0, "fy"),
        (700.0, 700.0, f64::INFINITY, "cx"),
    ] {
        let err = Intrinsics::new(fx, fy, cx, 170.0, 1242, 375).expect_err("invalid");
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(Intrinsics::new(700.0, 700.0, 600.0, 170.0, 0, 375).is_err());
    assert!(Distortion::new(f64::NAN, 0.0, 0.0, 0.0, 0.0).is_err());
    // Deserialising goes through the same checks.
    let bad = r#"{"fx": 0.0, "fy": 700.0, "cx": 600.0, "cy": 170.0, "width": 1242, "height": 375}"#;
    assert!(serde_json::from_str::<Intrinsics>(bad).is_err());
    let k = lens_camera();
    let json = serde_json::to_string(&k).expect("serialise");
    assert_eq!(serde_json::from_str::<Intrinsics>(&json).expect("valid"), k);
}

/// The 2D box of a 3D box by brute force: dense points along its edges in front of the near plane.
fn brute_force_box(b: &Box3d, k: &Intrinsics) -> Option<[f64; 4]> {
    let corners = b.corners();
    let mut r = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for (i, j) in BOX_EDGES {
        for s in 0..=20_000 {
            let t = s as f64 / 20_000.0;
            let p = corners[i] + (corners[j] - corners[i]) * t;
            if p.z < NEAR_PLANE_M {
                continue;
            }
            let px = k.project(&p)?;
            r = [r[0].min(px.x), r[1].min(px.y), r[2].max(px.x), r[3].max(px.y)];
        }
    }
    let (w, h) = (k.width() as f64, k.height() as f64);
    let c = [r[0].clamp(0.0, w), r[1].clamp(0.0, h), r[2].clamp(0.0, w), r[3].clamp(0.0, h)];
    (c[2] > c[0] && c[3] > c[1]).then_some(c)
}

#[test]
fn box_projection_matches_brute_force_in_front_of_and_across_the_camera() {
    let k = kitti_like();
    let cases = [
        Box3d::new(1.84, 0.525, 8.41, 1.2, 0.48, 1.89, 0.01), // KITTI pedestrian
        Box3d::new(-4.0, 1.0, 3.0, 4.2, 1.8, 1.5, 0.7),       // close, leaving the image
        Box3d::new(2.0, 1.0, 0.4, 4.5, 1.8, 1.5, FRAC_PI_2),  // straddles the camera plane
        Box3d::new(-1.5, 0.8, 1.0, 6.0, 2.0, 2.5, FRAC_PI_2 + 0.3), // partly behind, turned
    ];
    for b in cases.map(|b| b.expect("valid")) {
        let ours = b.project_to_box2d(&k).expect("visible").to_array();
        let brute = brute_force_box(&b, &k).expect("visible");
        for (o, r) in ours.iter().zip(brute) {
            assert!((o - r).abs() < 0.5, "{b:?}: ours {ours:?} vs brute force {brute:?}");
        }
    }
    // Wholly behind the camera, or wholly outside the image: nothing.
    let behind = Box3d::new(0.0, 1.0, -5.0, 4.0, 1.8, 1.5, 0.0).expect("valid");
    assert!(behind.project_to_box2d(&k).is_none());
    let far_left = Box3d::new(-200.0, 1.0, 10.0, 4.0, 1.8, 1.5, 0.0).expect("valid");
    assert!(far_left.project_to_box2d(&k).is_none());
}

#[test]
fn yaw_is_wrapped_and_sizes_checked() {
    let b = Box3d::new(0.0, 0.0, 5.0, 1.0, 1.0, 1.0, 4.0).expect("valid");
    assert!((b.yaw - (4.0 - std::f64::consts::TAU)).abs() < 1e-12);
    assert!(Box3d::new(0.0, 0.0, 5.0, -1.0, 1.0, 1.0, 0.0).is_err());
    assert!(Box3d::new(0.0, f64::NAN, 5.0, 1.0, 1.0, 1.0, 0.0).is_err());
    // Heading (cos yaw, 0, -sin yaw): corner 0 - corner 3 points along it.
    let c = Box3d::new(0.0, 0.0, 5.0, 2.0, 1.0, 1.0, 0.5).expect("valid").corners();
    let heading = (c[0] - c[3]) / 2.0;
    assert!((heading.x - 0.5f64.cos()).abs() < 1e-12 && (heading.z + 0.5f64.sin()).abs() < 1e-12);
    // Bottom face has the larger y (y points down).
    assert!(c[0].y > c[4].y);
}

#[test]
fn projection_refuses_rays_where_the_lens_model_folds() {
    // k1 = -0.28 alone: r_d = r (1 - 0.28 r^2) peaks at r^2 = 1 / 0.84, then turns back, so a ray
    // at r = 3 would land on the wrong side of the image (r_d = -4.56).
    let k = Intrinsics::new(1000.0, 1000.0, 640.0, 360.0, 1280, 720)
        .expect("valid")
        .with_distortion(Distortion::new(-0.28, 0.0, 0.0, 0.0, 0.0).expect("finite"));
    let turn = (1.0f64 / 0.84).sqrt();
    assert!(k.project(&Point3::new(3.0, 0.0, 1.0)).is_none(), "beyond the fold");
    assert!(k.project(&Point3::new(1.01 * turn, 0.0, 1.0)).is_none());
    let inside = k.project(&Point3::new(0.99 * turn, 0.0, 1.0)).expect("inside the valid radius");
    assert!(inside.x > 640.0, "still on the ray's side: {inside}");
    // A box beside the camera, cut at the near plane: its 2D box comes from the valid part only
    // and stays on the box's side of the image (the fold would have thrown it to the far side).
    let beside = Box3d::new(3.0, 0.5, 2.0, 4.0, 1.8, 1.5, 0.0).expect("valid");
    let b = beside.project_to_box2d(&k).expect("visible").to_array();
    assert!(b[0] > 640.0, "{b:?}");
}

#[test]
fn a_box_reaching_past_the_lens_fold_extends_to_the_image_border() {
    // The same barrel lens; a box beside the camera from x = 0.2 m to 4 m at 1.5-3 m depth. Its
    // corners at x = 0.2 m are in view, those at x = 4 m beyond the fold (x / z >= 1.33 against
    // the fold's 1.09), so the box runs out of the view to the right: its 2D box must reach the
    // right border, not end at the in-view corners (about 70-130 px right of the centre).
    let k = Intrinsics::new(1000.0, 1000.0, 640.0, 360.0, 1280, 720)
        .expect("valid")
        .with_distortion(Distortion::new(-0.28, 0.0, 0.0, 0.0, 0.0).expect("finite"));
    let long = Box3d::new(2.1, 0.5, 2.25, 3.8, 1.5, 1.5, 0.0).expect("valid");
    let corners_in_view = long.project_corners(&k).iter().filter(|c| c.is_some()).count();
    assert_eq!(corners_in_view, 4, "the test needs corners on both sides of the fold");
    let b = long.project_to_box2d(&k).expect("visible").to_array();
    assert!(b[0] > 640.0 && b[0] < 720.0, "left edge at the near corners: {b:?}");
    assert_eq!(b[2], 1280.0, "right edge at the border: {b:?}");
    // Without distortion the same box also runs off the right border (a cross-check of the
    // geometry, not of the lens code).
    let pinhole = Intrinsics::new(1000.0, 1000.0, 640.0, 360.0, 1280, 720).expect("valid");
    assert_eq!(long.project_to_box2d(&pinhole).expect("visible").to_array()[2], 1280.0);
}

#[test]
fn a_distorted_box_bounds_its_bent_edges() {
    // A wide box straight ahead seen through a barrel lens (k1 < 0, well inside its fold): the
    // corners are pulled towards the centre more than the edges' middles, so the edges bow
    // outwards and the corners alone under-bound its image. The 2D box must contain the projection of every
    // point of every edge (sampled 1,000 times here, independently of the function's sampling),
    // to within half a pixel.
    let k = Intrinsics::new(1000.0, 1000.0, 640.0, 360.0, 1280, 720)
        .expect("valid")
        .with_distortion(Distortion::new(-0.12, 0.0, 0.0, 0.0, 0.0).expect("finite"));
    let b3 = Box3d::new(0.0, 0.2, 8.0, 2.0, 5.0, 2.4, FRAC_PI_2).expect("valid");
    let b = b3.project_to_box2d(&k).expect("visible").to_array();
    let corners = b3.corners();
    let (mut top_corner, mut top_edge) = (f64::INFINITY, f64::INFINITY);
    for (i, j) in BOX_EDGES {
        for s in 0..=1000 {
            let t = f64::from(s) / 1000.0;
            let px = k.project(&(corners[i] + (corners[j] - corners[i]) * t)).expect("in view");
            top_edge = top_edge.min(px.y);
            if s == 0 || s == 1000 {
                top_corner = top_corner.min(px.y);
            }
            let (x, y) = (px.x.clamp(0.0, 1280.0), px.y.clamp(0.0, 720.0));
            assert!(
                x >= b[0] - 0.5 && x <= b[2] + 0.5 && y >= b[1] - 0.5 && y <= b[3] + 0.5,
                "{px} outside {b:?}"
            );
        }
    }
    assert!(top_corner - top_edge > 2.0, "the edges must bow past the corners for this test to bite");
}
