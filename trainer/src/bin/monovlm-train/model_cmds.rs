//! `init`, `sft`, `pretrain-vision`, `probe`, `bench`, `curriculum` and `ablation`: the model
//! commands of `monovlm-train`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use monovlm_runtime::model_config::DEFAULT_ABS_POSITION_PERIODS;
use monovlm_runtime::preprocess::PreprocessConfig;
use monovlm_runtime::protocol::PromptLayout;
use monovlm_trainer::checkpoint::{self, MonovlmMeta, SaveOptions, StageRecord};
use monovlm_trainer::data::mono3drefer::{Split, Strictness};
use monovlm_trainer::eval::plots::{Curve, curves};
use monovlm_trainer::model::presets::{ModelSize, SpecialIds};
use monovlm_trainer::model::weights::parse_kind;
use monovlm_trainer::model::{LoraConfig, Qwen25Vl, parse_device};
use monovlm_trainer::train::dense::{DenseConfig, build_dense_images, train_dense};
use monovlm_trainer::train::grounding::{build_crop_examples, build_examples, image_reliance};
use monovlm_trainer::train::sft::{SftConfig, train_sft};
use monovlm_trainer::{bench, tokenizer};

use crate::{print_above, progress};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder with tokenizer.json (from `monovlm-train tokenizer`).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Architecture preset: tiny (~0.4M parameters), bench-3m (~3M), nano (~6M).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Smallest resized image area, pixels.
    #[arg(long, default_value_t = 56 * 56)]
    min_pixels: usize,
    /// Largest resized image area, pixels (the image token count grows with it).
    #[arg(long, default_value_t = 448 * 140)]
    max_pixels: usize,
    /// Add an absolute position code to the image features (a learned projection of each merged
    /// token's sinusoidal (row, column) code; not in Qwen2.5-VL). With it a from-scratch model
    /// learns to pick the described object among several far sooner (docs/results.md, session 11).
    #[arg(long)]
    abs_position: bool,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `sft`.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// Dataset root (Mono3DRefer layout).
    #[arg(long)]
    data: PathBuf,
    /// Checkpoint to start from (a Hugging Face directory with tokenizer.json).
    #[arg(long)]
    base: PathBuf,
    /// Output checkpoint directory (written atomically; logs and plots go inside).
    #[arg(long)]
    out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Validate every N steps (and after the last).
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Validation records (from the val split).
    #[arg(long, default_value_t = 64)]
    val_examples: usize,
    /// Use only the first N training records.
    #[arg(long)]
    train_examples: Option<usize>,
    /// Train only on objects whose 2D box is at least this tall in the camera image (pixels): an
    /// easy-first curriculum of near, large objects, for a from-scratch model that has not learnt
    /// to look at its image yet. Validation keeps every record.
    #[arg(long)]
    min_box_height_px: Option<f64>,
    /// Also train on N zoomed crops around described objects (`--zoom-min`..`--zoom-max` times the
    /// width the object needs, cropped intrinsics, 3D box unchanged): a geometry-preserving
    /// augmentation. 0: full frames only.
    #[arg(long, default_value_t = 0)]
    crop_examples: usize,
    /// Smallest crop width over the width the object needs (drawn uniformly up to `--zoom-max`).
    #[arg(long, default_value_t = 2.0)]
    zoom_min: f64,
    /// Largest crop width over the width the object needs.
    #[arg(long, default_value_t = 4.0)]
    zoom_max: f64,
    /// Train on the zoomed crops only (no full frames).
    #[arg(long)]
    crops_only: bool,
    /// Weight of the referring-pointer loss: a middle decoder layer learns to point out the
    /// described object's image tokens (an auxiliary head, discarded). 0: off.
    #[arg(long, default_value_t = 0.0)]
    pointer_weight: f64,
    /// LoRA rank; 0 trains every weight.
    #[arg(long, default_value_t = 0)]
    lora_rank: i64,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights' dtype while training and in the saved checkpoint: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// libtorch threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `pretrain-vision`.
