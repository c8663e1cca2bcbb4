//! Scene sampling: camera presets and rigs, the road, the scenery beside it and the objects on it.
//!
//! # Frames
//! - **Road frame**: X across the road (right), Y down (the road surface is `Y = 0`), Z along the
//!   road in the direction the ego lanes drive; metres. The world is sampled in it.
//! - **Camera frame** (KITTI): x right, y down, z forward. `cam_from_road` is the camera rig's
//!   pose: height above the road, a small pitch (nose down positive), roll and a heading offset.
//!
//! # Tilt and yaw-only labels
//! KITTI labels are yaw-only in the (rectified) camera frame: boxes stand upright along camera y.
//! We keep that exactly: every drawn box (objects and scenery) is a yaw-only box in the camera frame,
//! and the *road plane* carries the camera's pitch and roll (at most [`MAX_PITCH_RAD`] and
//! [`MAX_ROLL_RAD`]: a slight grade and camber under an upright world). An object's bottom centre
//! lies on the road plane; its ends are off the plane by at most `l/2 * tan(tilt)` (3 cm for a car,
//! 14 cm for a 16 m tram at the largest tilt), as in KITTI, whose road is not exactly level either.
//! Headings are sampled in the road frame; the label yaw is the heading direction mapped into the
//! camera frame and measured about camera y.

use std::f64::consts::{FRAC_PI_2, PI};

use monovlm_calib::kitti::KittiCalib;
use monovlm_calib::{Box3d, Intrinsics, bev_intersection_area, wrap_angle};
use nalgebra::{Isometry3, Matrix3, Point3, Rotation3, Translation3, UnitQuaternion, Vector3};

use super::rng::Rng;
use crate::error::Result;

/// Largest camera pitch relative to the road (radians; 1 degree).
pub const MAX_PITCH_RAD: f64 = 1.0 * PI / 180.0;
/// Largest camera roll relative to the road (radians; 0.5 degree).
pub const MAX_ROLL_RAD: f64 = 0.5 * PI / 180.0;
/// Largest camera heading offset from the road direction (radians; 3 degrees).
pub const MAX_HEADING_RAD: f64 = 3.0 * PI / 180.0;
/// KITTI's stereo baseline between the reference camera 0 and camera 1, metres.
const KITTI_BASELINE_M: f64 = 0.537;
/// Objects are placed this far ahead of the camera at most (metres along the road).
const MAX_OBJECT_AHEAD_M: f64 = 75.0;
/// Objects are placed at least this far ahead of the camera (metres along the road).
const MIN_OBJECT_AHEAD_M: f64 = 3.0;
/// Scenery is placed up to this far ahead (metres): beyond it the haze hides everything.
const SCENERY_AHEAD_M: f64 = 260.0;
/// Our lane is kept free for this distance ahead of the camera (metres).
const EGO_LANE_CLEAR_M: f64 = 8.0;
/// Free space kept around every object footprint when placing (metres, added to l and w).
const PLACEMENT_CLEARANCE_M: f64 = 0.6;

/// The camera models the generator imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CameraPreset {
    /// KITTI's left colour camera: 1242x375, fx ~ 721, with the `P2` translation (tx ~ -6 cm).
    #[default]
    Kitti,
    /// A 1280x720 dash camera, fx ~ 1000 (about 65 degrees horizontal field of view).
    Hd,
    /// A 640x480 camera, fx ~ 525.
    Vga,
}

impl CameraPreset {
    /// Image size `(width, height)` in pixels.
    pub fn size_px(self) -> (u32, u32) {
        match self {
            CameraPreset::Kitti => (1242, 375),
            CameraPreset::Hd => (1280, 720),
            CameraPreset::Vga => (640, 480),
        }
    }

    /// The preset's name on the command line (`kitti`, `hd`, `vga`).
    pub fn name(self) -> &'static str {
        match self {
            CameraPreset::Kitti => "kitti",
            CameraPreset::Hd => "hd",
            CameraPreset::Vga => "vga",
        }
    }

    /// Intrinsics of one image: the preset's nominal values jittered a little (focal length +-3%,
    /// principal point by a few pixels, KITTI's `P2` offset by a few millimetres), so that a model
    /// must read them.
    ///
    /// # Errors
    /// Never for the presets' values; [`crate::Error::Calib`] if `Intrinsics` rejected them.
    pub fn sample_intrinsics(self, rng: &mut Rng) -> Result<Intrinsics> {
        let (w, h) = self.size_px();
        let (f_nominal, cx, cy) = match self {
            CameraPreset::Kitti => (721.5377, 609.5593, 172.854),
            CameraPreset::Hd => (1000.0, 640.0, 360.0),
            CameraPreset::Vga => (525.0, 320.0, 240.0),
        };
        let f = f_nominal * rng.range(0.97, 1.03);
        let k = Intrinsics::new(
            f,
            f,
            cx + rng.range(-0.012, 0.012) * w as f64,
            cy + rng.range(-0.015, 0.015) * h as f64,
            w,
            h,
        )?;
        Ok(match self {
            // KITTI: P2[0,3] = 44.86 -> tx = -0.0622 m; P2[1,3] = 0.216 -> ty = -0.0003 m.
            CameraPreset::Kitti => k.with_offset_m(rng.range(-0.066, -0.058), -0.0003)?,
            CameraPreset::Hd | CameraPreset::Vga => k,
        })
    }
}

impl std::str::FromStr for CameraPreset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "kitti" => Ok(CameraPreset::Kitti),
            "hd" => Ok(CameraPreset::Hd),
            "vga" => Ok(CameraPreset::Vga),
            other => Err(format!("unknown camera {other:?}: expected kitti, hd or vga")),
        }
    }
}

