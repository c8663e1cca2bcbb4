//! Pinhole camera with optional OpenCV `plumb_bob` distortion and a KITTI-style projection offset.

use nalgebra::{Point2, Point3};
use serde::{Deserialize, Serialize};

use crate::box2d::{Bounds, Box2d};
use crate::error::{Error, Result};

/// Points closer to the image plane than this (metres, along z) are not projected.
pub const MIN_PROJECT_DEPTH_M: f64 = 1e-6;

/// Newton iterations of [`Distortion::undistort`] before it gives up.
const UNDISTORT_MAX_ITERS: usize = 50;
/// Convergence threshold of [`Distortion::undistort`] in normalised image units (~1e-9 px at f = 1000).
const UNDISTORT_TOL: f64 = 1e-12;

/// OpenCV `plumb_bob` (Brown-Conrady) distortion, acting on normalised image coordinates:
///
/// ```text
/// r2 = x^2 + y^2,  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
/// xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
/// yd = y radial + p1 (r2 + 2 y^2) + 2 p2 x y
/// ```
///
/// Invariant: every coefficient is finite (checked by [`Distortion::new`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DistortionFields")]
pub struct Distortion {
    k1: f64,
    k2: f64,
    p1: f64,
    p2: f64,
    k3: f64,
}

#[derive(Deserialize)]
struct DistortionFields {
    k1: f64,
    k2: f64,
    p1: f64,
    p2: f64,
    #[serde(default)]
    k3: f64,
}

impl TryFrom<DistortionFields> for Distortion {
    type Error = Error;
    fn try_from(d: DistortionFields) -> Result<Self> {
        Distortion::new(d.k1, d.k2, d.p1, d.p2, d.k3)
    }
}

impl Distortion {
    /// Coefficients in OpenCV order `k1 k2 p1 p2 k3`.
    ///
    /// # Errors
    /// [`Error::InvalidDistortion`] when a coefficient is NaN or infinite.
    pub fn new(k1: f64, k2: f64, p1: f64, p2: f64, k3: f64) -> Result<Self> {
        for (field, value) in [("k1", k1), ("k2", k2), ("p1", p1), ("p2", p2), ("k3", k3)] {
            if !value.is_finite() {
                return Err(Error::InvalidDistortion { field, value });
            }
        }
        Ok(Self { k1, k2, p1, p2, k3 })
    }

    /// The coefficients in OpenCV order `[k1, k2, p1, p2, k3]`.
    pub fn coefficients(&self) -> [f64; 5] {
        [self.k1, self.k2, self.p1, self.p2, self.k3]
    }

    /// True when every coefficient is zero (the model is then the identity).
    pub fn is_zero(&self) -> bool {
        self.coefficients().iter().all(|c| *c == 0.0)
    }

