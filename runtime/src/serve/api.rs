//! Routes, the JSON error shape, authentication, and the request/response endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use futures_util::StreamExt as _;
use image::RgbImage;
use monovlm_calib::Intrinsics;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::metrics::Gauges;
use super::state::{Job, Shared, Snapshot, lock};
use super::stream;
use crate::error::Error;
use crate::grounder::Grounding;
use crate::protocol::Query;
use crate::source::Frame;

/// The viewer page (inline JS and CSS, no external URLs).
const VIEWER_HTML: &str = include_str!("viewer.html");
/// Largest side of an uploaded image, pixels (decompression bombs are refused before decoding).
const MAX_UPLOAD_SIDE_PX: u32 = 8192;
/// Largest allocation while decoding an upload, bytes (with at most `queue_capacity` decodes at
/// once, this bounds the memory uploads can take however small their compressed bodies are).
const MAX_DECODE_ALLOC: u64 = 128 << 20;
/// Longest standing-query id, characters.
const MAX_ID_CHARS: usize = 64;

/// An error response: `{"error": {"code", "message"}}` with a 4xx/5xx status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Every route, behind the authentication and request-counting middleware.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(viewer))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ground", post(ground))
        .route("/v1/queries", get(list_queries).put(put_query).post(put_query))
        .route("/v1/queries/{id}", delete(delete_query))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/stream.mjpeg", get(stream::mjpeg))
        .route("/v1/frame.jpg", get(frame_jpg))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Compares two byte strings in time that depends on their lengths only, not on where they
/// differ (the API key check must not leak a prefix).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether `req` carries `key`: `Authorization: Bearer KEY` (the scheme name in any case), or
/// `access_token=KEY` in the query string, percent-encoded as browsers send it (they cannot set
/// headers on `<img>` and WebSocket requests; a base64 key's `+`, `/`, `=` arrive as `%2B`...).
fn authorized(req: &Request, key: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let param = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find_map(|(k, v)| (k == "access_token").then_some(v))
    });
    // Both are checked so that the time does not tell which one was present.
    let by_header = bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), key.as_bytes()));
    let by_param = param.is_some_and(|t| constant_time_eq(t.as_bytes(), key.as_bytes()));
    by_header | by_param
}

/// Authentication (all but `/healthz` and the viewer page, which holds no data) and the
/// per-status request counter.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let public = path == "/healthz" || path == "/";
    let denied = !public && s.config.api_key.as_deref().is_some_and(|key| !authorized(&req, key));
    let response = if denied {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send `Authorization: Bearer KEY`",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    s.metrics.request(response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint (see docs/api.md)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

async fn viewer() -> Html<&'static str> {
    Html(VIEWER_HTML)
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let mut reasons = Vec::new();
    if !s.model_alive.load(Ordering::SeqCst) {
        reasons.push("model: the inference thread has stopped".to_owned());
    }
    if let Some(problem) = s.camera_problem() {
        reasons.push(format!("camera: {problem}"));
    }
    if reasons.is_empty() {
        axum::Json(json!({"ready": true, "model": "ok", "camera": "ok", "provider": s.provider}))
            .into_response()
    } else {
        let body = json!({
            "ready": false,
            "reasons": reasons,
            "error": {"code": "not_ready", "message": reasons.join("; ")},
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let gauges = Gauges {
        frames_dropped: s.slot.dropped(),
        queue_depth: s.queue_depth.load(Ordering::SeqCst),
        queue_capacity: s.config.queue_capacity,
        standing_queries: lock(&s.queries).list().len(),
        provider: s.provider.name(),
    };
    let text = s.metrics.render(&gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Whether a frame request wants the boxes drawn (all but `?annotate=0`).
pub(crate) fn wants_boxes(uri: &axum::http::Uri) -> bool {
    !uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "annotate=0" || kv == "annotate=false"))
}

/// The JPEG of the newest processed frame with its boxes (`?annotate=0`: without); its sequence
/// number in `X-Frame-Seq`.
async fn frame_jpg(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> ApiResult<Response> {
    let Some(snap) = s.snapshot.borrow().clone() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_frame", "no frame processed yet"));
    };
    let seq = snap.seq;
    let jpeg = encode(snap, wants_boxes(&uri)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::HeaderName::from_static("x-frame-seq"), HeaderValue::from(seq)),
        ],
        jpeg,
    )
        .into_response())
}

