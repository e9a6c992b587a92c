//! End to end: a UK-Biobank-style folder → `build_dataset` → cache → loader batches.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use common::fixture;
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::cache::Cache;
use mmcl_data::cmr::{CmrConfig, CropSpec, ImageAugmentConfig};
use mmcl_data::loader::{Batch, Loader, LoaderConfig, Shard};
use mmcl_data::phenotypes::PHENOTYPE_FIELDS;
use mmcl_data::tables::Split;
use mmcl_testutil::copy_fixture_cmr_study;

/// 12 subjects with ECG and CMR, one with only an ECG, one with only a CMR, one bad XML.
fn ukb_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("ecg")).unwrap();
    let xml = fixture("xml/1000001_20205_2_0.xml");
    for k in 0..14u64 {
        let eid = 2000000 + k;
        if k < 13 {
            std::fs::copy(&xml, dir.join(format!("ecg/{eid}_20205_2_0.xml"))).unwrap();
        }
        if k != 12 {
            copy_fixture_cmr_study(&dir.join(format!("cmr/{eid}")));
        }
    }
    std::fs::copy(
        fixture("xml/non_numeric.xml"),
        dir.join("ecg/2000020_20205_2_0.xml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("cmr/2000020")).unwrap();
    std::fs::copy(
        fixture("cmr/1000001/sa.nii.gz"),
        dir.join("cmr/2000020/sa.nii.gz"),
    )
    .unwrap();
    std::fs::write(
        dir.join("phenotypes.csv"),
        "eid,24100-2.0,24101-2.0\n2000000,150,60\n2000001,,55\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("diagnoses.csv"),
        "eid,icd10\n2000000,I25.1\n2000001,I48;E11\n2000002,\n",
    )
    .unwrap();
}

/// [`ukb_folder`] at `dir/ukb`; returns it and the cache's path beside it, `dir/cache`.
fn ukb_folder_in(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("ukb");
    ukb_folder(&root);
    (root, dir.join("cache"))
}

fn config(root: &Path, out: &Path) -> BuildConfig {
    BuildConfig {
        root: root.to_path_buf(),
        output: out.to_path_buf(),
        ecg_samples: 1000,
        cmr: CmrConfig {
            size: 32,
            crop: CropSpec::LvCentre { size_mm: 25.0 },
            ..CmrConfig::default()
        },
        shard_size: 4,
        skip_bad: true,
        ..BuildConfig::default()
    }
}

fn loader_config() -> LoaderConfig {
    LoaderConfig {
        batch_size: 5,
        ecg_crop: Some(500),
        image_augment: Some(ImageAugmentConfig {
            size: 24,
            ..Default::default()
        }),
        threads: 2,
        ..LoaderConfig::mmcl_train()
    }
}

#[test]
fn build_cache_and_load_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = ukb_folder_in(dir.path());
    let (index, report) = build_dataset(&config(&root, &out), &|_, _| {}).unwrap();

    // Joined: 12 complete pairs; 2000012 lacks a CMR, 2000013 an ECG; 2000020 is skipped.
    assert_eq!(index.subjects.len(), 12);
    assert_eq!(report.join.missing["cmr"], vec![2000012]);
    assert_eq!(report.join.missing["ecg"], vec![2000013]);
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].error.contains("2000020_20205_2_0.xml"));
    assert_eq!(report.written.values().sum::<usize>(), 12);
    assert_eq!(index.shards.len(), 3);
    // Table values win; gaps are measured from the segmentation (LVEDV of the fixture).
    let s0 = index.subjects.iter().find(|s| s.eid == 2000000).unwrap();
    assert_eq!(s0.phenotypes[0], Some(150.0));
    assert_eq!(s0.labels, vec![Some(1), Some(0), Some(0)]);
    let s1 = index.subjects.iter().find(|s| s.eid == 2000001).unwrap();
    assert!((s1.phenotypes[0].unwrap() - 4.95072).abs() < 1e-3);
    assert_eq!(s1.labels, vec![Some(0), Some(1), Some(1)]);
    assert!(report.phenotypes_measured > 0);

    let cache = Arc::new(Cache::open(&out).unwrap());
    assert_eq!(cache.len(), 12);
    // The cached ECG is the preprocessed recording (group-normalised: mean 0 per group).
    let ecg = cache.ecg(0).unwrap();
    let group: f64 = ecg[..3000].iter().map(|v| *v as f64).sum::<f64>() / 3000.0;
    assert!(group.abs() < 1e-4, "{group}");

    let train = cache.split_indices(Split::Train);
    let loader =
        Arc::new(Loader::new(cache.clone(), train.clone(), loader_config(), Device::Cpu).unwrap());
    let batches: Vec<_> = loader.epoch(3, 0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), loader.num_batches());
    let b0 = &batches[0];
    assert_eq!(b0.ecg.as_ref().unwrap().dims(), &[5, 1, 12, 500]);
    assert_eq!(b0.image.as_ref().unwrap().dims(), &[5, 3, 24, 24]);
    assert_eq!(b0.labels.dims(), &[5, 3]);
    assert_eq!(b0.phenotypes.dims(), &[5, 10]);
    let seen: usize = batches.iter().map(|b| b.eids.len()).sum();
    assert_eq!(seen, train.len());

    // Determinism: the same (seed, epoch, batch) gives the same tensors, also when resumed.
    let again = loader.batch(3, 1).unwrap();
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(again.eids, batches[1].eids);
    assert_eq!(
        flat(again.ecg.as_ref().unwrap()),
        flat(batches[1].ecg.as_ref().unwrap())
    );
    assert_eq!(
        flat(again.image.as_ref().unwrap()),
        flat(batches[1].image.as_ref().unwrap())
    );
    let resumed: Vec<_> = loader.epoch(3, 1).collect::<Result<_, _>>().unwrap();
    assert_eq!(resumed[0].eids, batches[1].eids);
    assert_eq!(
        flat(resumed[0].ecg.as_ref().unwrap()),
        flat(batches[1].ecg.as_ref().unwrap())
    );
    // Another epoch shuffles and augments differently.
    let other = loader.batch(4, 0).unwrap();
    assert_ne!(
        flat(other.ecg.as_ref().unwrap()),
        flat(batches[0].ecg.as_ref().unwrap())
    );
    // A different thread count does not change anything.
    let one_thread = Loader::new(
        cache.clone(),
        train,
        LoaderConfig {
            threads: 1,
            ..loader_config()
        },
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        flat(one_thread.batch(3, 1).unwrap().ecg.as_ref().unwrap()),
        flat(batches[1].ecg.as_ref().unwrap())
    );

    // Three replicas' shards of a batch of 5 (rows 0..1, 1..3, 3..5) are the batch, cut in rank
    // order, with the same samples, crops and augmentations as one loader gives them.
    let shards: Vec<_> = (0..3)
        .map(|rank| {
            loader
                .sharded(Shard::new(rank, 3).unwrap())
                .batch(3, 0)
                .unwrap()
        })
        .collect();
    let rows: Vec<_> = shards.iter().map(|s| s.global_rows.clone()).collect();
    assert_eq!(rows, vec![0..1, 1..3, 3..5]);
    assert!(shards.iter().all(|s| s.global_size == 5));
    let eids: Vec<_> = shards.iter().flat_map(|s| s.eids.clone()).collect();
    assert_eq!(eids, batches[0].eids);
    for modality in [|b: &Batch| b.ecg.clone(), |b: &Batch| b.image.clone()] {
        let joined: Vec<f32> = shards
            .iter()
            .flat_map(|s| flat(&modality(s).unwrap()))
            .collect();
        assert_eq!(joined, flat(&modality(&batches[0]).unwrap()));
    }
    assert_eq!(
        (batches[0].global_rows.clone(), batches[0].global_size),
        (0..5, 5)
    );
    assert!(Shard::new(3, 3).is_err());

    // Dropping an epoch half-way stops its worker promptly (no hang, no leak).
    {
        let mut it = loader.epoch(5, 0);
        assert!(it.next().unwrap().is_ok());
    }
    // Asking for a batch beyond the epoch is an error, not a panic.
    assert!(loader.batch(0, loader.num_batches()).is_err());

    // Validation: in order, crop from 0, no ECG augmentation → the cached samples.
    let val = Loader::new(
        cache.clone(),
        (0..12).collect(),
        LoaderConfig {
            ecg_augment: None,
            ..LoaderConfig {
                batch_size: 4,
                ecg_crop: Some(500),
                image_augment: None,
                image_size: None,
                ..LoaderConfig::mmcl_val()
            }
        },
        Device::Cpu,
    )
    .unwrap();
    let v = val.batch(0, 0).unwrap();
    assert_eq!(v.indices, vec![0, 1, 2, 3]);
    let first = flat(v.ecg.as_ref().unwrap());
    let mut window = vec![0.0; 12 * 500];
    cache.read_ecg_window(0, 0, &mut window).unwrap();
    assert_eq!(&first[..6000], &window[..]);
    assert_eq!(v.image.as_ref().unwrap().dims(), &[4, 3, 32, 32]);
    assert_eq!(
        flat(v.image.as_ref().unwrap())[..3 * 32 * 32],
        cache.image(0).unwrap().data[..]
    );
}

