//! NumPy `.npy` arrays: checked reading (C or Fortran order; float32/64 or integer, returned as
//! float32) and atomic writing of float32 arrays.
//!
//! Every `.npy` read in the workspace (ECGs, embeddings, labels, predictions) goes through
//! [`check_npy`] (or [`open_npy`] for a file): it validates the magic, the version, the header
//! length, the shape and the data size against the bytes that actually exist *before* npyz
//! parses anything or any buffer is sized from the file, so that a hostile header can neither
//! make the process allocate what the file does not hold nor overflow a size computation.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, TypeStr};

use crate::files::open_regular;
use crate::{Error, Result};

/// The longest `.npy` header text accepted, in bytes.
///
/// This is NumPy's own default `max_header_size` (`np.load` refuses longer headers for the
/// same reason): a plain array's header is about 120 bytes, and the bound keeps npyz's header
/// parser, whose time grows quickly with the text, fast.
pub const MAX_HEADER_LEN: usize = 10_000;

/// The deepest bracket nesting accepted in a header. A plain array needs two levels (the
/// dict and the shape tuple), a structured dtype four; npyz's parser takes time exponential
/// in the nesting (20 levels take seconds), so deeper headers are refused before parsing.
const MAX_HEADER_NESTING: usize = 4;

/// The layout of a `.npy` whose header was checked against the bytes available.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyLayout {
    /// Dimensions, as written in the header.
    pub shape: Vec<usize>,
    /// The element type (a plain, non-object dtype).
    pub dtype: TypeStr,
    /// Memory order of the data.
    pub order: Order,
    /// Number of elements: the product of `shape`, known not to overflow.
    pub len: usize,
    /// Bytes of one element (at least 1).
    pub item_size: usize,
    /// Bytes before the data (magic, version, header length and header).
    pub header_len: u64,
    /// Bytes of data: `len × item_size`, known to be present after the header.
    pub data_len: u64,
}

/// A `.npy` stream positioned at its data, whose header [`check_npy`] validated.
pub struct CheckedNpy<R: Read> {
    layout: NpyLayout,
    npy: NpyFile<R>,
}

impl<R: Read> CheckedNpy<R> {
    /// The checked layout.
    pub fn layout(&self) -> &NpyLayout {
        &self.layout
    }

    /// The npyz view, for decoding elements (at most [`NpyLayout::data_len`] bytes are read).
    pub fn into_npy(self) -> NpyFile<R> {
        self.npy
    }

    /// The layout and the raw reader, positioned at the first data byte.
    pub fn into_parts(self) -> (NpyLayout, R) {
        (self.layout, self.npy.into_inner())
    }
}

/// Opens a `.npy` file and checks its header against the file's length (see [`check_npy`]).
///
/// # Errors
/// A missing, unreadable or non-regular file; anything [`check_npy`] refuses.
pub fn open_npy(path: &Path) -> Result<CheckedNpy<BufReader<File>>> {
    let (file, size) = open_regular(path)?;
    check_npy(BufReader::new(file), size, path, "")
}

