//! HDF5 arrays of ECGs in the CODE-15 layout (also used for PTB-XL-derived sets), read through
//! the system HDF5 library (cargo feature `hdf5`, crate `hdf5-metno`) in a child process, so
//! that the library crashing on a corrupt file is an error, not the end of the caller
//! (`child.rs`).
//!
//! The layout read here:
//!
//! ```text
//! /tracings   float32 or float64 (integers too), shape (N, T, 12): N recordings of T samples,
//!             leads on the last axis in canonical order I, II, III, aVR, aVL, aVF, V1–V6;
//!             contiguous or chunked (gzip and shuffle filters)
//!   @units          optional: "mV" (default), "uV", "nV" or "V"
//!   @sampling_rate  optional (or @fs, @sample_rate, @sampling_frequency): Hz
//! /exam_id    optional, integers or strings, shape (N): record identifiers
//! @units, @sampling_rate …  optional on the file (root group); the dataset's win
//! ```
//!
//! **Unit.** CODE-15 stores no unit and its documentation contradicts itself: the authors'
//! README calls the values "at the scale 1e-4 V" and in the same sentence says that signals in
//! V "should be multiplied by 1000", i.e. that the values are millivolts. Millivolts are
//! assumed (the multiplier the authors apply, and the amplitude a 12-lead ECG has in mV);
//! a `units` attribute overrides the assumption.
//!
//! **Rate.** CODE-15 stores none (it is 400 Hz); the caller's rate is used unless the dataset
//! or file carries one of the rate attributes.
//!
//! Recordings are named by `exam_id` when present, else `<stem>_<i>`. Records are read in
//! blocks aligned to the dataset's chunks, so a file costs its output plus one block.

use std::ops::Range;
use std::path::Path;

use hdf5_metno::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5_metno::{Attribute, Dataset, File, Location};
use mmcl_core::files::open_regular;

use super::{Ecg, MAX_SAMPLES_PER_LEAD, NUM_LEADS, NamedEcg, check_sample_rate, file_stem};
use crate::{Error, Result};

mod child;

use child::{Answer, Header, Limits, MAX_ID_BYTES, Message};

/// The most values (N × T × 12) one file may hold (2³⁰, 4 GiB as f32).
///
/// A CODE-15 part (about 20 000 exams × 4096 × 12) holds 10⁹; larger files can still be read a
/// range of records at a time through [`Hdf5Tracings::read`].
pub const MAX_HDF5_VALUES: u64 = 1 << 30;

/// The largest expansion a gzip-compressed dataset can have over the file that holds it.
///
/// Deflate cannot compress better than about 1032:1, so a file that declares more data than
/// this times its size is corrupt or hostile, and is refused before anything is read.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The most bytes of `tracings` read at once, as f64 (whole chunks of records where they fit,
/// one record at least).
const BLOCK_BYTES: u64 = 16 << 20;

/// The attributes that may give the sampling rate in Hz, in order of preference.
const RATE_ATTRIBUTES: [&str; 4] = ["sampling_rate", "fs", "sample_rate", "sampling_frequency"];

/// The attributes that may give the unit of the values.
const UNIT_ATTRIBUTES: [&str; 2] = ["units", "unit"];

/// An opened `tracings` dataset, checked, with its rate, unit and record names.
///
/// The HDF5 library itself runs in a child process for each call (see `child.rs`: it crashes
/// on some corrupt files); this handle holds what the file says, not the library's handles.
#[derive(Debug)]
pub struct Hdf5Tracings {
    path: std::path::PathBuf,
    header: Header,
}

/// Reads every recording of an HDF5 file in the CODE-15 layout (see the module docs),
/// assuming `sample_rate` Hz unless the file states its rate.
///
/// # Errors
/// See [`Hdf5Tracings::open`] and [`Hdf5Tracings::read`].
pub fn read_hdf5(path: &Path, sample_rate: f64) -> Result<Vec<NamedEcg>> {
    let tracings = Hdf5Tracings::open(path, sample_rate)?;
    tracings.read(0..tracings.len())
}

/// What crosses the pipe from the child at most: one record, and one identifier per record.
const LIMITS: Limits = Limits {
    record_values: MAX_SAMPLES_PER_LEAD * NUM_LEADS,
    ids: MAX_HDF5_VALUES as usize,
};

