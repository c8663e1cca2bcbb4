//! A small builder for ONNX graphs: named values, initializers from f32 / f16 / i64 / u8 data,
//! deduplicated constants, node helpers, and a writer that streams initializers to the file (or to an
//! external data file for models over the protobuf 2 GiB limit) without copying them into messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::proto::{
    AttributeProto, AttributeType, DataLocation, DataType, Dimension, DimensionValue, GraphProto, IR_VERSION,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, TypeProtoValue, ValueInfoProto,
};
use crate::{Error, Result};

/// The operator-set version of the default ONNX domain the exporter targets.
pub const ONNX_OPSET: i64 = 21;
/// The contrib domain of ONNX Runtime (`GroupQueryAttention`, `SkipSimplifiedLayerNormalization`,
/// `MatMulNBits`).
pub const MS_DOMAIN: &str = "com.microsoft";
/// Its operator-set version.
pub const MS_OPSET: i64 = 1;

/// Protobuf refuses messages of 2 GiB and more; models whose weights exceed this keep them in an
/// external data file.
pub const PROTOBUF_LIMIT_BYTES: u64 = 2 * 1024 * 1024 * 1024 - 1;
/// With external data, tensors smaller than this stay inline (shapes, constants, norms).
pub const EXTERNAL_MIN_BYTES: usize = 1024;
/// Alignment of tensors in external data files, so they can be memory-mapped and read aligned.
const EXTERNAL_ALIGN_BYTES: u64 = 64;
/// Head room kept under [`PROTOBUF_LIMIT_BYTES`] for the graph itself when deciding to go external.
const INLINE_BUDGET_BYTES: u64 = PROTOBUF_LIMIT_BYTES - 64 * 1024 * 1024;

/// A value of a graph under construction, by name. The empty name stands for an omitted optional
/// input or an unused optional output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    /// The value's name in the graph.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// An omitted optional input.
    pub fn none() -> Self {
        Self(String::new())
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size (`batch`, `sequence`); equal names are equal sizes.
    Sym(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Self::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Self::Sym(v.to_owned())
    }
}

/// The element bytes of a tensor, little-endian and row-major, with its type and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    /// Element type.
    pub dtype: DataType,
    /// Shape.
    pub dims: Vec<i64>,
    /// `product(dims) * dtype size` bytes.
    pub bytes: Vec<u8>,
}

fn element_count(dims: &[i64]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| Error::Graph(format!("invalid tensor shape {dims:?}")))
    })
}

