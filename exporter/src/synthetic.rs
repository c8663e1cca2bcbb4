//! Random checkpoints of any Qwen2.5-VL configuration, in the hub layout the exporter reads
//! (`config.json` + `model.safetensors`): for benchmarks at sizes no fixture has, and for tests of
//! configurations the fixtures do not cover. Weights are N(0, initializer_range), norms 1, biases
//! N(0, 0.02): the Hugging Face initialisation, so activations stay in a realistic range.

use std::path::Path;

use monovlm_runtime::model_config::{ABS_POSITION_WEIGHT, Qwen25VlConfig, TextConfig, VisionConfig};
use safetensors::{Dtype, tensor::TensorView};

use crate::{Error, Result};

/// Standard deviation of random biases.
const BIAS_STD: f32 = 0.02;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Box-Muller.
    fn normal(&mut self, std: f32) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// The ~30M-parameter configuration of the decoder benchmarks (`docs/benchmarks.md`): text hidden 512,
/// 8 layers, 8 query / 2 key-value heads of 64, MLP 1408, vocabulary 8192, tied embeddings; vision
/// depth 4, hidden 256, 4 heads, MLP 512, full attention in blocks 1 and 3.
pub fn bench_config() -> Qwen25VlConfig {
    Qwen25VlConfig {
        text: TextConfig {
            vocab_size: 8192,
            hidden_size: 512,
            intermediate_size: 1408,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            mrope_section: [8, 12, 12],
            max_position_embeddings: 32768,
            initializer_range: 0.02,
        },
        vision: VisionConfig {
            depth: 4,
            hidden_size: 256,
            intermediate_size: 512,
            num_heads: 4,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            window_size: 112,
            fullatt_block_indexes: vec![1, 3],
            out_hidden_size: 512,
            initializer_range: 0.02,
            tokens_per_second: 2,
            abs_position_periods: Vec::new(),
        },
        image_token_id: 8186,
        video_token_id: 8187,
        vision_start_token_id: 8184,
        vision_end_token_id: 8185,
        tie_word_embeddings: true,
        eos_token_ids: vec![8189],
        bos_token_id: None,
        pad_token_id: Some(8190),
    }
}

/// Every tensor of a checkpoint of `cfg`: hub name and shape.
pub fn tensor_list(cfg: &Qwen25VlConfig) -> Vec<(String, Vec<i64>)> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut out: Vec<(String, Vec<i64>)> = Vec::new();
    let h = v.hidden_size;
    out.push((
        "visual.patch_embed.proj.weight".into(),
        vec![h, 3, v.temporal_patch_size, v.patch_size, v.patch_size],
    ));
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        out.push((format!("{p}.norm1.weight"), vec![h]));
        out.push((format!("{p}.norm2.weight"), vec![h]));
        out.push((format!("{p}.attn.qkv.weight"), vec![3 * h, h]));
        out.push((format!("{p}.attn.qkv.bias"), vec![3 * h]));
        out.push((format!("{p}.attn.proj.weight"), vec![h, h]));
        out.push((format!("{p}.attn.proj.bias"), vec![h]));
        for (name, o, i_) in [
            ("gate_proj", v.intermediate_size, h),
            ("up_proj", v.intermediate_size, h),
            ("down_proj", h, v.intermediate_size),
        ] {
            out.push((format!("{p}.mlp.{name}.weight"), vec![o, i_]));
            out.push((format!("{p}.mlp.{name}.bias"), vec![o]));
        }
    }
    let merged = h * v.spatial_merge_size * v.spatial_merge_size;
    out.push(("visual.merger.ln_q.weight".into(), vec![h]));
    out.push(("visual.merger.mlp.0.weight".into(), vec![merged, merged]));
    out.push(("visual.merger.mlp.0.bias".into(), vec![merged]));
    out.push(("visual.merger.mlp.2.weight".into(), vec![v.out_hidden_size, merged]));
    out.push(("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]));
    if !v.abs_position_periods.is_empty() {
        let code_len = 4 * v.abs_position_periods.len() as i64;
        out.push((ABS_POSITION_WEIGHT.into(), vec![v.out_hidden_size, code_len]));
    }
    let d = t.hidden_size;
    let (q, kv) = (t.num_attention_heads * t.head_dim(), t.num_key_value_heads * t.head_dim());
    out.push(("model.embed_tokens.weight".into(), vec![t.vocab_size, d]));
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        for (name, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            out.push((format!("{p}.self_attn.{name}.weight"), vec![o, d]));
            out.push((format!("{p}.self_attn.{name}.bias"), vec![o]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![t.intermediate_size, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![t.intermediate_size, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, t.intermediate_size]));
    }
    out.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![t.vocab_size, d]));
    }
    out
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32) with random weights from `seed`.
/// Returns the number of parameters.
///
/// # Errors
/// [`Error::Io`] when the files cannot be written.
pub fn write_random_checkpoint(dir: &Path, cfg: &Qwen25VlConfig, seed: u64) -> Result<u64> {
    let io = |e: std::io::Error| Error::Io { path: dir.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(io)?;
    let config = serde_json::to_string_pretty(&cfg.to_json("float32"))
        .map_err(|e| Error::Io { path: dir.join("config.json"), message: e.to_string() })?;
    std::fs::write(dir.join("config.json"), config).map_err(io)?;
    let mut rng = Rng(seed);
    let list = tensor_list(cfg);
    let mut buffers = Vec::with_capacity(list.len());
    let mut params = 0u64;
    for (name, shape) in &list {
        let n: usize = shape.iter().map(|&d| d.max(0) as usize).product();
        params += n as u64;
        let is_norm =
            ["norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight"].iter().any(|s| name.ends_with(s));
        let values: Vec<f32> = if is_norm {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.normal(BIAS_STD)).collect()
        } else {
            let std = if name.starts_with("visual.") {
                cfg.vision.initializer_range
            } else {
                cfg.text.initializer_range
            };
            (0..n).map(|_| rng.normal(std as f32)).collect()
        };
        buffers.push(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    let views = list
        .iter()
        .zip(&buffers)
        .map(|((name, shape), bytes)| {
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            TensorView::new(Dtype::F32, shape, bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Graph(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .map_err(|e| Error::Io { path: dir.join("model.safetensors"), message: e.to_string() })?;
    Ok(params)
}
