//! `mmcl probe`, `mmcl plot-curves` and `mmcl report` end to end, and their errors on bad
//! input (clear message naming the file, non-zero exit, nothing written).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{mmcl, stderr};

/// Writes a little-endian float32 `.npy`.
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// A small synthetic problem: D = 6 embeddings, two binary and two continuous targets.
struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = mmcl_nn::rng::SplitMix64::new(3);
        for (split, n) in [("train", 240), ("val", 100), ("test", 160)] {
            let mut x = Vec::new();
            let mut cls = Vec::new();
            let mut reg = Vec::new();
            for i in 0..n {
                let z: Vec<f64> = (0..6).map(|_| rng.next_normal()).collect();
                x.extend(z.iter().map(|&v| v as f32 * 2.0 + 1.0));
                let l0 = z[0] + 0.5 * z[1] + 0.7 * rng.next_normal();
                let l1 = z[2] - z[3] + 0.7 * rng.next_normal();
                cls.push((l0 > 0.6) as u8 as f32);
                cls.push(if i % 9 == 0 {
                    f32::NAN
                } else {
                    (l1 > 0.0) as u8 as f32
                });
                reg.push((50.0 + 10.0 * z[4] + 3.0 * rng.next_normal()) as f32);
                reg.push(if i % 5 == 0 {
                    f32::NAN
                } else {
                    (z[5] - z[0] + 0.5 * rng.next_normal()) as f32
                });
            }
            write_npy(&dir.path().join(format!("x_{split}.npy")), &[n, 6], &x);
            write_npy(&dir.path().join(format!("cls_{split}.npy")), &[n, 2], &cls);
            write_npy(&dir.path().join(format!("reg_{split}.npy")), &[n, 2], &reg);
            let first: Vec<f32> = cls.iter().step_by(2).copied().collect();
            write_npy(&dir.path().join(format!("cls1d_{split}.npy")), &[n], &first);
            let first: Vec<f32> = reg.iter().step_by(2).copied().collect();
            write_npy(&dir.path().join(format!("reg1d_{split}.npy")), &[n], &first);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `mmcl probe --task task` on the embeddings and the labels `{y}_{split}.npy` of the
    /// training, validation (when `val`) and test splits, then `extra` arguments.
    fn probe(&self, task: &str, y: &str, val: bool, extra: &[&str]) -> Output {
        let splits: &[(&str, &str)] = if val {
            &[("train", "train"), ("val", "val"), ("test", "test")]
        } else {
            &[("train", "train"), ("test", "test")]
        };
        let mut args = vec!["probe".to_string(), "--task".into(), task.into()];
        for (flag, split) in splits {
            args.push(format!("--{flag}-x"));
            args.push(self.s(&format!("x_{split}.npy")));
            args.push(format!("--{flag}-y"));
            args.push(self.s(&format!("{y}_{split}.npy")));
        }
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        mmcl(&args)
    }
}

