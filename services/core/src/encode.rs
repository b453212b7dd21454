//! Parity encoders: how k queries become one parity query.
//!
//! - [`ParityEncoder::Addition`]: the element-wise sum (the paper's general encoder).
//! - [`ParityEncoder::Concatenation`]: for images `[C, H, W]`, each image is down-sampled
//!   and tiled into one image of the same shape: side by side at k = 2 (each `H × W/2`),
//!   in a 2×2 grid at k = 4 (each `H/2 × W/2`), in four rows of two at k = 8 (each
//!   `H/4 × W/2`; 7 × 14 for MNIST).
//!
//! A partial group (fewer than k members) is encoded as if the missing members were zero,
//! so the parity model sees the same distribution of inputs with some slots empty.

use crate::tensor::{Tensor, TensorError};
use std::fmt;
use std::str::FromStr;

/// Which parity encoder a deployment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParityEncoder {
    Addition,
    Concatenation,
}

/// Why a group could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("cannot encode an empty group")]
    Empty,
    #[error("group has {members} members but k is {k}")]
    TooMany { members: usize, k: usize },
    #[error("members have different shapes: {0:?} and {1:?}")]
    MixedShapes(Vec<usize>, Vec<usize>),
    #[error("the concatenation encoder supports k = 2, 4 or 8 and images [C, H, W] that its tiles divide (H by 1, 2 or 4, W by 2); got k = {k} and shape {shape:?}")]
    Unsupported { k: usize, shape: Vec<usize> },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl ParityEncoder {
    pub fn name(self) -> &'static str {
        match self {
            ParityEncoder::Addition => "addition",
            ParityEncoder::Concatenation => "concatenation",
        }
    }

    /// Checks up front that this encoder can encode groups of `k` inputs of `shape`.
    pub fn validate(self, k: usize, shape: &[usize]) -> Result<(), EncodeError> {
        match self {
            ParityEncoder::Addition => Ok(()),
            ParityEncoder::Concatenation => {
                let ok = match (tiles(k), shape) {
                    (Some((rows, cols)), [_, h, w]) => *h > 0 && *w > 0 && h.is_multiple_of(rows) && w.is_multiple_of(cols),
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(EncodeError::Unsupported { k, shape: shape.to_vec() })
                }
            }
        }
    }

    /// Encodes up to `k` members (in member order) into one parity input.
    pub fn encode(self, k: usize, members: &[&Tensor]) -> Result<Tensor, EncodeError> {
        let first = members.first().ok_or(EncodeError::Empty)?;
        if members.len() > k {
            return Err(EncodeError::TooMany { members: members.len(), k });
        }
        if let Some(other) = members.iter().find(|m| m.shape() != first.shape()) {
            return Err(EncodeError::MixedShapes(first.shape().to_vec(), other.shape().to_vec()));
        }
        match self {
            ParityEncoder::Addition => add(first.shape(), members),
            ParityEncoder::Concatenation => {
                self.validate(k, first.shape())?;
                concatenate(k, members)
            }
        }
    }
}

/// The element-wise sum. Finite values can still sum to infinity (two of 3e38): that
/// comes back as [`TensorError::NotFinite`], for the caller to refuse, never as a panic.
fn add(shape: &[usize], members: &[&Tensor]) -> Result<Tensor, EncodeError> {
    let mut sum = vec![0.0f32; shape.iter().product()];
    for m in members {
        for (s, v) in sum.iter_mut().zip(m.data()) {
            *s += v;
        }
    }
    Ok(Tensor::new(shape.to_vec(), sum)?)
}

/// The concatenation encoder's grid for k: (rows, columns) of tiles, which is also the
/// block each image is averaged over (1×2 at k = 2, 2×2 at k = 4, 4×2 at k = 8), so that
/// k down-sampled images fill exactly one.
fn tiles(k: usize) -> Option<(usize, usize)> {
    match k {
        2 => Some((1, 2)),
        4 => Some((2, 2)),
        8 => Some((4, 2)),
        _ => None,
    }
}

/// Tiles each member, down-sampled by averaging blocks of the grid's shape ([`tiles`]).
/// Callers have checked the shape with [`ParityEncoder::validate`]; `get` keeps even a
/// wrong one from panicking.
fn concatenate(k: usize, members: &[&Tensor]) -> Result<Tensor, EncodeError> {
    let shape = members.first().ok_or(EncodeError::Empty)?.shape().to_vec();
    let [c, h, w] = shape[..] else { return Err(EncodeError::Unsupported { k, shape }) };
    let Some((rows, cols)) = tiles(k) else { return Err(EncodeError::Unsupported { k, shape }) };
    let (th, tw) = (h / rows, w / cols);
    let mut out = vec![0.0f32; c * h * w];
    for (slot, m) in members.iter().enumerate() {
        let (r0, c0) = ((slot / cols) * th, (slot % cols) * tw);
        let src = m.data();
        for ch in 0..c {
            for y in 0..th {
                for x in 0..tw {
                    // Averaged as a mean of quarters, not a sum then a division, so two
                    // finite values near f32::MAX stay finite.
                    let mut acc = 0.0f32;
                    for dy in 0..rows {
                        for dx in 0..cols {
                            acc += src.get(ch * h * w + (y * rows + dy) * w + (x * cols + dx)).copied().unwrap_or(0.0) / (rows * cols) as f32;
                        }
                    }
                    if let Some(o) = out.get_mut(ch * h * w + (r0 + y) * w + (c0 + x)) {
                        *o = acc;
                    }
                }
            }
        }
    }
    Ok(Tensor::new(shape, out)?)
}

