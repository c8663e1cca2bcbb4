//! `vision_encoder.onnx`: Qwen2.5-VL's vision tower (transformers'
//! `Qwen2_5_VisionTransformerPretrainedModel`) from flattened patches to merged image features.
//!
//! The index tensors come from `monovlm_runtime::preprocess` (the same functions the trainer uses):
//! patch positions for the 2D rotary embedding, the window order of the merged tokens and the
//! segment boundaries of windowed and full attention. Inside the graph the patches are permuted
//! into window order (4 patches of a merged token stay together), attention runs within segments
//! (windows, or whole images in the full-attention blocks) batched and padded to the longest one, with
//! the padding masked out of the keys, so windows of unequal size and several images in one call are
//! exact and a windowed block costs `N * 64` rather than `N^2`; the merged tokens are scattered back
//! to the order of `pixel_values`.

use crate::checkpoint::Checkpoint;
use crate::graphs::{Linear, Part, Precision, WeightFormat, param, positive};
use crate::onnx::{DataType, Dim, GraphBuilder, Model, Value};
use crate::{Error, Result};
use monovlm_runtime::model_config::{ABS_POSITION_WEIGHT, VisionConfig, abs_position_frequencies};

/// Input: flattened patches `[num_patches, 1176]` f32 (`preprocess::preprocess_image`).
pub const PIXEL_VALUES: &str = "pixel_values";
/// Input: `(row, column)` of each patch `[num_patches, 2]` i64, in `pixel_values` order
/// (`preprocess::vision_position_ids`).
pub const POSITION_IDS: &str = "vision_position_ids";
/// Input: merged-token indices in window order `[num_patches / 4]` i64
/// (`preprocess::window_index_sized(..).window_index`).
pub const WINDOW_INDEX: &str = "window_index";
/// Input: cumulative patch counts of the attention windows `[windows + 1]` i32, from 0
/// (`preprocess::window_index_sized(..).cu_window_seqlens`).
pub const CU_WINDOW_SEQLENS: &str = "cu_window_seqlens";
/// Input: cumulative patch counts of the images (full-attention segments) `[images + 1]` i32, from 0
/// (`preprocess::cu_seqlens`).
pub const CU_SEQLENS: &str = "cu_seqlens";
/// Output: merged image features `[num_patches / 4, hidden_size]`, in `pixel_values` order.
pub const IMAGE_FEATURES: &str = "image_features";

/// RMSNorm epsilon of the vision tower (fixed in transformers).
const NORM_EPS: f32 = 1e-6;
/// Rotary base of the vision tower (fixed in transformers).
const ROPE_THETA: f32 = 10_000.0;

/// Attention within the segments of cumulative boundaries `cu` as a padded batch: segment `k`'s
/// patches gathered into row `k` of `[K, Lmax]` (`Lmax` the longest segment), padding masked out of
/// the keys, results gathered back to patch order. Costs `K * Lmax^2` instead of `N^2`.
struct Segments {
    /// `[K, Lmax]` i64: patch index of each slot (0 in padding slots).
    gather: Value,
    /// `[1, 1, K, 1, Lmax]` f32: 0 for real keys, the most negative f32 for padding.
    key_bias: Value,
    /// The graph's activation dtype: scores are soft-maxed in f32 and cast back to it.
    dtype: DataType,
    /// `[N]` i64: slot of each patch in the flattened `[K * Lmax]` batch.
    unpad: Value,
}

