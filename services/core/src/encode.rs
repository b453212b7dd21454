//! Parity encoders: how k queries become one parity query.
//!
//! - [`ParityEncoder::Addition`]: the element-wise sum (the paper's general encoder).
//! - [`ParityEncoder::Concatenation`]: for images `[C, H, W]`, each image is down-sampled
//!   and tiled into one image of the same shape: side by side at k = 2 (each `H × W/2`),
//!   in a 2×2 grid at k = 4 (each `H/2 × W/2`).
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
    #[error("the concatenation encoder supports k = 2 or 4 and images [C, H, W] with even H and W; got k = {k} and shape {shape:?}")]
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
                let ok = matches!(k, 2 | 4) && shape.len() == 3 && shape[1].is_multiple_of(2) && shape[2].is_multiple_of(2);
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
            ParityEncoder::Addition => Ok(add(members)),
            ParityEncoder::Concatenation => {
                self.validate(k, first.shape())?;
                Ok(concatenate(k, members))
            }
        }
    }
}

fn add(members: &[&Tensor]) -> Tensor {
    let mut sum = members[0].data().to_vec();
    for m in &members[1..] {
        for (s, v) in sum.iter_mut().zip(m.data()) {
            *s += v;
        }
    }
    Tensor::new(members[0].shape().to_vec(), sum).expect("sum of finite tensors of one shape")
}

/// Tiles each member, down-sampled by averaging 1×2 (k = 2) or 2×2 (k = 4) blocks.
fn concatenate(k: usize, members: &[&Tensor]) -> Tensor {
    let shape = members[0].shape().to_vec();
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let (rows, cols) = if k == 2 { (1, 2) } else { (2, 2) };
    let (th, tw) = (h / rows, w / cols);
    let mut out = vec![0.0f32; c * h * w];
    for (slot, m) in members.iter().enumerate() {
        let (r0, c0) = ((slot / cols) * th, (slot % cols) * tw);
        let src = m.data();
        for ch in 0..c {
            for y in 0..th {
                for x in 0..tw {
                    let mut acc = 0.0;
                    for dy in 0..rows {
                        for dx in 0..cols {
                            acc += src[ch * h * w + (y * rows + dy) * w + (x * cols + dx)];
                        }
                    }
                    out[ch * h * w + (r0 + y) * w + (c0 + x)] = acc / (rows * cols) as f32;
                }
            }
        }
    }
    Tensor::new(shape, out).expect("average of finite tensors")
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
}
