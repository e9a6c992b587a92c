//! Data-parallel MAE and multimodal pre-training with the in-process thread group as the test
//! double of the MPI backend: two replicas on a global batch train the weights one process
//! trains, only rank 0 writes, and a group run resumes exactly (and only with the same group
//! size).

mod common;

use std::path::PathBuf;
use std::thread;

use candle_core::Device;
use common::{
    Weights, assert_bit_equal, assert_equals_one_process, assert_equals_one_process_within,
    cohort_cache, max_relative_difference, relative_norm_difference, store_tensors,
    tiny_mae_config as tiny_config, tiny_mmcl_config, trainable,
};
use mmcl_nn::distributed::{GradSync, SingleProcess, ThreadGroup};
use mmcl_train::checkpoint;
use mmcl_train::mae::MaeStage;
use mmcl_train::mmcl::MmclStage;
use mmcl_train::{MaeTrainConfig, MaeTrainer, MmclConfig, MmclTrainer, NoProgress, Stage, Trainer};

fn weights(trainer: &MaeTrainer) -> Weights {
    trainer
        .store()
        .trainable_vars()
        .into_iter()
        .map(|(name, var)| {
            let values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("weights");
            (name, values)
        })
        .collect()
}

/// How one replica starts: a new run in its directory, or a resume of a checkpoint.
#[derive(Clone)]
enum Start {
    New(PathBuf),
    Resume { checkpoint: PathBuf, run: PathBuf },
}

/// A replica's trainer of stage `S`, started by `start` in the group of `comm`, after training
/// until `epochs` epochs are done.
fn trained<S: Stage>(
    cfg: S::Config,
    start: Start,
    epochs: usize,
    comm: Box<dyn GradSync>,
) -> Trainer<S> {
    let (mut trainer, _) = match start {
        Start::New(run) => Trainer::new_in_group(cfg, &run, &Device::Cpu, comm).expect("new"),
        Start::Resume { checkpoint, run } => {
            Trainer::resume_in_group(&checkpoint, None, Some(&run), &Device::Cpu, comm)
                .expect("resume")
        }
    };
    trainer.fit_until(epochs, &mut NoProgress).expect("fit");
    trainer
}

fn train(cfg: MaeTrainConfig, start: Start, epochs: usize, comm: Box<dyn GradSync>) -> Weights {
    weights(&trained::<MaeStage>(cfg, start, epochs, comm))
}

