//! The synthetic driving-scene generator: road scenes rendered by our own rasteriser, labelled from
//! the render, described by verified-unique referring expressions, written in the Mono3DRefer layout.
//!
//! ```text
//! OUT/images/NNNNNN.png  OUT/calib/NNNNNN.txt  OUT/label_2/NNNNNN.txt
//! OUT/Mono3DRefer_{train,val,test}_image.txt  OUT/Mono3DRefer.json  OUT/test_instanceID_split.json
//! ```
//!
//! - [`scene`]: cameras (KITTI 1242x375 with the `P2` offset, 1280x720, 640x480), the road, scenery
//!   and objects; the frames and the tilt convention (yaw-only boxes, the road carries the pitch).
//! - [`raster`]: the rasteriser (depth buffer, id buffer). [`render`]: sky, road, shadows, boxes.
//! - [`label`]: 2D box, truncation, occlusion (from the id buffer), difficulty, which objects are kept.
//! - [`mod@describe`]: referring expressions and the resolver that verifies each is unique.
//!
//! Every image has its own random stream derived from `(seed, image index)`, so the output is the
//! same whatever the number of threads. In [`SynthConfig::sequence`] mode one world is sampled from
//! the seed and a camera drives through it at [`SEQUENCE_FPS`] frames per second.

pub mod appearance;
pub mod describe;
pub mod label;
pub mod raster;
pub mod render;
pub mod rng;
pub mod scene;

use std::path::{Path, PathBuf};

use image::RgbImage;
use monovlm_calib::kitti::{Difficulty, KittiCalib, KittiLabel};
use monovlm_calib::{BOX_EDGES, Box3d, Intrinsics};
use rayon::prelude::*;

use self::describe::{Description, ObjectFacts, describe};
use self::label::label_object;
use self::raster::Raster;
use self::render::render_world;
use self::rng::Rng;
use self::scene::{CameraPreset, CameraRig, ColourName, ObjClass, Placement, World, kitti_calib};
use crate::data::mono3drefer::{DatasetWriter, InstanceSplit, Record, SampleKey, Split, image_name};
use crate::error::{Error, Result};

/// Frames per second of [`SynthConfig::sequence`] mode.
pub const SEQUENCE_FPS: f64 = 10.0;
/// Folder of the KITTI label files, under the dataset root.
pub const LABEL_DIR: &str = "label_2";
/// `instanceID = image index * INSTANCE_STRIDE + rank of the object in its image`.
pub const INSTANCE_STRIDE: u64 = 1000;
/// Fractions of the images in the train and val splits (the rest is test), in image order.
pub const SPLIT_FRACTIONS: [f64; 2] = [0.8, 0.1];

/// Random streams (the second part of every seed), one per purpose, so that changing one stage
/// (say, the description templates) leaves the others' numbers unchanged.
const STREAM_WORLD: u64 = 1;
const STREAM_DESCRIBE: u64 = 2;
const STREAM_AUGMENT: u64 = 3;
const STREAM_SEQUENCE: u64 = 4;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Number of images (frames in sequence mode).
    pub images: u32,
    /// Seed: the same seed gives byte-identical files.
    pub seed: u64,
    /// The camera model.
    pub camera: CameraPreset,
    /// One world, a camera driving through it at 10 Hz (else an independent scene per image).
    pub sequence: bool,
    /// Photometric augmentation: exposure, white balance, sensor noise, occasional blur.
    pub augment: bool,
    /// Descriptions per object at most (distinct `ann_id`s).
    pub descriptions_per_object: usize,
}

impl Default for SynthConfig {
    /// 100 KITTI-like images, seed 0, augmentation on, up to 3 descriptions per object.
    fn default() -> Self {
        Self {
            images: 100,
            seed: 0,
            camera: CameraPreset::Kitti,
            sequence: false,
            augment: true,
            descriptions_per_object: 3,
        }
    }
}

/// One drawn object of a frame and what was decided about it.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameObject {
    /// Index into the world's actors (the same object across the frames of a sequence).
    pub actor: usize,
    /// Its value in the id buffer.
    pub id: u16,
    /// Class.
    pub class: ObjClass,
    /// Named colour.
    pub colour: ColourName,
    /// The 3D box drawn (= the label's, KITTI fields rounded to two decimals).
    pub box3d: Box3d,
    /// Pixels where it is the nearest surface.
    pub visible_px: u64,
    /// Pixels of its silhouette inside the image.
    pub silhouette_px: u64,
    /// Truncation in `[0, 1]`.
    pub truncation: f64,
    /// Visible fraction (`visible_px / silhouette_px`).
    pub visible_fraction: f64,
    /// The KITTI label, when the object is labelled.
    pub label: Option<KittiLabel>,
    /// KITTI difficulty of the label, if any applies.
    pub difficulty: Option<Difficulty>,
    /// What the resolver knows about it.
    pub facts: ObjectFacts,
}

