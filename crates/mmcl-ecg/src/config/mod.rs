//! The encoder's configuration, with the reference's argument names and presets.

use std::path::Path;

use mmcl_nn::config::{MAX_ACTIVATIONS, MAX_PARAMETERS, MAX_TOKENS, checked_product, checked_sum};
use mmcl_nn::init::WeightInit;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod files_and_limits;
pub(crate) use files_and_limits::{
    TrunkKeys, check_limit, check_trunk_activations, read_json_config, trunk_parameters,
};

/// How the token sequence becomes one embedding (or stays a sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the patch tokens, then `fc_norm` (the paper's embedding).
    Global,
    /// The class token after `norm`.
    Cls,
    /// A multi-head attention whose query is the token mean (`attention_pool`), then `fc_norm`.
    Attention,
    /// Every patch token after the last block, without norm (for localisation).
    Tokens,
}

impl Pooling {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Global => "global",
            Pooling::Cls => "cls",
            Pooling::Attention => "attention",
            Pooling::Tokens => "tokens",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "global" | "global_pool" | "avg" => Ok(Pooling::Global),
            "cls" | "token" | "cls_token" => Ok(Pooling::Cls),
            "attention" | "attention_pool" => Ok(Pooling::Attention),
            "tokens" | "localized" => Ok(Pooling::Tokens),
            other => Err(Error::InvalidArgument(format!(
                "unknown pooling {other:?}: use global, cls, attention or tokens"
            ))),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The ECG Vision Transformer's hyper-parameters, named as the reference's constructor
/// arguments (`ECGEncoder` / timm `VisionTransformer`).
///
/// JSON files may name a preset in `"model"` (e.g. `"vit_tiny_patchX"`) and give only what
/// differs; explicit keys override the preset. Unknown keys are errors (typos are caught).
///
/// ```
/// let cfg: mmcl_ecg::EcgVitConfig = serde_json::from_str(
///     r#"{"model": "vit_tiny_patchX", "img_size": [1, 12, 2500], "patch_size": [1, 100],
///         "global_pool": true}"#,
/// ).unwrap();
/// assert_eq!((cfg.embed_dim, cfg.depth, cfg.num_heads), (384, 3, 6));
/// assert_eq!(cfg.num_patches(), 300);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct EcgVitConfig {
    /// The preset this configuration started from, if any (informative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Input size `[C, leads, T]` (the reference's `input_size`, e.g. `[1, 12, 2500]`).
    pub img_size: [usize; 3],
    /// Patch size `[leads, samples]` (e.g. `[1, 100]`).
    pub patch_size: [usize; 2],
    /// Token dimension.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width relative to `embed_dim`.
    pub mlp_ratio: f64,
    /// Whether the `qkv` projections have a bias.
    pub qkv_bias: bool,
    /// Dropout after the position embedding, projections and MLP layers.
    pub drop_rate: f64,
    /// Dropout on attention probabilities.
    pub attn_drop_rate: f64,
    /// Stochastic depth, increasing linearly to this rate over the blocks.
    pub drop_path_rate: f64,
    /// Global average pooling of the patch tokens + `fc_norm` (else the class token + `norm`).
    pub global_pool: bool,
    /// Attention pooling + `fc_norm`; takes precedence over `global_pool`, as in MMCL.
    pub attention_pool: bool,
    /// Classes of the linear head on the pooled features (0: no head).
    pub num_classes: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Initialisation of fresh weights (checkpoints overwrite them).
    pub weight_init: WeightInit,
}

/// The JSON form: every key optional, so that a preset can fill the rest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: Option<String>,
    #[serde(alias = "input_size")]
    img_size: Option<[usize; 3]>,
    patch_size: Option<[usize; 2]>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    num_heads: Option<usize>,
    mlp_ratio: Option<f64>,
    qkv_bias: Option<bool>,
    drop_rate: Option<f64>,
    attn_drop_rate: Option<f64>,
    #[serde(alias = "drop_path")]
    drop_path_rate: Option<f64>,
    global_pool: Option<bool>,
    attention_pool: Option<bool>,
    num_classes: Option<usize>,
    layer_norm_eps: Option<f64>,
    weight_init: Option<WeightInit>,
}

