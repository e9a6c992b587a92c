//! The run's Markdown report (`report.md`) and the closing lines for the terminal.
//!
//! The report is not an `mmcl_eval::report::Report`: that one renders one `Evaluation` (one
//! task, its metric columns, `(lo–hi)` intervals) under fixed sections, while this one puts
//! five encoders side by side in the paper's layout ([`Results::markdown_tables`], `[lo, hi]`
//! intervals), with the claim, the curves, the localisation maps and the run time; rendering it
//! through `Report` would change its text.

use super::{Outputs, StageTiming};
use crate::config::ReproduceConfig;
use crate::results::Results;

/// The Markdown report.
pub(super) fn report_markdown(
    cfg: &ReproduceConfig,
    results: &Results,
    timings: &[StageTiming],
    curves: &[(String, String)],
    maps: &[(u64, f64, [String; 3])],
) -> String {
    let mut md = String::new();
    md.push_str("# Reproduction: ECG–CMR multimodal contrastive learning\n\n");
    md.push_str(&format!(
        "Synthetic cohort of {} subjects ({} train / {} val / {} test fractions), ECG encoder \
         `{}` on {:?} with patches {:?} at {} Hz, image encoder `{:?}` at {} px. MAE: {} \
         epochs; MMCL: {} epochs, batch {}, τ {}. Linear probes on frozen embeddings of the \
         test split's ECGs (CMR: of its images), {} bootstrap resamples for the {:.0} % \
         intervals.\n\n",
        cfg.cohort.subjects,
        cfg.data.split.train,
        cfg.data.split.val,
        cfg.data.split.test,
        cfg.mmcl.ecg.model,
        cfg.mmcl.ecg.input_size,
        cfg.mmcl.ecg.patch_size,
        cfg.data.ecg_sample_rate,
        cfg.mmcl.imaging.model,
        cfg.mmcl.imaging.img_size,
        cfg.mae.max_epochs,
        cfg.mmcl.max_epochs,
        cfg.mmcl.batch_size,
        cfg.mmcl.temperature,
        cfg.evaluation.bootstrap,
        cfg.evaluation.confidence * 100.0,
    ));
    md.push_str(&format!("**Claim**: {}.\n\n", results.claim()));
    md.push_str("## Disease detection (AUROC) and phenotype regression (R²)\n\n");
    md.push_str(&results.markdown_tables());
    md.push_str("\n## Training curves\n\n");
    for (caption, file) in curves {
        md.push_str(&format!("![{caption}]({file})\n\n"));
    }
    if !maps.is_empty() {
        md.push_str(
            "## Localisation (MAE + MMCL model)\n\nECG patch importance = cosine similarity of \
             each projected patch token to the subject's CMR embedding / τ; CMR region \
             importance likewise against the ECG embedding; class-token attention of the last \
             ECG block.\n\n",
        );
        for (eid, sim, files) in maps {
            md.push_str(&format!(
                "### Subject {eid} (global similarity / τ = {sim:.2})\n\n![ECG importance]({})\n\n\
                 ![ECG attention]({})\n\n![CMR importance]({})\n\n",
                files[0], files[1], files[2]
            ));
        }
    }
    md.push_str("## Run time\n\n| stage | wall (s) | CPU (s) | |\n|---|---|---|---|\n");
    for t in timings {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} |\n",
            t.name,
            t.wall_s,
            t.cpu_s.map_or("–".into(), |c| format!("{c:.1}")),
            if t.reused { "reused" } else { "" }
        ));
    }
    let (wall, cpu) = totals(timings);
    md.push_str(&format!("| total | {wall:.1} | {cpu:.1} | |\n\n"));
    md.push_str(
        "The full configuration is in `config.toml` and under `config` in `results.json`.\n",
    );
    md
}

/// A few lines for the terminal at the end of a run: where the outputs are, the tables, the
/// claim and the run time.
pub fn summary(outputs: &Outputs) -> String {
    let (wall, cpu) = totals(&outputs.timings);
    format!(
        "{}\n{}\n\nresults: {}\nreport:  {}\nfigures: {}\nrun time: {wall:.0} s wall, {cpu:.0} s CPU",
        outputs.results.markdown_tables(),
        outputs.results.claim(),
        outputs.layout.results().display(),
        outputs.layout.report().display(),
        outputs.layout.figures().display(),
    )
}

/// Wall-clock and CPU seconds summed over `timings` (a stage without CPU time counts 0).
fn totals(timings: &[StageTiming]) -> (f64, f64) {
    timings.iter().fold((0.0, 0.0), |(w, c), t| {
        (w + t.wall_s, c + t.cpu_s.unwrap_or(0.0))
    })
}
