//! The language model of Qwen2.5-VL: a Qwen2 decoder (grouped-query attention with q/k/v bias,
//! SwiGLU, RMSNorm) with multimodal rotary positions, and its key/value cache.

use tch::{Kind, Tensor};

use super::layers::{Linear, RmsNorm, apply_rotary};
use super::weights::Builder;
use crate::Result;
use monovlm_runtime::model_config::TextConfig;

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// One decoder layer's weights fused for decoding (see [`TextModel::fused`]).
#[derive(Debug)]
pub(crate) struct FusedLayer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    o_w: Tensor,
    gate_up_w: Tensor,
    down_w: Tensor,
}

/// The decoder stack (without embedding lookup and `lm_head`, which [`super::Qwen25Vl`] owns).
#[derive(Debug)]
pub struct TextModel {
    cfg: TextConfig,
    layers: Vec<Layer>,
    norm: RmsNorm,
    inv_freq: Tensor,
}

/// Keys and values of past positions, per layer `[B, kv_heads, capacity, head_dim]`, preallocated
/// so appending a step copies only that step.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch rows.
    pub fn batch(&self) -> i64 {
        self.keys.first().map(|k| k.size()[0]).unwrap_or(0)
    }

    /// A cache of `rows` copies of row 0 (G samples continuing one prompt's prefill), with room for
    /// `capacity` positions.
    pub fn repeat_rows(&self, rows: i64, capacity: i64) -> KvCache {
        let grow = |t: &Tensor| {
            let s = t.size();
            let out = Tensor::zeros([rows, s[1], capacity.max(self.len), s[3]], (t.kind(), t.device()));
            let src = t.narrow(0, 0, 1).narrow(2, 0, self.len);
            out.narrow(2, 0, self.len).copy_(&src.expand([rows, s[1], self.len, s[3]], false));
            out
        };
        KvCache {
            keys: self.keys.iter().map(grow).collect(),
            values: self.values.iter().map(grow).collect(),
            len: self.len,
            capacity: capacity.max(self.len),
        }
    }

    /// Keeps only the batch rows `rows` (finished samples dropped from decoding).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let n = k.size()[2];
        if self.len + n > self.capacity {
            // Grow geometrically; only happens when a caller under-estimated the length.
            let capacity = (self.len + n).max(self.capacity * 2);
            for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
                let s = t.size();
                let grown = Tensor::zeros([s[0], s[1], capacity, s[3]], (t.kind(), t.device()));
                grown.narrow(2, 0, self.len).copy_(&t.narrow(2, 0, self.len));
                *t = grown;
            }
            self.capacity = capacity;
        }
        self.keys[layer].narrow(2, self.len, n).copy_(k);
        self.values[layer].narrow(2, self.len, n).copy_(v);
        let total = self.len + n;
        (self.keys[layer].narrow(2, 0, total), self.values[layer].narrow(2, 0, total))
    }
}