/// A KITTI calibration file for camera intrinsics `k` (the camera is `P2`): `P0` is the reference
/// camera (no offset), `P1` and `P3` sit a KITTI stereo baseline to the right of `P0` and `P2`,
/// `R0_rect` is the identity and `Tr_velo_to_cam` is `[I | 0]`.
///
/// # Errors
/// [`crate::Error::Calib`] when an offset is not finite.
pub fn kitti_calib(k: &Intrinsics) -> Result<KittiCalib> {
    let (tx, ty) = k.offset_m();
    let p = |tx_m: f64, ty_m: f64| -> Result<[[f64; 4]; 3]> {
        // `+ 0.0` turns the -0.0 of a zero offset into 0.0 in the file.
        Ok(k.clone().with_offset_m(tx_m, ty_m)?.projection_matrix().map(|row| row.map(|v| v + 0.0)))
    };
    Ok(KittiCalib {
        p: [p(0.0, 0.0)?, p(KITTI_BASELINE_M, 0.0)?, p(tx, ty)?, p(KITTI_BASELINE_M + tx, ty)?],
        r0_rect: Some([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        tr_velo_to_cam: Some([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
        tr_imu_to_velo: None,
    })
}

/// Where the camera is and how it is mounted.
#[derive(Clone, Debug)]
pub struct CameraRig {
    /// The camera's intrinsics (with the KITTI offset for the `kitti` preset).
    pub intrinsics: Intrinsics,
    /// Height of the reference camera above the road, metres.
    pub height_m: f64,
    /// Nose-down rotation about the camera x axis, radians.
    pub pitch_rad: f64,
    /// Rotation about the optical axis, radians (positive turns the image clockwise).
    pub roll_rad: f64,
    /// Heading offset from the road direction, radians (positive looks to the right).
    pub heading_rad: f64,
    /// Lateral position in the road frame, metres.
    pub x_m: f64,
    /// Position along the road, metres.
    pub z_m: f64,
}

impl CameraRig {
    /// The rotation that maps road-frame vectors into the camera frame.
    pub fn cam_from_road_rotation(&self) -> Rotation3<f64> {
        let (sg, cg) = self.heading_rad.sin_cos();
        let (st, ct) = self.pitch_rad.sin_cos();
        let (sr, cr) = self.roll_rad.sin_cos();
        // Level camera axes in the road frame.
        let forward0 = Vector3::new(sg, 0.0, cg);
        let right0 = Vector3::new(cg, 0.0, -sg);
        let down0 = Vector3::new(0.0, 1.0, 0.0);
        // Pitch (nose down) about the right axis, then roll about the new forward axis.
        let forward = forward0 * ct + down0 * st;
        let down1 = down0 * ct - forward0 * st;
        let right = right0 * cr + down1 * sr;
        let down = down1 * cr - right0 * sr;
        Rotation3::from_matrix_unchecked(Matrix3::from_rows(&[
            right.transpose(),
            down.transpose(),
            forward.transpose(),
        ]))
    }

    /// The rigid transform `p_cam = cam_from_road * p_road`.
    pub fn cam_from_road(&self) -> Isometry3<f64> {
        let rotation = self.cam_from_road_rotation();
        let centre_road = Vector3::new(self.x_m, -self.height_m, self.z_m);
        let translation = -(rotation * centre_road);
        Isometry3::from_parts(
            Translation3::from(translation),
            UnitQuaternion::from_rotation_matrix(&rotation),
        )
    }
}

/// The object classes of Mono3DRefer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjClass {
    /// Passenger car.
    Car,
    /// Van or minibus.
    Van,
    /// Lorry.
    Truck,
    /// Tram (runs on rails in a lane).
    Tram,
    /// Walking or standing person.
    Pedestrian,
    /// Seated person.
    PersonSitting,
    /// Person on a bicycle.
    Cyclist,
    /// Person on a motorcycle (KITTI type `Cyclist`, Mono3DRefer `motorcyclist`).
    Motorcyclist,
    /// Anything else (trailers, containers): labelled, never described (the Mono3DVG code's class
    /// table has no `misc`).
    Misc,
}

impl ObjClass {
    /// Every class.
    pub const ALL: [ObjClass; 9] = [
        ObjClass::Car,
        ObjClass::Van,
        ObjClass::Truck,
        ObjClass::Tram,
        ObjClass::Pedestrian,
        ObjClass::PersonSitting,
        ObjClass::Cyclist,
        ObjClass::Motorcyclist,
        ObjClass::Misc,
    ];

    /// The KITTI `label_2` type.
    pub fn kitti_type(self) -> &'static str {
        match self {
            ObjClass::Car => "Car",
            ObjClass::Van => "Van",
            ObjClass::Truck => "Truck",
            ObjClass::Tram => "Tram",
            ObjClass::Pedestrian => "Pedestrian",
            ObjClass::PersonSitting => "Person_sitting",
            ObjClass::Cyclist | ObjClass::Motorcyclist => "Cyclist",
            ObjClass::Misc => "Misc",
        }
    }

    /// The Mono3DRefer `objectName`.
    pub fn object_name(self) -> &'static str {
        match self {
            ObjClass::Car => "car",
            ObjClass::Van => "van",
            ObjClass::Truck => "truck",
            ObjClass::Tram => "tram",
            ObjClass::Pedestrian => "pedestrian",
            ObjClass::PersonSitting => "person_sitting",
            ObjClass::Cyclist => "cyclist",
            ObjClass::Motorcyclist => "motorcyclist",
            ObjClass::Misc => "misc",
        }
    }

    /// The noun used in descriptions.
    pub fn noun(self) -> &'static str {
        match self {
            ObjClass::PersonSitting => "seated person",
            ObjClass::Misc => "object",
            other => other.object_name(),
        }
    }

    /// Motor vehicles (cars, vans, trucks, trams, trailers): they park, drive and are coloured.
    pub fn is_vehicle(self) -> bool {
        matches!(self, ObjClass::Car | ObjClass::Van | ObjClass::Truck | ObjClass::Tram | ObjClass::Misc)
    }

    /// Classes whose named colour is their clothing (people and riders).
    pub fn is_person(self) -> bool {
        matches!(
            self,
            ObjClass::Pedestrian | ObjClass::PersonSitting | ObjClass::Cyclist | ObjClass::Motorcyclist
        )
    }

    /// Mean and standard deviation of `(h, w, l)` in metres (KITTI statistics; motorcyclists and
    /// misc objects estimated).
    fn size_stats(self) -> [(f64, f64); 3] {
        match self {
            ObjClass::Car => [(1.53, 0.12), (1.63, 0.09), (3.88, 0.38)],
            ObjClass::Van => [(2.2, 0.25), (1.9, 0.12), (5.1, 0.5)],
            ObjClass::Truck => [(3.2, 0.35), (2.5, 0.1), (9.0, 2.0)],
            ObjClass::Tram => [(3.5, 0.15), (2.55, 0.06), (15.0, 2.0)],
            ObjClass::Pedestrian => [(1.75, 0.1), (0.62, 0.08), (0.75, 0.15)],
            ObjClass::PersonSitting => [(1.27, 0.08), (0.55, 0.06), (0.8, 0.1)],
            ObjClass::Cyclist => [(1.74, 0.08), (0.6, 0.07), (1.76, 0.12)],
            ObjClass::Motorcyclist => [(1.55, 0.08), (0.8, 0.08), (2.1, 0.15)],
            ObjClass::Misc => [(1.8, 0.4), (1.8, 0.3), (3.0, 0.8)],
        }
    }

    /// A size `(h, w, l)` drawn from the class statistics (within 2 standard deviations).
    pub fn sample_hwl_m(self, rng: &mut Rng) -> [f64; 3] {
        self.size_stats().map(|(mean, sd)| rng.normal_clamped(mean, sd).max(0.2))
    }
}

