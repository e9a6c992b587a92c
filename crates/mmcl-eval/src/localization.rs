//! Localisation maps of the multimodal model, as the reference's `plot_localization`
//! (MMCL-ECG-CMR `models/MultimodalSimCLR.py`).
//!
//! - **ECG patch importance**: every patch token of the ECG encoder after its last block
//!   (class token dropped, no norm), optionally upsampled linearly along the token axis by
//!   `upsample_factor_ecg`, projected by the ECG projection head, L2-normalised and compared
//!   with the subject's L2-normalised global CMR embedding (image encoder → image head):
//!   `cos / τ`, as a `rows × P'` map (one row per lead).
//! - **CMR region importance**: every location of the image encoder's last feature map,
//!   bilinearly upsampled by `upsample_factor_img`, projected by the image head and compared
//!   with the global ECG embedding: `cos / τ`, an `H' × W'` map.
//! - **Attention**: the class token's attention over the patches in the ECG encoder's last
//!   block, averaged over the heads, as a `rows × P` map.
//!
//! τ is the reference's localisation temperature `temp` (0.6 in its `config.yaml`), not the
//! CLIP temperature of training (0.1). With `use_softmax` each map is a softmax over its
//! locations instead (the reference's option of the same name).
//!
//! Two details follow the reference exactly: the token upsampling runs along the flattened
//! `leads × patches` sequence (so the first and last upsampled patch of a lead take a quarter of
//! the neighbouring lead's edge patch, at factor 2), and PyTorch's `align_corners = False`
//! interpolation rule with the given scale factor applies to both upsamplings.
//!
//! The model is the trained multimodal model, [`MmclModel`]: [`localize`] takes one, built by
//! [`MmclModel::from_reference_checkpoint`] from a file in the reference's key layout
//! (`encoder_ecg.*`, `encoder_imaging.<Sequential index>.*`, `projection_head_ecg.layers.{0,2}.*`
//! and `projection_head_imaging.layers.{0,2}.*`, optionally under `state_dict.`), by
//! [`MmclModel::from_checkpoint`] from a run of our trainer, or fresh by [`MmclModel::new`].

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use mmcl_cmr::ProjectionHead;
use mmcl_ecg::Pooling;
use mmcl_train::MmclModel;
use serde::{Deserialize, Serialize};

use crate::plot::{CmrFigure, ColorRange, Colormap, EcgFigure, EcgLayout};
use crate::{Error, Matrix, Result};

/// The settings of the maps (the reference's `temp`, `upsample_factor_ecg`,
/// `upsample_factor_img`, `use_softmax`; defaults from its `config.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalizationConfig {
    /// Cosine similarities are divided by this temperature τ.
    pub temperature: f64,
    /// Linear upsampling of the ECG token sequence (1 keeps one value per patch).
    pub upsample_factor_ecg: f64,
    /// Bilinear upsampling of the image feature map (1 keeps the encoder's grid).
    pub upsample_factor_img: f64,
    /// Softmax over the locations of each map instead of raw `cos / τ`.
    pub use_softmax: bool,
}

impl Default for LocalizationConfig {
    fn default() -> Self {
        Self {
            temperature: 0.6,
            upsample_factor_ecg: 2.0,
            upsample_factor_img: 2.0,
            use_softmax: false,
        }
    }
}

impl LocalizationConfig {
    /// Checks that the numbers are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::InvalidInput(format!(
                "the localisation temperature must be positive, got {}",
                self.temperature
            )));
        }
        for (name, f) in [
            ("upsample_factor_ecg", self.upsample_factor_ecg),
            ("upsample_factor_img", self.upsample_factor_img),
        ] {
            if !(f.is_finite() && f > 0.0 && f <= 64.0) {
                return Err(Error::InvalidInput(format!(
                    "{name} must lie in (0, 64], got {f}"
                )));
            }
        }
        Ok(())
    }
}

/// `x / max(‖x‖₂, 1e-12)` along the last dimension (`F.normalize(x, dim=-1)`).
///
/// # Shapes
/// `[…, d]` → `[…, d]`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?; // [… , 1]
    Ok(x.broadcast_div(&norm)?)
}