    /// Distorted normalised coordinates of the undistorted normalised point `(x, y)`.
    pub fn distort(&self, x: f64, y: f64) -> (f64, f64) {
        let r2 = x * x + y * y;
        let radial = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3));
        let xd = x * radial + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x);
        let yd = y * radial + self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * x * y;
        (xd, yd)
    }

    /// True inside the radius where the radial model still grows outwards: the radial factor
    /// and the distorted radius's derivative `d(r * radial) / dr` are both > 0 there (for `k1 < 0`
    /// alone, `r^2 < 1 / (3 |k1|)`), and the Jacobian keeps its orientation. Beyond it a barrel
    /// model folds back and maps rays onto the wrong side of the image. (The determinant alone
    /// does not tell: where both factors are negative the map is a point reflection, det > 0.)
    pub fn is_valid_at(&self, x: f64, y: f64) -> bool {
        let r2 = x * x + y * y;
        let radial = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3));
        let dradial = self.k1 + r2 * (2.0 * self.k2 + 3.0 * self.k3 * r2);
        let [[a, b], [c, d]] = self.jacobian(x, y);
        let det = a * d - b * c;
        radial > 0.0 && radial + 2.0 * r2 * dradial > 0.0 && det.is_finite() && det > 0.0
    }

    /// Jacobian `d(xd, yd) / d(x, y)` as `[[dxd/dx, dxd/dy], [dyd/dx, dyd/dy]]`.
    fn jacobian(&self, x: f64, y: f64) -> [[f64; 2]; 2] {
        let r2 = x * x + y * y;
        let radial = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3));
        // d(radial)/d(r2)
        let dradial = self.k1 + r2 * (2.0 * self.k2 + 3.0 * self.k3 * r2);
        let cross = 2.0 * x * y * dradial + 2.0 * self.p1 * x + 2.0 * self.p2 * y;
        [
            [radial + 2.0 * x * x * dradial + 2.0 * self.p1 * y + 6.0 * self.p2 * x, cross],
            [cross, radial + 2.0 * y * y * dradial + 6.0 * self.p1 * y + 2.0 * self.p2 * x],
        ]
    }

    /// Undistorted normalised coordinates of the distorted normalised point `(xd, yd)`, by Newton's
    /// method from `(xd, yd)`. Returns `None` where the model is not invertible (the Jacobian is
    /// singular, or no convergence: far outside the field of view of strongly distorted lenses), and
    /// for a root beyond the model's fold ([`Self::is_valid_at`]), which is not the ray the pixel saw.
    pub fn undistort(&self, xd: f64, yd: f64) -> Option<(f64, f64)> {
        if self.is_zero() {
            return Some((xd, yd));
        }
        let (mut x, mut y) = (xd, yd);
        for _ in 0..UNDISTORT_MAX_ITERS {
            let (fx, fy) = self.distort(x, y);
            let (ex, ey) = (fx - xd, fy - yd);
            let [[a, b], [c, d]] = self.jacobian(x, y);
            let det = a * d - b * c;
            if !det.is_finite() || det.abs() < 1e-12 {
                return None;
            }
            let dx = (d * ex - b * ey) / det;
            let dy = (-c * ex + a * ey) / det;
            x -= dx;
            y -= dy;
            if dx.abs().max(dy.abs()) < UNDISTORT_TOL {
                return Some((x, y))
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && self.is_valid_at(*x, *y));
            }
        }
        None
    }
}

/// Intrinsics of a pinhole camera in the KITTI / OpenCV frame (x right, y down, z forward, metres;
/// pixel centres at integer coordinates).
///
/// Projection: `u = fx (x - tx) / z + cx`, `v = fy (y - ty) / z + cy`, with the optional distortion
/// applied to the normalised coordinates. `(tx, ty)` is the KITTI `P2` translation
/// (`tx = P2[0,3] / -fx`, `ty = P2[1,3] / -fy`): the rectified camera sits that far from the reference
/// camera in which labels are given. `P2[2,3]` (2.7 mm in KITTI) is ignored, as the KITTI-derived
/// monocular 3D codebases (and the Mono3DVG evaluator) ignore it.
///
/// Invariants (checked by every constructor): `fx, fy > 0`, all parameters finite, `width, height > 0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IntrinsicsFields", into = "IntrinsicsFields")]
pub struct Intrinsics {
    fx: f64,
    fy: f64,
    cx: f64,
    cy: f64,
    width: u32,
    height: u32,
    distortion: Option<Distortion>,
    tx_m: f64,
    ty_m: f64,
}

/// The serialised form of [`Intrinsics`]; validated on the way in.
#[derive(Serialize, Deserialize)]
struct IntrinsicsFields {
    fx: f64,
    fy: f64,
    cx: f64,
    cy: f64,
    width: u32,
    height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    distortion: Option<Distortion>,
    #[serde(default, skip_serializing_if = "is_zero")]
    tx_m: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    ty_m: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl TryFrom<IntrinsicsFields> for Intrinsics {
    type Error = Error;
    fn try_from(f: IntrinsicsFields) -> Result<Self> {
        let k = Intrinsics::new(f.fx, f.fy, f.cx, f.cy, f.width, f.height)?.with_offset_m(f.tx_m, f.ty_m)?;
        Ok(match f.distortion {
            Some(d) => k.with_distortion(d),
            None => k,
        })
    }
}

impl From<Intrinsics> for IntrinsicsFields {
    fn from(k: Intrinsics) -> Self {
        Self {
            fx: k.fx,
            fy: k.fy,
            cx: k.cx,
            cy: k.cy,
            width: k.width,
            height: k.height,
            distortion: k.distortion,
            tx_m: k.tx_m,
            ty_m: k.ty_m,
        }
    }
}

fn check_finite(field: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::InvalidIntrinsics { field, value, expected: "must be finite" })
    }
}

fn check_positive(field: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::InvalidIntrinsics { field, value, expected: "must be finite and > 0" })
    }
}

