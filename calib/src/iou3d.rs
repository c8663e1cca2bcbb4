//! 3D IoU: the exact rotated one, and the Mono3DVG evaluator's axis-aligned one.

use crate::box3d::Box3d;

/// At most 8 vertices survive clipping a quadrilateral by another (one per edge of each); a little
/// headroom for vertices duplicated on shared edges.
const MAX_CLIP_VERTICES: usize = 16;

/// A convex polygon in the bird's-eye view, counter-clockwise in `(x, z)`, stored inline.
#[derive(Clone, Copy)]
struct Polygon {
    pts: [[f64; 2]; MAX_CLIP_VERTICES],
    len: usize,
}

impl Polygon {
    fn from_quad(quad: [[f64; 2]; 4]) -> Self {
        let mut p = Self { pts: [[0.0; 2]; MAX_CLIP_VERTICES], len: 4 };
        p.pts[..4].copy_from_slice(&quad);
        if p.signed_area() < 0.0 {
            p.pts[..4].reverse();
        }
        p
    }

    fn push(&mut self, v: [f64; 2]) {
        if self.len < MAX_CLIP_VERTICES {
            self.pts[self.len] = v;
            self.len += 1;
        }
    }

    fn vertices(&self) -> &[[f64; 2]] {
        &self.pts[..self.len]
    }

    /// Shoelace area, positive for counter-clockwise polygons.
    fn signed_area(&self) -> f64 {
        let v = self.vertices();
        let mut twice = 0.0;
        for i in 0..v.len() {
            let (a, b) = (v[i], v[(i + 1) % v.len()]);
            twice += a[0] * b[1] - a[1] * b[0];
        }
        0.5 * twice
    }

    /// Sutherland-Hodgman: the part of `self` inside the convex counter-clockwise polygon `clip`.
    fn clip_by(&self, clip: &Polygon) -> Polygon {
        let mut out = *self;
        let cv = clip.vertices();
        for i in 0..cv.len() {
            if out.len == 0 {
                break;
            }
            let (a, b) = (cv[i], cv[(i + 1) % cv.len()]);
            let edge = [b[0] - a[0], b[1] - a[1]];
            // > 0 left of a->b (inside), 0 on the line.
            let side = |p: [f64; 2]| edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]);
            let input = out;
            out.len = 0;
            let iv = input.vertices();
            for j in 0..iv.len() {
                let (prev, cur) = (iv[(j + iv.len() - 1) % iv.len()], iv[j]);
                let (dp, dc) = (side(prev), side(cur));
                if dc >= 0.0 {
                    if dp < 0.0 {
                        out.push(lerp(prev, cur, dp / (dp - dc)));
                    }
                    out.push(cur);
                } else if dp >= 0.0 {
                    out.push(lerp(prev, cur, dp / (dp - dc)));
                }
            }
        }
        out
    }
}

fn lerp(a: [f64; 2], b: [f64; 2], t: f64) -> [f64; 2] {
    [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
}

/// Area (square metres) of the intersection of two boxes' bird's-eye-view footprints.
pub fn bev_intersection_area(a: &Box3d, b: &Box3d) -> f64 {
    // Disjoint bounding circles: no overlap, skip the clipping.
    let (dx, dz) = (a.x - b.x, a.z - b.z);
    let reach = 0.5 * (a.l.hypot(a.w) + b.l.hypot(b.w));
    if dx * dx + dz * dz > reach * reach {
        return 0.0;
    }
    let pa = Polygon::from_quad(a.bev_corners());
    let pb = Polygon::from_quad(b.bev_corners());
    pa.clip_by(&pb).signed_area().max(0.0)
}

fn is_valid(b: &Box3d) -> bool {
    [b.x, b.y, b.z, b.yaw].iter().all(|v| v.is_finite())
        && [b.l, b.w, b.h].iter().all(|v| v.is_finite() && *v > 0.0)
}

/// Exact IoU of two oriented 3D boxes (yaw about the vertical camera y axis): bird's-eye-view
/// convex polygon intersection times vertical overlap, over the union volume. In `[0, 1]`;
/// 0 when either box is not valid (non-finite, or a size that is not `> 0`).
///
/// # Example
/// ```
/// use monovlm_calib::{Box3d, iou_3d};
/// let a = Box3d::new(0.0, 0.0, 10.0, 1.0, 1.0, 1.0, 0.0)?;
/// let b = Box3d::new(0.5, 0.0, 10.0, 1.0, 1.0, 1.0, 0.0)?;
/// assert!((iou_3d(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), monovlm_calib::Error>(())
/// ```
pub fn iou_3d(a: &Box3d, b: &Box3d) -> f64 {
    if !is_valid(a) || !is_valid(b) {
        return 0.0;
    }
    let overlap_h = (a.y + 0.5 * a.h).min(b.y + 0.5 * b.h) - (a.y - 0.5 * a.h).max(b.y - 0.5 * b.h);
    if overlap_h <= 0.0 {
        return 0.0;
    }
    let inter = bev_intersection_area(a, b) * overlap_h;
    let union = a.volume() + b.volume() - inter;
    if union > 0.0 { (inter / union).clamp(0.0, 1.0) } else { 0.0 }
}

/// The 3D IoU of the Mono3DVG reference evaluator (`lib/helpers/tester_helper.py` with
/// `utils_helper.calc_iou`), reproduced as it is, **only to compare with published numbers**.
///
/// That evaluator takes the KITTI `[h, w, l, x, y, z]`, reorders it to `[x, y, z, h, w, l]`, moves
/// `y` from the bottom to the centre (`y -= h/2`), casts to float32 and computes an axis-aligned IoU
/// of boxes with extents `(h, w, l)` along `(x, y, z)`: yaw is ignored and the height is laid along
/// x and the length along z. Overlap must be strictly positive on every axis. Arithmetic is done in
/// `f32` as there. Use [`iou_3d`] for the geometrically exact value.
pub fn iou3d_mono3dvg(a: &Box3d, b: &Box3d) -> f64 {
    // Their vector: centre (x, y_bottom - h/2, z) == our centre; extents (h, w, l).
    let as_f32 = |bx: &Box3d| {
        let (bottom, hwl, _) = bx.to_kitti();
        let h = hwl[0] as f32;
        let centre = [bottom[0] as f32, bottom[1] as f32 - h / 2.0, bottom[2] as f32];
        (centre, [h, hwl[1] as f32, hwl[2] as f32])
    };
    let ((ca, ea), (cb, eb)) = (as_f32(a), as_f32(b));
    let mut inter = 1.0f32;
    for i in 0..3 {
        let min_max = (ca[i] + ea[i] / 2.0).min(cb[i] + eb[i] / 2.0);
        let max_min = (ca[i] - ea[i] / 2.0).max(cb[i] - eb[i] / 2.0);
        // `(min_max > max_min).all()` there: touching or NaN is no overlap.
        if min_max.partial_cmp(&max_min) != Some(std::cmp::Ordering::Greater) {
            return 0.0;
        }
        inter *= min_max - max_min;
    }
    let vol_a = ea[0] * ea[1] * ea[2];
    let vol_b = eb[0] * eb[1] * eb[2];
    f64::from(inter / (vol_a + vol_b - inter))
}
