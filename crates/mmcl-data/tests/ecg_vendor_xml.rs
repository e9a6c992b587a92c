//! GE MUSE XML and HL7 aECG, as hospitals hand them out (issue 18), tested against independent
//! writers.
//!
//! Two writers produce the files read here:
//! - `fixtures/make_vendor_xml_fixtures.py` (Python's `xml.etree`, `base64`, `struct`) wrote
//!   `fixtures/vendor_xml/*.xml`; its docstring lists the schema elements used.
//! - the builders below ([`muse`], [`hl7`]) write small documents by string formatting and the
//!   `base64` crate, with one thing changed at a time for the hostile cases. MUSE elements used:
//!   `RestingECG/Waveform/{WaveformType, SampleBase, SampleExponent, LeadData}` and
//!   `LeadData/{LeadByteCountTotal, LeadSampleCountTotal, LeadAmplitudeUnitsPerBit,
//!   LeadAmplitudeUnits, LeadID, LeadSampleSize, WaveFormData}`. HL7 elements used:
//!   `AnnotatedECG/component/series/component/sequenceSet/component/sequence/{code, value}` with
//!   `value/{head, increment}` (time) and `value/{origin, scale, digits}` (leads).
//!
//! Both write the same synthetic signal, recomputed here by [`source_uv`]. Every hostile file
//! must give an error naming it, found before anything large is allocated: the test binary
//! runs under a 64 MiB cap on live heap memory.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{assert_names_file, fixture, format_error, write, write_temp};
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::ecg::hl7::read_hl7_aecg;
use mmcl_data::ecg::muse::read_muse_xml;
use mmcl_data::ecg::xml::{MAX_XML_DEPTH, read_cardiosoft_xml};
use mmcl_data::ecg::{self, Ecg, EcgFormat, LEADS};

#[global_allocator]
static ALLOC: mmcl_testutil::alloc::CappedAllocator =
    mmcl_testutil::alloc::CappedAllocator::new(64 << 20);

const FS: f64 = 500.0;
const N: usize = 250;
/// MUSE resolution of the fixtures, µV per bit.
const MUSE_UV: f64 = 4.88;
/// HL7 scale of the fixtures, µV per digit.
const HL7_UV: f64 = 2.5;

/// The synthetic signal of the fixture generator, in µV, for canonical lead `lead`:
/// acquired lead j (I, II, V1–V6 = 0..7) is `(300 + 100 j) sin(2π (1 + 0.5 j) t + 0.3 j)`, and
/// the limb leads follow from I and II (Einthoven, Goldberger).
fn source_uv(lead: usize, n: usize, scale: f64) -> f64 {
    let acquired = |j: usize| {
        let j = j as f64;
        let t = n as f64 / FS;
        scale
            * (300.0 + 100.0 * j)
            * (2.0 * std::f64::consts::PI * (1.0 + 0.5 * j) * t + 0.3 * j).sin()
    };
    let (i, ii) = (acquired(0), acquired(1));
    match lead {
        0 => i,
        1 => ii,
        2 => ii - i,
        3 => -(i + ii) / 2.0,
        4 => i - ii / 2.0,
        5 => ii - i / 2.0,
        v => acquired(v - 4),
    }
}

/// Asserts that `ecg` is the source signal (times `scale`) in mV, to the writer's rounding:
/// half a step for stored leads, one step for limb leads derived from two rounded leads.
fn assert_is_source(ecg: &Ecg, samples: usize, scale: f64, step_uv: f64, derived: bool) {
    assert_eq!(ecg.samples(), samples);
    assert_eq!(ecg.sample_rate(), FS);
    for (lead, name) in LEADS.iter().enumerate() {
        let limit_uv = if derived && (2..6).contains(&lead) {
            step_uv
        } else {
            step_uv / 2.0
        };
        for (n, &got) in ecg.lead(lead).iter().enumerate() {
            let want = source_uv(lead, n, scale) / 1000.0;
            let diff = (got as f64 - want).abs();
            assert!(
                diff <= limit_uv / 1000.0 + 1e-5,
                "lead {name}, sample {n}: read {got} mV, source {want} mV"
            );
        }
    }
}

