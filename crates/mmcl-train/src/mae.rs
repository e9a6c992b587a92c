//! The masked-data-modelling stage (`mmcl pretrain-mae`): the training step and the epoch loop,
//! as the mae repo's `main_pretrain.py` / `engine_pretrain.py` do them.
//!
//! One batch: two random maskings of the (augmented) ECGs drawn from the trainer's masking
//! stream, the masked autoencoder's reconstruction loss (normalised-pixel squared error over all
//! patches + NCC term) plus `cos_weight` × the SimSiam term of the two views, backward, AdamW
//! (betas 0.9/0.95, decoupled weight decay except on biases and 1-D tensors). The learning rate
//! is set at the first batch of every accumulation group from the per-step warm-up cosine at the
//! fractional epoch `epoch + batch / batches` (`util/lr_sched.py`); with
//! `accumulate_grad_batches` > 1 each loss counts `1/accumulate` and an incomplete group at the
//! end of an epoch is dropped (the reference zeroes the gradients when the next epoch starts).
//!
//! Each epoch ends with validation (evaluation mode, ECGs cropped from sample 0, maskings from a
//! stream seeded afresh for every validation so that epochs compare on the same masks), one
//! record per split in `metrics.jsonl`/`metrics.csv`, and a checkpoint (see
//! [`crate::checkpoint`]): `model.safetensors` under the mae repo's keys (what
//! [`MaskedAutoencoder::load_checkpoint`] reads), `optimizer.safetensors`, `state.json`, and
//! `ecg_encoder.safetensors` (the encoder alone in the released `signal_encoder` layout).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use mmcl_core::runlog::RunLogWriter;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder};
use mmcl_losses::mae::{MaeLoss, MaeMetrics};
use mmcl_nn::ParamStore;
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator, clip_grad_norm};
use mmcl_nn::rng::{SharedRng, hash_str};
use mmcl_nn::schedule::WarmupCosine;

use crate::checkpoint::{
    self, CONFIG_FILE, CheckpointFile, ECG_ENCODER_FILE, MODEL_FILE, OPTIMIZER_FILE, TrainState,
    TrainerKind,
};
use crate::config::MaeTrainConfig;
use crate::progress::Progress;
use crate::{Error, Result};

/// The `format` metadata of an MAE `model.safetensors`.
pub const MAE_MODEL_FORMAT: &str = "mmcl-mae";

/// The seed of the training masking stream of a run seeded with `seed`.
fn masking_seed(seed: u64) -> u64 {
    seed ^ hash_str("mae-masking")
}

/// The seed of the validation maskings (the same at every validation).
fn validation_seed(seed: u64) -> u64 {
    seed ^ hash_str("mae-validation")
}

/// What one training batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct MaeStepReport {
    /// The objective's values (possibly non-finite: then nothing was updated).
    pub metrics: MaeMetrics,
    /// Whether the optimiser stepped (false while accumulating).
    pub stepped: bool,
    /// The gradient norm before clipping, when clipping is configured and the optimiser stepped.
    pub grad_norm: Option<f64>,
}

/// The optimisation of the masked autoencoder: objective, AdamW, the masking stream, gradient
/// accumulation and clipping, applied batch by batch. Used by [`MaeTrainer`].
#[derive(Debug)]
pub struct MaeStep {
    model: MaskedAutoencoder,
    store: ParamStore,
    objective: MaeLoss,
    optimizer: Adam,
    vars: Vec<(String, Var)>,
    accumulator: GradAccumulator,
    accumulate: usize,
    gradient_clip_val: Option<f64>,
    rng: SharedRng,
}

