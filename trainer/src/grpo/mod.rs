//! Group Relative Policy Optimisation (GRPO) with EasyR1's defaults, on which MonoVLM was built:
//! G sampled answers per prompt, group-normalised advantages, a clipped surrogate with asymmetric
//! clipping and dual clip, token-mean aggregation, and a k3 KL penalty to a fixed reference policy.
//!
//! No forward pass is wasted: the prompt is prefilled once for its G samples, the old log-probs are
//! those recorded while sampling (in f32; in bf16/f16 they are recomputed with the training
//! forward, which the sampler does not match closely enough there), the image is encoded once per group in the update, the reference
//! is evaluated once per rollout, and groups whose rewards are all equal (zero advantage) are
//! counted and skipped.

pub mod reward;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

use crate::model::Qwen25Vl;
use crate::model::generate::{Completion, Sampling};
use crate::train::grounding::{Example, decode};
use crate::train::optim::{AdamW, clip_grad_norm};
use crate::{Error, Result};
use reward::{RewardConfig, RewardParts, Target, reward};

/// GRPO hyper-parameters (defaults: EasyR1's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Samples per prompt (G).
    pub group_size: usize,
    /// Sampling temperature (also applied to the log-probs, as verl does).
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: f64,
    /// Longest answer.
    pub max_new_tokens: usize,
    /// Prompts per rollout batch.
    pub prompts_per_step: usize,
    /// Optimisation steps per rollout batch, at most: the groups with signal are split into
    /// mini-batches of `ceil(groups / updates)`, which can make fewer.
    pub updates_per_rollout: usize,
    /// Lower clip `1 - clip_low` of the probability ratio.
    pub clip_low: f64,
    /// Upper clip `1 + clip_high` (DAPO's clip-higher).
    pub clip_high: f64,
    /// Dual clip: for negative advantages the loss is at most `-A * dual_clip`.
    pub dual_clip: f64,
    /// Coefficient of the k3 KL penalty to the reference policy.
    pub kl_coef: f64,
    /// Added to the group standard deviation.
    pub adv_eps: f64,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 96,
            prompts_per_step: 8,
            updates_per_rollout: 2,
            clip_low: 0.2,
            clip_high: 0.3,
            dual_clip: 3.0,
            kl_coef: 1e-2,
            adv_eps: 1e-6,
            max_grad_norm: 1.0,
        }
    }
}

impl GrpoConfig {
    /// What is wrong with these settings, if anything: each must allow a stage to learn (a zero
    /// temperature, say, makes every group's answers identical, so no group has signal).
    pub fn problem(&self) -> Option<String> {
        let finite = |v: f64| v.is_finite();
        let problems = [
            (self.group_size < 2 || self.prompts_per_step == 0, "group_size >= 2 and prompts_per_step >= 1"),
            (!(finite(self.temperature) && self.temperature > 0.0), "temperature > 0"),
            (!(self.top_p > 0.0 && self.top_p <= 1.0), "top_p in (0, 1]"),
            (
                self.max_new_tokens == 0 || self.updates_per_rollout == 0,
                "max_new_tokens and updates_per_rollout >= 1",
            ),
            (!(self.clip_low >= 0.0 && self.clip_low < 1.0), "clip_low in [0, 1)"),
            (!(finite(self.clip_high) && self.clip_high >= 0.0), "clip_high >= 0"),
            (!(finite(self.dual_clip) && self.dual_clip > 1.0), "dual_clip > 1"),
            (!(finite(self.kl_coef) && self.kl_coef >= 0.0), "kl_coef >= 0"),
            (!(finite(self.adv_eps) && self.adv_eps >= 0.0), "adv_eps >= 0"),
            (!(finite(self.max_grad_norm) && self.max_grad_norm > 0.0), "max_grad_norm > 0"),
        ];
        problems.iter().find(|(bad, _)| *bad).map(|(_, need)| format!("grpo needs {need}"))
    }
}

