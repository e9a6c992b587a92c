//! Figures built from an evaluation: one series or panel per target, from the present rows.

use super::*;
use crate::metrics::{Bootstrap, evaluate, roc_curve};

fn matrices(task: Task) -> (Matrix<f64>, Matrix<f64>) {
    let truth: Vec<f64> = (0..80)
        .map(|k| match (k % 11, task) {
            (0, _) => f64::NAN,
            (_, Task::Classification) => ((k * 7) % 3 == 0) as u8 as f64,
            (_, Task::Regression) => k as f64,
        })
        .collect();
    let predictions = (0..80).map(|k| ((k * 37) % 41) as f64 / 41.0).collect();
    (
        Matrix::new(40, 2, truth).unwrap(),
        Matrix::new(40, 2, predictions).unwrap(),
    )
}

fn names() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

#[test]
fn roc_figure_has_a_series_per_target() {
    let (truth, predictions) = matrices(Task::Classification);
    let boot = Bootstrap {
        resamples: 10,
        ..Bootstrap::default()
    };
    let eval = evaluate(
        Task::Classification,
        &truth,
        &predictions,
        &names(),
        0.5,
        &boot,
    )
    .unwrap();
    let figure = RocFigure::from_evaluation(&eval, &truth, &predictions).unwrap();
    assert_eq!(figure.title, "ROC curves");
    assert_eq!(figure.series.len(), 2);
    let (t, p): (Vec<f64>, Vec<f64>) = (0..40)
        .filter(|&i| !truth.get(i, 1).is_nan())
        .map(|i| (truth.get(i, 1), predictions.get(i, 1)))
        .unzip();
    let series = &figure.series[1];
    assert_eq!(series.name, "b");
    assert_eq!(series.curve, roc_curve(&t, &p).unwrap());
    let auroc = eval.targets[1].metrics["auroc"];
    assert_eq!(series.auroc, auroc.value);
    assert_eq!(series.ci, auroc.ci_low.zip(auroc.ci_high));
}

#[test]
fn scatter_figure_has_a_panel_per_target() {
    let (truth, predictions) = matrices(Task::Regression);
    let eval = evaluate(
        Task::Regression,
        &truth,
        &predictions,
        &names(),
        0.5,
        &Bootstrap {
            resamples: 0,
            ..Bootstrap::default()
        },
    )
    .unwrap();
    let figure = ScatterFigure::from_evaluation(&eval, &truth, &predictions).unwrap();
    assert_eq!(figure.panels.len(), 2);
    let panel = &figure.panels[0];
    assert_eq!(panel.name, "a");
    assert!(panel.truth.iter().all(|t| !t.is_nan()));
    assert_eq!(panel.truth.len(), panel.prediction.len());
    assert_eq!(panel.r2, Some(eval.targets[0].metrics["r2"].value));
    // Matrices that are not the evaluation's, and a metric the task does not report, are
    // errors rather than panics.
    let one = Matrix::new(40, 1, vec![0.0; 40]).unwrap();
    assert!(ScatterFigure::from_evaluation(&eval, &one, &predictions).is_err());
    assert!(RocFigure::from_evaluation(&eval, &truth, &predictions).is_err());
}
