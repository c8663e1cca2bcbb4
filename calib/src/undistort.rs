//! Undistortion: the camera of the undistorted image, and a precomputed remap table that turns
//! every distorted camera frame into it (the per-frame fast path).

use image::{GrayImage, RgbImage};
use nalgebra::Point2;

use crate::camera::Intrinsics;
use crate::error::{Error, Result};

/// How to choose the undistorted image's camera (OpenCV's `getOptimalNewCameraMatrix` `alpha`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewCamera {
    /// Same `fx fy cx cy` as the distorted camera.
    Same,
    /// Scale so that every pixel of the undistorted image has a source pixel (`alpha = 0`):
    /// no black border, some of the source is cropped.
    CropValid,
    /// Scale so that every source pixel lands in the undistorted image (`alpha = 1`): nothing
    /// is lost, black borders appear.
    KeepAll,
}

/// Points sampled along each side of the image to find its undistorted outline.
const OUTLINE_SAMPLES: usize = 64;

/// The distortion-free camera of the undistorted image, same size as `k`'s.
///
/// # Errors
/// [`Error::InvalidRegion`] when the image outline cannot be undistorted.
pub fn new_camera(k: &Intrinsics, policy: NewCamera) -> Result<Intrinsics> {
    let plain = Intrinsics::new(k.fx(), k.fy(), k.cx(), k.cy(), k.width(), k.height())?;
    let (tx, ty) = k.offset_m();
    let plain = plain.with_offset_m(tx, ty)?;
    if policy == NewCamera::Same || k.distortion().is_none() {
        return Ok(plain);
    }
    let (w, h) = (k.width() as f64 - 1.0, k.height() as f64 - 1.0);
    // Undistorted normalised coordinates of points along each side of the image.
    let side = |from: (f64, f64), to: (f64, f64)| -> Result<Vec<(f64, f64)>> {
        (0..=OUTLINE_SAMPLES)
            .map(|i| {
                let t = i as f64 / OUTLINE_SAMPLES as f64;
                let p = Point2::new(from.0 + t * (to.0 - from.0), from.1 + t * (to.1 - from.1));
                let q = k.undistort_pixel(&p)?;
                Ok(((q.x - k.cx()) / k.fx(), (q.y - k.cy()) / k.fy()))
            })
            .collect()
    };
    let (left, right) = (side((0.0, 0.0), (0.0, h))?, side((w, 0.0), (w, h))?);
    let (top, bottom) = (side((0.0, 0.0), (w, 0.0))?, side((0.0, h), (w, h))?);
    let max = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
    let min = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).fold(f64::INFINITY, f64::min);
    let (x0, x1, y0, y1) = match policy {
        // The rectangle inside the undistorted outline.
        NewCamera::CropValid => {
            (max(&left, |p| p.0), min(&right, |p| p.0), max(&top, |p| p.1), min(&bottom, |p| p.1))
        }
        // The rectangle around it.
        _ => (min(&left, |p| p.0), max(&right, |p| p.0), min(&top, |p| p.1), max(&bottom, |p| p.1)),
    };
    if !(x1 > x0 && y1 > y0) {
        return Err(Error::InvalidRegion("the undistorted image outline is empty".to_owned()));
    }
    // Map [x0, x1] x [y0, y1] onto pixel centres [0, w] x [0, h].
    let (fx, fy) = (w / (x1 - x0), h / (y1 - y0));
    Intrinsics::new(fx, fy, -fx * x0, -fy * y0, k.width(), k.height())?.with_offset_m(tx, ty)
}

/// Bits of the bilinear weights: four weights summing to 128, so that a weighted sum of four 8-bit
/// samples fits 16 bits (interpolation precision 1/128 of a grey level step, ample for 8-bit output).
const WEIGHT_BITS: u32 = 7;
const WEIGHT_ONE: u16 = 1 << WEIGHT_BITS;
/// Marks a destination pixel with no source pixel (it stays black).
const NO_SOURCE: u32 = u32::MAX;

/// A precomputed map from a distorted camera's image to an undistorted camera's image: for each
/// destination pixel, the top-left source pixel of its bilinear neighbourhood and the four weights.
pub struct UndistortMap {
    src_width: u32,
    src_height: u32,
    dst_width: u32,
    dst_height: u32,
    /// Source pixel index (`y * width + x`) of the top-left neighbour, or [`NO_SOURCE`].
    offsets: Vec<u32>,
    /// Weights of the top-left, top-right, bottom-left and bottom-right neighbours, summing to
    /// `WEIGHT_ONE`.
    weights: Vec<[u8; 4]>,
}