/// The colour names descriptions use, each with a base sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColourName {
    /// White.
    White,
    /// Black.
    Black,
    /// Grey or silver.
    Grey,
    /// Red.
    Red,
    /// Blue.
    Blue,
    /// Green.
    Green,
    /// Yellow.
    Yellow,
    /// Orange.
    Orange,
    /// Brown.
    Brown,
}

impl ColourName {
    /// Every colour.
    pub const ALL: [ColourName; 9] = [
        ColourName::White,
        ColourName::Black,
        ColourName::Grey,
        ColourName::Red,
        ColourName::Blue,
        ColourName::Green,
        ColourName::Yellow,
        ColourName::Orange,
        ColourName::Brown,
    ];

    /// The word used in descriptions.
    pub fn name(self) -> &'static str {
        match self {
            ColourName::White => "white",
            ColourName::Black => "black",
            ColourName::Grey => "grey",
            ColourName::Red => "red",
            ColourName::Blue => "blue",
            ColourName::Green => "green",
            ColourName::Yellow => "yellow",
            ColourName::Orange => "orange",
            ColourName::Brown => "brown",
        }
    }

    /// The base colour, sRGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            ColourName::White => [0.92, 0.92, 0.9],
            ColourName::Black => [0.08, 0.08, 0.09],
            ColourName::Grey => [0.55, 0.56, 0.58],
            ColourName::Red => [0.72, 0.08, 0.07],
            ColourName::Blue => [0.1, 0.22, 0.62],
            ColourName::Green => [0.12, 0.48, 0.18],
            ColourName::Yellow => [0.92, 0.8, 0.1],
            ColourName::Orange => [0.92, 0.45, 0.08],
            ColourName::Brown => [0.42, 0.26, 0.13],
        }
    }

    /// The base colour jittered a little (brightness and hue stay within the name).
    fn sample_rgb(self, rng: &mut Rng) -> [f32; 3] {
        let gain = rng.range(0.9, 1.08) as f32;
        self.rgb().map(|c| (c * gain + rng.range(-0.025, 0.025) as f32).clamp(0.0, 1.0))
    }
}

/// How an object was placed, which descriptions may mention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Driving in lane `lane` (index into [`Road::lanes`]).
    Lane(usize),
    /// Parked at the kerb (`left`: on the left side of the road).
    Parked {
        /// On the left side of the road.
        left: bool,
    },
    /// On a sidewalk (`left`: the left one).
    Sidewalk {
        /// On the left sidewalk.
        left: bool,
    },
    /// Crossing the road.
    Crossing,
}

/// The colours of an object's surfaces; `primary` is the colour its name gives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Appearance {
    /// Body colour (vehicles) or upper clothing (people, riders), sRGB.
    pub primary: [f32; 3],
    /// Trousers (people), the bicycle or motorcycle (riders), trim (vehicles), sRGB.
    pub secondary: [f32; 3],
    /// Skin, sRGB.
    pub skin: [f32; 3],
    /// Hair or helmet, sRGB.
    pub hair: [f32; 3],
}

/// One object of the world, in the road frame, moving at constant velocity.
#[derive(Clone, Debug, PartialEq)]
pub struct Actor {
    /// Its class.
    pub class: ObjClass,
    /// The colour descriptions name it by.
    pub colour: ColourName,
    /// Surface colours.
    pub appearance: Appearance,
    /// Size `(h, w, l)`, metres.
    pub hwl_m: [f64; 3],
    /// How it was placed.
    pub placement: Placement,
    /// Bottom-centre X at time 0, road frame, metres.
    pub x0_m: f64,
    /// Bottom-centre Z at time 0, road frame, metres.
    pub z0_m: f64,
    /// Heading about the road's vertical axis, radians, KITTI's convention in the road frame:
    /// direction `(cos, 0, -sin)`; `-pi/2` drives along +Z.
    pub heading_rad: f64,
    /// Speed along the heading, m/s (0 when parked or standing).
    pub speed_mps: f64,
}