/// Reads and checks the header of a `.npy` stream of `available` bytes (a file's length, or
/// an archive member's declared size), leaving `reader` at the first data byte.
///
/// Checked, before npyz parses the header or anything is allocated from it: the magic and
/// version; a header length of at most [`MAX_HEADER_LEN`] that fits in `available`; a
/// bracket nesting of at most four levels. Then: a plain, non-object dtype of non-zero size;
/// the element count (product of the shape) and the data size computed with checked
/// arithmetic; the data fitting in what remains of `available`. `what` prefixes messages (an
/// archive member's name); every error names `path`.
///
/// # Errors
/// [`Error::Format`] or [`Error::Io`] naming `path`.
pub fn check_npy<R: Read>(
    mut reader: R,
    available: u64,
    path: &Path,
    what: &str,
) -> Result<CheckedNpy<R>> {
    let bad = |reason: String| Error::format(path, format!("{what}{reason}"));
    if available == 0 {
        return Err(bad("the file is empty".into()));
    }
    let read_err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("truncated: the file ends inside the .npy header".into())
        } else {
            Error::format(path, format!("{what}cannot read the .npy header: {e}"))
        }
    };
    let mut preamble = [0u8; 12];
    reader
        .read_exact(&mut preamble[..8])
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                bad("not a readable .npy file (too short for the .npy magic string)".into())
            }
            _ => read_err(e),
        })?;
    if &preamble[..6] != b"\x93NUMPY" {
        return Err(bad(
            "not a readable .npy file (it does not start with the .npy magic string)".into(),
        ));
    }
    let preamble_len = match (preamble[6], preamble[7]) {
        (1, 0) => 10,
        (2, 0) | (3, 0) => 12,
        (major, minor) => {
            return Err(bad(format!(
                "unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)"
            )));
        }
    };
    reader
        .read_exact(&mut preamble[8..preamble_len])
        .map_err(read_err)?;
    let header_text_len = if preamble_len == 10 {
        u64::from(u16::from_le_bytes([preamble[8], preamble[9]]))
    } else {
        u64::from(u32::from_le_bytes([
            preamble[8],
            preamble[9],
            preamble[10],
            preamble[11],
        ]))
    };
    // Cannot overflow: a u32 plus 12.
    let header_len = preamble_len as u64 + header_text_len;
    if header_len > available {
        return Err(bad(format!(
            "truncated or corrupt: the header announces {header_text_len} bytes but the file \
             holds {available} in all"
        )));
    }
    if header_text_len > MAX_HEADER_LEN as u64 {
        return Err(bad(format!(
            "the .npy header announces {header_text_len} bytes, more than the {MAX_HEADER_LEN} \
             a plain array needs"
        )));
    }
    // Both bounded by MAX_HEADER_LEN above.
    let mut header = Vec::with_capacity(preamble_len + header_text_len as usize);
    header.extend_from_slice(&preamble[..preamble_len]);
    (&mut reader)
        .take(header_text_len)
        .read_to_end(&mut header)
        .map_err(read_err)?;
    if header.len() as u64 != header_len {
        return Err(bad("truncated: the file ends inside the .npy header".into()));
    }
    let nesting = bracket_nesting(&header[preamble_len..]);
    if nesting > MAX_HEADER_NESTING {
        return Err(bad(format!(
            "corrupt .npy header: brackets nested {nesting} deep (a plain array needs 2)"
        )));
    }
    // npyz multiplies the shape's dimensions unchecked (a panic in debug builds, a wrapped size
    // in release ones), so a shape whose size overflows is refused before it sees the header.
    if let Some(dims) = announced_shape_overflow(&header[preamble_len..]) {
        return Err(bad(format!(
            "corrupt .npy header: shape ({dims}) is too large"
        )));
    }
    let parsed = NpyHeader::from_reader(&header[..])
        .map_err(|e| bad(format!("not a readable .npy file: {e}")))?;
    let dtype = match parsed.dtype() {
        DType::Plain(ts) if ts.type_char() == TypeChar::Object => {
            return Err(bad(
                "object arrays (pickled Python objects) are not supported".into(),
            ));
        }
        DType::Plain(ts) => ts,
        _ => return Err(bad("structured arrays are not supported".into())),
    };
    let item_size = match dtype.num_bytes() {
        Some(size) if size > 0 => size,
        _ => return Err(bad(format!("unsupported dtype {dtype} (no element size)"))),
    };
    let too_large = || {
        bad(format!(
            "corrupt .npy header: shape {:?} is too large",
            parsed.shape()
        ))
    };
    let shape = parsed
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| too_large()))
        .collect::<Result<Vec<usize>>>()?;
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_large)?;
    let data_len = u64::try_from(len)
        .ok()
        .and_then(|n| n.checked_mul(item_size as u64))
        .ok_or_else(too_large)?;
    let remaining = available - header_len;
    if data_len > remaining {
        return Err(bad(format!(
            "truncated: shape {shape:?} of {dtype} needs {data_len} bytes of data, the file \
             holds {remaining}"
        )));
    }
    let layout = NpyLayout {
        shape,
        dtype,
        order: parsed.order(),
        len,
        item_size,
        header_len,
        data_len,
    };
    Ok(CheckedNpy {
        layout,
        npy: NpyFile::with_header(parsed, reader),
    })
}