/// Linear-interpolation weights `[out, len]` of PyTorch's `align_corners = False` rule with a
/// given scale factor: output `o` reads the input at `max((o + 0.5)/s − 0.5, 0)`.
fn interpolation_weights(len: usize, out: usize, scale_factor: f64) -> Vec<f32> {
    let mut w = vec![0f32; out * len];
    for o in 0..out {
        let src = ((o as f64 + 0.5) / scale_factor - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let lambda = (src - i0 as f64).clamp(0.0, 1.0);
        w[o * len + i0] += (1.0 - lambda) as f32;
        w[o * len + i1] += lambda as f32;
    }
    w
}

/// Linear upsampling along the token axis, as the reference's
/// `F.interpolate(x.permute(0, 2, 1), scale_factor=s, mode="linear").permute(0, 2, 1)`:
/// `⌊N·s⌋` output tokens, `align_corners = False`. A factor of 1 returns `x` unchanged.
///
/// Computed as one matrix product on `x`'s device, so it is differentiable.
///
/// # Shapes
/// `x`: `[B, N, D]` → `[B, ⌊N·s⌋, D]`.
pub fn upsample_tokens(x: &Tensor, scale_factor: f64) -> Result<Tensor> {
    let (_, n, _) = x.dims3()?;
    if !(scale_factor.is_finite() && scale_factor > 0.0) {
        return Err(Error::InvalidInput(format!(
            "the upsampling factor must be positive and finite, got {scale_factor}"
        )));
    }
    if scale_factor == 1.0 {
        return Ok(x.clone());
    }
    let out = (n as f64 * scale_factor).floor() as usize;
    if n == 0 || out == 0 {
        return Err(Error::InvalidInput(format!(
            "upsampling {n} tokens by {scale_factor} leaves nothing"
        )));
    }
    let w = Tensor::from_vec(
        interpolation_weights(n, out, scale_factor),
        (out, n),
        x.device(),
    )?
    .to_dtype(x.dtype())?; // [N', N]
    Ok(w.broadcast_matmul(&x.contiguous()?)?) // [B, N', D]
}

/// The similarity of every local embedding to the global embedding of the other modality:
/// `cos(local, global) / τ`, or its softmax over the locations.
///
/// # Shapes
/// `local`: `[B, N, d]`, `global`: `[B, d]` → `[B, N]`.
pub fn similarity_map(
    local: &Tensor,
    global: &Tensor,
    temperature: f64,
    softmax: bool,
) -> Result<Tensor> {
    let (b, _, d) = local.dims3()?;
    if global.dims() != [b, d] {
        return Err(Error::InvalidInput(format!(
            "local embeddings {:?} and global embeddings {:?} do not fit together",
            local.dims(),
            global.dims()
        )));
    }
    let local = l2_normalize(local)?.contiguous()?; // [B, N, d]
    let global = l2_normalize(global)?.unsqueeze(2)?.contiguous()?; // [B, d, 1]
    let map = (local.matmul(&global)?.squeeze(2)? / temperature)?; // [B, N]
    if softmax {
        Ok(mmcl_nn::ops::softmax_last_dim(&map)?)
    } else {
        Ok(map)
    }
}

/// The class token's attention over the patch tokens, averaged over the heads, as a
/// `rows × cols` grid (one row per lead).
///
/// # Shapes
/// `attention`: `[B, heads, 1 + rows·cols, 1 + rows·cols]` → `[B, rows, cols]`.
pub fn cls_attention_map(attention: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let (b, _, n, m) = attention.dims4()?;
    if n != m || n != 1 + rows * cols {
        return Err(Error::InvalidInput(format!(
            "an attention map of shape {:?} does not belong to a {rows} × {cols} patch grid \
             with a class token",
            attention.dims()
        )));
    }
    let mean = attention.mean(1)?; // [B, N, N]
    let cls_row = mean.narrow(1, 0, 1)?.narrow(2, 1, rows * cols)?; // [B, 1, L]
    Ok(cls_row.reshape((b, rows, cols))?) // [B, rows, cols]
}

/// The maps of a batch, as tensors on the model's device.
#[derive(Debug, Clone)]
pub struct Localization {
    /// ECG patch importance `[B, rows, P']` (`P' = ⌊rows·P·upsample_factor_ecg⌋ / rows`).
    pub ecg_importance: Tensor,
    /// CMR region importance `[B, H', W']`.
    pub image_importance: Tensor,
    /// Class-token attention of the last ECG block, mean over heads, `[B, rows, P]`.
    pub attention: Tensor,
    /// `cos(z_ecg, z_image) / τ` of the global embeddings, `[B]`.
    pub similarity: Tensor,
    /// The projected global ECG embeddings `[B, d]`.
    pub z_ecg: Tensor,
    /// The projected global image embeddings `[B, d]`.
    pub z_image: Tensor,
    /// The settings the maps were computed with.
    pub config: LocalizationConfig,
}

fn to_matrix(t: &Tensor) -> Result<Matrix<f32>> {
    let (r, c) = t.dims2()?;
    Matrix::new(
        r,
        c,
        t.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?,
    )
}

impl Localization {
    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.similarity.dims().first().copied().unwrap_or(0)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maps of subject `b`, on the host.
    pub fn subject(&self, b: usize) -> Result<SubjectMaps> {
        if b >= self.len() {
            return Err(Error::InvalidInput(format!(
                "subject {b} of a batch of {}",
                self.len()
            )));
        }
        Ok(SubjectMaps {
            ecg_importance: to_matrix(&self.ecg_importance.get(b)?)?,
            image_importance: to_matrix(&self.image_importance.get(b)?)?,
            attention: to_matrix(&self.attention.get(b)?)?,
            similarity: self
                .similarity
                .get(b)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?,
            config: self.config,
        })
    }
}

/// One subject's maps, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectMaps {
    /// ECG patch importance, `rows × P'`.
    pub ecg_importance: Matrix<f32>,
    /// CMR region importance, `H' × W'`.
    pub image_importance: Matrix<f32>,
    /// Class-token attention of the last ECG block, `rows × P`.
    pub attention: Matrix<f32>,
    /// `cos(z_ecg, z_image) / τ` of the subject's global embeddings.
    pub similarity: f64,
    /// The settings the maps were computed with.
    pub config: LocalizationConfig,
}

