//! Referring expressions: a small predicate language over the objects of a scene, a resolver that
//! evaluates it on every object, and a generator that keeps only expressions the resolver finds to
//! pick exactly their target.
//!
//! Predicates with a fuzzy boundary ("on our left", "behind", "the nearest") are three-valued: an
//! object clearly satisfies them, clearly does not, or is too close to the boundary to say
//! ([`Truth::Maybe`]). An expression refers to its target only when the target satisfies every
//! predicate clearly and every other object clearly fails at least one: a human reading the
//! description would not hesitate between two objects. Objects too small or hidden to be labelled
//! still take part as distractors.

use std::f64::consts::PI;

use monovlm_calib::Box3d;

use super::rng::Rng;
use super::scene::{ColourName, ObjClass};

/// Lateral offset (metres, camera x) beyond which an object is clearly on our left or right.
const EGO_SIDE_CLEAR_M: f64 = 2.0;
/// Lateral offset (metres) within which an object is clearly not on that side.
const EGO_SIDE_FUZZY_M: f64 = 0.8;
/// Distance (metres) from the line between the directions of traffic beyond which an object is
/// clearly on that side of the road; within the fuzzy margin it is unclear.
const ROAD_SIDE_CLEAR_M: f64 = 1.0;
/// How far outside the carriageway (metres) an object is clearly on the sidewalk (or clearly on
/// the road, inside it).
const SIDEWALK_CLEAR_M: f64 = 0.3;
/// Offset from our lane's centre (metres) within which an object is clearly in our lane...
const EGO_LANE_CLEAR_M: f64 = 0.9;
/// ...and beyond which it clearly is not.
const EGO_LANE_FUZZY_M: f64 = 2.0;
/// Angle (radians) within which an object clearly faces a direction; beyond the fuzzy angle it
/// clearly does not.
const FACING_CLEAR_RAD: f64 = 30.0 * PI / 180.0;
/// See [`FACING_CLEAR_RAD`].
const FACING_FUZZY_RAD: f64 = 50.0 * PI / 180.0;
/// The nearest (farthest) object must be closer (farther) than the runner-up by this much, metres...
const DISTANCE_MARGIN_M: f64 = 2.0;
/// ...and by this fraction of its distance.
const DISTANCE_MARGIN_REL: f64 = 0.15;
/// The leftmost (rightmost) object must be this much further left (right) in bearing, radians.
const BEARING_MARGIN_RAD: f64 = 4.0 * PI / 180.0;
/// "Behind"/"in front of": same line of sight when the lateral offset is below this (metres)...
const INLINE_CLEAR_M: f64 = 1.5;
/// ...and clearly not beyond this.
const INLINE_FUZZY_M: f64 = 3.5;
/// "Behind"/"in front of": depth gap (metres) that is clearly enough, the largest one that still
/// reads as a relation, and the gap below which the relation clearly does not hold.
const DEPTH_GAP_CLEAR_M: f64 = 4.0;
/// See [`DEPTH_GAP_CLEAR_M`].
const DEPTH_GAP_MAX_M: f64 = 30.0;
/// See [`DEPTH_GAP_CLEAR_M`].
const DEPTH_GAP_FUZZY_M: f64 = 1.0;
/// "Left of"/"right of": clear lateral gap between the footprints (metres)...
const SIDE_GAP_CLEAR_M: f64 = 0.3;
/// ...within this depth difference (metres); beyond the fuzzy one they are not side by side.
const SIDE_DEPTH_CLEAR_M: f64 = 6.0;
/// See [`SIDE_DEPTH_CLEAR_M`].
const SIDE_DEPTH_FUZZY_M: f64 = 12.0;

/// Three-valued truth of a predicate on an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Truth {
    /// Clearly false.
    No,
    /// Too close to the predicate's boundary to say.
    Maybe,
    /// Clearly true.
    Yes,
}

impl Truth {
    /// Conjunction (the minimum).
    pub fn and(self, other: Truth) -> Truth {
        self.min(other)
    }

