//! Image preprocessing identical to the Qwen2.5-VL processor, and the index tensors of the vision
//! encoder and the decoder's 3-row rotary positions (DESIGN.md, "One implementation of each thing").
//!
//! [`preprocess_image`] reproduces transformers' `Qwen2VLImageProcessorPil` (the PIL backend of the
//! `qwen2_vl` image processor, transformers 5.23): [`smart_resize`] to multiples of 28, Pillow's
//! bicubic resize on 8-bit RGB (bit-exact: same coefficients, same fixed-point rounding between the
//! two passes), rescale by 1/255, the OpenAI CLIP mean/std, and the patch layout
//! `[grid_t * grid_h * grid_w, 3 * 2 * 14 * 14]` ordered by 2x2 merge block. The resize, the
//! normalisation and the patch flattening are fused: each resized row is normalised through a
//! 256-entry table and written straight into its patch rows. The intrinsics of the model input image
//! come from [`Intrinsics::resized`], so the pixel map is the one `calib` uses everywhere.
//!
//! The index functions ([`vision_position_ids`], [`window_index`], [`cu_seqlens`], [`rope_index`])
//! are pure functions of `grid_thw`, as in transformers' `vision_utils` and
//! `Qwen2_5_VLModel.get_rope_index`; the exported ONNX graphs take them as inputs.
//!
//! The trainer turns the ndarray outputs into tch tensors; the runtime feeds them to ONNX Runtime.

use image::RgbImage;
use monovlm_calib::{Intrinsics, ResizeMap};
use ndarray::{Array1, Array2};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Side of one vision patch, in pixels (`vision_config.patch_size`).
pub const PATCH_SIZE_PX: usize = 14;
/// Frames per temporal patch (`temporal_patch_size`); a still image is repeated this many times.
pub const TEMPORAL_PATCH_SIZE: usize = 2;
/// Side of the block of patches merged into one LLM token (`spatial_merge_size`).
pub const MERGE_SIZE: usize = 2;
/// Patches merged into one image token (`MERGE_SIZE^2`).
pub const MERGE_UNIT: usize = MERGE_SIZE * MERGE_SIZE;
/// The resized sides are multiples of this (`patch_size * merge_size`), in pixels.
pub const RESIZE_FACTOR_PX: usize = PATCH_SIZE_PX * MERGE_SIZE;
/// Side of an attention window of the vision encoder (`vision_config.window_size`), in pixels.
pub const WINDOW_SIZE_PX: usize = 112;
/// Channels of the input image (RGB).
pub const CHANNELS: usize = 3;
/// Values in one row of `pixel_values`: `3 * 2 * 14 * 14`.
pub const PATCH_ROW_LEN: usize = CHANNELS * TEMPORAL_PATCH_SIZE * PATCH_SIZE_PX * PATCH_SIZE_PX;
/// Default lower bound on the resized area (`min_pixels` of Qwen2.5-VL), in pixels.
pub const DEFAULT_MIN_PIXELS: usize = 56 * 56;
/// Default upper bound on the resized area (`max_pixels` of Qwen2.5-VL), in pixels.
pub const DEFAULT_MAX_PIXELS: usize = 28 * 28 * 1280;
/// [`smart_resize`] rejects images whose longer side is more than this many times the shorter one.
pub const MAX_ASPECT_RATIO: f64 = 200.0;
/// The OpenAI CLIP per-channel mean (`OPENAI_CLIP_MEAN`), of values in `[0, 1]`.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// The OpenAI CLIP per-channel standard deviation (`OPENAI_CLIP_STD`).
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// Rescale factor from 8-bit values to `[0, 1]` (`rescale_factor`).
const RESCALE: f64 = 1.0 / 255.0;

/// What [`preprocess_image`] may be configured with (`preprocessor_config.json`); the patch, merge
/// and window sizes are the architecture's and fixed by the constants above.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Lower bound on the resized area, in pixels.
    pub min_pixels: usize,
    /// Upper bound on the resized area, in pixels.
    pub max_pixels: usize,
    /// Per-channel mean subtracted after rescaling to `[0, 1]` (cast to f32, as numpy does).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation divided by after subtracting the mean (cast to f32).
    pub image_std: [f64; 3],
}

