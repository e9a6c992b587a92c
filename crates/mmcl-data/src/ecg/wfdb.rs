//! WFDB records (`.hea` header + signal file), as PTB-XL and MIMIC-IV-ECG ship them.
//!
//! Single-segment records with signal formats 16 (16-bit little-endian two's complement),
//! 212 (two 12-bit samples packed in three bytes) and 80 (8-bit offset binary) are read;
//! signals may share a file (frame-interleaved) or live in several files. Digital values become
//! physical ones as `(d − baseline) / gain` in the signal's units, converted to mV; the
//! formats' "invalid sample" codes become NaN (which the preprocessing maps to 0).

use std::collections::HashMap;
use std::path::{Component, Path};

use super::{Ecg, check_count, check_sample_rate, check_samples_per_lead, in_file};
use crate::{Error, Result};
use mmcl_core::files::{open_regular, read_checked, read_regular_bounded};

/// The largest WFDB header read, in bytes (1 MiB).
///
/// A 12-lead header is about 1 KB (PTB-XL, MIMIC-IV-ECG); even hundreds of signals with long
/// comment blocks stay far below, and the limit keeps a hostile "header" from claiming memory.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// The most signals a header may announce.
///
/// ECG records carry 12 to about 16 signals (the 12 leads, sometimes Frank leads or a rhythm
/// channel); 256 leaves room for any multi-channel research recording while bounding the work
/// and the per-signal buffers a header can ask for.
pub const MAX_SIGNALS: usize = 256;

/// What a WFDB record holds besides its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct WfdbRecord {
    /// The record name of the header's first line.
    pub name: String,
    /// The 12-lead ECG in mV, canonical lead order.
    pub ecg: Ecg,
    /// The header's comment lines (without `#`).
    pub comments: Vec<String>,
}

/// One signal line of a header.
#[derive(Debug, Clone, PartialEq)]
struct SignalSpec {
    file: String,
    format: u16,
    byte_offset: u64,
    gain: f64,
    baseline: f64,
    units: String,
    description: String,
}

