//! The vision tower (transformers' `Qwen2_5_VisionTransformerPretrainedModel`): patch embedding,
//! 2D rotary positions, blocks attending within windows or over whole images, and the 2x2 merger;
//! with our optional absolute position code on the merger's output
//! (`VisionConfig::abs_position_periods`).
//!
//! Index tensors (patch positions, window order, segment boundaries) come from
//! `monovlm_runtime::preprocess`, the one implementation the exported ONNX graph is fed from too.

use monovlm_runtime::preprocess;
use tch::{Device, Kind, Tensor};

use super::layers::{Linear, RmsNorm, apply_rotary, segment_attention};
use super::weights::{Builder, Init};
use crate::{Error, Result};
use monovlm_runtime::model_config::{ABS_POSITION_WEIGHT, VisionConfig, abs_position_frequencies};

const VISION_NORM_EPS: f64 = 1e-6;
const VISION_ROPE_THETA: f64 = 10_000.0;

#[derive(Debug)]
struct Block {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The vision tower.
#[derive(Debug)]
pub struct VisionTower {
    cfg: VisionConfig,
    /// Conv3d weight `[hidden, 3, 2, 14, 14]` seen as a `[hidden, 1176]` matrix (stride = kernel).
    patch_embed: Tensor,
    blocks: Vec<Block>,
    merger_norm: RmsNorm,
    merger_fc1: Linear,
    merger_fc2: Linear,
    inv_freq: Tensor,
    /// The absolute position code, when the config has one (`VisionConfig::abs_position_periods`);
    /// `None` in Qwen2.5-VL's layout.
    abs_position: Option<AbsPosition>,
}

/// Our absolute position code's parameters.
#[derive(Debug)]
struct AbsPosition {
    /// `[out_hidden, 4 * periods]`: the learned projection.
    proj: Tensor,
    /// `[periods]`: angular frequency of each period, radians per merged token.
    omega: Tensor,
}

/// Index tensors of one vision forward.
struct VisionIndex {
    /// `[N, 2]` patch (row, column), in window order.
    positions: Tensor,
    /// Merged-token order of the windows `[N/4]`.
    window_index: Tensor,
    /// Inverse permutation of `window_index`.
    reverse_index: Tensor,
    cu_window: Vec<i64>,
    cu_full: Vec<i64>,
}

impl VisionTower {
    pub(crate) fn new(b: &mut Builder, cfg: &VisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let patch_embed = b.weight(
            "visual.patch_embed.proj.weight",
            &[h, 3, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size],
            Init::Normal(std),
        )?;
        let mut blocks = Vec::with_capacity(cfg.depth as usize);
        for i in 0..cfg.depth {
            let p = format!("visual.blocks.{i}");
            let inter = cfg.intermediate_size;
            blocks.push(Block {
                norm1: RmsNorm::new(b, &format!("{p}.norm1"), h, VISION_NORM_EPS)?,
                norm2: RmsNorm::new(b, &format!("{p}.norm2"), h, VISION_NORM_EPS)?,
                qkv: Linear::new(b, &format!("{p}.attn.qkv"), h, 3 * h, true, std)?,
                proj: Linear::new(b, &format!("{p}.attn.proj"), h, h, true, std)?,
                gate: Linear::new(b, &format!("{p}.mlp.gate_proj"), h, inter, true, std)?,
                up: Linear::new(b, &format!("{p}.mlp.up_proj"), h, inter, true, std)?,
                down: Linear::new(b, &format!("{p}.mlp.down_proj"), inter, h, true, std)?,
            });
        }
        let merged = h * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger_norm = RmsNorm::new(b, "visual.merger.ln_q", h, VISION_NORM_EPS)?;
        let merger_fc1 = Linear::new(b, "visual.merger.mlp.0", merged, merged, true, std)?;
        let merger_fc2 = Linear::new(b, "visual.merger.mlp.2", merged, cfg.out_hidden_size, true, std)?;
        // Axial rotary: head_dim/4 frequencies shared by the row and column coordinates.
        let spatial = cfg.head_dim() / 2;
        let inv_freq: Vec<f32> = (0..spatial / 2)
            .map(|i| 1.0 / VISION_ROPE_THETA.powf((2 * i) as f64 / spatial as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(b.device);
        let periods = &cfg.abs_position_periods;
        let abs_position = if periods.is_empty() {
            None
        } else {
            let code_len = 4 * periods.len() as i64;
            let proj = b.weight(ABS_POSITION_WEIGHT, &[cfg.out_hidden_size, code_len], Init::Normal(std))?;
            let omega: Vec<f32> = abs_position_frequencies(periods).iter().map(|&w| w as f32).collect();
            Some(AbsPosition { proj, omega: Tensor::from_slice(&omega).to_device(b.device) })
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            blocks,
            merger_norm,
            merger_fc1,
            merger_fc2,
            inv_freq,
            abs_position,
        })
    }

    /// Linear layers, for LoRA and weight merging.
    pub(crate) fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| [&mut b.qkv, &mut b.proj, &mut b.gate, &mut b.up, &mut b.down])
            .chain([&mut self.merger_fc1, &mut self.merger_fc2])
    }

