//! The configuration of the whole reproduction ([`ReproduceConfig`]): every stage's settings in
//! one JSON or TOML file, with a reduced default that runs on a 2-core CPU in minutes and the
//! paper's full configuration ([`ReproduceConfig::paper`]) for a GPU.

use std::path::Path;

use mmcl_cmr::ResNetArch;
use mmcl_data::tables::{DiseaseDefinition, SplitConfig};
use mmcl_ecg::mae::MaeConfig;
use mmcl_eval::localization::LocalizationConfig;
use mmcl_nn::schedule::Granularity;
use mmcl_synth::SynthConfig;
use mmcl_train::{MaeTrainConfig, MmclConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the synthetic cohort becomes the dataset cache (`mmcl_data::build`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSettings {
    /// The ECG sampling rate of the cache in Hz; the 500 Hz recordings are resampled to it.
    pub ecg_sample_rate: f64,
    /// Samples kept per ECG (from the start, at `ecg_sample_rate`).
    pub ecg_samples: usize,
    /// ECG leads kept in the cache, by name, in order (`mmcl_data::build::BuildConfig::
    /// ecg_leads`; list all 12 to keep them). The encoders' `img_size`/`input_size` take as
    /// many leads.
    pub ecg_leads: Vec<String>,
    /// Side of the cached CMR images in pixels.
    pub image_size: usize,
    /// Side of the LV-centred square cropped from the short-axis slice, in mm.
    pub crop_mm: f64,
    /// Train/validation/test split: pre-training uses `train` (validating on `val`); the probes
    /// are fitted on `train`, regularised on `val` and evaluated on `test`.
    pub split: SplitConfig,
    /// Disease labels (ICD-10 prefixes and ranges) evaluated by AUROC.
    pub diseases: Vec<DiseaseDefinition>,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            ecg_sample_rate: 100.0,
            ecg_samples: 1000,
            ecg_leads: REDUCED_ECG_LEADS.iter().map(|l| l.to_string()).collect(),
            image_size: 48,
            crop_mm: 120.0,
            split: SplitConfig {
                train: 0.6,
                val: 0.1,
                test: 0.3,
                seed: 2022,
                stratify_by: Some("AF".into()),
            },
            diseases: default_diseases(),
        }
    }
}

/// CAD, AF, diabetes (the data layer's defaults) and LV hypertrophy, which the synthetic
/// cohort codes as I51.7 / I11.9.
fn default_diseases() -> Vec<DiseaseDefinition> {
    let mut d = DiseaseDefinition::defaults();
    d.push(DiseaseDefinition::new("LVH", &["I51.7", "I11.9"]));
    d
}

/// The evaluation after pre-training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationSettings {
    /// Seed of the randomly initialised encoder (the `random_init` baseline).
    pub random_init_seed: u64,
    /// Bootstrap resamples of the confidence intervals (0: no intervals).
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    pub bootstrap_seed: u64,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// Grid of inverse regularisation strengths `C` of the logistic probes.
    pub cs: Vec<f64>,
    /// Grid of ridge penalties of the phenotype probes.
    pub alphas: Vec<f64>,
    /// Samples per embedding batch.
    pub batch_size: usize,
    /// Test subjects drawn with localisation maps (0: none).
    pub explain_subjects: usize,
    /// Localisation settings (the reference's `plot_localization`).
    pub localization: LocalizationConfig,
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        Self {
            random_init_seed: 0,
            bootstrap: 1000,
            bootstrap_seed: 0,
            confidence: 0.95,
            cs: (-4..=4).map(|e| 10f64.powi(e)).collect(),
            alphas: (-2..=6).map(|e| 10f64.powi(e)).collect(),
            batch_size: 64,
            explain_subjects: 2,
            localization: LocalizationConfig::default(),
        }
    }
}