/// The files [`SubjectMaps::save_figures`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FigureFiles {
    /// The ECG with the patch importance.
    pub ecg_importance: PathBuf,
    /// The CMR slice with the region importance.
    pub cmr_importance: PathBuf,
    /// The ECG with the class-token attention.
    pub ecg_attention: PathBuf,
}

/// Paper millimetres per unit of the normalised model input (about ±3 units fit a 20 mm row).
const NORMALISED_MM_PER_UNIT: f64 = 2.5;

/// The ECG the figures draw under the maps: the model's window, `leads × T`, the 12 leads in
/// canonical order or the subset a cache holds.
#[derive(Debug, Clone, Copy)]
pub struct EcgTrace<'a> {
    /// The samples.
    pub signal: &'a Matrix<f32>,
    /// The rows' lead names when `signal` holds a subset of the 12
    /// ([`mmcl_data::cache::CacheIndex::ecg_lead_names`]); `None` for the 12 in canonical order.
    pub lead_names: Option<&'a [String]>,
    /// Samples per second.
    pub sampling_rate: f64,
    /// `signal` is in millivolts (drawn at the clinical 10 mm/mV), else in the model's
    /// normalised units (drawn smaller, its scale bar labelled in units).
    pub millivolts: bool,
}

impl EcgTrace<'_> {
    /// An ECG figure of the trace, its rows named.
    fn figure(&self) -> EcgFigure<'_> {
        let figure = EcgFigure::new(self.signal, self.sampling_rate).with_layout(EcgLayout::Rows12);
        match self.lead_names {
            Some(names) => figure.with_lead_names(names.to_vec()),
            None => figure,
        }
    }

    fn mm_per_unit(&self) -> f64 {
        if self.millivolts {
            10.0
        } else {
            NORMALISED_MM_PER_UNIT
        }
    }
}

