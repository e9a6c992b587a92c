//! `--print-config` comments every key with the first sentence of its field's doc comment, so
//! that the doc comments of the configuration structs stay the one place a setting is
//! described. The table behind it, `src/commands/config_docs.tsv`, is generated here from the
//! workspace's sources; a table that no longer matches them fails this test. Regenerate with
//!
//! ```text
//! MMCL_UPDATE_CONFIG_DOCS=1 cargo test --release -p mmcl --test config_docs
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{mmcl, stderr};

/// The configurations `--print-config` prints, by the module path of their type.
const ROOTS: [&str; 6] = [
    "mmcl_train::config::mae::MaeTrainConfig",
    "mmcl_train::config::MmclConfig",
    "mmcl_eval::finetune::config::FinetuneConfig",
    "mmcl_pipeline::config::ReproduceConfig",
    "mmcl_data::build::BuildConfig",
    "mmcl::commands::explain::ExplainConfig",
];

/// One serialised field of a configuration struct.
struct Field {
    key: String,
    /// The last identifier of its type with `Option`, `Vec`, `Box` and `Arc` taken off.
    type_name: String,
    /// The struct its value is, when known without resolving `type_name` (a struct variant).
    nested: Option<String>,
    doc: String,
}

/// A struct with named fields that derives `Serialize`.
struct Struct {
    path: String,
    fields: Vec<Field>,
    /// What the names its file imports stand for (`CmrConfig` → `mmcl_data::cmr::CmrConfig`).
    imports: BTreeMap<String, String>,
}

/// The names a `use` tree brings into scope, with the paths they stand for; `crate`, `self`
/// and `super` made absolute from `module`.
fn collect_imports(
    tree: &syn::UseTree,
    prefix: &[String],
    module: &str,
    out: &mut BTreeMap<String, String>,
) {
    let absolute = |mut parts: Vec<String>| {
        let mut base: Vec<String> = module.split("::").map(str::to_string).collect();
        match parts.first().map(String::as_str) {
            Some("crate") => {
                parts[0] = base[0].clone();
            }
            Some("self") => {
                parts.remove(0);
                base.extend(parts);
                parts = base;
            }
            Some("super") => {
                while parts.first().is_some_and(|p| p == "super") {
                    parts.remove(0);
                    base.pop();
                }
                base.extend(parts);
                parts = base;
            }
            _ => {}
        }
        parts.join("::")
    };
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix.to_vec();
            next.push(p.ident.to_string());
            collect_imports(&p.tree, &next, module, out);
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.to_vec();
            full.push(n.ident.to_string());
            out.insert(n.ident.to_string(), absolute(full));
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.to_vec();
            full.push(r.ident.to_string());
            out.insert(r.rename.to_string(), absolute(full));
        }
        syn::UseTree::Group(g) => {
            for t in &g.items {
                collect_imports(t, prefix, module, out);
            }
        }
        syn::UseTree::Glob(_) => {}
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `mmcl_eval::finetune::config` for `crates/mmcl-eval/src/finetune/config.rs`.
fn module_path(crate_dir: &str, relative: &Path) -> String {
    let mut parts = vec![crate_dir.replace('-', "_")];
    let components: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for (i, c) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        if last && matches!(c.as_str(), "lib" | "main" | "mod") {
            continue;
        }
        parts.push(c.clone());
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn derives_serialize(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive") && {
            let mut found = false;
            let _ = a.parse_nested_meta(|m| {
                found |= m
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "Serialize");
                Ok(())
            });
            found
        }
    })
}

/// The serialised name of a field (`rename`), or `None` when it is not serialised.
fn serde_key(field: &syn::Field) -> Option<String> {
    let mut key = field.ident.as_ref()?.to_string();
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let mut skipped = false;
        let _ = attr.parse_nested_meta(|m| {
            if m.path.is_ident("rename") {
                let name: syn::LitStr = m.value()?.parse()?;
                key = name.value();
            } else if m.path.is_ident("skip") || m.path.is_ident("skip_serializing") {
                skipped = true;
            } else if m.input.peek(syn::Token![=]) {
                let _: syn::Expr = m.value()?.parse()?;
            }
            Ok(())
        });
        if skipped {
            return None;
        }
    }
    Some(key)
}

fn inner_type_name(ty: &syn::Type) -> String {
    let syn::Type::Path(p) = ty else {
        return String::new();
    };
    let Some(last) = p.path.segments.last() else {
        return String::new();
    };
    let wrapper = ["Option", "Vec", "Box", "Arc"].contains(&last.ident.to_string().as_str());
    if wrapper
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(inner)) = args.args.first()
    {
        return inner_type_name(inner);
    }
    last.ident.to_string()
}

