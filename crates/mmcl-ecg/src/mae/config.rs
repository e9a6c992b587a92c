//! The masked autoencoder's configuration, with the mae repo's argument names and presets.

use std::path::Path;

use mmcl_nn::config::{MAX_PARAMETERS, checked_product, checked_sum};
use mmcl_nn::init::WeightInit;
use serde::{Deserialize, Serialize};

use crate::config::{
    ENCODER_SIZE_KEYS, TrunkKeys, check_limit, check_trunk_activations, config_reason,
    preset_or_error, required_shapes, required_sizes, trunk_parameters,
};
use crate::{EcgVitConfig, Error, Result};

/// A named architecture of the mae repo's `models_mae.py` (`mae_vit_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaePreset {
    /// The recommended name (`mae_vit_tiny_patchX`).
    pub name: &'static str,
    /// The function the name is bound to (`mae_vit_tiny_patchX_dec256d2b`), also accepted.
    pub function: &'static str,
    /// Encoder `(embed_dim, depth, num_heads)`.
    pub encoder: (usize, usize, usize),
    /// Decoder `(decoder_embed_dim, decoder_depth, decoder_num_heads)`.
    pub decoder: (usize, usize, usize),
    /// The encoder's preset in [`crate::PRESETS`].
    pub encoder_preset: &'static str,
}

const fn mae(
    name: &'static str,
    function: &'static str,
    encoder: (usize, usize, usize),
    decoder: (usize, usize, usize),
    encoder_preset: &'static str,
) -> MaePreset {
    MaePreset {
        name,
        function,
        encoder,
        decoder,
        encoder_preset,
    }
}

/// The paper's pre-training model ([`MaeConfig::paper`]).
const MAE_VIT_TINY: MaePreset = mae(
    "mae_vit_tiny_patchX",
    "mae_vit_tiny_patchX_dec256d2b",
    (384, 3, 6),
    (256, 2, 8),
    "mae/vit_tiny_patchX",
);

