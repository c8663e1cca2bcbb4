//! Per-token decode latency of the exported decoder, fused (`GroupQueryAttention`,
//! `SkipSimplifiedLayerNormalization`) vs plain ONNX operators, on the ~30M-parameter benchmark
//! configuration (`monovlm_exporter::synthetic::bench_config`), ONNX Runtime on the CPU, one thread.
//!
//! A step decodes one token after a prompt of 64 (or 1024) tokens, the context growing by up to 32
//! before the prompt is prefilled again (untimed), as in `scripts/reference/bench_decode_torch.py`,
//! which times transformers on the same checkpoint (written to `target/monovlm-bench/qwen25vl-30m`).
//!
//! Also the vision encoder on one 364x1232 frame.
//!
//! `cargo bench -p monovlm-exporter --bench decode`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that cannot set up should stop

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use monovlm_exporter::Precision;
use monovlm_exporter::package::{ExportOptions, GraphFiles, export};
use monovlm_exporter::synthetic::{bench_config, write_random_checkpoint};
use monovlm_exporter::validate::{KvCache, PackageSessions};

/// Prompt lengths: a short text prompt, and the context of a prompt with a ~1000-token image.
const PROMPTS: [usize; 2] = [64, 1024];
const NEW: usize = 32;
const THREADS: usize = 1;

fn bench_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/monovlm-bench")
}

/// The benchmark checkpoint and its packages, made once.
fn setup(precision: Precision) -> (PathBuf, PathBuf) {
    let root = bench_root();
    let ckpt = root.join("qwen25vl-30m");
    if !ckpt.join("model.safetensors").is_file() {
        let params = write_random_checkpoint(&ckpt, &bench_config(), 7).unwrap();
        eprintln!("wrote {} ({params} parameters)", ckpt.display());
    }
    let pkg = root.join(format!("pkg-{}", precision.name()));
    if !pkg.join("monovlm.json").is_file() {
        let opts =
            ExportOptions { precision, force: true, with_plain_decoder: true, ..ExportOptions::default() };
        export(&ckpt, &pkg, &opts, &mut |_| {}).unwrap();
    }
    (ckpt, pkg)
}

struct Decoding {
    prompt: usize,
    sessions: PackageSessions,
    cache: KvCache,
    prompt_embeds: Vec<f32>,
    token_embeds: Vec<f32>,
}

impl Decoding {
    fn new(pkg: &Path, decoder: &str, precision: Precision, prompt: usize) -> Self {
        let files = GraphFiles::for_precision(precision);
        let mut sessions = PackageSessions::open(pkg, &files, THREADS)
            .unwrap()
            .with_decoder(&pkg.join(decoder), THREADS)
            .unwrap();
        let ids: Vec<i64> = (0..prompt as i64).map(|i| (i * 37 + 11) % 8000).collect();
        let prompt_embeds = sessions.embed(&ids).unwrap();
        let token_embeds = sessions.embed(&[42]).unwrap();
        let cache = sessions.empty_cache().unwrap();
        let mut d = Self { prompt, sessions, cache, prompt_embeds, token_embeds };
        d.prefill();
        d
    }

    fn prefill(&mut self) {
        self.cache = self.sessions.empty_cache().unwrap();
        let positions: Vec<i64> = (0..3).flat_map(|_| 0..self.prompt as i64).collect();
        self.sessions.decode(self.prompt_embeds.clone(), positions, &mut self.cache).unwrap();
    }

    fn step(&mut self) -> Duration {
        if self.cache.len() >= self.prompt + NEW {
            self.prefill();
        }
        let position = self.cache.len() as i64;
        let embeds = self.token_embeds.clone();
        let t0 = Instant::now();
        let logits = self.sessions.decode(embeds, vec![position; 3], &mut self.cache).unwrap();
        let dt = t0.elapsed();
        assert!(logits.iter().all(|v| v.is_finite()));
        dt
    }
}

fn decode_step(c: &mut Criterion) {
    for prompt in PROMPTS {
        let mut group = c.benchmark_group(format!("decode_step_30m_ctx{prompt}_1thread"));
        group.sample_size(30).measurement_time(Duration::from_secs(8));
        for precision in [Precision::Fp32, Precision::Int4] {
            let (_, pkg) = setup(precision);
            let files = GraphFiles::for_precision(precision);
            for (label, decoder) in
                [("fused", files.decoder.clone()), ("plain", GraphFiles::plain_decoder(precision))]
            {
                let mut d = Decoding::new(&pkg, &decoder, precision, prompt);
                group.bench_function(format!("{}_{label}", precision.name()), |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| d.step()).sum())
                });
            }
        }
        group.finish();
    }
}

fn prefill(c: &mut Criterion) {
    let mut group = c.benchmark_group("prefill_64_30m_1thread");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    let (_, pkg) = setup(Precision::Fp32);
    let files = GraphFiles::for_precision(Precision::Fp32);
    for (label, decoder) in
        [("fused", files.decoder.clone()), ("plain", GraphFiles::plain_decoder(Precision::Fp32))]
    {
        let mut d = Decoding::new(&pkg, &decoder, Precision::Fp32, PROMPTS[0]);
        group.bench_function(format!("fp32_{label}"), |b| b.iter(|| d.prefill()));
    }
    group.finish();
}

/// The vision encoder on a KITTI-like frame resized to 364x1232 (grid 26x88: 2288 patches, 572 image
/// tokens, 33 windows of up to 64 patches).
fn vision(c: &mut Criterion) {
    let mut group = c.benchmark_group("vision_encoder_30m_1thread");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let (_, pkg) = setup(Precision::Fp32);
    let mut sessions =
        PackageSessions::open(&pkg, &GraphFiles::for_precision(Precision::Fp32), THREADS).unwrap();
    let grid = [1, 26, 88];
    let pixels: Vec<f32> =
        (0..grid[1] * grid[2] * 1176).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    group.bench_function("grid_26x88", |b| b.iter(|| sessions.image_features(&pixels, &[grid]).unwrap()));
    group.finish();
}

criterion_group!(benches, decode_step, prefill, vision);
criterion_main!(benches);
