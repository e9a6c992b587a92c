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
}

impl<'p> StrictCsv<'p> {
    /// Opens `path` after checking its quotes, and reads the header row.
    pub(super) fn open(path: &'p Path) -> Result<Self> {
        check_quotes(path)?;
        let (file, _) = open_regular(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(std::io::BufReader::new(file));
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        Ok(Self {
            path,
            reader,
            headers,
            record: csv::StringRecord::new(),
        })
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

/// Scans `path` with the quoting rules of the `csv` parser (a quote opens a quoted field only
/// as the first character of a field; `""` inside it is a literal quote) and refuses a quote
/// still open at the end of the file, naming the line where it opened.
fn check_quotes(path: &Path) -> Result<()> {
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
            let separator = matches!(b, b',' | b'\n' | b'\r');
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

/// Whether a cell holds a missing value (empty, `NA`, `NaN`, `null`, `none`, any case).
pub(super) fn is_missing(cell: &str) -> bool {
    cell.is_empty()
        || matches!(
            cell.to_ascii_lowercase().as_str(),
            "na" | "nan" | "null" | "none"
        )
}