/// The signal files a WFDB header names, beside it, each once in header order — the files a
/// command must not overwrite when it reads the record.
///
/// # Errors
/// As [`read_record`] for the header itself (unreadable, oversized, malformed).
pub fn signal_files(header: &Path) -> Result<Vec<std::path::PathBuf>> {
    let text = read_regular_bounded(header, MAX_HEADER_BYTES, "the WFDB header")?;
    let parsed = parse_header(&String::from_utf8_lossy(&text), header)?;
    let dir = header.parent().unwrap_or(Path::new("."));
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for s in &parsed.signals {
        let path = dir.join(&s.file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Reads a WFDB record from its header file (`*.hea`); the signal files are looked up beside it.
///
/// Signal files must be plain files in the header's folder, named by a bare file name; only
/// the bytes the header declares are read from them, after checking that the file holds them.
///
/// # Errors
/// A clear error naming the file: unreadable, empty or oversized header
/// ([`MAX_HEADER_BYTES`]), malformed lines, unsupported format or multi-segment record, a
/// sampling rate outside the plausible ECG range ([`super::check_sample_rate`]), a declared
/// sample count above [`super::MAX_SAMPLES_PER_LEAD`], a signal file named by a path (absolute,
/// with folders or `..`) or that is not a regular file, a signal file shorter than the header
/// says, a missing or repeated lead.
pub fn read_record(header: &Path) -> Result<WfdbRecord> {
    let text = read_regular_bounded(header, MAX_HEADER_BYTES, "the WFDB header")?;
    let text = String::from_utf8_lossy(&text);
    let Header {
        name,
        n_sig,
        fs,
        n_samples,
        signals,
        comments,
    } = parse_header(&text, header)?;
    check_count(header, signals.len(), n_sig, || {
        format!(
            "the header announces {n_sig} signals but describes {}",
            signals.len()
        )
    })?;
    let dir = header.parent().unwrap_or(Path::new("."));
    // Signals sharing a file are interleaved frame by frame, in header order.
    let mut files: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in signals.iter().enumerate() {
        let slot = *index.entry(s.file.as_str()).or_insert_with(|| {
            files.push((s.file.as_str(), Vec::new()));
            files.len() - 1
        });
        files[slot].1.push(i);
    }
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); signals.len()];
    for (file, members) in &files {
        let first = &signals[members[0]];
        if members.iter().any(|&m| signals[m].format != first.format) {
            return Err(Error::format(
                header,
                format!("signals in {file} use different formats"),
            ));
        }
        let path = dir.join(file);
        let per_frame = members.len();
        let bytes = read_signal_file(header, &path, first, per_frame, n_samples)?;
        let available = sample_count(&bytes, first.format, &path)? / per_frame;
        let n = match n_samples {
            Some(n) if n > available => {
                return Err(Error::format(
                    &path,
                    format!(
                        "truncated: the header says {n} samples per signal but the file holds {available}"
                    ),
                ));
            }
            Some(n) => n,
            None => available,
        };
        for (k, &m) in members.iter().enumerate() {
            let spec = &signals[m];
            let to_mv = unit_to_mv(&spec.units).ok_or_else(|| {
                Error::format(
                    header,
                    format!("signal {}: unknown unit {:?}", spec.description, spec.units),
                )
            })?;
            let scale = to_mv / spec.gain;
            values[m] = (0..n)
                .map(
                    |t| match sample_at(&bytes, first.format, t * per_frame + k) {
                        Some(d) => ((d as f64 - spec.baseline) * scale) as f32,
                        None => f32::NAN,
                    },
                )
                .collect();
        }
    }
    let named = signals.iter().map(|s| s.description.as_str()).zip(values);
    let ecg = Ecg::from_named_leads(header, named, fs)?;
    Ok(WfdbRecord {
        name,
        ecg,
        comments,
    })
}

/// Bytes taken by `samples` samples of a signal file in `format`, `None` on overflow.
fn format_bytes(samples: u64, format: u16) -> Option<u64> {
    match format {
        16 => samples.checked_mul(2),
        // Two samples in three bytes; a last odd sample takes two.
        212 => (samples / 2)
            .checked_mul(3)?
            .checked_add(if samples % 2 == 1 { 2 } else { 0 }),
        _ => Some(samples),
    }
}

/// Reads the part of a signal file that holds `per_frame` interleaved signals described by
/// `spec` (its format and byte offset): `samples` frames when the header declares them, else
/// the rest of the file up to [`super::MAX_SAMPLES_PER_LEAD`] frames. The byte count is
/// derived with checked arithmetic and checked against the file's size before anything is
/// allocated. Errors about the signal file's kind or size name the header as well.
fn read_signal_file(
    header: &Path,
    path: &Path,
    spec: &SignalSpec,
    per_frame: usize,
    samples: Option<usize>,
) -> Result<Vec<u8>> {
    let frame_bytes = |frames: usize| {
        u64::try_from(frames)
            .ok()
            .and_then(|f| f.checked_mul(per_frame as u64))
            .and_then(|s| format_bytes(s, spec.format))
    };
    let too_large = || {
        Error::format(
            header,
            format!(
                "the signals in {} would take more bytes than can be addressed",
                spec.file
            ),
        )
    };
    let in_header = |e: Error| match e {
        Error::Core(mmcl_core::Error::Format { path, reason }) => {
            Error::format(header, format!("signal file {}: {reason}", path.display()))
        }
        other => other,
    };
    let (file, size) = open_regular(path).map_err(|e| in_header(e.into()))?;
    let len = match samples {
        Some(n) => frame_bytes(n).ok_or_else(too_large)?,
        None => {
            let rest = size.saturating_sub(spec.byte_offset);
            let cap = frame_bytes(super::MAX_SAMPLES_PER_LEAD).ok_or_else(too_large)?;
            if rest > cap {
                return Err(Error::format(
                    header,
                    format!(
                        "signal file {} holds more than {} samples per signal (the limit) and \
                         the header declares no sample count",
                        spec.file,
                        super::MAX_SAMPLES_PER_LEAD
                    ),
                ));
            }
            rest
        }
    };
    let what = format!(
        "{per_frame} signal(s) in format {} as the header declares",
        spec.format
    );
    read_checked(file, size, path, spec.byte_offset, len, &what).map_err(|e| in_header(e.into()))
}

/// The record line and signal lines of a header.
struct Header {
    name: String,
    n_sig: usize,
    fs: f64,
    n_samples: Option<usize>,
    signals: Vec<SignalSpec>,
    comments: Vec<String>,
}

fn parse_header(text: &str, path: &Path) -> Result<Header> {
    let mut comments = Vec::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            comments.push(c.trim().to_string());
        } else if !line.is_empty() {
            lines.push(line);
        }
    }
    let Some((record_line, signal_lines)) = lines.split_first() else {
        return Err(Error::format(path, "the header is empty"));
    };
    let bad = |what: String| Error::format(path, format!("bad record line: {what}"));
    let fields: Vec<&str> = record_line.split_whitespace().collect();
    let name = fields[0].to_string();
    if name.contains('/') {
        return Err(Error::format(
            path,
            "multi-segment records are not supported",
        ));
    }
    let sig_field = fields.get(1).ok_or_else(|| bad("no signal count".into()))?;
    let n_sig: usize = sig_field
        .parse()
        .map_err(|_| bad(format!("signal count {sig_field:?} is not a number")))?;
    if n_sig > MAX_SIGNALS {
        return Err(bad(format!(
            "{n_sig} signals is more than the limit of {MAX_SIGNALS}"
        )));
    }
    let fs = match fields.get(2) {
        Some(f) => {
            let f = f.split('/').next().unwrap_or(f);
            f.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(format!("sampling frequency {f:?} is not a positive number")))?
        }
        None => 250.0,
    };
    // Refused here, before any signal file is touched.
    check_sample_rate(fs).map_err(|e| in_file(path, e))?;
    let n_samples = match fields.get(3) {
        Some(n) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| bad(format!("sample count {n:?} is not a number")))?;
            check_samples_per_lead(n).map_err(|e| in_file(path, e))?;
            Some(n)
        }
        None => None,
    };
    let signals = signal_lines
        .iter()
        .enumerate()
        .map(|(i, line)| parse_signal(line, path, i))
        .collect::<Result<Vec<_>>>()?;
    Ok(Header {
        name,
        n_sig,
        fs,
        n_samples,
        signals,
        comments,
    })
}