/// Every `mae_vit_*` model of the mae repo, with `mlp_ratio` 4, `qkv_bias`, LayerNorm eps 1e-6.
///
/// The decoder sizes are the functions' (the `decNNNdMb` suffixes and the repo's comments do not
/// always agree with the bodies: `mae_vit_pluto_patchX_dec192d2b` builds a 160-wide, 1-block
/// decoder; `mae_vit_large_patchX_dec256d4b` a 2-block one). `mae_vit_large_patchX` (864 wide)
/// and `mae_vit_large` (1024 wide) are different models.
pub const MAE_PRESETS: &[MaePreset] = &[
    mae(
        "mae_vit_pluto_patchX",
        "mae_vit_pluto_patchX_dec192d2b",
        (256, 2, 8),
        (160, 1, 8),
        "mae/vit_pluto_patchX",
    ),
    MAE_VIT_TINY,
    mae(
        "mae_vit_tiny2_patchX",
        "mae_vit_tiny2_patchX_dec256d2b",
        (384, 3, 6),
        (128, 2, 4),
        "mae/vit_tiny_patchX",
    ),
    mae(
        "mae_vit_tinyDeep_patchX",
        "mae_vit_tinyDeep_patchX_dec256d2b",
        (192, 12, 3),
        (256, 2, 8),
        "mae/vit_tinyDeep_patchX",
    ),
    mae(
        "mae_vit_tinyDeep2_patchX",
        "mae_vit_tinyDeep2_patchX_dec256d2b",
        (192, 12, 3),
        (128, 2, 4),
        "mae/vit_tinyDeep_patchX",
    ),
    mae(
        "mae_vit_small_patchX",
        "mae_vit_small_patchX_dec256d2b",
        (512, 4, 8),
        (256, 2, 8),
        "mae/vit_small_patchX",
    ),
    mae(
        "mae_vit_small2_patchX",
        "mae_vit_small2_patchX_dec256d2b",
        (512, 4, 8),
        (128, 2, 4),
        "mae/vit_small_patchX",
    ),
    mae(
        "mae_vit_smallDeep_patchX",
        "mae_vit_smallDeep_patchX_dec256d2b",
        (384, 12, 6),
        (256, 2, 8),
        "mae/vit_smallDeep_patchX",
    ),
    mae(
        "mae_vit_smallDeep2_patchX",
        "mae_vit_smallDeep2_patchX_dec256d2b",
        (384, 12, 6),
        (128, 2, 4),
        "mae/vit_smallDeep_patchX",
    ),
    mae(
        "mae_vit_medium_patchX",
        "mae_vit_medium_patchX_dec256d2b",
        (640, 5, 10),
        (256, 2, 8),
        "mae/vit_medium_patchX",
    ),
    mae(
        "mae_vit_medium2_patchX",
        "mae_vit_medium2_patchX_dec256d2b",
        (640, 5, 10),
        (128, 2, 4),
        "mae/vit_medium_patchX",
    ),
    mae(
        "mae_vit_mediumDeep_patchX",
        "mae_vit_mediumDeep_patchX_dec256d2b",
        (576, 12, 8),
        (256, 2, 8),
        "mae/vit_mediumDeep_patchX",
    ),
    mae(
        "mae_vit_mediumDeep2_patchX",
        "mae_vit_mediumDeep2_patchX_dec256d2b",
        (576, 12, 8),
        (128, 2, 4),
        "mae/vit_mediumDeep_patchX",
    ),
    mae(
        "mae_vit_large_patchX",
        "mae_vit_large_patchX_dec256d4b",
        (864, 6, 12),
        (256, 2, 8),
        "mae/vit_large_patchX",
    ),
    mae(
        "mae_vit_base",
        "mae_vit_base_patchX_dec512d8b",
        (768, 12, 12),
        (512, 8, 16),
        "mae/vit_base",
    ),
    mae(
        "mae_vit_large",
        "mae_vit_large_patchX_dec512d8b",
        (1024, 24, 16),
        (512, 8, 16),
        "mae/vit_large",
    ),
    mae(
        "mae_vit_huge",
        "mae_vit_huge_patchX_dec512d8b",
        (1280, 32, 16),
        (512, 8, 16),
        "mae/vit_huge",
    ),
];

impl MaePreset {
    /// The preset called `name` (its recommended or its function name).
    pub fn find(name: &str) -> Option<MaePreset> {
        MAE_PRESETS
            .iter()
            .copied()
            .find(|p| p.name == name || p.function == name)
    }

    /// Every recommended preset name.
    pub fn names() -> Vec<&'static str> {
        MAE_PRESETS.iter().map(|p| p.name).collect()
    }
}

/// The hyper-parameters of the masked autoencoder (`MaskedAutoencoderViT`), named as its
/// constructor arguments.
///
/// JSON files may name a preset in `"model"` (`"mae_vit_tiny_patchX"`) and give only what
/// differs; unknown keys are errors.
///
/// ```
/// let cfg: mmcl_ecg::mae::MaeConfig = serde_json::from_str(
///     r#"{"model": "mae_vit_tiny_patchX", "img_size": [1, 12, 2500], "patch_size": [1, 100]}"#,
/// ).unwrap();
/// assert_eq!((cfg.embed_dim, cfg.decoder_embed_dim, cfg.decoder_depth), (384, 256, 2));
/// assert_eq!(cfg.patch_dim(), 100);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMaeConfig")]
pub struct MaeConfig {
    /// The preset this configuration started from, if any (informative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Input size `[C, leads, T]`.
    pub img_size: [usize; 3],
    /// Patch size `[leads, samples]`.
    pub patch_size: [usize; 2],
    /// Encoder token dimension.
    pub embed_dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder attention heads.
    pub num_heads: usize,
    /// Decoder token dimension.
    pub decoder_embed_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder attention heads.
    pub decoder_num_heads: usize,
    /// MLP hidden width relative to the token dimension (encoder and decoder).
    pub mlp_ratio: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Hidden width of the SimSiam projector (1024 in the reference).
    pub proj_dim: usize,
    /// Hidden width of the SimSiam predictor (128 in the reference).
    pub pred_dim: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaeConfig {
    model: Option<String>,
    #[serde(alias = "input_size")]
    img_size: Option<[usize; 3]>,
    patch_size: Option<[usize; 2]>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    num_heads: Option<usize>,
    decoder_embed_dim: Option<usize>,
    decoder_depth: Option<usize>,
    decoder_num_heads: Option<usize>,
    mlp_ratio: Option<f64>,
    layer_norm_eps: Option<f64>,
    proj_dim: Option<usize>,
    pred_dim: Option<usize>,
}

impl TryFrom<RawMaeConfig> for MaeConfig {
    type Error = String;

