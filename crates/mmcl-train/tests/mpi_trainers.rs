//! The trainers under `mpirun` (crate feature `mpi`; needs OpenMPI's `mpirun` on `PATH`).
//!
//! Run by `cargo test --release -p mmcl-train --features mpi --test mpi_trainers`. The binary
//! builds a synthetic cohort's cache and trains the MAE and the multimodal model for two epochs
//! in this process (the single-process reference); then it starts itself under
//! `mpirun --oversubscribe -np 2` once per job below, as a user starts `mmcl pretrain-…`, and
//! checks how each job ends and the weights its ranks leave:
//!
//! - MAE and MMCL, two epochs each: both ranks hold the same weights, equal to the single
//!   process's within 1e-5 (relative norm of the difference, and per tensor outside the
//!   attention key biases, whose exact gradient is zero: see `data_parallel.rs`); only rank 0
//!   writes the run;
//! - MAE with the SimSiam term and `sync_batch_norm`: its heads' BatchNorm normalises over the
//!   global batch through MPI, and the ranks equal the single process (per tensor within 1e-4);
//! - MMCL for one epoch, then a second job resumes it for the second: bit-identical to the
//!   two-epoch job on both ranks;
//! - MMCL with rank 1 exiting in the middle of the first epoch: the job ends non-zero within
//!   60 s instead of hanging.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{
    Weights, assert_bit_equal, assert_equals_one_process_within, cohort_cache, store_tensors,
    tiny_mae_config, tiny_mmcl_config,
};
use mmcl_nn::StateDict;
use mmcl_nn::distributed::{GradSync, Launch, SingleProcess, group_from_launcher};
use mmcl_train::{MaeTrainer, MmclTrainer, NoProgress, Progress, checkpoint};

const JOB: &str = "MMCL_MPI_TRAINERS_JOB";
const DIR: &str = "MMCL_MPI_TRAINERS_DIR";

fn main() {
    match Launch::from_env() {
        None => launch_jobs(),
        Some(_) => {
            let dir = PathBuf::from(std::env::var(DIR).expect("the jobs' directory"));
            let job = std::env::var(JOB).expect("the job's name");
            run_rank(&dir, &job);
        }
    }
}

/// The weights of one rank (or of the single process) after `job`.
fn weights_file(dir: &Path, job: &str, rank: usize) -> PathBuf {
    dir.join(format!("{job}-rank{rank}.safetensors"))
}

fn save(weights: &Weights, path: &Path) {
    let mut sd = StateDict::with_source(path);
    for (name, values) in weights {
        let t = candle_core::Tensor::new(values.as_slice(), &Device::Cpu).expect("tensor");
        sd.insert(name.clone(), t);
    }
    sd.write_safetensors(path, None).expect("write the weights");
}

fn load(path: &Path) -> Weights {
    StateDict::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_vec1::<f32>().expect("values")))
        .collect()
}

/// Ends the process of rank 1 after its first training batch (a rank lost mid-epoch).
struct DieMidEpoch {
    rank: usize,
    batches: usize,
}

impl Progress for DieMidEpoch {
    fn batch(&mut self, _loss: f64, _samples: usize) {
        self.batches += 1;
        if self.rank == 1 && self.batches == 1 {
            std::process::exit(3);
        }
    }
}

