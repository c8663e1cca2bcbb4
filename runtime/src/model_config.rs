//! `config.json` of `Qwen2_5_VLForConditionalGeneration`, read in both layouts transformers has used
//! (text fields at the top level with `rope_scaling`, as on the hub; or nested in `text_config` with
//! `rope_parameters`, as transformers 5 writes) and written so that both read it.
//!
//! One implementation for the three crates that meet at this file: the trainer (checkpoints), the
//! exporter (checkpoint -> package) and the runtime (package).

use std::path::Path;

use serde_json::{Value, json};

use crate::{Error, Result};

/// The language model's hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// Rows of the embedding table (and of `lm_head`).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Multimodal RoPE: how many of the `head_dim / 2` frequencies follow the temporal, height and
    /// width position rows. Sums to `head_dim / 2`.
    pub mrope_section: [i64; 3],
    /// Longest position the model was configured for.
    pub max_position_embeddings: i64,
    /// Standard deviation of the random initialisation of linear and embedding weights.
    pub initializer_range: f64,
}

impl TextConfig {
    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// The vision tower's hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// Transformer blocks.
    pub depth: i64,
    /// Width of the vision residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Pixels per patch side (14).
    pub patch_size: i64,
    /// Frames per temporal patch (2; a still image is repeated).
    pub temporal_patch_size: i64,
    /// Patches per side merged into one LLM token (2).
    pub spatial_merge_size: i64,
    /// Side of the attention windows in pixels (112).
    pub window_size: i64,
    /// Blocks that attend over the whole image; all others attend within windows.
    pub fullatt_block_indexes: Vec<i64>,
    /// Output width of the patch merger (= the language model's `hidden_size`).
    pub out_hidden_size: i64,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    /// Temporal rotary scale for videos (kept for round trips; images do not use it).
    pub tokens_per_second: i64,
    /// Periods, in merged tokens, of an absolute position code: each merged token's `(row, column)`
    /// (row-major, the rows first) times `2 pi / period`, as sines then cosines (`4 * periods`
    /// values, see [`abs_position_code`]), which a learned projection
    /// ([`ABS_POSITION_WEIGHT`], `[out_hidden_size, 4 * periods]`) adds to the merger's output.
    /// Empty in Qwen2.5-VL, whose image features carry no absolute position (only the rotary's
    /// relative one). Our extension: `config.json`'s `vision_config.monovlm_abs_position_periods`,
    /// written only when non-empty, so standard checkpoints round-trip unchanged.
    pub abs_position_periods: Vec<f64>,
}

/// Tensor of the absolute position code's projection (see [`VisionConfig::abs_position_periods`]).
pub const ABS_POSITION_WEIGHT: &str = "visual.merger.pos_proj.weight";

/// The periods `monovlm-train init --abs-position` uses: 4 to 128 merged tokens (112 to 3,584
/// pixels). The code repeats after 128 merged tokens, so every position of a frame up to 3,584
/// pixels a side (far more than our presets' inputs) has its own.
pub const DEFAULT_ABS_POSITION_PERIODS: [f64; 6] = [4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// `2 pi / period` of each period (radians per merged token): the code's angular frequencies.
pub fn abs_position_frequencies(periods: &[f64]) -> Vec<f64> {
    periods.iter().map(|p| 2.0 * std::f64::consts::PI / p).collect()
}

/// The absolute position code of one merged token at `(row, column)` of its image's merged grid:
/// `[sin(row w_1) .. sin(row w_n), sin(col w_1) .. sin(col w_n), cos(row w_1) .. cos(col w_n)]`
/// with `w_i = 2 pi / periods[i]`. The reference the trainer's and the exported graph's code are
/// tested against.
pub fn abs_position_code(row: f64, col: f64, periods: &[f64]) -> Vec<f64> {
    let omega = abs_position_frequencies(periods);
    let angles: Vec<f64> = [row, col].iter().flat_map(|&x| omega.iter().map(move |w| x * w)).collect();
    angles.iter().map(|a| a.sin()).chain(angles.iter().map(|a| a.cos())).collect()
}

impl VisionConfig {
    /// `hidden_size / num_heads`.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    /// Values per flattened patch row of `pixel_values`: `3 * temporal_patch * patch * patch`.
    pub fn patch_dim(&self) -> i64 {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// A whole Qwen2.5-VL configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen25VlConfig {
    /// The language model.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// `<|image_pad|>`: one per merged image token, replaced by the image features.
    pub image_token_id: i64,
    /// `<|video_pad|>`.
    pub video_token_id: i64,
    /// `<|vision_start|>`.
    pub vision_start_token_id: i64,
    /// `<|vision_end|>`.
    pub vision_end_token_id: i64,
    /// `lm_head` shares the embedding table.
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<i64>,
    /// Beginning-of-sequence token id, when the config names one.
    pub bos_token_id: Option<i64>,
    /// Padding token id, when the config names one.
    pub pad_token_id: Option<i64>,
}

fn field<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn int(obj: &Value, keys: &[&str], what: &str) -> Result<i64> {
    keys.iter()
        .find_map(|k| field(obj, k))
        .ok_or_else(|| Error::ModelConfig(format!("{what}: missing `{}`", keys[0])))?
        .as_i64()
        .ok_or_else(|| Error::ModelConfig(format!("{what}: `{}` is not an integer", keys[0])))
}

fn int_or(obj: &Value, key: &str, default: i64, what: &str) -> Result<i64> {
    match field(obj, key) {
        None => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| Error::ModelConfig(format!("{what}: `{key}` is not an integer"))),
    }
}

fn float_or(obj: &Value, key: &str, default: f64, what: &str) -> Result<f64> {
    match field(obj, key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| Error::ModelConfig(format!("{what}: `{key}` is not a number"))),
    }
}

