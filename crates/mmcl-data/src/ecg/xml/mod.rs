//! UK Biobank resting ECG in GE CardioSoft XML (field 20205, `<eid>_20205_2_0.xml`).
//!
//! The layout read here:
//!
//! ```text
//! <?xml version="1.0" encoding="ISO-8859-1"?>
//! <CardiologyXML>
//!   <RestingECGMeasurements>
//!     <VentricularRate units="BPM">62</VentricularRate>   (and PQInterval, QRSDuration, …)
//!     <MedianSamples>
//!       <SampleRate units="Hz">500</SampleRate>
//!       <Resolution units="uVperLsb">5</Resolution>
//!       <WaveformData lead="I"> 12,14,
//!          15, …</WaveformData>                            (one per lead, any order)
//!     </MedianSamples>
//!   </RestingECGMeasurements>
//!   <StripData>
//!     <SampleRate units="Hz">500</SampleRate>
//!     <ChannelSampleCountTotal>5000</ChannelSampleCountTotal>
//!     <Resolution units="uVperLsb">5</Resolution>
//!     <WaveformData lead="aVR">…</WaveformData>
//!   </StripData>
//! </CardiologyXML>
//! ```
//!
//! Leads come in any order and capitalisation and are reordered to the canonical order;
//! samples are integers in units of `Resolution` µV and are returned in mV. The file's declared
//! encoding (ISO-8859-1 for UK Biobank, or UTF-8) is honoured, and UTF-16 (little- or
//! big-endian, told by its byte-order mark) is read too: the decoder here is shared by the GE
//! MUSE and HL7 aECG readers and by [`root_element`], so every XML format reads every encoding.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::{BytesRef, BytesStart, Event};

use super::{Ecg, check_count};
use crate::{Error, Result};
use mmcl_core::files::{open_regular, read_checked, read_regular_bounded};

mod encoding;
mod walk;
pub(crate) use encoding::decode;
use encoding::head_text;
pub(crate) use walk::{ElementHandler, EmptyRoot, XmlFormat, walk};

/// The deepest element nesting accepted in an ECG XML file (CardioSoft, and also GE MUSE and
/// HL7 aECG, see [`super::muse`] and [`super::hl7`]).
///
/// CardioSoft files nest four levels deep (`CardiologyXML/RestingECGMeasurements/
/// MedianSamples/WaveformData`); 64 leaves ample room for vendor extensions while refusing
/// the deeply nested documents that serve only to exhaust a parser. MUSE files nest four levels
/// and HL7 aECG files about ten.
pub const MAX_XML_DEPTH: usize = 64;

/// The largest ECG XML file read, in bytes (64 MiB), whichever vendor wrote it.
///
/// A UK Biobank file (ten seconds of 12 leads at 500 Hz plus median beats) is 100–300 KB;
/// the limit leaves room for minutes-long strips at high rates while bounding the memory a
/// single file can claim (the text is held once as bytes and once decoded: at most as many
/// bytes again for 8-bit text, half as many for the ASCII content of UTF-16).
pub const MAX_XML_BYTES: u64 = 64 << 20;

/// An interval or axis measurement of the CardioSoft report (`VentricularRate`, `PQInterval`,
/// `PDuration`, `QRSDuration`, `QTInterval`, `QTCInterval`, `RRInterval`, `PAxis`, `RAxis`,
/// `TAxis`, …), or of a GE MUSE report ([`VendorEcg::measurements`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Element name as written in the file.
    pub name: String,
    /// The value.
    pub value: f64,
    /// The `units` attribute (`ms`, `BPM`, `degrees`, …), when present.
    pub unit: Option<String>,
}

/// The value of the measurement `name` among `measurements` (case-insensitive; the first when
/// repeated): the one lookup of the CardioSoft and GE MUSE reports.
pub fn find_measurement(measurements: &[Measurement], name: &str) -> Option<f64> {
    measurements
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
        .map(|m| m.value)
}

