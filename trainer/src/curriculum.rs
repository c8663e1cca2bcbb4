//! The training curriculum: a TOML file lists stages (SFT, or GRPO with one of MonoVLM's three
//! rewards), each with its steps, learning rate and sampling settings. The runner trains them in
//! order, evaluates on the val split after each, writes metrics (JSON lines), plots and atomic
//! checkpoints, and resumes exactly after a crash (weights, optimiser state, data order and
//! sampling seeds are all restored or recomputed from the step counter).
//!
//! Output directory:
//! - `checkpoint/`: the latest state (model + `train/` with optimiser and progress), rewritten
//!   atomically every `checkpoint_every` steps and at stage ends;
//! - `stage-{i}-{name}/`: the model after each stage (the next stage's start and KL reference);
//! - `curriculum.toml`: the curriculum the run started with (a resume must pass the same one);
//! - `metrics.jsonl`, `eval.jsonl`; `plots/stage-{i}-{name}.png`; `summary.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use monovlm_calib::synth::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};
use tokenizers::Tokenizer;

use crate::checkpoint::{self, MonovlmMeta, SaveOptions, StageRecord, TrainState};
use crate::grpo::reward::{RewardConfig, RewardKind};
use crate::grpo::{GrpoConfig, Reference, StepMetrics, grounding_scorer, grpo_step};
use crate::model::{LoraConfig, Qwen25Vl};
use crate::train::grounding::Example;
use crate::train::optim::{AdamW, AdamWConfig, CosineSchedule};
use crate::train::sft::{ValMetrics, sft_step, validate};
use crate::{Error, Result};

/// What a stage trains with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Supervised fine-tuning on the ground-truth answers.
    Sft,
    /// GRPO with the stage's reward.
    Grpo,
}

/// One stage of a curriculum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Name (used in directory names and plots).
    pub name: String,
    /// SFT or GRPO.
    pub kind: StageKind,
    /// Optimisation steps (GRPO: rollout batches).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps (then cosine decay to 0 for SFT, constant for GRPO as in EasyR1).
    #[serde(default)]
    pub warmup_steps: usize,
    /// The reward of a GRPO stage.
    #[serde(default)]
    pub reward: Option<RewardKind>,
    /// Weight of the format reward.
    #[serde(default = "default_w_fmt")]
    pub w_fmt: f64,
    /// GRPO settings (defaults: EasyR1's).
    #[serde(default)]
    pub grpo: GrpoConfig,
    /// Sequences per SFT step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// AdamW weight decay.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
}

fn default_w_fmt() -> f64 {
    0.1
}
fn default_batch() -> usize {
    8
}
fn default_wd() -> f64 {
    0.01
}

/// A whole curriculum file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumConfig {
    /// Seed of data order and sampling.
    #[serde(default)]
    pub seed: u64,
    /// Write `checkpoint/` every this many steps (and at stage ends).
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: usize,
    /// Validation records evaluated after each stage.
    #[serde(default = "default_val")]
    pub val_examples: usize,
    /// Generated tokens at most in validation.
    #[serde(default = "default_max_new")]
    pub val_max_new_tokens: usize,
    /// LoRA rank (0: every weight trains; the GRPO reference is then a frozen copy).
    #[serde(default)]
    pub lora_rank: i64,
    /// LoRA alpha.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// The stages, in order.
    #[serde(rename = "stage")]
    pub stages: Vec<StageConfig>,
}

fn default_ckpt_every() -> usize {
    50
}
fn default_val() -> usize {
    64
}
fn default_max_new() -> usize {
    96
}
fn default_alpha() -> f64 {
    32.0
}

