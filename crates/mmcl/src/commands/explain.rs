//! `mmcl explain`: localisation maps of one subject's ECG and CMR under a multimodal model, as
//! the reference's `plot_localization`.
//!
//! ```text
//! mmcl explain --config explain.toml [--output DIR] [--device cpu|cuda] [--overwrite]
//! mmcl explain --print-config
//! ```
//!
//! The configuration (JSON or TOML; paths relative to it) names the model weights (the
//! reference's key layout: `encoder_ecg.*`, `encoder_imaging.<i>.*`, `projection_head_*`), the
//! ECG encoder's configuration, the map settings, and the subject's files: an ECG (CardioSoft
//! XML, WFDB header, NPY/NPZ), preprocessed with the reference pipeline and cropped as in
//! validation (from sample 0), and a CMR study (`sa.nii.gz` with its `seg_sa.nii.gz`, turned
//! into the model's input by the data layer's study preprocessing) or an image `.npy`
//! `(C, H, W)` used as is. The output directory receives `ecg_importance.png`,
//! `cmr_importance.png`, `ecg_attention.png` and `maps.json`; it is assembled in a temporary
//! sibling and renamed into place, so a failed run leaves nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use mmcl_cmr::{ResNetArch, ResNetConfig};
use mmcl_data::cmr::{CmrConfig, read_study};
use mmcl_data::ecg::preprocess::{Normalisation, PreprocessConfig, crop, preprocess};
use mmcl_data::ecg::{Ecg, select_leads};
use mmcl_ecg::EcgVitConfig;
use mmcl_eval::Matrix;
use mmcl_eval::localization::{EcgTrace, LocalizationConfig, SliceInfo, localize};
use mmcl_train::MmclModel;
use serde::{Deserialize, Serialize};

use super::common::{
    OutputKind, StagedDir, configured_output, encoder_leads, ensure_output_not_input,
};
use super::print_config::documented_toml;

/// Arguments of `mmcl explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (.json or .toml); see `--print-config`.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Output directory (overrides the configuration's `output`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing output directory.
    #[arg(long)]
    overwrite: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print an example configuration (TOML) with every setting and exit.
    #[arg(long)]
    print_config: bool,
}

/// The subject's ECG.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EcgInput {
    /// CardioSoft `.xml`, WFDB `.hea`, `.npy` `(12, T)` / `(N, 12, T)`, or `.npz`.
    file: PathBuf,
    /// Which recording of a file holding several (0-based).
    #[serde(default)]
    record: Option<usize>,
    /// Sampling rate of NPY/NPZ arrays (which carry none), Hz.
    #[serde(default = "default_rate")]
    array_sample_rate: f64,
    /// The file already holds the model's input (e.g. `mmcl preprocess-ecg` output): skip the
    /// preprocessing, only crop.
    #[serde(default)]
    preprocessed: bool,
    /// The reference preprocessing (resampling, clipping, baseline, normalisation).
    #[serde(default)]
    preprocessing: PreprocessConfig,
    /// First sample of the window the model sees (0: the validation crop).
    #[serde(default)]
    crop_start: usize,
    /// The leads the encoder reads, in its input's order, cut from the 12 after preprocessing
    /// (default: all 12 for a 12-lead encoder, I, II, V1–V6 for an 8-lead one).
    #[serde(default)]
    leads: Option<Vec<String>>,
}

fn default_rate() -> f64 {
    500.0
}

/// The subject's CMR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmrInput {
    /// `sa.nii.gz` (X × Y × slices × frames), or an image `.npy` `(C, H, W)` / `(H, W)` used
    /// as is.
    image: PathBuf,
    /// `seg_sa.nii.gz`; when absent, a `seg_<name>` beside the image is used if it exists.
    #[serde(default)]
    segmentation: Option<PathBuf>,
    /// The study preprocessing (channels, slice, crop, intensity, size).
    #[serde(default)]
    preprocessing: CmrConfig,
    /// The channel drawn under the heat map (default: 1 when there are several, as the
    /// reference's figure).
    #[serde(default)]
    display_channel: Option<usize>,
}

/// The configuration of `mmcl explain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainConfig {
    /// The multimodal model: a run folder of `mmcl pretrain-mmcl` (its latest checkpoint), a
    /// checkpoint folder, or a file (safetensors, .ckpt or .pth) in the reference's key layout.
    model: PathBuf,
    /// The ECG encoder's configuration (the reference's argument names or a preset `model`).
    #[serde(default = "EcgVitConfig::paper")]
    encoder: EcgVitConfig,
    /// The image trunk (`resnet18` … `resnet152`); read from the weights when absent.
    #[serde(default)]
    image_encoder: Option<ResNetArch>,
    /// Map settings (the reference's `temp`, upsample factors, `use_softmax`).
    #[serde(default)]
    localization: LocalizationConfig,
    /// The subject's ECG.
    ecg: EcgInput,
    /// The subject's CMR.
    cmr: CmrInput,
    /// Output directory.
    #[serde(default)]
    output: Option<PathBuf>,
}

