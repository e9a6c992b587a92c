//! What every configuration reader of the workspace shares: the key a parse error is about,
//! and the size limits a model configuration must respect before anything is allocated.
//!
//! The JSON and TOML parsers report *where* a value is wrong (line and column, or a byte span)
//! but not *which key* holds it; [`json_error_key`] and [`toml_key_at`] recover the key path
//! (`training.batch_size`, `img_size[1]`) from the text, so that an error names the file, the
//! key and the problem.
//!
//! The limits are far above the largest real model (the reference's `vit_huge` ECG encoder has
//! about 630 M parameters; ResNet152 about 60 M) and far below what makes the allocator abort:
//! a configuration such as `embed_dim = 1000000000` is refused with an error naming the key
//! instead of ending the process with "memory allocation of N bytes failed".

/// The most parameters a configured model may have (4·10⁹, 16 GB in float32; about six times
/// the largest preset).
pub const MAX_PARAMETERS: u64 = 4_000_000_000;

/// The most tokens (patches, plus the class token) one sample may become (10⁶; the paper's
/// encoder uses 301).
pub const MAX_TOKENS: u64 = 1_000_000;

/// The most values one sample's largest activation may hold (2³², 16 GiB in float32): inputs,
/// token × width matrices and attention maps (heads × tokens²) alike.
pub const MAX_ACTIVATIONS: u64 = 1 << 32;

/// The product of `factors` with checked arithmetic (`None` when it overflows `u64`).
pub fn checked_product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f))
}

/// The sum of `terms` with checked arithmetic (`None` when a term or the sum overflows).
pub fn checked_sum(terms: &[Option<u64>]) -> Option<u64> {
    terms
        .iter()
        .try_fold(0u64, |acc, &t| t.and_then(|t| acc.checked_add(t)))
}

/// `Ok` when `value` (`None`: it overflowed) is at most `limit`; otherwise a sentence saying
/// that `keys` (the configuration keys and values responsible) make too many `quantity`.
pub fn check_limit(
    keys: &str,
    quantity: &str,
    value: Option<u64>,
    limit: u64,
) -> Result<(), String> {
    match value {
        Some(v) if v <= limit => Ok(()),
        Some(v) => Err(format!(
            "{keys} make {v} {quantity}, more than the limit of {limit}"
        )),
        None => Err(format!(
            "{keys} make more {quantity} than 64 bits can count, more than the limit of {limit}"
        )),
    }
}

/// The largest configuration file read, in bytes (1 MiB; real ones are a few kB). A larger
/// file, a device or a FIFO given as a configuration is refused before it is read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads the text of the configuration file `path`: a regular file of at most
/// [`MAX_CONFIG_BYTES`], in UTF-8.
///
/// # Errors
/// [`crate::Error::Io`] when it cannot be read, [`crate::Error::Format`] when it is no regular
/// file, too large, or not UTF-8 text.
pub fn read_config_text(path: &std::path::Path) -> crate::Result<String> {
    crate::files::read_text_bounded(path, MAX_CONFIG_BYTES, "the configuration")
}

/// Reads the configuration file `path` ([`read_config_text`]) into `T`, as JSON or TOML by
/// its extension ([`parse_config_text`]).
///
/// # Errors
/// Those of [`read_config_text`], and [`crate::Error::Config`] when the text does not parse
/// into `T` (the reason names the key).
pub fn read_config_file<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> crate::Result<T> {
    let text = read_config_text(path)?;
    parse_config_text(&text, path).map_err(|reason| crate::Error::Config {
        path: path.to_path_buf(),
        reason,
    })
}

/// Makes a relative `path` found in a configuration file relative to that file's folder
/// `config_dir`, as users expect of paths written in a file.
pub fn rebase_path(path: &mut std::path::PathBuf, config_dir: &std::path::Path) {
    if path.is_relative() {
        *path = config_dir.join(&*path);
    }
}

/// Parses a configuration's `text` as JSON or TOML, chosen by `path`'s extension (`.json`,
/// `.toml`, any case). On failure, the reason names the key the error is about when it can be
/// found (`model.depth: invalid type …`); callers wrap it in their error with the path.
pub fn parse_config_text<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &std::path::Path,
) -> Result<T, String> {
    let with_key = |key: Option<String>, reason: String| {
        let reason = reason.trim_end();
        key.map_or_else(|| reason.to_string(), |k| format!("{k}: {reason}"))
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => serde_json::from_str(text)
            .map_err(|e| with_key(json_error_key(text, &e), e.to_string())),
        Some("toml") => toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| toml_key_at(text, span.start));
            with_key(key, e.to_string())
        }),
        _ => Err("a configuration must be a .json or .toml file".to_string()),
    }
}

