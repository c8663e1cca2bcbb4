//! The camera daemon: an HTTP/WebSocket API over one [`Grounder`] and one frame source.
//!
//! Threads and tasks, and what each owns:
//! - the **source thread** (std) reads frames, numbers them (`seq`, monotonic over replays), keeps
//!   the newest for `POST /v1/ground` and offers it to a [`LatestFrame`](crate::source::LatestFrame)
//!   slot; source errors are recorded (`/readyz`) and retried with backoff, a finite source is
//!   reopened and replayed;
//! - the **inference thread** (std) owns the [`Grounder`] (its sessions are `&mut`): it serves the
//!   bounded request queue and grounds the standing queries on the newest frame of the slot,
//!   alternating when both wait (latest-frame semantics: frames it had no time for are counted as
//!   dropped);
//! - the **tokio runtime** runs the axum server; handlers never block it: a request is a job on
//!   the queue answered through a `oneshot`, image decoding and JPEG encoding run in
//!   `spawn_blocking`.
//!
//! Per processed frame one JSON message goes to a `broadcast` channel (WebSocket and SSE clients;
//! a slow client skips messages rather than growing memory) and one snapshot to a `watch` channel
//! (`/v1/frame.jpg`, `/v1/stream.mjpeg`). The endpoints are documented in `docs/api.md`.
//!
//! Security: an address that is not loopback is refused without an API key unless
//! [`ServeConfig::insecure`] is set; no endpoint reads files (uploads are decoded from memory).

mod api;
mod metrics;
mod state;
mod stream;
mod worker;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monovlm_calib::Intrinsics;
use tokio::sync::watch;

use self::state::Shared;
use crate::error::{Error, Result};
use crate::grounder::Grounder;
use crate::protocol::{MAX_QUERY_CHARS, Query};
use crate::source::FrameSource;

/// Opens (or reopens) the frame source: called at start, when a finite source has ended (replay)
/// and after a source that cannot be read any more is given up.
pub type OpenSource = Box<dyn FnMut() -> Result<Box<dyn FrameSource>> + Send>;

/// How long requests in flight may take to finish once a shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The default listening address: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// How the daemon runs: address, security and every limit.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port; see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Bearer token required on every endpoint but `/healthz` and the viewer page, when set.
    pub api_key: Option<String>,
    /// Allow a non-loopback address without an API key.
    pub insecure: bool,
    /// Requests waiting for the inference thread at most; one more gets 503 + `Retry-After`.
    pub queue_capacity: usize,
    /// Time a request may wait and run before it gets 504.
    pub request_timeout: Duration,
    /// Largest request body, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive (longer: 408; a stalled client does not hold a
    /// connection, or a shutdown, forever).
    pub body_timeout: Duration,
    /// Longest query, characters (at most the protocol's [`MAX_QUERY_CHARS`]).
    pub max_query_chars: usize,
    /// Standing queries at most.
    pub max_standing_queries: usize,
    /// A camera frame older than this makes `/readyz` fail and frame-less requests 503.
    pub staleness: Duration,
    /// The `Retry-After` sent with a full queue.
    pub retry_after: Duration,
    /// Frames per second a replayed source (image directory, demo) is paced at; `None`: as fast
    /// as it reads (a live camera paces itself).
    pub replay_fps: Option<f64>,
    /// The camera's intrinsics, for frames without their own (KITTI per-frame calibration) and for
    /// uploads without `intrinsics`; rescaled to a frame of the same aspect ratio.
    pub default_intrinsics: Option<Intrinsics>,
    /// Standing queries at start (ids `q1`, `q2`, ...).
    pub initial_queries: Vec<Query>,
    /// Stream messages buffered per WebSocket/SSE client before it skips (lags).
    pub stream_buffer: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            api_key: None,
            insecure: false,
            queue_capacity: 4,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 8 << 20,
            body_timeout: Duration::from_secs(10),
            max_query_chars: MAX_QUERY_CHARS,
            max_standing_queries: 16,
            staleness: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            replay_fps: None,
            default_intrinsics: None,
            initial_queries: Vec::new(),
            stream_buffer: 16,
        }
    }
}