/// Everything `mmcl reproduce` does, stage by stage.
///
/// The default is the reduced configuration that finishes in minutes on a 2-core CPU:
/// 3000 synthetic subjects, ECGs at 100 Hz (5 s crops of 10 s, patches of 500 ms on each lead),
/// 48-pixel CMR images, the `pluto` ECG ViT (256 wide, 2 blocks), ResNet18, short schedules.
/// [`ReproduceConfig::paper`] is the paper's configuration.
///
/// The `mae` and `mmcl` sections are the trainers' own configurations
/// ([`MaeTrainConfig`], [`MmclConfig`]); their `data.cache` and the MAE + MMCL run's
/// `ecg.pretrain_checkpoint` are set by the pipeline. Both must describe the same ECG encoder.
///
/// ```
/// use mmcl_pipeline::ReproduceConfig;
/// let cfg = ReproduceConfig::from_toml_str("[mmcl]\nmax_epochs = 3\n", None).unwrap();
/// assert_eq!(cfg.mmcl.max_epochs, 3);
/// assert_eq!(cfg.cohort, ReproduceConfig::default().cohort);
/// assert!(ReproduceConfig::from_toml_str("[mmcl]\nmax_epoch = 3\n", None).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReproduceConfig {
    /// The synthetic cohort (`mmcl_synth`).
    pub cohort: SynthConfig,
    /// The dataset cache.
    pub data: DataSettings,
    /// MAE pre-training of the ECG encoder.
    pub mae: MaeTrainConfig,
    /// Multimodal contrastive pre-training (run twice: from random initialisation and from
    /// the MAE encoder).
    pub mmcl: MmclConfig,
    /// Linear probes, metrics, figures.
    pub evaluation: EvaluationSettings,
    /// Training seeds: the three training stages and the probes run once per seed (each
    /// stage's `seed` and the random encoder's set to it, the cohort and the cache shared), and
    /// the report gives every seed's results and their spread. Empty (the default): one run
    /// with the stages' own seeds.
    pub seeds: Vec<u64>,
    /// Run the independent parts of the pipeline side by side on the CPU, each with half of
    /// the threads, instead of one after the other with all of them: the two contrastive
    /// stages (from random initialisation and from the MAE encoder), then the probes in two
    /// groups of three encoders. One small training step cannot keep two cores busy; side by
    /// side the reduced default's contrastive stages took 0.89 and its probes 0.89 of the
    /// time on a 2-core AMD EPYC. Thread counts change the order of some sums in the
    /// training kernels, so the two ways train alike up to rounding, not bit for bit. Ignored
    /// on a GPU and with a single thread.
    pub concurrent_stages: bool,
}

/// The reduced ECG encoder: `pluto` (256 wide, 2 blocks, 8 heads) over 5 s at 100 Hz of the
/// eight independent leads in patches of 50 samples (8 × 10 tokens).
const REDUCED_ECG_INPUT: [usize; 3] = [1, REDUCED_ECG_LEADS.len(), 500];
/// The reduced cache's leads: I, II and the six chest leads. III, aVR, aVL and aVF are linear
/// combinations of I and II, so dropping them keeps what the ECG shows in two thirds of the
/// encoder's tokens (measured: the same paired gain and ceiling share as with 12 leads, at
/// two thirds of the training arithmetic; docs/reproduce.md).
const REDUCED_ECG_LEADS: [&str; 8] = mmcl_data::ecg::INDEPENDENT_LEADS;
const REDUCED_ECG_PATCH: [usize; 2] = [1, 50];
const REDUCED_IMAGE: usize = 48;

/// Makes `cfg`'s model the reduced multimodal one of the reproduction and of the quick
/// example runs: a ResNet18 image encoder on `side`² images (with the augmentation at that
/// size, as it must be), embeddings of 256 dimensions projected to 64.
pub fn reduce_multimodal_model(cfg: &mut MmclConfig, side: usize) {
    cfg.embedding_dim = 256;
    cfg.projection_dim = 64;
    cfg.imaging.model = ResNetArch::ResNet18;
    cfg.imaging.img_size = side;
    cfg.imaging.augment.size = side;
}