impl Intrinsics {
    /// A distortion-free pinhole camera of `width x height` pixels.
    ///
    /// # Errors
    /// [`Error::InvalidIntrinsics`] for NaN/infinite parameters, `fx` or `fy <= 0`, or an empty image.
    ///
    /// # Example
    /// ```
    /// use monovlm_calib::Intrinsics;
    /// let k = Intrinsics::new(721.5377, 721.5377, 609.5593, 172.854, 1242, 375)?;
    /// assert!(Intrinsics::new(f64::NAN, 721.0, 600.0, 170.0, 1242, 375).is_err());
    /// # Ok::<(), monovlm_calib::Error>(())
    /// ```
    pub fn new(fx: f64, fy: f64, cx: f64, cy: f64, width: u32, height: u32) -> Result<Self> {
        check_positive("fx", fx)?;
        check_positive("fy", fy)?;
        check_finite("cx", cx)?;
        check_finite("cy", cy)?;
        if width == 0 {
            return Err(Error::InvalidIntrinsics { field: "width", value: 0.0, expected: "must be > 0" });
        }
        if height == 0 {
            return Err(Error::InvalidIntrinsics { field: "height", value: 0.0, expected: "must be > 0" });
        }
        Ok(Self { fx, fy, cx, cy, width, height, distortion: None, tx_m: 0.0, ty_m: 0.0 })
    }

    /// The same camera with `plumb_bob` distortion (an all-zero model is stored as none).
    pub fn with_distortion(mut self, distortion: Distortion) -> Self {
        self.distortion = (!distortion.is_zero()).then_some(distortion);
        self
    }

    /// The same camera with the KITTI projection offset `(tx, ty)` in metres.
    ///
    /// # Errors
    /// [`Error::InvalidIntrinsics`] when an offset is NaN or infinite.
    pub fn with_offset_m(mut self, tx_m: f64, ty_m: f64) -> Result<Self> {
        self.tx_m = check_finite("tx_m", tx_m)?;
        self.ty_m = check_finite("ty_m", ty_m)?;
        Ok(self)
    }

    /// From a 3x4 projection matrix such as KITTI's `P2`: `fx = P[0][0]`, `cx = P[0][2]`,
    /// `tx = P[0][3] / -fx` (and likewise for y).
    ///
    /// # Errors
    /// [`Error::InvalidIntrinsics`] when the matrix is not of the `[K | K t]` pinhole form
    /// (non-finite, non-positive focal lengths, skew, or a third row other than `[0 0 1 *]`).
    pub fn from_projection_matrix(p: &[[f64; 4]; 3], width: u32, height: u32) -> Result<Self> {
        for (field, row) in ["P row 0", "P row 1", "P row 2"].into_iter().zip(p) {
            if let Some(value) = row.iter().copied().find(|v| !v.is_finite()) {
                return Err(Error::InvalidIntrinsics { field, value, expected: "every entry finite" });
            }
        }
        let pinhole = p[0][1] == 0.0 && p[1][0] == 0.0 && p[2][0] == 0.0 && p[2][1] == 0.0 && p[2][2] == 1.0;
        if !pinhole {
            return Err(Error::InvalidIntrinsics {
                field: "P",
                value: p[0][1],
                expected: "a pinhole projection [fx 0 cx *; 0 fy cy *; 0 0 1 *]",
            });
        }
        let k = Self::new(p[0][0], p[1][1], p[0][2], p[1][2], width, height)?;
        k.with_offset_m(p[0][3] / -p[0][0], p[1][3] / -p[1][1])
    }

    /// The 3x4 projection matrix `[fx 0 cx -fx tx; 0 fy cy -fy ty; 0 0 1 0]` (distortion not included).
    pub fn projection_matrix(&self) -> [[f64; 4]; 3] {
        [
            [self.fx, 0.0, self.cx, -self.fx * self.tx_m],
            [0.0, self.fy, self.cy, -self.fy * self.ty_m],
            [0.0, 0.0, 1.0, 0.0],
        ]
    }

    /// Focal length along x, pixels.
    pub fn fx(&self) -> f64 {
        self.fx
    }
    /// Focal length along y, pixels.
    pub fn fy(&self) -> f64 {
        self.fy
    }
    /// Principal point x, pixels.
    pub fn cx(&self) -> f64 {
        self.cx
    }
    /// Principal point y, pixels.
    pub fn cy(&self) -> f64 {
        self.cy
    }
    /// Image width, pixels.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Image height, pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
    /// The distortion model, if any.
    pub fn distortion(&self) -> Option<&Distortion> {
        self.distortion.as_ref()
    }
    /// KITTI projection offset `(tx, ty)`, metres.
    pub fn offset_m(&self) -> (f64, f64) {
        (self.tx_m, self.ty_m)
    }

