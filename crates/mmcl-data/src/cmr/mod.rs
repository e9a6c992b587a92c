//! Cardiac MRI: short-axis cine stacks (`sa.nii.gz`, X × Y × Z slices × T frames) with their
//! segmentations (`seg_sa.nii.gz`: 1 LV blood pool, 2 LV myocardium, 3 RV blood pool), turned
//! into the model's `[C, H, W]` input.
//!
//! End-diastole is frame 0; end-systole is the frame of smallest LV blood-pool volume, found with
//! [`crate::phenotypes::measure_phenotypes`] (so the phenotype table and the images agree). The
//! image channels are the mid-ventricular slice at configured frames (default ED, mid-systole,
//! ES), cropped around the LV centre (or by the reference's fixed fractions), normalised to
//! [0, 1] by intensity percentiles, resized.
//!
//! The segmentation is the precise source of the slice, the LV centre and end-systole. Without
//! one (UK Biobank's DICOM zips), the middle slice is used and the LV centre and end-systole
//! are estimated from the cine by an image-based heuristic ([`locate`]: the beating region, the
//! compact bright blob in it that empties over the cycle, that blob's emptiest frame), with the
//! image centre and frame 0 as fallbacks where the images show no beating LV.
//!
//! The cine comes from NIfTI-1 (`sa.nii.gz`, [`nifti`]) or from a UK Biobank DICOM zip (field
//! 20209, [`dicom`]); both give the same [`CmrStudy`].

use std::fmt;
use std::path::Path;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::phenotypes::{self, CardiacPhenotypes, LABEL_LV_BLOOD_POOL, LABEL_LV_MYOCARDIUM};
use crate::{Error, Result};

pub mod dicom;
pub mod image;
pub mod locate;
pub mod nifti;

pub use image::{Image, ImageAugmentConfig};
pub use locate::LvLocation;

/// Which frame a channel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSpec {
    /// End-diastole (frame 0).
    Ed,
    /// End-systole.
    Es,
    /// Halfway between end-diastole and end-systole.
    MidSystole,
    /// A fixed frame index.
    Frame(usize),
}

impl FrameSpec {
    /// The frame in words, for figure titles: `end-diastolic frame (ED)`, `frame 7`.
    pub fn describe(self) -> String {
        match self {
            FrameSpec::Ed => "end-diastolic frame (ED)".into(),
            FrameSpec::Es => "end-systolic frame (ES)".into(),
            FrameSpec::MidSystole => "mid-systolic frame".into(),
            FrameSpec::Frame(i) => format!("frame {i}"),
        }
    }

    /// The frame index chosen in a study whose end-systolic frame is `es_frame`.
    pub fn index(self, es_frame: usize) -> usize {
        match self {
            FrameSpec::Ed => 0,
            FrameSpec::Es => es_frame,
            FrameSpec::MidSystole => es_frame / 2,
            FrameSpec::Frame(i) => i,
        }
    }
}

/// Which slice the channels show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceSpec {
    /// The middle of the slices holding LV blood pool at end-diastole; without a segmentation,
    /// the middle slice of the stack (looking at every slice would cost all the study's frames;
    /// on the synthetic cohort, whose stacks run past the apex, it is one or two slices more
    /// apical than the segmentation's choice, and the LV is found on it as well).
    MidVentricular,
    /// A fixed slice index.
    Index(usize),
}

/// How the in-plane region is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropSpec {
    /// A square of this side (mm) centred on the LV (blood pool and myocardium at ED on the
    /// chosen slice); without a segmentation, on the LV blood pool the images show
    /// ([`CmrStudy::locate_lv`]), else on the image centre.
    LvCentre {
        /// Side length in mm.
        size_mm: f64,
    },
    /// Fractions of the slice (the reference crops top 0.21, left 0.325, 0.375 × 0.375).
    Fraction {
        /// Top edge.
        top: f64,
        /// Left edge.
        left: f64,
        /// Height.
        height: f64,
        /// Width.
        width: f64,
    },
    /// The whole slice.
    Full,
}

/// How intensities are mapped to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    /// Minimum → 0, maximum → 1 (over all channels).
    MinMax,
    /// The `low` and `high` percentiles (0–100, over all channels) → 0 and 1, clipped.
    Percentile {
        /// Lower percentile.
        low: f64,
        /// Upper percentile.
        high: f64,
    },
}

