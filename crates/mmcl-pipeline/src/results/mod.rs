//! `results.json`, the pipeline's stable contract, and its Markdown table.
//!
//! ```json
//! {"encoders": {"random_init": E, "mae": E, "mmcl": E, "mae_mmcl": E, "cmr": E},
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

use std::fmt;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

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
        self.per_target
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
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
        self.diseases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
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
}

impl Encoders {
    /// `(key, results)` in the contract's order.
    pub fn iter(&self) -> [(&'static str, &EncoderResults); 5] {
        [
            ("random_init", &self.random_init),
            ("mae", &self.mae),
            ("mmcl", &self.mmcl),
            ("mae_mmcl", &self.mae_mmcl),
            ("cmr", &self.cmr),
        ]
    }
}

/// The content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Per encoder.
    pub encoders: Encoders,
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
    let mut out = String::new();
    out.push_str("| encoder |");
    for (name, _) in &first.diseases {
        out.push_str(&format!(" {name} AUROC |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(first.diseases.len()));
    out.push('\n');
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
    out.push_str("| encoder | mean R² |");
    for (name, _) in &first.phenotypes.per_target {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(first.phenotypes.per_target.len()));
    out.push('\n');
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
        _ => "?",
    }
}

impl Results {
    /// Reads `results.json`.
    ///
    /// # Errors
    /// Unreadable file, or a file that does not follow the contract.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `results.json` atomically (pretty-printed).
    ///
    /// # Errors
    /// Write errors.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
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

    /// Whether MAE + MMCL beats MAE only on the mean phenotype R² and on at least one disease
    /// AUROC (the paper's claim), with the diseases where it does.
    pub fn claim(&self) -> Claim {
        let (a, b) = (&self.encoders.mae_mmcl, &self.encoders.mae);
        let diseases_better: Vec<String> = a
            .diseases
            .iter()
            .filter(|(n, x)| b.disease(n).is_some_and(|y| x.auroc > y.auroc))
            .map(|(n, _)| n.clone())
            .collect();
        Claim {
            mean_r2_mae_mmcl: a.phenotypes.mean_r2,
            mean_r2_mae: b.phenotypes.mean_r2,
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
    /// Diseases whose AUROC is higher with MAE + MMCL than with MAE only.
    pub diseases_better: Vec<String>,
}

impl Claim {
    /// Both parts of the claim hold.
    pub fn holds(&self) -> bool {
        self.mean_r2_mae_mmcl > self.mean_r2_mae && !self.diseases_better.is_empty()
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MAE + MMCL vs MAE only: mean phenotype R² {:.3} vs {:.3} ({}); higher disease AUROC \
             on {}: claim {}",
            self.mean_r2_mae_mmcl,
            self.mean_r2_mae,
            if self.mean_r2_mae_mmcl > self.mean_r2_mae {
                "better"
            } else {
                "not better"
            },
            if self.diseases_better.is_empty() {
                "none".to_string()
            } else {
                self.diseases_better.join(", ")
            },
            if self.holds() {
                "holds"
            } else {
                "does not hold"
            }
        )
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
            },
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