#[test]
fn muse_files_read_as_the_source_signal() {
    for (file, derived) in [("muse_8lead.xml", true), ("muse_12lead.xml", false)] {
        let path = fixture(&format!("vendor_xml/{file}"));
        let rec = read_muse_xml(&path).unwrap();
        assert_is_source(&rec.rhythm, N, 1.0, MUSE_UV, derived);
        // The fixture generator writes <VentricularRate>71</VentricularRate>.
        assert_eq!(rec.heart_rate(), Some(71.0));
        assert_eq!(rec.measurement("ventricularrate"), Some(71.0));
        let median = rec.median_beats.expect("the median waveform");
        assert_is_source(&median, 60, 0.5, MUSE_UV, derived);
        assert_eq!(EcgFormat::detect(&path).unwrap(), EcgFormat::MuseXml);
        let any = ecg::read_any(&path, 500.0).unwrap();
        assert_eq!(any.len(), 1);
        assert_eq!(any[0].ecg, rec.rhythm);
        assert_eq!(any[0].id, file.trim_end_matches(".xml"));
    }
}

#[test]
fn hl7_files_read_as_the_source_signal() {
    // The 12-lead file uses TIME_ABSOLUTE in s and µV and has median beats and a second series
    // (neither read); the 8-lead file uses TIME_RELATIVE in ms and mV.
    for (file, derived) in [("hl7_12lead.xml", false), ("hl7_8lead.xml", true)] {
        let path = fixture(&format!("vendor_xml/{file}"));
        let rec = read_hl7_aecg(&path).unwrap();
        assert_is_source(&rec, N, 1.0, HL7_UV, derived);
        assert_eq!(EcgFormat::detect(&path).unwrap(), EcgFormat::Hl7Aecg);
        assert_eq!(ecg::read_any(&path, 500.0).unwrap()[0].ecg, rec);
    }
    let cardiosoft = fixture("xml/1000001_20205_2_0.xml");
    assert_eq!(
        EcgFormat::detect(&cardiosoft).unwrap(),
        EcgFormat::CardioSoftXml
    );
}

#[test]
fn muse_variants_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(fixture("vendor_xml/muse_8lead.xml")).unwrap();
    let text: String = text.iter().map(|&b| b as char).collect(); // Latin-1
    let reference = read_muse_xml(&fixture("vendor_xml/muse_8lead.xml")).unwrap();
    let latin1 = |s: &str| s.chars().map(|c| c as u8).collect::<Vec<u8>>();
    // The same resolution in millivolts.
    let mv = text.replace(
        "<LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit><LeadAmplitudeUnits>MICROVOLTS",
        "<LeadAmplitudeUnitsPerBit>0.00488</LeadAmplitudeUnitsPerBit><LeadAmplitudeUnits>MILLIVOLTS",
    );
    assert_ne!(mv, text);
    let p = write(dir.path(), "mv.xml", latin1(&mv));
    let rec = read_muse_xml(&p).unwrap();
    assert_is_source(&rec.rhythm, N, 1.0, MUSE_UV, true);
    // Carriage returns, tabs and spaces inside the base64 payload.
    let spaced = text.replace('\n', "\r\n\t  ");
    let p = write(dir.path(), "spaced.xml", latin1(&spaced));
    assert_eq!(read_muse_xml(&p).unwrap(), reference);
    // The rate as base and exponent.
    let exp = text
        .replace("<SampleBase>500</SampleBase>", "<SampleBase>5</SampleBase>")
        .replace("<SampleExponent>0</", "<SampleExponent>2</");
    let p = write(dir.path(), "exp.xml", latin1(&exp));
    assert_eq!(read_muse_xml(&p).unwrap(), reference);
    // A heart rate that is no number, or no plausible rate, is no heart rate (and no error).
    let rate = "<VentricularRate>71</VentricularRate>";
    assert!(text.contains(rate));
    for (value, measured, heart_rate) in [
        ("62", Some(62.0), Some(62.0)),
        (" 62.5 ", Some(62.5), Some(62.5)),
        ("n/a", None, None),
        ("", None, None),
        ("0", Some(0.0), None),
        ("999", Some(999.0), None),
        ("NaN", None, None),
    ] {
        let changed = text.replace(rate, &format!("<VentricularRate>{value}</VentricularRate>"));
        let p = write(dir.path(), "rate.xml", latin1(&changed));
        let rec = read_muse_xml(&p).unwrap();
        assert_eq!(rec.measurement("VentricularRate"), measured, "{value:?}");
        assert_eq!(rec.heart_rate(), heart_rate, "{value:?}");
        assert_eq!(rec.rhythm, reference.rhythm);
    }
    // Without the measurements there is no heart rate.
    let bare = text.replace(rate, "");
    let p = write(dir.path(), "no_rate.xml", latin1(&bare));
    let rec = read_muse_xml(&p).unwrap();
    assert!(rec.measurements.is_empty());
    assert_eq!(rec.heart_rate(), None);
}

