//! Training: batches of prompt + answer sequences, the answer-only language-model loss, the
//! optimiser and schedule ([`optim`]), supervised fine-tuning ([`sft`]).

pub mod dense;
pub mod grounding;
pub mod optim;
pub mod pointer;
pub mod sft;

use tch::{Kind, Tensor};

use crate::model::{IGNORE_INDEX, Qwen25Vl};
use crate::{Error, Result};

/// One training sequence: prompt tokens (no loss) then target tokens (loss), with its images.
#[derive(Debug)]
pub struct Sequence {
    /// Prompt token ids (system, user turn with image pads, assistant header).
    pub prompt: Vec<i64>,
    /// Target token ids (the answer and `<|im_end|>`), supervised.
    pub target: Vec<i64>,
    /// Pixel rows of the images in the prompt, `[sum N_i, 1176]`.
    pub pixel_values: Option<Tensor>,
    /// Patch grids of the images, in order.
    pub grids: Vec<[usize; 3]>,
}

/// Right-padded sequences ready for a forward pass.
#[derive(Debug)]
pub struct Batch {
    /// `[B, L]` token ids, padded with `pad_id`.
    pub input_ids: Tensor,
    /// `[B, L]` next-token targets aligned with `input_ids` (`IGNORE_INDEX` on prompt and padding).
    pub labels: Tensor,
    /// `[3, B, L]` multimodal positions (0 on padding, which real tokens never attend to).
    pub position_ids: Tensor,
    /// `[sum N, 1176]` pixel rows of all images, row by row.
    pub pixel_values: Option<Tensor>,
    /// Patch grids of all images, row by row.
    pub grids: Vec<[usize; 3]>,
    /// The image features are computed once and used by this many consecutive rows (1 = each row
    /// has its own images; G = a GRPO group sharing one prompt image).
    pub image_repeat: i64,
}

impl Batch {
    /// Pads and stacks sequences.
    ///
    /// # Errors
    /// [`Error::ModelInput`] for an empty batch or a sequence whose image tokens and grids disagree.
    pub fn new(model: &Qwen25Vl, seqs: &[Sequence], pad_id: i64) -> Result<Self> {
        let len = seqs.iter().map(|s| s.prompt.len() + s.target.len()).max().unwrap_or(0);
        if len == 0 {
            return Err(Error::ModelInput("an empty batch".into()));
        }
        let b = seqs.len();
        let mut ids = vec![pad_id; b * len];
        let mut labels = vec![IGNORE_INDEX; b * len];
        let mut pos = vec![0i64; 3 * b * len];
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        for (r, s) in seqs.iter().enumerate() {
            let tokens: Vec<i64> = s.prompt.iter().chain(&s.target).copied().collect();
            ids[r * len..r * len + tokens.len()].copy_from_slice(&tokens);
            let start = r * len + s.prompt.len();
            labels[start..start + s.target.len()].copy_from_slice(&s.target);
            let (p, _) = model.position_ids(&tokens, &s.grids)?;
            let p: Vec<i64> = Vec::try_from(p.reshape([-1]))?;
            for row in 0..3 {
                let dst = (row * b + r) * len;
                pos[dst..dst + tokens.len()]
                    .copy_from_slice(&p[row * tokens.len()..(row + 1) * tokens.len()]);
            }
            if let Some(pv) = &s.pixel_values {
                pixels.push(pv.shallow_clone());
            }
            grids.extend_from_slice(&s.grids);
        }
        let (b, l) = (b as i64, len as i64);
        Ok(Self {
            input_ids: Tensor::from_slice(&ids).reshape([b, l]),
            labels: Tensor::from_slice(&labels).reshape([b, l]),
            position_ids: Tensor::from_slice(&pos).reshape([3, b, l]),
            pixel_values: if pixels.is_empty() { None } else { Some(Tensor::cat(&pixels, 0)) },
            grids,
            image_repeat: 1,
        })
    }