impl FrameObject {
    /// Labelled, not `misc`, and within KITTI's hard level: descriptions may target it.
    pub fn describable(&self) -> bool {
        self.label.is_some() && self.difficulty.is_some() && self.class != ObjClass::Misc
    }
}

/// One rendered, labelled and described image.
#[derive(Clone, Debug)]
pub struct SynthFrame {
    /// Image index (the file name's number).
    pub index: u32,
    /// The picture.
    pub image: RgbImage,
    /// The camera's intrinsics (the calibration file's `P2`).
    pub intrinsics: Intrinsics,
    /// The calibration file.
    pub calib: KittiCalib,
    /// Every object with at least one visible pixel (labelled or not).
    pub objects: Vec<FrameObject>,
    /// Descriptions; `target` indexes [`SynthFrame::objects`].
    pub descriptions: Vec<Description>,
    /// The id buffer (row-major, `width x height`): 0 for road, sky and scenery, else
    /// [`FrameObject::id`].
    pub ids: Vec<u16>,
}

impl SynthFrame {
    /// The labels in the order of the `label_2` file.
    pub fn labels(&self) -> impl Iterator<Item = &KittiLabel> {
        self.objects.iter().filter_map(|o| o.label.as_ref())
    }

    /// The `label_2` file text (one KITTI line per labelled object).
    pub fn label_text(&self) -> String {
        self.labels().map(|l| l.to_line() + "\n").collect()
    }

    /// The facts of every object, in the order of [`SynthFrame::objects`] (the resolver's input).
    pub fn facts(&self) -> Vec<ObjectFacts> {
        self.objects.iter().map(|o| o.facts.clone()).collect()
    }

    /// The bounding box of object `id`'s pixels in the id buffer as `[x1, y1, x2, y2]` with pixel
    /// `i` spanning `[i - 0.5, i + 0.5]` (pixel centres at integers), or `None` when it has none.
    pub fn id_pixel_box(&self, id: u16) -> Option<[f64; 4]> {
        let w = self.image.width() as usize;
        let mut bounds: Option<[usize; 4]> = None;
        for (i, v) in self.ids.iter().enumerate() {
            if *v == id {
                let (x, y) = (i % w, i / w);
                bounds = Some(match bounds {
                    None => [x, y, x, y],
                    Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
                });
            }
        }
        bounds.map(|[x0, y0, x1, y1]| [x0 as f64 - 0.5, y0 as f64 - 0.5, x1 as f64 + 0.5, y1 as f64 + 0.5])
    }
}

/// Renders, labels and describes the world at time `t_s`.
fn build_frame(
    cfg: &SynthConfig,
    index: u32,
    world: &World,
    rig: &CameraRig,
    t_s: f64,
) -> Result<SynthFrame> {
    let k = &rig.intrinsics;
    let mut raster = Raster::new(k.width(), k.height());
    let drawn = render_world(world, rig, t_s, &mut raster);
    let ego_x = world.road.lanes.get(world.ego_lane).map_or(rig.x_m, |l| l.centre_x_m);
    let mut objects = Vec::new();
    for d in drawn.iter().filter(|d| d.visible_px > 0) {
        let Some(actor) = world.actors.get(d.actor) else { continue };
        let outcome = label_object(actor.class, &d.box3d, k, d.visible_px, d.silhouette_px);
        let (x_road, _) = actor.position_at(t_s);
        let facts = ObjectFacts {
            class: actor.class,
            colour: actor.colour,
            box3d: d.box3d,
            from_divider_m: x_road - world.road.divider_x_m,
            outside_carriageway_m: world.road.outside_carriageway_m(x_road),
            from_ego_lane_m: x_road - ego_x,
            parked: matches!(actor.placement, Placement::Parked { .. }),
            moving: actor.is_moving(),
            labelled: outcome.label.is_some(),
        };
        objects.push(FrameObject {
            actor: d.actor,
            id: d.id,
            class: actor.class,
            colour: actor.colour,
            box3d: d.box3d,
            visible_px: d.visible_px,
            silhouette_px: d.silhouette_px,
            truncation: outcome.truncation,
            visible_fraction: outcome.visible_fraction,
            difficulty: outcome.label.as_ref().and_then(KittiLabel::difficulty),
            label: outcome.label,
            facts,
        });
    }
    let facts: Vec<ObjectFacts> = objects.iter().map(|o| o.facts.clone()).collect();
    let mut describe_rng = Rng::from_parts(&[cfg.seed, STREAM_DESCRIBE, u64::from(index)]);
    let mut descriptions = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        if o.describable() {
            descriptions.extend(describe(i, &facts, cfg.descriptions_per_object, &mut describe_rng));
        }
    }
    let mut augment_rng = Rng::from_parts(&[cfg.seed, STREAM_AUGMENT, u64::from(index)]);
    let image = finish_image(&raster, &mut augment_rng, cfg.augment);
    let ids = raster.take_ids();
    Ok(SynthFrame { index, image, intrinsics: k.clone(), calib: kitti_calib(k)?, objects, descriptions, ids })
}