impl TryFrom<RawConfig> for EcgVitConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> std::result::Result<Self, String> {
        let preset = raw
            .model
            .as_deref()
            .map(|name| preset_or_error(name, Preset::find(name), Preset::names))
            .transpose()?;
        let (img_size, patch_size) = required_shapes(raw.img_size, raw.patch_size)?;
        let [embed_dim, depth, num_heads] = required_sizes(
            [raw.embed_dim, raw.depth, raw.num_heads],
            preset.map(|p| (p.embed_dim, p.depth, p.num_heads)),
            ENCODER_SIZE_KEYS,
        )?;
        let cfg = EcgVitConfig {
            model: raw.model.clone(),
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: raw.mlp_ratio.unwrap_or(4.0),
            qkv_bias: raw.qkv_bias.unwrap_or(true),
            drop_rate: raw.drop_rate.unwrap_or(0.0),
            attn_drop_rate: raw.attn_drop_rate.unwrap_or(0.0),
            drop_path_rate: raw.drop_path_rate.unwrap_or(0.0),
            global_pool: raw.global_pool.unwrap_or(false),
            attention_pool: raw.attention_pool.unwrap_or(false),
            num_classes: raw.num_classes.unwrap_or(0),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
            weight_init: raw.weight_init.unwrap_or_default(),
        };
        cfg.validate().map_err(config_reason)?;
        Ok(cfg)
    }
}

/// The preset `found` under `name`, or the error that lists the `known` names: the encoder's
/// and the masked autoencoder's configurations look their presets up alike.
pub(crate) fn preset_or_error<P>(
    name: &str,
    found: Option<P>,
    known: impl FnOnce() -> Vec<&'static str>,
) -> std::result::Result<P, String> {
    found.ok_or_else(|| {
        format!(
            "unknown model {name:?}; known presets: {}",
            known().join(", ")
        )
    })
}

/// The keys of the encoder's sizes, in the order of [`required_sizes`].
pub(crate) const ENCODER_SIZE_KEYS: [&str; 3] = ["embed_dim", "depth", "num_heads"];

/// A size given in the file, else by the preset, else an error naming the key.
fn required(
    given: Option<usize>,
    from_preset: Option<usize>,
    key: &str,
) -> std::result::Result<usize, String> {
    given
        .or(from_preset)
        .ok_or_else(|| format!("missing {key:?} (or a \"model\" preset that sets it)"))
}

/// A trunk's sizes `[width, depth, heads]` under `keys`: each given in the file (`given`), else
/// by the preset's `(width, depth, heads)`, else an error naming its key; checked in that order.
/// The encoder's and the masked autoencoder's decoder sizes are filled alike.
pub(crate) fn required_sizes(
    given: [Option<usize>; 3],
    from_preset: Option<(usize, usize, usize)>,
    keys: [&str; 3],
) -> std::result::Result<[usize; 3], String> {
    let from_preset = from_preset.map(<[usize; 3]>::from);
    let mut sizes = [0; 3];
    for (i, size) in sizes.iter_mut().enumerate() {
        *size = required(given[i], from_preset.map(|p| p[i]), keys[i])?;
    }
    Ok(sizes)
}

/// `img_size` and `patch_size`, which no preset sets.
pub(crate) fn required_shapes(
    img_size: Option<[usize; 3]>,
    patch_size: Option<[usize; 2]>,
) -> std::result::Result<([usize; 3], [usize; 2]), String> {
    let img_size = img_size.ok_or("missing \"img_size\" ([C, leads, T], e.g. [1, 12, 2500])")?;
    let patch_size =
        patch_size.ok_or("missing \"patch_size\" ([leads, samples], e.g. [1, 100])")?;
    Ok((img_size, patch_size))
}

/// The patch grid `(rows, columns)` of inputs of `img_size` `[C, leads, T]` cut into
/// `patch_size` `[leads, samples]` patches: `leads / ph` by `T / pw`, remainders cut off as the
/// reference's convolution does. The encoder and the masked autoencoder cut alike.
pub(crate) fn patch_grid(img_size: [usize; 3], patch_size: [usize; 2]) -> (usize, usize) {
    (img_size[1] / patch_size[0], img_size[2] / patch_size[1])
}

/// A validation error as the reason serde reports (without the "invalid configuration" prefix
/// of [`Error::Config`], which the file reader adds with the file's name).
pub(crate) fn config_reason(e: Error) -> String {
    match e {
        Error::Config(why) => why,
        other => other.to_string(),
    }
}

/// A named architecture of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The reference's function name.
    pub name: &'static str,
    /// Token dimension.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
}

const fn preset(name: &'static str, embed_dim: usize, depth: usize, num_heads: usize) -> Preset {
    Preset {
        name,
        embed_dim,
        depth,
        num_heads,
    }
}

