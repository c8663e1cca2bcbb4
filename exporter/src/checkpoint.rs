//! Reading a trainer / Hugging Face checkpoint: `config.json` (through
//! [`monovlm_runtime::model_config`]) and the weights in `model.safetensors` or shards listed by
//! `model.safetensors.index.json`.
//!
//! Tensors are read lazily, one at a time, so exporting never holds the whole checkpoint in memory
//! twice. Every failure names the tensor: a missing one, a shape the config does not predict, data
//! running past the end of a truncated file, or a tensor no part of the config accounts for.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use monovlm_runtime::model_config::{Qwen25VlConfig, canonical_tensor_name};
use serde_json::Value;

use crate::{Error, Result};

/// The single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<i64>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// An open checkpoint directory.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    config: Qwen25VlConfig,
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, Entry>,
    used: RefCell<HashSet<String>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Checkpoint { path: path.to_path_buf(), message: e.to_string() }
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Reads the header of one safetensors file and checks every tensor lies inside the file.
/// Whether `name` is one plain file name (no directory part, not `.` or `..`).
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
}

fn read_header(path: &Path, file_index: usize) -> Result<Vec<(String, Entry)>> {
    let err = io_err(path);
    let mut f = File::open(path).map_err(&err)?;
    let file_len = f.metadata().map_err(&err)?.len();
    let bad = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    if file_len < 8 {
        return Err(bad(format!("{file_len} bytes: not a safetensors file (truncated header)")));
    }
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(&err)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len + 8 > file_len {
        return Err(bad(format!(
            "header of {header_len} bytes does not fit in the {file_len}-byte file (truncated or not safetensors)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(&err)?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = header.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + header_len;
    let available = file_len - data_start;
    let mut entries = Vec::with_capacity(obj.len());
    for (name, info) in obj.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let malformed = || bad(format!("tensor {name}: malformed header entry"));
        let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(malformed)?.to_owned();
        let shape: Vec<i64> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(malformed)?
            .iter()
            .map(|d| d.as_i64().filter(|&d| d >= 0).ok_or_else(malformed))
            .collect::<Result<_>>()?;
        let offsets = info.get("data_offsets").and_then(Value::as_array).ok_or_else(malformed)?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] => (b.as_u64().ok_or_else(malformed)?, e.as_u64().ok_or_else(malformed)?),
            _ => return Err(malformed()),
        };
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or_else(malformed)?;
        if end < begin || dtype_size(&dtype).is_some_and(|size| numel.checked_mul(size) != Some(end - begin))
        {
            return Err(bad(format!(
                "tensor {name}: {} data bytes for shape {shape:?} of {dtype}",
                end.saturating_sub(begin)
            )));
        }
        if end > available {
            return Err(Error::TruncatedTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                needed: end,
                available,
            });
        }
        let entry =
            Entry { file: file_index, dtype, shape, start: data_start + begin, end: data_start + end };
        entries.push((canonical_tensor_name(name), entry));
    }
    Ok(entries)
}

impl Checkpoint {
    /// Opens a checkpoint directory: reads `config.json` and the safetensors headers.
    ///
    /// # Errors
    /// [`Error::Runtime`] for an unreadable or unsupported config; [`Error::Checkpoint`] when no
    /// weights are found or a header is malformed; [`Error::TruncatedTensor`] naming the first tensor
    /// whose data is missing from a truncated file.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = Qwen25VlConfig::from_file(dir)?;
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(WEIGHTS_INDEX_FILE);
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Checkpoint { path: index.clone(), message: format!("not JSON: {e}") })?;
            let map = value.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
                Error::Checkpoint { path: index.clone(), message: "no weight_map object".into() }
            })?;
            let mut shards = Vec::with_capacity(map.len());
            for (name, file) in map {
                // A shard is a file beside the index: a path that climbs out or is absolute is refused.
                match file.as_str() {
                    Some(f) if is_plain_file_name(f) => shards.push(f),
                    _ => {
                        return Err(Error::Checkpoint {
                            path: index.clone(),
                            message: format!(
                                "tensor {name}: shard {file} is not a file name in the checkpoint directory"
                            ),
                        });
                    }
                }
            }
            shards.sort_unstable();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found"),
            });
        };
        let mut tensors = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for (name, entry) in read_header(file, i)? {
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(Error::Checkpoint {
                        path: file.clone(),
                        message: format!("tensor {name} appears twice in the checkpoint"),
                    });
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), config, files, tensors, used: RefCell::new(HashSet::new()) })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model configuration.
    pub fn config(&self) -> &Qwen25VlConfig {
        &self.config
    }

    /// Whether the checkpoint holds `name` (hub naming).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads tensor `name` (hub naming) as f32, checking its shape is `expected`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`], [`Error::TensorShape`], [`Error::TensorDtype`] naming the tensor;
    /// [`Error::Checkpoint`] when reading fails.
    pub fn tensor_f32(&self, name: &str, expected: &[i64]) -> Result<Vec<f32>> {
        let entry = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_owned() })?;
        if entry.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_owned(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let path =
            self.files.get(entry.file).ok_or_else(|| Error::MissingTensor { name: name.to_owned() })?;
        let err = io_err(path);
        let mut f = File::open(path).map_err(&err)?;
        f.seek(SeekFrom::Start(entry.start)).map_err(&err)?;
        if dtype_size(&entry.dtype).is_none() {
            return Err(Error::TensorDtype { name: name.to_owned(), dtype: entry.dtype.clone() });
        }
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        f.read_exact(&mut bytes).map_err(&err)?;
        let out: Vec<f32> = match entry.dtype.as_str() {
            "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            "F16" => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            "BF16" => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(Error::TensorDtype { name: name.to_owned(), dtype: other.to_owned() }),
        };
        if let Some((index, &value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteTensor { name: name.to_owned(), index, value });
        }
        self.used.borrow_mut().insert(name.to_owned());
        Ok(out)
    }

    /// Marks a tensor as deliberately ignored (e.g. `lm_head.weight` stored by a tied checkpoint).
    pub fn ignore(&self, name: &str) {
        self.used.borrow_mut().insert(name.to_owned());
    }

    /// Checks every tensor of the checkpoint was read (or ignored).
    ///
    /// # Errors
    /// [`Error::UnexpectedTensor`] naming the first tensor (in name order) nothing used: the weights
    /// hold more than the config describes.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        match self.tensors.keys().find(|k| !used.contains(*k)) {
            Some(name) => Err(Error::UnexpectedTensor { name: name.clone() }),
            None => Ok(()),
        }
    }
}
