//! The ECG Vision Transformer encoder of Turgut et al. (masked data modelling and multimodal
//! contrastive learning), compatible with the reference checkpoints.
