//! Camera pixel formats to RGB: packed YUYV 4:2:2 (BT.601, studio range, the format of UVC webcams)
//! and MJPEG (each buffer a JPEG image).

use image::RgbImage;

use crate::error::{Error, Result};

/// RGB of one BT.601 studio-range sample (`Y` in 16..235, `Cb`/`Cr` in 16..240), in the 8-bit
/// fixed-point form of ITU-R BT.601 (`R = 1.164 (Y-16) + 1.596 (Cr-128)`,
/// `G = 1.164 (Y-16) - 0.392 (Cb-128) - 0.813 (Cr-128)`, `B = 1.164 (Y-16) + 2.017 (Cb-128)`, each
/// coefficient times 256 and rounded), clamped to `0..=255`.
pub fn yuv_to_rgb_bt601(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    let clamp = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
}

/// Converts a packed YUYV (`Y0 Cb Y1 Cr` per pixel pair) buffer of `width x height` pixels with
/// `stride` bytes per row (at least `2 * width`) to RGB.
///
/// # Errors
/// [`Error::PixelFormat`] for an odd width, a short stride or a buffer smaller than
/// `stride * height` bytes.
///
/// # Example
/// ```
/// use monovlm_runtime::pixfmt::yuyv_to_rgb;
/// // Two pixels: white and black sharing neutral chroma.
/// let rgb = yuyv_to_rgb(&[235, 128, 16, 128], 2, 1, 4)?;
/// assert_eq!(rgb.as_raw(), &vec![255, 255, 255, 0, 0, 0]);
/// # Ok::<(), monovlm_runtime::Error>(())
/// ```
pub fn yuyv_to_rgb(buf: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || w % 2 != 0 {
        return Err(Error::PixelFormat(format!("YUYV needs a non-empty even width, got {width}x{height}")));
    }
    if stride < 2 * w {
        return Err(Error::PixelFormat(format!("YUYV stride {stride} is under 2 x width {w}")));
    }
    let need = stride * (h - 1) + 2 * w;
    if buf.len() < need {
        return Err(Error::PixelFormat(format!(
            "YUYV {width}x{height} (stride {stride}) needs {need} bytes, the buffer has {}",
            buf.len()
        )));
    }
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let src = &buf[row * stride..row * stride + 2 * w];
        for (pair, px) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let (y0, cb, y1, cr) = (pair[0], pair[1], pair[2], pair[3]);
            px[..3].copy_from_slice(&yuv_to_rgb_bt601(y0, cb, cr));
            px[3..].copy_from_slice(&yuv_to_rgb_bt601(y1, cb, cr));
        }
    }
    RgbImage::from_raw(width, height, out).ok_or_else(|| Error::PixelFormat("RGB buffer size".into()))
}

/// Decodes one MJPEG buffer (a complete JPEG image) to RGB.
///
/// # Errors
/// [`Error::PixelFormat`] when the buffer is not a decodable JPEG.
pub fn mjpeg_to_rgb(buf: &[u8]) -> Result<RgbImage> {
    image::load_from_memory_with_format(buf, image::ImageFormat::Jpeg)
        .map(image::DynamicImage::into_rgb8)
        .map_err(|e| Error::PixelFormat(format!("MJPEG frame of {} bytes: {e}", buf.len())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The BT.601 studio-range formula in floating point, rounded: the reference the fixed-point
    /// conversion must equal within one code value (its coefficients are rounded to 1/256).
    fn reference(y: u8, cb: u8, cr: u8) -> [f64; 3] {
        let (y, cb, cr) = (f64::from(y) - 16.0, f64::from(cb) - 128.0, f64::from(cr) - 128.0);
        let c = 255.0 / 219.0;
        let r = c * y + 255.0 / 112.0 * 0.701 * cr;
        let g =
            c * y - 255.0 / 112.0 * 0.886 * 0.114 / 0.587 * cb - 255.0 / 112.0 * 0.701 * 0.299 / 0.587 * cr;
        let b = c * y + 255.0 / 112.0 * 0.886 * cb;
        [r, g, b].map(|v| v.round().clamp(0.0, 255.0))
    }

    #[test]
    fn fixed_point_matches_the_bt601_formula_within_one_code_value() {
        let mut worst = 0.0f64;
        for y in (0..=255u8).step_by(3) {
            for cb in (0..=255u8).step_by(5) {
                for cr in (0..=255u8).step_by(5) {
                    let got = yuv_to_rgb_bt601(y, cb, cr);
                    let want = reference(y, cb, cr);
                    for ch in 0..3 {
                        worst = worst.max((f64::from(got[ch]) - want[ch]).abs());
                    }
                }
            }
        }
        assert!(worst <= 1.0, "worst difference {worst}");
    }

    #[test]
    fn yuyv_buffers_convert_exactly() {
        // A 4x2 frame with stride 10 (2 padding bytes per row): grey ramp, then saturated colours.
        let rows: [[u8; 8]; 2] =
            [[16, 128, 126, 128, 180, 128, 235, 128], [81, 90, 145, 54, 41, 240, 170, 166]];
        let mut buf = Vec::new();
        for r in rows {
            buf.extend_from_slice(&r);
            buf.extend_from_slice(&[0xEE, 0xEE]);
        }
        let rgb = yuyv_to_rgb(&buf, 4, 2, 10).unwrap();
        // Each pixel against the formula: Y of the pixel, Cb/Cr of its pair.
        for (row, r) in rows.iter().enumerate() {
            for x in 0..4 {
                let pair = &r[(x / 2) * 4..(x / 2) * 4 + 4];
                let y = pair[(x % 2) * 2];
                let want = yuv_to_rgb_bt601(y, pair[1], pair[3]);
                assert_eq!(rgb.get_pixel(x as u32, row as u32).0, want);
            }
        }
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(3, 0).0, [255, 255, 255]);
        // Studio-range primaries of BT.601 (Y, Cb, Cr of pure red, green, blue, themselves rounded
        // to whole codes, hence one code value of slack).
        let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 1);
        assert!(close(yuv_to_rgb_bt601(81, 90, 240), [255, 0, 0]));
        assert!(close(yuv_to_rgb_bt601(145, 54, 34), [0, 255, 0]));
        assert!(close(yuv_to_rgb_bt601(41, 240, 110), [0, 0, 255]));
    }

    #[test]
    fn short_or_odd_yuyv_buffers_are_errors() {
        assert!(yuyv_to_rgb(&[0; 7], 2, 2, 4).is_err());
        assert!(yuyv_to_rgb(&[0; 12], 3, 1, 6).is_err());
        assert!(yuyv_to_rgb(&[0; 16], 4, 2, 6).is_err());
    }

    #[test]
    fn mjpeg_frames_decode_and_garbage_is_an_error() {
        let mut img = RgbImage::new(32, 16);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 8) as u8, (y * 16) as u8, 128]);
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
        let back = mjpeg_to_rgb(&jpeg).unwrap();
        assert_eq!(back.dimensions(), (32, 16));
        let err: i32 = img
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        // Quality-95 JPEG of a smooth ramp: within a few code values.
        assert!(err <= 12, "max error {err}");
        // A frame cut mid-scan (a camera unplugged while sending) must not panic; the decoder may
        // pad it or refuse it. Cut inside the headers, it has no image and is refused.
        let _ = mjpeg_to_rgb(&jpeg[..jpeg.len() / 2]);
        assert!(mjpeg_to_rgb(&jpeg[..20]).is_err());
        assert!(mjpeg_to_rgb(b"not a jpeg").is_err());
    }
}