/// Trains `job` in `comm` (a launched rank, or the single process) and saves its weights.
fn train(dir: &Path, job: &str, comm: Box<dyn GradSync>) {
    let cache = dir.join("cache");
    let rank = comm.rank();
    let out = |name: &str| weights_file(dir, name, rank);
    match job {
        "mae" | "mae-single" | "mae-sync" | "mae-sync-single" => {
            let run = dir.join(job);
            let mut cfg = tiny_mae_config(&cache);
            if job.starts_with("mae-sync") {
                // The SimSiam heads' BatchNorm over the global batch (SyncBatchNorm).
                cfg.loss.cos_weight = 0.1;
                cfg.sync_batch_norm = true;
            }
            let (mut t, _) =
                MaeTrainer::new_in_group(cfg, &run, &Device::Cpu, comm).expect("MAE trainer");
            t.fit_until(2, &mut NoProgress).expect("MAE training");
            save(&store_tensors(t.store()), &out(job));
        }
        "mmcl" | "mmcl-single" | "mmcl-first-epoch" => {
            let run = dir.join(job);
            let (mut t, _) =
                MmclTrainer::new_in_group(tiny_mmcl_config(&cache, true), &run, &Device::Cpu, comm)
                    .expect("MMCL trainer");
            let epochs = if job == "mmcl-first-epoch" { 1 } else { 2 };
            t.fit_until(epochs, &mut NoProgress).expect("MMCL training");
            save(&store_tensors(t.model().store()), &out(job));
        }
        "mmcl-resume" => {
            let run = dir.join("mmcl-first-epoch");
            let (mut t, _) =
                MmclTrainer::resume_in_group(&run, None, Some(&run), &Device::Cpu, comm)
                    .expect("resume");
            t.fit_until(2, &mut NoProgress)
                .expect("MMCL training, resumed");
            save(&store_tensors(t.model().store()), &out(job));
        }
        "mmcl-die" => {
            let run = dir.join(job);
            let (mut t, _) =
                MmclTrainer::new_in_group(tiny_mmcl_config(&cache, true), &run, &Device::Cpu, comm)
                    .expect("MMCL trainer");
            let mut progress = DieMidEpoch { rank, batches: 0 };
            let _ = t.fit_until(2, &mut progress);
            // Rank 0 reaching this line with its peer gone would be the hang the job's time shows.
            std::thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown job {other}"),
    }
}

fn run_rank(dir: &Path, job: &str) {
    let comm = group_from_launcher().expect("the launcher's group");
    assert_eq!(comm.world_size(), 2, "the jobs run on two ranks");
    train(dir, job, comm);
}

/// Starts `job` on two ranks; its exit status and how long it took.
fn mpirun(dir: &Path, job: &str) -> (std::process::ExitStatus, Duration) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let start = Instant::now();
    let status = mmcl_testutil::mpirun(2)
        // One kernel thread per rank on a 2-core machine.
        .env("RAYON_NUM_THREADS", "1")
        .env(JOB, job)
        .env(DIR, dir)
        .arg(&exe)
        .status()
        .expect("mpirun starts (install OpenMPI: openmpi-bin)");
    (status, start.elapsed())
}

fn run_job(dir: &Path, job: &str) {
    let (status, elapsed) = mpirun(dir, job);
    assert!(status.success(), "the job {job} failed: {status}");
    println!("mpi trainers: {job} on 2 ranks in {elapsed:.1?}");
}

/// Both ranks' weights after `job` are the same bits; rank 0's.
fn agreed_weights(dir: &Path, job: &str) -> Weights {
    let rank0 = load(&weights_file(dir, job, 0));
    assert_bit_equal(&rank0, &load(&weights_file(dir, job, 1)), job);
    rank0
}

fn launch_jobs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    assert_eq!(cohort_cache(dir), dir.join("cache"));
    for job in ["mae-single", "mae-sync-single", "mmcl-single"] {
        train(dir, job, Box::new(SingleProcess));
    }

    for (job, single) in [
        ("mae", "mae-single"),
        ("mae-sync", "mae-sync-single"),
        ("mmcl", "mmcl-single"),
    ] {
        run_job(dir, job);
        let group = agreed_weights(dir, job);
        // Synchronised BatchNorm adds tensors with small gradients, whose rounding Adam
        // amplifies (see `data_parallel.rs`).
        let per_tensor = if job == "mae-sync" { 1e-4 } else { 1e-5 };
        assert_equals_one_process_within(
            &group,
            &load(&weights_file(dir, single, 0)),
            &format!("mpi trainers: {job}, 2 ranks"),
            per_tensor,
        );
        assert!(
            dir.join(job).join("metrics.jsonl").is_file(),
            "{job}: no run log"
        );
        let state = checkpoint::TrainState::read(&checkpoint::last_dir(&dir.join(job)))
            .expect("the group's checkpoint");
        assert_eq!(state.world_size, 2);
    }

    run_job(dir, "mmcl-first-epoch");
    run_job(dir, "mmcl-resume");
    let resumed = agreed_weights(dir, "mmcl-resume");
    assert_bit_equal(
        &resumed,
        &agreed_weights(dir, "mmcl"),
        "MMCL resumed under mpirun",
    );
    println!("mpi trainers: one epoch, then a resumed job: bit-identical to two epochs");

    let (status, elapsed) = mpirun(dir, "mmcl-die");
    mmcl_testutil::assert_dead_rank_ended_job("mpi trainers, MMCL mid-epoch", status, elapsed);
}
