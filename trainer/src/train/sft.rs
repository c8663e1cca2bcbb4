//! Supervised fine-tuning on grounding answers: loss on the answer tokens only, AdamW with warm-up
//! and cosine decay, gradient clipping, periodic validation with the official metrics.

use std::time::Instant;

use monovlm_calib::synth::SplitMix64;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::grounding::{Example, ImageReliance, evaluate_examples, image_reliance};
use super::optim::{AdamW, AdamWConfig, CosineSchedule, clip_grad_norm};
use super::pointer::{PointerHead, losses_with_pointer};
use super::{Batch, causal_lm_loss};
use crate::model::Qwen25Vl;
use crate::{Error, Result};

/// SFT settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SftConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// Validate every this many steps (and after the last); 0 = only after the last.
    pub eval_every: usize,
    /// Generated tokens at most per validation answer.
    pub max_new_tokens: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// Weight of the referring-pointer loss ([`super::pointer`]) added to the answer loss; 0 = off.
    pub pointer_weight: f64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 8,
            lr: 1e-3,
            warmup_steps: 50,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            eval_every: 200,
            max_new_tokens: 96,
            seed: 0,
            pointer_weight: 0.0,
        }
    }
}

/// Sequences per forward pass when measuring [`ImageReliance`] in validation.
const RELIANCE_BATCH: usize = 8;

/// Validation metrics (Overall breakdown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    /// Samples scored.
    pub samples: usize,
    /// Percentage of answers the protocol parser accepted.
    pub format_pct: f64,
    /// 2D Acc@0.5, percent.
    pub acc2d_050_pct: f64,
    /// 3D Acc@0.25 (exact IoU), percent.
    pub acc3d_025_pct: f64,
    /// 3D Acc@0.5 (exact IoU), percent.
    pub acc3d_050_pct: f64,
    /// Mean exact 3D IoU.
    pub miou_3d: f64,
    /// Answer loss with the right image and with another scene's (absent in logs written before
    /// it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReliance>,
}

/// One line of the SFT log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SftLogLine {
    /// Step, from 1.
    pub step: usize,
    /// Mean answer-token cross-entropy of the step's batch.
    pub loss: f64,
    /// The referring-pointer loss of the step's batch, when trained with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer_loss: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Supervised + prompt tokens per second of this step (forward + backward + update).
    pub tokens_per_s: f64,
    /// Validation, on the steps that ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<ValMetrics>,
}

impl ValMetrics {
    /// One line for logs: the metrics, and the image's worth in nats per answer token when measured.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "format {:.1}%  2D Acc@0.5 {:.1}%  3D Acc@0.25 {:.1}%  Acc@0.5 {:.1}%  mIoU {:.3}",
            self.format_pct, self.acc2d_050_pct, self.acc3d_025_pct, self.acc3d_050_pct, self.miou_3d
        );
        if let Some(r) = &self.image {
            line.push_str(&format!(
                "  answer loss {:.4} (another scene's image: {:.4})",
                r.answer_loss, r.answer_loss_other_image
            ));
        }
        line
    }
}

/// Greedy answers on `val`, scored, and the model's [`ImageReliance`] on the same examples (`None`
/// when they hold no two scenes of one image size).
///
/// # Errors
/// As [`evaluate_examples`] and [`image_reliance`].
pub fn validate(
    model: &Qwen25Vl,
    tokenizer: &Tokenizer,
    val: &[Example],
    max_new_tokens: usize,
    pad_id: i64,
) -> Result<ValMetrics> {
    let (samples, overall) = evaluate_examples(model, tokenizer, val, max_new_tokens, || {})?;
    let image = match image_reliance(model, val, pad_id, RELIANCE_BATCH) {
        Ok(r) => Some(r),
        Err(Error::ModelInput(_)) => None,
        Err(e) => return Err(e),
    };
    let n = samples.len().max(1) as f64;
    let pct = |s: Option<crate::eval::metrics::AccuracyStats>,
               f: fn(&crate::eval::metrics::AccuracyStats) -> f64| s.as_ref().map_or(0.0, f);
    Ok(ValMetrics {
        samples: samples.len(),
        format_pct: 100.0 * overall.predicted as f64 / n,
        acc2d_050_pct: pct(overall.iou_2d, |s| s.acc_at_050_pct),
        acc3d_025_pct: pct(overall.iou_3d, |s| s.acc_at_025_pct),
        acc3d_050_pct: pct(overall.iou_3d, |s| s.acc_at_050_pct),
        miou_3d: pct(overall.iou_3d, |s| s.miou),
        image,
    })
}