/// The dimensions of the header's `'shape'` tuple when their product overflows 64 bits; `None`
/// when it does not, or when the tuple is not a plain list of integers (npyz judges those).
fn announced_shape_overflow(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let after_key = &text[text.find("'shape'")?..];
    let open = after_key.find('(')?;
    let close = open + after_key[open..].find(')')?;
    let dims = &after_key[open + 1..close];
    let mut size = 1u64;
    for dim in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        size = match size.checked_mul(dim.parse().ok()?) {
            Some(size) => size,
            None => return Some(dims.trim().to_string()),
        };
    }
    None
}

/// The deepest nesting of `(`, `[` and `{` in a header's text, outside quoted strings.
fn bracket_nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &c in text {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    deepest
}

/// A numeric array read from a `.npy`: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// Reads any numeric `.npy` array as f32, naming `path` in errors.
///
/// # Errors
/// Unreadable, empty, truncated or corrupt files (see [`check_npy`]), non-numeric dtypes.
pub fn read_array(path: &Path) -> Result<Array> {
    npy_to_array(open_npy(path)?, path, "")
}

/// Reads every element as the file's type `T` and converts it with `to_f32` (the nearest f32,
/// as NumPy's `astype(np.float32)`).
fn values_as_f32<T: npyz::Deserialize, R: Read>(
    npy: NpyFile<R>,
    to_f32: impl Fn(T) -> f32,
) -> std::io::Result<Vec<f32>> {
    Ok(npy.into_vec::<T>()?.into_iter().map(to_f32).collect())
}

/// Reads the values of a checked array as f32; `what` prefixes error messages (an npz member's name).
/// The header check bounds every allocation here by the bytes the source holds.
pub fn npy_to_array<R: Read>(checked: CheckedNpy<R>, path: &Path, what: &str) -> Result<Array> {
    let layout = checked.layout().clone();
    let npy = checked.into_npy();
    let ts = &layout.dtype;
    let unreadable =
        |e: std::io::Error| Error::format(path, format!("{what}cannot read the data: {e}"));
    let data: Vec<f32> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => npy.into_vec::<f32>(),
        (TypeChar::Float, 8) => values_as_f32(npy, |v: f64| v as f32),
        (TypeChar::Float, 2) => values_as_f32(npy, |v: half::f16| v.to_f32()),
        (TypeChar::Int, 1) => values_as_f32(npy, |v: i8| f32::from(v)),
        (TypeChar::Int, 2) => values_as_f32(npy, |v: i16| f32::from(v)),
        (TypeChar::Int, 4) => values_as_f32(npy, |v: i32| v as f32),
        (TypeChar::Int, 8) => values_as_f32(npy, |v: i64| v as f32),
        (TypeChar::Uint, 1) => values_as_f32(npy, |v: u8| f32::from(v)),
        (TypeChar::Uint, 2) => values_as_f32(npy, |v: u16| f32::from(v)),
        (TypeChar::Uint, 4) => values_as_f32(npy, |v: u32| v as f32),
        (TypeChar::Uint, 8) => values_as_f32(npy, |v: u64| v as f32),
        _ => {
            return Err(Error::format(
                path,
                format!("{what}unsupported dtype {ts} (expected float or integer)"),
            ));
        }
    }
    .map_err(unreadable)?;
    if data.len() != layout.len {
        return Err(Error::format(
            path,
            format!(
                "{what}truncated: shape {:?} needs {} values, the file holds {}",
                layout.shape,
                layout.len,
                data.len()
            ),
        ));
    }
    let data = match layout.order {
        Order::C => data,
        Order::Fortran => fortran_to_c(&data, &layout.shape),
    };
    Ok(Array {
        shape: layout.shape,
        data,
    })
}

