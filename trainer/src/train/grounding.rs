//! Grounding examples: a dataset record becomes a prompt (the protocol's chat prompt with the
//! model-input image and intrinsics) and a target answer (the protocol's answer format and
//! `<|im_end|>`); generated text becomes a scored prediction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Intrinsics, ResizeMap};
use monovlm_runtime::preprocess::{PreprocessConfig, ResizedImage};
use monovlm_runtime::protocol::{self, Answer, PromptLayout, Query, tokens};
use tch::Tensor;
use tokenizers::Tokenizer;

use super::Sequence;
use crate::data::mono3drefer::{Dataset, Record, Split};
use crate::eval::categories::categorize;
use crate::eval::metrics::{CategoryMetrics, ImageObjects, SampleResult};
use crate::eval::predictions::Predicted;
use crate::model::Qwen25Vl;
use crate::model::generate::{Prompt, Sampling};
use crate::{Error, Result};

/// One record, ready for training and evaluation.
#[derive(Clone, Debug)]
pub struct Example {
    /// The dataset record (ground truth, key, categories).
    pub record: Record,
    /// Prompt tokens (chat template, image pads, query, intrinsics of the model-input image).
    pub prompt: Vec<i64>,
    /// The ground-truth answer tokens, `<|im_end|>` last.
    pub target: Vec<i64>,
    /// The model-input image (shared by the records of one image), held as 8-bit RGB: a machine
    /// holds eight times the scenes it could as f32 patch rows.
    pub image: Arc<ResizedImage>,
}

impl Example {
    /// The pixel rows as a tensor `[N, 1176]`.
    pub fn pixel_values(&self) -> Tensor {
        pixel_tensor(&self.image)
    }

    /// Prompt + target, for supervised training.
    pub fn sequence(&self) -> Sequence {
        Sequence {
            prompt: self.prompt.clone(),
            target: self.target.clone(),
            pixel_values: Some(self.pixel_values()),
            grids: vec![self.image.grid_thw],
        }
    }

    /// The prompt alone, for generation.
    pub fn prompt(&self) -> Prompt {
        Prompt {
            tokens: self.prompt.clone(),
            pixel_values: Some(self.pixel_values()),
            grids: vec![self.image.grid_thw],
        }
    }

    /// The image tokens (row-major indices) that show the described object: the referring
    /// pointer's targets ([`super::dense::object_tokens`] of its 2D box in the model input).
    pub fn referred_tokens(&self) -> Vec<usize> {
        super::dense::object_tokens(
            self.image.grid_thw,
            &self.image.resize_map.map_box(&self.record.label.bbox),
        )
    }

    /// Maps the model-input image back to camera pixels.
    pub fn resize_map(&self) -> &ResizeMap {
        &self.image.resize_map
    }
}

/// How a model's examples are made: its image sizing and its protocol version's prompt layout
/// (both recorded in its checkpoint, `crate::checkpoint::MonovlmMeta::example_format`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleFormat {
    /// Image sizing and normalisation.
    pub preprocess: PreprocessConfig,
    /// Where the image goes in the prompt.
    pub layout: PromptLayout,
}

/// The patch rows of a model-input image as a tensor `[N, 1176]` (made on demand, bit-identical to
/// the runtime's `preprocess_image`).
pub(crate) fn pixel_tensor(image: &ResizedImage) -> Tensor {
    let pv = image.patch_rows();
    let shape = [pv.nrows() as i64, pv.ncols() as i64];
    let data = pv.into_raw_vec_and_offset().0;
    Tensor::from_slice(&data).reshape(shape)
}

/// Tokenises text containing the chat template's special tokens.
///
/// # Errors
/// [`Error::Tokenizer`].
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
}