/// Image `index` of an independent-scenes dataset.
///
/// # Errors
/// [`Error::Calib`] if the sampled camera were invalid (it never is for the presets).
pub fn render_image(cfg: &SynthConfig, index: u32) -> Result<SynthFrame> {
    let mut rng = Rng::from_parts(&[cfg.seed, STREAM_WORLD, u64::from(index)]);
    let (world, rig) = World::sample_single(&mut rng, cfg.camera)?;
    build_frame(cfg, index, &world, &rig, 0.0)
}

/// A drive through one world: frame `i` is the camera `i / 10` seconds after the start.
#[derive(Clone, Debug)]
pub struct Sequence {
    cfg: SynthConfig,
    world: World,
    rig: CameraRig,
    ego_speed_mps: f64,
}

impl Sequence {
    /// Samples the world and the camera of `cfg` (its `images` is the number of frames).
    ///
    /// # Errors
    /// As [`render_image`].
    pub fn new(cfg: &SynthConfig) -> Result<Self> {
        let mut rng = Rng::from_parts(&[cfg.seed, STREAM_SEQUENCE]);
        let (world, rig, ego_speed_mps) =
            World::sample_sequence(&mut rng, cfg.camera, cfg.images, SEQUENCE_FPS)?;
        Ok(Self { cfg: cfg.clone(), world, rig, ego_speed_mps })
    }

    /// The camera's speed, m/s.
    pub fn ego_speed_mps(&self) -> f64 {
        self.ego_speed_mps
    }

    /// The world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Frame `index`.
    ///
    /// # Errors
    /// As [`render_image`].
    pub fn frame(&self, index: u32) -> Result<SynthFrame> {
        let t_s = f64::from(index) / SEQUENCE_FPS;
        let mut rig = self.rig.clone();
        rig.z_m += self.ego_speed_mps * t_s;
        build_frame(&self.cfg, index, &self.world, &rig, t_s)
    }
}

/// Exposure, white balance, blur and sensor noise (when `augment`), then 8-bit quantisation.
fn finish_image(raster: &Raster, rng: &mut Rng, augment: bool) -> RgbImage {
    let (w, h) = (raster.width(), raster.height());
    let mut buf: Vec<[f32; 3]> = raster.colour().to_vec();
    let (gain, noise_sd) = if augment {
        let exposure = rng.range(0.85, 1.15) as f32;
        let gain: [f32; 3] = std::array::from_fn(|_| exposure * rng.range(0.96, 1.04) as f32);
        if rng.chance(0.3) {
            buf = blur3(&buf, w, h);
        }
        (gain, rng.range(0.003, 0.015) as f32)
    } else {
        ([1.0; 3], 0.0)
    };
    // Triangular noise with standard deviation `noise_sd`: two 10-bit uniforms per channel from one
    // 64-bit draw per pixel; `(a + b) / 1023 - 1` lies in [-1, 1] with deviation 1/sqrt(6).
    let noise_scale = noise_sd * 6.0_f32.sqrt();
    let mut out = RgbImage::new(w as u32, h as u32);
    for (px, c) in out.pixels_mut().zip(buf.iter()) {
        let bits = if noise_sd > 0.0 { rng.next_u64() } else { 0 };
        for ch in 0..3 {
            let n = if noise_sd > 0.0 {
                let a = ((bits >> (ch * 20)) & 0x3FF) as f32;
                let b = ((bits >> (ch * 20 + 10)) & 0x3FF) as f32;
                ((a + b) / 1023.0 - 1.0) * noise_scale
            } else {
                0.0
            };
            let v = (c[ch] * gain[ch] + n).clamp(0.0, 1.0);
            px.0[ch] = (v * 255.0 + 0.5) as u8;
        }
    }
    out
}

