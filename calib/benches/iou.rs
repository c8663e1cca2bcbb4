//! IoU throughput: `cargo bench -p monovlm-calib --bench iou`.
//!
//! Pairs are drawn near each other (most overlap, so the polygon clipping runs) from a fixed seed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Box3d, iou_2d, iou_3d, iou3d_mono3dvg};

const PAIRS: usize = 4096;

fn pairs() -> Vec<(Box3d, Box3d)> {
    let mut r = SplitMix64::new(7);
    (0..PAIRS)
        .filter_map(|_| {
            let a = Box3d::new(
                r.range(-10.0, 10.0),
                r.range(0.0, 2.0),
                r.range(5.0, 50.0),
                r.range(1.0, 5.0),
                r.range(0.5, 2.0),
                r.range(1.0, 2.0),
                r.range(-PI, PI),
            )
            .ok()?;
            let b = Box3d::new(
                a.x + r.range(-1.0, 1.0),
                a.y + r.range(-0.3, 0.3),
                a.z + r.range(-1.0, 1.0),
                a.l * r.range(0.7, 1.3),
                a.w * r.range(0.7, 1.3),
                a.h * r.range(0.7, 1.3),
                a.yaw + r.range(-0.5, 0.5),
            )
            .ok()?;
            Some((a, b))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pairs = pairs();
    let mut g = c.benchmark_group("iou");
    g.throughput(Throughput::Elements(pairs.len() as u64));
    g.bench_function("iou_3d_rotated", |bch| {
        bch.iter(|| pairs.iter().map(|(a, b)| iou_3d(black_box(a), black_box(b))).sum::<f64>())
    });
    g.bench_function("iou3d_mono3dvg", |bch| {
        bch.iter(|| pairs.iter().map(|(a, b)| iou3d_mono3dvg(black_box(a), black_box(b))).sum::<f64>())
    });
    let boxes2d: Vec<(Box2d, Box2d)> = pairs
        .iter()
        .map(|(a, b)| {
            let (sa, sb) = (a.x * 10.0 + 500.0, b.x * 10.0 + 500.0);
            (
                Box2d { x1: sa, y1: 100.0, x2: sa + a.l * 20.0, y2: 180.0 },
                Box2d { x1: sb, y1: 110.0, x2: sb + b.l * 20.0, y2: 190.0 },
            )
        })
        .collect();
    g.bench_function("iou_2d", |bch| {
        bch.iter(|| boxes2d.iter().map(|(a, b)| iou_2d(black_box(a), black_box(b))).sum::<f64>())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
