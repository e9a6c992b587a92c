//! DICOM waveform ECGs: 12-lead ECG Waveform Storage (SOP class
//! `1.2.840.10008.5.1.4.1.1.9.1.1`) and General ECG Waveform Storage (`…9.1.2`).
//!
//! The layout read here (PS3.3 C.10.9, Waveform Module):
//!
//! ```text
//! (0008,0016) SOPClassUID                       1.2.840.10008.5.1.4.1.1.9.1.1 or …9.1.2
//! (5400,0100) WaveformSequence                  one item per multiplex group
//!   (003A,0005) NumberOfWaveformChannels        C
//!   (003A,0010) NumberOfWaveformSamples         T
//!   (003A,001A) SamplingFrequency               Hz
//!   (003A,0200) ChannelDefinitionSequence       C items, in the order of the data
//!     (003A,0208) ChannelSourceSequence         code of the lead: meaning "Lead aVR",
//!                                               SCPECG value 5.6.3-9-62 or MDC value 2:62
//!     (003A,0210) ChannelSensitivity            physical units per raw unit
//!     (003A,0211) ChannelSensitivityUnitsSequence   UCUM code value nV, uV, mV or V
//!     (003A,0212) ChannelSensitivityCorrectionFactor  (default 1)
//!     (003A,0213) ChannelBaseline               (default 0)
//!   (5400,1004) WaveformBitsAllocated           8, 16 or 32
//!   (5400,1006) WaveformSampleInterpretation    SB/UB, SS/US or SL/UL
//!   (5400,1010) WaveformData                    C1T1 C2T1 … CcT1 C1T2 … (channel-interleaved)
//! ```
//!
//! The first multiplex group that holds the 12 standard leads is read (12-lead files put the
//! rhythm strip first and median beats, if any, after it); a group with only I, II and V1–V6
//! (8 independent leads) qualifies too, the limb leads it lacks being derived from I and II.
//! Channels that are not standard leads (rhythm, pacing) are ignored. Samples are returned in
//! mV in canonical order, at the group's sampling frequency.
//!
//! The file is read whole (at most [`MAX_DICOM_ECG_BYTES`]) and every element length it
//! declares is checked against the bytes that follow before the DICOM parser, which allocates
//! what a header declares, sees them.

use std::path::Path;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use mmcl_core::files::read_regular_bounded;

use super::{Ecg, LEADS, MAX_SAMPLES_PER_LEAD, NUM_LEADS, in_file, lead_index};
use crate::{Error, Result};

/// The largest DICOM ECG file read, in bytes (128 MiB).
///
/// A 10-second 12-lead ECG at 500 Hz is about 130 KB; 128 MiB holds over 90 minutes of 12
/// leads at 1 kHz in 16 bits, and bounds what the file (read whole) and its parsed elements
/// can claim.
pub const MAX_DICOM_ECG_BYTES: u64 = 128 << 20;

/// SOP class of 12-lead ECG Waveform Storage.
pub const TWELVE_LEAD_ECG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.9.1.1";

/// SOP class of General ECG Waveform Storage.
pub const GENERAL_ECG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.9.1.2";

/// The SCP-ECG / MDC lead number of each canonical lead (DICOM CID 3001).
const LEAD_NUMBERS: [u32; 12] = [1, 2, 61, 62, 63, 64, 3, 4, 5, 6, 7, 8];

/// Reads a DICOM 12-lead or general ECG waveform file into a 12-lead [`Ecg`] in mV.
///
/// # Errors
/// A format error naming the file: not a regular file, larger than [`MAX_DICOM_ECG_BYTES`],
/// not DICOM, truncated, an element longer than the bytes that follow, an unsupported transfer
/// syntax or SOP class, no multiplex group holding the standard leads, inconsistent channel
/// counts, sample counts over [`MAX_SAMPLES_PER_LEAD`], waveform data shorter than
/// channels × samples, an unknown sample interpretation or sensitivity unit, or a sampling
/// frequency outside the plausible range ([`super::check_sample_rate`]).
pub fn read_dicom_ecg(path: &Path) -> Result<Ecg> {
    let bytes = read_regular_bounded(path, MAX_DICOM_ECG_BYTES, "the DICOM file")?;
    parse_dicom_ecg(&bytes, path)
}