fn rows_json(m: &Matrix<f32>) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = (0..m.rows())
        .map(|i| {
            m.row(i)
                .iter()
                .map(|&v| {
                    serde_json::Number::from_f64(v as f64)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null)
                })
                .collect()
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn mean_over(m: &Matrix<f32>, by_row: bool) -> Vec<f64> {
    let (r, c) = (m.rows(), m.cols());
    if by_row {
        (0..r)
            .map(|i| m.row(i).iter().map(|&v| v as f64).sum::<f64>() / c.max(1) as f64)
            .collect()
    } else {
        (0..c)
            .map(|j| (0..r).map(|i| m.get(i, j) as f64).sum::<f64>() / r.max(1) as f64)
            .collect()
    }
}

impl SubjectMaps {
    /// The maps as JSON: the settings, the global similarity, each map as nested rows, and the
    /// ECG importance averaged per lead and per time step (the side and bottom strips of the
    /// reference's figure).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "temperature": self.config.temperature,
            "upsample_factor_ecg": self.config.upsample_factor_ecg,
            "upsample_factor_img": self.config.upsample_factor_img,
            "use_softmax": self.config.use_softmax,
            "similarity": self.similarity,
            "ecg_importance": rows_json(&self.ecg_importance),
            "ecg_importance_per_lead": mean_over(&self.ecg_importance, true),
            "ecg_importance_per_time": mean_over(&self.ecg_importance, false),
            "image_importance": rows_json(&self.image_importance),
            "attention": rows_json(&self.attention),
        })
    }

    /// Draws the three figures into `dir`: `ecg_importance.png` and `ecg_attention.png` (the
    /// leads of `ecg`, one per row, in mV at 10 mm/mV when it is in millivolts) and
    /// `cmr_importance.png` (the slice `image`, `H × W`, with the region importance).
    ///
    /// Importance uses the reference's diverging map over `[-1, 1]` (an automatic range with
    /// `use_softmax`), attention a sequential map over its own range, drawn relative to
    /// uniform attention (multiplied by the number of patches). `slice` says which frame the
    /// image shows and its pixel size, for the CMR figure's title and scale bar.
    pub fn save_figures(
        &self,
        dir: &Path,
        ecg: EcgTrace<'_>,
        image: &Matrix<f32>,
        slice: &SliceInfo,
    ) -> Result<FigureFiles> {
        let files = FigureFiles {
            ecg_importance: dir.join("ecg_importance.png"),
            cmr_importance: dir.join("cmr_importance.png"),
            ecg_attention: dir.join("ecg_attention.png"),
        };
        let (colormap, range) = if self.config.use_softmax {
            (Colormap::Viridis, ColorRange::Auto)
        } else {
            (Colormap::RdBuR, ColorRange::Fixed(-1.0, 1.0))
        };
        let mut figure = ecg
            .figure()
            .with_importance(&self.ecg_importance)
            .with_title(format!(
                "ECG importance: cos(patch, CMR) / τ, τ = {} (global {:.2})",
                self.config.temperature, self.similarity
            ));
        figure.mm_per_unit = ecg.mm_per_unit();
        figure.colormap = colormap;
        figure.color_range = range;
        figure.save(&files.ecg_importance)?;

        // Attention to L patches is about 1/L each: drawn relative to uniform (1 = 1/L).
        let patches = self.attention.rows() * self.attention.cols();
        let relative = Matrix::new(
            self.attention.rows(),
            self.attention.cols(),
            self.attention
                .as_slice()
                .iter()
                .map(|&a| a * patches as f32)
                .collect(),
        )?;
        // A stated range from no attention to at least twice uniform: an automatic range
        // stretched a near-uniform map (0.93–1.05) over the whole colour map.
        let top = attention_colour_top(relative.as_slice());
        let mut figure = ecg.figure().with_importance(&relative).with_title(format!(
            "Class-token attention × patches (1 = uniform), last block; colour 0–{top}"
        ));
        figure.mm_per_unit = ecg.mm_per_unit();
        figure.colormap = Colormap::Inferno;
        figure.color_range = ColorRange::Fixed(0.0, top);
        figure.save(&files.ecg_attention)?;

        let mut figure = CmrFigure::new(image)
            .with_heatmap(&self.image_importance)
            .with_title(format!(
                "CMR importance{}: cos(region, ECG) / τ, τ = {}",
                if slice.frame.is_empty() {
                    String::new()
                } else {
                    format!(" on the {}", slice.frame)
                },
                self.config.temperature
            ));
        figure.colormap = colormap;
        figure.color_range = range;
        figure.alpha = 0.5;
        figure.pixel_mm = slice.pixel_mm;
        figure.save(&files.cmr_importance)?;
        Ok(files)
    }
}

