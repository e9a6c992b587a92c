//! GE MUSE resting-ECG XML, as hospitals export it from the MUSE cardiology information system.
//!
//! The layout read here (elements not shown are skipped):
//!
//! ```text
//! <?xml version="1.0" encoding="ISO-8859-1"?>
//! <!DOCTYPE RestingECG SYSTEM "restecg.dtd">
//! <RestingECG>
//!   <PatientDemographics>…</PatientDemographics>            (and MuseInfo, TestDemographics, …)
//!   <RestingECGMeasurements>                               (optional: the confirmed measurements)
//!     <VentricularRate>62</VentricularRate>                (bpm; also AtrialRate, PRInterval,
//!     <QRSDuration>88</QRSDuration>                         QTInterval, QTCorrected, PAxis, …)
//!   </RestingECGMeasurements>
//!   <Waveform>
//!     <WaveformType>Median</WaveformType>                  (median beats, same layout)
//!     …
//!   </Waveform>
//!   <Waveform>
//!     <WaveformType>Rhythm</WaveformType>
//!     <SampleBase>500</SampleBase>                         (Hz)
//!     <SampleExponent>0</SampleExponent>                   (optional: rate = base × 10^exp)
//!     <LeadData>                                           (one per lead, any order)
//!       <LeadByteCountTotal>10000</LeadByteCountTotal>     (optional, checked)
//!       <LeadSampleCountTotal>5000</LeadSampleCountTotal>  (optional, checked)
//!       <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
//!       <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits> (or MILLIVOLTS; µV when absent)
//!       <LeadID>V1</LeadID>
//!       <LeadSampleSize>2</LeadSampleSize>                 (optional, must be 2)
//!       <WaveFormData>AAD7//r/…                            (base64 of little-endian int16,
//!         …</WaveFormData>                                  whitespace allowed)
//!     </LeadData>
//!   </Waveform>
//! </RestingECG>
//! ```
//!
//! MUSE stores the eight acquired leads (I, II, V1–V6) and sometimes III, aVR, aVL and aVF as
//! well; when those four are absent they are derived from I and II. Samples are returned in mV,
//! in the canonical lead order. The numeric children of `RestingECGMeasurements` are kept as
//! [`VendorEcg::measurements`] (non-numeric ones are skipped); [`VendorEcg::heart_rate`] is its
//! `VentricularRate` when plausible. The text is decoded by [`super::xml`]'s shared decoder:
//! UTF-16 with a byte-order mark (as MUSE exports often are), UTF-8, or the declared
//! ISO-8859-1.

use std::path::Path;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use quick_xml::events::BytesStart;

use super::xml::{ElementHandler, EmptyRoot, Measurement, VendorEcg, XmlFormat, read_xml, walk};
use super::{Ecg, MAX_SAMPLES_PER_LEAD, check_sample_rate, derive_limb_leads, in_file};
use crate::{Error, Result};

/// The smallest and largest amplitude resolution accepted, in µV per bit. MUSE writes 4.88 (or
/// 1–5); a resolution outside these bounds turns 16-bit samples into nothing or into volts.
const MIN_UV_PER_BIT: f64 = 1e-3;
const MAX_UV_PER_BIT: f64 = 1e3;

/// Base64 as MUSE writes it (standard alphabet), accepting payloads with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Everything read from one GE MUSE XML file.
pub type MuseEcg = VendorEcg;

