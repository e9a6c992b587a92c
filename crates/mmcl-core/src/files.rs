//! Bounded reads of input files: every reader of the workspace opens its file here, so that
//! devices, FIFOs and directories are refused before they are opened, and no length taken from a
//! file's header allocates more than the bytes that exist.

use std::path::Path;

use crate::{Error, Result};

/// Opens `path` for reading only when it is a regular file (after following links), and
/// returns it with its length.
///
/// Devices (`/dev/zero`), FIFOs and directories are refused from their metadata before they
/// are opened (opening a FIFO would block); the opened handle is checked again in case the
/// path changed in between. Every bounded reader of this module starts here.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let not_regular = || Error::format(path, "not a regular file");
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes; `what` says what the file is in the
/// error.
///
/// # Errors
/// A non-regular or unreadable file, or one larger than `limit`.
pub fn read_regular_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(Error::format(
            path,
            format!("{what} of {size} bytes is larger than the limit of {limit} bytes"),
        ));
    }
    read_checked(file, size, path, 0, size, what)
}

/// Reads a whole regular text file (UTF-8) of at most `limit` bytes: [`read_regular_bounded`]
/// for the JSON files the tools read back (run logs, metrics, results), so that a device, a
/// FIFO or a huge file given in their place is refused instead of read without end.
///
/// # Errors
/// As [`read_regular_bounded`], and a file that is not UTF-8.
pub fn read_text_bounded(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read_regular_bounded(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "{what} is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a whole regular JSON file of at most `limit` bytes into `T` ([`read_regular_bounded`],
/// then the parser; `what` says what the file is in the error): how the tools read back their
/// metrics, results, cache indexes and stage markers.
///
/// # Errors
/// As [`read_regular_bounded`], and [`Error::Json`] when the content does not parse into `T`.
pub fn read_json_bounded<T: serde::de::DeserializeOwned>(
    path: &Path,
    limit: u64,
    what: &str,
) -> Result<T> {
    let bytes = read_regular_bounded(path, limit, what)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::json(path, e))
}

/// The most a JSON file the tools read back (a run log, a metrics or results file) may hold:
/// far above what a run writes (a run log gains a few hundred bytes per epoch).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads `len` bytes at `offset` of a regular file opened by [`open_regular`] (`size` is its
/// length), after checking against that size that they are there, so that a length taken
/// from a header never allocates more than the data that exists. `what` says what the bytes
/// are in the error.
///
/// # Errors
/// An unreadable file, or one shorter than `offset + len` (reported as truncated).
pub fn read_checked(
    mut file: std::fs::File,
    size: u64,
    path: &Path,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::format(
            path,
            format!(
                "truncated: {what} needs {len} bytes from byte {offset} but the file holds {size}"
            ),
        ));
    }
    let capacity = usize::try_from(len)
        .map_err(|_| Error::format(path, format!("{what} of {len} bytes is too large")))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(capacity);
    // `take` bounds the read even if the file grows meanwhile.
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() != capacity {
        return Err(Error::format(
            path,
            format!("truncated: {what} needs {len} bytes but the file ended early"),
        ));
    }
    Ok(bytes)
}
