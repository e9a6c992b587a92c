//! Loading the ECG encoder from the reference's checkpoint layouts.
//!
//! | layout | keys | source |
//! |---|---|---|
//! | plain | `patch_embed.proj.weight`, `blocks.0.…` | timm `state_dict()`, our safetensors |
//! | `{"model": …}` | `model.blocks.0.…` | MAE pre-training, released `signal_encoder*.pth` |
//! | Lightning | `state_dict.encoder_ecg.blocks.0.…` | MMCL training checkpoints |
//! | prefixed | `encoder_ecg.blocks.0.…` | a Lightning `state_dict` saved on its own |
//!
//! MAE checkpoints also hold the decoder (`decoder_*`), `mask_token` and the contrastive
//! `projector.*` / `predictor.*`: they are ignored. A checkpoint without `head` / `fc_norm` (the
//! released encoders) leaves them at their initialisation, `fc_norm` at weight 1, bias 0, as the
//! reference's non-strict loading does; the summary lists them. A position embedding of another
//! length is resized bicubically to the model's grid (`interpolate_pos_embed`).

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mmcl_nn::checkpoint::{KeyRemap, LoadOptions, LoadReport, glob_match};
use mmcl_nn::rng::SharedRng;
use mmcl_nn::{ParamStore, StateDict};

use crate::{EcgVit, EcgVitConfig, Error, Pooling, Result};

/// Where in a checkpoint the encoder's tensors were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// Keys as the encoder names them.
    Plain,
    /// Under `model.` (MAE pre-training checkpoints, released signal encoders).
    Model,
    /// Under `state_dict.encoder_ecg.` (PyTorch Lightning checkpoints of MMCL).
    Lightning,
    /// Under `encoder_ecg.` (a Lightning state dict saved alone).
    EncoderPrefixed,
    /// Under `state_dict.` (a Lightning checkpoint of the encoder alone).
    StateDict,
}

impl CheckpointLayout {
    /// The key prefix of the layout.
    pub fn prefix(self) -> &'static str {
        match self {
            CheckpointLayout::Plain => "",
            CheckpointLayout::Model => "model.",
            CheckpointLayout::Lightning => "state_dict.encoder_ecg.",
            CheckpointLayout::EncoderPrefixed => "encoder_ecg.",
            CheckpointLayout::StateDict => "state_dict.",
        }
    }
}

impl fmt::Display for CheckpointLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointLayout::Plain => write!(f, "plain state dict"),
            other => write!(f, "keys under \"{}\"", other.prefix()),
        }
    }
}

/// Checkpoint keys that belong to the masked autoencoder around the encoder, not to it.
const MAE_ONLY: [&str; 5] = [
    "decoder_*",
    "mask_token",
    "projector.*",
    "predictor.*",
    "criterion.*",
];

/// The encoder's part of a checkpoint.
#[derive(Debug, Clone)]
pub struct EncoderState {
    /// The encoder's tensors under the encoder's own names.
    pub state: StateDict,
    /// Where they were found.
    pub layout: CheckpointLayout,
    /// Keys of the (un-prefixed) checkpoint that belong to the MAE around the encoder.
    pub ignored: Vec<String>,
}

/// Finds the encoder's tensors in any supported layout.
pub fn extract_encoder(raw: &StateDict) -> Result<EncoderState> {
    let marker = "patch_embed.proj.weight";
    let layout = [
        CheckpointLayout::Lightning,
        CheckpointLayout::EncoderPrefixed,
        CheckpointLayout::Model,
        CheckpointLayout::StateDict,
        CheckpointLayout::Plain,
    ]
    .into_iter()
    .find(|l| raw.contains(&format!("{}{marker}", l.prefix())))
    .ok_or_else(|| {
        let sample: Vec<&str> = raw.keys().take(8).collect();
        Error::Checkpoint {
            path: raw.source().to_path_buf(),
            reason: format!(
                "no ECG encoder found (no {marker} under any known prefix; keys start with {})",
                sample.join(", ")
            ),
        }
    })?;
    let (state, ignored) = raw
        .strip_prefix(layout.prefix())
        .remap(&KeyRemap::new().drop_matching(MAE_ONLY));
    Ok(EncoderState {
        state,
        layout,
        ignored,
    })
}