    fn index(&self, grids: &[[usize; 3]], device: Device) -> Result<VisionIndex> {
        let window_px =
            usize::try_from(self.cfg.window_size).map_err(|_| Error::ModelConfig("window_size".into()))?;
        let pos = preprocess::vision_position_ids(grids)?;
        let win = preprocess::window_index_sized(grids, window_px)?;
        let full = preprocess::cu_seqlens(grids)?;
        let n = pos.nrows() as i64;
        let pos = Tensor::from_slice(pos.as_slice().unwrap_or(&[])).reshape([n, 2]);
        let window_index = Tensor::from_slice(win.window_index.as_slice().unwrap_or(&[]));
        let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        // Patch order of the windows: each merged token's 4 patches stay together.
        let patch_order = (window_index.unsqueeze(1) * unit
            + Tensor::arange(unit, (Kind::Int64, Device::Cpu)).unsqueeze(0))
        .reshape([-1]);
        let positions = pos.index_select(0, &patch_order).to_device(device);
        let reverse_index = window_index.argsort(0, false).to_device(device);
        Ok(VisionIndex {
            positions,
            window_index: window_index.to_device(device),
            reverse_index,
            cu_window: win.cu_window_seqlens.iter().map(|&x| i64::from(x)).collect(),
            cu_full: full.iter().map(|&x| i64::from(x)).collect(),
        })
    }

    /// `pixel_values [N, 1176]` (rows of [`preprocess`]) of images with patch grids `grids` ->
    /// merged image features `[N/4, out_hidden]`, in the order of `pixel_values`' merge blocks.
    ///
    /// # Errors
    /// [`Error::ModelInput`] when the rows do not match the grids.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let size = pixel_values.size();
        if size != [n as i64, cfg.patch_dim()] {
            return Err(Error::ModelInput(format!(
                "pixel_values has shape {size:?}, the grids {grids:?} need [{n}, {}]",
                cfg.patch_dim()
            )));
        }
        let device = pixel_values.device();
        let idx = self.index(grids, device)?;
        let h = cfg.hidden_size;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let n = n as i64;
        let x = pixel_values.to_kind(self.patch_embed.kind()).matmul(&self.patch_embed.reshape([h, -1]).tr());
        // Window order.
        let mut x = x.reshape([n / unit, unit, h]).index_select(0, &idx.window_index).reshape([n, h]);
        let freqs = idx.positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // [N, 2, hd/4]
        let freqs = freqs.reshape([n, -1]); // rows then columns
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [N, 1, hd]
        let sin = freqs.sin();
        let (cos, sin) = (emb.cos(), Tensor::cat(&[sin.neg(), sin], -1).unsqueeze(1));
        let heads = cfg.num_heads;
        let hd = cfg.head_dim();
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let bounds =
                if cfg.fullatt_block_indexes.contains(&(i as i64)) { &idx.cu_full } else { &idx.cu_window };
            let qkv = blk.qkv.forward(&blk.norm1.forward(&x)).reshape([n, 3, heads, hd]);
            let kind = qkv.kind();
            let q = apply_rotary(&qkv.select(1, 0).to_kind(Kind::Float), &cos, &sin).to_kind(kind);
            let k = apply_rotary(&qkv.select(1, 1).to_kind(Kind::Float), &cos, &sin).to_kind(kind);
            let v = qkv.select(1, 2);
            let attn =
                segment_attention(&q.transpose(0, 1), &k.transpose(0, 1), &v.transpose(0, 1), bounds, scale);
            x = &x + blk.proj.forward(&attn.transpose(0, 1).reshape([n, h]));
            let y = blk.norm2.forward(&x);
            x = &x + blk.down.forward(&(blk.gate.forward(&y).silu() * blk.up.forward(&y)));
        }
        let merged = self.merger_norm.forward(&x).reshape([n / unit, unit * h]);
        let out = self.merger_fc2.forward(&self.merger_fc1.forward(&merged).gelu("none"));
        let out = match &self.abs_position {
            None => out,
            Some(code) => {
                // A merged token's (row, column): its first (top-left) patch's, over the merge size.
                let merged_pos = idx.positions.reshape([n / unit, unit, 2]).select(1, 0).to_kind(Kind::Float)
                    / cfg.spatial_merge_size as f64;
                let angles = (merged_pos.unsqueeze(-1) * &code.omega).reshape([n / unit, -1]); // rows, cols
                let values = Tensor::cat(&[angles.sin(), angles.cos()], -1).to_kind(out.kind());
                out + values.matmul(&code.proj.tr())
            }
        };
        Ok(out.index_select(0, &idx.reverse_index))
    }
}