impl Actor {
    /// Bottom centre `(X, Z)` in the road frame at time `t_s`.
    pub fn position_at(&self, t_s: f64) -> (f64, f64) {
        let (s, c) = self.heading_rad.sin_cos();
        (self.x0_m + self.speed_mps * t_s * c, self.z0_m - self.speed_mps * t_s * s)
    }

    /// True when it moves.
    pub fn is_moving(&self) -> bool {
        self.speed_mps > 0.0
    }

    /// The footprint in the road frame at time `t_s`, grown by `clearance_m`, as a box for
    /// [`bev_intersection_area`].
    fn footprint(&self, t_s: f64, clearance_m: f64) -> Option<Box3d> {
        let (x, z) = self.position_at(t_s);
        let [h, w, l] = self.hwl_m;
        Box3d::new(x, -0.5 * h, z, l + clearance_m, w + clearance_m, h, self.heading_rad).ok()
    }
}

/// The surface of a scenery part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PropKind {
    /// A building block with a window grid.
    Building {
        /// Wall colour, sRGB.
        wall: [f32; 3],
        /// Texture seed (window variation).
        seed: u32,
    },
    /// A tree trunk.
    Trunk,
    /// A tree crown.
    Foliage {
        /// Leaf colour, sRGB.
        leaf: [f32; 3],
        /// Texture seed.
        seed: u32,
    },
    /// A street-lamp pole or arm.
    Pole,
}

/// One box of scenery (never labelled; it occludes objects), road frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Prop {
    /// Surface.
    pub kind: PropKind,
    /// Bottom-centre X, metres.
    pub x_m: f64,
    /// Bottom-centre Z, metres.
    pub z_m: f64,
    /// Height of the bottom above the road, metres.
    pub base_m: f64,
    /// Size `(h, w, l)`, metres (`l` along the heading).
    pub hwl_m: [f64; 3],
    /// Heading, radians (as [`Actor::heading_rad`]).
    pub heading_rad: f64,
}

/// One traffic lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    /// Lateral centre, road frame X, metres.
    pub centre_x_m: f64,
    /// Width, metres.
    pub width_m: f64,
    /// Traffic drives along +Z (`true`) or towards -Z.
    pub forward: bool,
}

/// The line between the two directions of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CentreLine {
    /// One solid white line.
    SolidWhite,
    /// Two solid yellow lines.
    DoubleYellow,
    /// A dashed white line.
    Dashed,
}

/// What lies beyond the sidewalks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verge {
    /// Grass (with trees).
    Grass([f32; 3]),
    /// Paved plots (with buildings).
    Paved([f32; 3]),
}

/// A straight road: lanes, optional parking strips, kerbs, sidewalks and verges.
#[derive(Clone, Debug, PartialEq)]
pub struct Road {
    /// Lanes from left to right.
    pub lanes: Vec<Lane>,
    /// Width of the parking strip on the left (0: none), metres.
    pub parking_left_m: f64,
    /// Width of the parking strip on the right (0: none), metres.
    pub parking_right_m: f64,
    /// Kerb width, metres.
    pub kerb_m: f64,
    /// Sidewalk width, metres.
    pub sidewalk_m: f64,
    /// X of the line between the directions, metres.
    pub divider_x_m: f64,
    /// Style of that line.
    pub centre_line: CentreLine,
    /// Asphalt colour, sRGB.
    pub asphalt: [f32; 3],
    /// Sidewalk colour, sRGB.
    pub sidewalk: [f32; 3],
    /// Beyond the sidewalks.
    pub verge: Verge,
    /// The lane with tram rails, if any.
    pub tram_lane: Option<usize>,
    /// Z of a zebra crossing, if any.
    pub crosswalk_z_m: Option<f64>,
}

impl Road {
    /// X of the left and right edges of the carriageway (lanes plus parking strips), metres.
    pub fn carriageway_x_m(&self) -> (f64, f64) {
        let lanes_w: f64 = self.lanes.iter().map(|l| l.width_m).sum();
        (-0.5 * lanes_w - self.parking_left_m, 0.5 * lanes_w + self.parking_right_m)
    }

    /// X of the outer edges of the sidewalks, metres.
    pub fn sidewalk_outer_x_m(&self) -> (f64, f64) {
        let (l, r) = self.carriageway_x_m();
        (l - self.kerb_m - self.sidewalk_m, r + self.kerb_m + self.sidewalk_m)
    }

    /// How far `x_m` lies outside the carriageway (positive: kerb or sidewalk side), metres.
    pub fn outside_carriageway_m(&self, x_m: f64) -> f64 {
        let (l, r) = self.carriageway_x_m();
        (l - x_m).max(x_m - r)
    }

    fn sample(rng: &mut Rng, allow_tram: bool) -> Self {
        let n = [2usize, 2, 3, 4][rng.below(4)];
        let n_back = if n == 4 { 2 } else { 1 };
        let widths: Vec<f64> = (0..n).map(|_| rng.range(3.1, 3.7)).collect();
        let total: f64 = widths.iter().sum();
        let mut x = -0.5 * total;
        let mut lanes = Vec::with_capacity(n);
        for (i, w) in widths.iter().enumerate() {
            lanes.push(Lane { centre_x_m: x + 0.5 * w, width_m: *w, forward: i >= n_back });
            x += w;
        }
        let divider_x_m = -0.5 * total + widths.iter().take(n_back).sum::<f64>();
        let parking_left_m = if rng.chance(0.5) { rng.range(2.0, 2.4) } else { 0.0 };
        let parking_right_m = if rng.chance(0.6) { rng.range(2.0, 2.4) } else { 0.0 };
        let centre_line =
            [CentreLine::SolidWhite, CentreLine::DoubleYellow, CentreLine::Dashed][rng.below(3)];
        let a = rng.range(0.24, 0.36) as f32;
        let asphalt = [a, a, a * rng.range(1.0, 1.06) as f32];
        let s = rng.range(0.55, 0.7) as f32;
        let sidewalk = [s, s * 0.97, s * rng.range(0.88, 0.96) as f32];
        let verge = if rng.chance(0.6) {
            Verge::Paved([0.5, 0.48, 0.45])
        } else {
            Verge::Grass([rng.range(0.2, 0.3) as f32, rng.range(0.38, 0.48) as f32, 0.15])
        };
        // Trams run in the leftmost forward lane.
        let tram_lane = (allow_tram && rng.chance(0.2)).then_some(n_back);
        let crosswalk_z_m = rng.chance(0.3).then(|| rng.range(12.0, 45.0));
        Road {
            lanes,
            parking_left_m,
            parking_right_m,
            kerb_m: 0.25,
            sidewalk_m: rng.range(2.6, 4.2),
            divider_x_m,
            centre_line,
            asphalt,
            sidewalk,
            verge,
            tram_lane,
            crosswalk_z_m,
        }
    }
}

