//! A walk over a DICOM file's element headers that checks every declared value length against
//! the bytes that remain, before the parser sees the file (the CMR zip reader and the ECG
//! waveform reader both go through it).
//!
//! Why: `dicom-parser` reserves and zero-fills a value's declared length before reading it, so
//! a corrupt or hostile length (up to 4 GiB) in a small file would cost that much memory. The
//! walk is linear in the file and allocates nothing.

/// The transfer syntaxes read: uncompressed little-endian data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Explicit VR little endian (1.2.840.10008.1.2.1).
    ExplicitLittle,
    /// Implicit VR little endian (1.2.840.10008.1.2).
    ImplicitLittle,
}

/// Where the `DICM` magic starts and the data set's transfer syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Offset of `DICM` (128 after a preamble, 0 without one).
    pub magic: usize,
    /// The transfer syntax of the data set.
    pub syntax: Syntax,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Nesting deeper than this is refused (image files nest a few levels at most); it also bounds
/// the parser's recursion.
const MAX_DEPTH: usize = 16;
const ITEM_GROUP: u16 = 0xFFFE;
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// Whether `bytes` carries the DICOM Part 10 magic (after a 128-byte preamble or at the start).
pub(crate) fn magic_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(128)
    } else if bytes.get(0..4) == Some(b"DICM") {
        Some(0)
    } else {
        None
    }
}

fn u16_at(b: &[u8], p: usize) -> u16 {
    u16::from_le_bytes([b[p], b[p + 1]])
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]])
}

/// VRs whose explicit header has a 16-bit length (PS3.5 7.1.2); every other VR, an unknown one
/// included (the parser reads it as UN), has two reserved bytes and a 32-bit length.
fn short_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Whether the standard dictionary, which the parser consults for implicit VR, makes the tag
/// a sequence.
fn dictionary_sequence(group: u16, element: u16) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(group, element))
        .is_some_and(|e| e.vr() == VirtualVr::Exact(dicom_core::VR::SQ))
}

/// Checks the file meta group and the data set of a Part 10 file.
///
/// # Errors
/// In words: no magic, a length past the end of the file, nesting deeper than 16 levels,
/// encapsulated (compressed) pixel data, a transfer syntax other than uncompressed little
/// endian.
pub(crate) fn check(bytes: &[u8]) -> Result<Layout, String> {
    let magic = magic_offset(bytes).ok_or("no DICM magic: not a DICOM file")?;
    // The meta group is always explicit VR little endian.
    let mut p = magic + 4;
    let mut syntax = None;
    while p + 4 <= bytes.len() && u16_at(bytes, p) == 0x0002 {
        let element = u16_at(bytes, p + 2);
        let (value, next) = element_bounds(bytes, p, bytes.len(), true)?;
        let value = value.ok_or("file meta group element with an undefined length")?;
        if element == 0x0010 {
            let uid = String::from_utf8_lossy(&bytes[value.0..value.1]);
            syntax = Some(uid.trim_end_matches(['\0', ' ']).to_string());
        }
        p = next;
    }
    let syntax = match syntax.as_deref() {
        Some("1.2.840.10008.1.2.1") => Syntax::ExplicitLittle,
        Some("1.2.840.10008.1.2") => Syntax::ImplicitLittle,
        Some(other) => {
            return Err(format!(
                "transfer syntax {other} is not supported: only uncompressed little-endian \
                 DICOM (1.2.840.10008.1.2.1 or 1.2.840.10008.1.2) is read"
            ));
        }
        None => return Err("no transfer syntax (0002,0010) in the file meta group".into()),
    };
    walk(
        bytes,
        p,
        bytes.len(),
        syntax == Syntax::ExplicitLittle,
        0,
        false,
    )?;
    Ok(Layout { magic, syntax })
}

/// The value range of the element whose header starts at `p` (`None` for an undefined
/// length) and the offset after its header (undefined) or value (defined).
fn element_bounds(
    b: &[u8],
    p: usize,
    end: usize,
    explicit: bool,
) -> Result<(Option<(usize, usize)>, usize), String> {
    let truncated = || format!("truncated element header at byte {p}");
    if end.saturating_sub(p) < 8 {
        return Err(truncated());
    }
    let (group, element) = (u16_at(b, p), u16_at(b, p + 2));
    let (header, len) = if group == ITEM_GROUP || !explicit {
        (8, u32_at(b, p + 4))
    } else if short_vr([b[p + 4], b[p + 5]]) {
        (8, u32::from(u16_at(b, p + 6)))
    } else {
        if end - p < 12 {
            return Err(truncated());
        }
        (12, u32_at(b, p + 8))
    };
    let start = p + header;
    if len == UNDEFINED {
        return Ok((None, start));
    }
    let len = len as usize;
    if len > end - start {
        return Err(format!(
            "element ({group:04X},{element:04X}) at byte {p} declares {len} bytes but only {} \
             remain (truncated or corrupt file)",
            end - start
        ));
    }
    Ok((Some((start, start + len)), start + len))
}