/// Every XML fixture (two MUSE, two HL7, the CardioSoft file) and its format.
fn xml_fixtures() -> [(PathBuf, EcgFormat); 5] {
    [
        (fixture("vendor_xml/muse_8lead.xml"), EcgFormat::MuseXml),
        (fixture("vendor_xml/muse_12lead.xml"), EcgFormat::MuseXml),
        (fixture("vendor_xml/hl7_12lead.xml"), EcgFormat::Hl7Aecg),
        (fixture("vendor_xml/hl7_8lead.xml"), EcgFormat::Hl7Aecg),
        (
            fixture("xml/1000001_20205_2_0.xml"),
            EcgFormat::CardioSoftXml,
        ),
    ]
}

/// The characters of a fixture: ISO-8859-1 or ASCII (the HL7 files' UTF-8 is ASCII), so
/// each byte is the code point of its value.
fn fixture_text(path: &Path) -> String {
    std::fs::read(path)
        .unwrap()
        .iter()
        .map(|&b| b as char)
        .collect()
}

/// UTF-16 code units as little- or big-endian bytes, after a byte-order mark when `bom`.
fn utf16_bytes(units: &[u16], big_endian: bool, bom: bool) -> Vec<u8> {
    let order = |u: u16| {
        if big_endian {
            u.to_be_bytes()
        } else {
            u.to_le_bytes()
        }
    };
    let mark = bom.then_some(0xFEFF).into_iter();
    mark.chain(units.iter().copied()).flat_map(order).collect()
}

/// `text` as hospitals' exports and Windows tools write it: UTF-16 little- and big-endian with
/// a byte-order mark and without one (XML 1.0 Appendix F), and UTF-8 with a mark.
fn reencoded(text: &str) -> Vec<(&'static str, Vec<u8>)> {
    let units: Vec<u16> = text.encode_utf16().collect();
    vec![
        ("utf16le", utf16_bytes(&units, false, true)),
        ("utf16be", utf16_bytes(&units, true, true)),
        ("utf16le_nobom", utf16_bytes(&units, false, false)),
        ("utf16be_nobom", utf16_bytes(&units, true, false)),
        (
            "utf8bom",
            [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
        ),
    ]
}

/// Asserts that `p` reads exactly as `original` does, with the reader of `format`, through
/// `read_any`, and that `EcgFormat::detect` finds `format`.
fn assert_reads_the_same(p: &Path, original: &Path, format: EcgFormat) {
    let what = p.display();
    assert_eq!(EcgFormat::detect(p).unwrap(), format, "{what}");
    match format {
        EcgFormat::MuseXml => {
            assert_eq!(
                read_muse_xml(p).unwrap(),
                read_muse_xml(original).unwrap(),
                "{what}"
            )
        }
        EcgFormat::Hl7Aecg => {
            assert_eq!(
                read_hl7_aecg(p).unwrap(),
                read_hl7_aecg(original).unwrap(),
                "{what}"
            )
        }
        _ => assert_eq!(
            read_cardiosoft_xml(p).unwrap(),
            read_cardiosoft_xml(original).unwrap(),
            "{what}"
        ),
    }
    let ecg = |p: &Path| ecg::read_any(p, 500.0).unwrap().remove(0).ecg;
    assert_eq!(ecg(p), ecg(original), "{what}");
}

#[test]
fn utf16_and_utf8_with_a_mark_read_as_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    for (original, format) in xml_fixtures() {
        let text = fixture_text(&original);
        let stem = original.file_stem().unwrap().to_str().unwrap();
        let declaration = text.lines().next().unwrap();
        assert!(declaration.contains("encoding="), "{declaration}");
        // As re-saved by a tool that kept the old declaration (the mark wins over it, as XML
        // 1.0 Appendix F has it), and with the declaration matching.
        let utf16 = declaration
            .replace("ISO-8859-1", "UTF-16")
            .replace("UTF-8", "UTF-16");
        let declared = text.replacen(declaration, &utf16, 1);
        for (variant, text) in [("kept", &text), ("declared", &declared)] {
            for (encoding, bytes) in reencoded(text) {
                let name = format!("{stem}_{variant}_{encoding}.xml");
                let p = write(dir.path(), &name, bytes);
                assert_reads_the_same(&p, &original, format);
            }
        }
        // A UTF-16 declaration on 8-bit text (as .NET writes it) reads as UTF-8.
        let p = write(
            dir.path(),
            &format!("{stem}_dotnet.xml"),
            declared.as_bytes(),
        );
        assert_reads_the_same(&p, &original, format);
    }
}