/// Reorders column-major values into row-major ones.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let mut index = vec![0usize; shape.len()];
    for value in out.iter_mut() {
        // `index` walks row-major; the Fortran offset is sum(index[k] * prod(shape[..k])).
        let mut offset = 0;
        let mut stride = 1;
        for (k, &d) in shape.iter().enumerate() {
            offset += index[k] * stride;
            stride *= d;
        }
        *value = data[offset];
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}
/// The bytes of a float32 little-endian C-order `.npy` (format version 1.0).
pub fn npy_f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded so data starts on 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` atomically (a temporary sibling renamed into place).
///
/// # Errors
/// When the shape does not match the data, or the file cannot be written.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::InvalidInput(format!(
            "shape {shape:?} does not hold {} values",
            data.len()
        )));
    }
    let bytes = npy_f32_bytes(shape, data);
    crate::io::write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        f.write_all(&bytes).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_npy_reads_back() {
        let data: Vec<f32> = (0..24).map(|v| v as f32 * 0.5).collect();
        let bytes = npy_f32_bytes(&[12, 2], &data);
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
        let checked = check_npy(&bytes[..], bytes.len() as u64, Path::new("x.npy"), "").unwrap();
        let array = npy_to_array(checked, Path::new("x.npy"), "").unwrap();
        assert_eq!(array.shape, vec![12, 2]);
        assert_eq!(array.data, data);
    }

    #[test]
    fn shapes_whose_size_overflows_are_refused_in_any_build() {
        for shape in ["(4294967296, 2, 2147483648)", "(18446744073709551615, 2)"] {
            let header =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            let err = check_npy(&bytes[..], bytes.len() as u64, Path::new("big.npy"), "")
                .err()
                .expect("an overflowing shape must be refused");
            let message = err.to_string();
            assert!(
                message.contains("big.npy") && message.contains("too large"),
                "{message}"
            );
        }
        // A size that fits is left to the later checks (here: no data).
        assert_eq!(announced_shape_overflow(b"{'shape': (3, 4), }"), None);
        assert_eq!(announced_shape_overflow(b"{'shape': (), }"), None);
    }

    /// The `.npy` bytes of a 1-D array of `descr` holding `payload`.
    fn npy_bytes(descr: &str, len: usize, payload: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({len},), }}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Every numeric dtype NumPy writes for signals (half precision, signed and unsigned
    /// integers of each width, either byte order) reads as the f32 values `astype` gives.
    #[test]
    fn every_numeric_dtype_reads_as_f32() {
        let halves = [1.5f32, -2.0, 65504.0, 0.25 + 2f32.powi(-12)];
        let f16_le: Vec<u8> = halves
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let f16_be: Vec<u8> = halves
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_be_bytes())
            .collect();
        let cases: Vec<(&str, Vec<u8>, Vec<f32>)> = vec![
            ("<f2", f16_le, halves.to_vec()),
            (">f2", f16_be, halves.to_vec()),
            ("|i1", vec![0x80, 0xff, 0x7f], vec![-128.0, -1.0, 127.0]),
            ("|u1", vec![0, 200, 255], vec![0.0, 200.0, 255.0]),
            (
                "<u2",
                [65535u16, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![65535.0, 7.0],
            ),
            (
                ">u4",
                [4_000_000_000u32]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                vec![4e9],
            ),
            (
                "<u8",
                [1u64 << 40].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![(1u64 << 40) as f32],
            ),
        ];
        for (descr, payload, expected) in cases {
            let bytes = npy_bytes(descr, expected.len(), &payload);
            let checked = check_npy(&bytes[..], bytes.len() as u64, Path::new("x.npy"), "")
                .unwrap_or_else(|e| panic!("{descr}: {e}"));
            let array = npy_to_array(checked, Path::new("x.npy"), "").unwrap();
            assert_eq!(array.data, expected, "{descr}");
        }
        // Booleans and complex numbers are not signals.
        for (descr, size) in [("|b1", 1), ("<c8", 8)] {
            let bytes = npy_bytes(descr, 2, &vec![0; 2 * size]);
            let checked =
                check_npy(&bytes[..], bytes.len() as u64, Path::new("x.npy"), "").unwrap();
            let err = npy_to_array(checked, Path::new("x.npy"), "")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("x.npy") && err.contains("unsupported dtype"),
                "{err}"
            );
        }
    }

    #[test]
    fn fortran_order_is_transposed() {
        // 2x3 array [[0,1,2],[3,4,5]] stored column-major.
        let f = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(
            fortran_to_c(&f, &[2, 3]),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
    }
}