impl fmt::Display for ParityEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ParityEncoder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "addition" | "add" => Ok(ParityEncoder::Addition),
            "concatenation" | "concat" => Ok(ParityEncoder::Concatenation),
            other => Err(format!("unknown parity encoder '{other}': use 'addition' or 'concatenation'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::new(shape, data).unwrap()
    }

    #[test]
    fn addition_sums_and_pads_partial_groups() {
        let a = t(vec![3], vec![1.0, 2.0, 3.0]);
        let b = t(vec![3], vec![0.5, 0.5, 0.5]);
        let p = ParityEncoder::Addition.encode(3, &[&a, &b]).unwrap();
        assert_eq!(p.data(), &[1.5, 2.5, 3.5]);
        assert_eq!(ParityEncoder::Addition.encode(2, &[&a]).unwrap(), a);
        assert_eq!(ParityEncoder::Addition.encode(1, &[&a, &b]), Err(EncodeError::TooMany { members: 2, k: 1 }));
    }

    #[test]
    fn finite_values_that_overflow_are_an_error_not_a_panic() {
        let big = t(vec![1, 2, 2], vec![3.0e38; 4]);
        let err = ParityEncoder::Addition.encode(2, &[&big, &big]).unwrap_err();
        assert!(matches!(err, EncodeError::Tensor(TensorError::NotFinite { .. })), "{err:?}");
        // The average of two values near f32::MAX is itself finite.
        let p = ParityEncoder::Concatenation.encode(2, &[&big, &big]).unwrap();
        assert!(p.data().iter().all(|v| v.is_finite() && *v > 2.9e38), "{:?}", p.data());
    }

    #[test]
    fn concatenation_k2_tiles_side_by_side() {
        // one channel, 2x4 images: left half is member 0 down-sampled by pairs of columns.
        let a = t(vec![1, 2, 4], vec![1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]);
        let b = t(vec![1, 2, 4], vec![10.0; 8]);
        let p = ParityEncoder::Concatenation.encode(2, &[&a, &b]).unwrap();
        assert_eq!(p.shape(), &[1, 2, 4]);
        assert_eq!(p.data(), &[2.0, 6.0, 10.0, 10.0, 3.0, 7.0, 10.0, 10.0]);
    }

    #[test]
    fn concatenation_k4_tiles_a_grid_and_leaves_missing_slots_zero() {
        let a = t(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = t(vec![1, 2, 2], vec![8.0; 4]);
        let p = ParityEncoder::Concatenation.encode(4, &[&a, &b]).unwrap();
        assert_eq!(p.data(), &[2.5, 8.0, 0.0, 0.0]);
        assert!(ParityEncoder::Concatenation.encode(3, &[&a]).is_err());
    }

    /// k = 8: 4×2 images, each averaged over its one 4×2 block into one pixel, tiled in four
    /// rows of two (X1 X2 / X3 X4 / ...); a missing member's tile stays zero.
    #[test]
    fn concatenation_k8_tiles_four_rows_of_two() {
        let members: Vec<Tensor> = (0..7).map(|i| t(vec![1, 4, 2], (0..8).map(|v| (i * 8 + v) as f32).collect())).collect();
        let refs: Vec<&Tensor> = members.iter().collect();
        let p = ParityEncoder::Concatenation.encode(8, &refs).unwrap();
        assert_eq!(p.shape(), &[1, 4, 2]);
        // member i's values are 8i..8i+7, whose mean is 8i + 3.5
        assert_eq!(p.data(), &[3.5, 11.5, 19.5, 27.5, 35.5, 43.5, 51.5, 0.0]);
        // 28 × 28 (MNIST) is tiled by 7 × 14 images; a height not divisible by 4 is refused.
        assert!(ParityEncoder::Concatenation.validate(8, &[1, 28, 28]).is_ok());
        assert!(ParityEncoder::Concatenation.validate(8, &[1, 30, 28]).is_err());
        assert!(ParityEncoder::Concatenation.validate(6, &[1, 28, 28]).is_err());
    }
}
