//! The run's Markdown report (`report.md`) and the closing lines for the terminal.
//!
//! The report is not an `mmcl_eval::report::Report`: that one renders one `Evaluation` (one
//! task, its metric columns, `(lo–hi)` intervals) under fixed sections, while this one puts
//! five encoders side by side in the paper's layout ([`Results::markdown_tables`], `[lo, hi]`
//! intervals), with the claim, the curves, the localisation maps and the run time; rendering it
//! through `Report` would change its text.

use super::{Outputs, StageTiming};
use crate::config::ReproduceConfig;
use crate::results::EncoderComparison;
use crate::results::comparisons::{
    COMPARED_PAIRS, find_comparison, format_difference, short_label,
};
use crate::results::{Results, markdown_comparisons};

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
    md.push_str(&checks_markdown(results));
    md.push_str("## Disease detection (AUROC) and phenotype regression (R²)\n\n");
    md.push_str(&results.markdown_tables());
    if !results.comparisons.is_empty() {
        md.push_str(
            "\n## Paired comparisons\n\nDifferences of the test metrics (first encoder minus \
             second), each resample scoring both encoders on the same drawn subjects; an \
             interval above zero means the first encoder is better beyond the sampling error \
             of the test split.\n\n",
        );
        md.push_str(&markdown_comparisons(&results.comparisons));
    }
    md.push_str(&seeds_markdown(results));
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

/// The learnability ceiling and the negative control, as sentences.
fn checks_markdown(results: &Results) -> String {
    let mut md = String::new();
    let enc = &results.encoders;
    if let Some(features) = &enc.ecg_features {
        let ceiling = features.phenotypes.mean_r2;
        let reached = enc.mae_mmcl.phenotypes.mean_r2;
        md.push_str(&format!(
            "**Learnability ceiling**: hand-made features of the same ECG input reach a mean \
             phenotype R² of {ceiling:.3} under the same probes; MAE + MMCL reaches {reached:.3}{}.\n\n",
            if ceiling > 0.0 {
                format!(" ({:.0} % of it)", 100.0 * reached / ceiling)
            } else {
                String::new()
            }
        ));
    }
    if let Some(control) = &results.negative_control {
        let values: Vec<String> = ["random_init", "mae", "mmcl", "mae_mmcl"]
            .iter()
            .filter_map(|k| {
                let r = enc.get(k)?.phenotypes.get(control)?;
                Some(format!("{} {:.3}", short_label(k), r.r2))
            })
            .collect();
        md.push_str(&format!(
            "**Negative control** (`{control}`, which the cohort keeps out of the ECG; every ECG \
             encoder should stay near R² 0): {}.\n\n",
            values.join(", ")
        ));
    }
    md
}

/// Every training seed's mean phenotype R² per ECG encoder and the paired MAE + MMCL − MAE
/// difference, with the mean and standard deviation over the seeds; empty for a single run.
fn seeds_markdown(results: &Results) -> String {
    if results.seeds.is_empty() {
        return String::new();
    }
    let keys = ["random_init", "mae", "mmcl", "mae_mmcl"];
    let mut md = String::from(
        "\n## Training seeds\n\nThe training stages repeated per seed on the same cohort and \
         cache (the figures below are the first seed's).\n\n| seed |",
    );
    for k in keys {
        md.push_str(&format!(" {} mean R² |", short_label(k)));
    }
    md.push_str(" MAE + MMCL − MAE, mean R² (paired) | diseases above zero |\n|---|");
    md.push_str(&"---|".repeat(keys.len() + 2));
    md.push('\n');
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); keys.len() + 1];
    for s in &results.seeds {
        md.push_str(&format!("| {} |", s.seed));
        for (j, k) in keys.iter().enumerate() {
            let v = s.encoders.get(k).map_or(f64::NAN, |e| e.phenotypes.mean_r2);
            columns[j].push(v);
            md.push_str(&format!(" {v:.3} |"));
        }
        let c = find_comparison(&s.comparisons, COMPARED_PAIRS[0].0);
        let d = c.and_then(EncoderComparison::mean_r2);
        if let Some(d) = d {
            columns[keys.len()].push(d.diff);
        }
        md.push_str(&format!(
            " {} | {} |\n",
            format_difference(d),
            c.map_or("–".into(), |c| {
                let above = c.diseases_above_zero();
                if above.is_empty() {
                    "none".into()
                } else {
                    above.join(", ")
                }
            })
        ));
    }
    let spread = |v: &[f64]| {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        format!("{mean:.3} ± {sd:.3}")
    };
    md.push_str("| mean ± sd |");
    for c in &columns {
        md.push_str(&format!(
            " {} |",
            if c.is_empty() {
                "–".into()
            } else {
                spread(c)
            }
        ));
    }
    md.push_str(" |\n");
    md
}

/// A few lines for the terminal at the end of a run: where the outputs are, the tables, the
/// claim and the run time.
pub fn summary(outputs: &Outputs) -> String {
    let (wall, cpu) = totals(&outputs.timings);
    format!(
        "{}\n{}{}\n\nresults: {}\nreport:  {}\nfigures: {}\nrun time: {wall:.0} s wall, {cpu:.0} s CPU",
        outputs.results.markdown_tables(),
        checks_markdown(&outputs.results),
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
