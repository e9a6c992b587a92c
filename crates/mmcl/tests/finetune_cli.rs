//! `mmcl finetune` end to end as a user runs it: a synthetic cohort (`mmcl synth`), its cache
//! (`mmcl build-dataset`), a short fine-tuning run on a phenotype; the run directory holds the
//! model, the metrics with intervals, the log, the figures and the report. Bad setups end with a
//! non-zero exit and a message naming the problem.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{SMALL_ENCODER_TOML, mmcl, ok, s, stderr};
use mmcl_eval::finetune::{FinetuneConfig, FinetuneModel};

/// A short regression run on `lvedv` with a small attention-pooling encoder.
fn finetune_config() -> String {
    format!(
        r#"cache = "cache"
task = "regression"
targets = ["lvedv"]
epochs = 2
batch_size = 8
lr = 0.001
warmup_epochs = 1
loader_threads = 1

{SMALL_ENCODER_TOML}attention_pool = true
drop_path_rate = 0.2

[bootstrap]
resamples = 50
seed = 0
confidence = 0.95
"#
    )
}

#[test]
fn finetunes_on_a_synthetic_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ukb = d.join("ukb");
    ok(mmcl(&[
        "synth",
        "--out",
        s(&ukb),
        "--subjects",
        "40",
        "--image-size",
        "48",
        "--frames",
        "6",
        "--slices",
        "4",
        "--threads",
        "2",
        "--quiet",
    ]));
    let build = d.join("build.toml");
    std::fs::write(
        &build,
        "root = \"ukb\"\noutput = \"cache\"\n[cmr]\nsize = 32\n",
    )
    .expect("build");
    ok(mmcl(&["build-dataset", "--config", s(&build)]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("cache/index.json")).expect("index"))
            .expect("json");
    let names: Vec<String> =
        serde_json::from_value(index["phenotype_names"].clone()).expect("names");
    assert!(names.contains(&"lvedv".to_string()), "{names:?}");

    let config = d.join("finetune.toml");
    std::fs::write(&config, finetune_config()).expect("config");
    let run = d.join("run");
    let out = ok(mmcl(&[
        "finetune",
        "--config",
        s(&config),
        "--output",
        s(&run),
    ]));
    let err = stderr(&out);
    assert!(err.contains("before training"), "{err}");
    assert!(err.contains("epoch 2/2"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lvedv"));

    for f in [
        "model.safetensors",
        "metrics.json",
        "metrics.jsonl",
        "metrics.csv",
        "predictions.csv",
        "scatter.png",
        "training_curves.png",
        "report.md",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).expect("metrics"))
            .expect("json");
    assert_eq!(metrics["task"], "regression");
    let r2 = &metrics["targets"][0]["r2"];
    assert!(r2["ci_low"].as_f64().expect("ci") <= r2["value"].as_f64().expect("value"));
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).expect("log");
    assert_eq!(log.lines().count(), 4, "a train and a val line per epoch");
    let report = std::fs::read_to_string(run.join("report.md")).expect("report");
    assert!(report.contains("scatter.png") && report.contains("training_curves.png"));
    let predictions = std::fs::read_to_string(run.join("predictions.csv")).expect("csv");
    assert!(predictions.starts_with("eid,lvedv_true,lvedv_pred\n"));

    // The saved model loads strictly into the fine-tuning model and predicts.
    let cfg = FinetuneConfig::from_file(&config).expect("config");
    let model = FinetuneModel::new(&cfg.encoder, 1, 0.01, true, 0, &Device::Cpu).expect("model");
    model
        .load_finetuned(&run.join("model.safetensors"))
        .expect("loads");
    let x = Tensor::zeros((1, 1, 12, 2500), candle_core::DType::F32, &Device::Cpu).expect("x");
    assert_eq!(model.forward_t(&x, false).expect("logits").dims(), &[1, 1]);

    // A second run into the same directory needs --overwrite.
    let err = finetune_fails(&config, &run);
    assert!(err.contains("--overwrite"), "{err}");

    // An unknown target is named, with what the cache offers.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, finetune_config().replace("\"lvedv\"", "\"lvedvv\"")).expect("bad");
    let err = finetune_fails(&bad, &d.join("run2"));
    assert!(err.contains("lvedvv") && err.contains("lvedv,"), "{err}");
    assert!(!d.join("run2/model.safetensors").exists());

    // A typo in the configuration names the file and the key.
    std::fs::write(&bad, finetune_config().replace("epochs = 2", "epoch = 2")).expect("bad");
    let err = finetune_fails(&bad, &d.join("run3"));
    assert!(err.contains("bad.toml") && err.contains("epoch"), "{err}");
}

/// `mmcl finetune` with `config` into `output`, asserted to fail; returns its message.
fn finetune_fails(config: &Path, output: &Path) -> String {
    let out = mmcl(&["finetune", "--config", s(config), "--output", s(output)]);
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn the_default_configuration_parses() {
    let out = ok(mmcl(&["finetune", "--print-config"]));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let parsed: FinetuneConfig = toml::from_str(&text).expect("parses");
    assert_eq!(parsed.layer_decay, 0.5);
    assert_eq!(parsed.weight_decay, 0.2);
    assert_eq!(parsed.encoder.drop_path_rate, 0.2);
    assert!(parsed.encoder.attention_pool);
}