    fn try_from(raw: RawMaeConfig) -> std::result::Result<Self, String> {
        let preset = raw
            .model
            .as_deref()
            .map(|name| preset_or_error(name, MaePreset::find(name), MaePreset::names))
            .transpose()?;
        let (img_size, patch_size) = required_shapes(raw.img_size, raw.patch_size)?;
        let [embed_dim, depth, num_heads] = required_sizes(
            [raw.embed_dim, raw.depth, raw.num_heads],
            preset.map(|p| p.encoder),
            ENCODER_SIZE_KEYS,
        )?;
        let [decoder_embed_dim, decoder_depth, decoder_num_heads] = required_sizes(
            [
                raw.decoder_embed_dim,
                raw.decoder_depth,
                raw.decoder_num_heads,
            ],
            preset.map(|p| p.decoder),
            ["decoder_embed_dim", "decoder_depth", "decoder_num_heads"],
        )?;
        let cfg = MaeConfig {
            model: raw.model.clone(),
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            decoder_embed_dim,
            decoder_depth,
            decoder_num_heads,
            mlp_ratio: raw.mlp_ratio.unwrap_or(4.0),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
            proj_dim: raw.proj_dim.unwrap_or(1024),
            pred_dim: raw.pred_dim.unwrap_or(128),
        };
        cfg.validate().map_err(config_reason)?;
        Ok(cfg)
    }
}

impl MaeConfig {
    /// The model of preset `p` for inputs of `img_size` cut into `patch_size` patches, with the
    /// reference's MLP ratio, LayerNorm eps and SimSiam widths (unvalidated).
    fn of_preset(p: MaePreset, img_size: [usize; 3], patch_size: [usize; 2]) -> Self {
        Self {
            model: Some(p.name.to_string()),
            img_size,
            patch_size,
            embed_dim: p.encoder.0,
            depth: p.encoder.1,
            num_heads: p.encoder.2,
            decoder_embed_dim: p.decoder.0,
            decoder_depth: p.decoder.1,
            decoder_num_heads: p.decoder.2,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-6,
            proj_dim: 1024,
            pred_dim: 128,
        }
    }

    /// The preset `name` for inputs of `img_size` cut into `patch_size` patches.
    pub fn preset(name: &str, img_size: [usize; 3], patch_size: [usize; 2]) -> Result<Self> {
        let p = preset_or_error(name, MaePreset::find(name), MaePreset::names)
            .map_err(Error::Config)?;
        let cfg = Self::of_preset(p, img_size, patch_size);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The paper's pre-training model: `mae_vit_tiny_patchX` on 1×12×2500 ECGs with 1×100
    /// patches.
    pub fn paper() -> Self {
        Self::of_preset(MAE_VIT_TINY, [1, 12, 2500], [1, 100])
    }

    /// Reads a JSON configuration file; errors name the file and, where they concern one
    /// value, its key.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::config::read_json_config(path)
    }

    /// The encoder's configuration (MAE initialisation, class-token pooling, no head): what the
    /// encoder part of the autoencoder is, and what its exported weights load into.
    pub fn encoder_config(&self) -> EcgVitConfig {
        let preset = MAE_PRESETS.iter().find(|p| {
            p.encoder == (self.embed_dim, self.depth, self.num_heads)
                && self
                    .model
                    .as_deref()
                    .is_some_and(|m| m == p.name || m == p.function)
        });
        EcgVitConfig {
            mlp_ratio: self.mlp_ratio,
            layer_norm_eps: self.layer_norm_eps,
            ..EcgVitConfig::reference(
                preset.map(|p| p.encoder_preset.to_string()),
                self.img_size,
                self.patch_size,
                (self.embed_dim, self.depth, self.num_heads),
                WeightInit::Mae,
            )
        }
    }

