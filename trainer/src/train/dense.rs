//! Dense vision pre-training: every merged image token learns what it shows, before SFT asks the
//! language model to find one object among the tokens.
//!
//! MonoVLM starts from an off-the-shelf VLM whose vision tower already sees objects. A model we
//! train from scratch has no such tower, and SFT alone teaches it slowly: the described object
//! covers a few percent of the image tokens, so the answer loss reaches the tower through a
//! diluted, uniform attention (docs/results.md). Here each merged token (28x28 model-input pixels)
//! gets its own targets from the dataset's labels — a per-token detection task:
//!
//! - the class of the nearest object covering the token's centre, or background
//!   ([`DENSE_CLASSES`]; an object too small to cover any centre claims the token holding its 2D
//!   box centre);
//! - for object tokens, [`REGRESSION_TARGETS`] numbers describing that object: its 2D box in the
//!   model input (fractions of the width and height), its 3D centre as `x/z`, `y/z` and `ln z`, its
//!   size and its yaw as sine and cosine.
//!
//! Two linear heads read the merger's output (the features the language model receives), so what
//! they learn is linearly readable there. The heads are thrown away; the checkpoint keeps the
//! tower.

use std::collections::BTreeMap;
use std::sync::Arc;

use monovlm_calib::Box2d;
use monovlm_runtime::preprocess::{PreprocessConfig, ResizedImage};
use serde::Serialize;
use tch::{Kind, Reduction, Tensor};

use super::grounding::{load_image, pixel_tensor};
use super::optim::{AdamW, AdamWConfig, CosineSchedule, clip_grad_norm};
use super::sft::EpochSampler;
use crate::data::mono3drefer::{Dataset, Record, Split};
use crate::model::Qwen25Vl;
use crate::model::weights::{Init, ParamStore, fresh};
use crate::{Error, Result};

/// Token classes after background (index 0): KITTI's object types; any other type is `Misc`.
pub const DENSE_CLASSES: [&str; 8] =
    ["Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc"];

/// Regressed numbers per object token: `x1/W, y1/H, x2/W, y2/H` (model-input pixels), `x/z`, `y/z`,
/// `ln(z)/4`, `l/5`, `w/5`, `h/5` (metres), `sin yaw`, `cos yaw`.
pub const REGRESSION_TARGETS: usize = 12;

/// Side of a merged token in model-input pixels (14-pixel patches, 2x2 merge).
const TOKEN_PX: f64 = 28.0;

/// One image with its per-token targets.
#[derive(Debug)]
pub struct DenseImage {
    /// The dataset's image name.
    pub name: String,
    /// The model-input image (merged tokens in row-major order).
    pub image: Arc<ResizedImage>,
    /// `[T]` class per merged token: 0 background, `1 + index` into [`DENSE_CLASSES`].
    pub classes: Vec<i64>,
    /// `[T * REGRESSION_TARGETS]` targets, row-major; zeros on background tokens.
    pub regression: Vec<f32>,
}

impl DenseImage {
    /// Merged tokens that show an object.
    pub fn object_tokens(&self) -> usize {
        self.classes.iter().filter(|&&c| c > 0).count()
    }
}

/// The index of a KITTI class in the dense head's output (0 is background).
pub fn dense_class(kitti_class: &str) -> i64 {
    let misc = DENSE_CLASSES.len() - 1;
    1 + DENSE_CLASSES.iter().position(|&c| c == kitti_class).unwrap_or(misc) as i64
}

/// The per-token targets of `image` showing the objects of `records` (one record per object).
///
/// Objects are painted far to near, so a token shows the nearest object covering its centre.
pub fn dense_targets(name: &str, image: Arc<ResizedImage>, records: &[&Record]) -> DenseImage {
    let [_, grid_h, grid_w] = image.grid_thw;
    let (rows, cols) = (grid_h / 2, grid_w / 2);
    let (w_px, h_px) = image.input_size_px();
    let (w_px, h_px) = (f64::from(w_px), f64::from(h_px));
    let mut classes = vec![0i64; rows * cols];
    let mut regression = vec![0f32; rows * cols * REGRESSION_TARGETS];
    let mut objects: Vec<&Record> = records.to_vec();
    objects.sort_by(|a, b| b.box3d.z.total_cmp(&a.box3d.z));
    for r in objects {
        let b = image.resize_map.map_box(&r.label.bbox);
        let z = r.box3d.z.max(0.1);
        let targets = [
            b.x1 / w_px,
            b.y1 / h_px,
            b.x2 / w_px,
            b.y2 / h_px,
            r.box3d.x / z,
            r.box3d.y / z,
            z.ln() / 4.0,
            r.box3d.l / 5.0,
            r.box3d.w / 5.0,
            r.box3d.h / 5.0,
            r.box3d.yaw.sin(),
            r.box3d.yaw.cos(),
        ];
        let class = dense_class(&r.label.class);
        for t in object_tokens(image.grid_thw, &b) {
            classes[t] = class;
            for (slot, v) in
                regression[t * REGRESSION_TARGETS..(t + 1) * REGRESSION_TARGETS].iter_mut().zip(targets)
            {
                *slot = v as f32;
            }
        }
    }
    DenseImage { name: name.to_owned(), image, classes, regression }
}

