//! # monovlm-runtime — running MonoVLM on the vehicle
//!
//! Owns what runs on the vehicle computer: the prompt/answer protocol shared with the trainer
//! ([`protocol`]), loading ONNX Runtime ([`ortlib`]), and — as they land — the model package, the
//! execution-provider sessions (TensorRT -> CUDA -> CPU), preprocessing, the grounding API, frame
//! sources and the daemon. It never depends on libtorch.

mod error;
pub mod ortlib;
pub mod protocol;

pub use error::{Error, Result};
