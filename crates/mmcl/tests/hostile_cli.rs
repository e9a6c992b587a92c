//! The command line against hostile arguments and configurations: outputs that would destroy
//! an input (the same path, `./` spellings, symlinks, a cache folder over its own data),
//! absurd model sizes, and mistyped configuration values. Each must end with exit status 1 (an
//! error, never a signal or an allocation abort), a message naming the offending file (and
//! key), and the inputs byte for byte as they were.

mod common;

use std::path::Path;

use common::{TOY_CONFIG, assert_no_leftovers, assert_refused, ecg_fixture, mmcl_in as mmcl};

/// A float32 `.npy` of shape `dims` holding a fixed ramp of values.
fn write_npy_f32(path: &Path, dims: &[u64]) {
    let n: u64 = dims.iter().product();
    common::write_npy(
        path,
        dims,
        npyz::Order::C,
        (0..n).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.1),
    );
}

/// Runs `args_for(output)` with `output` each spelling of `input` (itself, `./name`, through a
/// symlink, through `sub/..`) and checks the refusal and that `input` is untouched.
fn refuses_every_spelling_of(dir: &Path, input: &str, args_for: &dyn Fn(&str) -> Vec<String>) {
    let before = std::fs::read(dir.join(input)).expect("input");
    std::fs::create_dir_all(dir.join("sub")).expect("sub dir");
    let link = format!("link-{input}");
    if !dir.join(&link).exists() {
        std::os::unix::fs::symlink(dir.join(input), dir.join(&link)).expect("symlink");
    }
    let absolute = dir.join(input).display().to_string();
    for output in [
        input.to_string(),
        format!("./{input}"),
        link.clone(),
        format!("sub/../{input}"),
        absolute,
    ] {
        let args = args_for(&output);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mmcl(dir, &args);
        assert_refused(&out, &["refusing to write", &output, "it is the input"]);
        assert_eq!(
            std::fs::read(dir.join(input)).expect("input still there"),
            before,
            "{input} changed by --output {output}"
        );
        assert_no_leftovers(dir);
    }
}

/// Settings of an encoder configuration: (key, JSON value).
type Settings = [(&'static str, &'static str)];

/// The toy encoder's configuration (JSON) with the `hostile` settings replacing its own or
/// added to them.
fn toy_encoder_with(hostile: &Settings) -> String {
    let mut settings = vec![
        ("img_size", "[1, 2, 20]"),
        ("patch_size", "[1, 5]"),
        ("embed_dim", "8"),
        ("depth", "1"),
        ("num_heads", "2"),
    ];
    for &(key, value) in hostile {
        match settings.iter_mut().find(|(k, _)| *k == key) {
            Some(setting) => setting.1 = value,
            None => settings.push((key, value)),
        }
    }
    let members: Vec<String> = settings
        .iter()
        .map(|(key, value)| format!("\"{key}\": {value}"))
        .collect();
    format!("{{{}}}", members.join(", "))
}

/// A temporary folder holding three toy ECGs as `ecgs.npy` and the toy encoder's checkpoint as
/// `model.pth`.
fn toy_embedding_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_npy_f32(&dir.path().join("ecgs.npy"), &[3, 2, 20]);
    std::fs::copy(ecg_fixture("tiny_plain.pth"), dir.path().join("model.pth")).expect("ckpt");
    dir
}

/// The arguments of `embed-ecg` of `ecgs.npy` with `model.pth` (see [`toy_embedding_dir`]) and
/// the configuration file `config` into `output`.
fn embed_toy_args<'a>(config: &'a str, output: &'a str) -> [&'a str; 9] {
    [
        "embed-ecg",
        "--checkpoint",
        "model.pth",
        "--config",
        config,
        "--input",
        "ecgs.npy",
        "--output",
        output,
    ]
}

#[test]
fn embed_ecg_never_writes_over_its_inputs() {
    let dir = toy_embedding_dir();
    std::fs::write(dir.path().join("config.json"), TOY_CONFIG).expect("config");
    let args = |output: &str| -> Vec<String> {
        embed_toy_args("config.json", output)
            .map(String::from)
            .to_vec()
    };
    refuses_every_spelling_of(dir.path(), "ecgs.npy", &args);
    // The checkpoint and the configuration are inputs too.
    refuses_every_spelling_of(dir.path(), "model.pth", &args);
    refuses_every_spelling_of(dir.path(), "config.json", &args);
}

