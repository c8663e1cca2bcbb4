//! Surface colours (albedo) of objects and scenery, painted procedurally on box faces.
//!
//! Every object is drawn as exactly its labelled box, so that the box's projection *is* the object's
//! image extent (the geometric test holds to the pixel); what makes a box read as a car, a tram or a
//! person is painted on its faces in metres: wheels, windows, lights, number plates, clothes, heads.
//! Face coordinates: `s` runs along the face's horizontal axis and `t` up from the bottom (side faces:
//! `s` from the back to the front; front and back faces: across; the top face: `s` back to front, `t`
//! across).

use super::rng::hash2;
use super::scene::{Appearance, ObjClass, PropKind};

/// A face of a box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Face {
    /// The `+l` face (the heading side).
    Front,
    /// The `-l` face.
    Back,
    /// The `+w` face (the object's left when looking along its heading).
    Left,
    /// The `-w` face.
    Right,
    /// The top face.
    Top,
    /// The bottom face.
    Bottom,
}

/// What a box is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Surface {
    /// A labelled object.
    Object(ObjClass, Appearance),
    /// Scenery.
    Prop(PropKind),
}

/// Glass seen from outside: dark, slightly blue, lighter towards the top (sky reflection).
fn glass(t_rel: f64) -> [f32; 3] {
    let r = (0.1 + 0.12 * t_rel) as f32;
    [r * 0.9, r, r * 1.2]
}

fn scale(c: [f32; 3], k: f32) -> [f32; 3] {
    c.map(|v| (v * k).clamp(0.0, 1.0))
}

const TYRE: [f32; 3] = [0.05, 0.05, 0.05];
const RIM: [f32; 3] = [0.55, 0.55, 0.57];
const HEADLIGHT: [f32; 3] = [0.97, 0.96, 0.86];
const TAILLIGHT: [f32; 3] = [0.75, 0.04, 0.03];
const PLATE: [f32; 3] = [0.93, 0.93, 0.9];
const TRIM: [f32; 3] = [0.09, 0.09, 0.1];

/// Wheel paint at `(s, t)` for wheels of radius `r` centred at `centres` (along `s`), if any.
fn wheel(s: f64, t: f64, r: f64, centres: &[f64]) -> Option<[f32; 3]> {
    centres.iter().find_map(|&cs| {
        let d = ((s - cs).powi(2) + (t - r).powi(2)).sqrt();
        if d < 0.5 * r {
            Some(RIM)
        } else if d < r {
            Some(TYRE)
        } else {
            None
        }
    })
}

fn in_band(v: f64, lo: f64, hi: f64) -> bool {
    v >= lo && v < hi
}

/// The albedo of `surface` at face coordinates `(s, t)` of a box of size `(l, w, h)`.
pub fn albedo(surface: &Surface, face: Face, s: f64, t: f64, lwh: [f64; 3]) -> [f32; 3] {
    match surface {
        Surface::Object(class, look) => object_albedo(*class, look, face, s, t, lwh),
        Surface::Prop(kind) => prop_albedo(kind, face, s, t, lwh),
    }
}

fn object_albedo(class: ObjClass, look: &Appearance, face: Face, s: f64, t: f64, lwh: [f64; 3]) -> [f32; 3] {
    match class {
        ObjClass::Car => car(look.primary, face, s, t, lwh),
        ObjClass::Van => van(look.primary, face, s, t, lwh),
        ObjClass::Truck => truck(look.primary, face, s, t, lwh),
        ObjClass::Tram => tram(look.primary, face, s, t, lwh),
        ObjClass::Misc => misc(look.primary, face, s, t, lwh),
        ObjClass::Pedestrian | ObjClass::PersonSitting => person(class, look, face, s, t, lwh),
        ObjClass::Cyclist | ObjClass::Motorcyclist => rider(class, look, face, s, t, lwh),
    }
}