impl TensorData {
    /// Wraps raw bytes, checking their length against the shape.
    ///
    /// # Errors
    /// [`Error::Graph`] when the length does not match.
    pub fn from_bytes(dtype: DataType, dims: &[i64], bytes: Vec<u8>) -> Result<Self> {
        let size =
            dtype.size_bytes().ok_or_else(|| Error::Graph(format!("{dtype:?} tensors are not supported")))?;
        let expected = element_count(dims)? * size;
        if bytes.len() != expected {
            return Err(Error::Graph(format!(
                "{dtype:?} tensor of shape {dims:?} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Self { dtype, dims: dims.to_vec(), bytes })
    }

    /// An f32 tensor.
    ///
    /// # Errors
    /// [`Error::Graph`] when `data` does not have `product(dims)` elements.
    pub fn f32(dims: &[i64], data: &[f32]) -> Result<Self> {
        Self::from_bytes(DataType::Float, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// An f16 tensor from f32 data (rounded to nearest).
    ///
    /// # Errors
    /// As [`TensorData::f32`].
    pub fn f16_from_f32(dims: &[i64], data: &[f32]) -> Result<Self> {
        Self::from_bytes(
            DataType::Float16,
            dims,
            data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        )
    }

    /// A u8 tensor.
    ///
    /// # Errors
    /// As [`TensorData::f32`].
    pub fn u8(dims: &[i64], data: Vec<u8>) -> Result<Self> {
        Self::from_bytes(DataType::Uint8, dims, data)
    }
}

/// Attribute constructors.
pub mod attr {
    use super::{AttributeProto, AttributeType};

    fn base(name: &str, kind: AttributeType) -> AttributeProto {
        AttributeProto { name: name.to_owned(), r#type: kind as i32, ..Default::default() }
    }

    /// An integer attribute.
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { i: Some(v), ..base(name, AttributeType::Int) }
    }

    /// A float attribute.
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto { f: Some(v), ..base(name, AttributeType::Float) }
    }

    /// A string attribute.
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto { s: Some(v.as_bytes().to_vec()), ..base(name, AttributeType::String) }
    }

    /// An integer-list attribute.
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { ints: v.to_vec(), ..base(name, AttributeType::Ints) }
    }
}

/// A graph under construction.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<(String, TensorData)>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    constants: HashMap<(i32, Vec<i64>, Vec<u8>), Value>,
    next_id: usize,
    scope: String,
    opsets: BTreeMap<String, i64>,
}

fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimensionValue::DimValue(*v),
                Dim::Sym(s) => DimensionValue::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(TypeProtoValue::TensorType(TypeProtoTensor {
                elem_type: dtype as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

impl GraphBuilder {
    /// An empty graph named `name`, importing the default ONNX domain at [`ONNX_OPSET`].
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            names: HashSet::new(),
            constants: HashMap::new(),
            next_id: 0,
            scope: String::new(),
            opsets: BTreeMap::from([(String::new(), ONNX_OPSET)]),
        }
    }

    /// Sets the prefix of the names of the nodes and values created next (`/model/layers.3/attn`).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_owned();
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if name.is_empty() || !self.names.insert(name.to_owned()) {
            return Err(Error::Graph(format!("graph value name {name:?} is empty or used twice")));
        }
        Ok(())
    }

    /// Declares a graph input.
    ///
    /// # Errors
    /// [`Error::Graph`] when the name is taken.
    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) -> Result<Value> {
        self.claim(name)?;
        self.inputs.push(value_info(name, dtype, dims));
        Ok(Value(name.to_owned()))
    }

    /// Declares `value` a graph output under its own name. Use [`GraphBuilder::op_named`] (or
    /// [`GraphBuilder::rename`]) so the producing node writes the output's name.
    ///
    /// # Errors
    /// [`Error::Graph`] when `value` is unnamed or not defined in the graph.
    pub fn output(&mut self, value: &Value, dtype: DataType, dims: &[Dim]) -> Result<()> {
        if value.0.is_empty() || !self.names.contains(&value.0) {
            return Err(Error::Graph(format!("output {:?} is not a value of the graph", value.0)));
        }
        self.outputs.push(value_info(&value.0, dtype, dims));
        Ok(())
    }

    /// Adds a named initializer.
    ///
    /// # Errors
    /// [`Error::Graph`] when the name is taken.
    pub fn initializer(&mut self, name: &str, data: TensorData) -> Result<Value> {
        self.claim(name)?;
        self.initializers.push((name.to_owned(), data));
        Ok(Value(name.to_owned()))
    }

    /// A small constant (an initializer named `const/...`), shared by every use of equal data.
    pub fn constant(&mut self, data: TensorData) -> Value {
        let key = (data.dtype as i32, data.dims.clone(), data.bytes.clone());
        if let Some(v) = self.constants.get(&key) {
            return v.clone();
        }
        let name = format!("const/{}", self.constants.len());
        debug_assert!(!self.names.contains(&name));
        self.names.insert(name.clone());
        self.initializers.push((name.clone(), data));
        let v = Value(name);
        self.constants.insert(key, v.clone());
        v
    }

    /// An i64 constant of shape `[values.len()]`.
    pub fn const_i64s(&mut self, values: &[i64]) -> Value {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(TensorData { dtype: DataType::Int64, dims: vec![values.len() as i64], bytes })
    }

    /// A scalar i64 constant.
    pub fn const_i64(&mut self, value: i64) -> Value {
        self.constant(TensorData {
            dtype: DataType::Int64,
            dims: vec![],
            bytes: value.to_le_bytes().to_vec(),
        })
    }

    /// A scalar float constant in `dtype` (f32 or f16).
    pub fn const_float(&mut self, value: f32, dtype: DataType) -> Value {
        let bytes = match dtype {
            DataType::Float16 => f16::from_f32(value).to_le_bytes().to_vec(),
            _ => value.to_le_bytes().to_vec(),
        };
        let dtype = if dtype == DataType::Float16 { dtype } else { DataType::Float };
        self.constant(TensorData { dtype, dims: vec![], bytes })
    }

    /// A float constant of any shape in `dtype` (f32 or f16), from f32 data.
    ///
    /// # Errors
    /// As [`TensorData::f32`].
    pub fn const_floats(&mut self, dims: &[i64], data: &[f32], dtype: DataType) -> Result<Value> {
        let t = match dtype {
            DataType::Float16 => TensorData::f16_from_f32(dims, data)?,
            _ => TensorData::f32(dims, data)?,
        };
        Ok(self.constant(t))
    }

    fn push_node(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&Value],
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let node_name = format!("{}/{op_type}_{id}", self.scope);
        if !domain.is_empty() {
            let version = if domain == MS_DOMAIN { MS_OPSET } else { 1 };
            self.opsets.entry(domain.to_owned()).or_insert(version);
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outputs,
            name: node_name.clone(),
            op_type: op_type.to_owned(),
            attribute: attrs,
            doc_string: String::new(),
            domain: domain.to_owned(),
        });
        node_name
    }

    /// Adds a node with `n_outputs` outputs named after the node.
    pub fn op_n(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&Value],
        n_outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<Value> {
        self.op_sparse(op_type, domain, inputs, &vec![true; n_outputs], attrs)
    }

    /// Adds a node whose output `k` is named after the node when `used[k]`, and left empty (an
    /// unused optional output, not computed) otherwise.
    pub fn op_sparse(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&Value],
        used: &[bool],
        attrs: Vec<AttributeProto>,
    ) -> Vec<Value> {
        let id = self.next_id;
        let names: Vec<String> = used
            .iter()
            .enumerate()
            .map(
                |(k, &u)| if u { format!("{}/{op_type}_{id}/output_{k}", self.scope) } else { String::new() },
            )
            .collect();
        for n in names.iter().filter(|n| !n.is_empty()) {
            self.names.insert(n.clone());
        }
        self.push_node(op_type, domain, inputs, names.clone(), attrs);
        names.into_iter().map(Value).collect()
    }

    /// Adds a node of the default domain with one output.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: Vec<AttributeProto>) -> Value {
        self.op_n(op_type, "", inputs, 1, attrs).into_iter().next().unwrap_or_else(Value::none)
    }

    /// Adds a node whose outputs get the given names (graph outputs); an empty name leaves an optional
    /// output unused.
    ///
    /// # Errors
    /// [`Error::Graph`] when a name is taken.
    pub fn op_named(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&Value],
        output_names: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Result<Vec<Value>> {
        for n in output_names.iter().filter(|n| !n.is_empty()) {
            self.claim(n)?;
        }
        let outputs: Vec<String> = output_names.iter().map(|s| (*s).to_owned()).collect();
        self.push_node(op_type, domain, inputs, outputs.clone(), attrs);
        Ok(outputs.into_iter().map(Value).collect())
    }

    /// The finished graph.
    pub fn finish(self, doc: &str) -> Model {
        Model {
            graph: GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: Vec::new(),
                doc_string: doc.to_owned(),
                input: self.inputs,
                output: self.outputs,
                value_info: Vec::new(),
            },
            initializers: self.initializers,
            opsets: self.opsets,
        }
    }
}