#[test]
fn malformed_utf16_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (original, format) in xml_fixtures() {
        let stem = original.file_stem().unwrap().to_str().unwrap();
        let units: Vec<u16> = fixture_text(&original).encode_utf16().collect();
        let read = |p: &Path| -> mmcl_data::Result<()> {
            match format {
                EcgFormat::MuseXml => read_muse_xml(p).map(|_| ()),
                EcgFormat::Hl7Aecg => read_hl7_aecg(p).map(|_| ()),
                _ => read_cardiosoft_xml(p).map(|_| ()),
            }
        };
        // An unpaired surrogate in the first line break (a high one alone, a low one alone).
        let line_break = units.iter().position(|&u| u == u16::from(b'\n')).unwrap();
        for (big_endian, surrogate) in [(false, 0xD800), (true, 0xDC00)] {
            let mut bad = units.clone();
            bad.insert(line_break, surrogate);
            let name = format!("{stem}_surrogate_{big_endian}.xml");
            let p = write(d, &name, utf16_bytes(&bad, big_endian, true));
            for msg in [
                format_error(read(&p), &p),
                format_error(ecg::read_any(&p, 500.0), &p),
            ] {
                assert!(msg.contains("unpaired surrogate"), "{msg}");
                assert!(
                    msg.contains(&format!("byte {}", 2 + 2 * line_break)),
                    "{msg}"
                );
            }
            // Finding the root needs only the head, read leniently.
            assert_eq!(EcgFormat::detect(&p).unwrap(), format);
        }
        // An odd number of bytes: a file cut in the middle of a character.
        for big_endian in [false, true] {
            let mut bytes = utf16_bytes(&units, big_endian, true);
            bytes.push(b'\n');
            let p = write(d, &format!("{stem}_odd_{big_endian}.xml"), bytes);
            for msg in [
                format_error(read(&p), &p),
                format_error(ecg::read_any(&p, 500.0), &p),
            ] {
                assert!(msg.contains("odd number of bytes"), "{msg}");
            }
        }
    }
    // A UTF-8 mark before bytes that are not UTF-8 (Latin-1 text given a mark it cannot have).
    let latin1 = std::fs::read(fixture("vendor_xml/muse_8lead.xml")).unwrap();
    let p = write(
        d,
        "marked_latin1.xml",
        [&[0xEF, 0xBB, 0xBF][..], &latin1].concat(),
    );
    let msg = format_error(read_muse_xml(&p), &p);
    assert!(
        msg.contains("UTF-8 byte-order mark") && msg.contains("ISO-8859-1"),
        "{msg}"
    );
    // Blank UTF-16 is an empty file.
    let blank = utf16_bytes(&" \r\n".encode_utf16().collect::<Vec<_>>(), false, true);
    let p = write(d, "blank16.xml", blank);
    assert!(format_error(read_muse_xml(&p), &p).contains("empty"));
    assert!(format_error(EcgFormat::detect(&p), &p).contains("empty"));
}

/// One lead of a MUSE document written by [`muse`].
#[derive(Clone)]
struct MuseLead {
    id: String,
    count: String,
    per_bit: String,
    units: String,
    data: String,
}

/// Lead `lead` (canonical index) of the source signal as MUSE writes it, `n` samples.
fn muse_lead(lead: usize, n: usize) -> MuseLead {
    let bytes: Vec<u8> = (0..n)
        .flat_map(|t| ((source_uv(lead, t, 1.0) / MUSE_UV).round() as i16).to_le_bytes())
        .collect();
    MuseLead {
        id: LEADS[lead].to_string(),
        count: n.to_string(),
        per_bit: "4.88".into(),
        units: "MICROVOLTS".into(),
        data: STANDARD.encode(bytes),
    }
}

/// The eight acquired leads (I, II, V1–V6) of the source signal, `n` samples.
fn muse_leads(n: usize) -> Vec<MuseLead> {
    [0, 1, 6, 7, 8, 9, 10, 11].map(|l| muse_lead(l, n)).to_vec()
}