/// Trains one replica per thread with `train`, replica `r` started by `starts[r]`; their final
/// weights.
fn in_threads<C: Clone + Send + 'static>(
    cfg: &C,
    starts: Vec<Start>,
    epochs: usize,
    train: fn(C, Start, usize, Box<dyn GradSync>) -> Weights,
) -> Vec<Weights> {
    let replicas = ThreadGroup::new(starts.len()).expect("group");
    let handles: Vec<_> = replicas
        .into_iter()
        .zip(starts)
        .map(|(comm, start)| {
            let cfg = cfg.clone();
            thread::spawn(move || train(cfg, start, epochs, Box::new(comm)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("replica thread"))
        .collect()
}

/// One epoch by two replicas in `run("resume-0")` (rank 1 given `run("resume-1")`, which must
/// stay unwritten), then a fresh group resumes it for the second; the resumed replicas' weights.
fn one_epoch_then_resumed<C: Clone + Send + 'static>(
    cfg: &C,
    run: &dyn Fn(&str) -> PathBuf,
    train: fn(C, Start, usize, Box<dyn GradSync>) -> Weights,
) -> Vec<Weights> {
    let _ = in_threads(cfg, pair(run, "resume"), 1, train);
    let ckpt = run("resume-0");
    let resumed = in_threads(
        cfg,
        vec![
            Start::Resume {
                checkpoint: ckpt.clone(),
                run: ckpt.clone(),
            },
            Start::Resume {
                checkpoint: ckpt,
                run: run("resume-1"),
            },
        ],
        2,
        train,
    );
    assert!(!run("resume-1").exists(), "rank 1 wrote its run directory");
    resumed
}

/// New runs of two replicas in `run("{prefix}-0")` and `run("{prefix}-1")`.
fn pair(run: &dyn Fn(&str) -> PathBuf, prefix: &str) -> Vec<Start> {
    vec![
        Start::New(run(&format!("{prefix}-0"))),
        Start::New(run(&format!("{prefix}-1"))),
    ]
}

/// `cfg` trained `epochs` epochs by `train` in one process (in `run("{prefix}-single")`) and by
/// two replicas (see [`pair`]), whose weights are checked to agree to the bit (`what` names
/// them); the one process's weights and the replicas'.
fn one_process_and_two_replicas<C: Clone + Send + 'static>(
    cfg: &C,
    run: &dyn Fn(&str) -> PathBuf,
    prefix: &str,
    epochs: usize,
    train: fn(C, Start, usize, Box<dyn GradSync>) -> Weights,
    what: &str,
) -> (Weights, Vec<Weights>) {
    let single = train(
        cfg.clone(),
        Start::New(run(&format!("{prefix}-single"))),
        epochs,
        Box::new(SingleProcess),
    );
    let group = in_threads(cfg, pair(run, prefix), epochs, train);
    assert_bit_equal(&group[0], &group[1], what);
    (single, group)
}

#[test]
fn two_replicas_train_what_one_process_trains_and_resume_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let cfg = tiny_config(&cache);
    let run = |name: &str| tmp.path().join(name);

    // (a) One process on the global batch; (b) two replicas, rank 1 given a directory of its
    // own, which must stay unwritten.
    let (single, group) = one_process_and_two_replicas(&cfg, &run, "group", 2, train, "replicas");
    assert_equals_one_process(&group[0], &single, "two replicas");
    let (moved, _) = relative_norm_difference(&group[0], &{
        let (t, _) = MaeTrainer::new(cfg.clone(), &run("init"), &Device::Cpu).expect("init");
        weights(&t)
    });
    eprintln!("training moved the weights by {moved:.3e} (relative norm)");
    assert!(
        moved > 1e-4,
        "training did not move the weights: {moved:.3e}"
    );
    for f in ["config.toml", "metrics.jsonl", "metrics.csv"] {
        assert!(run("group-0").join(f).is_file(), "{f} missing");
    }
    assert!(checkpoint::last_dir(&run("group-0")).is_dir());
    assert!(!run("group-1").exists(), "rank 1 wrote its run directory");
    let state =
        checkpoint::TrainState::read(&checkpoint::last_dir(&run("group-0"))).expect("state");
    assert_eq!(state.world_size, 2);

    // (c) One epoch in a group, then a fresh group resumes for the second.
    let resumed = one_epoch_then_resumed(&cfg, &run, train);
    assert_bit_equal(&resumed[0], &group[0], "resumed group run");
    assert_bit_equal(&resumed[1], &group[0], "resumed group run, rank 1");

    // A world-2 checkpoint does not resume in one process.
    let err = MaeTrainer::resume(&run("resume-0"), None, None, &Device::Cpu).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("2 data-parallel") && text.contains("has 1"),
        "{text}"
    );
}

#[test]
fn with_the_simsiam_term_replicas_stay_identical_and_uneven_batches_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let mut cfg = tiny_config(&cache);
    cfg.loss.cos_weight = 0.1;
    let run = |name: &str| tmp.path().join(name);
    let group = in_threads(&cfg, pair(&run, "cos"), 1, train);
    assert_bit_equal(&group[0], &group[1], "replicas with the SimSiam term");

    // A global batch of 9 does not split over two replicas: every replica refuses to start.
    let mut uneven = tiny_config(&cache);
    uneven.batch_size = 9;
    let replicas = ThreadGroup::new(2).expect("group");
    for (rank, comm) in replicas.into_iter().enumerate() {
        let run = tmp.path().join(format!("uneven-{rank}"));
        let err = MaeTrainer::new_in_group(uneven.clone(), &run, &Device::Cpu, Box::new(comm))
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("batch_size 9") && text.contains("2 data-parallel"),
            "{text}"
        );
        assert!(!run.exists());
    }
}

fn train_mmcl(cfg: MmclConfig, start: Start, epochs: usize, comm: Box<dyn GradSync>) -> Weights {
    store_tensors(
        trained::<MmclStage>(cfg, start, epochs, comm)
            .model()
            .store(),
    )
}