/// The merged tokens (row-major indices) that show `bbox` (model-input pixels) in an image of patch
/// grid `grid_thw`: those whose centre lies in the box, and always the token holding the box
/// centre, so that an object too small to cover a token centre still has one.
pub fn object_tokens(grid_thw: [usize; 3], bbox: &Box2d) -> Vec<usize> {
    let [_, grid_h, grid_w] = grid_thw;
    let (rows, cols) = (grid_h / 2, grid_w / 2);
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    let cell = |v: f64, n: usize| ((v / TOKEN_PX).floor().max(0.0) as usize).min(n - 1);
    let centre = cell(0.5 * (bbox.y1 + bbox.y2), rows) * cols + cell(0.5 * (bbox.x1 + bbox.x2), cols);
    let mut out = vec![centre];
    for row in 0..rows {
        let y = (row as f64 + 0.5) * TOKEN_PX;
        if y < bbox.y1 || y > bbox.y2 {
            continue;
        }
        for c in 0..cols {
            let x = (c as f64 + 0.5) * TOKEN_PX;
            let t = row * cols + c;
            if x >= bbox.x1 && x <= bbox.x2 && t != centre {
                out.push(t);
            }
        }
    }
    out
}

/// The dense targets of the first `limit` images of `split` (all when `None`), each image read
/// and preprocessed once; its objects are those its records describe (one per instance).
///
/// # Errors
/// As [`super::grounding::build_examples`]: unreadable images, preprocessing.
pub fn build_dense_images(
    dataset: &Dataset,
    split: Split,
    pre: &PreprocessConfig,
    limit: Option<usize>,
    mut on_image: impl FnMut(),
) -> Result<Vec<DenseImage>> {
    let mut by_image: BTreeMap<&str, BTreeMap<u64, &Record>> = BTreeMap::new();
    for r in dataset.records(split) {
        by_image.entry(r.image.as_str()).or_default().entry(r.instance_id).or_insert(r);
    }
    let mut out = Vec::new();
    for (name, objects) in by_image.into_iter().take(limit.unwrap_or(usize::MAX)) {
        let image = Arc::new(load_image(dataset, name, pre)?);
        let records: Vec<&Record> = objects.into_values().collect();
        out.push(dense_targets(name, image, &records));
        on_image();
    }
    Ok(out)
}

/// Dense pre-training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Images per step.
    pub images_per_step: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Weight of the regression loss against the class loss.
    pub regression_weight: f64,
    /// Validate every this many steps (and after the last); 0 = only after the last.
    pub eval_every: usize,
    /// Seed of the heads' initialisation and of the data order.
    pub seed: u64,
}

impl Default for DenseConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            images_per_step: 8,
            lr: 2e-3,
            warmup_steps: 50,
            regression_weight: 5.0,
            eval_every: 200,
            seed: 0,
        }
    }
}

/// Dense validation: how well the tokens tell objects apart and where they are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DenseVal {
    /// Object tokens whose class is predicted right, percent.
    pub object_class_pct: f64,
    /// Background tokens predicted as background, percent.
    pub background_pct: f64,
    /// Mean absolute error of the 2D box fractions on object tokens (1 = the whole image side).
    pub box2d_mae: f64,
    /// Mean absolute error of `ln z` on object tokens (0.1 = about 10% depth error).
    pub log_depth_mae: f64,
}

/// One line of the dense pre-training log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DenseLogLine {
    /// Step, from 1.
    pub step: usize,
    /// Class cross-entropy over all tokens of the step's images.
    pub class_loss: f64,
    /// Smooth-L1 regression loss over their object tokens.
    pub regression_loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Validation, on the steps that ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<DenseVal>,
}