/// The doc comment's first sentence on one line, with intra-doc link brackets removed.
fn first_sentence(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(nv) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            lines.push(s.value().trim().to_string());
        }
    }
    let paragraph: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .take_while(|l| !l.is_empty())
        .collect();
    let text = paragraph.join(" ");
    let mut sentence = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        sentence.push(c);
        let ends = c == '.'
            && chars.get(i + 1).is_none_or(|n| *n == ' ')
            && !["e.g.", "i.e.", "etc.", "vs."]
                .iter()
                .any(|abbr| sentence.ends_with(abbr));
        if ends {
            break;
        }
    }
    strip_links(sentence.trim_end_matches(['.', ':', ';']))
}

/// `[`x`](…)` and `[`x`]` become `` `x` ``; `[a, b]` (not a link) stays.
fn strip_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("[`") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find("`]") else {
            out.push_str(&rest[open..]);
            return out;
        };
        out.push_str(&after[..close + 1]);
        rest = &after[close + 2..];
        if rest.starts_with('(')
            && let Some(end) = rest.find(')')
        {
            rest = &rest[end + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn parse_structs() -> Vec<Struct> {
    let crates = workspace().join("crates");
    let mut structs = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&crates)
        .expect("crates")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let crate_dir = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            let parsed =
                syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let module = module_path(&crate_dir, file.strip_prefix(&src).expect("in src"));
            let mut imports = BTreeMap::new();
            for item in &parsed.items {
                if let syn::Item::Use(u) = item {
                    collect_imports(&u.tree, &[], &module, &mut imports);
                }
            }
            for item in parsed.items {
                if let syn::Item::Enum(e) = &item
                    && derives_serialize(&e.attrs)
                {
                    enum_as_structs(e, &module, &imports, &mut structs);
                    continue;
                }
                let syn::Item::Struct(s) = item else {
                    continue;
                };
                let syn::Fields::Named(named) = &s.fields else {
                    continue;
                };
                if !derives_serialize(&s.attrs) {
                    continue;
                }
                structs.push(Struct {
                    path: format!("{module}::{}", s.ident),
                    fields: named_fields(named),
                    imports: imports.clone(),
                });
            }
        }
    }
    structs
}

/// The serialised fields of a struct or struct variant.
fn named_fields(named: &syn::FieldsNamed) -> Vec<Field> {
    named
        .named
        .iter()
        .filter_map(|f| {
            Some(Field {
                key: serde_key(f)?,
                type_name: inner_type_name(&f.ty),
                nested: None,
                doc: first_sentence(&f.attrs),
            })
        })
        .collect()
}

/// `snake_case` / `lowercase` spelling of a variant, as `#[serde(rename_all)]` asks.
fn renamed(ident: &str, rule: Option<&str>) -> String {
    match rule {
        Some("snake_case") => {
            let mut out = String::new();
            for (i, c) in ident.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            }
            out
        }
        Some("lowercase") => ident.to_lowercase(),
        _ => ident.to_string(),
    }
}

/// An enum, as serde writes it into TOML: a variant with data is a table named after the
/// variant, so the enum is recorded as a struct whose fields are its variants, and a struct
/// variant as a struct of its fields (`Enum::Variant`).
fn enum_as_structs(
    e: &syn::ItemEnum,
    module: &str,
    imports: &BTreeMap<String, String>,
    structs: &mut Vec<Struct>,
) {
    let mut rule = None;
    for attr in e.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|m| {
            if m.path.is_ident("rename_all") {
                let name: syn::LitStr = m.value()?.parse()?;
                rule = Some(name.value());
            } else if m.input.peek(syn::Token![=]) {
                let _: syn::Expr = m.value()?.parse()?;
            }
            Ok(())
        });
    }
    let path = format!("{module}::{}", e.ident);
    let mut variants = Vec::new();
    for v in &e.variants {
        let key = renamed(&v.ident.to_string(), rule.as_deref());
        let doc = first_sentence(&v.attrs);
        match &v.fields {
            syn::Fields::Named(named) => {
                let variant_path = format!("{path}::{}", v.ident);
                structs.push(Struct {
                    path: variant_path.clone(),
                    fields: named_fields(named),
                    imports: imports.clone(),
                });
                variants.push(Field {
                    key,
                    type_name: String::new(),
                    nested: Some(variant_path),
                    doc,
                });
            }
            syn::Fields::Unnamed(unnamed) if unnamed.unnamed.len() == 1 => variants.push(Field {
                key,
                type_name: inner_type_name(&unnamed.unnamed[0].ty),
                nested: None,
                doc,
            }),
            // Unit variants are plain strings, never keys.
            _ => {}
        }
    }
    structs.push(Struct {
        path,
        fields: variants,
        imports: imports.clone(),
    });
}

