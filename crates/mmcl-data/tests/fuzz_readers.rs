//! Property tests of every reader of this crate (issue: hostile and broken inputs).
//!
//! Arbitrary bytes and arbitrary mutations of valid files (flipped bits, truncations, extreme
//! sizes and rates, repeated runs) are given to the CardioSoft XML, WFDB header and signal, NPY,
//! NPZ, NIfTI (plain and gzip), CSV table, GE MUSE and HL7 aECG XML, DICOM waveform and CMR
//! DICOM-zip readers. Each must end in `Ok` or a typed error that
//! names the file: never a panic, never an abort, and never more memory than the cap of the
//! allocator installed below (an allocation past it aborts this test binary with a message).
//!
//! The number of cases per reader is `MMCL_FUZZ_CASES` (default 96, so CI stays within seconds);
//! the random stream is fixed so a CI failure reproduces, and `MMCL_FUZZ_SEED` explores others.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::write_temp;
use mmcl_data::Error;
use mmcl_testutil::alloc::CappedAllocator;
use mmcl_testutil::mutate::{Mutation, apply, fuzz_config, mutations};
use mmcl_testutil::zip;
use proptest::prelude::*;

/// No reader may hold more than this (the largest valid fixture is a few hundred kB).
const MEMORY_CAP: usize = 1 << 30;

#[global_allocator]
static ALLOC: CappedAllocator = CappedAllocator::new(MEMORY_CAP);

fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("fixture gunzips");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

/// A reader's verdict is acceptable when it is `Ok`, or an error whose message names the file.
fn check_names_file<T>(result: Result<T, Error>, path: &Path) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let message = format!("{e}");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        prop_assert!(
            message.contains(&name),
            "the error does not name {}: {message}",
            path.display()
        );
    }
    Ok(())
}

fn check_xml(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("1000001_20205_2_0.xml", bytes);
    check_names_file(mmcl_data::ecg::xml::read_cardiosoft_xml(&path), &path)
}

fn check_wfdb(header: &[u8], signal: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let hea = dir.path().join("rec16.hea");
    std::fs::write(&hea, header).expect("write header");
    std::fs::write(dir.path().join("rec16.dat"), signal).expect("write signal");
    // A record is two files: an error may name the header or the signal file it points to.
    if let Err(e) = mmcl_data::ecg::wfdb::read_record(&hea) {
        let message = format!("{e}");
        prop_assert!(
            message.contains(&*dir.path().to_string_lossy()),
            "the error names no file of the record: {message}"
        );
    }
    Ok(())
}

fn check_npy(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("ecgs.npy", bytes);
    check_names_file(
        mmcl_core::npy::read_array(&path).map_err(mmcl_data::Error::from),
        &path,
    )?;
    check_names_file(mmcl_data::ecg::npy::read_npy(&path, 500.0), &path)
}

fn check_npz(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("ecgs.npz", bytes);
    check_names_file(mmcl_data::ecg::npy::read_npz(&path, 500.0), &path)
}

fn check_nifti(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp(name, bytes);
    check_names_file(mmcl_data::cmr::nifti::read_nifti(&path), &path)
}

fn check_tables(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("table.csv", bytes);
    check_names_file(mmcl_data::tables::read_phenotypes(&path), &path)?;
    check_names_file(mmcl_data::tables::read_diagnoses(&path), &path)
}

const PHENOTYPES_CSV: &str = "eid,24100-2.0,24101-2.0,24102-2.0,24103-2.0,24104-2.0\n\
1000001,150.2,60.1,90.1,60.0,5.4\n\
1000002,,55.0,\"80.5\",59.1,4.9\n\
1000003,170,70,100,58.8,6.1\n";

const DIAGNOSES_CSV: &str = "eid,icd10\n1000001,\"I25.1;E11.9\"\n1000002,I48\n1000003,\n";

