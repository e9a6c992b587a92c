//! What `--print-config` prints: a configuration as TOML, every key with a one-line comment
//! above it, and the settings unset by default commented out where TOML would read them.
//!
//! The comments are the first sentences of the configuration structs' doc comments, which stay
//! the one place a setting is described: `config_docs.tsv` is generated from them by
//! `tests/config_docs.rs`, which fails when the table no longer matches the sources.

use std::collections::HashMap;

use anyhow::{Context, Result};

/// `owner \t key \t nested struct \t comment`, one line per field of every configuration
/// reachable from a printed one; owners and nested structs by the module path of their type.
const TABLE: &str = include_str!("config_docs.tsv");

/// A setting that is unset by default, shown commented out by `--print-config`: its key path
/// (`table.key`, or `key` at the top level), an example value (TOML) and what it does.
pub type OptionalKey = (&'static str, &'static str, &'static str);

/// `cfg` as TOML with a comment above every key and table and `optional` commented out:
/// the text `--print-config` prints.
pub fn documented_toml<T: serde::Serialize>(cfg: &T, optional: &[OptionalKey]) -> Result<String> {
    documented_toml_omitting(cfg, &[], optional)
}

/// [`documented_toml`] without the top-level tables `omit` (and the tables nested in them).
pub fn documented_toml_omitting<T: serde::Serialize>(
    cfg: &T,
    omit: &[&str],
    optional: &[OptionalKey],
) -> Result<String> {
    let text = toml::to_string_pretty(cfg).context("cannot render the configuration as TOML")?;
    let text = without_tables(&text, omit);
    Ok(with_optional_keys(
        &with_comments(&text, std::any::type_name::<T>()),
        optional,
    ))
}

/// `toml` without the tables `omit` (top-level names) and the tables nested in them. (The text is
/// cut rather than the value's map, which would sort the keys.)
fn without_tables(toml: &str, omit: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in toml.lines() {
        if let Some(header) = line.strip_prefix('[') {
            let path = header.trim_start_matches('[').trim_end_matches(']');
            let top = path.split('.').next().unwrap_or(path);
            skipping = omit.contains(&top);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    // A blank line left before a removed table at the end.
    let kept = out.trim_end().len();
    out.truncate(kept);
    out.push('\n');
    out
}

/// `toml`, the serialised form of the type `root` (its module path), with each key's and
/// table's comment from [`TABLE`] on the line above it. Keys the table does not know are left
/// without one (the table's test makes sure there are none).
fn with_comments(toml: &str, root: &str) -> String {
    // (owner, key) → (nested struct, comment)
    let mut fields: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    for line in TABLE.lines() {
        let mut parts = line.splitn(4, '\t');
        if let (Some(owner), Some(key), Some(nested), Some(comment)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            fields.insert((owner, key), (nested, comment));
        }
    }
    let mut out = String::new();
    let mut table_owner = Some(root);
    for line in toml.lines() {
        let comment = if let Some(header) = line.strip_prefix('[') {
            // `[a.b]` or `[[a.b]]`: walk from the root to the table's struct.
            let path = header.trim_start_matches('[').trim_end_matches(']');
            let mut owner = Some(root);
            let mut comment = None;
            for key in path.split('.') {
                let field = owner.and_then(|o| fields.get(&(o, key.trim_matches('"'))));
                owner = field.map(|f| f.0).filter(|n| !n.is_empty());
                comment = field.map(|f| f.1);
            }
            table_owner = owner;
            comment
        } else {
            match line.split_once(" = ") {
                Some((key, _)) if !key.is_empty() && !key.starts_with(['#', ' ']) => table_owner
                    .and_then(|o| fields.get(&(o, key.trim_matches('"'))))
                    .map(|f| f.1),
                _ => None,
            }
        };
        if let Some(comment) = comment.filter(|c| !c.is_empty()) {
            out.push_str("# ");
            out.push_str(comment);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `toml` (a printed default configuration) with each of `optional` inserted as a commented-out
/// line at the top of its table, so that removing the `# ` sets it where TOML reads it, and a
/// first line saying so. Keys whose table the text lacks are listed at the end.
pub fn with_optional_keys(toml: &str, optional: &[OptionalKey]) -> String {
    let line = |key: &str, value: &str, what: &str| format!("# {key} = {value}    # {what}");
    let mut lines: Vec<String> = toml.lines().map(str::to_string).collect();
    let mut missing = Vec::new();
    // Where the top-level block starts and its length, to set it off from the first table.
    let (mut top_start, mut top_count) = (0, 0);
    // Insert from the last key so that earlier insertion points stay valid.
    for &(path, value, what) in optional.iter().rev() {
        let (table, key) = match path.rsplit_once('.') {
            Some((table, key)) => (Some(table), key),
            None => (None, path),
        };
        let at = match table {
            // Before the first table and the comment above it.
            None => {
                let mut at = lines
                    .iter()
                    .position(|l| l.starts_with('['))
                    .unwrap_or(lines.len());
                while at > 0 && lines[at - 1].starts_with("# ") {
                    at -= 1;
                }
                top_start = at;
                top_count += 1;
                Some(at)
            }
            Some(t) => lines
                .iter()
                .position(|l| l.trim() == format!("[{t}]"))
                .map(|i| i + 1),
        };
        match at {
            Some(i) => lines.insert(i, line(key, value, what)),
            None => missing.push(line(path, value, what)),
        }
    }
    if top_count > 0
        && lines
            .get(top_start + top_count)
            .is_some_and(|l| !l.is_empty())
    {
        lines.insert(top_start + top_count, String::new());
    }
    let mut out = String::from(
        "# Every setting with its default; settings unset by default are commented out.\n",
    );
    out.push_str(&lines.join("\n"));
    out.push('\n');
    for l in missing.iter().rev() {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tables_get_their_comments_and_optional_keys_their_place() {
        let text = "seed = 0\n\n[data]\ncache = \"c\"\n";
        let root = std::any::type_name::<mmcl_train::MaeTrainConfig>();
        let commented = with_comments(text, root);
        let lines: Vec<&str> = commented.lines().collect();
        assert!(
            lines[0].starts_with("# ") && lines[1] == "seed = 0",
            "{commented}"
        );
        let header = lines.iter().position(|l| *l == "[data]").expect("header");
        assert!(lines[header - 1].starts_with("# "), "{commented}");
        assert!(lines[header + 1].starts_with("# "), "{commented}");
        let with_optional = with_optional_keys(&commented, &[("lr", "1e-3", "rate")]);
        let lines: Vec<&str> = with_optional.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("# lr = "))
            .expect("lr");
        assert!(lines[at + 1].is_empty(), "{with_optional}");
        assert!(
            lines[at + 2].starts_with("# ") && lines[at + 3] == "[data]",
            "{with_optional}"
        );
    }

    #[test]
    fn omitted_tables_go_with_their_subtables() {
        let text = "a = 1\n\n[encoder]\nx = 1\n\n[encoder.inner]\ny = 2\n\n[data]\nz = 3\n";
        assert_eq!(
            without_tables(text, &["encoder"]),
            "a = 1\n\n[data]\nz = 3\n"
        );
    }

    #[test]
    fn optional_keys_are_shown_where_toml_reads_them() {
        let toml = "max_epochs = 2\n\n[ecg]\nmodel = \"x\"\n\n[data]\ncache = \"c\"\n";
        let out = with_optional_keys(
            toml,
            &[
                ("lr", "1e-3", "absolute rate"),
                ("ecg.pretrain_checkpoint", "\"runs/mae\"", "start here"),
                ("nope.key", "1", "listed at the end"),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.starts_with(needle));
        assert!(at("# lr = 1e-3").is_some_and(|i| i < at("[ecg]").unwrap_or(0)));
        assert_eq!(at("# pretrain_checkpoint"), at("[ecg]").map(|i| i + 1));
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("# nope.key = 1"))
        );
        // Uncommenting gives valid TOML with the value in its table.
        let set = out.replace("# pretrain_checkpoint", "pretrain_checkpoint");
        let value: toml::Value = toml::from_str(&set).expect("valid TOML");
        assert_eq!(
            value["ecg"]["pretrain_checkpoint"].as_str(),
            Some("runs/mae")
        );
    }
}