impl Default for PreprocessConfig {
    /// The Qwen2.5-VL processor's defaults.
    fn default() -> Self {
        Self {
            min_pixels: DEFAULT_MIN_PIXELS,
            max_pixels: DEFAULT_MAX_PIXELS,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

/// One image ready for the vision encoder, and how it relates to the camera image.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// `[grid_t * grid_h * grid_w, 3 * 2 * 14 * 14]` f32: one row per 14x14 patch, rows ordered by 2x2
    /// merge block (block row-major, then the 4 patches of the block row-major); within a row the
    /// order is channel, temporal copy, patch row, patch column.
    pub pixel_values: Array2<f32>,
    /// `[grid_t, grid_h, grid_w]`: temporal patches (1 for an image) and patches down and across.
    pub grid_thw: [usize; 3],
    /// Intrinsics of the model input (resized) image: the ones the prompt carries.
    pub intrinsics: Intrinsics,
    /// Pixel map from the camera image to the model input image (and back, for answers).
    pub resize_map: ResizeMap,
    /// Image tokens (`<|image_pad|>`) in the prompt: `grid_t * grid_h * grid_w / 4`.
    pub num_image_tokens: usize,
}

impl Preprocessed {
    /// Width and height of the model input image, in pixels.
    pub fn input_size_px(&self) -> (u32, u32) {
        (self.intrinsics.width(), self.intrinsics.height())
    }
}

/// The size `(height, width)` the Qwen2-VL processor resizes a `height x width` image to.
///
/// Both sides become multiples of `factor` by rounding `side / factor` half to even (Python's
/// `round`); if the area then exceeds `max_pixels` both sides shrink by `beta = sqrt(h w / max)` and
/// round down (never below `factor`); if it is under `min_pixels` they grow by
/// `beta = sqrt(min / (h w))` and round up. As in transformers 5.23 (versions up to 4.5x also
/// rejected sides under 10 pixels and had no `factor` floor; neither matters at 28-pixel sides).
///
/// # Errors
/// [`Error::EmptyImage`] for a zero side, [`Error::AspectRatioTooLarge`] when the longer side is
/// more than [`MAX_ASPECT_RATIO`] times the shorter, [`Error::InvalidPreprocessConfig`] for
/// `factor == 0`.
///
/// # Example
/// ```
/// use monovlm_runtime::preprocess::{smart_resize, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS};
/// // A KITTI frame.
/// assert_eq!(smart_resize(375, 1242, 28, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)?, (364, 1232));
/// # Ok::<(), monovlm_runtime::Error>(())
/// ```
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(Error::EmptyImage { width, height });
    }
    if factor == 0 {
        return Err(Error::InvalidPreprocessConfig("the resize factor must be > 0".into()));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        return Err(Error::AspectRatioTooLarge { width, height, max: MAX_ASPECT_RATIO });
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    let area = (height as f64) * (width as f64);
    if h_bar.saturating_mul(w_bar) > max_pixels {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

/// Preprocesses one camera frame for the vision encoder: [`smart_resize`], PIL bicubic resize,
/// rescale, normalisation and patch flattening in one pass over the output, plus the intrinsics of
/// the resized image.
///
/// # Arguments
/// * `rgb` — the camera frame, 8-bit RGB.
/// * `camera` — its intrinsics; their size must be the frame's.
/// * `config` — pixel bounds and normalisation.
///
/// # Errors
/// [`Error::EmptyImage`], [`Error::AspectRatioTooLarge`], [`Error::ImageSizeMismatch`] when the
/// intrinsics are of another size, [`Error::InvalidPreprocessConfig`] when the bounds give an empty
/// image or a standard deviation is not a positive finite number.
///
/// # Example
/// ```
/// use monovlm_calib::Intrinsics;
/// use monovlm_runtime::preprocess::{preprocess_image, PreprocessConfig, PATCH_ROW_LEN};
/// let frame = image::RgbImage::new(1242, 375);
/// let camera = Intrinsics::new(721.5, 721.5, 609.6, 172.9, 1242, 375)?;
/// let p = preprocess_image(&frame, &camera, &PreprocessConfig::default())?;
/// assert_eq!(p.grid_thw, [1, 26, 88]);
/// assert_eq!(p.pixel_values.dim(), (26 * 88, PATCH_ROW_LEN));
/// assert_eq!(p.num_image_tokens, 13 * 44);
/// assert_eq!(p.input_size_px(), (1232, 364));
/// # Ok::<(), monovlm_runtime::Error>(())
/// ```
pub fn preprocess_image(
    rgb: &RgbImage,
    camera: &Intrinsics,
    config: &PreprocessConfig,
) -> Result<Preprocessed> {
    preprocess_image_reusing(rgb, camera, config, None)
}

/// [`preprocess_image`], writing the patch rows into `spare`'s memory when it has the output's
/// shape: a camera loop hands back the previous frame's `pixel_values` and so allocates (and
/// zero-fills) the patch rows — 22.5 MB for a 1280x720 frame — only when the frame size changes.
/// Every element is overwritten, so `spare`'s contents never reach the output, which is identical
/// to [`preprocess_image`]'s.
///
/// # Errors
/// As [`preprocess_image`].
pub fn preprocess_image_reusing(
    rgb: &RgbImage,
    camera: &Intrinsics,
    config: &PreprocessConfig,
    spare: Option<Array2<f32>>,
) -> Result<Preprocessed> {
    let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
    check_input(rgb, camera)?;
    let lut = NormalizeLut::new(config)?;
    let InputGeometry { out_w, out_h, grid_thw, intrinsics, resize_map } =
        input_geometry(rgb, camera, config)?;
    let [_, grid_h, grid_w] = grid_thw;

    let shape = (grid_h * grid_w, PATCH_ROW_LEN);
    let mut pixel_values = match spare {
        Some(buffer) if buffer.dim() == shape && buffer.is_standard_layout() => buffer,
        _ => Array2::<f32>::zeros(shape),
    };
    let Some(out) = pixel_values.as_slice_mut() else {
        return Err(Error::InvalidPreprocessConfig("pixel buffer is not contiguous".into()));
    };
    // One band = one row of merge blocks (28 output rows); its patch rows are one contiguous run
    // of `pixel_values`, so the bands are written in parallel without sharing.
    let resampler = Resampler::new(rgb.as_raw(), in_w, in_h, out_w, out_h);
    let band_rows = PATCH_SIZE_PX * MERGE_SIZE;
    let band_len = grid_w * MERGE_SIZE * PATCH_ROW_LEN;
    out.par_chunks_mut(band_len).enumerate().for_each(|(band, patches)| {
        let mut scratch = resampler.scratch();
        for y in 0..band_rows {
            let row = resampler.row(band * band_rows + y, &mut scratch);
            write_patch_row(patches, row, y, grid_w, &lut);
        }
    });

    Ok(Preprocessed {
        pixel_values,
        grid_thw,
        intrinsics,
        resize_map,
        num_image_tokens: grid_h * grid_w / MERGE_UNIT,
    })
}

/// A camera image must be non-empty and of its camera's size.
fn check_input(rgb: &RgbImage, camera: &Intrinsics) -> Result<()> {
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(Error::EmptyImage { width: rgb.width() as usize, height: rgb.height() as usize });
    }
    if camera.width() != rgb.width() || camera.height() != rgb.height() {
        return Err(Error::ImageSizeMismatch {
            image: (rgb.width(), rgb.height()),
            camera: (camera.width(), camera.height()),
        });
    }
    Ok(())
}

/// The model-input size of a camera image and what follows from it.
struct InputGeometry {
    out_w: usize,
    out_h: usize,
    grid_thw: [usize; 3],
    intrinsics: Intrinsics,
    resize_map: ResizeMap,
}

/// [`smart_resize`] of `rgb` under `config`, its patch grid and the model input's intrinsics.
/// The caller has run [`check_input`].
fn input_geometry(rgb: &RgbImage, camera: &Intrinsics, config: &PreprocessConfig) -> Result<InputGeometry> {
    let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
    let (out_h, out_w) = smart_resize(in_h, in_w, RESIZE_FACTOR_PX, config.min_pixels, config.max_pixels)?;
    if out_h == 0 || out_w == 0 {
        return Err(Error::InvalidPreprocessConfig(format!(
            "min_pixels {} and max_pixels {} give an empty image",
            config.min_pixels, config.max_pixels
        )));
    }
    let (intrinsics, resize_map) = camera.resized(to_u32(out_w)?, to_u32(out_h)?)?;
    let grid_thw = [1, out_h / PATCH_SIZE_PX, out_w / PATCH_SIZE_PX];
    Ok(InputGeometry { out_w, out_h, grid_thw, intrinsics, resize_map })
}

/// A model-input image held before normalisation: the resized 8-bit RGB and the geometry of its
/// [`Preprocessed`]. It takes an eighth of the memory of its f32 patch rows (one byte per value
/// instead of four, and one copy instead of the two temporal ones), so a trainer can hold eight
/// times the scenes; [`ResizedImage::patch_rows`] gives the rows on demand, bit-identical to
/// [`preprocess_image`]'s.
///
/// Invariant: `rgb` is `grid_w * 14` by `grid_h * 14` pixels, both grid sides even, and the
/// normalisation table comes from a validated [`PreprocessConfig`].
#[derive(Clone, Debug)]
pub struct ResizedImage {
    rgb: RgbImage,
    lut: NormalizeLut,
    /// `[1, grid_h, grid_w]`, as [`Preprocessed::grid_thw`].
    pub grid_thw: [usize; 3],
    /// Intrinsics of the model input image.
    pub intrinsics: Intrinsics,
    /// Pixel map from the camera image to the model input image.
    pub resize_map: ResizeMap,
    /// Image tokens in the prompt.
    pub num_image_tokens: usize,
}

impl ResizedImage {
    /// Resizes a camera image for the model: [`preprocess_image`] without the normalisation.
    ///
    /// # Errors
    /// As [`preprocess_image`].
    pub fn new(rgb: &RgbImage, camera: &Intrinsics, config: &PreprocessConfig) -> Result<Self> {
        check_input(rgb, camera)?;
        let lut = NormalizeLut::new(config)?;
        let InputGeometry { out_w, out_h, grid_thw, intrinsics, resize_map } =
            input_geometry(rgb, camera, config)?;
        let resized = resize_bicubic(rgb, to_u32(out_w)?, to_u32(out_h)?)?;
        let num_image_tokens = grid_thw[1] * grid_thw[2] / MERGE_UNIT;
        Ok(Self { rgb: resized, lut, grid_thw, intrinsics, resize_map, num_image_tokens })
    }

    /// Width and height of the model input image, in pixels.
    pub fn input_size_px(&self) -> (u32, u32) {
        (self.intrinsics.width(), self.intrinsics.height())
    }

    /// The patch rows `[grid_h * grid_w, 1176]`, equal to [`Preprocessed::pixel_values`] of the same
    /// camera image (every bit).
    pub fn patch_rows(&self) -> Array2<f32> {
        let [_, grid_h, grid_w] = self.grid_thw;
        let mut out = vec![0f32; grid_h * grid_w * PATCH_ROW_LEN];
        let row_len = self.rgb.width() as usize * CHANNELS;
        for (y, row) in self.rgb.as_raw().chunks_exact(row_len).enumerate() {
            write_patch_row(&mut out, row, y, grid_w, &self.lut);
        }
        Array2::from_shape_vec((grid_h * grid_w, PATCH_ROW_LEN), out)
            .unwrap_or_else(|_| unreachable!("the buffer holds grid_h * grid_w rows of PATCH_ROW_LEN"))
    }
}

/// Resizes an 8-bit RGB image exactly as Pillow's `Image.resize(size, Image.BICUBIC)` does.
///
/// Separable (horizontal pass, then vertical), Keys cubic with `a = -0.5`, support `2 * max(1,
/// in/out)` pixels, coefficients normalised to sum 1 and quantised to 22 fractional bits, each pass
/// rounded and clamped to 8 bits. [`preprocess_image`] fuses the same arithmetic with the
/// normalisation; this function exists for tests and tools.
///
/// # Errors
/// [`Error::EmptyImage`] when the input or the requested size is empty.
pub fn resize_bicubic(rgb: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
    if in_w == 0 || in_h == 0 {
        return Err(Error::EmptyImage { width: in_w, height: in_h });
    }
    if width == 0 || height == 0 {
        return Err(Error::EmptyImage { width: width as usize, height: height as usize });
    }
    let (out_w, out_h) = (width as usize, height as usize);
    let row_len = out_w * CHANNELS;
    let mut out = vec![0u8; row_len * out_h];
    let resampler = Resampler::new(rgb.as_raw(), in_w, in_h, out_w, out_h);
    out.par_chunks_mut(row_len).enumerate().for_each_init(
        || resampler.scratch(),
        |scratch, (y, dst)| dst.copy_from_slice(resampler.row(y, scratch)),
    );
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| Error::InvalidPreprocessConfig("resized buffer has the wrong length".into()))
}

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::InvalidPreprocessConfig(format!("resized side {v} px does not fit u32")))
}

