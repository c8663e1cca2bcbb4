//! Writing a model package (DESIGN.md, `docs/model-package.md`):
//!
//! ```text
//! config.json  tokenizer.json  preprocessor_config.json  monovlm.json  (+ tokenizer_config.json,
//! generation_config.json when the checkpoint has them)
//! onnx/vision_encoder{suffix}.onnx  onnx/embed_tokens{suffix}.onnx  onnx/decoder_model_merged{suffix}.onnx
//! ```
//!
//! Everything is written to a temporary directory beside the destination and renamed into place at
//! the end, so a failed export (a missing tensor, a full disk) never leaves a partial package, and an
//! existing package is only replaced when asked.

use std::path::{Path, PathBuf};

use monovlm_runtime::preprocess::{CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS};
use monovlm_runtime::protocol::PROTOCOL_VERSION;
use serde_json::{Value, json};

use crate::checkpoint::Checkpoint;
use crate::graphs::decoder::Attention;
use crate::graphs::{Precision, decoder, embed, vision};
use crate::onnx::{ExternalData, MS_OPSET, Model, ONNX_OPSET};
use crate::{Error, Result};

/// Version of the package layout and graph conventions, recorded in `monovlm.json`.
pub const PACKAGE_FORMAT: u32 = 1;
/// The sub-directory holding the graphs.
pub const ONNX_DIR: &str = "onnx";
/// Files copied from the checkpoint when present.
const COPIED_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Numeric format of the graphs.
    pub precision: Precision,
    /// Replace an existing package.
    pub force: bool,
    /// Where initializers go (inline unless the model exceeds the protobuf limit, by default).
    pub external_data: ExternalData,
    /// Also write `onnx/decoder_model_merged_plain{suffix}.onnx`, the decoder from plain operators
    /// (benchmarks only; the runtime never loads it).
    pub with_plain_decoder: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            precision: Precision::Fp32,
            force: false,
            external_data: ExternalData::Auto,
            with_plain_decoder: false,
        }
    }
}

/// The steps of an export, reported to a progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading `config.json` and the safetensors headers.
    OpenCheckpoint,
    /// Building and writing `vision_encoder`.
    Vision,
    /// Building and writing `embed_tokens`.
    Embed,
    /// Building and writing `decoder_model_merged`.
    Decoder,
    /// Building and writing the plain decoder.
    PlainDecoder,
    /// Writing the JSON files and moving the package into place.
    Finish,
}

impl Step {
    /// How many steps an export with these options runs.
    pub fn count(opts: &ExportOptions) -> u64 {
        if opts.with_plain_decoder { 6 } else { 5 }
    }

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Self::OpenCheckpoint => "reading checkpoint",
            Self::Vision => "vision_encoder",
            Self::Embed => "embed_tokens",
            Self::Decoder => "decoder_model_merged",
            Self::PlainDecoder => "decoder (plain operators)",
            Self::Finish => "writing package",
        }
    }
}

/// One written file.
#[derive(Clone, Debug, PartialEq)]
pub struct FileReport {
    /// Path relative to the package.
    pub path: String,
    /// Size in bytes (graph and its external data together).
    pub bytes: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    /// The package directory.
    pub package: PathBuf,
    /// Files written, graphs first.
    pub files: Vec<FileReport>,
}

impl ExportReport {
    /// Total bytes of the package.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// File names of a package's graphs, as recorded in `monovlm.json` (relative to the package).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphFiles {
    /// The vision encoder.
    pub vision_encoder: String,
    /// The embedding table.
    pub embed_tokens: String,
    /// The decoder.
    pub decoder: String,
}

impl GraphFiles {
    /// The names for `precision`: fp32 and fp16 suffix all three graphs; int4 quantizes only the
    /// decoder, so the vision encoder and embeddings are the fp32 files.
    pub fn for_precision(precision: Precision) -> Self {
        let s = precision.suffix();
        let (v, e) = match precision {
            Precision::Int4 => ("", ""),
            Precision::Fp32 | Precision::Fp16 => (s, s),
        };
        Self {
            vision_encoder: format!("{ONNX_DIR}/vision_encoder{v}.onnx"),
            embed_tokens: format!("{ONNX_DIR}/embed_tokens{e}.onnx"),
            decoder: format!("{ONNX_DIR}/decoder_model_merged{s}.onnx"),
        }
    }

    /// The plain-operator decoder written with [`ExportOptions::with_plain_decoder`].
    pub fn plain_decoder(precision: Precision) -> String {
        format!("{ONNX_DIR}/decoder_model_merged_plain{}.onnx", precision.suffix())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io { path: path.to_path_buf(), message: e.to_string() }
}

fn write_json(path: &Path, value: &Value) -> Result<u64> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Io { path: path.to_path_buf(), message: e.to_string() })?;
    std::fs::write(path, format!("{text}\n")).map_err(io(path))?;
    Ok(text.len() as u64 + 1)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Io { path: path.to_path_buf(), message: format!("not JSON: {e}") })
}

