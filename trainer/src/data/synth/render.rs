//! Draws a world through a camera rig: sky and road per pixel (ray-plane intersection), sun shadows
//! on the ground, then scenery and objects as lit, painted boxes with the depth and id buffers.

use monovlm_calib::{Box3d, Intrinsics, Point3};
use nalgebra::{Isometry3, Vector3};

use super::appearance::{Face, Surface, albedo};
use super::raster::{Raster, Vertex};
use super::rng::hash2;
use super::scene::{CameraRig, CentreLine, Road, Verge, World, box_in_camera};

/// Objects are drawn (and may be labelled) up to this depth, metres.
pub const MAX_OBJECT_DEPTH_M: f64 = 90.0;
/// Scenery is drawn up to this far along the road, metres.
const MAX_PROP_DISTANCE_M: f64 = 300.0;
/// Rays hitting the ground farther than this show sky (the haze has covered the ground by then).
const MAX_GROUND_DISTANCE_M: f64 = 3000.0;

/// One object as drawn: which actor, its id in the id buffer, its (rounded) label box and how many
/// pixels it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawnObject {
    /// Index into [`World::actors`].
    pub actor: usize,
    /// Its value in the id buffer.
    pub id: u16,
    /// The box drawn, which is the label's box (KITTI fields rounded to two decimals).
    pub box3d: Box3d,
    /// Pixels where it is the nearest surface.
    pub visible_px: u64,
    /// Pixels its silhouette covers inside the image, whatever is in front of it.
    pub silhouette_px: u64,
}

/// Lighting in the camera frame.
struct Light {
    sun_cam: Vector3<f64>,
    up_cam: Vector3<f64>,
    sun: f32,
    ambient: f32,
    haze: [f32; 3],
    haze_m: f64,
}

impl Light {
    /// Brightness of a surface with outward normal `n_cam`: sky light (more on upward faces) plus sun.
    fn intensity(&self, n_cam: &Vector3<f64>) -> f32 {
        let up = n_cam.dot(&self.up_cam).max(0.0) as f32;
        let sun = n_cam.dot(&self.sun_cam).max(0.0) as f32;
        self.ambient * (0.72 + 0.28 * up) + self.sun * sun
    }

    fn hazed(&self, c: [f32; 3], distance_m: f64) -> [f32; 3] {
        let f = (1.0 - (-distance_m / self.haze_m).exp()) as f32;
        [c[0] + (self.haze[0] - c[0]) * f, c[1] + (self.haze[1] - c[1]) * f, c[2] + (self.haze[2] - c[2]) * f]
    }
}

/// A box to draw: its camera-frame geometry, surface and id.
struct Drawable {
    box3d: Box3d,
    surface: Surface,
    id: u16,
}

/// The faces of a box: corner indices (into [`Box3d::corners`]), surface coordinates of those
/// corners, outward normal in the box frame `(along l, along w, up)`.
const FACES: [(Face, [usize; 4]); 6] = [
    (Face::Front, [1, 0, 4, 5]),
    (Face::Back, [3, 2, 6, 7]),
    (Face::Left, [3, 0, 4, 7]),
    (Face::Right, [2, 1, 5, 6]),
    (Face::Top, [7, 4, 5, 6]),
    (Face::Bottom, [3, 0, 1, 2]),
];

/// The quads of a box's faces with surface coordinates (metres) and outward normals (camera frame).
fn box_faces(b: &Box3d) -> [(Face, [Vertex; 4], Vector3<f64>); 6] {
    let corners = b.corners();
    let (s, c) = b.yaw.sin_cos();
    let heading = Vector3::new(c, 0.0, -s);
    let across = Vector3::new(s, 0.0, c);
    let up = Vector3::new(0.0, -1.0, 0.0);
    FACES.map(|(face, idx)| {
        let (extent_s, extent_t, normal) = match face {
            Face::Front => (b.w, b.h, heading),
            Face::Back => (b.w, b.h, -heading),
            Face::Left => (b.l, b.h, across),
            Face::Right => (b.l, b.h, -across),
            Face::Top => (b.l, b.w, up),
            Face::Bottom => (b.l, b.w, -up),
        };
        let st = [[0.0, 0.0], [extent_s, 0.0], [extent_s, extent_t], [0.0, extent_t]];
        let verts = std::array::from_fn(|i| Vertex { p_cam: corners[idx[i]], st: st[i] });
        (face, verts, normal)
    })
}