/// Fractional bits of Pillow's fixed-point coefficients (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Half of one output unit: added before the shift so that it rounds.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `clip8`: the fixed-point sum to 8 bits.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `bicubic_filter` (Keys, `a = -0.5`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point resampling coefficients of one axis, as Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc` compute them. Each output has `taps` coefficients starting at source
/// index `starts[i]`; Pillow's variable-length windows are padded with zeros and, at the far border,
/// shifted left so that every window has the same length and stays inside the source.
struct Coefficients {
    taps: usize,
    starts: Vec<usize>,
    weights: Vec<i32>,
}

impl Coefficients {
    fn bicubic(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow: `(double)(in1 - in0) / outSize` with the box as floats.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let taps = ksize.min(in_size);
        let mut starts = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * taps];
        let mut w = vec![0f64; ksize];
        let inv_filterscale = 1.0 / filterscale;
        for (xx, row) in weights.chunks_exact_mut(taps).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; negative values are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(taps);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                *wx = bicubic(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                ww += *wx;
            }
            let start = xmin.min(in_size - taps);
            let offset = xmin - start;
            for (x, &wx) in w.iter().enumerate().take(n) {
                let k = if ww != 0.0 { wx / ww } else { wx };
                let scaled = k * f64::from(1u32 << PRECISION_BITS);
                // Pillow rounds half away from zero, then truncates.
                row[offset + x] = if k < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
            }
            starts.push(start);
        }
        Self { taps, starts, weights }
    }

    /// First source index and the coefficients of output `i`.
    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (self.starts[i], &self.weights[i * self.taps..(i + 1) * self.taps])
    }

    /// The source indices `[first, last)` any output reads.
    fn source_range(&self) -> (usize, usize) {
        let first = self.starts.first().copied().unwrap_or(0);
        let last = self.starts.last().map_or(0, |s| s + self.taps);
        (first, last)
    }
}

