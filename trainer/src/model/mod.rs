//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) on libtorch: the same architecture and tensor
//! names as Hugging Face transformers, trainable, for a 7B hub checkpoint on GPUs and the tiny
//! models we train and test here alike.
//!
//! - `config.json`: `monovlm_runtime::model_config` (shared with the exporter and the runtime).
//! - [`weights`]: parameters by Hugging Face name; safetensors in and out.
//! - [`vision`], [`text`]: the two towers; [`generate`]: decoding with a KV cache.
//!
//! Inputs come from `monovlm_runtime::preprocess` (pixel rows, grids, index tensors) and
//! `monovlm_runtime::protocol` (prompts), turned into tensors here.

pub mod generate;
pub mod layers;
pub mod presets;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use monovlm_runtime::preprocess;
use tch::{Device, Kind, Tensor};

pub use layers::LoraConfig;
pub use monovlm_runtime::model_config::{Qwen25VlConfig, TextConfig, VisionConfig};
pub use text::KvCache;
use weights::{Builder, Init, ParamStore, Source};

use crate::{Error, Result};

/// Label value of positions without a loss (prompt, padding), as in transformers.
pub const IGNORE_INDEX: i64 = -100;

/// A Qwen2.5-VL model: vision tower, token embeddings, decoder, `lm_head`.
#[derive(Debug)]
pub struct Qwen25Vl {
    config: Qwen25VlConfig,
    vision: vision::VisionTower,
    text: text::TextModel,
    embed_tokens: Tensor,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    store: ParamStore,
    adapters_on: Arc<AtomicBool>,
    lora: Option<LoraConfig>,
    device: Device,
    kind: Kind,
}

/// Parses `cpu`, `cuda` or `cuda:N`, and checks a CUDA device exists.
///
/// # Errors
/// [`Error::Device`] for another string or a CUDA device libtorch does not see.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(Error::Device(name.to_owned())),
        },
    };
    if let Device::Cuda(n) = device
        && (!tch::Cuda::is_available() || n >= tch::Cuda::device_count().max(0) as usize)
    {
        return Err(Error::Device(name.to_owned()));
    }
    Ok(device)
}

impl Qwen25Vl {
    fn build(config: &Qwen25VlConfig, source: Source, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        let mut b = Builder::new(source, device, kind);
        let t = &config.text;
        let vision = vision::VisionTower::new(&mut b, &config.vision)?;
        let embed_tokens = b.weight(
            "model.embed_tokens.weight",
            &[t.vocab_size, t.hidden_size],
            Init::Normal(t.initializer_range),
        )?;
        let text = text::TextModel::new(&mut b, t)?;
        let lm_head = if config.tie_word_embeddings {
            b.discard("lm_head.weight");
            None
        } else {
            Some(b.weight(
                "lm_head.weight",
                &[t.vocab_size, t.hidden_size],
                Init::Normal(t.initializer_range),
            )?)
        };
        let store = b.finish()?;
        Ok(Self {
            config: config.clone(),
            vision,
            text,
            embed_tokens,
            lm_head,
            store,
            adapters_on: Arc::new(AtomicBool::new(true)),
            lora: None,
            device,
            kind,
        })
    }

    /// A model with fresh random weights (normal, std `initializer_range`; norms one; biases zero),
    /// drawn from libtorch's generator after `tch::manual_seed(seed)`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] for an invalid configuration, [`Error::Torch`] for device errors.
    pub fn random(config: &Qwen25VlConfig, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        tch::manual_seed(seed);
        Self::build(config, Source::Random, device, kind)
    }

