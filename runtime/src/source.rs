//! Frame sources behind one trait ([`FrameSource`]): an image directory (plain images, or the
//! KITTI layout `image_2/` + `calib/` with per-frame intrinsics), a single image, and a demo
//! sequence (a directory). [`LatestFrame`] is the one-frame slot between a camera thread and
//! inference: a new frame replaces one not yet taken, which is counted as dropped.
//!
//! V4L2 capture ([`crate::camera`]) implements the same trait through a [`LatestFrame`] slot.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use monovlm_calib::Intrinsics;
use monovlm_calib::formats::{CalibFormat, ReadOptions, read_intrinsics};

use crate::error::{Error, Result};

/// One camera frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The image, 8-bit RGB.
    pub image: RgbImage,
    /// Position in its source, from 0.
    pub index: u64,
    /// File name or device.
    pub name: String,
    /// The frame's own intrinsics, when the source has per-frame calibration (KITTI `calib/`).
    pub intrinsics: Option<Intrinsics>,
    /// When it was read.
    pub captured: Instant,
}

impl Frame {
    /// A file stem naming this frame's outputs (annotated images), unique within its source: an
    /// image file's own stem; for a camera, whose frames all carry the device's name, the
    /// device's stem and the frame index (`video0_000042`).
    pub fn output_stem(&self) -> String {
        let path = Path::new(&self.name);
        match path.file_stem().map(|s| s.to_string_lossy()) {
            Some(stem) if is_image(path) => stem.into_owned(),
            Some(stem) => format!("{stem}_{:06}", self.index),
            None => format!("{:06}", self.index),
        }
    }
}

/// Anything that yields frames.
pub trait FrameSource: Send {
    /// The next frame; `Ok(None)` at the end of a finite source.
    ///
    /// # Errors
    /// A frame that cannot be read ([`Error::Image`], [`Error::Source`]).
    fn next_frame(&mut self) -> Result<Option<Frame>>;

    /// What the source reads, for logs.
    fn describe(&self) -> String;
}

const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Reads an image file as RGB.
///
/// # Errors
/// [`Error::Image`] naming the file: missing, unreadable, or not a decodable image.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        message: format!("not a decodable image: {e}"),
    })?;
    Ok(img.into_rgb8())
}

/// Image folders of the KITTI layout: KITTI's own, and the Mono3DRefer layout our synthetic
/// generator writes (the bundled demo sequence).
const KITTI_IMAGE_DIRS: [&str; 2] = ["image_2", "images"];

/// Images of a directory in name order, with per-frame KITTI calibration when the directory has
/// the KITTI layout (`image_2/*.png` or `images/*.png`, and `calib/*.txt` of the same stem, camera
/// `P2`).
#[derive(Debug)]
pub struct ImageDir {
    dir: PathBuf,
    files: Vec<PathBuf>,
    calib_dir: Option<PathBuf>,
    next: usize,
}