/// Pillow's two-pass 8-bit bicubic resize of interleaved RGB `src` (`in_w x in_h`) to
/// `out_w x out_h`, one output row (`out_w * 3` bytes) at a time, in any order and from any thread.
///
/// Pass order as Pillow 13's `ImagingResampleInner`: horizontal first, unless the height shrinks
/// by more than twice as many pixels as the width does — then vertical first. The order changes
/// the 8-bit rounding between the passes, so it must match. Horizontal first: the source rows the
/// vertical pass reads are resampled horizontally once, up front and in parallel (as Pillow, which
/// also resamples only those rows). The integer sums are exact, so the order of work does not
/// change a single byte.
struct Resampler<'a> {
    horizontal: Coefficients,
    vertical: Coefficients,
    out_w: usize,
    pass: FirstPass<'a>,
}

/// What the second pass reads.
enum FirstPass<'a> {
    /// Vertical first: the source itself.
    Vertical { src: &'a [u8], in_w: usize },
    /// Horizontal first: source rows `[row_first, ..)` resampled horizontally.
    Horizontal { rows: Vec<u8>, row_first: usize },
}

/// Per-thread buffers of [`Resampler::row`].
struct Scratch {
    acc: Vec<i32>,
    mid: Vec<u8>,
    row: Vec<u8>,
}