impl MaeStep {
    /// The step of `cfg` around `model` (whose variables live in `store`): AdamW over the
    /// reference's two groups ([`MaskedAutoencoder::param_groups`]), maskings drawn from a
    /// stream seeded by `cfg.seed`.
    pub fn new(model: MaskedAutoencoder, store: ParamStore, cfg: &MaeTrainConfig) -> Result<Self> {
        let groups = MaskedAutoencoder::param_groups(&store, cfg.weight_decay);
        let vars: Vec<(String, Var)> = groups.iter().flat_map(|g| g.vars.clone()).collect();
        let adam = AdamConfig {
            betas: cfg.betas,
            eps: cfg.eps,
            decoupled_weight_decay: true,
        };
        Ok(Self {
            objective: MaeLoss::new(cfg.loss)?,
            optimizer: Adam::new(groups, adam)?,
            model,
            store,
            vars,
            accumulator: GradAccumulator::new(),
            accumulate: cfg.accumulate_grad_batches.max(1),
            gradient_clip_val: cfg.gradient_clip_val,
            rng: SharedRng::new(masking_seed(cfg.seed)),
        })
    }

    /// The model.
    pub fn model(&self) -> &MaskedAutoencoder {
        &self.model
    }

    /// The store holding the model's variables and buffers.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The objective.
    pub fn objective(&self) -> &MaeLoss {
        &self.objective
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &Adam {
        &self.optimizer
    }

    /// The masking stream (its state is part of a checkpoint).
    pub fn rng(&self) -> &SharedRng {
        &self.rng
    }

    /// Whether gradients of earlier batches wait for an optimiser step.
    pub fn has_pending_gradients(&self) -> bool {
        self.accumulator.micro_batches() > 0
    }

    /// Drops the gradients of an incomplete accumulation group.
    pub fn discard_pending(&mut self) {
        self.accumulator = GradAccumulator::new();
    }

    /// Trains on one batch of ECGs with learning rate `lr`. A non-finite loss updates nothing
    /// and is returned for the caller to stop on.
    ///
    /// # Shapes
    /// `ecgs`: `[B, 1, leads, T]` as the model's `img_size` (`B ≥ 2` when `cos_weight > 0`).
    pub fn train_batch(&mut self, ecgs: &Tensor, lr: f64) -> Result<MaeStepReport> {
        let out = self
            .objective
            .forward_random(&self.model, ecgs, &self.rng, true)?;
        let metrics = out.metrics()?;
        let mut report = MaeStepReport {
            metrics,
            stepped: false,
            grad_norm: None,
        };
        if !metrics.total.is_finite() {
            return Ok(report);
        }
        let grads = out.total.backward()?;
        drop(out);
        if self.accumulate == 1 {
            report.grad_norm = self.apply_gradients(grads, lr)?;
            report.stepped = true;
        } else {
            self.accumulator.add(&self.vars, &grads)?;
            drop(grads);
            if self.accumulator.micro_batches() >= self.accumulate {
                let grads = self.accumulator.take(&self.vars, self.accumulate as f64)?;
                report.grad_norm = self.apply_gradients(grads, lr)?;
                report.stepped = true;
            }
        }
        Ok(report)
    }

    /// Steps the optimiser with `grads` (clipped first when configured). Returns the norm when
    /// clipping.
    pub fn apply_gradients(&mut self, mut grads: GradStore, lr: f64) -> Result<Option<f64>> {
        let norm = match self.gradient_clip_val {
            Some(max) => Some(clip_grad_norm(&self.vars, &mut grads, max)?),
            None => None,
        };
        self.optimizer.step(&grads, lr)?;
        Ok(norm)
    }

    /// The objective in evaluation mode on `ecgs` with maskings drawn from `rng`.
    pub fn evaluate(&self, ecgs: &Tensor, rng: &SharedRng) -> Result<MaeMetrics> {
        let out = self
            .objective
            .forward_random(&self.model, ecgs, rng, false)?;
        Ok(out.metrics()?)
    }

    /// The optimiser state (`exp_avg.<key>`, `exp_avg_sq.<key>` under the mae repo's keys, the
    /// step count as metadata).
    pub fn optimizer_file(&self) -> CheckpointFile {
        let (tensors, metadata) = self.optimizer.state();
        CheckpointFile { tensors, metadata }
    }

    /// Restores the optimiser state of a checkpoint directory.
    pub fn load_optimizer(&mut self, dir: &Path) -> Result<()> {
        let sd = checkpoint::read_file(dir, OPTIMIZER_FILE)?;
        let steps = checkpoint::optimizer_steps(dir, OPTIMIZER_FILE)?;
        self.optimizer.load_state(&sd, steps)?;
        Ok(())
    }
}

/// Means of the objective's values over a phase (weighted by batch size).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaeEpochMetrics {
    /// The back-propagated total (`loss + cos_weight · loss_cos`).
    pub total: f64,
    /// The reconstruction loss (the reference's `loss`).
    pub loss: f64,
    /// Its squared-error part.
    pub mse: f64,
    /// Normalised cross-correlation of reconstructions and inputs.
    pub ncc: f64,
    /// The SimSiam term.
    pub loss_cos: Option<f64>,
    /// Cosine similarity of the two views' embeddings.
    pub cos_embed: Option<f64>,
    /// Spread of the normalised embeddings (about 1 when not collapsed).
    pub z_std: Option<f64>,
    /// Samples seen.
    pub samples: usize,
}