#[test]
fn preprocess_ecg_never_writes_over_its_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_npy_f32(&dir.path().join("rec.npy"), &[12, 1000]);
    refuses_every_spelling_of(dir.path(), "rec.npy", &|output| {
        ["preprocess-ecg", "--input", "rec.npy", "--output", output]
            .map(String::from)
            .to_vec()
    });
    // A WFDB record's samples are in the signal file its header names.
    for file in ["rec16.hea", "rec16.dat"] {
        std::fs::copy(
            common::data_fixture(&format!("wfdb/{file}")),
            dir.path().join(file),
        )
        .expect("WFDB fixture");
    }
    refuses_every_spelling_of(dir.path(), "rec16.dat", &|output| {
        ["preprocess-ecg", "--input", "rec16.hea", "--output", output]
            .map(String::from)
            .to_vec()
    });
    // A folder converted into itself would replace its own .npy files.
    std::fs::create_dir(dir.path().join("ecgs")).expect("folder");
    write_npy_f32(&dir.path().join("ecgs/a.npy"), &[12, 1000]);
    let before = std::fs::read(dir.path().join("ecgs/a.npy")).expect("input");
    let out = mmcl(
        dir.path(),
        &["preprocess-ecg", "--input", "ecgs", "--output", "./ecgs/"],
    );
    assert_refused(&out, &["refusing to write", "ecgs"]);
    assert_eq!(
        std::fs::read(dir.path().join("ecgs/a.npy")).ok(),
        Some(before)
    );
}

#[test]
fn convert_never_writes_over_its_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(ecg_fixture("tiny_plain.pth"), dir.path().join("model.pth")).expect("ckpt");
    refuses_every_spelling_of(dir.path(), "model.pth", &|output| {
        ["convert", "--input", "model.pth", "--output", output]
            .map(String::from)
            .to_vec()
    });
}

#[test]
fn build_dataset_never_writes_its_cache_over_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ukb");
    std::fs::create_dir_all(root.join("ecg")).expect("ecg dir");
    std::fs::write(root.join("ecg/1000001_20205_2_0.xml"), "<xml/>").expect("ecg file");
    for (name, output) in [
        ("same.json", "ukb"),
        ("dot.json", "./ukb/"),
        ("ecg.json", "ukb/ecg"),
        ("parent.json", "."),
    ] {
        let cfg = dir.path().join(name);
        std::fs::write(
            &cfg,
            format!(r#"{{"root": "ukb", "output": "{output}", "cmr_dir": null}}"#),
        )
        .expect("config");
        for extra in [&[][..], &["--overwrite"][..]] {
            let mut args = vec!["build-dataset", "--config", name];
            args.extend(extra);
            let out = mmcl(dir.path(), &args);
            assert_refused(&out, &["refusing to write"]);
            assert!(root.join("ecg/1000001_20205_2_0.xml").is_file(), "{output}");
        }
    }
    // --output on the command line is checked the same way.
    let out = mmcl(
        dir.path(),
        &[
            "build-dataset",
            "--config",
            "same.json",
            "--output",
            "ukb/./",
        ],
    );
    assert_refused(&out, &["refusing to write", "ukb"]);
}

