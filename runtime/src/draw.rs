//! Frames with the 3D boxes drawn as projected wireframes and labelled with their query, as JPEG.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};
use monovlm_calib::BOX_EDGES;

use crate::grounder::Grounding;

/// The label font (DejaVu Sans, its licence in `assets/fonts/`).
const FONT_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// Label text height, pixels.
const LABEL_PX: f32 = 15.0;
/// Padding around label text, pixels.
const LABEL_PAD: i64 = 3;
/// JPEG quality of served frames: small enough for MJPEG on a vehicle network, boxes stay crisp.
const JPEG_QUALITY: u8 = 80;
/// Box colours, one per standing query in order (the viewer uses the same list).
const PALETTE: [[u8; 3]; 6] =
    [[0, 230, 118], [255, 64, 129], [41, 182, 246], [255, 214, 0], [170, 0, 255], [255, 109, 0]];

fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_TTF).ok()).as_ref()
}

/// A copy of `image` with each grounding's 3D box drawn (12 edges between its projected corners;
/// edges with a corner behind the camera are left out) and its query written above it.
pub fn annotate(image: &RgbImage, groundings: &[&Grounding]) -> RgbImage {
    let mut out = image.clone();
    for (i, g) in groundings.iter().enumerate() {
        let Some(answer) = &g.answer else { continue };
        let color = Rgb(PALETTE[i % PALETTE.len()]);
        for (a, b) in BOX_EDGES {
            if let (Some(Some(pa)), Some(Some(pb))) = (answer.corners_px.get(a), answer.corners_px.get(b)) {
                thick_line(&mut out, *pa, *pb, color);
            }
        }
        let visible = answer.corners_px.iter().flatten();
        let top = visible.clone().map(|p| p[1]).fold(f64::INFINITY, f64::min);
        let left = visible.map(|p| p[0]).fold(f64::INFINITY, f64::min);
        let (x, y) = if top.is_finite() && left.is_finite() {
            (left, top)
        } else {
            (answer.bbox_2d_px[0], answer.bbox_2d_px[1])
        };
        label(&mut out, x, y, &g.query, color);
    }
    out
}

/// Encodes `image` as JPEG.
///
/// # Errors
/// The encoder's message.
pub fn jpeg(image: &RgbImage) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(image.as_raw().len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
        .encode_image(image)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(img.width()) && y < i64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A 2-pixel line from `a` to `b`, clipped to the image first (corners can project far outside).
fn thick_line(img: &mut RgbImage, a: [f64; 2], b: [f64; 2], c: Rgb<u8>) {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let Some((a, b)) = clip(a, b, w, h) else { return };
    bresenham(img, a, b, c, 0);
    bresenham(img, a, b, c, 1);
}

/// Liang-Barsky clipping of the segment `a`-`b` to `[0, w-1] x [0, h-1]`.
fn clip(a: [f64; 2], b: [f64; 2], w: f64, h: f64) -> Option<([f64; 2], [f64; 2])> {
    if !(a.iter().chain(&b).all(|v| v.is_finite())) {
        return None;
    }
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a[0]), (dx, w - 1.0 - a[0]), (-dy, a[1]), (dy, h - 1.0 - a[1])] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    (t0 <= t1).then(|| ([a[0] + t0 * dx, a[1] + t0 * dy], [a[0] + t1 * dx, a[1] + t1 * dy]))
}

/// Bresenham's line; `offset` shifts it by one pixel across its major axis (thickness).
fn bresenham(img: &mut RgbImage, a: [f64; 2], b: [f64; 2], c: Rgb<u8>, offset: i64) {
    let (mut x0, mut y0) = (a[0].round() as i64, a[1].round() as i64);
    let (x1, y1) = (b[0].round() as i64, b[1].round() as i64);
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (ox, oy) = if dx >= -dy { (0, offset) } else { (offset, 0) };
    let mut err = dx + dy;
    loop {
        put(img, x0 + ox, y0 + oy, c);
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// A filled label box in `c` with `text` in black, its bottom-left at (`x`, `y`), kept inside the
/// image.
fn label(img: &mut RgbImage, x: f64, y: f64, text: &str, c: Rgb<u8>) {
    let Some(font) = font() else { return };
    let scaled = font.as_scaled(PxScale::from(LABEL_PX));
    let text_w: f32 = text.chars().map(|ch| scaled.h_advance(font.glyph_id(ch))).sum();
    let box_w = text_w.ceil() as i64 + 2 * LABEL_PAD;
    let box_h = LABEL_PX.ceil() as i64 + 2 * LABEL_PAD;
    let max_x = (i64::from(img.width()) - box_w).max(0);
    let x0 = (x.round() as i64).clamp(0, max_x);
    let y0 = (y.round() as i64 - box_h).clamp(0, (i64::from(img.height()) - box_h).max(0));
    for yy in y0..y0 + box_h {
        for xx in x0..x0 + box_w {
            put(img, xx, yy, c);
        }
    }
    let mut pen = (x0 + LABEL_PAD) as f32;
    let baseline = (y0 + LABEL_PAD) as f32 + scaled.ascent();
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        let glyph = id.with_scale_and_position(PxScale::from(LABEL_PX), point(pen, baseline));
        pen += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (bounds.min.x as i64 + i64::from(gx), bounds.min.y as i64 + i64::from(gy));
            if px >= 0 && py >= 0 && px < i64::from(img.width()) && py < i64::from(img.height()) {
                let p = img.get_pixel_mut(px as u32, py as u32);
                for ch in &mut p.0 {
                    *ch = (f32::from(*ch) * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_segments_inside_and_drops_ones_outside() {
        let (a, b) = clip([-100.0, 10.0], [200.0, 10.0], 50.0, 20.0).unwrap_or_default();
        assert_eq!((a, b), ([0.0, 10.0], [49.0, 10.0]));
        assert!(clip([-10.0, -10.0], [-1.0, -5.0], 50.0, 20.0).is_none());
        assert!(clip([f64::NAN, 0.0], [1.0, 1.0], 50.0, 20.0).is_none());
    }

    #[test]
    fn lines_and_labels_change_pixels() {
        let mut img = RgbImage::new(64, 48);
        thick_line(&mut img, [1.0, 1.0], [60.0, 40.0], Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(1, 1).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(60, 40).0, [255, 0, 0]);
        let before = img.clone();
        label(&mut img, 5.0, 30.0, "car", Rgb([0, 255, 0]));
        assert_ne!(img, before);
        assert!(font().is_some());
    }
}
