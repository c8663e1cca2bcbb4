//! Counters and latency histograms, written in the Prometheus text exposition format.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use super::state::lock;
use crate::grounder::Timings;

/// Upper bounds of the latency histogram buckets, seconds (fixed, so that series from several
/// daemons aggregate); `+Inf` is implied.
const BUCKETS_S: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0];

/// Stages timed per grounded frame, in `Timings` order.
const STAGES: [&str; 5] = ["preprocess", "vision", "prefill", "decode", "total"];

/// Processed frames the frame rate is averaged over.
const FPS_WINDOW: usize = 30;

/// A cumulative histogram over [`BUCKETS_S`].
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations at or below each bound (non-cumulative here, summed when written).
    counts: [u64; BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS_S.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

#[derive(Debug, Default)]
struct Inner {
    frames_captured: u64,
    frames_processed: u64,
    source_errors: u64,
    stream_lagged: u64,
    stages: [Histogram; STAGES.len()],
    requests: BTreeMap<u16, u64>,
    recent: VecDeque<Instant>,
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

/// Gauges read from elsewhere when the metrics are written.
pub(crate) struct Gauges<'a> {
    /// Frames replaced before inference took them.
    pub frames_dropped: u64,
    /// Jobs waiting.
    pub queue_depth: usize,
    /// Jobs that may wait.
    pub queue_capacity: usize,
    /// Standing queries.
    pub standing_queries: usize,
    /// The decoder's execution provider.
    pub provider: &'a str,
}

impl Metrics {
    /// A frame arrived from the source.
    pub(crate) fn frame_captured(&self) {
        lock(&self.inner).frames_captured += 1;
    }

    /// A source read failed.
    pub(crate) fn source_error(&self) {
        lock(&self.inner).source_errors += 1;
    }

    /// A frame was processed (its snapshot published).
    pub(crate) fn frame_processed(&self) {
        let mut m = lock(&self.inner);
        m.frames_processed += 1;
        m.recent.push_back(Instant::now());
        while m.recent.len() > FPS_WINDOW {
            m.recent.pop_front();
        }
    }

    /// The stage timings of one grounded frame or request.
    pub(crate) fn grounded(&self, t: &Timings) {
        let mut m = lock(&self.inner);
        let values = [t.preprocess_ms, t.vision_ms, t.prefill_ms, t.decode_ms, t.total_ms];
        for (h, ms) in m.stages.iter_mut().zip(values) {
            h.observe(ms / 1e3);
        }
    }

    /// A response with this status was sent.
    pub(crate) fn request(&self, status: u16) {
        *lock(&self.inner).requests.entry(status).or_default() += 1;
    }

    /// A stream client skipped `n` messages.
    pub(crate) fn lagged(&self, n: u64) {
        lock(&self.inner).stream_lagged += n;
    }

    /// Processed frames per second over the last [`FPS_WINDOW`] frames (0 when the newest is older
    /// than the window span, i.e. processing stalled).
    pub(crate) fn fps(&self) -> f64 {
        fps_of(&lock(&self.inner).recent)
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, g: &Gauges<'_>) -> String {
        let m = lock(&self.inner);
        let mut out = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        scalar(
            "monovlm_frames_captured_total",
            "counter",
            "Frames read from the source.",
            m.frames_captured.to_string(),
        );
        scalar(
            "monovlm_frames_processed_total",
            "counter",
            "Frames the standing queries were evaluated on.",
            m.frames_processed.to_string(),
        );
        scalar(
            "monovlm_frames_dropped_total",
            "counter",
            "Frames replaced by a newer one before inference took them.",
            g.frames_dropped.to_string(),
        );
        scalar(
            "monovlm_source_errors_total",
            "counter",
            "Failed frame-source reads.",
            m.source_errors.to_string(),
        );
        scalar(
            "monovlm_frame_rate_fps",
            "gauge",
            "Processed frames per second.",
            format!("{:.3}", fps_of(&m.recent)),
        );
        scalar("monovlm_queue_depth", "gauge", "Requests waiting for inference.", g.queue_depth.to_string());
        scalar("monovlm_queue_capacity", "gauge", "Requests that may wait.", g.queue_capacity.to_string());
        scalar("monovlm_standing_queries", "gauge", "Standing queries.", g.standing_queries.to_string());
        scalar(
            "monovlm_stream_lagged_messages_total",
            "counter",
            "Stream messages skipped by slow clients.",
            m.stream_lagged.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP monovlm_provider_info The decoder's execution provider.\n# TYPE monovlm_provider_info gauge\n\
             monovlm_provider_info{{provider=\"{}\"}} 1",
            g.provider
        );
        let _ = writeln!(
            out,
            "# HELP monovlm_stage_latency_seconds Inference time per stage.\n\
             # TYPE monovlm_stage_latency_seconds histogram"
        );
        for (stage, h) in STAGES.iter().zip(&m.stages) {
            let mut cumulative = 0u64;
            for (bound, c) in BUCKETS_S.iter().zip(&h.counts) {
                cumulative += c;
                let _ = writeln!(
                    out,
                    "monovlm_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "monovlm_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\n\
                 monovlm_stage_latency_seconds_sum{{stage=\"{stage}\"}} {}\n\
                 monovlm_stage_latency_seconds_count{{stage=\"{stage}\"}} {}",
                h.count, h.sum_s, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP monovlm_http_requests_total HTTP responses by status.\n# TYPE monovlm_http_requests_total counter"
        );
        for (code, n) in &m.requests {
            let _ = writeln!(out, "monovlm_http_requests_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}

fn fps_of(recent: &VecDeque<Instant>) -> f64 {
    match (recent.front(), recent.back()) {
        (Some(first), Some(last)) if recent.len() > 1 => {
            let span = last.duration_since(*first).as_secs_f64();
            if span <= 0.0 || last.elapsed().as_secs_f64() > span.max(1.0) * 2.0 {
                return 0.0;
            }
            (recent.len() - 1) as f64 / span
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let m = Metrics::default();
        m.grounded(&Timings { total_ms: 30.0, decode_ms: 7.0, ..Timings::default() });
        m.grounded(&Timings { total_ms: 3000.0, ..Timings::default() });
        m.request(200);
        let g = Gauges {
            frames_dropped: 3,
            queue_depth: 1,
            queue_capacity: 4,
            standing_queries: 2,
            provider: "cpu",
        };
        let text = m.render(&g);
        assert!(
            text.contains("monovlm_stage_latency_seconds_bucket{stage=\"total\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(text.contains("monovlm_stage_latency_seconds_bucket{stage=\"total\",le=\"5\"} 2"), "{text}");
        assert!(
            text.contains("monovlm_stage_latency_seconds_bucket{stage=\"total\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("monovlm_frames_dropped_total 3"));
        assert!(text.contains("monovlm_http_requests_total{code=\"200\"} 1"));
        assert!(text.contains("monovlm_provider_info{provider=\"cpu\"} 1"));
    }
}