/// The heart rate of a CardioSoft or GE MUSE ECG reaches the cache as the cardiac output
/// measured from the segmentation (stroke volume × rate); HL7 aECG carries none, and an
/// implausible MUSE rate gives none.
#[test]
fn vendor_heart_rates_reach_the_cardiac_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ukb");
    std::fs::create_dir_all(root.join("ecg")).unwrap();
    let muse = std::fs::read(fixture("vendor_xml/muse_12lead.xml")).unwrap();
    let with_rate = |rate: &str| {
        let text: String = muse.iter().map(|&b| b as char).collect(); // Latin-1
        let text = text.replace(
            "<VentricularRate>71</VentricularRate>",
            &format!("<VentricularRate>{rate}</VentricularRate>"),
        );
        assert!(text.contains(rate));
        // As a UTF-16 export: the rate must survive the decoding too.
        [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect::<Vec<u8>>()
    };
    let ecgs: [(u64, Vec<u8>); 4] = [
        (
            3000000,
            std::fs::read(fixture("xml/1000001_20205_2_0.xml")).unwrap(),
        ),
        (3000001, with_rate("62")),
        (3000002, with_rate("0")),
        (
            3000003,
            std::fs::read(fixture("vendor_xml/hl7_12lead.xml")).unwrap(),
        ),
    ];
    for (eid, bytes) in &ecgs {
        std::fs::write(root.join(format!("ecg/{eid}_20205_2_0.xml")), bytes).unwrap();
        copy_fixture_cmr_study(&root.join(format!("cmr/{eid}")));
    }
    let cfg = BuildConfig {
        ecg_samples: 200,
        phenotypes: None,
        diagnoses: None,
        ..config(&root, &dir.path().join("cache"))
    };
    let (index, report) = build_dataset(&cfg, &|_, _| {}).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let column = |name: &str| {
        PHENOTYPE_FIELDS
            .iter()
            .position(|f| f.name == name)
            .unwrap()
    };
    let (sv, co) = (column("lvsv"), column("lvco"));
    let rate = |eid: u64| {
        let s = index.subjects.iter().find(|s| s.eid == eid).unwrap();
        let sv = s.phenotypes[sv].expect("stroke volume from the segmentation");
        // Cardiac output in L/min from mL × bpm.
        s.phenotypes[co].map(|co| co * 1000.0 / sv)
    };
    let close = |r: Option<f64>, want: f64| r.is_some_and(|r| (r - want).abs() < 1e-6);
    assert!(
        close(rate(3000000), 71.0),
        "CardioSoft: {:?}",
        rate(3000000)
    );
    assert!(close(rate(3000001), 62.0), "MUSE: {:?}", rate(3000001));
    assert_eq!(rate(3000002), None, "an implausible MUSE rate");
    assert_eq!(rate(3000003), None, "HL7 aECG");
}

