//! Text encodings of ECG XML files: byte-order marks, UTF-16, and the declared encoding, for
//! every XML reader of the crate (kept apart from the CardioSoft reader in `mod.rs`).

use std::borrow::Cow;
use std::path::Path;

use crate::{Error, Result};

/// Decodes the file into text, shared by every XML reader of the crate (CardioSoft, GE MUSE,
/// HL7 aECG) and, leniently, by [`root_element`].
///
/// A byte-order mark decides first (UTF-8 `EF BB BF`, UTF-16 little-endian `FF FE`, big-endian
/// `FE FF`), and so does the `<` of UTF-16 text without one; an encoding declaration that
/// contradicts the mark is overruled by it, as XML 1.0 Appendix F has it (Windows tools re-save
/// files without updating the declaration). Without either, the declared encoding is honoured:
/// UTF-8 (also when none is declared) or ISO-8859-1/Latin-1. A declaration of UTF-16 on 8-bit
/// bytes (.NET writes those) is read as UTF-8, the only way its ASCII declaration reads at all.
///
/// UTF-16 text decodes to at most 1.5 times its bytes (3 UTF-8 bytes per 2-byte unit), and to
/// half of them for the ASCII markup and digits of an ECG file.
///
/// # Errors
/// Bytes that are not valid in the encoding found: invalid UTF-8, UTF-16 of an odd number of
/// bytes or with an unpaired surrogate (with the byte offset), an encoding declared that is
/// neither, UTF-32 (each naming `path`).
pub(crate) fn decode<'a>(bytes: &'a [u8], path: &Path) -> Result<Cow<'a, str>> {
    let (mark, body) = byte_order_mark(bytes);
    match mark {
        Some(Mark::Utf16(order)) => {
            let bom = bytes.len() - body.len();
            return utf16_to_string(body, order, bom, path).map(Cow::Owned);
        }
        Some(Mark::Utf8) => {
            return std::str::from_utf8(body).map(Cow::Borrowed).map_err(|e| {
                let declared = declared_encoding(&body[..body.len().min(256)])
                    .map(|d| format!(" (it declares {d:?})"))
                    .unwrap_or_default();
                Error::format(
                    path,
                    format!("not valid UTF-8 ({e}) after its UTF-8 byte-order mark{declared}"),
                )
            });
        }
        Some(Mark::Utf32) => {
            return Err(Error::format(
                path,
                "UTF-32 text is not supported (expected UTF-8, UTF-16 or ISO-8859-1)",
            ));
        }
        None => {}
    }
    let head = &bytes[..bytes.len().min(256)];
    let declared = declared_encoding(head).map(|e| e.to_ascii_lowercase());
    match declared.as_deref() {
        None | Some("utf-8") | Some("utf8") | Some("us-ascii") | Some("ascii") => {
            std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                Error::format(
                    path,
                    format!("not valid UTF-8 ({e}) and no other encoding declared"),
                )
            })
        }
        Some(utf16) if is_utf16_name(utf16) => {
            std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                Error::format(
                    path,
                    format!(
                        "declares {utf16:?} but is 8-bit text without a byte-order mark, and \
                         not valid UTF-8 ({e}) either"
                    ),
                )
            })
        }
        Some("iso-8859-1") | Some("latin1") | Some("latin-1") | Some("iso8859-1")
        | Some("windows-1252") | Some("cp1252") => {
            // Latin-1 maps every byte to the code point of the same value; windows-1252
            // differs only in 0x80–0x9F, which never occur in the numeric content we read.
            Ok(Cow::Owned(bytes.iter().map(|&b| b as char).collect()))
        }
        Some(other) => Err(Error::format(
            path,
            format!("unsupported XML encoding {other:?} (expected UTF-8, UTF-16 or ISO-8859-1)"),
        )),
    }
}

/// Whether a (lower-case) encoding name is one of UTF-16's.
fn is_utf16_name(name: &str) -> bool {
    matches!(
        name,
        "utf-16" | "utf16" | "utf-16le" | "utf-16be" | "ucs-2" | "iso-10646-ucs-2" | "unicode"
    )
}

