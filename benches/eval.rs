//! Criterion benchmarks of the metrics, the bootstrap and the linear probes.
//!
//! `cargo bench --bench eval -- --measurement-time 5`

use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{Bootstrap, Task, auroc, evaluate};
use mmcl_eval::probe::{SolverOptions, Standardizer, logistic_regression, ridge_path};
use mmcl_nn::rng::SplitMix64;

fn data(n: usize, d: usize) -> (Matrix<f32>, Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64::new(1);
    let x: Vec<f32> = (0..n * d).map(|_| rng.next_normal() as f32).collect();
    let labels: Vec<f64> = (0..n)
        .map(|i| ((x[i * d] + x[i * d + 1]) as f64 + rng.next_normal() > 0.5) as u8 as f64)
        .collect();
    let values: Vec<f64> = (0..n)
        .map(|i| 3.0 * x[i * d + 2] as f64 + rng.next_normal())
        .collect();
    (Matrix::new(n, d, x).expect("shape"), labels, values)
}

fn metrics(c: &mut Criterion) {
    let (_, labels, values) = data(100_000, 4);
    let scores: Vec<f64> = values.iter().map(|v| (v * 100.0).round() / 100.0).collect();
    c.bench_function("auroc_100k", |b| b.iter(|| auroc(&labels, &scores)));
    let truth = Matrix::new(10_000, 2, labels[..20_000].to_vec()).expect("shape");
    let pred = Matrix::new(10_000, 2, scores[..20_000].to_vec()).expect("shape");
    c.bench_function("bootstrap_1000_of_10k_x2", |b| {
        b.iter(|| {
            evaluate(
                Task::Classification,
                &truth,
                &pred,
                &[],
                0.5,
                &Bootstrap::default(),
            )
        })
    });
}

fn probes(c: &mut Criterion) {
    let (x, labels, values) = data(20_000, 256);
    let scaler = Standardizer::fit(&x).expect("scaler");
    let rows: Vec<usize> = (0..x.rows()).collect();
    let mut group = c.benchmark_group("probe_20k_x256");
    group.sample_size(10);
    group.bench_function("logistic_C1", |b| {
        b.iter(|| {
            logistic_regression(
                &x,
                &scaler,
                &rows,
                &labels,
                1.0,
                &SolverOptions::default(),
                None,
            )
        })
    });
    group.bench_function("ridge_3_alphas", |b| {
        b.iter(|| {
            ridge_path(
                &x,
                &scaler,
                &rows,
                std::slice::from_ref(&values),
                &[1.0, 10.0, 100.0],
            )
        })
    });
    group.finish();
}

criterion_group!(benches, metrics, probes);
criterion_main!(benches);
