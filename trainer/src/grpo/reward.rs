//! MonoVLM's verifiable rewards, one per curriculum stage, each plus `w_fmt` times the format
//! reward (1 when the protocol parser accepts the answer). An unparsable answer gets 0 in total.
//! The format term is an additive bonus, not EasyR1's convex mix `(1 - w) task + w format`: group
//! normalisation removes constants, so `w_fmt` only sets the gap between a parsed answer and an
//! unparsed one, the same gap in every stage whatever the task term's range (1, or the sum of the
//! compound weights).
//!
//! - stage 1, [`RewardKind::Iou2d`]: `IoU_2d(pred, gt)` in model-input pixels;
//! - stage 2, [`RewardKind::Centre`]: `exp(-beta |c_pred - c_gt|_2)` on 3D centres (metres);
//! - stage 3, [`RewardKind::Compound`]: `w_iou IoU_3d + w_loc exp(-beta_loc |dc|_2)
//!   + w_size exp(-beta_size |d_pred - d_gt|_1 / (|d_gt|_1 + eps)) + w_yaw (cos(dyaw) + 1) / 2`.

use monovlm_calib::{Box2d, Box3d, iou_2d, iou_3d};
use monovlm_runtime::protocol::{Answer, parse_answer};
use serde::{Deserialize, Serialize};

/// Which task reward a stage uses, with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RewardKind {
    /// Stage 1: 2D IoU.
    Iou2d,
    /// Stage 2: 3D-centre distance through `exp(-beta d)`.
    Centre {
        /// Per metre.
        beta: f64,
    },
    /// Stage 3: the compound 3D reward.
    Compound {
        /// Per metre of centre error.
        beta_loc: f64,
        /// Per unit of relative L1 size error.
        beta_size: f64,
        /// Weights of IoU_3d, centre, size and orientation terms.
        weights: [f64; 4],
    },
}

impl RewardKind {
    /// Stage 3 with default betas and equal weights.
    pub fn compound() -> Self {
        Self::Compound { beta_loc: 0.5, beta_size: 2.0, weights: [1.0; 4] }
    }

    /// What is wrong with the parameters, if anything: betas must be finite and positive (a zero
    /// beta makes the term constant, a negative one rewards distance), weights finite, not
    /// negative and not all zero (a constant reward gives every group zero spread: nothing learns).
    pub fn problem(&self) -> Option<String> {
        let beta_ok = |b: f64| b.is_finite() && b > 0.0;
        match self {
            Self::Iou2d => None,
            Self::Centre { beta } if !beta_ok(*beta) => Some(format!("reward beta {beta} must be > 0")),
            Self::Compound { beta_loc, beta_size, .. } if !(beta_ok(*beta_loc) && beta_ok(*beta_size)) => {
                Some(format!("reward beta_loc {beta_loc} and beta_size {beta_size} must be > 0"))
            }
            Self::Compound { weights, .. } if !weights.iter().all(|w| w.is_finite() && *w >= 0.0) => {
                Some(format!("reward weights {weights:?} must be finite and >= 0"))
            }
            Self::Compound { weights, .. } if weights.iter().sum::<f64>() <= 0.0 => {
                Some(format!("reward weights {weights:?} are all zero: the reward would be constant"))
            }
            _ => None,
        }
    }
}

/// A stage's reward: task term plus `w_fmt` times the format term.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardConfig {
    /// The task term.
    pub kind: RewardKind,
    /// Weight of the format reward, `>= 0` (0.1 by default, EasyR1's format weight; added, not mixed).
    pub w_fmt: f64,
}

/// What an answer is scored against: the model-input 2D box and the camera-frame 3D box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Pixels of the model-input image.
    pub box2d: Box2d,
    /// Camera frame.
    pub box3d: Box3d,
}

/// A reward and its parts (parts of terms the stage does not use are still reported, for logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RewardParts {
    /// The reward the optimiser sees.
    pub total: f64,
    /// 1 when the answer parsed.
    pub format: f64,
    /// 2D IoU.
    pub iou_2d: f64,
    /// Exact 3D IoU.
    pub iou_3d: f64,
    /// 3D centre error, metres (NaN when unparsable).
    pub centre_err_m: f64,
    /// Relative L1 size error.
    pub size_err: f64,
    /// `(cos(dyaw) + 1) / 2`.
    pub yaw: f64,
}

const SIZE_EPS: f64 = 1e-6;

/// Largest centre error a reward sees, metres.
const MAX_CENTRE_ERR_M: f64 = 1e6;

/// Scores generated `text` against `target`.
pub fn reward(text: &str, target: &Target, cfg: &RewardConfig) -> RewardParts {
    match parse_answer(text) {
        Ok(answer) => score(&answer, target, cfg),
        Err(_) => RewardParts { centre_err_m: f64::NAN, size_err: f64::NAN, ..RewardParts::default() },
    }
}