impl Default for ReproduceConfig {
    fn default() -> Self {
        // 3000 subjects: with 600 training pairs the contrastive stage memorises them as soon
        // as its loss leaves chance; 1800 pairs at the same number of optimiser samples keep
        // training and validation losses together (docs/reproduce.md).
        let mut cohort = SynthConfig::reproduce();
        cohort.subjects = 3000;

        // blr 1e-4 (learning rate 1.6e-3 at batch 64 under the reference's `blr · batch / 4`):
        // the reference's 1e-3 gives 1.6e-2, at which this small encoder's reconstruction
        // learned three times slower (validation NCC 0.11 against 0.25 after the first epoch)
        // and its embeddings probed no better than a random encoder's (docs/reproduce.md).
        let mut mae = MaeTrainConfig {
            seed: 0,
            max_epochs: 8,
            warmup_epochs: 1,
            batch_size: 64,
            blr: 1e-4,
            ..MaeTrainConfig::default()
        };
        mae.model = MaeConfig {
            model: Some("mae_vit_pluto_patchX".into()),
            img_size: REDUCED_ECG_INPUT,
            patch_size: REDUCED_ECG_PATCH,
            embed_dim: 256,
            depth: 2,
            num_heads: 8,
            decoder_embed_dim: 160,
            decoder_depth: 1,
            decoder_num_heads: 8,
            ..MaeConfig::paper()
        };

        // Short contrastive runs on a small cohort: at 1e-3 the embeddings collapse to a
        // constant; at 5e-4 the run from the MAE encoder is unstable (its validation loss
        // turns up mid-run) and ends below the run from random initialisation; 2.5e-4 with
        // batch 32 and no augmentation learns from both starts within the budget. A one-epoch
        // warm-up counted in steps: without one, the first full-rate steps pushed the MAE
        // encoder far from its start on one seed of three (MAE + MMCL − MAE +0.013, interval
        // across zero); with it every seed's interval is above zero (docs/reproduce.md). The
        // reference's per-epoch warm-up would spend the first epoch at rate 0 instead.
        let mut mmcl = MmclConfig {
            max_epochs: 6,
            warmup_epochs: 1,
            schedule: Granularity::Step,
            batch_size: 32,
            lr: 2.5e-4,
            ..MmclConfig::default()
        };
        reduce_multimodal_model(&mut mmcl, REDUCED_IMAGE);
        mmcl.imaging.augment.apply_prob = 0.0;
        mmcl.ecg.augment.apply_prob = 0.0;
        mmcl.ecg.model = "vit_pluto_patchX".into();
        mmcl.ecg.input_size = REDUCED_ECG_INPUT;
        mmcl.ecg.patch_size = REDUCED_ECG_PATCH;
        mmcl.classifier.online_classifier = mmcl_train::config::OnlineClassifier::None;

        Self {
            cohort,
            data: DataSettings::default(),
            mae,
            mmcl,
            evaluation: EvaluationSettings::default(),
            seeds: Vec::new(),
            concurrent_stages: true,
        }
    }
}

impl ReproduceConfig {
    /// The paper's configuration (for a GPU): the full-size synthetic cohort (128-pixel cines
    /// of 10 slices × 25 frames) of 5000 subjects, ECGs at 500 Hz (2500-sample crops of 5000,
    /// 1×100 patches), 210-pixel CMR images, `vit_tiny_patchX` MAE pre-training for 400 epochs
    /// and ResNet50 + ECG ViT contrastive training for 300 epochs with the paper's
    /// hyper-parameters (batch 256, Adam 3e-3, τ 0.1), an 80/10/10 split.
    pub fn paper() -> Self {
        let cohort = SynthConfig {
            subjects: 5000,
            ..SynthConfig::default()
        };
        Self {
            cohort,
            data: DataSettings {
                ecg_sample_rate: 500.0,
                ecg_samples: 5000,
                ecg_leads: mmcl_data::ecg::LEADS
                    .iter()
                    .map(|l| l.to_string())
                    .collect(),
                image_size: 210,
                split: SplitConfig {
                    stratify_by: Some("AF".into()),
                    ..SplitConfig::default()
                },
                ..DataSettings::default()
            },
            mae: MaeTrainConfig::default(),
            mmcl: MmclConfig::default(),
            evaluation: EvaluationSettings::default(),
            seeds: Vec::new(),
            concurrent_stages: true,
        }
    }

