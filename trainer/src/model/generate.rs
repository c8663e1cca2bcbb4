//! Decoding with a KV cache: greedy or sampled (temperature, top-p), G samples of one prompt
//! sharing a single prefill, with the log-probability of every sampled token (GRPO's old policy).

use tch::{Kind, Tensor};

use super::Qwen25Vl;
use crate::{Error, Result};

/// One prompt: tokens (with `<|image_pad|>` runs) and the pixel rows of its images.
#[derive(Debug)]
pub struct Prompt {
    /// Token ids.
    pub tokens: Vec<i64>,
    /// `[sum N_i, 1176]`, `None` for a text-only prompt.
    pub pixel_values: Option<Tensor>,
    /// Patch grids of the images, in order.
    pub grids: Vec<[usize; 3]>,
}

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f64,
    /// Tokens generated at most per sample.
    pub max_new_tokens: usize,
    /// Generation of a sample stops after it emits one of these (included in its tokens).
    pub stop_tokens: Vec<i64>,
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// New token ids (a stop token, when reached, is the last).
    pub tokens: Vec<i64>,
    /// `log p(token)` of each new token under the distribution it was drawn from (logits divided by
    /// the temperature; for greedy decoding the plain softmax).
    pub logprobs: Vec<f32>,
    /// Whether a stop token ended it (otherwise `max_new_tokens` did).
    pub stopped: bool,
}

/// Timings of one [`Qwen25Vl::generate`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerateStats {
    /// Vision tower + prefill, seconds.
    pub prefill_s: f64,
    /// Decoding steps, seconds.
    pub decode_s: f64,
    /// Tokens generated over all samples.
    pub new_tokens: usize,
}

impl Qwen25Vl {
    /// Generates `samples` continuations of `prompt`. The prompt is encoded and prefilled once;
    /// its cache is copied to `samples` rows which decode as one batch, rows leaving the batch as
    /// they stop. Sampling draws from libtorch's generator (seed it with `tch::manual_seed`).
    ///
    /// # Errors
    /// [`Error::ModelInput`] for an empty prompt, zero samples, or inconsistent image inputs.
    pub fn generate(
        &self,
        prompt: &Prompt,
        samples: usize,
        sampling: &Sampling,
    ) -> Result<(Vec<Completion>, GenerateStats)> {
        if prompt.tokens.is_empty() || samples == 0 {
            return Err(Error::ModelInput(
                "generation needs a non-empty prompt and at least one sample".into(),
            ));
        }
        if !(sampling.temperature >= 0.0 && sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
            return Err(Error::ModelInput(format!(
                "temperature {} must be >= 0 and top_p {} in (0, 1]",
                sampling.temperature, sampling.top_p
            )));
        }
        tch::no_grad(|| self.generate_inner(prompt, samples, sampling))
    }

