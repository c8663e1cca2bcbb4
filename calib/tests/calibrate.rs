//! Calibration: Zhang + Levenberg-Marquardt recover a known camera from synthetic corners, and
//! refuse what cannot be calibrated.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use monovlm_calib::calibrate::{CalibrationOptions, calibrate};
use monovlm_calib::synth::{SplitMix64, look_at_board, true_corners};
use monovlm_calib::{Checkerboard, Distortion, Intrinsics, Point2};

/// The camera of the foundation issue's acceptance test: 1280x720, a mild barrel lens.
pub fn truth() -> Intrinsics {
    Intrinsics::new(1000.0, 1002.0, 641.3, 358.9, 1280, 720)
        .unwrap()
        .with_distortion(Distortion::new(-0.28, 0.07, 0.0008, -0.0005, 0.0).unwrap())
}

/// 20 varied poses of a 9x6 board of 40 mm squares, all fully in view.
pub fn poses(board: &Checkerboard) -> Vec<nalgebra::Isometry3<f64>> {
    (0..20)
        .map(|i| {
            let f = i as f64;
            look_at_board(
                board,
                0.55 + 0.03 * (i % 5) as f64,
                0.45 * (f * 1.3).sin(),
                0.45 * (f * 0.7 + 1.0).cos(),
                0.4 * (f * 2.1).sin(),
                (0.06 * (f * 1.7).cos(), 0.04 * (f * 0.9).sin()),
            )
            .unwrap()
        })
        .collect()
}

/// `n` normal samples of deviation `sigma` from a fixed seed.
fn noise(seed: u64, n: usize, sigma: f64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| sigma * rng.normal()).collect()
}

#[test]
fn recovers_a_known_camera_from_noisy_corners() {
    let board = Checkerboard::new(9, 6, 0.04).unwrap();
    let k = truth();
    let views: Vec<Vec<Point2<f64>>> = poses(&board)
        .iter()
        .enumerate()
        .map(|(v, pose)| {
            let n = noise(v as u64 + 1, 2 * board.len(), 0.1);
            true_corners(&board, &k, pose)
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let p = p.unwrap();
                    assert!(k.contains(&p), "view {v} corner {i} leaves the image");
                    Point2::new(p.x + n[2 * i], p.y + n[2 * i + 1])
                })
                .collect()
        })
        .collect();
    let t = std::time::Instant::now();
    let c = calibrate(&board, &views, 1280, 720, &CalibrationOptions::default()).unwrap();
    let elapsed = t.elapsed();
    let e = &c.intrinsics;
    let d = e.distortion().unwrap().coefficients();
    println!(
        "fx {:.3} fy {:.3} cx {:.3} cy {:.3} k {:?} rms {:.4} px, {} iterations, {:?}",
        e.fx(),
        e.fy(),
        e.cx(),
        e.cy(),
        d,
        c.rms_px,
        c.iterations,
        elapsed
    );
    assert!((e.fx() / 1000.0 - 1.0).abs() < 0.002 && (e.fy() / 1002.0 - 1.0).abs() < 0.002);
    assert!((e.cx() - 641.3).abs() < 1.0 && (e.cy() - 358.9).abs() < 1.0);
    assert!((d[0] + 0.28).abs() < 0.01 && (d[1] - 0.07).abs() < 0.03);
    // With 0.1 px noise per coordinate the RMS error is ~0.1 * sqrt(2) * sqrt(1 - P / 2N).
    assert!(c.rms_px > 0.1 && c.rms_px < 0.15, "{}", c.rms_px);
    assert!(c.outlier_views.is_empty());
    assert!(c.std_dev.fx > 0.0 && c.std_dev.fx < 2.0, "{:?}", c.std_dev);
}

