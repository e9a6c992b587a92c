//! Generation speed of one subject (single thread): the hidden state, ECG, cine and
//! segmentation in memory, and the same written to disk (XML + two gzip NIfTI files), at the
//! default acquisition sizes and at a small size for quick reproductions.
//!
//! ```text
//! cargo bench --bench generate -- --measurement-time 10
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_synth::{Cohort, SynthConfig, WriteOptions};

fn configs() -> Vec<(&'static str, SynthConfig)> {
    vec![
        ("default_128px_10x25", SynthConfig::default()),
        ("reproduce_64px_8x8", SynthConfig::reproduce()),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("synth_subject");
    group.sample_size(10);
    for (name, cfg) in configs() {
        let cohort = Cohort::new(cfg.clone()).expect("valid configuration");
        let mut i = 0usize;
        group.bench_function(format!("{name}/in_memory"), |b| {
            b.iter(|| {
                i = (i + 1) % 64;
                black_box(cohort.subject(i).expect("subject"))
            })
        });
        // Writing includes the gzip compression of the cine and the XML text.
        let one = Cohort::new(SynthConfig {
            subjects: 1,
            ..cfg.clone()
        })
        .expect("valid configuration");
        let dir = std::env::temp_dir().join(format!("mmcl-synth-bench-{}", std::process::id()));
        group.bench_function(format!("{name}/to_disk"), |b| {
            b.iter(|| {
                one.write(&dir, WriteOptions { overwrite: true }, &|| {})
                    .expect("write")
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

fn ecg_only(c: &mut Criterion) {
    let cohort = Cohort::new(SynthConfig::default()).expect("valid configuration");
    let state = cohort.hidden_state(0);
    c.bench_function("synth_ecg/generate", |b| {
        b.iter(|| black_box(cohort.ecg(&state)))
    });
    let ecg = cohort.ecg(&state);
    c.bench_function("synth_ecg/cardiosoft_xml", |b| {
        b.iter(|| black_box(mmcl_synth::cardiosoft::cardiosoft_xml(&state, &ecg)))
    });
}

criterion_group!(benches, bench, ecg_only);
criterion_main!(benches);