/// Parses the bytes of a DICOM ECG waveform file; `path` names it in errors.
///
/// # Errors
/// See [`read_dicom_ecg`].
pub fn parse_dicom_ecg(bytes: &[u8], path: &Path) -> Result<Ecg> {
    let bad = |reason: String| Error::format(path, reason);
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    // Every declared length is checked against the file before the parser allocates from it;
    // deflated, big-endian and compressed data are refused there too.
    let layout = crate::dicom_scan::check(bytes).map_err(bad)?;
    let body = &bytes[layout.magic..];
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| bad(format!("not a readable DICOM file: {e}")))?;
    let sop_class = object
        .get(tags::SOP_CLASS_UID)
        .map(|e| text(e.to_str().ok().as_deref().unwrap_or("")))
        .unwrap_or_else(|| text(object.meta().media_storage_sop_class_uid()));
    if sop_class != TWELVE_LEAD_ECG_SOP_CLASS && sop_class != GENERAL_ECG_SOP_CLASS {
        return Err(bad(format!(
            "SOP class {sop_class:?} is not 12-lead ECG ({TWELVE_LEAD_ECG_SOP_CLASS}) or \
             general ECG ({GENERAL_ECG_SOP_CLASS}) waveform storage"
        )));
    }
    let groups = object
        .get(tags::WAVEFORM_SEQUENCE)
        .and_then(|e| e.items())
        .ok_or_else(|| bad("no WaveformSequence (5400,0100)".into()))?;
    let mut summary = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        let what = format!("multiplex group {index}: ");
        let channels = channel_leads(group, path, &what)?;
        let present: Vec<usize> = channels.iter().flatten().copied().collect();
        let has = |l: usize| present.contains(&l);
        // I, II and V1–V6 are the independent leads; the other four follow from I and II.
        if [0, 1, 6, 7, 8, 9, 10, 11].iter().all(|&l| has(l)) {
            return read_group(group, &channels, path, &what);
        }
        let names: Vec<&str> = present.iter().map(|&l| LEADS[l]).collect();
        summary.push(format!("group {index} has [{}]", names.join(", ")));
    }
    Err(bad(format!(
        "no multiplex group holds the standard leads (I, II and V1–V6 at least): {}",
        if summary.is_empty() {
            "the WaveformSequence is empty".to_string()
        } else {
            summary.join("; ")
        }
    )))
}

/// A text value without the padding DICOM allows (trailing spaces and NULs).
fn text(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// The canonical lead of each channel of a multiplex group (`None` for other channels).
fn channel_leads(group: &InMemDicomObject, path: &Path, what: &str) -> Result<Vec<Option<usize>>> {
    let definitions = group
        .get(tags::CHANNEL_DEFINITION_SEQUENCE)
        .and_then(|e| e.items())
        .ok_or_else(|| {
            Error::format(
                path,
                format!("{what}no ChannelDefinitionSequence (003A,0200)"),
            )
        })?;
    Ok(definitions
        .iter()
        .map(|channel| {
            let source = channel
                .get(tags::CHANNEL_SOURCE_SEQUENCE)
                .and_then(|e| e.items())
                .and_then(|items| items.first());
            source.and_then(|code| {
                let field = |tag| {
                    code.get(tag)
                        .and_then(|e| e.to_str().ok())
                        .map(|s| text(&s))
                        .unwrap_or_default()
                };
                lead_from_meaning(&field(tags::CODE_MEANING))
                    .or_else(|| lead_from_code_value(&field(tags::CODE_VALUE)))
            })
        })
        .collect())
}

/// The canonical lead named by a code meaning such as `Lead aVR`, `lead v1`, `III` or
/// `MDC_ECG_LEAD_AVR`; `None` for anything else (`Lead -aVR` included).
pub fn lead_from_meaning(meaning: &str) -> Option<usize> {
    let m = meaning.trim();
    let lower = m.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("mdc_ecg_lead_") {
        &m[m.len() - r.len()..]
    } else if let Some(r) = lower.strip_prefix("lead") {
        &m[m.len() - r.len()..]
    } else {
        m
    };
    lead_index(rest)
}

/// The canonical lead of an SCP-ECG (`5.6.3-9-62`) or MDC (`2:62`) lead code value.
pub fn lead_from_code_value(value: &str) -> Option<usize> {
    let number = value
        .strip_prefix("5.6.3-9-")
        .or_else(|| value.strip_prefix("2:"))?;
    let number: u32 = number.parse().ok()?;
    LEAD_NUMBERS.iter().position(|&n| n == number)
}

/// The keyword and tag of an attribute, for messages (`NumberOfWaveformSamples (003A,0010)`).
fn tag_name(tag: Tag) -> String {
    match StandardDataDictionary.by_tag(tag) {
        Some(entry) => format!("{} {tag}", entry.alias()),
        None => tag.to_string(),
    }
}

/// An unsigned integer attribute of `item`.
fn uint(item: &InMemDicomObject, tag: Tag, path: &Path, what: &str) -> Result<u64> {
    let name = tag_name(tag);
    let e = item
        .get(tag)
        .ok_or_else(|| Error::format(path, format!("{what}no {name}")))?;
    e.to_int::<u64>().map_err(|err| {
        Error::format(
            path,
            format!("{what}{name} is not an unsigned integer: {err}"),
        )
    })
}

/// A decimal attribute of `item`, `default` when absent; it must be finite.
fn decimal(
    item: &InMemDicomObject,
    tag: Tag,
    default: Option<f64>,
    path: &Path,
    what: &str,
) -> Result<f64> {
    let name = tag_name(tag);
    let value = match (item.get(tag), default) {
        (Some(e), _) => e
            .to_float64()
            .map_err(|err| Error::format(path, format!("{what}{name} is not a number: {err}")))?,
        (None, Some(d)) => d,
        (None, None) => return Err(Error::format(path, format!("{what}no {name}"))),
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::format(path, format!("{what}{name} is {value}")))
    }
}

