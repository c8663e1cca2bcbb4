//! Calibration hot paths: `cargo bench -p monovlm-calib --bench calibration`.
//!
//! Detection of a 9x6 board in one 1280x720 view, calibration from 20 views x 54 corners, and the
//! undistortion remap of a 1280x720 RGB frame (the per-frame cost on the vehicle), one thread.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark set-up may panic

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use monovlm_calib::calibrate::{CalibrationOptions, calibrate};
use monovlm_calib::chessboard::detect;
use monovlm_calib::synth::{Degradation, ViewRenderer, look_at_board};
use monovlm_calib::undistort::{NewCamera, UndistortMap, new_camera};
use monovlm_calib::{Checkerboard, Distortion, Intrinsics};

fn bench(c: &mut Criterion) {
    let board = Checkerboard::new(9, 6, 0.04).unwrap();
    let k = Intrinsics::new(1000.0, 1002.0, 641.3, 358.9, 1280, 720)
        .unwrap()
        .with_distortion(Distortion::new(-0.28, 0.07, 0.0008, -0.0005, 0.0).unwrap());
    let renderer = ViewRenderer::new(&k, 2).unwrap();
    let images: Vec<_> = (0..20)
        .map(|i| {
            let f = i as f64;
            let pose = look_at_board(
                &board,
                0.55 + 0.03 * (i % 5) as f64,
                0.45 * (f * 1.3).sin(),
                0.45 * (f * 0.7 + 1.0).cos(),
                0.4 * (f * 2.1).sin(),
                (0.06 * (f * 1.7).cos(), 0.04 * (f * 0.9).sin()),
            )
            .unwrap();
            renderer.render(&board, &pose, &Degradation { blur_sigma_px: 1.0, noise_sigma: 2.0, seed: i })
        })
        .collect();
    let views: Vec<_> = images.iter().map(|img| detect(img, &board).unwrap().corners).collect();

    let mut g = c.benchmark_group("calibration");
    g.sample_size(20);
    g.bench_function("detect_9x6_1280x720", |b| b.iter(|| detect(black_box(&images[3]), &board).unwrap()));
    g.bench_function("calibrate_20_views", |b| {
        b.iter(|| calibrate(&board, black_box(&views), 1280, 720, &CalibrationOptions::default()).unwrap())
    });
    let target = new_camera(&k, NewCamera::CropValid).unwrap();
    let map = UndistortMap::new(&k, &target).unwrap();
    let frame = image::RgbImage::from_fn(1280, 720, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    g.sample_size(50);
    g.bench_function("undistort_remap_rgb_1280x720", |b| {
        b.iter(|| map.remap_rgb(black_box(&frame)).unwrap())
    });
    g.bench_function("undistort_map_build_1280x720", |b| {
        b.iter(|| UndistortMap::new(&k, black_box(&target)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