/// Fine-tunes `model` on `train`, validating on `val` (may be empty). `on_step` sees every log
/// line as it is made (progress bars, JSON-lines files).
///
/// # Errors
/// [`Error::ModelInput`] for an empty training set; [`Error::NonFinite`] when the loss or the
/// gradient norm stops being finite (the model is left at the last finite step's weights, minus
/// nothing: the update of the offending step is not applied).
pub fn train_sft(
    model: &mut Qwen25Vl,
    tokenizer: &Tokenizer,
    train: &[Example],
    val: &[Example],
    cfg: &SftConfig,
    pad_id: i64,
    mut on_step: impl FnMut(&SftLogLine),
) -> Result<Vec<SftLogLine>> {
    if train.is_empty() || cfg.batch_size == 0 {
        return Err(Error::ModelInput("SFT needs training examples and a positive batch size".into()));
    }
    let schedule = CosineSchedule { peak_lr: cfg.lr, warmup_steps: cfg.warmup_steps, total_steps: cfg.steps };
    let mut opt = AdamW::new(model.params(), cfg.adamw.clone());
    let mut pointer = if cfg.pointer_weight > 0.0 {
        let head = PointerHead::new(model)?;
        let opt = AdamW::new(&head.store, cfg.adamw.clone());
        Some((head, opt))
    } else {
        None
    };
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let mut log = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        let picked: Vec<&Example> =
            sampler.next_batch(cfg.batch_size).into_iter().map(|i| &train[i]).collect();
        let seqs: Vec<_> = picked.iter().map(|e| e.sequence()).collect();
        let lr = schedule.lr(step);
        let at_step = |e: Error| match e {
            Error::NonFinite(m) => Error::NonFinite(format!("{m} at step {}", step + 1)),
            other => other,
        };
        let (loss_v, pointer_loss, grad_norm, tokens) = match pointer.as_mut() {
            None => {
                let (l, g, tokens) =
                    sft_step(model, &mut opt, &seqs, pad_id, lr, cfg.max_grad_norm).map_err(at_step)?;
                (l, None, g, tokens)
            }
            Some((head, head_opt)) => {
                let referred: Vec<Vec<usize>> = picked.iter().map(|e| e.referred_tokens()).collect();
                let step_cfg =
                    PointerStep { head, opt: head_opt, referred: &referred, weight: cfg.pointer_weight };
                let (l, p, g, tokens) =
                    sft_pointer_step(model, &mut opt, &seqs, pad_id, lr, cfg.max_grad_norm, step_cfg)
                        .map_err(at_step)?;
                (l, Some(p), g, tokens)
            }
        };
        let last = step + 1 == cfg.steps;
        let val_now = !val.is_empty() && (last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0));
        let tokens_per_s = tokens / t0.elapsed().as_secs_f64().max(1e-9);
        let val =
            if val_now { Some(validate(model, tokenizer, val, cfg.max_new_tokens, pad_id)?) } else { None };
        let line =
            SftLogLine { step: step + 1, loss: loss_v, pointer_loss, lr, grad_norm, tokens_per_s, val };
        on_step(&line);
        log.push(line);
    }
    model.params().zero_grad();
    Ok(log)
}