#[test]
fn builds_refuse_to_clobber_and_stop_on_bad_files_without_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = ukb_folder_in(dir.path());
    let cfg = BuildConfig {
        skip_bad: false,
        ..config(&root, &out)
    };
    let err = build_dataset(&cfg, &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("2000020_20205_2_0.xml"), "{err}");
    assert!(!out.exists(), "nothing half-written");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());

    build_dataset(&config(&root, &out), &|_, _| {}).unwrap();
    let err = build_dataset(&config(&root, &out), &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    // TOML configuration with relative paths.
    let toml = dir.path().join("build.toml");
    std::fs::write(
        &toml,
        "root = \"ukb\"\noutput = \"cache2\"\necg_samples = 1000\nskip_bad = true\n\
         [cmr]\nsize = 16\n[split]\ntrain = 0.5\nval = 0.25\ntest = 0.25\nstratify_by = \"CAD\"\n",
    )
    .unwrap();
    let cfg = BuildConfig::from_file(&toml).unwrap();
    let (index, _) = build_dataset(&cfg, &|_, _| {}).unwrap();
    assert_eq!(index.image.unwrap().height, 16);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "rooot = 1\n").unwrap();
    assert!(
        BuildConfig::from_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad.toml")
    );
}

#[test]
fn a_lead_subset_is_cut_after_preprocessing_and_named_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = ukb_folder_in(dir.path());
    build_dataset(&config(&root, &out), &|_, _| {}).unwrap();
    let full = Cache::open(&out).unwrap();
    assert_eq!(full.index().ecg.unwrap().leads, 12);
    assert_eq!(full.index().ecg_lead_names, None);

    // I, II and the chest leads, named in any capitalisation; V1 before II to show the order
    // given is the order stored.
    let names = ["i", "V1", "II", "v2", "V3", "V4", "V5", "V6"];
    let subset_dir = dir.path().join("subset");
    let cfg = BuildConfig {
        output: subset_dir.clone(),
        ecg_leads: Some(names.iter().map(|n| n.to_string()).collect()),
        ..config(&root, &out)
    };
    build_dataset(&cfg, &|_, _| {}).unwrap();
    let subset = Arc::new(Cache::open(&subset_dir).unwrap());
    let layout = subset.index().ecg.unwrap();
    assert_eq!(layout.leads, 8);
    assert_eq!(
        subset.index().ecg_lead_names.as_deref().unwrap(),
        ["I", "V1", "II", "V2", "V3", "V4", "V5", "V6"]
    );
    // Each stored row is the full cache's row of that lead, bit for bit: the group-wise
    // normalisation ran over all 12 before the cut.
    let (a, b) = (full.ecg(0).unwrap(), subset.ecg(0).unwrap());
    let n = layout.samples;
    for (row, canonical) in [0usize, 6, 1, 7, 8, 9, 10, 11].into_iter().enumerate() {
        assert_eq!(
            b[row * n..(row + 1) * n],
            a[canonical * n..(canonical + 1) * n]
        );
    }
    // The loader's batches carry the cache's lead count.
    let train = subset.split_indices(Split::Train);
    let loader =
        Arc::new(Loader::new(subset.clone(), train, loader_config(), Device::Cpu).unwrap());
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(batch.ecg.unwrap().dims(), &[5, 1, 8, 500]);

    // Unknown, repeated and empty selections are refused before anything is written.
    for (leads, expected) in [
        (
            vec!["I", "V7"],
            "\"V7\" is not one of the 12 standard leads",
        ),
        (
            vec!["I", "aVR", "AVR"],
            "ecg_leads: lead aVR is named twice",
        ),
        (vec![], "ecg_leads: no lead is named"),
    ] {
        let bad_out = dir.path().join("refused");
        let cfg = BuildConfig {
            output: bad_out.clone(),
            ecg_leads: Some(leads.iter().map(|n| n.to_string()).collect()),
            ..config(&root, &out)
        };
        let err = build_dataset(&cfg, &|_, _| {}).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!bad_out.exists());
    }

    // An index whose names do not fit its layout is refused on opening, naming the index.
    let index_path = subset_dir.join("index.json");
    let text = std::fs::read_to_string(&index_path).unwrap();
    std::fs::write(&index_path, text.replacen("\"V6\"", "\"V9\"", 1)).unwrap();
    let err = Cache::open(&subset_dir).err().unwrap().to_string();
    assert!(
        err.contains("index.json") && err.contains("ecg_lead_names"),
        "{err}"
    );
}