/// The heart rate a report's `measurements` state: `VentricularRate` in bpm, or `None` when
/// absent or implausible ([`plausible_heart_rate`]).
pub fn reported_heart_rate(measurements: &[Measurement]) -> Option<f64> {
    find_measurement(measurements, "VentricularRate").and_then(plausible_heart_rate)
}

/// Everything read from one resting-ECG report in XML: a CardioSoft file, or a GE MUSE file
/// ([`super::muse`]); the two formats hold the same three things.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorEcg {
    /// The rhythm strip (CardioSoft `StripData`, MUSE `<Waveform>` of type `Rhythm`), in mV,
    /// canonical lead order.
    pub rhythm: Ecg,
    /// The median beats (CardioSoft `RestingECGMeasurements/MedianSamples`, MUSE `<Waveform>`
    /// of type `Median`), when present.
    pub median_beats: Option<Ecg>,
    /// The numeric measurements directly under `RestingECGMeasurements`, in file order. MUSE
    /// writes no units (rates in bpm, intervals in ms, axes in degrees; `unit` is `None`).
    pub measurements: Vec<Measurement>,
}

impl VendorEcg {
    /// The value of a measurement by element name (case-insensitive; the first when repeated).
    pub fn measurement(&self, name: &str) -> Option<f64> {
        find_measurement(&self.measurements, name)
    }

    /// The heart rate in bpm ([`reported_heart_rate`]).
    pub fn heart_rate(&self) -> Option<f64> {
        reported_heart_rate(&self.measurements)
    }
}

/// Everything read from one CardioSoft XML file.
pub type CardioSoftEcg = VendorEcg;

/// The range of heart rates taken from a vendor's measurements, in bpm: a resting ECG's
/// ventricular rate lies well inside it, and values outside (0 for "not measured", a
/// misplaced interval) would turn the cardiac output derived from it into nonsense.
pub const HEART_RATE_RANGE_BPM: std::ops::RangeInclusive<f64> = 20.0..=300.0;

/// `bpm` when it lies in [`HEART_RATE_RANGE_BPM`], else `None`.
pub fn plausible_heart_rate(bpm: f64) -> Option<f64> {
    HEART_RATE_RANGE_BPM.contains(&bpm).then_some(bpm)
}

/// Reads a CardioSoft XML file.
///
/// # Errors
/// A clear error naming the file: unreadable, empty, truncated or malformed XML, a wrong root
/// element, no rhythm strip, a missing, repeated or non-numeric lead, leads of different lengths
/// or of a length other than `ChannelSampleCountTotal`, an unknown resolution unit, a sample
/// rate outside the plausible ECG range ([`super::check_sample_rate`]), elements nested deeper
/// than [`MAX_XML_DEPTH`], a file larger than [`MAX_XML_BYTES`] or one that is not a regular
/// file.
pub fn read_cardiosoft_xml(path: &Path) -> Result<CardioSoftEcg> {
    read_xml(path, parse_cardiosoft_xml)
}

/// Reads the ECG XML file `path` (a regular file of at most [`MAX_XML_BYTES`]) and parses its
/// bytes with `parse`: how every vendor reader opens its file.
pub(crate) fn read_xml<T>(path: &Path, parse: fn(&[u8], &Path) -> Result<T>) -> Result<T> {
    let bytes = read_regular_bounded(path, MAX_XML_BYTES, "the XML file")?;
    parse(&bytes, path)
}

/// Parses the bytes of a CardioSoft XML file; `path` names it in errors.
///
/// Runs in time linear in the input: each event costs constant work beyond its own bytes
/// (the enclosing sections are tracked by counters, not by scanning the open elements).
///
/// # Errors
/// See [`read_cardiosoft_xml`].
pub fn parse_cardiosoft_xml(bytes: &[u8], path: &Path) -> Result<CardioSoftEcg> {
    let CardioSoftReader {
        strip,
        median,
        has_median,
        measurements,
        ..
    } = walk(bytes, path, CardioSoftReader::default())?;
    if strip.leads.is_empty() {
        return Err(Error::format(path, "no <StripData> rhythm-strip waveforms"));
    }
    let rhythm = strip.into_ecg(path, "StripData")?;
    let median_beats = if has_median {
        Some(median.into_ecg(path, "MedianSamples")?)
    } else {
        None
    };
    Ok(CardioSoftEcg {
        rhythm,
        median_beats,
        measurements,
    })
}

