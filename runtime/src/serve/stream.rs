//! Streams: results over WebSocket or SSE (`/v1/stream`), annotated frames as MJPEG
//! (`/v1/stream.mjpeg`). Every stream ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::api::{ApiError, encode, wants_boxes};
use super::state::{Shared, Snapshot};

/// Largest message a stream client may send, bytes.
const CLIENT_MESSAGE_MAX_BYTES: usize = 4096;

/// The MJPEG part boundary.
const BOUNDARY: &str = "frame";

/// What a stream waits for.
enum Next<T> {
    Item(T),
    Stop,
}

/// The next broadcast message, or `Stop` on shutdown.
async fn next_message(
    rx: &mut broadcast::Receiver<Arc<str>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Next<Result<Arc<str>, RecvError>> {
    tokio::select! {
        m = rx.recv() => Next::Item(m),
        _ = shutdown.wait_for(|stop| *stop) => Next::Stop,
    }
}

/// `GET /v1/stream`: a WebSocket when the request asks for an upgrade, server-sent events for
/// `Accept: text/event-stream` or `?sse=1`.
pub(crate) async fn stream(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let headers = req.headers();
    let upgrade =
        headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let sse_param =
        req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "sse=1" || kv == "sse=true"));
    let sse_accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if upgrade {
        let (mut parts, _) = req.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            // Clients send nothing the daemon reads: a few KiB is plenty (the default is 64 MiB).
            Ok(ws) => ws
                .max_message_size(CLIENT_MESSAGE_MAX_BYTES)
                .max_frame_size(CLIENT_MESSAGE_MAX_BYTES)
                .on_upgrade(move |socket| websocket(s, socket)),
            Err(rejection) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_websocket", rejection.body_text()).into_response()
            }
        };
    }
    if sse_param || sse_accept {
        return sse(s);
    }
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        "GET /v1/stream needs a WebSocket upgrade, or `Accept: text/event-stream` (or ?sse=1) for SSE",
    )
    .into_response()
}

/// Sends every message until the client closes, the socket fails or the server stops; a client
/// too slow for the buffer skips messages (counted).
async fn websocket(s: Arc<Shared>, mut socket: WebSocket) {
    let mut rx = s.messages.subscribe();
    let mut shutdown = s.shutdown.clone();
    loop {
        let next = tokio::select! {
            m = next_message(&mut rx, &mut shutdown) => m,
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => Next::Stop,
                // Pings are answered by the library; other client messages are ignored.
                Some(Ok(_)) => continue,
            },
        };
        match next {
            Next::Item(Ok(text)) => {
                if socket.send(Message::Text((&*text).into())).await.is_err() {
                    return;
                }
            }
            Next::Item(Err(RecvError::Lagged(n))) => s.metrics.lagged(n),
            Next::Item(Err(RecvError::Closed)) | Next::Stop => break,
        }
    }
    // The client may be gone already.
    let _ = socket.send(Message::Close(None)).await;
}

fn sse(s: Arc<Shared>) -> Response {
    let rx = s.messages.subscribe();
    let shutdown = s.shutdown.clone();
    let events = futures_util::stream::unfold((s, rx, shutdown), |(s, mut rx, mut shutdown)| async move {
        loop {
            match next_message(&mut rx, &mut shutdown).await {
                Next::Item(Ok(text)) => {
                    let event = Event::default().event("frame").data(&*text);
                    return Some((Ok::<_, Infallible>(event), (s, rx, shutdown)));
                }
                Next::Item(Err(RecvError::Lagged(n))) => s.metrics.lagged(n),
                Next::Item(Err(RecvError::Closed)) | Next::Stop => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// One multipart part holding a JPEG.
fn part(jpeg: &[u8]) -> Bytes {
    let head = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len());
    let mut out = Vec::with_capacity(head.len() + jpeg.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(jpeg);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// `GET /v1/stream.mjpeg`: the newest annotated frame whenever one is processed
/// (`multipart/x-mixed-replace`; `?annotate=0`: without boxes); a slow client simply sees fewer
/// frames.
pub(crate) async fn mjpeg(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let boxes = wants_boxes(&uri);
    let rx = s.snapshot.subscribe();
    let shutdown = s.shutdown.clone();
    let parts =
        futures_util::stream::unfold((rx, shutdown, true), move |(mut rx, mut shutdown, first)| async move {
            let mut wait = !first;
            loop {
                if wait {
                    let next = tokio::select! {
                        changed = rx.changed() => if changed.is_ok() { Next::Item(()) } else { Next::Stop },
                        _ = shutdown.wait_for(|stop| *stop) => Next::Stop,
                    };
                    if matches!(next, Next::Stop) {
                        return None;
                    }
                }
                wait = true;
                let snap: Option<Arc<Snapshot>> = rx.borrow_and_update().clone();
                let Some(snap) = snap else { continue };
                if let Ok(jpeg) = encode(snap, boxes).await {
                    return Some((Ok::<_, Infallible>(part(&jpeg)), (rx, shutdown, false)));
                }
            }
        });
    Response::builder()
        .header(header::CONTENT_TYPE, format!("multipart/x-mixed-replace; boundary={BOUNDARY}"))
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(parts))
        .unwrap_or_else(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "stream_failed", e.to_string()).into_response()
        })
}