    fn from_bool(b: bool) -> Truth {
        if b { Truth::Yes } else { Truth::No }
    }

    /// `Yes` when `value >= clear`, `No` when `value < fuzzy`, else `Maybe` (`fuzzy <= clear`).
    fn at_least(value: f64, clear: f64, fuzzy: f64) -> Truth {
        if value >= clear {
            Truth::Yes
        } else if value < fuzzy {
            Truth::No
        } else {
            Truth::Maybe
        }
    }
}

/// What the resolver knows about one object of a scene.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectFacts {
    /// Class.
    pub class: ObjClass,
    /// Named colour (body or upper clothing).
    pub colour: ColourName,
    /// The 3D box, camera frame.
    pub box3d: Box3d,
    /// Lateral position relative to the line between the directions of traffic (metres, road
    /// frame, positive to the right).
    pub from_divider_m: f64,
    /// How far outside the carriageway it stands (metres; negative: on the road).
    pub outside_carriageway_m: f64,
    /// Lateral offset from the centre of our lane (metres, road frame).
    pub from_ego_lane_m: f64,
    /// Parked at the kerb.
    pub parked: bool,
    /// Moving.
    pub moving: bool,
    /// Labelled (big and visible enough to serve as the anchor of a relation).
    pub labelled: bool,
}

impl ObjectFacts {
    fn distance_m(&self) -> f64 {
        self.box3d.x.hypot(self.box3d.z)
    }

    fn bearing_rad(&self) -> f64 {
        self.box3d.x.atan2(self.box3d.z)
    }

    /// Leftmost and rightmost camera x of the footprint.
    fn x_extent(&self) -> (f64, f64) {
        let xs = self.box3d.bev_corners().map(|c| c[0]);
        (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    }
}

/// Left or right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Left.
    Left,
    /// Right.
    Right,
}

/// A direction an object faces (relative to the camera).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Facing {
    /// Along the camera's viewing direction.
    Away,
    /// Towards the camera.
    Towards,
    /// To the image's left.
    Left,
    /// To the image's right.
    Right,
}

/// A property of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// On our left or right (camera x).
    EgoSide(Side),
    /// On that side of the road (relative to the line between the directions).
    RoadSide(Side),
    /// On a sidewalk.
    OnSidewalk,
    /// On the carriageway (said of people).
    OnRoad,
    /// In the lane the camera drives in.
    InEgoLane,
    /// Parked at the kerb.
    Parked,
    /// Facing (or moving) in a direction.
    Facing(Facing),
}

/// An extreme among the objects matching the rest of the expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Superlative {
    /// Smallest distance from the camera.
    Nearest,
    /// Largest distance from the camera.
    Farthest,
    /// Furthest to the left (bearing).
    Leftmost,
    /// Furthest to the right (bearing).
    Rightmost,
}

/// A spatial relation to another object (the anchor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// Left of the anchor, side by side.
    LeftOf,
    /// Right of the anchor, side by side.
    RightOf,
    /// Farther than the anchor along the same line of sight.
    Behind,
    /// Between us and the anchor.
    InFrontOf,
}

/// A referring expression: class, optional colour, attributes, an optional superlative over the
/// objects matching the rest, and an optional relation to an anchor object described by its own
/// expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expr {
    /// The class named.
    pub class: ObjClass,
    /// The colour named, if any.
    pub colour: Option<ColourName>,
    /// Further properties (all must hold).
    pub attributes: Vec<Attribute>,
    /// An extreme among the matching objects, if any.
    pub superlative: Option<Superlative>,
    /// A relation to an anchor, if any.
    pub relation: Option<(Relation, Box<Expr>)>,
}

impl Expr {
    /// The expression naming only a class.
    pub fn class(class: ObjClass) -> Self {
        Self { class, colour: None, attributes: Vec::new(), superlative: None, relation: None }
    }
}