/// `(r - mean) / (std + eps)` within one group (std with Bessel's correction, as `torch.std`);
/// `None` when all rewards are equal (the group teaches nothing).
pub fn group_advantages(rewards: &[f64], eps: f64) -> Option<Vec<f64>> {
    let n = rewards.len();
    if n < 2 {
        return None;
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    if std <= 1e-12 {
        return None;
    }
    Some(rewards.iter().map(|r| (r - mean) / (std + eps)).collect())
}

/// Per-token loss terms of the clipped surrogate with dual clip and the k3 KL estimator.
#[derive(Debug)]
pub struct PolicyLoss {
    /// Policy-gradient loss per token.
    pub pg: Tensor,
    /// `exp(ref - logp) - (ref - logp) - 1` per token.
    pub kl: Tensor,
    /// 1 where the clipped branch was taken.
    pub clipped: Tensor,
}

/// Bound on `ref - logp` in the k3 estimator.
const KL_LOG_RATIO_MAX: f64 = 20.0;
/// Bound on the k3 estimate per token.
const KL_MAX: f64 = 10.0;

/// The loss terms for tokens with log-probs `logp` (current policy, with gradient), `old_logp`
/// (at sampling), `ref_logp` (reference) and advantages `adv` (the sequence's, per token).
pub fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: &Tensor,
    adv: &Tensor,
    cfg: &GrpoConfig,
) -> PolicyLoss {
    // Clamped as EasyR1's: a log-ratio above ~88 overflows f32's exp, and `0 * inf` would turn a
    // zero-advantage token's loss (or the unselected clip branch's gradient) into NaN.
    let ratio = (logp - old_logp).clamp(-20.0, 20.0).exp();
    let loss1 = -adv * &ratio;
    let loss2 = -adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let clipped_loss = loss1.maximum(&loss2);
    let loss3 = -adv * cfg.dual_clip;
    let dual = clipped_loss.minimum(&loss3);
    let negative = adv.lt(0.0);
    let pg = dual.where_self(&negative, &clipped_loss);
    let clipped = loss2.gt_tensor(&loss1).logical_or(&negative.logical_and(&clipped_loss.gt_tensor(&loss3)));
    // Clamped as EasyR1's `low_var_kl`: one token far below the reference must not make the
    // loss overflow (its exp) and stop the run.
    let d = (ref_logp - logp).clamp(-KL_LOG_RATIO_MAX, KL_LOG_RATIO_MAX);
    let kl = (d.exp() - &d - 1.0).clamp(-KL_MAX, KL_MAX);
    PolicyLoss { pg, kl, clipped: clipped.to_kind(Kind::Float) }
}

/// The fixed reference policy of the KL term.
pub enum Reference {
    /// The model itself with its LoRA adapters switched off.
    AdaptersOff,
    /// A frozen copy of the weights the stage started from.
    Frozen(Box<Qwen25Vl>),
}

/// What one rollout + update step did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Step (1-based, within the stage).
    pub step: usize,
    /// Mean reward over all samples.
    pub reward: f64,
    /// Mean of each reward part over all samples.
    pub parts: RewardPartsMean,
    /// Fraction of samples the protocol parser accepted.
    pub format_rate: f64,
    /// Mean k3 KL per token.
    pub kl: f64,
    /// Fraction of tokens whose loss took the clipped branch.
    pub clip_frac: f64,
    /// Mean policy entropy per token.
    pub entropy: f64,
    /// Mean answer length, tokens.
    pub response_len: f64,
    /// Groups whose rewards were all equal (skipped).
    pub zero_spread_groups: usize,
    /// Mean loss per mini-batch: the clipped surrogate plus `kl_coef` times the KL.
    pub loss: f64,
    /// Gradient norm of the last update, before clipping.
    pub grad_norm: f64,
    /// Sampled tokens per second of generation.
    pub gen_tokens_per_s: f64,
    /// Seconds sampling the answers and scoring them.
    pub time_gen_s: f64,
    /// Seconds computing reference log-probs.
    pub time_ref_s: f64,
    /// Seconds in forward/backward/optimiser.
    pub time_update_s: f64,
}

/// Means of the reward parts over a rollout batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RewardPartsMean {
    /// 2D IoU.
    pub iou_2d: f64,
    /// Exact 3D IoU.
    pub iou_3d: f64,
    /// Centre error, metres (parsed answers only).
    pub centre_err_m: f64,
    /// `(cos(dyaw) + 1) / 2`.
    pub yaw: f64,
}

/// One prompt's samples.
struct Group<'a> {
    example: &'a Example,
    completions: Vec<Completion>,
    advantages: Vec<f64>,
}

