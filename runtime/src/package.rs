//! Model packages (DESIGN.md "Model package", `docs/model-package.md`): finding and checking the
//! files of a package directory before any session is opened, so that a wrong or incomplete package
//! fails with the file and the problem named.
//!
//! [`ModelPackage::open`] reads `config.json` ([`Qwen25VlConfig`]), `tokenizer.json` (the
//! `tokenizers` crate; its chat-template tokens must carry the ids of `config.json`),
//! `monovlm.json` (graph file names, precision, protocol version, image size bounds) and
//! `preprocessor_config.json` (bounds and normalisation, when present). ONNX files are checked for
//! presence and size here; ONNX Runtime judges their content when the sessions open
//! ([`crate::grounder::Grounder::open`]) and its message is reported against the file.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model_config::Qwen25VlConfig;
use crate::preprocess::{CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, PreprocessConfig};

/// The largest `max_pixels` a package may ask for: 64 Mpx, five times Qwen2.5-VL's largest
/// (16,384 merged tokens of 28 x 28 px), so a corrupt or hostile config cannot make one frame
/// allocate gigabytes.
pub const MAX_PACKAGE_PIXELS: usize = 64 << 20;
use crate::protocol::{self, tokens};

/// The package format this runtime reads (`monovlm.json` -> `package.format`).
pub const PACKAGE_FORMAT: u64 = 1;

/// Smallest size of a real ONNX graph file, in bytes: a model proto with a graph, one node and its
/// opset import is already larger; anything shorter is a truncated or placeholder file.
const MIN_ONNX_BYTES: u64 = 16;

/// Graph files of a package, relative to its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphPaths {
    /// `onnx/vision_encoder*.onnx`.
    pub vision_encoder: PathBuf,
    /// `onnx/embed_tokens*.onnx`.
    pub embed_tokens: PathBuf,
    /// `onnx/decoder_model_merged*.onnx`.
    pub decoder: PathBuf,
}

/// Numeric format of a package's graph interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 graphs.
    Fp32,
    /// f16 weights and interfaces (except `pixel_values` and `logits`).
    Fp16,
    /// 4-bit decoder weights, f32 interfaces.
    Int4,
}

impl Precision {
    /// The name `monovlm.json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int4 => "int4",
        }
    }

    /// Whether the graph interfaces (embeddings, KV cache) are f32.
    pub fn f32_interfaces(self) -> bool {
        !matches!(self, Self::Fp16)
    }
}

/// Token ids of the chat template, from the package's tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|im_start|>`.
    pub im_start: i64,
    /// `<|im_end|>`: generation stops here.
    pub im_end: i64,
    /// `<|vision_start|>`.
    pub vision_start: i64,
    /// `<|vision_end|>`.
    pub vision_end: i64,
    /// `<|image_pad|>`.
    pub image_pad: i64,
}

/// A checked model package: everything but the ONNX Runtime sessions.
#[derive(Debug)]
pub struct ModelPackage {
    /// The package directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: Qwen25VlConfig,
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// Chat-template token ids.
    pub special_tokens: SpecialTokens,
    /// Graph files (relative to `dir`).
    pub graphs: GraphPaths,
    /// Numeric format of the graphs.
    pub precision: Precision,
    /// Image size bounds and normalisation.
    pub preprocess: PreprocessConfig,
    /// The prompt layout of the answer-protocol version the model was trained with
    /// (`monovlm.json`'s `protocol_version`; [`protocol::PROTOCOL_VERSION`] when absent).
    pub layout: protocol::PromptLayout,
}

