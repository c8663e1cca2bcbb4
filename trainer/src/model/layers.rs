//! Building blocks shared by the vision tower and the language model: linear layers with optional
//! LoRA adapters, RMSNorm, rotary helpers and attention over contiguous segments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use super::weights::{Builder, Init};
use crate::Result;

/// A low-rank adapter `W x + (alpha / r) B A x` on a frozen linear layer (PEFT's LoRA).
#[derive(Debug)]
pub struct Lora {
    /// `[r, in]`, Kaiming-uniform initialised (PEFT's default).
    pub a: Tensor,
    /// `[out, r]`, zero initialised so an adapted model starts equal to its base.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
    /// Shared switch of all adapters of a model: off gives the base model (GRPO's reference policy).
    enabled: Arc<AtomicBool>,
}

/// LoRA settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: i64,
    /// `alpha` (the update is scaled by `alpha / r`).
    pub alpha: f64,
    /// Last name components of the linear layers that get adapters, e.g. `q_proj`, `v_proj`.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// `y = x W^T + b`, plus a LoRA update when adapters are attached and enabled.
#[derive(Debug)]
pub struct Linear {
    /// Hugging Face name prefix (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
    /// Adapter, when LoRA is attached.
    pub lora: Option<Lora>,
}

impl Linear {
    /// Takes `{name}.weight` (and `{name}.bias`) from the builder.
    pub(crate) fn new(
        b: &mut Builder,
        name: &str,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        let weight = b.weight(&format!("{name}.weight"), &[out_dim, in_dim], Init::Normal(std))?;
        let bias =
            if bias { Some(b.weight(&format!("{name}.bias"), &[out_dim], Init::Zeros)?) } else { None };
        Ok(Self { name: name.to_owned(), weight, bias, lora: None })
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(l) if l.enabled.load(Ordering::Relaxed) => {
                y + x.linear::<&Tensor>(&l.a, None).linear::<&Tensor>(&l.b, None) * l.scale
            }
            _ => y,
        }
    }

    /// Output features.
    pub fn out_dim(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Attaches a fresh adapter (registered in the builder's store as `{name}.lora_A.weight` /
    /// `{name}.lora_B.weight`).
    pub(crate) fn attach_lora(
        &mut self,
        b: &mut Builder,
        cfg: &LoraConfig,
        enabled: &Arc<AtomicBool>,
    ) -> Result<()> {
        let size = self.weight.size();
        let (out_dim, in_dim) = (size[0], size[1]);
        // PEFT: kaiming_uniform_(a=sqrt(5)) on A gives U(-1/sqrt(in), 1/sqrt(in)).
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = (Tensor::f_rand([cfg.rank, in_dim], (Kind::Float, b.device))? * (2.0 * bound) - bound)
            .f_to_kind(b.kind)?;
        let a = b.store.push(format!("{}.lora_A.weight", self.name), a, true);
        let zeros = super::weights::fresh(&[out_dim, cfg.rank], Init::Zeros, b.kind, b.device)?;
        let bm = b.store.push(format!("{}.lora_B.weight", self.name), zeros, true);
        self.lora = Some(Lora { a, b: bm, scale: cfg.alpha / cfg.rank as f64, enabled: Arc::clone(enabled) });
        Ok(())
    }

    /// The effective weight `W + scale B A` (equal to `W` without an adapter), summed in f32 and
    /// rounded once to the weight's dtype (in bf16, `B A` and the sum rounded separately would
    /// lose most of an early adapter's update).
    pub fn merged_weight(&self) -> Tensor {
        match &self.lora {
            Some(l) => tch::no_grad(|| {
                let f = |t: &Tensor| t.to_kind(tch::Kind::Float);
                (f(&self.weight) + f(&l.b).matmul(&f(&l.a)) * l.scale).to_kind(self.weight.kind())
            }),
            None => self.weight.shallow_clone(),
        }
    }
}

/// Root-mean-square normalisation, computed in f32 (transformers' `Qwen2RMSNorm`).
#[derive(Debug)]
pub struct RmsNorm {
    /// `[dim]`.
    pub weight: Tensor,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(b: &mut Builder, name: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: b.weight(&format!("{name}.weight"), &[dim], Init::Ones)?, eps })
    }

    /// `weight * x / sqrt(mean(x^2) + eps)`. When `x` needs no gradient, in f32, libtorch's fused `rms_norm`
    /// (one kernel; results equal to rounding); otherwise transformers' exact sequence of operations
    /// (normalise in f32, round to the input dtype, then scale), so training matches it step for step.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float && self.weight.kind() == Kind::Float && !x.requires_grad() {
            return x.rms_norm(self.weight.size(), Some(&self.weight), self.eps);
        }
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// `x cos + rotate_half(x) sin` computed as `x cos + roll(x, d/2) signed_sin`, where
/// `signed_sin = cat(-sin1, sin2)`: the same products (negation is exact), two kernels fewer.
pub(crate) fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    x * cos + x.roll([half], [-1]) * signed_sin
}

/// Bidirectional attention within contiguous segments of a sequence, `q, k, v: [heads, N, hd]`,
/// `bounds`: segment boundaries from 0 to N (the vision tower's `cu_seqlens`). Runs of segments of
/// equal length are batched into one attention call; the result equals attending segment by segment.
pub(crate) fn segment_attention(q: &Tensor, k: &Tensor, v: &Tensor, bounds: &[i64], scale: f64) -> Tensor {
    let mut outputs = Vec::new();
    let mut i = 0;
    while i + 1 < bounds.len() {
        let len = bounds[i + 1] - bounds[i];
        let mut j = i + 1;
        while j + 1 < bounds.len() && bounds[j + 1] - bounds[j] == len {
            j += 1;
        }
        let (start, count) = (bounds[i], (j - i) as i64);
        if len > 0 {
            let heads = q.size()[0];
            let hd = q.size()[2];
            // [heads, count*len, hd] -> [count, heads, len, hd]
            let split =
                |t: &Tensor| t.narrow(1, start, count * len).reshape([heads, count, len, hd]).transpose(0, 1);
            let out = Tensor::scaled_dot_product_attention::<&Tensor>(
                &split(q),
                &split(k),
                &split(v),
                None,
                0.0,
                false,
                scale,
                false,
            );
            outputs.push(out.transpose(0, 1).reshape([heads, count * len, hd]));
        }
        i = j;
    }
    Tensor::cat(&outputs, 1)
}
