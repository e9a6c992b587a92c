//! Paired comparison of two encoders' predictions of the same targets on the same subjects:
//! the difference of a metric, with a percentile-bootstrap interval in which every resample
//! scores both sets of predictions on the same drawn subjects.
//!
//! Two separate intervals overlap long before a difference is uncertain: most of each
//! interval's width is the difficulty of the drawn subjects, which both encoders share. The
//! paired interval keeps only the difference's own sampling error. The resamples are those of
//! [`evaluate`](crate::metrics::evaluate) with the same [`Bootstrap`] settings, so the
//! per-encoder intervals and the paired one come from the same draws.
//!
//! ```
//! use mmcl_eval::{Matrix, metrics::{Bootstrap, Task}, paired::compare};
//! let truth = Matrix::column_vector(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! let good = Matrix::column_vector(vec![1.1, 2.0, 2.9, 4.2, 5.0, 5.8]);
//! let poor = Matrix::column_vector(vec![2.0, 1.0, 4.0, 3.0, 6.0, 4.5]);
//! let c = compare(Task::Regression, &truth, (&good, &poor), &[], "r2", 0.5, &Bootstrap::default())
//!     .unwrap();
//! let d = c.average.unwrap();
//! assert!(d.diff > 0.0 && d.ci_low.unwrap() > 0.0);
//! ```

use serde::{Deserialize, Serialize};

use crate::matrix::Matrix;
use crate::metrics::{
    Bootstrap, PreparedTarget, Task, over_resamples, percentile_interval, prepare, target_values,
};
use crate::{Error, Result};

/// A difference of a metric (first minus second) with its paired bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Difference {
    /// The metric of the first predictions minus that of the second, on all rows.
    pub diff: f64,
    /// Lower bound of the interval (`None` without resamples).
    pub ci_low: Option<f64>,
    /// Upper bound of the interval.
    pub ci_high: Option<f64>,
}

impl Difference {
    /// Whether the whole interval lies above zero (the first predictions are better on a
    /// metric where higher is better).
    pub fn above_zero(&self) -> bool {
        self.ci_low.is_some_and(|l| l > 0.0)
    }
}

/// The paired comparison of one metric over several targets.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedComparison {
    /// The metric compared (`r2`, `auroc`, …).
    pub metric: String,
    /// Per target, in order; `None` where the metric is undefined for either prediction set.
    pub targets: Vec<(String, Option<Difference>)>,
    /// The difference of the metric's mean over the targets defined for both (`None` when
    /// there is none); a resample counts when every one of them is defined on it.
    pub average: Option<Difference>,
}