/// A JSON list whose every item `item` reads (`kind` names what it expects, for the error).
fn list<T>(v: &Value, what: &str, kind: &str, item: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>> {
    v.as_array()
        .ok_or_else(|| Error::ModelConfig(format!("{what} is not a list")))?
        .iter()
        .map(|x| item(x).ok_or_else(|| Error::ModelConfig(format!("{what} holds a non-{kind}"))))
        .collect()
}

fn float_list(v: &Value, what: &str) -> Result<Vec<f64>> {
    list(v, what, "number", Value::as_f64)
}

fn int_list(v: &Value, what: &str) -> Result<Vec<i64>> {
    list(v, what, "integer", Value::as_i64)
}

/// `eos_token_id` may be one id or a list.
fn ids(v: Option<&Value>, what: &str) -> Result<Vec<i64>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(_)) => int_list(v.unwrap_or(&Value::Null), what),
        Some(x) => {
            Ok(vec![x.as_i64().ok_or_else(|| Error::ModelConfig(format!("{what} is not an integer")))?])
        }
    }
}

impl Qwen25VlConfig {
    /// Reads `config.json` from a checkpoint directory or file.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the file and what is wrong (unreadable, not JSON, a field).
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::ModelConfig(format!("{}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::ModelConfig(format!("{}: not JSON: {e}", path.display())))?;
        Self::from_json(&value).map_err(|e| match e {
            Error::ModelConfig(m) => Error::ModelConfig(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a `config.json` document and checks it describes an architecture we implement.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the missing or inconsistent field.
    pub fn from_json(root: &Value) -> Result<Self> {
        if let Some(model_type) = field(root, "model_type").and_then(Value::as_str)
            && !matches!(model_type, "qwen2_5_vl")
        {
            return Err(Error::ModelConfig(format!(
                "model_type {model_type:?} is not qwen2_5_vl (Qwen2.5-VL / MiMo-VL layout)"
            )));
        }
        // transformers 5 nests the text fields; the hub's files keep them at the top level.
        let text_obj = field(root, "text_config").unwrap_or(root);
        let t = "text_config";
        let hidden_size = int(text_obj, &["hidden_size"], t)?;
        let num_attention_heads = int(text_obj, &["num_attention_heads"], t)?;
        let rope = field(text_obj, "rope_parameters")
            .or_else(|| field(text_obj, "rope_scaling"))
            .or_else(|| field(root, "rope_scaling"))
            .ok_or_else(|| {
                Error::ModelConfig("no rope_parameters / rope_scaling with mrope_section".into())
            })?;
        let section = int_list(
            field(rope, "mrope_section")
                .ok_or_else(|| Error::ModelConfig("rope parameters lack mrope_section".into()))?,
            "mrope_section",
        )?;
        let mrope_section: [i64; 3] =
            section.try_into().map_err(|_| Error::ModelConfig("mrope_section must have 3 entries".into()))?;
        let rope_theta = match field(rope, "rope_theta") {
            Some(v) => v.as_f64().ok_or_else(|| Error::ModelConfig("rope_theta is not a number".into()))?,
            None => float_or(text_obj, "rope_theta", float_or(root, "rope_theta", 1e6, t)?, t)?,
        };
        let text = TextConfig {
            vocab_size: int(text_obj, &["vocab_size"], t).or_else(|_| int(root, &["vocab_size"], t))?,
            hidden_size,
            intermediate_size: int(text_obj, &["intermediate_size"], t)?,
            num_hidden_layers: int(text_obj, &["num_hidden_layers"], t)?,
            num_attention_heads,
            num_key_value_heads: int_or(text_obj, "num_key_value_heads", num_attention_heads, t)?,
            rms_norm_eps: float_or(text_obj, "rms_norm_eps", 1e-6, t)?,
            rope_theta,
            mrope_section,
            max_position_embeddings: int_or(text_obj, "max_position_embeddings", 128_000, t)?,
            initializer_range: float_or(text_obj, "initializer_range", 0.02, t)?,
        };
        if let Some(act) = field(text_obj, "hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(Error::ModelConfig(format!("text hidden_act {act:?}: only silu is implemented")));
        }

        let v = "vision_config";
        let vis =
            field(root, "vision_config").ok_or_else(|| Error::ModelConfig("missing vision_config".into()))?;
        let depth = int(vis, &["depth", "num_hidden_layers"], v)?;
        let vision = VisionConfig {
            depth,
            hidden_size: int(vis, &["hidden_size", "embed_dim"], v)?,
            intermediate_size: int(vis, &["intermediate_size"], v)?,
            num_heads: int(vis, &["num_heads", "num_attention_heads"], v)?,
            patch_size: int_or(vis, "patch_size", 14, v)?,
            temporal_patch_size: int_or(vis, "temporal_patch_size", 2, v)?,
            spatial_merge_size: int_or(vis, "spatial_merge_size", 2, v)?,
            window_size: int_or(vis, "window_size", 112, v)?,
            fullatt_block_indexes: match field(vis, "fullatt_block_indexes") {
                Some(list) => int_list(list, "fullatt_block_indexes")?,
                None => Vec::new(),
            },
            out_hidden_size: int_or(vis, "out_hidden_size", hidden_size, v)?,
            initializer_range: float_or(vis, "initializer_range", 0.02, v)?,
            tokens_per_second: int_or(vis, "tokens_per_second", 2, v)?,
            abs_position_periods: match field(vis, "monovlm_abs_position_periods") {
                None => Vec::new(),
                Some(list) => float_list(list, "monovlm_abs_position_periods")?,
            },
        };
        if vision.abs_position_periods.iter().any(|p| !(p.is_finite() && *p > 0.0)) {
            return Err(Error::ModelConfig(format!(
                "monovlm_abs_position_periods {:?}: every period must be a positive number",
                vision.abs_position_periods
            )));
        }
        if let Some(act) = field(vis, "hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(Error::ModelConfig(format!("vision hidden_act {act:?}: only silu is implemented")));
        }
        let in_channels = int_or(vis, "in_channels", int_or(vis, "in_chans", 3, v)?, v)?;
        if in_channels != 3 {
            return Err(Error::ModelConfig(format!("vision in_channels {in_channels}: expected 3")));
        }

        let tie = field(root, "tie_word_embeddings")
            .or_else(|| field(text_obj, "tie_word_embeddings"))
            .map(|x| x.as_bool().unwrap_or(false))
            .unwrap_or(false);
        let eos =
            ids(field(text_obj, "eos_token_id").or_else(|| field(root, "eos_token_id")), "eos_token_id")?;
        let opt_id = |key: &str| -> Result<Option<i64>> {
            match field(text_obj, key).or_else(|| field(root, key)) {
                None => Ok(None),
                Some(x) => {
                    x.as_i64().map(Some).ok_or_else(|| Error::ModelConfig(format!("{key} is not an integer")))
                }
            }
        };
        let config = Self {
            image_token_id: int_or(root, "image_token_id", 151_655, "config")?,
            video_token_id: int_or(root, "video_token_id", 151_656, "config")?,
            vision_start_token_id: int_or(root, "vision_start_token_id", 151_652, "config")?,
            vision_end_token_id: int_or(root, "vision_end_token_id", 151_653, "config")?,
            tie_word_embeddings: tie,
            eos_token_ids: eos,
            bos_token_id: opt_id("bos_token_id")?,
            pad_token_id: opt_id("pad_token_id")?,
            text,
            vision,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the model code relies on.
    ///
    /// # Errors
    /// [`Error::ModelConfig`] naming the violated invariant.
    pub fn validate(&self) -> Result<()> {
        let t = &self.text;
        let v = &self.vision;
        let bad = |m: String| Err(Error::ModelConfig(m));
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("vision depth", v.depth),
            ("vision hidden_size", v.hidden_size),
            ("vision intermediate_size", v.intermediate_size),
            ("vision num_heads", v.num_heads),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, x)| *x <= 0) {
            return bad(format!("{name} must be positive, got {value}"));
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if t.num_attention_heads % t.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if t.head_dim() % 2 != 0 || t.mrope_section.iter().sum::<i64>() * 2 != t.head_dim() {
            return bad(format!(
                "mrope_section {:?} must sum to head_dim / 2 = {}",
                t.mrope_section,
                t.head_dim() / 2
            ));
        }
        if v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0 {
            return bad(format!(
                "vision head_dim {} must divide hidden_size and be a multiple of 4",
                v.head_dim()
            ));
        }
        if (v.patch_size, v.temporal_patch_size, v.spatial_merge_size) != (14, 2, 2) {
            return bad(
                "vision patch_size/temporal_patch_size/spatial_merge_size must be 14/2/2 (the processor's)"
                    .into(),
            );
        }
        if v.window_size <= 0 || v.window_size % (v.patch_size * v.spatial_merge_size) != 0 {
            return bad(format!("window_size {} must be a positive multiple of 28", v.window_size));
        }
        if let Some(i) = v.fullatt_block_indexes.iter().find(|&&i| i < 0 || i >= v.depth) {
            return bad(format!("fullatt_block_indexes holds {i}, outside 0..{}", v.depth));
        }
        if v.out_hidden_size != t.hidden_size {
            return bad(format!(
                "vision out_hidden_size {} != text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        for (name, id) in [
            ("image_token_id", self.image_token_id),
            ("vision_start_token_id", self.vision_start_token_id),
            ("vision_end_token_id", self.vision_end_token_id),
        ] {
            if id < 0 || id >= t.vocab_size {
                return bad(format!("{name} {id} is outside the vocabulary (size {})", t.vocab_size));
            }
        }
        Ok(())
    }

    /// The `config.json` document in the layout transformers 5 writes (text fields nested in
    /// `text_config` with `rope_parameters`). `dtype` is the weights' storage type (`float32`,
    /// `bfloat16`...).
    pub fn to_json(&self, dtype: &str) -> Value {
        let t = &self.text;
        let v = &self.vision;
        let eos: Value = match self.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let text_fields = json!({
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": t.max_position_embeddings,
            "initializer_range": t.initializer_range,
            "rms_norm_eps": t.rms_norm_eps,
            "use_cache": true,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
        });
        let mut text_config = text_fields;
        text_config["model_type"] = json!("qwen2_5_vl_text");
        text_config["dtype"] = json!(dtype);
        text_config["rope_parameters"] =
            json!({"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": t.mrope_section});
        let mut root = json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "dtype": dtype,
        });
        root["image_token_id"] = json!(self.image_token_id);
        root["video_token_id"] = json!(self.video_token_id);
        root["vision_start_token_id"] = json!(self.vision_start_token_id);
        root["vision_end_token_id"] = json!(self.vision_end_token_id);
        root["tie_word_embeddings"] = json!(self.tie_word_embeddings);
        root["text_config"] = text_config;
        root["vision_config"] = json!({
            "model_type": "qwen2_5_vl_vision",
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "hidden_act": "silu",
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": 3,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "tokens_per_second": v.tokens_per_second,
            "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size,
            "fullatt_block_indexes": v.fullatt_block_indexes,
            "initializer_range": v.initializer_range,
        });
        if !v.abs_position_periods.is_empty() {
            root["vision_config"]["monovlm_abs_position_periods"] = json!(v.abs_position_periods);
        }
        root
    }
}

/// A tensor name in the hub's layout (`visual.*`, `model.layers.*`, `model.embed_tokens.weight`,
/// `lm_head.weight`): transformers 5's in-memory names `model.visual.*` and
/// `model.language_model.*` are mapped back; other names are returned unchanged.
pub fn canonical_tensor_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        name.to_owned()
    }
}
