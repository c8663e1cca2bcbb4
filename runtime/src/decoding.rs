//! How the decoder picks tokens, and how several sampled answers to one query become one.
//!
//! Greedy decoding writes each digit of an answer as the most likely one given the digits before
//! it. When the model is unsure of a number's leading digit, that is the mode of a coarse bin, not
//! the number the model believes most: a model torn between "1" and "4" for a depth writes the
//! same leading digit for near and far objects alike. [`Decoding::Consensus`] samples several
//! answers instead and takes, coordinate by coordinate, their median — the estimate that
//! minimises the expected absolute error under the model's own distribution. Yaw, an angle, takes
//! the circular medoid: the sampled yaw closest (in angle) to all the others.

use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Box3d};

use crate::error::{Error, Result};
use crate::protocol::Answer;

/// How the decoder picks the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoding {
    /// The most likely token each step: one answer per query, deterministic.
    Greedy,
    /// `samples` answers per query drawn at `temperature` within the nucleus `top_p`, merged by
    /// [`consensus`]. The draws are reproducible: a grounder opened with the same `seed` and given
    /// the same frames and queries writes the same answers.
    Consensus {
        /// Answers sampled per query (at least 1).
        samples: usize,
        /// Logits are divided by it before the softmax (> 0; 1 = the model's distribution).
        temperature: f32,
        /// Keep the smallest set of most likely tokens whose probability reaches it, in (0, 1].
        top_p: f32,
        /// Seed of the grounder's random generator.
        seed: u64,
    },
}

impl Decoding {
    /// Greedy for `samples <= 1` (the sampling parameters are then unused), else a consensus of
    /// `samples` draws: the command-line form.
    pub fn from_samples(samples: usize, temperature: f32, top_p: f32, seed: u64) -> Self {
        if samples <= 1 { Self::Greedy } else { Self::Consensus { samples, temperature, top_p, seed } }
    }

    /// Decoder rows per query: 1 for greedy, `samples` for consensus.
    pub fn samples(&self) -> usize {
        match self {
            Self::Greedy => 1,
            Self::Consensus { samples, .. } => *samples,
        }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for zero samples, a temperature that is not finite and `> 0`, or
    /// a `top_p` outside `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if let Self::Consensus { samples, temperature, top_p, .. } = *self {
            if samples == 0 {
                return Err(Error::InvalidOptions("consensus decoding needs at least one sample".into()));
            }
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::InvalidOptions(format!(
                    "sampling temperature {temperature} must be finite and > 0"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::InvalidOptions(format!("top_p {top_p} must be in (0, 1]")));
            }
        }
        Ok(())
    }

    /// The generator the grounder draws from (its state carries over from frame to frame).
    pub(crate) fn rng(&self) -> SplitMix64 {
        match self {
            Self::Greedy => SplitMix64::new(0),
            Self::Consensus { seed, .. } => SplitMix64::new(*seed),
        }
    }
}

/// The command-line flags of [`Decoding`], shared by `monovlm-edge` and `monovlm-train eval`
/// (flatten them into a clap parser).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct DecodingArgs {
    /// Answers sampled per query and merged by their coordinate median (1 = greedy decoding).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// With --samples > 1: sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// With --samples > 1: nucleus (top-p) mass kept.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// With --samples > 1: seed of the sampling generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for DecodingArgs {
    /// The flags' defaults: greedy decoding.
    fn default() -> Self {
        Self { samples: 1, temperature: 1.0, top_p: 1.0, seed: 0 }
    }
}

impl DecodingArgs {
    /// The decoding these flags ask for ([`Decoding::from_samples`]).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for `--samples 0` and for a temperature or top-p that
    /// [`Decoding::validate`] refuses, whatever the sample count: a flag that is wrong is an
    /// error even where greedy decoding would not use it.
    pub fn decoding(&self) -> Result<Decoding> {
        if self.samples == 0 {
            return Err(Error::InvalidOptions("--samples must be at least 1 (1 = greedy decoding)".into()));
        }
        let checked = Decoding::Consensus {
            samples: self.samples,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        };
        checked.validate()?;
        Ok(Decoding::from_samples(self.samples, self.temperature, self.top_p, self.seed))
    }
}

/// The next token from one row of logits: never one of `banned`; `None` when no allowed logit is
/// finite (a model that overflowed, e.g. in fp16, has nothing to decode).
pub(crate) fn pick_token(
    row: &[f32],
    banned: &[i64],
    decoding: &Decoding,
    rng: &mut SplitMix64,
) -> Option<i64> {
    let top = argmax(row, banned)?;
    Some(match *decoding {
        Decoding::Greedy => top,
        Decoding::Consensus { temperature, top_p, .. } => sample(row, top, banned, temperature, top_p, rng),
    })
}