/// Running sums of [`MaeEpochMetrics`].
#[derive(Debug, Default)]
struct MaeSums {
    total: f64,
    loss: f64,
    mse: f64,
    ncc: f64,
    optional: [(f64, usize); 3],
    samples: usize,
}

impl MaeSums {
    fn add(&mut self, m: &MaeMetrics, n: usize) {
        let w = n as f64;
        self.total += m.total * w;
        self.loss += m.loss * w;
        self.mse += m.mse * w;
        self.ncc += m.ncc * w;
        // z_std is NaN for a single-sample batch: such batches do not count towards it.
        for (slot, v) in self
            .optional
            .iter_mut()
            .zip([m.loss_cos, m.cos_embed, m.z_std])
        {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                slot.0 += v * w;
                slot.1 += n;
            }
        }
        self.samples += n;
    }

    fn means(&self) -> MaeEpochMetrics {
        let n = self.samples.max(1) as f64;
        let opt = |(s, c): (f64, usize)| (c > 0).then(|| s / c as f64);
        MaeEpochMetrics {
            total: self.total / n,
            loss: self.loss / n,
            mse: self.mse / n,
            ncc: self.ncc / n,
            loss_cos: opt(self.optional[0]),
            cos_embed: opt(self.optional[1]),
            z_std: opt(self.optional[2]),
            samples: self.samples,
        }
    }
}

impl MaeEpochMetrics {
    /// The values as `(name, value)` pairs for the run log.
    fn record(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("loss", self.loss),
            ("total", self.total),
            ("mse", self.mse),
            ("ncc", self.ncc),
        ];
        for (k, v) in [
            ("loss_cos", self.loss_cos),
            ("cos_embed", self.cos_embed),
            ("z_std", self.z_std),
        ] {
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        out
    }
}

/// The MAE pre-training trainer: data, model, optimiser, schedule, run directory.
pub struct MaeTrainer {
    cfg: MaeTrainConfig,
    step: MaeStep,
    schedule: WarmupCosine,
    train_loader: Arc<Loader>,
    val_loader: Option<Arc<Loader>>,
    run_dir: PathBuf,
    log: RunLogWriter,
    epoch: usize,
    steps_taken: u64,
    best_val_loss: Option<(f64, usize)>,
    last_lr: f64,
}

impl std::fmt::Debug for MaeTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaeTrainer")
            .field("run_dir", &self.run_dir)
            .field("epoch", &self.epoch)
            .field("steps", &self.steps_taken)
            .finish()
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

