//! Oriented 3D boxes in the camera frame.

use std::f64::consts::{PI, TAU};

use nalgebra::{Point2, Point3};
use serde::{Deserialize, Serialize};

use crate::box2d::{Bounds, Box2d};
use crate::camera::Intrinsics;
use crate::error::{Error, Result};

/// The near plane (metres, camera z) at which box edges are clipped before projection.
pub const NEAR_PLANE_M: f64 = 0.05;

/// Intervals each box edge is sampled at when projecting through a distorted lens (a distorted
/// edge bends, so its end points no longer bound its image).
pub const DISTORTED_EDGE_SAMPLES: usize = 16;

/// Wraps an angle to `(-pi, pi]`; angles already there are returned unchanged (bit for bit).
///
/// # Example
/// ```
/// use monovlm_calib::wrap_angle;
/// use std::f64::consts::PI;
/// assert_eq!(wrap_angle(-PI), PI);
/// assert!((wrap_angle(3.0 * PI / 2.0) + PI / 2.0).abs() < 1e-12);
/// ```
pub fn wrap_angle(angle_rad: f64) -> f64 {
    if angle_rad > -PI && angle_rad <= PI {
        return angle_rad;
    }
    let r = angle_rad.rem_euclid(TAU);
    if r > PI { r - TAU } else { r }
}

/// The 12 edges of a box as index pairs into [`Box3d::corners`].
pub const BOX_EDGES: [(usize, usize); 12] =
    [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)];

/// An oriented 3D box in the camera frame (x right, y down, z forward, metres).
///
/// `(x, y, z)` is the geometric centre (KITTI labels give the bottom centre, `y + h/2`); `l` runs
/// along the heading, `w` across it, `h` vertically; `yaw` is KITTI's `rotation_y`, the rotation
/// about the camera y axis, in `(-pi, pi]`: the heading direction is `(cos yaw, 0, -sin yaw)`.
///
/// Invariant for boxes made by [`Box3d::new`]: all finite, `l, w, h > 0`, yaw wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Box3d {
    /// Centre x, metres.
    pub x: f64,
    /// Centre y, metres (down).
    pub y: f64,
    /// Centre z, metres (forward).
    pub z: f64,
    /// Length along the heading, metres.
    pub l: f64,
    /// Width across the heading, metres.
    pub w: f64,
    /// Height, metres.
    pub h: f64,
    /// Rotation about the camera y axis, radians, in `(-pi, pi]`.
    pub yaw: f64,
}