impl ServeConfig {
    /// Checks the security rule and the limits.
    ///
    /// # Errors
    /// [`Error::ServeConfig`] for a non-loopback address without an API key (and without
    /// `insecure`), an empty API key, or a zero limit.
    pub fn validate(&self) -> Result<()> {
        if let Some(key) = &self.api_key
            && key.trim().is_empty()
        {
            return Err(Error::ServeConfig("the API key is empty".into()));
        }
        if !self.listen.ip().is_loopback() && self.api_key.is_none() && !self.insecure {
            return Err(Error::ServeConfig(format!(
                "refusing to listen on {} without an API key: it is reachable from other hosts. Pass \
                 --api-key KEY (clients send `Authorization: Bearer KEY`), or --insecure to serve it \
                 unauthenticated, or listen on 127.0.0.1",
                self.listen
            )));
        }
        let zero = [
            ("queue capacity", self.queue_capacity == 0),
            ("request timeout", self.request_timeout.is_zero()),
            ("body limit", self.max_body_bytes == 0),
            ("body timeout", self.body_timeout.is_zero()),
            ("query length limit", self.max_query_chars == 0),
            ("stream buffer", self.stream_buffer == 0),
            ("staleness limit", self.staleness.is_zero()),
            (
                "replay fps",
                self.replay_fps.is_some_and(|f| !(f > 0.0 && Duration::try_from_secs_f64(1.0 / f).is_ok())),
            ),
        ];
        if let Some((what, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(Error::ServeConfig(format!("the {what} must be positive")));
        }
        if self.max_query_chars > MAX_QUERY_CHARS {
            return Err(Error::ServeConfig(format!(
                "the query length limit {} is over the protocol's {MAX_QUERY_CHARS}",
                self.max_query_chars
            )));
        }
        if self.initial_queries.len() > self.max_standing_queries {
            return Err(Error::ServeConfig(format!(
                "{} standing queries given; at most {} are allowed",
                self.initial_queries.len(),
                self.max_standing_queries
            )));
        }
        Ok(())
    }
}

/// Asks a running [`Server`] to stop; cloneable, usable from any thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Starts a graceful shutdown: the listener closes, streams end, requests in flight finish.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// A running daemon. Dropping it without [`Server::wait`] shuts it down too: the listener closes
/// and the source and inference threads end (releasing the camera).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    shared: Arc<Shared>,
    /// The axum task; `None` once [`Server::wait`] took it.
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

impl Server {
    /// Validates `config`, binds its address, starts the source and inference threads and serves.
    /// Must be called inside a tokio runtime (multi-threaded).
    ///
    /// # Errors
    /// [`Error::ServeConfig`] from [`ServeConfig::validate`]; [`Error::Bind`] when the address
    /// cannot be bound.
    pub async fn start(config: ServeConfig, open_source: OpenSource, grounder: Grounder) -> Result<Self> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Bind { addr: config.listen, message: e.to_string() })?;
        let addr =
            listener.local_addr().map_err(|e| Error::Bind { addr: config.listen, message: e.to_string() })?;
        let (tx, rx) = watch::channel(false);
        let (shared, jobs) = Shared::new(config, grounder.provider(), rx.clone());
        worker::spawn_source_thread(shared.clone(), open_source)
            .map_err(|e| Error::ServeConfig(format!("cannot start the source thread: {e}")))?;
        worker::spawn_inference_thread(shared.clone(), grounder, jobs)
            .map_err(|e| Error::ServeConfig(format!("cannot start the inference thread: {e}")))?;
        let app = api::router(shared.clone());
        let asked = |mut stop: watch::Receiver<bool>| async move {
            // An error means the handle is gone: nobody can ask any more, keep serving.
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let (graceful, deadline) = (asked(rx.clone()), asked(rx));
        let task = tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(graceful);
            // Requests in flight get SHUTDOWN_GRACE to finish; a connection that holds on longer
            // (a stalled upload, a client that never reads) does not keep the daemon up.
            tokio::select! {
                served = serving => served,
                () = async { deadline.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                    tracing::warn!("connections still open {} s after shutdown; closing them", SHUTDOWN_GRACE.as_secs());
                    Ok(())
                }
            }
        });
        tracing::info!(%addr, auth = shared.config.api_key.is_some(), "serving");
        Ok(Self { addr, shutdown: ShutdownHandle { tx: Arc::new(tx) }, shared, task: Some(task) })
    }

    /// The bound address (the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until a shutdown is asked for, then stops the threads.
    ///
    /// # Errors
    /// [`Error::Bind`] when the listener fails while serving.
    pub async fn wait(mut self) -> Result<()> {
        let Some(task) = self.task.take() else { return Ok(()) };
        let served = task.await;
        self.shared.stop.store(true, Ordering::SeqCst);
        let addr = self.addr;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Bind { addr, message: e.to_string() }),
            Err(e) => Err(Error::Bind { addr, message: format!("server task failed: {e}") }),
        }
    }

    /// Asks for a shutdown and waits for it ([`Server::wait`]).
    ///
    /// # Errors
    /// As [`Server::wait`].
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.shutdown();
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_exposed_address_needs_a_key_or_insecure() {
        let exposed = ServeConfig { listen: "0.0.0.0:8080".parse().unwrap(), ..ServeConfig::default() };
        let err = exposed.validate().unwrap_err().to_string();
        assert!(err.contains("--api-key"), "{err}");
        assert!(ServeConfig { api_key: Some("k".into()), ..exposed.clone() }.validate().is_ok());
        assert!(ServeConfig { insecure: true, ..exposed.clone() }.validate().is_ok());
        assert!(ServeConfig { api_key: Some(" ".into()), ..exposed }.validate().is_err());
        assert!(ServeConfig::default().validate().is_ok());
        assert!(ServeConfig { queue_capacity: 0, ..ServeConfig::default() }.validate().is_err());
    }
}