const DIAGNOSES_WIDE_CSV: &str =
    "eid,41270-0.0,41270-0.1,41270-0.2\n1000001,I251,E119,\n1000002,I48,,\n";

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4096)
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn xml_reader_survives_mutations(m in mutations(4)) {
        check_xml(&apply(fixture("xml/1000001_20205_2_0.xml"), &m))?;
    }

    #[test]
    fn xml_reader_survives_arbitrary_bytes(bytes in arbitrary_bytes()) {
        check_xml(&bytes)?;
    }

    #[test]
    fn wfdb_reader_survives_header_mutations(m in mutations(3)) {
        check_wfdb(&apply(fixture("wfdb/rec16.hea"), &m), &fixture("wfdb/rec16.dat"))?;
    }

    #[test]
    fn wfdb_reader_survives_signal_mutations(m in mutations(3)) {
        check_wfdb(&fixture("wfdb/rec16.hea"), &apply(fixture("wfdb/rec16.dat"), &m))?;
    }

    #[test]
    fn wfdb_212_reader_survives_mutations(hm in mutations(2), sm in mutations(2)) {
        let header = String::from_utf8_lossy(&fixture("wfdb/rec212.hea")).replace("rec212", "rec16");
        check_wfdb(&apply(header.into_bytes(), &hm), &apply(fixture("wfdb/rec212.dat"), &sm))?;
    }

    #[test]
    fn wfdb_reader_survives_arbitrary_headers(bytes in arbitrary_bytes()) {
        check_wfdb(&bytes, &fixture("wfdb/rec16.dat"))?;
    }

    #[test]
    fn npy_reader_survives_mutations(m in mutations(3), fortran in any::<bool>()) {
        let seed = if fortran { "ecg_fortran_f64.npy" } else { "ecg_batch_2x12x300.npy" };
        check_npy(&apply(fixture(seed), &m))?;
    }

    #[test]
    fn npy_reader_survives_arbitrary_bytes(bytes in arbitrary_bytes()) {
        let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        check_npy(&bytes)?;
        check_npy(&with_magic)?;
    }

    #[test]
    fn npz_reader_survives_member_mutations(m in mutations(3)) {
        let member = apply(fixture("ecg_batch_2x12x300.npy"), &m);
        check_npz(&zip::stored(&[("ecgs.npy", &member)]))?;
    }

    #[test]
    fn npz_reader_survives_archive_mutations(m in mutations(3)) {
        let member = fixture("ecg_batch_2x12x300.npy");
        check_npz(&apply(zip::stored(&[("a.npy", &member), ("b.npy", &member)]), &m))?;
    }

    #[test]
    fn nifti_reader_survives_mutations(m in mutations(3)) {
        check_nifti("sa.nii", &apply(fixture("cmr/big_endian_scaled.nii"), &m))?;
    }

    #[test]
    fn nifti_gz_reader_survives_mutations_inside_the_gzip(m in mutations(3)) {
        let raw = gunzip(&fixture("cmr/1000001/sa.nii.gz"));
        check_nifti("sa.nii.gz", &gzip(&apply(raw, &m)))?;
    }

    #[test]
    fn nifti_gz_reader_survives_mutations_of_the_gzip(m in mutations(2)) {
        check_nifti("seg_sa.nii.gz", &apply(fixture("cmr/1000001/seg_sa.nii.gz"), &m))?;
    }

    #[test]
    fn table_readers_survive_mutations(m in mutations(4), which in 0usize..3) {
        let seed = [PHENOTYPES_CSV, DIAGNOSES_CSV, DIAGNOSES_WIDE_CSV][which];
        check_tables(&apply(seed.as_bytes().to_vec(), &m))?;
    }

    #[test]
    fn table_readers_survive_arbitrary_bytes(bytes in arbitrary_bytes()) {
        check_tables(&bytes)?;
    }
}

fn check_vendor_xml(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp(name, bytes);
    check_names_file(mmcl_data::ecg::read_any(&path, 500.0), &path)
}

fn check_dicom_ecg(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("ecg.dcm", bytes);
    check_names_file(mmcl_data::ecg::dicom::read_dicom_ecg(&path), &path)
}

fn check_cmr_zip(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_dir, path) = write_temp("1000002_20209_2_0.zip", bytes);
    check_names_file(mmcl_data::cmr::dicom::read_dicom_zip(&path), &path)
}