fn save_graph(model: &Model, dir: &Path, rel: &str, external: ExternalData) -> Result<FileReport> {
    let saved = model.save(&dir.join(rel), external)?;
    Ok(FileReport { path: rel.to_owned(), bytes: saved.bytes })
}

/// Exports `checkpoint` to the package directory `out`, calling `progress` before each step.
///
/// # Errors
/// [`Error::OutputExists`] when `out` exists and `opts.force` is off; checkpoint errors naming the
/// tensor (missing, misshapen, truncated, non-finite, unused by the config); [`Error::Io`], also
/// when `out` is the checkpoint or holds it (`--force` would delete it). On error nothing is left
/// at `out` (an existing package is untouched).
pub fn export(
    checkpoint: &Path,
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(Step),
) -> Result<ExportReport> {
    if out.exists() && !opts.force {
        return Err(Error::OutputExists(out.to_path_buf()));
    }
    if let (Ok(out_abs), Ok(ckpt_abs)) = (out.canonicalize(), checkpoint.canonicalize())
        && ckpt_abs.starts_with(&out_abs)
    {
        return Err(Error::Io {
            path: out.to_path_buf(),
            message: format!(
                "the output would replace the checkpoint it is exported from ({}); choose another --out",
                checkpoint.display()
            ),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = tempfile::Builder::new().prefix(".monovlm-export-").tempdir_in(&parent).map_err(io(&parent))?;
    let dir = tmp.path();
    let onnx_dir = dir.join(ONNX_DIR);
    std::fs::create_dir_all(&onnx_dir).map_err(io(&onnx_dir))?;

    progress(Step::OpenCheckpoint);
    let ck = Checkpoint::open(checkpoint)?;
    let p = opts.precision;
    let names = GraphFiles::for_precision(p);
    // int4 quantizes only the decoder; its vision encoder and embeddings are the fp32 graphs.
    let side = if p == Precision::Int4 { Precision::Fp32 } else { p };
    let mut files = Vec::new();

    progress(Step::Vision);
    let model = vision::build(&ck, side)?;
    files.push(save_graph(&model, dir, &names.vision_encoder, opts.external_data)?);
    drop(model);
    progress(Step::Embed);
    let model = embed::build(&ck, side)?;
    files.push(save_graph(&model, dir, &names.embed_tokens, opts.external_data)?);
    drop(model);
    progress(Step::Decoder);
    let model = decoder::build(&ck, p, Attention::Fused)?;
    files.push(save_graph(&model, dir, &names.decoder, opts.external_data)?);
    drop(model);
    if opts.with_plain_decoder {
        progress(Step::PlainDecoder);
        let model = decoder::build(&ck, p, Attention::Decomposed)?;
        files.push(save_graph(&model, dir, &GraphFiles::plain_decoder(p), opts.external_data)?);
    }
    ck.check_all_used()?;

    progress(Step::Finish);
    let src = ck.dir();
    for name in ["config.json"].iter().chain(COPIED_FILES.iter()) {
        let from = src.join(name);
        if from.is_file() {
            let to = dir.join(name);
            let bytes = std::fs::copy(&from, &to).map_err(io(&from))?;
            files.push(FileReport { path: (*name).to_owned(), bytes });
        }
    }
    let meta = read_json(&src.join("monovlm.json"))?.unwrap_or_else(|| json!({}));
    let pre_path = src.join("preprocessor_config.json");
    let pre = read_json(&pre_path)?;
    let (min_pixels, max_pixels) = pixel_bounds(&meta, pre.as_ref(), &pre_path)?;
    let pre = match pre {
        // The runtime and Hugging Face's processor read the preprocessor's bounds: they are
        // written there too, so both files of the package say the same.
        Some(Value::Object(mut fields)) => {
            fields.insert("min_pixels".into(), json!(min_pixels));
            fields.insert("max_pixels".into(), json!(max_pixels));
            if let Some(Value::Object(size)) = fields.get_mut("size") {
                size.insert("shortest_edge".into(), json!(min_pixels));
                size.insert("longest_edge".into(), json!(max_pixels));
            }
            Value::Object(fields)
        }
        _ => preprocessor_config(min_pixels, max_pixels),
    };
    files.push(FileReport {
        path: "preprocessor_config.json".into(),
        bytes: write_json(&dir.join("preprocessor_config.json"), &pre)?,
    });
    let package_meta = package_meta(&meta, p, &names, opts.with_plain_decoder, min_pixels, max_pixels);
    files.push(FileReport {
        path: "monovlm.json".into(),
        bytes: write_json(&dir.join("monovlm.json"), &package_meta)?,
    });

    // Into place: the files reach the disk, then the temporary directory becomes `out`; an old
    // package is moved aside first and removed only once the new one is in place.
    sync_tree(dir)?;
    let backup = if out.exists() {
        let b = parent.join(format!(".monovlm-export-old-{}", std::process::id()));
        // On failure `tmp` is still owned here, so dropping it removes the new files.
        std::fs::rename(out, &b).map_err(io(out))?;
        Some(b)
    } else {
        None
    };
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, out) {
        if let Some(b) = &backup {
            let _ = std::fs::rename(b, out);
        }
        let _ = std::fs::remove_dir_all(&kept);
        return Err(Error::Io { path: out.to_path_buf(), message: e.to_string() });
    }
    sync_dir(&parent)?;
    if let Some(b) = backup {
        let removed = if b.is_dir() { std::fs::remove_dir_all(&b) } else { std::fs::remove_file(&b) };
        removed.map_err(io(&b))?;
    }
    Ok(ExportReport { package: out.to_path_buf(), files })
}

/// The image size bounds `(min_pixels, max_pixels)` of the package: the checkpoint's
/// preprocessor's (`min_pixels`/`max_pixels`, or transformers' newer `size.shortest_edge`/
/// `size.longest_edge`), else `monovlm.json`'s, else the defaults.
///
/// # Errors
/// [`Error::Checkpoint`] when both files set a bound and disagree (the model was trained at one
/// of them; which one cannot be told).
fn pixel_bounds(meta: &Value, pre: Option<&Value>, pre_path: &Path) -> Result<(u64, u64)> {
    let from_pre = |key: &str, size_key: &str| {
        let pre = pre?;
        pre.get(key).and_then(Value::as_u64).or_else(|| pre.get("size")?.get(size_key)?.as_u64())
    };
    let mut bounds = [0u64; 2];
    for (bound, (key, size_key, default)) in bounds.iter_mut().zip([
        ("min_pixels", "shortest_edge", DEFAULT_MIN_PIXELS),
        ("max_pixels", "longest_edge", DEFAULT_MAX_PIXELS),
    ]) {
        let in_meta = meta.get(key).and_then(Value::as_u64);
        *bound = match (from_pre(key, size_key), in_meta) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Checkpoint {
                    path: pre_path.to_path_buf(),
                    message: format!("{key} is {a} here but {b} in monovlm.json; make them agree"),
                });
            }
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => default as u64,
        };
    }
    Ok((bounds[0], bounds[1]))
}