/// Light and atmosphere.
#[derive(Clone, Debug, PartialEq)]
pub struct Sky {
    /// Direction towards the sun, road frame (unit, Y negative: above the horizon).
    pub sun_dir_road: Vector3<f64>,
    /// Sun strength (diffuse term on a surface facing it).
    pub sun: f32,
    /// Ambient light on a horizontal surface.
    pub ambient: f32,
    /// Sky colour at the horizon (also the haze colour), sRGB.
    pub horizon: [f32; 3],
    /// Sky colour overhead, sRGB.
    pub zenith: [f32; 3],
    /// Distance at which haze covers 63% of a surface, metres.
    pub haze_m: f64,
}

impl Sky {
    fn sample(rng: &mut Rng) -> Self {
        let elevation = rng.range(20.0_f64, 65.0).to_radians();
        let azimuth = rng.range(0.0, std::f64::consts::TAU);
        let (se, ce) = elevation.sin_cos();
        let overcast = rng.chance(0.3);
        let horizon = if overcast { [0.78, 0.8, 0.82] } else { [0.75, 0.83, 0.92] };
        let zenith = if overcast { [0.62, 0.65, 0.7] } else { [0.32, 0.5, 0.82] };
        Sky {
            sun_dir_road: Vector3::new(ce * azimuth.cos(), -se, ce * azimuth.sin()),
            sun: if overcast { rng.range(0.15, 0.3) as f32 } else { rng.range(0.45, 0.6) as f32 },
            ambient: if overcast { rng.range(0.7, 0.8) as f32 } else { rng.range(0.5, 0.6) as f32 },
            horizon,
            zenith,
            haze_m: rng.range(250.0, 600.0),
        }
    }
}

/// Everything in a scene except the camera: road, scenery, objects, light.
#[derive(Clone, Debug, PartialEq)]
pub struct World {
    /// The road.
    pub road: Road,
    /// The scenery.
    pub props: Vec<Prop>,
    /// The objects.
    pub actors: Vec<Actor>,
    /// Light and atmosphere.
    pub sky: Sky,
    /// The lane the camera drives in.
    pub ego_lane: usize,
}

/// Class weights for objects in lanes.
const LANE_CLASSES: [(ObjClass, f64); 5] = [
    (ObjClass::Car, 0.7),
    (ObjClass::Van, 0.12),
    (ObjClass::Truck, 0.08),
    (ObjClass::Cyclist, 0.06),
    (ObjClass::Motorcyclist, 0.04),
];
/// Class weights for parked objects.
const PARKED_CLASSES: [(ObjClass, f64); 4] =
    [(ObjClass::Car, 0.75), (ObjClass::Van, 0.13), (ObjClass::Truck, 0.04), (ObjClass::Misc, 0.08)];
/// Class weights for objects on sidewalks.
const SIDEWALK_CLASSES: [(ObjClass, f64); 4] = [
    (ObjClass::Pedestrian, 0.72),
    (ObjClass::PersonSitting, 0.13),
    (ObjClass::Cyclist, 0.1),
    (ObjClass::Misc, 0.05),
];

fn pick_class(rng: &mut Rng, table: &[(ObjClass, f64)]) -> ObjClass {
    let weights: Vec<f64> = table.iter().map(|(_, w)| *w).collect();
    table.get(rng.weighted(&weights)).map_or(ObjClass::Car, |(c, _)| *c)
}

/// Colour-name weights for vehicles (white, black and grey dominate, as on real roads).
const VEHICLE_COLOURS: [(ColourName, f64); 9] = [
    (ColourName::White, 0.24),
    (ColourName::Black, 0.16),
    (ColourName::Grey, 0.2),
    (ColourName::Red, 0.12),
    (ColourName::Blue, 0.12),
    (ColourName::Green, 0.05),
    (ColourName::Yellow, 0.04),
    (ColourName::Orange, 0.03),
    (ColourName::Brown, 0.04),
];
/// Colour-name weights for clothing.
const CLOTHING_COLOURS: [(ColourName, f64); 9] = [
    (ColourName::White, 0.12),
    (ColourName::Black, 0.18),
    (ColourName::Grey, 0.12),
    (ColourName::Red, 0.14),
    (ColourName::Blue, 0.16),
    (ColourName::Green, 0.1),
    (ColourName::Yellow, 0.07),
    (ColourName::Orange, 0.06),
    (ColourName::Brown, 0.05),
];

fn pick_colour(rng: &mut Rng, table: &[(ColourName, f64)]) -> ColourName {
    let weights: Vec<f64> = table.iter().map(|(_, w)| *w).collect();
    table.get(rng.weighted(&weights)).map_or(ColourName::Grey, |(c, _)| *c)
}

