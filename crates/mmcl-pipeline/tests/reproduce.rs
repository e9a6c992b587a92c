//! A tiny end-to-end run of the pipeline: the `results.json` contract, the report and figures,
//! reuse of finished stages and rebuilding of stale ones.

use candle_core::Device;
use mmcl_pipeline::reproduce::{Layout, STAGE_FILE, run};
use mmcl_pipeline::{ReproduceConfig, Results};
use mmcl_testutil::on_threads;
use mmcl_train::NoProgress;

/// 80 subjects with enriched prevalences so that every split holds cases of every disease;
/// small ECG windows and images, one epoch per stage.
const TINY: &str = r#"
[cohort]
subjects = 80
seed = 3
[cohort.cmr]
image_size = 32
slices = 6
frames = 4
fov_mm = 160.0
[cohort.prevalence]
cad = 0.35
af = 0.35
diabetes = 0.35
lvh = 0.35
hypertension = 0.4
[data]
image_size = 24
split = { train = 0.4, val = 0.2, test = 0.4, seed = 1, stratify_by = "AF" }
[mae]
max_epochs = 1
warmup_epochs = 0
batch_size = 16
model = { img_size = [1, 8, 200] }
[mmcl]
max_epochs = 1
warmup_epochs = 0
batch_size = 16
embedding_dim = 32
projection_dim = 16
ecg = { input_size = [1, 8, 200] }
imaging = { img_size = 24, augment = { size = 24 } }
[evaluation]
bootstrap = 20
cs = [0.01, 1.0]
alphas = [1.0, 100.0]
explain_subjects = 1
"#;

fn tiny() -> ReproduceConfig {
    ReproduceConfig::from_toml_str(TINY, None).unwrap()
}

#[test]
fn tiny_run_writes_the_contract_and_reuses_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = tiny();
    assert!(cfg.concurrent_stages);
    // Two threads: the contrastive stages run side by side (the seeds test runs them in turn).
    let first = on_threads(2, || run(&cfg, &out, &Device::Cpu, &mut NoProgress)).unwrap();
    let layout = Layout::new(&out);
    let laps: Vec<&str> = first.timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        laps[..4],
        ["cohort", "cache", "mae", "mmcl + mae_mmcl, side by side"]
    );

    // The contract, read as plain JSON.
    let text = std::fs::read_to_string(layout.results()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let top: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        top,
        ["comparisons", "config", "encoders", "negative_control"]
    );
    assert_eq!(v["negative_control"], "rvef");
    let encoders = v["encoders"].as_object().unwrap();
    let mut keys: Vec<&str> = encoders.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cmr",
            "ecg_features",
            "mae",
            "mae_mmcl",
            "mmcl",
            "random_init"
        ]
    );
    let phenotypes = [
        "lvedv", "lvesv", "lvsv", "lvef", "lvco", "lvm", "rvedv", "rvesv", "rvsv", "rvef",
    ];
    let diseases = ["CAD", "AF", "diabetes", "LVH"];
    let interval_ok = |x: &serde_json::Value, metric: &str| {
        let value = x[metric].as_f64().unwrap();
        let (lo, hi) = (x["ci_low"].as_f64(), x["ci_high"].as_f64());
        assert!(value.is_finite(), "{x}");
        if let (Some(lo), Some(hi)) = (lo, hi) {
            assert!(lo <= hi, "{x}");
        }
        assert_eq!(x.as_object().unwrap().len(), 3, "{x}");
        value
    };
    for (name, e) in encoders {
        let e = e.as_object().unwrap();
        assert_eq!(e.len(), 2, "{name}");
        let p = e["phenotypes"].as_object().unwrap();
        assert_eq!(p.len(), phenotypes.len() + 1, "{name}: {p:?}");
        let mean = p["mean_r2"].as_f64().unwrap();
        let r2s: Vec<f64> = phenotypes
            .iter()
            .map(|n| interval_ok(&p[*n], "r2"))
            .collect();
        let avg = r2s.iter().sum::<f64>() / r2s.len() as f64;
        assert!((mean - avg).abs() < 1e-9, "{name}: mean_r2 {mean} vs {avg}");
        let d = e["diseases"].as_object().unwrap();
        assert_eq!(d.len(), diseases.len(), "{name}");
        for n in diseases {
            let auroc = interval_ok(&d[n], "auroc");
            assert!((0.0..=1.0).contains(&auroc));
        }
    }
    assert_eq!(v["config"]["cohort"]["subjects"], 80);

    // Paired comparisons: every pair, every target, intervals ordered; the mean R² difference
    // is the difference of the two encoders' means (every phenotype is defined for both).
    let comparisons = v["comparisons"].as_object().unwrap();
    let mut keys: Vec<&str> = comparisons.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["mae_mmcl_vs_mae", "mae_vs_random", "mmcl_vs_random"]);
    for (key, c) in comparisons {
        let p = c["phenotypes"].as_object().unwrap();
        assert_eq!(p.len(), phenotypes.len() + 1, "{key}");
        for (name, d) in p.iter().chain(c["diseases"].as_object().unwrap()) {
            let diff = d["diff"]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} {name}: {d}"));
            let (lo, hi) = (
                d["ci_low"].as_f64().unwrap(),
                d["ci_high"].as_f64().unwrap(),
            );
            assert!(diff.is_finite() && lo <= hi, "{key} {name}: {d}");
        }
        assert_eq!(c["diseases"].as_object().unwrap().len(), diseases.len());
    }
    let mean = |k: &str| v["encoders"][k]["phenotypes"]["mean_r2"].as_f64().unwrap();
    let paired = comparisons["mae_mmcl_vs_mae"]["phenotypes"]["mean_r2"]["diff"]
        .as_f64()
        .unwrap();
    assert!((paired - (mean("mae_mmcl") - mean("mae"))).abs() < 1e-9);
    // JSON keeps the values to the last digit or so (serde_json parses floats approximately).
    let read = Results::read(&layout.results()).unwrap();
    for ((ka, a), (kb, b)) in read
        .encoders
        .iter()
        .into_iter()
        .zip(first.results.encoders.iter())
    {
        assert_eq!(ka, kb);
        assert!((a.phenotypes.mean_r2 - b.phenotypes.mean_r2).abs() < 1e-12);
        for ((na, x), (nb, y)) in a.diseases.iter().zip(&b.diseases) {
            assert_eq!(na, nb);
            assert!((x.auroc - y.auroc).abs() < 1e-12);
        }
    }
    // The CMR encoder sees the anatomy the phenotypes are measured from.
    assert!(first.results.encoders.cmr.phenotypes.mean_r2 > 0.2);

    // Report and figures.
    let report = std::fs::read_to_string(layout.report()).unwrap();
    assert!(report.contains("| MAE + MMCL (ECG) |") && report.contains("LVH AUROC"));
    for section in [
        "## Paired comparisons",
        "| MAE + MMCL − MAE |",
        "**Learnability ceiling**",
        "**Negative control** (`rvef`",
        "Hand-made ECG features (ceiling)",
    ] {
        assert!(report.contains(section), "{section}");
    }
    for run in ["mae", "mmcl", "mae_mmcl"] {
        assert!(layout.figures().join(format!("curves_{run}.png")).is_file());
        assert!(layout.run(run).join(STAGE_FILE).is_file());
    }
    let maps: Vec<_> = std::fs::read_dir(layout.figures().join("localization"))
        .unwrap()
        .collect();
    assert_eq!(maps.len(), 1);
    assert!(layout.config().is_file());
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Same settings: every stage is reused and the results are the same.
    let again = on_threads(2, || run(&cfg, &out, &Device::Cpu, &mut NoProgress)).unwrap();
    let reused: Vec<(&str, bool)> = again
        .timings
        .iter()
        .map(|t| (t.name.as_str(), t.reused))
        .collect();
    // (Nothing left to train: the finished contrastive stages are reused one after the other.)
    assert_eq!(
        &reused[..5],
        [
            ("cohort", true),
            ("cache", true),
            ("mae", true),
            ("mmcl", true),
            ("mae_mmcl", true),
        ]
    );
    assert_eq!(again.results.encoders, first.results.encoders);
    // The probes in turn on all threads find what they found side by side, bit for bit.
    let mut in_turn = cfg.clone();
    in_turn.concurrent_stages = false;
    let sequential = on_threads(2, || run(&in_turn, &out, &Device::Cpu, &mut NoProgress)).unwrap();
    assert_eq!(sequential.results.encoders, first.results.encoders);
    assert_eq!(sequential.results.comparisons, first.results.comparisons);

    // A different contrastive setting retrains both MMCL runs and nothing upstream.
    let mut changed = cfg.clone();
    changed.mmcl.temperature = 0.2;
    let third = on_threads(2, || run(&changed, &out, &Device::Cpu, &mut NoProgress)).unwrap();
    let reused: Vec<bool> = third.timings.iter().take(4).map(|t| t.reused).collect();
    assert_eq!(reused, [true, true, true, false]);
    assert_eq!(third.results.encoders.mae, first.results.encoders.mae);
    assert_eq!(
        third.results.encoders.random_init,
        first.results.encoders.random_init
    );
}

