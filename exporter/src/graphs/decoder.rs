//! `decoder_model_merged.onnx`: the Qwen2 language model of Qwen2.5-VL with multimodal rotary
//! positions and a key/value cache; one graph for prefill and decode (`past_sequence_length` may be 0).
//!
//! The fused layout follows ONNX Runtime's fast LLM graphs (the onnxruntime-genai model builder):
//! one q/k/v `MatMul` per layer, `SkipSimplifiedLayerNormalization` carrying the residual stream,
//! `GroupQueryAttention` over the cache (its built-in rotary is off: Qwen2.5-VL rotates with 3-row
//! positions, computed once per call from `position_ids` and applied to q and k in the graph),
//! one gate/up `MatMul`, and `MatMulNBits` for 4-bit weights. The decomposed variant computes the
//! same function from plain ONNX operators (explicit masks, `Concat` caches, `Softmax`); it exists
//! to measure what the fused operators buy.

use crate::checkpoint::Checkpoint;
use crate::graphs::{Linear, Part, Precision, WeightFormat, param, positive};
use crate::onnx::{DataType, Dim, GraphBuilder, MS_DOMAIN, Model, Value, attr};
use crate::{Error, Result};

/// Input: `[batch, sequence_length, hidden_size]` token embeddings (text from `embed_tokens`, image
/// positions replaced by `image_features`), in the precision's float type.
pub const INPUTS_EMBEDS: &str = "inputs_embeds";
/// Input: `[batch, total_sequence_length]` i64, 1 for real tokens (past and new), 0 for padding.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Input: `[3, batch, sequence_length]` i64 temporal/height/width positions of the new tokens
/// (`preprocess::rope_index_tokens` for a prompt; `position + rope_delta` on all rows when decoding).
pub const POSITION_IDS: &str = "position_ids";
/// Output: `[batch, sequence_length, vocab_size]` f32.
pub const LOGITS: &str = "logits";

/// Name of the cached keys of layer `i` (input).
pub fn past_key(i: i64) -> String {
    format!("past_key_values.{i}.key")
}

/// Name of the cached values of layer `i` (input).
pub fn past_value(i: i64) -> String {
    format!("past_key_values.{i}.value")
}

/// Name of the keys of layer `i` after this call (output).
pub fn present_key(i: i64) -> String {
    format!("present.{i}.key")
}

/// Name of the values of layer `i` after this call (output).
pub fn present_value(i: i64) -> String {
    format!("present.{i}.value")
}

/// How attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// ONNX Runtime's `GroupQueryAttention` and `SkipSimplifiedLayerNormalization` (com.microsoft).
    Fused,
    /// Plain ONNX operators only (a benchmark baseline; `MatMulNBits` still used for int4).
    Decomposed,
}

/// Multimodal rotary frequencies as a `[3, head_dim]` matrix: angle `j` is
/// `position[row(j)] * inv_freq[j mod head_dim/2]`, where `row` follows `mrope_section` over the first
/// `head_dim / 2` frequencies and the second half repeats the first (transformers' `cat(sel, sel)`).
/// One product per angle plus exact zeros, so `MatMul` matches the reference exactly.
fn mrope_matrix(head_dim: usize, theta: f64, section: [i64; 3]) -> Vec<f32> {
    let half = head_dim / 2;
    let theta = theta as f32;
    // In f32 as transformers computes it (`1 / base ** (arange(0, dim, 2) / dim)`).
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let (s0, s1) = (section[0].max(0) as usize, section[1].max(0) as usize);
    let mut m = vec![0.0f32; 3 * head_dim];
    for j in 0..head_dim {
        let f = j % half;
        let row = if f < s0 {
            0
        } else if f < s0 + s1 {
            1
        } else {
            2
        };
        m[row * head_dim + j] = inv[f];
    }
    m
}

