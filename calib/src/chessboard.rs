//! Checkerboard inner-corner detection: saddle-point candidates, lattice growing, a numbering that
//! does not depend on how the board is turned, and sub-pixel refinement.
//!
//! 1. **Candidates**: the image is smoothed (Gaussian, `sigma` ~1.5 px) and every pixel gets the
//!    saddle response `-(Ixx Iyy - Ixy^2)` of its Hessian; local maxima above a fraction of the
//!    strongest are kept if a ring of samples around them alternates dark/light/dark/light
//!    (an X-junction, not a noise saddle).
//! 2. **Lattice**: from a seed and its two nearest non-collinear neighbours the lattice is grown
//!    cell by cell, predicting each next corner from the last step along the row or column
//!    (perspective changes the step slowly) and snapping to a candidate within 35% of a step.
//! 3. **Numbering**: the lattice must be `cols x rows` (or turned); axes are assigned by count,
//!    the row axis is chosen so the board is seen from the front, and of the two half-turn
//!    numberings the one whose first square (between corners 0, 1, `cols` and `cols + 1`) is dark
//!    wins (unique when `cols` and `rows` differ in parity, e.g. 9x6; otherwise corner 0 is the one
//!    nearest the image's top-left). That square is inside the grid, so this works even when the
//!    board's outer squares leave the image.
//! 4. **Sub-pixel**: each corner `q` is moved to where the image gradients around it are
//!    orthogonal to `p - q` (the least-squares condition OpenCV's `cornerSubPix` solves), over a
//!    window resampled around `q` (half size up to 11 px, 40% of the distance to the nearest
//!    corner), iterated to 0.001 px.

use image::GrayImage;
use nalgebra::{Matrix2, Point2, Vector2};

use crate::board::Checkerboard;
use crate::error::{Error, Result};

/// Smoothing before the saddle response, pixels.
const SIGMA_PX: f32 = 1.5;
/// Candidates must reach this fraction of the strongest response.
const RESPONSE_FRACTION: f32 = 0.03;
/// Non-maximum suppression radius, pixels.
const NMS_RADIUS: i32 = 3;
/// Radius of the ring sampled to confirm an X-junction, pixels.
const RING_RADIUS_PX: f32 = 4.0;
/// Samples on that ring.
const RING_SAMPLES: usize = 24;
/// A predicted corner snaps to a candidate within this fraction of the local step.
const SNAP_FRACTION: f64 = 0.35;
/// Seeds tried before giving up.
const MAX_SEEDS: usize = 40;
/// Largest half size of the sub-pixel window, pixels (OpenCV's usual `winSize = 11`, a 23x23 window).
const SUBPIX_MAX_HALF_WINDOW: i32 = 11;
/// Smallest half size, for small boards.
const SUBPIX_MIN_HALF_WINDOW: i32 = 2;
/// The window's half size is at most this fraction of the distance to the nearest other corner, so
/// that it never reaches a neighbouring corner.
const SUBPIX_WINDOW_FRACTION: f64 = 0.4;

/// What detection found: the inner corners in the board's row-major order, pixels.
#[derive(Clone, Debug)]
pub struct Detection {
    /// Inner corners, `board.len()` of them, row-major.
    pub corners: Vec<Point2<f64>>,
    /// Saddle candidates found in the image (diagnostics).
    pub candidates: usize,
}

