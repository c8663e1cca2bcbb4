//! V4L2 camera capture (cargo feature `v4l2`, Linux): a capture thread reads MJPEG or YUYV
//! buffers, converts them to RGB ([`crate::pixfmt`]) and offers them to a [`LatestFrame`] slot, so
//! that inference always gets the newest frame and stale ones are dropped and counted. When the
//! device disappears the thread reopens it with exponential backoff.
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
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        match self.slot.take(self.timeout) {
            Some(f) => Ok(Some(f)),
            None => Err(Error::Source {
                source_name: self.device.display().to_string(),
                message: format!(
                    "no frame for {:.1} s (camera stalled or disconnected)",
                    self.timeout.as_secs_f64()
                ),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("V4L2 {}", self.device.display())
    }
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
    use crate::pixfmt::{mjpeg_to_rgb, yuyv_to_rgb};

    /// Buffers queued in the driver.
    const BUFFERS: u32 = 4;

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

    /// Captures until `stop` or a device error; returns the error.
    fn capture(
        path: &Path,
        opened: &Opened,
        slot: &LatestFrame,
        stop: &AtomicBool,
        index: &mut u64,
    ) -> Error {
        let mut stream = match Stream::with_buffers(&opened.device, Type::VideoCapture, BUFFERS) {
            Ok(s) => s,
            Err(e) => return io_err(path, "start streaming", e),
        };
        stream.set_timeout(Duration::from_secs(2));
        let name = path.display().to_string();
        while !stop.load(Ordering::SeqCst) {
            let (buf, meta) = match stream.next() {
                Ok(x) => x,
                Err(e) => return io_err(path, "read frame", e),
            };
            let used = (meta.bytesused as usize).min(buf.len());
            let rgb = match opened.format {
                CameraFormat::Mjpeg => mjpeg_to_rgb(&buf[..used]),
                CameraFormat::Yuyv => {
                    let stride = opened.stride.max(2 * opened.width as usize);
                    yuyv_to_rgb(buf, opened.width, opened.height, stride)
                }
            };
            match rgb {
                Ok(image) => {
                    slot.put(Frame {
                        image,
                        index: *index,
                        name: name.clone(),
                        intrinsics: None,
                        captured: Instant::now(),
                    });
                    *index += 1;
                }
                // A corrupt buffer (USB glitch) costs one frame, not the stream.
                Err(e) => tracing::warn!(device = %name, "frame skipped: {e}"),
            }
        }
        Error::Source { source_name: name, message: "stopped".into() }
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
                    let mut index = 0u64;
                    let mut opened = Some(first);
                    let mut delays = backoff_delays(cfg.initial_backoff, cfg.max_backoff);
                    while !stop.load(Ordering::SeqCst) {
                        let current = match opened.take() {
                            Some(o) => Ok(o),
                            None => open_device(&device, &cfg),
                        };
                        let err = match current {
                            Ok(o) => {
                                delays = backoff_delays(cfg.initial_backoff, cfg.max_backoff);
                                capture(&device, &o, &slot, &stop, &mut index)
                            }
                            Err(e) => e,
                        };
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let wait = delays.next().unwrap_or(cfg.max_backoff);
                        tracing::warn!("{err}; reconnecting in {} ms", wait.as_millis());
                        std::thread::sleep(wait);
                    }
                    slot.close();
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

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let err =
            V4l2Camera::open(Path::new("/dev/video-does-not-exist"), &CameraConfig::default()).unwrap_err();
        assert!(err.to_string().contains("/dev/video-does-not-exist"), "{err}");
    }
}