impl ImageDir {
    /// Lists the images of `dir` (or of `dir/image_2` or `dir/images` in the KITTI layout).
    ///
    /// # Errors
    /// [`Error::Source`] when the directory cannot be read or holds no image.
    pub fn open(dir: &Path) -> Result<Self> {
        let src = |message: String| Error::Source { source_name: dir.display().to_string(), message };
        let list = |d: &Path| -> Result<Vec<PathBuf>> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(|e| src(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            Ok(files)
        };
        let calib = dir.join("calib");
        let kitti_images = KITTI_IMAGE_DIRS.iter().map(|d| dir.join(d)).find(|d| d.is_dir());
        let (image_dir, calib_dir, files) = match kitti_images {
            Some(images) if calib.is_dir() => {
                let files = list(&images)?;
                (images, Some(calib), files)
            }
            // A KITTI image folder without `calib/`: its images, with the intrinsics given
            // elsewhere (`--intrinsics`), unless the directory itself holds images.
            kitti_images => {
                let files = list(dir)?;
                match kitti_images {
                    Some(images) if files.is_empty() => {
                        let files = list(&images)?;
                        (images, None, files)
                    }
                    _ => (dir.to_path_buf(), None, files),
                }
            }
        };
        if files.is_empty() {
            return Err(src(format!(
                "no image ({}) in {}",
                IMAGE_EXTENSIONS.join(", "),
                image_dir.display()
            )));
        }
        Ok(Self { dir: dir.to_path_buf(), files, calib_dir, next: 0 })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there is no image (never true for an opened directory).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageDir {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.files.get(self.next).cloned() else { return Ok(None) };
        let index = self.next as u64;
        self.next += 1;
        let image = read_image(&path)?;
        let intrinsics = match (&self.calib_dir, path.file_stem()) {
            (Some(calib), Some(stem)) => {
                let file = calib.join(stem).with_extension("txt");
                let opts = ReadOptions::default()
                    .with_format(CalibFormat::Kitti)
                    .with_image_size(image.width(), image.height());
                Some(read_intrinsics(&file, &opts)?.0)
            }
            _ => None,
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Some(Frame { image, index, name, intrinsics, captured: Instant::now() }))
    }

    fn describe(&self) -> String {
        let layout = if self.calib_dir.is_some() { "KITTI layout" } else { "images" };
        format!("{} ({} {layout})", self.dir.display(), self.files.len())
    }
}

/// One image file, yielded once.
#[derive(Debug)]
pub struct SingleImage {
    path: PathBuf,
    done: bool,
}

impl SingleImage {
    /// A source of the image at `path` (read when the frame is asked for).
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), done: false }
    }
}

impl FrameSource for SingleImage {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let image = read_image(&self.path)?;
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Some(Frame { image, index: 0, name, intrinsics: None, captured: Instant::now() }))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The demo sequence: an image directory (`assets/` holds the bundled one), replayed as a camera.
///
/// # Errors
/// As [`ImageDir::open`].
pub fn demo_sequence(dir: &Path) -> Result<ImageDir> {
    ImageDir::open(dir)
}

/// Largest relative difference of aspect ratios for which intrinsics are rescaled to a frame of
/// another size (a camera delivering another resolution than it was calibrated at).
pub const ASPECT_TOLERANCE: f64 = 0.01;

/// `k` for a frame of `size` (width, height): as is when the sizes agree, rescaled when only the
/// resolution differs.
///
/// # Errors
/// [`Error::ImageSizeMismatch`] when the aspect ratios differ by more than [`ASPECT_TOLERANCE`];
/// [`Error::Calib`] when rescaling fails.
pub fn fit_intrinsics(k: &Intrinsics, size: (u32, u32)) -> Result<Intrinsics> {
    if (k.width(), k.height()) == size {
        return Ok(k.clone());
    }
    let aspect_k = f64::from(k.width()) / f64::from(k.height());
    let aspect_f = f64::from(size.0) / f64::from(size.1.max(1));
    if ((aspect_k - aspect_f) / aspect_f).abs() > ASPECT_TOLERANCE {
        return Err(Error::ImageSizeMismatch { image: size, camera: (k.width(), k.height()) });
    }
    Ok(k.resized(size.0, size.1)?.0)
}

/// A one-frame slot with latest-frame semantics: [`LatestFrame::put`] replaces a frame nobody
/// took (counting it as dropped), [`LatestFrame::take`] waits for the newest. Memory is bounded
/// to one frame whatever the camera and inference rates.
#[derive(Debug, Default)]
pub struct LatestFrame {
    slot: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    frame: Option<Frame>,
    dropped: u64,
    closed: bool,
}

impl LatestFrame {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        match self.slot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Offers a frame; a frame still in the slot is dropped and counted.
    pub fn put(&self, frame: Frame) {
        let mut s = self.state();
        if s.frame.replace(frame).is_some() {
            s.dropped += 1;
        }
        self.ready.notify_one();
    }