/// The largest finite logit's index, skipping `banned`; `None` when there is none. The grounder
/// bans `<|image_pad|>` and `<|video_pad|>`: they stand for image features and are never answer
/// text (the trainer's `answer_logits` bans them the same way, so greedy answers agree).
fn argmax(row: &[f32], banned: &[i64]) -> Option<i64> {
    let mut best = None;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v.is_finite() && (best.is_none() || v > best_v) && !banned.contains(&(i as i64)) {
            best = Some(i as i64);
            best_v = v;
        }
    }
    best
}

/// A draw from `softmax(row / temperature)` restricted to the nucleus `top_p`, never `banned`;
/// `top` is the row's [`argmax`] (the fallback when rounding leaves nothing to draw).
fn sample(row: &[f32], top: i64, banned: &[i64], temperature: f32, top_p: f32, rng: &mut SplitMix64) -> i64 {
    let max = row.get(top as usize).copied().unwrap_or(0.0);
    let weighted = || {
        row.iter()
            .enumerate()
            .filter(|(i, v)| v.is_finite() && !banned.contains(&(*i as i64)))
            .map(|(i, &v)| (i, f64::from((v - max) / temperature).exp()))
            .filter(|(_, w)| *w > 0.0)
    };
    if top_p >= 1.0 {
        // The whole distribution: two passes over the row, no buffer (this runs per row per step).
        let total: f64 = weighted().map(|w| w.1).sum();
        return draw(weighted(), total, rng).unwrap_or(top);
    }
    let mut weights: Vec<(usize, f64)> = weighted().collect();
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let target = f64::from(top_p) * total;
    // The nucleus is almost always a few tokens: order only the `k` heaviest, doubling `k` until
    // they hold the target mass (exact: the nucleus is a prefix of the full descending order).
    let by_weight = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut k = 64.min(weights.len());
    loop {
        if k < weights.len() {
            weights.select_nth_unstable_by(k - 1, by_weight);
        }
        weights[..k].sort_by(by_weight);
        if k == weights.len() || weights[..k].iter().map(|w| w.1).sum::<f64>() >= target {
            break;
        }
        k = (2 * k).min(weights.len());
    }
    let mut before = 0.0;
    // Keep a token while the mass before it is short of top_p (the first always stays).
    let keep = weights[..k]
        .iter()
        .take_while(|w| {
            let keep = before < target;
            before += w.1;
            keep
        })
        .count();
    weights.truncate(keep.max(1));
    let nucleus_total: f64 = weights.iter().map(|w| w.1).sum();
    draw(weights.into_iter(), nucleus_total, rng).unwrap_or(top)
}

/// Inverts the cumulative sum of `weights` (index, weight > 0) at a uniform variate times `total`
/// (their sum); the last index when rounding leaves the variate past the end, `None` for no weights.
fn draw(weights: impl Iterator<Item = (usize, f64)>, total: f64, rng: &mut SplitMix64) -> Option<i64> {
    let mut u = rng.unit() * total;
    let mut last = None;
    for (i, w) in weights {
        if u < w {
            return Some(i as i64);
        }
        u -= w;
        last = Some(i as i64);
    }
    last
}

/// The lower median of `values` (not empty; NaN-free because answers are checked boxes): for an
/// even count the smaller of the two middle values. Like any value between them it minimises the
/// summed absolute error, and it is a value a sample wrote; it leans small by up to half the
/// middle gap (a nearer depth, a smaller size), the convention the measured figures used.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// The sampled yaw with the least total angular distance to the others.
fn circular_medoid(yaws: &[f64]) -> f64 {
    let dist = |a: f64, b: f64| {
        let d = (a - b).rem_euclid(std::f64::consts::TAU);
        d.min(std::f64::consts::TAU - d)
    };
    let cost = |a: f64| yaws.iter().map(|&b| dist(a, b)).sum::<f64>();
    yaws.iter().copied().min_by(|a, b| cost(*a).total_cmp(&cost(*b))).unwrap_or(0.0)
}

