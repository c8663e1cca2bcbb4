//! Writing ONNX from Rust: the IR messages ([`proto`], `prost`-derived with the specification's
//! field numbers; no `.proto` file, no build script), a graph builder ([`GraphBuilder`]) and operator
//! helpers.

mod builder;
mod ops;
pub mod proto;

pub use builder::{
    Dim, EXTERNAL_MIN_BYTES, ExternalData, GraphBuilder, MS_DOMAIN, MS_OPSET, Model, ONNX_OPSET,
    PROTOBUF_LIMIT_BYTES, Saved, TensorData, Value, attr,
};
pub use proto::DataType;
