//! The multimodal stage in the training loop: data, schedule, the epoch, validation,
//! checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{D, DType, Device};
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Batch, LoaderConfig};
use mmcl_losses::classification::weighted_cross_entropy;
use mmcl_nn::LoadOptions;
use mmcl_nn::distributed::GradSync;
use mmcl_nn::rng::RngState;
use mmcl_nn::schedule::WarmupCosine;

use super::metrics::Sums;
use super::step::retrieval_accuracy;
use super::{MmclBatch, MmclStep, ValMetrics};
use crate::checkpoint::{
    self, CLASSIFIER_OPTIMIZER_FILE, CheckpointFile, ECG_ENCODER_FILE, IMAGE_ENCODER_FILE,
    MODEL_FILE, OPTIMIZER_FILE, TrainState, TrainerKind,
};
use crate::config::{MmclConfig, OnlineClassifier};
use crate::engine::{
    CheckpointFiles, EpochReport, EpochSteps, Stage, StageData, TrainStep, Trainer, ValReport,
    model_file, open_new_run_cache, open_resumed_cache, record,
};
use crate::model::{MmclArchitecture, MmclModel};
use crate::progress::Progress;
use crate::{Error, Result};

/// The multimodal contrastive trainer: [`MmclStage`] in the shared loop ([`Trainer`]).
pub type MmclTrainer = Trainer<MmclStage>;

/// The multimodal contrastive stage: configuration, optimisation step, schedule, data, run
/// directory.
pub struct MmclStage {
    cfg: MmclConfig,
    step: MmclStep,
    schedule: WarmupCosine,
    data: StageData,
    target_label: Option<usize>,
    run_dir: PathBuf,
}

impl std::fmt::Debug for MmclStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmclStage")
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl MmclStage {
    fn assemble(
        cfg: MmclConfig,
        model: MmclModel,
        cache: Arc<Cache>,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let target_label = match cfg.classifier.online_classifier {
            OnlineClassifier::None => None,
            _ => {
                let names = &cache.index().label_names;
                let want = &cfg.classifier.target;
                Some(
                    names
                        .iter()
                        .position(|n| n == want)
                        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
                        .ok_or_else(|| {
                            Error::config(format!(
                                "the classifier target {want:?} is not a label of the cache \
                                 (labels: {})",
                                names.join(", ")
                            ))
                        })?,
                )
            }
        };
        let classifier = cfg.classifier.online_classifier != OnlineClassifier::None;
        let base = LoaderConfig {
            ecg: true,
            ecg_crop: Some(cfg.ecg.input_size[2]),
            ecg_random_crop: cfg.ecg.random_crop,
            ecg_augment: Some(cfg.ecg.augment.clone()),
            image: true,
            image_augment: Some(cfg.imaging.augment.clone()),
            image_size: Some(cfg.imaging.img_size),
            originals: classifier,
            ..StageData::shuffled_batches(cfg.batch_size, cfg.seed, &cfg.data)
        };
        let data = StageData::new(&cache, &cfg.data, base, device)?;
        let schedule = WarmupCosine {
            granularity: cfg.schedule,
            ..WarmupCosine::per_epoch(cfg.lr, cfg.warmup_epochs, cfg.max_epochs)
        };
        let step = MmclStep::new(model, &cfg)?;
        Ok(Self {
            cfg,
            step,
            schedule,
            data,
            target_label,
            run_dir: run_dir.to_path_buf(),
        })
    }

    fn batch_of(&self, batch: Batch) -> Result<MmclBatch> {
        let missing = |what: &str| Error::InvalidInput(format!("the loader returned no {what}"));
        let targets = match self.target_label {
            Some(col) => {
                let labels = batch.labels.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let mask = batch.label_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Some(
                    labels
                        .iter()
                        .zip(&mask)
                        .map(|(l, m)| (m[col] > 0.5).then_some((l[col] > 0.5) as u32))
                        .collect(),
                )
            }
            None => None,
        };
        Ok(MmclBatch {
            images: batch.image.ok_or_else(|| missing("images"))?,
            ecgs: batch.ecg.ok_or_else(|| missing("ECGs"))?,
            images_orig: batch.image_orig,
            ecgs_orig: batch.ecg_orig,
            targets,
        })
    }

    /// The optimisation step (model, optimisers).
    pub fn step(&self) -> &MmclStep {
        &self.step
    }
}

impl TrainStep for MmclStage {
    type Error = Error;