fn attribute_truth(attr: Attribute, o: &ObjectFacts) -> Truth {
    match attr {
        Attribute::EgoSide(Side::Left) => Truth::at_least(-o.box3d.x, EGO_SIDE_CLEAR_M, EGO_SIDE_FUZZY_M),
        Attribute::EgoSide(Side::Right) => Truth::at_least(o.box3d.x, EGO_SIDE_CLEAR_M, EGO_SIDE_FUZZY_M),
        Attribute::RoadSide(Side::Left) => {
            Truth::at_least(-o.from_divider_m, ROAD_SIDE_CLEAR_M, -ROAD_SIDE_CLEAR_M)
        }
        Attribute::RoadSide(Side::Right) => {
            Truth::at_least(o.from_divider_m, ROAD_SIDE_CLEAR_M, -ROAD_SIDE_CLEAR_M)
        }
        Attribute::OnSidewalk => {
            Truth::at_least(o.outside_carriageway_m, SIDEWALK_CLEAR_M, -SIDEWALK_CLEAR_M)
        }
        Attribute::OnRoad => Truth::at_least(-o.outside_carriageway_m, SIDEWALK_CLEAR_M, -SIDEWALK_CLEAR_M),
        Attribute::InEgoLane => {
            let d = o.from_ego_lane_m.abs();
            if d <= EGO_LANE_CLEAR_M && o.outside_carriageway_m < 0.0 {
                Truth::Yes
            } else if d > EGO_LANE_FUZZY_M {
                Truth::No
            } else {
                Truth::Maybe
            }
        }
        Attribute::Parked => Truth::from_bool(o.parked),
        Attribute::Facing(f) => {
            let (s, c) = o.box3d.yaw.sin_cos();
            // Heading in the camera's (x, z) plane.
            let (hx, hz) = (c, -s);
            let (tx, tz) = match f {
                Facing::Away => (0.0, 1.0),
                Facing::Towards => (0.0, -1.0),
                Facing::Left => (-1.0, 0.0),
                Facing::Right => (1.0, 0.0),
            };
            let angle = (hx * tx + hz * tz).clamp(-1.0, 1.0).acos();
            Truth::at_least(-angle, -FACING_CLEAR_RAD, -FACING_FUZZY_RAD)
        }
    }
}

fn relation_truth(rel: Relation, a: &ObjectFacts, b: &ObjectFacts) -> Truth {
    let (ab, bb) = (&a.box3d, &b.box3d);
    match rel {
        Relation::Behind | Relation::InFrontOf => {
            let gap = if rel == Relation::Behind { ab.z - bb.z } else { bb.z - ab.z };
            let lateral = (ab.x - bb.x).abs();
            let depth = if gap > DEPTH_GAP_MAX_M {
                Truth::No
            } else {
                Truth::at_least(gap, DEPTH_GAP_CLEAR_M, DEPTH_GAP_FUZZY_M)
            };
            depth.and(Truth::at_least(-lateral, -INLINE_CLEAR_M, -INLINE_FUZZY_M))
        }
        Relation::LeftOf | Relation::RightOf => {
            let ((a_lo, a_hi), (b_lo, b_hi)) = (a.x_extent(), b.x_extent());
            let gap = if rel == Relation::LeftOf { b_lo - a_hi } else { a_lo - b_hi };
            let centre_order = if rel == Relation::LeftOf { bb.x - ab.x } else { ab.x - bb.x };
            let side =
                if centre_order <= 0.0 { Truth::No } else { Truth::at_least(gap, SIDE_GAP_CLEAR_M, -1e9) };
            let dz = (ab.z - bb.z).abs();
            side.and(Truth::at_least(-dz, -SIDE_DEPTH_CLEAR_M, -SIDE_DEPTH_FUZZY_M))
        }
    }
}

