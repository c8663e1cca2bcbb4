//! The camera daemon (`runtime::serve`) over real loopback HTTP and WebSocket clients, on a
//! package exported from the tiny random checkpoint (its answers are garbage: groundings carry
//! `answer: null` and an `error`; these tests check the API's behaviour, shapes and status codes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use monovlm_calib::Intrinsics;
use monovlm_exporter::package::{ExportOptions, export};
use monovlm_runtime::grounder::{Grounder, GrounderOptions};
use monovlm_runtime::model_config::Qwen25VlConfig;
use monovlm_runtime::package::byte_level_tokenizer_json;
use monovlm_runtime::serve::{OpenSource, ServeConfig, Server};
use monovlm_runtime::session::{Device, SessionOptions};
use monovlm_runtime::source::{Frame, FrameSource};
use serde_json::{Value, json};

/// Frame size of the test source and uploads, pixels.
const W: u32 = 112;
const H: u32 = 84;
/// Longest wait for something asynchronous (a frame, readiness) on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The tiny package, exported once per test process.
fn package() -> &'static Path {
    static PKG: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PKG.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pkg");
        let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a");
        export(&ckpt, &out, &ExportOptions::default(), &mut |_| {}).unwrap();
        let cfg = Qwen25VlConfig::from_file(&out).unwrap();
        std::fs::write(out.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, 504)).unwrap();
        (tmp, out)
    })
    .1
}

fn grounder(max_new_tokens: usize) -> Grounder {
    let options = GrounderOptions {
        session: SessionOptions { devices: vec![Device::Cpu], intra_threads: 1, ..SessionOptions::default() },
        max_new_tokens,
        batch_queries: true,
        ..GrounderOptions::default()
    };
    Grounder::open(package(), options).unwrap()
}

fn camera() -> Intrinsics {
    Intrinsics::new(100.0, 100.0, 56.0, 42.0, W, H).unwrap()
}

/// A camera that yields a few frames (with intrinsics) and then ends (the daemon replays it);
/// while `failing` is set every read fails, like an unplugged device.
struct TestCamera {
    next: u64,
    failing: Arc<AtomicBool>,
}

impl FrameSource for TestCamera {
    fn next_frame(&mut self) -> monovlm_runtime::Result<Option<Frame>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(monovlm_runtime::Error::Source {
                source_name: "test camera".into(),
                message: "device unplugged".into(),
            });
        }
        if self.next == 5 {
            return Ok(None);
        }
        self.next += 1;
        let image = image::RgbImage::from_pixel(W, H, image::Rgb([self.next as u8 * 40, 90, 30]));
        Ok(Some(Frame {
            image,
            index: self.next,
            name: format!("test{}", self.next),
            intrinsics: Some(camera()),
            captured: Instant::now(),
        }))
    }

    fn describe(&self) -> String {
        "test camera".into()
    }
}

fn test_camera(failing: Arc<AtomicBool>) -> OpenSource {
    Box::new(move || Ok(Box::new(TestCamera { next: 0, failing: failing.clone() }) as Box<dyn FrameSource>))
}

fn config() -> ServeConfig {
    ServeConfig { listen: "127.0.0.1:0".parse().unwrap(), replay_fps: Some(20.0), ..ServeConfig::default() }
}

