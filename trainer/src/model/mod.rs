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

use std::collections::HashMap;
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

    /// The LoRA adapter tensors (`{layer}.lora_A.weight`, `{layer}.lora_B.weight`), detached; empty
    /// without adapters.
    pub fn adapter_tensors(&self) -> Vec<(String, Tensor)> {
        self.store
            .params()
            .iter()
            .filter(|p| p.name.contains(".lora_"))
            .map(|p| (p.name.clone(), p.tensor.detach()))
            .collect()
    }

    /// Copies saved adapter values (keys `{prefix}{name}` as [`Self::adapter_tensors`] names them)
    /// into the attached adapters.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] without adapters; [`Error::MissingTensor`] / [`Error::TensorShape`]
    /// when the saved set does not fit them.
    pub fn load_adapters(&mut self, saved: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        if self.lora.is_none() {
            return Err(Error::ModelConfig("no LoRA adapters are attached".into()));
        }
        tch::no_grad(|| -> Result<()> {
            for p in self.store.params().iter().filter(|p| p.name.contains(".lora_")) {
                let key = format!("{prefix}{}", p.name);
                let src = saved.get(&key).ok_or_else(|| Error::MissingTensor { name: key.clone() })?;
                if src.size() != p.tensor.size() {
                    return Err(Error::TensorShape {
                        name: key,
                        expected: p.tensor.size(),
                        found: src.size(),
                    });
                }
                p.tensor.shallow_clone().f_copy_(src)?;
            }
            Ok(())
        })
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

    /// Logits for choosing answer tokens: [`Self::logits`] with `<|image_pad|>` and
    /// `<|video_pad|>` at -inf. Those ids stand for image features and are never text; a sampled
    /// one would make the sequence unreadable as a prompt + answer. Generation samples from these
    /// and GRPO scores log-probabilities with them, so both see the same distribution.
    pub fn answer_logits(&self, hidden: &Tensor) -> Tensor {
        let logits = self.logits(hidden).to_kind(Kind::Float);
        let v = self.config.text.vocab_size;
        let banned: Vec<i64> = [self.config.image_token_id, self.config.video_token_id]
            .into_iter()
            .filter(|&t| (0..v).contains(&t))
            .collect();
        logits.index_fill(-1, &Tensor::from_slice(&banned).to_device(logits.device()), f64::NEG_INFINITY)
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

    /// [`Self::decode`] without a cache, also returning the residual stream after each decoder
    /// layer (see [`text::TextModel::forward_residuals`]).
    pub fn decode_residuals(&self, embeds: &Tensor, position_ids: &Tensor) -> (Tensor, Vec<Tensor>) {
        self.text.forward_residuals(embeds, &position_ids.to_device(self.device))
    }

    /// [`Self::decode`] with the decoder's weights fused by [`text::TextModel::fused`].
    pub(crate) fn decode_fused(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
        fused: &[text::FusedLayer],
    ) -> Tensor {
        self.text.forward_with(
            embeds,
            &position_ids.to_device(self.device),
            Some(cache),
            None,
            Some(fused),
            None,
        )
    }

    /// Fused decoder weights for [`Self::decode_fused`].
    pub(crate) fn fused_decoder(&self) -> Vec<text::FusedLayer> {
        self.text.fused()
    }

    /// Log-probabilities (under `answer_logits / temperature`) and entropies of the tokens of
    /// several answers to one prompt, concatenated in order: the prompt (with its image) is encoded
    /// once and shared, with gradients ([`text::TextModel::forward_prefix_suffix`]).
    ///
    /// # Errors
    /// [`Error::ModelInput`] for an empty answer list or inconsistent image inputs.
    pub fn answers_logprobs(
        &self,
        prompt: &[i64],
        pixel_values: Option<&Tensor>,
        grids: &[[usize; 3]],
        answers: &[Vec<i64>],
        temperature: f64,
    ) -> Result<(Tensor, Tensor)> {
        let longest = answers.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 || prompt.is_empty() {
            return Err(Error::ModelInput("answers_logprobs needs a prompt and a non-empty answer".into()));
        }
        let vocab = self.config.text.vocab_size;
        if let Some(id) = answers.iter().flatten().find(|&&id| !(0..vocab).contains(&id)) {
            return Err(Error::ModelInput(format!(
                "answer token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        let features = match pixel_values {
            Some(p) => Some(self.image_features(p, grids)?),
            None => None,
        };
        let (p_len, g, s_len) = (prompt.len() as i64, answers.len() as i64, longest as i64);
        let prefix = self.embed(&Tensor::from_slice(prompt).unsqueeze(0), features.as_ref())?;
        let (prefix_pos, delta) = self.position_ids(prompt, grids)?;
        let pad = self.config.pad_token_id.unwrap_or(0).clamp(0, self.config.text.vocab_size - 1);
        let mut ids = vec![pad; answers.len() * longest];
        for (r, a) in answers.iter().enumerate() {
            ids[r * longest..r * longest + a.len()].copy_from_slice(a);
        }
        let ids = Tensor::from_slice(&ids).reshape([g, s_len]);
        let suffix = self.embed_generated(&ids);
        let suffix_pos = (Tensor::arange(s_len, (Kind::Int64, self.device)) + (p_len + delta))
            .view([1, 1, s_len])
            .expand([3, g, s_len], true);
        let (hp, hs) = self.text.forward_prefix_suffix(
            &prefix,
            &prefix_pos.unsqueeze(1).to_device(self.device),
            &suffix,
            &suffix_pos,
        );
        // Token j of an answer is predicted by the state before it: the prompt's last, then the answer's.
        let last_prompt = hp.narrow(1, p_len - 1, 1).expand([g, 1, hp.size()[2]], false);
        let before = Tensor::cat(&[last_prompt, hs.narrow(1, 0, s_len - 1)], 1); // [G, S, D]
        let rows: Vec<i64> = answers
            .iter()
            .enumerate()
            .flat_map(|(r, a)| (0..a.len() as i64).map(move |j| r as i64 * s_len + j))
            .collect();
        let rows = Tensor::from_slice(&rows).to_device(self.device);
        let d = before.size()[2];
        let h = before.reshape([g * s_len, d]).index_select(0, &rows);
        let targets = ids.to_device(self.device).reshape([-1]).index_select(0, &rows);
        let logp_all = (self.answer_logits(&h) / temperature).log_softmax(-1, Kind::Float);
        let taken = logp_all.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
        // Banned ids have logp = -inf and p = 0: their 0 * -inf terms count as 0.
        let entropy = -(logp_all.exp() * &logp_all)
            .nan_to_num(0.0, None::<f64>, None::<f64>)
            .sum_dim_intlist(-1, false, Kind::Float);
        Ok((taken, entropy))
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