#[derive(Debug, Args)]
pub struct PretrainVisionArgs {
    /// Dataset root (Mono3DRefer layout); its labels give the per-token targets.
    #[arg(long)]
    data: PathBuf,
    /// Checkpoint to start from (a Hugging Face directory with tokenizer.json).
    #[arg(long)]
    base: PathBuf,
    /// Output checkpoint directory (the base with a trained vision tower; a log inside).
    #[arg(long)]
    out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    images_per_step: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Validate every N steps (and after the last).
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Training images (the train split's first N; all by default).
    #[arg(long)]
    train_images: Option<usize>,
    /// Validation images (from the val split).
    #[arg(long, default_value_t = 32)]
    val_images: usize,
    /// libtorch threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Seed of the heads and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Checkpoint to measure (a Hugging Face directory with tokenizer.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset root (Mono3DRefer layout).
    #[arg(long)]
    data: PathBuf,
    /// Split: train, val or test.
    #[arg(long, default_value = "val")]
    split: Split,
    /// The split's first N records.
    #[arg(long, default_value_t = 256)]
    examples: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// libtorch threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// libtorch threads (the reference is measured with 1).
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Training steps measured (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Generation runs measured (after 1 warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also time GRPO steps (8 prompts x 8 answers x 32 tokens) on ~2.9M and ~100k models, the
    /// shapes of scripts/reference/bench_grpo_trl.py.
    #[arg(long)]
    grpo: bool,
}

pub fn init(args: &InitArgs) -> Result<()> {
    let tok = tokenizer::load(&args.tokenizer)?;
    let ids = SpecialIds::of(&tok)?;
    let mut config =
        ModelSize::preset(&args.preset)?.config(i64::from(tok.get_vocab_size(true) as u32), &ids);
    if args.abs_position {
        config.vision.abs_position_periods = DEFAULT_ABS_POSITION_PERIODS.to_vec();
    }
    let mut model = Qwen25Vl::random(&config, tch::Device::Cpu, tch::Kind::Float, args.seed)?;
    let pre = PreprocessConfig {
        min_pixels: args.min_pixels,
        max_pixels: args.max_pixels,
        ..PreprocessConfig::default()
    };
    let meta = MonovlmMeta::new(&pre);
    let opts = SaveOptions {
        dtype: tch::Kind::Float,
        tokenizer_from: Some(&args.tokenizer),
        meta: &meta,
        train: None,
        max_shard_bytes: 4 << 30,
    };
    checkpoint::save(&mut model, &args.out, opts)?;
    writeln!(
        std::io::stdout(),
        "wrote a random {} model ({} parameters, vocabulary {}) to {}",
        args.preset,
        model.params().numel(),
        config.text.vocab_size,
        args.out.display()
    )?;
    Ok(())
}

/// `probe`: how much a checkpoint's answers depend on the image (answer loss with each example's own
/// image and with another scene's), as one JSON line on stdout.
pub fn probe(args: &ProbeArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let dataset = monovlm_trainer::data::mono3drefer::Dataset::load(&args.data, Strictness::Lenient)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let tok = tokenizer::load(&args.checkpoint).context("the checkpoint needs a tokenizer.json")?;
    let ids = SpecialIds::of(&tok)?;
    let meta = MonovlmMeta::read(&args.checkpoint)?
        .unwrap_or_else(|| MonovlmMeta::new(&PreprocessConfig::default()));
    let model = Qwen25Vl::load(&args.checkpoint, tch::Device::Cpu, tch::Kind::Float)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let bar = progress(args.examples, "preparing examples");
    let format = meta.example_format()?;
    let examples = build_examples(&dataset, args.split, &tok, &format, Some(args.examples), || bar.inc(1))?;
    bar.finish_and_clear();
    let r = image_reliance(&model, &examples, ids.pad, args.batch)?;
    let line = serde_json::json!({
        "checkpoint": args.checkpoint, "split": args.split.to_string(), "examples": r.examples,
        "answer_loss": r.answer_loss, "answer_loss_other_image": r.answer_loss_other_image,
        "image_gain_nats_per_token": r.gain(),
    });
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}

pub fn sft(args: &SftArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = parse_device(&args.device)?;
    let kind = parse_kind(&args.dtype)?;
    let dataset = monovlm_trainer::data::mono3drefer::Dataset::load(&args.data, Strictness::Lenient)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let tok = tokenizer::load(&args.base).context("the base checkpoint needs a tokenizer.json")?;
    let ids = SpecialIds::of(&tok)?;
    let mut meta =
        MonovlmMeta::read(&args.base)?.unwrap_or_else(|| MonovlmMeta::new(&PreprocessConfig::default()));
    let format = meta.example_format()?;
    if !(args.pointer_weight.is_finite() && args.pointer_weight >= 0.0) {
        bail!("--pointer-weight {} must be a finite number >= 0", args.pointer_weight);
    }
    if args.pointer_weight > 0.0 && format.layout != PromptLayout::TextFirst {
        bail!(
            "--pointer-weight needs a protocol v2 checkpoint (the image after the query); {} is v{}",
            args.base.display(),
            meta.protocol_version
        );
    }
    let mut model = Qwen25Vl::load(&args.base, device, kind)
        .with_context(|| format!("loading {}", args.base.display()))?;
    if args.lora_rank > 0 {
        model.attach_lora(&LoraConfig {
            rank: args.lora_rank,
            alpha: args.lora_alpha,
            ..LoraConfig::default()
        })?;
    }
    let n_train = args
        .train_examples
        .unwrap_or(dataset.records(Split::Train).len())
        .min(dataset.records(Split::Train).len());
    let bar = progress(n_train + args.val_examples, "preparing examples");
    let mut train = build_examples(&dataset, Split::Train, &tok, &format, Some(n_train), || bar.inc(1))?;
    let val = build_examples(&dataset, Split::Val, &tok, &format, Some(args.val_examples), || bar.inc(1))?;
    bar.finish_and_clear();
    if let Some(min_h) = args.min_box_height_px {
        train.retain(|e| e.record.label.bbox.height() >= min_h);
        eprintln!("{} training records have a 2D box at least {min_h} px tall", train.len());
    }
    if train.is_empty() {
        bail!("no training records in {} (after the filters)", args.data.display());
    }
    if args.crop_examples > 0 {
        let bar = progress(args.crop_examples, "zoomed crops");
        let zoom = (args.zoom_min, args.zoom_max);
        let crops = build_crop_examples(
            &dataset,
            Split::Train,
            &tok,
            &format,
            args.crop_examples,
            zoom,
            args.seed,
            || bar.inc(1),
        )?;
        bar.finish_and_clear();
        if args.crops_only {
            train = crops;
        } else {
            train.extend(crops);
        }
        eprintln!("{} training examples with {} zoomed crops", train.len(), args.crop_examples);
    }
    let cfg = SftConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup_steps: args.warmup,
        eval_every: args.eval_every,
        seed: args.seed,
        pointer_weight: args.pointer_weight,
        ..SftConfig::default()
    };
    let bar = progress(args.steps, "sft");
    let mut lines = Vec::new();
    let start = std::time::Instant::now();
    let log = train_sft(&mut model, &tok, &train, &val, &cfg, ids.pad, |l| {
        bar.inc(1);
        bar.set_message(match l.pointer_loss {
            Some(p) => format!("loss {:.4}  pointer {p:.3}  {:.0} tok/s", l.loss, l.tokens_per_s),
            None => format!("loss {:.4}  {:.0} tok/s", l.loss, l.tokens_per_s),
        });
        if let Some(v) = &l.val {
            print_above(&bar, &format!("step {}: val {}", l.step, v.summary()));
        }
        lines.push(serde_json::to_string(l).unwrap_or_default());
    })?;
    bar.finish_and_clear();
    let last_val = log.iter().rev().find_map(|l| l.val.clone());
    meta.stages.push(StageRecord {
        name: "sft".into(),
        steps: args.steps,
        details: serde_json::json!({
            "data": args.data, "train_examples": train.len(), "min_box_height_px": args.min_box_height_px, "batch_size": args.batch_size, "lr": args.lr,
            "lora_rank": args.lora_rank, "val": last_val, "seconds": start.elapsed().as_secs_f64(),
        }),
    });
    let opts = SaveOptions {
        dtype: kind,
        tokenizer_from: Some(&args.base),
        meta: &meta,
        train: None,
        max_shard_bytes: 4 << 30,
    };
    checkpoint::save(&mut model, &args.out, opts)?;
    write_logs(&args.out, &lines, &log)?;
    writeln!(
        std::io::stdout(),
        "trained {} steps in {:.0} s; final loss {:.4}; checkpoint, sft_log.jsonl and sft_loss.png in {}",
        args.steps,
        start.elapsed().as_secs_f64(),
        log.last().map_or(f64::NAN, |l| l.loss),
        args.out.display()
    )?;
    if let Some(v) = last_val {
        writeln!(std::io::stdout(), "validation: {}", serde_json::to_string(&v)?)?;
    }
    Ok(())
}

/// `pretrain-vision`: dense per-token pre-training of a from-scratch vision tower.
pub fn pretrain_vision(args: &PretrainVisionArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let dataset = monovlm_trainer::data::mono3drefer::Dataset::load(&args.data, Strictness::Lenient)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let mut meta =
        MonovlmMeta::read(&args.base)?.unwrap_or_else(|| MonovlmMeta::new(&PreprocessConfig::default()));
    let pre = meta.preprocess_config();
    let kind = tch::Kind::Float;
    let mut model = Qwen25Vl::load(&args.base, tch::Device::Cpu, kind)
        .with_context(|| format!("loading {}", args.base.display()))?;
    let n_train = args.train_images.unwrap_or(usize::MAX).min(dataset.images(Split::Train).len());
    let bar = progress(n_train + args.val_images, "preparing images");
    let train = build_dense_images(&dataset, Split::Train, &pre, Some(n_train), || bar.inc(1))?;
    let val = build_dense_images(&dataset, Split::Val, &pre, Some(args.val_images), || bar.inc(1))?;
    bar.finish_and_clear();
    let tokens: usize = train.iter().map(|d| d.classes.len()).sum();
    let objects: usize = train.iter().map(|d| d.object_tokens()).sum();
    eprintln!(
        "{} training images, {tokens} image tokens, {:.1}% of them on objects",
        train.len(),
        100.0 * objects as f64 / tokens.max(1) as f64
    );
    let cfg = DenseConfig {
        steps: args.steps,
        images_per_step: args.images_per_step,
        lr: args.lr,
        warmup_steps: args.warmup,
        eval_every: args.eval_every,
        seed: args.seed,
        ..DenseConfig::default()
    };
    let bar = progress(args.steps, "dense pre-training");
    let mut lines = Vec::new();
    let start = std::time::Instant::now();
    let log = train_dense(&mut model, &train, &val, &cfg, |l| {
        bar.inc(1);
        bar.set_message(format!("class {:.3}  box {:.4}", l.class_loss, l.regression_loss));
        if let Some(v) = &l.val {
            print_above(
                &bar,
                &format!(
                    "step {}: val object class {:.1}%  background {:.1}%  2D box MAE {:.3}  ln-depth MAE {:.3}",
                    l.step, v.object_class_pct, v.background_pct, v.box2d_mae, v.log_depth_mae
                ),
            );
        }
        lines.push(serde_json::to_string(l).unwrap_or_default());
    })?;
    bar.finish_and_clear();
    let last_val = log.iter().rev().find_map(|l| l.val.clone());
    meta.stages.push(StageRecord {
        name: "pretrain-vision".into(),
        steps: args.steps,
        details: serde_json::json!({
            "data": args.data, "train_images": train.len(), "images_per_step": args.images_per_step,
            "lr": args.lr, "val": last_val, "seconds": start.elapsed().as_secs_f64(),
        }),
    });
    let opts = SaveOptions {
        dtype: kind,
        tokenizer_from: Some(&args.base),
        meta: &meta,
        train: None,
        max_shard_bytes: 4 << 30,
    };
    checkpoint::save(&mut model, &args.out, opts)?;
    std::fs::write(args.out.join("pretrain_vision_log.jsonl"), lines.join("\n") + "\n")?;
    let class: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.class_loss)).collect();
    let boxes: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.regression_loss)).collect();
    curves(
        &args.out.join("pretrain_vision_loss.png"),
        "Dense vision pre-training",
        "step",
        "loss",
        &[
            Curve { label: "token class (cross-entropy)", points: &class },
            Curve { label: "object box (smooth L1)", points: &boxes },
        ],
    )?;
    writeln!(
        std::io::stdout(),
        "pre-trained the vision tower {} steps in {:.0} s; checkpoint, pretrain_vision_log.jsonl and pretrain_vision_loss.png in {}",
        args.steps,
        start.elapsed().as_secs_f64(),
        args.out.display()
    )?;
    if let Some(v) = last_val {
        writeln!(std::io::stdout(), "validation: {}", serde_json::to_string(&v)?)?;
    }
    Ok(())
}