impl Hdf5Tracings {
    /// Opens `path` and checks its `tracings` dataset, rate, unit and `exam_id` without reading
    /// the samples; `sample_rate` (Hz) applies when the file states none.
    ///
    /// # Errors
    /// A format error naming the file: not a regular file, not HDF5 (or truncated), no
    /// `tracings` dataset, a rank other than 3, a last axis other than 12 leads, no records or
    /// samples, more than [`MAX_SAMPLES_PER_LEAD`] samples or [`MAX_HDF5_VALUES`] values, more
    /// data declared than the file can hold, a non-numeric type, a filter other than gzip,
    /// shuffle or Fletcher-32, an unknown unit, a rate outside the plausible range, an
    /// `exam_id` of another length or type, or a file on which the HDF5 library crashes.
    pub fn open(path: &Path, sample_rate: f64) -> Result<Self> {
        // Refused here, before a child is started: what is not a regular file, or is empty.
        let (_, file_size) = open_regular(path)?;
        if file_size == 0 {
            return Err(Error::format(path, "the file is empty"));
        }
        let messages = child::run(path, LIMITS, |answer| {
            let opened = Opened::open(path, sample_rate)?;
            answer
                .send(&Message::Header(opened.header))
                .map_err(|e| Error::io(path, e))
        })?;
        match <[Message; 1]>::try_from(messages) {
            Ok([Message::Header(header)]) if header.ids.len() == header.records => Ok(Self {
                path: path.to_path_buf(),
                header,
            }),
            _ => Err(Error::format(
                path,
                "the HDF5 reader sent no description of the file",
            )),
        }
    }

    /// Number of recordings (N).
    pub fn len(&self) -> usize {
        self.header.records
    }

    /// Whether the file holds no recordings (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.header.records == 0
    }

    /// Samples per lead (T).
    pub fn samples(&self) -> usize {
        self.header.samples
    }

    /// The sampling rate in Hz (from the file, else the caller's).
    pub fn sample_rate(&self) -> f64 {
        self.header.sample_rate
    }

    /// The identifiers of the recordings (`exam_id`, else `<stem>_<i>`).
    pub fn ids(&self) -> &[String] {
        &self.header.ids
    }

    /// Reads the recordings `range`, in mV and canonical lead order.
    ///
    /// # Errors
    /// A range beyond the records, or the HDF5 library failing to read (a truncated file or a
    /// corrupt chunk) or crashing, as a format error naming the file.
    pub fn read(&self, range: Range<usize>) -> Result<Vec<NamedEcg>> {
        let path = self.path.as_path();
        let header = &self.header;
        if range.start > range.end || range.end > header.records {
            return Err(Error::format(
                path,
                format!(
                    "records {}..{} requested but \"tracings\" holds {}",
                    range.start, range.end, header.records
                ),
            ));
        }
        let messages = child::run(path, LIMITS, |answer| {
            let opened = Opened::open(path, header.sample_rate)?;
            if opened.header != *header {
                return Err(Error::format(path, "the file changed since it was opened"));
            }
            opened.send_records(range.clone(), answer)
        })?;
        let per = header.samples * NUM_LEADS;
        super::check_count(path, messages.len(), range.len(), || {
            format!(
                "the HDF5 reader sent {} of the records {}..{}",
                messages.len(),
                range.start,
                range.end
            )
        })?;
        messages
            .into_iter()
            .zip(&header.ids[range])
            .map(|(message, id)| match message {
                Message::Record(data) if data.len() == per => Ok(NamedEcg {
                    id: id.clone(),
                    ecg: Ecg::new(data, header.samples, header.sample_rate)
                        .map_err(|e| super::in_file(path, e))?,
                }),
                _ => Err(Error::format(
                    path,
                    "the HDF5 reader sent a malformed record",
                )),
            })
            .collect()
    }
}

/// The file as the HDF5 library sees it (in the child).
struct Opened<'a> {
    path: &'a Path,
    // Held so that the file stays open, whatever the library's close policy.
    _file: File,
    dataset: Dataset,
    header: Header,
}

