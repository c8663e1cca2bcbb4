//! The source thread and the inference thread.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use monovlm_calib::Intrinsics;

use super::OpenSource;
use super::state::{Job, Shared, Snapshot, lock};
use crate::error::{Error, Result};
use crate::grounder::{Grounder, Grounding, Timings};
use crate::protocol::Query;
use crate::session::Device;
use crate::source::{Frame, FrameSource};

/// First wait after a source error; doubled per consecutive error up to [`BACKOFF_MAX`].
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait between retries of a failing source (also bounds how late a stop is seen).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Consecutive read errors after which the source is closed and reopened.
const REOPEN_AFTER_ERRORS: u32 = 5;
/// How long the inference thread waits for a frame before looking at the queue again; bounds
/// the extra latency of a request arriving while it is idle.
const POLL: Duration = Duration::from_millis(10);

/// Starts the thread that reads frames until the server stops.
pub(crate) fn spawn_source_thread(shared: Arc<Shared>, mut open: OpenSource) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("monovlm-source".into())
        .spawn(move || source_loop(&shared, &mut open))
        .map(drop)
}

/// Starts the thread that owns the grounder.
pub(crate) fn spawn_inference_thread(
    shared: Arc<Shared>,
    mut grounder: Grounder,
    jobs: Receiver<Job>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("monovlm-inference".into())
        .spawn(move || {
            inference_loop(&shared, &mut grounder, &jobs);
            shared.model_alive.store(false, Ordering::SeqCst);
        })
        .map(drop)
}

/// Records a source failure and waits out the backoff (doubling it).
fn source_failed(shared: &Shared, message: String, backoff: &mut Duration) {
    tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64, "frame source failed");
    shared.metrics.source_error();
    lock(&shared.camera).error = Some(message);
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

fn source_loop(shared: &Shared, open: &mut OpenSource) {
    // `ServeConfig::validate` checked that the period is a duration.
    let period = shared.config.replay_fps.and_then(|fps| Duration::try_from_secs_f64(1.0 / fps).ok());
    let mut source: Option<Box<dyn FrameSource>> = None;
    let mut seq = 0u64;
    let mut backoff = BACKOFF_INITIAL;
    let mut failures = 0u32;
    let mut frames_since_open = 0u64;
    let mut next_due = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let src = match &mut source {
            Some(s) => s,
            None => match open() {
                Ok(s) => {
                    if seq == 0 {
                        tracing::info!(source = s.describe(), "frame source open");
                    } else {
                        tracing::debug!(source = s.describe(), "frame source reopened (replay or recovery)");
                    }
                    frames_since_open = 0;
                    source.insert(s)
                }
                Err(e) => {
                    source_failed(shared, e.to_string(), &mut backoff);
                    continue;
                }
            },
        };
        match src.next_frame() {
            Ok(Some(mut frame)) => {
                if let Some(p) = period {
                    let now = Instant::now();
                    if next_due > now {
                        std::thread::sleep(next_due - now);
                    }
                    next_due = next_due.max(now) + p;
                }
                frame.index = seq;
                frame.captured = Instant::now();
                seq += 1;
                frames_since_open += 1;
                backoff = BACKOFF_INITIAL;
                failures = 0;
                shared.metrics.frame_captured();
                shared.slot.put(frame.clone());
                *lock(&shared.latest) = Some(Arc::new(frame));
                let mut camera = lock(&shared.camera);
                camera.last_frame = Some(Instant::now());
                camera.error = None;
            }
            Ok(None) => {
                // A finite source ended: replay it, as a camera would go on.
                let name = src.describe();
                source = None;
                if frames_since_open == 0 {
                    source_failed(shared, format!("{name}: the source has no frame"), &mut backoff);
                }
            }
            Err(e) => {
                failures += 1;
                source_failed(shared, e.to_string(), &mut backoff);
                if failures >= REOPEN_AFTER_ERRORS {
                    tracing::warn!(failures, "reopening the frame source");
                    source = None;
                    failures = 0;
                }
            }
        }
    }
}

/// Grounds on the inference thread; a panic inside the model fails this call only.
fn ground(
    grounder: &mut Grounder,
    frame: &Frame,
    queries: &[Query],
    camera: &Intrinsics,
) -> Result<Vec<Grounding>> {
    panic_to_error(|| grounder.ground(frame, queries, camera))
}

/// Runs `f`; a panic inside it becomes [`Error::Inference`] (with the panic's message) for this call,
/// and the thread goes on serving.
fn panic_to_error<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Inference {
            graph: "decoder",
            message: format!("the model panicked on this input: {detail}"),
        })
    })
}

