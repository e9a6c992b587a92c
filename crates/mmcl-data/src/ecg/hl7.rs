//! HL7 v3 annotated ECG (aECG), the XML format the FDA takes for ECGs of clinical trials.
//!
//! The layout read here (elements in the namespace `urn:hl7-org:v3`, with or without a prefix;
//! elements not shown are skipped):
//!
//! ```text
//! <AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
//!   <component>
//!     <series>                                       (the first series: the rhythm strip)
//!       <code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
//!       <component>
//!         <sequenceSet>                              (the first sequence set)
//!           <component>
//!             <sequence>
//!               <code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.6.24"/>
//!               <value xsi:type="GLIST_TS">          (or TIME_RELATIVE with GLIST_PQ)
//!                 <head value="20240101120000.000"/>
//!                 <increment value="0.002" unit="s"/> (sample interval, s or ms)
//!               </value>
//!             </sequence>
//!           </component>
//!           <component>
//!             <sequence>
//!               <code code="MDC_ECG_LEAD_I" codeSystem="2.16.840.1.113883.6.24"/>
//!               <value xsi:type="SLIST_PQ">
//!                 <origin value="0" unit="uV"/>      (uV, mV or V; 0 when absent)
//!                 <scale value="5" unit="uV"/>
//!                 <digits>12 15 -3 …</digits>        (whitespace-separated integers)
//!               </value>
//!             </sequence>
//!           </component>
//!         </sequenceSet>
//!       </component>
//!       <derivation><derivedSeries>…</derivedSeries></derivation>   (median beats: skipped)
//!     </series>
//!   </component>
//! </AnnotatedECG>
//! ```
//!
//! A sample is `origin + scale × digit`, returned in mV in the canonical lead order (lead codes
//! `MDC_ECG_LEAD_I`, `…_II`, `…_III`, `…_AVR`, `…_AVL`, `…_AVF`, `…_V1` … `…_V6`; other leads are
//! ignored). When III, aVR, aVL and aVF are all absent they are derived from I and II. The
//! text is decoded by [`super::xml`]'s shared decoder: UTF-16 with a byte-order mark, UTF-8, or
//! the declared ISO-8859-1.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::xml::{
    MAX_XML_BYTES, MAX_XML_DEPTH, append_character_data, decode, is_blank, parse_int,
};
use super::{Ecg, MAX_SAMPLES_PER_LEAD, check_sample_rate, derive_limb_leads, in_file, lead_index};
use crate::{Error, Result};
use mmcl_core::files::read_regular_bounded;

/// The prefix of the MDC codes of ECG leads (ISO/IEEE 11073, code system 2.16.840.1.113883.6.24).
const LEAD_CODE_PREFIX: &str = "MDC_ECG_LEAD_";

/// The local names from the root to a rhythm `<sequence>`.
const SEQUENCE_PATH: [&str; 7] = [
    "AnnotatedECG",
    "component",
    "series",
    "component",
    "sequenceSet",
    "component",
    "sequence",
];

/// The smallest and largest `<scale>` accepted, in µV per digit. Writers use 0.5–10 µV; a scale
/// outside these bounds turns integer digits into nothing or into volts.
const MIN_SCALE_UV: f64 = 1e-3;
const MAX_SCALE_UV: f64 = 1e3;

/// The largest `<origin>` magnitude accepted, in µV (one volt): a baseline offset beyond it is
/// no ECG.
const MAX_ORIGIN_UV: f64 = 1e6;

/// Reads an HL7 aECG file: the rhythm strip of its first series, in mV.
///
/// # Errors
/// A clear error naming the file: unreadable, empty, truncated or malformed XML, a root element
/// other than `AnnotatedECG`, no series, no time sequence (or two), a sample interval that is
/// not a positive time in s or ms, a time sequence that is not regularly sampled, a missing or
/// repeated lead, a lead value other than `SLIST_PQ`, a missing or implausible `scale`, an
/// implausible `origin`, an unknown unit, digits that are not integers or more than
/// [`MAX_SAMPLES_PER_LEAD`] of them, leads of different lengths, a sample rate outside the
/// plausible ECG range ([`super::check_sample_rate`]), elements nested deeper than
/// [`MAX_XML_DEPTH`], a file larger than [`MAX_XML_BYTES`] or one that is not a regular file.
pub fn read_hl7_aecg(path: &Path) -> Result<Ecg> {
    let bytes = read_regular_bounded(path, MAX_XML_BYTES, "the XML file")?;
    parse_hl7_aecg(&bytes, path)
}