/// Draws `world` at time `t_s` seen by `rig` into `raster`; returns the objects drawn.
pub fn render_world(world: &World, rig: &CameraRig, t_s: f64, raster: &mut Raster) -> Vec<DrawnObject> {
    let k = &rig.intrinsics;
    let cam_from_road = rig.cam_from_road();
    let rot = cam_from_road.rotation;
    let light = Light {
        sun_cam: rot * world.sky.sun_dir_road,
        up_cam: rot * Vector3::new(0.0, -1.0, 0.0),
        sun: world.sky.sun,
        ambient: world.sky.ambient,
        haze: world.sky.horizon,
        haze_m: world.sky.haze_m,
    };
    let cam_z = rig.z_m;

    draw_background(world, rig, &cam_from_road, &light, raster);

    // Scenery and objects as camera-frame boxes.
    let mut drawables: Vec<Drawable> = Vec::new();
    for prop in &world.props {
        if prop.z_m + 0.5 * prop.hwl_m[2] < cam_z - 30.0 || prop.z_m - cam_z > MAX_PROP_DISTANCE_M {
            continue;
        }
        let bottom = Point3::new(prop.x_m, -prop.base_m, prop.z_m);
        if let Some(b) = box_in_camera(&cam_from_road, bottom, prop.hwl_m, prop.heading_rad, false)
            && b.project_to_box2d(k).is_some()
        {
            drawables.push(Drawable { box3d: b, surface: Surface::Prop(prop.kind), id: 0 });
        }
    }
    let mut drawn = Vec::new();
    for (index, actor) in world.actors.iter().enumerate() {
        let (x, z) = actor.position_at(t_s);
        if (z - cam_z) < -10.0 || (z - cam_z) > MAX_OBJECT_DEPTH_M + 10.0 {
            continue;
        }
        let Some(b) =
            box_in_camera(&cam_from_road, Point3::new(x, 0.0, z), actor.hwl_m, actor.heading_rad, true)
        else {
            continue;
        };
        if b.z > MAX_OBJECT_DEPTH_M || b.project_to_box2d(k).is_none() {
            continue;
        }
        let Ok(id) = u16::try_from(drawn.len() + 1) else { break };
        drawables.push(Drawable { box3d: b, surface: Surface::Object(actor.class, actor.appearance), id });
        drawn.push(DrawnObject { actor: index, id, box3d: b, visible_px: 0, silhouette_px: 0 });
    }

    draw_shadows(world, rig, &cam_from_road, t_s, raster);

    let eye = {
        let (tx, ty) = k.offset_m();
        Point3::new(tx, ty, 0.0)
    };
    for d in &drawables {
        let lwh = [d.box3d.l, d.box3d.w, d.box3d.h];
        for (face, quad, normal) in box_faces(&d.box3d) {
            let centre = Point3::from((quad[0].p_cam.coords + quad[2].p_cam.coords) * 0.5);
            if normal.dot(&(centre - eye)) >= 0.0 {
                continue; // back face
            }
            let intensity = light.intensity(&normal);
            let surface = d.surface;
            let mut shade = |s: f64, t: f64, z_m: f64| {
                let a = albedo(&surface, face, s, t, lwh);
                light.hazed(a.map(|c| (c * intensity).min(1.0)), z_m)
            };
            raster.draw_triangle(k, &[quad[0], quad[1], quad[2]], d.id, &mut shade);
            raster.draw_triangle(k, &[quad[0], quad[2], quad[3]], d.id, &mut shade);
        }
    }

    // Visible pixels per id, then each object's silhouette on its own.
    let mut visible = vec![0u64; drawn.len() + 1];
    for id in raster.ids() {
        if let Some(count) = visible.get_mut(usize::from(*id)) {
            *count += 1;
        }
    }
    for obj in &mut drawn {
        obj.visible_px = visible.get(usize::from(obj.id)).copied().unwrap_or(0);
        raster.begin_stamp();
        let mut area = 0;
        for (_, quad, normal) in box_faces(&obj.box3d) {
            let centre = Point3::from((quad[0].p_cam.coords + quad[2].p_cam.coords) * 0.5);
            if normal.dot(&(centre - eye)) >= 0.0 {
                continue;
            }
            area += raster.stamp_triangle(k, &[quad[0], quad[1], quad[2]]);
            area += raster.stamp_triangle(k, &[quad[0], quad[2], quad[3]]);
        }
        obj.silhouette_px = area;
    }
    drawn
}