impl<'a> Resampler<'a> {
    fn new(src: &'a [u8], in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> Self {
        let horizontal = Coefficients::bicubic(in_w, out_w);
        let vertical = Coefficients::bicubic(in_h, out_h);
        let shrink_h = in_h as i64 - out_h as i64;
        let shrink_w = in_w as i64 - out_w as i64;
        let pass = if shrink_h > 0 && shrink_h > 2 * shrink_w {
            FirstPass::Vertical { src, in_w }
        } else {
            let (row_first, row_last) = vertical.source_range();
            FirstPass::Horizontal {
                rows: resample_horizontal(src, in_w, row_first, row_last, &horizontal),
                row_first,
            }
        };
        Self { horizontal, vertical, out_w, pass }
    }

    fn scratch(&self) -> Scratch {
        let mid_w = match &self.pass {
            FirstPass::Vertical { in_w, .. } => *in_w,
            FirstPass::Horizontal { .. } => self.out_w,
        };
        Scratch {
            acc: vec![0; mid_w * CHANNELS],
            mid: vec![0; mid_w * CHANNELS],
            row: vec![0; self.out_w * CHANNELS],
        }
    }

    /// Output row `y`, in `scratch`.
    fn row<'s>(&self, y: usize, scratch: &'s mut Scratch) -> &'s [u8] {
        match &self.pass {
            FirstPass::Vertical { src, .. } => {
                vertical_row(src, 0, &self.vertical, y, &mut scratch.acc, &mut scratch.mid);
                horizontal_pass_row(&scratch.mid, &mut scratch.row, &self.horizontal);
            }
            FirstPass::Horizontal { rows, row_first } => {
                vertical_row(rows, *row_first, &self.vertical, y, &mut scratch.acc, &mut scratch.row);
            }
        }
        &scratch.row
    }
}

/// Output row `y` of Pillow's vertical 8-bit pass over `rows` (rows of `out.len()` bytes, the first
/// being source row `row_first`).
fn vertical_row(rows: &[u8], row_first: usize, c: &Coefficients, y: usize, acc: &mut [i32], out: &mut [u8]) {
    let row_len = out.len();
    let (start, taps) = c.taps(y);
    acc.fill(ROUNDING);
    for (k, &coef) in taps.iter().enumerate() {
        if coef == 0 {
            continue;
        }
        let r = start + k - row_first;
        for (a, &s) in acc.iter_mut().zip(&rows[r * row_len..(r + 1) * row_len]) {
            *a += i32::from(s) * coef;
        }
    }
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = clip8(a);
    }
}

/// Pillow's horizontal 8-bit pass over source rows `[row_first, row_last)`: interleaved RGB in,
/// interleaved RGB out (`row_last - row_first` rows of `out_w * 3` bytes).
fn resample_horizontal(
    src: &[u8],
    in_w: usize,
    row_first: usize,
    row_last: usize,
    c: &Coefficients,
) -> Vec<u8> {
    let out_w = c.starts.len();
    let in_row_len = in_w * CHANNELS;
    let out_row_len = out_w * CHANNELS;
    let mut out = vec![0u8; out_row_len * (row_last - row_first)];
    out.par_chunks_exact_mut(out_row_len)
        .zip(src[row_first * in_row_len..].par_chunks_exact(in_row_len))
        .for_each(|(dst, src_row)| horizontal_pass_row(src_row, dst, c));
    out
}