impl MaeTrainer {
    /// A new run of `cfg` writing into `run_dir` (which must not hold a run yet), on `device`.
    /// The resolved configuration is saved as `config.toml`. Returns the trainer and notes for
    /// the user.
    pub fn new(
        cfg: MaeTrainConfig,
        run_dir: &Path,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        crate::run::ensure_fresh(run_dir)?;
        let mut cfg = cfg;
        cfg.validate()?;
        cfg.data.cache =
            std::fs::canonicalize(&cfg.data.cache).map_err(|e| Error::io(&cfg.data.cache, e))?;
        let cache = Arc::new(Cache::open(&cfg.data.cache)?);
        check_cache(&cache, &cfg)?;
        let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, cfg.seed, device)?;
        let mut trainer = Self::assemble(cfg, model, store, cache, run_dir, device)?;
        let notes = trainer.describe();
        crate::run::write_config(run_dir, &trainer.cfg.to_toml())?;
        trainer.log.truncate_after(0)?;
        Ok((trainer, notes))
    }

    /// Continues the run whose checkpoint is at `path` (a run directory or a checkpoint
    /// directory) exactly where it stopped. `cfg` replaces the saved configuration when given
    /// (e.g. more epochs); the model must stay the same. `run_dir` defaults to the checkpoint's
    /// run directory.
    pub fn resume(
        path: &Path,
        cfg: Option<MaeTrainConfig>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let (dir, state, run_dir) = crate::run::open_resume(path, TrainerKind::Mae, run_dir)?;
        let cfg = match cfg {
            Some(cfg) => cfg,
            None => crate::run::saved_config(&dir, &state)?,
        };
        cfg.validate()?;
        let cache = Arc::new(Cache::open(&cfg.data.cache)?);
        check_cache(&cache, &cfg)?;
        let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, cfg.seed, device)?;
        MaskedAutoencoder::load_checkpoint(&store, &dir.join(MODEL_FILE))?;
        let mut trainer = Self::assemble(cfg, model, store, cache, &run_dir, device)?;
        trainer.step.load_optimizer(&dir)?;
        trainer.step.rng.set_state(state.rng);
        trainer.epoch = state.epoch;
        trainer.steps_taken = state.step;
        trainer.best_val_loss = state.best_val_loss;
        trainer.last_lr = state.lr;
        trainer.log.truncate_after(state.epoch)?;
        let mut notes = vec![format!(
            "resumed from {} after epoch {} ({} optimiser steps)",
            dir.display(),
            state.epoch,
            state.step
        )];
        notes.extend(trainer.describe());
        Ok((trainer, notes))
    }

    fn assemble(
        cfg: MaeTrainConfig,
        model: MaskedAutoencoder,
        store: ParamStore,
        cache: Arc<Cache>,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let train_idx = cache.split_indices(cfg.data.train_split);
        if train_idx.is_empty() {
            return Err(Error::config(format!(
                "the cache {} has no subjects in the {:?} split",
                cfg.data.cache.display(),
                cfg.data.train_split
            )));
        }
        let val_idx = cache.split_indices(cfg.data.val_split);
        let train_cfg = LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            drop_last: cfg.data.drop_last,
            seed: cfg.seed,
            ecg: true,
            ecg_crop: Some(cfg.model.img_size[2]),
            ecg_random_crop: cfg.random_crop,
            ecg_augment: Some(cfg.augment.clone()),
            image: false,
            image_augment: None,
            image_size: None,
            originals: false,
            prefetch: cfg.data.prefetch,
            threads: cfg.data.threads,
        };
        let val_cfg = LoaderConfig {
            shuffle: false,
            drop_last: false,
            ecg_random_crop: false,
            ecg_augment: None,
            ..train_cfg.clone()
        };
        let train_loader = Arc::new(Loader::new(
            Arc::clone(&cache),
            train_idx,
            train_cfg,
            device.clone(),
        )?);
        let val_loader = if val_idx.is_empty() {
            None
        } else {
            Some(Arc::new(Loader::new(
                Arc::clone(&cache),
                val_idx,
                val_cfg,
                device.clone(),
            )?))
        };
        let schedule = WarmupCosine::per_step(
            cfg.effective_lr(),
            cfg.warmup_epochs,
            cfg.max_epochs,
            cfg.min_lr,
        );
        let step = MaeStep::new(model, store, &cfg)?;
        let log = RunLogWriter::open(run_dir)?;
        Ok(Self {
            cfg,
            step,
            schedule,
            train_loader,
            val_loader,
            run_dir: run_dir.to_path_buf(),
            log,
            epoch: 0,
            steps_taken: 0,
            best_val_loss: None,
            last_lr: 0.0,
        })
    }

    fn describe(&self) -> Vec<String> {
        let cfg = &self.cfg;
        let mut notes = vec![
            format!(
                "model {} on {:?} with {:?} patches: {} trainable parameters",
                cfg.model.model.as_deref().unwrap_or("(custom)"),
                cfg.model.img_size,
                cfg.model.patch_size,
                self.step.store.num_trainable_elements()
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
            format!(
                "training on {} subjects ({} batches of {} per epoch)",
                self.train_loader.len(),
                self.train_loader.num_batches(),
                cfg.batch_size
            ),
        ];
        match &self.val_loader {
            Some(v) => notes.push(format!("validating on {} subjects", v.len())),
            None => notes.push(format!(
                "the {:?} split is empty: no validation",
                cfg.data.val_split
            )),
        }
        notes
    }

    /// The configuration.
    pub fn config(&self) -> &MaeTrainConfig {
        &self.cfg
    }

    /// The model.
    pub fn model(&self) -> &MaskedAutoencoder {
        self.step.model()
    }

    /// The store of the model's variables.
    pub fn store(&self) -> &ParamStore {
        self.step.store()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The exported encoder of the latest epoch ([`checkpoint::ecg_encoder_path`]).
    pub fn encoder_path(&self) -> PathBuf {
        checkpoint::ecg_encoder_path(&self.run_dir)
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// Optimiser steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// Trains until `max_epochs`, validating and checkpointing after each epoch.
    ///
    /// # Errors
    /// Data, model and I/O errors; [`Error::NonFiniteLoss`] when the loss becomes NaN or
    /// infinite (the last checkpoint on disk is left as it was).
    pub fn fit(&mut self, progress: &mut dyn Progress) -> Result<()> {
        self.fit_until(self.cfg.max_epochs, progress)
    }

    /// Trains until `epochs` epochs are done (at most `max_epochs`), e.g. to stop early and
    /// resume later.
    pub fn fit_until(&mut self, epochs: usize, progress: &mut dyn Progress) -> Result<()> {
        let end = epochs.min(self.cfg.max_epochs);
        while self.epoch < end {
            self.train_epoch(progress)?;
        }
        Ok(())
    }

    fn train_epoch(&mut self, progress: &mut dyn Progress) -> Result<()> {
        let epoch = self.epoch;
        let batches = self.train_loader.num_batches();
        let accumulate = self.cfg.accumulate_grad_batches.max(1);
        let needs_pairs = self.cfg.loss.cos_weight > 0.0;
        let started = Instant::now();
        progress.start_phase(epoch, "train", batches);
        let mut sums = MaeSums::default();
        let mut lr = self.schedule.lr(epoch, 0, batches);
        let mut skipped = 0usize;
        let loader = Arc::clone(&self.train_loader);
        for (b, batch) in loader.epoch(epoch as u64, 0).enumerate() {
            let batch = batch?;
            let ecgs = batch
                .ecg
                .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
            let n = ecgs.dim(0)?;
            if b % accumulate == 0 {
                lr = self.schedule.lr(epoch, b, batches);
            }
            // The SimSiam heads' BatchNorm needs two samples in training mode.
            if needs_pairs && n < 2 {
                skipped += n;
                continue;
            }
            let report = self.step.train_batch(&ecgs, lr)?;
            if !report.metrics.total.is_finite() {
                progress.finish_phase();
                return Err(crate::run::non_finite(
                    report.metrics.total,
                    epoch,
                    b,
                    self.steps_taken,
                    &self.run_dir,
                ));
            }
            if report.stepped {
                self.steps_taken += 1;
            }
            sums.add(&report.metrics, n);
            progress.batch(report.metrics.total, n);
        }
        self.step.discard_pending();
        progress.finish_phase();
        if skipped > 0 {
            progress.message(&format!(
                "epoch {epoch}: a last batch of {skipped} sample was skipped (the SimSiam term \
                 needs two; set data.drop_last or another batch size)"
            ));
        }
        self.last_lr = lr;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let train = sums.means();
        let rate = train.samples as f64 / seconds;
        let mut values = train.record();
        values.push(("lr", lr));
        values.push(("samples_per_s", rate));
        self.log
            .append("train", epoch, self.steps_taken as usize, &values)?;
        let mut summary = format!(
            "epoch {epoch}: train loss {:.4}, ncc {:.3}, lr {lr:.3e}, {rate:.1} samples/s",
            train.loss, train.ncc
        );

        let last = epoch + 1 == self.cfg.max_epochs;
        let mut improved = false;
        let due = (epoch + 1).is_multiple_of(self.cfg.check_val_every_n_epoch) || last;
        if due && let Some(val) = self.validate(epoch, progress)? {
            self.log
                .append("val", epoch, self.steps_taken as usize, &val.record())?;
            summary.push_str(&format!("; val loss {:.4}, ncc {:.3}", val.loss, val.ncc));
            improved = val.loss.is_finite() && self.best_val_loss.is_none_or(|(b, _)| val.loss < b);
            if improved {
                self.best_val_loss = Some((val.loss, epoch));
            }
        }
        self.epoch = epoch + 1;
        self.save_checkpoints(improved)?;
        progress.message(&summary);
        Ok(())
    }

    /// The objective on the validation split (evaluation mode, ECGs cropped from sample 0,
    /// the same maskings at every call). `None` without a validation split.
    pub fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<MaeEpochMetrics>> {
        let Some(loader) = self.val_loader.clone() else {
            return Ok(None);
        };
        progress.start_phase(epoch, "val", loader.num_batches());
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

    /// The training state after the epochs done so far.
    pub fn state(&self) -> Result<TrainState> {
        Ok(TrainState {
            version: checkpoint::CHECKPOINT_VERSION,
            kind: TrainerKind::Mae,
            epoch: self.epoch,
            step: self.steps_taken,
            schedule: self.schedule,
            lr: self.last_lr,
            rng: self.step.rng().state(),
            data_seed: self.cfg.seed,
            best_val_loss: self.best_val_loss,
            config: serde_json::to_value(&self.cfg).map_err(|source| Error::Json {
                path: self.run_dir.join(CONFIG_FILE),
                source,
            })?,
            image_channels: None,
        })
    }

    /// Writes `checkpoints/last` (and `best` when `improved`, and `epoch-NNNN` when due).
    fn save_checkpoints(&self, improved: bool) -> Result<()> {
        let state = self.state()?;
        let weights = model_file(self.step.store(), &self.cfg.model, &state)?;
        let encoder =
            CheckpointFile::new(MaskedAutoencoder::encoder_state_dict(self.step.store())?);
        let full = [
            (MODEL_FILE, weights.clone()),
            (OPTIMIZER_FILE, self.step.optimizer_file()),
            (ECG_ENCODER_FILE, encoder.clone()),
        ];
        let ckpts = checkpoint::checkpoints_dir(&self.run_dir);
        checkpoint::write_checkpoint(&ckpts.join("last"), &full, &state)?;
        let every = self.cfg.save_every_n_epochs;
        if every > 0 && self.epoch.is_multiple_of(every) {
            checkpoint::write_checkpoint(
                &ckpts.join(checkpoint::epoch_dir_name(self.epoch)),
                &full,
                &state,
            )?;
        }
        if improved {
            let light = [(MODEL_FILE, weights), (ECG_ENCODER_FILE, encoder)];
            checkpoint::write_checkpoint(&ckpts.join("best"), &light, &state)?;
        }
        Ok(())
    }
}

/// `model.safetensors`: every tensor under the mae repo's keys, the model configuration and
/// the epoch as metadata.
fn model_file(store: &ParamStore, cfg: &MaeConfig, state: &TrainState) -> Result<CheckpointFile> {
    let mut metadata = HashMap::new();
    let arch = serde_json::to_string(cfg).map_err(|source| Error::Json {
        path: PathBuf::from(MODEL_FILE),
        source,
    })?;
    metadata.insert("architecture".to_string(), arch);
    metadata.insert("epoch".to_string(), state.epoch.to_string());
    metadata.insert("format".to_string(), MAE_MODEL_FORMAT.to_string());
    Ok(CheckpointFile {
        tensors: store.state_dict()?,
        metadata,
    })
}