/// The top of the attention figure's colour range, in multiples of uniform attention: the
/// largest value rounded up to a whole number, at least 2 (so that uniform attention is never
/// the top of the map).
fn attention_colour_top(relative: &[f32]) -> f64 {
    let max = relative
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, &v| m.max(v as f64));
    max.ceil().max(2.0)
}

/// What a CMR figure says about its image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceInfo {
    /// Which frame the image shows (`mid-systolic frame`,
    /// [`mmcl_data::cmr::FrameSpec::describe`]); empty when unknown.
    pub frame: String,
    /// Millimetres per image pixel ([`mmcl_data::cmr::CmrConfig::output_pixel_mm`]), for the
    /// scale bar.
    pub pixel_mm: Option<f64>,
}

impl SliceInfo {
    /// The slice facts of channel `channel` of images prepared with `cfg`.
    pub fn of(cfg: &mmcl_data::cmr::CmrConfig, channel: usize) -> Self {
        Self {
            frame: cfg
                .channels
                .get(channel)
                .map(|f| f.describe())
                .unwrap_or_default(),
            pixel_mm: cfg.output_pixel_mm(),
        }
    }
}

/// What the two encoders compute for paired ECGs and images (evaluation mode): the inputs of
/// [`localization_maps`].
///
/// # Shapes
/// `ecg`: `[B, 1, leads, T]` (or `[B, leads, T]`), `image`: `[B, C, H, W]`.
pub fn encode(model: &MmclModel, ecg: &Tensor, image: &Tensor) -> Result<EncoderFeatures> {
    let b = ecg.dim(0)?;
    if image.dims().first() != Some(&b) {
        return Err(Error::InvalidInput(format!(
            "{b} ECG(s) but an image batch of shape {:?}",
            image.dims()
        )));
    }
    let encoder = model.encoder_ecg();
    let out = encoder.forward_tokens(ecg, false, Some(-1))?;
    let ecg_attention = out
        .attention
        .ok_or_else(|| Error::InvalidInput("the ECG encoder returned no attention map".into()))?; // [B, heads, 1 + L, 1 + L]
    let ecg_pooled = encoder.pool(&out.tokens, encoder.config().pooling())?; // [B, D]
    let ecg_tokens = encoder.pool(&out.tokens, Pooling::Tokens)?; // [B, L, D]
    let trunk = model
        .encoder_imaging()
        .forward_t(&image.to_dtype(DType::F32)?, false)?;
    Ok(EncoderFeatures {
        ecg_tokens,
        ecg_pooled,
        ecg_attention,
        ecg_grid: encoder.config().grid_size(),
        feature_map: trunk.feature_map,
        image_pooled: trunk.pooled,
    })
}

/// The localisation maps of paired ECGs and images under `model` (evaluation mode):
/// [`encode`], then [`localization_maps`] with the model's projection heads.
///
/// # Shapes
/// `ecg`: `[B, 1, leads, T]` (or `[B, leads, T]`), `image`: `[B, C, H, W]` → see
/// [`Localization`].
pub fn localize(
    model: &MmclModel,
    ecg: &Tensor,
    image: &Tensor,
    config: &LocalizationConfig,
) -> Result<Localization> {
    config.validate()?;
    let features = encode(model, ecg, image)?;
    localization_maps(
        &features,
        model.projection_head_ecg(),
        model.projection_head_imaging(),
        config,
    )
}

/// The encoder outputs the maps are computed from.
#[derive(Debug, Clone)]
pub struct EncoderFeatures {
    /// ECG patch tokens after the last block, class token dropped, no norm: `[B, L, D]`.
    pub ecg_tokens: Tensor,
    /// The pooled ECG features the global embedding projects: `[B, D]`.
    pub ecg_pooled: Tensor,
    /// Attention probabilities of the last ECG block: `[B, heads, 1 + L, 1 + L]`.
    pub ecg_attention: Tensor,
    /// The patch grid `(rows, cols)`, `L = rows·cols` (rows = leads for 1-lead patches).
    pub ecg_grid: (usize, usize),
    /// The image trunk's last feature map: `[B, C, h, w]`.
    pub feature_map: Tensor,
    /// Its global average: `[B, C]`.
    pub image_pooled: Tensor,
}

