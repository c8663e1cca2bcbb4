//! Intrinsics calibration from checkerboard views: Zhang's closed-form initialisation, then
//! Levenberg-Marquardt over the intrinsics, `plumb_bob` distortion and every view's pose.

use nalgebra::{
    DMatrix, DVector, Isometry3, Matrix3, Point2, Point3, Rotation3, SVD, Translation3, UnitQuaternion,
    Vector3,
};

use crate::board::Checkerboard;
use crate::camera::{Distortion, Intrinsics};
use crate::error::{Error, Result};

/// Fewest views the closed-form initialisation needs (each gives two constraints on the five
/// unknowns of `K^-T K^-1`).
pub const MIN_VIEWS: usize = 3;
/// A view is flagged as an outlier when its RMS error exceeds this multiple of the median view's.
const OUTLIER_FACTOR: f64 = 3.0;
/// ... and this absolute RMS error (pixels), so that excellent calibrations flag nothing.
const OUTLIER_FLOOR_PX: f64 = 0.3;

/// What to estimate, as in OpenCV's `calibrateCamera` flags.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationOptions {
    /// Keep `k3 = 0` (`CALIB_FIX_K3`).
    pub fix_k3: bool,
    /// Keep `p1 = p2 = 0` (`CALIB_ZERO_TANGENT_DIST`).
    pub zero_tangential: bool,
    /// Keep `fx / fy` at this value (`CALIB_FIX_ASPECT_RATIO`; 1.0 for square pixels).
    pub fix_aspect_ratio: Option<f64>,
    /// Keep the principal point at the image centre (`CALIB_FIX_PRINCIPAL_POINT`).
    pub fix_principal_point: bool,
    /// Levenberg-Marquardt iteration limit.
    pub max_iterations: usize,
}

impl Default for CalibrationOptions {
    /// Everything free except `k3` (OpenCV's advice for ordinary lenses), 100 iterations.
    fn default() -> Self {
        Self {
            fix_k3: true,
            zero_tangential: false,
            fix_aspect_ratio: None,
            fix_principal_point: false,
            max_iterations: 100,
        }
    }
}

/// Standard deviations of the estimated intrinsics (0 for fixed parameters).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct IntrinsicsStdDev {
    /// Of `fx`, pixels.
    pub fx: f64,
    /// Of `fy`, pixels.
    pub fy: f64,
    /// Of `cx`, pixels.
    pub cx: f64,
    /// Of `cy`, pixels.
    pub cy: f64,
    /// Of `k1 k2 p1 p2 k3`.
    pub distortion: [f64; 5],
}

/// The outcome of [`calibrate`].
#[derive(Clone, Debug)]
pub struct Calibration {
    /// The camera.
    pub intrinsics: Intrinsics,
    /// OpenCV's RMS reprojection error: `sqrt(sum |e|^2 / N_points)`, pixels.
    pub rms_px: f64,
    /// RMS reprojection error of each view, pixels.
    pub view_rms_px: Vec<f64>,
    /// Views whose error is far above the others' (see [`Calibration::outlier_views`]).
    pub outlier_views: Vec<usize>,
    /// Reprojection residuals `projected - detected` of every corner of every view, pixels.
    pub residuals_px: Vec<Vec<[f64; 2]>>,
    /// Standard deviations of the intrinsics.
    pub std_dev: IntrinsicsStdDev,
    /// Each view's board pose.
    pub cam_from_board: Vec<Isometry3<f64>>,
    /// Levenberg-Marquardt iterations run.
    pub iterations: usize,
}

/// Parameter layout: 9 intrinsics `fx fy cx cy k1 k2 p1 p2 k3`, then 6 per view (rotation vector,
/// translation).
const N_INTRINSICS: usize = 9;
const N_VIEW: usize = 6;

/// Projects board point `p` with the parameter slices of the camera and one view.
fn project(cam: &[f64], view: &[f64], p: &Point3<f64>) -> [f64; 2] {
    let rot = Rotation3::new(Vector3::new(view[0], view[1], view[2]));
    let pc = rot * p.coords + Vector3::new(view[3], view[4], view[5]);
    let (x, y) = (pc.x / pc.z, pc.y / pc.z);
    let r2 = x * x + y * y;
    let (k1, k2, p1, p2, k3) = (cam[4], cam[5], cam[6], cam[7], cam[8]);
    let radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3));
    let xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x);
    let yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y;
    [cam[0] * xd + cam[2], cam[1] * yd + cam[3]]
}