/// The truth of `expr` for every object of `objects` (same order).
pub fn evaluate(expr: &Expr, objects: &[ObjectFacts]) -> Vec<Truth> {
    let anchor = expr.relation.as_ref().map(|(rel, anchor)| (*rel, resolve(anchor, objects)));
    let mut truths: Vec<Truth> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut t = Truth::from_bool(o.class == expr.class);
            if let Some(c) = expr.colour {
                t = t.and(Truth::from_bool(o.colour == c));
            }
            for a in &expr.attributes {
                t = t.and(attribute_truth(*a, o));
            }
            match anchor {
                None => {}
                // An anchor that does not pick one object leaves every object undecided.
                Some((_, None)) => t = t.and(Truth::Maybe),
                Some((_, Some(b))) if b == i => t = Truth::No,
                Some((rel, Some(b))) => {
                    t = t.and(
                        objects.get(b).map_or(Truth::Maybe, |anchor_obj| relation_truth(rel, o, anchor_obj)),
                    );
                }
            }
            t
        })
        .collect();
    if let Some(sup) = expr.superlative {
        apply_superlative(sup, objects, &mut truths);
    }
    truths
}

/// Narrows `truths` to the extreme object: the winner keeps its truth only if it beats every other
/// candidate by the margin (else `Maybe`); other candidates become `No` when clearly beaten, else
/// `Maybe`.
fn apply_superlative(sup: Superlative, objects: &[ObjectFacts], truths: &mut [Truth]) {
    // Larger key = more extreme.
    let key = |o: &ObjectFacts| match sup {
        Superlative::Nearest => -o.distance_m(),
        Superlative::Farthest => o.distance_m(),
        Superlative::Leftmost => -o.bearing_rad(),
        Superlative::Rightmost => o.bearing_rad(),
    };
    let margin = |winner: &ObjectFacts| match sup {
        Superlative::Nearest | Superlative::Farthest => {
            DISTANCE_MARGIN_M.max(DISTANCE_MARGIN_REL * winner.distance_m())
        }
        Superlative::Leftmost | Superlative::Rightmost => BEARING_MARGIN_RAD,
    };
    let candidates: Vec<usize> =
        (0..objects.len()).filter(|i| truths.get(*i).is_some_and(|t| *t != Truth::No)).collect();
    let key_of = |i: usize| objects.get(i).map_or(f64::NEG_INFINITY, key);
    let Some(&winner) = candidates.iter().max_by(|a, b| key_of(**a).total_cmp(&key_of(**b))) else {
        return;
    };
    let Some(win_obj) = objects.get(winner) else { return };
    let win_key = key(win_obj);
    let need = margin(win_obj);
    let mut clear_win = true;
    for &i in &candidates {
        if i == winner {
            continue;
        }
        let Some(o) = objects.get(i) else { continue };
        let beaten = win_key - key(o) >= need;
        if !beaten {
            clear_win = false;
        }
        if let Some(t) = truths.get_mut(i) {
            *t = if beaten { Truth::No } else { Truth::Maybe };
        }
    }
    if !clear_win && let Some(t) = truths.get_mut(winner) {
        *t = t.and(Truth::Maybe);
    }
}

/// The one object `expr` refers to: `Some(i)` when object `i` satisfies it clearly and every other
/// object clearly does not; `None` when it is ambiguous or refers to nothing.
pub fn resolve(expr: &Expr, objects: &[ObjectFacts]) -> Option<usize> {
    let truths = evaluate(expr, objects);
    let mut possible = truths.iter().enumerate().filter(|(_, t)| **t != Truth::No);
    let (i, t) = possible.next()?;
    (possible.next().is_none() && *t == Truth::Yes).then_some(i)
}

/// A description of one object: the expression, its text, and the object it refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    /// Index of the target in the objects the resolver was given.
    pub target: usize,
    /// The expression.
    pub expr: Expr,
    /// The text.
    pub text: String,
}

/// Attributes worth saying about an object of `class` (descriptions never mention "parked" for
/// people or "on the road" for cars).
fn candidate_attributes(class: ObjClass) -> Vec<Attribute> {
    let mut attrs = vec![
        Attribute::EgoSide(Side::Left),
        Attribute::EgoSide(Side::Right),
        Attribute::RoadSide(Side::Left),
        Attribute::RoadSide(Side::Right),
        Attribute::Facing(Facing::Away),
        Attribute::Facing(Facing::Towards),
        Attribute::Facing(Facing::Left),
        Attribute::Facing(Facing::Right),
    ];
    if class.is_vehicle() {
        attrs.extend([Attribute::Parked, Attribute::InEgoLane]);
    } else {
        attrs.extend([Attribute::OnSidewalk, Attribute::OnRoad]);
    }
    if matches!(class, ObjClass::Cyclist | ObjClass::Motorcyclist) {
        attrs.push(Attribute::InEgoLane);
    }
    attrs
}