impl TextModel {
    pub(crate) fn new(b: &mut Builder, cfg: &TextConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let kv = cfg.num_key_value_heads * hd;
        let std = cfg.initializer_range;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let inter = cfg.intermediate_size;
            layers.push(Layer {
                input_norm: RmsNorm::new(b, &format!("{p}.input_layernorm"), h, cfg.rms_norm_eps)?,
                post_norm: RmsNorm::new(b, &format!("{p}.post_attention_layernorm"), h, cfg.rms_norm_eps)?,
                q: Linear::new(b, &format!("{p}.self_attn.q_proj"), h, h, true, std)?,
                k: Linear::new(b, &format!("{p}.self_attn.k_proj"), h, kv, true, std)?,
                v: Linear::new(b, &format!("{p}.self_attn.v_proj"), h, kv, true, std)?,
                o: Linear::new(b, &format!("{p}.self_attn.o_proj"), h, h, false, std)?,
                gate: Linear::new(b, &format!("{p}.mlp.gate_proj"), h, inter, false, std)?,
                up: Linear::new(b, &format!("{p}.mlp.up_proj"), h, inter, false, std)?,
                down: Linear::new(b, &format!("{p}.mlp.down_proj"), inter, h, false, std)?,
            });
        }
        let norm = RmsNorm::new(b, "model.norm", h, cfg.rms_norm_eps)?;
        let inv_freq: Vec<f32> =
            (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64) as f32).collect();
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(b.device);
        Ok(Self { cfg: cfg.clone(), layers, norm, inv_freq })
    }

    /// Linear layers, for LoRA and weight merging.
    pub(crate) fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down])
    }

    /// An empty cache for `batch` rows and `capacity` positions, in the model's dtype and device.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let hd = self.cfg.head_dim();
        let opts = (self.norm.weight.kind(), self.norm.weight.device());
        let make = || Tensor::zeros([batch, self.cfg.num_key_value_heads, capacity, hd], opts);
        let n = self.layers.len();
        KvCache {
            keys: (0..n).map(|_| make()).collect(),
            values: (0..n).map(|_| make()).collect(),
            len: 0,
            capacity,
        }
    }

    /// cos and sin `[B, 1, S, head_dim]` of 3-row positions `[3, B, S]`: frequency `j` follows the
    /// temporal, height or width row according to `mrope_section` (transformers' layout). The sin
    /// has its first half negated, for [`apply_rotary`].
    fn rotary(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // [3, B, S, hd/2]
        let mut parts = Vec::with_capacity(3);
        let mut start = 0;
        for (row, &len) in self.cfg.mrope_section.iter().enumerate() {
            parts.push(freqs.get(row as i64).narrow(-1, start, len));
            start += len;
        }
        let sel = Tensor::cat(&parts, -1);
        let emb = Tensor::cat(&[&sel, &sel], -1).unsqueeze(1);
        let sin = sel.sin();
        let signed_sin = Tensor::cat(&[sin.neg(), sin], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), signed_sin.to_kind(kind))
    }

    /// The weights of every layer with q/k/v and gate/up concatenated and LoRA merged: fewer,
    /// larger matrix products for decoding (built once per `generate` call, no gradient).
    pub(crate) fn fused(&self) -> Vec<FusedLayer> {
        tch::no_grad(|| {
            self.layers
                .iter()
                .map(|l| FusedLayer {
                    qkv_w: Tensor::cat(&[l.q.merged_weight(), l.k.merged_weight(), l.v.merged_weight()], 0),
                    qkv_b: Tensor::cat(
                        &[&l.q.bias, &l.k.bias, &l.v.bias]
                            .map(|b| b.as_ref().map(Tensor::shallow_clone).unwrap_or_default()),
                        0,
                    ),
                    o_w: l.o.merged_weight(),
                    gate_up_w: Tensor::cat(&[l.gate.merged_weight(), l.up.merged_weight()], 0),
                    down_w: l.down.merged_weight(),
                })
                .collect()
        })
    }

    /// Runs the decoder on `embeds [B, S, D]` at 3-row positions `position_ids [3, B, S]`.
    ///
    /// Attention is causal. With a cache, the new keys/values are appended after the cached ones
    /// and queries attend to all of them (causally within the new block). `key_padding` `[B, T]`
    /// (1 = real token, T = cached + S) masks padded keys, needed for left padding only: right
    /// padding never precedes a real token. Returns the final-norm hidden states `[B, S, D]`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        key_padding: Option<&Tensor>,
    ) -> Tensor {
        self.forward_with(embeds, position_ids, cache, key_padding, None, None)
    }

    /// [`Self::forward`] without a cache that also returns the residual stream after each layer
    /// (`layers` tensors `[B, S, D]`, before the final norm).
    pub fn forward_residuals(&self, embeds: &Tensor, position_ids: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut residuals = Vec::with_capacity(self.layers.len());
        let out = self.forward_with(embeds, position_ids, None, None, None, Some(&mut residuals));
        (out, residuals)
    }

    /// One prompt shared by `G` continuations, with gradients: the prompt `prefix [1, P, D]` at
    /// positions `prefix_pos [3, 1, P]` is computed once and the continuations `suffix [G, S, D]`
    /// at `suffix_pos [3, G, S]` attend to its keys/values (broadcast, not copied per row) and
    /// causally to their own. Equal to running the G concatenated sequences, with the prompt's work
    /// done once. Returns the final hidden states of the prefix `[1, P, D]` and suffix `[G, S, D]`.
    pub fn forward_prefix_suffix(
        &self,
        prefix: &Tensor,
        prefix_pos: &Tensor,
        suffix: &Tensor,
        suffix_pos: &Tensor,
    ) -> (Tensor, Tensor) {
        let (p_len, g, s_len) = (prefix.size()[1], suffix.size()[0], suffix.size()[1]);
        let heads = self.cfg.num_attention_heads;
        let kv_heads = self.cfg.num_key_value_heads;
        let hd = self.cfg.head_dim();
        let (cos_p, sin_p) = self.rotary(prefix_pos, prefix.kind());
        let (cos_s, sin_s) = self.rotary(suffix_pos, suffix.kind());
        let dev = suffix.device();
        // Suffix query i sees the whole prefix and suffix keys 0..=i.
        let q_pos = Tensor::arange(s_len, (Kind::Int64, dev)).unsqueeze(1);
        let k_pos = Tensor::arange(s_len, (Kind::Int64, dev)).unsqueeze(0);
        let own = k_pos.le_tensor(&q_pos);
        let mask =
            Tensor::cat(&[Tensor::ones([s_len, p_len], (Kind::Bool, dev)), own], 1).unsqueeze(0).unsqueeze(0);
        let scale = 1.0 / (hd as f64).sqrt();
        let gqa = heads > kv_heads;
        let project = |layer: &Layer, x: &Tensor, b: i64, n: i64, cos: &Tensor, sin: &Tensor| {
            let y = layer.input_norm.forward(x);
            let q = layer.q.forward(&y).view([b, n, heads, hd]).transpose(1, 2);
            let k = layer.k.forward(&y).view([b, n, kv_heads, hd]).transpose(1, 2);
            let v = layer.v.forward(&y).view([b, n, kv_heads, hd]).transpose(1, 2);
            (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin), v)
        };
        let finish = |layer: &Layer, x: &Tensor, attn: &Tensor, b: i64, n: i64| {
            let x = x + layer.o.forward(&attn.transpose(1, 2).reshape([b, n, heads * hd]));
            let y = layer.post_norm.forward(&x);
            &x + layer.down.forward(&(layer.gate.forward(&y).silu() * layer.up.forward(&y)))
        };
        let (mut xp, mut xs) = (prefix.shallow_clone(), suffix.shallow_clone());
        for layer in &self.layers {
            let (qp, kp, vp) = project(layer, &xp, 1, p_len, &cos_p, &sin_p);
            let (qs, ks, vs) = project(layer, &xs, g, s_len, &cos_s, &sin_s);
            let attn_p = Tensor::scaled_dot_product_attention::<&Tensor>(
                &qp,
                &kp,
                &vp,
                None,
                0.0,
                p_len > 1,
                scale,
                gqa,
            );
            let k_all = Tensor::cat(&[kp.expand([g, kv_heads, p_len, hd], false), ks], 2);
            let v_all = Tensor::cat(&[vp.expand([g, kv_heads, p_len, hd], false), vs], 2);
            let attn_s = Tensor::scaled_dot_product_attention(
                &qs,
                &k_all,
                &v_all,
                Some(&mask),
                0.0,
                false,
                scale,
                gqa,
            );
            xp = finish(layer, &xp, &attn_p, 1, p_len);
            xs = finish(layer, &xs, &attn_s, g, s_len);
        }
        (self.norm.forward(&xp), self.norm.forward(&xs))
    }

    /// [`Self::forward`] with the layers' weights taken from `fused` (see [`Self::fused`]) when
    /// given: the same function, computed with fewer kernels. `residuals`, when given, receives the
    /// residual stream after each layer.
    pub(crate) fn forward_with(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        key_padding: Option<&Tensor>,
        fused: Option<&[FusedLayer]>,
        mut residuals: Option<&mut Vec<Tensor>>,
    ) -> Tensor {
        let size = embeds.size();
        let (bsz, seq) = (size[0], size[1]);
        let heads = self.cfg.num_attention_heads;
        let kv_heads = self.cfg.num_key_value_heads;
        let hd = self.cfg.head_dim();
        let (cos, sin) = self.rotary(position_ids, embeds.kind());
        let past = cache.as_ref().map(|c| c.len).unwrap_or(0);
        let total = past + seq;
        // A mask is needed when the block is not aligned top-left (past > 0, seq > 1) or with padding.
        let mask = if key_padding.is_some() || (past > 0 && seq > 1) {
            let q_pos = Tensor::arange_start(past, total, (Kind::Int64, embeds.device())).unsqueeze(1);
            let k_pos = Tensor::arange(total, (Kind::Int64, embeds.device())).unsqueeze(0);
            let causal = k_pos.le_tensor(&q_pos).unsqueeze(0).unsqueeze(0); // [1,1,S,T]
            Some(match key_padding {
                Some(p) => causal.logical_and(&p.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1)),
                None => causal,
            })
        } else {
            None
        };
        let is_causal = mask.is_none() && seq > 1;
        let scale = 1.0 / (hd as f64).sqrt();
        let groups = heads / kv_heads;
        let mut x = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let y = layer.input_norm.forward(&x);
            let (q, k, v) = match fused.and_then(|f| f.get(i)) {
                Some(f) => {
                    let qkv = y
                        .linear(&f.qkv_w, Some(&f.qkv_b))
                        .view([bsz, seq, heads + 2 * kv_heads, hd])
                        .transpose(1, 2);
                    // One rotation for queries and keys together.
                    let qk = apply_rotary(&qkv.narrow(1, 0, heads + kv_heads), &cos, &sin);
                    (
                        qk.narrow(1, 0, heads),
                        qk.narrow(1, heads, kv_heads),
                        qkv.narrow(1, heads + kv_heads, kv_heads),
                    )
                }
                None => {
                    let q = layer.q.forward(&y).view([bsz, seq, heads, hd]).transpose(1, 2);
                    let k = layer.k.forward(&y).view([bsz, seq, kv_heads, hd]).transpose(1, 2);
                    let v = layer.v.forward(&y).view([bsz, seq, kv_heads, hd]).transpose(1, 2);
                    (apply_rotary(&q, &cos, &sin), apply_rotary(&k, &cos, &sin), v)
                }
            };
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, &k, &v),
                None => (k, v),
            };
            // Grouped-query attention without materialising repeated keys/values.
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.0,
                is_causal,
                scale,
                groups > 1,
            );
            let attn = attn.transpose(1, 2).reshape([bsz, seq, heads * hd]);
            let y = match fused.and_then(|f| f.get(i)) {
                Some(f) => {
                    x = &x + attn.linear::<&Tensor>(&f.o_w, None);
                    let gu = layer.post_norm.forward(&x).linear::<&Tensor>(&f.gate_up_w, None);
                    let inter = gu.size()[2] / 2;
                    (gu.narrow(-1, 0, inter).silu() * gu.narrow(-1, inter, inter))
                        .linear::<&Tensor>(&f.down_w, None)
                }
                None => {
                    x = &x + layer.o.forward(&attn);
                    let y = layer.post_norm.forward(&x);
                    layer.down.forward(&(layer.gate.forward(&y).silu() * layer.up.forward(&y)))
                }
            };
            x = &x + y;
            if let Some(r) = residuals.as_deref_mut() {
                r.push(x.shallow_clone());
            }
        }
        if let Some(c) = cache {
            c.len = total;
        }
        self.norm.forward(&x)
    }
}
