//! # monovlm-runtime — running MonoVLM on the vehicle
//!
//! Owns what runs on the vehicle computer: the prompt/answer protocol shared with the trainer
//! ([`protocol`]), loading ONNX Runtime ([`ortlib`]), image preprocessing identical to the
//! Qwen2.5-VL processor and the vision encoder's index tensors ([`preprocess`], shared with the
//! trainer), ONNX Runtime sessions on the CPU ([`session`]), and — as they land — the model
//! package, the execution-provider order (TensorRT -> CUDA -> CPU), the grounding API, frame sources
//! and the daemon. It never depends on libtorch.

mod error;
pub mod model_config;
pub mod ortlib;
pub mod preprocess;
pub mod protocol;
pub mod session;

pub use error::{Error, Result};