impl<'a> Opened<'a> {
    /// Opens and checks the file (see [`Hdf5Tracings::open`]).
    fn open(path: &'a Path, sample_rate: f64) -> Result<Self> {
        let bad = |reason: String| Error::format(path, reason);
        let (_, file_size) = open_regular(path)?;
        let file = File::open(path).map_err(|e| bad(format!("not a readable HDF5 file: {e}")))?;
        if !file.link_exists("tracings") {
            return Err(bad("no dataset \"tracings\" (the CODE-15 layout)".into()));
        }
        let (dataset, shape) = dataset_and_shape(&file, "tracings", path)?;
        let (records, samples) = match shape.as_slice() {
            [n, t, NUM_LEADS] => (*n, *t),
            [_, NUM_LEADS, t] => {
                return Err(bad(format!(
                    "\"tracings\" has shape {shape:?}: the leads must be on the last axis \
                     (N, T, 12), not the middle one (N, 12, T = {t})"
                )));
            }
            [_, _, l] => {
                return Err(bad(format!(
                    "\"tracings\" has shape {shape:?}: the last axis holds {l} leads, not 12"
                )));
            }
            other => {
                return Err(bad(format!(
                    "\"tracings\" has rank {} (shape {other:?}), expected (N, T, 12)",
                    other.len()
                )));
            }
        };
        if records == 0 || samples == 0 {
            return Err(bad(format!(
                "\"tracings\" of shape {shape:?} holds no samples"
            )));
        }
        if samples > MAX_SAMPLES_PER_LEAD {
            return Err(bad(format!(
                "\"tracings\" has {samples} samples per lead, more than the limit of \
                 {MAX_SAMPLES_PER_LEAD}"
            )));
        }
        let values = (records as u64)
            .checked_mul(samples as u64 * NUM_LEADS as u64)
            .filter(|&v| v <= MAX_HDF5_VALUES)
            .ok_or_else(|| {
                bad(format!(
                    "\"tracings\" of shape {shape:?} holds more than the limit of \
                     {MAX_HDF5_VALUES} values"
                ))
            })?;
        let width = value_width(&dataset, path)?;
        check_storage(&dataset, values * width, file_size, path)?;
        let unit = unit_attribute(&dataset, &file, path)?;
        let to_mv = match unit.as_deref() {
            None => 1.0,
            Some(u) => millivolts_per(u)
                .ok_or_else(|| bad(format!("unsupported unit {u:?} (expected mV, uV, nV or V)")))?,
        };
        let sample_rate = rate_attribute(&dataset, &file, path)?.unwrap_or(sample_rate);
        check_sample_rate(sample_rate).map_err(|e| super::in_file(path, e))?;
        let ids = exam_ids(&file, records, path)?;
        // Whole chunks along N, so that no chunk is decompressed twice; one record at least.
        let chunk_records = dataset
            .chunk()
            .and_then(|c| c.first().copied())
            .unwrap_or(1);
        let per_record = samples as u64 * NUM_LEADS as u64 * 8;
        let fit = (BLOCK_BYTES / per_record).max(1) as usize;
        let block = if chunk_records <= fit {
            (fit / chunk_records.max(1)).max(1) * chunk_records.max(1)
        } else {
            fit
        };
        Ok(Self {
            path,
            _file: file,
            dataset,
            header: Header {
                records,
                samples,
                sample_rate,
                to_mv,
                block,
                ids,
            },
        })
    }

    /// Reads the records `range` a block at a time and sends each one, lead-major, in mV.
    fn send_records(&self, range: Range<usize>, answer: &mut Answer<'_>) -> Result<()> {
        let path = self.path;
        let Header {
            samples: t,
            to_mv,
            block,
            ..
        } = self.header;
        let mut start = range.start;
        while start < range.end {
            let end = range.end.min(start + block);
            let values: ndarray::Array3<f64> =
                self.dataset.read_slice((start..end, .., ..)).map_err(|e| {
                    Error::format(
                        path,
                        format!("cannot read records {start}..{end} of \"tracings\": {e}"),
                    )
                })?;
            // [n, T, 12]; iterated in logical order whatever the array's memory layout.
            for record in values.outer_iter() {
                // Transpose [T, 12] to lead-major [12, T].
                let mut data = vec![0f32; t * NUM_LEADS];
                for (i, &v) in record.iter().enumerate() {
                    data[(i % NUM_LEADS) * t + i / NUM_LEADS] = (v * to_mv) as f32;
                }
                answer
                    .send(&Message::Record(data))
                    .map_err(|e| Error::io(path, e))?;
            }
            start = end;
        }
        Ok(())
    }
}