/// The key path of the value a `serde_json` error points at in `text`, e.g. `model.depth` or
/// `img_size[2]`; `None` when the error is not inside an object (syntax errors at the top, a
/// whole-object check).
pub fn json_error_key(text: &str, err: &serde_json::Error) -> Option<String> {
    if err.line() == 0 {
        return None;
    }
    let offset = line_column_offset(text, err.line(), err.column());
    json_key_at(text, offset)
}

/// `err` prefixed with the key it is about, when that can be found: `"model.depth: invalid
/// type: string \"3\", expected usize at line 4 column 14"`.
pub fn describe_json_error(text: &str, err: &serde_json::Error) -> String {
    match json_error_key(text, err) {
        Some(key) => format!("{key}: {err}"),
        None => err.to_string(),
    }
}

/// The byte offset of a 1-based `line` and `column` (as `serde_json` counts them), clamped to
/// the text.
fn line_column_offset(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start.saturating_add(column).min(text.len())
}

/// One level of nesting while scanning JSON.
enum JsonFrame {
    /// An object; `key` is the last key read in it.
    Object { key: Option<String> },
    /// An array; `index` is the element being read.
    Array { index: usize },
}

/// The key path of the value being read at byte `offset` of JSON `text`.
fn json_key_at(text: &str, offset: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let end = offset.min(bytes.len());
    let mut stack: Vec<JsonFrame> = Vec::new();
    // Whether the next string in the innermost object is a key.
    let mut expect_key = false;
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let close = j.min(bytes.len());
                if expect_key && let Some(JsonFrame::Object { key }) = stack.last_mut() {
                    *key = Some(String::from_utf8_lossy(&bytes[start..close]).into_owned());
                    expect_key = false;
                }
                i = close + 1;
                continue;
            }
            b'{' => {
                stack.push(JsonFrame::Object { key: None });
                expect_key = true;
            }
            b'[' => {
                stack.push(JsonFrame::Array { index: 0 });
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => match stack.last_mut() {
                Some(JsonFrame::Object { key }) => {
                    *key = None;
                    expect_key = true;
                }
                Some(JsonFrame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            JsonFrame::Object { key: Some(k) } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            JsonFrame::Object { key: None } => break,
            JsonFrame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    (!path.is_empty()).then_some(path)
}

/// The key path of the TOML value (or key) at byte `offset` of `text`, e.g. `training.lr` for
/// an error inside `[training]` on the line `lr = "high"`: the last table header before the
/// offset, then the keys of the statement (and of its inline tables) up to the offset.
pub fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let mut table: Vec<String> = Vec::new();
    let mut statement: Option<(usize, &str)> = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line_start > offset {
            break;
        }
        let trimmed = line.trim();
        if let Some(header) = toml_header(trimmed) {
            table = vec![header.to_string()];
            statement = None;
        } else if trimmed.contains('=') && !trimmed.starts_with('#') {
            statement = Some((line_start, line));
        }
        line_start += line.len();
    }
    let mut path = table;
    if let Some((start, line)) = statement {
        path.extend(toml_statement_keys(line, offset.saturating_sub(start)));
    }
    let path: Vec<String> = path.into_iter().filter(|k| !k.is_empty()).collect();
    (!path.is_empty()).then(|| path.join("."))
}

/// The name of a `[table]` or `[[array]]` header line (a value line such as `[1, 2],` is none).
fn toml_header(line: &str) -> Option<&str> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner)
        .trim();
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.\"' ".contains(c))
        && !inner.chars().all(|c| c.is_ascii_digit() || c == ' ');
    valid.then_some(inner)
}