/// Sky and ground for every pixel: the ray of pixel `(u, v)` from the camera centre (which sits at
/// the KITTI offset `(tx, ty, 0)` of the reference camera) meets the road plane `Y = 0` or not.
fn draw_background(
    world: &World,
    rig: &CameraRig,
    cam_from_road: &Isometry3<f64>,
    light: &Light,
    raster: &mut Raster,
) {
    let k: &Intrinsics = &rig.intrinsics;
    let road_from_cam = cam_from_road.inverse();
    let (tx, ty) = k.offset_m();
    let eye_road = road_from_cam * Point3::new(tx, ty, 0.0);
    let rot = road_from_cam.rotation;
    // Ray direction (camera z component 1) is affine in (u, v).
    let du = rot * Vector3::new(1.0 / k.fx(), 0.0, 0.0);
    let dv = rot * Vector3::new(0.0, 1.0 / k.fy(), 0.0);
    let d0 = rot * Vector3::new(-k.cx() / k.fx(), -k.cy() / k.fy(), 1.0);
    let ground_light = light.ambient + light.sun * (-world.sky.sun_dir_road.y).max(0.0) as f32;
    let sky = &world.sky;
    let road = &world.road;
    let painter = RoadPainter::new(road);
    raster.fill_background(|x, y| {
        let dir = d0 + du * x as f64 + dv * y as f64;
        let norm = dir.norm();
        if dir.y > 1e-9 {
            let t = -eye_road.y / dir.y; // camera-z distance (dir has camera z = 1)
            let distance = t * norm;
            if distance < MAX_GROUND_DISTANCE_M {
                let (gx, gz) = (eye_road.x + t * dir.x, eye_road.z + t * dir.z);
                let a = painter.albedo(gx, gz, distance);
                return light.hazed(a.map(|c| (c * ground_light).min(1.0)), distance);
            }
        }
        let elevation = (-dir.y / norm).max(0.0);
        let f = (elevation / 0.45).min(1.0).powf(0.7) as f32;
        std::array::from_fn(|i| sky.horizon[i] + (sky.zenith[i] - sky.horizon[i]) * f)
    });
}

/// Paints the ground: lanes and markings, kerbs, sidewalk paving, verges.
struct RoadPainter<'a> {
    road: &'a Road,
    carriageway: (f64, f64),
    lanes_edge: (f64, f64),
    sidewalk_outer: (f64, f64),
}

impl<'a> RoadPainter<'a> {
    fn new(road: &'a Road) -> Self {
        let lanes_w: f64 = road.lanes.iter().map(|l| l.width_m).sum();
        Self {
            road,
            carriageway: road.carriageway_x_m(),
            lanes_edge: (-0.5 * lanes_w, 0.5 * lanes_w),
            sidewalk_outer: road.sidewalk_outer_x_m(),
        }
    }