impl Segments {
    fn new(b: &mut GraphBuilder, cu: &Value, patch_ids: &Value, dtype: DataType) -> Self {
        let cu = b.cast(cu, DataType::Int64);
        let (zero, one, last, end) =
            (b.const_i64s(&[0]), b.const_i64s(&[1]), b.const_i64s(&[-1]), b.const_i64s(&[i64::MAX]));
        let starts = b.op("Slice", &[&cu, &zero, &last], Vec::new()); // [K]
        let ends = b.op("Slice", &[&cu, &one, &end], Vec::new()); // [K]
        let lens = b.sub(&ends, &starts);
        let max_len = b.op("ReduceMax", &[&lens], vec![crate::onnx::attr::int("keepdims", 0)]);
        let (s0, s1) = (b.const_i64(0), b.const_i64(1));
        let slot = b.range(&s0, &max_len, &s1); // [Lmax]
        let slot_row = b.unsqueeze(&slot, &[0]); // [1, Lmax]
        let starts_col = b.unsqueeze(&starts, &[1]); // [K, 1]
        let lens_col = b.unsqueeze(&lens, &[1]);
        let linear = b.add(&starts_col, &slot_row); // [K, Lmax]
        let valid = b.op("Less", &[&slot_row, &lens_col], Vec::new()); // [K, Lmax]
        let zero_i = b.const_i64(0);
        let gather = b.where_(&valid, &linear, &zero_i);
        // The bias and the soft-max are f32 whatever the weights' dtype (transformers soft-maxes
        // fp16 attention in f32 too): in f16, a masked score would round to -inf.
        let zero_f = b.const_float(0.0, DataType::Float);
        let min = b.const_float(f32::MIN, DataType::Float);
        let bias = b.where_(&valid, &zero_f, &min);
        let key_bias = b.unsqueeze(&bias, &[0, 1, 3]); // [1, 1, K, 1, Lmax]
        // Segment of each patch: how many segment ends it is at or past.
        let rows = b.unsqueeze(patch_ids, &[1]);
        let cols = b.unsqueeze(&ends, &[0]);
        let past = b.op("GreaterOrEqual", &[&rows, &cols], Vec::new()); // [N, K]
        let past = b.cast(&past, DataType::Int64);
        let segment = b.reduce_sum(&past, &[1], false); // [N]
        let seg_start = b.gather(&starts, &segment, 0);
        let offset = b.sub(patch_ids, &seg_start);
        let base = b.mul(&segment, &max_len);
        let unpad = b.add(&base, &offset);
        Self { gather, key_bias, unpad, dtype }
    }

    /// Attention of `q`, `k`, `v` `[1, heads, N, hd]` (q already scaled) within the segments.
    fn attend(&self, b: &mut GraphBuilder, q: &Value, k: &Value, v: &Value, heads: i64, hd: i64) -> Value {
        let qg = b.gather(q, &self.gather, 2); // [1, heads, K, Lmax, hd]
        let kg = b.gather(k, &self.gather, 2);
        let vg = b.gather(v, &self.gather, 2);
        let kt = b.transpose(&kg, &[0, 1, 2, 4, 3]);
        let scores = b.matmul(&qg, &kt); // [1, heads, K, Lmax, Lmax]
        let scores = b.cast_if(&scores, self.dtype, DataType::Float);
        let scores = b.add(&scores, &self.key_bias);
        let probs = b.softmax(&scores, -1);
        let probs = b.cast_if(&probs, DataType::Float, self.dtype);
        let out = b.matmul(&probs, &vg); // [1, heads, K, Lmax, hd]
        let out = b.reshape(&out, &[1, heads, -1, hd]);
        b.gather(&out, &self.unpad, 2) // [1, heads, N, hd]
    }
}

/// The frequency matrix `[2, head_dim]` turning `(row, column)` into rotary angles: angle `j` is
/// `row * inv_freq[j]` for `j < head_dim / 4`, `column * inv_freq[j - head_dim / 4]` up to
/// `head_dim / 2`, and the first half repeated (transformers' `cat(freqs, freqs)`). Each angle is one
/// product plus exact zeros, so a `MatMul` reproduces the reference bit for bit.
fn rotary_matrix(head_dim: usize) -> Vec<f32> {
    let quarter = head_dim / 4;
    let half = head_dim / 2;
    // In f32 as transformers computes it (`1 / theta ** (arange(0, dim, 2) / dim)`).
    let inv: Vec<f32> = (0..quarter).map(|i| 1.0 / ROPE_THETA.powf((2 * i) as f32 / half as f32)).collect();
    let mut m = vec![0.0f32; 2 * head_dim];
    for j in 0..head_dim {
        let jj = j % half;
        let (row, f) = if jj < quarter { (0, inv[jj]) } else { (1, inv[jj - quarter]) };
        m[row * head_dim + j] = f;
    }
    m
}