fn sample_appearance(rng: &mut Rng, class: ObjClass) -> (ColourName, Appearance) {
    let colour = if class.is_person() {
        pick_colour(rng, &CLOTHING_COLOURS)
    } else {
        pick_colour(rng, &VEHICLE_COLOURS)
    };
    let primary = colour.sample_rgb(rng);
    let secondary = if class.is_person() {
        // Trousers: dark blue, black, grey, beige.
        let t = [[0.12, 0.16, 0.3], [0.08, 0.08, 0.09], [0.35, 0.35, 0.36], [0.62, 0.55, 0.42]];
        t[rng.below(t.len())]
    } else {
        [0.1, 0.1, 0.11]
    };
    let skin_tones = [[0.93, 0.76, 0.62], [0.8, 0.6, 0.45], [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]];
    let hairs = [[0.1, 0.07, 0.05], [0.35, 0.22, 0.1], [0.7, 0.58, 0.3], [0.5, 0.5, 0.5]];
    let skin = skin_tones[rng.below(skin_tones.len())];
    let hair = if matches!(class, ObjClass::Cyclist | ObjClass::Motorcyclist) {
        // Helmet.
        [[0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.8, 0.1, 0.1]][rng.below(3)]
    } else {
        hairs[rng.below(hairs.len())]
    };
    (colour, Appearance { primary, secondary, skin, hair })
}

/// Parameters of a world sample: where the camera is and which stretch of road must be populated.
#[derive(Clone, Copy, Debug)]
struct Extent {
    /// Camera position along the road at time 0.
    cam_z0_m: f64,
    /// Camera speed along +Z, m/s (0 for single images).
    ego_speed_mps: f64,
    /// Duration covered, seconds (0 for single images).
    duration_s: f64,
}

impl World {
    /// A world around a camera at `Z = 0` for one image; returns the world and the camera rig.
    ///
    /// # Errors
    /// As [`CameraPreset::sample_intrinsics`].
    pub fn sample_single(rng: &mut Rng, preset: CameraPreset) -> Result<(World, CameraRig)> {
        let extent = Extent { cam_z0_m: 0.0, ego_speed_mps: 0.0, duration_s: 0.0 };
        let n_objects = 5 + rng.below(12);
        Self::sample(rng, preset, extent, n_objects)
    }

    /// A world for a drive of `frames` frames at `fps` frames per second: a camera moving along its
    /// lane at a constant speed, objects moving along lanes and sidewalks, parked cars standing.
    ///
    /// # Errors
    /// As [`CameraPreset::sample_intrinsics`].
    pub fn sample_sequence(
        rng: &mut Rng,
        preset: CameraPreset,
        frames: u32,
        fps: f64,
    ) -> Result<(World, CameraRig, f64)> {
        let ego_speed_mps = rng.range(7.0, 13.0);
        let duration_s = f64::from(frames) / fps;
        let extent = Extent { cam_z0_m: 0.0, ego_speed_mps, duration_s };
        // Keep about the density of a single image over the whole stretch.
        let stretch_m = ego_speed_mps * duration_s + MAX_OBJECT_AHEAD_M;
        let n_objects = ((stretch_m / MAX_OBJECT_AHEAD_M) * 10.0).round() as usize;
        let (world, rig) = Self::sample(rng, preset, extent, n_objects.clamp(8, 4000))?;
        Ok((world, rig, ego_speed_mps))
    }

    fn sample(
        rng: &mut Rng,
        preset: CameraPreset,
        extent: Extent,
        n_objects: usize,
    ) -> Result<(World, CameraRig)> {
        let road = Road::sample(rng, true);
        let forward: Vec<usize> =
            road.lanes.iter().enumerate().filter(|(_, l)| l.forward).map(|(i, _)| i).collect();
        let ego_lane = rng.pick(&forward).copied().unwrap_or(0);
        let ego_x = road.lanes.get(ego_lane).map_or(0.0, |l| l.centre_x_m) + rng.range(-0.2, 0.2);
        let rig = CameraRig {
            intrinsics: preset.sample_intrinsics(rng)?,
            height_m: rng.range(1.4, 1.8),
            pitch_rad: rng.range(-MAX_PITCH_RAD, MAX_PITCH_RAD),
            roll_rad: rng.range(-MAX_ROLL_RAD, MAX_ROLL_RAD),
            heading_rad: if extent.ego_speed_mps > 0.0 {
                rng.range(-0.3, 0.3) * MAX_HEADING_RAD
            } else {
                rng.range(-MAX_HEADING_RAD, MAX_HEADING_RAD)
            },
            x_m: ego_x,
            z_m: extent.cam_z0_m,
        };
        let sky = Sky::sample(rng);
        let mut world = World { road, props: Vec::new(), actors: Vec::new(), sky, ego_lane };
        world.sample_props(rng, extent);
        world.sample_actors(rng, extent, ego_x, n_objects);
        Ok((world, rig))
    }

