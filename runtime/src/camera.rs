//! V4L2 camera capture (cargo feature `v4l2`, Linux): a capture thread reads MJPEG or YUYV
//! buffers, converts them to RGB ([`crate::pixfmt`]) and offers them to a [`LatestFrame`] slot, so
//! that inference always gets the newest frame and stale ones are dropped and counted. When the
//! device disappears or stalls the thread reopens it with exponential backoff (reset only once
//! a reopened device delivers a frame, so a camera that opens but cannot stream is not retried at
//! the initial rate forever). A panic inside the capture (the `v4l` crate panics when a stream
//! cannot be stopped) is caught and treated like a device error.
//!
//! Without the feature (or off Linux) [`V4l2Camera::open`] returns an error saying so; call sites
//! carry no `#[cfg]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::source::{Frame, FrameSource, LatestFrame};

/// Pixel formats the capture asks for, in preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CameraFormat {
    /// Motion JPEG (`MJPG`): less USB bandwidth, decode cost on the host.
    Mjpeg,
    /// Packed YUYV 4:2:2 (`YUYV`).
    Yuyv,
}

/// What to ask the camera for.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraConfig {
    /// Requested width, pixels (the driver may pick the nearest it supports).
    pub width: u32,
    /// Requested height, pixels.
    pub height: u32,
    /// Requested frame rate, frames per second.
    pub fps: u32,
    /// Formats to try, in order.
    pub formats: Vec<CameraFormat>,
    /// How long [`FrameSource::next_frame`] waits for a frame before reporting a stalled camera.
    pub frame_timeout: Duration,
    /// First reconnection delay; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 30,
            formats: vec![CameraFormat::Mjpeg, CameraFormat::Yuyv],
            frame_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Reconnection delays: `initial`, doubling, capped at `max`.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use monovlm_runtime::camera::backoff_delays;
/// let d: Vec<_> = backoff_delays(Duration::from_millis(100), Duration::from_millis(500)).take(5).collect();
/// assert_eq!(d.iter().map(|d| d.as_millis()).collect::<Vec<_>>(), [100, 200, 400, 500, 500]);
/// ```
pub fn backoff_delays(initial: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(initial.min(max)), move |d| Some((*d * 2).min(max)))
}

/// A V4L2 camera as a [`FrameSource`] with latest-frame semantics.
#[derive(Debug)]
pub struct V4l2Camera {
    device: PathBuf,
    slot: Arc<LatestFrame>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    timeout: Duration,
}

impl V4l2Camera {
    /// Frames the capture replaced before inference took them.
    pub fn dropped_frames(&self) -> u64 {
        self.slot.dropped()
    }
}

impl Drop for V4l2Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FrameSource for V4l2Camera {
    /// The newest frame, waiting up to the configured frame timeout.
    ///
    /// # Errors
    /// [`Error::SourceStalled`] when no frame came in time (the capture thread goes on
    /// reconnecting: calling again is the way to wait for the camera to come back);
    /// [`Error::Source`] when the capture thread has stopped.
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let source_name = || self.device.display().to_string();
        match self.slot.take(self.timeout) {
            Some(f) => Ok(Some(f)),
            None if self.slot.is_closed() => Err(Error::Source {
                source_name: source_name(),
                message: "the capture thread has stopped".into(),
            }),
            None => {
                Err(Error::SourceStalled { source_name: source_name(), waited_s: self.timeout.as_secs_f64() })
            }
        }
    }

    fn describe(&self) -> String {
        format!("V4L2 {}", self.device.display())
    }
}

/// The V4L2 buffer flag for a frame the driver knows is corrupt (`V4L2_BUF_FLAG_ERROR`).
pub const V4L2_BUF_FLAG_ERROR: u32 = 0x40;