/// Builds the vision encoder. fp16 computes in f16 (rotary angles in f32); other precisions in f32.
/// `pixel_values` is f32 and `image_features` has the precision's float type.
///
/// # Errors
/// Checkpoint errors naming a missing or misshapen tensor; [`Error::Graph`] for an unsupported
/// configuration.
pub fn build(ck: &Checkpoint, precision: Precision) -> Result<Model> {
    let cfg = &ck.config().vision;
    let dtype = match precision {
        Precision::Fp16 => DataType::Float16,
        Precision::Fp32 | Precision::Int4 => DataType::Float,
    };
    let fmt = WeightFormat::Float(dtype);
    let h = positive(cfg.hidden_size, "vision hidden_size")?;
    let heads = positive(cfg.num_heads, "vision num_heads")?;
    let hd = h / heads;
    let inter = positive(cfg.intermediate_size, "vision intermediate_size")?;
    let out_dim = positive(cfg.out_hidden_size, "vision out_hidden_size")?;
    let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
    let patch_dim = cfg.patch_dim();
    if unit != 4 || hd % 4 != 0 {
        return Err(Error::Graph(format!("unsupported vision merge unit {unit} / head_dim {hd}")));
    }

    let mut b = GraphBuilder::new("vision_encoder");
    let n: Dim = "num_patches".into();
    let m: Dim = "num_merged".into();
    let pixel_values = b.input(PIXEL_VALUES, DataType::Float, &[n.clone(), patch_dim.into()])?;
    let positions = b.input(POSITION_IDS, DataType::Int64, &[n, 2.into()])?;
    let window_index = b.input(WINDOW_INDEX, DataType::Int64, std::slice::from_ref(&m))?;
    let cu_window = b.input(CU_WINDOW_SEQLENS, DataType::Int32, &["num_windows_plus_1".into()])?;
    let cu_full = b.input(CU_SEQLENS, DataType::Int32, &["num_images_plus_1".into()])?;

    // Patch embedding: Conv3d with stride = kernel is a matmul with the flattened kernel.
    b.set_scope("/visual/patch_embed");
    let conv = ck.tensor_f32(
        "visual.patch_embed.proj.weight",
        &[h, 3, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size],
    )?;
    let wpe = crate::graphs::transpose(&conv, h as usize, patch_dim as usize);
    let wpe =
        crate::graphs::float_init(&mut b, "visual.patch_embed.proj.weight", &[patch_dim, h], &wpe, dtype)?;
    let px = b.cast_if(&pixel_values, DataType::Float, dtype);
    let x = b.matmul(&px, &wpe);

    // Window order: merged tokens (groups of 4 patches) permuted by window_index.
    b.set_scope("/visual/window");
    let grouped = b.reshape(&x, &[-1, unit, h]);
    let grouped = b.gather(&grouped, &window_index, 0);
    let x = b.reshape(&grouped, &[-1, h]);
    let pos = b.reshape(&positions, &[-1, unit, 2]);
    let pos = b.gather(&pos, &window_index, 0);
    let pos = b.reshape(&pos, &[-1, 2]);

    // 2D rotary embedding, shared by all blocks: cos and sign-folded sin [N, head_dim].
    b.set_scope("/visual/rotary");
    let pos_f = b.cast(&pos, DataType::Float);
    let freq_m = b.const_floats(&[2, hd], &rotary_matrix(hd as usize), DataType::Float)?;
    let angles = b.matmul(&pos_f, &freq_m);
    let cos = b.unary("Cos", &angles);
    let sin = b.unary("Sin", &angles);
    let sign: Vec<f32> = (0..hd).map(|j| if j < hd / 2 { -1.0 } else { 1.0 }).collect();
    let sign = b.const_floats(&[hd], &sign, DataType::Float)?;
    let sin = b.mul(&sin, &sign);
    let cos = b.cast_if(&cos, DataType::Float, dtype);
    let sin = b.cast_if(&sin, DataType::Float, dtype);
    // rotate_half(x) * sin == swap_halves(x) * (sign * sin)
    let swap: Vec<i64> = (hd / 2..hd).chain(0..hd / 2).collect();
    let swap = b.const_i64s(&swap);

    // Segments of the windowed and of the full-attention blocks, as padded batches.
    b.set_scope("/visual/segments");
    let num = b.dim(&pixel_values, 0);
    let zero = b.const_i64(0);
    let one = b.const_i64(1);
    let patch_ids = b.range(&zero, &num, &one);
    let windows = Segments::new(&mut b, &cu_window, &patch_ids, dtype);
    let images = Segments::new(&mut b, &cu_full, &patch_ids, dtype);
    let scale = b.const_float(1.0 / (hd as f32).sqrt(), dtype);

    let mut residual_and_skip: Option<(Value, Value)> = None;
    for i in 0..cfg.depth {
        let p = format!("visual.blocks.{i}");
        b.set_scope(&format!("/visual/blocks.{i}"));
        let norm1 = param(&mut b, ck, &format!("{p}.norm1.weight"), &[h], dtype)?;
        let norm2 = param(&mut b, ck, &format!("{p}.norm2.weight"), &[h], dtype)?;
        let qkv_w = Linear::load(
            &mut b,
            ck,
            &format!("{p}.attn.qkv"),
            &[Part { name: &format!("{p}.attn.qkv"), out: 3 * h }],
            h,
            true,
            fmt,
        )?;
        let proj = Linear::load(
            &mut b,
            ck,
            &format!("{p}.attn.proj"),
            &[Part { name: &format!("{p}.attn.proj"), out: h }],
            h,
            true,
            fmt,
        )?;
        let gate = format!("{p}.mlp.gate_proj");
        let up = format!("{p}.mlp.up_proj");
        let gate_up = Linear::load(
            &mut b,
            ck,
            &format!("{p}.mlp.gate_up_proj"),
            &[Part { name: &gate, out: inter }, Part { name: &up, out: inter }],
            h,
            true,
            fmt,
        )?;
        let down = Linear::load(
            &mut b,
            ck,
            &format!("{p}.mlp.down_proj"),
            &[Part { name: &format!("{p}.mlp.down_proj"), out: h }],
            inter,
            true,
            fmt,
        )?;

        let (y, residual) = match residual_and_skip.take() {
            None => (b.rms_norm(&x, &norm1, NORM_EPS, dtype), x.clone()),
            Some((res, skip)) => b.skip_rms_norm(&res, &skip, &norm1, NORM_EPS),
        };
        // Attention within segments.
        let qkv = qkv_w.apply(&mut b, &y)?;
        let qkv = b.reshape(&qkv, &[-1, 3, heads, hd]);
        let qkv = b.transpose(&qkv, &[1, 2, 0, 3]); // [3, heads, N, hd]
        let parts = b.split(&qkv, 0, &[2, 1]);
        let (qk, v) = (&parts[0], &parts[1]);
        let swapped = b.gather(qk, &swap, 3);
        let rot_a = b.mul(qk, &cos);
        let rot_b = b.mul(&swapped, &sin);
        let qk = b.add(&rot_a, &rot_b);
        let qk = b.split(&qk, 0, &[1, 1]);
        let q = b.mul(&qk[0], &scale);
        let full = cfg.fullatt_block_indexes.contains(&i);
        let segments = if full { &images } else { &windows };
        let attn = segments.attend(&mut b, &q, &qk[1], v, heads, hd); // [1, heads, N, hd]
        let attn = b.transpose(&attn, &[0, 2, 1, 3]);
        let attn = b.reshape(&attn, &[-1, h]);
        let attn = proj.apply(&mut b, &attn)?;
        let (y, residual) = b.skip_rms_norm(&residual, &attn, &norm2, NORM_EPS);
        // SwiGLU MLP with biases.
        let gu = gate_up.apply(&mut b, &y)?;
        let gu = b.split(&gu, -1, &[inter, inter]);
        let g = b.silu(&gu[0]);
        let act = b.mul(&g, &gu[1]);
        let mlp = down.apply(&mut b, &act)?;
        residual_and_skip = Some((residual, mlp));
    }

    // Merger: RMSNorm, 2x2 patches -> one token, Linear, GELU, Linear.
    b.set_scope("/visual/merger");
    let ln_q = param(&mut b, ck, "visual.merger.ln_q.weight", &[h], dtype)?;
    let y = match residual_and_skip {
        None => b.rms_norm(&x, &ln_q, NORM_EPS, dtype),
        Some((res, skip)) => b.skip_rms_norm(&res, &skip, &ln_q, NORM_EPS).0,
    };
    let merged = b.reshape(&y, &[-1, unit * h]);
    let fc1 = Linear::load(
        &mut b,
        ck,
        "visual.merger.mlp.0",
        &[Part { name: "visual.merger.mlp.0", out: unit * h }],
        unit * h,
        true,
        fmt,
    )?;
    let fc2 = Linear::load(
        &mut b,
        ck,
        "visual.merger.mlp.2",
        &[Part { name: "visual.merger.mlp.2", out: out_dim }],
        unit * h,
        true,
        fmt,
    )?;
    let z = fc1.apply(&mut b, &merged)?;
    let z = b.op("Gelu", &[&z], vec![crate::onnx::attr::string("approximate", "none")]);
    let mut z = fc2.apply(&mut b, &z)?;
    if !cfg.abs_position_periods.is_empty() {
        z = abs_position(&mut b, ck, cfg, &pos, &z, dtype)?;
    }
    // Back to pixel_values order: row window_index[i] of the output is row i of z.
    let idx = b.unsqueeze(&window_index, &[1]);
    let out = b.op_named("ScatterND", "", &[&z, &idx, &z], &[IMAGE_FEATURES], Vec::new())?;
    let out = out.into_iter().next().ok_or_else(|| Error::Graph("ScatterND has no output".into()))?;
    b.output(&out, dtype, &[m, out_dim.into()])?;
    Ok(b.finish(
        "Qwen2.5-VL vision encoder exported by monovlm-export; inputs from monovlm_runtime::preprocess",
    ))
}

