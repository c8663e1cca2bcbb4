//! Running a package with ONNX Runtime (through `monovlm_runtime::session`) and comparing it with
//! reference outputs: the golden `io.safetensors` of the tiny fixtures (transformers 5.23, which the
//! trainer matches to 2e-5), or another package (fp32 vs int4).
//!
//! [`PackageSessions`] is the minimal inference path the checks need: image features with the
//! index tensors of `monovlm_runtime::preprocess`, embeddings with image rows substituted, 3-row
//! rotary positions, prefill and greedy decoding over the KV cache.

use std::path::Path;

use monovlm_runtime::model_config::Qwen25VlConfig;
use monovlm_runtime::preprocess;
use monovlm_runtime::session::cpu_session;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use safetensors::SafeTensors;

use crate::graphs::{decoder, embed, vision};
use crate::package::GraphFiles;
use crate::{Error, Result};

fn ort_err(graph: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Ort { graph: graph.to_owned(), message: e.to_string() }
}

/// A key/value cache: one `(key, value)` pair of ONNX Runtime values per layer, `[B, kv, len, hd]`.
pub struct KvCache {
    layers: Vec<(DynValue, DynValue)>,
    len: usize,
}

impl KvCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The three graphs of a package in ONNX Runtime sessions (f32 interfaces: fp32 and int4 packages).
pub struct PackageSessions {
    config: Qwen25VlConfig,
    vision: Session,
    embed: Session,
    decoder: Session,
}

/// What [`PackageSessions::generate_greedy`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// `[S, V]` logits of the prompt.
    pub prefill_logits: Vec<f32>,
    /// The image features `[M, D]` fed in place of the image tokens (empty without images).
    pub image_features: Vec<f32>,
    /// Greedy tokens.
    pub tokens: Vec<i64>,
    /// `[tokens, V]`: the logits each token was chosen from.
    pub step_logits: Vec<f32>,
}

fn argmax(row: &[f32]) -> i64 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as i64
}

impl PackageSessions {
    /// Opens the graphs of the package in `dir` named by `files`, on the CPU with `threads` threads
    /// (0: one per core).
    ///
    /// # Errors
    /// [`Error::Runtime`] when the config or a graph does not load.
    pub fn open(dir: &Path, files: &GraphFiles, threads: usize) -> Result<Self> {
        Ok(Self {
            config: Qwen25VlConfig::from_file(dir)?,
            vision: cpu_session(&dir.join(&files.vision_encoder), threads)?,
            embed: cpu_session(&dir.join(&files.embed_tokens), threads)?,
            decoder: cpu_session(&dir.join(&files.decoder), threads)?,
        })
    }

    /// Replaces the decoder session (e.g. by the plain-operator decoder of the same package).
    ///
    /// # Errors
    /// [`Error::Runtime`] when the graph does not load.
    pub fn with_decoder(mut self, path: &Path, threads: usize) -> Result<Self> {
        self.decoder = cpu_session(path, threads)?;
        Ok(self)
    }

    /// The model configuration.
    pub fn config(&self) -> &Qwen25VlConfig {
        &self.config
    }

