//! Data-layer benchmarks at the paper's shapes:
//!
//! - `preprocess/ecg_12x5000`: the reference preprocessing of one 10 s, 500 Hz, 12-lead
//!   recording (NaN → 0, clipping, ALS baseline λ 1e7 p 0.3 × 5, group normalisation). The
//!   reference (SciPy `spsolve`) runs 11 recordings/s on this machine kind.
//! - `xml/parse_cardiosoft_12x5000`: parsing a full UK Biobank CardioSoft XML (rhythm strip
//!   12 × 5000 plus median beats 12 × 600 and measurements).
//! - `loader/mmcl_batch256`: one batch of the multimodal contrastive configuration from the
//!   cache — batch 256, ECG 1 × 12 × 2500 random crops of 12 × 5000 with FT surrogate, jitter,
//!   rescaling; images 3 × 210 × 210 with flip, rotation, colour jitter and resized crop
//!   (probability 0.95).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mmcl_data::cache::{Cache, CacheWriter, EcgLayout, ImageLayout, SubjectMeta};
use mmcl_data::ecg::preprocess::{PreprocessConfig, preprocess};
use mmcl_data::ecg::xml::parse_cardiosoft_xml;
use mmcl_data::ecg::{Ecg, LEADS};
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::rng::Rng;
use mmcl_data::tables::Split;

/// A synthetic 12-lead recording in mV: beats, baseline wander, noise.
fn synthetic_ecg(samples: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(12 * samples);
    for lead in 0..12 {
        for t in 0..samples {
            let s = t as f64 / 500.0;
            let phase = (s / 0.85).fract();
            let beat = (-((phase - 0.3) / 0.012f64).powi(2)).exp()
                + 0.25 * (-((phase - 0.55) / 0.05f64).powi(2)).exp();
            let wander = 0.3 * (2.0 * std::f64::consts::PI * 0.25 * s).sin();
            let v = (0.4 + 0.1 * lead as f64) * beat + wander + 0.02 * rng.normal();
            data.push(v as f32);
        }
    }
    data
}

fn cardiosoft_xml(strip: &[f32], samples: usize) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<CardiologyXML>\n<RestingECGMeasurements>\n\
         <VentricularRate units=\"BPM\">71</VentricularRate>\n<QRSDuration units=\"ms\">94</QRSDuration>\n\
         <MedianSamples>\n<SampleRate units=\"Hz\">500</SampleRate>\n<Resolution units=\"uVperLsb\">5</Resolution>\n",
    );
    let waveform = |xml: &mut String, lead: usize, n: usize| {
        xml.push_str(&format!("<WaveformData lead=\"{}\">\n", LEADS[lead]));
        for (i, v) in strip[lead * samples..lead * samples + n].iter().enumerate() {
            xml.push_str(&format!("{}", (v * 200.0).round() as i32));
            xml.push_str(if i % 16 == 15 { ",\n\t" } else { "," });
        }
        xml.push_str("\n</WaveformData>\n");
    };
    for lead in 0..12 {
        waveform(&mut xml, lead, 600);
    }
    xml.push_str("</MedianSamples>\n</RestingECGMeasurements>\n<StripData>\n<SampleRate units=\"Hz\">500</SampleRate>\n");
    xml.push_str(&format!(
        "<ChannelSampleCountTotal>{samples}</ChannelSampleCountTotal>\n<Resolution units=\"uVperLsb\">5</Resolution>\n"
    ));
    for lead in (0..12).rev() {
        waveform(&mut xml, lead, samples);
    }
    xml.push_str("</StripData>\n</CardiologyXML>\n");
    xml
}

fn bench_preprocess(c: &mut Criterion) {
    let ecg = Ecg::new(synthetic_ecg(5000, 1), 5000, 500.0).expect("ecg");
    let cfg = PreprocessConfig::default();
    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ecg_12x5000", |b| {
        b.iter(|| black_box(preprocess(black_box(&ecg), &cfg).expect("preprocess")))
    });
    group.finish();
}

fn bench_xml(c: &mut Criterion) {
    let xml = cardiosoft_xml(&synthetic_ecg(5000, 2), 5000);
    let bytes = xml.into_bytes();
    let path = Path::new("bench.xml");
    let mut group = c.benchmark_group("xml");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_cardiosoft_12x5000", |b| {
        b.iter(|| black_box(parse_cardiosoft_xml(black_box(&bytes), path).expect("parse")))
    });
    group.finish();
}

/// Writes a cache of `n` synthetic subjects (ECG 12 × 5000, image 3 × 210 × 210).
fn synthetic_cache(dir: &Path, n: usize) -> PathBuf {
    let out = dir.join("cache");
    let mut writer = CacheWriter::create(
        &out,
        Some(EcgLayout {
            leads: 12,
            samples: 5000,
            sample_rate: 500.0,
        }),
        Some(ImageLayout {
            channels: 3,
            height: 210,
            width: 210,
        }),
        64,
        true,
    )
    .expect("writer");
    let mut rng = Rng::new(3);
    let image: Vec<f32> = (0..3 * 210 * 210).map(|_| rng.uniform() as f32).collect();
    for i in 0..n {
        let ecg = synthetic_ecg(5000, i as u64);
        writer
            .push(
                SubjectMeta {
                    eid: 1_000_000 + i as u64,
                    split: Split::Train,
                    labels: vec![Some((i % 2) as u8)],
                    phenotypes: vec![f64::NAN; 10],
                },
                Some(&ecg),
                Some(&image),
            )
            .expect("push");
    }
    writer
        .finish(
            vec!["CAD".into()],
            (0..10).map(|k| format!("p{k}")).collect(),
            serde_json::Value::Null,
            serde_json::Value::Null,
        )
        .expect("finish");
    out
}

fn bench_loader(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("mmcl-bench-loader-{}", std::process::id()));
    let cache_dir = synthetic_cache(&dir, 256);
    let cache = Arc::new(Cache::open(&cache_dir).expect("open"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loader = Loader::new(
        cache.clone(),
        (0..cache.len()).collect(),
        LoaderConfig {
            threads,
            ..LoaderConfig::mmcl_train()
        },
        Device::Cpu,
    )
    .expect("loader");
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements(1));
    let mut epoch = 0u64;
    group.bench_function(format!("mmcl_batch256_{threads}threads"), |b| {
        b.iter(|| {
            epoch += 1;
            black_box(loader.batch(epoch, 0).expect("batch"))
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench_preprocess, bench_xml, bench_loader
}
criterion_main!(benches);
