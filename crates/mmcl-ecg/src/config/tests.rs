//! Unit tests of the encoder configuration: presets, file loading and validation.

use super::*;

#[test]
fn presets_are_the_reference_numbers() {
    let dims = |n: &str| Preset::find(n).map(|p| (p.embed_dim, p.depth, p.num_heads));
    assert_eq!(dims("vit_tiny_patchX"), Some((384, 3, 6)));
    assert_eq!(dims("vit_big_patchX"), Some((768, 8, 8)));
    assert_eq!(dims("vit_huge_patchX"), Some((1280, 32, 16)));
    assert_eq!(dims("tinyDeep"), Some((192, 12, 3)));
    assert_eq!(dims("mediumDeep"), Some((576, 12, 8)));
    assert_eq!(dims("mae/vit_medium_patchX"), Some((640, 5, 10)));
    assert_eq!(dims("vit_nonexistent"), None);
    for p in PRESETS {
        let cfg = EcgVitConfig::preset(p.name, [1, 12, 2500], [1, 100]);
        assert!(cfg.is_ok(), "{}: {:?}", p.name, cfg.err());
    }
}

#[test]
fn json_round_trip_and_errors() {
    let cfg = EcgVitConfig::paper();
    let json = serde_json::to_string(&cfg).expect("serialise");
    let back: EcgVitConfig = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, cfg);
    assert_eq!(cfg.pooling(), Pooling::Global);
    assert_eq!(cfg.grid_size(), (12, 25));

    let err = |s: &str| {
        serde_json::from_str::<EcgVitConfig>(s)
            .expect_err(s)
            .to_string()
    };
    assert!(err(r#"{"img_size": [1, 12, 2500], "patch_size": [1, 100]}"#).contains("embed_dim"));
    assert!(err(r#"{"model": "vit_tiny_patchX", "patch_size": [1, 100]}"#).contains("img_size"));
    assert!(
        err(r#"{"model": "vit_tiny_patchX", "img_size": [1,12,2500], "patch_size": [1,100], "globl_pool": true}"#)
            .contains("globl_pool")
    );
    assert!(
        err(r#"{"model": "vit_tiny_patchX", "img_size": [1,12,2500], "patch_size": [1,100], "num_heads": 5}"#)
            .contains("divisible")
    );
    assert!(
        err(r#"{"model": "vit_x", "img_size": [1,12,2500], "patch_size": [1,100]}"#)
            .contains("unknown model")
    );
    let ok: EcgVitConfig = serde_json::from_str(
        r#"{"model": "vit_tiny_patchX", "input_size": [1,12,5000], "patch_size": [1,100], "attention_pool": true, "drop_path": 0.2}"#,
    )
    .expect("aliases parse");
    assert_eq!(ok.img_size, [1, 12, 5000]);
    assert_eq!(ok.drop_path_rate, 0.2);
    assert_eq!(ok.pooling(), Pooling::Attention);
}

#[test]
fn absurd_sizes_are_refused_naming_the_key() {
    let cfg =
        |dim: usize, depth: usize, heads: usize, img: [usize; 3], patch: [usize; 2]| EcgVitConfig {
            embed_dim: dim,
            depth,
            num_heads: heads,
            img_size: img,
            patch_size: patch,
            ..EcgVitConfig::paper()
        };
    let paper = ([1, 12, 2500], [1, 100]);
    for (bad, key) in [
        (cfg(1_000_000_000, 3, 8, paper.0, paper.1), "embed_dim"),
        (cfg(usize::MAX / 2 + 1, 3, 1, paper.0, paper.1), "embed_dim"),
        (cfg(4096, 1_000_000, 8, paper.0, paper.1), "depth"),
        (cfg(384, 3, 6, [1, 12, usize::MAX], [1, 1]), "img_size"),
        (cfg(384, 3, 6, [1, 12, 4_000_000], [1, 1]), "tokens"),
        (cfg(384, 3, 6, [1, 12, 50_000], [1, 1]), "num_heads"),
        (cfg(384, 3, 6, paper.0, [1, 0]), "patch_size"),
        (cfg(384, 3, 7, paper.0, paper.1), "num_heads"),
        (
            EcgVitConfig {
                mlp_ratio: 1e300,
                ..EcgVitConfig::paper()
            },
            "mlp_ratio",
        ),
        (
            EcgVitConfig {
                mlp_ratio: 1e-9,
                ..EcgVitConfig::paper()
            },
            "mlp_ratio",
        ),
        (
            EcgVitConfig {
                num_classes: usize::MAX,
                ..EcgVitConfig::paper()
            },
            "num_classes",
        ),
    ] {
        let err = bad.validate().map_err(|e| e.to_string());
        assert!(
            err.as_ref().is_err_and(|e| e.contains(key)),
            "{key}: {err:?}"
        );
    }
    // The largest preset is far inside the limits.
    let huge = EcgVitConfig::preset("vit_huge_patchX", [1, 12, 5000], [1, 50]);
    let params = huge.as_ref().ok().and_then(EcgVitConfig::parameter_count);
    assert!(
        params.is_some_and(|p| (600_000_000..700_000_000).contains(&p)),
        "{params:?}"
    );
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    let dir = std::env::temp_dir().join(format!("mmcl-ecg-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("encoder.json");
    let write = |text: &str| std::fs::write(&path, text).is_ok();
    let err = |path: &Path| EcgVitConfig::from_file(path).map_err(|e| e.to_string());
    assert!(write(
        r#"{"model": "vit_tiny_patchX", "img_size": [1, 12, 2500], "patch_size": [1, "x"]}"#
    ));
    let e = err(&path);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("encoder.json: patch_size[1]: invalid type")),
        "{e:?}"
    );
    assert!(write(
        r#"{"model": "vit_tiny_patchX", "img_size": [1, 12, 2500], "patch_size": [1, 100],
            "embed_dim": 1000000000, "num_heads": 8}"#
    ));
    let e = err(&path);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("encoder.json") && e.contains("embed_dim 1000000000")),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pooling_names() {
    for p in [
        Pooling::Global,
        Pooling::Cls,
        Pooling::Attention,
        Pooling::Tokens,
    ] {
        assert_eq!(p.name().parse::<Pooling>().ok(), Some(p));
    }
    assert!("mean".parse::<Pooling>().is_err());
}