/// The CMR input configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmrConfig {
    /// One channel per entry.
    pub channels: Vec<FrameSpec>,
    /// The slice.
    pub slice: SliceSpec,
    /// The in-plane region.
    pub crop: CropSpec,
    /// Intensity normalisation.
    pub intensity: Intensity,
    /// Output side length in pixels.
    pub size: usize,
    /// The end-systolic frame when there is no segmentation: estimated from the images
    /// (`"image"`, the default) or a fixed frame number.
    pub es_frame_without_segmentation: EsWithoutSegmentation,
}

/// The end-systolic frame of a study without a segmentation. A configuration names it as
/// `"image"` or a frame number (configurations from before the estimate hold a number, `0` by
/// default then, and keep their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EsWithoutSegmentation {
    /// The emptiest frame of the LV blood pool the images show ([`CmrStudy::locate_lv`]);
    /// frame 0 where they show none.
    #[default]
    FromImage,
    /// This frame, whatever the images show.
    Frame(usize),
}

impl fmt::Display for EsWithoutSegmentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromImage => f.write_str("estimated from the cine (frame 0 if it shows no LV)"),
            Self::Frame(t) => write!(f, "frame {t}"),
        }
    }
}

impl Serialize for EsWithoutSegmentation {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::FromImage => s.serialize_str("image"),
            Self::Frame(t) => s.serialize_u64(*t as u64),
        }
    }
}

impl<'de> Deserialize<'de> for EsWithoutSegmentation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = EsWithoutSegmentation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame number or \"image\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
                usize::try_from(v)
                    .map(EsWithoutSegmentation::Frame)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
                let v =
                    u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
                self.visit_u64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                match v {
                    "image" => Ok(EsWithoutSegmentation::FromImage),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Expect)
    }
}

impl CmrConfig {
    /// Millimetres per pixel of the prepared images, where the crop is given in mm (an
    /// LV-centred square of `size_mm` resized to `size` pixels); `None` for crops given as
    /// fractions of the slice.
    pub fn output_pixel_mm(&self) -> Option<f64> {
        match self.crop {
            CropSpec::LvCentre { size_mm } if self.size > 0 => Some(size_mm / self.size as f64),
            _ => None,
        }
    }
}

impl Default for CmrConfig {
    fn default() -> Self {
        Self {
            channels: vec![FrameSpec::Ed, FrameSpec::MidSystole, FrameSpec::Es],
            slice: SliceSpec::MidVentricular,
            crop: CropSpec::LvCentre { size_mm: 120.0 },
            intensity: Intensity::Percentile {
                low: 1.0,
                high: 99.0,
            },
            size: 210,
            es_frame_without_segmentation: EsWithoutSegmentation::FromImage,
        }
    }
}

/// A loaded short-axis study: the 4-D image and, when present, its segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct CmrStudy {
    /// Voxels, x fastest, then y, slice z, frame t.
    pub image: Vec<f32>,
    /// `[x, y, z, t]`.
    pub dims: [usize; 4],
    /// Voxel size in mm.
    pub voxel_mm: [f64; 3],
    /// Labels of the same shape, when a segmentation was given.
    pub labels: Option<Vec<u8>>,
}

/// The preprocessed image of a study and what was chosen on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct CmrImage {
    /// `[C, size, size]` in [0, 1].
    pub image: Image,
    /// The end-systolic frame used.
    pub es_frame: usize,
    /// The slice used.
    pub slice: usize,
}

fn four_d(img: &nifti::NiftiImage, path: &Path) -> Result<[usize; 4]> {
    // Trailing singleton dimensions beyond the fourth are harmless.
    let extra = img.dims.iter().skip(4).all(|&d| d == 1);
    match img.dims.as_slice() {
        [x, y, z, t, ..] if extra => Ok([*x, *y, *z, *t]),
        other => Err(Error::format(
            path,
            format!(
                "expected a 4-D image (X, Y, slices, frames), got {} dimension(s) {other:?}",
                other.len()
            ),
        )),
    }
}

