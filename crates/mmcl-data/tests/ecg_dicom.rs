//! DICOM waveform ECGs written by pydicom (`tests/fixtures/make_dicom_ecg_fixtures.py`) read
//! back to the source signal in mV, and broken or hostile variants refused with errors naming
//! the file, under a 64 MiB cap on live heap memory.

mod common;

use std::path::Path;

use common::{fixture, format_error, write_temp};
use mmcl_data::ecg::dicom::{lead_from_code_value, lead_from_meaning, read_dicom_ecg};
use mmcl_data::ecg::{Ecg, LEADS};

#[global_allocator]
static ALLOC: mmcl_testutil::alloc::CappedAllocator =
    mmcl_testutil::alloc::CappedAllocator::new(64 << 20);

/// The raw sample the fixture script stores for canonical lead `lead` at sample `t`.
fn raw(lead: usize, t: usize) -> f64 {
    (((t * (lead + 3) * 37) % 2001) as f64) - 1000.0
}

/// Asserts that lead `lead` of `ecg` equals `expected(t)` (mV) to f32 rounding.
fn assert_lead(ecg: &Ecg, lead: usize, expected: impl Fn(usize) -> f64) {
    for (t, &v) in ecg.lead(lead).iter().enumerate() {
        let e = expected(t);
        assert!(
            (f64::from(v) - e).abs() <= 1e-6 * (1.0 + e.abs()),
            "lead {} sample {t}: {v} != {e}",
            LEADS[lead]
        );
    }
}

#[test]
fn twelve_lead_file_matches_the_source_in_millivolts() {
    let ecg = read_dicom_ecg(&fixture("ecg_dicom/ecg_12lead.dcm")).unwrap();
    assert_eq!((ecg.samples(), ecg.sample_rate()), (1000, 500.0));
    // 2.5 uV per unit, correction 1, baseline 0; the median-beat group after it is ignored.
    for lead in 0..12 {
        assert_lead(&ecg, lead, |t| raw(lead, t) * 2.5e-3);
    }
}

#[test]
fn eight_lead_file_gets_its_limb_leads_derived() {
    let ecg = read_dicom_ecg(&fixture("ecg_dicom/ecg_8lead.dcm")).unwrap();
    assert_eq!((ecg.samples(), ecg.sample_rate()), (500, 250.0));
    // raw × 0.005 mV × correction 0.8, plus the 0.01 mV baseline in physical units.
    let mv = |lead: usize, t: usize| raw(lead, t) * 0.005 * 0.8 + 0.01;
    for lead in [0, 1, 6, 7, 8, 9, 10, 11] {
        assert_lead(&ecg, lead, |t| mv(lead, t));
    }
    assert_lead(&ecg, 2, |t| mv(1, t) - mv(0, t));
    assert_lead(&ecg, 3, |t| -(mv(0, t) + mv(1, t)) / 2.0);
    assert_lead(&ecg, 4, |t| mv(0, t) - mv(1, t) / 2.0);
    assert_lead(&ecg, 5, |t| mv(1, t) - mv(0, t) / 2.0);
}

#[test]
fn lead_codes_and_meanings() {
    assert_eq!(lead_from_meaning("Lead aVR"), Some(3));
    assert_eq!(lead_from_meaning(" lead v6 "), Some(11));
    assert_eq!(lead_from_meaning("III"), Some(2));
    assert_eq!(lead_from_meaning("MDC_ECG_LEAD_AVF"), Some(5));
    assert_eq!(lead_from_meaning("Lead -aVR"), None);
    assert_eq!(lead_from_meaning("Lead V7"), None);
    assert_eq!(lead_from_code_value("5.6.3-9-61"), Some(2));
    assert_eq!(lead_from_code_value("2:1"), Some(0));
    assert_eq!(lead_from_code_value("2:8"), Some(11));
    assert_eq!(lead_from_code_value("5.6.3-9-99"), None);
    assert_eq!(lead_from_code_value("x"), None);
}

