//! Labels from the render: 2D box, truncation, occlusion, KITTI difficulty; which objects are kept.
//!
//! - **2D box**: the projection of the label's 3D box, clipped to the image
//!   ([`Box3d::project_to_box2d`]); as in KITTI it is amodal with respect to occlusion. Objects are
//!   drawn as exactly that box, so it is also the bounding box of the object's pixels when nothing
//!   hides it.
//! - **Truncation**: the fraction of the silhouette (the convex hull of the 8 projected corners) that
//!   lies outside the image `[0, W] x [0, H]`.
//! - **Occlusion**: from the visible fraction `v` = pixels where the object is the nearest surface /
//!   pixels of its silhouette inside the image (id buffer against a separate silhouette pass):
//!   0 (fully visible) when `v > 0.8`, 1 (partly occluded) when `v > 0.4`, 2 (largely occluded)
//!   otherwise.
//! - **Dropped** (not labelled; they still count as distractors for descriptions): objects with a
//!   corner closer than [`MIN_LABEL_DEPTH_M`], fewer than [`MIN_VISIBLE_PX`] visible pixels, a
//!   visible fraction under [`MIN_VISIBLE_FRACTION`], a 2D box lower than [`MIN_BOX_HEIGHT_PX`] or a
//!   truncation over [`MAX_TRUNCATION`].

use monovlm_calib::kitti::KittiLabel;
use monovlm_calib::{Box2d, Box3d, Intrinsics, Point2};

use super::render::convex_hull;
use super::scene::{ObjClass, round2};

/// Objects with a box corner closer than this (metres, camera z) are not labelled.
pub const MIN_LABEL_DEPTH_M: f64 = 0.5;
/// Objects with fewer visible pixels are not labelled.
pub const MIN_VISIBLE_PX: u64 = 40;
/// Objects with a smaller visible fraction are not labelled (KITTI would call them "unknown").
pub const MIN_VISIBLE_FRACTION: f64 = 0.1;
/// Objects whose 2D box is lower than this (pixels) are not labelled.
pub const MIN_BOX_HEIGHT_PX: f64 = 12.0;
/// Objects truncated more than this are not labelled.
pub const MAX_TRUNCATION: f64 = 0.85;
/// Visible fraction above which an object is fully visible (occlusion 0).
pub const FULLY_VISIBLE_FRACTION: f64 = 0.8;
/// Visible fraction above which an object is partly occluded (occlusion 1); below, largely (2).
pub const PARTLY_VISIBLE_FRACTION: f64 = 0.4;

/// Occlusion level from the visible fraction (see the module docs).
pub fn occlusion_level(visible_fraction: f64) -> i8 {
    if visible_fraction > FULLY_VISIBLE_FRACTION {
        0
    } else if visible_fraction > PARTLY_VISIBLE_FRACTION {
        1
    } else {
        2
    }
}