/// Parses the bytes of an HL7 aECG file; `path` names it in errors.
///
/// Runs in time linear in the input; only the text of the rhythm `<digits>` is kept.
///
/// # Errors
/// See [`read_hl7_aecg`].
pub fn parse_hl7_aecg(bytes: &[u8], path: &Path) -> Result<Ecg> {
    let text = decode(bytes, path)?;
    if is_blank(&text) {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut reader = Reader::from_str(&text);
    let mut stack: Vec<String> = Vec::new();
    let mut seen_root = false;
    // How many rhythm series and sequence sets have opened: only the first of each is read.
    let mut series = 0usize;
    let mut sets = 0usize;
    let mut sequence: Option<RawSequence> = None;
    let mut digits: Option<String> = None;
    let mut interval_s: Option<f64> = None;
    let mut leads: Vec<(String, Vec<f32>)> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|source| Error::Xml {
            path: path.to_path_buf(),
            source,
        })?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let name = e.local_name().as_ref().to_string();
                if stack.is_empty() {
                    if seen_root {
                        return Err(Error::format(path, "more than one root element"));
                    }
                    seen_root = true;
                    if name != "AnnotatedECG" {
                        return Err(Error::format(
                            path,
                            format!("root element is <{name}>, expected <AnnotatedECG>"),
                        ));
                    }
                }
                if !empty && stack.len() >= MAX_XML_DEPTH {
                    return Err(Error::format(
                        path,
                        format!(
                            "elements nested deeper than {MAX_XML_DEPTH} levels (the nesting \
                             depth limit for an HL7 aECG file)"
                        ),
                    ));
                }
                stack.push(name);
                let depth = stack.len();
                if on_path(&stack, 3) {
                    series += 1;
                } else if series == 1 && on_path(&stack, 5) {
                    sets += 1;
                } else if series == 1 && sets == 1 && on_path(&stack, 7) {
                    sequence = Some(RawSequence::default());
                } else if let Some(seq) = sequence.as_mut()
                    && let [.., parent, name] = stack.as_slice()
                {
                    match (depth, parent.as_str(), name.as_str()) {
                        (8, _, "code") => seq.code(e, path)?,
                        (8, _, "value") => seq.value_type = attribute(e, "type", path)?,
                        (9, "value", "increment" | "origin" | "scale") => {
                            seq.quantity(name, e, path)?;
                        }
                        (9, "value", "digits") => {
                            if seq.has_digits {
                                return Err(Error::format(path, "<digits> appears twice"));
                            }
                            seq.has_digits = true;
                            digits = Some(String::new());
                        }
                        _ => {}
                    }
                }
                if empty {
                    close(&mut stack, &mut sequence, &mut digits, path)?
                        .map(|s| s.file(&mut interval_s, &mut leads, path))
                        .transpose()?;
                }
            }
            character_data @ (Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)) => {
                if let Some(text) = digits.as_mut() {
                    append_character_data(&character_data, text, path)?;
                }
            }
            Event::End(_) => {
                close(&mut stack, &mut sequence, &mut digits, path)?
                    .map(|s| s.file(&mut interval_s, &mut leads, path))
                    .transpose()?;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(Error::format(
            path,
            format!("the file is truncated: <{open}> is never closed"),
        ));
    }
    if !seen_root {
        return Err(Error::format(path, "no <AnnotatedECG> element"));
    }
    if series == 0 {
        return Err(Error::format(
            path,
            "no component/series (the rhythm waveforms)",
        ));
    }
    let interval = interval_s.ok_or_else(|| {
        Error::format(
            path,
            "the rhythm series has no TIME_ABSOLUTE or TIME_RELATIVE sequence (the sampling)",
        )
    })?;
    let rate = 1.0 / interval;
    check_sample_rate(rate).map_err(|e| in_file(path, e))?;
    derive_limb_leads(path, &mut leads)?;
    Ecg::from_named_leads(path, leads, rate)
}