/// A snapshot's JPEG, with or without the boxes, encoded once on a blocking thread.
pub(crate) async fn encode(snap: Arc<Snapshot>, boxes: bool) -> ApiResult<Bytes> {
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", m);
    tokio::task::spawn_blocking(move || {
        if !boxes {
            return snap
                .jpeg_raw
                .get_or_init(|| crate::draw::jpeg(&snap.frame.image).map(Bytes::from))
                .clone();
        }
        snap.jpeg
            .get_or_init(|| {
                let groundings: Vec<&Grounding> = snap.results.iter().map(|(_, g)| g).collect();
                crate::draw::jpeg(&crate::draw::annotate(&snap.frame.image, &groundings)).map(Bytes::from)
            })
            .clone()
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(internal)
}

/// A JSON request body: `Content-Type: application/json`, at most the body limit, parsed.
async fn json_body<T: serde::de::DeserializeOwned>(
    s: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with `Content-Type: application/json`",
        ));
    }
    let limit = s.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {limit} bytes"),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A client that starts a body and stalls must not hold its connection (and a graceful
    // shutdown) forever.
    let read = async {
        let mut bytes = Vec::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let timeout = s.config.body_timeout;
    let bytes = tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {:.1} s", timeout.as_secs_f64()),
        )
    })??;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
    })
}

/// A number given as a JSON number or a string (`"NaN"`, `"inf"` are not JSON numbers; taking the
/// string form lets the daemon say what is wrong with them instead of only "malformed").
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Number {
    Value(f64),
    Text(String),
}

impl Number {
    fn value(&self, field: &str) -> ApiResult<f64> {
        match self {
            Self::Value(v) => Ok(*v),
            Self::Text(t) => {
                t.trim().parse().map_err(|_| invalid_intrinsics(format!("{field}: {t:?} is not a number")))
            }
        }
    }
}

fn invalid_intrinsics(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_intrinsics", message)
}

/// Pinhole intrinsics of the image in a request, pixels.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrinsicsJson {
    fx: Number,
    fy: Number,
    cx: Number,
    cy: Number,
}

impl IntrinsicsJson {
    /// The camera for an image of `size`; focal lengths finite and positive, centre finite.
    fn camera(&self, size: (u32, u32)) -> ApiResult<Intrinsics> {
        let (fx, fy) = (self.fx.value("fx")?, self.fy.value("fy")?);
        let (cx, cy) = (self.cx.value("cx")?, self.cy.value("cy")?);
        for (name, v) in [("fx", fx), ("fy", fy)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid_intrinsics(format!("{name} must be a finite number > 0, got {v}")));
            }
        }
        for (name, v) in [("cx", cx), ("cy", cy)] {
            if !v.is_finite() {
                return Err(invalid_intrinsics(format!("{name} must be a finite number, got {v}")));
            }
        }
        Intrinsics::new(fx, fy, cx, cy, size.0, size.1).map_err(|e| invalid_intrinsics(e.to_string()))
    }
}

/// `POST /v1/ground`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GroundRequest {
    query: String,
    image_base64: Option<String>,
    intrinsics: Option<IntrinsicsJson>,
}

/// A query within the protocol's rules and the daemon's length limit (counted as the CLI counts
/// it: after white space is folded).
fn query(s: &Shared, text: &str) -> ApiResult<Query> {
    let invalid = |e: Error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", e.to_string());
    let q = Query::new(text).map_err(invalid)?;
    let (chars, max) = (q.as_str().chars().count(), s.config.max_query_chars);
    if chars > max {
        return Err(invalid(Error::QueryTooLong { chars, max }));
    }
    Ok(q)
}

/// Decodes an uploaded JPEG or PNG (base64, optionally a `data:` URL, line-wrapped or not) from
/// memory.
fn decode_upload(mut b64: String) -> ApiResult<RgbImage> {
    let bad = |code, m: String| ApiError::new(StatusCode::BAD_REQUEST, code, m);
    if b64.starts_with("data:") {
        let start = b64.find(',').map_or(b64.len(), |i| i + 1);
        b64.drain(..start);
    }
    // `base64 FILE` wraps its output at 76 columns.
    b64.retain(|c| !c.is_ascii_whitespace());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .map_err(|e| bad("invalid_base64", format!("image_base64 is not valid base64: {e}")))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad("invalid_image", e.to_string()))?;
    if !matches!(reader.format(), Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)) {
        return Err(bad("invalid_image", "image_base64 is not a JPEG or PNG image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_UPLOAD_SIDE_PX);
    limits.max_image_height = Some(MAX_UPLOAD_SIDE_PX);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image =
        reader.decode().map_err(|e| bad("invalid_image", format!("the image cannot be decoded: {e}")))?;
    Ok(image.into_rgb8())
}

/// The 503 of a full request queue, with its `Retry-After`.
fn queue_full(s: &Shared) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_full",
        format!("{} requests are already waiting; retry later", s.config.queue_capacity),
    );
    e.retry_after_s = Some(s.config.retry_after.as_secs().max(1));
    e
}