/// One row of Pillow's horizontal 8-bit pass. The common upscaling case (5 taps) calls the body with
/// a constant so the compiler unrolls it; other tap counts use the same body.
fn horizontal_pass_row(src: &[u8], dst: &mut [u8], c: &Coefficients) {
    match c.taps {
        5 => horizontal_row(src, dst, c, 5),
        taps => horizontal_row(src, dst, c, taps),
    }
}

/// One row of the horizontal pass with `taps` weights per output pixel.
#[inline(always)]
fn horizontal_row(src: &[u8], dst: &mut [u8], c: &Coefficients, taps: usize) {
    for ((px, &start), k) in dst.chunks_exact_mut(CHANNELS).zip(&c.starts).zip(c.weights.chunks_exact(taps)) {
        let window = &src[start * CHANNELS..(start + taps) * CHANNELS];
        let (mut r, mut g, mut b) = (ROUNDING, ROUNDING, ROUNDING);
        for (p, &w) in window.chunks_exact(CHANNELS).zip(k) {
            r += i32::from(p[0]) * w;
            g += i32::from(p[1]) * w;
            b += i32::from(p[2]) * w;
        }
        px[0] = clip8(r);
        px[1] = clip8(g);
        px[2] = clip8(b);
    }
}

/// 8-bit value -> normalised f32, per channel, with numpy's arithmetic: `float32(v * (1/255))` in
/// f64, then `(x - float32(mean)) / float32(std)` in f32 — bit-identical to the processor.
#[derive(Clone, Debug)]
struct NormalizeLut([[f32; 256]; CHANNELS]);

impl NormalizeLut {
    fn new(config: &PreprocessConfig) -> Result<Self> {
        let mut lut = [[0f32; 256]; CHANNELS];
        for (c, table) in lut.iter_mut().enumerate() {
            let (mean, std) = (config.image_mean[c] as f32, config.image_std[c] as f32);
            if !(std.is_finite() && std > 0.0 && mean.is_finite()) {
                return Err(Error::InvalidPreprocessConfig(format!(
                    "channel {c}: mean {mean} and std {std} must be finite, std > 0"
                )));
            }
            for (v, out) in table.iter_mut().enumerate() {
                let x = (v as f64 * RESCALE) as f32;
                *out = (x - mean) / std;
            }
        }
        Ok(Self(lut))
    }
}

/// Writes resized row `y` (interleaved RGB bytes) into its patch rows, both temporal copies.
fn write_patch_row(out: &mut [f32], row: &[u8], y: usize, grid_w: usize, lut: &NormalizeLut) {
    const PATCH_AREA: usize = PATCH_SIZE_PX * PATCH_SIZE_PX;
    let (gy, py) = (y / PATCH_SIZE_PX, y % PATCH_SIZE_PX);
    let (bh, mh) = (gy / MERGE_SIZE, gy % MERGE_SIZE);
    let blocks_w = grid_w / MERGE_SIZE;
    for (gx, patch_px) in row.chunks_exact(PATCH_SIZE_PX * CHANNELS).enumerate() {
        let (bw, mw) = (gx / MERGE_SIZE, gx % MERGE_SIZE);
        let patch = ((bh * blocks_w + bw) * MERGE_SIZE + mh) * MERGE_SIZE + mw;
        let base = patch * PATCH_ROW_LEN + py * PATCH_SIZE_PX;
        for (c, table) in lut.0.iter().enumerate() {
            let mut values = [0f32; PATCH_SIZE_PX];
            for (v, px) in values.iter_mut().zip(patch_px.chunks_exact(CHANNELS)) {
                *v = table[usize::from(px[c])];
            }
            for copy in 0..TEMPORAL_PATCH_SIZE {
                let at = base + (c * TEMPORAL_PATCH_SIZE + copy) * PATCH_AREA;
                out[at..at + PATCH_SIZE_PX].copy_from_slice(&values);
            }
        }
    }
}

/// Checks that a grid is non-empty and its sides are multiples of [`MERGE_SIZE`].
fn check_grid(grid_thw: [usize; 3]) -> Result<()> {
    let [t, h, w] = grid_thw;
    if t == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidGrid { grid_thw, reason: "a side is zero" });
    }
    if h % MERGE_SIZE != 0 || w % MERGE_SIZE != 0 {
        return Err(Error::InvalidGrid {
            grid_thw,
            reason: "height and width must be multiples of the merge size",
        });
    }
    Ok(())
}

