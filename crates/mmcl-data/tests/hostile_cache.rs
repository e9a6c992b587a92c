//! A cache directory edited by hand, truncated in transit or written by another tool: opening
//! it and loading every batch ends in `Ok` or an error naming the index or the shard, never a
//! panic.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use mmcl_data::cache::{Cache, CacheWriter, EcgLayout, ImageLayout, SubjectMeta};
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::Split;
use serde_json::{Value, json};

const LEADS: usize = 12;
const SAMPLES: usize = 64;
const SIDE: usize = 8;

/// A cache of 6 subjects in shards of 4: ECGs, images, two labels, two phenotypes.
fn tiny_cache(dir: &Path) -> PathBuf {
    let path = dir.join("cache");
    let ecg = EcgLayout {
        leads: LEADS,
        samples: SAMPLES,
        sample_rate: 100.0,
    };
    let image = ImageLayout {
        channels: 1,
        height: SIDE,
        width: SIDE,
    };
    let mut writer = CacheWriter::create(&path, Some(ecg), Some(image), 4, false).expect("writer");
    for i in 0..6u64 {
        let meta = SubjectMeta {
            eid: 1000 + i,
            split: if i < 4 { Split::Train } else { Split::Val },
            labels: vec![Some((i % 2) as u8), None],
            phenotypes: vec![i as f64, f64::NAN],
        };
        let ecg: Vec<f32> = (0..LEADS * SAMPLES)
            .map(|t| (t as f32 * 0.1).sin())
            .collect();
        let image = vec![i as f32; SIDE * SIDE];
        writer.push(meta, Some(&ecg), Some(&image)).expect("push");
    }
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    writer
        .finish(names(&["a", "b"]), names(&["p", "q"]), json!({}), json!({}))
        .expect("finish");
    path
}

/// Opens the cache and loads every subject and one epoch of batches; the first error.
fn open_and_load(dir: &Path) -> mmcl_data::Result<()> {
    let cache = Arc::new(Cache::open(dir)?);
    for i in 0..cache.len() {
        if cache.index().ecg.is_some() {
            cache.ecg(i)?;
        }
        if cache.index().image.is_some() {
            cache.image(i)?;
        }
    }
    let all: Vec<usize> = (0..cache.len()).collect();
    let config = LoaderConfig {
        batch_size: 2,
        threads: 1,
        ecg: cache.index().ecg.is_some(),
        ecg_crop: None,
        image: cache.index().image.is_some(),
        ..LoaderConfig::default()
    };
    let loader = Arc::new(Loader::new(cache, all, config, Device::Cpu)?);
    for batch in loader.epoch(0, 0) {
        batch?;
    }
    Ok(())
}

/// `edit` applied to a fresh cache's index must leave it readable or refused naming a file of
/// the cache; returns the error's text (empty when it was read).
fn after_edit(edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = tiny_cache(dir.path());
    let index_path = cache.join("index.json");
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("JSON");
    edit(&mut index);
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("JSON")).expect("write");
    match open_and_load(&cache) {
        Ok(()) => String::new(),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&*cache.to_string_lossy()),
                "the error names no file of the cache: {message}"
            );
            message
        }
    }
}

