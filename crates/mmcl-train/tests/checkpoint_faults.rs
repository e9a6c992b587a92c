//! Crash safety of checkpoint rotation: the writer is stopped after every step of its protocol
//! (as if the process had been killed there), then a resumed run's write is stopped after every
//! step too; at each point a complete checkpoint must be found, and the next write must clean up.
//! Also: damaged or hostile checkpoint directories are refused with an error naming the file,
//! and written files follow the umask.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mmcl_nn::StateDict;
use mmcl_nn::schedule::WarmupCosine;
use mmcl_train::Error;
use mmcl_train::checkpoint::{
    self, CHECKPOINT_VERSION, COMPLETE_FILE, CheckpointFile, MODEL_FILE, OPTIMIZER_FILE,
    STATE_FILE, TrainState, TrainerKind,
};

fn state(epoch: usize) -> TrainState {
    TrainState {
        version: CHECKPOINT_VERSION,
        kind: TrainerKind::Mae,
        epoch,
        step: epoch as u64 * 10,
        schedule: WarmupCosine::per_epoch(1e-3, 1, 10),
        lr: 1e-3,
        rng: mmcl_nn::rng::SplitMix64::new(5).state(),
        data_seed: 1,
        best_val_loss: None,
        config: serde_json::json!({"epochs": 10}),
        image_channels: None,
        world_size: 1,
    }
}

/// The files of epoch `epoch`: weights holding the epoch, an optimiser state counting it.
fn files(epoch: usize) -> Vec<(&'static str, CheckpointFile)> {
    let mut model = StateDict::default();
    let w = Tensor::new(&[epoch as f32; 4], &Device::Cpu).expect("tensor");
    model.insert("w", w.clone());
    let mut optimizer = CheckpointFile::new(StateDict::default());
    optimizer.tensors.insert("exp_avg.w", w);
    optimizer
        .metadata
        .insert("steps".into(), (epoch * 10).to_string());
    vec![
        (MODEL_FILE, CheckpointFile::new(model)),
        (OPTIMIZER_FILE, optimizer),
    ]
}

fn write(dir: &Path, epoch: usize) {
    checkpoint::write_checkpoint(dir, &files(epoch), &state(epoch)).expect("write");
}