/// A MUSE document with one waveform of type `kind` at `rate` Hz.
fn muse(kind: &str, rate: &str, leads: &[MuseLead]) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<RestingECG>\n<Waveform>\n\
         <WaveformType>{kind}</WaveformType>\n<SampleBase>{rate}</SampleBase>\n"
    );
    for l in leads {
        s.push_str(&format!(
            "<LeadData><LeadSampleCountTotal>{}</LeadSampleCountTotal>\
             <LeadAmplitudeUnitsPerBit>{}</LeadAmplitudeUnitsPerBit>\
             <LeadAmplitudeUnits>{}</LeadAmplitudeUnits><LeadID>{}</LeadID>\
             <WaveFormData>{}</WaveFormData></LeadData>\n",
            l.count, l.per_bit, l.units, l.id, l.data
        ));
    }
    s.push_str("</Waveform>\n</RestingECG>\n");
    s
}

#[test]
fn the_muse_builder_writes_what_the_reader_reads() {
    let (_dir, p) = write_temp("built.xml", muse("Rhythm", "500", &muse_leads(N)));
    let rec = read_muse_xml(&p).unwrap();
    assert_is_source(&rec.rhythm, N, 1.0, MUSE_UV, true);
    assert!(rec.median_beats.is_none());
}

/// Writes `text` as `name` and asserts that reading it (by `read`, one vendor's reader, and by
/// `read_any`) fails with a format error naming the file and containing `needle`.
fn refused<T: std::fmt::Debug>(
    read: fn(&Path) -> mmcl_data::Result<T>,
    dir: &Path,
    name: &str,
    text: impl AsRef<[u8]>,
    needle: &str,
) {
    let p = write(dir, name, text);
    let msg = format_error(read(&p), &p);
    assert!(
        msg.contains(needle),
        "{name}: expected {needle:?} in: {msg}"
    );
    let msg = format_error(ecg::read_any(&p, 500.0), &p);
    assert!(
        msg.contains(needle),
        "{name} (read_any): expected {needle:?} in: {msg}"
    );
}

/// Asserts that the fixture `fixture`, cut after `first_cut` bytes and at three later places,
/// gives (by `read` and by `read_any`) an error naming the file: malformed XML or an unclosed
/// element.
fn truncations_name_the_file<T: std::fmt::Debug>(
    read: fn(&Path) -> mmcl_data::Result<T>,
    dir: &Path,
    fixture_name: &str,
    first_cut: usize,
) {
    let full = std::fs::read(fixture(fixture_name)).unwrap();
    for cut in [first_cut, full.len() / 3, full.len() / 2, full.len() - 20] {
        let p = write(dir, &format!("cut_{cut}.xml"), &full[..cut]);
        let msg = read(&p).unwrap_err().to_string();
        assert_names_file(&msg, &p);
        let msg = ecg::read_any(&p, 500.0).unwrap_err().to_string();
        assert_names_file(&msg, &p);
    }
}

/// [`refused`] by the MUSE reader.
fn muse_refused(dir: &Path, name: &str, text: impl AsRef<[u8]>, needle: &str) {
    refused(read_muse_xml, dir, name, text, needle);
}