/// The two linear heads on the merged image features.
struct Heads {
    store: ParamStore,
    class_w: Tensor,
    class_b: Tensor,
    regression_w: Tensor,
    regression_b: Tensor,
}

impl Heads {
    fn new(model: &Qwen25Vl) -> Result<Self> {
        let d = model.config().vision.out_hidden_size;
        let (device, kind) = (model.device(), Kind::Float);
        let classes = DENSE_CLASSES.len() as i64 + 1;
        let std = 1.0 / (d as f64).sqrt();
        let mut store = ParamStore::default();
        let mut param = |name: &str, shape: &[i64], init: Init| -> Result<Tensor> {
            Ok(store.push(name.into(), fresh(shape, init, kind, device)?, true))
        };
        let class_w = param("dense.class.weight", &[d, classes], Init::Normal(std))?;
        let class_b = param("dense.class.bias", &[classes], Init::Zeros)?;
        let regression_w =
            param("dense.regression.weight", &[d, REGRESSION_TARGETS as i64], Init::Normal(std))?;
        let regression_b = param("dense.regression.bias", &[REGRESSION_TARGETS as i64], Init::Zeros)?;
        Ok(Self { store, class_w, class_b, regression_w, regression_b })
    }

    /// `(class logits [T, C], regression [T, R])` of image features `[T, D]`.
    fn forward(&self, features: &Tensor) -> (Tensor, Tensor) {
        let f = features.to_kind(Kind::Float);
        (f.matmul(&self.class_w) + &self.class_b, f.matmul(&self.regression_w) + &self.regression_b)
    }
}

/// The images' features, class and regression targets, and object-token rows, stacked.
struct DenseBatch {
    features: Tensor,
    classes: Tensor,
    regression: Tensor,
    object_rows: Tensor,
}

fn dense_batch(model: &Qwen25Vl, images: &[&DenseImage]) -> Result<DenseBatch> {
    let mut pixels = Vec::with_capacity(images.len());
    let mut grids = Vec::with_capacity(images.len());
    let mut classes = Vec::new();
    let mut regression = Vec::new();
    for d in images {
        pixels.push(pixel_tensor(&d.image));
        grids.push(d.image.grid_thw);
        classes.extend_from_slice(&d.classes);
        regression.extend_from_slice(&d.regression);
    }
    let features = model.image_features(&Tensor::cat(&pixels, 0), &grids)?;
    let device = model.device();
    let t = classes.len() as i64;
    if features.size()[0] != t {
        return Err(Error::ModelInput(format!(
            "{} image features for {t} dense targets",
            features.size()[0]
        )));
    }
    let classes = Tensor::from_slice(&classes).to_device(device);
    let regression =
        Tensor::from_slice(&regression).reshape([t, REGRESSION_TARGETS as i64]).to_device(device);
    let object_rows = classes.gt(0).nonzero().squeeze_dim(1);
    Ok(DenseBatch { features, classes, regression, object_rows })
}

/// `(class loss, regression loss)` of one batch.
fn dense_losses(heads: &Heads, batch: &DenseBatch) -> (Tensor, Tensor) {
    let (logits, reg) = heads.forward(&batch.features);
    let class_loss = logits.cross_entropy_for_logits(&batch.classes);
    let regression_loss = if batch.object_rows.size()[0] == 0 {
        reg.sum(Kind::Float) * 0.0
    } else {
        reg.index_select(0, &batch.object_rows).smooth_l1_loss(
            &batch.regression.index_select(0, &batch.object_rows),
            Reduction::Mean,
            0.1,
        )
    };
    (class_loss, regression_loss)
}

