//! Metric parity: the shared reference fixture (`../shared/parity/metrics`) and scikit-learn /
//! SciPy figures on further cases (`tests/fixtures/metrics_sklearn.json`, made by
//! `tests/fixtures/make_fixtures.py`), all within 1e-6.

use mmcl_eval::Matrix;
use mmcl_eval::metrics::{
    self, Bootstrap, Confusion, Task, accuracy_at, auroc, average_precision, evaluate,
};
use mmcl_testutil::{Fixture, Tolerance};
use serde_json::Value;

const TOL: f64 = Tolerance::METRIC.abs;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics_sklearn.json"
    );
    let text = std::fs::read_to_string(path).expect("read metrics_sklearn.json");
    let json: Value = serde_json::from_str(&text).expect("parse metrics_sklearn.json");
    json["cases"].as_array().expect("cases").clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Our classification metrics of one case: (auroc, auprc, f1, balanced accuracy, accuracy).
fn classification(labels: &[f64], scores: &[f64], threshold: f64) -> [f64; 5] {
    [
        auroc(labels, scores).unwrap(),
        average_precision(labels, scores).unwrap(),
        metrics::f1_at(labels, scores, threshold).unwrap(),
        metrics::balanced_accuracy_at(labels, scores, threshold).unwrap(),
        accuracy_at(labels, scores, threshold).unwrap(),
    ]
}

#[test]
fn metrics_match_sklearn_cases() {
    let mut worst: f64 = 0.0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        // Our value of each metric, by the case's key for sklearn's.
        let ours: Vec<(&str, f64)> = match case["kind"].as_str().unwrap() {
            "classification" => {
                let (labels, scores) = (floats(&case["labels"]), floats(&case["scores"]));
                let threshold = case["threshold"].as_f64().unwrap();
                let keys = ["auroc", "auprc", "f1", "balanced_accuracy", "accuracy"];
                keys.into_iter()
                    .zip(classification(&labels, &scores, threshold))
                    .collect()
            }
            _ => {
                let (truth, pred) = (floats(&case["truth"]), floats(&case["pred"]));
                vec![
                    ("r2", metrics::r2(&truth, &pred).unwrap()),
                    ("pearson_r", metrics::pearson_r(&truth, &pred).unwrap()),
                    ("mae", metrics::mae(&truth, &pred).unwrap()),
                ]
            }
        };
        for (key, value) in ours {
            let expected = case[key].as_f64().unwrap();
            let diff = (value - expected).abs();
            worst = worst.max(diff);
            assert!(diff <= TOL, "{name} {key}: {value} vs sklearn {expected}");
        }
    }
    eprintln!("metrics vs scikit-learn: max |Δ| = {worst:.3e}");
}

fn as_f64(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

#[test]
fn metrics_match_shared_parity_fixture() {
    let Some(io) = Fixture::load("metrics.io") else {
        return;
    };
    let scalar = |name: &str| f64::from(io.values(name)[0]);
    // Regression: the fixture's figures follow from its inputs.
    let (targets, predictions) = (
        as_f64(io.values("targets")),
        as_f64(io.values("predictions")),
    );
    for (name, ours) in [
        ("r2", metrics::r2(&targets, &predictions).unwrap()),
        (
            "pearson_r",
            metrics::pearson_r(&targets, &predictions).unwrap(),
        ),
        ("mae", metrics::mae(&targets, &predictions).unwrap()),
    ] {
        // The expected values are stored as f32: allow their rounding on top of 1e-6.
        let expected = scalar(name);
        let diff = (ours - expected).abs();
        eprintln!("shared parity {name}: ours {ours:.9} reference {expected:.9} |Δ| {diff:.2e}");
        assert!(diff <= TOL, "{name}: {ours} vs reference {expected}");
    }
    // Classification: the stored figures do not follow from the stored (float32) inputs; the
    // scikit-learn values on exactly these inputs are in metrics_sklearn.json
    // ("shared_parity_inputs"). We must match scikit-learn; where the fixture differs, it must
    // differ from scikit-learn too (i.e. the fixture, not us, is off).
    let (labels, scores) = (as_f64(io.values("labels")), as_f64(io.values("scores")));
    let ours = classification(&labels, &scores, 0.6);
    let sklearn = cases()
        .into_iter()
        .find(|c| c["name"] == "shared_parity_inputs" && c["kind"] == "classification")
        .expect("shared_parity_inputs case");
    assert_eq!(
        floats(&sklearn["labels"]),
        labels,
        "fixture inputs changed: regenerate"
    );
    for (k, (key, fixture_key)) in [
        ("auroc", "auroc"),
        ("auprc", "auprc"),
        ("f1", "f1_at_0.6"),
        ("balanced_accuracy", "balanced_accuracy_at_0.6"),
    ]
    .iter()
    .enumerate()
    {
        let reference = scalar(fixture_key);
        let skl = sklearn[*key].as_f64().unwrap();
        assert!(
            (ours[k] - skl).abs() <= TOL,
            "{key}: {} vs sklearn {skl}",
            ours[k]
        );
        let diff = (ours[k] - reference).abs();
        eprintln!(
            "shared parity {key}: ours {:.9} reference {reference:.9} sklearn-on-inputs {skl:.9} |Δ| {diff:.2e}",
            ours[k]
        );
        if diff > TOL {
            assert!(
                (skl - reference).abs() > TOL,
                "{key}: fixture {reference} agrees with sklearn {skl} but not with us {}",
                ours[k]
            );
        }
    }
}

#[test]
fn confusion_counts_are_consistent() {
    let labels = [1.0, 0.0, 1.0, 0.0, 1.0];
    let scores = [0.9, 0.6, 0.6, 0.2, 0.1];
    let c = Confusion::at_threshold(&labels, &scores, 0.6).unwrap();
    assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2.0, 1.0, 1.0, 1.0));
    assert!((c.f1() - 4.0 / 6.0).abs() < 1e-15);
    assert!((c.balanced_accuracy().unwrap() - 0.5 * (2.0 / 3.0 + 0.5)).abs() < 1e-15);
}

