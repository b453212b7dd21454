//! A dense `f32` tensor: a shape and row-major data, checked to agree and to be finite.

use thiserror::Error;

/// Why bytes or values could not become a [`Tensor`]. Each message says what was wrong.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("tensor data has {bytes} bytes, which is not a whole number of little-endian f32 values (4 bytes each)")]
    RaggedBytes { bytes: usize },
    #[error("tensor shape {shape:?} holds {expected} values but the data has {actual}")]
    ShapeMismatch { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("tensor shape {0:?} has a negative or zero dimension")]
    BadDimension(Vec<i64>),
    #[error("tensor value at index {index} is {value}, but only finite numbers are accepted")]
    NotFinite { index: usize, value: f32 },
    #[error("tensor shape {0:?} holds more values than this machine can address")]
    TooLarge(Vec<usize>),
    #[error("expected a tensor of shape {expected:?}, got {actual:?}")]
    WrongShape { expected: Vec<usize>, actual: Vec<usize> },
}

/// A dense tensor of `f32` in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that the shape matches the data and every value is finite.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, TensorError> {
        let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch { shape, expected, actual: data.len() });
        }
        if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(TensorError::NotFinite { index, value });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(0);
        Self { shape, data: vec![0.0; n] }
    }

    /// Decodes the wire form: a shape as signed integers and little-endian `f32` bytes.
    pub fn from_wire(shape: &[i64], bytes: &[u8]) -> Result<Self, TensorError> {
        if shape.iter().any(|&d| d <= 0) {
            return Err(TensorError::BadDimension(shape.to_vec()));
        }
        if !bytes.len().is_multiple_of(4) {
            return Err(TensorError::RaggedBytes { bytes: bytes.len() });
        }
        let dims: Vec<usize> = shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| TensorError::TooLarge(Vec::new()))?;
        let values = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| TensorError::TooLarge(dims.clone()))?;
        // Checked before decoding: a shape must not make us allocate what the bytes lack.
        if values.checked_mul(4) != Some(bytes.len()) {
            return Err(TensorError::ShapeMismatch { shape: dims, expected: values, actual: bytes.len() / 4 });
        }
        let data = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(<[u8; 4]>::try_from(c).unwrap_or_default())).collect();
        Self::new(dims, data)
    }

    /// The wire form: shape as `i64` and data as little-endian `f32` bytes.
    pub fn to_wire(&self) -> (Vec<i64>, Vec<u8>) {
        let shape = self.shape.iter().map(|&d| d as i64).collect();
        let bytes = self.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        (shape, bytes)
    }

    /// Fails unless the tensor has exactly `expected` as its shape.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<(), TensorError> {
        if self.shape != expected {
            return Err(TensorError::WrongShape { expected: expected.to_vec(), actual: self.shape.clone() });
        }
        Ok(())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let t = Tensor::new(vec![2, 2], vec![1.0, -2.5, 3.25, 0.0]).unwrap();
        let (shape, bytes) = t.to_wire();
        assert_eq!(Tensor::from_wire(&shape, &bytes).unwrap(), t);
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert!(matches!(Tensor::from_wire(&[2], &[0u8; 7]), Err(TensorError::RaggedBytes { bytes: 7 })));
        assert!(matches!(Tensor::from_wire(&[3], &[0u8; 8]), Err(TensorError::ShapeMismatch { .. })));
        assert!(matches!(Tensor::from_wire(&[0], &[]), Err(TensorError::BadDimension(_))));
        let nan = f32::NAN.to_le_bytes();
        assert!(matches!(Tensor::from_wire(&[1], &nan), Err(TensorError::NotFinite { index: 0, .. })));
        let inf = f32::INFINITY.to_le_bytes();
        assert!(matches!(Tensor::from_wire(&[1], &inf), Err(TensorError::NotFinite { .. })));
        let huge = i64::MAX / 2;
        assert!(matches!(Tensor::from_wire(&[huge, huge, huge], &[0u8; 8]), Err(TensorError::TooLarge(_))));
        assert!(matches!(Tensor::new(vec![usize::MAX, 2], vec![]), Err(TensorError::TooLarge(_))));
        let t = Tensor::zeros(vec![1, 28, 28]);
        assert!(t.expect_shape(&[1, 28, 28]).is_ok());
        assert!(matches!(t.expect_shape(&[784]), Err(TensorError::WrongShape { .. })));
    }
}