impl CurriculumConfig {
    /// Parses and checks a curriculum file.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::InvalidConfig`] with the TOML parser's message or the invalid stage.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self =
            toml::from_str(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every stage can run.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the stage and the problem.
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            return Err(Error::InvalidConfig("a curriculum needs at least one [[stage]]".into()));
        }
        for s in &self.stages {
            let bad = |m: &str| Err(Error::InvalidConfig(format!("stage {:?}: {m}", s.name)));
            if s.steps == 0 || !(s.lr.is_finite() && s.lr > 0.0) {
                return bad("steps and lr must be positive");
            }
            if s.name.is_empty() || s.name.contains(['/', '\\']) {
                return bad("the name must be non-empty and hold no path separator");
            }
            if !(s.w_fmt.is_finite() && s.w_fmt >= 0.0) {
                // A negative bonus would rank a broken answer (0) above a parsed, poor one.
                return bad("w_fmt must be finite and >= 0");
            }
            match s.kind {
                StageKind::Grpo if s.reward.is_none() => return bad("a grpo stage needs a reward"),
                StageKind::Grpo => {
                    let reward_problem = s.reward.as_ref().and_then(RewardKind::problem);
                    if let Some(problem) = s.grpo.problem().or(reward_problem) {
                        return bad(&problem);
                    }
                }
                StageKind::Sft if s.batch_size == 0 => return bad("batch_size must be positive"),
                // SFT stages clip their gradients with grpo.max_grad_norm too.
                StageKind::Sft if !(s.grpo.max_grad_norm.is_finite() && s.grpo.max_grad_norm > 0.0) => {
                    return bad("max_grad_norm must be > 0");
                }
                StageKind::Sft => {}
            }
        }
        Ok(())
    }

    /// Optimisation samples the curriculum consumes (SFT sequences + GRPO sampled answers): the
    /// compute measure recipes are balanced on.
    pub fn samples(&self) -> usize {
        self.stages
            .iter()
            .map(|s| match s.kind {
                StageKind::Sft => s.steps * s.batch_size,
                StageKind::Grpo => s.steps * s.grpo.prompts_per_step * s.grpo.group_size,
            })
            .sum()
    }
}

/// Progress saved in `checkpoint/train/state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// Index of the stage in progress.
    stage: usize,
    /// Steps done in it.
    step: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsLine {
    /// Stage index.
    pub stage: usize,
    /// Stage name.
    pub stage_name: String,
    /// Learning rate used.
    pub lr: f64,
    /// SFT loss (SFT stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sft_loss: Option<f64>,
    /// GRPO metrics (GRPO stages; for SFT stages only `step`, `loss` and `grad_norm` are set).
    #[serde(flatten)]
    pub grpo: StepMetrics,
    /// Seconds for the whole step.
    pub step_s: f64,
}

/// Evaluation after a stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageEval {
    /// Stage index.
    pub stage: usize,
    /// Stage name.
    pub stage_name: String,
    /// Official metrics on the val examples (greedy answers).
    pub val: ValMetrics,
}

/// What the runner needs besides the configuration.
pub struct RunInputs<'a> {
    /// The checkpoint the first stage starts from.
    pub base: &'a Path,
    /// Training examples (prompts for GRPO, answers for SFT).
    pub train: &'a [Example],
    /// Validation examples.
    pub val: &'a [Example],
    /// The base checkpoint's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Output directory.
    pub out: &'a Path,
    /// Device of the weights.
    pub device: Device,
    /// Dtype of the weights while training and in the saved checkpoints (the optimiser state is
    /// saved in f32 whatever it is; log-probabilities are computed in f32).
    pub kind: Kind,
    /// Continue from `out/checkpoint/`.
    pub resume: bool,
}

/// Called as the run goes: stage starts, each step's metrics, evaluations.
pub trait Observer {
    /// A stage begins (or resumes at `first_step`).
    fn stage_started(&mut self, index: usize, stage: &StageConfig, first_step: usize);
    /// A step finished.
    fn step(&mut self, line: &MetricsLine);
    /// A stage was evaluated.
    fn evaluated(&mut self, eval: &StageEval);
}

fn stage_dir(out: &Path, index: usize, stage: &StageConfig) -> PathBuf {
    out.join(format!("stage-{index}-{}", stage.name))
}