    /// Marks the producer finished: [`LatestFrame::take`] returns `None` once the slot is empty.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_all();
    }

    /// The newest frame, waiting up to `timeout` for one; `None` on timeout or when closed and
    /// empty.
    pub fn take(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        loop {
            if let Some(f) = s.frame.take() {
                return Some(f);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                return None;
            }
            s = match self.ready.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Frames replaced before anyone took them.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Whether the producer has [closed](LatestFrame::close) the slot.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn frame(index: u64) -> Frame {
        Frame {
            image: RgbImage::new(2, 2),
            index,
            name: String::new(),
            intrinsics: None,
            captured: Instant::now(),
        }
    }

    #[test]
    fn a_slow_consumer_gets_the_newest_frame_and_stale_ones_are_counted() {
        let slot = LatestFrame::new();
        for i in 0..5 {
            slot.put(frame(i));
        }
        assert_eq!(slot.take(Duration::ZERO).unwrap().index, 4);
        assert_eq!(slot.dropped(), 4);
        assert!(slot.take(Duration::from_millis(5)).is_none());
        slot.put(frame(5));
        slot.close();
        assert_eq!(slot.take(Duration::from_secs(1)).unwrap().index, 5);
        assert!(slot.take(Duration::from_secs(1)).is_none());
    }

    #[test]
    fn a_camera_thread_feeds_the_slot() {
        let slot = std::sync::Arc::new(LatestFrame::new());
        let producer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    slot.put(frame(i));
                }
                slot.close();
            })
        };
        let mut seen = Vec::new();
        while let Some(f) = slot.take(Duration::from_secs(5)) {
            seen.push(f.index);
        }
        producer.join().unwrap();
        assert_eq!(seen.last(), Some(&49));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seen.len() as u64 + slot.dropped(), 50);
    }

    #[test]
    fn directories_list_images_and_read_kitti_calibration() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("image_2")).unwrap();
        std::fs::create_dir_all(root.join("calib")).unwrap();
        RgbImage::new(40, 20).save(root.join("image_2/000001.png")).unwrap();
        RgbImage::new(40, 20).save(root.join("image_2/000000.png")).unwrap();
        let p = "P0: 100 0 20 0 0 100 10 0 0 0 1 0\nP1: 100 0 20 0 0 100 10 0 0 0 1 0\n\
                 P2: 100 0 20 0 0 100 10 0 0 0 1 0\nP3: 100 0 20 0 0 100 10 0 0 0 1 0\n\
                 R0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 1 0\n\
                 Tr_imu_to_velo: 1 0 0 0 0 1 0 0 0 0 1 0\n";
        std::fs::write(root.join("calib/000000.txt"), p).unwrap();
        std::fs::write(root.join("calib/000001.txt"), p.replace("P2: 100", "P2: 120")).unwrap();
        let mut src = ImageDir::open(root).unwrap();
        assert_eq!(src.len(), 2);
        let a = src.next_frame().unwrap().unwrap();
        let b = src.next_frame().unwrap().unwrap();
        assert_eq!((a.name.as_str(), b.name.as_str()), ("000000.png", "000001.png"));
        assert_eq!(a.output_stem(), "000000");
        let camera = Frame { name: "/dev/video0".into(), index: 42, ..b.clone() };
        assert_eq!(camera.output_stem(), "video0_000042");
        assert_eq!(a.intrinsics.unwrap().fx(), 100.0);
        assert_eq!(b.intrinsics.unwrap().fx(), 120.0);
        assert!(src.next_frame().unwrap().is_none());
        assert!(ImageDir::open(&root.join("calib")).is_err());
        // Without `calib/`, the KITTI image folder is still found; the frames carry no intrinsics.
        std::fs::remove_dir_all(root.join("calib")).unwrap();
        let mut src = ImageDir::open(root).unwrap();
        assert_eq!(src.len(), 2);
        assert!(src.next_frame().unwrap().unwrap().intrinsics.is_none());
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("bad.png");
        std::fs::write(&bad, b"\x89PNG but not really").unwrap();
        let err = SingleImage::new(&bad).next_frame().unwrap_err().to_string();
        assert!(err.contains("bad.png"), "{err}");
        let err = SingleImage::new(&tmp.path().join("missing.png")).next_frame().unwrap_err().to_string();
        assert!(err.contains("missing.png"), "{err}");
    }
}