    /// Pixel of the camera-frame point `p_cam`, or `None` when it is not in front of the camera
    /// (`z < MIN_PROJECT_DEPTH_M`) or, with distortion, lies where the lens model folds
    /// ([`Distortion::is_valid_at`] is false: far outside the field of view). The pixel may lie
    /// outside the image.
    pub fn project(&self, p_cam: &Point3<f64>) -> Option<Point2<f64>> {
        // Also rejects NaN depths.
        if p_cam.z.is_nan() || p_cam.z < MIN_PROJECT_DEPTH_M {
            return None;
        }
        let x = (p_cam.x - self.tx_m) / p_cam.z;
        let y = (p_cam.y - self.ty_m) / p_cam.z;
        let (xd, yd) = match &self.distortion {
            Some(d) if !d.is_valid_at(x, y) => return None,
            Some(d) => d.distort(x, y),
            None => (x, y),
        };
        Some(Point2::new(self.fx * xd + self.cx, self.fy * yd + self.cy))
    }

    /// Camera-frame point seen at pixel `p_px` at depth `depth_m` (along z).
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when the pixel cannot be undistorted (see [`Distortion::undistort`]).
    pub fn unproject(&self, p_px: &Point2<f64>, depth_m: f64) -> Result<Point3<f64>> {
        let (x, y) = self.undistorted_normalised(p_px)?;
        Ok(Point3::new(x * depth_m + self.tx_m, y * depth_m + self.ty_m, depth_m))
    }

    /// Normalised, undistorted image coordinates `((u - cx) / fx, (v - cy) / fy)` of a pixel.
    fn undistorted_normalised(&self, p_px: &Point2<f64>) -> Result<(f64, f64)> {
        let xd = (p_px.x - self.cx) / self.fx;
        let yd = (p_px.y - self.cy) / self.fy;
        match &self.distortion {
            None => Ok((xd, yd)),
            Some(d) => d.undistort(xd, yd).ok_or_else(|| {
                Error::InvalidRegion(format!("pixel ({}, {}) cannot be undistorted", p_px.x, p_px.y))
            }),
        }
    }

    /// Where the ideal (undistorted) pixel `p_px` appears in the distorted image.
    pub fn distort_pixel(&self, p_px: &Point2<f64>) -> Point2<f64> {
        let Some(d) = &self.distortion else { return *p_px };
        let (xd, yd) = d.distort((p_px.x - self.cx) / self.fx, (p_px.y - self.cy) / self.fy);
        Point2::new(self.fx * xd + self.cx, self.fy * yd + self.cy)
    }