/// The keys enclosing byte `at` of a `key = value` statement, inline tables included.
fn toml_statement_keys(line: &str, at: usize) -> Vec<String> {
    // Keys of the inline tables around `at`, and of the assignment being read.
    let mut keys: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    // Open `{` / `[`, each with whether it pushed a key onto `keys`.
    let mut open: Vec<(char, bool)> = Vec::new();
    let mut token_start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        let in_table = matches!(open.last(), None | Some(('{', _)));
        match c {
            '"' | '\'' => quote = Some(c),
            '#' => break,
            // An `=` past the offset still ends the key the offset lies in.
            '=' if in_table => {
                if token_start > at {
                    break;
                }
                current = Some(line[token_start..i].trim().to_string());
                token_start = i + 1;
            }
            // Past the offset, the statement's structure no longer matters.
            _ if i > at && "{}[],".contains(c) => break,
            _ if i > at => {}
            '{' => {
                let key = current.take();
                open.push(('{', key.is_some()));
                keys.extend(key);
                token_start = i + 1;
            }
            '[' => open.push(('[', false)),
            '}' | ']' => {
                if let Some((_, true)) = open.pop() {
                    keys.pop();
                }
                if c == '}' {
                    current = None;
                }
            }
            ',' if in_table => {
                current = None;
                token_start = i + 1;
            }
            _ => {}
        }
    }
    keys.extend(current);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        depth: usize,
        sizes: Vec<usize>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        model: Inner,
    }

    fn json_key(text: &str) -> Option<String> {
        let err = serde_json::from_str::<Outer>(text).expect_err(text);
        json_error_key(text, &err)
    }

    #[test]
    fn json_keys_of_errors() {
        let wrong_type = "{\"name\": \"a\",\n \"model\": {\"depth\": \"3\", \"sizes\": [1]}}";
        assert_eq!(json_key(wrong_type).as_deref(), Some("model.depth"));
        let in_array = r#"{"name": "a", "model": {"depth": 3, "sizes": [1, "x", 3]}}"#;
        assert_eq!(json_key(in_array).as_deref(), Some("model.sizes[1]"));
        let unknown = r#"{"name": "a", "model": {"depht": 3, "sizes": []}}"#;
        assert_eq!(json_key(unknown).as_deref(), Some("model.depht"));
        let escaped = r#"{"name": "a \" b", "model": {"depth": -1, "sizes": []}}"#;
        assert_eq!(json_key(escaped).as_deref(), Some("model.depth"));
        let missing = r#"{"name": "a", "model": {"depth": 3}}"#;
        assert_eq!(json_key(missing).as_deref(), Some("model"));
        let text = r#"{"name": 5}"#;
        let err = serde_json::from_str::<Outer>(text).expect_err("type");
        assert!(describe_json_error(text, &err).starts_with("name: invalid type"));
        assert_eq!(json_key("\"not an object\""), None);
    }

    #[test]
    fn toml_keys_at_offsets() {
        let text = "seed = 1\n[training]\n# the batch\nbatch_size = \"a\"\n";
        let at = text.find("\"a\"").unwrap_or(0);
        assert_eq!(
            toml_key_at(text, at).as_deref(),
            Some("training.batch_size")
        );
        assert_eq!(toml_key_at(text, 2).as_deref(), Some("seed"));
        let inline = "model = { embed_dim = \"x\", depth = 2 }\n";
        let at = inline.find("\"x\"").unwrap_or(0);
        assert_eq!(toml_key_at(inline, at).as_deref(), Some("model.embed_dim"));
        let at = inline.find("depth").unwrap_or(0);
        assert_eq!(toml_key_at(inline, at).as_deref(), Some("model.depth"));
        let array = "[[diseases]]\nname = 3\n";
        let at = array.find('3').unwrap_or(0);
        assert_eq!(toml_key_at(array, at).as_deref(), Some("diseases.name"));
        let multi = "[model]\nimg_size = [\n  1,\n  \"x\",\n]\n";
        let at = multi.find("\"x\"").unwrap_or(0);
        assert_eq!(toml_key_at(multi, at).as_deref(), Some("model.img_size"));
    }

    #[test]
    fn limits_use_checked_arithmetic() {
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[u64::MAX, 2]), None);
        assert_eq!(checked_sum(&[Some(1), Some(2)]), Some(3));
        assert_eq!(checked_sum(&[Some(u64::MAX), Some(1)]), None);
        assert_eq!(checked_sum(&[Some(1), None]), None);
        assert!(check_limit("x", "values", Some(10), 10).is_ok());
        assert!(check_limit("x", "values", Some(11), 10).is_err());
        assert!(
            check_limit("embed_dim 9", "parameters", None, 10)
                .is_err_and(|e| e.contains("embed_dim"))
        );
    }
}