/// Validation of the heads on `val` (no gradients).
fn validate_dense(model: &Qwen25Vl, heads: &Heads, val: &[DenseImage]) -> Result<DenseVal> {
    let _guard = tch::no_grad_guard();
    let (mut obj_ok, mut obj_n, mut bg_ok, mut bg_n) = (0i64, 0i64, 0i64, 0i64);
    let (mut box_err, mut depth_err) = (0.0, 0.0);
    for chunk in val.chunks(8) {
        let refs: Vec<&DenseImage> = chunk.iter().collect();
        let batch = dense_batch(model, &refs)?;
        let (logits, reg) = heads.forward(&batch.features);
        let pred = logits.argmax(-1, false);
        let right = pred.eq_tensor(&batch.classes);
        let is_obj = batch.classes.gt(0);
        obj_ok += right.logical_and(&is_obj).sum(Kind::Int64).int64_value(&[]);
        obj_n += is_obj.sum(Kind::Int64).int64_value(&[]);
        bg_ok += right.logical_and(&is_obj.logical_not()).sum(Kind::Int64).int64_value(&[]);
        bg_n += is_obj.logical_not().sum(Kind::Int64).int64_value(&[]);
        if batch.object_rows.size()[0] > 0 {
            let err = (reg.index_select(0, &batch.object_rows)
                - batch.regression.index_select(0, &batch.object_rows))
            .abs();
            box_err += err.narrow(1, 0, 4).sum(Kind::Double).double_value(&[]);
            depth_err += 4.0 * err.narrow(1, 6, 1).sum(Kind::Double).double_value(&[]);
        }
    }
    let pct = |a: i64, n: i64| if n == 0 { 0.0 } else { 100.0 * a as f64 / n as f64 };
    let per = |e: f64, n: i64| if n == 0 { 0.0 } else { e / n as f64 };
    Ok(DenseVal {
        object_class_pct: pct(obj_ok, obj_n),
        background_pct: pct(bg_ok, bg_n),
        box2d_mae: per(box_err, 4 * obj_n),
        log_depth_mae: per(depth_err, obj_n),
    })
}

/// Trains `model`'s vision tower (and merger) on the dense targets of `train`, validating on `val`
/// (may be empty). Only parameters named `visual.*` change; the language model is frozen and left
/// as it was. `on_step` sees every log line as it is made.
///
/// # Errors
/// [`Error::ModelInput`] for an empty training set or zero images per step; [`Error::NonFinite`]
/// when the loss stops being finite (that step's update is not applied).
pub fn train_dense(
    model: &mut Qwen25Vl,
    train: &[DenseImage],
    val: &[DenseImage],
    cfg: &DenseConfig,
    mut on_step: impl FnMut(&DenseLogLine),
) -> Result<Vec<DenseLogLine>> {
    if train.is_empty() || cfg.images_per_step == 0 {
        return Err(Error::ModelInput("dense pre-training needs images and a positive batch size".into()));
    }
    let was_trainable: Vec<bool> = model.params().params().iter().map(|p| p.trainable).collect();
    model.params_mut().set_trainable(|name| name.starts_with("visual."));
    let result = dense_loop(model, train, val, cfg, &mut on_step);
    let mut flags = was_trainable.into_iter();
    model.params_mut().set_trainable(|_| flags.next().unwrap_or(true));
    model.params().zero_grad();
    result
}

fn dense_loop(
    model: &Qwen25Vl,
    train: &[DenseImage],
    val: &[DenseImage],
    cfg: &DenseConfig,
    on_step: &mut impl FnMut(&DenseLogLine),
) -> Result<Vec<DenseLogLine>> {
    tch::manual_seed(cfg.seed as i64);
    let heads = Heads::new(model)?;
    let schedule = CosineSchedule { peak_lr: cfg.lr, warmup_steps: cfg.warmup_steps, total_steps: cfg.steps };
    let mut opt = AdamW::new(model.params(), AdamWConfig::default());
    let mut head_opt = AdamW::new(&heads.store, AdamWConfig::default());
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let mut log = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let picked: Vec<&DenseImage> =
            sampler.next_batch(cfg.images_per_step).into_iter().map(|i| &train[i]).collect();
        let batch = dense_batch(model, &picked)?;
        model.params().zero_grad();
        heads.store.zero_grad();
        let (class_loss, regression_loss) = dense_losses(&heads, &batch);
        let loss = &class_loss + &regression_loss * cfg.regression_weight;
        let loss_v = loss.double_value(&[]);
        if !loss_v.is_finite() {
            return Err(Error::NonFinite(format!("dense loss {loss_v} at step {}", step + 1)));
        }
        loss.backward();
        let lr = schedule.lr(step);
        clip_grad_norm(model.params(), 1.0)?;
        clip_grad_norm(&heads.store, 1.0)?;
        opt.step(model.params(), lr)?;
        head_opt.step(&heads.store, lr)?;
        let last = step + 1 == cfg.steps;
        let val_now = !val.is_empty() && (last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0));
        let line = DenseLogLine {
            step: step + 1,
            class_loss: class_loss.double_value(&[]),
            regression_loss: regression_loss.double_value(&[]),
            lr,
            val: if val_now { Some(validate_dense(model, &heads, val)?) } else { None },
        };
        on_step(&line);
        log.push(line);
    }
    Ok(log)
}