/// A 3x3 binomial blur (edges clamped).
fn blur3(src: &[[f32; 3]], w: usize, h: usize) -> Vec<[f32; 3]> {
    let at = |x: isize, y: isize| -> [f32; 3] {
        let xc = x.clamp(0, w as isize - 1) as usize;
        let yc = y.clamp(0, h as isize - 1) as usize;
        src.get(yc * w + xc).copied().unwrap_or([0.0; 3])
    };
    let mut out = vec![[0.0f32; 3]; src.len()];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut acc = [0.0f32; 3];
            for (dy, wy) in [(-1isize, 1.0f32), (0, 2.0), (1, 1.0)] {
                for (dx, wx) in [(-1isize, 1.0f32), (0, 2.0), (1, 1.0)] {
                    let p = at(x + dx, y + dy);
                    for ch in 0..3 {
                        acc[ch] += p[ch] * wx * wy;
                    }
                }
            }
            if let Some(slot) = out.get_mut(y as usize * w + x as usize) {
                *slot = acc.map(|v| v / 16.0);
            }
        }
    }
    out
}

/// The split of image `index` of `n`: the first 80% train, the next 10% val, the rest test.
pub fn split_of(index: u32, n: u32) -> Split {
    let n_train = (f64::from(n) * SPLIT_FRACTIONS[0]).round() as u32;
    let n_val = (f64::from(n) * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1])).round() as u32;
    if index < n_train {
        Split::Train
    } else if index < n_val {
        Split::Val
    } else {
        Split::Test
    }
}

/// What one frame contributes to the dataset-wide files.
struct FrameOutput {
    name: String,
    split: Split,
    records: Vec<Record>,
    /// `(instanceID, unique, depth_m, difficulty)` of every described object.
    instances: Vec<(u64, bool, f64, Difficulty)>,
    labels: usize,
}

/// Figures of a generated dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynthSummary {
    /// Images written.
    pub images: u32,
    /// KITTI labels written (all `label_2` lines).
    pub labels: usize,
    /// Objects with at least one description.
    pub described_objects: usize,
    /// Records of `Mono3DRefer.json` (descriptions).
    pub records: usize,
}

/// The PNG encoding used for the images (fast deflate: the images are noisy, better compression
/// gains little and costs most of the time).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Sub)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Image { path: PathBuf::from("<png>"), message: e.to_string() })?;
    Ok(bytes)
}

fn write_frame(writer: &DatasetWriter, root: &Path, frame: &SynthFrame, n: u32) -> Result<FrameOutput> {
    let name = image_name(frame.index);
    let png_path = writer.image_path(&name)?;
    let png = encode_png(&frame.image)?;
    std::fs::write(&png_path, png).map_err(|e| Error::Io { path: png_path.clone(), source: e })?;
    writer.write_calib(&name, &frame.calib)?;
    let label_path = root.join(LABEL_DIR).join(format!("{name}.txt"));
    std::fs::write(&label_path, frame.label_text())
        .map_err(|e| Error::Io { path: label_path.clone(), source: e })?;

    // Instance ids: the rank of each described object among the frame's objects.
    let labelled: Vec<&FrameObject> = frame.objects.iter().filter(|o| o.label.is_some()).collect();
    let mut records = Vec::new();
    let mut instances = Vec::new();
    let mut next_ann: Vec<u64> = vec![0; frame.objects.len()];
    for d in &frame.descriptions {
        let (Some(obj), Some(ann)) = (frame.objects.get(d.target), next_ann.get_mut(d.target)) else {
            continue;
        };
        let (Some(label), Some(difficulty)) = (obj.label.clone(), obj.difficulty) else { continue };
        let instance_id = u64::from(frame.index) * INSTANCE_STRIDE + d.target as u64;
        if *ann == 0 {
            let unique = labelled.iter().filter(|o| o.class == obj.class).count() == 1;
            instances.push((instance_id, unique, label.location_m[2], difficulty));
        }
        let key = SampleKey { instance_id, ann_id: *ann };
        *ann += 1;
        records.push(Record::new(&name, key, obj.class.object_name(), &d.text, label)?);
    }
    Ok(FrameOutput { name, split: split_of(frame.index, n), records, instances, labels: labelled.len() })
}

