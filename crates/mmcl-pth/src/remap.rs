//! Declarative key-rename tables: checkpoints written by the reference name their tensors after
//! its modules (`state_dict.encoder_imaging.4.0.conv1.weight`), our models after theirs
//! (`layer1.0.conv1.weight`); a [`KeyRemap`] states the translation as data instead of string
//! surgery at each call site.

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// One rule of a [`KeyRemap`]. Prefixes are plain text (a `*` in them is a character); only
/// [`KeyRule::DropMatching`] takes a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// A key starting with `from` gets `to` in place of it: an empty `to` strips the prefix, an
    /// empty `from` adds one to every key.
    ReplacePrefix {
        /// The prefix to replace.
        from: String,
        /// What replaces it.
        to: String,
    },
    /// The key equal to `from` becomes `to`.
    Rename {
        /// The key as the checkpoint spells it.
        from: String,
        /// Its new name.
        to: String,
    },
    /// A key starting with this prefix is kept as it is.
    KeepPrefix(String),
    /// A key starting with this prefix is dropped.
    DropPrefix(String),
    /// A key matching this pattern (`*` matches any run of characters, see [`glob_match`]) is
    /// dropped.
    DropMatching(String),
}

impl KeyRule {
    /// What the rule does to `key`: `None` when it does not apply, `Some(None)` when it drops the
    /// key, `Some(Some(name))` when it keeps it as `name`.
    fn apply(&self, key: &str) -> Option<Option<String>> {
        match self {
            KeyRule::ReplacePrefix { from, to } => key
                .strip_prefix(from.as_str())
                .map(|rest| Some(format!("{to}{rest}"))),
            KeyRule::Rename { from, to } => (key == from).then(|| Some(to.clone())),
            KeyRule::KeepPrefix(prefix) => key.starts_with(prefix).then(|| Some(key.to_string())),
            KeyRule::DropPrefix(prefix) => key.starts_with(prefix).then_some(None),
            KeyRule::DropMatching(pattern) => glob_match(pattern, key).then_some(None),
        }
    }
}

/// An ordered table of [`KeyRule`]s applied to every key of a checkpoint.
///
/// The first rule that applies to a key decides what becomes of it; a key no rule applies to is
/// kept as it is, or dropped after [`KeyRemap::drop_unmatched`]. The default remap keeps every
/// key.
///
/// ```
/// use mmcl_pth::KeyRemap;
///
/// // The reference's Sequential image trunk under a Lightning prefix, to torchvision names.
/// let trunk = KeyRemap::new()
///     .replace_prefix("state_dict.encoder_imaging.0.", "conv1.")
///     .replace_prefix("state_dict.encoder_imaging.4.", "layer1.")
///     .keep_prefix("state_dict.encoder_imaging.")
///     .drop_unmatched();
/// assert_eq!(trunk.apply("state_dict.encoder_imaging.4.0.conv1.weight").as_deref(),
///            Some("layer1.0.conv1.weight"));
/// // Under the prefix but in no rule: kept as spelled (a load then reports it as unexpected).
/// assert_eq!(trunk.apply("state_dict.encoder_imaging.9.weight").as_deref(),
///            Some("state_dict.encoder_imaging.9.weight"));
/// assert_eq!(trunk.apply("state_dict.projection_head_imaging.layers.0.weight"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRemap {
    rules: Vec<KeyRule>,
    drop_unmatched: bool,
}

/// The outcome of applying a [`KeyRemap`] to named values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remapped<T> {
    /// The values kept, under their new names, in input order.
    pub kept: Vec<(String, T)>,
    /// The original names of the values dropped, in input order.
    pub dropped: Vec<String>,
}

