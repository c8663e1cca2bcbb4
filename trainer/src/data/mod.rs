//! Datasets: the Mono3DRefer layout (reader and writer) used by training and evaluation.

pub mod mono3drefer;
pub mod synth;
