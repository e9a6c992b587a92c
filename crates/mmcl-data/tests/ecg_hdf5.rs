//! HDF5 ECG arrays in the CODE-15 layout written by h5py
//! (`tests/fixtures/make_hdf5_ecg_fixtures.py`) read back to the source signal in mV, and broken
//! or hostile files refused with errors naming the file, under a 64 MiB cap on live heap memory.
//! Needs the `hdf5` feature (and the system libhdf5).
#![cfg(feature = "hdf5")]

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, format_error, write};
use hdf5_metno::File;
use hdf5_metno::types::VarLenUnicode;
use mmcl_data::ecg::hdf5::{Hdf5Tracings, read_hdf5};
use mmcl_data::ecg::{LEADS, NamedEcg};

#[global_allocator]
static ALLOC: mmcl_testutil::alloc::CappedAllocator =
    mmcl_testutil::alloc::CappedAllocator::new(64 << 20);

/// The fixture signal of record `i`, sample `t`, lead `l`, in uV.
fn source_uv(i: usize, t: usize, l: usize) -> f64 {
    (((i * 7 + t * (l + 3) * 37) % 2001) as f64) - 1000.0
}

/// Asserts that `records` hold the fixture signal (record numbers `first..`) in mV.
fn assert_source(records: &[NamedEcg], first: usize, samples: usize, tolerance: f64) {
    for (k, r) in records.iter().enumerate() {
        assert_eq!(r.ecg.samples(), samples);
        for (l, lead) in LEADS.iter().enumerate() {
            for (t, &v) in r.ecg.lead(l).iter().enumerate() {
                // The f32 nearest the source in mV, as a writer storing f32 would keep it.
                let e = f64::from((source_uv(first + k, t, l) / 1000.0) as f32);
                assert!(
                    (f64::from(v) - e).abs() <= tolerance,
                    "record {} lead {} sample {t}: {v} != {e}",
                    first + k,
                    lead
                );
            }
        }
    }
}

#[test]
fn contiguous_float32_code15_file_matches_the_source() {
    let records = read_hdf5(&fixture("ecg_hdf5/code15_contiguous.h5"), 400.0).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1234567", "42"]);
    assert!(records.iter().all(|r| r.ecg.sample_rate() == 400.0));
    // Stored as f32 mV: read back exactly.
    assert_source(&records, 0, 256, 0.0);
}

#[test]
fn chunked_gzip_file_with_unit_and_rate_attributes_matches_the_source() {
    let p = fixture("ecg_hdf5/chunked_gzip.h5");
    let records = read_hdf5(&p, 400.0).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["chunked_gzip_0", "chunked_gzip_1", "chunked_gzip_2"]);
    // The file's rate wins over the caller's; uV become mV.
    assert!(records.iter().all(|r| r.ecg.sample_rate() == 500.0));
    assert_source(&records, 0, 200, 1e-6);

    let tracings = Hdf5Tracings::open(&p, 400.0).unwrap();
    assert_eq!((tracings.len(), tracings.samples()), (3, 200));
    let middle = tracings.read(1..2).unwrap();
    assert_eq!(middle.len(), 1);
    assert_source(&middle, 1, 200, 1e-6);
    let err = tracings.read(2..4).unwrap_err();
    common::assert_format_error(&err, &p);
}

/// Writes an HDF5 file whose `tracings` has `shape` (f32, contiguous, zeros) and returns it.
fn with_shape(dir: &Path, name: &str, shape: &[usize]) -> PathBuf {
    with_shape_and(dir, name, shape, |_| Ok(()))
}

/// As [`with_shape`], with what `more` adds to the file (attributes, datasets).
fn with_shape_and(
    dir: &Path,
    name: &str,
    shape: &[usize],
    more: impl FnOnce(&File) -> hdf5_metno::Result<()>,
) -> PathBuf {
    let p = dir.join(name);
    let f = File::create(&p).unwrap();
    let n: usize = shape.iter().product();
    let ds = f
        .new_dataset::<f32>()
        .shape(shape.to_vec())
        .create("tracings")
        .unwrap();
    ds.write_raw(&vec![0f32; n]).unwrap();
    more(&f).unwrap();
    p
}

/// The error message of reading `p`, which must be a format error naming it and say `needle`.
fn refused(p: &Path, needle: &str) -> String {
    let msg = format_error(read_hdf5(p, 400.0), p);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    msg
}

#[test]
fn broken_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    refused(&write(dir.path(), "empty.h5", b""), "empty");
    refused(&write(dir.path(), "noise.h5", [9u8; 4096]), "HDF5");
    let full = std::fs::read(fixture("ecg_hdf5/code15_contiguous.h5")).unwrap();
    for cut in [100, full.len() / 2, full.len() - 10] {
        let p = write(dir.path(), "cut.h5", &full[..cut]);
        format_error(read_hdf5(&p, 400.0), &p);
    }
    let gz = std::fs::read(fixture("ecg_hdf5/chunked_gzip.h5")).unwrap();
    let p = write(dir.path(), "cutgz.h5", &gz[..gz.len() - 2000]);
    format_error(read_hdf5(&p, 400.0), &p);
    format_error(read_hdf5(dir.path(), 400.0), dir.path());
}

#[test]
fn wrong_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    refused(&with_shape(dir.path(), "rank2.h5", &[256, 12]), "rank 2");
    refused(
        &with_shape(dir.path(), "rank4.h5", &[1, 2, 256, 12]),
        "rank 4",
    );
    refused(
        &with_shape(dir.path(), "npy_layout.h5", &[2, 12, 256]),
        "last axis",
    );
    refused(
        &with_shape(dir.path(), "eleven.h5", &[2, 256, 11]),
        "11 leads",
    );
    refused(
        &with_shape(dir.path(), "none.h5", &[0, 256, 12]),
        "no samples",
    );

    let p = dir.path().join("other.h5");
    let f = File::create(&p).unwrap();
    f.new_dataset::<f32>().shape([2, 3]).create("x").unwrap();
    drop(f);
    refused(&p, "no dataset \"tracings\"");
}

#[test]
fn huge_declared_dimensions_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // Chunked and never written: the file is tiny whatever the shape declares.
    for (name, shape, needle) in [
        ("huge.h5", [1usize << 24, 5000, 12], "limit"),
        ("sparse.h5", [2000, 5000, 12], "file has only"),
        ("long.h5", [1, 1 << 23, 12], "samples per lead"),
    ] {
        let p = dir.path().join(name);
        let f = File::create(&p).unwrap();
        f.new_dataset::<f32>()
            .chunk([1, 1000, 12])
            .deflate(4)
            .shape(shape)
            .create("tracings")
            .unwrap();
        drop(f);
        refused(&p, needle);
    }
}

#[test]
fn bad_attributes_and_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let unit: VarLenUnicode = "furlong".parse().unwrap();
    let p = with_shape_and(dir.path(), "unit.h5", &[1, 100, 12], |f| {
        f.dataset("tracings")?
            .new_attr::<VarLenUnicode>()
            .create("units")?
            .write_scalar(&unit)
    });
    refused(&p, "unsupported unit");

    let p = with_shape_and(dir.path(), "rate.h5", &[1, 100, 12], |f| {
        f.new_attr::<f64>().create("fs")?.write_scalar(&1e9)
    });
    refused(&p, "sample rate");

    let p = with_shape_and(dir.path(), "ids.h5", &[2, 100, 12], |f| {
        f.new_dataset::<i64>()
            .shape([3])
            .create("exam_id")?
            .write_raw(&[1i64, 2, 3])
    });
    refused(&p, "exam_id");
}