/// Which intrinsics move, and how: fixed aspect ratio ties `fy` to `fx`.
struct Free {
    intrinsic: [bool; N_INTRINSICS],
    aspect: Option<f64>,
}

impl Free {
    fn new(o: &CalibrationOptions) -> Self {
        let pp = !o.fix_principal_point;
        let tan = !o.zero_tangential;
        Self {
            intrinsic: [true, o.fix_aspect_ratio.is_none(), pp, pp, true, true, tan, tan, !o.fix_k3],
            aspect: o.fix_aspect_ratio,
        }
    }
    fn count(&self, views: usize) -> usize {
        self.intrinsic.iter().filter(|f| **f).count() + N_VIEW * views
    }
    /// Applies `delta` (free parameters only) to the full parameter vector.
    fn apply(&self, params: &[f64], delta: &DVector<f64>) -> Vec<f64> {
        let mut out = params.to_vec();
        let mut j = 0;
        for (i, free) in self.intrinsic.iter().enumerate() {
            if *free {
                out[i] += delta[j];
                j += 1;
            }
        }
        for (o, d) in out[N_INTRINSICS..].iter_mut().zip(delta.iter().skip(j)) {
            *o += d;
        }
        self.tie_aspect(&mut out);
        out
    }

    /// With a fixed aspect ratio, `fy` follows `fx`.
    fn tie_aspect(&self, params: &mut [f64]) {
        if let Some(a) = self.aspect {
            params[1] = params[0] / a;
        }
    }
}

struct Problem<'a> {
    object: Vec<Point3<f64>>,
    views: &'a [Vec<Point2<f64>>],
}

impl Problem<'_> {
    fn view_residuals(&self, params: &[f64], v: usize, out: &mut [f64]) {
        let view = &params[N_INTRINSICS + N_VIEW * v..N_INTRINSICS + N_VIEW * (v + 1)];
        for (i, (p, obs)) in self.object.iter().zip(&self.views[v]).enumerate() {
            let [u, w] = project(&params[..N_INTRINSICS], view, p);
            out[2 * i] = u - obs.x;
            out[2 * i + 1] = w - obs.y;
        }
    }

    fn residuals(&self, params: &[f64]) -> Vec<f64> {
        let per_view = 2 * self.object.len();
        let mut r = vec![0.0; per_view * self.views.len()];
        for (v, chunk) in r.chunks_mut(per_view).enumerate() {
            self.view_residuals(params, v, chunk);
        }
        r
    }

    /// `J^T J` and `J^T r` by central differences, using that a view's residuals depend only on
    /// the intrinsics and that view's six parameters.
    fn normal_equations(&self, params: &[f64], free: &Free, r: &[f64]) -> (DMatrix<f64>, DVector<f64>) {
        let n_views = self.views.len();
        let per_view = 2 * self.object.len();
        let n_free = free.count(n_views);
        let free_intr: Vec<usize> = (0..N_INTRINSICS).filter(|i| free.intrinsic[*i]).collect();
        let ni = free_intr.len();
        let step = |v: f64| 1e-6 * v.abs().max(1e-2);
        // Columns of J for each view: ni intrinsic columns then 6 view columns, each `per_view` long.
        let mut jtj = DMatrix::<f64>::zeros(n_free, n_free);
        let mut jtr = DVector::<f64>::zeros(n_free);
        let (mut plus, mut minus) = (vec![0.0; per_view], vec![0.0; per_view]);
        for v in 0..n_views {
            let mut cols: Vec<Vec<f64>> = Vec::with_capacity(ni + N_VIEW);
            let mut indices: Vec<usize> = Vec::with_capacity(ni + N_VIEW);
            let params_list: Vec<usize> =
                free_intr.iter().copied().chain((0..N_VIEW).map(|k| N_INTRINSICS + N_VIEW * v + k)).collect();
            for (c, &pi) in params_list.iter().enumerate() {
                let h = step(params[pi]);
                let mut p = params.to_vec();
                for (sign, out) in [(1.0, &mut plus), (-1.0, &mut minus)] {
                    p[pi] = params[pi] + sign * h;
                    free.tie_aspect(&mut p);
                    self.view_residuals(&p, v, out);
                }
                cols.push(plus.iter().zip(&minus).map(|(a, b)| (a - b) / (2.0 * h)).collect());
                indices.push(if c < ni { c } else { ni + N_VIEW * v + (c - ni) });
            }
            let rv = &r[v * per_view..(v + 1) * per_view];
            for (a, ca) in cols.iter().enumerate() {
                jtr[indices[a]] += ca.iter().zip(rv).map(|(x, y)| x * y).sum::<f64>();
                for (b, cb) in cols.iter().enumerate().skip(a) {
                    let dot: f64 = ca.iter().zip(cb).map(|(x, y)| x * y).sum();
                    jtj[(indices[a], indices[b])] += dot;
                    if a != b {
                        jtj[(indices[b], indices[a])] += dot;
                    }
                }
            }
        }
        (jtj, jtr)
    }
}

