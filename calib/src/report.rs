//! The calibration report picture: every view with its detected corners and magnified
//! reprojection residuals, and a bar per view showing its RMS error (red when flagged an outlier),
//! so a user sees at a glance which view is bad.

use image::{GrayImage, Rgb, RgbImage, imageops};
use nalgebra::Point2;

/// Width of one view's tile, pixels.
const TILE_W: u32 = 320;
/// Height of the error bar under each tile, pixels.
const BAR_H: u32 = 10;
/// Residual vectors are drawn this many times longer than they are.
pub const RESIDUAL_SCALE: f64 = 50.0;
/// An error bar spans the tile width at this RMS error, pixels.
const BAR_FULL_SCALE_PX: f64 = 1.0;

/// One view for the report.
pub struct ReportView<'a> {
    /// The image.
    pub image: &'a GrayImage,
    /// Detected corners (`None`: the board was not found).
    pub corners: Option<&'a [Point2<f64>]>,
    /// Residuals `projected - detected` per corner, pixels (empty when not calibrated).
    pub residuals_px: &'a [[f64; 2]],
    /// The view's RMS error, pixels.
    pub rms_px: Option<f64>,
    /// Flagged as an outlier.
    pub outlier: bool,
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 4096);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        put(img, (a.0 + t * (b.0 - a.0)).round() as i64, (a.1 + t * (b.1 - a.1)).round() as i64, c);
    }
}

/// Draws the report: tiles in rows of `columns`.
pub fn render(views: &[ReportView<'_>], columns: u32) -> RgbImage {
    let columns = columns.max(1);
    let (w0, h0) = views.first().map_or((TILE_W, TILE_W), |v| (v.image.width(), v.image.height()));
    let scale = f64::from(TILE_W) / f64::from(w0.max(1));
    let tile_h = ((f64::from(h0) * scale).round() as u32).max(1);
    let rows = (views.len() as u32).div_ceil(columns).max(1);
    let mut out = RgbImage::from_pixel(columns * TILE_W, rows * (tile_h + BAR_H + 4), Rgb([30, 30, 30]));
    for (i, v) in views.iter().enumerate() {
        let (tx, ty) = ((i as u32 % columns) * TILE_W, (i as u32 / columns) * (tile_h + BAR_H + 4));
        let thumb = imageops::resize(v.image, TILE_W, tile_h, imageops::FilterType::Triangle);
        for (x, y, p) in thumb.enumerate_pixels() {
            let g = p.0[0] / 2 + 40; // dimmed so the overlay stands out
            out.put_pixel(tx + x, ty + y, Rgb([g, g, g]));
        }
        let to_tile = |p: (f64, f64)| (f64::from(tx) + p.0 * scale, f64::from(ty) + p.1 * scale);
        match v.corners {
            Some(corners) => {
                for (k, c) in corners.iter().enumerate() {
                    let p = to_tile((c.x, c.y));
                    let colour = if k == 0 { Rgb([255, 200, 0]) } else { Rgb([0, 230, 0]) };
                    for d in -2..=2 {
                        put(&mut out, p.0 as i64 + d, p.1 as i64, colour);
                        put(&mut out, p.0 as i64, p.1 as i64 + d, colour);
                    }
                    if let Some(r) = v.residuals_px.get(k) {
                        let tip = to_tile((c.x + RESIDUAL_SCALE * r[0], c.y + RESIDUAL_SCALE * r[1]));
                        line(&mut out, p, tip, Rgb([255, 60, 60]));
                    }
                }
            }
            None => {
                // Not found: a red cross over the tile.
                let (w, h) = (f64::from(TILE_W), f64::from(tile_h));
                let o = (f64::from(tx), f64::from(ty));
                line(&mut out, o, (o.0 + w, o.1 + h), Rgb([255, 0, 0]));
                line(&mut out, (o.0 + w, o.1), (o.0, o.1 + h), Rgb([255, 0, 0]));
            }
        }
        if let Some(rms) = v.rms_px {
            let len = ((rms / BAR_FULL_SCALE_PX).min(1.0) * f64::from(TILE_W)).round() as u32;
            let colour = if v.outlier { Rgb([230, 40, 40]) } else { Rgb([60, 160, 255]) };
            for y in 0..BAR_H {
                for x in 0..len.max(1) {
                    out.put_pixel(tx + x, ty + tile_h + 2 + y, colour);
                }
            }
        }
    }
    out
}
