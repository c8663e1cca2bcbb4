//! Axis-aligned 2D boxes in pixels.

use nalgebra::Point2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bisection steps locating where a curve leaves the lens model's valid region (2^-30 of a
/// sample interval: far below a pixel).
const BISECTION_STEPS: usize = 30;

/// An axis-aligned image box `[x1, y1, x2, y2]` in pixels: `x2`, `y2` are the exclusive right and
/// bottom edges, so a box covering a whole `W x H` image is `[0, 0, W, H]` and its area is
/// `(x2 - x1) (y2 - y1)` (no `+1`).
///
/// Invariant for boxes made by [`Box2d::new`]: finite, `x1 <= x2`, `y1 <= y2`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Box2d {
    /// Left edge, pixels.
    pub x1: f64,
    /// Top edge, pixels.
    pub y1: f64,
    /// Right edge (exclusive), pixels.
    pub x2: f64,
    /// Bottom edge (exclusive), pixels.
    pub y2: f64,
}

impl Box2d {
    /// A checked box.
    ///
    /// # Errors
    /// [`Error::InvalidBox2d`] for a non-finite coordinate or `x2 < x1` / `y2 < y1`.
    pub fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Result<Self> {
        let reason = if ![x1, y1, x2, y2].iter().all(|v| v.is_finite()) {
            Some("coordinates must be finite")
        } else if x2 < x1 || y2 < y1 {
            Some("x2 >= x1 and y2 >= y1 required")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidBox2d { x1, y1, x2, y2, reason }),
            None => Ok(Self { x1, y1, x2, y2 }),
        }
    }

    /// The coordinates as `[x1, y1, x2, y2]`.
    pub fn to_array(&self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    /// Width in pixels (0 for inverted boxes).
    pub fn width(&self) -> f64 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height in pixels (0 for inverted boxes).
    pub fn height(&self) -> f64 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area in square pixels (0 for inverted boxes).
    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// Centre `(u, v)` in pixels.
    pub fn centre(&self) -> (f64, f64) {
        (0.5 * (self.x1 + self.x2), 0.5 * (self.y1 + self.y2))
    }

    /// The part of the box inside `[0, width] x [0, height]`, or `None` when nothing is left.
    pub fn clipped(&self, width: f64, height: f64) -> Option<Self> {
        let b = Self {
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
            x2: self.x2.clamp(0.0, width),
            y2: self.y2.clamp(0.0, height),
        };
        (b.x2 > b.x1 && b.y2 > b.y1).then_some(b)
    }
}

/// The running bounds of points, for boxes around curved (distorted) outlines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    lo: Point2<f64>,
    hi: Point2<f64>,
}

impl Bounds {
    /// Nothing bounded yet.
    pub(crate) fn new() -> Self {
        Self {
            lo: Point2::new(f64::INFINITY, f64::INFINITY),
            hi: Point2::new(f64::NEG_INFINITY, f64::NEG_INFINITY),
        }
    }

    /// Takes in one point.
    pub(crate) fn grow(&mut self, p: Point2<f64>) {
        self.lo = self.lo.inf(&p);
        self.hi = self.hi.sup(&p);
    }

    /// Takes in the curve `at(t)`, `t` in `[0, 1]`, sampled at `samples` intervals. `at` is `None`
    /// where the curve has no image (beyond a lens model's fold): between a sample with an image
    /// and one without, the last point with one is found by bisection, so a curve running out of
    /// the valid region is bounded up to where it leaves it.
    pub(crate) fn grow_along(&mut self, samples: usize, at: impl Fn(f64) -> Option<Point2<f64>>) {
        let samples = samples.max(1);
        let mut prev: Option<(f64, bool)> = None;
        for i in 0..=samples {
            let t = i as f64 / samples as f64;
            let p = at(t);
            if let Some(p) = p {
                self.grow(p);
            }
            if let Some((t_prev, valid_prev)) = prev
                && valid_prev != p.is_some()
            {
                let (mut t_ok, mut t_bad) = if valid_prev { (t_prev, t) } else { (t, t_prev) };
                for _ in 0..BISECTION_STEPS {
                    let mid = 0.5 * (t_ok + t_bad);
                    if at(mid).is_some() {
                        t_ok = mid;
                    } else {
                        t_bad = mid;
                    }
                }
                if let Some(p) = at(t_ok) {
                    self.grow(p);
                }
            }
            prev = Some((t, p.is_some()));
        }
    }

    /// The bounds clipped to `[0, width] x [0, height]`; `None` when nothing was taken in or
    /// nothing of it is inside.
    pub(crate) fn clipped(&self, width: f64, height: f64) -> Option<Box2d> {
        let finite = [self.lo.x, self.lo.y, self.hi.x, self.hi.y].iter().all(|v| v.is_finite());
        finite.then_some(())?;
        Box2d { x1: self.lo.x, y1: self.lo.y, x2: self.hi.x, y2: self.hi.y }.clipped(width, height)
    }
}

/// Intersection over union of two 2D boxes, in `[0, 1]`; 0 when either box is empty or not finite.
///
/// # Example
/// ```
/// use monovlm_calib::{Box2d, iou_2d};
/// let a = Box2d::new(0.0, 0.0, 2.0, 2.0)?;
/// let b = Box2d::new(1.0, 0.0, 3.0, 2.0)?;
/// assert!((iou_2d(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), monovlm_calib::Error>(())
/// ```
pub fn iou_2d(a: &Box2d, b: &Box2d) -> f64 {
    let iw = a.x2.min(b.x2) - a.x1.max(b.x1);
    let ih = a.y2.min(b.y2) - a.y1.max(b.y1);
    if !(iw > 0.0 && ih > 0.0) {
        return 0.0;
    }
    let inter = iw * ih;
    let union = a.area() + b.area() - inter;
    if union > 0.0 { (inter / union).clamp(0.0, 1.0) } else { 0.0 }
}