#[test]
fn seeds_repeat_the_training_and_report_every_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cfg = tiny();
    cfg.seeds = vec![5, 6];
    cfg.concurrent_stages = false;
    let outputs = on_threads(2, || run(&cfg, &out, &Device::Cpu, &mut NoProgress)).unwrap();
    let layout = Layout::new(&out);
    let seeds = &outputs.results.seeds;
    assert_eq!(seeds.iter().map(|s| s.seed).collect::<Vec<_>>(), [5, 6]);
    // The top-level blocks are the first seed's; the seeds' trainings differ.
    assert_eq!(outputs.results.encoders, seeds[0].encoders);
    assert_ne!(seeds[0].encoders.mae, seeds[1].encoders.mae);
    for seed in [5, 6] {
        for run in ["mae", "mmcl", "mae_mmcl"] {
            assert!(layout.seed_run(Some(seed), run).join(STAGE_FILE).is_file());
        }
    }
    let report = std::fs::read_to_string(layout.report()).unwrap();
    assert!(report.contains("## Training seeds") && report.contains("| mean ± sd |"));
    let names: Vec<&str> = outputs.timings.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"mmcl (seed 6)") && names.contains(&"mae_mmcl (seed 6)"),
        "{names:?}"
    );
    let read = Results::read(&layout.results()).unwrap();
    assert_eq!(read.seeds.len(), 2);
    assert!(
        ReproduceConfig::from_toml_str("seeds = [1, 1]\n", None)
            .unwrap_err()
            .to_string()
            .contains("repeat a seed")
    );
}

#[test]
fn invalid_configurations_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cfg = tiny();
    cfg.mae.model.embed_dim = 384;
    let err = run(&cfg, &out, &Device::Cpu, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different encoders"), "{err}");
    assert!(!out.exists());
}
