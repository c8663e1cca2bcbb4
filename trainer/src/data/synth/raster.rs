//! A small triangle rasteriser with a depth buffer and an object-id buffer.
//!
//! Pixels are sampled at their centres, which sit at integer coordinates (the convention of
//! `monovlm_calib`): pixel `(i, j)` is covered by a triangle when the point `(i, j)` is inside it.
//! Vertices are projected with [`Intrinsics::project`] (so the KITTI `P2` offset is honoured),
//! triangles are clipped at the near plane in the camera frame first, depth is tested on `1/z`
//! (exact for planar triangles under perspective), and surface coordinates are interpolated
//! perspective-correctly. No anti-aliasing: the id buffer is exact per pixel.

use monovlm_calib::{Intrinsics, NEAR_PLANE_M, Point3};

/// The id of pixels that belong to no labelled object (road, sky, scenery).
pub const BACKGROUND_ID: u16 = 0;

/// A vertex in the camera frame with surface coordinates `st` (metres on the face).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vertex {
    /// Position in the camera frame, metres.
    pub p_cam: Point3<f64>,
    /// Surface coordinates, metres.
    pub st: [f64; 2],
}

/// A projected vertex: pixel position, `1/z`, and the surface coordinates divided by `z`.
#[derive(Clone, Copy, Debug)]
struct ScreenVertex {
    u: f64,
    v: f64,
    inv_z: f64,
    s_over_z: f64,
    t_over_z: f64,
}

/// What a covered pixel gets from the rasteriser: its index, `1/z`, depth and surface coordinates.
#[derive(Clone, Copy, Debug)]
pub struct Fragment {
    /// Row-major pixel index.
    pub index: usize,
    /// `1 / z` at the pixel centre, 1/metres.
    pub inv_z: f64,
    /// Surface coordinate `s`, metres.
    pub s: f64,
    /// Surface coordinate `t`, metres.
    pub t: f64,
}

/// Colour, depth and id buffers of one image.
#[derive(Clone, Debug)]
pub struct Raster {
    width: usize,
    height: usize,
    /// Linear-ish sRGB colour in `[0, 1]`, row-major.
    colour: Vec<[f32; 3]>,
    /// `1/z` of the nearest surface drawn so far (0: nothing, i.e. infinitely far).
    inv_depth: Vec<f32>,
    /// Object id of the nearest surface ([`BACKGROUND_ID`] for scenery).
    ids: Vec<u16>,
    /// Per-pixel generation marks for silhouette counting.
    stamp: Vec<u32>,
    stamp_generation: u32,
}

