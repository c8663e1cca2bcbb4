//! Architectures for models we train from scratch: the Qwen2.5-VL layout at small sizes, with the
//! special-token ids of a tokenizer trained by `crate::tokenizer`.

use monovlm_runtime::model_config::{Qwen25VlConfig, TextConfig, VisionConfig};
use monovlm_runtime::protocol::tokens;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::tokenizer::ENDOFTEXT;
use crate::{Error, Result};

/// The sizes that define a small Qwen2.5-VL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSize {
    /// Language model width.
    pub hidden: i64,
    /// Decoder layers.
    pub layers: i64,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads.
    pub kv_heads: i64,
    /// SwiGLU width.
    pub intermediate: i64,
    /// Vision tower width.
    pub vision_hidden: i64,
    /// Vision blocks.
    pub vision_depth: i64,
    /// Vision heads.
    pub vision_heads: i64,
    /// Vision SwiGLU width.
    pub vision_intermediate: i64,
    /// Vision blocks with full attention (the others attend within 112-pixel windows).
    pub vision_fullatt: Vec<i64>,
    /// `lm_head` shares the embedding table.
    pub tie_embeddings: bool,
}

impl ModelSize {
    /// About 0.4M parameters with a 600-token vocabulary: unit tests.
    pub fn tiny() -> Self {
        Self {
            hidden: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 192,
            vision_hidden: 64,
            vision_depth: 2,
            vision_heads: 2,
            vision_intermediate: 128,
            vision_fullatt: vec![1],
            tie_embeddings: true,
        }
    }

    /// About 3M parameters with a 2048-token vocabulary: the benchmark configuration
    /// (`scripts/reference/bench_qwen_torch.py` builds the same one in transformers).
    pub fn bench_3m() -> Self {
        Self {
            hidden: 256,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            intermediate: 512,
            vision_hidden: 64,
            vision_depth: 2,
            vision_heads: 2,
            vision_intermediate: 128,
            vision_fullatt: vec![1],
            tie_embeddings: true,
        }
    }

    /// About 6M parameters with a 2048-token vocabulary: the bundled nano model
    /// (`trainer/recipes/nano.toml`, `models/nano/`), sized so that SFT warm-up and the three GRPO
    /// stages train in about two hours on two CPU cores.
    pub fn nano() -> Self {
        Self {
            hidden: 256,
            layers: 6,
            heads: 4,
            kv_heads: 2,
            intermediate: 768,
            vision_hidden: 128,
            vision_depth: 4,
            vision_heads: 4,
            vision_intermediate: 256,
            vision_fullatt: vec![1, 3],
            tie_embeddings: true,
        }
    }

    /// A preset by name: `tiny`, `bench-3m`, `nano`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for another name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "bench-3m" => Ok(Self::bench_3m()),
            "nano" => Ok(Self::nano()),
            other => {
                Err(Error::ModelConfig(format!("unknown model preset {other:?} (tiny, bench-3m, nano)")))
            }
        }
    }

    /// The full configuration for vocabulary size `vocab` and the given special-token ids.
    pub fn config(&self, vocab: i64, ids: &SpecialIds) -> Qwen25VlConfig {
        let head_dim = self.hidden / self.heads;
        // mRoPE: a quarter of the frequencies for time, the rest split between rows and columns
        // (Qwen2.5-VL's 16/24/24 of 64).
        let half = head_dim / 2;
        let t = half / 4;
        let h = (half - t) / 2;
        Qwen25VlConfig {
            text: TextConfig {
                vocab_size: vocab,
                hidden_size: self.hidden,
                intermediate_size: self.intermediate,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                num_key_value_heads: self.kv_heads,
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                mrope_section: [t, h, half - t - h],
                max_position_embeddings: 4096,
                initializer_range: 0.02,
            },
            vision: VisionConfig {
                depth: self.vision_depth,
                hidden_size: self.vision_hidden,
                intermediate_size: self.vision_intermediate,
                num_heads: self.vision_heads,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: self.vision_fullatt.clone(),
                out_hidden_size: self.hidden,
                initializer_range: 0.02,
                tokens_per_second: 2,
                abs_position_periods: Vec::new(),
            },
            image_token_id: ids.image_pad,
            video_token_id: ids.video_pad,
            vision_start_token_id: ids.vision_start,
            vision_end_token_id: ids.vision_end,
            tie_word_embeddings: self.tie_embeddings,
            eos_token_ids: vec![ids.im_end],
            bos_token_id: None,
            pad_token_id: Some(ids.pad),
        }
    }
}

/// The ids of the special tokens the architecture and the protocol use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    /// `<|image_pad|>`.
    pub image_pad: i64,
    /// `<|video_pad|>`.
    pub video_pad: i64,
    /// `<|vision_start|>`.
    pub vision_start: i64,
    /// `<|vision_end|>`.
    pub vision_end: i64,
    /// `<|im_end|>` (end of a turn; generation stops there).
    pub im_end: i64,
    /// `<|endoftext|>` (padding).
    pub pad: i64,
}

impl SpecialIds {
    /// The ids in `tokenizer`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming a missing special token.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .map(i64::from)
                .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {t}")))
        };
        Ok(Self {
            image_pad: id(tokens::IMAGE_PAD)?,
            video_pad: id(crate::tokenizer::VIDEO_PAD)?,
            vision_start: id(tokens::VISION_START)?,
            vision_end: id(tokens::VISION_END)?,
            im_end: id(tokens::IM_END)?,
            pad: id(ENDOFTEXT)?,
        })
    }
}
