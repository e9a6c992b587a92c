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

use quick_xml::events::BytesStart;

use super::xml::{ElementHandler, EmptyRoot, XmlFormat, parse_int, read_xml, walk};
use super::{Ecg, MAX_SAMPLES_PER_LEAD, check_sample_rate, derive_limb_leads, in_file, lead_index};
use crate::{Error, Result};

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
/// [`MAX_XML_DEPTH`](super::xml::MAX_XML_DEPTH), a file larger than
/// [`MAX_XML_BYTES`](super::xml::MAX_XML_BYTES) or one that is not a regular file.
pub fn read_hl7_aecg(path: &Path) -> Result<Ecg> {
    read_xml(path, parse_hl7_aecg)
}

/// Parses the bytes of an HL7 aECG file; `path` names it in errors.
///
/// Runs in time linear in the input; only the text of the rhythm `<digits>` is kept.
///
/// # Errors
/// See [`read_hl7_aecg`].
pub fn parse_hl7_aecg(bytes: &[u8], path: &Path) -> Result<Ecg> {
    let Hl7Reader {
        series,
        interval_s,
        mut leads,
        ..
    } = walk(bytes, path, Hl7Reader::default())?;
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

/// The HL7 aECG side of the [`walk`]: the rhythm sequences, filed as each closes.
#[derive(Default)]
struct Hl7Reader {
    /// How many rhythm series and sequence sets have opened: only the first of each is read.
    series: usize,
    sets: usize,
    /// The rhythm `<sequence>` open now, and the text of its `<digits>` while that is open.
    sequence: Option<RawSequence>,
    digits: Option<String>,
    interval_s: Option<f64>,
    leads: Vec<(String, Vec<f32>)>,
}

impl ElementHandler for Hl7Reader {
    const FORMAT: XmlFormat = XmlFormat {
        root: "AnnotatedECG",
        described: "an HL7 aECG file",
        qualified_names: false,
        empty_root: EmptyRoot::Allowed,
    };

    fn open(
        &mut self,
        stack: &[String],
        e: &BytesStart<'_>,
        _empty: bool,
        path: &Path,
    ) -> Result<()> {
        if on_path(stack, 3) {
            self.series += 1;
        } else if self.series == 1 && on_path(stack, 5) {
            self.sets += 1;
        } else if self.series == 1 && self.sets == 1 && on_path(stack, 7) {
            self.sequence = Some(RawSequence::default());
        } else if let Some(seq) = self.sequence.as_mut()
            && let [.., parent, name] = stack
        {
            match (stack.len(), parent.as_str(), name.as_str()) {
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
                    self.digits = Some(String::new());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn kept_text(&mut self) -> Option<&mut String> {
        self.digits.as_mut()
    }

    /// Files a rhythm `<sequence>` as it closes, and the text of its `<digits>`.
    fn close(&mut self, stack: &[String], _empty: bool, path: &Path) -> Result<()> {
        if on_path(stack, 7)
            && let Some(sequence) = self.sequence.take()
        {
            return sequence.file(&mut self.interval_s, &mut self.leads, path);
        }
        if stack.last().is_some_and(|name| name == "digits")
            && let Some(text) = self.digits.take()
            && let Some(seq) = self.sequence.as_mut()
        {
            seq.digits = Some(text);
        }
        Ok(())
    }
}

/// Whether the first `len` open elements are the start of [`SEQUENCE_PATH`] and nothing more is
/// open.
fn on_path(stack: &[String], len: usize) -> bool {
    stack.len() == len && stack.iter().zip(SEQUENCE_PATH).all(|(a, b)| a == b)
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

/// The time units of `<increment>`, with their length in seconds.
const SECONDS_PER_UNIT: [(&str, f64); 4] = [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6)];

/// The voltage units of `<origin>` and `<scale>`, with their size in mV.
const MILLIVOLTS_PER_UNIT: [(&str, f64); 4] = [("uV", 1e-3), ("µV", 1e-3), ("mV", 1.0), ("V", 1e3)];

impl Quantity {
    /// The factor of the quantity's unit among `units`; an error message naming `<name>` and
    /// the `expected` units for any other (or none).
    fn unit_factor(
        &self,
        name: &str,
        units: &[(&str, f64)],
        expected: &str,
    ) -> std::result::Result<f64, String> {
        let unit = self.unit.as_deref().unwrap_or_default();
        units
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|&(_, factor)| factor)
            .ok_or_else(|| format!("unknown <{name}> unit {unit:?} (expected {expected})"))
    }

    /// The quantity's value, finite; an error message naming `<name>` otherwise.
    fn number(&self, name: &str) -> std::result::Result<f64, String> {
        finite(&self.value).ok_or_else(|| format!("<{name}> {:?} is not a number", self.value))
    }
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

    /// Refuses a declared value type other than the `expected` ones, with the `refusal` given;
    /// writers may leave the type out.
    fn check_type(&self, expected: &[&str], refusal: &str) -> std::result::Result<(), String> {
        match self.value_type.as_deref() {
            Some(t) if !expected.contains(&t) => Err(format!("value type {t:?} {refusal}")),
            _ => Ok(()),
        }
    }

    /// The sample interval in seconds of the time sequence `code`.
    fn interval(&self, code: &str, path: &Path) -> Result<f64> {
        let bad = |reason: String| Error::format(path, format!("time sequence {code}: {reason}"));
        self.check_type(
            &["GLIST_TS", "GLIST_PQ"],
            "is not a regular sampling (expected GLIST_TS or GLIST_PQ)",
        )
        .map_err(&bad)?;
        let increment = self
            .increment
            .as_ref()
            .ok_or_else(|| bad("no <increment> (the sample interval)".into()))?;
        let seconds_per_unit = increment
            .unit_factor("increment", &SECONDS_PER_UNIT, "s or ms")
            .map_err(&bad)?;
        let value = increment.number("increment").map_err(&bad)?;
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
        self.check_type(&["SLIST_PQ"], "is not supported (expected SLIST_PQ)")
            .map_err(&bad)?;
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
    let per_unit = q.unit_factor(name, &MILLIVOLTS_PER_UNIT, "uV, mV or V")?;
    Ok(q.number(name)? * per_unit)
}

/// A finite number, or `None`.
fn finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}
