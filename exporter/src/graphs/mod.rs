//! The three graphs of a model package, built from a [`Checkpoint`]: [`vision`] (patches -> image
//! features), [`embed`] (token ids -> embeddings) and [`decoder`] (embeddings + KV cache -> logits).
//! Their inputs and outputs are documented in `docs/model-package.md`; the names are constants here.

pub mod decoder;
pub mod embed;
pub mod vision;

use crate::checkpoint::Checkpoint;
use crate::onnx::{DataType, GraphBuilder, MS_DOMAIN, TensorData, Value, attr};
use crate::quant::{BITS, BLOCK_SIZE, quantize_q4};
use crate::{Error, Result};

/// Numeric format of a package's graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Weights and activations in f32.
    Fp32,
    /// Weights and activations in f16 (rotary angles and softmax masks are computed in f32 first).
    Fp16,
    /// The decoder's linear layers (attention, MLP, `lm_head`) as 4-bit `MatMulNBits` weights with
    /// f32 activations; vision encoder and embeddings in f32.
    Int4,
}

impl Precision {
    /// The float type of activations, weights other than 4-bit ones, and float graph inputs/outputs.
    pub fn float_type(self) -> DataType {
        match self {
            Self::Fp16 => DataType::Float16,
            Self::Fp32 | Self::Int4 => DataType::Float,
        }
    }

    /// File-name suffix of this variant (`decoder_model_merged{suffix}.onnx`), as transformers.js.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Fp32 => "",
            Self::Fp16 => "_fp16",
            Self::Int4 => "_q4",
        }
    }

    /// The name used on the command line and in `monovlm.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int4 => "int4",
        }
    }
}

/// A float initializer in `dtype` (f32 or f16) from f32 data.
pub(crate) fn float_init(
    b: &mut GraphBuilder,
    name: &str,
    dims: &[i64],
    data: &[f32],
    dtype: DataType,
) -> Result<Value> {
    let t = match dtype {
        DataType::Float16 => TensorData::f16_from_f32(dims, data)?,
        _ => TensorData::f32(dims, data)?,
    };
    b.initializer(name, t)
}

/// Reads a checkpoint tensor and adds it as an initializer under the same name.
pub(crate) fn param(
    b: &mut GraphBuilder,
    ck: &Checkpoint,
    name: &str,
    dims: &[i64],
    dtype: DataType,
) -> Result<Value> {
    let data = ck.tensor_f32(name, dims)?;
    float_init(b, name, dims, &data, dtype)
}

/// `data` `[rows, cols]` row-major -> `[cols, rows]` row-major.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// How a linear layer's weight is stored in the graph.
#[derive(Clone, Debug)]
enum LinearWeight {
    /// `[in, out]` float matrix for `MatMul`.
    Dense(Value),
    /// `MatMulNBits` operands.
    Q4 { packed: Value, scales: Value, k: i64, n: i64 },
}

/// A linear layer `y = x W^T + b` of the graph, possibly several Hugging Face layers fused along
/// the output features (q/k/v, gate/up).
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    weight: LinearWeight,
    bias: Option<Value>,
}

/// How a linear layer's weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightFormat {
    /// A float matrix (f32 or f16) for `MatMul`.
    Float(DataType),
    /// 4-bit blocks for `MatMulNBits`, f32 scales and bias.
    Q4,
}

/// One Hugging Face linear layer: its name prefix (`model.layers.0.self_attn.q_proj`) and output size.
pub(crate) struct Part<'a> {
    pub name: &'a str,
    pub out: i64,
}

impl Linear {
    /// Loads `{part}.weight` `[out, in]` (and `{part}.bias` when `bias`) of each part, concatenated
    /// along the outputs, as initializer `name`.
    pub(crate) fn load(
        b: &mut GraphBuilder,
        ck: &Checkpoint,
        name: &str,
        parts: &[Part<'_>],
        in_dim: i64,
        bias: bool,
        format: WeightFormat,
    ) -> Result<Self> {
        let mut w = Vec::new();
        let mut bs = Vec::new();
        for p in parts {
            w.extend(ck.tensor_f32(&format!("{}.weight", p.name), &[p.out, in_dim])?);
            if bias {
                bs.extend(ck.tensor_f32(&format!("{}.bias", p.name), &[p.out])?);
            }
        }
        let out: i64 = parts.iter().map(|p| p.out).sum();
        let (n, k) = (out as usize, in_dim as usize);
        let dtype = match format {
            WeightFormat::Float(t) => t,
            WeightFormat::Q4 => DataType::Float,
        };
        let weight = if format == WeightFormat::Q4 {
            let q = quantize_q4(&w, n, k);
            let blocks = q.blocks() as i64;
            let packed = b.initializer(
                &format!("{name}.weight_q4"),
                TensorData::u8(&[out, blocks, (BLOCK_SIZE * BITS / 8) as i64], q.packed)?,
            )?;
            let scales = b.initializer(
                &format!("{name}.weight_scales"),
                TensorData::f32(&[out * blocks], &q.scales)?,
            )?;
            LinearWeight::Q4 { packed, scales, k: in_dim, n: out }
        } else {
            LinearWeight::Dense(float_init(
                b,
                &format!("{name}.weight"),
                &[in_dim, out],
                &transpose(&w, n, k),
                dtype,
            )?)
        };
        let bias =
            if bias { Some(float_init(b, &format!("{name}.bias"), &[out], &bs, dtype)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// Applies the layer to `x [..., in]`.
    pub(crate) fn apply(&self, b: &mut GraphBuilder, x: &Value) -> Result<Value> {
        self.apply_named(b, x, None)
    }

    /// Applies the layer, naming its result `name` when given (a graph output).
    pub(crate) fn apply_named(&self, b: &mut GraphBuilder, x: &Value, name: Option<&str>) -> Result<Value> {
        let last_name = if self.bias.is_some() { None } else { name };
        let (op, domain, inputs, attrs) = match &self.weight {
            LinearWeight::Dense(w) => ("MatMul", "", vec![x, w], Vec::new()),
            LinearWeight::Q4 { packed, scales, k, n } => (
                "MatMulNBits",
                MS_DOMAIN,
                vec![x, packed, scales],
                vec![
                    attr::int("K", *k),
                    attr::int("N", *n),
                    attr::int("bits", BITS as i64),
                    attr::int("block_size", BLOCK_SIZE as i64),
                    // int8 activations per block on CPU: the fast path onnxruntime-genai uses for int4.
                    attr::int("accuracy_level", 4),
                ],
            ),
        };
        let y = match last_name {
            Some(n) => b.op_named(op, domain, &inputs, &[n], attrs)?,
            None => b.op_n(op, domain, &inputs, 1, attrs),
        };
        let y = y.into_iter().next().ok_or_else(|| Error::Graph(format!("{op} has no output")))?;
        match (&self.bias, name) {
            (Some(bias), Some(n)) => {
                let out = b.op_named("Add", "", &[&y, bias], &[n], Vec::new())?;
                out.into_iter().next().ok_or_else(|| Error::Graph("Add has no output".into()))
            }
            (Some(bias), None) => Ok(b.add(&y, bias)),
            (None, _) => Ok(y),
        }
    }
}

/// `i64` from a config value that must be positive (already validated by the config reader).
pub(crate) fn positive(v: i64, what: &str) -> Result<i64> {
    if v > 0 { Ok(v) } else { Err(Error::Graph(format!("{what} must be positive, got {v}"))) }
}