/// The size in bytes of one stored value of `tracings`, after checking it is numeric.
fn value_width(dataset: &Dataset, path: &Path) -> Result<u64> {
    let descriptor = dataset
        .dtype()
        .and_then(|d| d.to_descriptor())
        .map_err(|e| Error::format(path, format!("unsupported type of \"tracings\": {e}")))?;
    match descriptor {
        TypeDescriptor::Float(size) => Ok(size as u64),
        TypeDescriptor::Integer(size) | TypeDescriptor::Unsigned(size) => Ok(size as u64),
        other => Err(Error::format(
            path,
            format!("\"tracings\" holds {other:?} values, not numbers"),
        )),
    }
}

/// Checks the filters of `tracings` and that the `bytes` it declares can come from a file
/// of `file_size` bytes, before any of it is read.
fn check_storage(dataset: &Dataset, bytes: u64, file_size: u64, path: &Path) -> Result<()> {
    let mut compressed = false;
    for filter in dataset.filters() {
        match filter {
            hdf5_metno::filters::Filter::Deflate(_) => compressed = true,
            hdf5_metno::filters::Filter::Shuffle | hdf5_metno::filters::Filter::Fletcher32 => {}
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "\"tracings\" uses the filter {other:?}; only gzip, shuffle and \
                         Fletcher-32 are read"
                    ),
                ));
            }
        }
    }
    let ratio = if compressed { MAX_DEFLATE_RATIO } else { 1 };
    if bytes > file_size.saturating_mul(ratio) {
        return Err(Error::format(
            path,
            format!(
                "\"tracings\" declares {bytes} bytes of samples but the file has only \
                 {file_size} bytes{} (truncated or corrupt)",
                if compressed {
                    " even at the best gzip ratio"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

/// The first of `names` present on `tracings`, else on the root group.
fn find_attribute(
    dataset: &Location,
    file: &Location,
    names: &[&str],
    path: &Path,
) -> Result<Option<(String, Attribute)>> {
    for location in [dataset, file] {
        let present = location
            .attr_names()
            .map_err(|e| Error::format(path, format!("cannot list attributes: {e}")))?;
        for name in names {
            if present.iter().any(|p| p == name) {
                let attr = location.attr(name).map_err(|e| {
                    Error::format(path, format!("cannot read attribute {name:?}: {e}"))
                })?;
                return Ok(Some((name.to_string(), attr)));
            }
        }
    }
    Ok(None)
}

/// The sampling rate stated by the file, if any.
fn rate_attribute(dataset: &Dataset, file: &File, path: &Path) -> Result<Option<f64>> {
    let Some((name, attr)) = find_attribute(dataset, file, &RATE_ATTRIBUTES, path)? else {
        return Ok(None);
    };
    let rate = match attr.read_scalar::<f64>() {
        Ok(rate) => rate,
        // A rate written as text ("400") is accepted too.
        Err(_) => string_scalar(&attr)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| {
                Error::format(path, format!("attribute {name:?} is not a single number"))
            })?,
    };
    check_sample_rate(rate)
        .map_err(|e| super::in_file(path, e))
        .map(|()| Some(rate))
}

/// The unit stated by the file, if any.
fn unit_attribute(dataset: &Dataset, file: &File, path: &Path) -> Result<Option<String>> {
    let Some((name, attr)) = find_attribute(dataset, file, &UNIT_ATTRIBUTES, path)? else {
        return Ok(None);
    };
    string_scalar(&attr)
        .map(|s| Some(s.trim().to_string()))
        .ok_or_else(|| Error::format(path, format!("attribute {name:?} is not a single string")))
}

/// A scalar string attribute (variable- or fixed-length, ASCII or UTF-8), if it is one.
fn string_scalar(attr: &Attribute) -> Option<String> {
    if !attr.is_scalar() {
        return None;
    }
    fn text<T: hdf5_metno::H5Type + std::fmt::Display>(attr: &Attribute) -> Option<String> {
        attr.read_scalar::<T>().ok().map(|s| s.to_string())
    }
    match attr.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::VarLenUnicode => text::<VarLenUnicode>(attr),
        TypeDescriptor::VarLenAscii => text::<VarLenAscii>(attr),
        // Fixed-length strings convert to a longer fixed length (padded) in their charset.
        TypeDescriptor::FixedAscii(n) if n <= 256 => {
            text::<hdf5_metno::types::FixedAscii<256>>(attr)
        }
        TypeDescriptor::FixedUnicode(n) if n <= 256 => {
            text::<hdf5_metno::types::FixedUnicode<256>>(attr)
        }
        _ => None,
    }
}

/// Millivolts per unit (case-sensitive SI symbols, or the unit's name).
fn millivolts_per(unit: &str) -> Option<f64> {
    match unit {
        "nV" => Some(1e-6),
        "uV" | "µV" | "μV" => Some(1e-3),
        "mV" => Some(1.0),
        "V" => Some(1e3),
        _ => match unit.to_ascii_lowercase().as_str() {
            "nanovolt" | "nanovolts" => Some(1e-6),
            "microvolt" | "microvolts" => Some(1e-3),
            "millivolt" | "millivolts" => Some(1.0),
            "volt" | "volts" => Some(1e3),
            _ => None,
        },
    }
}

/// The dataset `name` of `file` and its shape, or a format error naming `path` when either
/// cannot be read.
fn dataset_and_shape(file: &File, name: &str, path: &Path) -> Result<(Dataset, Vec<usize>)> {
    let bad = |reason: String| Error::format(path, reason);
    let dataset = file
        .dataset(name)
        .map_err(|e| bad(format!("\"{name}\" is not a readable dataset: {e}")))?;
    let shape = dataset
        .get_shape()
        .map_err(|e| bad(format!("cannot read the shape of \"{name}\": {e}")))?;
    Ok((dataset, shape))
}

/// The record identifiers: `exam_id` (N integers or strings) when present, else `<stem>_<i>`.
fn exam_ids(file: &File, records: usize, path: &Path) -> Result<Vec<String>> {
    let bad = |reason: String| Error::format(path, reason);
    if !file.link_exists("exam_id") {
        let stem = file_stem(path);
        return Ok((0..records).map(|i| format!("{stem}_{i}")).collect());
    }
    let (ids, shape) = dataset_and_shape(file, "exam_id", path)?;
    if shape != [records] {
        return Err(bad(format!(
            "\"exam_id\" has shape {shape:?} but \"tracings\" holds {records} records"
        )));
    }
    let descriptor = ids
        .dtype()
        .and_then(|d| d.to_descriptor())
        .map_err(|e| bad(format!("unsupported type of \"exam_id\": {e}")))?;
    let unreadable = |e: hdf5_metno::Error| bad(format!("cannot read \"exam_id\": {e}"));
    // `records` is bounded by MAX_HDF5_VALUES, so these reads are too.
    let read = match descriptor {
        TypeDescriptor::Integer(_) => read_as_text::<i64>,
        TypeDescriptor::Unsigned(_) => read_as_text::<u64>,
        TypeDescriptor::VarLenUnicode => read_as_text::<VarLenUnicode>,
        TypeDescriptor::VarLenAscii => read_as_text::<VarLenAscii>,
        other => {
            return Err(bad(format!(
                "\"exam_id\" holds {other:?} values, not integers or strings"
            )));
        }
    };
    let ids = read(&ids).map_err(unreadable)?;
    if let Some(long) = ids.iter().find(|id| id.len() > MAX_ID_BYTES) {
        return Err(bad(format!(
            "an \"exam_id\" of {} bytes, more than the limit of {MAX_ID_BYTES}",
            long.len()
        )));
    }
    Ok(ids)
}

/// Every value of `dataset`, read as `T`, as text.
fn read_as_text<T: hdf5_metno::H5Type + std::fmt::Display>(
    dataset: &Dataset,
) -> hdf5_metno::Result<Vec<String>> {
    Ok(dataset.read_raw::<T>()?.iter().map(T::to_string).collect())
}