/// Reads the short-axis cine — `sa.nii.gz` (NIfTI-1, `.nii` too) or a UK Biobank DICOM zip
/// (`<eid>_20209_2_0.zip`, by its `.zip` extension; see [`dicom`]) — and optionally
/// `seg_sa.nii.gz`.
///
/// # Errors
/// A clear error naming the file: unreadable or malformed NIfTI or DICOM zip, an image that is
/// not 4-D, a segmentation of another shape than the image or with labels that are not small
/// integers.
pub fn read_study(image_path: &Path, segmentation_path: Option<&Path>) -> Result<CmrStudy> {
    let (image, dims, voxel_mm) = if dicom::is_zip(image_path) {
        let study = dicom::read_dicom_zip(image_path)?;
        (study.image, study.dims, study.voxel_mm)
    } else {
        let img = nifti::read_nifti(image_path)?;
        let dims = four_d(&img, image_path)?;
        let voxel_mm = img.voxel_mm();
        (img.data, dims, voxel_mm)
    };
    if voxel_mm.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(Error::format(
            image_path,
            format!("voxel size {voxel_mm:?} mm is not positive"),
        ));
    }
    let labels = match segmentation_path {
        None => None,
        Some(seg_path) => {
            let seg = nifti::read_nifti(seg_path)?;
            let seg_dims = four_d(&seg, seg_path)?;
            if seg_dims != dims {
                return Err(Error::format(
                    seg_path,
                    format!(
                        "segmentation shape {seg_dims:?} does not match the image {} shape {dims:?}",
                        image_path.display()
                    ),
                ));
            }
            let mut labels = Vec::with_capacity(seg.data.len());
            for &v in &seg.data {
                let l = v.round();
                if !(0.0..=255.0).contains(&l) || (v - l).abs() > 1e-3 {
                    return Err(Error::format(
                        seg_path,
                        format!("segmentation holds a non-label value {v}"),
                    ));
                }
                labels.push(l as u8);
            }
            Some(labels)
        }
    };
    Ok(CmrStudy {
        image,
        dims,
        voxel_mm,
        labels,
    })
}

impl CmrStudy {
    /// The phenotypes of the segmentation (`None` without one).
    ///
    /// # Errors
    /// As [`phenotypes::measure_phenotypes`].
    pub fn phenotypes(&self, heart_rate_bpm: Option<f64>) -> Result<Option<CardiacPhenotypes>> {
        self.labels
            .as_ref()
            .map(|l| phenotypes::measure_phenotypes(l, self.dims, self.voxel_mm, heart_rate_bpm))
            .transpose()
    }

