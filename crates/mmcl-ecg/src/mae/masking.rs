//! Per-sample random masking by sorting noise (the reference's `random_masking`).

use candle_core::{DType, Device, Tensor};
use mmcl_nn::rng::SharedRng;

use crate::{Error, Result};

/// Which patches of each sample the encoder sees.
///
/// As the reference: `ids_shuffle = argsort(noise)` ascending per sample, the first
/// `len_keep = int(L·(1 − mask_ratio))` of it are kept (in that order), `ids_restore =
/// argsort(ids_shuffle)`, and `mask` is 1 where a patch is removed. The noise may be given
/// (parity with a stored tensor) or drawn from a seeded [`SharedRng`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use mmcl_ecg::mae::Masking;
///
/// # fn main() -> mmcl_ecg::Result<()> {
/// let noise = Tensor::new(&[[0.9f32, 0.1, 0.5, 0.3]], &Device::Cpu)?;
/// let m = Masking::from_noise(&noise, 0.5)?;
/// assert_eq!(m.len_keep(), 2);
/// assert_eq!(m.ids_keep(0), &[1, 3]); // the two smallest noises, in ascending order
/// assert_eq!(m.mask_values(), vec![1.0, 0.0, 1.0, 0.0]);
/// assert_eq!(m.ids_restore_values(), vec![3, 0, 2, 1]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masking {
    batch: usize,
    len: usize,
    len_keep: usize,
    /// `[B, L]`, row-major: patch indices by ascending noise.
    ids_shuffle: Vec<u32>,
    /// `[B, L]`: the rank of each patch in `ids_shuffle`.
    ids_restore: Vec<u32>,
}

/// `int(L·(1 − mask_ratio))` in f64, exactly as the reference (so 300 patches at ratio 0.8 keep
/// 59, not 60: `1 − 0.8` is 0.19999999999999996).
pub fn len_keep(len: usize, mask_ratio: f64) -> usize {
    ((len as f64) * (1.0 - mask_ratio)) as usize
}

fn check_ratio(mask_ratio: f64) -> Result<()> {
    if !(0.0..1.0).contains(&mask_ratio) {
        return Err(Error::InvalidArgument(format!(
            "mask_ratio must lie in [0, 1), got {mask_ratio}"
        )));
    }
    Ok(())
}

impl Masking {
    /// The masking of a `[B, L]` noise tensor (any float dtype, any device; it is read back to
    /// the host to be sorted).
    pub fn from_noise(noise: &Tensor, mask_ratio: f64) -> Result<Self> {
        let (batch, len) = noise.dims2().map_err(|_| Error::InputShape {
            expected: "a noise tensor [B, L]".into(),
            got: noise.dims().to_vec(),
        })?;
        let values = noise
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        Self::from_noise_values(&values, batch, len, mask_ratio)
    }