    /// Reads a `.json` or `.toml` file over `base` (the reduced default or
    /// [`ReproduceConfig::paper`]): keys the file gives replace the base's, tables are merged
    /// key by key, unknown keys are errors. Relative checkpoint paths inside are taken relative
    /// to the file. The result is validated.
    ///
    /// # Errors
    /// Unreadable file, unknown extension, parse errors, unknown keys, invalid values (naming
    /// the file).
    pub fn from_file(path: &Path, base: Self) -> Result<Self> {
        let overlay: serde_json::Value = mmcl_core::config::read_config_file(path)?;
        let mut cfg = Self::overlay(base, overlay).map_err(|e| match e {
            Error::Config { path: None, reason } => Error::Config {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        if let Some(p) = cfg.mmcl.imaging.pretrain_checkpoint.as_mut() {
            mmcl_core::config::rebase_path(p, dir);
        }
        cfg.validate().map_err(|e| match e {
            Error::Config { path: None, reason } => Error::Config {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parses TOML text over `base` (the reduced default when `None`) and validates the result.
    ///
    /// # Errors
    /// Parse errors, unknown keys, invalid values.
    pub fn from_toml_str(text: &str, base: Option<Self>) -> Result<Self> {
        let overlay: serde_json::Value =
            toml::from_str(text).map_err(|e| Error::config(e.to_string()))?;
        let cfg = Self::overlay(base.unwrap_or_default(), overlay)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `base` with the keys of `overlay` (a parsed configuration document) written over it.
    fn overlay(base: Self, overlay: serde_json::Value) -> Result<Self> {
        let mut merged = serde_json::to_value(&base).map_err(|e| Error::config(e.to_string()))?;
        merge(&mut merged, overlay);
        serde_json::from_value(merged).map_err(|e| Error::config(e.to_string()))
    }

    /// Checks the stages' settings and that they fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        self.cohort
            .validate()
            .map_err(|e| Error::config(format!("cohort: {e}")))?;
        self.mae
            .validate()
            .map_err(|e| Error::config(format!("mae: {e}")))?;
        self.mmcl
            .validate()
            .map_err(|e| Error::config(format!("mmcl: {e}")))?;
        let d = &self.data;
        if !(d.ecg_sample_rate.is_finite() && d.ecg_sample_rate > 0.0) {
            return Err(Error::config(format!(
                "data.ecg_sample_rate must be positive, got {}",
                d.ecg_sample_rate
            )));
        }
        if d.image_size == 0 || !(d.crop_mm.is_finite() && d.crop_mm > 0.0) {
            return Err(Error::config(
                "data.image_size and data.crop_mm must be positive",
            ));
        }
        if d.diseases.is_empty() {
            return Err(Error::config("data.diseases is empty: nothing to evaluate"));
        }
        let strip = self.cohort.ecg.duration_s * d.ecg_sample_rate;
        if (d.ecg_samples as f64) > strip.round() {
            return Err(Error::config(format!(
                "data.ecg_samples ({}) is longer than the cohort's {} s recordings at {} Hz",
                d.ecg_samples, self.cohort.ecg.duration_s, d.ecg_sample_rate
            )));
        }
        // Both pre-training stages must train the same encoder: the MAE's weights initialise
        // the MAE + MMCL run, and every probe compares the same architecture.
        let vit = self
            .mmcl
            .ecg
            .vit_config()
            .map_err(|e| Error::config(format!("mmcl.ecg: {e}")))?;
        let m = &self.mae.model;
        let mae_dims = (m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads);
        let vit_dims = (
            vit.img_size,
            vit.patch_size,
            vit.embed_dim,
            vit.depth,
            vit.num_heads,
        );
        if mae_dims != vit_dims {
            return Err(Error::config(format!(
                "mae.model and mmcl.ecg describe different encoders: (img_size, patch_size, \
                 embed_dim, depth, num_heads) {mae_dims:?} vs {vit_dims:?}"
            )));
        }
        let leads = mmcl_data::ecg::lead_selection(Some(&d.ecg_leads))
            .map_err(|reason| Error::config(format!("data.ecg_leads: {reason}")))?;
        if vit.img_size[1] != leads.len() {
            return Err(Error::config(format!(
                "the encoder reads {} leads but the cache keeps {} (data.ecg_leads)",
                vit.img_size[1],
                leads.len()
            )));
        }
        if vit.img_size[2] > d.ecg_samples {
            return Err(Error::config(format!(
                "the encoder reads {} samples but the cache keeps {} (data.ecg_samples)",
                vit.img_size[2], d.ecg_samples
            )));
        }
        let names: Vec<&str> = d.diseases.iter().map(|x| x.name.as_str()).collect();
        if self.mmcl.classifier.online_classifier != mmcl_train::config::OnlineClassifier::None
            && !names.contains(&self.mmcl.classifier.target.as_str())
        {
            return Err(Error::config(format!(
                "mmcl.classifier.target {:?} is not among data.diseases {names:?}",
                self.mmcl.classifier.target
            )));
        }
        if let Some(s) = &d.split.stratify_by
            && !names.contains(&s.as_str())
        {
            return Err(Error::config(format!(
                "data.split.stratify_by {s:?} is not among data.diseases {names:?}"
            )));
        }
        let e = &self.evaluation;
        if e.batch_size == 0 {
            return Err(Error::config("evaluation.batch_size must be at least 1"));
        }
        let bootstrap = mmcl_eval::metrics::Bootstrap {
            resamples: e.bootstrap,
            seed: e.bootstrap_seed,
            confidence: e.confidence,
        };
        // Checked here, before hours of training, with the evaluation's own rules.
        if let Err(mmcl_eval::Error::InvalidInput(reason)) = bootstrap.check() {
            return Err(Error::config(format!("evaluation: {reason}")));
        }
        if e.cs.is_empty()
            || e.alphas.is_empty()
            || e.cs
                .iter()
                .chain(&e.alphas)
                .any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(Error::config(
                "evaluation.cs and evaluation.alphas must be non-empty lists of positive values",
            ));
        }
        e.localization
            .validate()
            .map_err(|err| Error::config(format!("evaluation.localization: {err}")))?;
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.len() != self.seeds.len() {
            return Err(Error::config(format!(
                "seeds {:?} repeat a seed: each seed is one more run",
                self.seeds
            )));
        }
        Ok(())
    }

    /// The configuration of each training seed, with its seed (`None`: the configuration as
    /// it is, when [`ReproduceConfig::seeds`] is empty).
    pub fn per_seed(&self) -> Vec<(Option<u64>, Self)> {
        if self.seeds.is_empty() {
            return vec![(None, self.clone())];
        }
        self.seeds
            .iter()
            .map(|&seed| {
                let mut cfg = self.clone();
                cfg.mae.seed = seed;
                cfg.mmcl.seed = seed;
                cfg.evaluation.random_init_seed = seed;
                cfg.seeds = vec![seed];
                (Some(seed), cfg)
            })
            .collect()
    }

    /// The configuration as TOML (every key, defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render as TOML: {e}"))
    }
}

/// Writes `overlay` over `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_paper_are_valid() {
        ReproduceConfig::default().validate().unwrap();
        ReproduceConfig::paper().validate().unwrap();
    }

    #[test]
    fn toml_round_trip_keeps_every_value() {
        for cfg in [ReproduceConfig::default(), ReproduceConfig::paper()] {
            let text = cfg.to_toml();
            let back: ReproduceConfig = toml::from_str(&text).unwrap();
            assert_eq!(back, cfg);
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<ReproduceConfig>(&json).unwrap(), cfg);
        }
    }

    #[test]
    fn overlay_merges_tables_and_rejects_unknown_keys() {
        let cfg = ReproduceConfig::from_toml_str(
            "[mmcl]\ntemperature = 0.2\n[mmcl.ecg]\ndrop_path = 0.2\n[cohort]\nsubjects = 300\n",
            Some(ReproduceConfig::default()),
        )
        .unwrap();
        assert_eq!(cfg.mmcl.temperature, 0.2);
        assert_eq!(cfg.cohort.subjects, 300);
        // Untouched neighbours keep the base's values.
        assert_eq!(cfg.mmcl.ecg.drop_path, 0.2);
        assert_eq!(
            cfg.mmcl.ecg.model,
            ReproduceConfig::default().mmcl.ecg.model
        );
        assert_eq!(cfg.mmcl.imaging, ReproduceConfig::default().mmcl.imaging);
        assert_eq!(cfg.cohort.cmr, ReproduceConfig::default().cohort.cmr);

        for bad in [
            "subjects = 3\n",
            "[cohort]\nsubject = 3\n",
            "[mmcl.ecg]\nmodell = \"x\"\n",
            "[evaluation]\nbootstraps = 3\n",
        ] {
            let err = ReproduceConfig::from_toml_str(bad, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn inconsistent_encoders_are_rejected() {
        let err = ReproduceConfig::from_toml_str("[mmcl.ecg]\nmodel = \"vit_tiny_patchX\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different encoders"), "{err}");
        let err = ReproduceConfig::from_toml_str("[data]\necg_samples = 400\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.ecg_samples"), "{err}");
        // The encoders read eight leads by default; a cache of all 12 needs them widened.
        let twelve = "[data]\necg_leads = [\"I\", \"II\", \"III\", \"aVR\", \"aVL\", \"aVF\", \
                      \"V1\", \"V2\", \"V3\", \"V4\", \"V5\", \"V6\"]\n";
        let err = ReproduceConfig::from_toml_str(twelve, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reads 8 leads but the cache keeps 12"),
            "{err}"
        );
        let widened = format!(
            "{twelve}[mae.model]\nimg_size = [1, 12, 500]\n[mmcl.ecg]\ninput_size = [1, 12, 500]\n"
        );
        ReproduceConfig::from_toml_str(&widened, None).unwrap();
        let err = ReproduceConfig::from_toml_str("[data]\necg_leads = [\"I\", \"X\"]\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.ecg_leads") && err.contains("\"X\""),
            "{err}"
        );
    }

    #[test]
    fn files_name_themselves_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, r#"{"mmcl": {"max_epochs": 0}}"#).unwrap();
        let err = ReproduceConfig::from_file(&path, ReproduceConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.json") && err.contains("max_epochs"),
            "{err}"
        );
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, "x: 1").unwrap();
        assert!(ReproduceConfig::from_file(&path, ReproduceConfig::default()).is_err());
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "[mmcl]\nmax_epochs = 2\n").unwrap();
        let cfg = ReproduceConfig::from_file(&path, ReproduceConfig::paper()).unwrap();
        assert_eq!(cfg.mmcl.max_epochs, 2);
        assert_eq!(cfg.mae, ReproduceConfig::paper().mae);
    }
}