/// What loading a checkpoint into the encoder did.
#[derive(Debug, Clone)]
pub struct LoadSummary {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Where the encoder was found in it.
    pub layout: CheckpointLayout,
    /// The key matching (loaded, missing-but-allowed, …).
    pub report: LoadReport,
    /// Checkpoint keys left out on purpose (MAE decoder, a head of another size, components this
    /// encoder is not configured with).
    pub ignored: Vec<String>,
    /// The position embedding was resized from this many tokens to the model's.
    pub pos_embed_resized: Option<(usize, usize)>,
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} tensors loaded ({})",
            self.path.display(),
            self.report.loaded.len(),
            self.layout
        )?;
        if !self.report.missing.is_empty() {
            write!(
                f,
                "; not in the checkpoint, left at initialisation: {}",
                self.report.missing.join(", ")
            )?;
        }
        if !self.ignored.is_empty() {
            write!(f, "; ignored: {}", summarise(&self.ignored))?;
        }
        if let Some((from, to)) = self.pos_embed_resized {
            write!(f, "; position embedding resized from {from} to {to} tokens")?;
        }
        Ok(())
    }
}

/// `a, b, c and N more`.
fn summarise(keys: &[String]) -> String {
    const SHOW: usize = 6;
    if keys.len() <= SHOW {
        keys.join(", ")
    } else {
        format!("{} and {} more", keys[..SHOW].join(", "), keys.len() - SHOW)
    }
}

/// Loads the encoder part of the checkpoint at `path` into the variables of `store` (built with
/// [`EcgVit::new`] from `cfg`).
///
/// Keys the model needs for `pooling` must be present: the class-token path needs `norm`,
/// attention pooling needs `attention_pool`; `fc_norm` and `head` may be absent (they keep their
/// initialisation, `fc_norm` = identity, as in the reference). Every other missing or unexpected
/// key is an error naming it; nothing is changed when loading fails.
pub fn load_encoder(
    store: &ParamStore,
    cfg: &EcgVitConfig,
    path: &Path,
    pooling: Pooling,
) -> Result<LoadSummary> {
    let raw = StateDict::read(path)?;
    let EncoderState {
        mut state,
        layout,
        mut ignored,
    } = extract_encoder(&raw)?;

    // Components the checkpoint has but this configuration does not, and a head of another
    // size: the reference's non-strict loading skips them too.
    let model_shape = |name: &str| store.get(name).map(|v| v.as_tensor().dims().to_vec());
    let skip: Vec<String> = state
        .iter()
        .filter(|(k, t)| {
            let optional = ["head.*", "fc_norm.*", "attention_pool.*"]
                .iter()
                .any(|p| glob_match(p, k));
            optional && model_shape(k).is_none_or(|s| s != t.dims())
        })
        .map(|(k, _)| k.to_string())
        .collect();
    for k in skip {
        state.remove(&k);
        ignored.push(k);
    }

    let pos_embed_resized = resize_pos_embed(&mut state, cfg, path)?;

    let mut allow_missing = vec!["head.*", "fc_norm.*"];
    if pooling != Pooling::Cls {
        // mae's fine-tuned ViTs delete `norm` when they pool.
        allow_missing.push("norm.*");
    }
    if pooling != Pooling::Attention {
        allow_missing.push("attention_pool.*");
    }
    let options = LoadOptions::strict().allow_missing(allow_missing);
    let report = store.load_state_dict(&state, &options)?;
    Ok(LoadSummary {
        path: path.to_path_buf(),
        layout,
        report,
        ignored,
        pos_embed_resized,
    })
}

/// Resizes a checkpoint's `pos_embed` whose length differs from the model's, keeping the
/// class-token row and the number of grid rows (leads), as MMCL's `interpolate_pos_embed`.
fn resize_pos_embed(
    state: &mut StateDict,
    cfg: &EcgVitConfig,
    path: &Path,
) -> Result<Option<(usize, usize)>> {
    let Some(pos) = state.get("pos_embed") else {
        return Ok(None);
    };
    let (rows, cols) = cfg.grid_size();
    let want = 1 + rows * cols;
    let dims = pos.dims().to_vec();
    match dims.as_slice() {
        [1, n, d] if *n == want && *d == cfg.embed_dim => Ok(None),
        [1, n, d] if *d == cfg.embed_dim && *n > 1 && (n - 1) % rows == 0 => {
            let resized = mmcl_nn::pos_embed::interpolate_pos_embed(pos, 1, rows, cols)?;
            let from = *n;
            state.insert("pos_embed", resized);
            Ok(Some((from, want)))
        }
        _ => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "pos_embed has shape {dims:?}, which cannot be resized to the model's \
                 [1, {want}, {}] (a grid of {rows} lead rows plus the class token)",
                cfg.embed_dim
            ),
        }),
    }
}

