//! The linear probes agree with scikit-learn on a fixed problem
//! (`tests/fixtures/probe_problem.safetensors`, made by `tests/fixtures/make_fixtures.py`):
//! test AUROC / R² at every grid point and at the validation-chosen one within 0.01, and the
//! predictions themselves closely.

use mmcl_eval::Matrix;
use mmcl_eval::metrics::{Task, auroc, r2};
use mmcl_eval::probe::{
    LinearProbe, ProbeConfig, SolverOptions, Standardizer, logistic_regression, ridge_path,
};
use mmcl_testutil::{Fixture, flat};
use serde_json::Value;

struct Problem {
    fixture: Fixture,
    sklearn: Value,
}

impl Problem {
    fn load() -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/probe_problem.safetensors");
        let fixture = Fixture::from_path(&path);
        let sklearn = fixture.meta("sklearn").clone();
        Self { fixture, sklearn }
    }

    fn x(&self, split: &str) -> Matrix<f32> {
        let t = self.fixture.tensor(&format!("x_{split}"));
        let (n, d) = t.dims2().unwrap();
        Matrix::new(n, d, flat(&t)).unwrap()
    }

    fn y(&self, kind: &str, split: &str) -> Matrix<f64> {
        let t = self.fixture.tensor(&format!("y_{kind}_{split}"));
        let (n, k) = t.dims2().unwrap();
        Matrix::new(n, k, flat(&t).into_iter().map(f64::from).collect()).unwrap()
    }

    fn grid(&self, key: &str) -> Vec<f64> {
        floats(&self.sklearn[key])
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn present(column: &[f64]) -> Vec<usize> {
    (0..column.len()).filter(|&i| !column[i].is_nan()).collect()
}

/// The rows of column `t` of `y` that hold a value, and those values.
fn present_values(y: &Matrix<f64>, t: usize) -> (Vec<usize>, Vec<f64>) {
    let column = y.column(t);
    let rows = present(&column);
    let values = rows.iter().map(|&i| column[i]).collect();
    (rows, values)
}

/// `metric` of column `t` of the test predictions `pred` against the present values of the
/// test targets `y`.
fn test_score<E: std::fmt::Debug>(
    metric: fn(&[f64], &[f64]) -> Result<f64, E>,
    y: &Matrix<f64>,
    pred: &Matrix<f64>,
    t: usize,
) -> f64 {
    let (rows, truth) = present_values(y, t);
    let scores: Vec<f64> = rows.iter().map(|&i| pred.get(i, t)).collect();
    metric(&truth, &scores).unwrap()
}

/// The probe of `task` fitted on the problem's training split of `kind`, choosing its
/// regularisation among `config`'s on the validation split, and its test predictions.
fn fit_probe(
    p: &Problem,
    task: Task,
    kind: &str,
    config: ProbeConfig,
) -> (LinearProbe, Matrix<f64>) {
    let (xtr, ytr, yva) = (p.x("train"), p.y(kind, "train"), p.y(kind, "val"));
    let probe = LinearProbe::fit(task, &xtr, &ytr, Some((&p.x("val"), &yva)), &config).unwrap();
    let pred = probe.predict(&p.x("test")).unwrap();
    (probe, pred)
}

/// scikit-learn's results for target `t` of its `model` (`logistic`, `ridge`), and the grid
/// point it chose on the validation split.
fn sklearn_choice<'a>(p: &'a Problem, model: &str, t: usize) -> (&'a Value, usize) {
    let expected = &p.sklearn[model][t];
    (expected, expected["best"].as_u64().unwrap() as usize)
}

#[test]
fn logistic_probe_agrees_with_sklearn() {
    let p = Problem::load();
    let (xtr, xte) = (p.x("train"), p.x("test"));
    let (ytr, yte) = (p.y("cls", "train"), p.y("cls", "test"));
    let cs = p.grid("cs");
    let scaler = Standardizer::fit(&xtr).unwrap();
    let mut worst_auc: f64 = 0.0;
    for t in 0..ytr.cols() {
        let expected = &p.sklearn["logistic"][t];
        let expected_test = floats(&expected["test_auroc"]);
        let labels = ytr.column(t);
        let rows = present(&labels);
        let (test_rows, truth) = present_values(&yte, t);
        for (k, &c) in cs.iter().enumerate() {
            let (model, report) = logistic_regression(
                &xtr,
                &scaler,
                &rows,
                &labels,
                c,
                &SolverOptions::default(),
                None,
            )
            .unwrap();
            assert!(report.converged, "target {t}, C={c}: {report:?}");
            let auc = auroc(&truth, &model.decision(&xte, &scaler, &test_rows)).unwrap();
            let diff = (auc - expected_test[k]).abs();
            worst_auc = worst_auc.max(diff);
            assert!(
                diff < 0.01,
                "target {t}, C={c}: AUROC {auc} vs sklearn {}",
                expected_test[k]
            );
        }
    }
    // The full probe, choosing C on the validation split.
    let config = ProbeConfig {
        cs: cs.clone(),
        ..ProbeConfig::default()
    };
    let (probe, pred) = fit_probe(&p, Task::Classification, "cls", config);
    let mut worst_prob: f64 = 0.0;
    for t in 0..ytr.cols() {
        let (expected, best) = sklearn_choice(&p, "logistic", t);
        let expected_val = floats(&expected["val_auroc"]);
        let ours_val: Vec<f64> = probe.heads[t]
            .selection
            .iter()
            .map(|s| s.validation_score)
            .collect();
        for (a, b) in ours_val.iter().zip(&expected_val) {
            assert!(
                (a - b).abs() < 0.01,
                "target {t}: validation AUROC {a} vs {b}"
            );
        }
        let auc = test_score(auroc, &yte, &pred, t);
        let expected_auc = floats(&expected["test_auroc"])[best];
        eprintln!(
            "logistic target {t}: C={} (sklearn {}), test AUROC {auc:.5} vs sklearn {expected_auc:.5}",
            probe.heads[t].regularisation, cs[best]
        );
        assert!((auc - expected_auc).abs() < 0.01);
        if probe.heads[t].regularisation == cs[best] {
            let expected_prob = floats(&expected["test_probability"]);
            for (i, e) in expected_prob.iter().enumerate() {
                worst_prob = worst_prob.max((pred.get(i, t) - e).abs());
            }
        }
    }
    eprintln!("logistic: max |ΔAUROC| over the grid {worst_auc:.2e}, max |Δp| {worst_prob:.2e}");
    assert!(
        worst_prob < 1e-4,
        "probabilities differ from sklearn by {worst_prob}"
    );
}

