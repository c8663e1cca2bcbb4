//! The ONNX IR messages this crate writes, declared with `prost` and the field numbers of the ONNX
//! specification (`onnx.proto`, IR version 10). Only what the exporter needs is declared; a reader
//! skips nothing it needs, and unknown fields of files we read back are ignored by `prost`.
//!
//! `onnx.proto` is a proto2 file: repeated scalars are unpacked unless the specification says
//! `[packed = true]` (only `TensorProto`'s typed data fields), and attribute values are optional
//! fields, so an attribute whose value is zero is still written (ONNX's checker counts set fields).

/// IR version written (ONNX 1.16, the first with opset 21).
pub const IR_VERSION: i64 = 10;

/// `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// Not set.
    Undefined = 0,
    /// `float`.
    Float = 1,
    /// `uint8_t`.
    Uint8 = 2,
    /// `int8_t`.
    Int8 = 3,
    /// `uint16_t`.
    Uint16 = 4,
    /// `int16_t`.
    Int16 = 5,
    /// `int32_t`.
    Int32 = 6,
    /// `int64_t`.
    Int64 = 7,
    /// UTF-8 string.
    String = 8,
    /// `bool`.
    Bool = 9,
    /// IEEE 754 half precision.
    Float16 = 10,
    /// `double`.
    Double = 11,
    /// `uint32_t`.
    Uint32 = 12,
    /// `uint64_t`.
    Uint64 = 13,
    /// Two `float`s.
    Complex64 = 14,
    /// Two `double`s.
    Complex128 = 15,
    /// bfloat16.
    Bfloat16 = 16,
}

impl DataType {
    /// Bytes per element, `None` for strings.
    pub fn size_bytes(self) -> Option<usize> {
        Some(match self {
            Self::Undefined | Self::String => return None,
            Self::Uint8 | Self::Int8 | Self::Bool => 1,
            Self::Uint16 | Self::Int16 | Self::Float16 | Self::Bfloat16 => 2,
            Self::Float | Self::Int32 | Self::Uint32 => 4,
            Self::Int64 | Self::Uint64 | Self::Double | Self::Complex64 => 8,
            Self::Complex128 => 16,
        })
    }
}

/// `AttributeProto.AttributeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// Not set.
    Undefined = 0,
    /// `f`.
    Float = 1,
    /// `i`.
    Int = 2,
    /// `s`.
    String = 3,
    /// `t`.
    Tensor = 4,
    /// `g`.
    Graph = 5,
    /// `floats`.
    Floats = 6,
    /// `ints`.
    Ints = 7,
    /// `strings`.
    Strings = 8,
    /// `tensors`.
    Tensors = 9,
    /// `graphs`.
    Graphs = 10,
}

/// `TensorProto.DataLocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataLocation {
    /// The data is in the message (`raw_data` or a typed field).
    Default = 0,
    /// The data is in a file named by `external_data` (`location`, `offset`, `length`).
    External = 1,
}

/// A key/value string pair (metadata, external data descriptors).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An operator set the model uses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain; empty for the default ONNX domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version of that domain's operator set.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A tensor value: an initializer or an attribute's tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Element type ([`DataType`]).
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    /// Typed float storage (unused by this crate, which writes `raw_data`).
    #[prost(float, repeated, packed = "true", tag = "4")]
    pub float_data: Vec<f32>,
    /// Typed int32 storage (also int8/16, uint8/16, bool, float16 bit patterns).
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub int32_data: Vec<i32>,
    /// Strings.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    /// Typed int64 storage.
    #[prost(int64, repeated, packed = "true", tag = "7")]
    pub int64_data: Vec<i64>,
    /// Name (initializers: the graph value it defines).
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes, row-major.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Typed double storage.
    #[prost(double, repeated, packed = "true", tag = "10")]
    pub double_data: Vec<f64>,
    /// Typed uint64 storage (also uint32).
    #[prost(uint64, repeated, packed = "true", tag = "11")]
    pub uint64_data: Vec<u64>,
    /// Documentation.
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// `location`, `offset`, `length` (and optionally `checksum`) when `data_location` is external.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// Where the data is ([`DataLocation`]).
    #[prost(enumeration = "DataLocation", tag = "14")]
    pub data_location: i32,
}

/// A named attribute of a node. Exactly one value field is set, as `type` says.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A float.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// An integer.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// A string (UTF-8 bytes).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// A tensor.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// A sub-graph.
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    /// Floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// Integers.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// Strings.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// Tensors.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    /// Sub-graphs.
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
    /// Documentation.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// Which value field is set ([`AttributeType`]).
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
    /// In a function body: the name of the function attribute this one refers to.
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
}

/// One dimension of a shape: a number, a symbolic name, or unknown (neither set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// The value.
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
    /// Semantic denotation.
    #[prost(string, tag = "3")]
    pub denotation: String,
}

/// `TensorShapeProto.Dimension.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    /// A fixed size.
    #[prost(int64, tag = "1")]
    DimValue(i64),
    /// A symbolic size; equal names mean equal sizes.
    #[prost(string, tag = "2")]
    DimParam(String),
}

/// A tensor shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TypeProto.Tensor`: element type and (optional) shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    /// Element type ([`DataType`]).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape, when known.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TypeProto.value`: only dense tensors are used here.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TypeProtoValue {
    /// A dense tensor.
    #[prost(message, tag = "1")]
    TensorType(TypeProtoTensor),
}

/// The type of a graph value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// The type.
    #[prost(oneof = "TypeProtoValue", tags = "1")]
    pub value: Option<TypeProtoValue>,
    /// Semantic denotation.
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// A named, typed graph value (inputs, outputs, intermediate value annotations).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Documentation.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names; an empty name is an omitted optional input.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names; an empty name is an unused optional output.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name (unique in the graph).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// Operator domain; empty for ONNX.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// A computation graph.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Documentation.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types of intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// A model file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version ([`IR_VERSION`]).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Producing tool.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Its version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Reverse-DNS model namespace.
    #[prost(string, tag = "4")]
    pub domain: String,
    /// Model version.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets used.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}