/// The CardioSoft side of the [`walk`]: every element's attributes and text are kept until it
/// closes, then filed into the section or the measurements it belongs to.
#[derive(Default)]
struct CardioSoftReader {
    /// One per open element, beside the walk's names (self-closing elements carry nothing read).
    frames: Vec<Frame>,
    /// How many open elements are <StripData> / <MedianSamples>.
    open_strip: usize,
    open_median: usize,
    strip: Section,
    median: Section,
    has_median: bool,
    measurements: Vec<Measurement>,
}

impl ElementHandler for CardioSoftReader {
    const FORMAT: XmlFormat = XmlFormat {
        root: "CardiologyXML",
        described: "a CardioSoft XML file",
        qualified_names: true,
        empty_root: EmptyRoot::RefusedAnyName,
    };

    fn open(
        &mut self,
        stack: &[String],
        element: &BytesStart<'_>,
        empty: bool,
        path: &Path,
    ) -> Result<()> {
        // Self-closing elements carry no text and no frame: nothing of them is read.
        let Some(name) = stack.last().filter(|_| !empty) else {
            return Ok(());
        };
        let frame = Frame::open(name, element, path)?;
        match name.as_str() {
            "MedianSamples" => {
                self.has_median = true;
                self.open_median += 1;
            }
            "StripData" => self.open_strip += 1,
            _ => {}
        }
        self.frames.push(frame);
        Ok(())
    }

    fn text(&mut self, data: &Event<'_>, _path: &Path) -> Result<()> {
        let Some(top) = self.frames.last_mut() else {
            return Ok(());
        };
        match data {
            Event::Text(t) => top.text.push_str(&t.xml10_content()),
            Event::CData(t) => top.text.push_str(&t.xml10_content()),
            // Character references (a writer may escape the separators of the sample lists,
            // `&#44;` or `&#10;`) and the XML entities stand for their character. Other
            // entities are dropped, as this reader always has: CardioSoft's signal text is
            // numbers, and an undeclared entity in a name field must not refuse the file.
            Event::GeneralRef(r) => top.text.extend(reference_char(r)),
            _ => {}
        }
        Ok(())
    }

    fn close(&mut self, stack: &[String], empty: bool, path: &Path) -> Result<()> {
        if empty {
            return Ok(());
        }
        let (Some(name), Some(frame)) = (stack.last(), self.frames.pop()) else {
            return Err(Error::format(path, "closing tag without opening tag"));
        };
        match name.as_str() {
            "MedianSamples" => self.open_median -= 1,
            "StripData" => self.open_strip -= 1,
            _ => {}
        }
        let section = if self.open_median > 0 {
            Some(&mut self.median)
        } else if self.open_strip > 0 {
            Some(&mut self.strip)
        } else {
            None
        };
        if let Some(section) = section {
            section.take(name, frame, path)?;
        } else if let [.., parent, _] = stack
            && parent == "RestingECGMeasurements"
            && let Ok(value) = frame.text.trim().parse::<f64>()
        {
            self.measurements.push(Measurement {
                name: name.clone(),
                value,
                unit: frame.units,
            });
        }
        Ok(())
    }
}

/// An open element while parsing: the attributes we need, and its text.
struct Frame {
    units: Option<String>,
    lead: Option<String>,
    text: String,
}

impl Frame {
    fn open(name: &str, start: &BytesStart<'_>, path: &Path) -> Result<Self> {
        let attr = |key: &str| -> Result<Option<String>> {
            start
                .try_get_attribute(key)
                .map_err(|e| Error::format(path, format!("bad attribute in <{name}>: {e}")))
                .map(|a| a.map(|a| a.value.into_owned()))
        };
        Ok(Self {
            units: attr("units")?,
            lead: attr("lead")?,
            text: String::new(),
        })
    }
}

