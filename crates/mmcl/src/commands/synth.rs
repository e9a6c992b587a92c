//! `mmcl synth`: generate the synthetic paired ECG–CMR cohort in UK Biobank layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmcl_synth::{Cohort, SynthConfig, WriteOptions};

use super::common::{OutputKind, ensure_output_not_input};

/// Arguments of `mmcl synth`. Values not given come from `--config`, else from the defaults.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder; it must not exist or be empty unless --overwrite is given.
    #[arg(long, alias = "out")]
    output: PathBuf,
    /// Number of subjects [default: 1000].
    #[arg(long)]
    subjects: Option<usize>,
    /// Seed of the cohort [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// In-plane CMR matrix size in pixels [default: 128].
    #[arg(long)]
    image_size: Option<usize>,
    /// CMR frames over the cardiac cycle [default: 25].
    #[arg(long)]
    frames: Option<usize>,
    /// CMR short-axis slices, base to apex [default: 10].
    #[arg(long)]
    slices: Option<usize>,
    /// CMR in-plane field of view in mm; pixel size = fov / image size [default: 230].
    #[arg(long)]
    fov_mm: Option<f64>,
    /// The first eid; the others follow consecutively [default: 1000001].
    #[arg(long)]
    first_eid: Option<u64>,
    /// gzip level of the NIfTI files (and deflate level of the DICOM zips), 0-9 [default: 1].
    #[arg(long)]
    compression: Option<u32>,
    /// How the short-axis cine is written: `nifti` (`cmr/<eid>/sa.nii.gz`) or `dicom` (UK
    /// Biobank's `cmr/<eid>/<eid>_20209_2_0.zip` of DICOM files); the segmentation is NIfTI
    /// either way [default: nifti].
    #[arg(long, value_parser = ["nifti", "dicom"])]
    cmr_format: Option<String>,
    /// Start from a preset: `default` (128-px cine, 10 slices x 25 frames, 230 mm) or
    /// `reproduce` (64 px, 8 x 8, 160 mm; same subjects and ECGs) [default: default].
    #[arg(long, value_parser = ["default", "reproduce"], conflicts_with = "config")]
    preset: Option<String>,
    /// A JSON configuration (as written to synth_config.json); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Replace an existing output folder once the new cohort is complete.
    #[arg(long)]
    overwrite: bool,
    /// No progress bar or summary.
    #[arg(long)]
    quiet: bool,
}

/// Resolves the configuration: file, then flags.
fn config(args: &Args) -> Result<SynthConfig> {
    let mut cfg = match (&args.config, args.preset.as_deref()) {
        (Some(path), _) => SynthConfig::from_json_file(path)?,
        (None, Some("reproduce")) => SynthConfig::reproduce(),
        (None, _) => SynthConfig::default(),
    };
    if let Some(v) = args.subjects {
        cfg.subjects = v;
    }
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.first_eid {
        cfg.first_eid = v;
    }
    if let Some(v) = args.image_size {
        cfg.cmr.image_size = v;
    }
    if let Some(v) = args.frames {
        cfg.cmr.frames = v;
    }
    if let Some(v) = args.slices {
        cfg.cmr.slices = v;
    }
    if let Some(v) = args.fov_mm {
        cfg.cmr.fov_mm = v;
    }
    if let Some(v) = args.compression {
        cfg.cmr.compression = v;
    }
    if let Some(v) = &args.cmr_format {
        cfg.cmr_format = v.parse()?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Generates the cohort.
pub fn run(args: Args) -> Result<()> {
    let cfg = config(&args)?;
    let inputs: Vec<&Path> = args.config.iter().map(PathBuf::as_path).collect();
    ensure_output_not_input(&args.output, OutputKind::Directory, &inputs)?;
    let cohort = Cohort::new(cfg)?;
    let n = cohort.config().subjects;
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        anyhow::ensure!(t >= 1, "--threads must be at least 1");
        pool = pool.num_threads(t);
    }
    let pool = pool.build().context("cannot start the worker threads")?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} subjects ({per_sec}, eta {eta})",
        )
        .context("bad progress template")?
        .progress_chars("=> "),
    );
    if !args.quiet {
        // Noisy int16 cines gzip to about 1.5 bytes per voxel; an ECG file is about 240 kB.
        let bytes = n as f64 * (cohort.config().cmr.voxels() as f64 * 1.55 + 240e3);
        let size = if bytes >= 1e9 {
            format!("{:.1} GB", bytes / 1e9)
        } else {
            format!("{:.0} MB", bytes / 1e6)
        };
        eprintln!(
            "generating {n} subjects into {} (about {size})",
            args.output.display()
        );
    }
    let options = WriteOptions {
        overwrite: args.overwrite,
    };
    let summary = pool
        .install(|| cohort.write(&args.output, options, &|| bar.inc(1)))
        .with_context(|| format!("cannot generate the cohort in {}", args.output.display()))?;
    bar.finish_and_clear();
    if !args.quiet {
        let count = |f: &dyn Fn(&mmcl_synth::SubjectRecord) -> bool| {
            summary.records.iter().filter(|r| f(r)).count()
        };
        eprintln!(
            "wrote {} subjects to {} in {:.1} s ({:.2} subjects/s, {} threads)",
            n,
            summary.out.display(),
            summary.seconds,
            n as f64 / summary.seconds.max(1e-9),
            pool.current_num_threads()
        );
        eprintln!(
            "conditions: CAD {}, AF {}, LVH {}, diabetes {}, hypertension {} (see README.md)",
            count(&|r| r.state.conditions.cad),
            count(&|r| r.state.conditions.af),
            count(&|r| r.state.conditions.lvh),
            count(&|r| r.state.conditions.diabetes),
            count(&|r| r.state.conditions.hypertension),
        );
    }
    Ok(())
}