/// The struct a field of `owner` of type `name` refers to: the one its file imports under that
/// name (the struct itself, or the only one of that name in the imported path's crate, for
/// re-exports), else the one defined beside `owner`, else the only one in `owner`'s crate, else
/// the only one in the workspace.
fn resolve<'a>(structs: &'a [Struct], owner: &Struct, name: &str) -> Option<&'a Struct> {
    let suffix = format!("::{name}");
    let candidates: Vec<&Struct> = structs
        .iter()
        .filter(|s| s.path.ends_with(&suffix))
        .collect();
    let crate_of = |path: &str| path.split("::").next().unwrap_or_default().to_string();
    let unique = |pick: Vec<&'a Struct>| -> Option<&'a Struct> {
        match pick.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    };
    if let Some(imported) = owner.imports.get(name) {
        if let Some(exact) = candidates.iter().find(|s| &s.path == imported) {
            return Some(exact);
        }
        let same = candidates
            .iter()
            .copied()
            .filter(|s| crate_of(&s.path) == crate_of(imported));
        return unique(same.collect());
    }
    let module = owner.path.rsplit_once("::").map_or("", |(m, _)| m);
    if let Some(beside) = candidates
        .iter()
        .find(|s| s.path == format!("{module}::{name}"))
    {
        return Some(beside);
    }
    let same_crate: Vec<&Struct> = candidates
        .iter()
        .copied()
        .filter(|s| crate_of(&s.path) == crate_of(&owner.path))
        .collect();
    match (same_crate.as_slice(), candidates.as_slice()) {
        ([one], _) | ([], [one]) => Some(one),
        ([], []) => None,
        _ => panic!(
            "{}: the field type {name} names several structs",
            owner.path
        ),
    }
}

/// The table: `owner \t key \t nested struct (or empty) \t comment`, one line per field of the
/// structs reachable from [`ROOTS`], sorted.
fn generate() -> String {
    let structs = parse_structs();
    let mut todo: Vec<String> = ROOTS.iter().map(|r| r.to_string()).collect();
    let mut seen = BTreeSet::new();
    let mut rows = BTreeMap::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let owner = structs
            .iter()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("no serialisable struct {path}"));
        for field in &owner.fields {
            let nested = match &field.nested {
                Some(path) => structs.iter().find(|s| &s.path == path),
                None => resolve(&structs, owner, &field.type_name),
            };
            if let Some(n) = nested {
                todo.push(n.path.clone());
            }
            let doc = field.doc.replace(['\t', '\n'], " ");
            rows.insert(
                (owner.path.clone(), field.key.clone()),
                format!(
                    "{}\t{}\t{}\t{doc}",
                    owner.path,
                    field.key,
                    nested.map_or("", |n| n.path.as_str())
                ),
            );
        }
    }
    let mut out = String::new();
    for row in rows.values() {
        out.push_str(row);
        out.push('\n');
    }
    out
}

#[test]
fn the_comment_table_matches_the_doc_comments() {
    let table = workspace().join("crates/mmcl/src/commands/config_docs.tsv");
    let fresh = generate();
    if std::env::var_os("MMCL_UPDATE_CONFIG_DOCS").is_some() {
        std::fs::write(&table, &fresh).expect("write the table");
        return;
    }
    let committed = std::fs::read_to_string(&table).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: a configuration's fields or doc comments changed; regenerate it with \
         MMCL_UPDATE_CONFIG_DOCS=1 cargo test --release -p mmcl --test config_docs",
        table.display()
    );
    let undocumented: Vec<&str> = fresh.lines().filter(|l| l.ends_with('\t')).collect();
    assert!(
        undocumented.is_empty(),
        "fields without a doc comment: {undocumented:#?}"
    );
}

#[test]
fn every_printed_key_has_a_comment_above_it() {
    for command in [
        "pretrain-mae",
        "pretrain-mmcl",
        "finetune",
        "reproduce",
        "build-dataset",
        "explain",
    ] {
        let out = mmcl(&[command, "--print-config"]);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let mut settings = 0;
        for (i, line) in lines.iter().enumerate() {
            let is_setting = line.starts_with('[')
                || line
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.is_empty() && !k.starts_with(['#', ' ']));
            if !is_setting {
                continue;
            }
            settings += 1;
            let above = if i == 0 { "" } else { lines[i - 1] };
            // A comment, not one of the commented-out optional settings.
            assert!(
                above.starts_with("# ") && above.len() > 6 && !above.contains("    # "),
                "{command} --print-config: no comment above {line:?}:\n{text}"
            );
        }
        assert!(settings > 5, "{command}: {text}");
        // What it prints is TOML still.
        let parsed: Result<toml::Table, _> = toml::from_str(&text);
        assert!(parsed.is_ok(), "{command}: {parsed:?}");
    }
}
