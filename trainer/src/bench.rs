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

/// Shapes of the GRPO throughput benchmark (those of `scripts/reference/bench_grpo_trl.py`).
#[derive(Clone, Debug, Serialize)]
pub struct GrpoBenchShape {
    /// Name (`2.9m`, `100k`).
    pub name: &'static str,
    /// The language model (the vision tower is the smallest the architecture allows and sees a
    /// 56x56 image: four image tokens).
    pub size: ModelSize,
    /// Vocabulary.
    pub vocab: i64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
}

/// The two shapes of the issue, as the Python anchor builds them: ~2.9M parameters (text 256 wide,
/// 4 layers, MLP 512, vocab 2048) and ~100k (text 32 wide, 2 layers, vocab 2560); 32-token prompts.
pub fn grpo_bench_shapes() -> Vec<GrpoBenchShape> {
    let tiny_vision = |mut s: ModelSize| {
        s.vision_hidden = 16;
        s.vision_depth = 1;
        s.vision_heads = 1;
        s.vision_intermediate = 16;
        s.vision_fullatt = vec![0];
        s
    };
    vec![
        GrpoBenchShape {
            name: "2.9m",
            size: tiny_vision(ModelSize::bench_3m()),
            vocab: 2048,
            prompt_tokens: 32,
        },
        GrpoBenchShape {
            name: "100k",
            size: tiny_vision(ModelSize {
                hidden: 32,
                layers: 2,
                heads: 2,
                kv_heads: 1,
                intermediate: 64,
                ..ModelSize::bench_3m()
            }),
            vocab: 2560,
            prompt_tokens: 32,
        },
    ]
}

/// One GRPO step (8 prompts x 8 sampled answers x 32 new tokens, KL to a frozen reference, one
/// update) on a random model of `shape`: median seconds of `steps` steps after one warm-up. The
/// reward is the fraction of even token ids, like the trivial rewards of the Python anchor: it only
/// has to vary within groups.
///
/// # Errors
/// As [`crate::grpo::grpo_step`].
pub fn bench_grpo(shape: &GrpoBenchShape, steps: usize) -> Result<BenchResult> {
    use crate::grpo::reward::RewardParts;
    use crate::grpo::{GrpoConfig, Reference, grpo_step};
    use crate::train::grounding::Example;
    use monovlm_calib::Intrinsics;
    use monovlm_runtime::preprocess::{PreprocessConfig, ResizedImage};

    let ids = SpecialIds {
        image_pad: shape.vocab - 8,
        video_pad: shape.vocab - 7,
        vision_start: shape.vocab - 6,
        vision_end: shape.vocab - 5,
        im_end: shape.vocab - 1,
        pad: shape.vocab - 2,
    };
    let config = shape.size.config(shape.vocab, &ids);
    let model = Qwen25Vl::random(&config, Device::Cpu, Kind::Float, 0)?;
    let reference = Reference::Frozen(Box::new(Qwen25Vl::random(&config, Device::Cpu, Kind::Float, 0)?));
    let k = Intrinsics::new(50.0, 50.0, 28.0, 28.0, 56, 56)?;
    let img = image::RgbImage::from_pixel(56, 56, image::Rgb([100, 120, 140]));
    let pre = PreprocessConfig { min_pixels: 56 * 56, max_pixels: 56 * 56, ..PreprocessConfig::default() };
    let image = std::sync::Arc::new(ResizedImage::new(&img, &k, &pre)?);
    let label = monovlm_calib::kitti::KittiLabel::parse_line(
        "Car 0 0 0 1 1 20 20 1.5 1.6 3.9 0 1.5 10 0",
        "bench",
        1,
    )?;
    let examples: Vec<Example> = (0..8)
        .map(|i| {
            let pads = image.num_image_tokens;
            let mut prompt = random_ids(shape.prompt_tokens - 2 - pads, 10 + i);
            let head: Vec<i64> = std::iter::once(ids.vision_start)
                .chain(std::iter::repeat_n(ids.image_pad, pads))
                .chain([ids.vision_end])
                .collect();
            prompt.splice(0..0, head);
            let key = crate::data::mono3drefer::SampleKey { instance_id: i as u64, ann_id: 0 };
            let record =
                crate::data::mono3drefer::Record::new("000000", key, "car", "the car", label.clone())?;
            Ok(Example { record, prompt, target: vec![], image: std::sync::Arc::clone(&image) })
        })
        .collect::<Result<_>>()?;
    let prompts: Vec<&Example> = examples.iter().collect();
    let cfg = GrpoConfig {
        group_size: 8,
        prompts_per_step: 8,
        max_new_tokens: 32,
        updates_per_rollout: 1,
        ..GrpoConfig::default()
    };
    let mut opt = AdamW::new(model.params(), AdamWConfig::default());
    let mut score = |_: &Example, c: &crate::model::generate::Completion| {
        let even = c.tokens.iter().filter(|&&t| t % 2 == 0).count() as f64 / c.tokens.len().max(1) as f64;
        Ok(RewardParts { total: even, format: 1.0, ..RewardParts::default() })
    };
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        tch::manual_seed(i as i64);
        let t0 = Instant::now();
        grpo_step(&model, &reference, &mut opt, 1e-5, &prompts, &[], &mut score, &cfg, i + 1)?;
        if i >= 1 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let m = median(times);
    Ok(BenchResult {
        bench: "grpo_step",
        tokens_per_s: (8 * 8 * 32) as f64 / m,
        median_s: m,
        params: model.params().numel(),
        threads: tch::get_num_threads(),
    })
}