    /// Image features `[M, D]` of `pixel_values` (`[N, 1176]` row-major) for images of patch grids
    /// `grids`, with the index tensors computed by `monovlm_runtime::preprocess`.
    ///
    /// # Errors
    /// [`Error::Runtime`] for invalid grids; [`Error::Ort`] when the graph fails.
    pub fn image_features(&mut self, pixel_values: &[f32], grids: &[[usize; 3]]) -> Result<Vec<f32>> {
        let window_px = usize::try_from(self.config.vision.window_size)
            .map_err(|_| Error::Graph("window_size must be positive".into()))?;
        let pos = preprocess::vision_position_ids(grids)?;
        let win = preprocess::window_index_sized(grids, window_px)?;
        let cu = preprocess::cu_seqlens(grids)?;
        let n = pos.nrows();
        let row = preprocess::PATCH_ROW_LEN;
        if pixel_values.len() != n * row {
            return Err(Error::Graph(format!(
                "pixel_values has {} values, the grids {grids:?} need {n} x {row}",
                pixel_values.len()
            )));
        }
        let e = ort_err("vision_encoder");
        let inputs = ort::inputs! {
            vision::PIXEL_VALUES => Tensor::from_array(([n, row], pixel_values.to_vec())).map_err(&e)?,
            vision::POSITION_IDS => Tensor::from_array(([n, 2], pos.iter().copied().collect::<Vec<i64>>())).map_err(&e)?,
            vision::WINDOW_INDEX => Tensor::from_array(([win.window_index.len()], win.window_index.to_vec())).map_err(&e)?,
            vision::CU_WINDOW_SEQLENS => Tensor::from_array(([win.cu_window_seqlens.len()], win.cu_window_seqlens.to_vec())).map_err(&e)?,
            vision::CU_SEQLENS => Tensor::from_array(([cu.len()], cu.to_vec())).map_err(&e)?,
        };
        let outputs = self.vision.run(inputs).map_err(&e)?;
        let out = outputs.get(vision::IMAGE_FEATURES).ok_or_else(|| Error::Ort {
            graph: "vision_encoder".into(),
            message: "no image_features output".into(),
        })?;
        let (_, data) = out.try_extract_tensor::<f32>().map_err(&e)?;
        Ok(data.to_vec())
    }

    /// Embeddings `[S, D]` of one sequence of token ids.
    ///
    /// # Errors
    /// [`Error::Ort`] when the graph fails.
    pub fn embed(&mut self, ids: &[i64]) -> Result<Vec<f32>> {
        let e = ort_err("embed_tokens");
        let inputs = ort::inputs! {
            embed::INPUT_IDS => Tensor::from_array(([1, ids.len()], ids.to_vec())).map_err(&e)?,
        };
        let outputs = self.embed.run(inputs).map_err(&e)?;
        let out = outputs.get(embed::INPUTS_EMBEDS).ok_or_else(|| Error::Ort {
            graph: "embed_tokens".into(),
            message: "no inputs_embeds output".into(),
        })?;
        let (_, data) = out.try_extract_tensor::<f32>().map_err(&e)?;
        Ok(data.to_vec())
    }

    /// An empty cache (batch 1).
    ///
    /// # Errors
    /// [`Error::Ort`] when a tensor cannot be created.
    pub fn empty_cache(&self) -> Result<KvCache> {
        let t = &self.config.text;
        let e = ort_err("decoder");
        let shape = [1usize, t.num_key_value_heads.max(0) as usize, 0, t.head_dim().max(0) as usize];
        let mut layers = Vec::new();
        for _ in 0..t.num_hidden_layers {
            let k = Tensor::from_array((shape, Vec::<f32>::new())).map_err(&e)?.into_dyn();
            let v = Tensor::from_array((shape, Vec::<f32>::new())).map_err(&e)?.into_dyn();
            layers.push((k, v));
        }
        Ok(KvCache { layers, len: 0 })
    }

    /// Runs the decoder on `embeds` (`[S, D]`, batch 1) at 3-row positions `positions` (`[3, S]`),
    /// appending to `cache`; returns the logits `[S, V]`.
    ///
    /// # Errors
    /// [`Error::Ort`] when the graph fails.
    pub fn decode(&mut self, embeds: Vec<f32>, positions: Vec<i64>, cache: &mut KvCache) -> Result<Vec<f32>> {
        let t = &self.config.text;
        let d = t.hidden_size.max(1) as usize;
        let s = embeds.len() / d;
        let total = cache.len + s;
        let e = ort_err("decoder");
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> = vec![
            (decoder::INPUTS_EMBEDS.into(), Tensor::from_array(([1, s, d], embeds)).map_err(&e)?.into()),
            (
                decoder::ATTENTION_MASK.into(),
                Tensor::from_array(([1, total], vec![1i64; total])).map_err(&e)?.into(),
            ),
            (decoder::POSITION_IDS.into(), Tensor::from_array(([3, 1, s], positions)).map_err(&e)?.into()),
        ];
        let layers = std::mem::take(&mut cache.layers);
        for (i, (k, v)) in layers.into_iter().enumerate() {
            inputs.push((decoder::past_key(i as i64).into(), k.into()));
            inputs.push((decoder::past_value(i as i64).into(), v.into()));
        }
        let mut outputs = self.decoder.run(inputs).map_err(&e)?;
        let missing =
            |name: String| Error::Ort { graph: "decoder".into(), message: format!("no {name} output") };
        for i in 0..t.num_hidden_layers {
            let k =
                outputs.remove(decoder::present_key(i)).ok_or_else(|| missing(decoder::present_key(i)))?;
            let v = outputs
                .remove(decoder::present_value(i))
                .ok_or_else(|| missing(decoder::present_value(i)))?;
            cache.layers.push((k, v));
        }
        cache.len = total;
        let logits = outputs.get(decoder::LOGITS).ok_or_else(|| missing(decoder::LOGITS.into()))?;
        let (_, data) = logits.try_extract_tensor::<f32>().map_err(&e)?;
        Ok(data.to_vec())
    }