/// The `take` training-example indices of step `step` (0-based) of stage `stage`: epochs over a
/// seeded permutation, so any step's data can be recomputed after a restart.
fn step_indices(n: usize, seed: u64, stage: usize, step: usize, take: usize) -> Vec<usize> {
    let mut perms: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    (0..take)
        .map(|i| {
            let pos = step * take + i;
            let epoch = pos / n;
            let perm = perms.entry(epoch).or_insert_with(|| {
                let mut rng =
                    SplitMix64::new(seed ^ ((stage as u64) << 40) ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
                let mut p: Vec<usize> = (0..n).collect();
                crate::train::sft::shuffle(&mut p, &mut rng);
                p
            });
            perm[pos % n]
        })
        .collect()
}

/// Runs (or resumes) a curriculum. Returns the evaluations after each stage.
///
/// # Errors
/// [`Error::NonFinite`] stops the run with the last good checkpoint intact; I/O, model and data
/// errors as their modules report them.
pub fn run(
    cfg: &CurriculumConfig,
    inputs: &RunInputs<'_>,
    observer: &mut dyn Observer,
) -> Result<Vec<StageEval>> {
    cfg.validate()?;
    if inputs.train.is_empty() {
        return Err(Error::InvalidConfig("no training examples".into()));
    }
    let out = inputs.out;
    std::fs::create_dir_all(out.join("plots")).map_err(|e| Error::io(out, e))?;
    let latest = out.join("checkpoint");
    let (mut stage_idx, mut first_step, mut resumed_opt) = (0usize, 0usize, None);
    if inputs.resume {
        check_same_curriculum(cfg, out)?;
        if let Some((opt_state, state)) = checkpoint::read_train_state(&latest)? {
            let p: Progress = serde_json::from_value(state.progress)
                .map_err(|e| Error::Json { path: latest.join("train/state.json"), message: e.to_string() })?;
            (stage_idx, first_step, resumed_opt) = (p.stage, p.step, Some(opt_state));
        }
    } else if latest.exists() {
        return Err(Error::InvalidConfig(format!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            out.display()
        )));
    }
    write_curriculum(cfg, out)?;
    let mut evals = read_evals(out)?;
    evals.retain(|e| e.stage < stage_idx);
    let mut meta = MonovlmMeta::read(inputs.base)?.unwrap_or_else(|| MonovlmMeta::new(&Default::default()));
    let special = crate::model::presets::SpecialIds::of(inputs.tokenizer)?;
    let (pad, stop) = (special.pad, special.im_end);

    while stage_idx < cfg.stages.len() {
        let stage = &cfg.stages[stage_idx];
        let start_dir = if stage_idx == 0 {
            inputs.base.to_path_buf()
        } else {
            stage_dir(out, stage_idx - 1, &cfg.stages[stage_idx - 1])
        };
        // The model: the latest checkpoint when resuming inside this stage, else the stage start.
        // A LoRA stage always loads its start (the latest checkpoint holds merged weights) and
        // takes its adapters from the saved training state.
        let resuming_here = first_step > 0 && resumed_opt.is_some();
        let load_from = if resuming_here && cfg.lora_rank == 0 { &latest } else { &start_dir };
        let mut model = Qwen25Vl::load(load_from, inputs.device, inputs.kind)?;
        // Sampling ends at `<|im_end|>` and at the checkpoint's own end tokens (hub Qwen2.5-VL
        // also ends on `<|endoftext|>`): text after them is neither trained on nor penalised.
        let mut stops = vec![stop];
        stops.extend(model.config().eos_token_ids.iter().copied().filter(|id| *id != stop));
        if let Some(m) = MonovlmMeta::read(&start_dir)? {
            meta = m;
        }
        let reference = match stage.kind {
            StageKind::Grpo if cfg.lora_rank > 0 => Some(Reference::AdaptersOff),
            StageKind::Grpo => {
                Some(Reference::Frozen(Box::new(Qwen25Vl::load(&start_dir, inputs.device, inputs.kind)?)))
            }
            StageKind::Sft => None,
        };
        if cfg.lora_rank > 0 {
            // Fresh adapters are drawn from (seed, stage), so a stage starts the same every time.
            tch::manual_seed((cfg.seed as i64) ^ ((stage_idx as i64) << 32) ^ LORA_INIT_SALT);
            model.attach_lora(&LoraConfig {
                rank: cfg.lora_rank,
                alpha: cfg.lora_alpha,
                ..LoraConfig::default()
            })?;
        }
        let adamw = AdamWConfig { weight_decay: stage.weight_decay, ..AdamWConfig::default() };
        let mut opt = AdamW::new(model.params(), adamw);
        if let (true, Some(state)) = (resuming_here, resumed_opt.take()) {
            if cfg.lora_rank > 0 {
                model.load_adapters(&state, ADAPTER_PREFIX)?;
            }
            opt.load_state(&state)?;
        }
        observer.stage_started(stage_idx, stage, first_step);
        let schedule =
            CosineSchedule { peak_lr: stage.lr, warmup_steps: stage.warmup_steps, total_steps: stage.steps };
        let reward_cfg =
            RewardConfig { kind: stage.reward.clone().unwrap_or(RewardKind::Iou2d), w_fmt: stage.w_fmt };
        for step in first_step..stage.steps {
            let t0 = Instant::now();
            // Everything random in a step is derived from (seed, stage, step): exact resumes.
            tch::manual_seed((cfg.seed as i64) ^ ((stage_idx as i64) << 32) ^ (step as i64));
            let line = match stage.kind {
                StageKind::Sft => {
                    let idx = step_indices(inputs.train.len(), cfg.seed, stage_idx, step, stage.batch_size);
                    let seqs: Vec<_> = idx.iter().map(|&i| inputs.train[i].sequence()).collect();
                    let lr = schedule.lr(step);
                    let (loss, grad_norm, _) =
                        sft_step(&model, &mut opt, &seqs, pad, lr, stage.grpo.max_grad_norm)?;
                    MetricsLine {
                        stage: stage_idx,
                        stage_name: stage.name.clone(),
                        lr,
                        sft_loss: Some(loss),
                        grpo: StepMetrics { step: step + 1, grad_norm, loss, ..StepMetrics::default() },
                        step_s: t0.elapsed().as_secs_f64(),
                    }
                }
                StageKind::Grpo => {
                    let idx = step_indices(
                        inputs.train.len(),
                        cfg.seed,
                        stage_idx,
                        step,
                        stage.grpo.prompts_per_step,
                    );
                    let prompts: Vec<&Example> = idx.iter().map(|&i| &inputs.train[i]).collect();
                    // EasyR1: constant learning rate after warm-up.
                    let lr = if step < stage.warmup_steps {
                        stage.lr * step as f64 / stage.warmup_steps as f64
                    } else {
                        stage.lr
                    };
                    let reference =
                        reference.as_ref().ok_or_else(|| Error::InvalidConfig("no reference".into()))?;
                    let mut score = grounding_scorer(inputs.tokenizer, &reward_cfg);
                    let m = grpo_step(
                        &model,
                        reference,
                        &mut opt,
                        lr,
                        &prompts,
                        &stops,
                        &mut score,
                        &stage.grpo,
                        step + 1,
                    )?;
                    MetricsLine {
                        stage: stage_idx,
                        stage_name: stage.name.clone(),
                        lr,
                        sft_loss: None,
                        grpo: m,
                        step_s: t0.elapsed().as_secs_f64(),
                    }
                }
            };
            append_line(&out.join("metrics.jsonl"), &serde_json::to_string(&line).unwrap_or_default())?;
            observer.step(&line);
            let done = step + 1;
            if done < stage.steps && cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 {
                save_latest(
                    &mut model,
                    &opt,
                    inputs,
                    &meta,
                    Progress { stage: stage_idx, step: done },
                    &latest,
                )?;
            }
        }
        // Stage end: the stage's model, its evaluation, then the progress marker.
        meta.stages.push(StageRecord {
            name: stage.name.clone(),
            steps: stage.steps,
            details: serde_json::json!({ "kind": stage.kind, "lr": stage.lr, "reward": stage.reward, "grpo": stage.grpo }),
        });
        let opts = SaveOptions {
            dtype: inputs.kind,
            tokenizer_from: Some(inputs.base),
            meta: &meta,
            train: None,
            max_shard_bytes: 4 << 30,
        };
        checkpoint::save(&mut model, &stage_dir(out, stage_idx, stage), opts)?;
        let val = validate(&model, inputs.tokenizer, inputs.val, cfg.val_max_new_tokens, pad)?;
        let eval = StageEval { stage: stage_idx, stage_name: stage.name.clone(), val };
        append_line(&out.join("eval.jsonl"), &serde_json::to_string(&eval).unwrap_or_default())?;
        observer.evaluated(&eval);
        evals.push(eval);
        plot_stage(out, stage_idx, stage)?;
        save_latest(
            &mut model,
            &AdamW::new(&Default::default(), AdamWConfig::default()),
            inputs,
            &meta,
            Progress { stage: stage_idx + 1, step: 0 },
            &latest,
        )?;
        stage_idx += 1;
        first_step = 0;
    }
    write_summary(out, cfg, &evals)?;
    Ok(evals)
}