impl KeyRemap {
    /// A remap without rules: every key is kept as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `rule`.
    pub fn rule(mut self, rule: KeyRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Appends every rule of `rules`, in order.
    pub fn with_rules(mut self, rules: impl IntoIterator<Item = KeyRule>) -> Self {
        self.rules.extend(rules);
        self
    }

    /// Appends [`KeyRule::ReplacePrefix`].
    pub fn replace_prefix(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rule(KeyRule::ReplacePrefix {
            from: from.into(),
            to: to.into(),
        })
    }

    /// Appends a rule removing `prefix` from the keys that start with it.
    pub fn strip_prefix(self, prefix: impl Into<String>) -> Self {
        self.replace_prefix(prefix, "")
    }

    /// Appends [`KeyRule::Rename`].
    pub fn rename(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rule(KeyRule::Rename {
            from: from.into(),
            to: to.into(),
        })
    }

    /// Appends [`KeyRule::KeepPrefix`].
    pub fn keep_prefix(self, prefix: impl Into<String>) -> Self {
        self.rule(KeyRule::KeepPrefix(prefix.into()))
    }

    /// Appends [`KeyRule::DropPrefix`].
    pub fn drop_prefix(self, prefix: impl Into<String>) -> Self {
        self.rule(KeyRule::DropPrefix(prefix.into()))
    }

    /// Appends one [`KeyRule::DropMatching`] per pattern.
    pub fn drop_matching<S: Into<String>>(self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.with_rules(
            patterns
                .into_iter()
                .map(|p| KeyRule::DropMatching(p.into())),
        )
    }

    /// Drops the keys that no rule applies to (instead of keeping them).
    pub fn drop_unmatched(mut self) -> Self {
        self.drop_unmatched = true;
        self
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[KeyRule] {
        &self.rules
    }

    /// The new name of `key`, or `None` when the remap drops it.
    pub fn apply(&self, key: &str) -> Option<String> {
        match self.rules.iter().find_map(|rule| rule.apply(key)) {
            Some(fate) => fate,
            None if self.drop_unmatched => None,
            None => Some(key.to_string()),
        }
    }

    /// Applies the remap to every name of `named` (e.g. the tensors [`crate::read_file`]
    /// returns).
    pub fn apply_to<T>(&self, named: impl IntoIterator<Item = (String, T)>) -> Remapped<T> {
        let mut out = Remapped {
            kept: Vec::new(),
            dropped: Vec::new(),
        };
        for (key, value) in named {
            match self.apply(&key) {
                Some(name) => out.kept.push((name, value)),
                None => out.dropped.push(key),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("head.*", "head.weight"));
        assert!(!glob_match("head.*", "fc_norm.weight"));
        assert!(glob_match("decoder_*", "decoder_blocks.0.attn.qkv.weight"));
        assert!(glob_match(
            "*.num_batches_tracked",
            "layer1.0.bn1.num_batches_tracked"
        ));
        assert!(glob_match("blocks.*.attn.*", "blocks.3.attn.qkv.bias"));
        assert!(!glob_match("blocks.*.attn.*", "blocks.3.mlp.fc1.bias"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn the_first_applicable_rule_decides() {
        let remap = KeyRemap::new()
            .drop_prefix("model.fc.")
            .rename("model.cls_token", "cls")
            .strip_prefix("model.")
            .drop_matching(["*.num_batches_tracked"]);
        assert_eq!(remap.apply("model.fc.weight"), None);
        assert_eq!(remap.apply("model.cls_token").as_deref(), Some("cls"));
        assert_eq!(
            remap.apply("model.blocks.0.w").as_deref(),
            Some("blocks.0.w")
        );
        // The strip applies first: a rule never sees another rule's output.
        assert_eq!(
            remap.apply("model.bn.num_batches_tracked").as_deref(),
            Some("bn.num_batches_tracked")
        );
        assert_eq!(remap.apply("bn.num_batches_tracked"), None);
        assert_eq!(remap.apply("other").as_deref(), Some("other"));
        assert_eq!(remap.clone().drop_unmatched().apply("other"), None);
        // A `*` in a prefix is a character, not a pattern.
        let literal = KeyRemap::new().strip_prefix("a*.").drop_unmatched();
        assert_eq!(literal.apply("a*.w").as_deref(), Some("w"));
        assert_eq!(literal.apply("ab.w"), None);
    }

    #[test]
    fn apply_to_keeps_order_and_lists_what_it_drops() {
        let named = [("b.x", 1), ("a.y", 2), ("b.z", 3)].map(|(k, v)| (k.to_string(), v));
        let out = KeyRemap::new()
            .strip_prefix("b.")
            .drop_unmatched()
            .apply_to(named);
        assert_eq!(out.kept, vec![("x".to_string(), 1), ("z".to_string(), 3)]);
        assert_eq!(out.dropped, vec!["a.y".to_string()]);
        let all = KeyRemap::new().replace_prefix("", "m.").apply("w");
        assert_eq!(all.as_deref(), Some("m.w"));
    }
}