/// Homography `H` with `image ~ H [X Y 1]^T` from board-plane points, by the normalised DLT.
fn homography(plane: &[Point2<f64>], image: &[Point2<f64>]) -> Option<Matrix3<f64>> {
    let normaliser = |pts: &[Point2<f64>]| {
        let n = pts.len() as f64;
        let c = pts.iter().fold(Vector3::zeros(), |a, p| a + Vector3::new(p.x, p.y, 0.0)) / n;
        let d = pts.iter().map(|p| ((p.x - c.x).powi(2) + (p.y - c.y).powi(2)).sqrt()).sum::<f64>() / n;
        let s = if d > 0.0 { 2f64.sqrt() / d } else { 1.0 };
        Matrix3::new(s, 0.0, -s * c.x, 0.0, s, -s * c.y, 0.0, 0.0, 1.0)
    };
    let (ta, tb) = (normaliser(plane), normaliser(image));
    let mut a = DMatrix::<f64>::zeros(2 * plane.len(), 9);
    for (i, (p, q)) in plane.iter().zip(image).enumerate() {
        let p = ta * Vector3::new(p.x, p.y, 1.0);
        let q = tb * Vector3::new(q.x, q.y, 1.0);
        let (x, y, u, v) = (p.x, p.y, q.x, q.y);
        a.row_mut(2 * i).copy_from_slice(&[-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u]);
        a.row_mut(2 * i + 1).copy_from_slice(&[0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v]);
    }
    let h = smallest_right_singular_vector(a)?;
    let hn = Matrix3::from_row_slice(h.as_slice());
    let hm = tb.try_inverse()? * hn * ta;
    (hm[(2, 2)].abs() > 1e-15).then(|| hm / hm[(2, 2)])
}

/// The right singular vector of the smallest singular value (`A^T A`'s eigenvector, robust for
/// tall matrices).
fn smallest_right_singular_vector(a: DMatrix<f64>) -> Option<DVector<f64>> {
    let ata = a.transpose() * &a;
    let svd = SVD::new(ata, false, true);
    let vt = svd.v_t?;
    let (idx, _) = svd.singular_values.iter().enumerate().min_by(|x, y| x.1.total_cmp(y.1))?;
    Some(vt.row(idx).transpose())
}

/// Zhang's closed form: `K` (zero skew) from three or more homographies.
fn intrinsics_from_homographies(hs: &[Matrix3<f64>]) -> Option<Matrix3<f64>> {
    let v = |h: &Matrix3<f64>, i: usize, j: usize| {
        let (hi, hj) = (h.column(i), h.column(j));
        [
            hi[0] * hj[0],
            hi[0] * hj[1] + hi[1] * hj[0],
            hi[1] * hj[1],
            hi[2] * hj[0] + hi[0] * hj[2],
            hi[2] * hj[1] + hi[1] * hj[2],
            hi[2] * hj[2],
        ]
    };
    // Zero skew adds the constraint B12 = 0.
    let mut a = DMatrix::<f64>::zeros(2 * hs.len() + 1, 6);
    for (k, h) in hs.iter().enumerate() {
        let (v12, v11, v22) = (v(h, 0, 1), v(h, 0, 0), v(h, 1, 1));
        a.row_mut(2 * k).copy_from_slice(&v12);
        let diff: Vec<f64> = v11.iter().zip(&v22).map(|(x, y)| x - y).collect();
        a.row_mut(2 * k + 1).copy_from_slice(&diff);
    }
    a[(2 * hs.len(), 1)] = 1.0;
    let b = smallest_right_singular_vector(a)?;
    let (b11, b12, b22, b13, b23, b33) = (b[0], b[1], b[2], b[3], b[4], b[5]);
    let den = b11 * b22 - b12 * b12;
    let v0 = (b12 * b13 - b11 * b23) / den;
    let lambda = b33 - (b13 * b13 + v0 * (b12 * b13 - b11 * b23)) / b11;
    let alpha = (lambda / b11).sqrt();
    let beta = (lambda * b11 / den).sqrt();
    let u0 = -b13 * alpha * alpha / lambda;
    let k = Matrix3::new(alpha, 0.0, u0, 0.0, beta, v0, 0.0, 0.0, 1.0);
    k.iter().all(|x| x.is_finite()).then_some(k).filter(|k| k[(0, 0)] > 0.0 && k[(1, 1)] > 0.0)
}