fn car(body: [f32; 3], face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    match face {
        Face::Left | Face::Right => {
            if let Some(c) = wheel(s, t, 0.31, &[0.8, l - 0.8]) {
                return c;
            }
            if t < 0.14 {
                return TRIM;
            }
            // Side windows over the cabin, split by the B pillar.
            let (sl, sh) = (s / l, 0.5 * l);
            if in_band(th, 0.6, 0.92) && in_band(s / l, 0.2, 0.76) && (s - sh).abs() > 0.06 {
                return glass((th - 0.6) / 0.32);
            }
            // Door seam and handle.
            if th < 0.6 && ((s - sh).abs() < 0.012 || (in_band(sl, 0.62, 0.66) && in_band(th, 0.5, 0.53))) {
                return scale(body, 0.55);
            }
            if in_band(th, 0.58, 0.6) { scale(body, 0.8) } else { body }
        }
        Face::Front => {
            let sw = s / w;
            if in_band(th, 0.6, 0.93) && in_band(sw, 0.07, 0.93) {
                return glass((th - 0.6) / 0.33);
            }
            if in_band(th, 0.4, 0.5) && (in_band(sw, 0.05, 0.24) || in_band(sw, 0.76, 0.95)) {
                return HEADLIGHT;
            }
            if in_band(th, 0.28, 0.44) && in_band(sw, 0.3, 0.7) {
                return TRIM;
            }
            if th < 0.2 { scale(body, 0.45) } else { body }
        }
        Face::Back => {
            let sw = s / w;
            if in_band(th, 0.62, 0.9) && in_band(sw, 0.1, 0.9) {
                return glass((th - 0.62) / 0.28);
            }
            if in_band(th, 0.45, 0.56) && (in_band(sw, 0.04, 0.22) || in_band(sw, 0.78, 0.96)) {
                return TAILLIGHT;
            }
            if in_band(th, 0.27, 0.36) && in_band(sw, 0.38, 0.62) {
                return PLATE;
            }
            if th < 0.2 { scale(body, 0.45) } else { body }
        }
        Face::Top => {
            let sl = s / l;
            if in_band(sl, 0.62, 0.76) || in_band(sl, 0.16, 0.24) {
                return glass(0.6);
            }
            body
        }
        Face::Bottom => TRIM,
    }
}

fn van(body: [f32; 3], face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    match face {
        Face::Left | Face::Right => {
            if let Some(c) = wheel(s, t, 0.34, &[0.95, l - 0.9]) {
                return c;
            }
            if t < 0.16 {
                return TRIM;
            }
            let sl = s / l;
            if in_band(th, 0.58, 0.84) && (in_band(sl, 0.78, 0.95) || in_band(sl, 0.5, 0.74)) {
                return glass((th - 0.58) / 0.26);
            }
            if (sl - 0.48).abs() < 0.004 && th < 0.84 {
                return scale(body, 0.55);
            }
            body
        }
        Face::Front => {
            let sw = s / w;
            if in_band(th, 0.55, 0.88) && in_band(sw, 0.06, 0.94) {
                return glass((th - 0.55) / 0.33);
            }
            if in_band(th, 0.33, 0.42) && (in_band(sw, 0.04, 0.22) || in_band(sw, 0.78, 0.96)) {
                return HEADLIGHT;
            }
            if th < 0.18 { TRIM } else { body }
        }
        Face::Back => {
            let sw = s / w;
            if in_band(th, 0.6, 0.85) && (in_band(sw, 0.08, 0.47) || in_band(sw, 0.53, 0.92)) {
                return glass((th - 0.6) / 0.25);
            }
            if in_band(th, 0.35, 0.5) && (in_band(sw, 0.02, 0.1) || in_band(sw, 0.9, 0.98)) {
                return TAILLIGHT;
            }
            if in_band(th, 0.22, 0.28) && in_band(sw, 0.38, 0.62) {
                return PLATE;
            }
            if th < 0.15 { TRIM } else { body }
        }
        Face::Top | Face::Bottom => scale(body, 0.9),
    }
}

