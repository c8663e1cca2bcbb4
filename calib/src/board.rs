//! Checkerboard calibration targets.

use std::str::FromStr;

use image::GrayImage;
use nalgebra::Point3;

use crate::error::{Error, Result};

/// Grey level of the dark squares of rendered boards.
pub const BOARD_BLACK: u8 = 20;
/// Grey level of the light squares and the margin of rendered boards.
pub const BOARD_WHITE: u8 = 235;

/// A checkerboard with `cols x rows` *inner* corners (OpenCV's `patternSize`, e.g. 9x6 for a board of
/// 10x7 squares) and squares of side `square_m` metres.
///
/// Board frame: origin at inner corner 0, x along the `cols` axis, y along the `rows` axis, z into
/// the board (right-handed). Inner corner `(c, r)` is at `(c s, r s, 0)`; corners are numbered
/// row-major, `i = r * cols + c`. The first square (spanning `[0, s]^2`, between corners 0, 1,
/// `cols` and `cols + 1`) is dark, which, for boards whose `cols` and `rows` differ in parity, fixes
/// the numbering under a half turn of the board.
///
/// Invariants: `cols, rows >= 2`, `square_m` finite and `> 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checkerboard {
    cols: usize,
    rows: usize,
    square_m: f64,
}

impl Checkerboard {
    /// A board of `cols x rows` inner corners and `square_m` metre squares.
    ///
    /// # Errors
    /// [`Error::InvalidBoard`] for fewer than 2 corners along a side or a non-positive square size.
    pub fn new(cols: usize, rows: usize, square_m: f64) -> Result<Self> {
        if cols < 2 || rows < 2 {
            return Err(Error::InvalidBoard(format!("{cols}x{rows}: at least 2x2 inner corners are needed")));
        }
        if !(square_m.is_finite() && square_m > 0.0) {
            return Err(Error::InvalidBoard(format!("square size {square_m} m must be finite and > 0")));
        }
        Ok(Self { cols, rows, square_m })
    }

    /// Inner corners along x.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Inner corners along y.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Square side, metres.
    pub fn square_m(&self) -> f64 {
        self.square_m
    }
    /// Number of inner corners.
    pub fn len(&self) -> usize {
        self.cols * self.rows
    }
    /// Always false (a board has at least 4 corners); present for `len`'s sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The inner corners in the board frame (metres), row-major.
    pub fn object_points(&self) -> Vec<Point3<f64>> {
        (0..self.rows)
            .flat_map(|r| (0..self.cols).map(move |c| (c, r)))
            .map(|(c, r)| Point3::new(c as f64 * self.square_m, r as f64 * self.square_m, 0.0))
            .collect()
    }

    /// Whether the board-frame point `(x, y)` (metres) is on a dark square; `None` outside the
    /// squares (on the margin or beyond).
    pub fn is_dark(&self, x_m: f64, y_m: f64) -> Option<bool> {
        let (i, j) = ((x_m / self.square_m).floor(), (y_m / self.square_m).floor());
        let inside = i >= -1.0 && j >= -1.0 && i < self.cols as f64 && j < self.rows as f64;
        inside.then(|| (i as i64 + j as i64).rem_euclid(2) == 0)
    }

    /// A printable image of the board: `px_per_square` pixels a square and a light margin of one
    /// square all round.
    pub fn render(&self, px_per_square: u32) -> GrayImage {
        let px = px_per_square.max(1);
        let (w, h) = ((self.cols as u32 + 3) * px, (self.rows as u32 + 3) * px);
        GrayImage::from_fn(w, h, |u, v| {
            // Pixel centre in squares, origin at inner corner 0 (two squares in: margin + square).
            let x = (u as f64 + 0.5) / px as f64 - 2.0;
            let y = (v as f64 + 0.5) / px as f64 - 2.0;
            match self.is_dark(x * self.square_m, y * self.square_m) {
                Some(true) => image::Luma([BOARD_BLACK]),
                _ => image::Luma([BOARD_WHITE]),
            }
        })
    }
}

impl FromStr for Checkerboard {
    type Err = Error;
    /// Parses `COLSxROWS` (inner corners, e.g. `9x6`) with a unit square; set the size with
    /// [`Checkerboard::new`].
    fn from_str(s: &str) -> Result<Self> {
        let parse = |t: &str| t.trim().parse::<usize>().ok();
        match s.split_once(['x', 'X']).and_then(|(c, r)| Some((parse(c)?, parse(r)?))) {
            Some((c, r)) => Self::new(c, r, 1.0),
            None => Err(Error::InvalidBoard(format!("'{s}': expected COLSxROWS inner corners, e.g. 9x6"))),
        }
    }
}