fn package_err(path: &Path, problem: impl Into<String>) -> Error {
    Error::Package { path: path.to_path_buf(), problem: problem.into() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| package_err(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| package_err(path, format!("not valid JSON: {e}")))
}

fn graph_path(dir: &Path, meta_path: &Path, graphs: &Value, key: &str) -> Result<PathBuf> {
    let name = graphs
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| package_err(meta_path, format!("package.graphs.{key} is missing or not a string")))?;
    let rel = PathBuf::from(name);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(package_err(meta_path, format!("package.graphs.{key} = {name:?} leaves the package")));
    }
    let full = dir.join(&rel);
    let meta = std::fs::metadata(&full).map_err(|e| package_err(&full, format!("ONNX graph {key}: {e}")))?;
    if !meta.is_file() {
        return Err(package_err(&full, format!("ONNX graph {key} is not a file")));
    }
    if meta.len() < MIN_ONNX_BYTES {
        return Err(package_err(
            &full,
            format!("ONNX graph {key} has {} bytes: truncated or not a model", meta.len()),
        ));
    }
    Ok(rel)
}

fn as_usize(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok())
}

fn triple(v: Option<&Value>) -> Option<[f64; 3]> {
    let a = v?.as_array()?;
    match a.as_slice() {
        [x, y, z] => Some([x.as_f64()?, y.as_f64()?, z.as_f64()?]),
        _ => None,
    }
}

fn special_tokens(tokenizer: &Tokenizer, path: &Path, config: &Qwen25VlConfig) -> Result<SpecialTokens> {
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .map(i64::from)
            .ok_or_else(|| package_err(path, format!("the tokenizer has no {token} token")))
    };
    let found = SpecialTokens {
        im_start: id(tokens::IM_START)?,
        im_end: id(tokens::IM_END)?,
        vision_start: id(tokens::VISION_START)?,
        vision_end: id(tokens::VISION_END)?,
        image_pad: id(tokens::IMAGE_PAD)?,
    };
    for (token, in_tokenizer, in_config) in [
        (tokens::IMAGE_PAD, found.image_pad, config.image_token_id),
        (tokens::VISION_START, found.vision_start, config.vision_start_token_id),
        (tokens::VISION_END, found.vision_end, config.vision_end_token_id),
    ] {
        if in_tokenizer != in_config {
            return Err(package_err(
                path,
                format!(
                    "{token} is id {in_tokenizer} here but {in_config} in config.json (another model's tokenizer?)"
                ),
            ));
        }
    }
    let vocab = config.text.vocab_size;
    for (token, v) in [(tokens::IM_START, found.im_start), (tokens::IM_END, found.im_end)] {
        if v >= vocab {
            return Err(package_err(
                path,
                format!("{token} is id {v}, outside the model's vocabulary of {vocab}"),
            ));
        }
    }
    Ok(found)
}