/// Queues a job and waits for its result within the request timeout.
async fn submit(
    s: &Shared,
    frame: Arc<Frame>,
    camera: Intrinsics,
    queries: Vec<Query>,
) -> ApiResult<Vec<Grounding>> {
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "the inference thread has stopped",
        )
    };
    let (reply, rx) = oneshot::channel();
    s.queue_depth.fetch_add(1, Ordering::SeqCst);
    match s.jobs.try_send(Job { frame, camera, queries, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            s.queue_depth.fetch_sub(1, Ordering::SeqCst);
            return Err(queue_full(s));
        }
        Err(TrySendError::Disconnected(_)) => {
            s.queue_depth.fetch_sub(1, Ordering::SeqCst);
            return Err(unavailable());
        }
    }
    let timeout = s.config.request_timeout;
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no result within {:.1} s", timeout.as_secs_f64()),
        )),
        Ok(Err(_)) => Err(unavailable()),
        Ok(Ok(result)) => result.map_err(|e| match e {
            Error::EmptyImage { .. }
            | Error::AspectRatioTooLarge { .. }
            | Error::ImageSizeMismatch { .. }
            | Error::Calib(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image", e.to_string())
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", other.to_string()),
        }),
    }
}

/// `POST /v1/ground`: one query on an uploaded image or on the newest camera frame.
async fn ground(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let GroundRequest { query: text, image_base64, intrinsics } = json_body(&s, &headers, body).await?;
    let q = query(&s, &text)?;
    let (frame, camera, source) = match image_base64 {
        Some(b64) => {
            // Shed load before decoding (an image decodes to many times its upload): a full
            // queue, or as many decodes running as the queue holds, is a 503 now.
            let Ok(permit) = s.decode_permits.clone().try_acquire_owned() else {
                return Err(queue_full(&s));
            };
            if s.queue_depth.load(Ordering::SeqCst) >= s.config.queue_capacity {
                return Err(queue_full(&s));
            }
            // The permit lives as long as the decode, even when the client goes away.
            let decode = move || {
                let _permit = permit;
                decode_upload(b64)
            };
            let image = tokio::task::spawn_blocking(decode).await.map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decode_failed", e.to_string())
            })??;
            let size = image.dimensions();
            let camera = match (&intrinsics, &s.config.default_intrinsics) {
                (Some(k), _) => k.camera(size)?,
                (None, Some(k)) => crate::source::fit_intrinsics(k, size)
                    .map_err(|e| invalid_intrinsics(format!("the daemon's intrinsics do not fit: {e}")))?,
                (None, None) => {
                    return Err(invalid_intrinsics(
                        "an uploaded image needs \"intrinsics\": {\"fx\", \"fy\", \"cx\", \"cy\"}".into(),
                    ));
                }
            };
            let frame =
                Frame { image, index: 0, name: "upload".into(), intrinsics: None, captured: Instant::now() };
            (Arc::new(frame), camera, "upload")
        }
        None => {
            let no_frame = |why: String| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_frame", format!("no camera frame: {why}"))
            };
            if let Some(problem) = s.camera_problem() {
                return Err(no_frame(problem));
            }
            let frame = lock(&s.latest).clone().ok_or_else(|| no_frame("no frame yet".into()))?;
            let camera = match &intrinsics {
                Some(k) => k.camera(frame.image.dimensions())?,
                None => s.camera_of(&frame).map_err(|e| invalid_intrinsics(e.to_string()))?,
            };
            (frame, camera, "camera")
        }
    };
    let groundings = submit(&s, frame.clone(), camera, vec![q]).await?;
    let first = groundings.first();
    let body = json!({
        "groundings": groundings,
        "timings": first.map(|g| g.timings),
        "provider": first.map_or(s.provider, |g| g.provider),
        "frame": {
            "source": source,
            "seq": (source == "camera").then_some(frame.index),
            "name": frame.name,
            "width": frame.image.width(),
            "height": frame.image.height(),
            "captured_unix_ms": s.clock.unix_ms(frame.captured),
        },
    });
    Ok(axum::Json(body).into_response())
}

/// `PUT /v1/queries`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    id: Option<String>,
    query: String,
}

async fn list_queries(State(s): State<Arc<Shared>>) -> axum::Json<Value> {
    let list: Vec<Value> =
        lock(&s.queries).list().into_iter().map(|(id, q)| json!({"id": id, "query": q.as_str()})).collect();
    axum::Json(json!({ "queries": list }))
}

async fn put_query(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let req: PutQuery = json_body(&s, &headers, body).await?;
    if let Some(id) = &req.id {
        let ok = !id.is_empty()
            && id.chars().count() <= MAX_ID_CHARS
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_id",
                format!("a query id is 1 to {MAX_ID_CHARS} characters of A-Z, a-z, 0-9, '-', '_'"),
            ));
        }
    }
    let q = query(&s, &req.query)?;
    let text = q.as_str().to_owned();
    let max = s.config.max_standing_queries;
    let Some((id, created)) = lock(&s.queries).upsert(req.id, q, max) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_queries",
            format!("at most {max} standing queries; delete one first"),
        ));
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(json!({"id": id, "query": text}))).into_response())
}

async fn delete_query(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    if lock(&s.queries).remove(&id) {
        Ok(axum::Json(json!({ "deleted": id })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_query",
            format!("no standing query with id {id:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