    /// Checks that the numbers fit together (the encoder's rules, and the decoder's: heads
    /// dividing its width, a width divisible by 4 for its sin-cos position embedding).
    pub fn validate(&self) -> Result<()> {
        self.encoder_config().validate()?;
        let bad = |why: String| Err(Error::Config(why));
        let (d, depth, heads) = (
            self.decoder_embed_dim,
            self.decoder_depth,
            self.decoder_num_heads,
        );
        if d == 0 || depth == 0 || heads == 0 {
            return bad(
                "decoder_embed_dim, decoder_depth and decoder_num_heads must be positive".into(),
            );
        }
        if !d.is_multiple_of(heads) {
            return bad(format!(
                "decoder_embed_dim {d} is not divisible by decoder_num_heads {heads}"
            ));
        }
        if !d.is_multiple_of(4) {
            return bad(format!(
                "the decoder's sin-cos position embedding needs decoder_embed_dim divisible by \
                 4, not {d}"
            ));
        }
        if self.proj_dim == 0 || self.pred_dim == 0 {
            return bad("proj_dim and pred_dim must be positive".into());
        }
        // The encoder's sizes are checked above; the decoder sees every token.
        let encoder = self.encoder_config();
        let tokens = encoder.checked_tokens()?;
        let total = checked_sum(&[encoder.parameter_count(), self.head_parameters(tokens)]);
        check_limit(
            &format!(
                "embed_dim {}, depth {}, decoder_embed_dim {d}, decoder_depth {depth}, mlp_ratio \
                 {}, patch_size {:?}, proj_dim {} and pred_dim {}",
                self.embed_dim,
                self.depth,
                self.mlp_ratio,
                self.patch_size,
                self.proj_dim,
                self.pred_dim
            ),
            "parameters",
            total,
            MAX_PARAMETERS,
        )?;
        check_trunk_activations(
            TrunkKeys {
                dim: "decoder_embed_dim",
                heads: "decoder_num_heads",
            },
            d,
            heads,
            self.mlp_ratio,
            tokens,
        )
    }

    /// Parameters beyond the encoder: the decoder over `tokens` positions and the SimSiam
    /// projector and predictor (checked arithmetic; `None` on overflow).
    fn head_parameters(&self, tokens: u64) -> Option<u64> {
        let d = self.embed_dim as u64;
        let dd = self.decoder_embed_dim as u64;
        let [c, _, _] = self.img_size.map(|v| v as u64);
        let [ph, pw] = self.patch_size.map(|v| v as u64);
        let patch_dim = checked_product(&[ph, pw, c])?;
        let (proj, pred) = (self.proj_dim as u64, self.pred_dim as u64);
        checked_sum(&[
            trunk_parameters(dd, self.decoder_depth as u64, self.mlp_ratio, tokens),
            // decoder_embed, mask token, decoder_norm, decoder_pred.
            checked_product(&[d, dd]),
            checked_product(&[4, dd]),
            checked_product(&[dd, patch_dim]),
            Some(patch_dim),
            // Projector and predictor: d → hidden → d, with biases and batch norms.
            checked_product(&[2, d, proj]),
            checked_product(&[2, d, pred]),
            checked_product(&[4, proj.checked_add(pred)?.checked_add(d)?]),
        ])
    }

    /// The patch grid `(rows, columns)`.
    pub fn grid_size(&self) -> (usize, usize) {
        crate::config::patch_grid(self.img_size, self.patch_size)
    }

    /// Number of patches `L`.
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid_size();
        h * w
    }