/// Finds the inner corners of `board` in a grey image.
///
/// # Errors
/// [`Error::BoardNotFound`] saying why: too few corner candidates, or the largest lattice found
/// has another size than the board (wrong `--board`, board partly outside the image or occluded).
pub fn detect(img: &GrayImage, board: &Checkerboard) -> Result<Detection> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 16 || h < 16 {
        return Err(Error::BoardNotFound(format!("the image is only {w}x{h} pixels")));
    }
    let raw: Vec<f32> = img.as_raw().iter().map(|&p| f32::from(p)).collect();
    let smooth = blur(&raw, w, h, SIGMA_PX);
    let candidates = saddle_candidates(&smooth, w, h);
    if candidates.len() < board.len() {
        return Err(Error::BoardNotFound(format!(
            "{} corner candidates, the {}x{} board has {} inner corners",
            candidates.len(),
            board.cols(),
            board.rows(),
            board.len()
        )));
    }
    let mut best: Option<Lattice> = None;
    let mut degenerate = None;
    for seed in 0..candidates.len().min(MAX_SEEDS) {
        let Some(lattice) = grow(&candidates, seed) else { continue };
        let (a, b) = lattice.dims();
        if (a, b) == (board.cols(), board.rows()) || (a, b) == (board.rows(), board.cols()) {
            // A right-sized grid that cannot be numbered: another seed may grow a good one.
            let corners = match number(&lattice, board, &smooth, w, h) {
                Ok(corners) => corners,
                Err(e) => {
                    degenerate = Some(e);
                    continue;
                }
            };
            let corners = corners
                .iter()
                .map(|p| {
                    let spacing = corners
                        .iter()
                        .map(|o| (o - p).norm())
                        .filter(|d| *d > 0.0)
                        .fold(f64::INFINITY, f64::min);
                    let half = ((SUBPIX_WINDOW_FRACTION * spacing) as i32)
                        .clamp(SUBPIX_MIN_HALF_WINDOW, SUBPIX_MAX_HALF_WINDOW);
                    refine(&raw, w, h, *p, half)
                })
                .collect();
            return Ok(Detection { corners, candidates: candidates.len() });
        }
        if best.as_ref().is_none_or(|b| lattice.cells.len() > b.cells.len()) {
            best = Some(lattice);
        }
    }
    if let Some(e) = degenerate {
        return Err(e);
    }
    let (a, b) = best.map_or((0, 0), |l| l.dims());
    Err(Error::BoardNotFound(format!(
        "the largest corner grid found is {}x{}, expected {}x{} (is the whole board in view, and the size right?)",
        a.max(b),
        a.min(b),
        board.cols(),
        board.rows()
    )))
}

/// Separable Gaussian blur, borders clamped (each row is padded once, so the inner loops are plain
/// dot products the compiler vectorises).
pub(crate) fn blur(src: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as usize;
    let kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let mut tmp = vec![0f32; src.len()];
    let mut padded = vec![0f32; w + 2 * radius];
    for (row, out) in src.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        padded[..radius].fill(row[0]);
        padded[radius..radius + w].copy_from_slice(row);
        padded[radius + w..].fill(row[w - 1]);
        // Taps outer, pixels inner: element-wise multiply-adds (vectorised), not reductions.
        for (k, wk) in kernel.iter().enumerate() {
            for (o, p) in out.iter_mut().zip(&padded[k..k + w]) {
                *o += wk * p;
            }
        }
    }
    let mut out = vec![0f32; src.len()];
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        for (k, wk) in kernel.iter().enumerate() {
            let yi = (y + k).saturating_sub(radius).min(h - 1);
            for (d, s) in dst.iter_mut().zip(&tmp[yi * w..(yi + 1) * w]) {
                *d += wk * s;
            }
        }
    }
    out
}

/// Bilinear sample, `None` outside the image.
fn sample(img: &[f32], w: usize, h: usize, x: f32, y: f32) -> Option<f32> {
    if !(x >= 0.0 && y >= 0.0 && x < (w - 1) as f32 && y < (h - 1) as f32) {
        return None;
    }
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let i = y0 * w + x0;
    let top = img[i] * (1.0 - fx) + img[i + 1] * fx;
    let bottom = img[i + w] * (1.0 - fx) + img[i + w + 1] * fx;
    Some(top * (1.0 - fy) + bottom * fy)
}

/// True when the ring around `(x, y)` alternates dark/light exactly four times (an X-junction).
fn is_x_junction(img: &[f32], w: usize, h: usize, x: f32, y: f32) -> bool {
    let ring: Option<Vec<f32>> = (0..RING_SAMPLES)
        .map(|i| {
            let a = i as f32 / RING_SAMPLES as f32 * std::f32::consts::TAU;
            sample(img, w, h, x + RING_RADIUS_PX * a.cos(), y + RING_RADIUS_PX * a.sin())
        })
        .collect();
    let Some(ring) = ring else { return false };
    let (lo, hi) = ring.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    if hi - lo < 20.0 {
        return false;
    }
    let mid = 0.5 * (lo + hi);
    let changes =
        (0..RING_SAMPLES).filter(|&i| (ring[i] > mid) != (ring[(i + 1) % RING_SAMPLES] > mid)).count();
    changes == 4
}