/// Converts one dequeued buffer to RGB: only its first `bytes_used` bytes hold this frame (the
/// rest of a mapped buffer is an older frame's data), so a short YUYV frame is refused rather than
/// filled from stale memory. A driver that reports `bytes_used == 0` (some do, for fixed-size
/// formats) is taken to have filled the buffer.
///
/// # Errors
/// [`Error::PixelFormat`] for a buffer flagged `V4L2_BUF_FLAG_ERROR`, a YUYV buffer shorter than
/// its frame, or an undecodable JPEG.
pub fn convert_buffer(
    format: CameraFormat,
    buf: &[u8],
    bytes_used: usize,
    flags: u32,
    (width, height, stride): (u32, u32, usize),
) -> Result<image::RgbImage> {
    if flags & V4L2_BUF_FLAG_ERROR != 0 {
        return Err(Error::PixelFormat("the driver flagged the buffer as corrupt".into()));
    }
    let used = if bytes_used == 0 { buf.len() } else { bytes_used.min(buf.len()) };
    match format {
        CameraFormat::Mjpeg => crate::pixfmt::mjpeg_to_rgb(&buf[..used]),
        CameraFormat::Yuyv => {
            crate::pixfmt::yuyv_to_rgb(&buf[..used], width, height, stride.max(2 * width as usize))
        }
    }
}

/// How one capture attempt ended.
#[cfg_attr(not(all(feature = "v4l2", target_os = "linux")), allow(dead_code))]
struct Attempt {
    error: Error,
    delivered: bool,
}

#[cfg(all(feature = "v4l2", target_os = "linux"))]
mod imp {
    use std::time::Instant;

    use v4l::buffer::Type;
    use v4l::io::mmap::Stream;
    use v4l::io::traits::CaptureStream;
    use v4l::video::Capture;
    use v4l::video::capture::Parameters;
    use v4l::{Device, FourCC};

    use super::*;

    /// Buffers queued in the driver.
    const BUFFERS: u32 = 4;

    /// How long one poll for a buffer waits: the stop flag and the stall deadline are checked
    /// this often.
    const POLL: Duration = Duration::from_millis(200);

    struct Opened {
        device: Device,
        format: CameraFormat,
        width: u32,
        height: u32,
        stride: usize,
    }

    fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
        Error::Source { source_name: path.display().to_string(), message: format!("{what}: {e}") }
    }

    fn open_device(path: &Path, cfg: &CameraConfig) -> Result<Opened> {
        let device = Device::with_path(path).map_err(|e| io_err(path, "open", e))?;
        let mut last = None;
        for &format in &cfg.formats {
            let mut fmt = device.format().map_err(|e| io_err(path, "get format", e))?;
            fmt.width = cfg.width;
            fmt.height = cfg.height;
            fmt.fourcc = FourCC::new(match format {
                CameraFormat::Mjpeg => b"MJPG",
                CameraFormat::Yuyv => b"YUYV",
            });
            let want = fmt.fourcc;
            match device.set_format(&fmt) {
                Ok(got) if got.fourcc == want => {
                    if cfg.fps > 0
                        && let Err(e) = device.set_params(&Parameters::with_fps(cfg.fps))
                    {
                        tracing::warn!(device = %path.display(), "frame rate {} fps not set: {e}", cfg.fps);
                    }
                    return Ok(Opened {
                        device,
                        format,
                        width: got.width,
                        height: got.height,
                        stride: got.stride as usize,
                    });
                }
                Ok(got) => last = Some(format!("asked {want}, the driver chose {}", got.fourcc)),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(Error::Source {
            source_name: path.display().to_string(),
            message: format!("no supported pixel format (MJPEG, YUYV): {}", last.unwrap_or_default()),
        })
    }

    /// Captures until `stop`, a device error or `stall` without a frame; says why it ended and
    /// whether any frame was delivered.
    fn capture(
        path: &Path,
        opened: &Opened,
        slot: &LatestFrame,
        stop: &AtomicBool,
        stall: Duration,
        index: &mut u64,
    ) -> Attempt {
        let mut delivered = false;
        let mut stream = match Stream::with_buffers(&opened.device, Type::VideoCapture, BUFFERS) {
            Ok(s) => s,
            Err(e) => return Attempt { error: io_err(path, "start streaming", e), delivered },
        };
        stream.set_timeout(POLL);
        let name = path.display().to_string();
        let mut last_frame = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let (buf, meta) = match stream.next() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if last_frame.elapsed() < stall {
                        continue;
                    }
                    let message = format!("no frame for {:.1} s", stall.as_secs_f64());
                    return Attempt { error: Error::Source { source_name: name, message }, delivered };
                }
                Err(e) => return Attempt { error: io_err(path, "read frame", e), delivered },
            };
            let size = (opened.width, opened.height, opened.stride);
            match convert_buffer(opened.format, buf, meta.bytesused as usize, meta.flags.bits(), size) {
                Ok(image) => {
                    slot.put(Frame {
                        image,
                        index: *index,
                        name: name.clone(),
                        intrinsics: None,
                        captured: Instant::now(),
                    });
                    *index += 1;
                    delivered = true;
                    last_frame = Instant::now();
                }
                // A corrupt buffer (USB glitch) costs one frame, not the stream.
                Err(e) => tracing::warn!(device = %name, "frame skipped: {e}"),
            }
        }
        Attempt { error: Error::Source { source_name: name, message: "stopped".into() }, delivered }
    }

    /// One open-and-capture attempt, with a panic inside it (the `v4l` crate's `Drop` panics
    /// when streaming cannot be stopped) turned into an error.
    fn attempt(
        path: &Path,
        cfg: &CameraConfig,
        opened: Option<Opened>,
        slot: &LatestFrame,
        stop: &AtomicBool,
        index: &mut u64,
    ) -> Attempt {
        let run = std::panic::AssertUnwindSafe(|| {
            let opened = match opened {
                Some(o) => o,
                None => match open_device(path, cfg) {
                    Ok(o) => o,
                    Err(error) => return Attempt { error, delivered: false },
                },
            };
            capture(path, &opened, slot, stop, cfg.frame_timeout, index)
        });
        std::panic::catch_unwind(run).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let message = format!("the capture panicked: {what}");
            Attempt {
                error: Error::Source { source_name: path.display().to_string(), message },
                delivered: false,
            }
        })
    }

    /// Closes the slot when the capture thread ends, however it ends.
    struct CloseOnDrop(Arc<LatestFrame>);

    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }

    pub(super) fn open(path: &Path, cfg: &CameraConfig) -> Result<V4l2Camera> {
        // The first open is synchronous so that a wrong path or format fails at once.
        let first = open_device(path, cfg)?;
        tracing::info!(
            device = %path.display(), format = ?first.format, width = first.width, height = first.height,
            "camera opened"
        );
        let slot = Arc::new(LatestFrame::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slot, stop, device, cfg) = (slot.clone(), stop.clone(), path.to_path_buf(), cfg.clone());
            std::thread::Builder::new()
                .name("v4l2-capture".into())
                .spawn(move || {
                    let _close = CloseOnDrop(slot.clone());
                    let mut index = 0u64;
                    let mut opened = Some(first);
                    let mut delays = backoff_delays(cfg.initial_backoff, cfg.max_backoff);
                    while !stop.load(Ordering::SeqCst) {
                        let Attempt { error, delivered } =
                            attempt(&device, &cfg, opened.take(), &slot, &stop, &mut index);
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if delivered {
                            delays = backoff_delays(cfg.initial_backoff, cfg.max_backoff);
                        }
                        let wait = delays.next().unwrap_or(cfg.max_backoff);
                        tracing::warn!("{error}; reconnecting in {} ms", wait.as_millis());
                        sleep_unless_stopped(wait, &stop);
                    }
                })
                .map_err(|e| io_err(path, "capture thread", e))?
        };
        Ok(V4l2Camera {
            device: path.to_path_buf(),
            slot,
            stop,
            thread: Some(thread),
            timeout: cfg.frame_timeout,
        })
    }
}