/// Reads a GE MUSE XML file.
///
/// # Errors
/// A clear error naming the file: unreadable, empty, truncated or malformed XML, a root element
/// other than `RestingECG`, no `Rhythm` waveform (or two), a missing or repeated lead, a lead
/// without `LeadID` or `LeadAmplitudeUnitsPerBit`, a payload that is not base64, holds an odd
/// number of bytes or disagrees with `LeadSampleCountTotal` / `LeadByteCountTotal`, a count
/// above [`MAX_SAMPLES_PER_LEAD`], leads of different lengths, an unknown amplitude unit, a
/// non-finite or implausible resolution, a sample rate outside the plausible ECG range
/// ([`super::check_sample_rate`]), elements nested deeper than
/// [`MAX_XML_DEPTH`](super::xml::MAX_XML_DEPTH), a file larger than
/// [`MAX_XML_BYTES`](super::xml::MAX_XML_BYTES) or one that is not a regular file.
pub fn read_muse_xml(path: &Path) -> Result<MuseEcg> {
    read_xml(path, parse_muse_xml)
}

/// Parses the bytes of a GE MUSE XML file; `path` names it in errors.
///
/// Runs in time linear in the input; only the text of the elements listed in the module
/// documentation is kept.
///
/// # Errors
/// See [`read_muse_xml`].
pub fn parse_muse_xml(bytes: &[u8], path: &Path) -> Result<MuseEcg> {
    let reader = walk(bytes, path, MuseReader::default())?;
    let rhythm = reader.rhythm.ok_or_else(|| {
        Error::format(
            path,
            "no <Waveform> with <WaveformType>Rhythm</WaveformType> (the rhythm strip)",
        )
    })?;
    Ok(MuseEcg {
        rhythm,
        median_beats: reader.median,
        measurements: reader.measurements,
    })
}

/// The GE MUSE side of the [`walk`]: the texts of the elements read, filed as each closes.
#[derive(Default)]
struct MuseReader {
    /// The text of the element open now, when it is one that is read.
    kept: Option<String>,
    waveform: Option<RawWaveform>,
    lead: Option<RawLead>,
    rhythm: Option<Ecg>,
    median: Option<Ecg>,
    measurements: Vec<Measurement>,
}

impl ElementHandler for MuseReader {
    const FORMAT: XmlFormat = XmlFormat {
        root: "RestingECG",
        described: "a GE MUSE XML file",
        qualified_names: false,
        empty_root: EmptyRoot::Refused,
    };

    fn open(
        &mut self,
        stack: &[String],
        _element: &BytesStart<'_>,
        _empty: bool,
        _path: &Path,
    ) -> Result<()> {
        match stack {
            [_, name] if name == "Waveform" => self.waveform = Some(RawWaveform::default()),
            [_, _, name] if name == "LeadData" && self.waveform.is_some() => {
                self.lead = Some(RawLead::default());
            }
            _ => {}
        }
        self.kept = keeps_text(stack).then(String::new);
        Ok(())
    }

    fn kept_text(&mut self) -> Option<&mut String> {
        self.kept.as_mut()
    }