/// Exact corners of the 20 poses with `sigma_px` noise; view `bad` gets `bad_sigma_px` instead.
fn noisy_views(
    board: &Checkerboard,
    k: &Intrinsics,
    sigma_px: f64,
    bad: Option<(usize, f64)>,
) -> Vec<Vec<Point2<f64>>> {
    poses(board)
        .iter()
        .enumerate()
        .map(|(v, pose)| {
            let s = bad.filter(|(b, _)| *b == v).map_or(sigma_px, |(_, s)| s);
            let n = noise(v as u64 + 100, 2 * board.len(), s);
            true_corners(board, k, pose)
                .into_iter()
                .enumerate()
                .map(|(i, p)| Point2::new(p.unwrap().x + n[2 * i], p.unwrap().y + n[2 * i + 1]))
                .collect()
        })
        .collect()
}

#[test]
fn options_hold_their_parameters_fixed() {
    let board = Checkerboard::new(9, 6, 0.04).unwrap();
    let k = truth();
    let views = noisy_views(&board, &k, 0.05, None);
    let opts = CalibrationOptions {
        fix_principal_point: true,
        zero_tangential: true,
        fix_aspect_ratio: Some(1000.0 / 1002.0),
        ..CalibrationOptions::default()
    };
    let c = calibrate(&board, &views, 1280, 720, &opts).unwrap();
    let e = &c.intrinsics;
    assert_eq!((e.cx(), e.cy()), (639.5, 359.5), "principal point fixed at the image centre");
    let d = e.distortion().unwrap().coefficients();
    assert_eq!((d[2], d[3], d[4]), (0.0, 0.0, 0.0), "p1 p2 k3 stay zero");
    assert_eq!((c.std_dev.cx, c.std_dev.distortion[2]), (0.0, 0.0), "fixed parameters have no spread");
    assert!((e.fx() / e.fy() - 1000.0 / 1002.0).abs() < 1e-12, "fx/fy {}", e.fx() / e.fy());
    // Fixing true-ish parameters wrongly costs accuracy, visibly in the RMS error.
    assert!(c.rms_px > 0.08, "{}", c.rms_px);

    let free_k3 = CalibrationOptions { fix_k3: false, ..CalibrationOptions::default() };
    let c = calibrate(&board, &views, 1280, 720, &free_k3).unwrap();
    assert_ne!(c.intrinsics.distortion().unwrap().coefficients()[4], 0.0, "k3 estimated");
    assert!(c.rms_px < 0.08);
}

#[test]
fn a_bad_view_is_flagged_as_an_outlier() {
    let board = Checkerboard::new(9, 6, 0.04).unwrap();
    let views = noisy_views(&board, &truth(), 0.05, Some((7, 1.5)));
    let c = calibrate(&board, &views, 1280, 720, &CalibrationOptions::default()).unwrap();
    assert_eq!(c.outlier_views, vec![7], "view errors {:?}", c.view_rms_px);
    assert!(c.view_rms_px[7] > 1.0);
}

mod rendered {
    //! End to end on rendered images: detection, then calibration (the calibration issue's
    //! acceptance test: 20 views, 1280x720, 9x6 board, blur and noise).
    use monovlm_calib::Checkerboard;
    use monovlm_calib::calibrate::{CalibrationOptions, calibrate};
    use monovlm_calib::chessboard::detect;
    use monovlm_calib::synth::{Degradation, ViewRenderer, look_at_board, true_corners};

    use super::{poses, truth};