#[test]
fn multimodal_replicas_contrast_the_global_batch_as_one_process_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let run = |name: &str| tmp.path().join(name);

    // (a) A frozen image tower (BatchNorm in evaluation mode): two replicas equal one process.
    let cfg = tiny_mmcl_config(&cache, true);
    let (single, group) =
        one_process_and_two_replicas(&cfg, &run, "group", 2, train_mmcl, "multimodal replicas");
    assert_equals_one_process(&group[0], &single, "multimodal, two replicas");
    let (moved, _) = relative_norm_difference(&trainable(&group[0]), &{
        let (t, _) = MmclTrainer::new(cfg.clone(), &run("init"), &Device::Cpu).expect("init");
        trainable(&store_tensors(t.model().store()))
    });
    assert!(
        moved > 1e-4,
        "training did not move the weights: {moved:.3e}"
    );
    assert!(run("group-0").join("metrics.jsonl").is_file());
    assert!(!run("group-1").exists(), "rank 1 wrote its run directory");

    // (b) One epoch in a group, then a fresh group resumes the second exactly.
    let resumed = one_epoch_then_resumed(&cfg, &run, train_mmcl);
    assert_bit_equal(&resumed[0], &group[0], "resumed multimodal group run");
    assert_bit_equal(
        &resumed[1],
        &group[0],
        "resumed multimodal group run, rank 1",
    );

    // (c) A trainable image tower normalises each replica's share by itself; the replicas still
    // agree on every weight and on rank 0's running statistics.
    let trained = in_threads(
        &tiny_mmcl_config(&cache, false),
        pair(&run, "bn"),
        1,
        train_mmcl,
    );
    assert_bit_equal(
        &trained[0],
        &trained[1],
        "replicas with a trainable image tower",
    );
}

/// The BatchNorm running statistics of `w`.
fn running_statistics(w: &Weights) -> Weights {
    w.iter()
        .filter(|(name, _)| name.contains("running_"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Without `sync_batch_norm` the same group trains something else (the test can fail): the
/// per-replica run's trainable weights are over 100 times further from one process's than the
/// synchronised run's.
fn assert_synchronisation_matters(per_replica: &Weights, synced: &Weights, single: &Weights) {
    let (local_gap, _) = relative_norm_difference(&trainable(per_replica), &trainable(single));
    let (synced_gap, _) = relative_norm_difference(&trainable(synced), &trainable(single));
    assert!(
        local_gap > 100.0 * synced_gap.max(1e-9),
        "per-replica {local_gap:.3e} vs synchronised {synced_gap:.3e}"
    );
}

#[test]
fn synchronised_batch_norm_makes_a_group_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let run = |name: &str| tmp.path().join(name);

    // MAE with the SimSiam term, whose heads hold BatchNorm layers.
    let mut mae = tiny_config(&cache);
    mae.loss.cos_weight = 0.1;
    let per_replica = in_threads(&mae, pair(&run, "mae-local"), 1, train);
    mae.sync_batch_norm = true;
    let (single, synced) = one_process_and_two_replicas(
        &mae,
        &run,
        "mae-sync",
        1,
        train,
        "synchronised MAE replicas",
    );
    assert_equals_one_process(&synced[0], &single, "MAE, synchronised batch norm");
    assert_synchronisation_matters(&per_replica[0], &synced[0], &single);

    // MMCL with a trainable ResNet image tower (BatchNorm in train mode), two epochs.
    let mut mmcl = tiny_mmcl_config(&cache, false);
    let per_replica = in_threads(&mmcl, pair(&run, "mmcl-local"), 2, train_mmcl);
    mmcl.sync_batch_norm = true;
    let (single, synced) = one_process_and_two_replicas(
        &mmcl,
        &run,
        "mmcl-sync",
        2,
        train_mmcl,
        "synchronised multimodal replicas",
    );
    // The layer's gradients equal one process's within 1e-6 (mmcl-nn's `distributed` test);
    // over two epochs Adam, which divides each step by the gradient's running scale, turns
    // rounding into differences of up to 3e-5 in a few BatchNorm shifts with small gradients.
    assert_equals_one_process_within(&synced[0], &single, "MMCL, synchronised batch norm", 1e-4);
    let stats = max_relative_difference(
        &running_statistics(&synced[0]),
        &running_statistics(&single),
    );
    assert!(stats < 1e-5, "running statistics differ by {stats:.3e}");
    assert_synchronisation_matters(&per_replica[0], &synced[0], &single);
}
