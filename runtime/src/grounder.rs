//! The grounding API: frame + queries + intrinsics in, one 2D and 3D box per query out.
//!
//! Per frame: undistort (when the intrinsics carry distortion), preprocess, run the vision encoder
//! once; then all queries of the frame go through the decoder as one batch (rows right-padded, as
//! the fused decoder's `GroupQueryAttention` requires, `docs/model-package.md`), decoding over the
//! KV cache until every row has emitted `<|im_end|>` (or a config end token) or the token limit — greedy, or several
//! sampled answers per query merged by their coordinate median ([`crate::decoding`]). Answers are
//! parsed with [`crate::protocol::parse_answer`]; the 2D box is mapped back to camera pixels and
//! the 3D box's corners are projected with the camera's own intrinsics (`calib`).

use std::time::Instant;

use image::RgbImage;
use monovlm_calib::Intrinsics;
use monovlm_calib::synth::SplitMix64;
use monovlm_calib::undistort::{NewCamera, UndistortMap, new_camera};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};

use crate::decoding::{Decoding, consensus, pick_token};
use crate::error::{Error, Result};
use crate::package::ModelPackage;
use crate::preprocess::{self, Preprocessed};
use crate::protocol::{self, Query};
use crate::session::{Device, SessionOptions, open_session};
use crate::source::Frame;

/// Tokens generated per query at most, by default: a formatted answer of the protocol is about 60
/// byte-level tokens, a short `<think>` fits in the rest.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 128;

/// Graph input and output names (`docs/model-package.md`).
mod names {
    pub const PIXEL_VALUES: &str = "pixel_values";
    pub const VISION_POSITION_IDS: &str = "vision_position_ids";
    pub const WINDOW_INDEX: &str = "window_index";
    pub const CU_WINDOW_SEQLENS: &str = "cu_window_seqlens";
    pub const CU_SEQLENS: &str = "cu_seqlens";
    pub const IMAGE_FEATURES: &str = "image_features";
    pub const INPUT_IDS: &str = "input_ids";
    pub const INPUTS_EMBEDS: &str = "inputs_embeds";
    pub const ATTENTION_MASK: &str = "attention_mask";
    pub const POSITION_IDS: &str = "position_ids";
    pub const LOGITS: &str = "logits";
}

/// How a [`Grounder`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct GrounderOptions {
    /// Sessions: execution providers and threads.
    pub session: SessionOptions,
    /// Tokens generated per query at most.
    pub max_new_tokens: usize,
    /// Decode a frame's queries as one batch (`true`) or one after the other.
    pub batch_queries: bool,
    /// Greedy, or a consensus of sampled answers (each query then takes `samples` decoder rows).
    pub decoding: Decoding,
}

impl Default for GrounderOptions {
    fn default() -> Self {
        Self {
            session: SessionOptions::default(),
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            batch_queries: true,
            decoding: Decoding::Greedy,
        }
    }
}

/// Where the time of one frame went, milliseconds (shared by the frame's queries).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Undistortion, resize, normalisation, patch flattening, index tensors.
    pub preprocess_ms: f64,
    /// Vision encoder.
    pub vision_ms: f64,
    /// Prompt building and tokenisation.
    pub tokenize_ms: f64,
    /// Prompt embeddings and the decoder over the prompts.
    pub prefill_ms: f64,
    /// Decoding steps after the prefill.
    pub decode_ms: f64,
    /// Detokenisation, parsing, box mapping and projection.
    pub postprocess_ms: f64,
    /// Everything, from the frame to the results.
    pub total_ms: f64,
    /// Time spent inside ONNX Runtime `run` calls (part of the above).
    pub ort_ms: f64,
    /// Tokens generated over all queries of the frame.
    pub new_tokens: usize,
    /// `new_tokens` per second of `decode_ms` (the prefill's first token included in the count).
    pub tokens_per_s: f64,
    /// Decoder rows run together: queries times samples per query, or the samples of one query
    /// when [`GrounderOptions::batch_queries`] is off.
    pub batch: usize,
}

/// A parsed answer in the camera's terms.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GroundedBox {
    /// `[x1, y1, x2, y2]` in camera (frame) pixels, clipped to the image when it overlaps it (a box
    /// wholly outside the frame is kept as mapped, so a client can tell where the model pointed).
    pub bbox_2d_px: [f64; 4],
    /// `[x1, y1, x2, y2]` as the model wrote it, model-input pixels.
    pub bbox_2d_model_px: [f64; 4],
    /// `[x, y, z, l, w, h, yaw]`: centre in the camera frame (x right, y down, z forward), metres;
    /// yaw about y, radians.
    pub bbox_3d_cam: [f64; 7],
    /// The 8 corners in the camera frame, metres (order of `calib::Box3d::corners`).
    pub corners_cam_m: [[f64; 3]; 8],
    /// Their pixels in the camera image (`None` behind the camera).
    pub corners_px: Vec<Option<[f64; 2]>>,
}