async fn start(config: ServeConfig, max_new_tokens: usize) -> (Server, String, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let server = Server::start(config, test_camera(failing.clone()), grounder(max_new_tokens)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    (server, base, failing)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(PATIENCE).build().unwrap()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send(base: &str, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
    let r = client().request(method, format!("{base}{path}")).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    send(base, reqwest::Method::POST, "/v1/ground", body).await
}

/// POSTs a raw body with a content type.
async fn post_raw(base: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/ground"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POSTs `total` bytes of white space in 4 KiB chunks with `Transfer-Encoding: chunked` (no
/// Content-Length, so only the streaming limit can stop it) over a raw TCP connection; returns the
/// status and the JSON body of the answer.
async fn post_chunked(addr: SocketAddr, total: usize) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!(
            "POST /v1/ground HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 4096];
        let mut sent = 0;
        while sent < total {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            // The server may answer and close before everything is sent.
            if tcp.write_all(&frame).is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = tcp.write_all(b"0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

async fn wait_ready(base: &str) {
    let t = Instant::now();
    loop {
        let (status, body) = get(base, "/readyz").await;
        if status == 200 {
            return;
        }
        assert!(t.elapsed() < PATIENCE, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn png_base64(w: u32, h: u32) -> String {
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 60])))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn intrinsics_json() -> Value {
    json!({"fx": 100.0, "fy": 100.0, "cx": 56.0, "cy": 42.0})
}

/// Asserts the JSON error shape and returns its code.
fn error_code(status: u16, body: &Value, want_status: &[u16]) -> String {
    assert!(want_status.contains(&status), "status {status}, want {want_status:?}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no error message: {body}");
    body["error"]["code"].as_str().unwrap_or_default().to_owned()
}

fn assert_grounding_shape(body: &Value, query: &str) {
    let g = &body["groundings"][0];
    assert_eq!(g["query"], query, "{body}");
    assert_eq!(g["provider"], "cpu");
    // The random model writes no parsable answer: the error says why.
    assert!(g["answer"].is_object() || g["error"].is_string(), "{body}");
    assert!(body["timings"]["total_ms"].as_f64().unwrap() > 0.0, "{body}");
    assert_eq!(body["provider"], "cpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_queries_streams_frames_and_metrics_over_loopback() {
    let (server, base, _) = start(config(), 6).await;
    assert_eq!(get(&base, "/healthz").await, (200, json!({"status": "ok"})));
    wait_ready(&base).await;
    let (_, ready) = get(&base, "/readyz").await;
    assert_eq!(ready["ready"], true);

    // An uploaded PNG with intrinsics.
    let body =
        json!({"query": "the green wall", "image_base64": png_base64(W, H), "intrinsics": intrinsics_json()});
    let (status, out) = post(&base, &body).await;
    assert_eq!(status, 200, "{out}");
    assert_grounding_shape(&out, "the green wall");
    assert_eq!(out["frame"]["source"], "upload");
    assert_eq!((out["frame"]["width"].as_u64(), out["frame"]["height"].as_u64()), (Some(112), Some(84)));
    // The latest camera frame (its own intrinsics).
    let (status, out) = post(&base, &json!({"query": "the car"})).await;
    assert_eq!(status, 200, "{out}");
    assert_grounding_shape(&out, "the car");
    assert_eq!(out["frame"]["source"], "camera");
    assert!(out["frame"]["seq"].is_u64() && out["frame"]["captured_unix_ms"].as_u64().unwrap() > 0, "{out}");

    // Standing queries: add, replace, list, delete, unknown id.
    let (status, added) =
        send(&base, reqwest::Method::PUT, "/v1/queries", &json!({"query": "the van"})).await;
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_str().unwrap().to_owned();
    let (status, _) =
        send(&base, reqwest::Method::PUT, "/v1/queries", &json!({"id": "lead", "query": "a bus"})).await;
    assert_eq!(status, 201);
    let (status, replaced) =
        send(&base, reqwest::Method::PUT, "/v1/queries", &json!({"id": "lead", "query": "the lead car"}))
            .await;
    assert_eq!((status, &replaced["query"]), (200, &json!("the lead car")));
    let (_, list) = get(&base, "/v1/queries").await;
    assert_eq!(
        list["queries"],
        json!([{"id": id, "query": "the van"}, {"id": "lead", "query": "the lead car"}])
    );
    let r = client().delete(format!("{base}/v1/queries/lead")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client().delete(format!("{base}/v1/queries/lead")).send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(error_code(status, &r.json().await.unwrap(), &[404]), "unknown_query");

    // WebSocket: a frame message carrying the standing query.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.local_addr())).await.unwrap();
    let message = tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = ws.next().await.unwrap().unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["results"].as_array().is_some_and(|r| !r.is_empty()) {
                    return v;
                }
            }
        }
    })
    .await
    .expect("no WebSocket frame message with results");
    assert_eq!(message["type"], "frame");
    assert!(
        message["seq"].is_u64()
            && message["captured_unix_ms"].is_u64()
            && message["processed_unix_ms"].is_u64()
    );
    assert_eq!(message["results"][0]["id"], id.as_str());
    assert_eq!(message["results"][0]["query"], "the van");
    assert_eq!(message["width"], 112);

    // SSE: one event.
    let mut sse = client().get(format!("{base}/v1/stream?sse=1")).send().await.unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, async {
        while !(text.contains("event: frame") && text.contains("\n\n")) {
            text.push_str(&String::from_utf8_lossy(&sse.chunk().await.unwrap().unwrap()));
        }
    })
    .await
    .expect("no SSE event");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(data).unwrap()["type"], "frame");
    drop(sse);

    // The annotated frame, raw frame and MJPEG.
    for path in ["/v1/frame.jpg", "/v1/frame.jpg?annotate=0"] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        let jpeg = r.bytes().await.unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), W);
    }
    let mut mjpeg = client().get(format!("{base}/v1/stream.mjpeg")).send().await.unwrap();
    assert!(mjpeg.headers()["content-type"].to_str().unwrap().starts_with("multipart/x-mixed-replace"));
    let first = mjpeg.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"--frame\r\nContent-Type: image/jpeg"), "{:?}", &first[..20.min(first.len())]);
    drop(mjpeg);

    // Metrics and the viewer.
    let metrics = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "monovlm_frames_captured_total",
        "monovlm_frames_processed_total",
        "monovlm_frames_dropped_total",
        "monovlm_frame_rate_fps",
        "monovlm_queue_depth",
        "monovlm_stage_latency_seconds_bucket{stage=\"decode\",le=\"+Inf\"}",
        "monovlm_stage_latency_seconds_count{stage=\"vision\"}",
        "monovlm_http_requests_total{code=\"200\"}",
        "monovlm_provider_info{provider=\"cpu\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let page = client().get(&base).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"view\"") && page.contains("boxesDrawn") && !page.contains("https://"));

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_4xx_and_the_daemon_keeps_serving() {
    let (server, base, _) = start(ServeConfig { max_body_bytes: 64 << 10, ..config() }, 4).await;
    wait_ready(&base).await;
    let upload = |k: Value| json!({"query": "the car", "image_base64": png_base64(W, H), "intrinsics": k});
    let cases: Vec<(&str, u16, (u16, Value))> = vec![
        ("malformed JSON", 400, post_raw(&base, "application/json", b"{\"query\": ".to_vec()).await),
        ("wrong content type", 415, post_raw(&base, "text/plain", b"{\"query\": \"x\"}".to_vec()).await),
        ("huge body", 413, post_raw(&base, "application/json", vec![b' '; (64 << 10) + 1024]).await),
        (
            "huge chunked body, no Content-Length",
            413,
            post_chunked(server.local_addr(), (64 << 10) + 8192).await,
        ),
        ("invalid base64", 400, post(&base, &json!({"query": "a", "image_base64": "%%%not base64"})).await),
        (
            "undecodable image",
            400,
            post(&base, &json!({"query": "a", "image_base64": "iVBORw0KGgoAAAAA"})).await,
        ),
        (
            "NaN intrinsics",
            422,
            post(&base, &upload(json!({"fx": "NaN", "fy": 100, "cx": 56, "cy": 42}))).await,
        ),
        (
            "out-of-range number",
            400,
            post_raw(
                &base,
                "application/json",
                br#"{"query": "a", "intrinsics": {"fx": 1e400, "fy": 1, "cx": 1, "cy": 1}}"#.to_vec(),
            )
            .await,
        ),
        (
            "zero focal length",
            422,
            post(&base, &upload(json!({"fx": 0, "fy": 100, "cx": 56, "cy": 42}))).await,
        ),
        (
            "negative focal length",
            422,
            post(&base, &upload(json!({"fx": 100, "fy": -1, "cx": 56, "cy": 42}))).await,
        ),
        (
            "upload without intrinsics",
            422,
            post(&base, &json!({"query": "a", "image_base64": png_base64(W, H)})).await,
        ),
        ("empty query", 422, post(&base, &json!({"query": "  "})).await),
        ("long query", 422, post(&base, &json!({"query": "a".repeat(600)})).await),
        ("chat markers", 422, post(&base, &json!({"query": "a <|im_end|> b"})).await),
        ("unknown field", 422, post(&base, &json!({"query": "a", "imgae": ""})).await),
        ("wrong type", 422, post(&base, &json!({"query": 5})).await),
        (
            "image the model cannot take",
            422,
            post(
                &base,
                &json!({"query": "a", "image_base64": png_base64(800, 2), "intrinsics": intrinsics_json()}),
            )
            .await,
        ),
        ("unknown query id", 404, {
            let r = client().delete(format!("{base}/v1/queries/nope")).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }),
        ("unknown endpoint", 404, get(&base, "/v2/nothing").await),
        ("GET on a POST endpoint", 405, get(&base, "/v1/ground").await),
        ("stream without upgrade", 426, get(&base, "/v1/stream").await),
    ];
    for (what, want, (status, body)) in cases {
        let code = error_code(status, &body, &[want]);
        assert!(!code.is_empty(), "{what}: no code in {body}");
    }
    // A chunked body under the limit is read whole (and then judged as JSON: spaces only).
    let (status, body) = post_chunked(server.local_addr(), 8192).await;
    assert_eq!(error_code(status, &body, &[400]), "malformed_json", "{body}");
    // SSE is also chosen by the Accept header, not only by ?sse=1.
    let sse =
        client().get(format!("{base}/v1/stream")).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    drop(sse);
    // Still serving.
    assert_eq!(get(&base, "/healthz").await.0, 200);
    let (status, out) = post(&base, &json!({"query": "the car"})).await;
    assert_eq!(status, 200, "{out}");
    // Base64 as `base64 FILE` writes it, wrapped at 76 columns, in a data: URL.
    let wrapped: Vec<String> =
        png_base64(W, H).as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let upload = format!("data:image/png;base64,{}\n", wrapped.join("\n"));
    let (status, out) =
        post(&base, &json!({"query": "the car", "image_base64": upload, "intrinsics": intrinsics_json()}))
            .await;
    assert_eq!(status, 200, "{out}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_does_not_hold_the_shutdown() {
    let cfg = ServeConfig { body_timeout: Duration::from_millis(300), ..config() };
    let (server, base, _) = start(cfg, 4).await;
    let addr = server.local_addr();
    // Announces 1,000 bytes, sends 10 and stalls (keeping the connection open).
    let stalled = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!(
            "POST /v1/ground HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{\"query\": "
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let mut answer = [0u8; 512];
        let n = tcp.read(&mut answer).unwrap_or(0);
        (String::from_utf8_lossy(&answer[..n]).into_owned(), tcp)
    });
    let t = Instant::now();
    let (answer, tcp) = stalled.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body_timeout"), "{answer:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(get(&base, "/healthz").await.0, 200);
    // The daemon still stops promptly.
    let t = Instant::now();
    server.shutdown().await.unwrap();
    assert!(t.elapsed() <= monovlm_runtime::serve::SHUTDOWN_GRACE + Duration::from_secs(5));
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gets_503_with_retry_after_and_a_slow_request_504() {
    let (server, base, _) = start(ServeConfig { queue_capacity: 1, ..config() }, 48).await;
    wait_ready(&base).await;
    let body = json!({"query": "the car", "image_base64": png_base64(W, H), "intrinsics": intrinsics_json()});
    // Bursts of concurrent requests until one finds the queue full (the first burst does on any
    // machine where a request takes longer than its siblings take to arrive).
    let (mut ok, mut full) = (0, 0);
    for _ in 0..5 {
        let requests = (0..24).map(|_| {
            let (base, body) = (base.clone(), body.clone());
            tokio::spawn(async move {
                let r = client().post(format!("{base}/v1/ground")).json(&body).send().await.unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
            })
        });
        for r in futures_util::future::join_all(requests).await {
            let (status, retry, body) = r.unwrap();
            match status {
                200 => ok += 1,
                503 => {
                    assert_eq!(error_code(status, &body, &[503]), "queue_full");
                    assert_eq!(retry.as_deref(), Some("1"));
                    full += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        if full > 0 {
            break;
        }
    }
    assert!(ok >= 1 && full >= 1, "{ok} served, {full} refused");
    let metrics = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("monovlm_http_requests_total{code=\"503\"}"), "{metrics}");
    server.shutdown().await.unwrap();

    // A request that cannot finish in time.
    let (server, base, _) =
        start(ServeConfig { request_timeout: Duration::from_millis(1), ..config() }, 48).await;
    wait_ready(&base).await;
    let (status, out) = post(&base, &body).await;
    assert_eq!(error_code(status, &out, &[504]), "timeout");
    assert_eq!(get(&base, "/healthz").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_makes_readyz_fail_and_the_stream_resumes() {
    let failing = Arc::new(AtomicBool::new(true));
    let cfg = ServeConfig { staleness: Duration::from_millis(500), ..config() };
    let server = Server::start(cfg, test_camera(failing.clone()), grounder(4)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    // Unplugged from the start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let reason = body["error"]["message"].as_str().unwrap();
    assert!(reason.starts_with("camera: ") && reason.contains("device unplugged"), "{body}");
    let (status, out) = post(&base, &json!({"query": "the car"})).await;
    assert_eq!(error_code(status, &out, &[503]), "no_frame");
    assert!(out["error"]["message"].as_str().unwrap().contains("no camera frame: "), "{out}");
    assert_eq!(get(&base, "/healthz").await.0, 200);
    // Plugged in: ready, frames flow.
    failing.store(false, Ordering::SeqCst);
    wait_ready(&base).await;
    // Unplugged again: stale after the limit, then back.
    failing.store(true, Ordering::SeqCst);
    let t = Instant::now();
    while get(&base, "/readyz").await.0 == 200 {
        assert!(t.elapsed() < PATIENCE, "readyz stayed 200 with the camera unplugged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failing.store(false, Ordering::SeqCst);
    wait_ready(&base).await;
    let (status, out) = post(&base, &json!({"query": "the car"})).await;
    assert_eq!(status, 200, "{out}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_enforced_and_exposed_addresses_need_one() {
    // A base64 key (`openssl rand -base64`): '+', '/' and '=' are percent-encoded in a URL.
    let key = "s3+cr/et==";
    let (server, base, _) = start(ServeConfig { api_key: Some(key.into()), ..config() }, 4).await;
    assert_eq!(get(&base, "/healthz").await.0, 200);
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3+cr"), Some(key), Some("Basic s3+cr/et==")] {
        let mut req = client().get(format!("{base}/v1/queries"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let status = r.status().as_u16();
        assert_eq!(error_code(status, &r.json().await.unwrap(), &[401]), "unauthorized", "{auth:?}");
    }
    let r = client().get(format!("{base}/v1/queries")).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The scheme name is case-insensitive (RFC 7235).
    let r = client().get(format!("{base}/v1/queries")).header("authorization", "bearer s3+cr/et==");
    assert_eq!(r.send().await.unwrap().status().as_u16(), 200);
    // As the viewer sends it (encodeURIComponent), and a raw '+' meaning a space does not match.
    let encoded = "s3%2Bcr%2Fet%3D%3D";
    let r = client().get(format!("{base}/v1/queries?x=1&access_token={encoded}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client().get(format!("{base}/v1/queries?access_token=s3+cr/et==")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.local_addr())).await;
    assert!(ws.is_err(), "WebSocket without the key was accepted");
    let url = format!("ws://{}/v1/stream?access_token={encoded}", server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket with the key");
    let first = tokio::time::timeout(PATIENCE, ws.next()).await.expect("a stream message");
    assert!(first.is_some_and(|m| m.is_ok()), "the stream ended at once");
    drop(ws);
    server.shutdown().await.unwrap();

    let exposed: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let err = Server::start(ServeConfig { listen: exposed, ..config() }, test_camera(failing), grounder(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to listen on 0.0.0.0:0") && err.contains("--api-key"), "{err}");
}