fn truck(body: [f32; 3], face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    let cab_len = 2.3_f64.min(0.4 * l);
    let cab = scale(body, 0.82);
    match face {
        Face::Left | Face::Right => {
            if let Some(c) = wheel(s, t, 0.5, &[1.0, 2.1, l - 1.3]) {
                return c;
            }
            if t < 0.35 {
                return TRIM;
            }
            let from_front = l - s;
            if (from_front - cab_len).abs() < 0.08 {
                return TRIM; // gap between cab and box
            }
            if from_front < cab_len {
                if in_band(th, 0.55, 0.8) && in_band(from_front, 0.25, cab_len - 0.5) {
                    return glass((th - 0.55) / 0.25);
                }
                return cab;
            }
            // Cargo box with panel ribs.
            if (s % 1.2) < 0.05 { scale(body, 0.85) } else { body }
        }
        Face::Front => {
            let sw = s / w;
            if in_band(th, 0.52, 0.78) && in_band(sw, 0.06, 0.94) {
                return glass((th - 0.52) / 0.26);
            }
            if in_band(th, 0.2, 0.27) && (in_band(sw, 0.04, 0.2) || in_band(sw, 0.8, 0.96)) {
                return HEADLIGHT;
            }
            if th < 0.3 {
                return TRIM;
            }
            if th > 0.82 { body } else { cab }
        }
        Face::Back => {
            let sw = s / w;
            if (sw - 0.5).abs() < 0.01 && th > 0.15 {
                return TRIM; // door split
            }
            if in_band(th, 0.1, 0.16) && !(0.12..=0.88).contains(&sw) {
                return TAILLIGHT;
            }
            if th < 0.15 { TRIM } else { scale(body, 0.95) }
        }
        Face::Top | Face::Bottom => scale(body, 0.92),
    }
}

fn tram(body: [f32; 3], face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    let upper = [0.9, 0.9, 0.88];
    match face {
        Face::Left | Face::Right => {
            if t < 0.3 {
                return scale(TRIM, 1.5);
            }
            // Doors every ~5 m, windows between them.
            let door = ((s + 1.5) % 5.0) < 1.3;
            if door && th < 0.82 {
                return if th > 0.35 { glass(th) } else { scale(body, 0.7) };
            }
            if in_band(th, 0.45, 0.8) && (s % 1.9) > 0.15 {
                return glass((th - 0.45) / 0.35);
            }
            if th > 0.45 { upper } else { body }
        }
        Face::Front | Face::Back => {
            let sw = s / w;
            if in_band(th, 0.45, 0.85) && in_band(sw, 0.05, 0.95) {
                return glass((th - 0.45) / 0.4);
            }
            if in_band(th, 0.3, 0.36) && !(0.15..=0.85).contains(&sw) {
                return if face == Face::Front { HEADLIGHT } else { TAILLIGHT };
            }
            if th > 0.85 { upper } else { body }
        }
        Face::Top => {
            if (s / l - 0.5).abs() < 0.12 && (t / w - 0.5).abs() < 0.3 {
                TRIM
            } else {
                [0.6, 0.6, 0.6]
            }
        }
        Face::Bottom => TRIM,
    }
}

fn misc(body: [f32; 3], face: Face, s: f64, t: f64, [l, _w, h]: [f64; 3]) -> [f32; 3] {
    // A box trailer / container: panel lines, one axle in the middle.
    match face {
        Face::Left | Face::Right => {
            if let Some(c) = wheel(s, t, 0.3, &[0.5 * l]) {
                return c;
            }
            if t < 0.3 {
                return TRIM;
            }
            if (s % 0.8) < 0.04 || (t / h) > 0.95 { scale(body, 0.7) } else { body }
        }
        Face::Front | Face::Back => {
            if t < 0.3 {
                TRIM
            } else {
                scale(body, 0.9)
            }
        }
        Face::Top | Face::Bottom => scale(body, 0.85),
    }
}

fn person(class: ObjClass, look: &Appearance, face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    let sitting = class == ObjClass::PersonSitting;
    let (legs_top, torso_top) = if sitting { (0.38, 0.74) } else { (0.47, 0.8) };
    let across = match face {
        Face::Front | Face::Back => s / w,
        Face::Left | Face::Right => s / l,
        Face::Top | Face::Bottom => 0.5,
    };
    if face == Face::Top {
        return look.hair;
    }
    if th < 0.04 {
        return TRIM; // shoes
    }
    if th < legs_top {
        // Two legs with a shadowed gap between them.
        if matches!(face, Face::Front | Face::Back) && (across - 0.5).abs() < 0.06 {
            return scale(look.secondary, 0.45);
        }
        return look.secondary;
    }
    if th < torso_top {
        // Arms a shade darker at the sides of the torso.
        if matches!(face, Face::Front | Face::Back) && !(0.14..=0.86).contains(&across) {
            return scale(look.primary, 0.8);
        }
        return look.primary;
    }
    // Head and hair.
    let head_top = 0.9 + 0.02 * f64::from(u8::from(sitting));
    if face == Face::Back || th > head_top { look.hair } else { look.skin }
}

