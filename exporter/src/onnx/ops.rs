//! Operator helpers on [`GraphBuilder`]: one method per ONNX operator the graphs use, with the
//! opset-21 input conventions (axes, split sizes and shapes as i64 tensor inputs).

use super::builder::{GraphBuilder, MS_DOMAIN, Value, attr};
use super::proto::DataType;

impl GraphBuilder {
    /// `MatMul`.
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("MatMul", &[a, b], Vec::new())
    }

    /// `Add`.
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Add", &[a, b], Vec::new())
    }

    /// `Sub`.
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Sub", &[a, b], Vec::new())
    }

    /// `Mul`.
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Mul", &[a, b], Vec::new())
    }

    /// `Div`.
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Div", &[a, b], Vec::new())
    }

    /// An element-wise unary operator (`Sigmoid`, `Cos`, `Sin`, `Sqrt`, ...).
    pub fn unary(&mut self, op_type: &str, x: &Value) -> Value {
        self.op(op_type, &[x], Vec::new())
    }

    /// `Reshape` to a constant shape (`0` copies the input dimension, `-1` is inferred).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.const_i64s(shape);
        self.op("Reshape", &[x, &s], Vec::new())
    }

    /// `Transpose`.
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x], vec![attr::ints("perm", perm)])
    }

    /// `Unsqueeze` at constant axes.
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.const_i64s(axes);
        self.op("Unsqueeze", &[x, &a], Vec::new())
    }

    /// `Split` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &Value, axis: i64, sizes: &[i64]) -> Vec<Value> {
        let s = self.const_i64s(sizes);
        self.op_n("Split", "", &[x, &s], sizes.len(), vec![attr::int("axis", axis)])
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.op("Concat", xs, vec![attr::int("axis", axis)])
    }

    /// `Gather` along `axis`.
    pub fn gather(&mut self, data: &Value, indices: &Value, axis: i64) -> Value {
        self.op("Gather", &[data, indices], vec![attr::int("axis", axis)])
    }

    /// `Cast` to `to`.
    pub fn cast(&mut self, x: &Value, to: DataType) -> Value {
        self.op("Cast", &[x], vec![attr::int("to", to as i64)])
    }

    /// `Cast` unless `from == to`.
    pub fn cast_if(&mut self, x: &Value, from: DataType, to: DataType) -> Value {
        if from == to { x.clone() } else { self.cast(x, to) }
    }

    /// `Softmax` over `axis`.
    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        self.op("Softmax", &[x], vec![attr::int("axis", axis)])
    }

    /// `ReduceSum` over constant axes.
    pub fn reduce_sum(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        let a = self.const_i64s(axes);
        self.op("ReduceSum", &[x, &a], vec![attr::int("keepdims", i64::from(keepdims))])
    }

    /// `ReduceMean` over constant axes.
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        let a = self.const_i64s(axes);
        self.op("ReduceMean", &[x, &a], vec![attr::int("keepdims", i64::from(keepdims))])
    }

    /// Dimension `axis` of `x`'s shape as an i64 scalar (`Shape` + `Gather`).
    pub fn dim(&mut self, x: &Value, axis: i64) -> Value {
        let shape = self.op("Shape", &[x], Vec::new());
        let i = self.const_i64(axis);
        self.gather(&shape, &i, 0)
    }

    /// `Range(start, limit, delta)` on i64 scalars.
    pub fn range(&mut self, start: &Value, limit: &Value, delta: &Value) -> Value {
        self.op("Range", &[start, limit, delta], Vec::new())
    }

    /// `Where(cond, a, b)`.
    pub fn where_(&mut self, cond: &Value, a: &Value, b: &Value) -> Value {
        self.op("Where", &[cond, a, b], Vec::new())
    }

    /// `SiLU(x) = x * sigmoid(x)`.
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.unary("Sigmoid", x);
        self.mul(x, &s)
    }

    /// RMSNorm from plain operators: `gamma * x / sqrt(mean(x^2, -1) + eps)`, in the type of `x`.
    /// The statistics are computed in f32 whatever `dtype` is, as transformers' `Qwen2RMSNorm`
    /// does: in f16 `x^2` overflows for `|x| > 256`, which the residual stream's outliers reach.
    pub fn rms_norm(&mut self, x: &Value, gamma: &Value, eps: f32, dtype: DataType) -> Value {
        let x32 = self.cast_if(x, dtype, DataType::Float);
        let sq = self.mul(&x32, &x32);
        let ms = self.reduce_mean(&sq, &[-1], true);
        let e = self.const_float(eps, DataType::Float);
        let var = self.add(&ms, &e);
        let den = self.unary("Sqrt", &var);
        let normed = self.div(&x32, &den);
        let normed = self.cast_if(&normed, DataType::Float, dtype);
        self.mul(&normed, gamma)
    }

    /// ONNX Runtime's `SkipSimplifiedLayerNormalization`: `s = x + skip`, returns
    /// `(rms_norm(s) * gamma, s)`.
    pub fn skip_rms_norm(&mut self, x: &Value, skip: &Value, gamma: &Value, eps: f32) -> (Value, Value) {
        let outs = self.op_sparse(
            "SkipSimplifiedLayerNormalization",
            MS_DOMAIN,
            &[x, skip, gamma],
            &[true, false, false, true],
            vec![attr::float("epsilon", eps)],
        );
        let mut it = outs.into_iter();
        let normed = it.next().unwrap_or_else(Value::none);
        let sum = it.nth(2).unwrap_or_else(Value::none);
        (normed, sum)
    }
}
