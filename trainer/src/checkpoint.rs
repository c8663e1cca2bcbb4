//! Checkpoint directories (DESIGN.md): `config.json`, `model.safetensors` (or shards), tokenizer
//! files, `generation_config.json` and `monovlm.json`; plus, for resumable training, a `train/`
//! folder with the optimiser state and progress. Written to a sibling temporary directory and
//! renamed into place, so a crash never leaves a half-written checkpoint.

use std::path::{Path, PathBuf};

use monovlm_runtime::preprocess::PreprocessConfig;
use monovlm_runtime::protocol::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::model::Qwen25Vl;
use crate::model::weights::{kind_name, write_tensors};
use crate::{Error, Result};

/// `monovlm.json`: what the model was taught and how its images are sized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonovlmMeta {
    /// Version of the prompt/answer protocol (`runtime::protocol::PROTOCOL_VERSION`).
    pub protocol_version: u32,
    /// Smallest resized image area, pixels (the processor's `min_pixels`).
    pub min_pixels: usize,
    /// Largest resized image area, pixels (the processor's `max_pixels`).
    pub max_pixels: usize,
    /// Training stages run, oldest first.
    pub stages: Vec<StageRecord>,
}

/// One training stage in a checkpoint's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// `sft`, `grpo-2d`, `grpo-centre`, `grpo-3d`, ...
    pub name: String,
    /// Optimisation steps run.
    pub steps: usize,
    /// Free-form details (data, learning rate, final metrics).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl MonovlmMeta {
    /// Fresh metadata for a model whose images are sized by `pre`.
    pub fn new(pre: &PreprocessConfig) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            min_pixels: pre.min_pixels,
            max_pixels: pre.max_pixels,
            stages: Vec::new(),
        }
    }

    /// How this model's examples are made: its preprocessing and its protocol's prompt layout.
    ///
    /// # Errors
    /// [`Error::Runtime`] for a protocol version this build does not know.
    pub fn example_format(&self) -> Result<crate::train::grounding::ExampleFormat> {
        Ok(crate::train::grounding::ExampleFormat {
            preprocess: self.preprocess_config(),
            layout: monovlm_runtime::protocol::PromptLayout::for_version(self.protocol_version)?,
        })
    }

    /// The image preprocessing this model was trained with.
    pub fn preprocess_config(&self) -> PreprocessConfig {
        PreprocessConfig {
            min_pixels: self.min_pixels,
            max_pixels: self.max_pixels,
            ..PreprocessConfig::default()
        }
    }

    /// Reads `dir/monovlm.json`; `None` for a checkpoint without one (a hub model).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`] for an unreadable or malformed file.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(META_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::Json { path, message: e.to_string() })
    }
}

/// `monovlm.json`.
pub const META_FILE: &str = "monovlm.json";
/// Tokenizer files copied from the base checkpoint.
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

/// Training progress saved with a checkpoint so `--resume` continues exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Free-form progress (stage index, step, RNG state, data order position), owned by the loop.
    pub progress: serde_json::Value,
}

/// What to write besides the weights.
pub struct SaveOptions<'a> {
    /// Storage dtype of the weights.
    pub dtype: Kind,
    /// Where to copy `tokenizer.json` (and its config) from, usually the base checkpoint.
    pub tokenizer_from: Option<&'a Path>,
    /// `monovlm.json`.
    pub meta: &'a MonovlmMeta,
    /// Optimiser state and progress (`train/optimizer.safetensors`, `train/state.json`).
    pub train: Option<(Vec<(String, Tensor)>, TrainState)>,
    /// Largest shard, bytes.
    pub max_shard_bytes: usize,
}

/// Writes a checkpoint directory atomically: everything goes to `DIR.tmp`, then an existing `DIR`
/// is moved aside and `DIR.tmp` renamed to `DIR`. LoRA adapters are merged into the weights.
///
/// # Errors
/// [`Error::Io`], [`Error::Json`], [`Error::Safetensors`].
pub fn save(model: &mut Qwen25Vl, dir: &Path, opts: SaveOptions<'_>) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let config = model.config().clone();
    write_json(&tmp.join("config.json"), &config.to_json(kind_name(opts.dtype)))?;
    let tensors = model.export_tensors();
    write_tensors(&tmp, &tensors, opts.dtype, opts.max_shard_bytes)?;
    let generation = json!({
        "eos_token_id": config.eos_token_ids,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "do_sample": false,
    });
    write_json(&tmp.join("generation_config.json"), &generation)?;
    write_json(
        &tmp.join(META_FILE),
        &serde_json::to_value(opts.meta)
            .map_err(|e| Error::Json { path: tmp.join(META_FILE), message: e.to_string() })?,
    )?;
    if let Some(src) = opts.tokenizer_from {
        for name in TOKENIZER_FILES {
            let from = src.join(name);
            if from.exists() {
                let to = tmp.join(name);
                std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
            }
        }
    }
    if let Some((state, progress)) = &opts.train {
        let train_dir = tmp.join("train");
        std::fs::create_dir_all(&train_dir).map_err(|e| Error::io(&train_dir, e))?;
        write_tensors_named(&train_dir, "optimizer.safetensors", state)?;
        write_json(
            &train_dir.join("state.json"),
            &serde_json::to_value(progress)
                .map_err(|e| Error::Json { path: train_dir.join("state.json"), message: e.to_string() })?,
        )?;
    }
    let old = sibling(dir, "old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Reads `DIR/train/` (optimiser tensors and progress) of a resumable checkpoint.
///
/// # Errors
/// [`Error::Io`], [`Error::Json`], [`Error::Safetensors`].
pub fn read_train_state(
    dir: &Path,
) -> Result<Option<(std::collections::HashMap<String, Tensor>, TrainState)>> {
    let train_dir = dir.join("train");
    if !train_dir.exists() {
        return Ok(None);
    }
    let tensors = crate::model::weights::read_tensors(&[train_dir.join("optimizer.safetensors")])?;
    let path = train_dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::Json { path, message: e.to_string() })?;
    Ok(Some((tensors, state)))
}

fn write_tensors_named(dir: &Path, file: &str, tensors: &[(String, Tensor)]) -> Result<()> {
    // Optimiser moments (and the step count) are kept in f32 whatever the weights' dtype.
    let sub = dir.join(".opt");
    std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
    let all: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.to_kind(Kind::Float))).collect();
    write_tensors(&sub, &all, Kind::Float, usize::MAX)?;
    let dst = dir.join(file);
    std::fs::rename(sub.join("model.safetensors"), &dst).map_err(|e| Error::io(&dst, e))?;
    std::fs::remove_dir_all(&sub).map_err(|e| Error::io(&sub, e))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name =
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!(".{name}.{suffix}"))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Json { path: path.to_owned(), message: e.to_string() })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