impl ModelPackage {
    /// Reads and checks the package in `dir`.
    ///
    /// # Errors
    /// [`Error::Package`] naming the file and the problem: a missing or unreadable file, JSON that
    /// does not parse, a format or protocol version this runtime does not read, a tokenizer without
    /// the chat-template tokens or with ids other than `config.json`'s, a missing or truncated ONNX
    /// file; [`Error::ModelConfig`] (with the path) for a `config.json` of another architecture.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(package_err(dir, "not a directory"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(package_err(&config_path, "missing"));
        }
        let config = Qwen25VlConfig::from_file(&config_path)?;

        let meta_path = dir.join("monovlm.json");
        let meta = read_json(&meta_path)?;
        let pkg = meta.get("package").ok_or_else(|| {
            package_err(&meta_path, "no \"package\" section (not written by monovlm-export?)")
        })?;
        match pkg.get("format").and_then(Value::as_u64) {
            Some(PACKAGE_FORMAT) => {}
            other => {
                return Err(package_err(
                    &meta_path,
                    format!("package.format {other:?}: this runtime reads format {PACKAGE_FORMAT}"),
                ));
            }
        }
        let protocol_version = meta
            .get("protocol_version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(protocol::PROTOCOL_VERSION);
        let layout = protocol::PromptLayout::for_version(protocol_version)
            .map_err(|e| package_err(&meta_path, e.to_string()))?;
        let precision = match pkg.get("precision").and_then(Value::as_str).unwrap_or("fp32") {
            "fp32" => Precision::Fp32,
            "fp16" => Precision::Fp16,
            "int4" => Precision::Int4,
            other => return Err(package_err(&meta_path, format!("unknown precision {other:?}"))),
        };
        let graphs_v =
            pkg.get("graphs").ok_or_else(|| package_err(&meta_path, "package.graphs is missing"))?;
        let graphs = GraphPaths {
            vision_encoder: graph_path(dir, &meta_path, graphs_v, "vision_encoder")?,
            embed_tokens: graph_path(dir, &meta_path, graphs_v, "embed_tokens")?,
            decoder: graph_path(dir, &meta_path, graphs_v, "decoder")?,
        };

        let mut preprocess = PreprocessConfig {
            min_pixels: as_usize(meta.get("min_pixels")).unwrap_or(DEFAULT_MIN_PIXELS),
            max_pixels: as_usize(meta.get("max_pixels")).unwrap_or(DEFAULT_MAX_PIXELS),
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        };
        let pre_path = dir.join("preprocessor_config.json");
        if pre_path.is_file() {
            let pre = read_json(&pre_path)?;
            if let Some(v) = as_usize(pre.get("min_pixels")) {
                preprocess.min_pixels = v;
            }
            if let Some(v) = as_usize(pre.get("max_pixels")) {
                preprocess.max_pixels = v;
            }
            if let Some(m) = triple(pre.get("image_mean")) {
                preprocess.image_mean = m;
            }
            if let Some(s) = triple(pre.get("image_std")) {
                preprocess.image_std = s;
            }
        }
        // Checked whichever file set them: the preprocessor allocates up to about max_pixels
        // per frame (and min_pixels when it upscales), so both must be sane.
        if preprocess.min_pixels == 0
            || preprocess.min_pixels > preprocess.max_pixels
            || preprocess.max_pixels > MAX_PACKAGE_PIXELS
        {
            let source = if pre_path.is_file() { &pre_path } else { &meta_path };
            return Err(package_err(
                source,
                format!(
                    "min_pixels {} / max_pixels {} give no valid size (0 < min <= max <= {MAX_PACKAGE_PIXELS})",
                    preprocess.min_pixels, preprocess.max_pixels
                ),
            ));
        }

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(package_err(&tok_path, "missing (the runtime needs the model's tokenizer)"));
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| package_err(&tok_path, e.to_string()))?;
        let special_tokens = special_tokens(&tokenizer, &tok_path, &config)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            special_tokens,
            graphs,
            precision,
            preprocess,
            layout,
        })
    }

    /// Absolute path of a graph file.
    pub fn graph(&self, rel: &Path) -> PathBuf {
        self.dir.join(rel)
    }
}

/// GPT-2's byte-to-character table of byte-level BPE: printable Latin-1 bytes map to themselves,
/// the others to `U+0100` onwards, in byte order.
fn byte_level_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut extra = 0u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or(' ')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or(' ')
            }
        })
        .collect()
}

/// A minimal `tokenizer.json` for synthetic packages and tests: byte-level BPE with the 256 byte
/// symbols as ids `0..256` and no merges (every text round-trips), plus the chat-template tokens
/// `<|im_start|>`, `<|im_end|>` at `im_start_id`, `im_start_id + 1` and the vision tokens at the
/// ids of `config` (`vision_start`, `vision_end`, `image_pad`, `video_pad`).
pub fn byte_level_tokenizer_json(config: &Qwen25VlConfig, im_start_id: i64) -> String {
    let specials = [
        (im_start_id, tokens::IM_START),
        (im_start_id + 1, tokens::IM_END),
        (config.vision_start_token_id, tokens::VISION_START),
        (config.vision_end_token_id, tokens::VISION_END),
        (config.image_token_id, tokens::IMAGE_PAD),
        (config.video_token_id, "<|video_pad|>"),
    ];
    // The special tokens are in the model's vocabulary too: `tokenizers` gives added tokens that
    // are not the next free ids of their own.
    let vocab: serde_json::Map<String, Value> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), Value::from(i)))
        .chain(specials.iter().map(|&(id, content)| (content.to_owned(), Value::from(id))))
        .collect();
    let added: Vec<Value> = specials
        .into_iter()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}