/// Our absolute position code (`VisionConfig::abs_position_periods`, reference
/// `model_config::abs_position_code`) projected and added to the merger's output `z`
/// `[merged, out_hidden]`, both in window order; `pos` `[patches, 2]` holds the patches' (row,
/// column) in window order, so a merged token's position is its first patch's over the merge size.
fn abs_position(
    b: &mut GraphBuilder,
    ck: &Checkpoint,
    cfg: &VisionConfig,
    pos: &Value,
    z: &Value,
    dtype: DataType,
) -> Result<Value> {
    b.set_scope("/visual/merger/abs_position");
    let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
    let periods = &cfg.abs_position_periods;
    let n = periods.len();
    let code_len = 4 * n as i64;
    let grouped = b.reshape(pos, &[-1, unit, 2]);
    let first = b.const_i64(0);
    let first = b.gather(&grouped, &first, 1); // [merged, 2]
    let first = b.cast(&first, DataType::Float);
    // [2, 2n]: row -> the first n angles, column -> the last n, each over the merge size.
    let mut omega = vec![0.0f32; 2 * 2 * n];
    for (i, w) in abs_position_frequencies(periods).iter().enumerate() {
        let w = (w / cfg.spatial_merge_size as f64) as f32;
        omega[i] = w;
        omega[2 * n + n + i] = w;
    }
    let omega = b.const_floats(&[2, 2 * n as i64], &omega, DataType::Float)?;
    let angles = b.matmul(&first, &omega);
    let sin = b.unary("Sin", &angles);
    let cos = b.unary("Cos", &angles);
    let code = b.concat(&[&sin, &cos], -1); // [merged, 4n]
    let code = b.cast_if(&code, DataType::Float, dtype);
    let out_dim = cfg.out_hidden_size;
    let w = ck.tensor_f32(ABS_POSITION_WEIGHT, &[out_dim, code_len])?;
    let w_t = crate::graphs::transpose(&w, out_dim as usize, code_len as usize);
    let w_t = crate::graphs::float_init(b, ABS_POSITION_WEIGHT, &[code_len, out_dim], &w_t, dtype)?;
    let shift = b.matmul(&code, &w_t);
    Ok(b.add(z, &shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_matrix_puts_rows_then_columns_then_repeats() {
        let m = rotary_matrix(8); // quarter = 2
        let (r, c) = (&m[..8], &m[8..]);
        assert_eq!(r[0], 1.0);
        assert_eq!(c[2], 1.0);
        assert_eq!(r[4], 1.0);
        assert_eq!(c[6], 1.0);
        assert!((r[1] - 0.01).abs() < 1e-7, "{}", r[1]); // 10000^(-2/4)
        assert_eq!(r[2], 0.0);
        assert_eq!(c[0], 0.0);
    }
}