/// The target of an example for the rewards: model-input 2D box, camera 3D box.
pub fn target_of(example: &Example) -> Target {
    Target { box2d: example.resize_map().map_box(&example.record.label.bbox), box3d: example.record.box3d }
}

/// A scorer of grounding answers: decodes a completion and applies the stage's reward against the
/// prompt's ground truth (what [`grpo_step`] takes in training).
pub fn grounding_scorer<'a>(
    tokenizer: &'a Tokenizer,
    reward_cfg: &'a RewardConfig,
) -> impl FnMut(&Example, &Completion) -> Result<RewardParts> + 'a {
    move |ex, c| Ok(reward(&decode(tokenizer, &c.tokens)?, &target_of(ex), reward_cfg))
}

/// Runs one GRPO step: sample G answers for each prompt (stopping at `stop_tokens`), score each
/// with `score`, then take `updates_per_rollout` optimiser steps on the groups with signal.
///
/// # Errors
/// As generation and the forward pass; [`Error::NonFinite`] for a NaN/inf reward, loss or
/// gradient norm (the weights are left as before the failing update).
#[allow(clippy::too_many_arguments)]
pub fn grpo_step(
    model: &Qwen25Vl,
    reference: &Reference,
    opt: &mut AdamW,
    lr: f64,
    prompts: &[&Example],
    stop_tokens: &[i64],
    score: &mut dyn FnMut(&Example, &Completion) -> Result<RewardParts>,
    cfg: &GrpoConfig,
    step: usize,
) -> Result<StepMetrics> {
    let sampling = Sampling {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_new_tokens,
        stop_tokens: stop_tokens.to_vec(),
    };
    let mut m = StepMetrics { step, ..StepMetrics::default() };
    let t0 = Instant::now();
    let mut groups = Vec::new();
    let mut all_parts: Vec<RewardParts> = Vec::new();
    let mut gen_tokens = 0usize;
    for ex in prompts {
        let (completions, stats) = model.generate(&ex.prompt(), cfg.group_size, &sampling)?;
        gen_tokens += stats.new_tokens;
        let mut rewards = Vec::with_capacity(completions.len());
        for c in &completions {
            let r = score(ex, c)?;
            if !r.total.is_finite() {
                return Err(Error::NonFinite(format!("reward {} at step {step}", r.total)));
            }
            rewards.push(r.total);
            all_parts.push(r);
        }
        match group_advantages(&rewards, cfg.adv_eps) {
            Some(advantages) => groups.push(Group { example: ex, completions, advantages }),
            None => m.zero_spread_groups += 1,
        }
    }
    m.time_gen_s = t0.elapsed().as_secs_f64();
    m.gen_tokens_per_s = gen_tokens as f64 / m.time_gen_s.max(1e-9);
    let n = all_parts.len().max(1) as f64;
    m.reward = all_parts.iter().map(|p| p.total).sum::<f64>() / n;
    m.format_rate = all_parts.iter().map(|p| p.format).sum::<f64>() / n;
    let parsed: Vec<&RewardParts> = all_parts.iter().filter(|p| p.format > 0.0).collect();
    let pn = parsed.len().max(1) as f64;
    m.parts = RewardPartsMean {
        iou_2d: all_parts.iter().map(|p| p.iou_2d).sum::<f64>() / n,
        iou_3d: all_parts.iter().map(|p| p.iou_3d).sum::<f64>() / n,
        centre_err_m: parsed.iter().map(|p| p.centre_err_m).sum::<f64>() / pn,
        yaw: all_parts.iter().map(|p| p.yaw).sum::<f64>() / n,
    };
    m.response_len = gen_tokens as f64 / n;
    if groups.is_empty() {
        return Ok(m);
    }

    if matches!(reference, Reference::AdaptersOff) && model.lora().is_none() {
        return Err(Error::InvalidConfig(
            "the reference is the model with its adapters off, but it has no LoRA adapters: the KL \
             term would always be 0"
                .into(),
        ));
    }
    // Reference log-probs, once per rollout. In bf16/f16 the sampler (KV cache, merged weights,
    // other kernels) differs from the training forward by more than the clip range cares about,
    // so the old log-probs are recomputed with the training forward too (verl/EasyR1 always do);
    // in f32 the sampler's agree with it to ~1e-6 and are used as they are.
    let t1 = Instant::now();
    let recompute_old = model.kind() != Kind::Float;
    let mut refs = Vec::with_capacity(groups.len());
    let mut olds = Vec::with_capacity(groups.len());
    for g in &groups {
        if recompute_old {
            olds.push(Some(tch::no_grad(|| group_logprobs(model, g, cfg.temperature))?.0.detach()));
        } else {
            olds.push(None);
        }
        let r = tch::no_grad(|| match reference {
            Reference::AdaptersOff => {
                model.set_adapters_enabled(false);
                let out = group_logprobs(model, g, cfg.temperature);
                model.set_adapters_enabled(true);
                out
            }
            Reference::Frozen(r) => group_logprobs(r, g, cfg.temperature),
        })?;
        refs.push(r.0.detach());
    }
    m.time_ref_s = t1.elapsed().as_secs_f64();

    // Updates: the groups are split into mini-batches; each is one optimiser step with the
    // token-mean loss over its tokens.
    let t2 = Instant::now();
    let updates = cfg.updates_per_rollout.clamp(1, groups.len());
    let per = groups.len().div_ceil(updates);
    let (mut kl_sum, mut clip_sum, mut ent_sum, mut loss_sum, mut tok_sum) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for ((chunk, chunk_refs), chunk_olds) in groups.chunks(per).zip(refs.chunks(per)).zip(olds.chunks(per)) {
        let tokens: usize =
            chunk.iter().map(|g| g.completions.iter().map(|c| c.tokens.len()).sum::<usize>()).sum();
        model.params().zero_grad();
        for ((g, ref_logp), recomputed) in chunk.iter().zip(chunk_refs).zip(chunk_olds) {
            let (logp, entropy) = group_logprobs(model, g, cfg.temperature)?;
            let adv: Vec<f32> = g
                .completions
                .iter()
                .zip(&g.advantages)
                .flat_map(|(c, &a)| std::iter::repeat_n(a as f32, c.tokens.len()))
                .collect();
            let device = logp.device();
            let old = match recomputed {
                Some(old) => old.shallow_clone(),
                None => {
                    let old: Vec<f32> =
                        g.completions.iter().flat_map(|c| c.logprobs.iter().copied()).collect();
                    Tensor::from_slice(&old).to_device(device)
                }
            };
            let adv = Tensor::from_slice(&adv).to_device(device);
            let terms = policy_loss(&logp, &old, ref_logp, &adv, cfg);
            let per_token = &terms.pg + &terms.kl * cfg.kl_coef;
            let loss = per_token.sum(Kind::Float) / tokens as f64;
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(Error::NonFinite(format!("GRPO loss {lv} at step {step}")));
            }
            loss.backward();
            loss_sum += lv;
            kl_sum += terms.kl.sum(Kind::Float).double_value(&[]);
            clip_sum += terms.clipped.sum(Kind::Float).double_value(&[]);
            ent_sum += entropy.sum(Kind::Float).double_value(&[]);
            tok_sum += logp.size()[0] as f64;
        }
        m.grad_norm = clip_grad_norm(model.params(), cfg.max_grad_norm)?;
        opt.step(model.params(), lr)?;
    }
    model.params().zero_grad();
    m.time_update_s = t2.elapsed().as_secs_f64();
    let tok = tok_sum.max(1.0);
    m.kl = kl_sum / tok;
    m.clip_frac = clip_sum / tok;
    m.entropy = ent_sum / tok;
    // The mini-batches actually run: `per` groups each, so possibly fewer than `updates`.
    m.loss = loss_sum / groups.len().div_ceil(per) as f64;
    Ok(m)
}