/// Rotary position ids of the vision encoder's patches (transformers' `get_vision_position_ids`,
/// what `rot_pos_emb` consumes): `[sum t*h*w, 2]` i64, one `(row, column)` patch position per row
/// of `pixel_values`, in the same merge-block order; repeated for each temporal patch. Several
/// images are concatenated in order.
///
/// # Errors
/// [`Error::InvalidGrid`] for an empty grid or odd sides.
pub fn vision_position_ids(grids_thw: &[[usize; 3]]) -> Result<Array2<i64>> {
    let mut ids = Vec::new();
    for &grid in grids_thw {
        check_grid(grid)?;
        let [t, h, w] = grid;
        for _ in 0..t {
            for bh in 0..h / MERGE_SIZE {
                for bw in 0..w / MERGE_SIZE {
                    for mh in 0..MERGE_SIZE {
                        for mw in 0..MERGE_SIZE {
                            ids.push((bh * MERGE_SIZE + mh) as i64);
                            ids.push((bw * MERGE_SIZE + mw) as i64);
                        }
                    }
                }
            }
        }
    }
    let rows = ids.len() / 2;
    Array2::from_shape_vec((rows, 2), ids).map_err(|e| Error::InvalidPreprocessConfig(e.to_string()))
}

/// The window-attention order of the vision encoder (transformers' `get_vision_window_index`).
#[derive(Clone, Debug, PartialEq)]
pub struct WindowIndex {
    /// `[sum t*h*w / 4]` i64: merged-token indices in window order (windows of 4x4 merged tokens =
    /// 112x112 pixels, row-major; tokens row-major inside a window; border windows smaller).
    pub window_index: Array1<i64>,
    /// `[windows + 1]` i32: cumulative patch counts of the windows, from 0 (empty windows dropped).
    pub cu_window_seqlens: Array1<i32>,
}

/// The window order and window boundaries of the vision encoder's windowed attention layers, for
/// window size [`WINDOW_SIZE_PX`], [`MERGE_SIZE`] and [`PATCH_SIZE_PX`]. Windows at the right and
/// bottom borders hold what remains of the grid.
///
/// # Errors
/// [`Error::InvalidGrid`] for an empty grid or odd sides, or more patches than i32 holds.
pub fn window_index(grids_thw: &[[usize; 3]]) -> Result<WindowIndex> {
    window_index_sized(grids_thw, WINDOW_SIZE_PX)
}

/// [`window_index`] for a model configured with another `window_size` (pixels, a positive multiple
/// of `MERGE_SIZE * PATCH_SIZE_PX` = 28).
///
/// # Errors
/// [`Error::InvalidGrid`] as [`window_index`]; [`Error::InvalidPreprocessConfig`] for a window size
/// that is not a positive multiple of 28.
pub fn window_index_sized(grids_thw: &[[usize; 3]], window_size_px: usize) -> Result<WindowIndex> {
    let merged_px = MERGE_SIZE * PATCH_SIZE_PX;
    if window_size_px == 0 || !window_size_px.is_multiple_of(merged_px) {
        return Err(Error::InvalidPreprocessConfig(format!(
            "window size {window_size_px} px is not a positive multiple of {merged_px}"
        )));
    }
    let window_tokens = window_size_px / merged_px;
    let mut index = Vec::new();
    let mut cu = vec![0i32];
    let mut offset = 0usize;
    let mut patches = 0usize;
    for &grid in grids_thw {
        check_grid(grid)?;
        let [t, h, w] = grid;
        let (llm_h, llm_w) = (h / MERGE_SIZE, w / MERGE_SIZE);
        for ti in 0..t {
            for r0 in (0..llm_h).step_by(window_tokens) {
                for c0 in (0..llm_w).step_by(window_tokens) {
                    let (r1, c1) = ((r0 + window_tokens).min(llm_h), (c0 + window_tokens).min(llm_w));
                    for r in r0..r1 {
                        for c in c0..c1 {
                            index.push((offset + (ti * llm_h + r) * llm_w + c) as i64);
                        }
                    }
                    patches += (r1 - r0) * (c1 - c0) * MERGE_UNIT;
                    let end = i32::try_from(patches).map_err(|_| Error::InvalidGrid {
                        grid_thw: grid,
                        reason: "too many patches for i32",
                    })?;
                    cu.push(end);
                }
            }
        }
        offset += t * llm_h * llm_w;
    }
    Ok(WindowIndex { window_index: Array1::from(index), cu_window_seqlens: Array1::from(cu) })
}