/// Whether the first `len` open elements are the start of [`SEQUENCE_PATH`] and nothing more is
/// open.
fn on_path(stack: &[String], len: usize) -> bool {
    stack.len() == len && stack.iter().zip(SEQUENCE_PATH).all(|(a, b)| a == b)
}

/// Closes the element at the top of `stack`; returns the sequence when it is a rhythm
/// `<sequence>`.
fn close(
    stack: &mut Vec<String>,
    sequence: &mut Option<RawSequence>,
    digits: &mut Option<String>,
    path: &Path,
) -> Result<Option<RawSequence>> {
    if sequence.is_some() && on_path(stack, 7) {
        stack.pop();
        return Ok(sequence.take());
    }
    let Some(name) = stack.pop() else {
        return Err(Error::format(path, "closing tag without opening tag"));
    };
    if name == "digits"
        && let Some(text) = digits.take()
        && let Some(seq) = sequence.as_mut()
    {
        seq.digits = Some(text);
    }
    Ok(None)
}

/// The value of the attribute whose local name is `key` (`type` matches `xsi:type`).
fn attribute(e: &BytesStart<'_>, key: &str, path: &Path) -> Result<Option<String>> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|err| {
            Error::format(
                path,
                format!("bad attribute in <{}>: {err}", e.local_name().as_ref()),
            )
        })?;
        if a.key.local_name().as_ref() == key {
            return Ok(Some(a.value.trim().to_string()));
        }
    }
    Ok(None)
}

/// A physical quantity `value` in `unit` (attributes of `<increment>`, `<origin>`, `<scale>`).
struct Quantity {
    value: String,
    unit: Option<String>,
}

/// What one rhythm `<sequence>` holds, interpreted when it closes.
#[derive(Default)]
struct RawSequence {
    code: Option<String>,
    value_type: Option<String>,
    increment: Option<Quantity>,
    origin: Option<Quantity>,
    scale: Option<Quantity>,
    has_digits: bool,
    digits: Option<String>,
}

impl RawSequence {
    fn code(&mut self, e: &BytesStart<'_>, path: &Path) -> Result<()> {
        let code = attribute(e, "code", path)?
            .ok_or_else(|| Error::format(path, "a sequence <code> without a code attribute"))?;
        if self.code.replace(code).is_some() {
            return Err(Error::format(path, "a sequence has two <code> elements"));
        }
        Ok(())
    }

    fn quantity(&mut self, name: &str, e: &BytesStart<'_>, path: &Path) -> Result<()> {
        let value = attribute(e, "value", path)?
            .ok_or_else(|| Error::format(path, format!("<{name}> without a value attribute")))?;
        let unit = attribute(e, "unit", path)?;
        let slot = match name {
            "increment" => &mut self.increment,
            "origin" => &mut self.origin,
            _ => &mut self.scale,
        };
        if slot.replace(Quantity { value, unit }).is_some() {
            return Err(Error::format(path, format!("<{name}> appears twice")));
        }
        Ok(())
    }

    /// Files a closed sequence: the time sequence sets the sample interval, a standard lead is
    /// added to `leads`, anything else is skipped.
    fn file(
        mut self,
        interval_s: &mut Option<f64>,
        leads: &mut Vec<(String, Vec<f32>)>,
        path: &Path,
    ) -> Result<()> {
        let code = self.code.take().unwrap_or_default();
        if code.starts_with("TIME_") {
            let interval = self.interval(&code, path)?;
            if interval_s.replace(interval).is_some() {
                return Err(Error::format(
                    path,
                    "the rhythm sequence set has two time sequences",
                ));
            }
        } else if let Some(lead) = code.strip_prefix(LEAD_CODE_PREFIX)
            && lead_index(lead).is_some()
        {
            let values = self.samples(lead, path)?;
            leads.push((lead.to_string(), values));
        }
        Ok(())
    }