#[test]
fn edited_indexes_are_read_or_refused_naming_the_cache() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("no leads", Box::new(|v| v["ecg"]["leads"] = json!(0))),
        ("no samples", Box::new(|v| v["ecg"]["samples"] = json!(0))),
        (
            "huge leads",
            Box::new(|v| v["ecg"]["leads"] = json!(u64::MAX / 2)),
        ),
        (
            "zero rate",
            Box::new(|v| v["ecg"]["sample_rate"] = json!(0.0)),
        ),
        (
            "negative rate",
            Box::new(|v| v["ecg"]["sample_rate"] = json!(-5.0)),
        ),
        (
            "no image rows",
            Box::new(|v| v["image"]["height"] = json!(0)),
        ),
        (
            "huge count",
            Box::new(|v| v["shards"][0]["count"] = json!(1u64 << 62)),
        ),
        (
            "zero count",
            Box::new(|v| v["shards"][0]["count"] = json!(0)),
        ),
        (
            "row outside",
            Box::new(|v| v["subjects"][0]["row"] = json!(9)),
        ),
        (
            "shard outside",
            Box::new(|v| v["subjects"][0]["shard"] = json!(7)),
        ),
        (
            "shard path escapes",
            Box::new(|v| v["shards"][0]["file"] = json!("../cache/index.json")),
        ),
        (
            "absolute shard path",
            Box::new(|v| v["shards"][0]["file"] = json!("/etc/hostname")),
        ),
        (
            "labels short",
            Box::new(|v| v["subjects"][0]["labels"] = json!([])),
        ),
        (
            "labels long",
            Box::new(|v| v["subjects"][0]["labels"] = json!([1, 0, 1, 1])),
        ),
        (
            "label not 0/1",
            Box::new(|v| v["subjects"][0]["labels"] = json!([7, 0])),
        ),
        (
            "phenotypes short",
            Box::new(|v| v["subjects"][1]["phenotypes"] = json!([])),
        ),
        (
            "standardiser short",
            Box::new(|v| v["phenotype_standardiser"]["mean"] = json!([])),
        ),
        (
            "standardiser zero std",
            Box::new(|v| v["phenotype_standardiser"]["std"] = json!([0.0, 0.0])),
        ),
        (
            "more label names",
            Box::new(|v| v["label_names"] = json!(["a", "b", "c"])),
        ),
        ("no label names", Box::new(|v| v["label_names"] = json!([]))),
        (
            "more phenotype names",
            Box::new(|v| v["phenotype_names"] = json!(["p", "q", "r"])),
        ),
        (
            "duplicate eids",
            Box::new(|v| v["subjects"][1]["eid"] = v["subjects"][0]["eid"].clone()),
        ),
        (
            "two subjects one row",
            Box::new(|v| {
                v["subjects"][1]["row"] = json!(0);
            }),
        ),
        ("no subjects", Box::new(|v| v["subjects"] = json!([]))),
        ("no shards", Box::new(|v| v["shards"] = json!([]))),
        (
            "lead names wrong",
            Box::new(|v| v["ecg_lead_names"] = json!(["I", "II"])),
        ),
        (
            "no modality",
            Box::new(|v| {
                v["ecg"] = Value::Null;
                v["image"] = Value::Null;
            }),
        ),
    ];
    for (what, edit) in edits {
        // A panic names the edit through this line of the test's output.
        eprintln!("edit: {what}");
        let message = after_edit(edit);
        // Only an index without subjects is still a cache (an empty one).
        assert_eq!(
            message.is_empty(),
            what == "no subjects",
            "{what}: {message:?}"
        );
    }
}

#[test]
fn damaged_files_are_refused_naming_them() {
    type Damage = Box<dyn Fn(&Path)>;
    let shard = |cache: &Path| cache.join("shard-00000.safetensors");
    let damages: Vec<(&str, Damage)> = vec![
        (
            "shard-00000.safetensors",
            Box::new(move |c| {
                let bytes = std::fs::read(shard(c)).expect("shard");
                std::fs::write(shard(c), &bytes[..bytes.len() / 2]).expect("truncate");
            }),
        ),
        (
            "shard-00000.safetensors",
            Box::new(move |c| std::fs::write(shard(c), b"").expect("empty")),
        ),
        (
            "shard-00000.safetensors",
            Box::new(move |c| std::fs::remove_file(shard(c)).expect("remove")),
        ),
        (
            "index.json",
            Box::new(|c| std::fs::write(c.join("index.json"), b"{\"version\": 1").expect("cut")),
        ),
        (
            "index.json",
            Box::new(|c| std::fs::remove_file(c.join("index.json")).expect("remove")),
        ),
    ];
    for (named, damage) in damages {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = tiny_cache(dir.path());
        damage(&cache);
        let message = open_and_load(&cache)
            .expect_err("a damaged cache is refused")
            .to_string();
        common::assert_names_file(&message, &cache.join(named));
    }
}