    /// Where the ideal (undistorted, pinhole) box `b` appears in the distorted image: the
    /// tightest box around its distorted outline, clipped to the image; `None` when nothing of it
    /// is visible. Each side is sampled at [`crate::DISTORTED_EDGE_SAMPLES`] intervals (distortion
    /// bends it); parts of the outline beyond the lens model's fold
    /// ([`Distortion::is_valid_at`]) are left out, as [`Self::project`] leaves those rays out (the
    /// polynomial would fold them back inside the image), bisected to where the outline leaves the
    /// valid region. Without distortion this is `b` clipped.
    pub fn distort_box(&self, b: &Box2d) -> Option<Box2d> {
        let (w, h) = (self.width as f64, self.height as f64);
        let Some(d) = self.distortion.as_ref().filter(|d| !d.is_zero()) else { return b.clipped(w, h) };
        let corners = [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)];
        let mut bounds = Bounds::new();
        for (i, &(ua, va)) in corners.iter().enumerate() {
            let (ub, vb) = corners[(i + 1) % 4];
            bounds.grow_along(crate::DISTORTED_EDGE_SAMPLES, |t| {
                let (x, y) =
                    ((ua + t * (ub - ua) - self.cx) / self.fx, (va + t * (vb - va) - self.cy) / self.fy);
                d.is_valid_at(x, y).then(|| {
                    let (xd, yd) = d.distort(x, y);
                    Point2::new(self.fx * xd + self.cx, self.fy * yd + self.cy)
                })
            });
        }
        bounds.clipped(w, h)
    }

    /// The ideal (undistorted) pixel of the distorted-image pixel `p_px`.
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when the pixel cannot be undistorted.
    pub fn undistort_pixel(&self, p_px: &Point2<f64>) -> Result<Point2<f64>> {
        let (x, y) = self.undistorted_normalised(p_px)?;
        Ok(Point2::new(self.fx * x + self.cx, self.fy * y + self.cy))
    }

    /// True when `p_px` lies inside the image rectangle `[0, width] x [0, height]`, the rectangle to
    /// which 2D boxes are clipped (DESIGN.md: `x2`, `y2` are exclusive right/bottom edges).
    pub fn contains(&self, p_px: &Point2<f64>) -> bool {
        (0.0..=self.width as f64).contains(&p_px.x) && (0.0..=self.height as f64).contains(&p_px.y)
    }

    /// The intrinsics of this image resized to `width x height`, and the map from old to new pixels.
    ///
    /// Pixel centres map as `u' = (u + 0.5) sx - 0.5` (the convention of bilinear resizing with
    /// half-pixel centres, as in PIL, OpenCV `INTER_LINEAR` and the Qwen2.5-VL processor), so
    /// `fx' = fx sx` and `cx' = (cx + 0.5) sx - 0.5`. Distortion is unchanged (it acts on
    /// normalised coordinates).
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] for an empty target size.
    pub fn resized(&self, width: u32, height: u32) -> Result<(Self, ResizeMap)> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidRegion(format!("cannot resize to {width}x{height}")));
        }
        let map = ResizeMap { sx: width as f64 / self.width as f64, sy: height as f64 / self.height as f64 };
        let c = map.map_point(&Point2::new(self.cx, self.cy));
        let k = Self { fx: self.fx * map.sx, fy: self.fy * map.sy, cx: c.x, cy: c.y, width, height, ..*self };
        Ok((k, map))
    }

    /// The intrinsics of the sub-image with top-left pixel `(x0, y0)` and size `width x height`.
    ///
    /// # Errors
    /// [`Error::InvalidRegion`] when the crop is empty or leaves the image.
    pub fn cropped(&self, x0: u32, y0: u32, width: u32, height: u32) -> Result<Self> {
        let fits = width > 0
            && height > 0
            && x0.checked_add(width).is_some_and(|r| r <= self.width)
            && y0.checked_add(height).is_some_and(|b| b <= self.height);
        if !fits {
            return Err(Error::InvalidRegion(format!(
                "crop {width}x{height} at ({x0}, {y0}) does not fit in {}x{}",
                self.width, self.height
            )));
        }
        Ok(Self { cx: self.cx - x0 as f64, cy: self.cy - y0 as f64, width, height, ..*self })
    }
}

/// The pixel map of a resize: `u' = (u + 0.5) sx - 0.5`, `v' = (v + 0.5) sy - 0.5`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResizeMap {
    /// New width over old width.
    pub sx: f64,
    /// New height over old height.
    pub sy: f64,
}

impl ResizeMap {
    /// A point of the original image in the resized one.
    pub fn map_point(&self, p: &Point2<f64>) -> Point2<f64> {
        Point2::new((p.x + 0.5) * self.sx - 0.5, (p.y + 0.5) * self.sy - 0.5)
    }

    /// A point of the resized image in the original one.
    pub fn unmap_point(&self, p: &Point2<f64>) -> Point2<f64> {
        Point2::new((p.x + 0.5) / self.sx - 0.5, (p.y + 0.5) / self.sy - 0.5)
    }

    /// A box of the original image in the resized one (each corner mapped like a point).
    pub fn map_box(&self, b: &Box2d) -> Box2d {
        let (p1, p2) = (self.map_point(&Point2::new(b.x1, b.y1)), self.map_point(&Point2::new(b.x2, b.y2)));
        Box2d { x1: p1.x, y1: p1.y, x2: p2.x, y2: p2.y }
    }

    /// A box of the resized image in the original one (each corner mapped like a point).
    pub fn unmap_box(&self, b: &Box2d) -> Box2d {
        let (p1, p2) =
            (self.unmap_point(&Point2::new(b.x1, b.y1)), self.unmap_point(&Point2::new(b.x2, b.y2)));
        Box2d { x1: p1.x, y1: p1.y, x2: p2.x, y2: p2.y }
    }
}