impl Box3d {
    /// A checked box; `yaw` is wrapped to `(-pi, pi]`.
    ///
    /// # Errors
    /// [`Error::InvalidBox3d`] for a non-finite parameter or a size that is not `> 0`.
    pub fn new(x: f64, y: f64, z: f64, l: f64, w: f64, h: f64, yaw: f64) -> Result<Self> {
        for (field, value) in [("x", x), ("y", y), ("z", z), ("yaw", yaw)] {
            if !value.is_finite() {
                return Err(Error::InvalidBox3d { field, value, expected: "must be finite" });
            }
        }
        for (field, value) in [("l", l), ("w", w), ("h", h)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::InvalidBox3d { field, value, expected: "must be finite and > 0" });
            }
        }
        Ok(Self { x, y, z, l, w, h, yaw: wrap_angle(yaw) })
    }

    /// From a KITTI label's bottom centre `location`, dimensions `(h, w, l)` and `rotation_y`.
    ///
    /// # Errors
    /// As [`Box3d::new`].
    pub fn from_kitti(bottom_centre_m: [f64; 3], hwl_m: [f64; 3], rotation_y: f64) -> Result<Self> {
        let [x, y, z] = bottom_centre_m;
        let [h, w, l] = hwl_m;
        Self::new(x, y - 0.5 * h, z, l, w, h, rotation_y)
    }

    /// The KITTI label fields: bottom centre `location`, dimensions `(h, w, l)`, `rotation_y`.
    pub fn to_kitti(&self) -> ([f64; 3], [f64; 3], f64) {
        ([self.x, self.y + 0.5 * self.h, self.z], [self.h, self.w, self.l], self.yaw)
    }

    /// `[x, y, z, l, w, h, yaw]`, the order of the answer protocol.
    pub fn to_array(&self) -> [f64; 7] {
        [self.x, self.y, self.z, self.l, self.w, self.h, self.yaw]
    }

    /// The geometric centre.
    pub fn centre(&self) -> Point3<f64> {
        Point3::new(self.x, self.y, self.z)
    }

    /// Volume in cubic metres.
    pub fn volume(&self) -> f64 {
        self.l * self.w * self.h
    }

    /// KITTI's observation angle `alpha = yaw - atan2(x, z)`, wrapped to `(-pi, pi]`.
    pub fn alpha(&self) -> f64 {
        wrap_angle(self.yaw - self.x.atan2(self.z))
    }

    /// The four footprint corners `(x, z)` in the bird's-eye view, in the order of `corners()[0..4]`.
    pub fn bev_corners(&self) -> [[f64; 2]; 4] {
        let (s, c) = self.yaw.sin_cos();
        let (hl, hw) = (0.5 * self.l, 0.5 * self.w);
        [(hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw)]
            .map(|(dl, dw)| [self.x + c * dl + s * dw, self.z - s * dl + c * dw])
    }

    /// The 8 corners: `0..4` the bottom face (larger y), `4..8` the top face, each face in the box
    /// frame order `(+l/2, +w/2), (+l/2, -w/2), (-l/2, -w/2), (-l/2, +w/2)` (`l` along the heading,
    /// `w` across it, pointing to +z when `yaw = 0`).
    pub fn corners(&self) -> [Point3<f64>; 8] {
        let bev = self.bev_corners();
        let (bottom, top) = (self.y + 0.5 * self.h, self.y - 0.5 * self.h);
        std::array::from_fn(|i| {
            let [x, z] = bev[i % 4];
            Point3::new(x, if i < 4 { bottom } else { top }, z)
        })
    }

    /// The tightest 2D box around the projection of the part of the box in front of the near plane,
    /// clipped to the image `[0, width] x [0, height]`; `None` when nothing of it is visible.
    ///
    /// Edges crossing the near plane are cut there, so boxes partly behind the camera project
    /// correctly (projecting their corners would flip the ones behind the camera). With lens
    /// distortion, edges are no longer straight in the image, so each clipped edge is sampled at
    /// [`DISTORTED_EDGE_SAMPLES`] intervals; where an edge leaves the lens model's valid radius
    /// ([`Intrinsics::project`] refuses those rays: they lie far outside the field of view), the
    /// last valid point is found by bisection, so a box reaching out of the view extends to the
    /// image border instead of shrinking to its corners inside the valid radius.
    pub fn project_to_box2d(&self, k: &Intrinsics) -> Option<Box2d> {
        let corners = self.corners();
        let mut bounds = Bounds::new();
        for (a, b) in BOX_EDGES {
            let (mut pa, mut pb) = (corners[a], corners[b]);
            match (pa.z >= NEAR_PLANE_M, pb.z >= NEAR_PLANE_M) {
                (false, false) => continue,
                (true, true) => {}
                (ina, _) => {
                    let t = (NEAR_PLANE_M - pa.z) / (pb.z - pa.z);
                    let mut cut = pa + (pb - pa) * t;
                    cut.z = NEAR_PLANE_M;
                    if ina {
                        pb = cut;
                    } else {
                        pa = cut;
                    }
                }
            }
            if k.distortion().is_none() {
                // A pinhole maps the segment to a segment: its end points bound it.
                for p in [pa, pb] {
                    if let Some(px) = k.project(&p) {
                        bounds.grow(px);
                    }
                }
            } else {
                bounds.grow_along(DISTORTED_EDGE_SAMPLES, |t| k.project(&(pa + (pb - pa) * t)));
            }
        }
        bounds.clipped(k.width() as f64, k.height() as f64)
    }

    /// The projections of the 8 corners (`None` for corners behind the near plane).
    pub fn project_corners(&self, k: &Intrinsics) -> [Option<Point2<f64>>; 8] {
        self.corners().map(|p| if p.z >= NEAR_PLANE_M { k.project(&p) } else { None })
    }
}