/// A view's pose from its homography and `K` (the board in front of the camera).
fn pose_from_homography(k: &Matrix3<f64>, h: &Matrix3<f64>) -> Option<Isometry3<f64>> {
    let kinv = k.try_inverse()?;
    let (h1, h2, h3) = (kinv * h.column(0), kinv * h.column(1), kinv * h.column(2));
    let mut s = 1.0 / h1.norm();
    if (h3 * s).z < 0.0 {
        s = -s;
    }
    let (r1, r2) = (h1 * s, h2 * s);
    let r = Matrix3::from_columns(&[r1, r2, r1.cross(&r2)]);
    let svd = SVD::new(r, true, true);
    let mut rot = svd.u? * svd.v_t?;
    if rot.determinant() < 0.0 {
        rot = -rot;
    }
    let q = UnitQuaternion::from_matrix(&rot);
    Some(Isometry3::from_parts(Translation3::from(h3 * s), q))
}

/// Calibrates a camera from detected corners: `views[v]` holds the board's inner corners in view
/// `v`, in the board's row-major order, in pixels of a `width x height` image.
///
/// # Errors
/// [`Error::Calibration`] with fewer than [`MIN_VIEWS`] views, views with the wrong number of
/// corners or non-finite coordinates, degenerate views (homography or initial `K` not found), or a
/// result that is not a valid camera.
pub fn calibrate(
    board: &Checkerboard,
    views: &[Vec<Point2<f64>>],
    width: u32,
    height: u32,
    options: &CalibrationOptions,
) -> Result<Calibration> {
    if let Some(a) = options.fix_aspect_ratio.filter(|a| !(a.is_finite() && *a > 0.0)) {
        return Err(Error::Calibration(format!("aspect ratio {a} must be finite and > 0")));
    }
    if views.len() < MIN_VIEWS {
        return Err(Error::Calibration(format!("{} view(s): at least {MIN_VIEWS} are needed", views.len())));
    }
    for (v, pts) in views.iter().enumerate() {
        if pts.len() != board.len() {
            return Err(Error::Calibration(format!(
                "view {v} has {} corners; the {}x{} board has {}",
                pts.len(),
                board.cols(),
                board.rows(),
                board.len()
            )));
        }
        if pts.iter().any(|p| !(p.x.is_finite() && p.y.is_finite())) {
            return Err(Error::Calibration(format!("view {v} has a non-finite corner")));
        }
    }
    let object = board.object_points();
    let plane: Vec<Point2<f64>> = object.iter().map(|p| Point2::new(p.x, p.y)).collect();
    let hs = views
        .iter()
        .enumerate()
        .map(|(v, pts)| {
            homography(&plane, pts).ok_or_else(|| Error::Calibration(format!("view {v}: degenerate corners")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut k0 = intrinsics_from_homographies(&hs).ok_or_else(|| {
        Error::Calibration("no camera fits the views (are they all parallel to each other?)".to_owned())
    })?;
    if options.fix_principal_point {
        k0[(0, 2)] = (width as f64 - 1.0) / 2.0;
        k0[(1, 2)] = (height as f64 - 1.0) / 2.0;
    }
    let mut params = vec![k0[(0, 0)], k0[(1, 1)], k0[(0, 2)], k0[(1, 2)], 0.0, 0.0, 0.0, 0.0, 0.0];
    for (v, h) in hs.iter().enumerate() {
        let pose =
            pose_from_homography(&k0, h).ok_or_else(|| Error::Calibration(format!("view {v}: no pose")))?;
        params.extend(pose.rotation.scaled_axis().iter());
        params.extend(pose.translation.vector.iter());
    }
    let free = Free::new(options);
    free.tie_aspect(&mut params);
    let problem = Problem { object, views };

    // Levenberg-Marquardt with Marquardt's diagonal scaling.
    let mut r = problem.residuals(&params);
    let mut cost: f64 = r.iter().map(|x| x * x).sum();
    let mut lambda = 1e-3;
    let mut iterations = 0;
    for _ in 0..options.max_iterations {
        iterations += 1;
        let (jtj, jtr) = problem.normal_equations(&params, &free, &r);
        let mut improved = false;
        for _ in 0..10 {
            let mut a = jtj.clone();
            for i in 0..a.nrows() {
                a[(i, i)] += lambda * jtj[(i, i)].max(1e-12);
            }
            let Some(delta) = a.cholesky().map(|c| c.solve(&(-&jtr))) else {
                lambda *= 10.0;
                continue;
            };
            let candidate = free.apply(&params, &delta);
            let r_new = problem.residuals(&candidate);
            let new_cost: f64 = r_new.iter().map(|x| x * x).sum();
            if new_cost.is_finite() && new_cost < cost {
                let converged = (cost - new_cost) <= 1e-12 * cost || delta.norm() < 1e-12;
                params = candidate;
                r = r_new;
                cost = new_cost;
                lambda = (lambda / 10.0).max(1e-12);
                improved = !converged;
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }

    let n_points = problem.object.len() * views.len();
    let rms_px = (cost / n_points as f64).sqrt();
    let per_view = 2 * problem.object.len();
    let residuals_px: Vec<Vec<[f64; 2]>> =
        r.chunks(per_view).map(|c| c.chunks(2).map(|e| [e[0], e[1]]).collect()).collect();
    let view_rms_px: Vec<f64> = residuals_px
        .iter()
        .map(|v| (v.iter().map(|e| e[0] * e[0] + e[1] * e[1]).sum::<f64>() / v.len() as f64).sqrt())
        .collect();
    let mut sorted = view_rms_px.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let outlier_views = (0..views.len())
        .filter(|&v| view_rms_px[v] > (OUTLIER_FACTOR * median).max(OUTLIER_FLOOR_PX))
        .collect();

    // Covariance sigma^2 (J^T J)^-1 with sigma^2 = cost / (2N - P).
    let (jtj, _) = problem.normal_equations(&params, &free, &r);
    let dof = (2 * n_points).saturating_sub(free.count(views.len())).max(1);
    let sigma2 = cost / dof as f64;
    let mut std_free = [0.0; N_INTRINSICS];
    if let Some(inv) = jtj.try_inverse() {
        let mut j = 0;
        for (i, is_free) in free.intrinsic.iter().enumerate() {
            if *is_free {
                std_free[i] = (sigma2 * inv[(j, j)]).max(0.0).sqrt();
                j += 1;
            }
        }
    }
    if let Some(a) = free.aspect {
        std_free[1] = std_free[0] / a;
    }
    let std_dev = IntrinsicsStdDev {
        fx: std_free[0],
        fy: std_free[1],
        cx: std_free[2],
        cy: std_free[3],
        distortion: [std_free[4], std_free[5], std_free[6], std_free[7], std_free[8]],
    };
    let intrinsics = Intrinsics::new(params[0], params[1], params[2], params[3], width, height)
        .map_err(|e| Error::Calibration(format!("the estimate is not a valid camera: {e}")))?
        .with_distortion(Distortion::new(params[4], params[5], params[6], params[7], params[8])?);
    let cam_from_board = (0..views.len())
        .map(|v| {
            let p = &params[N_INTRINSICS + N_VIEW * v..N_INTRINSICS + N_VIEW * (v + 1)];
            Isometry3::new(Vector3::new(p[3], p[4], p[5]), Vector3::new(p[0], p[1], p[2]))
        })
        .collect();
    Ok(Calibration {
        intrinsics,
        rms_px,
        view_rms_px,
        outlier_views,
        residuals_px,
        std_dev,
        cam_from_board,
        iterations,
    })
}