/// Cumulative patch counts for the full-attention layers (transformers' `get_vision_cu_seqlens`):
/// `[sum t + 1]` i32, one segment of `h*w` patches per temporal patch of each image, from 0.
///
/// # Errors
/// [`Error::InvalidGrid`] for an empty grid or odd sides, or more patches than i32 holds.
pub fn cu_seqlens(grids_thw: &[[usize; 3]]) -> Result<Array1<i32>> {
    let mut cu = vec![0i32];
    let mut total = 0usize;
    for &grid in grids_thw {
        check_grid(grid)?;
        let [t, h, w] = grid;
        for _ in 0..t {
            total += h * w;
            let end = i32::try_from(total)
                .map_err(|_| Error::InvalidGrid { grid_thw: grid, reason: "too many patches for i32" })?;
            cu.push(end);
        }
    }
    Ok(Array1::from(cu))
}

/// The decoder's 3-row rotary positions for one prompt (`Qwen2_5_VLModel.get_rope_index`).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeIndex {
    /// `[3, S]` i64 (temporal, height, width rows): text tokens count up on all three rows; the
    /// image block holds `start + t`, `start + row`, `start + column` of each merged token
    /// (row-major); text after it resumes at `start + max(grid_t, grid_h / 2, grid_w / 2)`.
    pub position_ids: Array2<i64>,
    /// `max(position_ids) + 1 - S`: add to a token's sequence index to get its position while
    /// decoding (the `rope_deltas` of transformers).
    pub rope_delta: i64,
}

/// 3-row positions of `text_before` text tokens, the image of grid `grid_thw` (its
/// `grid_t * grid_h * grid_w / 4` image-pad tokens), then `text_after` text tokens. The layout of
/// our prompts: one image per user turn. Exported decoders take `position_ids [3, B, S]`.
///
/// # Errors
/// [`Error::InvalidGrid`] for an empty grid or odd sides.
pub fn rope_index(text_before: usize, grid_thw: [usize; 3], text_after: usize) -> Result<RopeIndex> {
    check_grid(grid_thw)?;
    let [t, h, w] = grid_thw;
    let image_tokens = t * (h / MERGE_SIZE) * (w / MERGE_SIZE);
    // Any two distinct ids do: 1 marks the image block, 0 the text around it.
    let tokens: Vec<i64> = std::iter::repeat_n(0, text_before)
        .chain(std::iter::repeat_n(1, image_tokens))
        .chain(std::iter::repeat_n(0, text_after))
        .collect();
    rope_index_tokens(&tokens, 1, &[grid_thw])
}

/// 3-row positions of any token sequence with image blocks (`Qwen2_5_VLModel.get_rope_index` for
/// images): each maximal run of `image_token_id` is one image, taking the grids of `grids_thw` in
/// order; a run must hold exactly `t * h * w / 4` tokens of its grid. Text tokens count up on all
/// rows; after an image, text resumes at the image's start + `max(t, h / 2, w / 2)`.
///
/// # Errors
/// [`Error::InvalidGrid`] for an invalid grid, [`Error::InvalidPreprocessConfig`] when the image
/// runs and the grids disagree (count or length).
pub fn rope_index_tokens(tokens: &[i64], image_token_id: i64, grids_thw: &[[usize; 3]]) -> Result<RopeIndex> {
    let len = tokens.len();
    let mut ids = Array2::<i64>::zeros((3, len));
    let mut next = 0i64;
    let mut images = grids_thw.iter();
    let mut i = 0;
    while i < len {
        if tokens[i] != image_token_id {
            for row in 0..3 {
                ids[[row, i]] = next;
            }
            next += 1;
            i += 1;
            continue;
        }
        let run = tokens[i..].iter().take_while(|&&t| t == image_token_id).count();
        let &grid = images.next().ok_or_else(|| {
            Error::InvalidPreprocessConfig(format!(
                "more image-token runs than the {} grid(s) given",
                grids_thw.len()
            ))
        })?;
        check_grid(grid)?;
        let [t, h, w] = grid;
        let (llm_h, llm_w) = (h / MERGE_SIZE, w / MERGE_SIZE);
        if run != t * llm_h * llm_w {
            return Err(Error::InvalidPreprocessConfig(format!(
                "an image-token run of {run} at position {i} does not match grid {grid:?} ({} tokens)",
                t * llm_h * llm_w
            )));
        }
        let mut col = i;
        for ti in 0..t {
            for r in 0..llm_h {
                for c in 0..llm_w {
                    ids[[0, col]] = next + ti as i64;
                    ids[[1, col]] = next + r as i64;
                    ids[[2, col]] = next + c as i64;
                    col += 1;
                }
            }
        }
        next += t.max(llm_h).max(llm_w) as i64;
        i += run;
    }
    if images.next().is_some() {
        return Err(Error::InvalidPreprocessConfig(format!(
            "{} grid(s) given but fewer image-token runs in the sequence",
            grids_thw.len()
        )));
    }
    let max = ids.iter().copied().max().unwrap_or(-1);
    Ok(RopeIndex { position_ids: ids, rope_delta: max + 1 - len as i64 })
}