    fn sample_props(&mut self, rng: &mut Rng, extent: Extent) {
        let z_lo = extent.cam_z0_m - 20.0;
        let z_hi = extent.cam_z0_m + extent.ego_speed_mps * extent.duration_s + SCENERY_AHEAD_M;
        let (left_out, right_out) = self.road.sidewalk_outer_x_m();
        let (left_kerb, right_kerb) = self.road.carriageway_x_m();
        for left in [true, false] {
            let sign = if left { -1.0 } else { 1.0 };
            let outer = if left { left_out } else { right_out };
            let kerb = if left { left_kerb } else { right_kerb };
            match self.road.verge {
                Verge::Paved(_) => {
                    let mut z = z_lo - rng.range(0.0, 10.0);
                    while z < z_hi {
                        let len = rng.range(8.0, 26.0);
                        let depth = rng.range(8.0, 14.0);
                        let setback = rng.range(0.0, 3.0);
                        let g = rng.range(0.45, 0.8) as f32;
                        let tint = [g * rng.range(0.95, 1.1) as f32, g, g * rng.range(0.8, 1.0) as f32];
                        self.props.push(Prop {
                            kind: PropKind::Building { wall: tint, seed: rng.next_u64() as u32 },
                            x_m: outer + sign * (setback + 0.5 * depth),
                            z_m: z + 0.5 * len,
                            base_m: 0.0,
                            hwl_m: [rng.range(6.0, 22.0), depth, len],
                            heading_rad: -FRAC_PI_2,
                        });
                        z += len + if rng.chance(0.3) { rng.range(3.0, 12.0) } else { 0.3 };
                    }
                }
                Verge::Grass(_) => {
                    let mut z = z_lo + rng.range(0.0, 8.0);
                    while z < z_hi {
                        let x = outer + sign * rng.range(1.0, 6.0);
                        self.push_tree(rng, x, z);
                        z += rng.range(6.0, 16.0);
                    }
                }
            }
            // Street lamps at the kerb (outside the kerb strip, on the sidewalk).
            let mut z = z_lo + rng.range(0.0, 30.0);
            let lamp_x = kerb + sign * (self.road.kerb_m + 0.15);
            while z < z_hi {
                self.props.push(Prop {
                    kind: PropKind::Pole,
                    x_m: lamp_x,
                    z_m: z,
                    base_m: 0.0,
                    hwl_m: [rng.range(6.5, 8.0), 0.16, 0.16],
                    heading_rad: -FRAC_PI_2,
                });
                // The arm over the road.
                self.props.push(Prop {
                    kind: PropKind::Pole,
                    x_m: lamp_x - sign * 0.8,
                    z_m: z,
                    base_m: 6.3,
                    hwl_m: [0.14, 0.12, 1.6],
                    heading_rad: 0.0,
                });
                z += rng.range(25.0, 40.0);
            }
        }
    }

    fn push_tree(&mut self, rng: &mut Rng, x: f64, z: f64) {
        let trunk_h = rng.range(1.8, 3.0);
        self.props.push(Prop {
            kind: PropKind::Trunk,
            x_m: x,
            z_m: z,
            base_m: 0.0,
            hwl_m: [trunk_h + 0.3, 0.3, 0.3],
            heading_rad: rng.range(-PI, PI),
        });
        let crown = rng.range(2.5, 4.5);
        let leaf = [rng.range(0.12, 0.25) as f32, rng.range(0.3, 0.45) as f32, rng.range(0.08, 0.16) as f32];
        self.props.push(Prop {
            kind: PropKind::Foliage { leaf, seed: rng.next_u64() as u32 },
            x_m: x,
            z_m: z,
            base_m: trunk_h,
            hwl_m: [crown * rng.range(0.9, 1.3), crown, crown],
            heading_rad: rng.range(-PI, PI),
        });
    }