/// Where a model's initializers go when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalData {
    /// Inline when the file stays under the protobuf limit, else external.
    Auto,
    /// Always external (tensors of [`EXTERNAL_MIN_BYTES`] and more).
    Always,
}

/// What [`Model::save`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    /// The `.onnx` file.
    pub model_path: PathBuf,
    /// The external data file (`<model>.onnx_data`), when one was written.
    pub data_path: Option<PathBuf>,
    /// Bytes written in all.
    pub bytes: u64,
}

/// A finished graph with its initializers, ready to write.
#[derive(Debug)]
pub struct Model {
    graph: GraphProto,
    initializers: Vec<(String, TensorData)>,
    opsets: BTreeMap<String, i64>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io { path: path.to_path_buf(), message: e.to_string() }
}

impl Model {
    /// The graph without its initializers.
    pub fn graph(&self) -> &GraphProto {
        &self.graph
    }

    /// Names and data of the initializers.
    pub fn initializers(&self) -> &[(String, TensorData)] {
        &self.initializers
    }

    /// Bytes of initializer data.
    pub fn weight_bytes(&self) -> u64 {
        self.initializers.iter().map(|(_, t)| t.bytes.len() as u64).sum()
    }

    fn header(&self, producer_version: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "monovlm-export".into(),
            producer_version: producer_version.to_owned(),
            domain: String::new(),
            model_version: 1,
            doc_string: String::new(),
            graph: None,
            opset_import: self
                .opsets
                .iter()
                .map(|(domain, &version)| OperatorSetIdProto { domain: domain.clone(), version })
                .collect(),
            metadata_props: Vec::new(),
        }
    }

    /// Writes the model to `path`, and its large initializers to `<file name>_data` beside it when
    /// `external` asks for it or the model would exceed the protobuf limit. Initializer data is
    /// streamed, never copied into protobuf messages.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written.
    pub fn save(&self, path: &Path, external: ExternalData) -> Result<Saved> {
        let go_external = match external {
            ExternalData::Always => true,
            ExternalData::Auto => self.weight_bytes() > INLINE_BUDGET_BYTES,
        };
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Io { path: path.to_path_buf(), message: "not a file name".into() })?;
        let data_name = format!("{file_name}_data");
        let data_path = path.with_file_name(&data_name);

        // Tensor headers (everything but the inline data), and where each tensor's data goes.
        let mut headers = Vec::with_capacity(self.initializers.len());
        let mut external_layout = Vec::new();
        let mut offset = 0u64;
        for (name, t) in &self.initializers {
            let mut h = TensorProto {
                dims: t.dims.clone(),
                data_type: t.dtype as i32,
                name: name.clone(),
                ..Default::default()
            };
            let inline = !go_external || t.bytes.len() < EXTERNAL_MIN_BYTES;
            if !inline {
                offset = offset.div_ceil(EXTERNAL_ALIGN_BYTES) * EXTERNAL_ALIGN_BYTES;
                let entry = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
                h.data_location = DataLocation::External as i32;
                h.external_data = vec![
                    entry("location", data_name.clone()),
                    entry("offset", offset.to_string()),
                    entry("length", t.bytes.len().to_string()),
                ];
                external_layout.push((offset, &t.bytes));
                offset += t.bytes.len() as u64;
            }
            headers.push((h, inline));
        }
        let raw_len = |inline: bool, t: &TensorData| {
            if inline { key_len(9) + encoded_len_varint(t.bytes.len() as u64) + t.bytes.len() } else { 0 }
        };
        let tensor_lens: Vec<usize> = headers
            .iter()
            .zip(&self.initializers)
            .map(|((h, inline), (_, t))| h.encoded_len() + raw_len(*inline, t))
            .collect();
        let graph_len = self.graph.encoded_len()
            + tensor_lens.iter().map(|&l| key_len(5) + encoded_len_varint(l as u64) + l).sum::<usize>();
        if graph_len as u64 > PROTOBUF_LIMIT_BYTES {
            return Err(Error::Graph(format!("graph of {graph_len} bytes exceeds the protobuf limit")));
        }

        let err = io_error(path);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(&err)?);
        let mut buf = Vec::new();
        self.header(env!("CARGO_PKG_VERSION")).encode(&mut buf).map_err(|e| Error::Graph(e.to_string()))?;
        encode_key(7, WireType::LengthDelimited, &mut buf);
        encode_varint(graph_len as u64, &mut buf);
        self.graph.encode(&mut buf).map_err(|e| Error::Graph(e.to_string()))?;
        out.write_all(&buf).map_err(&err)?;
        let mut written = buf.len() as u64;
        for (((h, inline), (_, t)), &len) in headers.iter().zip(&self.initializers).zip(&tensor_lens) {
            buf.clear();
            encode_key(5, WireType::LengthDelimited, &mut buf);
            encode_varint(len as u64, &mut buf);
            h.encode(&mut buf).map_err(|e| Error::Graph(e.to_string()))?;
            if *inline {
                encode_key(9, WireType::LengthDelimited, &mut buf);
                encode_varint(t.bytes.len() as u64, &mut buf);
            }
            out.write_all(&buf).map_err(&err)?;
            written += buf.len() as u64;
            if *inline {
                out.write_all(&t.bytes).map_err(&err)?;
                written += t.bytes.len() as u64;
            }
        }
        out.flush().map_err(&err)?;

        let data_path = if external_layout.is_empty() {
            None
        } else {
            let data_err = data_path.clone();
            let err = io_error(&data_err);
            let mut data = BufWriter::with_capacity(1 << 20, File::create(&data_path).map_err(&err)?);
            let mut pos = 0u64;
            for (off, bytes) in external_layout {
                let pad = (off - pos) as usize;
                data.write_all(&vec![0u8; pad]).map_err(&err)?;
                data.write_all(bytes).map_err(&err)?;
                pos = off + bytes.len() as u64;
            }
            data.flush().map_err(&err)?;
            written += pos;
            Some(data_path)
        };
        Ok(Saved { model_path: path.to_path_buf(), data_path, bytes: written })
    }

    /// The model as one protobuf message, initializers inline (for tests and small models).
    ///
    /// # Errors
    /// [`Error::Graph`] when the model exceeds the protobuf limit.
    pub fn to_proto(&self) -> Result<ModelProto> {
        if self.weight_bytes() > INLINE_BUDGET_BYTES {
            return Err(Error::Graph(
                "model too large for one protobuf message; save it with external data".into(),
            ));
        }
        let mut graph = self.graph.clone();
        graph.initializer = self
            .initializers
            .iter()
            .map(|(name, t)| TensorProto {
                dims: t.dims.clone(),
                data_type: t.dtype as i32,
                name: name.clone(),
                raw_data: t.bytes.clone(),
                ..Default::default()
            })
            .collect();
        let mut model = self.header(env!("CARGO_PKG_VERSION"));
        model.graph = Some(graph);
        Ok(model)
    }
}