#[test]
fn absurd_encoder_sizes_are_refused_before_allocation() {
    let dir = toy_embedding_dir();
    // Each configuration is the toy encoder with one hostile value (the file, the settings
    // written over the toy's, the key the error must name).
    let cases: [(&str, &Settings, &str); 10] = [
        ("dim.json", &[("embed_dim", "1000000000")], "embed_dim"),
        (
            "depth.json",
            &[("embed_dim", "4096"), ("depth", "1000000")],
            "depth",
        ),
        ("mlp.json", &[("mlp_ratio", "1e300")], "mlp_ratio"),
        ("heads.json", &[("num_heads", "3")], "num_heads"),
        ("patch.json", &[("patch_size", "[1, 0]")], "patch_size"),
        (
            "img.json",
            &[("img_size", "[1, 2, 100000000000000]")],
            "img_size",
        ),
        (
            "tokens.json",
            &[("img_size", "[1, 12, 4000000]"), ("patch_size", "[1, 1]")],
            "img_size",
        ),
        (
            "classes.json",
            &[("num_classes", "100000000000000")],
            "num_classes",
        ),
        ("type.json", &[("depth", "\"one\"")], "depth"),
        (
            "array.json",
            &[("patch_size", r#"[1, "five"]"#)],
            "patch_size[1]",
        ),
    ];
    for (name, hostile, key) in cases {
        let text = toy_encoder_with(hostile);
        std::fs::write(dir.path().join(name), text).expect("config");
        let out = mmcl(dir.path(), &embed_toy_args(name, "out.npy"));
        assert_refused(&out, &[name, key]);
        assert!(!dir.path().join("out.npy").exists());
        assert_no_leftovers(dir.path());
    }
    // The image encoder's stem grows with its input channels.
    let out = mmcl(
        dir.path(),
        &[
            "embed-cmr",
            "--checkpoint",
            "model.pth",
            "--arch",
            "resnet50",
            "--in-channels",
            "1000000000",
            "--input",
            "ecgs.npy",
            "--output",
            "out.npy",
        ],
    );
    assert_refused(&out, &["in_channels"]);
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text, key) in [
        ("epochs.toml", "max_epochs = \"ten\"\n", "max_epochs"),
        (
            "nested.toml",
            "seed = 1\n\n[loss]\n# the paper's\nmask_ratio = \"high\"\n",
            "loss.mask_ratio",
        ),
        ("unknown.toml", "[model]\nembed_dimm = 64\n", "embed_dimm"),
        ("batch.toml", "batch_size = 0\n", "batch_size"),
        (
            "model.toml",
            "[model]\nmodel = \"mae_vit_tiny_patchX\"\nimg_size = [1, 12, 2500]\npatch_size = \
             [1, 100]\nembed_dim = 1000000000\nnum_heads = 8\n",
            "embed_dim",
        ),
        (
            "epochs.json",
            r#"{"data": {"threads": -1}}"#,
            "data.threads",
        ),
    ] {
        std::fs::write(dir.path().join(name), text).expect("config");
        let out = mmcl(
            dir.path(),
            &["pretrain-mae", "--config", name, "--output", "run"],
        );
        assert_refused(&out, &[name, key]);
        assert!(!dir.path().join("run").exists(), "{name}");
    }
    // The dataset builder's configuration, TOML and JSON.
    for (name, text, key) in [
        ("build.toml", "[cmr]\nsize = \"big\"\n", "cmr.size"),
        ("build.json", r#"{"cmr": {"size": 1000000000}}"#, "cmr.size"),
        ("samples.json", r#"{"ecg_samples": "all"}"#, "ecg_samples"),
    ] {
        std::fs::write(dir.path().join(name), text).expect("config");
        let out = mmcl(dir.path(), &["build-dataset", "--config", name]);
        assert_refused(&out, &[name, key]);
    }
}

/// `mmcl args…` in `dir`, failing the test if it has not ended after a minute (a read that
/// waits on a FIFO would otherwise hang the suite).
#[cfg(unix)]
fn mmcl_with_deadline(dir: &Path, args: &[&str]) -> std::process::Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = common::mmcl_command()
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mmcl binary runs");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{args:?} still runs after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Makes a FIFO at `path`.
#[cfg(unix)]
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// A device or a FIFO where a command expects a file (a run log, a metrics or results file, a
/// checkpoint, a configuration): refused from its metadata, promptly, with the path named — not
/// read without end (`/dev/zero` grew until memory ran out) nor waited on (a FIFO blocked the
/// read forever).
#[cfg(unix)]
#[test]
fn a_device_or_fifo_in_place_of_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    mkfifo(&dir.path().join("fifo"));
    for input in ["/dev/zero", "fifo"] {
        for args in [
            vec!["plot-curves", "--log", input, "--output", "curves.png"],
            vec!["report", "--metrics", input, "--output", "report.md"],
            vec!["convert", "--input", input, "--output", "out.safetensors"],
            vec!["explain", "--config", input],
        ] {
            let out = mmcl_with_deadline(dir.path(), &args);
            assert_refused(&out, &[input, "not a regular file"]);
        }
    }
}

/// A FIFO in place of a table or of a subject's cine in a UK-Biobank-style folder: the build
/// stops with an error naming it, instead of a note that the table is missing or the subject
/// quietly left out as imageless, and writes no cache.
#[cfg(unix)]
#[test]
fn a_fifo_in_the_input_folder_is_an_error_not_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ukb");
    common::synth_small_cohort(&root, 3, 1);
    for target in ["phenotypes.csv", "cmr/1000003/sa.nii.gz"] {
        let path = root.join(target);
        let kept = dir.path().join("kept");
        std::fs::rename(&path, &kept).expect("move the file aside");
        mkfifo(&path);
        let out = mmcl_with_deadline(
            dir.path(),
            &["build-dataset", "--root", "ukb", "--output", "cache"],
        );
        assert_refused(&out, &[target, "not a regular file"]);
        assert!(!dir.path().join("cache").exists(), "{target}");
        std::fs::remove_file(&path).expect("remove the FIFO");
        std::fs::rename(&kept, &path).expect("put the file back");
    }
}