/// The fixture's bytes.
fn twelve_lead() -> Vec<u8> {
    std::fs::read(fixture("ecg_dicom/ecg_12lead.dcm")).unwrap()
}

/// The offset of the first explicit-VR element `(group, element)` in `bytes`.
fn find_tag(bytes: &[u8], group: u16, element: u16) -> usize {
    let mut needle = group.to_le_bytes().to_vec();
    needle.extend(element.to_le_bytes());
    bytes
        .windows(4)
        .position(|w| w == needle.as_slice())
        .expect("tag present")
}

/// Reads `bytes` written as `name` and returns the error message, which must name the file.
fn refused(bytes: &[u8], name: &str, needle: &str) -> String {
    let (_dir, p) = write_temp(name, bytes);
    let msg = format_error(read_dicom_ecg(&p), &p);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    msg
}

#[test]
fn broken_files_are_refused_naming_the_file() {
    refused(b"", "empty.dcm", "empty");
    refused(&[7u8; 300], "noise.dcm", "not a DICOM file");
    let full = twelve_lead();
    for cut in [140, 400, full.len() / 2, full.len() - 3] {
        refused(&full[..cut], "cut.dcm", "");
    }
    let dir = tempfile::tempdir().unwrap();
    let msg = format_error(read_dicom_ecg(dir.path()), dir.path());
    assert!(msg.contains("not a regular file"), "{msg}");
}

#[test]
fn hostile_lengths_and_counts_are_refused_before_allocating() {
    // WaveformData (5400,1010) OW declaring ~2 GB.
    let mut bytes = twelve_lead();
    let at = find_tag(&bytes, 0x5400, 0x1010);
    bytes[at + 8..at + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    refused(&bytes, "long.dcm", "declares");

    // NumberOfWaveformSamples (003A,0010) UL: beyond the limit, then beyond the data.
    let at = find_tag(&twelve_lead(), 0x003A, 0x0010) + 8;
    let mut bytes = twelve_lead();
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    refused(&bytes, "samples.dcm", "more than the limit");
    let mut bytes = twelve_lead();
    bytes[at..at + 4].copy_from_slice(&1001u32.to_le_bytes());
    refused(&bytes, "short.dcm", "truncated");

    // NumberOfWaveformChannels (003A,0005) US disagreeing with the channel definitions.
    let mut bytes = twelve_lead();
    let at = find_tag(&bytes, 0x003A, 0x0005) + 8;
    bytes[at..at + 2].copy_from_slice(&13u16.to_le_bytes());
    refused(&bytes, "channels.dcm", "NumberOfWaveformChannels");
}

#[test]
fn other_sop_classes_rates_and_encodings_are_refused() {
    let replace = |bytes: &[u8], from: &[u8], to: &[u8]| -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = bytes.to_vec();
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
            }
            i += 1;
        }
        out
    };
    let full = twelve_lead();
    let ct = replace(
        &full,
        b"1.2.840.10008.5.1.4.1.1.9.1.1",
        b"1.2.840.10008.5.1.4.1.1.9.4.1",
    );
    refused(&ct, "sop.dcm", "SOP class");
    // SamplingFrequency "500" → "5e9".
    let at = find_tag(&full, 0x003A, 0x001A);
    let mut fast = full.clone();
    fast[at + 8..at + 11].copy_from_slice(b"5e9");
    refused(&fast, "rate.dcm", "sample rate");
    // Explicit VR big endian (retired) is not decoded.
    let big = replace(&full, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0");
    refused(&big, "big.dcm", "transfer syntax");
    // An unknown sensitivity unit.
    let unit = replace(&full, b"uV", b"uG");
    refused(&unit, "unit.dcm", "unit");
}

#[test]
fn the_reader_never_reads_beyond_a_file_named() {
    let p = Path::new("/nonexistent/ecg.dcm");
    let err = read_dicom_ecg(p).unwrap_err();
    assert_eq!(err.path(), Some(p));
}
