//! Stage 7's figures: training curves of the three runs and localisation maps of test subjects.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::probes::probed_checkpoint;
use candle_core::Device;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::Split;
use mmcl_eval::Matrix;
use mmcl_eval::localization::{EcgTrace, SliceInfo, localize};
use mmcl_eval::plot::TrainingCurvesFigure;
use mmcl_eval::runlog::RunLog;
use mmcl_train::MmclModel;

use super::probes::probe_vit_config;
use super::stages::Runs;
use crate::config::ReproduceConfig;
use crate::{Error, Result};

/// `curves_<run>.png` per training run; returns `(caption, file name relative to the report)`.
pub(super) fn training_curves(runs: &Runs, figures: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, dir, title) in [
        ("mae", &runs.mae, "MAE pre-training"),
        ("mmcl", &runs.mmcl, "MMCL from random initialisation"),
        ("mae_mmcl", &runs.mae_mmcl, "MMCL from the MAE encoder"),
    ] {
        let log = RunLog::read(&dir.join("metrics.jsonl"))?;
        let mut figure = TrainingCurvesFigure::new(&log);
        figure.title = format!("{title} ({})", dir.display());
        let file = format!("curves_{name}.png");
        figure.save(&figures.join(&file))?;
        out.push((title.to_string(), format!("figures/{file}")));
    }
    Ok(out)
}

/// One subject's localisation figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedSubject {
    /// The participant.
    pub eid: u64,
    /// Global cosine similarity of its ECG and CMR embeddings / τ.
    pub similarity: f64,
    /// `ecg_importance.png`, `ecg_attention.png`, `cmr_importance.png`.
    pub files: [PathBuf; 3],
}

/// Localisation maps of the cache subjects at `positions` under `model` (ECG cropped from
/// sample 0, un-augmented image), drawn into `dir/<eid>/` as `mmcl explain` draws them.
///
/// # Errors
/// Loading, model and drawing errors.
pub fn explain_subjects(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    model: &MmclModel,
    positions: &[usize],
    dir: &Path,
    device: &Device,
) -> Result<Vec<ExplainedSubject>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let mut lc = LoaderConfig::ecg_eval(positions.len());
    lc.ecg_crop = Some(model.encoder_ecg().config().img_size[2]);
    lc.image = true;
    lc.image_augment = None;
    lc.image_size = Some(cfg.mmcl.imaging.img_size);
    let loader = Loader::new(cache.clone(), positions.to_vec(), lc, device.clone())?;
    let batch = loader.batch(0, 0)?;
    let (Some(ecg), Some(image)) = (batch.ecg, batch.image) else {
        return Err(Error::Insufficient {
            stage: "localisation",
            reason: "the loader returned no ECG or image".into(),
        });
    };
    let maps = localize(model, &ecg, &image, &cfg.evaluation.localization)?;
    let (_, _, leads, t) = ecg.dims4()?;
    let (_, c, h, w) = image.dims4()?;
    // The reference's figure shows the middle channel (mid-systole) of three.
    let channel = if c > 1 { 1 } else { 0 };
    // The cache's images: the default channels, an LV-centred square of `crop_mm`.
    let cmr = mmcl_data::cmr::CmrConfig {
        crop: mmcl_data::cmr::CropSpec::LvCentre {
            size_mm: cfg.data.crop_mm,
        },
        size: cfg.data.image_size,
        ..mmcl_data::cmr::CmrConfig::default()
    };
    let slice_info = SliceInfo::of(&cmr, channel);
    let mut out = Vec::new();
    for (b, eid) in batch.eids.iter().enumerate() {
        let subject = maps.subject(b)?;
        let signal = ecg.get(b)?.flatten_all()?.to_device(&Device::Cpu)?; // [leads·T]
        let signal = Matrix::new(leads, t, signal.to_vec1::<f32>()?)?;
        let slice = image
            .get(b)?
            .get(channel)?
            .flatten_all()?
            .to_device(&Device::Cpu)?; // [H·W]
        let slice = Matrix::new(h, w, slice.to_vec1::<f32>()?)?;
        let sub = dir.join(eid.to_string());
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        // The cache holds the model's normalised input, not millivolts.
        let trace = EcgTrace {
            signal: &signal,
            lead_names: cache.index().ecg_lead_names.as_deref(),
            sampling_rate: cfg.data.ecg_sample_rate,
            millivolts: false,
        };
        let files = subject.save_figures(&sub, trace, &slice, &slice_info)?;
        out.push(ExplainedSubject {
            eid: *eid,
            similarity: subject.similarity,
            files: [
                files.ecg_importance,
                files.ecg_attention,
                files.cmr_importance,
            ],
        });
    }
    Ok(out)
}

/// Localisation maps of the first test subjects with the MAE + MMCL model; returns
/// `(eid, similarity / τ, [ecg_importance, ecg_attention, cmr_importance] relative paths)`.
pub(super) fn localization_figures(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    runs: &Runs,
    dir: &Path,
    device: &Device,
) -> Result<Vec<(u64, f64, [String; 3])>> {
    let n = cfg.evaluation.explain_subjects;
    if n == 0 {
        return Ok(Vec::new());
    }
    let vit = probe_vit_config(cfg)?;
    let model_file = probed_checkpoint(&runs.mae_mmcl).join(mmcl_train::checkpoint::MODEL_FILE);
    let (model, _) = MmclModel::from_reference_checkpoint(&model_file, &vit, None, device)?;
    let positions: Vec<usize> = cache
        .split_indices(Split::Test)
        .into_iter()
        .take(n)
        .collect();
    let explained = explain_subjects(cfg, cache, &model, &positions, dir, device)?;
    Ok(explained
        .into_iter()
        .map(|e| {
            let rel = |p: &PathBuf| {
                p.file_name()
                    .map(|f| format!("figures/localization/{}/{}", e.eid, f.to_string_lossy()))
                    .unwrap_or_default()
            };
            let files = [rel(&e.files[0]), rel(&e.files[1]), rel(&e.files[2])];
            (e.eid, e.similarity, files)
        })
        .collect())
}
