//! What the threads and handlers share.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use monovlm_calib::Intrinsics;
use tokio::sync::{broadcast, oneshot, watch};

use super::ServeConfig;
use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::grounder::Grounding;
use crate::protocol::Query;
use crate::session::Device;
use crate::source::{Frame, LatestFrame};

/// Locks a mutex whatever a panicking holder left: every state here stays consistent between
/// statements, so a poisoned lock holds usable data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Converts monotonic instants to Unix milliseconds against one reference taken at start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
    start_unix_ms: f64,
}

impl Clock {
    fn new() -> Self {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self { start: Instant::now(), start_unix_ms: unix.as_secs_f64() * 1e3 }
    }

    /// Unix time of `t`, milliseconds.
    pub(crate) fn unix_ms(&self, t: Instant) -> u64 {
        let offset_ms = if t >= self.start {
            t.duration_since(self.start).as_secs_f64() * 1e3
        } else {
            -(self.start.duration_since(t).as_secs_f64() * 1e3)
        };
        (self.start_unix_ms + offset_ms).max(0.0) as u64
    }
}

/// One request for the inference thread.
pub(crate) struct Job {
    /// The frame to ground on (a camera frame or a decoded upload).
    pub frame: Arc<Frame>,
    /// Its camera.
    pub camera: Intrinsics,
    /// The queries, grounded together.
    pub queries: Vec<Query>,
    /// Where the result goes; a closed receiver (the client gave up) skips the job.
    pub reply: oneshot::Sender<Result<Vec<Grounding>>>,
}

/// Standing queries in insertion order, with their ids.
#[derive(Debug, Default)]
pub(crate) struct StandingQueries {
    next_id: u64,
    entries: Vec<(String, Query)>,
}

impl StandingQueries {
    /// Adds `query` under `id` (a fresh `qN` when `None`), replacing a query of the same id.
    /// Returns the id and whether it is new; `None` when adding would exceed `max`.
    pub(crate) fn upsert(&mut self, id: Option<String>, query: Query, max: usize) -> Option<(String, bool)> {
        if let Some(id) = &id
            && let Some(slot) = self.entries.iter_mut().find(|(i, _)| i == id)
        {
            slot.1 = query;
            return Some((id.clone(), false));
        }
        if self.entries.len() >= max {
            return None;
        }
        let id = id.unwrap_or_else(|| {
            loop {
                self.next_id += 1;
                let candidate = format!("q{}", self.next_id);
                if !self.entries.iter().any(|(i, _)| *i == candidate) {
                    break candidate;
                }
            }
        });
        self.entries.push((id.clone(), query));
        Some((id, true))
    }

    /// Removes the query `id`; false when there is none.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(i, _)| i != id);
        self.entries.len() != before
    }

    /// The queries and their ids.
    pub(crate) fn list(&self) -> Vec<(String, Query)> {
        self.entries.clone()
    }
}

/// What the source thread last reported.
#[derive(Debug, Default)]
pub(crate) struct CameraStatus {
    /// When the newest frame arrived.
    pub last_frame: Option<Instant>,
    /// The error of the last failed read, cleared by the next frame.
    pub error: Option<String>,
}

/// A processed frame: the image and the standing queries' results (or why there are none).
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Daemon-wide frame number.
    pub seq: u64,
    /// The frame.
    pub frame: Arc<Frame>,
    /// Standing query id and its result.
    pub results: Vec<(String, Grounding)>,
    /// The JPEG with the boxes drawn, encoded on first use (`Err`: the encoder's message).
    pub jpeg: OnceLock<std::result::Result<Bytes, String>>,
    /// The JPEG without boxes (the viewer draws its own), encoded on first use.
    pub jpeg_raw: OnceLock<std::result::Result<Bytes, String>>,
}

/// Everything shared by the threads and the handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration, validated.
    pub config: ServeConfig,
    /// The decoder's execution provider.
    pub provider: Device,
    /// Monotonic-to-Unix time.
    pub clock: Clock,
    /// Standing queries.
    pub queries: Mutex<StandingQueries>,
    /// Source health.
    pub camera: Mutex<CameraStatus>,
    /// The newest camera frame (for requests without an image).
    pub latest: Mutex<Option<Arc<Frame>>>,
    /// Frames for the standing queries, latest-frame semantics (counts drops).
    pub slot: LatestFrame,
    /// The newest snapshot.
    pub snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    /// One JSON message per processed frame.
    pub messages: broadcast::Sender<Arc<str>>,
    /// The request queue (bounded: `try_send` fails when full).
    pub jobs: SyncSender<Job>,
    /// Jobs queued, not yet taken by the inference thread.
    pub queue_depth: AtomicUsize,
    /// Uploads being decoded at once, at most `queue_capacity` (their decoded images are what
    /// uploads cost in memory).
    pub decode_permits: Arc<tokio::sync::Semaphore>,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// False once the inference thread has ended (it never should).
    pub model_alive: AtomicBool,
    /// Set when the server stops: the threads end.
    pub stop: AtomicBool,
    /// Flips to true on shutdown: streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The shared state and the receiving end of its job queue.
    pub(crate) fn new(
        config: ServeConfig,
        provider: Device,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, Receiver<Job>) {
        let (jobs, rx) = sync_channel(config.queue_capacity);
        let mut queries = StandingQueries::default();
        for q in &config.initial_queries {
            // `validate` checked the count.
            queries.upsert(None, q.clone(), usize::MAX);
        }
        let (messages, _) = broadcast::channel(config.stream_buffer);
        let shared = Self {
            provider,
            clock: Clock::new(),
            queries: Mutex::new(queries),
            camera: Mutex::new(CameraStatus::default()),
            latest: Mutex::new(None),
            slot: LatestFrame::new(),
            snapshot: watch::Sender::new(None),
            messages,
            jobs,
            queue_depth: AtomicUsize::new(0),
            decode_permits: Arc::new(tokio::sync::Semaphore::new(config.queue_capacity)),
            metrics: Metrics::default(),
            model_alive: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            shutdown,
            config,
        };
        (Arc::new(shared), rx)
    }

    /// Why the camera is not ready (`None` when a frame arrived within the staleness limit).
    pub(crate) fn camera_problem(&self) -> Option<String> {
        let status = lock(&self.camera);
        let age = status.last_frame.map(|t| t.elapsed());
        if age.is_some_and(|a| a <= self.config.staleness) {
            return None;
        }
        Some(match (&status.error, age) {
            (Some(e), _) => e.clone(),
            (None, Some(a)) => format!("no frame for {:.1} s", a.as_secs_f64()),
            (None, None) => "no frame yet".into(),
        })
    }

    /// The camera of `frame`: its own intrinsics, else the configured ones (rescaled to its size).
    ///
    /// # Errors
    /// [`Error::ServeConfig`] when there are none; [`Error::ImageSizeMismatch`] when the configured
    /// ones are for another aspect ratio.
    pub(crate) fn camera_of(&self, frame: &Frame) -> Result<Intrinsics> {
        if let Some(k) = &frame.intrinsics {
            return Ok(k.clone());
        }
        let Some(k) = &self.config.default_intrinsics else {
            return Err(Error::ServeConfig(
                "no camera intrinsics for this frame: start the daemon with --intrinsics FILE".into(),
            ));
        };
        crate::source::fit_intrinsics(k, frame.image.dimensions())
    }
}
