//! Checkpoint layouts of ResNet image encoders, and the tables between them.
//!
//! Two layouts occur:
//! - **torchvision**: `conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
//!   `layer2.0.downsample.0.weight`, … (plus `fc.*`, which the encoder does not use);
//! - **Sequential**: the reference wraps the trunk as `nn.Sequential(*resnet.children()[:-1])`
//!   under `encoder_imaging.`, so its children are numbered: `0` = conv1, `1` = bn1,
//!   `2` = relu, `3` = maxpool, `4`…`7` = layer1…layer4, `8` = avgpool. The released
//!   `image_encoder*.pth` files are `{"state_dict": {"encoder_imaging.<i>…": …}}`.
//!
//! Models are built with torchvision names ([`crate::ResNet::new`]); [`extract_encoder`] finds an
//! encoder in any checkpoint and renames it to torchvision names, and [`released_state_dict`]
//! goes the other way for export. Both directions are [`KeyRemap`] tables built from one list of
//! children ([`rename_rules`]).

use std::sync::LazyLock;

use candle_core::Tensor;
use mmcl_nn::checkpoint::{KeyRemap, KeyRule};
use mmcl_nn::{LoadOptions, LoadReport, ParamStore, StateDict};

use crate::{Error, Result};

/// The key prefix of the image trunk in the reference's Lightning modules and released files.
pub const RELEASED_PREFIX: &str = "encoder_imaging.";

/// The torchvision name of each Sequential child that has parameters.
const SEQUENTIAL_CHILDREN: [(&str, &str); 6] = [
    ("0", "conv1"),
    ("1", "bn1"),
    ("4", "layer1"),
    ("5", "layer2"),
    ("6", "layer3"),
    ("7", "layer4"),
];

/// How an encoder's keys are spelled in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderLayout {
    /// torchvision's attribute names (`conv1`, `layer1`, …).
    Torchvision,
    /// Indices of `nn.Sequential(*resnet.children()[:-1])` (`0`, `1`, `4`…`7`).
    Sequential,
}

/// Rules renaming the trunk's children from the `source` layout under the prefix `from` to the
/// other layout under the prefix `to`: from Sequential, `{from}4.` → `{to}layer1.`, …; from
/// torchvision, `{from}layer1.` → `{to}4.`, …. Keys of other children match no rule.
pub fn rename_rules(source: EncoderLayout, from: &str, to: &str) -> Vec<KeyRule> {
    SEQUENTIAL_CHILDREN
        .iter()
        .map(|&(index, name)| {
            let (old, new) = match source {
                EncoderLayout::Sequential => (index, name),
                EncoderLayout::Torchvision => (name, index),
            };
            KeyRule::ReplacePrefix {
                from: format!("{from}{old}."),
                to: format!("{to}{new}."),
            }
        })
        .collect()
}

/// A whole-key table from the `source` layout to the other one; other keys are dropped.
fn layout_remap(source: EncoderLayout) -> KeyRemap {
    KeyRemap::new()
        .with_rules(rename_rules(source, "", ""))
        .drop_unmatched()
}

/// See [`torchvision_to_sequential`].
static TORCHVISION_TO_SEQUENTIAL: LazyLock<KeyRemap> =
    LazyLock::new(|| layout_remap(EncoderLayout::Torchvision));

/// See [`sequential_to_torchvision`].
static SEQUENTIAL_TO_TORCHVISION: LazyLock<KeyRemap> =
    LazyLock::new(|| layout_remap(EncoderLayout::Sequential));

/// The Sequential-index name of a torchvision key (`layer1.0.conv1.weight` →
/// `4.0.conv1.weight`); `None` for keys outside the trunk (`fc.*`).
pub fn torchvision_to_sequential(key: &str) -> Option<String> {
    TORCHVISION_TO_SEQUENTIAL.apply(key)
}

/// The torchvision name of a Sequential-index key (`0.weight` → `conv1.weight`); `None` for
/// indices that hold no parameters or do not exist.
pub fn sequential_to_torchvision(key: &str) -> Option<String> {
    SEQUENTIAL_TO_TORCHVISION.apply(key)
}

/// An image encoder found in a checkpoint, renamed to torchvision names.
#[derive(Debug, Clone)]
pub struct EncoderCheckpoint {
    /// The encoder's tensors under torchvision names (keys that fit no known name keep their
    /// original spelling, so that loading reports them as unexpected).
    pub state: StateDict,
    /// The layout the checkpoint used.
    pub layout: EncoderLayout,
    /// The prefix the encoder's keys had in the file (`state_dict.encoder_imaging.`, or empty).
    pub prefix: String,
    /// Keys of the file that are not part of the encoder (a projection head, the ECG encoder,
    /// torchvision's `fc`, …), left aside.
    pub ignored: Vec<String>,
}

