//! # monovlm-trainer — teaching a VLM to ground in 3D
//!
//! Owns the datasets (Mono3DRefer and the synthetic driving-scene generator), the official metrics,
//! the Qwen2.5-VL model on libtorch (`tch`), SFT and the three-stage GRPO curriculum of MonoVLM
//! (2D IoU reward, then 3D-centre reward, then the compound 3D reward). It writes Hugging Face
//! checkpoints that the exporter reads; prompts and answer parsing come from `monovlm_runtime::protocol`.

pub mod bench;
pub mod checkpoint;
pub mod curriculum;
pub mod data;
mod error;
pub mod eval;
pub mod grpo;
pub mod model;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