/// The waveform block of `StripData` or `MedianSamples`.
#[derive(Default)]
struct Section {
    sample_rate: Option<f64>,
    resolution_uv: Option<f64>,
    count: Option<usize>,
    leads: Vec<(String, Vec<f32>)>,
}

impl Section {
    fn take(&mut self, name: &str, frame: Frame, path: &Path) -> Result<()> {
        let number = |what: &str| -> Result<f64> {
            frame.text.trim().parse::<f64>().map_err(|_| {
                Error::format(
                    path,
                    format!("<{what}> is not a number: {:?}", frame.text.trim()),
                )
            })
        };
        match name {
            "SampleRate" => self.sample_rate = Some(number("SampleRate")?),
            "Resolution" => {
                let value = number("Resolution")?;
                let scale = match frame.units.as_deref().map(str::to_ascii_lowercase) {
                    None => 1.0,
                    Some(u) if u == "uvperlsb" => 1.0,
                    Some(u) if u == "nvperlsb" => 1e-3,
                    Some(u) if u == "mvperlsb" => 1e3,
                    Some(u) => {
                        return Err(Error::format(
                            path,
                            format!("unknown <Resolution> unit {u:?} (expected uVperLsb)"),
                        ));
                    }
                };
                self.resolution_uv = Some(value * scale);
            }
            "ChannelSampleCountTotal" => {
                let n = number("ChannelSampleCountTotal")?;
                if n < 0.0 || n.fract() != 0.0 {
                    return Err(Error::format(
                        path,
                        format!("<ChannelSampleCountTotal> is not a count: {n}"),
                    ));
                }
                self.count = Some(n as usize);
            }
            "WaveformData" => {
                let lead = frame.lead.clone().ok_or_else(|| {
                    Error::format(path, "<WaveformData> without a lead attribute")
                })?;
                let values = parse_samples(&frame.text).map_err(|(index, token)| {
                    Error::format(
                        path,
                        format!("lead {lead}: sample {index} is not a number: {token:?}"),
                    )
                })?;
                self.leads.push((lead, values));
            }
            _ => {}
        }
        Ok(())
    }

    fn into_ecg(self, path: &Path, what: &str) -> Result<Ecg> {
        let rate = self
            .sample_rate
            .ok_or_else(|| Error::format(path, format!("<{what}> has no <SampleRate>")))?;
        let resolution = self
            .resolution_uv
            .ok_or_else(|| Error::format(path, format!("<{what}> has no <Resolution>")))?;
        if !(resolution.is_finite() && resolution > 0.0) {
            return Err(Error::format(
                path,
                format!("<{what}> has a non-positive <Resolution> {resolution}"),
            ));
        }
        if let Some(expected) = self.count {
            for (lead, values) in &self.leads {
                check_count(path, values.len(), expected, || {
                    format!(
                        "<{what}> lead {lead} has {} samples but ChannelSampleCountTotal is {expected}",
                        values.len()
                    )
                })?;
            }
        }
        let to_mv = (resolution / 1000.0) as f32;
        let leads = self.leads.into_iter().map(|(name, mut values)| {
            values.iter_mut().for_each(|v| *v *= to_mv);
            (name, values)
        });
        Ecg::from_named_leads(path, leads, rate).map_err(|e| match e {
            Error::Core(mmcl_core::Error::Format { path, reason }) => {
                Error::format(path, format!("<{what}>: {reason}"))
            }
            other => other,
        })
    }
}

/// Parses comma-separated samples with arbitrary whitespace (a trailing comma is allowed).
/// Integers take a fast path; anything else goes through the float parser.
/// On failure returns the sample index and the offending token.
fn parse_samples(text: &str) -> std::result::Result<Vec<f32>, (usize, String)> {
    let mut values = Vec::with_capacity(text.len() / 4);
    let mut tokens: Vec<&str> = text.split(',').map(str::trim).collect();
    // A trailing separator (or an entirely blank text) leaves one empty token at the end.
    if tokens.last().is_some_and(|t| t.is_empty()) {
        tokens.pop();
    }
    for (index, token) in tokens.into_iter().enumerate() {
        if token.is_empty() {
            return Err((index, token.to_string()));
        }
        match parse_int(token) {
            Some(v) => values.push(v as f32),
            None => match token.parse::<f32>() {
                Ok(v) if v.is_finite() => values.push(v),
                _ => return Err((index, token.to_string())),
            },
        }
    }
    Ok(values)
}

