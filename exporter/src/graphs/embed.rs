//! `embed_tokens.onnx`: token ids to embeddings (the decoder's `embed_tokens` table).

use crate::checkpoint::Checkpoint;
use crate::graphs::{Precision, float_init, positive};
use crate::onnx::{DataType, Dim, GraphBuilder, Model};
use crate::{Error, Result};

/// Input: `[batch, sequence_length]` i64 token ids.
pub const INPUT_IDS: &str = "input_ids";
/// Output: `[batch, sequence_length, hidden_size]` in the precision's float type (f32 for int4).
pub const INPUTS_EMBEDS: &str = "inputs_embeds";

/// Builds the embedding graph (`Gather` on the table).
///
/// # Errors
/// Checkpoint errors naming a missing or misshapen tensor.
pub fn build(ck: &Checkpoint, precision: Precision) -> Result<Model> {
    let t = &ck.config().text;
    let d = positive(t.hidden_size, "hidden_size")?;
    let vocab = positive(t.vocab_size, "vocab_size")?;
    let dtype = precision.float_type();
    let mut b = GraphBuilder::new("embed_tokens");
    let (batch, seq): (Dim, Dim) = ("batch".into(), "sequence_length".into());
    let ids = b.input(INPUT_IDS, DataType::Int64, &[batch.clone(), seq.clone()])?;
    b.set_scope("/model/embed_tokens");
    let name = "model.embed_tokens.weight";
    let table = ck.tensor_f32(name, &[vocab, d])?;
    let table = float_init(&mut b, name, &[vocab, d], &table, dtype)?;
    let out = b.op_named("Gather", "", &[&table, &ids], &[INPUTS_EMBEDS], Vec::new())?;
    let out = out.into_iter().next().ok_or_else(|| Error::Graph("Gather has no output".into()))?;
    b.output(&out, dtype, &[batch, seq, d.into()])?;
    Ok(b.finish("Qwen2.5-VL token embeddings exported by monovlm-export"))
}