/// Requests and standing-query frames alternate when both wait, so that neither starves: a
/// request waits for at most one frame, and the stream goes on (at a lower rate) under any request
/// load.
fn inference_loop(shared: &Shared, grounder: &mut Grounder, jobs: &Receiver<Job>) {
    let mut frame_turn = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if std::mem::take(&mut frame_turn)
            && let Some(frame) = shared.slot.take(Duration::ZERO)
        {
            process_frame(shared, grounder, frame);
        }
        match jobs.try_recv() {
            Ok(job) => {
                shared.queue_depth.fetch_sub(1, Ordering::SeqCst);
                run_job(shared, grounder, job);
                frame_turn = true;
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
        if let Some(frame) = shared.slot.take(POLL) {
            process_frame(shared, grounder, frame);
        }
    }
}

fn run_job(shared: &Shared, grounder: &mut Grounder, job: Job) {
    if job.reply.is_closed() {
        // The client timed out or went away while the job waited.
        return;
    }
    let result = ground(grounder, &job.frame, &job.queries, &job.camera);
    if let Ok(Some(first)) = result.as_ref().map(|g| g.first()) {
        shared.metrics.grounded(&first.timings);
    }
    // A receiver gone since is not an error of ours.
    let _ = job.reply.send(result);
}

/// A standing-query result: its id and the grounding's fields.
#[derive(serde::Serialize)]
struct Entry<'a> {
    id: &'a str,
    #[serde(flatten)]
    grounding: &'a Grounding,
}

/// The stream message of one processed frame (`docs/api.md`).
#[derive(serde::Serialize)]
struct FrameMessage<'a> {
    r#type: &'static str,
    seq: u64,
    frame_name: &'a str,
    width: u32,
    height: u32,
    captured_unix_ms: u64,
    processed_unix_ms: u64,
    latency_ms: f64,
    fps: f64,
    provider: Device,
    timings: Option<&'a Timings>,
    results: Vec<Entry<'a>>,
    error: Option<&'a str>,
}

fn process_frame(shared: &Shared, grounder: &mut Grounder, frame: Frame) {
    let queries = lock(&shared.queries).list();
    let frame = Arc::new(frame);
    let (results, error) = if queries.is_empty() {
        (Vec::new(), None)
    } else {
        let qs: Vec<Query> = queries.iter().map(|(_, q)| q.clone()).collect();
        match shared.camera_of(&frame).and_then(|k| ground(grounder, &frame, &qs, &k)) {
            Ok(groundings) => {
                if let Some(first) = groundings.first() {
                    shared.metrics.grounded(&first.timings);
                }
                (queries.into_iter().map(|(id, _)| id).zip(groundings).collect(), None)
            }
            Err(e) => {
                tracing::debug!(error = %e, seq = frame.index, "standing queries failed on a frame");
                (Vec::new(), Some(e.to_string()))
            }
        }
    };
    let processed = Instant::now();
    shared.metrics.frame_processed();
    let message = FrameMessage {
        r#type: "frame",
        seq: frame.index,
        frame_name: &frame.name,
        width: frame.image.width(),
        height: frame.image.height(),
        captured_unix_ms: shared.clock.unix_ms(frame.captured),
        processed_unix_ms: shared.clock.unix_ms(processed),
        latency_ms: processed.duration_since(frame.captured).as_secs_f64() * 1e3,
        fps: shared.metrics.fps(),
        provider: shared.provider,
        timings: results.first().map(|(_, g)| &g.timings),
        results: results.iter().map(|(id, g)| Entry { id, grounding: g }).collect(),
        error: error.as_deref(),
    };
    match serde_json::to_string(&message) {
        // No subscriber is not an error.
        Ok(json) => drop(shared.messages.send(Arc::from(json))),
        Err(e) => tracing::warn!(error = %e, "stream message not serialisable"),
    }
    let seq = frame.index;
    shared.snapshot.send_replace(Some(Arc::new(Snapshot {
        seq,
        frame,
        results,
        jpeg: Default::default(),
        jpeg_raw: Default::default(),
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_inference_error_and_the_thread_goes_on() {
        let panicked = panic_to_error::<u32>(|| panic!("index out of bounds: the len is 3"));
        match panicked {
            Err(Error::Inference { graph, message }) => {
                assert_eq!(graph, "decoder");
                assert!(message.contains("the model panicked") && message.contains("len is 3"), "{message}");
            }
            other => panic!("expected an inference error, got {other:?}"),
        }
        let formatted = panic_to_error::<u32>(|| panic!("{} tokens", 7));
        assert!(matches!(formatted, Err(Error::Inference { message, .. }) if message.ends_with("7 tokens")));
        assert_eq!(panic_to_error(|| Ok(5)).ok(), Some(5));
        let failed = panic_to_error::<u32>(|| Err(Error::EmptyImage { width: 0, height: 1 }));
        assert!(matches!(failed, Err(Error::EmptyImage { .. })));
    }
}
