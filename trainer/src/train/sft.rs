//! Supervised fine-tuning.