fn write_logs(dir: &Path, lines: &[String], log: &[monovlm_trainer::train::sft::SftLogLine]) -> Result<()> {
    std::fs::write(dir.join("sft_log.jsonl"), lines.join("\n") + "\n")?;
    let loss: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.loss)).collect();
    curves(
        &dir.join("sft_loss.png"),
        "SFT loss (answer tokens)",
        "step",
        "cross-entropy",
        &[Curve { label: "train loss", points: &loss }],
    )?;
    Ok(())
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    tch::set_num_threads(args.threads);
    let model = bench::bench_model(tch::Device::Cpu)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "# model: bench-3m, {} parameters, f32, CPU, {} thread(s)",
        model.params().numel(),
        args.threads
    )?;
    for r in [
        bench::bench_train(&model, args.steps)?,
        bench::bench_generate(&model, 8, false, args.runs)?,
        bench::bench_generate(&model, 1, true, args.runs)?,
    ] {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    }
    if args.grpo {
        for shape in bench::grpo_bench_shapes() {
            let r = bench::bench_grpo(&shape, args.runs)?;
            writeln!(out, "{}", serde_json::json!({"shape": shape.name, "result": r}))?;
        }
    }
    Ok(())
}

/// Arguments of `curriculum`.
#[derive(Debug, Args)]
pub struct CurriculumArgs {
    /// Curriculum file (TOML; recipes in trainer/recipes/).
    #[arg(long)]
    config: PathBuf,
    /// Dataset root (Mono3DRefer layout).
    #[arg(long)]
    data: PathBuf,
    /// Checkpoint the first stage starts from (with tokenizer.json).
    #[arg(long)]
    base: PathBuf,
    /// Output directory (checkpoints, metrics.jsonl, eval.jsonl, plots/, summary.md).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Use only the first N training records.
    #[arg(long)]
    train_examples: Option<usize>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights' dtype while training and in the saved checkpoints: f32, bf16, f16 (bf16 halves the
    /// memory on a GPU; on a CPU f32 is the fastest).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// libtorch threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

/// Arguments of `ablation`.
#[derive(Debug, Args)]
pub struct AblationArgs {
    /// Runs as NAME=DIR=CONFIG (a curriculum output directory and its config), in table order.
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
}

struct Bars {
    bar: Option<indicatif::ProgressBar>,
}

impl monovlm_trainer::curriculum::Observer for Bars {
    fn stage_started(
        &mut self,
        index: usize,
        stage: &monovlm_trainer::curriculum::StageConfig,
        first_step: usize,
    ) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let bar = progress(stage.steps, &format!("{index}:{}", stage.name));
        bar.set_position(first_step as u64);
        self.bar = Some(bar);
    }