fn save_latest(
    model: &mut Qwen25Vl,
    opt: &AdamW,
    inputs: &RunInputs<'_>,
    meta: &MonovlmMeta,
    progress: Progress,
    latest: &Path,
) -> Result<()> {
    let state = TrainState { progress: serde_json::to_value(&progress).unwrap_or_default() };
    // The adapters travel with the optimiser state: the saved weights have them merged in.
    let mut tensors = opt.state_tensors();
    tensors.extend(model.adapter_tensors().into_iter().map(|(n, t)| (format!("{ADAPTER_PREFIX}{n}"), t)));
    let opts = SaveOptions {
        dtype: inputs.kind,
        tokenizer_from: Some(inputs.base),
        meta,
        train: Some((tensors, state)),
        max_shard_bytes: 4 << 30,
    };
    checkpoint::save(model, latest, opts)
}

/// Name prefix of the LoRA adapter tensors in a checkpoint's `train/optimizer.safetensors`.
const ADAPTER_PREFIX: &str = "adapter:";

/// Mixed into the seed that draws a stage's fresh LoRA adapters.
const LORA_INIT_SALT: i64 = 0x4C6F_5241;

/// The curriculum a run in `out` was started with (written by [`run`]).
const CURRICULUM_FILE: &str = "curriculum.toml";

