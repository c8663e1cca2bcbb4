//! Preprocessing a 1280x720 camera frame for Qwen2.5-VL (goal: < 5 ms on one core).
//!
//! `cargo bench -p monovlm-runtime --bench preprocess`. The Python reference on the same frame:
//! `scripts/reference/qwen_preprocess_fixture.py --bench`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use image::RgbImage;
use monovlm_calib::Intrinsics;
use monovlm_runtime::preprocess::{
    PreprocessConfig, ResizedImage, cu_seqlens, preprocess_image, preprocess_image_reusing, resize_bicubic,
    rope_index, vision_position_ids, window_index,
};

/// A frame with texture everywhere (gradient plus hashed noise), like the fixtures' pattern.
fn frame(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let px = |c: u32| {
            let mut h = x.wrapping_mul(2654435761).wrapping_add(y.wrapping_mul(40503)).wrapping_add(c * 97);
            h ^= h >> 15;
            h = h.wrapping_mul(2246822519);
            h ^= h >> 13;
            ((x * 3 + y * 5 + c * 85 + (h & 63)) & 255) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

fn bench(c: &mut Criterion) {
    let rgb = frame(1280, 720);
    let camera = Intrinsics::new(1000.0, 1000.0, 640.0, 360.0, 1280, 720).unwrap();
    let config = PreprocessConfig::default();
    let mut g = c.benchmark_group("preprocess");
    g.bench_function("preprocess_image_1280x720", |b| {
        b.iter(|| preprocess_image(std::hint::black_box(&rgb), &camera, &config).unwrap())
    });
    // The camera loop's path: the previous frame's patch rows are handed back and overwritten.
    g.bench_function("preprocess_image_reusing_1280x720", |b| {
        let mut spare = None;
        b.iter(|| {
            let p =
                preprocess_image_reusing(std::hint::black_box(&rgb), &camera, &config, spare.take()).unwrap();
            spare = Some(p.pixel_values);
        })
    });
    g.bench_function("resize_bicubic_1280x720_to_1288x728", |b| {
        b.iter(|| resize_bicubic(std::hint::black_box(&rgb), 1288, 728).unwrap())
    });
    g.finish();

    // The trainer's path: a KITTI frame held as its 448x140 model input (8-bit), patch rows made
    // each time an example is batched.
    let kitti = frame(1242, 375);
    let kitti_camera = Intrinsics::new(721.5, 721.5, 609.6, 172.9, 1242, 375).unwrap();
    let nano = PreprocessConfig { max_pixels: 62_720, ..PreprocessConfig::default() };
    let resized = ResizedImage::new(&kitti, &kitti_camera, &nano).unwrap();
    let mut g = c.benchmark_group("training_images");
    g.bench_function("resized_image_patch_rows_448x140", |b| {
        b.iter(|| std::hint::black_box(&resized).patch_rows())
    });
    g.bench_function("preprocess_image_1242x375_to_448x140", |b| {
        b.iter(|| preprocess_image(std::hint::black_box(&kitti), &kitti_camera, &nano).unwrap())
    });
    g.finish();

    let grid = [[1, 52, 92]];
    let mut g = c.benchmark_group("index_tensors");
    g.bench_function("all_1280x720", |b| {
        b.iter(|| {
            let g = std::hint::black_box(&grid);
            (
                vision_position_ids(g).unwrap(),
                window_index(g).unwrap(),
                cu_seqlens(g).unwrap(),
                rope_index(40, g[0], 60).unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
