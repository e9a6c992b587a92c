//! Losses of the two pre-training stages: CLIP and NT-Xent for multimodal contrastive learning,
//! the reference masked-autoencoder reconstruction loss (with NCC) and the SimSiam cosine term.