/// Whether a signal file name is a bare file name (one normal component, no separator), so
/// that it can only name a file in the header's own folder.
fn is_bare_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

fn parse_signal(line: &str, path: &Path, index: usize) -> Result<SignalSpec> {
    let bad = |what: String| Error::format(path, format!("signal line {}: {what}", index + 1));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let file = fields[0].to_string();
    if !is_bare_file_name(&file) {
        return Err(bad(format!(
            "signal file {file:?} must be a bare file name beside the header \
             (no absolute path, folder or \"..\")"
        )));
    }
    let fmt_field = fields.get(1).ok_or_else(|| bad("no format".into()))?;
    // format[xsamp][:skew][+offset]
    let (fmt_part, byte_offset) = match fmt_field.split_once('+') {
        Some((f, off)) => (
            f,
            off.parse::<u64>()
                .map_err(|_| bad(format!("bad byte offset in {fmt_field:?}")))?,
        ),
        None => (*fmt_field, 0),
    };
    let digits: String = fmt_part.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() != fmt_part.len() {
        return Err(bad(format!(
            "format {fmt_field:?} (sample multiplicity and skew are not supported)"
        )));
    }
    let format: u16 = digits
        .parse()
        .map_err(|_| bad(format!("format {fmt_field:?} is not a number")))?;
    if !matches!(format, 16 | 212 | 80) {
        return Err(bad(format!(
            "signal format {format} is not supported (16, 212 and 80 are)"
        )));
    }
    // adc_gain[(baseline)][/units]
    let (gain, explicit_baseline, units) = match fields.get(2) {
        Some(g) => {
            let (g, units) = match g.split_once('/') {
                Some((g, u)) => (g, u.to_string()),
                None => (*g, "mV".to_string()),
            };
            let (g, baseline) = match g.split_once('(') {
                Some((g, b)) => {
                    let b = b
                        .strip_suffix(')')
                        .and_then(|b| b.parse::<f64>().ok())
                        .ok_or_else(|| bad(format!("bad baseline in {:?}", fields[2])))?;
                    (g, Some(b))
                }
                None => (g, None),
            };
            let gain: f64 = g
                .parse()
                .map_err(|_| bad(format!("gain {g:?} is not a number")))?;
            (gain, baseline, units)
        }
        None => (0.0, None, "mV".to_string()),
    };
    // A zero gain means "uncalibrated"; WFDB then uses the default of 200 units per mV.
    let gain = if gain == 0.0 { 200.0 } else { gain };
    if !gain.is_finite() || gain < 0.0 {
        return Err(bad(format!("gain {gain} is not positive")));
    }
    let adc_zero = match fields.get(4) {
        Some(z) => z
            .parse::<f64>()
            .map_err(|_| bad(format!("ADC zero {z:?} is not a number")))?,
        None => 0.0,
    };
    let description = fields.get(8..).map(|d| d.join(" ")).unwrap_or_default();
    if description.is_empty() {
        return Err(bad("no lead name (description field)".into()));
    }
    Ok(SignalSpec {
        file,
        format,
        byte_offset,
        gain,
        baseline: explicit_baseline.unwrap_or(adc_zero),
        units,
        description,
    })
}