impl Raster {
    /// Empty buffers for a `width x height` image.
    pub fn new(width: u32, height: u32) -> Self {
        let n = width as usize * height as usize;
        Self {
            width: width as usize,
            height: height as usize,
            colour: vec![[0.0; 3]; n],
            inv_depth: vec![0.0; n],
            ids: vec![BACKGROUND_ID; n],
            stamp: vec![0; n],
            stamp_generation: 0,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The colour buffer, row-major.
    pub fn colour(&self) -> &[[f32; 3]] {
        &self.colour
    }

    /// The colour buffer, row-major, for post-processing.
    pub fn colour_mut(&mut self) -> &mut [[f32; 3]] {
        &mut self.colour
    }

    /// The id buffer, row-major.
    pub fn ids(&self) -> &[u16] {
        &self.ids
    }

    /// Moves the id buffer out (the raster keeps an empty one).
    pub fn take_ids(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.ids)
    }

    /// Sets every pixel's colour from `f(x, y)`; depth and ids are reset to the background.
    pub fn fill_background(&mut self, mut f: impl FnMut(usize, usize) -> [f32; 3]) {
        for y in 0..self.height {
            let row = y * self.width;
            for x in 0..self.width {
                if let Some(c) = self.colour.get_mut(row + x) {
                    *c = f(x, y);
                }
            }
        }
        self.inv_depth.fill(0.0);
        self.ids.fill(BACKGROUND_ID);
    }

    /// Draws a triangle with depth test: covered pixels nearer than what is there get `id` and the
    /// colour `shade(s, t, z_m)`.
    pub fn draw_triangle(
        &mut self,
        k: &Intrinsics,
        tri: &[Vertex; 3],
        id: u16,
        shade: &mut impl FnMut(f64, f64, f64) -> [f32; 3],
    ) {
        let (width, height) = (self.width, self.height);
        let (colour, inv_depth, ids) = (&mut self.colour, &mut self.inv_depth, &mut self.ids);
        for_each_fragment(k, tri, width, height, &mut |frag: Fragment| {
            let Some(d) = inv_depth.get_mut(frag.index) else { return };
            let inv_z = frag.inv_z as f32;
            if inv_z > *d {
                *d = inv_z;
                if let Some(slot) = ids.get_mut(frag.index) {
                    *slot = id;
                }
                if let Some(c) = colour.get_mut(frag.index) {
                    *c = shade(frag.s, frag.t, 1.0 / frag.inv_z);
                }
            }
        });
    }

    /// Multiplies the colour of covered pixels by `factor` (no depth test, no id): ground decals
    /// such as shadows, drawn before anything stands on them.
    pub fn darken_triangle(&mut self, k: &Intrinsics, tri: &[Vertex; 3], factor: f32) {
        let (width, height) = (self.width, self.height);
        let colour = &mut self.colour;
        let stamp = &mut self.stamp;
        let generation = self.stamp_generation;
        for_each_fragment(k, tri, width, height, &mut |frag: Fragment| {
            // Stamped so that overlapping shadow triangles of one object darken once.
            if let (Some(c), Some(mark)) = (colour.get_mut(frag.index), stamp.get_mut(frag.index))
                && *mark != generation
            {
                *mark = generation;
                for ch in c.iter_mut() {
                    *ch *= factor;
                }
            }
        });
    }

    /// Starts a new silhouette (see [`Raster::stamp_triangle`]).
    pub fn begin_stamp(&mut self) {
        self.stamp_generation = self.stamp_generation.wrapping_add(1);
        if self.stamp_generation == 0 {
            self.stamp.fill(0);
            self.stamp_generation = 1;
        }
    }

    /// Marks the pixels a triangle covers in the current silhouette, ignoring depth; returns how many
    /// were not marked yet (so the sum over an object's triangles is its silhouette area in pixels).
    pub fn stamp_triangle(&mut self, k: &Intrinsics, tri: &[Vertex; 3]) -> u64 {
        let (width, height) = (self.width, self.height);
        let stamp = &mut self.stamp;
        let generation = self.stamp_generation;
        let mut fresh = 0;
        for_each_fragment(k, tri, width, height, &mut |frag: Fragment| {
            if let Some(mark) = stamp.get_mut(frag.index)
                && *mark != generation
            {
                *mark = generation;
                fresh += 1;
            }
        });
        fresh
    }
}

/// Clips a triangle at the near plane `z = NEAR_PLANE_M` (Sutherland-Hodgman for one plane): at most
/// four vertices remain.
fn clip_near(tri: &[Vertex; 3]) -> ([Vertex; 4], usize) {
    let mut out = [tri[0]; 4];
    let mut n = 0;
    for i in 0..3 {
        let a = tri[i];
        let b = tri[(i + 1) % 3];
        let (ina, inb) = (a.p_cam.z >= NEAR_PLANE_M, b.p_cam.z >= NEAR_PLANE_M);
        if ina && n < 4 {
            out[n] = a;
            n += 1;
        }
        if ina != inb && n < 4 {
            let t = (NEAR_PLANE_M - a.p_cam.z) / (b.p_cam.z - a.p_cam.z);
            let mut p = a.p_cam + (b.p_cam - a.p_cam) * t;
            p.z = NEAR_PLANE_M;
            let st = [a.st[0] + (b.st[0] - a.st[0]) * t, a.st[1] + (b.st[1] - a.st[1]) * t];
            out[n] = Vertex { p_cam: p, st };
            n += 1;
        }
    }
    (out, n)
}

fn to_screen(k: &Intrinsics, v: &Vertex) -> Option<ScreenVertex> {
    let px = k.project(&v.p_cam)?;
    let inv_z = 1.0 / v.p_cam.z;
    Some(ScreenVertex { u: px.x, v: px.y, inv_z, s_over_z: v.st[0] * inv_z, t_over_z: v.st[1] * inv_z })
}

/// Calls `visit` for every pixel centre inside the (near-clipped, projected) triangle.
pub fn for_each_fragment(
    k: &Intrinsics,
    tri: &[Vertex; 3],
    width: usize,
    height: usize,
    visit: &mut impl FnMut(Fragment),
) {
    let (poly, n) = clip_near(tri);
    if n < 3 {
        return;
    }
    let mut screen = [None; 4];
    for (slot, v) in screen.iter_mut().zip(poly.iter().take(n)) {
        *slot = to_screen(k, v);
    }
    let Some(s0) = screen[0] else { return };
    for i in 1..n - 1 {
        if let (Some(s1), Some(s2)) = (screen[i], screen[i + 1]) {
            raster_screen_triangle(&[s0, s1, s2], width, height, visit);
        }
    }
}

fn raster_screen_triangle(
    sv: &[ScreenVertex; 3],
    width: usize,
    height: usize,
    visit: &mut impl FnMut(Fragment),
) {
    let [a, b, c] = sv;
    let area = (b.u - a.u) * (c.v - a.v) - (b.v - a.v) * (c.u - a.u);
    if !area.is_finite() || area.abs() < 1e-9 {
        return;
    }
    let min_u = a.u.min(b.u).min(c.u);
    let max_u = a.u.max(b.u).max(c.u);
    let min_v = a.v.min(b.v).min(c.v);
    let max_v = a.v.max(b.v).max(c.v);
    if max_u < 0.0 || max_v < 0.0 || min_u > (width - 1) as f64 || min_v > (height - 1) as f64 {
        return;
    }
    let x0 = min_u.ceil().max(0.0) as usize;
    let x1 = (max_u.floor() as i64).min(width as i64 - 1);
    let y0 = min_v.ceil().max(0.0) as usize;
    let y1 = (max_v.floor() as i64).min(height as i64 - 1);
    if x1 < x0 as i64 || y1 < y0 as i64 {
        return;
    }
    let (x1, y1) = (x1 as usize, y1 as usize);
    // Edge functions e_i(u, v) = A_i u + B_i v + C_i, normalised so that they are the barycentric
    // weights of the vertex opposite the edge.
    let inv_area = 1.0 / area;
    let edge = |p: &ScreenVertex, q: &ScreenVertex| {
        let a_coef = (p.v - q.v) * inv_area;
        let b_coef = (q.u - p.u) * inv_area;
        let c_coef = (p.u * q.v - p.v * q.u) * inv_area;
        (a_coef, b_coef, c_coef)
    };
    let e0 = edge(b, c); // weight of a
    let e1 = edge(c, a); // weight of b
    let e2 = edge(a, b); // weight of c
    // Tolerance for pixel centres exactly on an edge (shared edges are drawn by both triangles).
    const EDGE_EPS: f64 = -1e-9;
    for y in y0..=y1 {
        let yf = y as f64;
        let x0f = x0 as f64;
        let mut w0 = e0.0 * x0f + e0.1 * yf + e0.2;
        let mut w1 = e1.0 * x0f + e1.1 * yf + e1.2;
        let mut w2 = e2.0 * x0f + e2.1 * yf + e2.2;
        let row = y * width;
        for x in x0..=x1 {
            if w0 >= EDGE_EPS && w1 >= EDGE_EPS && w2 >= EDGE_EPS {
                let inv_z = w0 * a.inv_z + w1 * b.inv_z + w2 * c.inv_z;
                if inv_z > 0.0 {
                    let s = (w0 * a.s_over_z + w1 * b.s_over_z + w2 * c.s_over_z) / inv_z;
                    let t = (w0 * a.t_over_z + w1 * b.t_over_z + w2 * c.t_over_z) / inv_z;
                    visit(Fragment { index: row + x, inv_z, s, t });
                }
            }
            w0 += e0.0;
            w1 += e1.0;
            w2 += e2.0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn k() -> Intrinsics {
        Intrinsics::new(100.0, 100.0, 50.0, 50.0, 101, 101).unwrap()
    }

    #[test]
    fn a_square_covers_the_pixel_centres_inside_it() {
        // A 1 m square at z = 10 m spans pixels 45..=55 (centres at integers, edges at 45 and 55).
        let v = |x: f64, y: f64| Vertex { p_cam: Point3::new(x, y, 10.0), st: [x, y] };
        let (a, b, c, d) = (v(-0.5, -0.5), v(0.5, -0.5), v(0.5, 0.5), v(-0.5, 0.5));
        let mut r = Raster::new(101, 101);
        r.fill_background(|_, _| [0.0; 3]);
        let mut shade = |_s: f64, _t: f64, _z: f64| [1.0, 1.0, 1.0];
        r.draw_triangle(&k(), &[a, b, c], 7, &mut shade);
        r.draw_triangle(&k(), &[a, c, d], 7, &mut shade);
        let covered: Vec<usize> = (0..101 * 101).filter(|i| r.ids()[*i] == 7).collect();
        assert_eq!(covered.len(), 11 * 11);
        assert!(covered.iter().all(|i| (45..=55).contains(&(i % 101)) && (45..=55).contains(&(i / 101))));
    }

    #[test]
    fn nearer_surfaces_win_and_clipping_keeps_the_front_part() {
        let mut r = Raster::new(101, 101);
        r.fill_background(|_, _| [0.0; 3]);
        let tri = |z: f64| {
            [
                Vertex { p_cam: Point3::new(-5.0, -5.0, z), st: [0.0, 0.0] },
                Vertex { p_cam: Point3::new(5.0, -5.0, z), st: [0.0, 0.0] },
                Vertex { p_cam: Point3::new(0.0, 5.0, z), st: [0.0, 0.0] },
            ]
        };
        let mut shade = |_s: f64, _t: f64, _z: f64| [1.0, 1.0, 1.0];
        r.draw_triangle(&k(), &tri(20.0), 1, &mut shade);
        r.draw_triangle(&k(), &tri(10.0), 2, &mut shade);
        r.draw_triangle(&k(), &tri(30.0), 3, &mut shade);
        assert_eq!(r.ids()[50 * 101 + 50], 2);
        // A triangle crossing the near plane still draws its visible part.
        let crossing = [
            Vertex { p_cam: Point3::new(-1.0, 0.0, -1.0), st: [0.0, 0.0] },
            Vertex { p_cam: Point3::new(1.0, 0.0, 5.0), st: [0.0, 0.0] },
            Vertex { p_cam: Point3::new(1.0, 1.0, 5.0), st: [0.0, 0.0] },
        ];
        r.begin_stamp();
        assert!(r.stamp_triangle(&k(), &crossing) > 0);
    }
}
