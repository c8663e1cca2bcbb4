//! Speed of the trainer's hot paths on a fixed model, the shapes `scripts/reference/
//! bench_qwen_torch.py` measures in transformers + torch: a training step (forward, backward,
//! AdamW) and generation with the KV cache (G samples sharing one prefill, and greedy batch 1).

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::Result;
use crate::model::Qwen25Vl;
use crate::model::generate::{Prompt, Sampling};
use crate::model::presets::{ModelSize, SpecialIds};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{Batch, Sequence, causal_lm_loss};

/// Vocabulary of the benchmark model (as in the Python anchor).
pub const BENCH_VOCAB: i64 = 2048;

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// `train`, `sample` or `greedy`.
    pub bench: &'static str,
    /// Tokens per second (trained tokens, or generated tokens).
    pub tokens_per_s: f64,
    /// Median seconds per step or per `generate` call.
    pub median_s: f64,
    /// Parameters of the model.
    pub params: usize,
    /// libtorch intra-op threads.
    pub threads: i32,
}

/// The benchmark model: [`ModelSize::bench_3m`] with random weights (seed 0).
///
/// # Errors
/// [`crate::Error::ModelConfig`] / [`crate::Error::Torch`].
pub fn bench_model(device: Device) -> Result<Qwen25Vl> {
    let ids = SpecialIds {
        image_pad: 2040,
        video_pad: 2041,
        vision_start: 2042,
        vision_end: 2043,
        im_end: 2047,
        pad: 2046,
    };
    let mut config = ModelSize::bench_3m().config(BENCH_VOCAB, &ids);
    config.text.rope_theta = 1e6;
    Qwen25Vl::random(&config, device, Kind::Float, 0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn random_ids(n: usize, seed: i64) -> Vec<i64> {
    tch::manual_seed(seed);
    Vec::<i64>::try_from(Tensor::randint(2000, [n as i64], (Kind::Int64, Device::Cpu))).unwrap_or_default()
}

/// Training: batches of 8 x 128 text tokens, every token supervised (labels = inputs, shifted);
/// median of `steps` steps after 2 warm-up steps.
///
/// # Errors
/// As the model's forward.
pub fn bench_train(model: &Qwen25Vl, steps: usize) -> Result<BenchResult> {
    let (b, t) = (8usize, 128usize);
    let ids = random_ids(b * t, 1);
    let seqs: Vec<Sequence> = ids
        .chunks(t)
        .map(|row| Sequence {
            prompt: row[..1].to_vec(),
            target: row[1..].to_vec(),
            pixel_values: None,
            grids: vec![],
        })
        .collect();
    let batch = Batch::new(model, &seqs, 2046)?;
    let mut opt = AdamW::new(model.params(), AdamWConfig::default());
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        model.params().zero_grad();
        let loss = causal_lm_loss(model, &batch)?;
        loss.backward();
        opt.step(model.params(), 1e-4)?;
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let m = median(times);
    Ok(BenchResult {
        bench: "train",
        tokens_per_s: (b * t) as f64 / m,
        median_s: m,
        params: model.params().numel(),
        threads: tch::get_num_threads(),
    })
}

/// Generation from a 64-token text prompt, 32 new tokens per sample (no stop token): `samples`
/// sampled continuations sharing the prefill (temperature 1, top-p 1), or greedy when `samples`
/// is 1 and `greedy`. Median of `runs` calls after one warm-up.
///
/// # Errors
/// As [`Qwen25Vl::generate`].
pub fn bench_generate(model: &Qwen25Vl, samples: usize, greedy: bool, runs: usize) -> Result<BenchResult> {
    let prompt = Prompt { tokens: random_ids(64, 2), pixel_values: None, grids: vec![] };
    let sampling = Sampling {
        temperature: if greedy { 0.0 } else { 1.0 },
        top_p: 1.0,
        max_new_tokens: 32,
        stop_tokens: vec![],
    };
    let mut times = Vec::new();
    for i in 0..runs + 1 {
        let t0 = Instant::now();
        let (out, _) = model.generate(&prompt, samples, &sampling)?;
        debug_assert!(out.iter().all(|c| c.tokens.len() == 32));
        if i >= 1 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let m = median(times);
    Ok(BenchResult {
        bench: if greedy { "greedy" } else { "sample" },
        tokens_per_s: (samples * 32) as f64 / m,
        median_s: m,
        params: model.params().numel(),
        threads: tch::get_num_threads(),
    })
}