/// The byte order of UTF-16 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

/// What the first bytes of an XML file say about its encoding (XML 1.0 Appendix F).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Utf8,
    Utf16(Order),
    Utf32,
}

/// The encoding the first bytes announce, and the bytes after the byte-order mark; `None` for
/// an 8-bit file whose declaration (or its absence) decides.
///
/// UTF-16 without a mark is recognised by a NUL beside the first ASCII character: XML text
/// cannot hold NUL, so no 8-bit file starts that way.
fn byte_order_mark(bytes: &[u8]) -> (Option<Mark>, &[u8]) {
    match bytes {
        [0xFF, 0xFE, 0, 0, ..] | [0, 0, 0xFE, 0xFF, ..] => (Some(Mark::Utf32), bytes),
        [0xEF, 0xBB, 0xBF, rest @ ..] => (Some(Mark::Utf8), rest),
        [0xFF, 0xFE, rest @ ..] => (Some(Mark::Utf16(Order::Little)), rest),
        [0xFE, 0xFF, rest @ ..] => (Some(Mark::Utf16(Order::Big)), rest),
        [c, 0, ..] if *c != 0 && c.is_ascii() => (Some(Mark::Utf16(Order::Little)), bytes),
        [0, c, ..] if *c != 0 && c.is_ascii() => (Some(Mark::Utf16(Order::Big)), bytes),
        _ => (None, bytes),
    }
}

/// The characters of UTF-16 bytes (a trailing odd byte is left out).
fn utf16_chars(
    body: &[u8],
    order: Order,
) -> impl Iterator<Item = std::result::Result<char, std::char::DecodeUtf16Error>> + '_ {
    let units = body.chunks_exact(2).map(move |b| match order {
        Order::Little => u16::from_le_bytes([b[0], b[1]]),
        Order::Big => u16::from_be_bytes([b[0], b[1]]),
    });
    char::decode_utf16(units)
}

/// Decodes UTF-16 bytes (`bom` bytes of byte-order mark before them, for error offsets).
fn utf16_to_string(body: &[u8], order: Order, bom: usize, path: &Path) -> Result<String> {
    let name = match order {
        Order::Little => "UTF-16LE",
        Order::Big => "UTF-16BE",
    };
    if !body.len().is_multiple_of(2) {
        return Err(Error::format(
            path,
            format!(
                "{name} text of an odd number of bytes ({}): the file is cut short or not UTF-16",
                body.len() + bom
            ),
        ));
    }
    // A first pass validates and sizes the text, so that the string is allocated once at its
    // exact length (at most 1.5 times the bytes) rather than grown by doubling.
    let mut unit = 0usize;
    let mut len = 0usize;
    for c in utf16_chars(body, order) {
        match c {
            Ok(c) => {
                unit += c.len_utf16();
                len += c.len_utf8();
            }
            Err(e) => {
                return Err(Error::format(
                    path,
                    format!(
                        "not valid {name}: unpaired surrogate {:#06X} at byte {}",
                        e.unpaired_surrogate(),
                        bom + 2 * unit
                    ),
                ));
            }
        }
    }
    let mut text = String::with_capacity(len);
    text.extend(utf16_chars(body, order).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
    Ok(text)
}

/// The first bytes of an XML file as text, for finding its root: UTF-16 by its mark, else a
/// lossy 8-bit view (the markup before the root is ASCII in every encoding we read). A
/// character cut at the end of the head, or a bad one, becomes U+FFFD.
pub(super) fn head_text(head: &[u8]) -> Cow<'_, str> {
    match byte_order_mark(head) {
        (Some(Mark::Utf16(order)), body) => Cow::Owned(
            utf16_chars(body, order)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        ),
        (_, body) => String::from_utf8_lossy(body),
    }
}

pub(super) fn declared_encoding(head: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    let decl_end = head.find("?>")?;
    let decl = &head[..decl_end];
    if !decl.trim_start().starts_with("<?xml") {
        return None;
    }
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start();
    let quote = rest.chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let rest = &rest[1..];
    let end = rest.find(quote)?;
    Some(rest[..end].to_string())
}
