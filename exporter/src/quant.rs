//! 4-bit block quantization of linear weights in the layout of ONNX Runtime's `MatMulNBits`
//! (com.microsoft): symmetric, one f32 scale per block of [`BLOCK_SIZE`] input features, no zero-point
//! tensor (the operator's default zero point of 8 applies).

/// Input features sharing one scale.
pub const BLOCK_SIZE: usize = 32;
/// Bits per weight.
pub const BITS: usize = 4;
/// The zero point the operator assumes when no `zero_points` input is given: `2^(bits-1)`.
const ZERO_POINT: i32 = 8;

/// A `[n, k]` weight quantized for `MatMulNBits`.
#[derive(Clone, Debug, PartialEq)]
pub struct Q4Weight {
    /// Output features (`N`).
    pub n: usize,
    /// Input features (`K`).
    pub k: usize,
    /// `[n, blocks, BLOCK_SIZE / 2]`: two 4-bit codes per byte, the even input feature in the low
    /// nibble. A last partial block is padded with code 8 (zero).
    pub packed: Vec<u8>,
    /// `[n * blocks]` scales.
    pub scales: Vec<f32>,
}

impl Q4Weight {
    /// Blocks per output feature: `ceil(k / BLOCK_SIZE)`.
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(BLOCK_SIZE)
    }

    /// The dequantized weight `[n, k]` (what the operator multiplies by).
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.blocks();
        let mut out = vec![0.0f32; self.n * self.k];
        for row in 0..self.n {
            for col in 0..self.k {
                let (blk, within) = (col / BLOCK_SIZE, col % BLOCK_SIZE);
                let byte = self.packed[(row * blocks + blk) * (BLOCK_SIZE / 2) + within / 2];
                let code = if within % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                out[row * self.k + col] =
                    (i32::from(code) - ZERO_POINT) as f32 * self.scales[row * blocks + blk];
            }
        }
        out
    }
}

/// Shrink factors of the block scale tried by [`best_scale`]: a smaller scale clips the extremes but
/// resolves the bulk of the block more finely.
const SCALE_SHRINK: [f32; 9] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6];

fn code(v: f32, inv: f32) -> i32 {
    ((v * inv).round() as i32).clamp(-ZERO_POINT, ZERO_POINT - 1)
}

/// The scale among `full * SCALE_SHRINK` with the least squared reconstruction error on `chunk`.
fn best_scale(chunk: &[f32], full: f32) -> f32 {
    if full == 0.0 {
        return 0.0;
    }
    let err = |scale: f32| -> f32 {
        let inv = 1.0 / scale;
        chunk.iter().map(|&v| (code(v, inv) as f32 * scale - v).powi(2)).sum()
    };
    SCALE_SHRINK
        .iter()
        .map(|&r| full * r)
        .map(|s| (s, err(s)))
        .fold((full, f32::INFINITY), |best, cand| if cand.1 < best.1 { cand } else { best })
        .0
}

/// Quantizes `weight` (`[n, k]` row-major, PyTorch's `Linear.weight` layout) block by block along `k`:
/// the scale starts from the value of largest magnitude mapping to code 0 (`-8 * scale`, so all 16
/// codes are used) and is shrunk where that lowers the block's squared error (clipping the extreme);
/// codes are `clamp(round(w / scale), -8, 7) + 8`.
///
/// `weight.len()` must be `n * k` (checked by the caller, debug-asserted here).
pub fn quantize_q4(weight: &[f32], n: usize, k: usize) -> Q4Weight {
    debug_assert_eq!(weight.len(), n * k);
    let blocks = k.div_ceil(BLOCK_SIZE);
    let half = BLOCK_SIZE / 2;
    let mut packed = vec![0x88u8; n * blocks * half];
    let mut scales = vec![0.0f32; n * blocks];
    for row in 0..n {
        let w = &weight[row * k..(row + 1) * k];
        for blk in 0..blocks {
            let chunk = &w[blk * BLOCK_SIZE..((blk + 1) * BLOCK_SIZE).min(k)];
            let extreme = chunk.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let scale = best_scale(chunk, extreme / -(ZERO_POINT as f32));
            scales[row * blocks + blk] = scale;
            let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            let base = (row * blocks + blk) * half;
            for (i, &v) in chunk.iter().enumerate() {
                let q = code(v, inv) + ZERO_POINT;
                let byte = &mut packed[base + i / 2];
                *byte = if i % 2 == 0 { (*byte & 0xf0) | q as u8 } else { (*byte & 0x0f) | ((q as u8) << 4) };
            }
        }
    }
    Q4Weight { n, k, packed, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_half_a_step_inside_the_range_and_no_worse_than_plain_rounding() {
        let (n, k) = (3, 70); // a partial last block
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let q = quantize_q4(&w, n, k);
        assert_eq!(q.packed.len(), n * 3 * 16);
        let d = q.dequantize();
        for row in 0..n {
            for blk in 0..3 {
                let cols = blk * BLOCK_SIZE..((blk + 1) * BLOCK_SIZE).min(k);
                let scale = q.scales[row * 3 + blk];
                let vals = &w[row * k + cols.start..row * k + cols.end];
                let extreme = vals.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let plain = extreme / -8.0;
                let (mut mse, mut mse_plain) = (0.0f32, 0.0f32);
                for (i, &v) in vals.iter().enumerate() {
                    let err = (d[row * k + cols.start + i] - v).abs();
                    let c = v / scale;
                    if (-8.0..=7.0).contains(&c) {
                        assert!(
                            err <= scale.abs() * 0.5 + 1e-6,
                            "row {row} block {blk}: {err} > {scale} / 2"
                        );
                    }
                    mse += err * err;
                    mse_plain += ((v / plain).round().clamp(-8.0, 7.0) * plain - v).powi(2);
                }
                assert!(mse <= mse_plain + 1e-6, "row {row} block {blk}: {mse} > {mse_plain}");
            }
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let q = quantize_q4(&[0.0; 64], 2, 32);
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
        assert!(q.packed.iter().all(|&b| b == 0x88));
    }
}