/// The result of one query on one frame.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Grounding {
    /// The frame's index in its source.
    pub frame_index: u64,
    /// The frame's name (file name, device).
    pub frame_name: String,
    /// The query, normalised.
    pub query: String,
    /// The model's text (special tokens removed); with consensus decoding, the consensus answer in
    /// the protocol's format when one parsed, else the first sample's text.
    pub text: String,
    /// The boxes, when the text parsed.
    pub answer: Option<GroundedBox>,
    /// Why the text did not parse.
    pub error: Option<String>,
    /// Tokens generated for this query over all its samples (stop tokens included).
    pub tokens: usize,
    /// Whether generation ended on `<|im_end|>` or a config end token (else on the token limit),
    /// for every sample.
    pub stopped: bool,
    /// Answers sampled (1 for greedy decoding).
    pub samples: usize,
    /// Of them, those that parsed and entered the consensus.
    pub parsed_samples: usize,
    /// The execution provider the decoder ran on.
    pub provider: Device,
    /// The frame's timings.
    pub timings: Timings,
}

/// Continuations of a batch of prompts (greedy or sampled, as the grounder decodes).
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Per prompt: generated ids, the stop token included when reached.
    pub tokens: Vec<Vec<i64>>,
    /// Per prompt: whether it reached the stop token.
    pub stopped: Vec<bool>,
}

/// Per-frame accumulators.
#[derive(Default)]
struct Clock {
    ort_s: f64,
}

impl Clock {
    fn run<'s, 'v>(
        &mut self,
        session: &'s mut Session,
        graph: &'static str,
        inputs: Vec<(std::borrow::Cow<'static, str>, SessionInputValue<'v>)>,
    ) -> Result<ort::session::SessionOutputs<'s>> {
        let t = Instant::now();
        let out = session.run(inputs).map_err(|e| inference(graph, e))?;
        self.ort_s += t.elapsed().as_secs_f64();
        Ok(out)
    }
}

fn inference(graph: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Inference { graph, message: e.to_string() }
}

fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    graph: &'static str,
    shape: Vec<usize>,
    data: Vec<T>,
) -> Result<SessionInputValue<'static>> {
    Ok(Tensor::from_array((shape, data)).map_err(|e| inference(graph, e))?.into())
}