    fn albedo(&self, x: f64, z: f64, distance_m: f64) -> [f32; 3] {
        let road = self.road;
        // Texture noise fades with distance (it would only alias there).
        let fade = (1.0 - distance_m / 60.0).max(0.0) as f32;
        let noise = (hash2((x * 5.0).floor() as i64, (z * 5.0).floor() as i64, 11) - 0.5) * 0.08 * fade;
        let (cl, cr) = self.carriageway;
        if x >= cl && x <= cr {
            if let Some(paint) = self.marking(x, z) {
                return paint;
            }
            let patch = (hash2((x * 0.5).floor() as i64, (z * 0.25).floor() as i64, 5) - 0.5) * 0.03;
            let in_parking = x < self.lanes_edge.0 || x > self.lanes_edge.1;
            let base = if in_parking { road.asphalt.map(|c| c * 1.08) } else { road.asphalt };
            return base.map(|c| (c + noise + patch).clamp(0.0, 1.0));
        }
        let outside = (cl - x).max(x - cr);
        if outside < road.kerb_m {
            return [0.72 + noise, 0.72 + noise, 0.7 + noise];
        }
        let (sl, sr) = self.sidewalk_outer;
        if x >= sl && x <= sr {
            // Paving slabs with joints.
            let (px, pz) = (x.rem_euclid(0.6), z.rem_euclid(0.6));
            let joint = (px < 0.03 || pz < 0.03) && distance_m < 40.0;
            let slab = (hash2((x / 0.6).floor() as i64, (z / 0.6).floor() as i64, 3) - 0.5) * 0.05;
            let base = road.sidewalk.map(|c| c + slab + noise);
            return if joint { base.map(|c| c * 0.8) } else { base };
        }
        match road.verge {
            Verge::Grass(g) => {
                let n = (hash2((x * 2.0).floor() as i64, (z * 2.0).floor() as i64, 9) - 0.5) * 0.12 * fade;
                g.map(|c| (c + n + noise).clamp(0.0, 1.0))
            }
            Verge::Paved(p) => p.map(|c| (c + noise).clamp(0.0, 1.0)),
        }
    }

    /// Road paint at `(x, z)`, if any.
    fn marking(&self, x: f64, z: f64) -> Option<[f32; 3]> {
        const WHITE: [f32; 3] = [0.9, 0.9, 0.88];
        const YELLOW: [f32; 3] = [0.88, 0.72, 0.15];
        let road = self.road;
        let dashed = |z: f64| z.rem_euclid(9.0) < 3.0;
        // Zebra crossing.
        if let Some(cz) = road.crosswalk_z_m
            && (z - cz).abs() < 2.0
            && x > self.lanes_edge.0
            && x < self.lanes_edge.1
        {
            return (x.rem_euclid(1.0) < 0.5).then_some(WHITE);
        }
        // Edge lines of the lanes.
        if (x - self.lanes_edge.0).abs() < 0.075 || (x - self.lanes_edge.1).abs() < 0.075 {
            return Some(WHITE);
        }
        let mut left_x = self.lanes_edge.0;
        for (i, lane) in road.lanes.iter().enumerate() {
            if i > 0 {
                let divider = (left_x - road.divider_x_m).abs() < 1e-6;
                if divider {
                    match road.centre_line {
                        CentreLine::SolidWhite if (x - left_x).abs() < 0.075 => return Some(WHITE),
                        CentreLine::DoubleYellow if ((x - left_x).abs() - 0.11).abs() < 0.055 => {
                            return Some(YELLOW);
                        }
                        CentreLine::Dashed if (x - left_x).abs() < 0.075 && dashed(z) => return Some(WHITE),
                        _ => {}
                    }
                } else if (x - left_x).abs() < 0.06 && dashed(z) {
                    return Some(WHITE);
                }
            }
            left_x += lane.width_m;
        }
        // Tram rails (standard gauge) with their grooves.
        if let Some(tl) = road.tram_lane
            && let Some(lane) = road.lanes.get(tl)
        {
            let d = ((x - lane.centre_x_m).abs() - 0.7175).abs();
            if d < 0.035 {
                return Some([0.55, 0.55, 0.56]);
            }
            if d < 0.07 {
                return Some([0.12, 0.12, 0.12]);
            }
        }
        None
    }
}