    fn plane_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    fn plane<'a>(&self, data: &'a [f32], z: usize, t: usize) -> &'a [f32] {
        let n = self.plane_len();
        let start = (t * self.dims[2] + z) * n;
        &data[start..start + n]
    }

    fn label_plane(&self, z: usize, t: usize) -> Option<&[u8]> {
        let n = self.plane_len();
        let start = (t * self.dims[2] + z) * n;
        self.labels.as_ref().map(|l| &l[start..start + n])
    }

    /// The model input of this study.
    ///
    /// # Errors
    /// A frame or slice index outside the stack, an empty channel list, a zero size.
    pub fn preprocess(&self, cfg: &CmrConfig) -> Result<CmrImage> {
        let [nx, ny, nz, nt] = self.dims;
        if cfg.channels.is_empty() || cfg.size == 0 || cfg.size > 4096 {
            return Err(Error::InvalidInput(
                "CMR config needs at least one channel and a size in 1..=4096".into(),
            ));
        }
        let phenotypes = self.phenotypes(None)?;
        let slice = match cfg.slice {
            SliceSpec::Index(z) => z,
            SliceSpec::MidVentricular => {
                let with_lv: Vec<usize> = (0..nz)
                    .filter(|&z| {
                        self.label_plane(z, 0)
                            .is_some_and(|p| p.contains(&LABEL_LV_BLOOD_POOL))
                    })
                    .collect();
                if with_lv.is_empty() {
                    nz / 2
                } else {
                    with_lv[with_lv.len() / 2]
                }
            }
        };
        if slice >= nz {
            return Err(Error::InvalidInput(format!(
                "slice {slice} is outside the stack of {nz} slices"
            )));
        }
        // Without a segmentation the images locate the LV (when the crop or the frame asks).
        let location = match (&self.labels, cfg.crop, cfg.es_frame_without_segmentation) {
            (None, CropSpec::LvCentre { .. }, _) | (None, _, EsWithoutSegmentation::FromImage) => {
                self.locate_lv(slice)
            }
            _ => None,
        };
        let es_frame = match (phenotypes, cfg.es_frame_without_segmentation) {
            (Some(p), _) => p.es_frame,
            (None, EsWithoutSegmentation::Frame(t)) => t,
            (None, EsWithoutSegmentation::FromImage) => location.map_or(0, |l| l.es_frame),
        };
        let frames: Vec<usize> = cfg.channels.iter().map(|f| f.index(es_frame)).collect();
        if let Some(bad) = frames.iter().find(|&&t| t >= nt) {
            return Err(Error::InvalidInput(format!(
                "frame {bad} is outside the {nt} frames of the study"
            )));
        }
        // Rows are y, columns x.
        let mut stacked = Image::zeros(frames.len(), ny, nx);
        for (c, &t) in frames.iter().enumerate() {
            stacked.data[c * nx * ny..(c + 1) * nx * ny].copy_from_slice(self.plane(
                &self.image,
                slice,
                t,
            ));
        }
        let (top, left, h, w) = match cfg.crop {
            CropSpec::Full => (0, 0, ny, nx),
            CropSpec::Fraction {
                top,
                left,
                height,
                width,
            } => (
                (top * ny as f64) as isize,
                (left * nx as f64) as isize,
                ((height * ny as f64) as usize).max(1),
                ((width * nx as f64) as usize).max(1),
            ),
            CropSpec::LvCentre { size_mm } => {
                let centre = match self.labels {
                    Some(_) => self.segmented_lv_centre(slice),
                    None => location.map(|l| l.centre),
                };
                let (cy, cx) = centre.unwrap_or((ny as f64 / 2.0, nx as f64 / 2.0));
                let h = ((size_mm / self.voxel_mm[1]).round() as usize).max(1);
                let w = ((size_mm / self.voxel_mm[0]).round() as usize).max(1);
                (
                    (cy - h as f64 / 2.0).round() as isize,
                    (cx - w as f64 / 2.0).round() as isize,
                    h,
                    w,
                )
            }
        };
        // A crop far larger than the slice means a bad voxel size or configuration; refuse it
        // rather than allocate it.
        let limit = 4 * nx.max(ny);
        if h > limit || w > limit {
            return Err(Error::InvalidInput(format!(
                "crop of {h} x {w} pixels does not fit a {nx} x {ny} slice (voxel size {:?} mm)",
                self.voxel_mm
            )));
        }
        let mut image = stacked.crop(top, left, h, w).resize(cfg.size, cfg.size);
        normalise_intensity(&mut image.data, cfg.intensity);
        Ok(CmrImage {
            image,
            es_frame,
            slice,
        })
    }

    /// Centroid (row, column, in pixels, pixel centres at +0.5) of LV blood pool and
    /// myocardium at ED on slice `z`, from the segmentation; `None` without one, or without
    /// LV labels on that slice.
    pub fn segmented_lv_centre(&self, z: usize) -> Option<(f64, f64)> {
        if z >= self.dims[2] {
            return None;
        }
        let plane = self.label_plane(z, 0)?;
        let nx = self.dims[0];
        let (mut sy, mut sx, mut n) = (0.0, 0.0, 0usize);
        for (i, &l) in plane.iter().enumerate() {
            if l == LABEL_LV_BLOOD_POOL || l == LABEL_LV_MYOCARDIUM {
                sy += (i / nx) as f64 + 0.5;
                sx += (i % nx) as f64 + 0.5;
                n += 1;
            }
        }
        (n > 0).then(|| (sy / n as f64, sx / n as f64))
    }
}

/// Maps intensities to [0, 1] in place.
pub fn normalise_intensity(data: &mut [f32], mode: Intensity) {
    if data.is_empty() {
        return;
    }
    let (lo, hi) = match mode {
        Intensity::MinMax => data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            }),
        Intensity::Percentile { low, high } => {
            let mut sorted = data.to_vec();
            sorted.sort_unstable_by(f32::total_cmp);
            let at = |p: f64| {
                let pos = (p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
                let (i, f) = (pos.floor() as usize, pos.fract() as f32);
                let j = (i + 1).min(sorted.len() - 1);
                sorted[i] + f * (sorted[j] - sorted[i])
            };
            (at(low), at(high))
        }
    };
    let range = hi - lo;
    if !(range.is_finite() && range > 0.0) {
        data.fill(0.0);
        return;
    }
    let inv = 1.0 / range;
    data.iter_mut()
        .for_each(|v| *v = ((*v - lo) * inv).clamp(0.0, 1.0));
}
