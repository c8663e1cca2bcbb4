//! Parameters by Hugging Face name: loading `*.safetensors` checkpoints (sharded or not, f32/f16/bf16,
//! the hub's tensor names or those of transformers 5) and writing them back.
//!
//! Names inside the trainer are the hub's (`visual.blocks.0.attn.qkv.weight`,
//! `model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`); transformers 5 calls the same tensors
//! `model.visual.*` and `model.language_model.*`, which `canonical_tensor_name` maps back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use monovlm_runtime::model_config::canonical_tensor_name;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// One named parameter.
#[derive(Debug)]
pub struct Param {
    /// Hugging Face name (hub layout).
    pub name: String,
    /// The tensor; a leaf with `requires_grad` when trainable. Modules hold shallow clones.
    pub tensor: Tensor,
    /// Whether optimisers update it.
    pub trainable: bool,
}

/// Every parameter of a model, in construction order (which is the order they are saved in).
#[derive(Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
}

impl ParamStore {
    /// All parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The trainable parameters.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.trainable)
    }

    /// Number of scalar values, all parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.tensor.numel()).sum()
    }

    /// Number of scalar values of the trainable parameters.
    pub fn trainable_numel(&self) -> usize {
        self.trainable().map(|p| p.tensor.numel()).sum()
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    pub(crate) fn into_params(self) -> Vec<Param> {
        self.params
    }

    /// Registers a parameter and returns the shallow clone the module keeps.
    pub(crate) fn push(&mut self, name: String, tensor: Tensor, trainable: bool) -> Tensor {
        let tensor = if trainable { tensor.set_requires_grad(true) } else { tensor };
        let handle = tensor.shallow_clone();
        self.params.push(Param { name, tensor, trainable });
        handle
    }

    /// Marks parameters trainable or frozen by a predicate on their names.
    pub fn set_trainable(&mut self, mut trainable: impl FnMut(&str) -> bool) {
        for p in &mut self.params {
            p.trainable = trainable(&p.name);
            // `set_requires_grad` changes the flag of the tensor itself, shared with the modules.
            let _ = p.tensor.set_requires_grad(p.trainable);
        }
    }

    /// Zeroes (drops) the gradients of every parameter.
    pub fn zero_grad(&self) {
        for p in &self.params {
            let mut grad = p.tensor.grad();
            if grad.defined() {
                let _ = grad.detach_();
                let _ = grad.zero_();
            }
        }
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The safetensors files of a checkpoint directory: the shards listed by
/// `model.safetensors.index.json` when present, else `model.safetensors`.
///
/// # Errors
/// [`Error::Io`]/[`Error::Json`] for an unreadable index, [`Error::MissingTensor`]-free: a missing
/// file is an [`Error::Io`] naming it.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Json { path: index.clone(), message: e.to_string() })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Json { path: index.clone(), message: "no weight_map object".into() })?;
        let mut files = Vec::with_capacity(map.len());
        for (name, file) in map {
            // A shard is a file beside the index: a path that climbs out or is absolute is refused.
            let plain = file.as_str().filter(|f| {
                let mut parts = Path::new(f).components();
                matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
            });
            match plain {
                Some(f) => files.push(f.to_owned()),
                None => {
                    return Err(Error::Json {
                        path: index.clone(),
                        message: format!(
                            "tensor {name}: shard {file} is not a file name in the checkpoint directory"
                        ),
                    });
                }
            }
        }
        files.sort();
        files.dedup();
        Ok(files.into_iter().map(|f| dir.join(f)).collect())
    } else {
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors nor model.safetensors.index.json",
                ),
            ));
        }
        Ok(vec![single])
    }
}

/// Reads every tensor of the given files onto the CPU in the file's own dtype, under canonical names.
///
/// # Errors
/// [`Error::Io`] for unreadable files, [`Error::Safetensors`] for a truncated or malformed file or
/// an unsupported dtype (the message names the tensor).
pub fn read_tensors(files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Safetensors { path: path.clone(), message: e.to_string() })?;
        for (name, view) in st.tensors() {
            let kind = kind_of(view.dtype()).ok_or_else(|| Error::Safetensors {
                path: path.clone(),
                message: format!("tensor {name}: dtype {:?} is not supported", view.dtype()),
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let tensor = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| {
                Error::Safetensors { path: path.clone(), message: format!("tensor {name}: {e}") }
            })?;
            out.insert(canonical_tensor_name(&name), tensor);
        }
    }
    Ok(out)
}

/// Where module weights come from while a model is built.
pub(crate) enum Source {
    /// Tensors read from a checkpoint; each is taken once, what remains afterwards is reported.
    Checkpoint(HashMap<String, Tensor>),
    /// Fresh random weights (normal with the config's `initializer_range`, norms at one, biases at
    /// zero), drawn from libtorch's generator (seed it with `tch::manual_seed`).
    Random,
}