impl EcgVit {
    /// Builds an encoder for `cfg` on `device` (f32) and loads the checkpoint at `path` into it;
    /// returns the model, its parameter store and what the loading did.
    ///
    /// `pooling` is the pooling the caller will use (see [`load_encoder`] for what it requires).
    pub fn from_checkpoint(
        cfg: &EcgVitConfig,
        path: &Path,
        pooling: Pooling,
        device: &Device,
    ) -> Result<(EcgVit, ParamStore, LoadSummary)> {
        let store = ParamStore::new(0);
        let model = EcgVit::new(
            cfg,
            SharedRng::new(0),
            store.var_builder(DType::F32, device),
        )?;
        let summary = load_encoder(&store, cfg, path, pooling)?;
        Ok((model, store, summary))
    }

    /// Builds a freshly initialised encoder for `cfg` on `device` (f32) from `seed` (weights
    /// and training randomness).
    pub fn from_seed(
        cfg: &EcgVitConfig,
        seed: u64,
        device: &Device,
    ) -> Result<(EcgVit, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = EcgVit::new(
            cfg,
            SharedRng::new(seed),
            store.var_builder(DType::F32, device),
        )?;
        Ok((model, store))
    }
}

/// Key of the safetensors metadata entry in which an exported encoder carries its configuration
/// (JSON, every key), so that the file loads by itself, without a separate configuration file.
pub const EXPORT_CONFIG_KEY: &str = "ecg_config";

impl EcgVitConfig {
    /// The metadata of an exported encoder's safetensors file: this configuration under
    /// [`EXPORT_CONFIG_KEY`].
    pub fn export_metadata(&self) -> Result<std::collections::HashMap<String, String>> {
        let json = serde_json::to_string(self)
            .map_err(|e| Error::Config(format!("cannot serialise the configuration: {e}")))?;
        Ok([(EXPORT_CONFIG_KEY.to_string(), json)].into())
    }

    /// The configuration an exported encoder carries ([`Self::export_metadata`]); `None` for a
    /// file without one (a PyTorch checkpoint, a safetensors file written elsewhere or by an
    /// older version). Only the file's header is read.
    pub fn from_export(path: &Path) -> Result<Option<Self>> {
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        if !is_safetensors {
            return Ok(None);
        }
        let metadata = mmcl_nn::checkpoint::read_safetensors_metadata(path)?;
        let Some(json) = metadata.get(EXPORT_CONFIG_KEY) else {
            return Ok(None);
        };
        let cfg: Self = serde_json::from_str(json).map_err(|source| Error::ConfigJson {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Some(cfg))
    }
}

/// The tensors of an encoder as a plain state dict (for saving or converting), on the CPU.
pub fn encoder_state_dict(store: &ParamStore) -> Result<StateDict> {
    let mut out = StateDict::default();
    for (name, var) in store.named_vars() {
        out.insert(name, var.as_tensor().to_device(&Device::Cpu)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn sd(keys: &[&str]) -> StateDict {
        keys.iter()
            .map(|k| {
                let t = Tensor::zeros(1, DType::F32, &Device::Cpu).expect("tensor");
                (k.to_string(), t)
            })
            .collect()
    }

    #[test]
    fn layouts_are_recognised() {
        let cases = [
            (
                vec![
                    "state_dict.encoder_ecg.patch_embed.proj.weight",
                    "state_dict.encoder_imaging.0.weight",
                ],
                CheckpointLayout::Lightning,
            ),
            (
                vec![
                    "model.patch_embed.proj.weight",
                    "model.decoder_embed.weight",
                    "model.mask_token",
                ],
                CheckpointLayout::Model,
            ),
            (
                vec!["encoder_ecg.patch_embed.proj.weight"],
                CheckpointLayout::EncoderPrefixed,
            ),
            (
                vec!["patch_embed.proj.weight", "head.weight"],
                CheckpointLayout::Plain,
            ),
        ];
        for (keys, layout) in cases {
            let e = extract_encoder(&sd(&keys)).expect("found");
            assert_eq!(e.layout, layout);
            assert!(e.state.contains("patch_embed.proj.weight"));
            assert!(
                e.state
                    .keys()
                    .all(|k| !k.starts_with("decoder") && k != "mask_token")
            );
        }
        let e = extract_encoder(&sd(&[
            "model.patch_embed.proj.weight",
            "model.decoder_pred.bias",
        ]))
        .expect("found");
        assert_eq!(e.ignored, vec!["decoder_pred.bias"]);
        let err = extract_encoder(&sd(&["encoder_imaging.0.weight"])).expect_err("no encoder");
        assert!(err.to_string().contains("no ECG encoder"));
    }
}
