//! Strict CSV reading shared by the tables: a quote left open at the end of the file and a
//! record of another width than the header are errors naming the file and line.

use std::path::Path;

use super::Eid;
use crate::{Error, Result};
use mmcl_core::files::open_regular;

/// A CSV table read strictly, so that a malformed file is an error rather than silently shifted
/// labels: a quote left open at end of file (which would swallow every later row into one
/// cell) is found by a first pass over the bytes, and a record with another number of fields
/// than the header is an error naming its line.
pub(super) struct StrictCsv<'p> {
    path: &'p Path,
    reader: csv::Reader<std::io::BufReader<std::fs::File>>,
    /// Column names.
    pub(super) headers: csv::StringRecord,
    record: csv::StringRecord,
    delimiter: u8,
}

impl<'p> StrictCsv<'p> {
    /// Opens `path` after checking its quotes, and reads the header row. The delimiter is the
    /// header's: `,`, or `;` (spreadsheets in locales with a decimal comma) or a tab (UK
    /// Biobank's `ukbconv` `txt` and `r` outputs) when the header has more of them. Column names
    /// in the R layout of `ukbconv` (`f.eid`, `f.24100.2.0`) read as their CSV names (`eid`,
    /// `24100-2.0`).
    pub(super) fn open(path: &'p Path) -> Result<Self> {
        let delimiter = sniff_delimiter(path)?;
        check_quotes(path, delimiter)?;
        let (file, _) = open_regular(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(std::io::BufReader::new(file));
        let headers: csv::StringRecord = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(csv_column_name)
            .collect();
        Ok(Self {
            path,
            reader,
            headers,
            record: csv::StringRecord::new(),
            delimiter,
        })
    }

    /// Whether numbers may carry a decimal comma (`1,5`): where the delimiter is not the comma.
    pub(super) fn decimal_comma(&self) -> bool {
        self.delimiter != b','
    }

    /// The column named `name` (any case).
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
    }

    /// The next record and the line it starts on; `None` at the end of the file.
    pub(super) fn next_record(&mut self) -> Result<Option<(u64, &csv::StringRecord)>> {
        let more = self
            .reader
            .read_record(&mut self.record)
            .map_err(|e| csv_error(self.path, e))?;
        if !more {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, csv::Position::line);
        Ok(Some((line, &self.record)))
    }
}

/// A CSV parser error naming the file, and the line for a record of the wrong width.
fn csv_error(path: &Path, e: csv::Error) -> Error {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => Error::format(
            path,
            format!(
                "line {}: {len} field(s), the header has {expected_len} (a stray delimiter or \
                 quote?)",
                pos.as_ref().map_or(0, csv::Position::line)
            ),
        ),
        _ => Error::Csv {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// The UK Biobank CSV name of a column named in `ukbconv`'s R layout (`f.eid` → `eid`,
/// `f.24100.2.0` → `24100-2.0`); other names unchanged.
fn csv_column_name(name: &str) -> String {
    if name == "f.eid" {
        return "eid".to_string();
    }
    let parts: Vec<&str> = name
        .strip_prefix("f.")
        .map_or(Vec::new(), |r| r.split('.').collect());
    match parts.as_slice() {
        [field, instance, array]
            if parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            format!("{field}-{instance}.{array}")
        }
        _ => name.to_string(),
    }
}

/// How far into a file the header line is looked for.
const HEADER_SCAN_BYTES: u64 = 1 << 20;

/// The delimiter of `path`'s header line: `;` or tab where the line has more of them (outside
/// quotes) than commas, else `,`.
fn sniff_delimiter(path: &Path) -> Result<u8> {
    let (file, _) = open_regular(path)?;
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, HEADER_SCAN_BYTES), &mut head)
        .map_err(|e| Error::io(path, e))?;
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &b in head.iter().take_while(|&&b| b != b'\n' && b != b'\r') {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(c) = counts.iter_mut().find(|(d, _)| *d == b) {
            c.1 += 1;
        }
    }
    // The first of the most frequent: a comma on a tie or a one-column header.
    let best = counts
        .iter()
        .fold(counts[0], |best, &c| if c.1 > best.1 { c } else { best });
    Ok(best.0)
}

/// Scans `path` with the quoting rules of the `csv` parser (a quote opens a quoted field only
/// as the first character of a field; `""` inside it is a literal quote) and refuses a quote
/// still open at the end of the file, naming the line where it opened.
fn check_quotes(path: &Path, delimiter: u8) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    // Only regular files: a FIFO or device would block or never end.
    let (file, _) = open_regular(path)?;
    let mut reader = std::io::BufReader::new(file);
    let (mut state, mut line, mut opened) = (State::FieldStart, 1u64, 0u64);
    let mut first = true;
    loop {
        let buf = std::io::BufRead::fill_buf(&mut reader).map_err(|e| Error::io(path, e))?;
        if buf.is_empty() {
            break;
        }
        let mut bytes = buf;
        // The parser skips a UTF-8 byte-order mark at the start; so does this scan.
        if first {
            bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
            first = false;
        }
        for &b in bytes {
            let separator = b == delimiter || matches!(b, b'\n' | b'\r');
            state = match (state, b) {
                (State::Quoted, b'"') => State::QuoteInQuoted,
                (State::Quoted, _) => State::Quoted,
                (State::QuoteInQuoted, b'"') => State::Quoted,
                (State::FieldStart, b'"') => {
                    opened = line;
                    State::Quoted
                }
                (_, _) if separator => State::FieldStart,
                (_, _) => State::Unquoted,
            };
            if b == b'\n' {
                line += 1;
            }
        }
        let n = buf.len();
        std::io::BufRead::consume(&mut reader, n);
    }
    if state == State::Quoted {
        return Err(Error::format(
            path,
            format!(
                "line {opened}: a quote opened here is never closed (it would swallow every \
                 later line into one cell)"
            ),
        ));
    }
    Ok(())
}

/// The `eid` in `text`, or an error naming the file and line.
pub(super) fn parse_eid(text: &str, path: &Path, line: u64) -> Result<Eid> {
    text.parse::<Eid>().map_err(|_| {
        Error::format(
            path,
            format!("line {line}: eid {text:?} is not a positive integer"),
        )
    })
}

/// The number in `cell`, also written with a decimal comma (`1,5`) when `decimal_comma`; `None`
/// when it is not a number.
pub(super) fn parse_number(cell: &str, decimal_comma: bool) -> Option<f64> {
    cell.parse::<f64>().ok().or_else(|| {
        let one_comma = cell.matches(',').count() == 1 && !cell.contains('.');
        (decimal_comma && one_comma)
            .then(|| cell.replace(',', "."))
            .and_then(|c| c.parse::<f64>().ok())
    })
}

/// Whether a cell holds a missing value (empty, `NA`, `NaN`, `null`, `none`, any case).
pub(super) fn is_missing(cell: &str) -> bool {
    cell.is_empty()
        || matches!(
            cell.to_ascii_lowercase().as_str(),
            "na" | "nan" | "null" | "none"
        )
}