#[test]
fn classification_probe_writes_metrics_predictions_and_figures() {
    let d = Data::new();
    let (out, preds, figs) = (d.s("metrics.json"), d.s("preds.npy"), d.s("figures"));
    let o = d.probe(
        "classification",
        "cls",
        true,
        &[
            "--target-names",
            "CAD,AF",
            "--bootstrap",
            "200",
            "--output",
            &out,
            "--predictions",
            &preds,
            "--figures",
            &figs,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("CAD") && table.contains("average") && table.contains("auroc"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for metric in ["auroc", "auprc", "f1", "balanced_accuracy"] {
        for entry in [&json["targets"][0], &json["targets"][1], &json["average"]] {
            let m = &entry[metric];
            let (v, lo, hi) = (
                m["value"].as_f64().unwrap(),
                m["ci_low"].as_f64().unwrap(),
                m["ci_high"].as_f64().unwrap(),
            );
            assert!(lo <= hi && (0.0..=1.0).contains(&v), "{metric}: {m}");
        }
    }
    assert!(json["targets"][0]["auroc"]["value"].as_f64().unwrap() > 0.75);
    // 160 × 2 float32 predictions after a 128-byte header.
    assert_eq!(std::fs::metadata(&preds).unwrap().len(), 128 + 160 * 2 * 4);
    assert!(d.path("figures/roc.png").is_file());
    let report = std::fs::read_to_string(d.path("figures/report.md")).unwrap();
    assert!(report.contains("![ROC curves](roc.png)"));

    // One-dimensional labels without a validation split (hold-out of the training rows).
    let o = d.probe("classification", "cls1d", false, &["--bootstrap", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("hold-out"));
}

#[test]
fn regression_probe_and_report_commands() {
    let d = Data::new();
    let out = d.s("reg.json");
    let o = d.probe(
        "regression",
        "reg",
        true,
        &["--output", &out, "--bootstrap", "100"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(json["targets"][0]["r2"]["value"].as_f64().unwrap() > 0.8);
    assert!(json["average"]["pearson_r"]["ci_high"].is_number());
    assert!(json["targets"][1]["mae"]["ci_low"].is_number());
    // MAE is in each target's unit: never averaged over targets.
    assert!(json["average"].get("mae").is_none());

    let log = d.path("run.jsonl");
    std::fs::write(
        &log,
        "{\"epoch\": 0, \"split\": \"train\", \"loss\": 2.0}\n{\"epoch\": 1, \"split\": \"train\", \"loss\": 1.0}\n{\"epoch\": 1, \"split\": \"val\", \"loss\": 1.4}\n",
    )
    .unwrap();
    let curves = d.s("curves.png");
    let o = mmcl(&[
        "plot-curves",
        "--log",
        &log.display().to_string(),
        "--output",
        &curves,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(Path::new(&curves).is_file());

    let md = d.s("report.md");
    let o = mmcl(&[
        "report",
        "--metrics",
        &out,
        "--output",
        &md,
        "--log",
        &log.display().to_string(),
        "--figure",
        "Scatter=scatter.png",
        "--title",
        "Phenotypes",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.starts_with("# Phenotypes") && text.contains("report_curves.png"));
    assert!(d.path("report_curves.png").is_file());
}

/// Runs a probe of `task` on `[train_x, train_y, test_x, test_y]` that must fail; checks the
/// message and that no output was written.
fn expect_failure(d: &Data, task: &str, files: [&str; 4], needle: &str) {
    let out = d.s("bad.json");
    let [train_x, train_y, test_x, test_y] = files;
    let args = [
        "--task",
        task,
        "--train-x",
        train_x,
        "--train-y",
        train_y,
        "--test-x",
        test_x,
        "--test-y",
        test_y,
    ];
    let mut all = vec!["probe"];
    all.extend_from_slice(&args);
    all.extend_from_slice(&["--output", &out]);
    let o = mmcl(&all);
    assert!(!o.status.success(), "expected failure for {args:?}");
    let err = stderr(&o);
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!Path::new(&out).exists());
}

#[test]
fn bad_inputs_give_clear_errors() {
    let d = Data::new();
    let (xtr, xte, ytr, yte) = (
        d.s("x_train.npy"),
        d.s("x_test.npy"),
        d.s("cls_train.npy"),
        d.s("cls_test.npy"),
    );
    // Shape mismatch between x and y.
    expect_failure(
        &d,
        "classification",
        [&xtr, &d.s("cls_val.npy"), &xte, &yte],
        "has 240 rows but",
    );
    // Missing file.
    expect_failure(
        &d,
        "classification",
        [&d.s("nope.npy"), &ytr, &xte, &yte],
        "nope.npy",
    );
    // All-NaN target.
    write_npy(&d.path("nan.npy"), &[240], &[f32::NAN; 240]);
    expect_failure(
        &d,
        "regression",
        [&xtr, &d.s("nan.npy"), &xte, &d.s("reg1d_test.npy")],
        "missing (NaN) in every row",
    );
    // One-class labels.
    write_npy(&d.path("ones.npy"), &[240], &[1.0; 240]);
    expect_failure(
        &d,
        "classification",
        [&xtr, &d.s("ones.npy"), &xte, &d.s("cls1d_test.npy")],
        "one class only",
    );
    // Labels that are not 0/1.
    expect_failure(
        &d,
        "classification",
        [&xtr, &d.s("reg_train.npy"), &xte, &yte],
        "must be 0 or 1",
    );
    // Target columns differ between train and test.
    expect_failure(
        &d,
        "classification",
        [&xtr, &ytr, &xte, &d.s("cls1d_test.npy")],
        "cls1d_test.npy has 1 target columns",
    );
    // Feature dimension mismatch between train and test.
    write_npy(&d.path("x_small.npy"), &[160, 3], &[0.5; 480]);
    expect_failure(
        &d,
        "classification",
        [&xtr, &ytr, &d.s("x_small.npy"), &yte],
        "has 3 features",
    );
    // A file that is not an .npy.
    std::fs::write(d.path("junk.npy"), b"not numpy").unwrap();
    expect_failure(
        &d,
        "classification",
        [&d.s("junk.npy"), &ytr, &xte, &yte],
        "junk.npy: not a readable .npy",
    );
    // Truncated data.
    let bytes = std::fs::read(d.path("x_train.npy")).unwrap();
    std::fs::write(d.path("cut.npy"), &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(
        &d,
        "classification",
        [&d.s("cut.npy"), &ytr, &xte, &yte],
        "cut.npy",
    );
    // Bootstrap settings out of range, refused before any fit (2^64 - 1 resamples used to
    // overflow an allocation).
    for extra in [
        ["--bootstrap", "18446744073709551615"],
        ["--confidence", "1.5"],
    ] {
        let out = d.probe("classification", "cls", false, &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--bootstrap/--confidence"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("fitting"),
            "{stderr}"
        );
    }
}

/// A rare disease without a case in the test split (and one with a single training case) does
/// not stop the probe: it is reported with its counts and a reason, the others are evaluated.
#[test]
fn a_rare_class_is_reported_and_the_other_targets_go_on() {
    let d = Data::new();
    // Column 0: the common label; column 1: positives only among the first training rows.
    for (split, n) in [("train", 240), ("val", 100), ("test", 160)] {
        let common = read_column(&d.path(&format!("cls_{split}.npy")), 2, 0);
        let rare: Vec<f32> = (0..n)
            .map(|i| (split == "train" && i < 3) as u8 as f32)
            .collect();
        let y: Vec<f32> = common
            .iter()
            .zip(&rare)
            .flat_map(|(&a, &b)| [a, b])
            .collect();
        write_npy(&d.path(&format!("rare_{split}.npy")), &[n, 2], &y);
    }
    let out = d.s("rare.json");
    let figures = d.s("rare-figures");
    let o = d.probe(
        "classification",
        "rare",
        true,
        &[
            "--target-names",
            "CAD,rare",
            "--bootstrap",
            "100",
            "--output",
            &out,
            "--figures",
            &figures,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning: rare"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(json["targets"][0]["auroc"]["value"].as_f64().unwrap() > 0.75);
    let rare = &json["targets"][1];
    assert_eq!(rare["n_positive"].as_u64(), Some(0));
    assert!(rare.get("auroc").is_none());
    assert!(
        rare["undefined"]
            .as_str()
            .unwrap()
            .contains("one class only")
    );
    let report = std::fs::read_to_string(d.path("rare-figures/report.md")).unwrap();
    assert!(report.contains("**rare**: no metrics"), "{report}");
}

/// The column `j` of a `(n, k)` float32 `.npy` written by [`write_npy`].
fn read_column(path: &Path, k: usize, j: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .skip(j)
        .step_by(k)
        .collect()
}

/// A results folder is written whole: a non-empty one is refused without --overwrite (and left
/// as it was), and replaced whole with it, so no older file survives beside the new report.
#[test]
fn a_figure_folder_is_refused_or_replaced_whole() {
    let d = Data::new();
    let figures = d.path("figures");
    std::fs::create_dir(&figures).unwrap();
    std::fs::write(figures.join("metrics.json"), b"old").unwrap();
    std::fs::write(figures.join("stale.txt"), b"old").unwrap();
    let f = figures.display().to_string();
    let o = d.probe(
        "classification",
        "cls",
        true,
        &["--bootstrap", "0", "--figures", &f],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(figures.join("metrics.json")).unwrap(), b"old");
    let args = ["--bootstrap", "0", "--figures", &f, "--overwrite"];
    let o = d.probe("classification", "cls", true, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!figures.join("stale.txt").exists());
    for file in ["metrics.json", "predictions.npy", "roc.png", "report.md"] {
        assert!(figures.join(file).is_file(), "{file}");
    }
    // Nothing else is left beside the folder (no staging sibling).
    let siblings: Vec<String> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(siblings.is_empty(), "{siblings:?}");
}