    fn step(&mut self, l: &monovlm_trainer::curriculum::MetricsLine) {
        if let Some(b) = &self.bar {
            b.inc(1);
            match l.sft_loss {
                Some(loss) => b.set_message(format!("{} loss {loss:.3}", l.stage_name)),
                None => {
                    b.set_message(format!("{} reward {:.3} kl {:.4}", l.stage_name, l.grpo.reward, l.grpo.kl))
                }
            }
        }
    }

    fn evaluated(&mut self, e: &monovlm_trainer::curriculum::StageEval) {
        let line = format!("after stage {} {}: {}", e.stage, e.stage_name, e.val.summary());
        match &self.bar {
            Some(b) => print_above(b, &line),
            None => eprintln!("{line}"),
        }
    }
}

pub fn curriculum(args: &CurriculumArgs) -> Result<()> {
    use monovlm_trainer::curriculum::{CurriculumConfig, RunInputs, run};
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let cfg = CurriculumConfig::from_file(&args.config)?;
    let device = parse_device(&args.device)?;
    let kind = parse_kind(&args.dtype)?;
    let dataset = monovlm_trainer::data::mono3drefer::Dataset::load(&args.data, Strictness::Lenient)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let tok = tokenizer::load(&args.base).context("the base checkpoint needs a tokenizer.json")?;
    let format = MonovlmMeta::read(&args.base)?
        .unwrap_or_else(|| MonovlmMeta::new(&PreprocessConfig::default()))
        .example_format()?;
    let n_train = args.train_examples.unwrap_or(usize::MAX).min(dataset.records(Split::Train).len());
    let bar = progress(n_train + cfg.val_examples, "preparing examples");
    let train = build_examples(&dataset, Split::Train, &tok, &format, Some(n_train), || bar.inc(1))?;
    let val = build_examples(&dataset, Split::Val, &tok, &format, Some(cfg.val_examples), || bar.inc(1))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out)?;
    let inputs = RunInputs {
        base: &args.base,
        train: &train,
        val: &val,
        tokenizer: &tok,
        out: &args.out,
        device,
        kind,
        resume: args.resume,
    };
    let start = std::time::Instant::now();
    let mut bars = Bars { bar: None };
    let evals = run(&cfg, &inputs, &mut bars)?;
    if let Some(b) = bars.bar.take() {
        b.finish_and_clear();
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "curriculum done in {:.0} s; {} stages; outputs in {}",
        start.elapsed().as_secs_f64(),
        evals.len(),
        args.out.display()
    )?;
    write!(out, "{}", std::fs::read_to_string(args.out.join("summary.md"))?)?;
    Ok(())
}

pub fn ablation(args: &AblationArgs) -> Result<()> {
    use monovlm_trainer::curriculum::{CurriculumConfig, ablation_table};
    let mut runs = Vec::new();
    for r in &args.runs {
        let parts: Vec<&str> = r.splitn(3, '=').collect();
        let [name, dir, config] = parts[..] else { bail!("--run {r:?}: expected NAME=DIR=CONFIG") };
        let samples = CurriculumConfig::from_file(Path::new(config))?.samples();
        runs.push((name.to_owned(), PathBuf::from(dir), samples));
    }
    write!(std::io::stdout(), "{}", ablation_table(&runs)?)?;
    Ok(())
}