/// One answer from several: each 2D-box edge and each 3D centre and size coordinate is the lower
/// median of the answers' values, the yaw their [`circular_medoid`]. `None` for no answers.
///
/// Invariant: the result is a valid answer whenever every input is — the lower median keeps
/// `x1 <= x2` and `y1 <= y2` (order statistics of paired values preserve the pairwise order) and
/// sizes positive — and one answer is returned unchanged.
pub fn consensus(answers: &[Answer]) -> Option<Answer> {
    if answers.is_empty() {
        return None;
    }
    let column = |f: &dyn Fn(&Answer) -> f64| median(&mut answers.iter().map(f).collect::<Vec<_>>());
    let b2: Vec<f64> = (0..4).map(|i| column(&|a: &Answer| a.bbox_2d.to_array()[i])).collect();
    let b3: Vec<f64> = (0..6).map(|i| column(&|a: &Answer| a.bbox_3d.to_array()[i])).collect();
    let yaw = circular_medoid(&answers.iter().map(|a| a.bbox_3d.yaw).collect::<Vec<_>>());
    let bbox_2d = Box2d::new(b2[0], b2[1], b2[2], b2[3]).ok()?;
    let bbox_3d = Box3d::new(b3[0], b3[1], b3[2], b3[3], b3[4], b3[5], yaw).ok()?;
    Some(Answer { bbox_2d, bbox_3d })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn answer(b2: [f64; 4], b3: [f64; 7]) -> Answer {
        Answer {
            bbox_2d: Box2d::new(b2[0], b2[1], b2[2], b2[3]).unwrap(),
            bbox_3d: Box3d::new(b3[0], b3[1], b3[2], b3[3], b3[4], b3[5], b3[6]).unwrap(),
        }
    }

    /// [`sample`] with its argmax computed.
    fn draw_one(row: &[f32], banned: &[i64], temperature: f32, top_p: f32, rng: &mut SplitMix64) -> i64 {
        sample(row, argmax(row, banned).unwrap(), banned, temperature, top_p, rng)
    }

    #[test]
    fn argmax_skips_banned_ids_and_non_finite_logits() {
        assert_eq!(argmax(&[0.0, 5.0, 1.0], &[]), Some(1));
        assert_eq!(argmax(&[0.0, 5.0, 1.0], &[1]), Some(2));
        assert_eq!(argmax(&[-3.0, f32::NAN, f32::INFINITY, -2.0], &[]), Some(3));
        // Nothing finite and allowed: no token, for greedy and sampling alike.
        let dead = [f32::NAN, f32::NEG_INFINITY, 4.0];
        assert_eq!(argmax(&dead, &[2]), None);
        let d = Decoding::Consensus { samples: 2, temperature: 1.0, top_p: 0.9, seed: 0 };
        assert_eq!(pick_token(&dead, &[2], &d, &mut d.rng()), None);
        assert_eq!(pick_token(&dead, &[2], &Decoding::Greedy, &mut d.rng()), None);
    }

    #[test]
    fn the_partial_nucleus_draws_what_a_full_sort_draws() {
        // A 5,000-token row: the k-heaviest selection must give exactly the draws of sorting
        // the whole row, for nuclei of a few tokens and of thousands.
        let row: Vec<f32> = (0..5_000).map(|i| ((i as f32 * 0.731).sin() * 6.0).round() / 2.0).collect();
        let full = |top_p: f32, rng: &mut SplitMix64| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut w: Vec<(usize, f64)> =
                row.iter().enumerate().map(|(i, &v)| (i, f64::from(v - max).exp())).collect();
            w.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let target = f64::from(top_p) * w.iter().map(|x| x.1).sum::<f64>();
            let (mut before, mut keep) = (0.0, 0);
            while keep < w.len() && before < target {
                before += w[keep].1;
                keep += 1;
            }
            w.truncate(keep.max(1));
            let total = w.iter().map(|x| x.1).sum();
            draw(w.into_iter(), total, rng).unwrap()
        };
        for top_p in [0.01, 0.3, 0.9, 0.999] {
            let (mut a, mut b) = (SplitMix64::new(4), SplitMix64::new(4));
            for _ in 0..200 {
                assert_eq!(draw_one(&row, &[], 1.0, top_p, &mut a), full(top_p, &mut b), "top_p {top_p}");
            }
        }
    }

    #[test]
    fn samples_follow_the_softmax_and_skip_banned_ids() {
        // softmax([ln 1, ln 3, big-but-banned]) at T = 1: token 1 three times as often as token 0.
        let row = [0.0f32, 3f32.ln(), 50.0];
        let mut rng = SplitMix64::new(3);
        let n = 20_000;
        let ones = (0..n).filter(|_| draw_one(&row, &[2], 1.0, 1.0, &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "token 1 drawn {share:.3} of the time, expected 0.75");
        // A high temperature flattens: T = 1e6 gives nearly 1/2.
        let ones = (0..n).filter(|_| draw_one(&row, &[2], 1e6, 1.0, &mut rng) == 1).count();
        assert!((ones as f64 / n as f64 - 0.5).abs() < 0.015);
    }

    #[test]
    fn the_nucleus_drops_the_unlikely_tail() {
        // Probabilities 0.6, 0.3, 0.1: top_p 0.8 keeps the first two (0.6 < 0.8, 0.9 >= 0.8).
        let row = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut rng = SplitMix64::new(9);
        let draws: Vec<i64> = (0..5_000).map(|_| draw_one(&row, &[], 1.0, 0.8, &mut rng)).collect();
        assert!(!draws.contains(&2));
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / draws.len() as f64;
        assert!((ones - 1.0 / 3.0).abs() < 0.03, "renormalised 0.3 / 0.9, got {ones:.3}");
        // A tiny nucleus is greedy.
        assert!((0..100).all(|_| draw_one(&row, &[], 1.0, 1e-6, &mut rng) == 0));
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let row: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let d = Decoding::Consensus { samples: 4, temperature: 1.0, top_p: 0.95, seed: 11 };
        let draw =
            |mut rng: SplitMix64| (0..50).map(|_| pick_token(&row, &[], &d, &mut rng)).collect::<Vec<_>>();
        assert_eq!(draw(d.rng()), draw(d.rng()));
        assert_ne!(draw(d.rng()), draw(SplitMix64::new(12)));
    }

    #[test]
    fn the_consensus_is_the_coordinate_median_and_ignores_an_outlier() {
        let answers = [
            answer([10.0, 20.0, 50.0, 60.0], [1.0, 1.5, 10.0, 4.0, 1.8, 1.5, 0.1]),
            answer([12.0, 22.0, 52.0, 64.0], [1.2, 1.6, 12.0, 4.2, 1.7, 1.6, 0.2]),
            answer([300.0, 5.0, 400.0, 90.0], [-9.0, 0.5, 60.0, 0.9, 0.6, 1.7, -2.9]),
        ];
        let c = consensus(&answers).unwrap();
        assert_eq!(c.bbox_2d.to_array(), [12.0, 20.0, 52.0, 64.0]);
        let b = c.bbox_3d.to_array();
        assert_eq!(&b[..6], &[1.0, 1.5, 12.0, 4.0, 1.7, 1.6]);
        assert_eq!(b[6], 0.1, "yaw 0.1 is nearest the other two in angle");
        assert_eq!(consensus(&answers[..1]).unwrap(), answers[0]);
        assert!(consensus(&[]).is_none());
    }

    #[test]
    fn the_yaw_medoid_wraps_around_pi() {
        // Across pi the three lie in the order 3.0, 3.1, -3.1 (= 3.18): 3.1 is in the middle,
        // where a median of the raw numbers would pick 3.0.
        assert_eq!(circular_medoid(&[3.1, -3.1, 3.0]), 3.1);
    }

    #[test]
    fn the_default_flags_decode_greedily() {
        assert_eq!(DecodingArgs::default().decoding().unwrap(), Decoding::Greedy);
        let args = |samples, temperature, top_p| DecodingArgs { samples, temperature, top_p, seed: 0 };
        // A wrong flag is refused even where greedy decoding would ignore it.
        for bad in [args(0, 1.0, 1.0), args(1, 1.0, 7.0), args(1, -1.0, 1.0), args(4, f32::NAN, 1.0)] {
            assert!(matches!(bad.decoding(), Err(Error::InvalidOptions(_))), "{bad:?}");
        }
        assert_eq!(args(1, 0.5, 0.9).decoding().unwrap(), Decoding::Greedy);
    }

    #[test]
    fn one_sample_is_greedy() {
        assert_eq!(Decoding::from_samples(1, 0.7, 0.9, 3), Decoding::Greedy);
        assert_eq!(Decoding::from_samples(0, 0.7, 0.9, 3), Decoding::Greedy);
        assert_eq!(
            Decoding::from_samples(5, 0.7, 0.9, 3),
            Decoding::Consensus { samples: 5, temperature: 0.7, top_p: 0.9, seed: 3 }
        );
        assert_eq!(Decoding::from_samples(5, 0.7, 0.9, 3).samples(), 5);
        assert_eq!(Decoding::Greedy.samples(), 1);
    }

    #[test]
    fn invalid_consensus_parameters_are_rejected() {
        let ok = Decoding::Consensus { samples: 8, temperature: 1.0, top_p: 1.0, seed: 0 };
        assert!(ok.validate().is_ok());
        assert!(Decoding::Greedy.validate().is_ok());
        for bad in [
            Decoding::Consensus { samples: 0, temperature: 1.0, top_p: 1.0, seed: 0 },
            Decoding::Consensus { samples: 4, temperature: 0.0, top_p: 1.0, seed: 0 },
            Decoding::Consensus { samples: 4, temperature: f32::NAN, top_p: 1.0, seed: 0 },
            Decoding::Consensus { samples: 4, temperature: 1.0, top_p: 0.0, seed: 0 },
            Decoding::Consensus { samples: 4, temperature: 1.0, top_p: 1.5, seed: 0 },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidOptions(_))), "{bad:?}");
        }
    }
}