    /// Sequences (given without images) that all start with the same one-image prompt: the image
    /// is encoded once and its features used by every row.
    ///
    /// # Errors
    /// As [`Batch::new`].
    pub fn with_shared_image(
        model: &Qwen25Vl,
        seqs: &[Sequence],
        pad_id: i64,
        pixel_values: Tensor,
        grid: [usize; 3],
    ) -> Result<Self> {
        let with_grid: Vec<Sequence> = seqs
            .iter()
            .map(|s| Sequence {
                prompt: s.prompt.clone(),
                target: s.target.clone(),
                pixel_values: None,
                grids: vec![grid],
            })
            .collect();
        let mut batch = Self::new(model, &with_grid, pad_id)?;
        batch.pixel_values = Some(pixel_values);
        batch.grids = vec![grid];
        batch.image_repeat = seqs.len() as i64;
        Ok(batch)
    }

    /// Supervised tokens.
    pub fn target_tokens(&self) -> i64 {
        self.labels.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[])
    }
}

/// Final hidden states `[B, L, D]` of a batch (vision tower, embedding scatter, decoder).
///
/// # Errors
/// As [`Qwen25Vl::embed`] and [`Qwen25Vl::image_features`].
pub fn batch_hidden(model: &Qwen25Vl, batch: &Batch) -> Result<Tensor> {
    let features = match &batch.pixel_values {
        Some(p) if batch.image_repeat > 1 => {
            Some(model.image_features(p, &batch.grids)?.repeat([batch.image_repeat, 1]))
        }
        Some(p) => Some(model.image_features(p, &batch.grids)?),
        None => None,
    };
    let embeds = model.embed(&batch.input_ids, features.as_ref())?;
    Ok(model.decode(&embeds, &batch.position_ids, None, None))
}

/// Mean next-token cross-entropy over the supervised tokens (transformers' shifted causal-LM loss:
/// position `t` predicts `labels[t + 1]`). Logits are computed only at supervised positions.
///
/// # Errors
/// [`Error::ModelInput`] when nothing is supervised; as [`batch_hidden`].
pub fn causal_lm_loss(model: &Qwen25Vl, batch: &Batch) -> Result<Tensor> {
    causal_lm_loss_from_hidden(model, batch, &batch_hidden(model, batch)?)
}

/// [`causal_lm_loss`] from the batch's final hidden states `[B, L, D]`.
///
/// # Errors
/// [`Error::ModelInput`] when nothing is supervised.
pub fn causal_lm_loss_from_hidden(model: &Qwen25Vl, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
    let (b, l) = (hidden.size()[0], hidden.size()[1]);
    let d = hidden.size()[2];
    let h = hidden.narrow(1, 0, l - 1).reshape([b * (l - 1), d]);
    let targets = batch.labels.narrow(1, 1, l - 1).reshape([-1]).to_device(hidden.device());
    let rows = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
    if rows.size()[0] == 0 {
        return Err(Error::ModelInput("no supervised tokens in the batch".into()));
    }
    let logits = model.logits(&h.index_select(0, &rows)).to_kind(Kind::Float);
    Ok(logits.cross_entropy_for_logits(&targets.index_select(0, &rows)))
}

/// Log-probabilities (under `logits / temperature`) of the supervised tokens of a batch, in
/// row-major order of their positions, and the entropy of each of those distributions: what the
/// GRPO loss needs. Logits are computed only at those positions.
///
/// # Errors
/// [`Error::ModelInput`] when nothing is supervised; as [`batch_hidden`].
pub fn target_logprobs(model: &Qwen25Vl, batch: &Batch, temperature: f64) -> Result<(Tensor, Tensor)> {
    let hidden = batch_hidden(model, batch)?;
    let (b, l, d) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
    let h = hidden.narrow(1, 0, l - 1).reshape([b * (l - 1), d]);
    let targets = batch.labels.narrow(1, 1, l - 1).reshape([-1]).to_device(hidden.device());
    let rows = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
    if rows.size()[0] == 0 {
        return Err(Error::ModelInput("no supervised tokens in the batch".into()));
    }
    let logits = model.answer_logits(&h.index_select(0, &rows)) / temperature;
    let logp_all = logits.log_softmax(-1, Kind::Float);
    let taken = logp_all.gather(1, &targets.index_select(0, &rows).unsqueeze(1), false).squeeze_dim(1);
    // Banned ids have logp = -inf and p = 0: their 0 * -inf terms count as 0.
    let entropy = -(logp_all.exp() * &logp_all).nan_to_num(0.0, None::<f64>, None::<f64>).sum_dim_intlist(
        -1,
        false,
        Kind::Float,
    );
    Ok((taken, entropy))
}