    #[test]
    fn detects_and_calibrates_twenty_rendered_views() {
        let board = Checkerboard::new(9, 6, 0.04).unwrap();
        let k = truth();
        let renderer = ViewRenderer::new(&k, 3).unwrap();
        let mut views = Vec::new();
        let mut worst_px: f64 = 0.0;
        let mut sum_sq = 0.0;
        let t = std::time::Instant::now();
        for (v, pose) in poses(&board).iter().enumerate() {
            let img = renderer.render(
                &board,
                pose,
                &Degradation { blur_sigma_px: 1.0, noise_sigma: 2.0, seed: v as u64 },
            );
            let found = detect(&img, &board).unwrap_or_else(|e| panic!("view {v}: {e}"));
            for (p, truth) in found.corners.iter().zip(true_corners(&board, &k, pose)) {
                let err = (p - truth.unwrap()).norm();
                worst_px = worst_px.max(err);
                sum_sq += err * err;
            }
            views.push(found.corners);
        }
        let detect_time = t.elapsed();
        let rms_detect = (sum_sq / (20.0 * board.len() as f64)).sqrt();
        let c = calibrate(&board, &views, 1280, 720, &CalibrationOptions::default()).unwrap();
        let e = &c.intrinsics;
        let d = e.distortion().unwrap().coefficients();
        println!(
            "detection: rms {rms_detect:.4} px, worst {worst_px:.3} px ({detect_time:?} render+detect); \
             calibration: fx {:.2} fy {:.2} cx {:.2} cy {:.2} k1 {:.4} k2 {:.4} rms {:.4} px",
            e.fx(),
            e.fy(),
            e.cx(),
            e.cy(),
            d[0],
            d[1],
            c.rms_px
        );
        // Numbering: every detected corner is the true corner of the same index.
        assert!(worst_px < 0.5, "a corner is {worst_px} px from its true position");
        // The tolerances (what OpenCV's calibrateCamera meets on such views).
        assert!((e.fx() / k.fx() - 1.0).abs() < 0.005 && (e.fy() / k.fy() - 1.0).abs() < 0.005);
        assert!((e.cx() - k.cx()).abs() < 3.0 && (e.cy() - k.cy()).abs() < 3.0);
        assert!((d[0] - k.distortion().unwrap().coefficients()[0]).abs() < 0.01);
        assert!(c.rms_px < 0.15, "RMS {}", c.rms_px);
    }

    #[test]
    fn numbering_follows_the_board_through_a_half_turn() {
        let board = Checkerboard::new(9, 6, 0.04).unwrap();
        let k = truth();
        let renderer = ViewRenderer::new(&k, 2).unwrap();
        for roll in [0.0, 1.2, 2.9, -2.2] {
            let pose = look_at_board(&board, 0.6, 0.2, -0.3, roll, (0.0, 0.0)).unwrap();
            let img = renderer.render(&board, &pose, &Degradation::default());
            let found = detect(&img, &board).unwrap_or_else(|e| panic!("roll {roll}: {e}"));
            for (i, (p, t)) in found.corners.iter().zip(true_corners(&board, &k, &pose)).enumerate() {
                assert!(
                    (p - t.unwrap()).norm() < 0.5,
                    "roll {roll}: corner {i} at {p}, truth {}",
                    t.unwrap()
                );
            }
        }
    }

    #[test]
    fn no_board_wrong_board_and_too_few_views_are_clear_errors() {
        let board = Checkerboard::new(9, 6, 0.04).unwrap();
        let k = truth();
        let blank = image::GrayImage::from_pixel(1280, 720, image::Luma([128]));
        let err = detect(&blank, &board).unwrap_err();
        assert!(err.to_string().contains("board not found"), "{err}");

        let renderer = ViewRenderer::new(&k, 2).unwrap();
        let pose = look_at_board(&board, 0.6, 0.2, 0.1, 0.1, (0.0, 0.0)).unwrap();
        let img = renderer.render(&board, &pose, &Degradation::default());
        let wrong = Checkerboard::new(8, 6, 0.04).unwrap();
        let err = detect(&img, &wrong).unwrap_err();
        assert!(err.to_string().contains("9x6") && err.to_string().contains("8x6"), "{err}");

        let one = vec![detect(&img, &board).unwrap().corners];
        let err = calibrate(&board, &one, 1280, 720, &CalibrationOptions::default()).unwrap_err();
        assert!(err.to_string().contains("at least 3"), "{err}");
    }
}
