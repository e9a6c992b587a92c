//! `results.json`, the pipeline's stable contract, and its Markdown table.
//!
//! ```json
//! {"encoders": {"random_init": E, "mae": E, "mmcl": E, "mae_mmcl": E, "cmr": E,
//!               "ecg_features": E},
//!  "comparisons": {"mae_mmcl_vs_mae": C, "mmcl_vs_random": C, "mae_vs_random": C},
//!  "negative_control": "rvef",
//!  "seeds": [{"seed": 0, "encoders": {…}, "comparisons": {…}}, …],
//!  "config": {…}}
//! ```
//!
//! where each `E` is
//!
//! ```json
//! {"phenotypes": {"mean_r2": x, "<name>": {"r2": x, "ci_low": x, "ci_high": x}, …},
//!  "diseases": {"<name>": {"auroc": x, "ci_low": x, "ci_high": x}, …}}
//! ```
//!
//! Names appear in the cache's order (phenotypes) and the configuration's order (diseases).
//! A confidence bound is `null` when the bootstrap could not estimate it (no resamples).
//! `ecg_features` (hand-made ECG features under the same probes: the cohort's learnability
//! ceiling), `comparisons` (paired differences, each `C` as in [`comparisons`]) and
//! `negative_control` (a phenotype the cohort does not couple to the ECG) and `seeds` (every
//! training seed's results when the run repeats its training over `seeds`; `encoders` and
//! `comparisons` are then the first seed's) were added later and are absent from older files.

use std::fmt;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

pub mod comparisons;

use comparisons::COMPARED_PAIRS;

pub use comparisons::{EncoderComparison, markdown_comparisons};
use mmcl_eval::paired::Difference;

/// A phenotype's test R² with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct R2 {
    /// Coefficient of determination on the test split.
    pub r2: f64,
    /// Lower bound of the interval.
    pub ci_low: Option<f64>,
    /// Upper bound of the interval.
    pub ci_high: Option<f64>,
}

/// A disease's test AUROC with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auroc {
    /// Area under the ROC curve on the test split.
    pub auroc: f64,
    /// Lower bound of the interval.
    pub ci_low: Option<f64>,
    /// Upper bound of the interval.
    pub ci_high: Option<f64>,
}

/// The phenotype block: `mean_r2` and one entry per phenotype, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Phenotypes {
    /// R² averaged over the phenotypes.
    pub mean_r2: f64,
    /// Per phenotype, in the cache's order.
    pub per_target: Vec<(String, R2)>,
}

impl Phenotypes {
    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&R2> {
        by_name(&self.per_target, name)
    }
}

impl Serialize for Phenotypes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.per_target.len() + 1))?;
        map.serialize_entry("mean_r2", &self.mean_r2)?;
        for (name, v) in &self.per_target {
            map.serialize_entry(name, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Phenotypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Phenotypes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map with mean_r2 and one {r2, ci_low, ci_high} per phenotype")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Phenotypes, A::Error> {
                let mut out = Phenotypes::default();
                let mut mean = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "mean_r2" {
                        mean = Some(map.next_value::<f64>()?);
                    } else {
                        let v = map.next_value::<R2>()?;
                        out.per_target.push((key, v));
                    }
                }
                out.mean_r2 = mean.ok_or_else(|| serde::de::Error::missing_field("mean_r2"))?;
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// One encoder's block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderResults {
    /// Phenotype regression (ridge probes).
    pub phenotypes: Phenotypes,
    /// Disease classification (logistic probes), in the configuration's order.
    #[serde(with = "ordered_map")]
    pub diseases: Vec<(String, Auroc)>,
}

impl EncoderResults {
    /// The entry of disease `name`.
    pub fn disease(&self, name: &str) -> Option<&Auroc> {
        by_name(&self.diseases, name)
    }
}

/// The entry `name` of a list of named entries (how the blocks of `results.json` keep their
/// JSON objects' order).
fn by_name<'a, T>(entries: &'a [(String, T)], name: &str) -> Option<&'a T> {
    entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The names of a list of named entries, in order.
fn names<T>(entries: &[(String, T)]) -> Vec<&str> {
    entries.iter().map(|(n, _)| n.as_str()).collect()
}

