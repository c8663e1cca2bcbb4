//! # monovlm-exporter — checkpoint to ONNX model package
//!
//! Owns the conversion of a trainer checkpoint (a Hugging Face `Qwen2_5_VLForConditionalGeneration`
//! directory, DESIGN.md) into the model package the runtime loads: `vision_encoder.onnx`,
//! `embed_tokens.onnx` and `decoder_model_merged.onnx` built from ONNX Runtime's fused ops, in fp32,
//! fp16 and 4-bit variants, with parity checks against the trainer. It reads checkpoints from disk
//! and never links the trainer.
//!
//! - [`onnx`]: ONNX protobuf messages and a graph builder.
//! - [`checkpoint`]: config + safetensors reading with errors that name the tensor.
//! - [`graphs`]: the three graphs (and a decomposed decoder used as a benchmark baseline).
//! - [`package`]: writing a package directory atomically.
//! - [`validate`]: running a package with ONNX Runtime against reference outputs.
//! - [`synthetic`]: random checkpoints of any configuration (benchmarks, tests).

pub mod checkpoint;
mod error;
pub mod graphs;
pub mod onnx;
pub mod package;
pub mod quant;
pub mod synthetic;
pub mod validate;

pub use error::{Error, Result};
pub use graphs::Precision;