    /// Files the kept text of the closing element (a numeric measurement into `measurements`),
    /// and a `<Waveform>` as the rhythm strip or the median beats.
    fn close(&mut self, stack: &[String], _empty: bool, path: &Path) -> Result<()> {
        let depth = stack.len();
        let Some(name) = stack.last() else {
            return Ok(());
        };
        let text = self.kept.take();
        if depth == 2 && name == "Waveform" {
            return match self.waveform.take() {
                Some(w) => file_waveform(w, &mut self.rhythm, &mut self.median, path),
                None => Ok(()),
            };
        }
        if depth == 3 && stack[1] == "RestingECGMeasurements" {
            // Text that is not a number (a note, an empty element) is no measurement, not an error.
            if let Some(value) = text
                .as_deref()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
            {
                self.measurements.push(Measurement {
                    name: name.clone(),
                    value,
                    unit: None,
                });
            }
            return Ok(());
        }
        match (depth, self.waveform.as_mut(), text) {
            (3, Some(w), _) if name == "LeadData" => {
                if let Some(l) = self.lead.take() {
                    w.leads.push(l);
                }
            }
            (3, Some(w), Some(text)) => {
                let slot = match name.as_str() {
                    "WaveformType" => &mut w.kind,
                    "SampleBase" => &mut w.base,
                    _ => &mut w.exponent,
                };
                set_once(slot, text, name, path)?;
            }
            (4, Some(_), Some(text)) => {
                if let Some(l) = self.lead.as_mut() {
                    l.set(name, text, path)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether the text of the element at the top of `stack` is read.
fn keeps_text(stack: &[String]) -> bool {
    match stack {
        [_, w, name] if w == "Waveform" => {
            matches!(
                name.as_str(),
                "WaveformType" | "SampleBase" | "SampleExponent"
            )
        }
        [_, w, l, name] if w == "Waveform" && l == "LeadData" => RawLead::keeps(name),
        [_, m, _] => m == "RestingECGMeasurements",
        _ => false,
    }
}

/// Interprets a closed `<Waveform>` and files it as the rhythm strip or the median beats.
fn file_waveform(
    waveform: RawWaveform,
    rhythm: &mut Option<Ecg>,
    median: &mut Option<Ecg>,
    path: &Path,
) -> Result<()> {
    let (kind, ecg) = waveform.into_ecg(path)?;
    let slot = match kind {
        Kind::Rhythm => rhythm,
        Kind::Median => median,
    };
    if slot.replace(ecg).is_some() {
        return Err(Error::format(
            path,
            format!("more than one {} <Waveform>", kind.name()),
        ));
    }
    Ok(())
}

/// Stores the text of an element that may appear once in its parent.
fn set_once(slot: &mut Option<String>, text: String, name: &str, path: &Path) -> Result<()> {
    if slot.replace(text).is_some() {
        return Err(Error::format(path, format!("<{name}> appears twice")));
    }
    Ok(())
}

/// The two waveform types MUSE writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rhythm,
    Median,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Rhythm => "Rhythm",
            Self::Median => "Median",
        }
    }
}

/// The texts of one `<Waveform>`, interpreted when it closes.
#[derive(Default)]
struct RawWaveform {
    kind: Option<String>,
    base: Option<String>,
    exponent: Option<String>,
    leads: Vec<RawLead>,
}

impl RawWaveform {
    /// The waveform's type and its ECG in mV.
    fn into_ecg(self, path: &Path) -> Result<(Kind, Ecg)> {
        let kind = match self.kind.as_deref().map(str::trim) {
            Some(k) if k.eq_ignore_ascii_case("rhythm") => Kind::Rhythm,
            Some(k) if k.eq_ignore_ascii_case("median") => Kind::Median,
            Some(k) => {
                return Err(Error::format(
                    path,
                    format!("unknown <WaveformType> {k:?} (expected Rhythm or Median)"),
                ));
            }
            None => return Err(Error::format(path, "a <Waveform> has no <WaveformType>")),
        };
        let what = format!("{} <Waveform>", kind.name());
        let rate = self.sample_rate(path, &what)?;
        let mut leads = Vec::with_capacity(self.leads.len());
        for lead in self.leads {
            leads.push(lead.into_samples(path, &what)?);
        }
        derive_limb_leads(path, &mut leads).map_err(|e| prefixed(e, &what))?;
        let ecg = Ecg::from_named_leads(path, leads, rate).map_err(|e| prefixed(e, &what))?;
        Ok((kind, ecg))
    }

    /// `SampleBase × 10^SampleExponent` Hz, checked.
    fn sample_rate(&self, path: &Path, what: &str) -> Result<f64> {
        let base = self
            .base
            .as_deref()
            .ok_or_else(|| Error::format(path, format!("the {what} has no <SampleBase>")))?;
        let base = number(base, "SampleBase", what, path)?;
        let exponent = match self.exponent.as_deref().map(str::trim) {
            None | Some("") => 0,
            // Rates span 50 Hz – 20 kHz: any exponent beyond ±9 is corrupt.
            Some(e) => e
                .parse::<i32>()
                .ok()
                .filter(|e| e.abs() <= 9)
                .ok_or_else(|| {
                    Error::format(path, format!("the {what} has a bad <SampleExponent> {e:?}"))
                })?,
        };
        let rate = base * 10f64.powi(exponent);
        check_sample_rate(rate)
            .map_err(|e| prefixed(in_file(path, e), what))
            .map(|()| rate)
    }
}

/// The texts of one `<LeadData>`.
#[derive(Default)]
struct RawLead {
    id: Option<String>,
    units_per_bit: Option<String>,
    units: Option<String>,
    count: Option<String>,
    byte_count: Option<String>,
    sample_size: Option<String>,
    data: Option<String>,
}

impl RawLead {
    /// Whether a child of `<LeadData>` named `name` is read.
    fn keeps(name: &str) -> bool {
        matches!(
            name,
            "LeadID"
                | "LeadAmplitudeUnitsPerBit"
                | "LeadAmplitudeUnits"
                | "LeadSampleCountTotal"
                | "LeadByteCountTotal"
                | "LeadSampleSize"
                | "WaveFormData"
        )
    }

    fn set(&mut self, name: &str, text: String, path: &Path) -> Result<()> {
        let slot = match name {
            "LeadID" => &mut self.id,
            "LeadAmplitudeUnitsPerBit" => &mut self.units_per_bit,
            "LeadAmplitudeUnits" => &mut self.units,
            "LeadSampleCountTotal" => &mut self.count,
            "LeadByteCountTotal" => &mut self.byte_count,
            "LeadSampleSize" => &mut self.sample_size,
            _ => &mut self.data,
        };
        set_once(slot, text, name, path)
    }

    /// The lead's name and samples in mV. Every declared size is checked against the payload
    /// before anything is decoded.
    fn into_samples(self, path: &Path, what: &str) -> Result<(String, Vec<f32>)> {
        let id = self
            .id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                Error::format(path, format!("a <LeadData> of the {what} has no <LeadID>"))
            })?
            .to_string();
        let bad = |reason: String| Error::format(path, format!("the {what}, lead {id}: {reason}"));
        let mv_per_unit = match self.units.as_deref().map(str::trim) {
            // MUSE writes MICROVOLTS; a file without the element follows that convention.
            None => 1e-3,
            Some(u) if u.eq_ignore_ascii_case("MICROVOLTS") => 1e-3,
            Some(u) if u.eq_ignore_ascii_case("MILLIVOLTS") => 1.0,
            Some(u) => {
                return Err(bad(format!(
                    "unknown <LeadAmplitudeUnits> {u:?} (expected MICROVOLTS or MILLIVOLTS)"
                )));
            }
        };
        let per_bit = self
            .units_per_bit
            .as_deref()
            .ok_or_else(|| bad("no <LeadAmplitudeUnitsPerBit>".into()))?;
        let per_bit = per_bit.trim().parse::<f64>().map_err(|_| {
            bad(format!(
                "<LeadAmplitudeUnitsPerBit> is not a number: {:?}",
                per_bit.trim()
            ))
        })?;
        let mv_per_bit = per_bit * mv_per_unit;
        let uv_per_bit = mv_per_bit * 1e3;
        if !(uv_per_bit.is_finite() && (MIN_UV_PER_BIT..=MAX_UV_PER_BIT).contains(&uv_per_bit)) {
            return Err(bad(format!(
                "<LeadAmplitudeUnitsPerBit> {per_bit} is not a plausible resolution \
                 ({MIN_UV_PER_BIT}–{MAX_UV_PER_BIT} µV per bit)"
            )));
        }
        if let Some(size) = self.sample_size.as_deref().map(str::trim)
            && size != "2"
        {
            return Err(bad(format!(
                "<LeadSampleSize> is {size:?}, only 2-byte samples are supported"
            )));
        }
        let count = parse_count(self.count.as_deref(), "LeadSampleCountTotal").map_err(&bad)?;
        if let Some(n) = count
            && n > MAX_SAMPLES_PER_LEAD as u64
        {
            return Err(bad(format!(
                "<LeadSampleCountTotal> {n} is more than the limit of {MAX_SAMPLES_PER_LEAD} samples"
            )));
        }
        let byte_count =
            parse_count(self.byte_count.as_deref(), "LeadByteCountTotal").map_err(&bad)?;
        let data = self.data.ok_or_else(|| bad("no <WaveFormData>".into()))?;
        let payload: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let bytes = decoded_len(&payload).ok_or_else(|| {
            bad("<WaveFormData> is not valid base64 (its length is wrong)".into())
        })?;
        if !bytes.is_multiple_of(2) {
            return Err(bad(format!(
                "<WaveFormData> holds {bytes} bytes, an odd number, not 16-bit samples"
            )));
        }
        if let Some(n) = count
            && n.checked_mul(2) != Some(bytes as u64)
        {
            return Err(bad(format!(
                "<WaveFormData> holds {} samples but <LeadSampleCountTotal> is {n}",
                bytes / 2
            )));
        }
        if let Some(n) = byte_count
            && n != bytes as u64
        {
            return Err(bad(format!(
                "<WaveFormData> holds {bytes} bytes but <LeadByteCountTotal> is {n}"
            )));
        }
        if bytes / 2 > MAX_SAMPLES_PER_LEAD {
            return Err(bad(format!(
                "<WaveFormData> holds {} samples, more than the limit of {MAX_SAMPLES_PER_LEAD}",
                bytes / 2
            )));
        }
        let raw = BASE64
            .decode(&payload)
            .map_err(|e| bad(format!("<WaveFormData> is not valid base64: {e}")))?;
        let mv_per_bit = mv_per_bit as f32;
        let samples = raw
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) * mv_per_bit)
            .collect();
        Ok((id, samples))
    }
}