/// Decodes generated ids to text, keeping nothing but the answer text (special tokens dropped).
///
/// # Errors
/// [`Error::Tokenizer`].
pub fn decode(tokenizer: &Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
    tokenizer.decode(&ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
}

/// The id of `<|im_end|>`, where generation stops.
///
/// # Errors
/// [`Error::Tokenizer`] when the tokenizer lacks it.
pub fn im_end_id(tokenizer: &Tokenizer) -> Result<i64> {
    tokenizer
        .token_to_id(tokens::IM_END)
        .map(i64::from)
        .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {}", tokens::IM_END)))
}

/// Builds examples of a dataset split: each image is read and preprocessed once.
///
/// `limit` keeps the first records only. `on_example` is called after each (progress).
///
/// # Errors
/// [`Error::Io`]/[`Error::Image`] for unreadable images, [`Error::Runtime`] for preprocessing or a
/// record whose description the protocol rejects, [`Error::Tokenizer`].
pub fn build_examples(
    dataset: &Dataset,
    split: Split,
    tokenizer: &Tokenizer,
    format: &ExampleFormat,
    limit: Option<usize>,
    mut on_example: impl FnMut(),
) -> Result<Vec<Example>> {
    let mut images: HashMap<String, Arc<ResizedImage>> = HashMap::new();
    let records = dataset.records(split);
    let records = &records[..limit.unwrap_or(records.len()).min(records.len())];
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let image = match images.get(&record.image) {
            Some(p) => Arc::clone(p),
            None => {
                let p = Arc::new(load_image(dataset, &record.image, &format.preprocess)?);
                images.insert(record.image.clone(), Arc::clone(&p));
                p
            }
        };
        out.push(grounding_example(record.clone(), image, tokenizer, format.layout)?);
        on_example();
    }
    Ok(out)
}

/// Zoomed crops around the described objects: for each of the first `count` records of `split`
/// (cycling when `count` exceeds them), a sub-image with the camera image's aspect ratio, `zoom`
/// (drawn uniformly from `[zoom.0, zoom.1]`) times as wide as the object needs (its 2D box width,
/// or its height times the aspect ratio, whichever is larger), placed at random around the whole
/// object (clamped to the image), with the cropped intrinsics. The 3D box is unchanged (a crop moves
/// the principal point, not the camera); the 2D box is shifted into the crop.
///
/// In a zoomed crop the object covers a sizeable share of the image tokens instead of a few
/// percent. A from-scratch model learns to read crops sooner, though in our runs that did not carry
/// over to full frames any sooner than plain training (docs/results.md). The description is kept,
/// though objects it relates to may fall outside the crop: training data, not evaluation data.
/// Each crop is its own preprocessed image (no sharing).
///
/// # Errors
/// [`Error::InvalidConfig`] for a zoom range that is not `0 < min <= max`; as [`build_examples`];
/// [`Error::Calib`] for a crop that leaves the image (not expected).
#[allow(clippy::too_many_arguments)]
pub fn build_crop_examples(
    dataset: &Dataset,
    split: Split,
    tokenizer: &Tokenizer,
    format: &ExampleFormat,
    count: usize,
    zoom: (f64, f64),
    seed: u64,
    mut on_example: impl FnMut(),
) -> Result<Vec<Example>> {
    if !(zoom.0 > 0.0 && zoom.0 <= zoom.1 && zoom.1.is_finite()) {
        return Err(Error::InvalidConfig(format!("zoom {zoom:?}: need 0 < min <= max, finite")));
    }
    let records = dataset.records(split);
    if records.is_empty() || count == 0 {
        return Ok(Vec::new());
    }
    let mut rng = SplitMix64::new(seed);
    // The records of one image are consecutive: one decoded frame at a time is enough.
    let mut frame: Option<(String, image::RgbImage, Intrinsics)> = None;
    let mut out = Vec::with_capacity(count);
    for record in records.iter().cycle().take(count) {
        let (name, rgb, k) = match frame.take() {
            Some(f) if f.0 == record.image => f,
            _ => (
                record.image.clone(),
                read_rgb(&dataset.image_path(&record.image)?)?,
                dataset.intrinsics(&record.image)?,
            ),
        };
        let (x0, y0, w, h) = crop_window(&record.label.bbox, rgb.width(), rgb.height(), zoom, &mut rng);
        let crop_k = k.cropped(x0, y0, w, h)?;
        let crop = image::imageops::crop_imm(&rgb, x0, y0, w, h).to_image();
        frame = Some((name, rgb, k));
        let image = Arc::new(ResizedImage::new(&crop, &crop_k, &format.preprocess)?);
        let mut record = record.clone();
        let (b, dx, dy) = (record.label.bbox, f64::from(x0), f64::from(y0));
        record.label.bbox = Box2d {
            x1: (b.x1 - dx).clamp(0.0, f64::from(w)),
            y1: (b.y1 - dy).clamp(0.0, f64::from(h)),
            x2: (b.x2 - dx).clamp(0.0, f64::from(w)),
            y2: (b.y2 - dy).clamp(0.0, f64::from(h)),
        };
        out.push(grounding_example(record, image, tokenizer, format.layout)?);
        on_example();
    }
    Ok(out)
}

