//! The breakdowns of the Mono3DVG evaluation: Unique/Multiple, Near/Medium/Far, Easy/Moderate/Hard.
//!
//! Taken from `test_instanceID_split.json` when it has the group, as the reference evaluator does
//! (`lib/helpers/tester_helper.py`: Unique if the instance is listed as Unique, else Multiple; the
//! first of Near/Medium/Far and of Easy/Moderate/Hard that lists it, else none). Otherwise computed
//! from the labels with DESIGN.md's definitions:
//! - **Unique**: the only annotated object of its class (`objectName`) in its image; else Multiple.
//!   Only objects with a description are known, so this can call an object Unique that shares its
//!   class with an undescribed one.
//! - **Near / Medium / Far**: ground-truth depth `z` in `[0, 15]`, `(15, 35]`, over 35 m.
//! - **Easy / Moderate / Hard** (KITTI): 2D box height `>= 40 / 25 / 25` px, truncation
//!   `<= 0.15 / 0.3 / 0.5`, occlusion `0 / <= 1 / <= 2`; the first that holds. Objects meeting none
//!   are in no difficulty. The height is `y2 - y1` (our exclusive-edge convention, as the KITTI devkit);
//!   the Mono3DVG code adds 1 pixel, which only matters for boxes 24 or 39 px high.

use std::collections::{BTreeSet, HashMap};

pub use monovlm_calib::kitti::Difficulty;
use serde::Serialize;

pub use crate::data::mono3drefer::{DistanceBand, MEDIUM_MAX_DEPTH_M, NEAR_MAX_DEPTH_M, distance_band};
use crate::data::mono3drefer::{InstanceSplit, Record};

/// Whether the object is the only one of its class in its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Uniqueness {
    /// The only one of its class.
    Unique,
    /// One of several.
    Multiple,
}

/// The categories of one sample; `None` where it is in no category of that group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Categories {
    /// Unique or Multiple.
    pub uniqueness: Uniqueness,
    /// Near, Medium or Far.
    pub distance: Option<DistanceBand>,
    /// Easy, Moderate or Hard.
    pub difficulty: Option<Difficulty>,
}

impl Categories {
    /// The names of the breakdowns this sample counts in (`Unique`, `Near`, `Easy`, ...).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec![match self.uniqueness {
            Uniqueness::Unique => "Unique",
            Uniqueness::Multiple => "Multiple",
        }];
        names.extend(self.distance.map(|d| match d {
            DistanceBand::Near => "Near",
            DistanceBand::Medium => "Medium",
            DistanceBand::Far => "Far",
        }));
        names.extend(self.difficulty.map(|d| match d {
            Difficulty::Easy => "Easy",
            Difficulty::Moderate => "Moderate",
            Difficulty::Hard => "Hard",
        }));
        names
    }
}

/// Where each group of categories came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CategorySource {
    /// `test_instanceID_split.json`.
    SplitFile,
    /// Computed from the labels (DESIGN.md's definitions).
    Labels,
}

/// The source of each group of categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CategorySources {
    /// Unique/Multiple.
    pub uniqueness: CategorySource,
    /// Near/Medium/Far.
    pub distance: CategorySource,
    /// Easy/Moderate/Hard.
    pub difficulty: CategorySource,
}

/// The categories of `records` (one split), from `split` where it has each group, else from the
/// labels; `all_records` are every record of the dataset (for the per-image class counts).
pub fn categorize<'a>(
    records: &[Record],
    all_records: impl Iterator<Item = &'a Record>,
    split: Option<&InstanceSplit>,
) -> (Vec<Categories>, CategorySources) {
    let has = |sets: [&BTreeSet<u64>; 3]| sets.iter().any(|s| !s.is_empty());
    let file_uniqueness = split.filter(|s| !s.unique.is_empty() || !s.multiple.is_empty());
    let file_distance = split.filter(|s| has([&s.near, &s.medium, &s.far]));
    let file_difficulty = split.filter(|s| has([&s.easy, &s.moderate, &s.hard]));
    let source = |f: Option<&InstanceSplit>| {
        if f.is_some() { CategorySource::SplitFile } else { CategorySource::Labels }
    };
    let sources = CategorySources {
        uniqueness: source(file_uniqueness),
        distance: source(file_distance),
        difficulty: source(file_difficulty),
    };

    // Distinct annotated instances per (image, class).
    let mut instances: HashMap<(String, String), BTreeSet<u64>> = HashMap::new();
    if file_uniqueness.is_none() {
        for r in all_records {
            instances
                .entry((r.image.clone(), r.object_name.to_lowercase()))
                .or_default()
                .insert(r.instance_id);
        }
    }

    let categories = records
        .iter()
        .map(|r| {
            let id = r.instance_id;
            let uniqueness = match file_uniqueness {
                Some(s) => {
                    if s.unique.contains(&id) {
                        Uniqueness::Unique
                    } else {
                        Uniqueness::Multiple
                    }
                }
                None => {
                    let n = instances
                        .get(&(r.image.clone(), r.object_name.to_lowercase()))
                        .map_or(1, BTreeSet::len);
                    if n <= 1 { Uniqueness::Unique } else { Uniqueness::Multiple }
                }
            };
            let distance = match file_distance {
                Some(s) => [
                    (&s.near, DistanceBand::Near),
                    (&s.medium, DistanceBand::Medium),
                    (&s.far, DistanceBand::Far),
                ]
                .into_iter()
                .find(|(set, _)| set.contains(&id))
                .map(|(_, d)| d),
                None => Some(distance_band(r.box3d.z)),
            };
            let difficulty = match file_difficulty {
                Some(s) => [
                    (&s.easy, Difficulty::Easy),
                    (&s.moderate, Difficulty::Moderate),
                    (&s.hard, Difficulty::Hard),
                ]
                .into_iter()
                .find(|(set, _)| set.contains(&id))
                .map(|(_, d)| d),
                None => r.label.difficulty(),
            };
            Categories { uniqueness, distance, difficulty }
        })
        .collect();
    (categories, sources)
}