fn problem(n: usize, seed: u64) -> (Matrix<f64>, Matrix<f64>) {
    let mut rng = mmcl_nn::rng::SplitMix64::new(seed);
    let mut truth = Vec::new();
    let mut pred = Vec::new();
    for i in 0..n {
        let y = (rng.next_f64() < 0.3) as u8 as f64;
        truth.push(y);
        truth.push(if i % 7 == 0 {
            f64::NAN
        } else {
            (rng.next_f64() < 0.5) as u8 as f64
        });
        pred.push((0.3 * y + 0.7 * rng.next_f64()).min(1.0));
        pred.push(rng.next_f64());
    }
    (
        Matrix::new(n, 2, truth).unwrap(),
        Matrix::new(n, 2, pred).unwrap(),
    )
}

#[test]
fn bootstrap_is_deterministic_and_covers_the_estimate() {
    let (truth, pred) = problem(300, 11);
    let boot = Bootstrap {
        resamples: 400,
        seed: 5,
        confidence: 0.95,
    };
    let a = evaluate(Task::Classification, &truth, &pred, &[], 0.5, &boot).unwrap();
    let b = evaluate(Task::Classification, &truth, &pred, &[], 0.5, &boot).unwrap();
    assert_eq!(a, b, "same seed, same intervals");
    // The same result with a different number of threads.
    let c = mmcl_testutil::on_threads(1, || {
        evaluate(Task::Classification, &truth, &pred, &[], 0.5, &boot).unwrap()
    });
    assert_eq!(a, c, "intervals must not depend on the thread count");
    let other = Bootstrap { seed: 6, ..boot };
    let d = evaluate(Task::Classification, &truth, &pred, &[], 0.5, &other).unwrap();
    assert_ne!(a.targets[0].metrics["auroc"], d.targets[0].metrics["auroc"]);
    for t in a.targets.iter().chain([&a.average]) {
        for (name, e) in &t.metrics {
            let (lo, hi) = (e.ci_low.unwrap(), e.ci_high.unwrap());
            assert!(lo <= hi, "{name}: [{lo}, {hi}]");
            assert!(
                lo - 1e-9 <= e.value && e.value <= hi + 1e-9 || name == "f1",
                "{name}"
            );
            assert!(hi - lo < 0.3, "{name}: interval too wide [{lo}, {hi}]");
        }
    }
    assert_eq!(a.targets[0].n, 300);
    assert_eq!(a.targets[1].n, 300 - 300usize.div_ceil(7));
    let auc0 = auroc(&truth.column(0), &pred.column(0)).unwrap();
    assert_eq!(a.targets[0].metrics["auroc"].value, auc0);
    let avg = 0.5 * (a.targets[0].metrics["auroc"].value + a.targets[1].metrics["auroc"].value);
    assert!((a.average.metrics["auroc"].value - avg).abs() < 1e-15);
}