/// The presets, all with `mlp_ratio` 4, `qkv_bias`, LayerNorm eps 1e-6.
///
/// Unqualified names are MMCL's `mmcl/models/ECGEncoder.py`, except `vit_pluto_patchX`: there it
/// reads 256 channels in 6 heads, which timm's attention rejects (256 is not divisible by 6), so
/// the mae repo's runnable 256/2/8 is used. The `…Deep` models exist only in the mae repo's
/// `models_vit.py`. Where the mae repo defines the same name differently (medium, large), its
/// variant is available as `mae/<name>`, as are its `vit_base`, `vit_large`, `vit_huge`.
pub const PRESETS: &[Preset] = &[
    preset("vit_pluto_patchX", 256, 2, 8),
    preset("vit_tiny_patchX", 384, 3, 6),
    preset("vit_small_patchX", 512, 4, 8),
    preset("vit_medium_patchX", 640, 6, 8),
    preset("vit_big_patchX", 768, 8, 8),
    preset("vit_base_patchX", 768, 12, 12),
    preset("vit_large_patchX", 1024, 24, 16),
    preset("vit_huge_patchX", 1280, 32, 16),
    preset("vit_tinyDeep_patchX", 192, 12, 3),
    preset("vit_smallDeep_patchX", 384, 12, 6),
    preset("vit_mediumDeep_patchX", 576, 12, 8),
    preset("mae/vit_pluto_patchX", 256, 2, 8),
    preset("mae/vit_tiny_patchX", 384, 3, 6),
    preset("mae/vit_tinyDeep_patchX", 192, 12, 3),
    preset("mae/vit_small_patchX", 512, 4, 8),
    preset("mae/vit_smallDeep_patchX", 384, 12, 6),
    preset("mae/vit_medium_patchX", 640, 5, 10),
    preset("mae/vit_mediumDeep_patchX", 576, 12, 8),
    preset("mae/vit_large_patchX", 864, 6, 12),
    preset("mae/vit_base", 768, 12, 12),
    preset("mae/vit_large", 1024, 24, 16),
    preset("mae/vit_huge", 1280, 32, 16),
];

impl Preset {
    /// The preset `name`; `tinyDeep`, `smallDeep`, `mediumDeep` are accepted for the `…Deep`
    /// models.
    pub fn find(name: &str) -> Option<Preset> {
        let full = match name {
            "tinyDeep" => "vit_tinyDeep_patchX",
            "smallDeep" => "vit_smallDeep_patchX",
            "mediumDeep" => "vit_mediumDeep_patchX",
            other => other,
        };
        PRESETS.iter().copied().find(|p| p.name == full)
    }

    /// Every preset name.
    pub fn names() -> Vec<&'static str> {
        PRESETS.iter().map(|p| p.name).collect()
    }
}

impl EcgVitConfig {
    /// The reference's encoder of `sizes` `(embed_dim, depth, num_heads)` (unvalidated): MLP
    /// ratio 4, `qkv_bias`, LayerNorm eps 1e-6, no dropout, class-token pooling, no head. The
    /// presets, the paper's encoder and the masked autoencoder's encoder start from it.
    pub(crate) fn reference(
        model: Option<String>,
        img_size: [usize; 3],
        patch_size: [usize; 2],
        sizes: (usize, usize, usize),
        weight_init: WeightInit,
    ) -> Self {
        let (embed_dim, depth, num_heads) = sizes;
        Self {
            model,
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            global_pool: false,
            attention_pool: false,
            num_classes: 0,
            layer_norm_eps: 1e-6,
            weight_init,
        }
    }

    /// The preset `name` for inputs of `img_size` cut into `patch_size` patches, with the
    /// reference's defaults (class-token pooling, no head, no dropout).
    pub fn preset(name: &str, img_size: [usize; 3], patch_size: [usize; 2]) -> Result<Self> {
        let p = preset_or_error(name, Preset::find(name), Preset::names).map_err(Error::Config)?;
        let cfg = Self::reference(
            Some(p.name.to_string()),
            img_size,
            patch_size,
            (p.embed_dim, p.depth, p.num_heads),
            WeightInit::Timm,
        );
        cfg.validate()?;
        Ok(cfg)
    }

    /// The paper's encoder: `vit_tiny_patchX` on 1×12×2500 inputs with 1×100 patches, global
    /// pooling, drop-path 0.1 (MMCL's `config.yaml`).
    pub fn paper() -> Self {
        Self {
            drop_path_rate: 0.1,
            global_pool: true,
            ..Self::reference(
                Some("vit_tiny_patchX".into()),
                [1, 12, 2500],
                [1, 100],
                (384, 3, 6),
                WeightInit::Timm,
            )
        }
    }