/// Short expressions that pick `anchor` on their own (to be used inside relations).
fn anchor_expressions(anchor: usize, objects: &[ObjectFacts]) -> Vec<Expr> {
    let Some(o) = objects.get(anchor) else { return Vec::new() };
    if o.class == ObjClass::Misc || !o.labelled {
        return Vec::new();
    }
    let mut out = Vec::new();
    let plain = Expr::class(o.class);
    let coloured = Expr { colour: Some(o.colour), ..Expr::class(o.class) };
    for e in [plain, coloured] {
        if resolve(&e, objects) == Some(anchor) {
            out.push(e);
        }
    }
    out
}

/// Up to `max` descriptions of `target`, each with a different expression, each verified to resolve
/// to `target` among `objects`. Deterministic for a given `rng` state.
pub fn describe(target: usize, objects: &[ObjectFacts], max: usize, rng: &mut Rng) -> Vec<Description> {
    let Some(t) = objects.get(target) else { return Vec::new() };
    if t.class == ObjClass::Misc || max == 0 {
        return Vec::new();
    }
    let true_attrs: Vec<Attribute> =
        candidate_attributes(t.class).into_iter().filter(|a| attribute_truth(*a, t) == Truth::Yes).collect();
    let base = Expr::class(t.class);
    let colour = Some(t.colour);
    // Candidates in three groups: properties, superlatives, relations.
    let mut groups: [Vec<Expr>; 3] = Default::default();
    groups[0].push(base.clone());
    groups[0].push(Expr { colour, ..base.clone() });
    for (i, a) in true_attrs.iter().enumerate() {
        groups[0].push(Expr { attributes: vec![*a], ..base.clone() });
        groups[0].push(Expr { colour, attributes: vec![*a], ..base.clone() });
        for b in true_attrs.iter().skip(i + 1) {
            groups[0].push(Expr { attributes: vec![*a, *b], ..base.clone() });
        }
    }
    for sup in [Superlative::Nearest, Superlative::Farthest, Superlative::Leftmost, Superlative::Rightmost] {
        groups[1].push(Expr { superlative: Some(sup), ..base.clone() });
        groups[1].push(Expr { colour, superlative: Some(sup), ..base.clone() });
        for a in &true_attrs {
            groups[1].push(Expr { attributes: vec![*a], superlative: Some(sup), ..base.clone() });
        }
    }
    for anchor in (0..objects.len()).filter(|i| *i != target) {
        for anchor_expr in anchor_expressions(anchor, objects) {
            for rel in [Relation::LeftOf, Relation::RightOf, Relation::Behind, Relation::InFrontOf] {
                let Some(a) = objects.get(anchor) else { continue };
                if relation_truth(rel, t, a) != Truth::Yes {
                    continue;
                }
                groups[2].push(Expr { relation: Some((rel, Box::new(anchor_expr.clone()))), ..base.clone() });
                groups[2].push(Expr {
                    colour,
                    relation: Some((rel, Box::new(anchor_expr.clone()))),
                    ..base.clone()
                });
            }
        }
    }
    let mut valid: [Vec<Expr>; 3] = Default::default();
    for (g, exprs) in groups.into_iter().enumerate() {
        for e in exprs {
            // A superlative must be needed: "the nearest truck" only when "the truck" is ambiguous.
            let needed = e.superlative.is_none()
                || resolve(&Expr { superlative: None, ..e.clone() }, objects) != Some(target);
            if needed
                && resolve(&e, objects) == Some(target)
                && let Some(v) = valid.get_mut(g)
            {
                v.push(e);
            }
        }
    }
    for v in valid.iter_mut() {
        rng.shuffle(v);
    }
    // Round-robin over the groups in a random order, so that several descriptions differ in kind.
    let mut order = [0usize, 1, 2];
    rng.shuffle(&mut order);
    let mut chosen: Vec<Expr> = Vec::new();
    let mut cursors = [0usize; 3];
    while chosen.len() < max {
        let mut progressed = false;
        for &g in &order {
            if chosen.len() >= max {
                break;
            }
            let (Some(list), Some(cursor)) = (valid.get(g), cursors.get_mut(g)) else { continue };
            if let Some(e) = list.get(*cursor) {
                *cursor += 1;
                progressed = true;
                chosen.push(e.clone());
            }
        }
        if !progressed {
            break;
        }
    }
    let mut out: Vec<Description> = Vec::with_capacity(chosen.len());
    for expr in chosen {
        // Sometimes say one more true thing, when the result is still unique, still needs its
        // superlative and is not already among the descriptions.
        let mut expr = expr;
        if rng.chance(0.35) {
            let extra: Vec<Attribute> = true_attrs
                .iter()
                .copied()
                .filter(|a| !expr.attributes.contains(a) && compatible(&expr.attributes, *a))
                .collect();
            if let Some(a) = rng.pick(&extra) {
                let mut richer = expr.clone();
                richer.attributes.push(*a);
                let needed = richer.superlative.is_none()
                    || resolve(&Expr { superlative: None, ..richer.clone() }, objects) != Some(target);
                if needed
                    && resolve(&richer, objects) == Some(target)
                    && !out.iter().any(|d| same(&d.expr, &richer))
                {
                    expr = richer;
                }
            }
        }
        if out.iter().any(|d| same(&d.expr, &expr)) {
            continue;
        }
        let text = realise(&expr, t.moving, rng);
        out.push(Description { target, expr, text });
    }
    out
}