#[test]
fn hostile_muse_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let with = |f: &dyn Fn(&mut Vec<MuseLead>)| {
        let mut leads = muse_leads(N);
        f(&mut leads);
        muse("Rhythm", "500", &leads)
    };
    let wrong_count = with(&|l| l[2].count = "249".into());
    muse_refused(
        d,
        "wrong_count.xml",
        wrong_count,
        "<LeadSampleCountTotal> is 249",
    );
    // Declared far beyond the limit: refused before anything is decoded or allocated.
    let huge = with(&|l| l[0].count = "4000000000".into());
    muse_refused(d, "huge_count.xml", huge, "more than the limit");
    let odd = with(&|l| l[3].data = STANDARD.encode([1u8, 2, 3]));
    muse_refused(d, "odd.xml", odd, "odd number");
    let bad = with(&|l| l[1].data.replace_range(8..9, "*"));
    muse_refused(d, "bad_base64.xml", bad, "not valid base64");
    let short = with(&|l| {
        let n = l[1].data.len();
        l[1].data.truncate(n - 3);
    });
    muse_refused(d, "short_base64.xml", short, "lead II");
    let missing = with(&|l| {
        l.remove(4);
    });
    muse_refused(d, "missing.xml", missing, "missing lead(s) V3");
    let twice = with(&|l| l[4].id = "V4".into());
    muse_refused(d, "twice.xml", twice, "lead V4 appears twice");
    let unequal = with(&|l| l[7] = muse_lead(11, N - 10));
    muse_refused(d, "unequal.xml", unequal, "lead V6 has 240 samples");
    let units = with(&|l| l[5].units = "NANOVOLTS".into());
    muse_refused(
        d,
        "units.xml",
        units,
        "unknown <LeadAmplitudeUnits> \"NANOVOLTS\"",
    );
    for (k, scale) in ["NaN", "inf", "0", "-4.88", "1e300", "x"]
        .iter()
        .enumerate()
    {
        let bad_scale = with(&|l| l[0].per_bit = scale.to_string());
        muse_refused(
            d,
            &format!("scale_{k}.xml"),
            bad_scale,
            "LeadAmplitudeUnitsPerBit",
        );
    }
    let slow = muse("Rhythm", "0.005", &muse_leads(N));
    muse_refused(d, "slow.xml", slow, "outside the plausible ECG range");
    let median_only = muse("Median", "500", &muse_leads(N));
    muse_refused(d, "median_only.xml", median_only, "Rhythm");
    let other_kind = muse("Beats", "500", &muse_leads(N));
    muse_refused(d, "kind.xml", other_kind, "unknown <WaveformType>");
    let no_id = muse("Rhythm", "500", &muse_leads(N)).replacen("<LeadID>I</LeadID>", "", 1);
    muse_refused(d, "no_id.xml", no_id, "no <LeadID>");
    let wide = muse("Rhythm", "500", &muse_leads(N)).replacen(
        "<LeadData>",
        "<LeadData><LeadSampleSize>4</LeadSampleSize>",
        1,
    );
    muse_refused(d, "wide.xml", wide, "LeadSampleSize");
    let bytes = muse("Rhythm", "500", &muse_leads(N)).replacen(
        "<LeadData>",
        "<LeadData><LeadByteCountTotal>7</LeadByteCountTotal>",
        1,
    );
    muse_refused(d, "byte_count.xml", bytes, "<LeadByteCountTotal> is 7");
    let one = muse("Rhythm", "500", &muse_leads(N));
    let block = one
        .find("<Waveform>")
        .and_then(|start| Some(&one[start..one.find("</RestingECG>")?]))
        .unwrap();
    let two = one.replace("</RestingECG>", &format!("{block}</RestingECG>"));
    muse_refused(d, "two_rhythms.xml", two, "more than one Rhythm");
    muse_refused(d, "empty.xml", "  \n", "empty");
    let deep = format!(
        "<RestingECG>{}{}</RestingECG>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    muse_refused(
        d,
        "deep.xml",
        deep,
        &format!("nested deeper than {MAX_XML_DEPTH} levels"),
    );
    truncations_name_the_file(read_muse_xml, d, "vendor_xml/muse_8lead.xml", 200);
}

/// One lead sequence of an HL7 document written by [`hl7`].
#[derive(Clone)]
struct Hl7Lead {
    code: String,
    value_type: String,
    origin: (String, String),
    scale: (String, String),
    digits: String,
}

/// Lead `lead` (canonical index) of the source signal as an SLIST_PQ in µV, `n` samples.
fn hl7_lead(lead: usize, n: usize) -> Hl7Lead {
    let digits: Vec<String> = (0..n)
        .map(|t| ((source_uv(lead, t, 1.0) / HL7_UV).round() as i64).to_string())
        .collect();
    Hl7Lead {
        code: format!("MDC_ECG_LEAD_{}", LEADS[lead].to_ascii_uppercase()),
        value_type: "SLIST_PQ".into(),
        origin: ("0".into(), "uV".into()),
        scale: ("2.5".into(), "uV".into()),
        digits: digits.join(" "),
    }
}

/// All 12 leads of the source signal, `n` samples.
fn hl7_leads(n: usize) -> Vec<Hl7Lead> {
    (0..12).map(|l| hl7_lead(l, n)).collect()
}