/// How a fresh weight is initialised.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases, LoRA B).
    Zeros,
}

/// Builds modules: takes named weights of the expected shapes from the source, converts them to
/// the model's dtype and device, and registers them in the store.
pub(crate) struct Builder {
    source: Source,
    pub(crate) device: Device,
    pub(crate) kind: Kind,
    pub(crate) store: ParamStore,
}

impl Builder {
    pub(crate) fn new(source: Source, device: Device, kind: Kind) -> Self {
        Self { source, device, kind, store: ParamStore::default() }
    }

    /// The weight `name` of shape `shape`.
    pub(crate) fn weight(&mut self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        let tensor = match &mut self.source {
            Source::Checkpoint(map) => {
                let t = map.remove(name).ok_or_else(|| Error::MissingTensor { name: name.to_owned() })?;
                if t.size() != shape {
                    return Err(Error::TensorShape {
                        name: name.to_owned(),
                        expected: shape.to_vec(),
                        found: t.size(),
                    });
                }
                t.f_to_device(self.device)?.f_to_kind(self.kind)?
            }
            Source::Random => fresh(shape, init, self.kind, self.device)?,
        };
        Ok(self.store.push(name.to_owned(), tensor.detach(), true))
    }

    /// Drops `name` from the source without registering it (a tied `lm_head.weight` some hub
    /// checkpoints carry as a copy of the embeddings).
    pub(crate) fn discard(&mut self, name: &str) {
        if let Source::Checkpoint(map) = &mut self.source {
            map.remove(name);
        }
    }

    /// Finishes: a checkpoint with tensors nothing took is a config/weights disagreement.
    pub(crate) fn finish(self) -> Result<ParamStore> {
        if let Source::Checkpoint(map) = self.source
            && !map.is_empty()
        {
            let mut names: Vec<String> = map.into_keys().collect();
            names.sort();
            return Err(Error::UnexpectedTensors { names });
        }
        Ok(self.store)
    }
}

pub(crate) fn fresh(shape: &[i64], init: Init, kind: Kind, device: Device) -> Result<Tensor> {
    Ok(match init {
        Init::Normal(std) => {
            Tensor::f_randn(shape, (Kind::Float, device))?.f_mul_scalar(std)?.f_to_kind(kind)?
        }
        Init::Ones => Tensor::f_ones(shape, (kind, device))?,
        Init::Zeros => Tensor::f_zeros(shape, (kind, device))?,
    })
}

/// A dtype name of `config.json` (`float32`, `float16`, `bfloat16`).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        _ => "float32",
    }
}

/// Parses `f32|fp32|float32`, `f16|fp16|float16`, `bf16|bfloat16`.
///
/// # Errors
/// [`Error::ModelConfig`] for another name.
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name {
        "f32" | "fp32" | "float32" => Ok(Kind::Float),
        "f16" | "fp16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(Error::ModelConfig(format!("dtype {other:?}: expected f32, f16 or bf16"))),
    }
}

/// Writes named tensors as safetensors in `dtype`, split into shards of at most `max_shard_bytes`
/// (with `model.safetensors.index.json`) when they do not fit in one file. Files are written under
/// temporary names and renamed, so a crash never leaves a half-written `model.safetensors`.
///
/// # Errors
/// [`Error::Io`], or [`Error::Safetensors`] when a tensor cannot be serialised.
pub fn write_tensors(
    dir: &Path,
    tensors: &[(String, Tensor)],
    dtype: Kind,
    max_shard_bytes: usize,
) -> Result<()> {
    let st_dtype =
        dtype_of(dtype).ok_or_else(|| Error::ModelConfig(format!("cannot save dtype {dtype:?}")))?;
    let elt = dtype.elt_size_in_bytes();
    // Plan the shards in order.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut shard_bytes = 0usize;
    let total: usize = tensors.iter().map(|(_, t)| t.numel() * elt).sum();
    for (i, (_, t)) in tensors.iter().enumerate() {
        let bytes = t.numel() * elt;
        if shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (s, members) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        };
        let mut buffers = Vec::with_capacity(members.len());
        for &i in members {
            let (name, t) = &tensors[i];
            let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(dtype)?.f_contiguous()?;
            let numel = t.numel();
            let mut data = vec![0u8; numel * elt];
            t.f_copy_data_u8(&mut data, numel)?;
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            buffers.push((name.clone(), shape, data));
            weight_map.insert(name.clone(), file.clone());
        }
        let views = buffers
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(st_dtype, shape.clone(), data).map(|v| (name.clone(), v)).map_err(|e| {
                    Error::Safetensors { path: dir.join(&file), message: format!("{name}: {e}") }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let tmp = dir.join(format!(".{file}.tmp"));
        safetensors::serialize_to_file(views, Some(metadata), &tmp)
            .map_err(|e| Error::Safetensors { path: tmp.clone(), message: e.to_string() })?;
        let dst = dir.join(&file);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    if n > 1 {
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
