//! # monovlm-exporter — checkpoint to ONNX model package
//!
//! Owns the conversion of a trainer checkpoint (a Hugging Face `Qwen2_5_VLForConditionalGeneration`
//! directory, DESIGN.md) into the model package the runtime loads: `vision_encoder.onnx`,
//! `embed_tokens.onnx` and `decoder_model_merged.onnx` built from ONNX Runtime's fused ops, in fp32,
//! fp16 and 4-bit variants, with parity checks against the trainer. It reads checkpoints from disk
//! and never links the trainer.