const VENDOR_XML: [&str; 4] = [
    "vendor_xml/muse_12lead.xml",
    "vendor_xml/muse_8lead.xml",
    "vendor_xml/hl7_12lead.xml",
    "vendor_xml/hl7_8lead.xml",
];

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn vendor_xml_readers_survive_mutations(m in mutations(4), which in 0usize..4) {
        let file = VENDOR_XML[which];
        let name = file.rsplit('/').next().unwrap_or(file);
        check_vendor_xml(name, &apply(fixture(file), &m))?;
    }

    #[test]
    fn dicom_ecg_reader_survives_mutations(m in mutations(3), eight in any::<bool>()) {
        let file = if eight { "ecg_dicom/ecg_8lead.dcm" } else { "ecg_dicom/ecg_12lead.dcm" };
        check_dicom_ecg(&apply(fixture(file), &m))?;
    }

    #[test]
    fn dicom_ecg_reader_survives_arbitrary_bytes(bytes in arbitrary_bytes()) {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&bytes);
        check_dicom_ecg(&file)?;
    }

    #[test]
    fn cmr_dicom_zip_reader_survives_member_mutations(m in mutations(3), pick in any::<usize>()) {
        let mut members = zip::members(&fixture("cmr_dicom/1000002_20209_2_0.zip"));
        let i = pick % members.len();
        members[i].1 = apply(std::mem::take(&mut members[i].1), &m);
        let members: Vec<(&str, &[u8])> =
            members.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        check_cmr_zip(&zip::stored(&members))?;
    }

    #[test]
    fn cmr_dicom_zip_reader_survives_archive_mutations(m in mutations(3)) {
        check_cmr_zip(&apply(fixture("cmr_dicom/1000002_20209_2_0.zip"), &m))?;
    }
}

/// HDF5 files are read by the system library (the `hdf5` feature); a corrupt file must come
/// back as an error from it too, not as an abort inside C.
#[cfg(feature = "hdf5")]
mod hdf5_files {
    use super::*;

    fn check_hdf5(bytes: &[u8]) -> Result<(), TestCaseError> {
        let (_dir, path) = write_temp("ecgs.h5", bytes);
        check_names_file(mmcl_data::ecg::hdf5::read_hdf5(&path, 400.0), &path)
    }

    /// A variable-length `units` attribute whose global-heap object index is out of range (one
    /// byte, found by the property below) makes libhdf5 1.10 read past the heap and crash; the
    /// reader must answer with an error naming the file, and this process must live on.
    #[test]
    fn a_string_attribute_with_a_corrupt_heap_index_is_an_error() {
        let mut bytes = fixture("ecg_hdf5/chunked_gzip.h5");
        assert_eq!(bytes[4607], 0, "the fixture changed: find the byte again");
        bytes[4607] = 2;
        let (_dir, path) = write_temp("ecgs.h5", &bytes);
        let message = match mmcl_data::ecg::hdf5::read_hdf5(&path, 400.0) {
            Ok(_) => panic!("a corrupt file was read"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains("ecgs.h5"), "{message}");
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn hdf5_reader_survives_mutations(m in mutations(3), chunked in any::<bool>()) {
            let file = if chunked { "ecg_hdf5/chunked_gzip.h5" } else { "ecg_hdf5/code15_contiguous.h5" };
            check_hdf5(&apply(fixture(file), &m))?;
        }
    }
}

/// The mutations themselves must reach the readers' size fields: a sanity check that the
/// generator is not vacuous (an extreme decimal in the WFDB header's sample count is refused).
#[test]
fn an_extreme_wfdb_sample_count_is_refused_not_allocated() {
    let header = apply(
        fixture("wfdb/rec16.hea"),
        &[Mutation::SetDecimal {
            at: 13, // after "rec16 12 500 ": the sample count
            digits: "99999999999999".into(),
        }],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let hea = dir.path().join("rec16.hea");
    std::fs::write(&hea, header).expect("write header");
    std::fs::write(dir.path().join("rec16.dat"), fixture("wfdb/rec16.dat")).expect("write");
    assert!(mmcl_data::ecg::wfdb::read_record(&hea).is_err());
}