    /// Prompt `input_ids` with images (`pixel_values` of grids `grids`, one run of image tokens each),
    /// then `new_tokens` greedy tokens over the KV cache (no early stop).
    ///
    /// # Errors
    /// [`Error::Runtime`] when the image tokens and grids disagree; [`Error::Ort`] when a graph fails.
    pub fn generate_greedy(
        &mut self,
        input_ids: &[i64],
        pixel_values: &[f32],
        grids: &[[usize; 3]],
        new_tokens: usize,
    ) -> Result<Generation> {
        let d = self.config.text.hidden_size.max(1) as usize;
        let vocab = self.config.text.vocab_size.max(1) as usize;
        let image_token = self.config.image_token_id;
        let image_features =
            if grids.is_empty() { Vec::new() } else { self.image_features(pixel_values, grids)? };
        let mut embeds = self.embed(input_ids)?;
        let image_rows: Vec<usize> =
            input_ids.iter().enumerate().filter(|&(_, &t)| t == image_token).map(|(i, _)| i).collect();
        if image_rows.len() * d != image_features.len() {
            return Err(Error::Graph(format!(
                "{} image tokens but {} image feature rows",
                image_rows.len(),
                image_features.len() / d
            )));
        }
        for (k, &row) in image_rows.iter().enumerate() {
            embeds[row * d..(row + 1) * d].copy_from_slice(&image_features[k * d..(k + 1) * d]);
        }
        let rope = preprocess::rope_index_tokens(input_ids, image_token, grids)?;
        let positions: Vec<i64> = rope.position_ids.iter().copied().collect();
        let mut cache = self.empty_cache()?;
        let prefill_logits = self.decode(embeds, positions, &mut cache)?;
        let s = input_ids.len();
        let mut tokens = Vec::with_capacity(new_tokens);
        let mut step_logits = Vec::with_capacity(new_tokens * vocab);
        let mut last = prefill_logits.get((s.max(1) - 1) * vocab..s * vocab).unwrap_or(&[]).to_vec();
        for step in 0..new_tokens {
            let next = argmax(&last);
            tokens.push(next);
            step_logits.extend_from_slice(&last);
            if step + 1 == new_tokens {
                break;
            }
            let position = (s + step) as i64 + rope.rope_delta;
            let embeds = self.embed(&[next])?;
            last = self.decode(embeds, vec![position; 3], &mut cache)?;
        }
        Ok(Generation { prefill_logits, image_features, tokens, step_logits })
    }
}

/// Golden inputs and outputs of a tiny fixture (`io.safetensors`, see `io.json` beside it).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// `[N, 1176]` patches.
    pub pixel_values: Vec<f32>,
    /// Patch grids of the images.
    pub grids: Vec<[usize; 3]>,
    /// The prompt.
    pub input_ids: Vec<i64>,
    /// `[3, S]` positions of the prompt.
    pub position_ids: Vec<i64>,
    /// `[M, D]` image features.
    pub vision_embeds: Vec<f32>,
    /// `[S, V]` prompt logits.
    pub logits: Vec<f32>,
    /// Greedy tokens.
    pub greedy_tokens: Vec<i64>,
    /// `[tokens, V]` logits of each greedy step.
    pub greedy_logits: Vec<f32>,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