    /// Loads a Hugging Face checkpoint directory (`config.json` + `model.safetensors` or shards),
    /// converting the weights to `kind` on `device`.
    ///
    /// # Errors
    /// [`Error::ModelConfig`], [`Error::MissingTensor`], [`Error::TensorShape`],
    /// [`Error::UnexpectedTensors`], [`Error::Safetensors`], [`Error::Io`]: each names the file or
    /// tensor at fault.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = Qwen25VlConfig::from_file(dir)?;
        let tensors = weights::read_tensors(&weights::checkpoint_files(dir)?)?;
        Self::build(&config, Source::Checkpoint(tensors), device, kind)
    }

    /// The configuration.
    pub fn config(&self) -> &Qwen25VlConfig {
        &self.config
    }

    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The parameters, to freeze or unfreeze some.
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.store
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The LoRA settings, when adapters are attached.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Freezes every weight and attaches LoRA adapters (trainable) to the linear layers whose last
    /// name component is in `cfg.target_modules`, in both towers.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] when adapters are already attached, the rank is not positive, or no
    /// layer matches the targets.
    pub fn attach_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        if self.lora.is_some() {
            return Err(Error::ModelConfig("LoRA adapters are already attached".into()));
        }
        if cfg.rank <= 0 {
            return Err(Error::ModelConfig(format!("LoRA rank {} must be positive", cfg.rank)));
        }
        self.store.set_trainable(|_| false);
        let mut b = Builder::new(Source::Random, self.device, self.kind);
        let mut attached = 0;
        let flag = Arc::clone(&self.adapters_on);
        for lin in self.vision.linears_mut().chain(self.text.linears_mut()) {
            let last = lin.name.rsplit('.').next().unwrap_or("");
            if cfg.target_modules.iter().any(|t| t == last) {
                lin.attach_lora(&mut b, cfg, &flag)?;
                attached += 1;
            }
        }
        if attached == 0 {
            return Err(Error::ModelConfig(format!(
                "no linear layer matches LoRA targets {:?}",
                cfg.target_modules
            )));
        }
        for p in b.finish()?.into_params() {
            let _ = self.store.push(p.name, p.tensor, true);
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// Turns LoRA adapters on or off (off = the base model: GRPO's reference policy, no second copy
    /// of the weights).
    pub fn set_adapters_enabled(&self, on: bool) {
        self.adapters_on.store(on, Ordering::Relaxed);
    }

    /// The weights to save: every base parameter under its Hugging Face name, LoRA updates merged.
    pub fn export_tensors(&mut self) -> Vec<(String, Tensor)> {
        let mut merged = std::collections::HashMap::new();
        for lin in self.vision.linears_mut().chain(self.text.linears_mut()) {
            if lin.lora.is_some() {
                merged.insert(format!("{}.weight", lin.name), lin.merged_weight());
            }
        }
        self.store
            .params()
            .iter()
            .filter(|p| !p.name.contains(".lora_"))
            .map(|p| {
                let t = merged.remove(&p.name).unwrap_or_else(|| p.tensor.detach());
                (p.name.clone(), t)
            })
            .collect()
    }

    /// Merged image features `[sum N_i / 4, D]` of `pixel_values [sum N_i, 1176]`.
    ///
    /// # Errors
    /// [`Error::ModelInput`] when rows and grids disagree.
    pub fn image_features(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(&pixel_values.to_device(self.device), grids)
    }

    /// Token embeddings `[B, S, D]` with the rows of `<|image_pad|>` tokens replaced, in row-major
    /// order, by `image_features` (`[number of image-pad tokens, D]`).
    ///
    /// # Errors
    /// [`Error::ModelInput`] for ids outside the vocabulary or a feature count that differs from the
    /// number of image-pad tokens.
    pub fn embed(&self, input_ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        let ids = input_ids.to_device(self.device);
        let (min, max) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if min < 0 || max >= self.config.text.vocab_size {
            return Err(Error::ModelInput(format!(
                "token ids span {min}..={max}, outside the vocabulary of {}",
                self.config.text.vocab_size
            )));
        }
        let embeds = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false);
        let is_image = ids.eq(self.config.image_token_id);
        let n_image = is_image.sum(Kind::Int64).int64_value(&[]);
        match image_features {
            None if n_image == 0 => Ok(embeds),
            None => Err(Error::ModelInput(format!("{n_image} image-pad tokens but no image features"))),
            Some(f) => {
                if f.size()[0] != n_image {
                    return Err(Error::ModelInput(format!(
                        "{n_image} image-pad tokens but {} image feature rows",
                        f.size()[0]
                    )));
                }
                Ok(embeds.masked_scatter(&is_image.unsqueeze(-1), &f.to_kind(embeds.kind())))
            }
        }
    }

    /// Plain token embeddings `[B, S, D]` (no image scatter): decoding steps, where a generated
    /// `<|image_pad|>` is just a token.
    /// The ids must lie in the vocabulary (they come from this model's own sampling).
    pub(crate) fn embed_generated(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, &input_ids.to_device(self.device), -1, false, false)
    }

    /// Logits `[.., V]` of final hidden states `[.., D]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<&Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None)
    }

    /// Decoder forward (see [`text::TextModel::forward`]): `embeds [B, S, D]`, `position_ids
    /// [3, B, S]` -> final hidden states `[B, S, D]`.
    pub fn decode(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        key_padding: Option<&Tensor>,
    ) -> Tensor {
        self.text.forward(embeds, &position_ids.to_device(self.device), cache, key_padding)
    }

    /// [`Self::decode`] with the decoder's weights fused by [`text::TextModel::fused`].
    pub(crate) fn decode_fused(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
        fused: &[text::FusedLayer],
    ) -> Tensor {
        self.text.forward_with(embeds, &position_ids.to_device(self.device), Some(cache), None, Some(fused))
    }

    /// Fused decoder weights for [`Self::decode_fused`].
    pub(crate) fn fused_decoder(&self) -> Vec<text::FusedLayer> {
        self.text.fused()
    }

    /// An empty KV cache.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        self.text.new_cache(batch, capacity)
    }

    /// 3-row positions `[3, S]` and rope delta of one token sequence with its images' grids.
    ///
    /// # Errors
    /// [`Error::Runtime`] when the image-token runs and the grids disagree.
    pub fn position_ids(&self, tokens: &[i64], grids: &[[usize; 3]]) -> Result<(Tensor, i64)> {
        let r = preprocess::rope_index_tokens(tokens, self.config.image_token_id, grids)?;
        let s = tokens.len() as i64;
        let data: Vec<i64> = r.position_ids.iter().copied().collect();
        Ok((Tensor::from_slice(&data).reshape([3, s]), r.rope_delta))
    }

    /// Full forward of one prompt (batch 1): logits `[1, S, V]`.
    ///
    /// # Errors
    /// As [`Self::embed`], [`Self::image_features`] and [`Self::position_ids`].
    pub fn forward_logits(
        &self,
        tokens: &[i64],
        pixel_values: Option<&Tensor>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor> {
        let features = match pixel_values {
            Some(p) => Some(self.image_features(p, grids)?),
            None => None,
        };
        let ids = Tensor::from_slice(tokens).unsqueeze(0);
        let embeds = self.embed(&ids, features.as_ref())?;
        let (pos, _) = self.position_ids(tokens, grids)?;
        Ok(self.logits(&self.decode(&embeds, &pos.unsqueeze(1), None, None)))
    }
}
