//! The MAE stage in the training loop: data, schedule, the epoch, validation, checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mmcl_data::cache::Cache;
use mmcl_data::loader::LoaderConfig;
use mmcl_ecg::mae::MaskedAutoencoder;
use mmcl_nn::ParamStore;
use mmcl_nn::distributed::GradSync;
use mmcl_nn::rng::{RngState, SharedRng};
use mmcl_nn::schedule::WarmupCosine;

use super::metrics::MaeSums;
use super::{MAE_MODEL_FORMAT, MaeEpochMetrics, MaeStep, validation_seed};
use crate::checkpoint::{
    self, CheckpointFile, ECG_ENCODER_FILE, MODEL_FILE, OPTIMIZER_FILE, TrainState, TrainerKind,
};
use crate::config::MaeTrainConfig;
use crate::engine::{
    CheckpointFiles, EpochReport, EpochSteps, Stage, StageData, TrainStep, Trainer, ValReport,
    model_file, open_new_run_cache, open_resumed_cache, record,
};
use crate::progress::Progress;
use crate::{Error, Result};

/// The MAE pre-training trainer: [`MaeStage`] in the shared loop ([`Trainer`]).
pub type MaeTrainer = Trainer<MaeStage>;

/// The MAE pre-training stage: configuration, optimisation step, schedule, data, run directory.
pub struct MaeStage {
    cfg: MaeTrainConfig,
    step: MaeStep,
    schedule: WarmupCosine,
    data: StageData,
    run_dir: PathBuf,
}

impl std::fmt::Debug for MaeStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaeStage")
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

/// Checks that the cache holds ECGs the model can read: `[1, leads, T]` with the cache's lead
/// count and at least `T` samples.
fn check_cache(cache: &Cache, cfg: &MaeTrainConfig) -> Result<()> {
    let path = &cfg.data.cache;
    let Some(layout) = cache.index().ecg else {
        return Err(Error::config(format!(
            "the cache {} holds no ECGs; MAE pre-training needs them",
            path.display()
        )));
    };
    let [_, leads, samples] = cfg.model.img_size;
    if layout.leads != leads || layout.samples < samples {
        return Err(Error::config(format!(
            "model.img_size {:?} does not fit the cache {} ({} leads of {} samples): the leads \
             must match and the crop must not be longer than the recordings",
            cfg.model.img_size,
            path.display(),
            layout.leads,
            layout.samples
        )));
    }
    Ok(())
}