    /// The sample interval in seconds of the time sequence `code`.
    fn interval(&self, code: &str, path: &Path) -> Result<f64> {
        let bad = |reason: String| Error::format(path, format!("time sequence {code}: {reason}"));
        if let Some(t) = self.value_type.as_deref()
            && t != "GLIST_TS"
            && t != "GLIST_PQ"
        {
            return Err(bad(format!(
                "value type {t:?} is not a regular sampling (expected GLIST_TS or GLIST_PQ)"
            )));
        }
        let increment = self
            .increment
            .as_ref()
            .ok_or_else(|| bad("no <increment> (the sample interval)".into()))?;
        let seconds_per_unit = match increment.unit.as_deref() {
            Some("s") => 1.0,
            Some("ms") => 1e-3,
            Some("us" | "µs") => 1e-6,
            other => {
                return Err(bad(format!(
                    "unknown <increment> unit {:?} (expected s or ms)",
                    other.unwrap_or_default()
                )));
            }
        };
        let value = finite(&increment.value)
            .ok_or_else(|| bad(format!("<increment> {:?} is not a number", increment.value)))?;
        let interval = value * seconds_per_unit;
        if !(interval.is_finite() && interval > 0.0) {
            return Err(bad(format!(
                "<increment> {value} is not a positive interval"
            )));
        }
        Ok(interval)
    }

    /// The samples of lead `lead`, in mV.
    fn samples(self, lead: &str, path: &Path) -> Result<Vec<f32>> {
        let bad = |reason: String| Error::format(path, format!("lead {lead}: {reason}"));
        if let Some(t) = self.value_type.as_deref()
            && t != "SLIST_PQ"
        {
            return Err(bad(format!(
                "value type {t:?} is not supported (expected SLIST_PQ)"
            )));
        }
        let scale = self
            .scale
            .as_ref()
            .ok_or_else(|| bad("no <scale>".into()))?;
        let scale_mv = millivolts(scale, "scale").map_err(&bad)?;
        if !(MIN_SCALE_UV..=MAX_SCALE_UV).contains(&(scale_mv * 1e3)) {
            return Err(bad(format!(
                "<scale> {} {} is not a plausible resolution ({MIN_SCALE_UV}–{MAX_SCALE_UV} µV)",
                scale.value,
                scale.unit.as_deref().unwrap_or_default()
            )));
        }
        let origin_mv = match &self.origin {
            Some(origin) => millivolts(origin, "origin").map_err(&bad)?,
            None => 0.0,
        };
        if origin_mv.abs() * 1e3 > MAX_ORIGIN_UV {
            return Err(bad(format!(
                "<origin> of {origin_mv} mV is beyond ±{MAX_ORIGIN_UV} µV"
            )));
        }
        let text = self.digits.ok_or_else(|| bad("no <digits>".into()))?;
        // At most one sample per two bytes of text: the vector never outgrows the file.
        let mut values = Vec::with_capacity((text.len() / 2).min(MAX_SAMPLES_PER_LEAD));
        for (index, token) in text.split_ascii_whitespace().enumerate() {
            if index == MAX_SAMPLES_PER_LEAD {
                return Err(bad(format!(
                    "more than the limit of {MAX_SAMPLES_PER_LEAD} samples"
                )));
            }
            let digit = parse_int(token)
                .ok_or_else(|| bad(format!("digit {index} is not an integer: {token:?}")))?;
            values.push((origin_mv + scale_mv * digit as f64) as f32);
        }
        Ok(values)
    }
}

/// A quantity's value in mV (units uV, µV, mV or V), as an error message otherwise.
fn millivolts(q: &Quantity, name: &str) -> std::result::Result<f64, String> {
    let per_unit = match q.unit.as_deref() {
        Some("uV" | "µV") => 1e-3,
        Some("mV") => 1.0,
        Some("V") => 1e3,
        other => {
            return Err(format!(
                "unknown <{name}> unit {:?} (expected uV, mV or V)",
                other.unwrap_or_default()
            ));
        }
    };
    finite(&q.value)
        .map(|v| v * per_unit)
        .ok_or_else(|| format!("<{name}> {:?} is not a number", q.value))
}

/// A finite number, or `None`.
fn finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}
