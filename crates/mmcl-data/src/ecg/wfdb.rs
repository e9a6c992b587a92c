//! WFDB records (`.hea` header + signal file), as PTB-XL and MIMIC-IV-ECG ship them.
//!
//! Single-segment records with signal formats 16 (16-bit little-endian two's complement),
//! 212 (two 12-bit samples packed in three bytes) and 80 (8-bit offset binary) are read;
//! signals may share a file (frame-interleaved) or live in several files. Digital values become
//! physical ones as `(d − baseline) / gain` in the signal's units, converted to mV; the
//! formats' "invalid sample" codes become NaN (which the preprocessing maps to 0).

use std::path::{Path, PathBuf};

use super::{Ecg, read_file};
use crate::{Error, Result};

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

/// Reads a WFDB record from its header file (`*.hea`); the signal files are looked up beside it.
///
/// # Errors
/// A clear error naming the file: unreadable or empty header, malformed lines, unsupported
/// format or multi-segment record, a signal file shorter than the header says, a missing or
/// repeated lead.
pub fn read_record(header: &Path) -> Result<WfdbRecord> {
    let text = read_file(header)?;
    let text = String::from_utf8_lossy(&text);
    let (name, n_sig, fs, n_samples, signals, comments) = parse_header(&text, header)?;
    if signals.len() != n_sig {
        return Err(Error::format(
            header,
            format!(
                "the header announces {n_sig} signals but describes {}",
                signals.len()
            ),
        ));
    }
    let dir = header.parent().unwrap_or(Path::new("."));
    // Signals sharing a file are interleaved frame by frame, in header order.
    let mut files: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, s) in signals.iter().enumerate() {
        match files.iter_mut().find(|(f, _)| *f == s.file) {
            Some((_, members)) => members.push(i),
            None => files.push((s.file.clone(), vec![i])),
        }
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
        let bytes = read_file(&path)?;
        let bytes = bytes.get(first.byte_offset as usize..).unwrap_or(&[]);
        let digital = decode(bytes, first.format, &path)?;
        let per_frame = members.len();
        let available = digital.len() / per_frame;
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
                .map(|t| match digital[t * per_frame + k] {
                    Some(d) => ((d as f64 - spec.baseline) * scale) as f32,
                    None => f32::NAN,
                })
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

type Header = (
    String,
    usize,
    f64,
    Option<usize>,
    Vec<SignalSpec>,
    Vec<String>,
);

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
    let n_samples = match fields.get(3) {
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| bad(format!("sample count {n:?} is not a number")))?,
        ),
        None => None,
    };
    let signals = signal_lines
        .iter()
        .enumerate()
        .map(|(i, line)| parse_signal(line, path, i))
        .collect::<Result<Vec<_>>>()?;
    Ok((name, n_sig, fs, n_samples, signals, comments))
}

fn parse_signal(line: &str, path: &Path, index: usize) -> Result<SignalSpec> {
    let bad = |what: String| Error::format(path, format!("signal line {}: {what}", index + 1));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let file = fields[0].to_string();
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

/// Decodes a signal file into digital samples (frame-interleaved); `None` marks the format's
/// invalid-sample code.
fn decode(bytes: &[u8], format: u16, path: &PathBuf) -> Result<Vec<Option<i32>>> {
    match format {
        16 => {
            if !bytes.len().is_multiple_of(2) {
                return Err(Error::format(
                    path,
                    "truncated: odd number of bytes for format 16",
                ));
            }
            Ok(bytes
                .chunks_exact(2)
                .map(|b| {
                    let v = i16::from_le_bytes([b[0], b[1]]);
                    (v != i16::MIN).then_some(v as i32)
                })
                .collect())
        }
        212 => {
            let mut out = Vec::with_capacity(bytes.len() * 2 / 3 + 1);
            let twelve = |v: i32| {
                let v = if v >= 0x800 { v - 0x1000 } else { v };
                (v != -2048).then_some(v)
            };
            let mut chunks = bytes.chunks_exact(3);
            for c in &mut chunks {
                let (b0, b1, b2) = (c[0] as i32, c[1] as i32, c[2] as i32);
                out.push(twelve(b0 | ((b1 & 0x0F) << 8)));
                out.push(twelve(b2 | ((b1 & 0xF0) << 4)));
            }
            // A trailing pair of bytes carries one last sample (odd total count).
            let rest = chunks.remainder();
            if rest.len() == 2 {
                out.push(twelve(rest[0] as i32 | ((rest[1] as i32 & 0x0F) << 8)));
            }
            Ok(out)
        }
        80 => Ok(bytes
            .iter()
            .map(|&b| {
                let v = b as i32 - 128;
                (v != -128).then_some(v)
            })
            .collect()),
        other => Err(Error::format(
            path,
            format!("signal format {other} is not supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_212_packs_two_samples_in_three_bytes() {
        // 0x123 and -1 (0xFFF): byte0 = 0x23, byte1 = 0xF1, byte2 = 0xFF.
        let v = decode(&[0x23, 0xF1, 0xFF], 212, &PathBuf::from("x.dat")).unwrap();
        assert_eq!(v, vec![Some(0x123), Some(-1)]);
        let v = decode(&[0x00, 0x08, 0x00], 212, &PathBuf::from("x.dat")).unwrap();
        assert_eq!(v, vec![None, Some(0)], "-2048 is the invalid code");
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