/// One SFT optimisation step on `seqs`: returns the loss, the gradient norm before clipping and the
/// tokens in the padded batch.
///
/// # Errors
/// [`Error::NonFinite`] for a NaN/inf loss (no update is applied); as the forward pass.
pub fn sft_step(
    model: &Qwen25Vl,
    opt: &mut AdamW,
    seqs: &[super::Sequence],
    pad_id: i64,
    lr: f64,
    max_grad_norm: f64,
) -> Result<(f64, f64, f64)> {
    let batch = Batch::new(model, seqs, pad_id)?;
    model.params().zero_grad();
    let loss = causal_lm_loss(model, &batch)?;
    let loss_v = loss.double_value(&[]);
    if !loss_v.is_finite() {
        return Err(Error::NonFinite(format!("SFT loss {loss_v}")));
    }
    loss.backward();
    let grad_norm = clip_grad_norm(model.params(), max_grad_norm)?;
    opt.step(model.params(), lr)?;
    Ok((loss_v, grad_norm, batch.input_ids.numel() as f64))
}

/// The referring pointer's part of an SFT step.
pub struct PointerStep<'a> {
    /// The pointer head.
    pub head: &'a PointerHead,
    /// Its optimiser.
    pub opt: &'a mut AdamW,
    /// Each row's object tokens (indices among its image tokens).
    pub referred: &'a [Vec<usize>],
    /// Weight of the pointer loss.
    pub weight: f64,
}

/// [`sft_step`] with the referring-pointer loss added (weighted) to the answer loss: returns the
/// answer loss, the pointer loss, the model's gradient norm before clipping and the tokens.
///
/// # Errors
/// [`Error::NonFinite`] for a NaN/inf loss (no update is applied); as
/// [`super::pointer::losses_with_pointer`].
pub fn sft_pointer_step(
    model: &Qwen25Vl,
    opt: &mut AdamW,
    seqs: &[super::Sequence],
    pad_id: i64,
    lr: f64,
    max_grad_norm: f64,
    pointer: PointerStep<'_>,
) -> Result<(f64, f64, f64, f64)> {
    let batch = Batch::new(model, seqs, pad_id)?;
    model.params().zero_grad();
    pointer.head.store.zero_grad();
    let (answer, pointer_loss) = losses_with_pointer(model, &batch, pointer.head, pointer.referred)?;
    let (answer_v, pointer_v) = (answer.double_value(&[]), pointer_loss.double_value(&[]));
    if !answer_v.is_finite() || !pointer_v.is_finite() {
        return Err(Error::NonFinite(format!("SFT loss {answer_v}, pointer loss {pointer_v}")));
    }
    (answer + pointer_loss * pointer.weight).backward();
    let grad_norm = clip_grad_norm(model.params(), max_grad_norm)?;
    clip_grad_norm(&pointer.head.store, max_grad_norm)?;
    opt.step(model.params(), lr)?;
    pointer.opt.step(&pointer.head.store, lr)?;
    Ok((answer_v, pointer_v, grad_norm, batch.input_ids.numel() as f64))
}

/// Indices of a training set in shuffled epochs: each epoch is a fresh permutation, drawn from
/// one deterministic generator, taken from its end.
pub(crate) struct EpochSampler {
    len: usize,
    order: Vec<usize>,
    rng: SplitMix64,
}

impl EpochSampler {
    /// A sampler over `0..len` seeded by `seed`.
    pub(crate) fn new(len: usize, seed: u64) -> Self {
        Self { len, order: Vec::new(), rng: SplitMix64::new(seed) }
    }

    /// The next `size` indices (fewer only for an empty set), starting a new epoch when needed.
    pub(crate) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        for _ in 0..size {
            if self.order.is_empty() {
                self.order = (0..self.len).collect();
                shuffle(&mut self.order, &mut self.rng);
            }
            match self.order.pop() {
                Some(i) => out.push(i),
                None => break,
            }
        }
        out
    }
}

/// Fisher-Yates with our deterministic generator.
pub fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = ((rng.unit() * (i + 1) as f64) as usize).min(i);
        items.swap(i, j);
    }
}