/// Writes epoch `epoch` but stops after step `k` (0-based); returns the step it stopped after.
fn write_stopped_after(dir: &Path, epoch: usize, k: usize) -> Option<String> {
    let mut n = 0;
    let mut last_step = String::new();
    let result =
        checkpoint::write_checkpoint_with_faults(dir, &files(epoch), &state(epoch), &mut |step| {
            n += 1;
            last_step = step.to_string();
            n == k + 1
        });
    match result {
        Ok(()) => None,
        Err(Error::Checkpoint { path, reason }) => {
            assert_eq!(path, dir, "{reason}");
            assert!(reason.contains(&last_step), "{reason}");
            Some(last_step)
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The epoch of the checkpoint resume finds in `run`, checking that all its files belong to it.
fn found_epoch(run: &Path) -> usize {
    let dir = checkpoint::find_checkpoint(run).unwrap_or_else(|e| panic!("no checkpoint: {e}"));
    let epoch = TrainState::read(&dir).expect("state").epoch;
    let w = checkpoint::read_file(&dir, MODEL_FILE).expect("model");
    let values: Vec<f32> = w.get("w").expect("w").to_vec1().expect("values");
    assert_eq!(values, vec![epoch as f32; 4], "{}", dir.display());
    let steps = checkpoint::optimizer_steps(&dir, OPTIMIZER_FILE).expect("steps");
    assert_eq!(steps, epoch as u64 * 10, "{}", dir.display());
    epoch
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A run whose `last` holds epoch 1, written by this version or (`legacy`) by one without seals.
fn first_run(root: &Path, legacy: bool) -> PathBuf {
    let run = root.to_path_buf();
    let last = checkpoint::last_dir(&run);
    write(&last, 1);
    if legacy {
        fs::remove_file(last.join(COMPLETE_FILE)).expect("unseal");
    }
    run
}

/// A scratch directory for the many small writes of the fault loop: in memory where `/dev/shm`
/// exists, where the writer's syncs cost nothing (the protocol's steps are the same).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tmp")
}

#[test]
fn every_single_and_double_kill_leaves_a_complete_checkpoint() {
    for legacy in [false, true] {
        let mut previous_epoch = 1;
        let mut k = 0;
        loop {
            let tmp = scratch();
            let run = first_run(&tmp.path().join("run"), legacy);
            let last = checkpoint::last_dir(&run);
            // The first run is killed after step k of writing epoch 2.
            let Some(step) = write_stopped_after(&last, 2, k) else {
                assert!(k >= 10, "only {k} steps");
                assert_eq!(found_epoch(&run), 2);
                break;
            };
            let epoch = found_epoch(&run);
            eprintln!("legacy={legacy} killed after {k}: {step} -> epoch {epoch} found");
            assert!(epoch == 1 || epoch == 2, "after {step}: epoch {epoch}");
            // Once the new checkpoint is found, resume never goes back to the old one.
            assert!(epoch >= previous_epoch, "after {step}: epoch {epoch}");
            previous_epoch = epoch;

            // The resumed run (same state), killed after step j of writing epoch 3.
            let mut j = 0;
            loop {
                let tmp2 = scratch();
                let run = first_run(&tmp2.path().join("run"), legacy);
                let last = checkpoint::last_dir(&run);
                assert!(write_stopped_after(&last, 2, k).is_some());
                let before = found_epoch(&run);
                let stopped = write_stopped_after(&last, 3, j);
                let after = found_epoch(&run);
                assert!(
                    after == before || after == 3,
                    "after {step} then {stopped:?}: epoch {after} after {before}"
                );
                // A third run completes and leaves nothing else behind.
                write(&last, 4);
                assert_eq!(found_epoch(&run), 4);
                assert_eq!(checkpoint::find_checkpoint(&run).expect("find"), last);
                assert_eq!(
                    entries(&checkpoint::checkpoints_dir(&run)),
                    vec!["last".to_string()],
                    "after {step} then {stopped:?}"
                );
                if stopped.is_none() {
                    break;
                }
                j += 1;
            }
            k += 1;
        }
    }
}

#[test]
fn stale_temporaries_of_gone_processes_are_removed_live_ones_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ckpts = checkpoint::checkpoints_dir(tmp.path());
    // Pids above the kernel's limit (2^22) never exist.
    let dead = ckpts.join(".last.tmp-999999999");
    fs::create_dir_all(&dead).expect("mkdir");
    fs::write(dead.join(MODEL_FILE), vec![0u8; 4096]).expect("junk");
    fs::create_dir_all(ckpts.join(".best.trash-999999998").join("x")).expect("mkdir");
    fs::write(ckpts.join(".epoch-0001.tmp-999999997"), b"junk").expect("junk");
    // Not a temporary of ours: kept.
    fs::create_dir_all(ckpts.join(".last.tmp-abc")).expect("mkdir");
    // A live process's temporary (pid 1 always runs): kept.
    let live = ckpts.join(".last.tmp-1");
    fs::create_dir_all(&live).expect("mkdir");
    write(&checkpoint::last_dir(tmp.path()), 1);
    let mut expected = vec![".last.tmp-abc".to_string(), "last".to_string()];
    if Path::new("/proc/1").exists() {
        expected.insert(0, ".last.tmp-1".to_string());
    }
    expected.sort();
    assert_eq!(entries(&ckpts), expected);
}

/// Asserts a typed checkpoint, I/O, JSON or format error whose message names `file`.
fn assert_names(result: mmcl_train::Result<impl std::fmt::Debug>, file: &Path) {
    let err = result.expect_err("must be refused");
    assert!(
        matches!(
            err,
            Error::Checkpoint { .. }
                | Error::Core(
                    mmcl_core::Error::Io { .. }
                        | mmcl_core::Error::Json { .. }
                        | mmcl_core::Error::Format { .. }
                )
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()),
        "{message} does not name {}",
        file.display()
    );
}

#[test]
fn incomplete_and_hostile_checkpoints_are_never_chosen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let ckpts = checkpoint::checkpoints_dir(&run);
    let last = checkpoint::last_dir(&run);
    let previous = ckpts.join("last.previous");

    // An older version's half-deleted `last.previous` (no seal, files missing), no `last`.
    write(&previous, 1);
    fs::remove_file(previous.join(COMPLETE_FILE)).expect("unseal");
    fs::remove_file(previous.join(MODEL_FILE)).expect("delete");
    assert_names(checkpoint::find_checkpoint(&run), &previous);

    // A sealed `last` with a truncated model: the complete `last.previous` is chosen instead.
    write(&previous, 1);
    write(&ckpts.join("staging"), 2);
    fs::rename(ckpts.join("staging"), &last).expect("rename");
    let model = last.join(MODEL_FILE);
    let len = fs::metadata(&model).expect("meta").len();
    fs::File::options()
        .write(true)
        .open(&model)
        .and_then(|f| f.set_len(len - 4))
        .expect("truncate");
    assert_eq!(checkpoint::find_checkpoint(&run).expect("find"), previous);
    assert_names(checkpoint::find_checkpoint(&last), &model);
    fs::remove_dir_all(&previous).expect("rm");
    assert_names(checkpoint::find_checkpoint(&run), &model);

    // A seal pointing outside the directory.
    let seal = last.join(COMPLETE_FILE);
    fs::write(
        &seal,
        br#"{"files": {"state.json": 1, "../../etc/passwd": 1}}"#,
    )
    .expect("seal");
    assert_names(checkpoint::find_checkpoint(&last), &seal);
    // A seal of 1 GiB (sparse): refused before it is read.
    fs::File::create(&seal)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse");
    assert_names(checkpoint::find_checkpoint(&last), &seal);
    // A state.json of 1 TiB (sparse): refused before it is read.
    fs::remove_file(&seal).expect("rm");
    let state_path = last.join(STATE_FILE);
    fs::File::create(&state_path)
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse");
    assert_names(TrainState::read(&last), &state_path);
    assert_names(checkpoint::find_checkpoint(&last), &state_path);

    // An optimiser header claiming 2^62 bytes: refused without allocating them.
    let optimizer = last.join(OPTIMIZER_FILE);
    let mut bytes = (1u64 << 62).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&optimizer, bytes).expect("write");
    assert_names(
        checkpoint::optimizer_steps(&last, OPTIMIZER_FILE),
        &optimizer,
    );
    fs::write(&optimizer, b"abc").expect("write");
    assert_names(
        checkpoint::optimizer_steps(&last, OPTIMIZER_FILE),
        &optimizer,
    );

    // The next write replaces the broken `last` and leaves only itself.
    write(&last, 3);
    assert_eq!(found_epoch(&run), 3);
    assert_eq!(entries(&ckpts), vec!["last".to_string()]);
}

#[test]
fn a_legacy_last_without_seal_is_still_resumed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = first_run(tmp.path(), true);
    assert_eq!(found_epoch(&run), 1);
    write(&checkpoint::last_dir(&run), 2);
    assert_eq!(found_epoch(&run), 2);
    assert!(checkpoint::last_dir(&run).join(COMPLETE_FILE).is_file());
}

#[cfg(unix)]
#[test]
fn checkpoint_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let Some(expected) = mmcl_nn::io::default_file_mode() else {
        eprintln!("the umask cannot be read here; skipped");
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let last = checkpoint::last_dir(tmp.path());
    write(&last, 1);
    for file in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, COMPLETE_FILE] {
        let mode = fs::metadata(last.join(file))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, expected, "{file}: {mode:o}");
        if expected == 0o644 {
            // Under umask 022 colleagues can read checkpoints (tempfile's 0600 would not do).
            assert_ne!(mode & 0o044, 0, "{file}: {mode:o}");
        }
    }
    let dir_mode = fs::metadata(&last).expect("meta").permissions().mode() & 0o777;
    if expected == 0o644 {
        assert_eq!(dir_mode, 0o755, "{dir_mode:o}");
    }
}