fn take_f32(outputs: &ort::session::SessionOutputs<'_>, graph: &'static str, name: &str) -> Result<Vec<f32>> {
    let v = outputs.get(name).ok_or_else(|| inference(graph, format!("no output {name}")))?;
    let (_, data) = v.try_extract_tensor::<f32>().map_err(|e| inference(graph, e))?;
    Ok(data.to_vec())
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

/// A loaded package in ONNX Runtime sessions, ready to ground queries.
pub struct Grounder {
    package: ModelPackage,
    vision: Session,
    embed: Session,
    decoder: Session,
    providers: [Device; 3],
    options: GrounderOptions,
    /// The last undistortion: the camera it was built for, its pinhole camera and the remap table.
    undistort: Option<(Intrinsics, Intrinsics, UndistortMap)>,
    /// The last frame's patch rows, handed back by [`Grounder::ground`] for the next frame to
    /// overwrite (`preprocess_image_reusing`).
    spare_pixels: Option<ndarray::Array2<f32>>,
    /// The sampling generator; its state carries over from call to call. Each decoder row draws
    /// from its own generator seeded from this one, in row order, so a row's tokens depend on its
    /// own logits only (batched and one-query-at-a-time decoding write the same answers).
    rng: SplitMix64,
}

impl std::fmt::Debug for Grounder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grounder")
            .field("package", &self.package.dir)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl Grounder {
    /// Loads the package in `dir` ([`ModelPackage::open`]) and opens its three graphs.
    ///
    /// # Errors
    /// [`Error::Package`] for a wrong package, including a graph ONNX Runtime cannot load
    /// (truncated, corrupt, unknown operator: its message against the file); ONNX Runtime loading
    /// errors; [`Error::Package`] for an fp16 package (f16 interfaces are not wired here yet);
    /// [`Error::InvalidOptions`] for decoding parameters that cannot run or a token limit of 0
    /// (no answer could be written); [`Error::NoProvider`] when no requested provider opens a graph.
    pub fn open(dir: &std::path::Path, options: GrounderOptions) -> Result<Self> {
        options.decoding.validate()?;
        if options.max_new_tokens == 0 {
            return Err(Error::InvalidOptions("max_new_tokens must be at least 1".into()));
        }
        let package = ModelPackage::open(dir)?;
        if !package.precision.f32_interfaces() {
            return Err(Error::Package {
                path: dir.join("monovlm.json"),
                problem: format!(
                    "precision {}: this runtime feeds f32 interfaces only (use an fp32 or int4 package)",
                    package.precision.name()
                ),
            });
        }
        let open = |rel: &std::path::Path| -> Result<(Session, Device)> {
            let path = package.graph(rel);
            // Only the CPU provider's refusal is the file's fault (see `open_session`).
            open_session(&path, &options.session).map_err(|e| match e {
                Error::OrtSession { path, message } => Error::Package {
                    path,
                    problem: format!("ONNX Runtime cannot load it (truncated or corrupt?): {message}"),
                },
                other => other,
            })
        };
        let (vision, pv) = open(&package.graphs.vision_encoder)?;
        let (embed, pe) = open(&package.graphs.embed_tokens)?;
        let (decoder, pd) = open(&package.graphs.decoder)?;
        tracing::info!(
            package = %dir.display(),
            vision = %pv, embed = %pe, decoder = %pd,
            "model package loaded"
        );
        Ok(Self {
            package,
            vision,
            embed,
            decoder,
            providers: [pv, pe, pd],
            rng: options.decoding.rng(),
            options,
            undistort: None,
            spare_pixels: None,
        })
    }

    /// The package.
    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The execution provider of the decoder (the graph that dominates a query's time).
    pub fn provider(&self) -> Device {
        self.providers[2]
    }

    /// Providers of the vision encoder, the embeddings and the decoder.
    pub fn providers(&self) -> [Device; 3] {
        self.providers
    }

    /// Undistorts (when `camera` has distortion) and preprocesses a frame. Returns the model input
    /// and the pinhole camera of the image that was preprocessed.
    ///
    /// # Errors
    /// [`Error::ImageSizeMismatch`] when the frame and `camera` differ in size; preprocessing and
    /// undistortion errors.
    pub fn prepare(&mut self, image: &RgbImage, camera: &Intrinsics) -> Result<(Preprocessed, Intrinsics)> {
        let distorted = camera.distortion().is_some_and(|d| !d.is_zero());
        let spare = self.spare_pixels.take();
        if !distorted {
            let pre = preprocess::preprocess_image_reusing(image, camera, &self.package.preprocess, spare)?;
            return Ok((pre, camera.clone()));
        }
        if (image.width(), image.height()) != (camera.width(), camera.height()) {
            return Err(Error::ImageSizeMismatch {
                image: (image.width(), image.height()),
                camera: (camera.width(), camera.height()),
            });
        }
        let reuse = matches!(&self.undistort, Some((k, _, _)) if k == camera);
        if !reuse {
            let pinhole = new_camera(camera, NewCamera::Same)?;
            let map = UndistortMap::new(camera, &pinhole)?;
            self.undistort = Some((camera.clone(), pinhole, map));
        }
        let Some((_, pinhole, map)) = &self.undistort else {
            return Err(Error::InvalidPreprocessConfig("undistortion table missing".into()));
        };
        let undistorted = map.remap_rgb(image)?;
        let pre =
            preprocess::preprocess_image_reusing(&undistorted, pinhole, &self.package.preprocess, spare)?;
        Ok((pre, pinhole.clone()))
    }

    /// Token ids of the prompt for `query` on the model input `pre`: the chat template tokenised
    /// around the image block, whose `<|image_pad|>` run is inserted by id.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the tokenizer fails.
    pub fn prompt_tokens(&self, query: &Query, pre: &Preprocessed) -> Result<Vec<i64>> {
        let text = protocol::chat_prompt(query, &pre.intrinsics, 0, self.package.layout);
        let marker = format!("{}{}", protocol::tokens::VISION_START, protocol::tokens::VISION_END);
        let (before, after) = text
            .split_once(&marker)
            .ok_or_else(|| Error::Tokenizer("the chat template has no image block".into()))?;
        let encode = |s: &str| -> Result<Vec<i64>> {
            let enc = self.package.tokenizer.encode(s, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
            Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
        };
        let st = self.package.special_tokens;
        let mut ids = encode(before)?;
        ids.push(st.vision_start);
        ids.extend(std::iter::repeat_n(st.image_pad, pre.num_image_tokens));
        ids.push(st.vision_end);
        ids.extend(encode(after)?);
        Ok(ids)
    }

    /// Image features `[M, D]` of a preprocessed image.
    fn image_features(&mut self, pre: &Preprocessed, clock: &mut Clock) -> Result<Vec<f32>> {
        let g = "vision_encoder";
        let grids = [pre.grid_thw];
        let window = usize::try_from(self.package.config.vision.window_size)
            .map_err(|_| inference(g, "window_size must be positive"))?;
        let pos = preprocess::vision_position_ids(&grids)?;
        let win = preprocess::window_index_sized(&grids, window)?;
        let cu = preprocess::cu_seqlens(&grids)?;
        // Borrowed, not copied: the patch rows are the largest input of a query.
        let pixels = TensorRef::from_array_view(pre.pixel_values.view()).map_err(|e| inference(g, e))?;
        let inputs = vec![
            (names::PIXEL_VALUES.into(), pixels.into()),
            (
                names::VISION_POSITION_IDS.into(),
                tensor(g, vec![pos.nrows(), 2], pos.iter().copied().collect())?,
            ),
            (names::WINDOW_INDEX.into(), tensor(g, vec![win.window_index.len()], win.window_index.to_vec())?),
            (
                names::CU_WINDOW_SEQLENS.into(),
                tensor(g, vec![win.cu_window_seqlens.len()], win.cu_window_seqlens.to_vec())?,
            ),
            (names::CU_SEQLENS.into(), tensor(g, vec![cu.len()], cu.to_vec())?),
        ];
        let out = clock.run(&mut self.vision, g, inputs)?;
        take_f32(&out, g, names::IMAGE_FEATURES)
    }

    fn embed(&mut self, ids: Vec<i64>, batch: usize, clock: &mut Clock) -> Result<Vec<f32>> {
        let g = "embed_tokens";
        let len = ids.len() / batch.max(1);
        let inputs = vec![(names::INPUT_IDS.into(), tensor(g, vec![batch, len], ids)?)];
        let out = clock.run(&mut self.embed, g, inputs)?;
        take_f32(&out, g, names::INPUTS_EMBEDS)
    }

    /// One decoder call: new embeddings `[B, S, D]`, mask `[B, T]`, positions `[3, B, S]`, and the
    /// cache (replaced by the presents). Returns the next token (greedy or sampled, as
    /// [`GrounderOptions::decoding`] says, never one of `banned`) of each `(logits row, output
    /// row)` in `pick`: the logits row a flat index into the `B * S` rows, read in place (the
    /// `[B, S, V]` logits of a prefill are the largest output and are never copied), the output
    /// row the index of the generator in `rngs` it draws from.
    #[allow(clippy::too_many_arguments)]
    fn decoder_step(
        &mut self,
        embeds: Vec<f32>,
        mask: Vec<i64>,
        positions: Vec<i64>,
        batch: usize,
        new: usize,
        cache: &mut Vec<(DynValue, DynValue)>,
        clock: &mut Clock,
        pick: &[(usize, usize)],
        banned: &[i64],
        rngs: &mut [SplitMix64],
    ) -> Result<Vec<i64>> {
        let g = "decoder";
        let d = usize::try_from(self.package.config.text.hidden_size).unwrap_or(0);
        let total = mask.len() / batch.max(1);
        let mut inputs = vec![
            (names::INPUTS_EMBEDS.into(), tensor(g, vec![batch, new, d], embeds)?),
            (names::ATTENTION_MASK.into(), tensor(g, vec![batch, total], mask)?),
            (names::POSITION_IDS.into(), tensor(g, vec![3, batch, new], positions)?),
        ];
        for (i, (k, v)) in std::mem::take(cache).into_iter().enumerate() {
            inputs.push((format!("past_key_values.{i}.key").into(), k.into()));
            inputs.push((format!("past_key_values.{i}.value").into(), v.into()));
        }
        let layers = self.package.config.text.num_hidden_layers;
        let mut out = clock.run(&mut self.decoder, g, inputs)?;
        for i in 0..layers {
            let k = out
                .remove(format!("present.{i}.key"))
                .ok_or_else(|| inference(g, format!("no present.{i}.key")))?;
            let v = out
                .remove(format!("present.{i}.value"))
                .ok_or_else(|| inference(g, format!("no present.{i}.value")))?;
            cache.push((k, v));
        }
        let logits = out.get(names::LOGITS).ok_or_else(|| inference(g, "no output logits"))?;
        let (_, data) = logits.try_extract_tensor::<f32>().map_err(|e| inference(g, e))?;
        let vocab = usize::try_from(self.package.config.text.vocab_size).unwrap_or(0).max(1);
        let decoding = self.options.decoding;
        pick.iter()
            .map(|&(row, out)| {
                let logits = data
                    .get(row * vocab..(row + 1) * vocab)
                    .ok_or_else(|| inference(g, format!("logits have no row {row}")))?;
                let rng =
                    rngs.get_mut(out).ok_or_else(|| inference(g, format!("no generator for row {out}")))?;
                pick_token(logits, banned, &decoding, rng)
                    .ok_or_else(|| inference(g, format!("logits row {row} has no finite allowed value")))
            })
            .collect()
    }

    /// `samples` continuations of each of `prompts` (token ids, each holding the image block of
    /// `pre` once) sharing the image features `features`; all prompts in one batch, right-padded.
    /// Each prompt is prefilled once; for several samples its KV cache row is then repeated, and
    /// the rows (prompt-major: prompt `i`'s samples are rows `i * samples ..`) decode together.
    // Rows index several parallel arrays (tokens, stopped, next, lengths): a row index reads best.
    #[allow(clippy::needless_range_loop)]
    fn generate_batch(
        &mut self,
        features: &[f32],
        grid: [usize; 3],
        prompts: &[Vec<i64>],
        samples: usize,
        clock: &mut Clock,
        timings: &mut Timings,
    ) -> Result<Generated> {
        let cfg = &self.package.config;
        let d = usize::try_from(cfg.text.hidden_size).unwrap_or(0);
        let vocab = usize::try_from(cfg.text.vocab_size).unwrap_or(0);
        let kv = usize::try_from(cfg.text.num_key_value_heads).unwrap_or(0);
        let hd = usize::try_from(cfg.text.head_dim()).unwrap_or(0);
        let layers = usize::try_from(cfg.text.num_hidden_layers).unwrap_or(0);
        let image_token = cfg.image_token_id;
        let stop = self.package.special_tokens.im_end;
        // Generation ends on `<|im_end|>` and on the config's own end tokens (hub Qwen2.5-VL also
        // ends on `<|endoftext|>`), as the trainer's GRPO sampling does.
        let stops: Vec<i64> = std::iter::once(stop).chain(cfg.eos_token_ids.iter().copied()).collect();
        let banned = [cfg.image_token_id, cfg.video_token_id];
        let b = prompts.len();
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let s = lens.iter().copied().max().unwrap_or(0);
        let n = samples.max(1);
        if b == 0 || s == 0 || d == 0 || vocab == 0 {
            return Ok(Generated { tokens: vec![Vec::new(); b * n], stopped: vec![false; b * n] });
        }
        if lens.contains(&0) {
            return Err(inference("decoder", "an empty prompt has nothing to continue"));
        }
        let mut rngs: Vec<SplitMix64> = (0..b * n).map(|_| SplitMix64::new(self.rng.next_u64())).collect();

        // Prefill: padded ids, image rows substituted, 3-row positions, mask.
        let t_prefill = Instant::now();
        let mut ids = vec![stop; b * s];
        let mut positions = vec![0i64; 3 * b * s];
        let mut mask = vec![0i64; b * s];
        let mut deltas = Vec::with_capacity(b);
        for (r, p) in prompts.iter().enumerate() {
            ids[r * s..r * s + p.len()].copy_from_slice(p);
            let rope = preprocess::rope_index_tokens(p, image_token, &[grid])?;
            for row in 0..3 {
                for (i, &v) in rope.position_ids.row(row).iter().enumerate() {
                    positions[(row * b + r) * s + i] = v;
                }
            }
            mask[r * s..r * s + p.len()].fill(1);
            deltas.push(rope.rope_delta);
        }
        let mut embeds = self.embed(ids.clone(), b, clock)?;
        if embeds.len() != b * s * d {
            return Err(inference("embed_tokens", format!("{} values for [{b}, {s}, {d}]", embeds.len())));
        }
        for (r, p) in prompts.iter().enumerate() {
            let mut k = 0usize;
            for (i, &t) in p.iter().enumerate() {
                if t == image_token {
                    let src = features.get(k * d..(k + 1) * d).ok_or_else(|| {
                        inference("vision_encoder", "fewer image features than image tokens")
                    })?;
                    let at = (r * s + i) * d;
                    embeds[at..at + d].copy_from_slice(src);
                    k += 1;
                }
            }
            if k * d != features.len() {
                return Err(inference("vision_encoder", "more image features than image tokens"));
            }
        }
        let mut cache = Vec::with_capacity(layers);
        for _ in 0..layers {
            let k = Tensor::from_array(([b, kv, 0, hd], Vec::<f32>::new()))
                .map_err(|e| inference("decoder", e))?;
            let v = Tensor::from_array(([b, kv, 0, hd], Vec::<f32>::new()))
                .map_err(|e| inference("decoder", e))?;
            cache.push((k.into_dyn(), v.into_dyn()));
        }
        // Each prompt's last logits row, once per sample (independent draws when sampling).
        let last_rows: Vec<(usize, usize)> = (0..b)
            .flat_map(|r| std::iter::repeat_n(r * s + lens[r] - 1, n))
            .enumerate()
            .map(|(out, row)| (row, out))
            .collect();
        let mut next = self
            .decoder_step(embeds, mask, positions, b, s, &mut cache, clock, &last_rows, &banned, &mut rngs)?;
        let (b, lens, deltas) = if n > 1 {
            for (k, v) in &mut cache {
                *k = repeat_rows(k, n)?;
                *v = repeat_rows(v, n)?;
            }
            let repeat =
                |xs: &[usize]| xs.iter().flat_map(|&x| std::iter::repeat_n(x, n)).collect::<Vec<_>>();
            (b * n, repeat(&lens), deltas.iter().flat_map(|&x| std::iter::repeat_n(x, n)).collect())
        } else {
            (b, lens, deltas)
        };
        timings.prefill_ms = ms(t_prefill.elapsed().as_secs_f64());

        // Decode.
        let t_decode = Instant::now();
        let max_new = self.options.max_new_tokens;
        let mut out = Generated { tokens: vec![Vec::new(); b], stopped: vec![false; b] };
        let mut cached = s;
        for step in 0..max_new {
            let mut active = false;
            for r in 0..b {
                if !out.stopped[r] && out.tokens[r].len() < max_new {
                    out.tokens[r].push(next[r]);
                    if stops.contains(&next[r]) {
                        out.stopped[r] = true;
                    } else {
                        active = true;
                    }
                }
            }
            if !active || step + 1 == max_new {
                break;
            }
            let feed: Vec<i64> = (0..b).map(|r| if out.stopped[r] { stop } else { next[r] }).collect();
            let embeds = self.embed(feed, b, clock)?;
            let total = cached + 1;
            let mut mask = vec![0i64; b * total];
            let mut positions = vec![0i64; 3 * b];
            for r in 0..b {
                // Row r holds lens[r] prompt tokens and `step` fed tokens, then this one.
                let real = lens[r] + step + 1;
                mask[r * total..r * total + real.min(total)].fill(1);
                let pos = (lens[r] + step) as i64 + deltas[r];
                for row in 0..3 {
                    positions[row * b + r] = pos;
                }
            }
            // Only rows still writing pick a token (a finished row's is never read).
            let live: Vec<(usize, usize)> = (0..b).filter(|&r| !out.stopped[r]).map(|r| (r, r)).collect();
            let picked = self
                .decoder_step(embeds, mask, positions, b, 1, &mut cache, clock, &live, &banned, &mut rngs)?;
            next = vec![stop; b];
            for (&(r, _), t) in live.iter().zip(picked) {
                next[r] = t;
            }
            cached = total;
        }
        timings.decode_ms = ms(t_decode.elapsed().as_secs_f64());
        Ok(out)
    }

    /// One continuation of each of `prompts` on one preprocessed image, greedy or sampled as
    /// [`GrounderOptions::decoding`] says (one row per prompt: [`Grounder::ground`] is what repeats
    /// a query for its samples). The image is encoded once, the prompts decoded as a batch (or one
    /// by one when [`GrounderOptions::batch_queries`] is off).
    ///
    /// # Errors
    /// [`Error::Inference`] when a graph fails or disagrees with the contract.
    pub fn generate(&mut self, pre: &Preprocessed, prompts: &[Vec<i64>]) -> Result<Generated> {
        let mut timings = Timings::default();
        self.generate_timed(pre, prompts, 1, &mut Clock::default(), &mut timings)
    }

    fn generate_timed(
        &mut self,
        pre: &Preprocessed,
        prompts: &[Vec<i64>],
        samples: usize,
        clock: &mut Clock,
        timings: &mut Timings,
    ) -> Result<Generated> {
        let t = Instant::now();
        let features = self.image_features(pre, clock)?;
        timings.vision_ms = ms(t.elapsed().as_secs_f64());
        if self.options.batch_queries {
            timings.batch = prompts.len() * samples.max(1);
            return self.generate_batch(&features, pre.grid_thw, prompts, samples, clock, timings);
        }
        timings.batch = samples.max(1);
        let mut out = Generated { tokens: Vec::new(), stopped: Vec::new() };
        let (mut prefill, mut decode) = (0.0, 0.0);
        for p in prompts {
            let g = self.generate_batch(
                &features,
                pre.grid_thw,
                std::slice::from_ref(p),
                samples,
                clock,
                timings,
            )?;
            prefill += timings.prefill_ms;
            decode += timings.decode_ms;
            out.tokens.extend(g.tokens);
            out.stopped.extend(g.stopped);
        }
        timings.prefill_ms = prefill;
        timings.decode_ms = decode;
        Ok(out)
    }

    /// Grounds every query of `queries` in `frame`, whose camera is `camera`.
    ///
    /// # Errors
    /// [`Error::ImageSizeMismatch`] when the frame is not of the camera's size; preprocessing,
    /// tokenizer and inference errors. An answer that does not parse is not an error: its
    /// [`Grounding::error`] says why.
    pub fn ground(
        &mut self,
        frame: &Frame,
        queries: &[Query],
        camera: &Intrinsics,
    ) -> Result<Vec<Grounding>> {
        let t_total = Instant::now();
        let mut timings = Timings::default();
        let mut clock = Clock::default();
        let t = Instant::now();
        let (pre, _pinhole) = self.prepare(&frame.image, camera)?;
        timings.preprocess_ms = ms(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let samples = self.options.decoding.samples();
        let prompts = queries.iter().map(|q| self.prompt_tokens(q, &pre)).collect::<Result<Vec<_>>>()?;
        timings.tokenize_ms = ms(t.elapsed().as_secs_f64());
        let generated = self.generate_timed(&pre, &prompts, samples, &mut clock, &mut timings)?;

        let t_post = Instant::now();
        let mut results = Vec::with_capacity(queries.len());
        let rows = generated.tokens.chunks(samples).zip(generated.stopped.chunks(samples));
        for (query, (ids, stopped)) in queries.iter().zip(rows) {
            let mut first_text = None;
            let mut answers = Vec::with_capacity(samples);
            let mut first_error = None;
            for sample in ids {
                let u32s: Vec<u32> = sample.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
                let text = self
                    .package
                    .tokenizer
                    .decode(&u32s, true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                match protocol::parse_answer(&text) {
                    Ok(a) => answers.push(a),
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                first_text.get_or_insert(text);
            }
            // One answer is its own consensus (`consensus` returns it unchanged).
            let merged = consensus(&answers);
            let text = match (&merged, samples) {
                (Some(a), 2..) => protocol::format_answer(a),
                _ => first_text.unwrap_or_default(),
            };
            let (answer, error) = match merged {
                Some(a) => match grounded_box(&a, &pre, camera) {
                    Ok(b) => (Some(b), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                None => (None, Some(first_error.unwrap_or_else(|| "no answer could be merged".into()))),
            };
            results.push(Grounding {
                frame_index: frame.index,
                frame_name: frame.name.clone(),
                query: query.as_str().to_owned(),
                text,
                answer,
                error,
                tokens: ids.iter().map(Vec::len).sum(),
                stopped: stopped.iter().all(|&s| s),
                samples,
                parsed_samples: answers.len(),
                provider: self.provider(),
                timings: Timings::default(),
            });
        }
        self.spare_pixels = Some(pre.pixel_values);
        timings.postprocess_ms = ms(t_post.elapsed().as_secs_f64());
        timings.new_tokens = generated.tokens.iter().map(Vec::len).sum();
        timings.tokens_per_s =
            if timings.decode_ms > 0.0 { timings.new_tokens as f64 / (timings.decode_ms / 1e3) } else { 0.0 };
        timings.ort_ms = ms(clock.ort_s);
        timings.total_ms = ms(t_total.elapsed().as_secs_f64());
        for r in &mut results {
            r.timings = timings;
        }
        Ok(results)
    }
}

/// A cache tensor `[B, ...]` (f32) with each batch row repeated `n` times in place: `[B * n, ...]`.
fn repeat_rows(value: &DynValue, n: usize) -> Result<DynValue> {
    let g = "decoder";
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| inference(g, e))?;
    let mut dims: Vec<usize> = shape.iter().map(|&x| usize::try_from(x).unwrap_or(0)).collect();
    let rows = dims.first().copied().unwrap_or(0);
    if rows == 0 {
        return Err(inference(g, "a present with no batch rows"));
    }
    let row_len = data.len() / rows;
    let mut out = Vec::with_capacity(data.len() * n);
    for row in data.chunks(row_len.max(1)) {
        for _ in 0..n {
            out.extend_from_slice(row);
        }
    }
    dims[0] = rows * n;
    Ok(Tensor::from_array((dims, out)).map_err(|e| inference(g, e))?.into_dyn())
}

/// The answer in camera terms: the 2D box from model-input pixels to the pinhole (undistorted)
/// image, then through the distortion into camera pixels; the 3D box's corners projected by the
/// camera's own intrinsics. A 2D box with nothing inside the image (or inside the lens model's
/// valid region) is reported as answered, in pinhole pixels outside the image.
fn grounded_box(answer: &protocol::Answer, pre: &Preprocessed, camera: &Intrinsics) -> Result<GroundedBox> {
    // `NewCamera::Same`: pinhole pixels are the camera's ideal pixels.
    let in_pinhole = pre.resize_map.unmap_box(&answer.bbox_2d);
    let clipped = camera.distort_box(&in_pinhole).unwrap_or(in_pinhole);
    let b3 = answer.bbox_3d;
    let corners = b3.corners();
    Ok(GroundedBox {
        bbox_2d_px: clipped.to_array(),
        bbox_2d_model_px: answer.bbox_2d.to_array(),
        bbox_3d_cam: b3.to_array(),
        corners_cam_m: corners.map(|c| [c.x, c.y, c.z]),
        corners_px: corners.iter().map(|c| camera.project(c).map(|p| [p.x, p.y])).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use monovlm_calib::{Box2d, Box3d, Distortion, Point2};

    use super::*;
    use crate::preprocess::PreprocessConfig;

    fn setup(camera: &Intrinsics) -> (Preprocessed, protocol::Answer) {
        let image = RgbImage::new(camera.width(), camera.height());
        let pre = preprocess::preprocess_image(&image, camera, &PreprocessConfig::default()).unwrap();
        let text = r#"<answer>{"bbox_2d": [100, 50, 300, 200], "bbox_3d": [1.5, 0.8, 12.0, 4.2, 1.8, 1.6, 0.3]}</answer>"#;
        (pre, protocol::parse_answer(text).unwrap())
    }

    #[test]
    fn boxes_map_back_to_camera_pixels_and_corners_project() {
        let camera = Intrinsics::new(900.0, 900.0, 640.0, 360.0, 1280, 720).unwrap();
        let (pre, answer) = setup(&camera);
        let b = grounded_box(&answer, &pre, &camera).unwrap();
        let (sx, sy) = (1280.0 / f64::from(pre.input_size_px().0), 720.0 / f64::from(pre.input_size_px().1));
        // Pixel-centre scaling (calib's ResizeMap): within a pixel of the plain ratio.
        let want = [100.0 * sx, 50.0 * sy, 300.0 * sx, 200.0 * sy];
        for (g, w) in b.bbox_2d_px.iter().zip(want) {
            assert!((g - w).abs() < 1.0, "{:?} vs {want:?}", b.bbox_2d_px);
        }
        assert_eq!(b.bbox_2d_px, pre.resize_map.unmap_box(&answer.bbox_2d).to_array());
        let box3d = Box3d::new(1.5, 0.8, 12.0, 4.2, 1.8, 1.6, 0.3).unwrap();
        for (c, p) in box3d.corners().iter().zip(&b.corners_px) {
            let q = camera.project(c).unwrap();
            assert_eq!(p.unwrap(), [q.x, q.y]);
        }
        assert_eq!(b.bbox_3d_cam, box3d.to_array());
    }

    #[test]
    fn with_distortion_the_box_encloses_its_distorted_outline() {
        let camera = Intrinsics::new(900.0, 900.0, 640.0, 360.0, 1280, 720)
            .unwrap()
            .with_distortion(Distortion::new(-0.3, 0.1, 0.0, 0.0, 0.0).unwrap());
        let (pre, answer) = setup(&camera);
        let b = grounded_box(&answer, &pre, &camera).unwrap();
        let ideal = pre.resize_map.unmap_box(&answer.bbox_2d).to_array();
        for (x, y) in [(ideal[0], ideal[1]), (ideal[2], ideal[3]), (ideal[0], ideal[3])] {
            let d = camera.distort_pixel(&Point2::new(x, y));
            assert!(d.x >= b.bbox_2d_px[0] - 1e-9 && d.x <= b.bbox_2d_px[2] + 1e-9);
            assert!(d.y >= b.bbox_2d_px[1] - 1e-9 && d.y <= b.bbox_2d_px[3] + 1e-9);
        }
        // Barrel distortion pulls an off-centre box towards the centre.
        assert!(b.bbox_2d_px[0] > ideal[0]);
    }

    /// A wide-angle barrel lens folds at r = 1/sqrt(3 * 0.35) = 0.98 (490 px here): a box in the
    /// image corner (r up to 1.47) is bounded by its outline up to the fold, not by folded-back
    /// points near the centre.
    #[test]
    fn a_box_beyond_the_lens_fold_is_bounded_by_its_valid_part() {
        let camera = Intrinsics::new(500.0, 500.0, 640.0, 360.0, 1280, 720)
            .unwrap()
            .with_distortion(Distortion::new(-0.35, 0.0, 0.0, 0.0, 0.0).unwrap());
        let d = *camera.distortion().unwrap();
        let corner = Box2d::new(1000.0, 500.0, 1280.0, 720.0).unwrap();
        let b = camera.distort_box(&corner).unwrap();
        // Against a brute-force bound: 4,000 points along each side, those inside the fold.
        let mut want = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
        for i in 0..=4000 {
            let t = f64::from(i) / 4000.0;
            let (u, v) = (1000.0 + 280.0 * t, 500.0 + 220.0 * t);
            for (u, v) in [(u, 500.0), (u, 720.0), (1000.0, v), (1280.0, v)] {
                let (x, y) = ((u - 640.0) / 500.0, (v - 360.0) / 500.0);
                if d.is_valid_at(x, y) {
                    let p = camera.distort_pixel(&Point2::new(u, v));
                    want = [want[0].min(p.x), want[1].min(p.y), want[2].max(p.x), want[3].max(p.y)];
                }
            }
        }
        for (g, w) in b.to_array().iter().zip(want) {
            assert!((g - w).abs() < 0.5, "{b:?} vs {want:?}");
        }
        // Inside the fold the distorted radius is at most r_f (1 + k1 r_f^2) = 0.653 (327 px).
        let r_f = (1.0f64 / (3.0 * 0.35)).sqrt();
        let r_max_px = 500.0 * r_f * (1.0 - 0.35 * r_f * r_f) + 1e-6;
        assert!(b.x2 - 640.0 <= r_max_px && b.y2 - 360.0 <= r_max_px, "{b:?}");
        // Unchecked, the polynomial folds the outer corner back next to the centre.
        let (x, y) = ((1280.0 - 640.0) / 500.0, (720.0 - 360.0) / 500.0);
        assert!(!d.is_valid_at(x, y));
        let folded = camera.distort_pixel(&Point2::new(1280.0, 720.0));
        assert!(folded.x < b.x2 && folded.y < b.y2, "{folded}");
        // A box wholly beyond the fold has no distorted image.
        let far = Box2d::new(-900.0, -700.0, -800.0, -600.0).unwrap();
        assert!(camera.distort_box(&far).is_none());
    }
}