/// Flushes every file under `dir` and the directories themselves to the disk, so a package that
/// has been renamed into place survives a power cut (a vehicle's computer loses power).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (the names of the files in it) to the disk.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// The Qwen2-VL image processor's `preprocessor_config.json` with our image size bounds.
pub fn preprocessor_config(min_pixels: u64, max_pixels: u64) -> Value {
    json!({
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": true,
        "do_resize": true,
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2
    })
}

fn package_meta(
    checkpoint_meta: &Value,
    precision: Precision,
    names: &GraphFiles,
    plain: bool,
    min_pixels: u64,
    max_pixels: u64,
) -> Value {
    let mut meta = match checkpoint_meta {
        Value::Object(_) => checkpoint_meta.clone(),
        _ => json!({}),
    };
    if meta.get("protocol_version").is_none() {
        meta["protocol_version"] = json!(PROTOCOL_VERSION);
    }
    meta["min_pixels"] = json!(min_pixels);
    meta["max_pixels"] = json!(max_pixels);
    let mut graphs = json!({
        "vision_encoder": names.vision_encoder,
        "embed_tokens": names.embed_tokens,
        "decoder": names.decoder,
    });
    if plain {
        graphs["decoder_plain"] = json!(GraphFiles::plain_decoder(precision));
    }
    meta["package"] = json!({
        "format": PACKAGE_FORMAT,
        "exporter": format!("monovlm-export {}", env!("CARGO_PKG_VERSION")),
        "precision": precision.name(),
        "opset": {"ai.onnx": ONNX_OPSET, "com.microsoft": MS_OPSET},
        "graphs": graphs,
        "vision_inputs": [vision::PIXEL_VALUES, vision::POSITION_IDS, vision::WINDOW_INDEX, vision::CU_WINDOW_SEQLENS, vision::CU_SEQLENS],
        "decoder_attention": "GroupQueryAttention; batch rows right-padded",
    });
    meta
}