#[test]
fn one_class_resamples_are_skipped() {
    // Two positives in 30 rows: some resamples draw neither.
    let mut truth = vec![0.0; 30];
    truth[3] = 1.0;
    truth[17] = 1.0;
    let pred: Vec<f64> = (0..30).map(|i| i as f64 / 30.0).collect();
    let boot = Bootstrap {
        resamples: 500,
        seed: 1,
        confidence: 0.9,
    };
    let e = evaluate(
        Task::Classification,
        &Matrix::column_vector(truth),
        &Matrix::column_vector(pred),
        &["rare".to_string()],
        0.5,
        &boot,
    )
    .unwrap();
    let used = e.targets[0].resamples_used;
    assert!(used < 500 && used > 400, "{used}");
    assert_eq!(e.average.resamples_used, used);
}

/// A rare class absent from the evaluated rows, or a target whose probe could not be fitted
/// (NaN predictions), leaves that target undefined — with its counts and the reason — and the
/// others evaluated; the average is over the defined targets.
#[test]
fn undefined_targets_are_reported_and_the_rest_evaluated() {
    let nan = f64::NAN;
    #[rustfmt::skip]
    let truth = Matrix::new(6, 3, vec![
        0.0, 0.0, 1.0,
        1.0, 0.0, 0.0,
        0.0, 0.0, 1.0,
        1.0, nan, 0.0,
        1.0, 0.0, 1.0,
        0.0, 0.0, 0.0,
    ]).unwrap();
    #[rustfmt::skip]
    let pred = Matrix::new(6, 3, vec![
        0.1, 0.3, nan,
        0.8, 0.2, nan,
        0.3, 0.6, nan,
        0.7, 0.1, nan,
        0.9, 0.4, nan,
        0.2, 0.5, nan,
    ]).unwrap();
    let names: Vec<String> = ["common", "rare", "unfitted"].map(String::from).to_vec();
    let e = evaluate(
        Task::Classification,
        &truth,
        &pred,
        &names,
        0.5,
        &Bootstrap::default(),
    )
    .unwrap();
    let common = &e.targets[0];
    assert!(common.undefined.is_none());
    assert_eq!(common.metrics["auroc"].value, 1.0);
    let rare = &e.targets[1];
    assert_eq!((rare.n, rare.n_positive), (5, Some(0)));
    assert!(rare.metrics.is_empty() && rare.resamples_used == 0);
    assert!(
        rare.undefined
            .as_deref()
            .is_some_and(|r| r.contains("one class only"))
    );
    let unfitted = &e.targets[2];
    assert_eq!((unfitted.n, unfitted.n_positive), (6, Some(3)));
    assert!(
        unfitted
            .undefined
            .as_deref()
            .is_some_and(|r| r.contains("no predictions"))
    );
    assert_eq!(e.undefined_targets().count(), 2);
    assert_eq!(e.average_of("auroc").map(|a| a.value), Some(1.0));
    // The JSON form states the reason and omits the metrics.
    let json = serde_json::to_value(&e).unwrap();
    assert!(json["targets"][1].get("auroc").is_none());
    assert!(json["targets"][1]["undefined"].is_string());
    let back: mmcl_eval::metrics::Evaluation = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);
    // Nothing defined at all: every target and the average say why.
    let one_class = Matrix::column_vector(vec![1.0, 1.0, nan]);
    let p = Matrix::column_vector(vec![0.2, 0.3, 0.4]);
    let e = evaluate(
        Task::Classification,
        &one_class,
        &p,
        &[],
        0.5,
        &Bootstrap::default(),
    )
    .unwrap();
    assert!(e.targets[0].undefined.is_some() && e.average.undefined.is_some());
}

#[test]
fn bad_inputs_are_errors() {
    let truth = Matrix::column_vector(vec![1.0, 1.0, f64::NAN]);
    let pred = Matrix::column_vector(vec![0.2, 0.3, 0.4]);
    let boot = Bootstrap::default();
    let nan_pred = Matrix::column_vector(vec![0.2, f64::NAN, 0.4]);
    let err = evaluate(Task::Classification, &truth, &nan_pred, &[], 0.5, &boot).unwrap_err();
    assert!(err.to_string().contains("prediction of row 1"), "{err}");
    let all_nan = Matrix::column_vector(vec![f64::NAN; 3]);
    let err = evaluate(Task::Regression, &all_nan, &pred, &[], 0.5, &boot).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let short = Matrix::column_vector(vec![0.2, 0.3]);
    assert!(evaluate(Task::Regression, &truth, &short, &[], 0.5, &boot).is_err());
}