/// The header and separator lines of a Markdown table: the `leading` columns, then one column
/// per target of `targets`, its name followed by `suffix` (e.g. ` AUROC`). Every table of the
/// results and comparisons starts so.
fn table_header(leading: &[&str], targets: &[&str], suffix: &str) -> String {
    let mut out = String::from("|");
    for column in leading {
        out.push_str(&format!(" {column} |"));
    }
    for target in targets {
        out.push_str(&format!(" {target}{suffix} |"));
    }
    out.push_str("\n|");
    out.push_str(&"---|".repeat(leading.len() + targets.len()));
    out.push('\n');
    out
}

/// A `Vec<(String, T)>` as a JSON object keeping its order.
mod ordered_map {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{DeserializeOwned, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &[(String, T)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(v.len()))?;
        for (k, x) in v {
            map.serialize_entry(k, x)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Vec<(String, T)>, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Vec<(String, T)>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The five encoders compared, in the paper's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoders {
    /// The ECG encoder at its random initialisation.
    pub random_init: EncoderResults,
    /// The ECG encoder after MAE pre-training only.
    pub mae: EncoderResults,
    /// The ECG encoder after MMCL from random initialisation.
    pub mmcl: EncoderResults,
    /// The ECG encoder after MMCL initialised from the MAE encoder (the paper's model).
    pub mae_mmcl: EncoderResults,
    /// The CMR (image) encoder of the MAE + MMCL run, probed on CMR features: the upper bound.
    pub cmr: EncoderResults,
    /// Hand-made features of the same ECG input under the same probes: what a linear probe
    /// can reach from the input, the cohort's learnability ceiling for the ECG encoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecg_features: Option<EncoderResults>,
}

impl Encoders {
    /// `(key, results)` in the contract's order (`ecg_features` last, when present).
    pub fn iter(&self) -> Vec<(&'static str, &EncoderResults)> {
        let mut v = vec![
            ("random_init", &self.random_init),
            ("mae", &self.mae),
            ("mmcl", &self.mmcl),
            ("mae_mmcl", &self.mae_mmcl),
            ("cmr", &self.cmr),
        ];
        if let Some(f) = &self.ecg_features {
            v.push(("ecg_features", f));
        }
        v
    }

    /// The results of encoder `key` (a key of the contract).
    pub fn get(&self, key: &str) -> Option<&EncoderResults> {
        self.iter()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| e)
    }
}

/// One training seed's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedResults {
    /// The seed of the training stages and of the random encoder.
    pub seed: u64,
    /// Per encoder.
    pub encoders: Encoders,
    /// Paired differences between encoders.
    #[serde(default, with = "ordered_map")]
    pub comparisons: Vec<(String, EncoderComparison)>,
}

/// The content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Per encoder.
    pub encoders: Encoders,
    /// Paired differences between encoders, keyed as [`comparisons::COMPARED_PAIRS`].
    #[serde(default, with = "ordered_map", skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<(String, EncoderComparison)>,
    /// The phenotype the cohort leaves uncoupled from the ECG: every ECG encoder should stay
    /// near R² 0 on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_control: Option<String>,
    /// Every training seed's results, when the run repeats its training over seeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SeedResults>,
    /// The resolved configuration of the run.
    pub config: serde_json::Value,
}

