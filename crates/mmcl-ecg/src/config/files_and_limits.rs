//! What every configuration of this crate shares: reading a JSON file with errors naming the
//! key, and the size checks (parameters, tokens, activations) a transformer trunk must pass
//! before any tensor exists.

use std::path::Path;

use mmcl_core::config::{MAX_ACTIVATIONS, checked_product, checked_sum, json_error_key};

use crate::{Error, Result};

/// Reads a JSON configuration file into `T`; a parse error names the file and, where the
/// parser points into an object, the key path of the offending value (checks of the whole
/// configuration name their keys in their message).
pub(crate) fn read_json_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = mmcl_core::config::read_config_text(path).map_err(|e| match e {
        mmcl_core::Error::Io { path, source } => Error::ConfigIo { path, source },
        other => Error::ConfigValue {
            path: path.to_path_buf(),
            key: None,
            reason: other.to_string(),
        },
    })?;
    serde_json::from_str(&text).map_err(|source| Error::ConfigValue {
        path: path.to_path_buf(),
        key: json_error_key(&text, &source),
        reason: source.to_string(),
    })
}

/// The names of a transformer trunk's keys (the encoder's, or the MAE decoder's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrunkKeys {
    /// The width.
    pub(crate) dim: &'static str,
    /// The attention heads.
    pub(crate) heads: &'static str,
}

impl TrunkKeys {
    /// The encoder's keys.
    pub(crate) const ENCODER: TrunkKeys = TrunkKeys {
        dim: "embed_dim",
        heads: "num_heads",
    };
}

/// The MLP width `int(dim · mlp_ratio)` of a block (`None` when it does not fit in 64 bits).
fn mlp_hidden(dim: u64, mlp_ratio: f64) -> Option<u64> {
    let hidden = (dim as f64 * mlp_ratio).floor();
    (hidden.is_finite() && hidden >= 0.0 && hidden < u64::MAX as f64).then_some(hidden as u64)
}

/// Parameters of `depth` pre-norm blocks of width `dim` (attention with biases, MLP
/// `mlp_ratio` wider, two LayerNorms) and a position table of `positions` rows.
pub(crate) fn trunk_parameters(
    dim: u64,
    depth: u64,
    mlp_ratio: f64,
    positions: u64,
) -> Option<u64> {
    let hidden = mlp_hidden(dim, mlp_ratio)?;
    let block = checked_sum(&[
        // qkv and proj, weights and biases.
        checked_product(&[4, dim, dim]),
        checked_product(&[4, dim]),
        // fc1 and fc2.
        checked_product(&[2, dim, hidden]),
        checked_sum(&[Some(hidden), Some(dim)]),
        // norm1 and norm2.
        checked_product(&[4, dim]),
    ])?;
    checked_sum(&[block.checked_mul(depth), checked_product(&[positions, dim])])
}

/// Checks the largest activations of one sample in a trunk over `tokens` tokens: the token ×
/// MLP-width matrix and the attention maps (heads × tokens²).
pub(crate) fn check_trunk_activations(
    keys: TrunkKeys,
    dim: usize,
    heads: usize,
    mlp_ratio: f64,
    tokens: u64,
) -> Result<()> {
    let hidden = mlp_hidden(dim as u64, mlp_ratio);
    if hidden == Some(0) {
        return Err(Error::Config(format!(
            "{} {dim} and mlp_ratio {mlp_ratio} make an MLP without hidden units",
            keys.dim
        )));
    }
    let width = hidden.map(|h| h.max(dim as u64));
    check_limit(
        &format!(
            "{tokens} tokens of {} {dim} and mlp_ratio {mlp_ratio}",
            keys.dim
        ),
        "activations per sample",
        width.and_then(|w| w.checked_mul(tokens)),
        MAX_ACTIVATIONS,
    )?;
    check_limit(
        &format!("{} {heads} over {tokens} tokens", keys.heads),
        "attention weights per sample",
        checked_product(&[heads as u64, tokens, tokens]),
        MAX_ACTIVATIONS,
    )
}

/// [`mmcl_core::config::check_limit`] as this crate's configuration error.
pub(crate) fn check_limit(
    keys: &str,
    quantity: &str,
    value: Option<u64>,
    limit: u64,
) -> Result<()> {
    mmcl_core::config::check_limit(keys, quantity, value, limit).map_err(Error::Config)
}