/// Compares predictions `a` and `b` (each `N × K`, against the same `truth`) on `metric`,
/// one of [`Task::metric_names`]: the difference `a − b` per target and of their mean, with
/// paired percentile-bootstrap intervals.
///
/// # Errors
/// Shapes that differ, an unknown metric, bootstrap settings [`Bootstrap::check`] refuses,
/// and what [`evaluate`](crate::metrics::evaluate) refuses (labels other than 0/1,
/// non-finite predictions, a target with no value).
pub fn compare(
    task: Task,
    truth: &Matrix<f64>,
    (a, b): (&Matrix<f64>, &Matrix<f64>),
    names: &[String],
    metric: &str,
    threshold: f64,
    bootstrap: &Bootstrap,
) -> Result<PairedComparison> {
    bootstrap.check()?;
    let (n, k) = (truth.rows(), truth.cols());
    for p in [a, b] {
        if p.rows() != n || p.cols() != k {
            return Err(Error::InvalidInput(format!(
                "truth is {n}×{k} but predictions are {}×{}",
                p.rows(),
                p.cols()
            )));
        }
    }
    if !names.is_empty() && names.len() != k {
        return Err(Error::InvalidInput(format!(
            "{} target names for {k} targets",
            names.len()
        )));
    }
    let m = task
        .metric_names()
        .iter()
        .position(|x| *x == metric)
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{metric:?} is not a metric of {task:?} (one of {:?})",
                task.metric_names()
            ))
        })?;
    let name = |j: usize| {
        names
            .get(j)
            .cloned()
            .unwrap_or_else(|| format!("target_{j}"))
    };

    // Per target: the truth, both prediction columns and their prepared forms, when the
    // metric is defined for both on all rows.
    struct Pair {
        truth: Vec<f64>,
        columns: [Vec<f64>; 2],
        prepared: [PreparedTarget; 2],
        diff: f64,
    }
    let mut pairs: Vec<Option<Pair>> = Vec::with_capacity(k);
    for j in 0..k {
        let t = truth.column(j);
        let columns = [a.column(j), b.column(j)];
        let [pa, pb] = [0, 1].map(|i| prepare(task, &name(j), &t, &columns[i]));
        let (Ok(pa), Ok(pb)) = (pa?.prepared, pb?.prepared) else {
            pairs.push(None);
            continue;
        };
        let value = |p: &PreparedTarget, c: &[f64]| {
            target_values(task, p, &t, c, threshold, &|_| 1.0).map(|v| v[m])
        };
        let pair = match (value(&pa, &columns[0]), value(&pb, &columns[1])) {
            (Some(va), Some(vb)) if va.is_finite() && vb.is_finite() => Some(Pair {
                diff: va - vb,
                truth: t,
                columns,
                prepared: [pa, pb],
            }),
            _ => None,
        };
        pairs.push(pair);
    }

    // Each resample: the per-target differences (None where undefined on the draw).
    let replicates: Vec<Vec<Option<f64>>> = over_resamples(bootstrap, n, |counts| {
        let weight = |i: usize| f64::from(counts[i]);
        pairs
            .iter()
            .map(|p| {
                let p = p.as_ref()?;
                let [va, vb] = [0, 1].map(|i| {
                    target_values(
                        task,
                        &p.prepared[i],
                        &p.truth,
                        &p.columns[i],
                        threshold,
                        &weight,
                    )
                    .map(|v| v[m])
                });
                Some(va? - vb?).filter(|d| d.is_finite())
            })
            .collect()
    });

    let targets = pairs
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let d = p.as_ref().map(|p| {
                let samples = replicates.iter().filter_map(|r| r[j]).collect();
                let (ci_low, ci_high) = percentile_interval(samples, bootstrap.confidence);
                Difference {
                    diff: p.diff,
                    ci_low,
                    ci_high,
                }
            });
            (name(j), d)
        })
        .collect();
    let defined: Vec<usize> = (0..k).filter(|&j| pairs[j].is_some()).collect();
    let average = (!defined.is_empty()).then(|| {
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let diff = mean(
            defined
                .iter()
                .filter_map(|&j| pairs[j].as_ref().map(|p| p.diff))
                .collect(),
        );
        let samples = replicates
            .iter()
            .filter_map(|r| defined.iter().map(|&j| r[j]).collect::<Option<Vec<f64>>>())
            .map(mean)
            .collect();
        let (ci_low, ci_high) = percentile_interval(samples, bootstrap.confidence);
        Difference {
            diff,
            ci_low,
            ci_high,
        }
    });
    Ok(PairedComparison {
        metric: metric.to_string(),
        targets,
        average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::evaluate;

    fn noisy(truth: &[f64], scale: f64, seed: u64) -> Vec<f64> {
        let mut rng = mmcl_nn::rng::SplitMix64::new(seed);
        truth
            .iter()
            .map(|t| t + scale * (rng.next_f64() - 0.5))
            .collect()
    }

    #[test]
    fn differences_agree_with_separate_evaluations_and_pairing_narrows_the_interval() {
        let n = 300;
        let truth: Vec<f64> = (0..n).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let t = Matrix::column_vector(truth.clone());
        // The second encoder makes the first one's errors and some more of its own: the
        // shared part cancels in the paired difference.
        let a_values = noisy(&truth, 4.0, 1);
        let a = Matrix::column_vector(a_values.clone());
        let b = Matrix::column_vector(noisy(&a_values, 2.0, 2));
        let boot = Bootstrap::default();
        let c = compare(
            Task::Regression,
            &t,
            (&a, &b),
            &["x".into()],
            "r2",
            0.5,
            &boot,
        )
        .unwrap();
        let ea = evaluate(Task::Regression, &t, &a, &[], 0.5, &boot).unwrap();
        let eb = evaluate(Task::Regression, &t, &b, &[], 0.5, &boot).unwrap();
        let (ra, rb) = (ea.average_of("r2").unwrap(), eb.average_of("r2").unwrap());
        let d = c.targets[0].1.unwrap();
        assert!((d.diff - (ra.value - rb.value)).abs() < 1e-12);
        assert_eq!(
            c.average.unwrap(),
            d,
            "one target: the average is the target"
        );
        let paired_width = d.ci_high.unwrap() - d.ci_low.unwrap();
        let separate_width =
            (ra.ci_high.unwrap() - ra.ci_low.unwrap()) + (rb.ci_high.unwrap() - rb.ci_low.unwrap());
        assert!(
            paired_width < 0.5 * separate_width,
            "{paired_width} vs {separate_width}"
        );
        assert!(d.above_zero(), "{d:?}");

        // Identical predictions: a difference of exactly zero on every resample.
        let same = compare(Task::Regression, &t, (&a, &a), &[], "r2", 0.5, &boot).unwrap();
        let z = same.average.unwrap();
        assert_eq!((z.diff, z.ci_low, z.ci_high), (0.0, Some(0.0), Some(0.0)));
        assert!(!z.above_zero());
    }

    /// An absurd number of resamples (`--bootstrap` of 2⁶⁴ − 1 overflowed an allocation) or a
    /// coverage outside (0, 1) is refused by both the paired and the single evaluation.
    #[test]
    fn bootstrap_settings_are_checked() {
        let t = Matrix::column_vector((0..20).map(f64::from).collect());
        let p = Matrix::column_vector((0..20).map(|i| f64::from(i) * 0.9).collect());
        for bad in [
            Bootstrap {
                resamples: usize::MAX,
                ..Bootstrap::default()
            },
            Bootstrap {
                confidence: 1.5,
                ..Bootstrap::default()
            },
            Bootstrap {
                confidence: f64::NAN,
                ..Bootstrap::default()
            },
        ] {
            let paired = compare(Task::Regression, &t, (&p, &p), &[], "r2", 0.5, &bad);
            assert!(matches!(paired, Err(Error::InvalidInput(_))), "{bad:?}");
            let single = evaluate(Task::Regression, &t, &p, &[], 0.5, &bad);
            assert!(matches!(single, Err(Error::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn undefined_targets_are_reported_and_left_out_of_the_average() {
        // Target 0 is a disease with cases; target 1 has one class only.
        let truth = Matrix::new(
            6,
            2,
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        )
        .unwrap();
        let a = Matrix::new(
            6,
            2,
            vec![0.9, 0.1, 0.2, 0.2, 0.8, 0.3, 0.1, 0.4, 0.7, 0.5, 0.3, 0.6],
        )
        .unwrap();
        let b = Matrix::new(
            6,
            2,
            vec![0.4, 0.1, 0.6, 0.2, 0.5, 0.3, 0.7, 0.4, 0.3, 0.5, 0.2, 0.6],
        )
        .unwrap();
        let names = ["CAD".to_string(), "rare".to_string()];
        let c = compare(
            Task::Classification,
            &truth,
            (&a, &b),
            &names,
            "auroc",
            0.5,
            &Bootstrap::default(),
        )
        .unwrap();
        assert!(c.targets[1].1.is_none());
        let d = c.targets[0].1.unwrap();
        assert!((d.diff - 2.0 / 3.0).abs() < 1e-12, "{d:?}");
        assert_eq!(c.average.unwrap().diff, d.diff);
        assert!(
            compare(
                Task::Classification,
                &truth,
                (&a, &b),
                &names,
                "r2",
                0.5,
                &Bootstrap::default()
            )
            .unwrap_err()
            .to_string()
            .contains("not a metric")
        );
    }
}