/// Builds the decoder.
///
/// # Errors
/// Checkpoint errors naming a missing or misshapen tensor; [`Error::Graph`] for an unsupported
/// configuration.
pub fn build(ck: &Checkpoint, precision: Precision, attention: Attention) -> Result<Model> {
    let cfg = ck.config();
    let t = &cfg.text;
    let dtype = precision.float_type();
    let fmt = match precision {
        Precision::Int4 => WeightFormat::Q4,
        Precision::Fp32 | Precision::Fp16 => WeightFormat::Float(dtype),
    };
    let d = positive(t.hidden_size, "hidden_size")?;
    let heads = positive(t.num_attention_heads, "num_attention_heads")?;
    let kv = positive(t.num_key_value_heads, "num_key_value_heads")?;
    let hd = d / heads;
    let inter = positive(t.intermediate_size, "intermediate_size")?;
    let vocab = positive(t.vocab_size, "vocab_size")?;
    let eps = t.rms_norm_eps as f32;
    if hd % 2 != 0 || heads % kv != 0 {
        return Err(Error::Graph(format!(
            "unsupported head layout: {heads} heads, {kv} kv heads, head_dim {hd}"
        )));
    }

    let mut b = GraphBuilder::new("decoder_model_merged");
    let (batch, seq, total, past): (Dim, Dim, Dim, Dim) = (
        "batch".into(),
        "sequence_length".into(),
        "total_sequence_length".into(),
        "past_sequence_length".into(),
    );
    let embeds = b.input(INPUTS_EMBEDS, dtype, &[batch.clone(), seq.clone(), d.into()])?;
    let mask = b.input(ATTENTION_MASK, DataType::Int64, &[batch.clone(), total.clone()])?;
    let positions = b.input(POSITION_IDS, DataType::Int64, &[3.into(), batch.clone(), seq.clone()])?;
    let mut pasts = Vec::new();
    for i in 0..t.num_hidden_layers {
        let dims = [batch.clone(), kv.into(), past.clone(), hd.into()];
        let k = b.input(&past_key(i), dtype, &dims)?;
        let v = b.input(&past_value(i), dtype, &dims)?;
        pasts.push((k, v));
    }

    // Rotary cos and sign-folded sin [B, S, 1, head_dim], shared by all layers.
    b.set_scope("/model/rotary");
    let pos = b.transpose(&positions, &[1, 2, 0]);
    let pos = b.cast(&pos, DataType::Float);
    let freq_m =
        b.const_floats(&[3, hd], &mrope_matrix(hd as usize, t.rope_theta, t.mrope_section), DataType::Float)?;
    let angles = b.matmul(&pos, &freq_m);
    let cos = b.unary("Cos", &angles);
    let sin = b.unary("Sin", &angles);
    let sign: Vec<f32> = (0..hd).map(|j| if j < hd / 2 { -1.0 } else { 1.0 }).collect();
    let sign = b.const_floats(&[hd], &sign, DataType::Float)?;
    let sin = b.mul(&sin, &sign);
    let cos = b.unsqueeze(&cos, &[2]);
    let sin = b.unsqueeze(&sin, &[2]);
    let cos = b.cast_if(&cos, DataType::Float, dtype);
    let sin = b.cast_if(&sin, DataType::Float, dtype);
    let swap: Vec<i64> = (hd / 2..hd).chain(0..hd / 2).collect();
    let swap = b.const_i64s(&swap);

    // What attention needs besides q/k/v.
    b.set_scope("/model/attn_mask");
    let attn_inputs = match attention {
        Attention::Fused => {
            let lens = b.reduce_sum(&mask, &[1], false);
            let one = b.const_i64(1);
            let lens = b.sub(&lens, &one);
            let seqlens_k = b.cast(&lens, DataType::Int32);
            let total_len = b.dim(&mask, 1);
            let total_len = b.cast(&total_len, DataType::Int32);
            AttnInputs::Fused { seqlens_k, total_len }
        }
        Attention::Decomposed => {
            let t_len = b.dim(&mask, 1);
            let s_len = b.dim(&embeds, 1);
            let p_len = b.sub(&t_len, &s_len);
            let zero = b.const_i64(0);
            let one = b.const_i64(1);
            let q_pos = b.range(&p_len, &t_len, &one);
            let k_pos = b.range(&zero, &t_len, &one);
            let k_row = b.unsqueeze(&k_pos, &[0]);
            let q_col = b.unsqueeze(&q_pos, &[1]);
            let causal = b.op("LessOrEqual", &[&k_row, &q_col], Vec::new()); // [S, T]
            let keep = b.cast(&mask, DataType::Bool);
            let keep = b.unsqueeze(&keep, &[1, 2]); // [B, 1, 1, T]
            let allowed = b.op("And", &[&causal, &keep], Vec::new()); // [B, 1, S, T]
            // The additive mask and the soft-max are f32 whatever the weights' dtype (transformers
            // soft-maxes fp16 attention in f32 too): in f16 a masked score would round to -inf and
            // a padded row whose keys are all masked would soft-max to NaN.
            let zero_f = b.const_float(0.0, DataType::Float);
            let min = b.const_float(f32::MIN, DataType::Float);
            let additive = b.where_(&allowed, &zero_f, &min);
            let scale = b.const_float(1.0 / (hd as f32).sqrt(), dtype);
            AttnInputs::Decomposed { mask: additive, scale }
        }
    };

    let mut residual_and_skip: Option<(Value, Value)> = None;
    let mut presents = Vec::new();
    for (i, (past_k, past_v)) in (0..t.num_hidden_layers).zip(&pasts) {
        let p = format!("model.layers.{i}");
        b.set_scope(&format!("/model/layers.{i}"));
        let in_norm = param(&mut b, ck, &format!("{p}.input_layernorm.weight"), &[d], dtype)?;
        let post_norm = param(&mut b, ck, &format!("{p}.post_attention_layernorm.weight"), &[d], dtype)?;
        let (qn, kn, vn) = (
            format!("{p}.self_attn.q_proj"),
            format!("{p}.self_attn.k_proj"),
            format!("{p}.self_attn.v_proj"),
        );
        let qkv_l = Linear::load(
            &mut b,
            ck,
            &format!("{p}.self_attn.qkv_proj"),
            &[
                Part { name: &qn, out: heads * hd },
                Part { name: &kn, out: kv * hd },
                Part { name: &vn, out: kv * hd },
            ],
            d,
            true,
            fmt,
        )?;
        let on = format!("{p}.self_attn.o_proj");
        let o_l = Linear::load(&mut b, ck, &on, &[Part { name: &on, out: d }], heads * hd, false, fmt)?;
        let (gn, un, dn) =
            (format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj"), format!("{p}.mlp.down_proj"));
        let gate_up = Linear::load(
            &mut b,
            ck,
            &format!("{p}.mlp.gate_up_proj"),
            &[Part { name: &gn, out: inter }, Part { name: &un, out: inter }],
            d,
            false,
            fmt,
        )?;
        let down = Linear::load(&mut b, ck, &dn, &[Part { name: &dn, out: d }], inter, false, fmt)?;

        let (y, residual) = match (attention, residual_and_skip.take()) {
            (Attention::Fused, Some((res, skip))) => b.skip_rms_norm(&res, &skip, &in_norm, eps),
            (Attention::Decomposed, Some((res, skip))) => {
                let sum = b.add(&res, &skip);
                (b.rms_norm(&sum, &in_norm, eps, dtype), sum)
            }
            (_, None) => (b.rms_norm(&embeds, &in_norm, eps, dtype), embeds.clone()),
        };

        // q/k/v, rotary on q and k together.
        let qkv = qkv_l.apply(&mut b, &y)?;
        let qk_v = b.split(&qkv, -1, &[(heads + kv) * hd, kv * hd]);
        let qk = b.reshape(&qk_v[0], &[0, 0, heads + kv, hd]);
        let swapped = b.gather(&qk, &swap, 3);
        let rot_a = b.mul(&qk, &cos);
        let rot_b = b.mul(&swapped, &sin);
        let qk = b.add(&rot_a, &rot_b);
        let qk = b.reshape(&qk, &[0, 0, (heads + kv) * hd]);
        let q_k = b.split(&qk, -1, &[heads * hd, kv * hd]);
        let (q, k, v) = (&q_k[0], &q_k[1], &qk_v[1]);

        let attn = match &attn_inputs {
            AttnInputs::Fused { seqlens_k, total_len } => {
                let out_name = format!("/model/layers.{i}/attn/GroupQueryAttention/output_0");
                let outs = b.op_named(
                    "GroupQueryAttention",
                    MS_DOMAIN,
                    &[q, k, v, past_k, past_v, seqlens_k, total_len],
                    &[&out_name, &present_key(i), &present_value(i)],
                    vec![
                        attr::int("num_heads", heads),
                        attr::int("kv_num_heads", kv),
                        attr::float("scale", 1.0 / (hd as f32).sqrt()),
                        attr::int("do_rotary", 0),
                    ],
                )?;
                let [out, pk, pv]: [Value; 3] = outs
                    .try_into()
                    .map_err(|_| Error::Graph("GroupQueryAttention must have 3 outputs".into()))?;
                presents.push((pk, pv));
                out
            }
            AttnInputs::Decomposed { mask, scale } => {
                let q4 = b.reshape(q, &[0, 0, heads, hd]);
                let q4 = b.transpose(&q4, &[0, 2, 1, 3]); // [B, H, S, hd]
                let k4 = b.reshape(k, &[0, 0, kv, hd]);
                let k4 = b.transpose(&k4, &[0, 2, 1, 3]);
                let v4 = b.reshape(v, &[0, 0, kv, hd]);
                let v4 = b.transpose(&v4, &[0, 2, 1, 3]);
                let pk =
                    b.op_named("Concat", "", &[past_k, &k4], &[&present_key(i)], vec![attr::int("axis", 2)])?;
                let pv = b.op_named(
                    "Concat",
                    "",
                    &[past_v, &v4],
                    &[&present_value(i)],
                    vec![attr::int("axis", 2)],
                )?;
                let (pk, pv) = (pk[0].clone(), pv[0].clone());
                presents.push((pk.clone(), pv.clone()));
                let (pk, pv) = (&pk, &pv);
                // Query heads grouped by their kv head: [B, kv, groups * S, hd], no kv repetition.
                let qg = b.reshape(&q4, &[0, kv, -1, hd]);
                let qg = b.mul(&qg, scale);
                let kt = b.transpose(pk, &[0, 1, 3, 2]);
                let scores = b.matmul(&qg, &kt); // [B, kv, groups * S, T]
                let scores = b.reshape(&scores, &[0, heads, -1, 0]); // [B, H, S, T]
                let scores = b.cast_if(&scores, dtype, DataType::Float);
                let scores = b.add(&scores, mask);
                let probs = b.softmax(&scores, -1);
                let probs = b.cast_if(&probs, DataType::Float, dtype);
                let probs = b.reshape(&probs, &[0, kv, -1, 0]);
                let o = b.matmul(&probs, pv); // [B, kv, groups * S, hd]
                let o = b.reshape(&o, &[0, heads, -1, hd]);
                let o = b.transpose(&o, &[0, 2, 1, 3]);
                b.reshape(&o, &[0, 0, heads * hd])
            }
        };
        let attn = o_l.apply(&mut b, &attn)?;
        let (y, residual) = match attention {
            Attention::Fused => b.skip_rms_norm(&residual, &attn, &post_norm, eps),
            Attention::Decomposed => {
                let sum = b.add(&residual, &attn);
                (b.rms_norm(&sum, &post_norm, eps, dtype), sum)
            }
        };
        let gu = gate_up.apply(&mut b, &y)?;
        let gu = b.split(&gu, -1, &[inter, inter]);
        let g = b.silu(&gu[0]);
        let act = b.mul(&g, &gu[1]);
        let mlp = down.apply(&mut b, &act)?;
        residual_and_skip = Some((residual, mlp));
    }

    b.set_scope("/model/norm");
    let norm = param(&mut b, ck, "model.norm.weight", &[d], dtype)?;
    let h = match (attention, residual_and_skip) {
        (Attention::Fused, Some((res, skip))) => b.skip_rms_norm(&res, &skip, &norm, eps).0,
        (Attention::Decomposed, Some((res, skip))) => {
            let sum = b.add(&res, &skip);
            b.rms_norm(&sum, &norm, eps, dtype)
        }
        (_, None) => b.rms_norm(&embeds, &norm, eps, dtype),
    };
    b.set_scope("/lm_head");
    let head_name = if cfg.tie_word_embeddings {
        if ck.contains("lm_head.weight") {
            ck.ignore("lm_head.weight");
        }
        "model.embed_tokens"
    } else {
        "lm_head"
    };
    let lm_head =
        Linear::load(&mut b, ck, "lm_head", &[Part { name: head_name, out: vocab }], d, false, fmt)?;
    let logits = if dtype == DataType::Float {
        lm_head.apply_named(&mut b, &h, Some(LOGITS))?
    } else {
        let l = lm_head.apply(&mut b, &h)?;
        let out = b.op_named("Cast", "", &[&l], &[LOGITS], vec![attr::int("to", DataType::Float as i64)])?;
        out.into_iter().next().ok_or_else(|| Error::Graph("Cast has no output".into()))?
    };
    b.output(&logits, DataType::Float, &[batch.clone(), seq, vocab.into()])?;
    for (k, v) in &presents {
        let dims = [batch.clone(), kv.into(), total.clone(), hd.into()];
        b.output(k, dtype, &dims)?;
        b.output(v, dtype, &dims)?;
    }
    let doc = match attention {
        Attention::Fused => {
            "Qwen2.5-VL decoder (GroupQueryAttention, 3-row mRoPE) exported by monovlm-export"
        }
        Attention::Decomposed => {
            "Qwen2.5-VL decoder, plain ONNX operators (benchmark baseline), by monovlm-export"
        }
    };
    Ok(b.finish(doc))
}

enum AttnInputs {
    Fused { seqlens_k: Value, total_len: Value },
    Decomposed { mask: Value, scale: Value },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrope_matrix_follows_the_sections_and_repeats() {
        let m = mrope_matrix(16, 10_000.0, [2, 3, 3]);
        let row_of = |j: usize| (0..3).find(|&r| m[r * 16 + j] != 0.0);
        let rows: Vec<Option<usize>> = (0..16).map(row_of).collect();
        let expected = [0, 0, 1, 1, 1, 2, 2, 2];
        for j in 0..16 {
            assert_eq!(rows[j], Some(expected[j % 8]), "angle {j}");
        }
        assert_eq!(m[0], 1.0);
        assert_eq!(m[8], 1.0);
    }
}
