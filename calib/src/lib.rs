//! # monovlm-calib — camera and box geometry
//!
//! Owns every projection, back-projection, box corner and IoU in monovlm-edge, and KITTI file I/O.
//! Intrinsics calibration from checkerboard images lives here too.
//!
//! ## Conventions (one set, everywhere)
//! - **Camera frame** (KITTI / OpenCV): x right, y down, z forward, metres.
//! - **Pixels**: the pixel centre is at integer coordinates (OpenCV); a 2D box `[x1, y1, x2, y2]`
//!   has exclusive right/bottom edges, is clipped to `[0, W] x [0, H]` and has area
//!   `(x2 - x1)(y2 - y1)`.
//! - **3D box** `(x, y, z, l, w, h, yaw)`: geometric centre; `l` along the heading, `w` across,
//!   `h` vertical; `yaw` = KITTI `rotation_y` about the camera y axis, in `(-pi, pi]`.
//!   KITTI labels give the bottom centre: `centre = bottom + (0, -h/2, 0)`.
//! - **Intrinsics**: pinhole `fx fy cx cy` + image size, optional `plumb_bob` distortion and the
//!   KITTI `P2` translation `tx = P2[0,3] / -fx` (and `ty`), honoured by projection and
//!   back-projection.

mod board;
mod box2d;
mod box3d;
pub mod calibrate;
mod camera;
pub mod chessboard;
mod error;
pub mod formats;
mod iou3d;
pub mod kitti;
pub mod report;
pub mod synth;
pub mod undistort;

pub use board::Checkerboard;
pub use box2d::{Box2d, iou_2d};
pub use box3d::{BOX_EDGES, Box3d, DISTORTED_EDGE_SAMPLES, NEAR_PLANE_M, wrap_angle};
pub use camera::{Distortion, Intrinsics, MIN_PROJECT_DEPTH_M, ResizeMap};
pub use error::{Error, Result};
pub use iou3d::{bev_intersection_area, iou_3d, iou3d_mono3dvg};
pub use nalgebra::{Point2, Point3};