/// Whether `prefix` ends at a key-component boundary.
fn is_component_prefix(prefix: &str) -> bool {
    prefix.is_empty() || prefix.ends_with('.')
}

/// Every `(prefix, layout)` under which `state` holds a ResNet stem and a first stage.
fn encoder_candidates(state: &StateDict) -> Vec<(String, EncoderLayout)> {
    let is_stem = |key: &str| state.get(key).is_some_and(|t: &Tensor| t.rank() == 4);
    let mut found = Vec::new();
    for key in state.keys() {
        if let Some(prefix) = key.strip_suffix("conv1.weight")
            && is_component_prefix(prefix)
            && is_stem(key)
            && state.contains(&format!("{prefix}layer1.0.conv1.weight"))
        {
            found.push((prefix.to_string(), EncoderLayout::Torchvision));
        }
        if let Some(prefix) = key.strip_suffix("0.weight")
            && is_component_prefix(prefix)
            && is_stem(key)
            && state.contains(&format!("{prefix}4.0.conv1.weight"))
        {
            found.push((prefix.to_string(), EncoderLayout::Sequential));
        }
    }
    found
}

/// Finds the ResNet image encoder in `state` — torchvision layout or the reference's Sequential
/// layout, under any prefix (`state_dict.encoder_imaging.`, `model.backbone.`, none, …) — and
/// returns its tensors under torchvision names.
///
/// `prefix` picks the encoder when a file holds several (or to be explicit); `None` detects it.
///
/// # Errors
/// [`Error::UnrecognisedCheckpoint`] when no encoder (or, with `prefix = None`, more than one)
/// is found.
pub fn extract_encoder(state: &StateDict, prefix: Option<&str>) -> Result<EncoderCheckpoint> {
    let unrecognised = |reason: String| Error::UnrecognisedCheckpoint {
        path: state.source().to_path_buf(),
        reason,
    };
    let mut candidates = encoder_candidates(state);
    if let Some(prefix) = prefix {
        candidates.retain(|(p, _)| p == prefix);
    }
    let (prefix, layout) = match candidates.as_slice() {
        [one] => one.clone(),
        [] => {
            let sample: Vec<&str> = state.keys().take(8).collect();
            return Err(unrecognised(format!(
                "no ResNet image encoder found{} (looked for `conv1.weight` with `layer1.*`, or \
                 Sequential `0.weight` with `4.*`); the file has {} keys, starting with: {}",
                prefix
                    .map(|p| format!(" under the prefix {p:?}"))
                    .unwrap_or_default(),
                state.len(),
                sample.join(", ")
            )));
        }
        many => {
            let names: Vec<String> = many.iter().map(|(p, _)| format!("{p:?}")).collect();
            return Err(unrecognised(format!(
                "several ResNet image encoders found, under the prefixes {}; choose one",
                names.join(", ")
            )));
        }
    };
    // Keys outside the prefix, and torchvision's `fc`, are left aside; Sequential keys that fit
    // no known child keep their spelling, so that loading reports them as unexpected.
    let remap = match layout {
        EncoderLayout::Torchvision => KeyRemap::new()
            .drop_prefix(format!("{prefix}fc."))
            .strip_prefix(prefix.as_str()),
        EncoderLayout::Sequential => KeyRemap::new()
            .with_rules(rename_rules(layout, &prefix, ""))
            .keep_prefix(prefix.as_str()),
    };
    let (encoder, ignored) = state.remap(&remap.drop_unmatched());
    Ok(EncoderCheckpoint {
        state: encoder,
        layout,
        prefix,
        ignored,
    })
}

/// What may differ when loading an encoder into a model built under `model_prefix`: a missing
/// `num_batches_tracked` (older torchvision files and the parity fixtures have none).
pub fn encoder_load_options(model_prefix: &str) -> LoadOptions {
    LoadOptions::strict().allow_missing([format!("{model_prefix}*num_batches_tracked")])
}

/// Loads `encoder` into the variables of a [`crate::ResNet`] built from `store` under
/// `model_prefix` (`""` when built on the store's root builder, `"encoder_imaging."` when built
/// on `vb.pp("encoder_imaging")`). Other variables of the store are left alone.
///
/// # Errors
/// When a key is missing, unexpected or mis-shaped: the error names every one of them.
pub fn load_encoder(
    store: &ParamStore,
    model_prefix: &str,
    encoder: &EncoderCheckpoint,
) -> Result<LoadReport> {
    let state = encoder.state.add_prefix(model_prefix);
    let mut options = encoder_load_options(model_prefix);
    options.allow_missing.extend(
        store
            .named_vars()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !name.starts_with(model_prefix)),
    );
    let mut report = store.load_state_dict(&state, &options)?;
    // Report only what concerns the encoder.
    report.missing.retain(|k| k.starts_with(model_prefix));
    Ok(report)
}