    fn train_epoch(
        &mut self,
        epoch: usize,
        steps_before: u64,
        progress: &mut dyn Progress,
    ) -> Result<EpochReport> {
        let started = Instant::now();
        let batches = self.data.train.num_batches();
        let mut lr = self.schedule.lr(epoch, 0, batches);
        progress.start_phase(epoch, "train", batches);
        let mut sums = Sums::default();
        let mut steps = EpochSteps::new(epoch, steps_before, &self.run_dir);
        for (b, batch) in self.data.train.epoch(epoch as u64, 0).enumerate() {
            // In a group the loader yields this replica's rows; the report is the global
            // batch's.
            let batch = batch?;
            let n = batch.global_size;
            let batch = self.batch_of(batch)?;
            lr = self.schedule.lr(epoch, b, batches);
            let report = self.step.train_rows(&batch, lr)?;
            steps.batch(b, report.loss, report.stepped, progress)?;
            sums.add(n, report.loss, report.top1, report.top5);
            if let Some(c) = report.classifier_loss {
                sums.classifier_loss += c;
                sums.classifier_batches += 1;
            }
            progress.batch(report.loss, n);
        }
        if self.step.has_pending_gradients() {
            self.step.flush(lr)?;
            steps.taken += 1;
        }
        progress.finish_phase();
        let seconds = started.elapsed().as_secs_f64();
        let samples = sums.samples.max(1) as f64;
        let mut values = vec![
            ("loss", sums.loss / samples),
            ("top1", sums.top1 / samples),
            ("lr", lr),
            ("samples_per_s", sums.samples as f64 / seconds.max(1e-9)),
        ];
        if let Some(t5) = sums.top5() {
            values.push(("top5", t5));
        }
        if sums.classifier_batches > 0 {
            values.push((
                "classifier_loss",
                sums.classifier_loss / sums.classifier_batches as f64,
            ));
        }
        Ok(EpochReport {
            steps: steps.taken,
            lr,
            record: record(&values),
            summary: format!(
                "epoch {}/{}: train loss {:.4}, top-1 {:.3}, lr {lr:.3e}, {:.1} samples/s",
                epoch + 1,
                self.cfg.max_epochs,
                sums.loss / samples,
                sums.top1 / samples,
                sums.samples as f64 / seconds.max(1e-9)
            ),
        })
    }

    fn validate_epoch(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<ValReport>> {
        let Some(val) = self.validate(epoch, progress)? else {
            return Ok(None);
        };
        let mut values = vec![("loss", val.loss), ("top1", val.top1)];
        // The optional metrics, where measured.
        let optional = [
            ("top5", val.top5),
            ("classifier_loss", val.classifier_loss),
            ("classifier_auc", val.classifier_auc),
            ("classifier_accuracy", val.classifier_accuracy),
        ];
        values.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        let mut summary = format!("; val loss {:.4}, top-1 {:.3}", val.loss, val.top1);
        if let Some(auc) = val.classifier_auc {
            summary.push_str(&format!(", classifier AUROC {auc:.3}"));
        }
        Ok(Some(ValReport {
            monitored: val.loss,
            record: record(&values),
            summary,
        }))
    }
}

impl Stage for MmclStage {
    type Config = MmclConfig;
    type Metrics = ValMetrics;
    const KIND: TrainerKind = TrainerKind::Mmcl;
    const NAME: &'static str = "MmclTrainer";

    /// Pre-trained encoders named in the configuration are loaded.
    fn start(mut cfg: MmclConfig, run_dir: &Path, device: &Device) -> Result<(Self, Vec<String>)> {
        let cache = open_new_run_cache(&mut cfg)?;
        let channels = image_channels(&cache, &cfg.data.cache)?;
        let arch = MmclArchitecture::from_config(&cfg, channels)?;
        let model = MmclModel::new(&arch, cfg.seed, device)?;
        let mut notes = Vec::new();
        if let Some(p) = &cfg.imaging.pretrain_checkpoint {
            // A run or checkpoint folder names its exported image encoder, as for the ECG.
            let file = crate::checkpoint::find_image_encoder(p)?;
            let n = model.load_pretrained_imaging(&file)?;
            notes.push(format!(
                "image encoder: {n} tensors loaded from {}",
                file.display()
            ));
        }
        if let Some(p) = &cfg.ecg.pretrain_checkpoint {
            // A run or checkpoint folder names its exported encoder.
            let file = crate::checkpoint::find_ecg_encoder(p)?;
            notes.push(format!(
                "ECG encoder: {}",
                model.load_pretrained_ecg(&file)?
            ));
        }
        Ok((Self::assemble(cfg, model, cache, run_dir, device)?, notes))
    }

    fn restore(
        cfg: MmclConfig,
        dir: &Path,
        state: &TrainState,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let cache = open_resumed_cache(&cfg)?;
        let channels = image_channels(&cache, &cfg.data.cache)?;
        let arch = MmclArchitecture::from_config(&cfg, channels)?;
        let model = MmclModel::new(&arch, cfg.seed, device)?;
        let weights = checkpoint::read_file(dir, MODEL_FILE)?;
        model.load_state_dict(&weights, &LoadOptions::strict())?;
        model.rng().set_state(state.rng);
        let mut stage = Self::assemble(cfg, model, cache, run_dir, device)?;
        stage.step.load_optimizers(dir)?;
        Ok(stage)
    }

    fn config(&self) -> &MmclConfig {
        &self.cfg
    }

