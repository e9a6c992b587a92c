//! Hostile and broken ECG files (CardioSoft XML, WFDB) and extreme sampling rates: each must be
//! a typed error naming the offending file, found before anything large is allocated.
//!
//! The whole test binary runs under a 64 MiB cap on live heap memory, so a reader that
//! allocated what a hostile header declares (hundreds of MB here) aborts the run loudly
//! instead of passing.

mod common;

use std::path::Path;

use common::{fixture, write, write_temp};
use mmcl_data::Error;
use mmcl_data::ecg::convert::preprocess_directory;
use mmcl_data::ecg::preprocess::{PreprocessConfig, resample};
use mmcl_data::ecg::xml::{MAX_XML_DEPTH, read_cardiosoft_xml};
use mmcl_data::ecg::{self, Ecg, MAX_SAMPLES_PER_LEAD, wfdb};

#[global_allocator]
static ALLOC: mmcl_testutil::alloc::CappedAllocator =
    mmcl_testutil::alloc::CappedAllocator::new(64 << 20);

/// Asserts a format error about `file` whose message names it and contains `needle`;
/// returns the message.
fn format_error(
    result: mmcl_data::Result<impl std::fmt::Debug>,
    file: &Path,
    needle: &str,
) -> String {
    let msg = common::format_error(result, file);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    msg
}

/// The fixture CardioSoft XML with every `<SampleRate>` set to `rate`.
fn xml_with_rate(rate: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture("xml/1000001_20205_2_0.xml")).unwrap();
    // The fixture is Latin-1: swap the ASCII markup byte-wise.
    let from = b">500</SampleRate>";
    let to = format!(">{rate}</SampleRate>").into_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut i = 0;
    let mut swapped = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(&to);
            i += from.len();
            swapped += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert_eq!(swapped, 2, "the fixture has a median and a strip rate");
    out
}

#[test]
fn xml_with_an_implausible_rate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for rate in ["0.005", "1e9", "49.9"] {
        let p = write(dir.path(), &format!("rate_{rate}.xml"), xml_with_rate(rate));
        format_error(
            read_cardiosoft_xml(&p),
            &p,
            "outside the plausible ECG range",
        );
        format_error(ecg::read_any(&p, 500.0), &p, "sample rate");
    }
    // The range's ends are accepted.
    for rate in ["50", "20000"] {
        let p = write(dir.path(), &format!("ok_{rate}.xml"), xml_with_rate(rate));
        let rec = read_cardiosoft_xml(&p).unwrap();
        assert_eq!(rec.rhythm.sample_rate(), rate.parse::<f64>().unwrap());
    }
}

#[test]
fn deeply_nested_xml_is_refused_at_the_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let nested = |depth: usize| {
        let mut s = String::from("<?xml version=\"1.0\"?>\n<CardiologyXML>");
        s.push_str(&"<a>".repeat(depth));
        s.push_str(&"</a>".repeat(depth));
        s.push_str("</CardiologyXML>\n");
        s
    };
    let p = write(dir.path(), "deep.xml", nested(100_000));
    format_error(
        read_cardiosoft_xml(&p),
        &p,
        &format!("nested deeper than {MAX_XML_DEPTH} levels"),
    );
    // Exactly at the limit (the root plus MAX_XML_DEPTH − 1 levels) the parse goes on and
    // fails for the real reason.
    let p = write(dir.path(), "at_limit.xml", nested(MAX_XML_DEPTH - 1));
    format_error(read_cardiosoft_xml(&p), &p, "no <StripData>");
    let p = write(dir.path(), "over_limit.xml", nested(MAX_XML_DEPTH));
    format_error(read_cardiosoft_xml(&p), &p, "nesting depth limit");
}

/// The fixture WFDB header with every signal line's file name replaced by `file` (and the
/// record line's sampling rate and sample count replaced when given).
fn header_with(file: &str, rate: &str, samples: &str) -> String {
    let hea = std::fs::read_to_string(fixture("wfdb/rec16.hea")).unwrap();
    let mut lines = hea.lines();
    let mut out = format!("rec16 12 {rate} {samples}\n");
    lines.next();
    for line in lines {
        let rest = line.split_once(' ').unwrap().1;
        out.push_str(&format!("{file} {rest}\n"));
    }
    out
}

#[test]
fn wfdb_signal_files_must_be_plain_files_beside_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // A real signal file one folder up and one in a sub-folder: reachable only by a path.
    write(
        dir.path(),
        "x.dat",
        std::fs::read(fixture("wfdb/rec16.dat")).unwrap(),
    );
    std::fs::create_dir(data.join("sub")).unwrap();
    write(
        &data.join("sub"),
        "x.dat",
        std::fs::read(fixture("wfdb/rec16.dat")).unwrap(),
    );
    for (i, file) in [
        "/dev/zero",
        "/etc/passwd",
        "../x.dat",
        "..",
        ".",
        "sub/x.dat",
        "sub\\x.dat",
    ]
    .iter()
    .enumerate()
    {
        let p = write(
            &data,
            &format!("path{i}.hea"),
            header_with(file, "500", "1000"),
        );
        format_error(wfdb::read_record(&p), &p, "must be a bare file name");
        format_error(ecg::read_any(&p, 500.0), &p, "bare file name");
    }
    // A bare name that is a device (through a link) or a folder is refused from its metadata.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", data.join("zero.dat")).unwrap();
        let p = write(&data, "zero.hea", header_with("zero.dat", "500", "1000"));
        let msg = format_error(wfdb::read_record(&p), &p, "not a regular file");
        assert!(msg.contains("zero.dat"), "{msg}");
        // Without a sample count the reader would otherwise read the device to its end.
        let p = write(&data, "zero_open.hea", header_with("zero.dat", "500", ""));
        format_error(wfdb::read_record(&p), &p, "not a regular file");
    }
    let p = write(&data, "dir.hea", header_with("sub", "500", "1000"));
    format_error(wfdb::read_record(&p), &p, "not a regular file");
}

