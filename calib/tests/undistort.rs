//! Undistortion: the remap of a distorted frame equals the frame an ideal camera would have taken.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use monovlm_calib::synth::{Degradation, ViewRenderer, look_at_board};
use monovlm_calib::undistort::{NewCamera, UndistortMap, new_camera};
use monovlm_calib::{Checkerboard, Distortion, Intrinsics, Point2};

fn lens() -> Intrinsics {
    Intrinsics::new(500.0, 501.0, 321.0, 239.0, 640, 480)
        .unwrap()
        .with_distortion(Distortion::new(-0.28, 0.07, 0.0008, -0.0005, 0.0).unwrap())
}

#[test]
fn remapped_frame_matches_an_ideal_camera_rendering() {
    let board = Checkerboard::new(9, 6, 0.04).unwrap();
    let pose = look_at_board(&board, 0.5, 0.3, -0.2, 0.25, (0.0, 0.0)).unwrap();
    let sharp = Degradation { blur_sigma_px: 0.0, noise_sigma: 0.0, seed: 0 };
    let k = lens();
    let distorted = ViewRenderer::new(&k, 3).unwrap().render(&board, &pose, &sharp);
    let ideal_cam = new_camera(&k, NewCamera::CropValid).unwrap();
    let expected = ViewRenderer::new(&ideal_cam, 3).unwrap().render(&board, &pose, &sharp);
    let map = UndistortMap::new(&k, &ideal_cam).unwrap();
    let got = map.remap_gray(&distorted).unwrap();
    let diff: Vec<f64> = got
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .collect();
    let mean = diff.iter().sum::<f64>() / diff.len() as f64;
    // Resampling blurs edges a little; a wrong map direction or camera gives tens of grey levels.
    assert!(mean < 3.0, "mean absolute difference {mean} grey levels");
    // A wrong camera (no distortion correction) is far off, so the test can fail.
    let naive =
        UndistortMap::new(&Intrinsics::new(500.0, 501.0, 321.0, 239.0, 640, 480).unwrap(), &ideal_cam)
            .unwrap()
            .remap_gray(&distorted)
            .unwrap();
    let naive_mean = naive
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / diff.len() as f64;
    assert!(naive_mean > 3.0 * mean, "{naive_mean} vs {mean}");
}

#[test]
fn crop_valid_leaves_no_empty_pixel_and_keep_all_loses_no_source_pixel() {
    let k = lens();
    let crop = new_camera(&k, NewCamera::CropValid).unwrap();
    let white = image::GrayImage::from_pixel(640, 480, image::Luma([255]));
    let out = UndistortMap::new(&k, &crop).unwrap().remap_gray(&white).unwrap();
    let black = out.as_raw().iter().filter(|p| **p == 0).count();
    assert_eq!(black, 0, "{black} pixels without a source");

    let all = new_camera(&k, NewCamera::KeepAll).unwrap();
    for (u, v) in [(0.0, 0.0), (639.0, 0.0), (0.0, 479.0), (639.0, 479.0), (320.0, 0.0), (0.0, 240.0)] {
        let ideal = k.undistort_pixel(&Point2::new(u, v)).unwrap();
        let x = (ideal.x - k.cx()) / k.fx();
        let y = (ideal.y - k.cy()) / k.fy();
        let p = Point2::new(all.fx() * x + all.cx(), all.fy() * y + all.cy());
        assert!(p.x > -0.5 && p.y > -0.5 && p.x < 639.5 && p.y < 479.5, "source ({u}, {v}) lands at {p}");
    }
    // Barrel distortion pushes the undistorted outline outwards: both policies zoom out, keeping
    // everything more than cropping to valid pixels.
    assert!(all.fx() < crop.fx() && crop.fx() < k.fx(), "{} {} {}", all.fx(), crop.fx(), k.fx());
}

#[test]
fn wrong_frame_size_is_an_error() {
    let k = lens();
    let map = UndistortMap::new(&k, &new_camera(&k, NewCamera::Same).unwrap()).unwrap();
    let err = map.remap_rgb(&image::RgbImage::new(320, 240)).unwrap_err();
    assert!(err.to_string().contains("320x240"), "{err}");
}

#[test]
fn interpolation_weights_preserve_flat_images_everywhere() {
    // A uniform image must stay uniform wherever the source positions fall (weights sum to one),
    // including positions a hair from the next pixel, where rounding is tightest.
    let k = Intrinsics::new(500.0, 501.0, 321.0, 239.0, 640, 480)
        .unwrap()
        .with_distortion(Distortion::new(-0.2, 0.05, 0.0, 0.0, 0.0).unwrap());
    for policy in [NewCamera::Same, NewCamera::CropValid] {
        let map = UndistortMap::new(&k, &new_camera(&k, policy).unwrap()).unwrap();
        let flat = image::RgbImage::from_pixel(640, 480, image::Rgb([200, 17, 255]));
        let out = map.remap_rgb(&flat).unwrap();
        assert!(out.pixels().all(|p| p.0 == [200, 17, 255] || p.0 == [0, 0, 0]));
    }
}

/// A strong barrel lens (k1 = -0.5) folds at r^2 = 1 / 1.5: rays beyond it map back inside the
/// image under the polynomial. The map gives them no source (no ghost copy of the centre in the
/// corners), and the inverse refuses a pixel whose only preimage lies beyond the fold.
#[test]
fn rays_beyond_the_lens_fold_have_no_source() {
    let k = Intrinsics::new(300.0, 300.0, 320.0, 240.0, 640, 480)
        .unwrap()
        .with_distortion(Distortion::new(-0.5, 0.0, 0.0, 0.0, 0.0).unwrap());
    let d = *k.distortion().unwrap();
    // The corner ray (r = 1.33) is past the fold, and the polynomial lands it near the centre.
    let (x, y) = (-320.0 / 300.0, -240.0 / 300.0);
    assert!(!d.is_valid_at(x, y));
    let (xd, yd) = d.distort(x, y);
    assert!(xd.hypot(yd) < 0.2, "({xd}, {yd})");
    let white = image::GrayImage::from_pixel(640, 480, image::Luma([255]));
    let out =
        UndistortMap::new(&k, &new_camera(&k, NewCamera::Same).unwrap()).unwrap().remap_gray(&white).unwrap();
    assert_eq!(out.get_pixel(0, 0).0, [0], "the corner has a (folded) source");
    assert_eq!(out.get_pixel(320, 240).0, [255]);
    // Every pixel with a source is inside the fold, and every one inside it (and inside the
    // image) has a source.
    for v in (0..480).step_by(7) {
        for u in (0..640).step_by(7) {
            let (x, y) = ((f64::from(u) - 320.0) / 300.0, (f64::from(v) - 240.0) / 300.0);
            let (xd, yd) = d.distort(x, y);
            let (sx, sy) = (300.0 * xd + 320.0, 300.0 * yd + 240.0);
            let in_image = sx > 0.0 && sy > 0.0 && sx < 639.0 && sy < 479.0;
            let lit = out.get_pixel(u, v).0 == [255];
            assert_eq!(lit, d.is_valid_at(x, y) && in_image, "pixel ({u}, {v})");
        }
    }
    // The fold's image radius is r_f (1 + k1 r_f^2) = 0.544: a distorted point beyond it has no
    // valid preimage, one inside has exactly one, which round-trips.
    assert!(d.undistort(0.6, 0.0).is_none());
    let (x, y) = d.undistort(0.5, 0.0).unwrap();
    assert!(d.is_valid_at(x, y));
    let (xd, _) = d.distort(x, y);
    assert!((xd - 0.5).abs() < 1e-9, "{xd}");
}