/// The encoder variables of `state` (keys under `model_prefix`, torchvision names) renamed to
/// the released layout: `encoder_imaging.<Sequential index>.…`, buffers included.
///
/// # Errors
/// When a key under `model_prefix` is not part of a ResNet trunk.
pub fn released_state_dict(state: &StateDict, model_prefix: &str) -> Result<StateDict> {
    let mut out = StateDict::with_source(state.source());
    for (key, tensor) in state.iter() {
        let Some(local) = key.strip_prefix(model_prefix) else {
            continue;
        };
        let Some(index_name) = torchvision_to_sequential(local) else {
            return Err(Error::InvalidConfig(format!(
                "{key} is not a parameter of a ResNet trunk; cannot export it in the released \
                 layout"
            )));
        };
        out.insert(format!("{RELEASED_PREFIX}{index_name}"), tensor.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn tables_are_inverse() {
        for key in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer4.2.downsample.1.num_batches_tracked",
        ] {
            let seq = torchvision_to_sequential(key).expect("maps");
            assert_eq!(sequential_to_torchvision(&seq).as_deref(), Some(key));
        }
        assert_eq!(
            torchvision_to_sequential("layer3.5.bn2.weight").as_deref(),
            Some("6.5.bn2.weight")
        );
        assert_eq!(torchvision_to_sequential("fc.weight"), None);
        assert_eq!(sequential_to_torchvision("8.weight"), None);
    }

    fn tensor(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).expect("zeros")
    }

    #[test]
    fn finds_encoders_under_any_prefix_and_refuses_ambiguity() -> Result<()> {
        let mut sd = StateDict::default();
        sd.insert(
            "state_dict.encoder_imaging.0.weight",
            tensor(&[64, 3, 7, 7]),
        );
        sd.insert("state_dict.encoder_imaging.1.weight", tensor(&[64]));
        sd.insert(
            "state_dict.encoder_imaging.4.0.conv1.weight",
            tensor(&[64, 64, 3, 3]),
        );
        sd.insert(
            "state_dict.projection_head_imaging.layers.0.weight",
            tensor(&[8, 512]),
        );
        let found = extract_encoder(&sd, None)?;
        assert_eq!(found.layout, EncoderLayout::Sequential);
        assert_eq!(found.prefix, "state_dict.encoder_imaging.");
        let keys: Vec<&str> = found.state.keys().collect();
        assert_eq!(
            keys,
            vec!["bn1.weight", "conv1.weight", "layer1.0.conv1.weight"]
        );
        assert_eq!(
            found.ignored,
            vec!["state_dict.projection_head_imaging.layers.0.weight".to_string()]
        );
        sd.insert("other.conv1.weight", tensor(&[64, 1, 7, 7]));
        sd.insert("other.layer1.0.conv1.weight", tensor(&[64, 64, 3, 3]));
        sd.insert("other.fc.weight", tensor(&[10, 512]));
        assert!(matches!(
            extract_encoder(&sd, None),
            Err(Error::UnrecognisedCheckpoint { .. })
        ));
        let other = extract_encoder(&sd, Some("other."))?;
        assert_eq!(other.layout, EncoderLayout::Torchvision);
        assert!(other.ignored.contains(&"other.fc.weight".to_string()));
        assert!(extract_encoder(&StateDict::default(), None).is_err());
        Ok(())
    }

    #[test]
    fn unknown_children_keep_their_spelling_and_fc_is_left_aside() -> Result<()> {
        let mut sd = StateDict::default();
        sd.insert("m.0.weight", tensor(&[64, 3, 7, 7]));
        sd.insert("m.4.0.conv1.weight", tensor(&[64, 64, 3, 3]));
        sd.insert("m.9.weight", tensor(&[2]));
        sd.insert("m.10", tensor(&[2]));
        let found = extract_encoder(&sd, None)?;
        let keys: Vec<&str> = found.state.keys().collect();
        assert_eq!(
            keys,
            vec![
                "conv1.weight",
                "layer1.0.conv1.weight",
                "m.10",
                "m.9.weight"
            ]
        );
        assert!(found.ignored.is_empty());

        let mut tv = StateDict::default();
        tv.insert("conv1.weight", tensor(&[64, 3, 7, 7]));
        tv.insert("layer1.0.conv1.weight", tensor(&[64, 64, 3, 3]));
        tv.insert("fc.weight", tensor(&[10, 512]));
        tv.insert("fcx.weight", tensor(&[10]));
        let found = extract_encoder(&tv, None)?;
        assert_eq!(found.layout, EncoderLayout::Torchvision);
        assert_eq!(found.ignored, vec!["fc.weight".to_string()]);
        assert!(found.state.contains("fcx.weight"));
        Ok(())
    }
}
