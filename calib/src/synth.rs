//! Synthetic checkerboard views through a known camera: ground truth for calibration tests,
//! benchmarks and `monovlm-calib synth-views` (a self-check users can run on their own settings).

use image::GrayImage;
use nalgebra::{Isometry3, Point2, Point3, Vector3};

use crate::board::{BOARD_BLACK, BOARD_WHITE, Checkerboard};
use crate::camera::Intrinsics;
use crate::error::{Error, Result};

/// Grey level of the scene behind the board.
const BACKGROUND: f32 = 120.0;

/// How a synthetic view is degraded after rendering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Degradation {
    /// Gaussian blur, pixels (0 = none).
    pub blur_sigma_px: f64,
    /// Additive Gaussian noise, grey levels (0 = none).
    pub noise_sigma: f64,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for Degradation {
    /// Mild defocus and sensor noise: blur 0.8 px, noise 2 grey levels.
    fn default() -> Self {
        Self { blur_sigma_px: 0.8, noise_sigma: 2.0, seed: 0 }
    }
}

/// Renders a board seen by one camera. Holds the camera's viewing ray for every sub-sample of every
/// pixel (undistorted once, shared by all the views it renders).
pub struct ViewRenderer {
    k: Intrinsics,
    supersample: u32,
    /// Normalised ideal coordinates `(x, y)` of the ray of each sub-sample, row-major.
    rays: Vec<[f32; 2]>,
}

impl ViewRenderer {
    /// A renderer for camera `k` with `supersample^2` samples a pixel (anti-aliasing).
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when some pixel of `k`'s image cannot be undistorted (a distortion
    /// model that is not invertible over the image).
    pub fn new(k: &Intrinsics, supersample: u32) -> Result<Self> {
        let ss = supersample.clamp(1, 8);
        let (w, h) = (k.width() * ss, k.height() * ss);
        let mut rays = Vec::with_capacity((w * h) as usize);
        for sv in 0..h {
            for su in 0..w {
                // Sub-sample centre in pixel coordinates (pixel centres at integers).
                let u = (su as f64 + 0.5) / ss as f64 - 0.5;
                let v = (sv as f64 + 0.5) / ss as f64 - 0.5;
                let ideal = k.undistort_pixel(&Point2::new(u, v))?;
                rays.push([((ideal.x - k.cx()) / k.fx()) as f32, ((ideal.y - k.cy()) / k.fy()) as f32]);
            }
        }
        Ok(Self { k: k.clone(), supersample: ss, rays })
    }

    /// The camera.
    pub fn intrinsics(&self) -> &Intrinsics {
        &self.k
    }

    /// The image of `board` posed at `cam_from_board`, degraded by `degradation`.
    pub fn render(
        &self,
        board: &Checkerboard,
        cam_from_board: &Isometry3<f64>,
        degradation: &Degradation,
    ) -> GrayImage {
        let (w, h, ss) = (self.k.width() as usize, self.k.height() as usize, self.supersample as usize);
        let (tx, ty) = self.k.offset_m();
        let origin = Vector3::new(tx, ty, 0.0);
        let normal = cam_from_board.rotation * Vector3::z();
        let t = cam_from_board.translation.vector;
        let board_from_cam_rot = cam_from_board.rotation.inverse();
        let margin = board.square_m();
        let shade = |ray: [f32; 2]| -> f32 {
            let d = Vector3::new(f64::from(ray[0]), f64::from(ray[1]), 1.0);
            let denom = normal.dot(&d);
            let lambda = normal.dot(&(t - origin)) / denom;
            if !(denom.abs() > 1e-12 && lambda > 0.0) {
                return BACKGROUND;
            }
            let p = board_from_cam_rot * (origin + d * lambda - t);
            match board.is_dark(p.x, p.y) {
                Some(true) => f32::from(BOARD_BLACK),
                Some(false) => f32::from(BOARD_WHITE),
                None => {
                    let on_margin = p.x >= -2.0 * margin
                        && p.y >= -2.0 * margin
                        && p.x <= (board.cols() as f64 + 1.0) * margin
                        && p.y <= (board.rows() as f64 + 1.0) * margin;
                    if on_margin { f32::from(BOARD_WHITE) } else { BACKGROUND }
                }
            }
        };
        let row_len = w * ss;
        let mut img = vec![0f32; w * h];
        for (i, out) in img.iter_mut().enumerate() {
            let (u, v) = (i % w, i / w);
            let mut acc = 0.0;
            for sv in 0..ss {
                let base = (v * ss + sv) * row_len + u * ss;
                acc += self.rays[base..base + ss].iter().map(|r| shade(*r)).sum::<f32>();
            }
            *out = acc / (ss * ss) as f32;
        }
        if degradation.blur_sigma_px > 0.0 {
            img = crate::chessboard::blur(&img, w, h, degradation.blur_sigma_px as f32);
        }
        let mut noise = SplitMix64::new(degradation.seed);
        GrayImage::from_fn(w as u32, h as u32, |u, v| {
            let value = img[v as usize * w + u as usize] + (degradation.noise_sigma * noise.normal()) as f32;
            image::Luma([value.round().clamp(0.0, 255.0) as u8])
        })
    }
}

/// The true pixel positions of the board's inner corners (row-major), `None` for corners behind
/// the camera.
pub fn true_corners(
    board: &Checkerboard,
    k: &Intrinsics,
    cam_from_board: &Isometry3<f64>,
) -> Vec<Option<Point2<f64>>> {
    board.object_points().iter().map(|p| k.project(&(cam_from_board * p))).collect()
}

/// A pose looking at the board: the board's centre `distance_m` in front of the camera, turned by
/// `tilt_x_rad` / `tilt_y_rad` out of the image plane and `roll_rad` in it, shifted by
/// `offset_m` (x, y) in the camera frame.
///
/// # Errors
/// [`Error::InvalidRegion`] for a non-positive or non-finite distance.
pub fn look_at_board(
    board: &Checkerboard,
    distance_m: f64,
    tilt_x_rad: f64,
    tilt_y_rad: f64,
    roll_rad: f64,
    offset_m: (f64, f64),
) -> Result<Isometry3<f64>> {
    if !(distance_m.is_finite() && distance_m > 0.0) {
        return Err(Error::InvalidRegion(format!("board distance {distance_m} m must be > 0")));
    }
    let rot = nalgebra::UnitQuaternion::from_euler_angles(tilt_x_rad, tilt_y_rad, roll_rad);
    let centre_board = Point3::new(
        0.5 * (board.cols() - 1) as f64 * board.square_m(),
        0.5 * (board.rows() - 1) as f64 * board.square_m(),
        0.0,
    );
    let centre_cam = Vector3::new(offset_m.0, offset_m.1, distance_m);
    let translation = centre_cam - rot * centre_board.coords;
    Ok(Isometry3::from_parts(translation.into(), rot))
}

/// A small deterministic random generator (SplitMix64) for synthetic data, tests and benchmarks:
/// the same seed gives the same sequence on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 uniform bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1)` (never exactly 0, so `ln` is safe).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unit(), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}