/// Sun shadows of scenery and objects on the ground: for each box, the convex hull of its corners
/// projected along the sun direction onto the road plane, darkened to ambient light only. Each
/// ground pixel is darkened at most once.
fn draw_shadows(
    world: &World,
    rig: &CameraRig,
    cam_from_road: &Isometry3<f64>,
    t_s: f64,
    raster: &mut Raster,
) {
    let k = &rig.intrinsics;
    let sun = world.sky.sun_dir_road;
    if sun.y > -0.1 {
        return;
    }
    let lit = world.sky.ambient + world.sky.sun * (-sun.y) as f32;
    let factor = world.sky.ambient / lit;
    raster.begin_stamp();
    let cam_z = rig.z_m;
    let mut boxes: Vec<(f64, f64, f64, [f64; 3], f64)> = Vec::new();
    for prop in &world.props {
        if prop.z_m + 0.5 * prop.hwl_m[2] < cam_z - 30.0 || prop.z_m - cam_z > MAX_PROP_DISTANCE_M {
            continue;
        }
        boxes.push((prop.x_m, prop.z_m, prop.base_m, prop.hwl_m, prop.heading_rad));
    }
    for actor in &world.actors {
        let (x, z) = actor.position_at(t_s);
        if (z - cam_z) < -15.0 || (z - cam_z) > MAX_OBJECT_DEPTH_M + 10.0 {
            continue;
        }
        boxes.push((x, z, 0.0, actor.hwl_m, actor.heading_rad));
    }
    for (x, z, base, [h, w, l], heading) in boxes {
        let (s, c) = heading.sin_cos();
        let mut pts: Vec<[f64; 2]> = Vec::with_capacity(8);
        for (dl, dw) in [(0.5, 0.5), (0.5, -0.5), (-0.5, -0.5), (-0.5, 0.5)] {
            let (px, pz) = (x + c * dl * l + s * dw * w, z - s * dl * l + c * dw * w);
            for height in [base, base + h] {
                // Move from (px, -height, pz) away from the sun until Y = 0.
                let run = height / -sun.y;
                pts.push([px - sun.x * run, pz - sun.z * run]);
            }
        }
        let hull = convex_hull(&mut pts);
        if hull.len() < 3 {
            continue;
        }
        let to_vertex =
            |p: &[f64; 2]| Vertex { p_cam: cam_from_road * Point3::new(p[0], 0.0, p[1]), st: [0.0; 2] };
        let first = to_vertex(&hull[0]);
        for pair in hull[1..].windows(2) {
            let tri = [first, to_vertex(&pair[0]), to_vertex(&pair[1])];
            raster.darken_triangle(k, &tri, factor);
        }
    }
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in `(x, y)`, without repeated points.
pub fn convex_hull(points: &mut [[f64; 2]]) -> Vec<[f64; 2]> {
    points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let cross = |o: &[f64; 2], a: &[f64; 2], b: &[f64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(points.len() * 2);
    for p in points.iter() {
        while hull.len() >= 2 && cross(&hull[hull.len() - 2], &hull[hull.len() - 1], p) <= 0.0 {
            hull.pop();
        }
        hull.push(*p);
    }
    let lower_len = hull.len() + 1;
    for p in points.iter().rev().skip(1) {
        while hull.len() >= lower_len && cross(&hull[hull.len() - 2], &hull[hull.len() - 1], p) <= 0.0 {
            hull.pop();
        }
        hull.push(*p);
    }
    hull.pop();
    hull
}