/// The same expression up to the order of its attributes.
fn same(a: &Expr, b: &Expr) -> bool {
    let sorted = |e: &Expr| {
        let mut v = e.attributes.clone();
        v.sort();
        v
    };
    a.class == b.class
        && a.colour == b.colour
        && a.superlative == b.superlative
        && a.relation == b.relation
        && sorted(a) == sorted(b)
}

/// Attributes that read badly together (two facings, road side with own side) are not combined.
fn compatible(existing: &[Attribute], new: Attribute) -> bool {
    existing.iter().all(|a| {
        !matches!(
            (a, new),
            (Attribute::Facing(_), Attribute::Facing(_))
                | (Attribute::EgoSide(_), Attribute::EgoSide(_))
                | (Attribute::RoadSide(_), Attribute::RoadSide(_))
        )
    })
}

// ------------------------------------------------------------------------------------------------
// text

fn choose<'a>(rng: &mut Rng, options: &[&'a str]) -> &'a str {
    rng.pick(options).copied().unwrap_or("")
}

/// The noun phrase of an expression without relation and attributes: "the nearest white car",
/// "the pedestrian in red".
fn noun_phrase(expr: &Expr, rng: &mut Rng) -> String {
    let mut words: Vec<String> = vec!["the".into()];
    if let Some(sup) = expr.superlative {
        let w = match sup {
            Superlative::Nearest => choose(rng, &["nearest", "closest"]),
            Superlative::Farthest => choose(rng, &["farthest", "most distant"]),
            Superlative::Leftmost => "leftmost",
            Superlative::Rightmost => "rightmost",
        };
        words.push(w.into());
    }
    let person = expr.class.is_person();
    if let (Some(c), false) = (expr.colour, person) {
        words.push(c.name().into());
    }
    words.push(expr.class.noun().into());
    if let (Some(c), true) = (expr.colour, person) {
        let phrase = match rng.below(3) {
            0 => format!("in {}", c.name()),
            1 => format!("wearing {}", c.name()),
            _ => format!("in a {} top", c.name()),
        };
        words.push(phrase);
    }
    words.join(" ")
}