/// A crop `(x0, y0, width, height)` of a `full_w x full_h` frame with the frame's aspect ratio,
/// `zoom` times as wide as `object` needs (at least 64 px tall, at most the frame), placed at random
/// so that the object is inside when it fits, and inside the frame always.
fn crop_window(
    object: &Box2d,
    full_w: u32,
    full_h: u32,
    zoom: (f64, f64),
    rng: &mut SplitMix64,
) -> (u32, u32, u32, u32) {
    let (fw, fh) = (f64::from(full_w), f64::from(full_h));
    let aspect = fw / fh;
    let need = object.width().max(object.height() * aspect);
    let crop_w = (rng.range(zoom.0, zoom.1) * need).clamp(fw.min(64.0 * aspect), fw);
    let crop_h = (crop_w / aspect).min(fh);
    // The start in [object end - size, object start], within [0, full - size].
    let mut start = |lo: f64, hi: f64, size: f64, full: f64| {
        let (lo, hi) = (lo.max(0.0), hi.min(full - size).max(0.0));
        let v = if lo < hi { rng.range(lo, hi) } else { hi };
        v.floor() as u32
    };
    let x0 = start(object.x2 - crop_w, object.x1, crop_w, fw).min(full_w.saturating_sub(1));
    let y0 = start(object.y2 - crop_h, object.y1, crop_h, fh).min(full_h.saturating_sub(1));
    // Rounding never takes the crop past the frame (an empty frame gives an empty crop, which
    // `Intrinsics::cropped` rejects).
    let w = (crop_w.round() as u32).min(full_w - x0);
    let h = (crop_h.round() as u32).min(full_h - y0);
    (x0, y0, w, h)
}

/// The example of `record` on `image`: the protocol's prompt and answer (2D box mapped into the
/// model input), tokenised.
fn grounding_example(
    record: Record,
    image: Arc<ResizedImage>,
    tokenizer: &Tokenizer,
    layout: PromptLayout,
) -> Result<Example> {
    let query = Query::new(&record.description)?;
    let prompt = protocol::chat_prompt(&query, &image.intrinsics, image.num_image_tokens, layout);
    let answer = Answer { bbox_2d: image.resize_map.map_box(&record.label.bbox), bbox_3d: record.box3d };
    let target = format!("{}{}", protocol::format_answer(&answer), tokens::IM_END);
    Ok(Example { prompt: encode(tokenizer, &prompt)?, target: encode(tokenizer, &target)?, record, image })
}

pub(crate) fn load_image(dataset: &Dataset, name: &str, pre: &PreprocessConfig) -> Result<ResizedImage> {
    let path = dataset.image_path(name)?;
    let rgb = read_rgb(&path)?;
    let k = dataset.intrinsics(name)?;
    Ok(ResizedImage::new(&rgb, &k, pre)?)
}

fn read_rgb(path: &Path) -> Result<image::RgbImage> {
    let img =
        image::open(path).map_err(|e| Error::Image { path: path.to_owned(), message: e.to_string() })?;
    Ok(img.to_rgb8())
}

/// Parses generated text into a prediction in camera pixels (2D) and the camera frame (3D).
pub fn prediction_from_text(text: &str, resize: &ResizeMap) -> Predicted {
    match protocol::parse_answer(text) {
        Ok(a) => {
            let b: Box2d = resize.unmap_box(&a.bbox_2d);
            Predicted::Boxes { bbox_3d: a.bbox_3d, bbox_2d: Some(b) }
        }
        Err(e) => Predicted::FormatFailure { reason: e.to_string() },
    }
}