#[test]
fn ridge_probe_agrees_with_sklearn() {
    let p = Problem::load();
    let (xtr, xte) = (p.x("train"), p.x("test"));
    let (ytr, yte) = (p.y("reg", "train"), p.y("reg", "test"));
    let alphas = p.grid("alphas");
    let scaler = Standardizer::fit(&xtr).unwrap();
    let columns: Vec<Vec<f64>> = (0..ytr.cols()).map(|t| ytr.column(t)).collect();
    let all: Vec<usize> = (0..xtr.rows()).collect();
    let path = ridge_path(&xtr, &scaler, &all, &columns, &alphas).unwrap();
    let mut worst_r2: f64 = 0.0;
    for (t, models) in path.iter().enumerate() {
        let expected_test = floats(&p.sklearn["ridge"][t]["test_r2"]);
        let (rows, truth) = present_values(&yte, t);
        for (k, model) in models.iter().enumerate() {
            let value = r2(&truth, &model.decision(&xte, &scaler, &rows)).unwrap();
            worst_r2 = worst_r2.max((value - expected_test[k]).abs());
            assert!((value - expected_test[k]).abs() < 0.01);
        }
    }
    let config = ProbeConfig {
        alphas: alphas.clone(),
        ..ProbeConfig::default()
    };
    let (probe, pred) = fit_probe(&p, Task::Regression, "reg", config);
    let mut worst_pred: f64 = 0.0;
    for t in 0..ytr.cols() {
        let (expected, best) = sklearn_choice(&p, "ridge", t);
        let value = test_score(r2, &yte, &pred, t);
        let expected_r2 = floats(&expected["test_r2"])[best];
        eprintln!(
            "ridge target {t}: alpha={} (sklearn {}), test R² {value:.5} vs sklearn {expected_r2:.5}",
            probe.heads[t].regularisation, alphas[best]
        );
        assert!((value - expected_r2).abs() < 0.01);
        if probe.heads[t].regularisation == alphas[best] {
            for (i, e) in floats(&expected["test_prediction"]).iter().enumerate() {
                worst_pred = worst_pred.max((pred.get(i, t) - e).abs() / (1.0 + e.abs()));
            }
        }
    }
    eprintln!("ridge: max |ΔR²| over the grid {worst_r2:.2e}, max relative |Δŷ| {worst_pred:.2e}");
    assert!(worst_pred < 1e-6);
}

#[test]
fn probe_without_validation_holds_out_training_rows() {
    let p = Problem::load();
    let (xtr, ytr) = (p.x("train"), p.y("reg", "train"));
    let config = ProbeConfig::default();
    let a = LinearProbe::fit(Task::Regression, &xtr, &ytr, None, &config).unwrap();
    let b = LinearProbe::fit(Task::Regression, &xtr, &ytr, None, &config).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.heads.len(), 3);
    assert!(
        a.heads
            .iter()
            .all(|h| h.selection.len() == config.alphas.len())
    );
}

#[test]
fn probes_fit_the_same_bits_on_any_number_of_threads() {
    let p = Problem::load();
    // Stacked copies of the training split: enough rows for several of the solvers' chunks.
    let stack = |x: &Matrix<f32>| {
        let data: Vec<f32> = (0..4).flat_map(|_| x.as_slice().to_vec()).collect();
        Matrix::new(4 * x.rows(), x.cols(), data).unwrap()
    };
    let stack_y = |y: &Matrix<f64>| {
        let data: Vec<f64> = (0..4).flat_map(|_| y.as_slice().to_vec()).collect();
        Matrix::new(4 * y.rows(), y.cols(), data).unwrap()
    };
    let xtr = stack(&p.x("train"));
    let fits = |threads: usize| {
        mmcl_testutil::on_threads(threads, || {
            [(Task::Classification, "cls"), (Task::Regression, "reg")].map(|(task, kind)| {
                let y = stack_y(&p.y(kind, "train"));
                LinearProbe::fit(task, &xtr, &y, None, &ProbeConfig::default()).unwrap()
            })
        })
    };
    assert!(xtr.rows() > 1024, "{} rows", xtr.rows());
    let one = fits(1);
    assert_eq!(one, fits(3));
    assert_eq!(one, fits(4));
}
