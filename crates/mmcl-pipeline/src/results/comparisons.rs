//! The paired comparisons of `results.json`: for each pair of ECG encoders, the difference of
//! every metric with its paired bootstrap interval ([`mmcl_eval::paired`]).
//!
//! ```json
//! "comparisons": {"mae_mmcl_vs_mae": {"phenotypes": {"mean_r2": D, "<name>": D, …},
//!                                     "diseases": {"<name>": D, …}},
//!                 "mmcl_vs_random": {…}, "mae_vs_random": {…}}
//! ```
//!
//! where `D` is `{"diff": x, "ci_low": x, "ci_high": x}` (first encoder minus second) or `null`
//! where the metric is undefined for either encoder.

use mmcl_eval::paired::{Difference, PairedComparison};
use serde::{Deserialize, Serialize};

use super::{by_name, names, ordered_map, table_header};

/// The pairs compared, `(key, first encoder, second encoder)`: the paper's claim first, then
/// what each pre-training adds to a random encoder.
pub const COMPARED_PAIRS: [(&str, &str, &str); 3] = [
    ("mae_mmcl_vs_mae", "mae_mmcl", "mae"),
    ("mmcl_vs_random", "mmcl", "random_init"),
    ("mae_vs_random", "mae", "random_init"),
];

/// The key of the phenotype block's mean-R² entry.
pub const MEAN_R2: &str = "mean_r2";

/// One pair of encoders compared: differences of R² per phenotype (and of their mean, first,
/// under [`MEAN_R2`]) and of AUROC per disease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderComparison {
    /// `mean_r2` first, then each phenotype in the cache's order.
    #[serde(with = "ordered_map")]
    pub phenotypes: Vec<(String, Option<Difference>)>,
    /// Each disease in the configuration's order.
    #[serde(with = "ordered_map")]
    pub diseases: Vec<(String, Option<Difference>)>,
}

impl EncoderComparison {
    /// Builds the block from the paired comparisons of the phenotype R² and the disease AUROC.
    pub fn new(phenotypes: &PairedComparison, diseases: &PairedComparison) -> Self {
        let mut p = vec![(MEAN_R2.to_string(), phenotypes.average)];
        p.extend(phenotypes.targets.iter().cloned());
        Self {
            phenotypes: p,
            diseases: diseases.targets.clone(),
        }
    }

    /// The difference of the mean phenotype R².
    pub fn mean_r2(&self) -> Option<Difference> {
        self.phenotype(MEAN_R2)
    }

    /// The difference of phenotype `name`'s R² (or of the mean, for [`MEAN_R2`]).
    pub fn phenotype(&self, name: &str) -> Option<Difference> {
        by_name(&self.phenotypes, name).and_then(|d| *d)
    }

    /// The diseases whose AUROC difference has its whole interval above zero.
    pub fn diseases_above_zero(&self) -> Vec<String> {
        self.diseases
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d.above_zero()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The comparison `key` (e.g. `mae_mmcl_vs_mae`) in a list of comparisons.
pub fn find_comparison<'a>(
    comparisons: &'a [(String, EncoderComparison)],
    key: &str,
) -> Option<&'a EncoderComparison> {
    by_name(comparisons, key)
}

/// A difference as `+0.035 [+0.007, +0.062]`, `–` when undefined.
pub fn format_difference(d: Option<Difference>) -> String {
    match d {
        None => "–".into(),
        Some(Difference {
            diff,
            ci_low: Some(l),
            ci_high: Some(h),
        }) => format!("{diff:+.3} [{l:+.3}, {h:+.3}]"),
        Some(d) => format!("{:+.3}", d.diff),
    }
}

/// The comparisons as a Markdown table: one row per pair, the mean R² and each disease's
/// AUROC difference; the per-phenotype differences in a second table.
pub fn markdown_comparisons(comparisons: &[(String, EncoderComparison)]) -> String {
    let Some((_, first)) = comparisons.first() else {
        return String::new();
    };
    let label = |key: &str| {
        COMPARED_PAIRS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(key.to_string(), |(_, a, b)| {
                format!("{} − {}", short_label(a), short_label(b))
            })
    };
    let mut md = table_header(
        &["comparison", "mean R²"],
        &names(&first.diseases),
        " AUROC",
    );
    for (key, c) in comparisons {
        md.push_str(&format!(
            "| {} | {} |",
            label(key),
            format_difference(c.mean_r2())
        ));
        for (_, d) in &c.diseases {
            md.push_str(&format!(" {} |", format_difference(*d)));
        }
        md.push('\n');
    }
    let phenotypes: Vec<&str> = names(&first.phenotypes)
        .into_iter()
        .filter(|n| *n != MEAN_R2)
        .collect();
    md.push('\n');
    md.push_str(&table_header(&["comparison"], &phenotypes, " R²"));
    for (key, c) in comparisons {
        md.push_str(&format!("| {} |", label(key)));
        for n in &phenotypes {
            md.push_str(&format!(" {} |", format_difference(c.phenotype(n))));
        }
        md.push('\n');
    }
    md
}

/// Short names of the ECG encoders for comparison rows and sentences.
pub fn short_label(key: &str) -> &'static str {
    match key {
        "random_init" => "random",
        "mae" => "MAE",
        "mmcl" => "MMCL",
        "mae_mmcl" => "MAE + MMCL",
        _ => "?",
    }
}
