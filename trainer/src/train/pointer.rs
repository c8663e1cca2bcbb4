//! The referring-pointer loss, an auxiliary SFT objective for from-scratch models: at a middle
//! decoder layer, the image tokens that show the described object are pointed out among all the
//! image tokens of their prompt.
//!
//! A linear score per image token (on the RMS-normalised residual stream after layer
//! [`pointer_layer`]) is soft-maxed over the row's image tokens; the loss is the cross-entropy
//! against the uniform distribution over the object's tokens ([`super::dense::object_tokens`]).
//! With the image after the query in the prompt, each image token can attend to the description,
//! so this teaches the lower layers to mark the referred object where the answer's attention in
//! the upper layers can find it — the two-step circuit that plain SFT takes thousands of steps to
//! discover on its own (docs/results.md). The head is discarded: checkpoints do not change shape.

use tch::{Kind, Tensor};

use super::{Batch, causal_lm_loss_from_hidden};
use crate::model::Qwen25Vl;
use crate::model::weights::{Init, ParamStore, fresh};
use crate::{Error, Result};

/// The decoder layer whose output residual stream the pointer reads: the middle of the stack
/// (`layers / 2 - 1`, at least 0), so the layers above it can use what it marks.
pub fn pointer_layer(layers: usize) -> usize {
    (layers / 2).max(1) - 1
}

/// The pointer's linear score.
#[derive(Debug)]
pub struct PointerHead {
    /// The head's parameters (for its optimiser).
    pub store: ParamStore,
    weight: Tensor,
    layer: usize,
    image_token_id: i64,
}

impl PointerHead {
    /// A fresh head for `model` (seeded by libtorch's generator).
    ///
    /// # Errors
    /// [`Error::Torch`] for device errors.
    pub fn new(model: &Qwen25Vl) -> Result<Self> {
        let cfg = model.config();
        let d = cfg.text.hidden_size;
        let mut store = ParamStore::default();
        let w = fresh(&[d], Init::Normal(1.0 / (d as f64).sqrt()), Kind::Float, model.device())?;
        let weight = store.push("pointer.weight".into(), w, true);
        let layer = pointer_layer(usize::try_from(cfg.text.num_hidden_layers).unwrap_or(1));
        Ok(Self { store, weight, layer, image_token_id: cfg.image_token_id })
    }

    /// The mean pointer loss of a batch from the decoder's residuals, `referred[r]` being row r's
    /// object tokens (indices among its image tokens, row-major). Rows without image tokens or
    /// referred tokens are skipped.
    ///
    /// # Errors
    /// [`Error::ModelInput`] when no row can be scored or an index is out of range.
    pub fn loss(&self, residuals: &[Tensor], input_ids: &Tensor, referred: &[Vec<usize>]) -> Result<Tensor> {
        let x = residuals
            .get(self.layer)
            .ok_or_else(|| Error::ModelInput(format!("no residual stream after layer {}", self.layer)))?
            .to_kind(Kind::Float);
        let normed = &x * (x.square().mean_dim(-1, true, Kind::Float) + 1e-6).rsqrt();
        let scores = normed.matmul(&self.weight); // [B, L]
        let ids = input_ids.to_device(scores.device());
        let mut losses = Vec::new();
        for (r, tokens) in referred.iter().enumerate() {
            let positions = ids.get(r as i64).eq(self.image_token_id).nonzero().squeeze_dim(1);
            let n = positions.size()[0];
            if n == 0 || tokens.is_empty() {
                continue;
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as i64 >= n) {
                return Err(Error::ModelInput(format!(
                    "referred token {bad} of a row with {n} image tokens"
                )));
            }
            let row = scores.get(r as i64).index_select(0, &positions);
            let picked: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
            let picked = Tensor::from_slice(&picked).to_device(row.device());
            let all = row.logsumexp([0i64].as_slice(), false);
            losses.push(all - row.index_select(0, &picked).logsumexp([0i64].as_slice(), false));
        }
        if losses.is_empty() {
            return Err(Error::ModelInput("no row of the batch has referred image tokens".into()));
        }
        Ok(Tensor::stack(&losses, 0).mean(Kind::Float))
    }
}

/// The answer loss and the pointer loss of one batch, from one forward pass.
///
/// # Errors
/// As [`causal_lm_loss_from_hidden`] and [`PointerHead::loss`].
pub fn losses_with_pointer(
    model: &Qwen25Vl,
    batch: &Batch,
    head: &PointerHead,
    referred: &[Vec<usize>],
) -> Result<(Tensor, Tensor)> {
    if batch.image_repeat != 1 {
        return Err(Error::ModelInput("the pointer loss needs one image per row".into()));
    }
    let features = match &batch.pixel_values {
        Some(p) => Some(model.image_features(p, &batch.grids)?),
        None => None,
    };
    let embeds = model.embed(&batch.input_ids, features.as_ref())?;
    let (hidden, residuals) = model.decode_residuals(&embeds, &batch.position_ids);
    let answer = causal_lm_loss_from_hidden(model, batch, &hidden)?;
    let pointer = head.loss(&residuals, &batch.input_ids, referred)?;
    Ok((answer, pointer))
}