    /// Places `n` objects without footprint overlaps (at time 0 and, for sequences, all moving objects
    /// on a lane move at that lane's speed, so they never run into each other).
    fn sample_actors(&mut self, rng: &mut Rng, extent: Extent, ego_x: f64, n: usize) {
        let sequence = extent.duration_s > 0.0;
        let z_min = extent.cam_z0_m + MIN_OBJECT_AHEAD_M;
        let z_max = extent.cam_z0_m + extent.ego_speed_mps * extent.duration_s + MAX_OBJECT_AHEAD_M;
        let lane_speeds: Vec<f64> = self
            .road
            .lanes
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == self.ego_lane {
                    extent.ego_speed_mps + rng.range(0.5, 2.5)
                } else if l.forward {
                    (extent.ego_speed_mps + rng.range(-3.0, 4.0)).max(4.0)
                } else {
                    rng.range(8.0, 14.0)
                }
            })
            .collect();
        let walk_speed = [rng.range(1.1, 1.5), rng.range(1.1, 1.5)];
        let bike_speed = rng.range(4.0, 6.5);
        let (left_kerb, right_kerb) = self.road.carriageway_x_m();
        let mut attempts = 0;
        while self.actors.len() < n && attempts < n * 20 {
            attempts += 1;
            let kind = rng.weighted(&[0.5, 0.22, 0.24, if sequence { 0.0 } else { 0.04 }]);
            // Single images lean towards nearer objects (KITTI has more near than far ones).
            let u = rng.unit();
            let z = z_min + (z_max - z_min) * if sequence { u } else { u.powf(1.25) };
            let candidate = match kind {
                0 => {
                    let lane_idx = rng.below(self.road.lanes.len());
                    let Some(lane) = self.road.lanes.get(lane_idx).cloned() else { continue };
                    let mut class = pick_class(rng, &LANE_CLASSES);
                    if self.road.tram_lane == Some(lane_idx) && rng.chance(0.35) {
                        class = ObjClass::Tram;
                    }
                    let two_wheeler = matches!(class, ObjClass::Cyclist | ObjClass::Motorcyclist);
                    let side = if lane.forward { 1.0 } else { -1.0 };
                    let x = if two_wheeler && class == ObjClass::Cyclist {
                        lane.centre_x_m + side * 0.3 * lane.width_m
                    } else {
                        lane.centre_x_m + rng.range(-0.25, 0.25)
                    };
                    let jitter = if sequence { 0.0 } else { rng.normal_clamped(0.0, 0.03) };
                    let heading = if lane.forward { -FRAC_PI_2 } else { FRAC_PI_2 } + jitter;
                    let speed = if class == ObjClass::Cyclist && !sequence {
                        bike_speed
                    } else {
                        lane_speeds.get(lane_idx).copied().unwrap_or(10.0)
                    };
                    // Cyclists in a lane ride at the lane's speed in sequences (no overtaking in lanes).
                    self.make_actor(rng, class, Placement::Lane(lane_idx), x, z, heading, speed)
                }
                1 => {
                    let left = if self.road.parking_left_m > 0.0 && self.road.parking_right_m > 0.0 {
                        rng.chance(0.5)
                    } else if self.road.parking_left_m > 0.0 {
                        true
                    } else if self.road.parking_right_m > 0.0 {
                        false
                    } else {
                        continue;
                    };
                    let class = pick_class(rng, &PARKED_CLASSES);
                    let [_, w, _] = class.sample_hwl_m(rng);
                    let x = if left { left_kerb + 0.5 * w + 0.25 } else { right_kerb - 0.5 * w - 0.25 };
                    // Parked along the kerb, either way round, sometimes askew.
                    let mut heading = if rng.chance(0.75) == left { FRAC_PI_2 } else { -FRAC_PI_2 };
                    // (Never askew in sequences: the car's nose would reach into the lane traffic uses.)
                    heading += if rng.chance(0.1) && !sequence {
                        rng.range(-0.35, 0.35)
                    } else {
                        rng.normal_clamped(0.0, 0.02)
                    };
                    self.make_actor(rng, class, Placement::Parked { left }, x, z, heading, 0.0)
                }
                2 => {
                    let left = rng.chance(0.5);
                    let class = pick_class(rng, &SIDEWALK_CLASSES);
                    let (kerb, sign) = if left { (left_kerb, -1.0) } else { (right_kerb, 1.0) };
                    // Three strips across the sidewalk: walking along +Z, walking along -Z, standing or
                    // sitting. In sequences everyone on a strip moves at the strip's speed, so nobody
                    // walks through anybody.
                    let strip = |f: f64| kerb + sign * (self.road.kerb_m + f * self.road.sidewalk_m);
                    let (inner, middle, outer) = (strip(0.25), strip(0.5), strip(0.75));
                    let (x, heading, speed) = match class {
                        ObjClass::Pedestrian if rng.chance(0.7) => {
                            // Walking along the sidewalk: inner strip along +Z, outer strip along -Z.
                            let along = rng.chance(0.5);
                            let x = if along { inner } else { middle };
                            let heading = if along { -FRAC_PI_2 } else { FRAC_PI_2 };
                            (x, heading, walk_speed[usize::from(along)])
                        }
                        ObjClass::Cyclist if sequence => continue,
                        ObjClass::Cyclist => {
                            (inner, if rng.chance(0.5) { -FRAC_PI_2 } else { FRAC_PI_2 }, bike_speed)
                        }
                        _ => (outer, rng.range(-PI, PI), 0.0),
                    };
                    let x = x + if sequence { rng.range(-0.05, 0.05) } else { rng.range(-0.15, 0.15) };
                    self.make_actor(rng, class, Placement::Sidewalk { left }, x, z, heading, speed)
                }
                _ => {
                    // Crossing the road (single images only).
                    let z = self.road.crosswalk_z_m.map_or(z, |cz| cz + rng.range(-1.5, 1.5));
                    let x = rng.range(left_kerb + 0.5, right_kerb - 0.5);
                    let heading = if rng.chance(0.5) { 0.0 } else { PI } + rng.normal_clamped(0.0, 0.15);
                    self.make_actor(rng, ObjClass::Pedestrian, Placement::Crossing, x, z, heading, 1.3)
                }
            };
            let Some(actor) = candidate else { continue };
            // Keep our lane clear for 8 m ahead of the camera (rear end of whatever is in it).
            if actor.placement == Placement::Lane(self.ego_lane)
                && actor.z0_m - 0.5 * actor.hwl_m[2] < extent.cam_z0_m + EGO_LANE_CLEAR_M
            {
                continue;
            }
            // Never on top of the camera's own car (a 2 x 5 m footprint around it).
            if (actor.x0_m - ego_x).abs() < 2.0 && (actor.z0_m - extent.cam_z0_m).abs() < 4.0 {
                continue;
            }
            let clear = |other: &Actor| {
                // Far apart along the road: no polygon test needed (objects are under 20 m long).
                if (other.z0_m - actor.z0_m).abs() > 25.0 {
                    return true;
                }
                match (
                    actor.footprint(0.0, PLACEMENT_CLEARANCE_M),
                    other.footprint(0.0, PLACEMENT_CLEARANCE_M),
                ) {
                    (Some(a), Some(b)) => bev_intersection_area(&a, &b) <= 0.0,
                    _ => false,
                }
            };
            if self.actors.iter().all(clear) {
                self.actors.push(actor);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make_actor(
        &self,
        rng: &mut Rng,
        class: ObjClass,
        placement: Placement,
        x: f64,
        z: f64,
        heading: f64,
        speed: f64,
    ) -> Option<Actor> {
        let hwl_m = class.sample_hwl_m(rng);
        let (colour, appearance) = sample_appearance(rng, class);
        Some(Actor {
            class,
            colour,
            appearance,
            hwl_m,
            placement,
            x0_m: x,
            z0_m: z,
            heading_rad: wrap_angle(heading),
            speed_mps: speed,
        })
    }
}

/// Rounds to KITTI's two decimals (labels are written that way; we render the rounded box so that
/// the written label and the pixels agree exactly).
pub fn round2(v: f64) -> f64 {
    // `+ 0.0` turns -0.0 into 0.0, so that files never say "-0.00".
    (v * 100.0).round() / 100.0 + 0.0
}

/// A road-frame upright box (bottom centre `(x, -base, z)`, size, heading) as a yaw-only box in the
/// camera frame, optionally with every KITTI field rounded to two decimals.
pub(crate) fn box_in_camera(
    cam_from_road: &Isometry3<f64>,
    bottom_road: Point3<f64>,
    hwl_m: [f64; 3],
    heading_rad: f64,
    round: bool,
) -> Option<Box3d> {
    let bottom_cam = cam_from_road * bottom_road;
    let (s, c) = heading_rad.sin_cos();
    let dir_cam = cam_from_road.rotation * Vector3::new(c, 0.0, -s);
    let yaw = wrap_angle((-dir_cam.z).atan2(dir_cam.x));
    let r = |v: f64| if round { round2(v) } else { v };
    Box3d::from_kitti([r(bottom_cam.x), r(bottom_cam.y), r(bottom_cam.z)], hwl_m.map(r), wrap_angle(r(yaw)))
        .ok()
}