/// The two tables (diseases, phenotypes) for any rows `(label, results)`; the columns are
/// the first row's targets.
pub fn markdown_tables(rows: &[(&str, &EncoderResults)]) -> String {
    let fmt = |v: f64, lo: Option<f64>, hi: Option<f64>| match (lo, hi) {
        (Some(l), Some(h)) => format!("{v:.3} [{l:.3}, {h:.3}]"),
        _ => format!("{v:.3}"),
    };
    let Some((_, first)) = rows.first() else {
        return String::new();
    };
    let mut out = table_header(&["encoder"], &names(&first.diseases), " AUROC");
    for (label, e) in rows {
        out.push_str(&format!("| {label} |"));
        for (name, _) in &first.diseases {
            match e.disease(name) {
                Some(a) => out.push_str(&format!(" {} |", fmt(a.auroc, a.ci_low, a.ci_high))),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&table_header(
        &["encoder", "mean R²"],
        &names(&first.phenotypes.per_target),
        "",
    ));
    for (label, e) in rows {
        out.push_str(&format!("| {label} | {:.3} |", e.phenotypes.mean_r2));
        for (name, _) in &first.phenotypes.per_target {
            match e.phenotypes.get(name) {
                Some(r) => out.push_str(&format!(" {} |", fmt(r.r2, r.ci_low, r.ci_high))),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// Human-readable names of the encoders for tables.
pub fn encoder_label(key: &str) -> &'static str {
    match key {
        "random_init" => "Random init (ECG)",
        "mae" => "MAE only (ECG)",
        "mmcl" => "MMCL only (ECG)",
        "mae_mmcl" => "MAE + MMCL (ECG)",
        "cmr" => "CMR encoder (upper bound)",
        "ecg_features" => "Hand-made ECG features (ceiling)",
        _ => "?",
    }
}

impl Results {
    /// Reads `results.json`.
    ///
    /// # Errors
    /// Unreadable file, or a file that does not follow the contract.
    pub fn read(path: &Path) -> Result<Self> {
        Ok(mmcl_core::files::read_json_bounded(
            path,
            mmcl_core::files::MAX_JSON_BYTES,
            "the results file",
        )?)
    }

    /// Writes `results.json` atomically (pretty-printed).
    ///
    /// # Errors
    /// Write errors.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::json(path, e))?;
        mmcl_nn::io::write_bytes_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// The paper's tables in Markdown: AUROC per disease, then R² per phenotype (and their
    /// mean), one row per encoder, each value with its interval.
    pub fn markdown_tables(&self) -> String {
        let rows: Vec<(&str, &EncoderResults)> = self
            .encoders
            .iter()
            .into_iter()
            .map(|(k, e)| (encoder_label(k), e))
            .collect();
        markdown_tables(&rows)
    }

    /// The comparison `key` (e.g. `mae_mmcl_vs_mae`), when the file has comparisons.
    pub fn comparison(&self, key: &str) -> Option<&EncoderComparison> {
        comparisons::find_comparison(&self.comparisons, key)
    }

    /// The paper's claim on this run: MAE + MMCL beats MAE only on the mean phenotype R² and on
    /// at least one disease AUROC. With paired comparisons, "beats" means the paired interval
    /// of the difference lies above zero; without (older files), a higher point estimate.
    pub fn claim(&self) -> Claim {
        let (a, b) = (&self.encoders.mae_mmcl, &self.encoders.mae);
        let paired = self.comparison(COMPARED_PAIRS[0].0);
        let diseases_better = match paired {
            Some(c) => c.diseases_above_zero(),
            None => a
                .diseases
                .iter()
                .filter(|(n, x)| b.disease(n).is_some_and(|y| x.auroc > y.auroc))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        Claim {
            mean_r2_mae_mmcl: a.phenotypes.mean_r2,
            mean_r2_mae: b.phenotypes.mean_r2,
            mean_r2_difference: paired.and_then(EncoderComparison::mean_r2),
            paired: paired.is_some(),
            diseases_better,
        }
    }
}

/// The paper's claim checked on one run's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Mean phenotype R² of MAE + MMCL.
    pub mean_r2_mae_mmcl: f64,
    /// Mean phenotype R² of MAE only.
    pub mean_r2_mae: f64,
    /// The paired difference of the mean R² (MAE + MMCL − MAE), when compared.
    pub mean_r2_difference: Option<Difference>,
    /// Whether the claim is judged on paired intervals.
    pub paired: bool,
    /// Diseases where MAE + MMCL beats MAE only: the paired AUROC interval lies above zero
    /// (or, unpaired, the AUROC is higher).
    pub diseases_better: Vec<String>,
}

impl Claim {
    /// Whether the mean-R² part holds: paired interval above zero (unpaired: higher).
    pub fn r2_better(&self) -> bool {
        if self.paired {
            self.mean_r2_difference.is_some_and(|d| d.above_zero())
        } else {
            self.mean_r2_mae_mmcl > self.mean_r2_mae
        }
    }

    /// Both parts of the claim hold.
    pub fn holds(&self) -> bool {
        self.r2_better() && !self.diseases_better.is_empty()
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.holds() {
            "holds"
        } else {
            "does not hold"
        };
        let diseases = if self.diseases_better.is_empty() {
            "none".to_string()
        } else {
            self.diseases_better.join(", ")
        };
        if self.paired {
            write!(
                f,
                "MAE + MMCL − MAE only, paired: mean phenotype R² {} ({:.3} vs {:.3}, {}); \
                 disease AUROC interval above zero on {diseases}: claim {verdict}",
                comparisons::format_difference(self.mean_r2_difference),
                self.mean_r2_mae_mmcl,
                self.mean_r2_mae,
                if self.r2_better() {
                    "interval above zero"
                } else {
                    "interval includes zero or below"
                },
            )
        } else {
            write!(
                f,
                "MAE + MMCL vs MAE only: mean phenotype R² {:.3} vs {:.3} ({}); higher disease                  AUROC on {diseases}: claim {verdict}",
                self.mean_r2_mae_mmcl,
                self.mean_r2_mae,
                if self.r2_better() {
                    "better"
                } else {
                    "not better"
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Dyadic values: exact in binary, so the JSON round trip compares equal.
    fn block(shift: f64) -> EncoderResults {
        EncoderResults {
            phenotypes: Phenotypes {
                mean_r2: 0.25 + shift,
                per_target: vec![
                    (
                        "LVM".into(),
                        R2 {
                            r2: 0.375 + shift,
                            ci_low: Some(0.3),
                            ci_high: Some(0.5),
                        },
                    ),
                    (
                        "LVEDV".into(),
                        R2 {
                            r2: 0.125 + shift,
                            ci_low: None,
                            ci_high: None,
                        },
                    ),
                ],
            },
            diseases: vec![
                (
                    "CAD".into(),
                    Auroc {
                        auroc: 0.7,
                        ci_low: Some(0.6),
                        ci_high: Some(0.8),
                    },
                ),
                (
                    "AF".into(),
                    Auroc {
                        auroc: 0.875 + shift / 8.0,
                        ci_low: Some(0.85),
                        ci_high: Some(0.95),
                    },
                ),
            ],
        }
    }

    fn results() -> Results {
        Results {
            encoders: Encoders {
                random_init: block(-0.125),
                mae: block(0.0),
                mmcl: block(0.0625),
                mae_mmcl: block(0.125),
                cmr: block(0.5),
                ecg_features: None,
            },
            comparisons: Vec::new(),
            negative_control: None,
            seeds: Vec::new(),
            config: serde_json::json!({"seed": 1}),
        }
    }

    #[test]
    fn json_follows_the_contract_and_round_trips() {
        let r = results();
        let v = serde_json::to_value(&r).unwrap();
        let enc = v["encoders"].as_object().unwrap();
        let keys: Vec<&str> = enc.keys().map(String::as_str).collect();
        let mut expected = vec!["random_init", "mae", "mmcl", "mae_mmcl", "cmr"];
        expected.sort();
        assert_eq!(keys, expected);
        let mae = &v["encoders"]["mae"];
        assert_eq!(mae["phenotypes"]["mean_r2"], 0.25);
        assert_eq!(mae["phenotypes"]["LVM"]["r2"], 0.375);
        assert_eq!(mae["phenotypes"]["LVM"]["ci_low"], 0.3);
        assert!(mae["phenotypes"]["LVEDV"]["ci_high"].is_null());
        assert_eq!(mae["diseases"]["AF"]["auroc"], 0.875);
        assert_eq!(v["config"]["seed"], 1);

        // Order is kept in the text: mean_r2 first, then the cache's order.
        let text = serde_json::to_string(&r).unwrap();
        let (p_mean, p_lvm, p_lvedv) = (
            text.find("mean_r2").unwrap(),
            text.find("LVM").unwrap(),
            text.find("LVEDV").unwrap(),
        );
        assert!(p_mean < p_lvm && p_lvm < p_lvedv);
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        r.write(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), r);
    }

    #[test]
    fn files_breaking_the_contract_are_rejected() {
        let good = serde_json::to_value(results()).unwrap();
        let mut missing = good.clone();
        missing["encoders"].as_object_mut().unwrap().remove("cmr");
        let mut extra = good.clone();
        extra["encoders"]["mae"]["diseases"]["AF"]["auc"] = 1.into();
        let mut no_mean = good.clone();
        no_mean["encoders"]["mae"]["phenotypes"]
            .as_object_mut()
            .unwrap()
            .remove("mean_r2");
        for bad in [missing, extra, no_mean] {
            assert!(serde_json::from_value::<Results>(bad).is_err());
        }
    }

    fn difference(diff: f64, lo: f64, hi: f64) -> Option<Difference> {
        Some(Difference {
            diff,
            ci_low: Some(lo),
            ci_high: Some(hi),
        })
    }

    #[test]
    fn comparisons_follow_the_contract_and_decide_the_claim() {
        let mut r = results();
        r.encoders.ecg_features = Some(block(0.25));
        r.negative_control = Some("LVEDV".into());
        r.comparisons = vec![(
            "mae_mmcl_vs_mae".into(),
            EncoderComparison {
                phenotypes: vec![
                    ("mean_r2".into(), difference(0.125, 0.0625, 0.1875)),
                    ("LVM".into(), difference(0.125, -0.0625, 0.25)),
                    ("LVEDV".into(), None),
                ],
                diseases: vec![
                    ("CAD".into(), difference(0.0, -0.05, 0.05)),
                    ("AF".into(), difference(0.015625, 0.0078125, 0.03125)),
                ],
            },
        )];
        let v = serde_json::to_value(&r).unwrap();
        let c = &v["comparisons"]["mae_mmcl_vs_mae"];
        assert_eq!(c["phenotypes"]["mean_r2"]["diff"], 0.125);
        assert_eq!(c["phenotypes"]["mean_r2"]["ci_low"], 0.0625);
        assert!(c["phenotypes"]["LVEDV"].is_null());
        assert_eq!(c["diseases"]["AF"]["ci_high"], 0.03125);
        assert_eq!(v["negative_control"], "LVEDV");
        assert_eq!(v["encoders"]["ecg_features"]["phenotypes"]["mean_r2"], 0.5);
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);

        // Paired: the AUROC of AF, whose interval is above zero, carries the disease part.
        let claim = r.claim();
        assert!(claim.paired && claim.holds(), "{claim}");
        assert_eq!(claim.diseases_better, vec!["AF".to_string()]);
        assert!(
            claim.to_string().contains("+0.125 [+0.062, +0.188]"),
            "{claim}"
        );
        // An interval reaching zero does not carry it, whatever the point estimates say.
        r.comparisons[0].1.phenotypes[0].1 = difference(0.125, -0.01, 0.25);
        assert!(!r.claim().holds());

        let table = markdown_comparisons(&r.comparisons);
        assert!(
            table.contains("| MAE + MMCL − MAE | +0.125 [-0.010, +0.250] |"),
            "{table}"
        );
        assert!(
            table.contains("| LVEDV R² |") && table.contains(" – |"),
            "{table}"
        );
        assert!(
            r.markdown_tables()
                .contains("Hand-made ECG features (ceiling)")
        );
    }

    #[test]
    fn files_without_the_later_additions_still_read() {
        let mut v = serde_json::to_value(results()).unwrap();
        let o = v.as_object_mut().unwrap();
        assert!(!o.contains_key("comparisons") && !o.contains_key("negative_control"));
        let back: Results = serde_json::from_value(v).unwrap();
        assert!(back.comparisons.is_empty() && back.encoders.ecg_features.is_none());
        assert!(!back.claim().paired);
    }

    #[test]
    fn tables_and_claim() {
        let r = results();
        let md = r.markdown_tables();
        assert!(md.contains("| MAE + MMCL (ECG) | 0.375 |"), "{md}");
        assert!(md.contains("0.700 [0.600, 0.800]"));
        assert!(md.contains("| encoder | CAD AUROC | AF AUROC |"));
        let claim = r.claim();
        assert!(claim.holds());
        assert_eq!(claim.diseases_better, vec!["AF".to_string()]);
        let mut worse = r.clone();
        worse.encoders.mae_mmcl = block(-0.25);
        assert!(!worse.claim().holds());
    }
}