fn rider(class: ObjClass, look: &Appearance, face: Face, s: f64, t: f64, [l, w, h]: [f64; 3]) -> [f32; 3] {
    let th = t / h;
    let motor = class == ObjClass::Motorcyclist;
    let frame = if motor { [0.15, 0.15, 0.17] } else { look.secondary };
    let r = if motor { 0.32 } else { 0.34 };
    match face {
        Face::Left | Face::Right => {
            if let Some(c) = wheel(s, t, r, &[r + 0.02, l - r - 0.02]) {
                return c;
            }
            let sl = s / l;
            if th > 0.86 && in_band(sl, 0.35, 0.6) {
                return look.hair; // helmet / head
            }
            if in_band(th, 0.52, 0.86) && in_band(sl, 0.3, 0.68) {
                return look.primary; // torso
            }
            if in_band(th, 0.3, 0.52) && in_band(sl, 0.3, 0.7) {
                return [0.12, 0.14, 0.25]; // legs
            }
            if motor && in_band(th, 0.2, 0.45) && in_band(sl, 0.2, 0.8) {
                return [0.3, 0.3, 0.32]; // engine
            }
            if in_band(th, 0.2, 0.55) {
                return frame;
            }
            scale(frame, 0.55)
        }
        Face::Front | Face::Back => {
            let sw = s / w;
            if th > 0.86 && in_band(sw, 0.3, 0.7) {
                return look.hair;
            }
            if in_band(th, 0.52, 0.86) {
                return look.primary;
            }
            if th < 0.45 && (sw - 0.5).abs() < 0.12 {
                return TYRE;
            }
            if motor && face == Face::Front && in_band(th, 0.45, 0.52) && (sw - 0.5).abs() < 0.15 {
                return HEADLIGHT;
            }
            if in_band(th, 0.3, 0.52) { [0.12, 0.14, 0.25] } else { scale(frame, 0.6) }
        }
        Face::Top | Face::Bottom => look.hair,
    }
}

fn prop_albedo(kind: &PropKind, face: Face, s: f64, t: f64, [_l, _w, h]: [f64; 3]) -> [f32; 3] {
    match kind {
        PropKind::Building { wall, seed } => {
            if matches!(face, Face::Top | Face::Bottom) {
                return scale(*wall, 0.7);
            }
            if t > h - 0.5 {
                return scale(*wall, 0.75); // cornice
            }
            let floor = (t / 3.2).floor();
            let bay = (s / 2.8).floor();
            let (ft, fs) = (t - floor * 3.2, s - bay * 2.8);
            let ground = floor < 1.0;
            let window = if ground {
                ft > 0.4 && ft < 2.7 && fs > 0.3
            } else {
                ft > 1.0 && ft < 2.5 && fs > 0.7 && fs < 2.0
            };
            if window {
                let v = hash2(bay as i64, floor as i64, u64::from(*seed));
                let lit = if v > 0.93 { 0.35 } else { 0.0 };
                let g = glass(0.3 + 0.5 * f64::from(v));
                return [g[0] + lit, g[1] + lit * 0.9, g[2] + lit * 0.6];
            }
            let grain = 0.96 + 0.06 * hash2((s * 4.0) as i64, (t * 4.0) as i64, u64::from(*seed) ^ 7);
            scale(*wall, grain)
        }
        PropKind::Trunk => [0.3, 0.22, 0.14],
        PropKind::Foliage { leaf, seed } => {
            let v = hash2((s * 3.0) as i64, (t * 3.0) as i64, u64::from(*seed));
            scale(*leaf, 0.75 + 0.5 * v)
        }
        PropKind::Pole => [0.42, 0.43, 0.45],
    }
}
