//! Helpers shared by the subcommands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mmcl_ecg::{EcgVit, EcgVitConfig, LoadSummary, Pooling};

/// Parses `cpu`, `cuda` or `cuda:N` into a device ([`mmcl_nn::device::parse_device`]).
pub fn parse_device(spec: &str) -> Result<Device> {
    Ok(mmcl_nn::device::parse_device(spec)?)
}

/// The device and data-parallel group of a training command: `spec` as [`parse_device`]
/// reads it, except that plain `cuda` under a launcher takes the rank's GPU on its node; the
/// group is the launcher's (NCCL for CUDA replicas in an `nccl` + `mpi` build, else MPI), or a
/// group of one.
pub fn training_device_and_group(
    spec: &str,
) -> Result<(Device, Box<dyn mmcl_nn::distributed::GradSync>)> {
    let local_rank = mmcl_nn::distributed::Launch::from_env().and_then(|l| l.local_rank);
    let device = mmcl_nn::device::parse_device_for_rank(spec, local_rank)?;
    let comm = mmcl_nn::distributed::group_from_launcher_on(&device)?;
    Ok((device, comm))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// An ECG encoder loaded for embedding, from however the user named it.
pub struct LoadedEncoder {
    /// The model.
    pub model: EcgVit,
    /// Its configuration.
    pub config: EcgVitConfig,
    /// The pooling used.
    pub pooling: Pooling,
    /// What loading did (file, layout, keys ignored).
    pub summary: LoadSummary,
}

/// Loads the ECG encoder named by `encoder` — a run directory, a checkpoint directory or a file
/// ([`mmcl_train::checkpoint::find_ecg_encoder`]) — with the configuration in `config` or, when
/// that is `None`, the one the export carries; `pooling` overrides the configuration's.
pub fn load_ecg_encoder(
    encoder: &Path,
    config: Option<&Path>,
    pooling: Option<&str>,
    device: &Device,
) -> Result<LoadedEncoder> {
    let file = mmcl_train::checkpoint::find_ecg_encoder(encoder)?;
    let (mut cfg, cfg_source) = match config {
        Some(path) => (EcgVitConfig::from_file(path)?, path.to_path_buf()),
        None => match EcgVitConfig::from_export(&file)? {
            Some(cfg) => (cfg, file.clone()),
            None => bail!(
                "{}: the encoder carries no configuration (a PyTorch checkpoint, or an export \
                 of an older version): pass --config with its JSON configuration",
                file.display()
            ),
        },
    };
    // Embedding is inference: no stochastic depth, and the head (if any) is not used.
    cfg.drop_path_rate = 0.0;
    let pooling: Pooling = match pooling {
        Some(p) => p.parse()?,
        None => cfg.pooling(),
    };
    check_pooling(&cfg, pooling, &cfg_source)?;
    let (model, _store, summary) = EcgVit::from_checkpoint(&cfg, &file, pooling, device)?;
    Ok(LoadedEncoder {
        model,
        config: cfg,
        pooling,
        summary,
    })
}

/// Refuses a pooling the configured encoder has no layers for, naming the configuration's file.
fn check_pooling(cfg: &EcgVitConfig, pooling: Pooling, source: &Path) -> Result<()> {
    let missing = match pooling {
        Pooling::Global if !cfg.has_fc_norm() => Some("\"global_pool\": true"),
        Pooling::Attention if !cfg.attention_pool => Some("\"attention_pool\": true"),
        _ => None,
    };
    if let Some(setting) = missing {
        bail!(
            "{}: {pooling} pooling needs an encoder configured with {setting}",
            source.display()
        );
    }
    Ok(())
}

/// The leads an encoder taking `leads` leads reads from a 12-lead recording, as canonical
/// indices and names: `names` if given (its count must match), else all 12, or the eight
/// independent leads (I, II, V1–V6, what the reduced reproduction trains on; said on stderr).
/// `setting` names the option in messages.
pub fn encoder_leads(
    names: Option<&[String]>,
    leads: usize,
    setting: &str,
) -> Result<(Vec<usize>, Vec<String>)> {
    let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let names = match names {
        Some(names) => names.to_vec(),
        None if leads == mmcl_data::ecg::NUM_LEADS => owned(&mmcl_data::ecg::LEADS),
        None if leads == mmcl_data::ecg::INDEPENDENT_LEADS.len() => {
            let names = owned(&mmcl_data::ecg::INDEPENDENT_LEADS);
            eprintln!(
                "the encoder takes 8 leads: feeding {} (set {setting} if it was trained on others)",
                names.join(", ")
            );
            names
        }
        None => bail!(
            "the encoder takes {leads} leads: name them, in its input's order, with {setting} \
             (e.g. I,II,V1,V2)"
        ),
    };
    let selection = mmcl_data::ecg::lead_selection(Some(&names))
        .map_err(|reason| anyhow::anyhow!("{setting}: {reason}"))?;
    if selection.len() != leads {
        bail!(
            "{setting} names {} leads, the encoder takes {leads}",
            selection.len()
        );
    }
    let canonical = selection
        .iter()
        .map(|&i| mmcl_data::ecg::LEADS[i].to_string())
        .collect();
    Ok((selection, canonical))
}

/// The output of a configuration-driven command: `--output` (`flag`) when given, else the
/// `output` of the configuration read from `config_path`; `what` names it in the error (e.g.
/// "output directory").
pub fn configured_output(
    flag: Option<PathBuf>,
    configured: Option<&Path>,
    config_path: &Path,
    what: &str,
) -> Result<PathBuf> {
    match (flag, configured) {
        (Some(o), _) => Ok(o),
        (None, Some(o)) => Ok(o.to_path_buf()),
        (None, None) => bail!(
            "{}: no {what} (set `output` or pass --output)",
            config_path.display()
        ),
    }
}

/// A folder of outputs written whole: its files go into a temporary sibling, which takes the
/// folder's place only when [`commit`](Self::commit) is called; dropped before that, it is
/// removed, so a failed command leaves no partial folder.
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Starts the folder `target`, refusing one that exists and is not empty unless
    /// `overwrite` (then it is replaced whole on commit, so no stale file survives).
    pub fn begin(target: &Path, overwrite: bool) -> Result<Self> {
        if target.exists() {
            if !target.is_dir() {
                bail!("{} exists and is not a folder", target.display());
            }
            let empty = std::fs::read_dir(target)
                .with_context(|| format!("cannot read {}", target.display()))?
                .next()
                .is_none();
            if !empty && !overwrite {
                bail!(
                    "{} exists and is not empty; choose another output or pass --overwrite",
                    target.display()
                );
            }
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let staging = mmcl_nn::io::temporary_sibling(target);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot remove {}", staging.display()))?;
        }
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where the files go until the commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the finished folder into place (replacing an existing one).
    pub fn commit(mut self) -> Result<()> {
        if self.target.exists() {
            let trash = self.staging.with_extension("old");
            std::fs::rename(&self.target, &trash)
                .with_context(|| format!("cannot replace {}", self.target.display()))?;
            let moved = std::fs::rename(&self.staging, &self.target);
            if let Err(e) = moved {
                let _ = std::fs::rename(&trash, &self.target);
                return Err(e).with_context(|| format!("cannot write {}", self.target.display()));
            }
            std::fs::remove_dir_all(&trash)
                .with_context(|| format!("cannot remove the old {}", self.target.display()))?;
        } else {
            std::fs::rename(&self.staging, &self.target)
                .with_context(|| format!("cannot write {}", self.target.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// What a command writes at its output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A file, or files written into a folder beside what it holds: it must not be an input.
    File,
    /// A folder the command creates or replaces whole: it must neither be nor contain an input.
    Directory,
}

/// Refuses to write `output` when that would destroy one of `inputs`: when it is the same file
/// or folder (after `.`/`..`, symlinks and hard links are resolved), or, for a
/// [`OutputKind::Directory`], when an input lies inside it. Inputs that do not exist are
/// skipped (their readers report them). Called before anything is written.
pub fn ensure_output_not_input(output: &Path, kind: OutputKind, inputs: &[&Path]) -> Result<()> {
    let resolved = resolve(output)?;
    for &input in inputs {
        let Ok(input_resolved) = input.canonicalize() else {
            continue;
        };
        if resolved == input_resolved || same_file(output, input) {
            bail!(
                "refusing to write {}: it is the input {}",
                output.display(),
                input.display()
            );
        }
        if kind == OutputKind::Directory && input_resolved.starts_with(&resolved) {
            bail!(
                "refusing to write {}: it contains the input {} (a run replaces the folder)",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// The absolute, symlink-free form of `path`, which need not exist yet: its longest existing
/// ancestor canonicalised, followed by the components that do not exist.
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(mut found) = existing.canonicalize() {
            found.extend(missing.iter().rev());
            return Ok(found);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            // `..` after a missing folder, or the root: nothing to resolve against.
            _ => return Ok(absolute),
        }
    }
}

/// Whether `a` and `b` are the same existing file (hard links included).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether `a` and `b` are the same existing file (resolved paths are compared elsewhere).
#[cfg(not(unix))]
fn same_file(_a: &Path, _b: &Path) -> bool {
    false
}

/// Refuses to train when a launcher (`mpirun`, `mpiexec`) started this process as one of
/// several, for the commands whose trainers do not synchronise replicas (every process would
/// train alone on the whole data and write the same run directory): the reproduction.
/// `pretrain-mae`, `pretrain-mmcl` and `finetune` train data-parallel and do not call this.
pub fn one_training_process() -> Result<()> {
    match mmcl_nn::distributed::Launch::from_env() {
        Some(launch) if launch.world_size > 1 => bail!(
            "this process is rank {} of {} (from {}), but this command does not train \
             data-parallel (pretrain-mae, pretrain-mmcl and finetune do; see \
             docs/distributed.md): start a single process",
            launch.rank,
            launch.world_size,
            launch.source
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_inputs_are_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("x.npy");
        std::fs::write(&input, b"data")?;
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub)?;
        let file = OutputKind::File;
        assert!(ensure_output_not_input(&input, file, &[&input]).is_err());
        let dotted = dir.path().join(".").join("sub").join("..").join("x.npy");
        assert!(ensure_output_not_input(&dotted, file, &[&input]).is_err());
        let hard = dir.path().join("hard.npy");
        std::fs::hard_link(&input, &hard)?;
        assert!(ensure_output_not_input(&hard, file, &[&input]).is_err());
        let new = sub.join("missing").join("y.npy");
        assert!(ensure_output_not_input(&new, file, &[&input]).is_ok());
        assert!(ensure_output_not_input(&sub, file, &[&input]).is_ok());
        let folder = OutputKind::Directory;
        let err = ensure_output_not_input(dir.path(), folder, &[&input]);
        assert!(err.is_err_and(|e| e.to_string().contains("contains the input")));
        assert!(ensure_output_not_input(&sub, folder, &[dir.path()]).is_ok());
        assert!(ensure_output_not_input(&sub, folder, &[&sub]).is_err());
        assert!(ensure_output_not_input(&input, file, &[&dir.path().join("gone")]).is_ok());
        Ok(())
    }

    #[test]
    fn devices_parse() {
        assert!(parse_device("cpu").is_ok_and(|d| d.is_cpu()));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
