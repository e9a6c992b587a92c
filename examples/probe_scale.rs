//! Times the linear probes and the bootstrap at a large scale on synthetic embeddings.
//!
//! ```text
//! cargo run --release --example probe_scale -- [N] [D] [K]
//! ```
//! (defaults: N = 100 000 training rows, D = 2048 features, K = 4 targets; a quarter as many
//! validation and test rows).

use std::time::Instant;

use anyhow::Result;
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{Bootstrap, Task, evaluate};
use mmcl_eval::probe::{LinearProbe, ProbeConfig};
use mmcl_nn::rng::SplitMix64;
use rayon::prelude::*;

fn synthetic(n: usize, d: usize, k: usize, seed: u64, task: Task) -> (Matrix<f32>, Matrix<f64>) {
    let x: Vec<f32> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
            (0..d)
                .map(move |_| rng.next_normal() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = SplitMix64::new(seed + 1);
    let mut y = Vec::with_capacity(n * k);
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        for t in 0..k {
            let signal: f64 = row[t * 8..t * 8 + 8].iter().map(|&v| v as f64).sum::<f64>() / 2.0;
            let noisy = signal + rng.next_normal();
            let value = match task {
                Task::Classification => (noisy > 1.0) as u8 as f64,
                Task::Regression => 60.0 + 10.0 * noisy,
            };
            y.push(if (i + t) % 11 == 0 { f64::NAN } else { value });
        }
    }
    (
        Matrix::new(n, d, x).expect("shape"),
        Matrix::new(n, k, y).expect("shape"),
    )
}

fn main() -> Result<()> {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (n, d, k) = (arg(1, 100_000), arg(2, 2048), arg(3, 4));
    for task in [Task::Classification, Task::Regression] {
        let start = Instant::now();
        let (xtr, ytr) = synthetic(n, d, k, 1, task);
        let (xva, yva) = synthetic(n / 4, d, k, 2, task);
        let (xte, yte) = synthetic(n / 4, d, k, 3, task);
        println!(
            "{task}: data {n}×{d}, {k} targets in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let config = ProbeConfig {
            cs: vec![1e-3, 1e-2, 1e-1],
            alphas: vec![1e1, 1e2, 1e3],
            ..ProbeConfig::default()
        };
        let start = Instant::now();
        let probe = LinearProbe::fit(task, &xtr, &ytr, Some((&xva, &yva)), &config)?;
        println!(
            "  fit (3-point grid): {:.1} s",
            start.elapsed().as_secs_f64()
        );
        for h in &probe.heads {
            if let Some(f) = h.fit {
                println!(
                    "    C={:e}: {} iterations, converged {}",
                    h.regularisation, f.iterations, f.converged
                );
            }
        }
        let start = Instant::now();
        let pred = probe.predict(&xte)?;
        let eval = evaluate(task, &yte, &pred, &[], 0.5, &Bootstrap::default())?;
        println!(
            "  predict + 1000 bootstrap resamples of {} rows: {:.1} s",
            xte.rows(),
            start.elapsed().as_secs_f64()
        );
        print!("{}", mmcl_eval::report::text_table(&eval));
    }
    Ok(())
}