fn attribute_phrase(attr: Attribute, class: ObjClass, moving: bool, rng: &mut Rng) -> String {
    let person = matches!(class, ObjClass::Pedestrian | ObjClass::PersonSitting);
    let rider = matches!(class, ObjClass::Cyclist | ObjClass::Motorcyclist);
    let verb = if !moving {
        None
    } else if person {
        Some("walking")
    } else if rider {
        Some("riding")
    } else {
        Some("driving")
    };
    let s = match attr {
        Attribute::EgoSide(Side::Left) => choose(rng, &["on our left", "to the left of us", "on the left"]),
        Attribute::EgoSide(Side::Right) => {
            choose(rng, &["on our right", "to the right of us", "on the right"])
        }
        Attribute::RoadSide(Side::Left) => {
            choose(rng, &["on the left side of the road", "on the left-hand side of the road"])
        }
        Attribute::RoadSide(Side::Right) => {
            choose(rng, &["on the right side of the road", "on the right-hand side of the road"])
        }
        Attribute::OnSidewalk => choose(rng, &["on the sidewalk", "on the pavement"]),
        Attribute::OnRoad => choose(rng, &["on the road", "out in the road"]),
        Attribute::InEgoLane => {
            choose(rng, &["in our lane", "ahead of us in our lane", "in the same lane as us"])
        }
        Attribute::Parked => choose(rng, &["parked at the kerb", "parked by the roadside"]),
        Attribute::Facing(f) => {
            return match (f, verb) {
                (Facing::Away, Some(v)) => format!("{v} away from us"),
                (Facing::Towards, Some(v)) => {
                    if rng.chance(0.5) {
                        format!("{v} towards us")
                    } else {
                        "coming towards us".into()
                    }
                }
                (Facing::Left, Some(v)) => format!("{v} to the left"),
                (Facing::Right, Some(v)) => format!("{v} to the right"),
                (Facing::Away, None) => choose(rng, &["facing away from us", "with its back to us"]).into(),
                (Facing::Towards, None) => choose(rng, &["facing us", "facing the camera"]).into(),
                (Facing::Left, None) => "facing left".into(),
                (Facing::Right, None) => "facing right".into(),
            };
        }
    };
    s.into()
}

fn relation_phrase(rel: Relation, anchor: &str, rng: &mut Rng) -> String {
    match rel {
        Relation::LeftOf => format!("{} {anchor}", choose(rng, &["to the left of", "left of"])),
        Relation::RightOf => format!("{} {anchor}", choose(rng, &["to the right of", "right of"])),
        Relation::Behind => format!("{} {anchor}", choose(rng, &["behind", "beyond"])),
        Relation::InFrontOf => format!("{} {anchor}", choose(rng, &["in front of", "between us and"])),
    }
}

/// Text of an anchor (no relation of its own, never moving-dependent phrasing).
fn realise_phrase(expr: &Expr, moving: bool, rng: &mut Rng) -> String {
    let mut text = noun_phrase(expr, rng);
    let mut mods: Vec<String> =
        expr.attributes.iter().map(|a| attribute_phrase(*a, expr.class, moving, rng)).collect();
    if let Some((rel, anchor)) = &expr.relation {
        let anchor_text = realise_phrase(anchor, false, rng);
        mods.push(relation_phrase(*rel, &anchor_text, rng));
    }
    rng.shuffle(&mut mods);
    for (i, m) in mods.iter().enumerate() {
        text.push_str(if i == 0 {
            " "
        } else if i + 1 == mods.len() {
            if mods.len() == 2 { choose(rng, &[", ", " and ", " "]) } else { choose(rng, &[", ", " and "]) }
        } else {
            ", "
        });
        text.push_str(m);
    }
    text
}

/// The text of a description: a noun phrase with its modifiers, as a sentence.
pub fn realise(expr: &Expr, moving: bool, rng: &mut Rng) -> String {
    let phrase = realise_phrase(expr, moving, rng);
    let mut chars = phrase.chars();
    let body = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
        None => String::new(),
    };
    format!("{body}.")
}