impl UndistortMap {
    /// The map from images of `distorted` to images of `undistorted` (usually
    /// [`new_camera`]`(distorted, ..)`).
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] for a source image smaller than 2x2 pixels.
    pub fn new(distorted: &Intrinsics, undistorted: &Intrinsics) -> Result<Self> {
        let (sw, sh) = (distorted.width(), distorted.height());
        if sw < 2 || sh < 2 {
            return Err(Error::InvalidRegion(format!("a {sw}x{sh} image is too small to remap")));
        }
        let (dw, dh) = (undistorted.width(), undistorted.height());
        let n = dw as usize * dh as usize;
        let (mut offsets, mut weights) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for v in 0..dh {
            for u in 0..dw {
                let x = (u as f64 - undistorted.cx()) / undistorted.fx();
                let y = (v as f64 - undistorted.cy()) / undistorted.fy();
                let (xd, yd) = match distorted.distortion() {
                    // Beyond the lens model's fold a ray maps back into the image: no source.
                    Some(d) if !d.is_valid_at(x, y) => (f64::NAN, f64::NAN),
                    Some(d) => d.distort(x, y),
                    None => (x, y),
                };
                let (sx, sy) = (distorted.fx() * xd + distorted.cx(), distorted.fy() * yd + distorted.cy());
                // A source position inside the image's outer pixel edges is valid; within half a
                // pixel of the border it reads the border pixel.
                let inside = sx >= -0.5 && sy >= -0.5 && sx <= sw as f64 - 0.5 && sy <= sh as f64 - 0.5;
                if !inside {
                    offsets.push(NO_SOURCE);
                    weights.push([0; 4]);
                    continue;
                }
                let (sx, sy) = (sx.clamp(0.0, (sw - 1) as f64), sy.clamp(0.0, (sh - 1) as f64));
                let (x0, y0) = ((sx.floor() as u32).min(sw - 2), (sy.floor() as u32).min(sh - 2));
                let (ax, ay) = (sx - f64::from(x0), sy - f64::from(y0));
                let one = f64::from(WEIGHT_ONE);
                let mut w = [(1.0 - ax) * (1.0 - ay), ax * (1.0 - ay), (1.0 - ax) * ay, ax * ay]
                    .map(|v| (v * one).round() as i32);
                // Rounding may leave the sum one or two off WEIGHT_ONE; the largest weight absorbs it.
                let residual = i32::from(WEIGHT_ONE) - w.iter().sum::<i32>();
                let largest = (0..4).max_by_key(|&i| w[i]).unwrap_or(0);
                w[largest] += residual;
                let [w00, w01, w10, w11] = w.map(|v| v.clamp(0, i32::from(WEIGHT_ONE)) as u8);
                offsets.push(y0 * sw + x0);
                weights.push([w00, w01, w10, w11]);
            }
        }
        Ok(Self { src_width: sw, src_height: sh, dst_width: dw, dst_height: dh, offsets, weights })
    }

    /// Size of the images this map reads, `(width, height)`.
    pub fn source_size(&self) -> (u32, u32) {
        (self.src_width, self.src_height)
    }

    /// Size of the images this map writes, `(width, height)`.
    pub fn output_size(&self) -> (u32, u32) {
        (self.dst_width, self.dst_height)
    }

    fn check(&self, w: u32, h: u32) -> Result<()> {
        if (w, h) == (self.src_width, self.src_height) {
            Ok(())
        } else {
            Err(Error::InvalidRegion(format!(
                "image is {w}x{h}, the map was made for {}x{}",
                self.src_width, self.src_height
            )))
        }
    }

    fn remap<const C: usize>(&self, src: &[u8], dst: &mut [u8]) {
        let row = self.src_width as usize * C;
        for ((out, &offset), &[w00, w01, w10, w11]) in
            dst.chunks_exact_mut(C).zip(&self.offsets).zip(&self.weights)
        {
            let base = offset as usize * C;
            // The two source pixels of each of the two rows; `None` only for NO_SOURCE (the map was
            // built for this image size, so every other offset is in bounds).
            let (Some(top), Some(bottom)) =
                (src.get(base..base + 2 * C), src.get(base + row..base + row + 2 * C))
            else {
                out.fill(0);
                continue;
            };
            let [w00, w01, w10, w11] = [w00, w01, w10, w11].map(u16::from);
            for c in 0..C {
                let sum = w00 * u16::from(top[c])
                    + w01 * u16::from(top[C + c])
                    + w10 * u16::from(bottom[c])
                    + w11 * u16::from(bottom[C + c]);
                out[c] = ((sum + (WEIGHT_ONE >> 1)) >> WEIGHT_BITS) as u8;
            }
        }
    }

    /// Undistorts an RGB frame.
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when `src` is not the size the map was made for.
    pub fn remap_rgb(&self, src: &RgbImage) -> Result<RgbImage> {
        self.check(src.width(), src.height())?;
        let mut dst = RgbImage::new(self.dst_width, self.dst_height);
        self.remap::<3>(src.as_raw(), &mut dst);
        Ok(dst)
    }

    /// Undistorts a grey frame.
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when `src` is not the size the map was made for.
    pub fn remap_gray(&self, src: &GrayImage) -> Result<GrayImage> {
        self.check(src.width(), src.height())?;
        let mut dst = GrayImage::new(self.dst_width, self.dst_height);
        self.remap::<1>(src.as_raw(), &mut dst);
        Ok(dst)
    }
}