/// Generates a dataset in `out` (created if needed; existing files of the same names are
/// overwritten). `on_image` is called once per finished image, from worker threads.
///
/// # Errors
/// [`Error::Io`] / [`Error::Image`] when a file cannot be written; [`Error::InvalidConfig`] for
/// zero images.
pub fn generate(cfg: &SynthConfig, out: &Path, on_image: &(dyn Fn() + Sync)) -> Result<SynthSummary> {
    if cfg.images == 0 {
        return Err(Error::InvalidConfig("synth: --images must be at least 1".into()));
    }
    if u64::from(cfg.images) > u64::MAX / INSTANCE_STRIDE {
        return Err(Error::InvalidConfig("synth: too many images".into()));
    }
    let mut writer = DatasetWriter::create(out)?;
    let label_dir = out.join(LABEL_DIR);
    std::fs::create_dir_all(&label_dir).map_err(|e| Error::Io { path: label_dir.clone(), source: e })?;
    let sequence = if cfg.sequence { Some(Sequence::new(cfg)?) } else { None };
    let n = cfg.images;
    let outputs: Vec<Result<FrameOutput>> = (0..n)
        .into_par_iter()
        .map(|index| {
            let frame = match &sequence {
                Some(seq) => seq.frame(index)?,
                None => render_image(cfg, index)?,
            };
            let output = write_frame(&writer, out, &frame, n);
            on_image();
            output
        })
        .collect();
    let mut summary = SynthSummary { images: n, ..SynthSummary::default() };
    let mut categories = InstanceSplit::default();
    for output in outputs {
        let output = output?;
        writer.add_image(output.split, &output.name)?;
        summary.labels += output.labels;
        summary.described_objects += output.instances.len();
        summary.records += output.records.len();
        for record in output.records {
            writer.add_record(record)?;
        }
        if output.split == Split::Test {
            for (id, unique, depth_m, difficulty) in output.instances {
                categories.insert(id, unique, depth_m, Some(difficulty));
            }
        }
    }
    writer.set_instance_split(categories);
    writer.finish()?;
    Ok(summary)
}

/// A copy of the frame's image with every labelled object's 3D box drawn as a wireframe (colour
/// by class; the front face marked with a cross), scaled to at most `max_width` pixels wide.
pub fn preview(frame: &SynthFrame, max_width: u32) -> RgbImage {
    let mut img = frame.image.clone();
    let k = &frame.intrinsics;
    for o in frame.objects.iter().filter(|o| o.label.is_some()) {
        let colour = match o.class {
            ObjClass::Car => [0, 255, 0],
            ObjClass::Van => [0, 200, 255],
            ObjClass::Truck => [255, 160, 0],
            ObjClass::Tram => [255, 0, 255],
            ObjClass::Pedestrian | ObjClass::PersonSitting => [255, 255, 0],
            ObjClass::Cyclist | ObjClass::Motorcyclist => [255, 60, 60],
            ObjClass::Misc => [200, 200, 200],
        };
        let corners = o.box3d.project_corners(k);
        let mut edges: Vec<(usize, usize)> = BOX_EDGES.to_vec();
        edges.extend([(0, 5), (1, 4)]); // cross on the front face
        for (a, b) in edges {
            if let (Some(Some(pa)), Some(Some(pb))) = (corners.get(a), corners.get(b)) {
                draw_line(&mut img, [pa.x, pa.y], [pb.x, pb.y], colour);
            }
        }
    }
    if img.width() > max_width && max_width > 0 {
        let h =
            (f64::from(img.height()) * f64::from(max_width) / f64::from(img.width())).round().max(1.0) as u32;
        img = image::imageops::resize(&img, max_width, h, image::imageops::FilterType::Triangle);
    }
    img
}

/// A one-pixel line (DDA), clipped to the image.
fn draw_line(img: &mut RgbImage, a: [f64; 2], b: [f64; 2], colour: [u8; 3]) {
    let steps = (b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil().min(20_000.0) as usize;
    for i in 0..=steps {
        let t = if steps == 0 { 0.0 } else { i as f64 / steps as f64 };
        let (x, y) = ((a[0] + (b[0] - a[0]) * t).round(), (a[1] + (b[1] - a[1]) * t).round());
        if x >= 0.0 && y >= 0.0 && x < f64::from(img.width()) && y < f64::from(img.height()) {
            img.put_pixel(x as u32, y as u32, image::Rgb(colour));
        }
    }
}