/// An HL7 aECG document whose time sequence has the `increment` (value, unit), or none.
fn hl7(increment: Option<(&str, &str)>, leads: &[Hl7Lead]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<AnnotatedECG xmlns=\"urn:hl7-org:v3\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n<component><series>\
         <code code=\"RHYTHM\"/>\n<component><sequenceSet>\n",
    );
    if let Some((value, unit)) = increment {
        s.push_str(&format!(
            "<component><sequence><code code=\"TIME_RELATIVE\"/><value xsi:type=\"GLIST_PQ\">\
             <head value=\"0\" unit=\"{unit}\"/><increment value=\"{value}\" unit=\"{unit}\"/>\
             </value></sequence></component>\n"
        ));
    }
    for l in leads {
        s.push_str(&format!(
            "<component><sequence><code code=\"{}\" codeSystem=\"2.16.840.1.113883.6.24\"/>\
             <value xsi:type=\"{}\"><origin value=\"{}\" unit=\"{}\"/>\
             <scale value=\"{}\" unit=\"{}\"/><digits>{}</digits></value></sequence>\
             </component>\n",
            l.code, l.value_type, l.origin.0, l.origin.1, l.scale.0, l.scale.1, l.digits
        ));
    }
    s.push_str("</sequenceSet></component>\n</series></component>\n</AnnotatedECG>\n");
    s
}

#[test]
fn the_hl7_builder_writes_what_the_reader_reads() {
    let (dir, p) = write_temp("built.xml", hl7(Some(("0.002", "s")), &hl7_leads(N)));
    assert_is_source(&read_hl7_aecg(&p).unwrap(), N, 1.0, HL7_UV, false);
    // Only I, II and V1–V6, in ms, with a prefixed namespace and an origin in mV.
    let mut eight: Vec<Hl7Lead> = [0, 1, 6, 7, 8, 9, 10, 11].map(|l| hl7_lead(l, N)).to_vec();
    eight[3].origin = ("0".into(), "mV".into());
    let text = hl7(Some(("2", "ms")), &eight)
        .replace("<AnnotatedECG xmlns=", "<v3:AnnotatedECG xmlns:v3=")
        .replace("</AnnotatedECG>", "</v3:AnnotatedECG>");
    let p = write(dir.path(), "eight.xml", text);
    assert_eq!(EcgFormat::detect(&p).unwrap(), EcgFormat::Hl7Aecg);
    assert_is_source(&read_hl7_aecg(&p).unwrap(), N, 1.0, HL7_UV, true);
}

/// [`refused`] by the HL7 reader.
fn hl7_refused(dir: &Path, name: &str, text: impl AsRef<[u8]>, needle: &str) {
    refused(read_hl7_aecg, dir, name, text, needle);
}

#[test]
fn hostile_hl7_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ms = Some(("2", "ms"));
    let with = |f: &dyn Fn(&mut Vec<Hl7Lead>)| {
        let mut leads = hl7_leads(N);
        f(&mut leads);
        hl7(ms, &leads)
    };
    let unequal = with(&|l| l[9] = hl7_lead(9, N - 1));
    hl7_refused(d, "unequal.xml", unequal, "lead V4 has 249 samples");
    let fraction = with(&|l| l[2].digits.push_str(" 1.5"));
    hl7_refused(d, "fraction.xml", fraction, "not an integer: \"1.5\"");
    let kv = with(&|l| l[0].scale.1 = "kV".into());
    hl7_refused(d, "kv.xml", kv, "unknown <scale> unit");
    for (k, scale) in ["0", "NaN", "-2.5", "1e9", "inf"].iter().enumerate() {
        let bad = with(&|l| l[4].scale.0 = scale.to_string());
        hl7_refused(d, &format!("scale_{k}.xml"), bad, "<scale>");
    }
    let origin = with(&|l| l[5].origin.0 = "1e12".into());
    hl7_refused(d, "origin.xml", origin, "<origin>");
    let ints = with(&|l| l[6].value_type = "SLIST_INT".into());
    hl7_refused(d, "ints.xml", ints, "SLIST_INT");
    let missing = with(&|l| {
        l.remove(8);
    });
    hl7_refused(d, "missing.xml", missing, "missing lead(s) V3");
    let some_limb = with(&|l| {
        l.remove(3);
    });
    hl7_refused(d, "some_limb.xml", some_limb, "missing lead(s) aVR");
    let twice = with(&|l| l[8].code = "MDC_ECG_LEAD_V2".into());
    hl7_refused(d, "twice.xml", twice, "lead V2 appears twice");
    hl7_refused(
        d,
        "no_time.xml",
        hl7(None, &hl7_leads(N)),
        "TIME_ABSOLUTE or TIME_RELATIVE",
    );
    for (k, inc) in [("0", "ms"), ("-2", "ms"), ("x", "s"), ("2", "min")]
        .iter()
        .enumerate()
    {
        let bad = hl7(Some(*inc), &hl7_leads(N));
        hl7_refused(d, &format!("increment_{k}.xml"), bad, "<increment>");
    }
    let slow = hl7(Some(("1", "s")), &hl7_leads(N));
    hl7_refused(d, "slow.xml", slow, "outside the plausible ECG range");
    let no_series = "<AnnotatedECG xmlns=\"urn:hl7-org:v3\"><id root=\"1\"/></AnnotatedECG>";
    hl7_refused(d, "no_series.xml", no_series, "no component/series");
    let deep = format!(
        "<AnnotatedECG>{}{}</AnnotatedECG>",
        "<component>".repeat(10_000),
        "</component>".repeat(10_000)
    );
    hl7_refused(
        d,
        "deep.xml",
        deep,
        &format!("nested deeper than {MAX_XML_DEPTH} levels"),
    );
    hl7_refused(
        d,
        "entity.xml",
        with(&|l| l[0].digits.push_str(" &bogus;")),
        "bogus",
    );
    truncations_name_the_file(read_hl7_aecg, d, "vendor_xml/hl7_12lead.xml", 100);
}