    /// Validates on the original views of the validation split (evaluation mode).
    fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<ValMetrics>> {
        let Some(loader) = self.data.start_validation(epoch, progress) else {
            return Ok(None);
        };
        let _precision = self.step.precision().enter();
        let model = self.step.model();
        let clip = *self.step.clip();
        let which = model.architecture().classifier;
        let mut sums = Sums::default();
        let (mut scores, mut truth) = (Vec::new(), Vec::new());
        let mut correct = 0usize;
        let mut ce_weighted = (0f64, 0f64);
        for batch in loader.epoch(0, 0) {
            let batch = self.batch_of(batch?)?;
            let n = batch.images.dim(0)?;
            let image_features = model.image_features(&batch.images, false)?.detach();
            let ecg_features = model.ecg_features(&batch.ecgs, false)?.detach();
            let out = clip.forward(
                &model.project_imaging(&image_features)?,
                &model.project_ecg(&ecg_features)?,
            )?;
            let loss = out.loss.to_scalar::<f32>()? as f64;
            let (top1, top5) = retrieval_accuracy(&out)?;
            sums.add(n, loss, top1, top5);
            if let (Some(targets), true) = (&batch.targets, which != OnlineClassifier::None) {
                let features = if which == OnlineClassifier::Image {
                    &image_features
                } else {
                    &ecg_features
                };
                let logits = model.classifier_logits(features)?;
                let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
                for (p, t) in probs.iter().zip(targets) {
                    if let Some(c) = t {
                        scores.push(p[1] as f64);
                        truth.push(*c as f64);
                        correct += usize::from((p[1] > p[0]) == (*c == 1));
                    }
                }
                let w: f64 = targets
                    .iter()
                    .flatten()
                    .map(|&c| self.cfg.classifier.weights[c as usize])
                    .sum();
                if let Some(ce) =
                    weighted_cross_entropy(&logits, targets, self.cfg.classifier.weights)?
                {
                    ce_weighted.0 += ce.to_scalar::<f32>()? as f64 * w;
                    ce_weighted.1 += w;
                }
            }
            progress.batch(loss, n);
        }
        progress.finish_phase();
        let samples = sums.samples.max(1) as f64;
        let classifier_auc = if truth.is_empty() {
            None
        } else {
            mmcl_core::metrics::auroc(&truth, &scores).ok()
        };
        Ok(Some(ValMetrics {
            loss: sums.loss / samples,
            top1: sums.top1 / samples,
            top5: sums.top5(),
            classifier_loss: (ce_weighted.1 > 0.0).then(|| ce_weighted.0 / ce_weighted.1),
            classifier_auc,
            classifier_accuracy: (!truth.is_empty()).then(|| correct as f64 / truth.len() as f64),
            samples: sums.samples,
        }))
    }

    /// Checks that every global batch splits evenly over the group, then sets every replica's
    /// weights and buffers to rank 0's and trains as one of the group ([`MmclStep`]).
    fn join_group(&mut self, comm: Box<dyn GradSync>) -> Result<()> {
        self.data.join_group(comm.as_ref())?;
        self.step.join_group(comm)
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn describe(&self) -> Vec<String> {
        self.data.describe()
    }

    fn schedule(&self) -> WarmupCosine {
        self.schedule
    }

    fn rng_state(&self) -> RngState {
        self.step.model().rng().state()
    }

    fn image_channels(&self) -> Option<usize> {
        Some(self.step.model().architecture().imaging.in_channels)
    }

    /// `model.safetensors` (every tensor under reference names, the architecture and the epoch
    /// as metadata), the optimisers and both encoders alone.
    fn checkpoint_files(&self, state: &TrainState) -> Result<CheckpointFiles> {
        let model = self.step.model();
        let weights = model_file(
            model.state_dict()?,
            model.architecture(),
            state,
            "mmcl-multimodal",
        )?;
        let mut ecg = CheckpointFile::new(model.ecg_encoder_state_dict()?);
        // The export loads by itself (`embed-ecg`, `probe`, fine-tuning need no config file).
        ecg.metadata = model.encoder_ecg().config().export_metadata()?;
        let image = CheckpointFile::new(model.image_encoder_state_dict()?);
        let (opt, classifier_opt) = self.step.optimizer_files()?;
        let mut full = vec![
            (MODEL_FILE, weights),
            (OPTIMIZER_FILE, opt),
            (ECG_ENCODER_FILE, ecg),
            (IMAGE_ENCODER_FILE, image),
        ];
        if let Some(c) = classifier_opt {
            full.push((CLASSIFIER_OPTIMIZER_FILE, c));
        }
        Ok(full)
    }
}

impl Trainer<MmclStage> {
    /// The model.
    pub fn model(&self) -> &MmclModel {
        self.stage().step.model()
    }
}

fn image_channels(cache: &Cache, path: &Path) -> Result<usize> {
    let index = cache.index();
    if index.ecg.is_none() {
        return Err(Error::config(format!(
            "the cache {} holds no ECGs; the multimodal stage needs ECG-image pairs",
            path.display()
        )));
    }
    index.image.map(|l| l.channels).ok_or_else(|| {
        Error::config(format!(
            "the cache {} holds no images; the multimodal stage needs ECG-image pairs",
            path.display()
        ))
    })
}
