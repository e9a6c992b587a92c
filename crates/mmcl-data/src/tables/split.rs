//! Subjects across modalities: joining by `eid` and deterministic (stratified) train/val/test
//! splits.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Eid;
use crate::rng::Rng;
use crate::{Error, Result};

/// Which subjects have which modality, after joining by `eid`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JoinReport {
    /// Subjects with every required modality (sorted).
    pub complete: Vec<Eid>,
    /// For each modality name, the subjects (of the union) that lack it.
    pub missing: BTreeMap<String, Vec<Eid>>,
}

/// Joins modalities (name → subjects) by `eid`; `required` names the ones a subject must have.
pub fn join_by_eid(modalities: &[(&str, &HashSet<Eid>)], required: &[&str]) -> JoinReport {
    let mut all: Vec<Eid> = modalities
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    all.sort_unstable();
    let mut missing = BTreeMap::new();
    for (name, set) in modalities {
        let lacking: Vec<Eid> = all.iter().copied().filter(|e| !set.contains(e)).collect();
        missing.insert(name.to_string(), lacking);
    }
    let complete = all
        .into_iter()
        .filter(|e| {
            modalities
                .iter()
                .filter(|(n, _)| required.contains(n))
                .all(|(_, s)| s.contains(e))
        })
        .collect();
    JoinReport { complete, missing }
}

/// A partition of the subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test.
    Test,
}

/// Fractions of a train/val/test split and its seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Training fraction.
    pub train: f64,
    /// Validation fraction.
    pub val: f64,
    /// Test fraction.
    pub test: f64,
    /// Seed of the assignment.
    pub seed: u64,
    /// Stratify by this disease label (name), if any.
    pub stratify_by: Option<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            train: 0.8,
            val: 0.1,
            test: 0.1,
            seed: 2022,
            stratify_by: None,
        }
    }
}

/// Assigns each subject to a split, deterministically from `(seed, eids)`: within each stratum
/// (`strata[i]`, or one stratum) subjects are ordered by a seeded hash of their `eid`, and
/// the first `round(train·n)` go to training, the next `round(val·n)` to validation, the rest to
/// test. The input order does not matter.
///
/// # Errors
/// Fractions that are negative or do not sum to 1, or strata of another length.
pub fn split_by_eid(eids: &[Eid], strata: Option<&[i64]>, cfg: &SplitConfig) -> Result<Vec<Split>> {
    let total = cfg.train + cfg.val + cfg.test;
    if cfg.train < 0.0 || cfg.val < 0.0 || cfg.test < 0.0 || (total - 1.0).abs() > 1e-6 {
        return Err(Error::InvalidInput(format!(
            "split fractions {}/{}/{} must be non-negative and sum to 1",
            cfg.train, cfg.val, cfg.test
        )));
    }
    if let Some(s) = strata
        && s.len() != eids.len()
    {
        return Err(Error::InvalidInput(
            "one stratum per subject is needed".into(),
        ));
    }
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for i in 0..eids.len() {
        groups
            .entry(strata.map_or(0, |s| s[i]))
            .or_default()
            .push(i);
    }
    let mut out = vec![Split::Train; eids.len()];
    for (_, mut members) in groups {
        members.sort_by_key(|&i| (Rng::derive(cfg.seed, &[eids[i]]).next_u64(), eids[i]));
        let n = members.len() as f64;
        let n_train = (cfg.train * n).round() as usize;
        let n_val =
            ((cfg.val * n).round() as usize).min(members.len() - n_train.min(members.len()));
        for (rank, &i) in members.iter().enumerate() {
            out[i] = if rank < n_train {
                Split::Train
            } else if rank < n_train + n_val {
                Split::Val
            } else {
                Split::Test
            };
        }
    }
    Ok(out)
}
