//! From a dataset cache and an encoder to embeddings and probes with `mmcl` alone, and the
//! rules every command follows: a model named by its run folder, checkpoint folder or file, an
//! export that loads without a configuration file, outputs that appear whole or not at all,
//! clear errors.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_refused, mmcl, read_npy, s, stderr};
use mmcl_ecg::{EcgVit, EcgVitConfig};

/// A temporary folder holding a 40-subject cohort and its cache at `cache` (60/20/20 splits).
fn folder_with_cache() -> tempfile::TempDir {
    common::temp_cohort_and_cache(40, 5, [0.6, 0.2, 0.2])
}

/// `mmcl embed-ecg --encoder encoder`, the arguments `inputs` (what to embed, options), then
/// `--output output`.
fn embed_ecg(encoder: &Path, inputs: &[&str], output: &Path) -> Output {
    let mut args = vec!["embed-ecg", "--encoder", s(encoder)];
    args.extend_from_slice(inputs);
    args.extend(["--output", s(output)]);
    mmcl(&args)
}

/// A randomly initialised small encoder on 12 × 500 inputs, exported as the trainers export
/// theirs (safetensors with its configuration in the metadata) under `dir/checkpoints/last`.
fn exported_encoder(dir: &Path) -> std::path::PathBuf {
    exported_encoder_with_leads(dir, 12)
}

/// As [`exported_encoder`], on `leads` × 500 inputs.
fn exported_encoder_with_leads(dir: &Path, leads: usize) -> std::path::PathBuf {
    let cfg: EcgVitConfig = serde_json::from_str(&format!(
        r#"{{"model": "vit_pluto_patchX", "img_size": [1, {leads}, 500], "patch_size": [1, 100],
            "global_pool": true}}"#
    ))
    .expect("config");
    let (_, store) = EcgVit::from_seed(&cfg, 7, &candle_core::Device::Cpu).expect("model");
    let last = dir.join("checkpoints/last");
    std::fs::create_dir_all(&last).expect("mkdir");
    let file = last.join("ecg_encoder.safetensors");
    mmcl_ecg::checkpoint::encoder_state_dict(&store)
        .expect("state")
        .write_safetensors(&file, Some(cfg.export_metadata().expect("metadata")))
        .expect("write");
    file
}