impl MaeStage {
    fn assemble(
        cfg: MaeTrainConfig,
        model: MaskedAutoencoder,
        store: ParamStore,
        cache: Arc<Cache>,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let train_cfg = LoaderConfig {
            ecg: true,
            ecg_crop: Some(cfg.model.img_size[2]),
            ecg_random_crop: cfg.random_crop,
            ecg_augment: Some(cfg.augment.clone()),
            image: false,
            image_augment: None,
            image_size: None,
            originals: false,
            ..StageData::shuffled_batches(cfg.batch_size, cfg.seed, &cfg.data)
        };
        let data = StageData::new(&cache, &cfg.data, train_cfg, device)?;
        let schedule = WarmupCosine::per_step(
            cfg.effective_lr(),
            cfg.warmup_epochs,
            cfg.max_epochs,
            cfg.min_lr,
        );
        let step = MaeStep::new(model, store, &cfg)?;
        Ok(Self {
            cfg,
            step,
            schedule,
            data,
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// The optimisation step (model, objective, optimiser, masking stream).
    pub fn step(&self) -> &MaeStep {
        &self.step
    }
}

impl TrainStep for MaeStage {
    type Error = Error;

    fn train_epoch(
        &mut self,
        epoch: usize,
        steps_before: u64,
        progress: &mut dyn Progress,
    ) -> Result<EpochReport> {
        let batches = self.data.train.num_batches();
        let accumulate = self.cfg.accumulate_grad_batches.max(1);
        let needs_pairs = self.cfg.loss.cos_weight > 0.0;
        let started = Instant::now();
        progress.start_phase(epoch, "train", batches);
        let mut sums = MaeSums::default();
        let mut lr = self.schedule.lr(epoch, 0, batches);
        let mut skipped = 0usize;
        let mut steps = EpochSteps::new(epoch, steps_before, &self.run_dir);
        let loader = Arc::clone(&self.data.train);
        for (b, batch) in loader.epoch(epoch as u64, 0).enumerate() {
            let batch = batch?;
            // In a group the loader yields this replica's rows; the metrics are the global
            // batch's means.
            let (rows, n) = (batch.global_rows.clone(), batch.global_size);
            let ecgs = batch
                .ecg
                .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
            if b % accumulate == 0 {
                lr = self.schedule.lr(epoch, b, batches);
            }
            // The SimSiam heads' BatchNorm needs two samples (per replica) in training mode.
            if needs_pairs && rows.len() < 2 {
                skipped += n;
                continue;
            }
            let report = self.step.train_rows(&ecgs, rows, n, lr)?;
            steps.batch(b, report.metrics.total, report.stepped, progress)?;
            sums.add(&report.metrics, n);
            progress.batch(report.metrics.total, n);
        }
        self.step.discard_pending();
        progress.finish_phase();
        if skipped > 0 {
            progress.message(&format!(
                "epoch {}/{}: a last batch of {skipped} sample was skipped (the SimSiam term \
                 needs two; set data.drop_last or another batch size)",
                epoch + 1,
                self.cfg.max_epochs
            ));
        }
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let train = sums.means();
        let rate = train.samples as f64 / seconds;
        let mut values = train.means.record();
        values.push(("lr", lr));
        values.push(("samples_per_s", rate));
        Ok(EpochReport {
            steps: steps.taken,
            lr,
            record: record(&values),
            summary: format!(
                "epoch {}/{}: train loss {:.4}, ncc {:.3}, lr {lr:.3e}, {rate:.1} samples/s",
                epoch + 1,
                self.cfg.max_epochs,
                train.means.loss,
                train.means.ncc
            ),
        })
    }

    fn validate_epoch(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<ValReport>> {
        Ok(self.validate(epoch, progress)?.map(|val| ValReport {
            monitored: val.means.loss,
            record: record(&val.means.record()),
            summary: format!("; val loss {:.4}, ncc {:.3}", val.means.loss, val.means.ncc),
        }))
    }
}

impl Stage for MaeStage {
    type Config = MaeTrainConfig;
    type Metrics = MaeEpochMetrics;
    const KIND: TrainerKind = TrainerKind::Mae;
    const NAME: &'static str = "MaeTrainer";

    fn start(
        mut cfg: MaeTrainConfig,
        run_dir: &Path,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let cache = open_new_run_cache(&mut cfg)?;
        check_cache(&cache, &cfg)?;
        let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, cfg.seed, device)?;
        Ok((
            Self::assemble(cfg, model, store, cache, run_dir, device)?,
            Vec::new(),
        ))
    }

    fn restore(
        cfg: MaeTrainConfig,
        dir: &Path,
        state: &TrainState,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let cache = open_resumed_cache(&cfg)?;
        check_cache(&cache, &cfg)?;
        let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, cfg.seed, device)?;
        MaskedAutoencoder::load_checkpoint(&store, &dir.join(MODEL_FILE))?;
        let mut stage = Self::assemble(cfg, model, store, cache, run_dir, device)?;
        stage.step.load_optimizer(dir)?;
        stage.step.rng().set_state(state.rng);
        Ok(stage)
    }

    fn config(&self) -> &MaeTrainConfig {
        &self.cfg
    }

    /// The objective on the validation split (evaluation mode, ECGs cropped from sample 0,
    /// the same maskings at every call). `None` without a validation split.
    fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<MaeEpochMetrics>> {
        let Some(loader) = self.data.start_validation(epoch, progress) else {
            return Ok(None);
        };
        let rng = SharedRng::new(validation_seed(self.cfg.seed));
        let mut sums = MaeSums::default();
        for batch in loader.epoch(0, 0) {
            let batch = batch?;
            let ecgs = batch
                .ecg
                .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
            let n = ecgs.dim(0)?;
            let metrics = self.step.evaluate(&ecgs, &rng)?;
            sums.add(&metrics, n);
            progress.batch(metrics.total, n);
        }
        progress.finish_phase();
        Ok(Some(sums.means()))
    }

    /// Checks that every global batch splits evenly over the group, then sets every replica's
    /// weights to rank 0's and trains as one of the group.
    fn join_group(&mut self, comm: Box<dyn GradSync>) -> Result<()> {
        let world = comm.world_size();
        let batch = self.cfg.batch_size;
        // Sharding cannot fail for a valid group, so checking the SimSiam term after it
        // reports the same errors in the same order as checking before.
        self.data.join_group(comm.as_ref())?;
        if world > 1 && self.cfg.loss.cos_weight > 0.0 && batch / world < 2 {
            return Err(Error::config(format!(
                "batch_size {batch} over {world} replicas leaves fewer than 2 samples per \
                 replica, which the SimSiam term (loss.cos_weight > 0) needs"
            )));
        }
        self.step.join_group(comm)
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn describe(&self) -> Vec<String> {
        let cfg = &self.cfg;
        let mut notes = vec![
            format!(
                "model {} on {:?} with {:?} patches: {} trainable parameters",
                cfg.model.model.as_deref().unwrap_or("(custom)"),
                cfg.model.img_size,
                cfg.model.patch_size,
                self.step.store().num_trainable_elements()
            ),
            format!(
                "learning rate {:.3e} ({}; effective batch {})",
                cfg.effective_lr(),
                if cfg.lr.is_some() {
                    "given".to_string()
                } else {
                    format!("blr {:.3e} x batch / 4", cfg.blr)
                },
                cfg.batch_size * cfg.accumulate_grad_batches
            ),
        ];
        notes.extend(self.data.describe());
        notes
    }

    fn schedule(&self) -> WarmupCosine {
        self.schedule
    }

    fn rng_state(&self) -> RngState {
        self.step.rng().state()
    }

    /// `model.safetensors` under the mae repo's keys (the model configuration and the epoch as
    /// metadata), the optimiser, and the encoder alone.
    fn checkpoint_files(&self, state: &TrainState) -> Result<CheckpointFiles> {
        let store = self.step.store();
        let weights = model_file(
            store.state_dict()?,
            &self.cfg.model,
            state,
            MAE_MODEL_FORMAT,
        )?;
        let mut encoder = CheckpointFile::new(MaskedAutoencoder::encoder_state_dict(store)?);
        // The export loads by itself. Downstream tasks pool globally (the paper's probes and
        // MMCL initialisation do); `fc_norm`, absent from the export, starts as the identity.
        let mut export_cfg = self.cfg.model.encoder_config();
        export_cfg.global_pool = true;
        encoder.metadata = export_cfg.export_metadata()?;
        Ok(vec![
            (MODEL_FILE, weights),
            (OPTIMIZER_FILE, self.step.optimizer_file()?),
            (ECG_ENCODER_FILE, encoder),
        ])
    }
}

impl Trainer<MaeStage> {
    /// The model.
    pub fn model(&self) -> &MaskedAutoencoder {
        self.stage().step.model()
    }

    /// The store of the model's variables.
    pub fn store(&self) -> &ParamStore {
        self.stage().step.store()
    }

    /// The exported encoder of the latest epoch ([`checkpoint::ecg_encoder_path`]).
    pub fn encoder_path(&self) -> PathBuf {
        checkpoint::ecg_encoder_path(self.run_dir())
    }
}