/// Saddle-point candidates, strongest first, with sub-pixel peaks of the response.
fn saddle_candidates(img: &[f32], w: usize, h: usize) -> Vec<Point2<f64>> {
    let mut resp = vec![0f32; img.len()];
    // Row slices (above, here, below) shifted by -1/0/+1 columns: plain element-wise arithmetic that
    // the compiler vectorises.
    for y in 1..h - 1 {
        let (up, mid, down) =
            (&img[(y - 1) * w..y * w], &img[y * w..(y + 1) * w], &img[(y + 1) * w..(y + 2) * w]);
        let out = &mut resp[y * w + 1..(y + 1) * w - 1];
        let n = w - 2;
        let (l, c, r) = (&mid[..n], &mid[1..n + 1], &mid[2..]);
        let (u, d) = (&up[1..n + 1], &down[1..n + 1]);
        let (ul, ur, dl, dr) = (&up[..n], &up[2..], &down[..n], &down[2..]);
        for i in 0..n {
            let ixx = l[i] - 2.0 * c[i] + r[i];
            let iyy = u[i] - 2.0 * c[i] + d[i];
            let ixy = 0.25 * (ul[i] + dr[i] - ur[i] - dl[i]);
            out[i] = (ixy * ixy - ixx * iyy).max(0.0);
        }
    }
    let peak = resp.iter().copied().fold(0.0, f32::max);
    let threshold = peak * RESPONSE_FRACTION;
    let margin = (NMS_RADIUS as usize).max(RING_RADIUS_PX as usize + 2);
    let mut found: Vec<(f32, Point2<f64>)> = Vec::new();
    for y in margin..h.saturating_sub(margin) {
        for x in margin..w.saturating_sub(margin) {
            let r = resp[y * w + x];
            if r <= threshold {
                continue;
            }
            let is_max = (-NMS_RADIUS..=NMS_RADIUS).all(|dy| {
                (-NMS_RADIUS..=NMS_RADIUS).all(|dx| {
                    let j = (y as i32 + dy) as usize * w + (x as i32 + dx) as usize;
                    (dx, dy) == (0, 0) || resp[j] < r || (resp[j] == r && j > y * w + x)
                })
            });
            if !is_max || !is_x_junction(img, w, h, x as f32, y as f32) {
                continue;
            }
            // Quadratic peak offset along each axis.
            let offset = |a: f32, b: f32| {
                let d = a - 2.0 * r + b;
                if d < 0.0 { (0.5 * (a - b) / d).clamp(-0.5, 0.5) } else { 0.0 }
            };
            let i = y * w + x;
            let p = Point2::new(
                x as f64 + f64::from(offset(resp[i - 1], resp[i + 1])),
                y as f64 + f64::from(offset(resp[i - w], resp[i + w])),
            );
            found.push((r, p));
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// A grown lattice: integer cell -> candidate position.
struct Lattice {
    cells: std::collections::HashMap<(i32, i32), Point2<f64>>,
}

impl Lattice {
    fn bounds(&self) -> (i32, i32, i32, i32) {
        self.cells.keys().fold((i32::MAX, i32::MAX, i32::MIN, i32::MIN), |(a, b, c, d), &(i, j)| {
            (a.min(i), b.min(j), c.max(i), d.max(j))
        })
    }
    /// `(extent along i, extent along j)` when the lattice is a full rectangle, else `(0, 0)`.
    fn dims(&self) -> (usize, usize) {
        let (i0, j0, i1, j1) = self.bounds();
        let (a, b) = ((i1 - i0 + 1) as usize, (j1 - j0 + 1) as usize);
        if a * b == self.cells.len() { (a, b) } else { (0, 0) }
    }
}

/// The nearest candidate to `p` within `radius`.
fn nearest(cands: &[Point2<f64>], p: &Point2<f64>, radius: f64) -> Option<usize> {
    cands
        .iter()
        .enumerate()
        .map(|(i, c)| (i, (c - p).norm_squared()))
        .filter(|(_, d)| *d <= radius * radius)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// Grows a lattice from candidate `seed`.
fn grow(cands: &[Point2<f64>], seed: usize) -> Option<Lattice> {
    let s = cands[seed];
    let mut by_dist: Vec<(usize, f64)> =
        cands.iter().enumerate().filter(|(i, _)| *i != seed).map(|(i, c)| (i, (c - s).norm())).collect();
    by_dist.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (n1, d1) = *by_dist.first()?;
    let u = cands[n1] - s;
    // The second axis: the nearest neighbour at least 45 degrees off the first.
    let (n2, _) = by_dist.iter().skip(1).take(8).find(|(i, _)| {
        let v = cands[*i] - s;
        (u.dot(&v) / (u.norm() * v.norm())).abs() < std::f64::consts::FRAC_1_SQRT_2
    })?;
    let v = cands[*n2] - s;
    if v.norm() > 2.0 * d1 {
        return None;
    }
    let mut used = vec![false; cands.len()];
    let mut cells = std::collections::HashMap::new();
    for (cell, i) in [((0, 0), seed), ((1, 0), n1), ((0, 1), *n2)] {
        cells.insert(cell, cands[i]);
        used[i] = true;
    }
    let mut frontier: Vec<(i32, i32)> = cells.keys().copied().collect();
    while let Some((i, j)) = frontier.pop() {
        for (di, dj) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            let next = (i + di, j + dj);
            if cells.contains_key(&next) {
                continue;
            }
            let here = cells[&(i, j)];
            // Step from the cell behind along this direction, else from a neighbour's known step.
            let step = cells
                .get(&(i - di, j - dj))
                .map(|behind| here - behind)
                .or_else(|| {
                    [(dj, di), (-dj, -di)].iter().find_map(|&(oi, oj)| {
                        let (a, b) = (cells.get(&(i + oi, j + oj))?, cells.get(&(i + oi + di, j + oj + dj))?);
                        Some(b - a)
                    })
                })
                .unwrap_or(if di != 0 { u * f64::from(di) } else { v * f64::from(dj) });
            let predicted = here + step;
            let Some(k) = nearest(cands, &predicted, SNAP_FRACTION * step.norm()) else { continue };
            if used[k] {
                continue;
            }
            used[k] = true;
            cells.insert(next, cands[k]);
            frontier.push(next);
        }
    }
    Some(Lattice { cells })
}

/// Mean smoothed intensity in a 3x3 neighbourhood of `p` (bilinear), `None` outside.
fn intensity(img: &[f32], w: usize, h: usize, p: Vector2<f64>) -> Option<f32> {
    let mut acc = 0.0;
    for dy in -1..=1 {
        for dx in -1..=1 {
            acc += sample(img, w, h, p.x as f32 + dx as f32, p.y as f32 + dy as f32)?;
        }
    }
    Some(acc / 9.0)
}

/// Orders a full lattice as the board's row-major corners (see the module docs).
fn number(l: &Lattice, board: &Checkerboard, img: &[f32], w: usize, h: usize) -> Result<Vec<Point2<f64>>> {
    let (i0, j0, i1, j1) = l.bounds();
    let (a, _) = l.dims();
    // grid[c][r] in lattice coordinates, then map to board axes.
    let at = |i: i32, j: i32| l.cells[&(i0 + i, j0 + j)];
    let swap = a != board.cols();
    let (cols, rows) = (board.cols() as i32, board.rows() as i32);
    debug_assert_eq!(
        if swap { (j1 - j0 + 1, i1 - i0 + 1) } else { (i1 - i0 + 1, j1 - j0 + 1) },
        (cols, rows)
    );
    let base = |c: i32, r: i32| if swap { at(r, c) } else { at(c, r) };
    // Candidate numberings: (flip c, flip r).
    let corner = |fc: bool, fr: bool, c: i32, r: i32| {
        base(if fc { cols - 1 - c } else { c }, if fr { rows - 1 - r } else { r })
    };
    let handed = |fc: bool, fr: bool| {
        let o = corner(fc, fr, 0, 0);
        let (ex, ey) = (corner(fc, fr, 1, 0) - o, corner(fc, fr, 0, 1) - o);
        ex.x * ey.y - ex.y * ey.x > 0.0
    };
    // Front view: of (fc, fr) pairs, keep the two that are right-handed; they differ by a half turn.
    let options: Vec<(bool, bool)> = [(false, false), (true, true), (true, false), (false, true)]
        .into_iter()
        .filter(|(fc, fr)| handed(*fc, *fr))
        .collect();
    // Intensity at the centre of the first square (corners 0, 1, cols, cols + 1).
    let first_square = |fc: bool, fr: bool| {
        let centre = (corner(fc, fr, 0, 0).coords + corner(fc, fr, 1, 1).coords) * 0.5;
        intensity(img, w, h, centre)
    };
    let choose = match (options.first(), options.get(1)) {
        (Some(&x), Some(&y)) => {
            let (dx, dy) = (first_square(x.0, x.1), first_square(y.0, y.1));
            let unique = (board.cols() + board.rows()) % 2 == 1;
            match (dx, dy) {
                (Some(a), Some(b)) if unique && (a - b).abs() > 15.0 => {
                    if a < b {
                        x
                    } else {
                        y
                    }
                }
                _ => {
                    // Same-parity board: corner 0 nearest the image's top-left.
                    let score = |o: (bool, bool)| {
                        let p = corner(o.0, o.1, 0, 0);
                        p.x + p.y
                    };
                    if score(x) <= score(y) { x } else { y }
                }
            }
        }
        _ => return Err(Error::BoardNotFound("the corner grid is degenerate (collinear rows)".to_owned())),
    };
    Ok((0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c, r)))
        .map(|(c, r)| corner(choose.0, choose.1, c, r))
        .collect())
}

/// Sub-pixel corner: the point `q` where the gradients `g` around it satisfy `g . (p - q) = 0` in
/// the least-squares sense, iterated. The window is resampled (bilinearly) centred exactly on the
/// current estimate, so it is symmetric about `q` at every iteration, and Gaussian-weighted.
fn refine(img: &[f32], w: usize, h: usize, start: Point2<f64>, half: i32) -> Point2<f64> {
    // Samples span one pixel beyond the window on each side for the central differences.
    let side = (2 * half + 3) as usize;
    // OpenCV's weighting: exp(-r^2 / half^2).
    let sigma2 = f64::from(half * half) / 2.0;
    let n = (2 * half + 1) as usize;
    let weights: Vec<f64> = (0..n * n)
        .map(|k| {
            let (dx, dy) = ((k % n) as i32 - half, (k / n) as i32 - half);
            (-f64::from(dx * dx + dy * dy) / (2.0 * sigma2)).exp()
        })
        .collect();
    let mut patch = vec![0f32; side * side];
    let mut q = start;
    for _ in 0..40 {
        // All samples share q's fractional offset: one set of bilinear weights per iteration, and
        // the window's bounds checked once.
        let (x0, y0) = (q.x.floor() as i64 - i64::from(half) - 1, q.y.floor() as i64 - i64::from(half) - 1);
        if x0 < 0 || y0 < 0 || x0 as usize + side >= w || y0 as usize + side >= h {
            return q; // too close to the border to refine further
        }
        let (fx, fy) = ((q.x - q.x.floor()) as f32, (q.y - q.y.floor()) as f32);
        let (w00, w01, w10, w11) = ((1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy);
        for (r, row) in patch.chunks_exact_mut(side).enumerate() {
            let base = (y0 as usize + r) * w + x0 as usize;
            let (top, bottom) = (&img[base..base + side + 1], &img[base + w..base + w + side + 1]);
            for (c, v) in row.iter_mut().enumerate() {
                *v = w00 * top[c] + w01 * top[c + 1] + w10 * bottom[c] + w11 * bottom[c + 1];
            }
        }
        let mut a = Matrix2::<f64>::zeros();
        let mut b = Vector2::<f64>::zeros();
        for dy in -half..=half {
            for dx in -half..=half {
                let i = (dy + half + 1) as usize * side + (dx + half + 1) as usize;
                let gx = f64::from(patch[i + 1] - patch[i - 1]) * 0.5;
                let gy = f64::from(patch[i + side] - patch[i - side]) * 0.5;
                let wgt = weights[(dy + half) as usize * n + (dx + half) as usize];
                let ggt = Matrix2::new(gx * gx, gx * gy, gx * gy, gy * gy) * wgt;
                a += ggt;
                b += ggt * Vector2::new(f64::from(dx), f64::from(dy));
            }
        }
        // Offset of the corner from q.
        let Some(delta) = a.try_inverse().map(|inv| inv * b) else { break };
        let next = q.coords + delta;
        if !next.iter().all(|v| v.is_finite()) || (next - start.coords).norm() > f64::from(half) {
            break; // the window lost the corner: keep the last estimate
        }
        q = Point2::from(next);
        if delta.norm() < 1e-3 {
            break;
        }
    }
    q
}