/// The maps from encoder outputs: the reference's `plot_localization` after the encoders
/// (see the module docs).
///
/// # Shapes
/// See [`EncoderFeatures`] and [`Localization`].
pub fn localization_maps(
    features: &EncoderFeatures,
    ecg_head: &ProjectionHead,
    image_head: &ProjectionHead,
    config: &LocalizationConfig,
) -> Result<Localization> {
    config.validate()?;
    let (rows, cols) = features.ecg_grid;
    let (b, l, _) = features.ecg_tokens.dims3()?;
    if l != rows * cols {
        return Err(Error::InvalidInput(format!(
            "{l} ECG tokens do not form a {rows} × {cols} grid"
        )));
    }
    let z_ecg = ecg_head.forward(&features.ecg_pooled)?; // [B, d]
    let tokens = upsample_tokens(&features.ecg_tokens, config.upsample_factor_ecg)?; // [B, L', D]
    let z_local_ecg = ecg_head.forward(&tokens)?; // [B, L', d]

    let z_image = image_head.forward(&features.image_pooled)?; // [B, d]
    let mut map = features.feature_map.clone(); // [B, C, h, w]
    if config.upsample_factor_img != 1.0 {
        map = mmcl_cmr::upsample_bilinear2d(&map, config.upsample_factor_img)?; // [B, C, h', w']
    }
    let (_, _, h, w) = map.dims4()?;
    let map = map.permute((0, 2, 3, 1))?.contiguous()?; // [B, h', w', C]
    let z_local_image = image_head.forward(&map)?; // [B, h', w', d]
    let d = z_local_image.dim(3)?;
    let z_local_image = z_local_image.reshape((b, h * w, d))?; // [B, h'·w', d]

    let tau = config.temperature;
    let soft = config.use_softmax;
    let ecg_map = similarity_map(&z_local_ecg, &z_image, tau, soft)?; // [B, L']
    let upsampled = ecg_map.dim(1)?;
    if !upsampled.is_multiple_of(rows) {
        return Err(Error::InvalidInput(format!(
            "upsampling {l} tokens by {} gives {upsampled}, which does not split into {rows} \
             leads; choose an upsample_factor_ecg that keeps whole leads",
            config.upsample_factor_ecg
        )));
    }
    let ecg_importance = ecg_map.reshape((b, rows, upsampled / rows))?; // [B, rows, P']
    let image_importance = similarity_map(&z_local_image, &z_ecg, tau, soft)?.reshape((b, h, w))?; // [B, h', w']
    let attention = cls_attention_map(&features.ecg_attention, rows, cols)?; // [B, rows, P]
    let similarity = ((l2_normalize(&z_ecg)? * l2_normalize(&z_image)?)?.sum(1)? / tau)?; // [B]
    Ok(Localization {
        ecg_importance,
        image_importance,
        attention,
        similarity,
        z_ecg,
        z_image,
        config: *config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_follows_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.arange(4.)[None, None], scale_factor=2,
        // mode="linear") = [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3].
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .and_then(|t| t.reshape((1, 4, 1)))
            .expect("tensor");
        let y = upsample_tokens(&x, 2.0).expect("upsampled");
        let v: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).expect("values");
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        let same = upsample_tokens(&x, 1.0).expect("identity");
        assert_eq!(same.dims(), &[1, 4, 1]);
        assert!(upsample_tokens(&x, 0.0).is_err());
    }

    #[test]
    fn attention_colour_range_is_stated_not_stretched() {
        // A near-uniform map keeps the range 0–2: uniform sits mid-scale, not at the top.
        assert_eq!(attention_colour_top(&[0.93, 1.0, 1.05]), 2.0);
        assert_eq!(attention_colour_top(&[0.5, 3.2, f32::NAN]), 4.0);
        assert_eq!(attention_colour_top(&[]), 2.0);
    }

    #[test]
    fn config_is_checked() {
        assert!(LocalizationConfig::default().validate().is_ok());
        let bad = LocalizationConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = LocalizationConfig {
            upsample_factor_img: f64::NAN,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