fn example_config() -> ExplainConfig {
    ExplainConfig {
        model: "runs/mmcl".into(),
        encoder: EcgVitConfig::paper(),
        image_encoder: Some(ResNetArch::ResNet50),
        localization: LocalizationConfig::default(),
        ecg: EcgInput {
            file: "ukb/ecg/1000001_20205_2_0.xml".into(),
            record: None,
            array_sample_rate: default_rate(),
            preprocessed: false,
            preprocessing: PreprocessConfig::default(),
            crop_start: 0,
            leads: None,
        },
        cmr: CmrInput {
            image: "ukb/cmr/1000001/sa.nii.gz".into(),
            segmentation: Some("ukb/cmr/1000001/seg_sa.nii.gz".into()),
            preprocessing: CmrConfig::default(),
            display_channel: None,
        },
        output: Some("explain/1000001".into()),
    }
}

fn read_config(path: &Path) -> Result<ExplainConfig> {
    let text = mmcl_core::config::read_config_text(path)?;
    let mut cfg: ExplainConfig = mmcl_nn::config::parse_config_text(&text, path)
        .map_err(|reason| anyhow::anyhow!("{}: invalid configuration: {reason}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    resolve(&mut cfg.model);
    resolve(&mut cfg.ecg.file);
    resolve(&mut cfg.cmr.image);
    if let Some(seg) = cfg.cmr.segmentation.as_mut() {
        resolve(seg);
    }
    if let Some(out) = cfg.output.as_mut() {
        resolve(out);
    }
    cfg.localization
        .validate()
        .with_context(|| format!("{}: localization", path.display()))?;
    Ok(cfg)
}

/// The ECG window the model sees.
struct EcgWindow {
    /// The model's input, `leads × T`.
    input: Matrix<f32>,
    /// The names of the input's rows, in order.
    lead_names: Vec<String>,
    /// The same window in mV (preprocessed but not normalised), for the figures; `None` when
    /// the file holds the model's input already.
    millivolts: Option<Matrix<f32>>,
    /// Samples per second.
    rate: f64,
}

fn load_ecg(input: &EcgInput, encoder: &EcgVitConfig) -> Result<EcgWindow> {
    let path = &input.file;
    let [_, leads, t] = encoder.img_size;
    let (selection, lead_names) = encoder_leads(input.leads.as_deref(), leads, "ecg.leads")?;
    let rows = |window: Ecg| {
        let samples = window.samples();
        Matrix::new(leads, t, select_leads(window.data(), samples, &selection))
    };
    let mut records = mmcl_data::ecg::read_any(path, input.array_sample_rate)?;
    let index = match (input.record, records.len()) {
        (Some(i), n) if i < n => i,
        (Some(i), n) => bail!(
            "{}: recording {i} asked for, the file holds {n}",
            path.display()
        ),
        (None, 1) => 0,
        (None, n) => bail!(
            "{}: the file holds {n} recordings; choose one with ecg.record",
            path.display()
        ),
    };
    let raw = records.swap_remove(index).ecg;
    let ecg = if input.preprocessed {
        raw.clone()
    } else {
        preprocess(&raw, &input.preprocessing)
            .with_context(|| format!("{}: cannot preprocess the ECG", path.display()))?
    };
    let rate = ecg.sample_rate();
    let window = crop(&ecg, input.crop_start, t).with_context(|| {
        format!(
            "{}: the model needs {t} samples from sample {} ({} s at {rate} Hz), the recording \
             has {}",
            path.display(),
            input.crop_start,
            t as f64 / rate,
            ecg.samples()
        )
    })?;
    // What a cardiologist reads: the same steps without the normalisation, in mV.
    let millivolts = if input.preprocessed {
        None
    } else {
        let unscaled = PreprocessConfig {
            normalisation: Normalisation::None,
            ..input.preprocessing.clone()
        };
        let ecg = preprocess(&raw, &unscaled)
            .with_context(|| format!("{}: cannot preprocess the ECG", path.display()))?;
        let window = crop(&ecg, input.crop_start, t)
            .with_context(|| format!("{}: cannot crop the ECG", path.display()))?;
        Some(rows(window)?)
    };
    Ok(EcgWindow {
        input: rows(window)?,
        lead_names,
        millivolts,
        rate,
    })
}

/// The model's image input `(C, H, W)`.
fn load_image(input: &CmrInput) -> Result<(Vec<f32>, [usize; 3])> {
    let path = &input.image;
    let is_npy = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        let array = mmcl_core::npy::read_array(path)?;
        let dims = match array.shape.as_slice() {
            [c, h, w] => [*c, *h, *w],
            [h, w] => [1, *h, *w],
            other => bail!(
                "{}: an image array must be (C, H, W) or (H, W), got {other:?}",
                path.display()
            ),
        };
        if dims.contains(&0) {
            bail!("{}: the image array is empty", path.display());
        }
        if let Some(v) = array.data.iter().find(|v| !v.is_finite()) {
            bail!("{}: the image holds a non-finite value {v}", path.display());
        }
        return Ok((array.data, dims));
    }
    let segmentation = input.segmentation.clone().or_else(|| {
        let name = path.file_name()?.to_str()?;
        let sibling = path.with_file_name(format!("seg_{name}"));
        sibling.is_file().then_some(sibling)
    });
    let study = read_study(path, segmentation.as_deref())?;
    if segmentation.is_none() {
        eprintln!(
            "note: no segmentation for {}: the middle slice, the LV centre located from the \
             cine (the image centre if it shows no LV) and end-systole {} are used",
            path.display(),
            input.preprocessing.es_frame_without_segmentation
        );
    }
    let image = study
        .preprocess(&input.preprocessing)
        .with_context(|| format!("{}: cannot build the model's image", path.display()))?;
    let img = image.image;
    Ok((img.data, [img.channels, img.height, img.width]))
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if args.print_config {
        print!("{}", documented_toml(&example_config(), &[])?);
        return Ok(());
    }
    let Some(config_path) = args.config else {
        bail!("--config is required");
    };
    let cfg = read_config(&config_path)?;
    let output = configured_output(
        args.output,
        cfg.output.as_deref(),
        &config_path,
        "output directory",
    )?;
    let mut inputs = vec![
        config_path.as_path(),
        &cfg.model,
        &cfg.ecg.file,
        &cfg.cmr.image,
    ];
    inputs.extend(cfg.cmr.segmentation.as_deref());
    ensure_output_not_input(&output, OutputKind::Directory, &inputs)?;
    if output.exists() && !args.overwrite {
        bail!(
            "{} exists; choose another output or pass --overwrite",
            output.display()
        );
    }
    let device = super::common::parse_device(&args.device)?;

    // Inputs first: a bad file is reported before the model is loaded.
    let window = load_ecg(&cfg.ecg, &cfg.encoder)?;
    let (signal, rate) = (&window.input, window.rate);
    let (image, [c, h, w]) = load_image(&cfg.cmr)?;
    let imaging = cfg.image_encoder.map(|m| ResNetConfig::new(m, c));
    let model_file = mmcl_train::checkpoint::find_model_file(&cfg.model)?;
    let (model, summary) =
        MmclModel::from_reference_checkpoint(&model_file, &cfg.encoder, imaging.as_ref(), &device)
            .with_context(|| format!("cannot load the model {}", model_file.display()))?;
    eprintln!("{summary}");
    if summary.imaging.in_channels != c {
        bail!(
            "{}: the image has {c} channel(s) but the model's image encoder takes {}",
            cfg.cmr.image.display(),
            summary.imaging.in_channels
        );
    }

    let t = signal.cols();
    let ecg = Tensor::from_vec(
        signal.as_slice().to_vec(),
        (1, 1, signal.rows(), t),
        &device,
    )?;
    let image_tensor = Tensor::from_vec(image.clone(), (1, c, h, w), &device)?;
    let maps = localize(&model, &ecg, &image_tensor, &cfg.localization)?.subject(0)?;

    let channel = cfg.cmr.display_channel.unwrap_or(if c > 1 { 1 } else { 0 });
    if channel >= c {
        bail!("cmr.display_channel {channel} is outside the image's {c} channel(s)");
    }
    let slice = Matrix::new(h, w, image[channel * h * w..(channel + 1) * h * w].to_vec())?;

    let staging = StagedDir::begin(&output, args.overwrite)?;
    let slice_info = SliceInfo::of(&cfg.cmr.preprocessing, channel);
    let trace = EcgTrace {
        signal: window.millivolts.as_ref().unwrap_or(signal),
        lead_names: (window.lead_names.len() != mmcl_data::ecg::NUM_LEADS)
            .then_some(window.lead_names.as_slice()),
        sampling_rate: rate,
        millivolts: window.millivolts.is_some(),
    };
    maps.save_figures(staging.path(), trace, &slice, &slice_info)?;
    let mut json = maps.to_json();
    json["model"] = cfg.model.display().to_string().into();
    json["ecg_file"] = cfg.ecg.file.display().to_string().into();
    json["cmr_file"] = cfg.cmr.image.display().to_string().into();
    json["ecg_window"] =
        serde_json::json!({"start": cfg.ecg.crop_start, "samples": t, "sample_rate": rate});
    json["image_shape"] = serde_json::json!([c, h, w]);
    json["ecg_figure_units"] = if trace.millivolts {
        "mV"
    } else {
        "model input"
    }
    .into();
    json["display_channel"] = channel.into();
    let text = serde_json::to_string_pretty(&json)?;
    let json_path = staging.path().join("maps.json");
    std::fs::write(&json_path, text)
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    staging.commit()?;
    println!(
        "{}: ECG importance {}×{}, CMR importance {}×{}, attention {}×{}; global similarity / τ \
         = {:.3}",
        output.display(),
        maps.ecg_importance.rows(),
        maps.ecg_importance.cols(),
        maps.image_importance.rows(),
        maps.image_importance.cols(),
        maps.attention.rows(),
        maps.attention.cols(),
        maps.similarity
    );
    Ok(())
}