/// Greedy answers for `examples`, scored with the official metrics; returns every sample and the
/// Overall breakdown. A 2D box lands on another object only if that object is among `examples`. `on_example` is called after each (progress).
///
/// # Errors
/// As [`Qwen25Vl::generate`] and [`decode`].
pub fn evaluate_examples(
    model: &Qwen25Vl,
    tokenizer: &Tokenizer,
    examples: &[Example],
    max_new_tokens: usize,
    mut on_example: impl FnMut(),
) -> Result<(Vec<SampleResult>, CategoryMetrics)> {
    let records: Vec<Record> = examples.iter().map(|e| e.record.clone()).collect();
    let (cats, _) = categorize(&records, records.iter(), None);
    let objects = ImageObjects::from_records(&records);
    let sampling =
        Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens, stop_tokens: vec![im_end_id(tokenizer)?] };
    let mut samples = Vec::with_capacity(examples.len());
    for (ex, cat) in examples.iter().zip(cats) {
        let (out, _) = model.generate(&ex.prompt(), 1, &sampling)?;
        let text = out.first().map(|c| decode(tokenizer, &c.tokens)).transpose()?.unwrap_or_default();
        let pred = prediction_from_text(&text, ex.resize_map());
        samples.push(SampleResult::score(&ex.record, cat, &objects, Some(&pred)));
        on_example();
    }
    let overall = CategoryMetrics::of("Overall", &samples);
    Ok((samples, overall))
}

/// How much a model's answers depend on the image: the answer cross-entropy of examples shown
/// their own image, and shown the image of another scene. A model that reads its image is surprised
/// by the wrong one (`answer_loss_other_image > answer_loss`); one that answers from the text
/// alone — the plateau a from-scratch model sits on before it learns to look — scores the same.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageReliance {
    /// Examples measured (those with another scene of the same patch grid to swap in).
    pub examples: usize,
    /// Mean next-token cross-entropy (nats per answer token), each example with its own image.
    pub answer_loss: f64,
    /// The same answers, each example given the image of another scene.
    pub answer_loss_other_image: f64,
}

impl ImageReliance {
    /// `answer_loss_other_image - answer_loss`: nats per answer token the image is worth.
    pub fn gain(&self) -> f64 {
        self.answer_loss_other_image - self.answer_loss
    }
}

/// Measures [`ImageReliance`] on `examples` in batches of `batch_size` (no gradients).
///
/// Example `i` borrows the image of the first example from `i + n/2` on (cyclically) that shows
/// another scene — another preprocessed image, as [`build_examples`] shares one per image — with
/// the same patch grid (the prompt's image-pad count must stay valid); examples with no such
/// partner are left out.
///
/// # Errors
/// [`Error::ModelInput`] when no example can be measured or `batch_size` is 0; as
/// [`super::causal_lm_loss`].
pub fn image_reliance(
    model: &Qwen25Vl,
    examples: &[Example],
    pad_id: i64,
    batch_size: usize,
) -> Result<ImageReliance> {
    let n = examples.len();
    let partner = |i: usize| {
        (0..n).map(|k| (i + n / 2 + k) % n).find(|&j| {
            !Arc::ptr_eq(&examples[j].image, &examples[i].image)
                && examples[j].image.grid_thw == examples[i].image.grid_thw
        })
    };
    let pairs: Vec<(usize, usize)> = (0..n).filter_map(|i| partner(i).map(|j| (i, j))).collect();
    if pairs.is_empty() || batch_size == 0 {
        return Err(Error::ModelInput(
            "image reliance needs a positive batch size and two scenes with the same image size".into(),
        ));
    }
    let _guard = tch::no_grad_guard();
    let (mut own, mut other, mut tokens) = (0.0, 0.0, 0.0);
    for chunk in pairs.chunks(batch_size) {
        let with_image = |pick: fn(&(usize, usize)) -> usize| -> Vec<super::Sequence> {
            chunk
                .iter()
                .map(|pair| {
                    let (ex, img) = (&examples[pair.0], &examples[pick(pair)]);
                    super::Sequence {
                        prompt: ex.prompt.clone(),
                        target: ex.target.clone(),
                        pixel_values: Some(img.pixel_values()),
                        grids: vec![img.image.grid_thw],
                    }
                })
                .collect()
        };
        let own_batch = super::Batch::new(model, &with_image(|p| p.0), pad_id)?;
        let other_batch = super::Batch::new(model, &with_image(|p| p.1), pad_id)?;
        // Both batches supervise the same tokens; the loss is their mean, so weight by the count.
        let count = own_batch.target_tokens() as f64;
        own += super::causal_lm_loss(model, &own_batch)?.double_value(&[]) * count;
        other += super::causal_lm_loss(model, &other_batch)?.double_value(&[]) * count;
        tokens += count;
    }
    Ok(ImageReliance {
        examples: pairs.len(),
        answer_loss: own / tokens,
        answer_loss_other_image: other / tokens,
    })
}