/// Walks the elements in `b[p..end]`; with `until_delimiter`, stops after the first item or
/// sequence delimiter and returns the offset after it.
fn walk(
    b: &[u8],
    mut p: usize,
    end: usize,
    explicit: bool,
    depth: usize,
    until_delimiter: bool,
) -> Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "sequences nested deeper than {MAX_DEPTH} levels at byte {p}"
        ));
    }
    while p < end {
        let (group, element) = match b.get(p..p + 4) {
            Some(_) if p + 4 <= end => (u16_at(b, p), u16_at(b, p + 2)),
            _ => return Err(format!("truncated element header at byte {p}")),
        };
        let vr = if explicit && group != ITEM_GROUP && p + 6 <= end {
            [b[p + 4], b[p + 5]]
        } else {
            [0, 0]
        };
        let (value, next) = element_bounds(b, p, end, explicit)?;
        if group == ITEM_GROUP && element != 0xE000 {
            // Item or sequence delimiter.
            p = next;
            if until_delimiter {
                return Ok(p);
            }
            continue;
        }
        match value {
            None => {
                if (group, element) == PIXEL_DATA {
                    return Err(
                        "encapsulated (compressed) PixelData is not supported: only native \
                         uncompressed pixels are read"
                            .into(),
                    );
                }
                // A sequence or item of undefined length; anything else of undefined length
                // (UN, an unknown VR) holds implicit VR, as the parser reads it.
                let inner = explicit && (group == ITEM_GROUP || &vr == b"SQ");
                p = walk(b, next, end, inner, depth + 1, true)?;
            }
            Some((start, stop)) => {
                let item = group == ITEM_GROUP;
                // Implicit VR does not say which values are sequences: the dictionary does (as
                // for the parser), and a value that starts with an item tag is walked as one.
                let nested = item
                    || &vr == b"SQ"
                    || (!explicit
                        && (group, element) != PIXEL_DATA
                        && (dictionary_sequence(group, element)
                            || b.get(start..start + 4) == Some(&[0xFE, 0xFF, 0x00, 0xE0])));
                if nested {
                    walk(b, start, stop, explicit, depth + 1, false)?;
                }
                p = stop;
            }
        }
    }
    if until_delimiter {
        return Err(
            "a sequence or item of undefined length has no delimiter before the end of the file"
                .into(),
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_short(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn file(ts: &str, data_set: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let mut uid = ts.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        f.extend(explicit_short((0x0002, 0x0010), b"UI", &uid));
        f.extend_from_slice(data_set);
        f
    }

    #[test]
    fn lengths_past_the_end_are_refused_before_parsing() {
        let rows = explicit_short((0x0028, 0x0010), b"US", &4u16.to_le_bytes());
        let ok = file("1.2.840.10008.1.2.1", &rows);
        assert_eq!(
            check(&ok).unwrap(),
            Layout {
                magic: 128,
                syntax: Syntax::ExplicitLittle
            }
        );
        // Pixel data claiming 4 GiB - 2 bytes in a tiny file.
        let mut huge = rows.clone();
        huge.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        huge.extend_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        let err = check(&file("1.2.840.10008.1.2.1", &huge)).unwrap_err();
        assert!(
            err.contains("(7FE0,0010)") && err.contains("4294967294"),
            "{err}"
        );
        // An unknown VR has a 32-bit length, as the parser reads it.
        let mut unknown = rows.clone();
        unknown.extend_from_slice(&[0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 2, 0]);
        unknown.extend_from_slice(&0x7FFF_0000u32.to_le_bytes());
        let err = check(&file("1.2.840.10008.1.2.1", &unknown)).unwrap_err();
        assert!(err.contains("(0009,0010)"), "{err}");
        // Truncated header, unsupported syntax, no magic.
        assert!(check(&file("1.2.840.10008.1.2.1", &rows[..5])).is_err());
        let err = check(&file("1.2.840.10008.1.2.4.50", &rows)).unwrap_err();
        assert!(err.contains("1.2.840.10008.1.2.4.50"), "{err}");
        assert!(check(b"not dicom at all").is_err());
    }

    #[test]
    fn sequences_are_walked_inside() {
        // An implicit-VR sequence of defined length whose item holds an element claiming more
        // bytes than the item has.
        let mut inner = Vec::new();
        inner.extend_from_slice(&[0x08, 0x00, 0x50, 0x11]);
        inner.extend_from_slice(&1000u32.to_le_bytes());
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        item.extend_from_slice(&inner);
        let mut sq = vec![0x08, 0x00, 0x40, 0x11];
        sq.extend_from_slice(&(item.len() as u32).to_le_bytes());
        sq.extend_from_slice(&item);
        let err = check(&file("1.2.840.10008.1.2", &sq)).unwrap_err();
        assert!(err.contains("(0008,1150)"), "{err}");
        // Undefined lengths need their delimiters.
        let mut open = vec![0x08, 0x00, 0x40, 0x11];
        open.extend_from_slice(&UNDEFINED.to_le_bytes());
        assert!(check(&file("1.2.840.10008.1.2", &open)).is_err());
        open.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(check(&file("1.2.840.10008.1.2", &open)).is_ok());
    }
}