#[test]
fn a_cache_is_embedded_and_probed_from_an_exported_encoder() {
    let tmp = folder_with_cache();
    let root = tmp.path();
    let file = exported_encoder(&root.join("run"));
    let (c, z) = (root.join("cache"), root.join("z"));

    // The checkpoint folder names its export; the export needs no --config.
    let out = embed_ecg(
        &root.join("run/checkpoints/last"),
        &["--cache", s(&c), "--split", "test,all"],
        &z,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, _) = read_npy(&z.join("test/embeddings.npy"));
    let (all, _) = read_npy(&z.join("all/embeddings.npy"));
    assert_eq!((shape[1], all[0]), (256, 40), "{shape:?} {all:?}");
    let (labels, _) = read_npy(&z.join("test/labels.npy"));
    assert_eq!(labels[0], shape[0]);
    let csv = std::fs::read_to_string(z.join("test/subjects.csv")).expect("csv");
    assert!(csv.starts_with("eid,CAD,AF,diabetes,lvedv"), "{csv}");
    assert_eq!(csv.lines().count() as u64, shape[0] + 1);
    assert!(!z.join("train").exists(), "only the splits asked for");

    // An existing output is refused without --overwrite and left as it was.
    let again = embed_ecg(&file, &["--cache", s(&c)], &z);
    assert_refused(&again, &["--overwrite"]);
    assert!(z.join("all/embeddings.npy").is_file());

    // ECG files as they come: a folder of CardioSoft XML files and one file by name.
    let files = root.join("files");
    let ecg_dir = root.join("cohort/ecg");
    let first = ecg_dir.join("1000001_20205_2_0.xml");
    let out = embed_ecg(
        &file,
        &["--ecg", s(&ecg_dir), s(&first), "--batch-size", "16"],
        &files,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, values) = read_npy(&files.join("embeddings.npy"));
    assert_eq!(shape, [41, 256]);
    // The file named twice embeds identically, whatever batch it fell in.
    let row = |i: usize| &values[i * 256..(i + 1) * 256];
    let list = std::fs::read_to_string(files.join("files.csv")).expect("csv");
    assert!(
        list.starts_with("row,id,file\n0,1000001_20205_2_0,"),
        "{list}"
    );
    assert_eq!(row(0), row(40));
    // The same ECG from the cache (preprocessed and cropped the same way) embeds the same.
    let (_, cached) = read_npy(&z.join("all/embeddings.npy"));
    let close = cached[..256]
        .iter()
        .zip(row(0))
        .all(|(a, b)| (a - b).abs() < 1e-4);
    assert!(
        close,
        "the cache's and the file's embeddings of subject 1000001 differ"
    );

    // One command from the cache and the encoder to the phenotype probes (a whole run folder
    // is taken the same way: `docs_run.rs`).
    let probe = root.join("probe");
    let out = mmcl(&[
        "probe",
        "--cache",
        s(&c),
        "--encoder",
        s(&root.join("run/checkpoints/last")),
        "--task",
        "regression",
        "--bootstrap",
        "50",
        "--output",
        s(&probe),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(probe.join("phenotypes/metrics.json")).expect("json");
    assert!(metrics.contains("\"lvedv\""), "{metrics}");
    assert!(probe.join("phenotypes/scatter.png").is_file());
    assert!(!probe.join("diseases").exists());
}

#[test]
fn bad_encoders_and_devices_are_clear_errors_that_write_nothing() {
    let tmp = folder_with_cache();
    let root = tmp.path();
    let c = root.join("cache");
    let z = root.join("z");
    let embed = |encoder: &Path, extra: &[&str]| {
        embed_ecg(encoder, &[&["--cache", s(&c)], extra].concat(), &z)
    };
    // A PyTorch checkpoint carries no configuration.
    let pth = common::ecg_fixture("tiny_plain.pth");
    assert_refused(&embed(&pth, &[]), &["tiny_plain.pth", "--config"]);
    // An encoder for other inputs than the cache's ECGs.
    let toy = root.join("toy.json");
    std::fs::write(&toy, common::TOY_CONFIG).expect("write");
    assert_refused(
        &embed(&pth, &["--config", s(&toy)]),
        &["12 leads × 1000 samples", "2 × at least 20"],
    );
    // Neither a file nor a run.
    assert_refused(&embed(&root.join("nope"), &[]), &["nope"]);
    let empty = root.join("empty-run");
    std::fs::create_dir(&empty).expect("mkdir");
    assert_refused(&embed(&empty, &[]), &["empty-run", "checkpoint"]);
    // A split that does not exist.
    let file = exported_encoder(&root.join("run"));
    assert_refused(&embed(&file, &["--split", "training"]), &["training"]);
    // CUDA on a build without it says how to get it.
    if !cfg!(feature = "cuda") {
        assert_refused(&embed(&file, &["--device", "cuda"]), &["--features cuda"]);
    }
    assert!(!z.exists(), "a failed command left its output");
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A fine-tuning run that cannot start leaves no run folder.
    let config = root.join("ft.toml");
    std::fs::write(&config, "cache = \"missing-cache\"\noutput = \"ft-run\"\n").expect("write");
    let out = mmcl(&["finetune", "--config", s(&config)]);
    assert_refused(&out, &["missing-cache"]);
    assert!(!root.join("ft-run").exists());
}

#[test]
fn finetuning_an_export_takes_its_architecture() {
    let tmp = folder_with_cache();
    let root = tmp.path();
    exported_encoder(&root.join("run"));
    // No `encoder` table: the checkpoint folder's export says what it is (a small encoder on
    // 12 × 500 inputs, not the paper's default on 2500 samples).
    let config = root.join("ft.toml");
    std::fs::write(
        &config,
        "cache = \"cache\"\ncheckpoint = \"run/checkpoints/last\"\noutput = \"ft\"\nmax_epochs = 1\ntask = \"regression\"\ntargets = [\"lvedv\"]\n\
         warmup_epochs = 0\n[bootstrap]\nresamples = 20\n",
    )
    .expect("write");
    let out = mmcl(&["finetune", "--config", s(&config)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(root.join("ft/report.md")).expect("report");
    assert!(
        report.contains("vit_pluto_patchX (256 wide") && report.contains("input 12 × 500"),
        "{report}"
    );
    assert!(report.contains("attention pooling"), "{report}");
}

#[test]
fn an_eight_lead_encoder_embeds_twelve_lead_files_through_its_leads() {
    let tmp = folder_with_cache();
    let root = tmp.path();
    let file = exported_encoder_with_leads(&root.join("run"), 8);
    let first = root.join("cohort/ecg/1000001_20205_2_0.xml");
    let embed = |out: &str, leads: Option<&str>| {
        let out = root.join(out);
        let mut inputs = vec!["--ecg", s(&first)];
        if let Some(leads) = leads {
            inputs.extend(["--leads", leads]);
        }
        (embed_ecg(&file, &inputs, &out), out)
    };
    // By default the eight independent leads, and the command says so.
    let (run, default) = embed("default", None);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("I, II, V1"), "{}", stderr(&run));
    let (run, named) = embed("named", Some("i,ii,v1,v2,v3,v4,v5,v6"));
    assert!(run.status.success(), "{}", stderr(&run));
    let (shape, by_default) = read_npy(&default.join("embeddings.npy"));
    assert_eq!(shape, [1, 256]);
    assert_eq!(by_default, read_npy(&named.join("embeddings.npy")).1);
    // Other leads in the same slots give another embedding.
    let (run, swapped) = embed("swapped", Some("II,I,V1,V2,V3,V4,V5,V6"));
    assert!(run.status.success(), "{}", stderr(&run));
    assert_ne!(by_default, read_npy(&swapped.join("embeddings.npy")).1);
    // Refused before anything is written: a count that does not fit, an unknown lead.
    let (run, out) = embed("two", Some("V1,V2"));
    assert_refused(&run, &["--leads", "2 leads", "takes 8"]);
    assert!(!out.exists());
    let (run, _) = embed("unknown", Some("I,II,V1,V2,V3,V4,V5,V7"));
    assert_refused(&run, &["--leads", "V7"]);
}