fn unit_to_mv(unit: &str) -> Option<f64> {
    match unit.to_ascii_lowercase().as_str() {
        "mv" => Some(1.0),
        "uv" | "µv" | "μv" => Some(1e-3),
        "v" => Some(1e3),
        _ => None,
    }
}

/// The number of whole samples in `bytes` of a signal file in `format`.
///
/// # Errors
/// A format-16 file cut in the middle of a sample.
fn sample_count(bytes: &[u8], format: u16, path: &Path) -> Result<usize> {
    match format {
        16 => {
            if !bytes.len().is_multiple_of(2) {
                return Err(Error::format(
                    path,
                    "truncated: odd number of bytes for format 16",
                ));
            }
            Ok(bytes.len() / 2)
        }
        // Two samples per three bytes; a trailing pair of bytes carries one last sample.
        212 => Ok(bytes.len() / 3 * 2 + usize::from(bytes.len() % 3 == 2)),
        80 => Ok(bytes.len()),
        other => Err(Error::format(
            path,
            format!("signal format {other} is not supported"),
        )),
    }
}

/// Digital sample `i` (frame-interleaved numbering) of a signal file in `format`, decoded in
/// place so that no wider copy of the file is ever held; `None` marks the format's
/// invalid-sample code. `i` must be below [`sample_count`].
fn sample_at(bytes: &[u8], format: u16, i: usize) -> Option<i32> {
    match format {
        16 => {
            let v = i16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            (v != i16::MIN).then_some(v as i32)
        }
        212 => {
            let at = i / 2 * 3;
            let (b0, b1) = (bytes[at] as i32, bytes[at + 1] as i32);
            let v = if i.is_multiple_of(2) {
                b0 | ((b1 & 0x0F) << 8)
            } else {
                bytes[at + 2] as i32 | ((b1 & 0xF0) << 4)
            };
            let v = if v >= 0x800 { v - 0x1000 } else { v };
            (v != -2048).then_some(v)
        }
        _ => {
            let v = bytes[i] as i32 - 128;
            (v != -128).then_some(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_212_packs_two_samples_in_three_bytes() {
        // 0x123 and -1 (0xFFF): byte0 = 0x23, byte1 = 0xF1, byte2 = 0xFF.
        let decode = |bytes: &[u8]| {
            let n = sample_count(bytes, 212, Path::new("x.dat")).unwrap();
            (0..n).map(|i| sample_at(bytes, 212, i)).collect::<Vec<_>>()
        };
        assert_eq!(decode(&[0x23, 0xF1, 0xFF]), vec![Some(0x123), Some(-1)]);
        assert_eq!(
            decode(&[0x00, 0x08, 0x00]),
            vec![None, Some(0)],
            "-2048 is the invalid code"
        );
        // A trailing pair of bytes holds one more sample; a lone byte none.
        assert_eq!(decode(&[0x23, 0xF1, 0xFF, 0x05, 0x00]).len(), 3);
        assert_eq!(decode(&[0x23, 0xF1, 0xFF, 0x05]).len(), 2);
        assert!(sample_count(&[0; 3], 16, Path::new("x.dat")).is_err());
    }

    #[test]
    fn signal_lines_parse() {
        let s = parse_signal(
            "rec.dat 16+24 1000.5(-3)/uV 16 0 -115 13047 0 aVR",
            Path::new("r.hea"),
            0,
        )
        .unwrap();
        assert_eq!(s.format, 16);
        assert_eq!(s.byte_offset, 24);
        assert_eq!(s.gain, 1000.5);
        assert_eq!(s.baseline, -3.0);
        assert_eq!(s.units, "uV");
        assert_eq!(s.description, "aVR");
        let s = parse_signal("rec.dat 212 200 12 7 0 0 0 V1", Path::new("r.hea"), 0).unwrap();
        assert_eq!(s.baseline, 7.0, "baseline defaults to ADC zero");
        assert!(parse_signal("rec.dat 311 200 12 0 0 0 0 I", Path::new("r.hea"), 0).is_err());
    }
}