/// Parses a decimal integer of at most 18 digits with an optional sign (no float parsing, no
/// overflow); `None` for anything else. Shared with the HL7 aECG reader's `<digits>`.
pub(crate) fn parse_int(token: &str) -> Option<i64> {
    let bytes = token.as_bytes();
    let (negative, digits) = match bytes.first()? {
        b'-' => (true, &bytes[1..]),
        b'+' => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as i64;
    }
    Some(if negative { -v } else { v })
}

/// How many leading bytes of an XML file [`root_element`] reads (16 KiB): the XML declaration,
/// a document type declaration and comments come before the root, and vendors keep them short.
pub const SNIFF_BYTES: u64 = 16 << 10;

/// The name of the root element of an XML file, without its namespace prefix
/// (`CardiologyXML`, `RestingECG`, `AnnotatedECG`, …), found in its first [`SNIFF_BYTES`]
/// bytes so that telling vendors apart costs one small read.
///
/// # Errors
/// An unreadable or non-regular file, an empty one, malformed XML before the root, or no root
/// element within the bytes read (each naming the file).
pub fn root_element(path: &Path) -> Result<String> {
    let (file, size) = open_regular(path)?;
    let len = size.min(SNIFF_BYTES);
    let head = read_checked(file, size, path, 0, len, "the XML file")?;
    root_in(&head, path, size > len)
}