/// The number of bytes a base64 payload (whitespace removed, padding optional) decodes to;
/// `None` for a length no base64 text has.
fn decoded_len(payload: &[u8]) -> Option<usize> {
    let pad = payload.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 || (pad > 0 && !payload.len().is_multiple_of(4)) {
        return None;
    }
    let chars = payload.len() - pad;
    match chars % 4 {
        1 => None,
        rest => Some(chars / 4 * 3 + rest.saturating_sub(1)),
    }
}

/// A non-negative integer count from the text of `<name>`, when the element is present.
fn parse_count(text: Option<&str>, name: &str) -> std::result::Result<Option<u64>, String> {
    text.map(|text| {
        let text = text.trim();
        text.parse::<u64>()
            .map_err(|_| format!("<{name}> is not a count: {text:?}"))
    })
    .transpose()
}

/// A finite number from the text of `<name>` of `what`.
fn number(text: &str, name: &str, what: &str, path: &Path) -> Result<f64> {
    let text = text.trim();
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::format(path, format!("the {what} has a bad <{name}> {text:?}")))
}

/// Prefixes a format error's reason with the waveform it concerns.
fn prefixed(error: Error, what: &str) -> Error {
    match error {
        Error::Core(mmcl_core::Error::Format { path, reason }) if !reason.contains(what) => {
            Error::format(path, format!("the {what}: {reason}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_lengths_follow_base64() {
        for n in 0..20usize {
            let bytes: Vec<u8> = (0..n as u8).collect();
            let padded = BASE64.encode(&bytes);
            assert_eq!(decoded_len(padded.as_bytes()), Some(n), "{padded}");
            let bare = padded.trim_end_matches('=');
            assert_eq!(decoded_len(bare.as_bytes()), Some(n), "{bare}");
            assert_eq!(BASE64.decode(bare).unwrap(), bytes);
        }
        assert_eq!(decoded_len(b"A"), None);
        assert_eq!(decoded_len(b"AB="), None);
        assert_eq!(decoded_len(b"A==="), None);
    }
}