#[test]
fn wfdb_declared_sizes_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tiny.dat", [0u8; 48]);
    // Absurd sample counts are refused from the header alone.
    for samples in ["1000000000000", "18446744073709551615"] {
        let p = write(
            dir.path(),
            "absurd.hea",
            header_with("tiny.dat", "500", samples),
        );
        format_error(wfdb::read_record(&p), &p, "more than the limit");
    }
    let p = write(
        dir.path(),
        "overflow.hea",
        header_with("tiny.dat", "500", "99999999999999999999999"),
    );
    format_error(wfdb::read_record(&p), &p, "not a number");
    // At the limit, 12 signals × 2 bytes would be ~100 MB (above this binary's 64 MiB cap):
    // checked against the file's size, never allocated.
    let p = write(
        dir.path(),
        "huge.hea",
        header_with("tiny.dat", "500", &MAX_SAMPLES_PER_LEAD.to_string()),
    );
    let msg = format_error(wfdb::read_record(&p), &p, "truncated");
    assert!(
        msg.contains("tiny.dat") && msg.contains("holds 48"),
        "{msg}"
    );
    // A byte offset past the end (or overflowing with the length) is truncation too.
    let hea = header_with("tiny.dat", "500", "2").replace(" 16 ", " 16+18446744073709551615 ");
    let p = write(dir.path(), "offset.hea", hea);
    format_error(wfdb::read_record(&p), &p, "truncated");
    // Format 212 sizes are computed exactly: 12 × 3 samples take 54 bytes, not 48.
    let hea = header_with("tiny.dat", "500", "3").replace(" 16 1000.0", " 212 1000.0");
    let p = write(dir.path(), "f212.hea", hea);
    format_error(wfdb::read_record(&p), &p, "needs 54 bytes");
    let hea = header_with("tiny.dat", "500", "2").replace(" 16 1000.0", " 212 1000.0");
    let p = write(dir.path(), "f212_ok.hea", hea);
    assert_eq!(wfdb::read_record(&p).unwrap().ecg.samples(), 2);
    // So are absurd signal counts.
    let p = write(dir.path(), "many.hea", "rec 1000000000 500 10\n");
    format_error(
        wfdb::read_record(&p),
        &p,
        &format!("limit of {}", wfdb::MAX_SIGNALS),
    );
    // An oversized header is refused before it is read.
    let mut big = header_with("tiny.dat", "500", "2");
    big.push_str(&"# padding\n".repeat(120_000));
    let p = write(dir.path(), "big.hea", big);
    format_error(wfdb::read_record(&p), &p, "larger than the limit");
}

#[test]
fn wfdb_with_an_implausible_rate_is_refused_before_reading_signals() {
    let dir = tempfile::tempdir().unwrap();
    // No signal file exists: the rate must be refused first, naming the header.
    for rate in ["0.005", "0.005/1000", "1e12"] {
        let p = write(
            dir.path(),
            "slow.hea",
            header_with("absent.dat", rate, "1000"),
        );
        format_error(wfdb::read_record(&p), &p, "outside the plausible ECG range");
    }
}

#[test]
fn resampling_to_extreme_ratios_is_refused() {
    let ecg = Ecg::new(vec![0.5; 12 * 1000], 1000, 500.0).unwrap();
    for rate in [0.005, 1e9, f64::NAN, f64::INFINITY, -500.0, 0.0] {
        let err = resample(&ecg, rate).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("plausible ECG range"), "{err}");
        let cfg = PreprocessConfig {
            sample_rate: rate,
            ..PreprocessConfig::default()
        };
        assert!(mmcl_data::ecg::preprocess::preprocess(&ecg, &cfg).is_err());
    }
    assert!(Ecg::new(vec![0.5; 12], 1, 0.005).is_err());
    assert!(Ecg::new(vec![0.5; 12], 1, 2e4 + 1.0).is_err());
    // Within the rate range but 400× longer than the input: refused before allocating
    // 12 × 20 M f32 (~1 GB, far above this binary's cap).
    let long = Ecg::new(vec![0.0; 12 * 50_000], 50_000, 50.0).unwrap();
    let err = resample(&long, 20_000.0).unwrap_err();
    assert!(err.to_string().contains("more than the limit"), "{err}");
    // A plain change of rate still works.
    assert_eq!(resample(&ecg, 250.0).unwrap().samples(), 500);
}

#[test]
fn npy_with_an_implausible_rate_names_the_file() {
    let (_dir, p) = write_temp(
        "arr.npy",
        mmcl_core::npy::npy_f32_bytes(&[12, 10], &[0.25; 120]),
    );
    format_error(ecg::read_any(&p, 0.005), &p, "plausible ECG range");
}

#[test]
fn a_hostile_file_in_a_directory_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(fixture("xml/1000001_20205_2_0.xml"), input.join("good.xml")).unwrap();
    let bad = write(&input, "slow.xml", xml_with_rate("0.005"));
    let output = dir.path().join("out");
    let err = preprocess_directory(
        &input,
        &output,
        &PreprocessConfig::default(),
        500.0,
        false,
        &|_, _| {},
    )
    .unwrap_err();
    assert_eq!(err.path(), Some(bad.as_path()), "{err}");
    assert!(!output.exists(), "a failed run must leave no output");
}
