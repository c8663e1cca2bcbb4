//! KITTI files: a real `P2` and `label_2` line (training frame 000000) converted both ways,
//! projection checked against the raw matrix product.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use monovlm_calib::kitti::{KittiCalib, KittiLabel, parse_labels};
use monovlm_calib::{Box2d, Point3, iou_2d};

/// `training/calib/000000.txt` of the KITTI object benchmark.
const CALIB_000000: &str = "\
P0: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 0.000000000000e+00 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 -3.797842000000e+02 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 4.575831000000e+01 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 -3.454157000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 4.981016000000e-03
P3: 7.070493000000e+02 0.000000000000e+00 6.040814000000e+02 -3.341081000000e+02 0.000000000000e+00 7.070493000000e+02 1.805066000000e+02 2.330660000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.201153000000e-03
R0_rect: 9.999128000000e-01 1.009263000000e-02 -8.511932000000e-03 -1.012729000000e-02 9.999406000000e-01 -4.037671000000e-03 8.470675000000e-03 4.123522000000e-03 9.999556000000e-01
Tr_velo_to_cam: 6.927964000000e-03 -9.999722000000e-01 -2.757829000000e-03 -2.457729000000e-02 -1.162982000000e-03 2.749836000000e-03 -9.999955000000e-01 -6.127237000000e-02 9.999753000000e-01 6.931141000000e-03 -1.143899000000e-03 -3.321029000000e-01
Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01
";

/// `training/label_2/000000.txt`.
const LABEL_000000: &str =
    "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01";

#[test]
fn real_p2_gives_the_intrinsics_and_back() {
    let calib = KittiCalib::parse(CALIB_000000, "000000.txt").expect("valid file");
    let k = calib.intrinsics(2, 1224, 370).expect("pinhole");
    assert_eq!((k.fx(), k.fy(), k.cx(), k.cy()), (707.0493, 707.0493, 604.0814, 180.5066));
    let (tx, ty) = k.offset_m();
    assert!((tx - 45.75831 / -707.0493).abs() < 1e-15 && (ty - -0.3454157 / -707.0493).abs() < 1e-15);
    // Back to a matrix: identical but for P2[2][3] (ignored, see Intrinsics).
    let p = k.projection_matrix();
    for (r, (ours, theirs)) in p.iter().zip(&calib.p[2]).enumerate() {
        for (c, (a, b)) in ours.iter().zip(theirs).enumerate() {
            if (r, c) != (2, 3) {
                assert!((a - b).abs() < 1e-12, "P[{r}][{c}]");
            }
        }
    }
    // Projection equals the raw product P2 [x y z 1]^T divided by z (the KITTI devkit's rect_to_img).
    let p2 = calib.p[2];
    for pt in [Point3::new(1.84, 1.47, 8.41), Point3::new(-3.0, 0.9, 25.0), Point3::new(7.5, -1.0, 60.0)] {
        let h = [0, 1].map(|r| p2[r][0] * pt.x + p2[r][1] * pt.y + p2[r][2] * pt.z + p2[r][3]);
        let ours = k.project(&pt).expect("in front");
        assert!((ours.x - h[0] / pt.z).abs() < 1e-9 && (ours.y - h[1] / pt.z).abs() < 1e-9);
    }
    // The file round-trips through our writer, which writes C's `%.12e` as KITTI's files do.
    let text = calib.to_text();
    assert_eq!(text, CALIB_000000, "byte for byte the KITTI file");
    assert_eq!(KittiCalib::parse(&text, "written").expect("valid"), calib);
    // Other sensors' keys and comments, whatever their values, are skipped.
    let extra = format!("# written by a logger\n{CALIB_000000}Camera_model: pinhole fisheye\n");
    assert_eq!(KittiCalib::parse(&extra, "extra").expect("valid"), calib);
}

#[test]
fn real_label_line_converts_both_ways() {
    let labels = parse_labels(LABEL_000000, "000000.txt").expect("valid");
    let label = &labels[0];
    assert_eq!(label.class, "Pedestrian");
    assert_eq!(label.bbox, Box2d::new(712.40, 143.00, 810.73, 307.92).expect("valid"));
    assert_eq!(label.to_line(), LABEL_000000);

    let b = label.box3d().expect("valid dimensions");
    // Centre = bottom centre + (0, -h/2, 0); l, w, h from (h, w, l).
    assert!((b.y - (1.47 - 1.89 / 2.0)).abs() < 1e-12);
    assert_eq!((b.x, b.z, b.l, b.w, b.h, b.yaw), (1.84, 8.41, 1.20, 0.48, 1.89, 0.01));
    let (loc, hwl, ry) = b.to_kitti();
    assert!((loc[1] - 1.47).abs() < 1e-12 && hwl == [1.89, 0.48, 1.20] && ry == 0.01);
    // KITTI's alpha = ry - atan2(x, z) (the label rounds to 2 decimals).
    assert!((b.alpha() - label.alpha).abs() < 0.01);
    let again = KittiLabel::from_box3d("Pedestrian", &b, label.bbox, 0.0, 0);
    assert_eq!(again.location_m[0], 1.84);
    assert!((again.location_m[1] - 1.47).abs() < 1e-12);

    // The projected 3D box covers the annotated 2D box (annotations are tight boxes drawn on the
    // image; the projection of the corners is a little larger).
    let k = KittiCalib::parse(CALIB_000000, "000000.txt")
        .and_then(|c| c.intrinsics(2, 1224, 370))
        .expect("valid");
    let projected = b.project_to_box2d(&k).expect("visible");
    assert!(iou_2d(&projected, &label.bbox) > 0.75, "{projected:?} vs {:?}", label.bbox);
}

#[test]
fn bad_files_name_the_line_and_field() {
    let err =
        KittiLabel::parse_line("Car 0.0 0 -1.5 1 2 3 4 1.5 1.6 nan 1 2 3 0.1", "x.txt", 7).expect_err("NaN");
    let msg = err.to_string();
    assert!(msg.contains("x.txt:7") && msg.contains("length"), "{msg}");
    let err = KittiLabel::parse_line("Car 0.0 0 -1.5", "x.txt", 1).expect_err("short");
    assert!(err.to_string().contains("15 fields"), "{err}");
    let err =
        KittiLabel::parse_line("Car 0.0 7 -1.5 1 2 3 4 1.5 1.6 3.9 1 2 3 0.1", "x.txt", 2).expect_err("occ");
    assert!(err.to_string().contains("occluded"), "{err}");
    let err = KittiCalib::parse("P0: 1 2 3\n", "c.txt").expect_err("short matrix");
    assert!(err.to_string().contains("c.txt:1") && err.to_string().contains("12 values"), "{err}");
    let err = KittiCalib::parse(&CALIB_000000.replace("P3:", "Q3:"), "c.txt").expect_err("no P3");
    assert!(err.to_string().contains("missing P3"), "{err}");
    // DontCare rows parse but have no 3D box.
    let dc = KittiLabel::parse_line(
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10",
        "d",
        1,
    )
    .expect("parses");
    assert!(dc.box3d().is_err());
}
