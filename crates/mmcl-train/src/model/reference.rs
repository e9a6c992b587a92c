//! Loading a multimodal model from one file in the reference's key layout (a Lightning
//! `state_dict`, a `.ckpt`/`.pth` of the reference, or our own `model.safetensors`), with the
//! architecture read from the tensors rather than from metadata.
//!
//! The keys read are `encoder_ecg.*`, `encoder_imaging.<Sequential index>.*`,
//! `projection_head_ecg.layers.{0,2}.*` and `projection_head_imaging.layers.{0,2}.*`, optionally
//! under `state_dict.` (a Lightning checkpoint). The image trunk's variant and channels and the
//! heads' sizes come from the tensors; the ECG encoder's configuration is given (a ViT's depth
//! and heads cannot be read back reliably), and its own loader handles its layouts and the
//! position-embedding resizing. Everything else in the file (an online classifier, optimiser
//! state) is left aside and listed in the [`MultimodalLoadSummary`].

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mmcl_cmr::{ProjectionHead, ResNet, ResNetArch, ResNetConfig};
use mmcl_ecg::{EcgVit, EcgVitConfig};
use mmcl_nn::{LoadOptions, LoadReport, ParamStore, StateDict};

use super::{
    ECG_HEAD_PREFIX, ECG_PREFIX, IMAGING_HEAD_PREFIX, IMAGING_PREFIX, MmclArchitecture, MmclModel,
};
use crate::config::{ClassifierInit, OnlineClassifier};
use crate::{Error, Result};

/// What loading a multimodal checkpoint in the reference's layout did.
#[derive(Debug, Clone)]
pub struct MultimodalLoadSummary {
    /// The file.
    pub path: PathBuf,
    /// The ECG encoder's loading.
    pub ecg: mmcl_ecg::LoadSummary,
    /// The image trunk found (variant and input channels).
    pub imaging: ResNetConfig,
    /// The image trunk's key matching (torchvision names).
    pub imaging_report: LoadReport,
    /// `(input, hidden, output)` of the ECG projection head.
    pub ecg_head: (usize, usize, usize),
    /// `(input, hidden, output)` of the image projection head.
    pub imaging_head: (usize, usize, usize),
    /// Keys of the file outside the four components (an online classifier, …), left aside.
    pub ignored: Vec<String>,
}

