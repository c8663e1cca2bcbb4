//! # monovlm-runtime — running MonoVLM on the vehicle
//!
//! Owns what runs on the vehicle computer: the prompt/answer protocol shared with the trainer
//! ([`protocol`]), loading ONNX Runtime ([`ortlib`]), image preprocessing identical to the
//! Qwen2.5-VL processor and the vision encoder's index tensors ([`preprocess`], shared with the
//! trainer), model packages ([`package`]), ONNX Runtime sessions in the execution-provider order
//! TensorRT -> CUDA -> CPU ([`session`]), the grounding API ([`grounder`]) and its token choice, greedy or sampled consensus
//! ([`decoding`]), frame sources
//! ([`source`], V4L2 capture in [`camera`], camera pixel formats in [`pixfmt`]), the camera
//! daemon's HTTP/WebSocket API ([`serve`]), frames with the boxes drawn ([`draw`]) and the
//! `monovlm-edge` binary. It never depends on libtorch.

pub mod camera;
pub mod decoding;
pub mod draw;
mod error;
pub mod grounder;
pub mod model_config;
pub mod ortlib;
pub mod package;
pub mod pixfmt;
pub mod preprocess;
pub mod protocol;
pub mod serve;
pub mod session;
pub mod source;

pub use error::{Error, Result};