/// The root element's local name in `head`, the first bytes of the file (`cut` when the file
/// goes on after them).
fn root_in(head: &[u8], path: &Path, cut: bool) -> Result<String> {
    let text = head_text(head);
    if is_blank(&text) {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut reader = Reader::from_str(&text);
    let not_found = || {
        Error::format(
            path,
            format!("no XML root element within the first {SNIFF_BYTES} bytes"),
        )
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return Ok(e.local_name().as_ref().to_string());
            }
            Ok(Event::Eof) if cut => return Err(not_found()),
            Ok(Event::Eof) => return Err(Error::format(path, "no XML root element")),
            Ok(_) => {}
            // A long prolog cut at the end of the head fails to parse; that is not malformed.
            Err(_) if cut => return Err(not_found()),
            Err(source) => {
                return Err(Error::Xml {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Whether decoded XML text holds nothing but XML white space (an empty file).
pub(crate) fn is_blank(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_whitespace())
}

/// Appends the character data an event carries (text, CDATA, or the character of an entity
/// reference) to `text`; other events carry none. The MUSE and HL7 readers collect element text
/// through it.
///
/// # Errors
/// An entity reference other than the XML ones and character references (naming `path`).
pub(crate) fn append_character_data(
    event: &Event<'_>,
    text: &mut String,
    path: &Path,
) -> Result<()> {
    match event {
        Event::Text(t) => text.push_str(&t.xml10_content()),
        Event::CData(t) => text.push_str(&t.xml10_content()),
        Event::GeneralRef(r) => {
            let c = reference_char(r).ok_or_else(|| {
                Error::format(path, format!("unknown entity reference &{};", &**r))
            })?;
            text.push(c);
        }
        _ => {}
    }
    Ok(())
}

/// The character an entity or character reference in element text stands for (`&amp;`,
/// `&#x35;`); `None` for an entity no XML reader of ours defines. quick-xml reports references
/// apart from the text around them, so readers that keep text put them back with this.
pub(crate) fn reference_char(reference: &BytesRef<'_>) -> Option<char> {
    match reference.as_ref() {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => reference.resolve_char_ref().ok().flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::encoding::declared_encoding;
    use super::*;

    #[test]
    fn samples_parse_with_whitespace_and_trailing_comma() {
        assert_eq!(
            parse_samples(" 1,-2,\n\t 3 ,4,").unwrap(),
            vec![1.0, -2.0, 3.0, 4.0]
        );
        assert_eq!(parse_samples("1.5,2").unwrap(), vec![1.5, 2.0]);
        assert_eq!(parse_samples("1,x,3").unwrap_err(), (1, "x".to_string()));
        assert_eq!(parse_samples("1,,3").unwrap_err().0, 1);
    }

    #[test]
    fn root_elements_are_found_after_the_prolog() {
        let p = Path::new("r.xml");
        let head = b"\xEF\xBB\xBF<?xml version=\"1.0\"?>\n<!DOCTYPE RestingECG SYSTEM \"restecg.dtd\">\n\
                     <!-- made by hand --><?xml-stylesheet href=\"x\"?>\n<RestingECG><a/></RestingECG>";
        assert_eq!(root_in(head, p, false).unwrap(), "RestingECG");
        assert_eq!(
            root_in(b"<v3:AnnotatedECG xmlns:v3=\"urn:hl7-org:v3\"/>", p, false).unwrap(),
            "AnnotatedECG"
        );
        assert!(
            root_in(b"  \n", p, false)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let cut = root_in(b"<?xml version=\"1.0\"?><!-- long", p, true).unwrap_err();
        assert!(
            cut.to_string().contains("no XML root element within"),
            "{cut}"
        );
        assert_eq!(reference_char(&BytesRef::new("#x35")), Some('5'));
        assert_eq!(reference_char(&BytesRef::new("amp")), Some('&'));
        assert_eq!(reference_char(&BytesRef::new("nbsp")), None);
    }

    #[test]
    fn encodings_are_detected() {
        assert_eq!(
            declared_encoding(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>").as_deref(),
            Some("ISO-8859-1")
        );
        assert_eq!(declared_encoding(b"<?xml version='1.0'?>"), None);
        let text = decode(
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>\xb5V</a>",
            Path::new("a.xml"),
        )
        .unwrap();
        assert!(text.contains("\u{b5}V"));
    }

    #[test]
    fn utf16_is_decoded_by_its_mark() {
        let p = Path::new("u.xml");
        let text = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>\u{b5}V \u{1F493}</a>";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for bytes in [
            [&[0xFF, 0xFE][..], &le].concat(),
            [&[0xFE, 0xFF][..], &be].concat(),
            le.clone(),
            be,
        ] {
            let decoded = decode(&bytes, p).unwrap();
            assert_eq!(decoded, text);
            // Allocated once, at its length (no doubling beyond the bytes' bound).
            assert_eq!(decoded.into_owned().capacity(), text.len());
            assert_eq!(root_in(&bytes, p, false).unwrap(), "a");
            // A head cut inside a character still names the root.
            assert_eq!(root_in(&bytes[..bytes.len() - 3], p, true).unwrap(), "a");
        }
        // The mark wins over a declaration of another encoding.
        let latin = text.replace("UTF-16", "ISO-8859-1");
        let bytes: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(latin.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&bytes, p).unwrap(), latin);
        let marked = [b"\xEF\xBB\xBF".as_slice(), latin.as_bytes()].concat();
        assert_eq!(decode(&marked, p).unwrap(), latin);
        // UTF-16 declared on 8-bit text is UTF-8.
        assert_eq!(decode(text.as_bytes(), p).unwrap(), text);
        let msg = decode(b"<?xml version=\"1.0\" encoding=\"utf-16\"?><a>\xb5</a>", p)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("without a byte-order mark"), "{msg}");
        let msg = decode(b"\xFF\xFE\0\0<\0\0\0", p).unwrap_err().to_string();
        assert!(msg.contains("UTF-32"), "{msg}");
        let msg = decode(b"<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><a/>", p)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unsupported XML encoding"), "{msg}");
        assert_eq!(plausible_heart_rate(62.0), Some(62.0));
        assert_eq!(plausible_heart_rate(0.0), None);
        assert_eq!(plausible_heart_rate(f64::NAN), None);
    }
}