/// Millivolts per unit of a UCUM voltage code (value or meaning).
fn millivolts_per(unit: &str) -> Option<f64> {
    match unit {
        "nV" | "nanovolt" => Some(1e-6),
        "uV" | "µV" | "μV" | "microvolt" => Some(1e-3),
        "mV" | "millivolt" => Some(1.0),
        "V" | "volt" => Some(1e3),
        _ => None,
    }
}

/// Decodes the standard leads of a multiplex group, in mV, deriving missing limb leads.
fn read_group(
    group: &InMemDicomObject,
    channels: &[Option<usize>],
    path: &Path,
    what: &str,
) -> Result<Ecg> {
    let bad = |reason: String| Error::format(path, format!("{what}{reason}"));
    let n_channels = uint(group, tags::NUMBER_OF_WAVEFORM_CHANNELS, path, what)?;
    if n_channels != channels.len() as u64 {
        return Err(bad(format!(
            "NumberOfWaveformChannels is {n_channels} but the ChannelDefinitionSequence has {} items",
            channels.len()
        )));
    }
    let samples = uint(group, tags::NUMBER_OF_WAVEFORM_SAMPLES, path, what)?;
    if samples == 0 {
        return Err(bad("NumberOfWaveformSamples is 0".into()));
    }
    if samples > MAX_SAMPLES_PER_LEAD as u64 {
        return Err(bad(format!(
            "{samples} samples per channel is more than the limit of {MAX_SAMPLES_PER_LEAD}"
        )));
    }
    // Bounded by the check above.
    let samples = samples as usize;
    let rate = decimal(group, tags::SAMPLING_FREQUENCY, None, path, what)?;
    super::check_sample_rate(rate).map_err(|e| in_file(path, e))?;
    let bits = uint(group, tags::WAVEFORM_BITS_ALLOCATED, path, what)?;
    let interpretation = group
        .get(tags::WAVEFORM_SAMPLE_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .map(|s| text(&s))
        .ok_or_else(|| bad("no WaveformSampleInterpretation (5400,1006)".into()))?;
    let (width, signed) = match (bits, interpretation.as_str()) {
        (8, "SB") => (1, true),
        (8, "UB") => (1, false),
        (16, "SS") => (2, true),
        (16, "US") => (2, false),
        (32, "SL") => (4, true),
        (32, "UL") => (4, false),
        (b, i) => {
            return Err(bad(format!(
                "unsupported WaveformBitsAllocated {b} with WaveformSampleInterpretation {i:?} \
                 (expected 8 SB/UB, 16 SS/US or 32 SL/UL)"
            )));
        }
    };
    let data = RawData::of(group, path, what)?;
    // Both factors are bounded (channels by the sequence in a bounded file, samples above):
    // no overflow in u64, and the comparison precedes any allocation sized by them.
    let needed = n_channels * samples as u64 * width as u64;
    if (data.len() as u64) < needed {
        return Err(bad(format!(
            "WaveformData holds {} bytes but {n_channels} channels × {samples} samples × \
             {width} bytes need {needed} (truncated?)",
            data.len()
        )));
    }
    let definitions = group
        .get(tags::CHANNEL_DEFINITION_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or_default();
    let mut leads: Vec<(&str, Vec<f32>)> = Vec::with_capacity(NUM_LEADS);
    for (c, (lead, def)) in channels.iter().zip(definitions).enumerate() {
        let Some(lead) = *lead else { continue };
        let cw = format!("{what}channel {c} ({}): ", LEADS[lead]);
        let sensitivity = decimal(def, tags::CHANNEL_SENSITIVITY, None, path, &cw)?;
        let correction = decimal(
            def,
            tags::CHANNEL_SENSITIVITY_CORRECTION_FACTOR,
            Some(1.0),
            path,
            &cw,
        )?;
        // PS3.3 C.10.9: the baseline is the "offset of encoded sample value 0 from actual 0
        // using the units defined in the Channel Sensitivity Units Sequence", so it is added
        // in physical units after scaling (as pydicom's `multiplex_array` does), not to the
        // raw value.
        let baseline = decimal(def, tags::CHANNEL_BASELINE, Some(0.0), path, &cw)?;
        let unit = def
            .get(tags::CHANNEL_SENSITIVITY_UNITS_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .map(|code| {
                let field = |tag| {
                    code.get(tag)
                        .and_then(|e| e.to_str().ok())
                        .map(|s| text(&s))
                };
                (field(tags::CODE_VALUE), field(tags::CODE_MEANING))
            });
        let Some((value, meaning)) = unit else {
            return Err(bad(format!(
                "channel {c}: no ChannelSensitivityUnitsSequence (003A,0211)"
            )));
        };
        let to_mv = value
            .as_deref()
            .and_then(millivolts_per)
            .or_else(|| {
                meaning
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                    .and_then(millivolts_per)
            })
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "{cw}unsupported sensitivity unit {:?} (expected nV, uV, mV or V)",
                        value.or(meaning).unwrap_or_default()
                    ),
                )
            })?;
        let scale = sensitivity * correction * to_mv;
        let offset = baseline * to_mv;
        let stride = channels.len();
        let values = (0..samples)
            .map(|t| (data.sample((t * stride + c) * width, width, signed) * scale + offset) as f32)
            .collect();
        leads.push((LEADS[lead], values));
    }
    derive_limb_leads(&mut leads);
    Ecg::from_named_leads(path, leads, rate)
}