#[test]
fn xml_files_are_told_apart_by_their_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unknown = write(d, "unknown.xml", "<?xml version=\"1.0\"?>\n<SierraECG/>\n");
    for result in [
        EcgFormat::detect(&unknown).map(|_| ()),
        ecg::read_any(&unknown, 500.0).map(|_| ()),
    ] {
        let msg = format_error(result, &unknown);
        assert!(msg.contains("root element is <SierraECG>"), "{msg}");
        assert!(
            msg.contains("<RestingECG>") && msg.contains("<AnnotatedECG>"),
            "{msg}"
        );
    }
    // Each reader refuses the others' files.
    let muse_file = fixture("vendor_xml/muse_8lead.xml");
    let hl7_file = fixture("vendor_xml/hl7_8lead.xml");
    let msg = format_error(read_hl7_aecg(&muse_file), &muse_file);
    assert!(msg.contains("expected <AnnotatedECG>"), "{msg}");
    let msg = format_error(read_muse_xml(&hl7_file), &hl7_file);
    assert!(msg.contains("expected <RestingECG>"), "{msg}");
    let empty = write(d, "empty.xml", "");
    assert!(format_error(ecg::read_any(&empty, 500.0), &empty).contains("empty"));
    let missing = d.join("absent.xml");
    let msg = ecg::read_any(&missing, 500.0).unwrap_err().to_string();
    assert_names_file(&msg, &missing);
    // A root beyond a long prolog is not searched for without bound.
    let long = format!(
        "<?xml version=\"1.0\"?><!--{}--><RestingECG/>",
        "x".repeat(40_000)
    );
    let long = write(d, "long_prolog.xml", long);
    let msg = format_error(EcgFormat::detect(&long), &long);
    assert!(msg.contains("no XML root element within"), "{msg}");
}

/// A folder of four subjects, each with an ECG from a different vendor (three XML dialects and
/// a DICOM waveform), builds a cache.
#[test]
fn build_dataset_takes_xml_from_every_vendor() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ecg_dir = root.join("ecg");
    std::fs::create_dir_all(&ecg_dir).unwrap();
    let copies: [(&str, PathBuf); 4] = [
        (
            "1000001_20205_2_0.xml",
            fixture("xml/1000001_20205_2_0.xml"),
        ),
        ("1000002_muse.xml", fixture("vendor_xml/muse_12lead.xml")),
        ("1000003_aecg.xml", fixture("vendor_xml/hl7_8lead.xml")),
        ("1000004_ecg.dcm", fixture("ecg_dicom/ecg_12lead.dcm")),
    ];
    for (name, from) in &copies {
        std::fs::copy(from, ecg_dir.join(name)).unwrap();
    }
    let cfg = BuildConfig {
        root: root.clone(),
        output: dir.path().join("cache"),
        cmr_dir: None,
        phenotypes: None,
        diagnoses: None,
        require_pairs: false,
        ecg_samples: 200,
        ..BuildConfig::default()
    };
    let (index, report) = build_dataset(&cfg, &|_, _| {}).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let mut eids: Vec<_> = index.subjects.iter().map(|s| s.eid).collect();
    eids.sort_unstable();
    assert_eq!(eids, [1000001, 1000002, 1000003, 1000004]);
}