/// Writes the curriculum being run to `out/curriculum.toml` (every setting, defaults filled in).
fn write_curriculum(cfg: &CurriculumConfig, out: &Path) -> Result<()> {
    let path = out.join(CURRICULUM_FILE);
    let text = toml::to_string(cfg).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// A resume must run the curriculum the run started with: its steps, seeds and schedules are what
/// the checkpoint's progress counts in.
fn check_same_curriculum(cfg: &CurriculumConfig, out: &Path) -> Result<()> {
    let path = out.join(CURRICULUM_FILE);
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let started: CurriculumConfig =
        toml::from_str(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
    if &started != cfg {
        return Err(Error::InvalidConfig(format!(
            "--config differs from the curriculum this run started with ({}); resume with that file \
             or start a new --out",
            path.display()
        )));
    }
    Ok(())
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

fn read_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn read_evals(out: &Path) -> Result<Vec<StageEval>> {
    Ok(read_lines(&out.join("eval.jsonl"))?
        .into_iter()
        .filter_map(|v| {
            Some(StageEval {
                stage: v.get("stage")?.as_u64()? as usize,
                stage_name: v.get("stage_name")?.as_str()?.to_owned(),
                val: serde_json::from_value(v.get("val")?.clone()).ok()?,
            })
        })
        .collect())
}

/// Reward, KL (x10) and IoU curves of a GRPO stage, or the loss of an SFT stage, from
/// `metrics.jsonl` (only the latest run of each step counts after a resume).
fn plot_stage(out: &Path, index: usize, stage: &StageConfig) -> Result<()> {
    let mut by_step: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for v in read_lines(&out.join("metrics.jsonl"))? {
        if v.get("stage").and_then(serde_json::Value::as_u64) == Some(index as u64)
            && let Some(step) = v.get("step").and_then(serde_json::Value::as_u64)
        {
            by_step.insert(step, v);
        }
    }
    let series = |key: &str, scale: f64| -> Vec<(f64, f64)> {
        by_step
            .iter()
            .filter_map(|(s, v)| {
                let mut x = v;
                for k in key.split('.') {
                    x = x.get(k)?;
                }
                Some((*s as f64, x.as_f64()? * scale))
            })
            .collect()
    };
    use crate::eval::plots::{Curve, curves};
    let path = out.join("plots").join(format!("stage-{index}-{}.png", stage.name));
    match stage.kind {
        StageKind::Sft => {
            let loss = series("sft_loss", 1.0);
            curves(
                &path,
                &format!("{}: SFT loss", stage.name),
                "step",
                "cross-entropy",
                &[Curve { label: "loss", points: &loss }],
            )
        }
        StageKind::Grpo => {
            let (reward, kl, iou2, iou3, fmt) = (
                series("reward", 1.0),
                series("kl", 10.0),
                series("parts.iou_2d", 1.0),
                series("parts.iou_3d", 1.0),
                series("format_rate", 1.0),
            );
            curves(
                &path,
                &format!("{}: GRPO rollouts", stage.name),
                "step",
                "mean over samples",
                &[
                    Curve { label: "reward", points: &reward },
                    Curve { label: "2D IoU", points: &iou2 },
                    Curve { label: "3D IoU", points: &iou3 },
                    Curve { label: "format rate", points: &fmt },
                    Curve { label: "KL x10", points: &kl },
                ],
            )
        }
    }
}

/// A table cell: the nats per answer token the image is worth ([`ImageReliance::gain`]), or `-`.
///
/// [`ImageReliance::gain`]: crate::train::grounding::ImageReliance::gain
fn image_gain_cell(v: &ValMetrics) -> String {
    v.image.map_or_else(|| "-".to_owned(), |r| format!("{:.3}", r.gain()))
}

/// `summary.md`: the evaluation after every stage, and the compute used.
fn write_summary(out: &Path, cfg: &CurriculumConfig, evals: &[StageEval]) -> Result<()> {
    let mut md = String::from(
        "| stage | format % | 2D Acc@0.5 % | 3D Acc@0.25 % | 3D Acc@0.5 % | mIoU | image gain |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for e in evals {
        let v = &e.val;
        md.push_str(&format!(
            "| {} {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {} |\n",
            e.stage,
            e.stage_name,
            v.format_pct,
            v.acc2d_050_pct,
            v.acc3d_025_pct,
            v.acc3d_050_pct,
            v.miou_3d,
            image_gain_cell(v)
        ));
    }
    md.push_str(&format!("\nTraining samples consumed (SFT sequences + GRPO answers): {}\n", cfg.samples()));
    let path = out.join("summary.md");
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))
}

/// The ablation table of several runs (`summary` of each run's final evaluation) as Markdown.
///
/// # Errors
/// [`Error::Io`] for unreadable `eval.jsonl` files.
pub fn ablation_table(runs: &[(String, PathBuf, usize)]) -> Result<String> {
    let mut md = String::from(
        "| recipe | samples | 3D Acc@0.25 % | 3D Acc@0.5 % | mIoU | 2D Acc@0.5 % | format % | image gain |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, dir, samples) in runs {
        match read_evals(dir)?.last() {
            Some(e) => {
                let v = &e.val;
                md.push_str(&format!(
                    "| {name} | {samples} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} | {} |\n",
                    v.acc3d_025_pct,
                    v.acc3d_050_pct,
                    v.miou_3d,
                    v.acc2d_050_pct,
                    v.format_pct,
                    image_gain_cell(v)
                ));
            }
            None => md.push_str(&format!("| {name} | {samples} | - | - | - | - | - | - |\n")),
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn data_order_is_a_reproducible_sequence_of_epochs() {
        let a: Vec<usize> = (0..6).flat_map(|s| step_indices(10, 3, 1, s, 4)).collect();
        let b: Vec<usize> = (0..6).flat_map(|s| step_indices(10, 3, 1, s, 4)).collect();
        assert_eq!(a, b);
        // Each epoch of 10 visits every example once.
        let mut first: Vec<usize> = a[..10].to_vec();
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_ne!(step_indices(10, 3, 1, 0, 4), step_indices(10, 4, 1, 0, 4));
    }

    #[test]
    fn recipes_parse_and_balance_compute() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        for family in [["three-stage", "stage3-only", "sft"], ["nano", "nano-stage3-only", "nano-sft"]] {
            let mut samples = Vec::new();
            for name in family {
                let cfg = CurriculumConfig::from_file(&dir.join(format!("{name}.toml"))).unwrap();
                samples.push((name, cfg.samples()));
            }
            assert!(samples.windows(2).all(|w| w[0].1 == w[1].1), "equal compute: {samples:?}");
        }
    }

    #[test]
    fn invalid_curricula_are_rejected_with_the_stage_named() {
        let bad = "[[stage]]\nname = \"s1\"\nkind = \"grpo\"\nsteps = 10\nlr = 1e-4\n";
        let cfg: CurriculumConfig = toml::from_str(bad).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("s1") && e.contains("reward"), "{e}");
        assert!(
            toml::from_str::<CurriculumConfig>(
                "[[stage]]\nname = \"x\"\nkind = \"dpo\"\nsteps = 1\nlr = 1.0\n"
            )
            .is_err()
        );
        // GRPO settings: a typo inside `grpo` is refused, and so are settings that cannot learn.
        let grpo = |settings: &str| {
            format!(
                "[[stage]]\nname = \"g\"\nkind = \"grpo\"\nsteps = 10\nlr = 1e-4\n\
                 reward = {{ kind = \"iou2d\" }}\ngrpo = {{ {settings} }}\n"
            )
        };
        let e = toml::from_str::<CurriculumConfig>(&grpo("group_szie = 16")).unwrap_err().to_string();
        assert!(e.contains("group_szie"), "{e}");
        let ok: CurriculumConfig = toml::from_str(&grpo("group_size = 4")).unwrap();
        ok.validate().unwrap();
        for (settings, need) in [
            ("temperature = 0.0", "temperature"),
            ("top_p = 1.5", "top_p"),
            ("clip_low = 1.0", "clip_low"),
            ("dual_clip = 0.5", "dual_clip"),
            ("kl_coef = -1.0", "kl_coef"),
            ("group_size = 1", "group_size"),
        ] {
            let cfg: CurriculumConfig = toml::from_str(&grpo(settings)).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("\"g\"") && e.contains(need), "{settings}: {e}");
        }
        // Reward parameters that would make the reward constant, inverted or NaN.
        for (reward, need) in [
            ("{ kind = \"centre\", beta = 0.0 }", "beta"),
            ("{ kind = \"centre\", beta = -0.3 }", "beta"),
            ("{ kind = \"compound\", beta_loc = 0.5, beta_size = 2.0, weights = [1, 1, -1, 1] }", "weights"),
            ("{ kind = \"compound\", beta_loc = 0.5, beta_size = 2.0, weights = [0, 0, 0, 0] }", "all zero"),
        ] {
            let text = grpo("group_size = 4").replace("{ kind = \"iou2d\" }", reward);
            let cfg: CurriculumConfig = toml::from_str(&text).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(need), "{reward}: {e}");
        }
        // A negative format bonus would rank a broken answer above a parsed one.
        let text = grpo("group_size = 4").replace("reward =", "w_fmt = -0.3\nreward =");
        let e = toml::from_str::<CurriculumConfig>(&text).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("w_fmt"), "{e}");
        // An SFT stage clips with grpo.max_grad_norm: a zero one would zero every update.
        let sft =
            "[[stage]]\nname = \"s\"\nkind = \"sft\"\nsteps = 1\nlr = 1e-4\ngrpo = { max_grad_norm = 0.0 }\n";
        let e = toml::from_str::<CurriculumConfig>(sft).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("max_grad_norm"), "{e}");
    }
}