    /// Values per patch, `ph·pw·C` (the decoder's output width).
    pub fn patch_dim(&self) -> usize {
        self.patch_size[0] * self.patch_size[1] * self.img_size[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_the_reference_functions() {
        let dims = |n: &str| MaePreset::find(n).map(|p| (p.encoder, p.decoder));
        for (name, encoder_decoder) in [
            ("mae_vit_pluto_patchX", ((256, 2, 8), (160, 1, 8))),
            ("mae_vit_tiny_patchX", ((384, 3, 6), (256, 2, 8))),
            ("mae_vit_tiny2_patchX", ((384, 3, 6), (128, 2, 4))),
            ("mae_vit_tinyDeep_patchX", ((192, 12, 3), (256, 2, 8))),
            ("mae_vit_mediumDeep2_patchX", ((576, 12, 8), (128, 2, 4))),
            ("mae_vit_large_patchX", ((864, 6, 12), (256, 2, 8))),
            ("mae_vit_large", ((1024, 24, 16), (512, 8, 16))),
            ("mae_vit_huge", ((1280, 32, 16), (512, 8, 16))),
        ] {
            assert_eq!(dims(name), Some(encoder_decoder), "{name}");
        }
        assert_eq!(
            dims("mae_vit_tiny_patchX_dec256d2b"),
            dims("mae_vit_tiny_patchX")
        );
        assert_eq!(MAE_PRESETS.len(), 17);
        for p in MAE_PRESETS {
            let cfg = MaeConfig::preset(p.name, [1, 12, 2500], [1, 100]);
            assert!(cfg.is_ok(), "{}: {:?}", p.name, cfg.err());
            // The encoder preset names the same encoder.
            let enc = crate::Preset::find(p.encoder_preset).expect("encoder preset exists");
            assert_eq!((enc.embed_dim, enc.depth, enc.num_heads), p.encoder);
        }
    }

    #[test]
    fn json_round_trip_and_errors() {
        let cfg = MaeConfig::paper();
        assert_eq!(
            MaeConfig::preset("mae_vit_tiny_patchX", [1, 12, 2500], [1, 100]).ok(),
            Some(cfg.clone())
        );
        let json = serde_json::to_string(&cfg).expect("serialise");
        let back: MaeConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, cfg);
        assert_eq!(cfg.num_patches(), 300);
        let enc = cfg.encoder_config();
        assert_eq!(enc.model.as_deref(), Some("mae/vit_tiny_patchX"));
        assert_eq!(enc.weight_init, WeightInit::Mae);
        let err = |s: &str| {
            serde_json::from_str::<MaeConfig>(s)
                .expect_err(s)
                .to_string()
        };
        assert!(
            err(r#"{"model": "mae_vit_x", "img_size": [1,12,2500], "patch_size": [1,100]}"#)
                .contains("unknown model")
        );
        assert!(err(r#"{"model": "mae_vit_tiny_patchX", "img_size": [1,12,2500], "patch_size": [1,100], "decoder_num_heads": 7}"#)
            .contains("decoder_num_heads"));
        assert!(err(r#"{"model": "mae_vit_tiny_patchX", "img_size": [1,12,2500], "patch_size": [1,100], "mask_ratio": 0.8}"#)
            .contains("mask_ratio"));
        assert!(err(r#"{"img_size": [1,12,2500], "patch_size": [1,100], "embed_dim": 64, "depth": 1, "num_heads": 4}"#)
            .contains("decoder_embed_dim"));
        // Absurd sizes are refused before anything is allocated, naming the key.
        for (extra, key) in [
            (r#""decoder_embed_dim": 1000000000"#, "decoder_embed_dim"),
            (r#""decoder_depth": 100000000"#, "decoder_depth"),
            (r#""proj_dim": 100000000000"#, "proj_dim"),
            (r#""pred_dim": 18446744073709551615"#, "pred_dim"),
            (r#""embed_dim": 1000000000, "num_heads": 8"#, "embed_dim"),
        ] {
            let text = format!(
                r#"{{"model": "mae_vit_tiny_patchX", "img_size": [1,12,2500], "patch_size": [1,100], {extra}}}"#
            );
            assert!(err(&text).contains(key), "{key}: {}", err(&text));
        }
    }
}