/// Scores a parsed answer.
pub fn score(answer: &Answer, target: &Target, cfg: &RewardConfig) -> RewardParts {
    let (p, g) = (&answer.bbox_3d, &target.box3d);
    // Bounded, so that a parsable but absurd answer (1e200 m) cannot make the reward inf or NaN.
    let centre_err_m = (p.x - g.x).hypot(p.y - g.y).hypot(p.z - g.z).min(MAX_CENTRE_ERR_M);
    let size_l1 = (p.l - g.l).abs() + (p.w - g.w).abs() + (p.h - g.h).abs();
    let size_err = size_l1 / (g.l.abs() + g.w.abs() + g.h.abs() + SIZE_EPS);
    let yaw = 0.5 * ((p.yaw - g.yaw).cos() + 1.0);
    let iou2 = iou_2d(&answer.bbox_2d, &target.box2d);
    let iou3 = iou_3d(p, g);
    let task = match &cfg.kind {
        RewardKind::Iou2d => iou2,
        RewardKind::Centre { beta } => (-beta * centre_err_m).exp(),
        RewardKind::Compound { beta_loc, beta_size, weights } => {
            weights[0] * iou3
                + weights[1] * (-beta_loc * centre_err_m).exp()
                + weights[2] * (-beta_size * size_err).exp()
                + weights[3] * yaw
        }
    };
    RewardParts {
        total: task + cfg.w_fmt,
        format: 1.0,
        iou_2d: iou2,
        iou_3d: iou3,
        centre_err_m,
        size_err,
        yaw,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target() -> Target {
        Target {
            box2d: Box2d { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 },
            box3d: Box3d { x: 1.0, y: 1.5, z: 20.0, l: 4.0, w: 2.0, h: 1.5, yaw: 0.0 },
        }
    }

    fn text(b2: [f64; 4], b3: [f64; 7]) -> String {
        format!("<answer>{{\"bbox_2d\": {b2:?}, \"bbox_3d\": {b3:?}}}</answer>")
    }

    #[test]
    fn stage1_is_2d_iou_plus_format() {
        let cfg = RewardConfig { kind: RewardKind::Iou2d, w_fmt: 0.1 };
        // Half-overlapping box: intersection 50, union 150.
        let r = reward(&text([5.0, 0.0, 15.0, 10.0], [1.0, 1.5, 20.0, 4.0, 2.0, 1.5, 0.0]), &target(), &cfg);
        assert!((r.total - (1.0 / 3.0 + 0.1)).abs() < 1e-12, "{r:?}");
        assert_eq!(r.format, 1.0);
    }

    #[test]
    fn stage2_is_exp_of_centre_distance() {
        let cfg = RewardConfig { kind: RewardKind::Centre { beta: 0.5 }, w_fmt: 0.1 };
        // Centre off by (3, 0, 4): 5 m.
        let r = reward(&text([0.0, 0.0, 10.0, 10.0], [4.0, 1.5, 24.0, 4.0, 2.0, 1.5, 0.0]), &target(), &cfg);
        assert!((r.centre_err_m - 5.0).abs() < 1e-12);
        assert!((r.total - ((-2.5f64).exp() + 0.1)).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn stage3_compound_by_hand() {
        let cfg = RewardConfig { kind: RewardKind::compound(), w_fmt: 0.1 };
        // Same centre and size, yaw off by pi/2: IoU = overlap of a 4x2 and a 2x4 footprint = 4/12.
        let r = reward(
            &text([0.0, 0.0, 10.0, 10.0], [1.0, 1.5, 20.0, 4.0, 2.0, 1.5, std::f64::consts::FRAC_PI_2]),
            &target(),
            &cfg,
        );
        let want = 4.0 / 12.0 + 1.0 + 1.0 + 0.5 + 0.1;
        assert!((r.total - want).abs() < 1e-9, "{} vs {want}", r.total);
        // Size off by 1 m in l: relative L1 1/7.5, beta_size 2.
        let r = reward(&text([0.0, 0.0, 10.0, 10.0], [1.0, 1.5, 20.0, 5.0, 2.0, 1.5, 0.0]), &target(), &cfg);
        let iou = 4.0 * 2.0 * 1.5 / (5.0 * 2.0 * 1.5);
        let want = iou + 1.0 + (-2.0 / 7.5f64).exp() + 1.0 + 0.1;
        assert!((r.total - want).abs() < 1e-6, "{} vs {want}", r.total);
    }

    #[test]
    fn parameters_that_teach_nothing_or_reward_distance_are_named() {
        assert_eq!(RewardKind::compound().problem(), None);
        let RewardKind::Compound { beta_loc, beta_size, .. } = RewardKind::compound() else { unreachable!() };
        let zero = RewardKind::Compound { beta_loc, beta_size, weights: [0.0; 4] };
        assert!(zero.problem().unwrap().contains("all zero"));
        let negative = RewardKind::Compound { beta_loc, beta_size, weights: [1.0, -1.0, 1.0, 1.0] };
        assert!(negative.problem().unwrap().contains(">= 0"));
        assert!(RewardKind::Centre { beta: -0.3 }.problem().is_some());
    }

    #[test]
    fn unparsable_answers_get_nothing() {
        for cfg in [
            RewardConfig { kind: RewardKind::Iou2d, w_fmt: 0.1 },
            RewardConfig { kind: RewardKind::compound(), w_fmt: 0.1 },
        ] {
            for t in ["", "the car is there", "<answer>{\"bbox_2d\": [1, 2]}</answer>", "<answer>{"] {
                let r = reward(t, &target(), &cfg);
                assert_eq!((r.total, r.format), (0.0, 0.0), "{t:?}");
            }
        }
    }
}