/// Log-probs and entropies of a group's sampled tokens (all G answers, in order), with the prompt
/// and its image encoded once for the group.
fn group_logprobs(model: &Qwen25Vl, g: &Group<'_>, temperature: f64) -> Result<(Tensor, Tensor)> {
    let answers: Vec<Vec<i64>> = g.completions.iter().map(|c| c.tokens.clone()).collect();
    let pixels = g.example.pixel_values();
    model.answers_logprobs(
        &g.example.prompt,
        Some(&pixels),
        &[g.example.image.grid_thw],
        &answers,
        temperature,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn vals(x: &Tensor) -> Vec<f64> {
        Vec::<f32>::try_from(x).unwrap().into_iter().map(f64::from).collect()
    }

    #[test]
    fn advantages_are_group_normalised_with_bessel_std() {
        let a = group_advantages(&[1.0, 2.0, 3.0, 4.0], 1e-6).unwrap();
        let std = (5.0f64 / 3.0).sqrt(); // sum of squares 5, n - 1 = 3
        for (got, r) in a.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((got - (r - 2.5) / (std + 1e-6)).abs() < 1e-12);
        }
        assert!(group_advantages(&[0.7; 8], 1e-6).is_none(), "zero spread teaches nothing");
        assert!(group_advantages(&[1.0], 1e-6).is_none());
    }

    #[test]
    fn clipped_surrogate_with_dual_clip_by_hand() {
        let cfg = GrpoConfig::default(); // clip 0.2 / 0.3, dual 3
        let ratios = [1.0f32, 1.5, 0.5, 5.0, 0.5, 1.1];
        let advs = [1.0f32, 1.0, 1.0, -1.0, -1.0, -2.0];
        let old = t(&[-1.0; 6]);
        let logp = t(&ratios.map(|r| -1.0 + r.ln()));
        let p = policy_loss(&logp, &old, &logp, &t(&advs), &cfg);
        let want_pg = [-1.0, -1.3, -0.5, 3.0, 0.8, 2.2];
        let want_clip = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        for (i, (g, w)) in vals(&p.pg).iter().zip(want_pg).enumerate() {
            assert!((g - w).abs() < 1e-5, "token {i}: pg {g} want {w}");
        }
        assert_eq!(vals(&p.clipped), want_clip);
        assert!(vals(&p.kl).iter().all(|k| k.abs() < 1e-7), "KL to itself is 0");
    }

    #[test]
    fn k3_kl_estimator_by_hand() {
        let cfg = GrpoConfig::default();
        let logp = t(&[-1.0, -2.0]);
        let reference = t(&[-0.9, -2.5]);
        let p = policy_loss(&logp, &logp, &reference, &t(&[0.0, 0.0]), &cfg);
        let k = vals(&p.kl);
        for (got, d) in k.iter().zip([0.1f64, -0.5]) {
            assert!((got - (d.exp() - d - 1.0)).abs() < 1e-6);
        }
        assert!(k.iter().all(|&x| x >= 0.0));
    }

    #[test]
    fn the_kl_term_is_bounded_for_a_token_far_below_the_reference() {
        let cfg = GrpoConfig::default();
        let logp = t(&[-200.0, -1.0]);
        let reference = t(&[-0.1, -1.0]);
        let p = policy_loss(&logp, &logp, &reference, &t(&[0.0, 0.0]), &cfg);
        assert_eq!(vals(&p.kl), [KL_MAX, 0.0]);
    }

    #[test]
    fn a_huge_ratio_is_clipped_not_nan() {
        let cfg = GrpoConfig::default();
        // A log-ratio of 100 overflows f32's exp; clamped, the zero-advantage token's loss is 0 and
        // the positive one's gradient is finite.
        let logp = t(&[-1.0, -1.0]).set_requires_grad(true);
        let old = t(&[-101.0, -101.0]);
        let p = policy_loss(&logp, &old, &old, &t(&[0.0, 1.0]), &cfg);
        let pg = vals(&p.pg);
        assert!(pg[0] == 0.0 && (pg[1] + 1.3).abs() < 1e-6, "{pg:?}");
        p.pg.sum(Kind::Float).backward();
        assert!(vals(&logp.grad()).iter().all(|g| g.is_finite()), "{:?}", vals(&logp.grad()));
    }

    #[test]
    fn the_gradient_pushes_probability_towards_positive_advantages() {
        let cfg = GrpoConfig::default();
        let logp = t(&[-1.0, -1.0]).set_requires_grad(true);
        let old = t(&[-1.0, -1.0]);
        let p = policy_loss(&logp, &old, &old, &t(&[1.0, -1.0]), &cfg);
        p.pg.sum(Kind::Float).backward();
        let g = vals(&logp.grad());
        assert!(g[0] < 0.0 && g[1] > 0.0, "descent raises logp of A>0, lowers A<0: {g:?}");
    }
}
