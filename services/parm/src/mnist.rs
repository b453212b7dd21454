//! The MNIST test images and labels shipped with parm (`models/data/*.idx*-ubyte`, the
//! standard IDX format), so the demo and tests send real queries without Python.

use anyhow::{bail, Context};
use parm_common::model::models_dir;
use parm_core::Tensor;
use std::path::Path;

/// Images as `[1, 28, 28]` tensors with pixels in [0, 1], and their labels.
pub struct Mnist {
    pub images: Vec<Tensor>,
    pub labels: Vec<u8>,
}

impl Mnist {
    /// Loads the shipped test subset from `models/data/`.
    pub fn load_test_subset() -> anyhow::Result<Self> {
        let dir = models_dir().join("data");
        Self::load(&dir.join("mnist-test-images.idx3-ubyte"), &dir.join("mnist-test-labels.idx1-ubyte"))
    }

    pub fn load(images: &Path, labels: &Path) -> anyhow::Result<Self> {
        let img = std::fs::read(images).with_context(|| format!("reading MNIST images {}", images.display()))?;
        let lab = std::fs::read(labels).with_context(|| format!("reading MNIST labels {}", labels.display()))?;
        Self::from_idx(&img, &lab)
    }

    /// Parses an images file and a labels file in the IDX format (their bytes, already
    /// decompressed). Fashion-MNIST uses the same format.
    pub fn from_idx(img: &[u8], lab: &[u8]) -> anyhow::Result<Self> {
        let (dims, pixels) = parse_idx(img, 0x0803)?;
        let (ldims, labels) = parse_idx(lab, 0x0801)?;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            bail!("MNIST files disagree: images {dims:?}, labels {ldims:?}");
        }
        let (h, w) = (dims[1], dims[2]);
        if h == 0 || w == 0 {
            bail!("IDX images of {h}x{w} pixels");
        }
        let images = pixels
            .chunks_exact(h * w)
            .map(|c| Tensor::new(vec![1, h, w], c.iter().map(|&p| p as f32 / 255.0).collect()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { images, labels: labels.to_vec() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps only the first `n` examples.
    pub fn truncate(&mut self, n: usize) {
        self.images.truncate(n);
        self.labels.truncate(n);
    }
}

/// Splits an IDX file into its dimensions and data, checking the magic number and size.
fn parse_idx(bytes: &[u8], magic: u32) -> anyhow::Result<(Vec<usize>, &[u8])> {
    if bytes.len() < 4 || u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != magic {
        bail!("not an IDX file of the expected kind (magic {magic:#x})");
    }
    let n = (magic & 0xff) as usize;
    let header = 4 + 4 * n;
    if bytes.len() < header {
        bail!("IDX header is truncated");
    }
    let dims: Vec<usize> = (0..n)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let data = &bytes[header..];
    if data.len() != dims.iter().product::<usize>() {
        bail!("IDX data has {} bytes but its dimensions {dims:?} need {}", data.len(), dims.iter().product::<usize>());
    }
    Ok((dims, data))
}
