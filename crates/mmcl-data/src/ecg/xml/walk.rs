//! The walk over an ECG XML file that every vendor reader shares (CardioSoft, GE MUSE, HL7
//! aECG): decoding, the one-root and nesting-depth checks, truncation, and the mapping of
//! parser errors. Each reader supplies only what its format does with the elements.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::{MAX_XML_DEPTH, append_character_data, decode, is_blank};
use crate::{Error, Result};

/// How a format treats a root element that is self-closing (`<Root/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmptyRoot {
    /// It is read like any element; the format's own checks find it lacks content.
    Allowed,
    /// A root of the right name that is empty is refused (GE MUSE).
    Refused,
    /// Any self-closing element where a root may stand is refused before its name is looked at
    /// (CardioSoft, whose message names the root expected).
    RefusedAnyName,
}

/// What tells one format's skeleton from another's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XmlFormat {
    /// The name the root element must have.
    pub root: &'static str,
    /// The format as the nesting-depth message names it (`"a GE MUSE XML file"`).
    pub described: &'static str,
    /// Whether element names keep their namespace prefix (CardioSoft compares whole names; the
    /// namespaced formats compare local names).
    pub qualified_names: bool,
    /// How a self-closing root is treated.
    pub empty_root: EmptyRoot,
}

/// One format's side of [`walk`]: what it does with each element, its text and its end.
///
/// `stack` holds the names of the open elements from the root, the element concerned last.
pub(crate) trait ElementHandler {
    /// The format's root and its treatment of an empty root.
    const FORMAT: XmlFormat;

    /// An element opens; `empty` for a self-closing one, which [`Self::close`] follows at once.
    ///
    /// Called before the root checks, so that a handler's own complaint about the root element
    /// (a bad attribute) comes first; handlers act on nothing at the root's depth otherwise.
    fn open(
        &mut self,
        stack: &[String],
        element: &BytesStart<'_>,
        empty: bool,
        path: &Path,
    ) -> Result<()>;

    /// The text kept for the element open now, if any: where [`Self::text`] puts character data.
    fn kept_text(&mut self) -> Option<&mut String> {
        None
    }

    /// Character data: a `Text`, `CData` or `GeneralRef` event, also outside the root. Appended
    /// to [`Self::kept_text`] with its references resolved ([`append_character_data`]).
    fn text(&mut self, data: &Event<'_>, path: &Path) -> Result<()> {
        match self.kept_text() {
            Some(text) => append_character_data(data, text, path),
            None => Ok(()),
        }
    }

    /// The element at the top of `stack` closes (it is popped after this returns).
    fn close(&mut self, stack: &[String], empty: bool, path: &Path) -> Result<()>;
}

/// Walks the XML file `bytes` (named `path` in errors), handing every element and its text to
/// `handler`, in time linear in the input; returns the handler with what it gathered.
///
/// # Errors
/// Text that does not decode, a blank file, malformed XML, more than one root or a root other
/// than `H::FORMAT.root` (or an empty one, as [`EmptyRoot`] says), elements nested deeper than
/// [`MAX_XML_DEPTH`], an element never closed, no root, or any error of `handler`.
pub(crate) fn walk<H: ElementHandler>(bytes: &[u8], path: &Path, mut handler: H) -> Result<H> {
    let format = H::FORMAT;
    let text = decode(bytes, path)?;
    if is_blank(&text) {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut reader = Reader::from_str(&text);
    let mut stack: Vec<String> = Vec::new();
    let mut seen_root = false;
    loop {
        let event = reader.read_event().map_err(|source| Error::Xml {
            path: path.to_path_buf(),
            source,
        })?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if empty && stack.is_empty() && format.empty_root == EmptyRoot::RefusedAnyName {
                    return Err(Error::format(
                        path,
                        format!(
                            "the root element is empty, expected <{}> with content",
                            format.root
                        ),
                    ));
                }
                if !empty && stack.len() >= MAX_XML_DEPTH {
                    return Err(Error::format(
                        path,
                        format!(
                            "elements nested deeper than {MAX_XML_DEPTH} levels (the nesting \
                             depth limit for {})",
                            format.described
                        ),
                    ));
                }
                let name = if format.qualified_names {
                    e.name().as_ref().to_string()
                } else {
                    e.local_name().as_ref().to_string()
                };
                stack.push(name);
                handler.open(&stack, e, empty, path)?;
                if let [root] = stack.as_slice() {
                    check_root(root, empty, seen_root, &format, path)?;
                    seen_root = true;
                }
                if empty {
                    handler.close(&stack, true, path)?;
                    stack.pop();
                }
            }
            data @ (Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)) => {
                handler.text(&data, path)?;
            }
            Event::End(_) => {
                if stack.is_empty() {
                    return Err(Error::format(path, "closing tag without opening tag"));
                }
                handler.close(&stack, false, path)?;
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(Error::format(
            path,
            format!("the file is truncated: <{open}> is never closed"),
        ));
    }
    if !seen_root {
        return Err(Error::format(path, format!("no <{}> element", format.root)));
    }
    Ok(handler)
}

/// Checks an element opened where the root stands: the first, of the format's name, and not
/// empty where the format refuses that.
fn check_root(
    name: &str,
    empty: bool,
    seen_root: bool,
    format: &XmlFormat,
    path: &Path,
) -> Result<()> {
    if seen_root {
        return Err(Error::format(path, "more than one root element"));
    }
    let root = format.root;
    if name != root {
        return Err(Error::format(
            path,
            format!("root element is <{name}>, expected <{root}>"),
        ));
    }
    if empty && format.empty_root == EmptyRoot::Refused {
        return Err(Error::format(
            path,
            format!("the root element <{root}> is empty"),
        ));
    }
    Ok(())
}