    /// The masking of `batch` rows of `len` noise values (row-major).
    pub fn from_noise_values(
        noise: &[f64],
        batch: usize,
        len: usize,
        mask_ratio: f64,
    ) -> Result<Self> {
        check_ratio(mask_ratio)?;
        if noise.len() != batch * len || len == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} noise values for {batch} samples of {len} patches",
                noise.len()
            )));
        }
        if let Some(bad) = noise.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "masking noise must be finite, got {bad}"
            )));
        }
        let mut ids_shuffle = Vec::with_capacity(batch * len);
        let mut ids_restore = vec![0u32; batch * len];
        for (b, row) in noise.chunks_exact(len).enumerate() {
            let mut order: Vec<u32> = (0..len as u32).collect();
            // Ascending; ties (vanishingly rare for continuous noise) keep index order.
            order.sort_by(|&i, &j| row[i as usize].total_cmp(&row[j as usize]));
            for (rank, &patch) in order.iter().enumerate() {
                ids_restore[b * len + patch as usize] = rank as u32;
            }
            ids_shuffle.extend_from_slice(&order);
        }
        Ok(Self {
            batch,
            len,
            len_keep: len_keep(len, mask_ratio),
            ids_shuffle,
            ids_restore,
        })
    }

    /// A masking from `batch × len` uniform draws of `rng` (row-major, in f64).
    pub fn random(rng: &SharedRng, batch: usize, len: usize, mask_ratio: f64) -> Result<Self> {
        check_ratio(mask_ratio)?;
        let noise: Vec<f64> = rng.with(|r| (0..batch * len).map(|_| r.next_f64()).collect());
        Self::from_noise_values(&noise, batch, len, mask_ratio)
    }

    /// The masking of samples `rows` only (a replica's share of a global batch, whose maskings
    /// were drawn for the whole batch so that every replica sees the single process's masks).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        if rows.start > rows.end || rows.end > self.batch {
            return Err(Error::InvalidArgument(format!(
                "rows {rows:?} of a masking of {} samples",
                self.batch
            )));
        }
        let span = rows.start * self.len..rows.end * self.len;
        Ok(Self {
            batch: rows.len(),
            len: self.len,
            len_keep: self.len_keep,
            ids_shuffle: self.ids_shuffle[span.clone()].to_vec(),
            ids_restore: self.ids_restore[span].to_vec(),
        })
    }

    /// Number of samples `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of patches per sample `L`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    /// Patches kept per sample `K`.
    pub fn len_keep(&self) -> usize {
        self.len_keep
    }

    /// The kept patch indices of sample `b`, in the order the encoder sees them.
    ///
    /// # Panics
    /// When `b` is not below [`Self::batch`].
    pub fn ids_keep(&self, b: usize) -> &[u32] {
        &self.ids_shuffle[b * self.len..b * self.len + self.len_keep]
    }

    /// `ids_shuffle`, `[B·L]` row-major.
    pub fn ids_shuffle_values(&self) -> &[u32] {
        &self.ids_shuffle
    }

    /// `ids_restore`, `[B·L]` row-major.
    pub fn ids_restore_values(&self) -> Vec<u32> {
        self.ids_restore.clone()
    }

    /// The binary mask, `[B·L]` row-major, 1 where a patch is removed.
    pub fn mask_values(&self) -> Vec<f32> {
        self.ids_restore
            .iter()
            .map(|&r| {
                if (r as usize) < self.len_keep {
                    0.0
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// The mask as a `[B, L]` f32 tensor on `device`.
    pub fn mask(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.mask_values(),
            (self.batch, self.len),
            device,
        )?)
    }

    /// `ids_restore` as a `[B, L]` u32 tensor on `device`.
    pub fn ids_restore(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.ids_restore.clone(),
            (self.batch, self.len),
            device,
        )?)
    }

    /// `ids_keep` as a `[B, K]` u32 tensor on `device`.
    pub fn ids_keep_tensor(&self, device: &Device) -> Result<Tensor> {
        let keep: Vec<u32> = (0..self.batch)
            .flat_map(|b| self.ids_keep(b).iter().copied())
            .collect();
        Ok(Tensor::from_vec(keep, (self.batch, self.len_keep), device)?)
    }

    /// Row indices that gather the encoder's input from a table of `B·L` patch tokens followed
    /// by one class-token row: per sample the class token, then the kept patches. `[B·(1+K)]`.
    pub(crate) fn encoder_gather_index(&self) -> Vec<u32> {
        let cls_row = (self.batch * self.len) as u32;
        let mut idx = Vec::with_capacity(self.batch * (1 + self.len_keep));
        for b in 0..self.batch {
            idx.push(cls_row);
            let base = (b * self.len) as u32;
            idx.extend(self.ids_keep(b).iter().map(|&i| base + i));
        }
        idx
    }

    /// Row indices that unshuffle the decoder's input from a table of `B·(1+K)` encoded tokens
    /// (class token first per sample) followed by one mask-token row: per sample the class
    /// token, then patch `j` from its encoded token if kept, else the mask token. `[B·(1+L)]`.
    pub(crate) fn decoder_gather_index(&self) -> Vec<u32> {
        let k = self.len_keep;
        let mask_row = (self.batch * (1 + k)) as u32;
        let mut idx = Vec::with_capacity(self.batch * (1 + self.len));
        for b in 0..self.batch {
            let base = (b * (1 + k)) as u32;
            idx.push(base);
            for &rank in &self.ids_restore[b * self.len..(b + 1) * self.len] {
                idx.push(if (rank as usize) < k {
                    base + 1 + rank
                } else {
                    mask_row
                });
            }
        }
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_count_follows_the_reference_float_arithmetic() {
        assert_eq!(len_keep(300, 0.8), 59);
        assert_eq!(len_keep(300, 0.75), 75);
        assert_eq!(len_keep(120, 0.75), 30);
        assert_eq!(len_keep(10, 0.0), 10);
    }

    #[test]
    fn restore_inverts_shuffle_and_the_mask_counts_removed_patches() -> Result<()> {
        let rng = SharedRng::new(3);
        let m = Masking::random(&rng, 4, 30, 0.8)?;
        assert_eq!(m.len_keep(), 5);
        let restore = m.ids_restore_values();
        for b in 0..4 {
            let shuffle = &m.ids_shuffle_values()[b * 30..(b + 1) * 30];
            for (rank, &patch) in shuffle.iter().enumerate() {
                assert_eq!(restore[b * 30 + patch as usize] as usize, rank);
            }
        }
        let removed: f32 = m.mask_values().iter().sum();
        assert_eq!(removed, (4 * 25) as f32);
        // Same seed, same masking; the next draw differs.
        let again = Masking::random(&SharedRng::new(3), 4, 30, 0.8)?;
        assert_eq!(m, again);
        assert_ne!(m, Masking::random(&rng, 4, 30, 0.8)?);
        let tail = m.rows(1..3)?;
        assert_eq!((tail.batch(), tail.ids_keep(0)), (2, m.ids_keep(1)));
        assert_eq!(tail.mask_values(), m.mask_values()[30..90].to_vec());
        assert!(m.rows(3..5).is_err());
        Ok(())
    }

    #[test]
    fn gather_indices_place_class_token_kept_patches_and_mask_tokens() -> Result<()> {
        let m = Masking::from_noise_values(&[0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.6], 2, 4, 0.5)?;
        // Sample 0 keeps patches 1, 3; sample 1 keeps 0, 2. Table rows: 8 patches, then cls.
        assert_eq!(m.encoder_gather_index(), vec![8, 1, 3, 8, 4, 6]);
        // Encoded rows: sample 0 at 0..3, sample 1 at 3..6, mask token at 6.
        assert_eq!(m.decoder_gather_index(), vec![0, 6, 1, 6, 2, 3, 4, 6, 5, 6]);
        assert!(Masking::from_noise_values(&[0.1, f64::NAN], 1, 2, 0.5).is_err());
        assert!(Masking::from_noise_values(&[0.1, 0.2], 1, 2, 1.0).is_err());
        assert!(Masking::from_noise_values(&[0.1, 0.2], 2, 2, 0.5).is_err());
        Ok(())
    }
}