impl Reference {
    /// Reads `io.safetensors`.
    ///
    /// # Errors
    /// [`Error::Reference`] naming a missing tensor or an unreadable file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Reference(format!("{}: {e}", path.display())))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Reference(format!("{}: {e}", path.display())))?;
        let get = |name: &str| {
            st.tensor(name).map_err(|e| Error::Reference(format!("{}: {name}: {e}", path.display())))
        };
        let grid_view = get("image_grid_thw")?;
        let grids = i64s(grid_view.data())
            .chunks_exact(3)
            .map(|g| [g[0].max(0) as usize, g[1].max(0) as usize, g[2].max(0) as usize])
            .collect();
        Ok(Self {
            pixel_values: f32s(get("pixel_values")?.data()),
            grids,
            input_ids: i64s(get("input_ids")?.data()),
            position_ids: i64s(get("position_ids")?.data()),
            vision_embeds: f32s(get("vision_embeds")?.data()),
            logits: f32s(get("logits")?.data()),
            greedy_tokens: i64s(get("greedy_tokens")?.data()),
            greedy_logits: f32s(get("greedy_logits")?.data()),
        })
    }
}

/// Largest absolute difference, and the largest magnitude of `reference` (the scale the
/// difference is judged against).
pub fn max_abs_diff(actual: &[f32], reference: &[f32]) -> (f32, f32) {
    // `f32::max` drops NaN, so a NaN anywhere is made infinite first: it must fail every check.
    let finite = |v: f32| if v.is_nan() { f32::INFINITY } else { v };
    let diff = actual.iter().zip(reference).map(|(a, b)| finite((a - b).abs())).fold(0.0f32, f32::max);
    let diff = if actual.len() == reference.len() { diff } else { f32::INFINITY };
    (diff, reference.iter().map(|v| finite(v.abs())).fold(0.0f32, f32::max))
}

/// fp32 parity bound against golden outputs: image features absolutely, logits relative to their
/// scale (see [`Parity::within`]).
pub const FP32_TOL: f32 = 1e-4;

/// A lossy (int4, fp16) package is refused when its prompt logits differ from the fp32 package's
/// by this fraction of their scale or more, or are not finite ([`Agreement::relative_logits_error`]).
/// Token agreement is reported, not gated: on an untrained model the top logits are nearly tied
/// and any rounding flips them.
pub const LOSSY_MAX_RELATIVE_ERROR: f32 = 0.5;

/// Agreement of a package with a fixture's golden outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Parity {
    /// Max |image features - reference|.
    pub vision_max_abs: f32,
    /// Max |prompt logits - reference|.
    pub logits_max_abs: f32,
    /// Largest |reference logit| (the scale of `logits_max_abs`).
    pub logits_scale: f32,
    /// Max |greedy-step logits - reference|.
    pub greedy_logits_max_abs: f32,
    /// The package's greedy tokens.
    pub tokens: Vec<i64>,
    /// The reference greedy tokens.
    pub reference_tokens: Vec<i64>,
}

impl Parity {
    /// Whether the greedy tokens are identical.
    pub fn tokens_equal(&self) -> bool {
        self.tokens == self.reference_tokens
    }

    /// Whether the package reproduces the golden outputs: image features within `tol`, prompt and
    /// every greedy step's logits within `tol` times the logits' scale (at least 1), and the same
    /// greedy tokens. A NaN anywhere fails (see [`max_abs_diff`]).
    pub fn within(&self, tol: f32) -> bool {
        let logits_tol = tol * self.logits_scale.max(1.0);
        self.vision_max_abs < tol
            && self.logits_max_abs < logits_tol
            && self.greedy_logits_max_abs < logits_tol
            && self.tokens_equal()
    }
}

/// Runs the fixture's prompt through `sessions` and compares with `reference`.
///
/// # Errors
/// As [`PackageSessions::generate_greedy`].
pub fn parity(sessions: &mut PackageSessions, reference: &Reference) -> Result<Parity> {
    let gen_ = sessions.generate_greedy(
        &reference.input_ids,
        &reference.pixel_values,
        &reference.grids,
        reference.greedy_tokens.len(),
    )?;
    let (vision_max_abs, _) = max_abs_diff(&gen_.image_features, &reference.vision_embeds);
    let (logits_max_abs, logits_scale) = max_abs_diff(&gen_.prefill_logits, &reference.logits);
    let (greedy_logits_max_abs, _) = max_abs_diff(&gen_.step_logits, &reference.greedy_logits);
    Ok(Parity {
        vision_max_abs,
        logits_max_abs,
        logits_scale,
        greedy_logits_max_abs,
        tokens: gen_.tokens,
        reference_tokens: reference.greedy_tokens.clone(),
    })
}