impl fmt::Display for MultimodalLoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.ecg)?;
        writeln!(
            f,
            "{}: image encoder {} over {} channel(s), {} tensors loaded; projection heads \
             ECG {:?}, image {:?}",
            self.path.display(),
            self.imaging.model,
            self.imaging.in_channels,
            self.imaging_report.loaded.len(),
            self.ecg_head,
            self.imaging_head
        )?;
        if !self.ignored.is_empty() {
            let shown: Vec<&str> = self.ignored.iter().take(6).map(String::as_str).collect();
            write!(
                f,
                "ignored {} other key(s): {}{}",
                self.ignored.len(),
                shown.join(", "),
                if self.ignored.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// The ResNet variant and input channels of a trunk in torchvision names.
fn infer_resnet(state: &StateDict) -> Result<ResNetConfig> {
    let bad = |reason: String| Error::checkpoint(state.source(), reason);
    let in_channels = match state.get("conv1.weight").map(|t| t.dims().to_vec()) {
        Some(d) if d.len() == 4 => d[1],
        _ => return Err(bad("the image trunk has no 4-D conv1 weight".into())),
    };
    let bottleneck = state.contains("layer1.0.conv3.weight");
    let mut blocks = [0usize; 4];
    for (stage, count) in blocks.iter_mut().enumerate() {
        let prefix = format!("layer{}.", stage + 1);
        *count = state
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0);
    }
    ResNetArch::ALL
        .into_iter()
        .find(|a| {
            a.layers() == blocks && (a.block() == mmcl_cmr::BlockKind::Bottleneck) == bottleneck
        })
        .map(|model| ResNetConfig::new(model, in_channels))
        .ok_or_else(|| {
            bad(format!(
                "the image trunk has {} blocks {blocks:?}, which is no torchvision ResNet",
                if bottleneck { "bottleneck" } else { "basic" }
            ))
        })
}

/// The outer prefix (`""` or `state_dict.`) under which `marker` (a key of one component)
/// appears.
fn outer_prefix(raw: &StateDict, marker: &str) -> Option<String> {
    raw.keys()
        .find_map(|k| k.strip_suffix(marker))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .map(str::to_string)
}

/// A `Linear → ReLU → Linear` projection head read from `prefix.layers.{0,2}.*` of `raw`, its
/// sizes taken from the weights: the head and the store holding its loaded weights.
fn load_head(
    raw: &StateDict,
    prefix: &str,
    device: &Device,
) -> Result<(ProjectionHead, ParamStore)> {
    let state = raw.strip_prefix(prefix);
    let dims = |key: &str| -> Result<(usize, usize)> {
        match state.get(key).map(|t| t.dims().to_vec()).as_deref() {
            Some([out, inp]) => Ok((*out, *inp)),
            _ => Err(Error::checkpoint(
                raw.source(),
                format!("no 2-D {prefix}{key} (a Linear-ReLU-Linear projection head)"),
            )),
        }
    };
    let (hidden, input) = dims("layers.0.weight")?;
    let (output, hidden2) = dims("layers.2.weight")?;
    if hidden2 != hidden {
        return Err(Error::checkpoint(
            raw.source(),
            format!("{prefix}layers.2.weight expects {hidden2} inputs but layers.0 gives {hidden}"),
        ));
    }
    let store = ParamStore::new(0);
    let head = ProjectionHead::new(input, hidden, output, store.var_builder(DType::F32, device))?;
    store.load_state_dict(&state.to_dtype(DType::F32)?, &LoadOptions::strict())?;
    Ok((head, store))
}

impl MmclArchitecture {
    /// The architecture of an inference model: the ECG encoder `ecg`, the image trunk
    /// `imaging`, projection heads `Linear(in, embedding_dim) → ReLU → Linear(embedding_dim,
    /// projection_dim)` (the paper: 2048, 128), and no online classifier.
    pub fn without_classifier(
        ecg: &EcgVitConfig,
        imaging: &ResNetConfig,
        embedding_dim: usize,
        projection_dim: usize,
    ) -> Self {
        Self {
            imaging: imaging.clone(),
            ecg: ecg.clone(),
            embedding_dim,
            projection_dim,
            classifier: OnlineClassifier::None,
            classifier_init: ClassifierInit::Kaiming,
        }
    }
}

impl MmclModel {
    /// Loads a model from one file in the reference's key layout (see the module docs), on
    /// `device` (f32), without an online classifier. The image trunk's variant and channels
    /// and the heads' sizes are read from the tensors, `imaging` (when given) must agree; the
    /// ECG encoder is `ecg`. Keys outside the four components are ignored and listed in the
    /// summary; inside them, every missing or unexpected key is an error naming it.
    ///
    /// [`Self::from_checkpoint`] reads our trainer's checkpoints by their `architecture`
    /// metadata instead; both read `model.safetensors`.
    pub fn from_reference_checkpoint(
        path: &Path,
        ecg: &EcgVitConfig,
        imaging: Option<&ResNetConfig>,
        device: &Device,
    ) -> Result<(Self, MultimodalLoadSummary)> {
        let raw = StateDict::read(path)?;
        let outer = outer_prefix(&raw, "encoder_ecg.patch_embed.proj.weight").ok_or_else(|| {
            Error::checkpoint(
                path,
                format!(
                    "not a multimodal checkpoint: no {ECG_PREFIX}patch_embed.proj.weight (keys \
                     start with {})",
                    raw.keys().take(6).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;

        // Each component is loaded into a store of its own first, so that the checks (and
        // their errors) come in the same order as the components, before the model is built.
        // The ECG encoder goes through its own loader (layouts, position-embedding resizing).
        let (_, ecg_store, ecg_summary) =
            EcgVit::from_checkpoint(ecg, path, ecg.pooling(), device)?;

        let imaging_prefix = format!("{outer}{IMAGING_PREFIX}");
        let mut trunk = mmcl_cmr::checkpoint::extract_encoder(&raw, Some(&imaging_prefix))?;
        trunk.state = trunk.state.to_dtype(DType::F32)?;
        let found = infer_resnet(&trunk.state)?;
        if let Some(want) = imaging
            && *want != found
        {
            return Err(Error::checkpoint(
                path,
                format!(
                    "the configuration asks for a {} over {} channel(s), the file holds a {} \
                     over {}",
                    want.model, want.in_channels, found.model, found.in_channels
                ),
            ));
        }
        let imaging_store = ParamStore::new(0);
        ResNet::new(&found, imaging_store.var_builder(DType::F32, device))?;
        let imaging_report = mmcl_cmr::checkpoint::load_encoder(&imaging_store, "", &trunk)?;

        let (ecg_head, ecg_head_store) =
            load_head(&raw, &format!("{outer}{ECG_HEAD_PREFIX}"), device)?;
        let (imaging_head, imaging_head_store) =
            load_head(&raw, &format!("{outer}{IMAGING_HEAD_PREFIX}"), device)?;
        let check = |what: &str, got: usize, want: usize| -> Result<()> {
            if got == want {
                Ok(())
            } else {
                Err(Error::checkpoint(
                    path,
                    format!("the {what} has {got} inputs, the encoder gives {want}"),
                ))
            }
        };
        check("ECG projection head", ecg_head.dims().0, ecg.embed_dim)?;
        check(
            "image projection head",
            imaging_head.dims().0,
            found.feature_dim(),
        )?;
        if ecg_head.dims().2 != imaging_head.dims().2 {
            return Err(Error::checkpoint(
                path,
                format!(
                    "the projection heads map to different sizes ({} for the ECG, {} for the \
                     image)",
                    ecg_head.dims().2,
                    imaging_head.dims().2
                ),
            ));
        }
        // The reference builds both heads with one `embedding_dim`, and so does this model.
        if ecg_head.dims().1 != imaging_head.dims().1 {
            return Err(Error::checkpoint(
                path,
                format!(
                    "the projection heads have different hidden widths ({} for the ECG, {} for \
                     the image)",
                    ecg_head.dims().1,
                    imaging_head.dims().1
                ),
            ));
        }

        let components = [
            ECG_PREFIX,
            IMAGING_PREFIX,
            ECG_HEAD_PREFIX,
            IMAGING_HEAD_PREFIX,
        ];
        let ignored = raw
            .keys()
            .filter(|k| {
                !components
                    .iter()
                    .any(|c| k.starts_with(&format!("{outer}{c}")))
            })
            .map(str::to_string)
            .collect();

        let (_, hidden, out) = ecg_head.dims();
        let arch = MmclArchitecture::without_classifier(ecg, &found, hidden, out);
        let model = Self::new(&arch, 0, device)?;
        // The components' stores hold internal names (timm keys, torchvision names, head
        // layers); under their prefixes they are exactly the model's variables.
        let mut state = StateDict::with_source(path);
        for (prefix, store) in [
            (ECG_PREFIX, &ecg_store),
            (IMAGING_PREFIX, &imaging_store),
            (ECG_HEAD_PREFIX, &ecg_head_store),
            (IMAGING_HEAD_PREFIX, &imaging_head_store),
        ] {
            for (name, var) in store.named_vars() {
                state.insert(format!("{prefix}{name}"), var.as_tensor().clone());
            }
        }
        model
            .store()
            .load_state_dict(&state, &LoadOptions::strict())?;
        let summary = MultimodalLoadSummary {
            path: path.to_path_buf(),
            ecg: ecg_summary,
            imaging: found,
            imaging_report,
            ecg_head: ecg_head.dims(),
            imaging_head: imaging_head.dims(),
            ignored,
        };
        Ok((model, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_prefix_is_a_whole_component() {
        let mut raw = StateDict::default();
        let t = candle_core::Tensor::zeros(1, DType::F32, &Device::Cpu).expect("tensor");
        raw.insert("state_dict.encoder_ecg.patch_embed.proj.weight", t.clone());
        assert_eq!(
            outer_prefix(&raw, "encoder_ecg.patch_embed.proj.weight").as_deref(),
            Some("state_dict.")
        );
        let mut glued = StateDict::default();
        glued.insert("xencoder_ecg.patch_embed.proj.weight", t);
        assert_eq!(
            outer_prefix(&glued, "encoder_ecg.patch_embed.proj.weight"),
            None
        );
    }
}