/// Area of a simple polygon (shoelace), square pixels.
fn polygon_area(poly: &[[f64; 2]]) -> f64 {
    let n = poly.len();
    if n < 3 {
        return 0.0;
    }
    let twice: f64 = (0..n)
        .map(|i| {
            let (a, b) = (poly[i], poly[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    0.5 * twice.abs()
}

/// Clips a convex polygon to the rectangle `[0, w] x [0, h]` (Sutherland-Hodgman).
fn clip_to_rect(poly: &[[f64; 2]], w: f64, h: f64) -> Vec<[f64; 2]> {
    // Each plane: inside when `sign * (p[axis] - bound) <= 0`.
    let planes = [(0usize, -1.0, 0.0), (0, 1.0, w), (1, -1.0, 0.0), (1, 1.0, h)];
    let mut out: Vec<[f64; 2]> = poly.to_vec();
    for (axis, sign, bound) in planes {
        let input = std::mem::take(&mut out);
        let n = input.len();
        let dist = |p: &[f64; 2]| sign * (p[axis] - bound);
        for i in 0..n {
            let (a, b) = (input[i], input[(i + 1) % n]);
            let (da, db) = (dist(&a), dist(&b));
            if da <= 0.0 {
                out.push(a);
            }
            if (da <= 0.0) != (db <= 0.0) {
                let t = da / (da - db);
                out.push([a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]);
            }
        }
    }
    out
}

/// Fraction of the box's silhouette outside the image; `None` when a corner is closer than
/// [`MIN_LABEL_DEPTH_M`] (the silhouette is then unbounded or behind the camera).
pub fn truncation(b: &Box3d, k: &Intrinsics) -> Option<f64> {
    if b.corners().iter().any(|c| c.z < MIN_LABEL_DEPTH_M) {
        return None;
    }
    let mut pts: Vec<[f64; 2]> = b
        .project_corners(k)
        .iter()
        .map(|p| p.map(|p: Point2<f64>| [p.x, p.y]))
        .collect::<Option<Vec<_>>>()?;
    let hull = convex_hull(&mut pts);
    let total = polygon_area(&hull);
    if total <= 0.0 {
        return None;
    }
    let inside = polygon_area(&clip_to_rect(&hull, f64::from(k.width()), f64::from(k.height())));
    Some((1.0 - inside / total).clamp(0.0, 1.0))
}

/// What the label pass decided about one drawn object.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelOutcome {
    /// The 2D box (projection clipped to the image), when any of it is in the image.
    pub box2d: Option<Box2d>,
    /// Truncation in `[0, 1]` (1 when a corner is too close to say).
    pub truncation: f64,
    /// Visible pixels over silhouette pixels inside the image.
    pub visible_fraction: f64,
    /// Occlusion level 0..=2.
    pub occlusion: i8,
    /// The KITTI label when kept.
    pub label: Option<KittiLabel>,
}

/// Labels one drawn object (see the module docs for the rules).
pub fn label_object(
    class: ObjClass,
    b: &Box3d,
    k: &Intrinsics,
    visible_px: u64,
    silhouette_px: u64,
) -> LabelOutcome {
    let box2d = b.project_to_box2d(k);
    let trunc = truncation(b, k);
    let visible_fraction = if silhouette_px > 0 { visible_px as f64 / silhouette_px as f64 } else { 0.0 };
    let occlusion = occlusion_level(visible_fraction);
    let keep = match (&box2d, trunc) {
        (Some(bb), Some(t)) => {
            visible_px >= MIN_VISIBLE_PX
                && visible_fraction >= MIN_VISIBLE_FRACTION
                && bb.height() >= MIN_BOX_HEIGHT_PX
                && t <= MAX_TRUNCATION
        }
        _ => false,
    };
    let label = match (keep, &box2d) {
        (true, Some(bb)) => {
            let (location_m, hwl_m, rotation_y) = b.to_kitti();
            Some(KittiLabel {
                class: class.kitti_type().to_owned(),
                truncated: round2(trunc.unwrap_or(1.0)),
                occluded: occlusion,
                alpha: round2(b.alpha()),
                bbox: Box2d { x1: round2(bb.x1), y1: round2(bb.y1), x2: round2(bb.x2), y2: round2(bb.y2) },
                hwl_m: hwl_m.map(round2),
                location_m: location_m.map(round2),
                rotation_y: round2(rotation_y),
                score: None,
            })
        }
        _ => None,
    };
    LabelOutcome { box2d, truncation: trunc.unwrap_or(1.0), visible_fraction, occlusion, label }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn polygon_clipping_keeps_the_inside_part() {
        let square = [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]];
        let clipped = clip_to_rect(&square, 10.0, 10.0);
        assert!((polygon_area(&clipped) - 1.0).abs() < 1e-12);
        assert!((polygon_area(&square) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn truncation_of_a_box_half_out_of_the_image() {
        let k = Intrinsics::new(100.0, 100.0, 50.0, 50.0, 100, 100).unwrap();
        let inside = Box3d::new(0.0, 0.0, 10.0, 1.0, 1.0, 1.0, 0.0).unwrap();
        assert!(truncation(&inside, &k).unwrap() < 1e-9);
        // Centred on the left image edge (u = 0 at x = -5 m for z = 10 m): about half outside.
        let edge = Box3d::new(-5.0, 0.0, 10.0, 0.2, 0.2, 1.0, 0.0).unwrap();
        assert!((truncation(&edge, &k).unwrap() - 0.5).abs() < 0.05);
        assert!(truncation(&Box3d::new(0.0, 0.0, 0.3, 1.0, 1.0, 1.0, 0.0).unwrap(), &k).is_none());
    }

    #[test]
    fn occlusion_levels() {
        assert_eq!(occlusion_level(0.95), 0);
        assert_eq!(occlusion_level(0.5), 1);
        assert_eq!(occlusion_level(0.2), 2);
    }
}