/// A prompt of the tiny configs' shape: `text_before` text tokens, one image of grid `grid`
/// (between vision start/end tokens), `text_after` text tokens; ids below the special tokens.
/// Returns `(input_ids, pixel_values)` with deterministic pseudo-random pixels in `[-2, 2]`.
pub fn synthetic_prompt(config: &Qwen25VlConfig, grid: [usize; 3], seed: u64) -> (Vec<i64>, Vec<f32>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut next = move || {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let specials = [
        config.image_token_id,
        config.vision_start_token_id,
        config.vision_end_token_id,
        config.video_token_id,
    ];
    let text_limit =
        specials.iter().copied().filter(|&t| t > 0).min().unwrap_or(config.text.vocab_size).max(1) as u64;
    let mut text = |n: usize| (0..n).map(|_| (next() % text_limit) as i64).collect::<Vec<_>>();
    let image_tokens = grid[0] * grid[1] * grid[2] / preprocess::MERGE_UNIT;
    let mut ids = text(12);
    ids.push(config.vision_start_token_id);
    ids.extend(std::iter::repeat_n(config.image_token_id, image_tokens));
    ids.push(config.vision_end_token_id);
    ids.extend(text(10));
    let n = grid[0] * grid[1] * grid[2] * preprocess::PATCH_ROW_LEN;
    let mut px_state = seed ^ 0xA5A5_A5A5;
    let pixels = (0..n)
        .map(|_| {
            px_state =
                px_state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((px_state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    (ids, pixels)
}

/// Agreement of two packages' greedy answers on the same prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Prompts run.
    pub prompts: usize,
    /// Greedy tokens compared.
    pub tokens: usize,
    /// Greedy tokens equal at the same step (stopping at the first difference of each prompt).
    pub equal_prefix_tokens: usize,
    /// Prompts whose greedy tokens are all equal.
    pub identical_prompts: usize,
    /// Max |prompt logits difference| over all prompts.
    pub logits_max_abs: f32,
    /// Max |logit| of the reference package (the scale).
    pub logits_scale: f32,
}

impl Agreement {
    /// The candidate's largest prompt-logit error as a fraction of the reference's scale
    /// (infinite when either is not finite or the reference logits are all zero).
    pub fn relative_logits_error(&self) -> f32 {
        if self.logits_scale.is_finite() && self.logits_scale > 0.0 && self.logits_max_abs.is_finite() {
            self.logits_max_abs / self.logits_scale
        } else {
            f32::INFINITY
        }
    }
}

/// Runs `prompts` synthetic prompts (image grid `[1, 4, 6]`) through both packages and compares
/// their prompt logits and `new_tokens` greedy tokens.
///
/// # Errors
/// As [`PackageSessions::generate_greedy`].
pub fn agreement(
    reference: &mut PackageSessions,
    candidate: &mut PackageSessions,
    prompts: usize,
    new_tokens: usize,
) -> Result<Agreement> {
    let mut out = Agreement {
        prompts,
        tokens: 0,
        equal_prefix_tokens: 0,
        identical_prompts: 0,
        logits_max_abs: 0.0,
        logits_scale: 0.0,
    };
    for seed in 0..prompts as u64 {
        let grid = [1, 4, 6];
        let (ids, pixels) = synthetic_prompt(reference.config(), grid, seed);
        let a = reference.generate_greedy(&ids, &pixels, &[grid], new_tokens)?;
        let b = candidate.generate_greedy(&ids, &pixels, &[grid], new_tokens)?;
        let (diff, scale) = max_abs_diff(&b.prefill_logits, &a.prefill_logits);
        out.logits_max_abs = out.logits_max_abs.max(diff);
        out.logits_scale = out.logits_scale.max(scale);
        out.tokens += new_tokens;
        out.equal_prefix_tokens += a.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x == y).count();
        out.identical_prompts += usize::from(a.tokens == b.tokens);
    }
    Ok(out)
}