/// Adds the limb leads an 8-lead recording lacks from I and II (Einthoven and Goldberger):
/// III = II − I, aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2.
fn derive_limb_leads(leads: &mut Vec<(&str, Vec<f32>)>) {
    let find = |leads: &[(&str, Vec<f32>)], name: &str| leads.iter().position(|(n, _)| *n == name);
    let (Some(i), Some(ii)) = (find(leads, "I"), find(leads, "II")) else {
        return;
    };
    type Formula = fn(f32, f32) -> f32;
    let formulas: [(&str, Formula); 4] = [
        ("III", |a, b| b - a),
        ("aVR", |a, b| -(a + b) / 2.0),
        ("aVL", |a, b| a - b / 2.0),
        ("aVF", |a, b| b - a / 2.0),
    ];
    for (name, f) in formulas {
        if find(leads, name).is_none() {
            let derived = leads[i]
                .1
                .iter()
                .zip(&leads[ii].1)
                .map(|(&a, &b)| f(a, b))
                .collect();
            leads.push((name, derived));
        }
    }
}

/// The bytes of WaveformData as the parser holds them: bytes (OB) or 16-bit words (OW).
enum RawData<'a> {
    Bytes(&'a [u8]),
    Words(&'a [u16]),
    SignedWords(&'a [i16]),
}

impl<'a> RawData<'a> {
    fn of(group: &'a InMemDicomObject, path: &Path, what: &str) -> Result<Self> {
        let value = group
            .get(tags::WAVEFORM_DATA)
            .and_then(|e| e.value().primitive())
            .ok_or_else(|| Error::format(path, format!("{what}no WaveformData (5400,1010)")))?;
        match value {
            PrimitiveValue::U8(b) => Ok(Self::Bytes(b)),
            PrimitiveValue::U16(w) => Ok(Self::Words(w)),
            PrimitiveValue::I16(w) => Ok(Self::SignedWords(w)),
            PrimitiveValue::Empty => Ok(Self::Bytes(&[])),
            _ => Err(Error::format(
                path,
                format!("{what}WaveformData is not OB or OW data"),
            )),
        }
    }

    /// Length in bytes.
    fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Words(w) => w.len() * 2,
            Self::SignedWords(w) => w.len() * 2,
        }
    }

    /// Byte `k` in little-endian order (the parser decodes OW words to native values).
    fn byte(&self, k: usize) -> u8 {
        let word = |w: u16| w.to_le_bytes()[k % 2];
        match self {
            Self::Bytes(b) => b.get(k).copied().unwrap_or(0),
            Self::Words(w) => w.get(k / 2).map_or(0, |&w| word(w)),
            Self::SignedWords(w) => w.get(k / 2).map_or(0, |&w| word(w as u16)),
        }
    }

    /// The little-endian sample of `width` bytes at byte `at`, as a number.
    fn sample(&self, at: usize, width: usize, signed: bool) -> f64 {
        let mut raw = 0u32;
        for k in 0..width {
            raw |= u32::from(self.byte(at + k)) << (8 * k);
        }
        let bits = 8 * width as u32;
        if signed && bits < 32 {
            // Sign-extend from `bits`.
            let shift = 32 - bits;
            f64::from(((raw << shift) as i32) >> shift)
        } else if signed {
            f64::from(raw as i32)
        } else {
            f64::from(raw)
        }
    }
}