    fn generate_inner(
        &self,
        prompt: &Prompt,
        samples: usize,
        sampling: &Sampling,
    ) -> Result<(Vec<Completion>, GenerateStats)> {
        let t0 = std::time::Instant::now();
        let features = match &prompt.pixel_values {
            Some(p) => Some(self.image_features(p, &prompt.grids)?),
            None => None,
        };
        let s = prompt.tokens.len() as i64;
        let ids = Tensor::from_slice(&prompt.tokens).unsqueeze(0);
        let embeds = self.embed(&ids, features.as_ref())?;
        let (pos, delta) = self.position_ids(&prompt.tokens, &prompt.grids)?;
        let capacity = s + sampling.max_new_tokens as i64;
        let fused = self.fused_decoder();
        let mut prefill_cache = self.new_cache(1, s);
        let hidden = self.decode_fused(&embeds, &pos.unsqueeze(1), &mut prefill_cache, &fused);
        let last = self.answer_logits(&hidden.narrow(1, s - 1, 1).squeeze_dim(1)); // [1, V]
        let g = samples as i64;
        let mut cache = prefill_cache.repeat_rows(g, capacity);
        drop(prefill_cache);
        let mut logits = last.expand([g, -1], false);
        let prefill_s = t0.elapsed().as_secs_f64();

        let t1 = std::time::Instant::now();
        let mut out: Vec<Completion> = (0..samples)
            .map(|_| Completion { tokens: Vec::new(), logprobs: Vec::new(), stopped: false })
            .collect();
        // `active[i]`: which sample batch row i decodes.
        let mut active: Vec<usize> = (0..samples).collect();
        for step in 0..sampling.max_new_tokens {
            let (next, logp) = pick(&logits, sampling);
            let next_v: Vec<i64> = Vec::<i64>::try_from(&next)?;
            let logp_v: Vec<f32> = Vec::<f32>::try_from(&logp)?;
            let mut keep = Vec::with_capacity(active.len());
            for (row, &sample) in active.iter().enumerate() {
                let c = &mut out[sample];
                c.tokens.push(next_v[row]);
                c.logprobs.push(logp_v[row]);
                if sampling.stop_tokens.contains(&next_v[row]) {
                    c.stopped = true;
                } else {
                    keep.push(row as i64);
                }
            }
            if keep.is_empty() || step + 1 == sampling.max_new_tokens {
                break;
            }
            let mut next = next;
            if keep.len() < active.len() {
                let rows = Tensor::from_slice(&keep).to_device(self.device);
                cache.select_rows(&rows);
                next = next.index_select(0, &rows);
                active = keep.iter().map(|&r| active[r as usize]).collect();
            }
            let b = active.len() as i64;
            let embeds = self.embed_generated(&next.view([b, 1]));
            let p = s + step as i64 + delta;
            let pos = Tensor::full([3, b, 1], p, (Kind::Int64, self.device));
            let hidden = self.decode_fused(&embeds, &pos, &mut cache, &fused);
            logits = self.answer_logits(&hidden.squeeze_dim(1));
        }
        let new_tokens = out.iter().map(|c| c.tokens.len()).sum();
        Ok((out, GenerateStats { prefill_s, decode_s: t1.elapsed().as_secs_f64(), new_tokens }))
    }
}

/// Next token and its log-probability for each row of `logits [B, V]` (f32).
fn pick(logits: &Tensor, sampling: &Sampling) -> (Tensor, Tensor) {
    if sampling.temperature == 0.0 {
        let next = logits.argmax(-1, false);
        let logp = logits.log_softmax(-1, Kind::Float).gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
        return (next, logp);
    }
    let logp_all = (logits / sampling.temperature).log_softmax(-1, Kind::Float);
    let probs = logp_all.exp();
    let next = if sampling.top_p < 1.0 {
        let (sorted, order) = probs.sort(-1, true);
        let cum = sorted.cumsum(-1, Kind::Float);
        // Drop tokens once the mass before them already reaches top_p (the first always stays).
        let drop = (&cum - &sorted).ge(sampling.top_p);
        let kept = sorted.masked_fill(&drop, 0.0);
        order.gather(1, &inverse_cdf_sample(&kept), false).squeeze_dim(1)
    } else {
        inverse_cdf_sample(&probs).squeeze_dim(1)
    };
    let logp = logp_all.gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
    (next, logp)
}

/// One draw per row of unnormalised probabilities `[B, V]` by inverting the cumulative sum at a
/// uniform variate: `[B, 1]` indices. (libtorch's `multinomial` costs ~0.5 ms for 8 x 2048 on one
/// core, more than a decoding step of a small model.)
fn inverse_cdf_sample(weights: &Tensor) -> Tensor {
    let cdf = weights.cumsum(-1, Kind::Float);
    let v = cdf.size()[1];
    let total = cdf.narrow(1, v - 1, 1);
    let u = Tensor::rand_like(&total) * &total;
    // First index whose cumulative weight exceeds u; zero-weight tokens are never chosen.
    u.searchsorted(&cdf, false, true, "right", None::<&Tensor>).clamp_max(v - 1)
}