/// Sleeps `wait`, waking early when `stop` is set (so dropping a camera in backoff is quick).
#[cfg_attr(not(all(feature = "v4l2", target_os = "linux")), allow(dead_code))]
fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let deadline = std::time::Instant::now() + wait;
    while !stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

impl V4l2Camera {
    /// Opens the camera at `device` (e.g. `/dev/video0`) and starts capturing.
    ///
    /// # Errors
    /// [`Error::Source`] when the device cannot be opened or offers none of `config.formats`, or
    /// when this binary was built without V4L2 support.
    pub fn open(device: &Path, config: &CameraConfig) -> Result<Self> {
        #[cfg(all(feature = "v4l2", target_os = "linux"))]
        {
            imp::open(device, config)
        }
        #[cfg(not(all(feature = "v4l2", target_os = "linux")))]
        {
            let _ = config;
            Err(Error::Source {
                source_name: device.display().to_string(),
                message: "V4L2 capture is not built into this binary (cargo feature `v4l2`, Linux)".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn yuyv_grey(width: usize, height: usize) -> Vec<u8> {
        [128u8, 128].repeat(width * height)
    }

    #[test]
    fn a_short_yuyv_buffer_is_refused_not_filled_from_stale_memory() {
        // A 4x2 frame in a mapped buffer twice its size: the driver wrote one row only.
        let buf = yuyv_grey(4, 4);
        let err = convert_buffer(CameraFormat::Yuyv, &buf, 8, 0, (4, 2, 8)).unwrap_err();
        assert!(err.to_string().contains("needs 16 bytes, the buffer has 8"), "{err}");
        let full = convert_buffer(CameraFormat::Yuyv, &buf, 16, 0, (4, 2, 8)).unwrap();
        assert_eq!(full.dimensions(), (4, 2));
        // A driver that leaves bytesused at 0 is taken to have filled the buffer.
        assert!(convert_buffer(CameraFormat::Yuyv, &buf, 0, 0, (4, 2, 8)).is_ok());
    }

    #[test]
    fn a_buffer_the_driver_flags_as_corrupt_is_skipped() {
        let buf = yuyv_grey(4, 2);
        let err =
            convert_buffer(CameraFormat::Yuyv, &buf, 16, V4L2_BUF_FLAG_ERROR | 0x1, (4, 2, 8)).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn an_mjpeg_frame_is_read_to_its_used_bytes_only() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_pixel(16, 16, image::Rgb([200, 10, 10]))
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let size = (16, 16, 32);
        assert!(convert_buffer(CameraFormat::Mjpeg, &jpeg, jpeg.len(), 0, size).is_ok());
        // The buffer holds a whole JPEG, but the driver says this frame is its first 20 bytes
        // (cut inside the headers): refused, not decoded from the older data behind them.
        assert!(convert_buffer(CameraFormat::Mjpeg, &jpeg, 20, 0, size).is_err());
    }

    #[test]
    fn a_closed_slot_is_a_stopped_capture_and_an_empty_one_a_stall() {
        let mut camera = V4l2Camera {
            device: PathBuf::from("/dev/video9"),
            slot: Arc::new(LatestFrame::new()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            timeout: Duration::from_millis(10),
        };
        assert!(matches!(camera.next_frame(), Err(Error::SourceStalled { .. })));
        camera.slot.close();
        let err = camera.next_frame().unwrap_err();
        assert!(matches!(err, Error::Source { .. }) && err.to_string().contains("stopped"), "{err}");
    }

    #[test]
    fn a_stopped_backoff_sleep_returns_at_once() {
        let stop = AtomicBool::new(true);
        let t = std::time::Instant::now();
        sleep_unless_stopped(Duration::from_secs(5), &stop);
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let err =
            V4l2Camera::open(Path::new("/dev/video-does-not-exist"), &CameraConfig::default()).unwrap_err();
        assert!(err.to_string().contains("/dev/video-does-not-exist"), "{err}");
    }
}