    /// Reads a JSON configuration file; errors name the file and, where they concern one
    /// value, its key.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json_config(path)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        let [c, h, w] = self.img_size;
        let [ph, pw] = self.patch_size;
        if c == 0 || h == 0 || w == 0 || ph == 0 || pw == 0 {
            return bad(format!(
                "img_size {:?} and patch_size {:?} must be positive",
                self.img_size, self.patch_size
            ));
        }
        if ph > h || pw > w {
            return bad(format!(
                "patch_size {:?} is larger than the input {:?}",
                self.patch_size, self.img_size
            ));
        }
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 {
            return bad("embed_dim, depth and num_heads must be positive".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.weight_init == WeightInit::Mae && !self.embed_dim.is_multiple_of(4) {
            return bad(format!(
                "the sin-cos position embedding of the \"mae\" initialisation needs embed_dim \
                 divisible by 4, not {}",
                self.embed_dim
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite()) {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        for (name, rate) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&rate) {
                return bad(format!("{name} {rate} must lie in [0, 1)"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            ));
        }
        // Sizes last: they are products of the values checked above.
        let tokens = self.checked_tokens()?;
        let params = self.parameter_count();
        check_limit(
            &format!(
                "embed_dim {}, depth {}, mlp_ratio {}, patch_size {:?} and num_classes {}",
                self.embed_dim, self.depth, self.mlp_ratio, self.patch_size, self.num_classes
            ),
            "parameters",
            params,
            MAX_PARAMETERS,
        )?;
        check_trunk_activations(
            TrunkKeys::ENCODER,
            self.embed_dim,
            self.num_heads,
            self.mlp_ratio,
            tokens,
        )
    }

    /// Tokens per sample (patches and the class token), checked against
    /// [`MAX_TOKENS`](mmcl_nn::config::MAX_TOKENS) with the input size against
    /// [`MAX_ACTIVATIONS`](mmcl_nn::config::MAX_ACTIVATIONS); the sizes must be positive.
    pub(crate) fn checked_tokens(&self) -> Result<u64> {
        let [c, h, w] = self.img_size.map(|v| v as u64);
        let [ph, pw] = self.patch_size.map(|v| v as u64);
        check_limit(
            &format!("img_size {:?}", self.img_size),
            "input values per sample",
            checked_product(&[c, h, w]),
            MAX_ACTIVATIONS,
        )?;
        let tokens = checked_product(&[h / ph, w / pw]).and_then(|n| n.checked_add(1));
        check_limit(
            &format!(
                "img_size {:?} and patch_size {:?}",
                self.img_size, self.patch_size
            ),
            "tokens per sample",
            tokens,
            MAX_TOKENS,
        )?;
        Ok(tokens.unwrap_or(u64::MAX))
    }

    /// The encoder's number of parameters (weights and biases of every layer, the position
    /// table included), with checked arithmetic: `None` when it does not fit in 64 bits.
    pub fn parameter_count(&self) -> Option<u64> {
        let d = self.embed_dim as u64;
        let [c, h, w] = self.img_size.map(|v| v as u64);
        let [ph, pw] = self.patch_size.map(|v| v as u64);
        let positions =
            checked_product(&[h.checked_div(ph)?, w.checked_div(pw)?])?.checked_add(1)?;
        let classes = self.num_classes as u64;
        checked_sum(&[
            trunk_parameters(d, self.depth as u64, self.mlp_ratio, positions),
            // Patch projection, class token, norm and fc_norm.
            checked_sum(&[checked_product(&[c, ph, pw, d]), checked_product(&[6, d])]),
            checked_sum(&[checked_product(&[d, classes]), Some(classes)]),
            if self.attention_pool {
                checked_sum(&[checked_product(&[4, d, d]), checked_product(&[4, d])])
            } else {
                Some(0)
            },
        ])
    }

    /// The patch grid `(rows, columns)`: `leads / ph` by `T / pw` (remainders are cut off, as
    /// the reference's convolution does).
    pub fn grid_size(&self) -> (usize, usize) {
        patch_grid(self.img_size, self.patch_size)
    }

    /// Number of patch tokens.
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid_size();
        h * w
    }

    /// The pooling the reference applies in `forward_features` for this configuration.
    pub fn pooling(&self) -> Pooling {
        if self.attention_pool {
            Pooling::Attention
        } else if self.global_pool {
            Pooling::Global
        } else {
            Pooling::Cls
        }
    }

    /// Whether the model has an `fc_norm` (any pooled head other than the class token).
    pub fn has_fc_norm(&self) -> bool {
        self.global_pool || self.attention_pool
    }
}

#[cfg(test)]
mod tests;
