//! Embeds the built-in example ECGs (`examples/data`) with the paper's ECG encoder and prints
//! what a user looks at first: the embeddings' sizes, how similar the recordings are, and where
//! the class token of the last block looks.
//!
//! ```sh
//! cargo run --release --example embed                          # randomly initialised encoder
//! cargo run --release --example embed -- --checkpoint signal_encoder_mmcl.pth
//! cargo run --release --features cuda --example embed -- --device cuda
//! ```

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{D, Device, Tensor};
use clap::Parser;
use mmcl_suite::ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::train::checkpoint::find_ecg_encoder;

/// Embed ECGs with the ECG encoder of Turgut et al.
#[derive(Debug, Parser)]
struct Args {
    /// The encoder: a run directory (its latest complete checkpoint), a checkpoint directory,
    /// or a file (.pth/.ckpt/.safetensors); without one, a seeded random initialisation.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Encoder configuration.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/config.json"))]
    config: PathBuf,
    /// ECGs, float32 (N, 12, T).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/ecgs.npy"))]
    input: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn read_ecgs(path: &std::path::Path) -> Result<Tensor> {
    // The checked reader: sizes in the header are validated before anything is allocated.
    let array = mmcl_suite::core::npy::read_array(path)?;
    Ok(Tensor::from_vec(array.data, array.shape, &Device::Cpu)?)
}

fn main() -> Result<()> {
    mmcl_suite::nn::memory::keep_freed_memory();
    // SAFETY: no thread has started yet.
    unsafe { mmcl_suite::nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let args = Args::parse();
    let cfg = EcgVitConfig::from_file(&args.config)?;
    let device = parse_device(&args.device)?;
    let ecgs = read_ecgs(&args.input)?.to_device(&device)?;
    let model = match &args.checkpoint {
        Some(path) => {
            let (model, _store, summary) =
                EcgVit::from_checkpoint(&cfg, &find_ecg_encoder(path)?, cfg.pooling(), &device)?;
            println!("{summary}");
            model
        }
        None => {
            println!("no --checkpoint: randomly initialised encoder (seed 0)");
            EcgVit::from_seed(&cfg, 0, &device)?.0
        }
    };
    println!(
        "encoder {}: {} blocks, {} heads, {}-d tokens, {} patches of {:?}",
        cfg.model.as_deref().unwrap_or("(custom)"),
        cfg.depth,
        cfg.num_heads,
        cfg.embed_dim,
        cfg.num_patches(),
        cfg.patch_size
    );

    let out = model.forward_tokens(&ecgs, false, Some(-1))?;
    let emb = model.pool(&out.tokens, cfg.pooling())?; // [N, D]
    println!(
        "{} ECGs {:?} -> embeddings {:?} ({} pooling)",
        ecgs.dim(0)?,
        ecgs.dims(),
        emb.dims(),
        cfg.pooling()
    );

    let unit = emb.broadcast_div(&emb.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
    let cosine = unit.matmul(&unit.t()?)?.to_vec2::<f32>()?;
    println!("cosine similarity between the recordings:");
    for row in &cosine {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:6.3}")).collect();
        println!("  {}", cells.join(" "));
    }

    // Attention of the class token to the patches, averaged over heads: [N, L].
    if let Some(attn) = out.attention {
        let (_, gw) = cfg.grid_size();
        let cls_to_patches = attn.mean(1)?.narrow(1, 0, 1)?.squeeze(1)?;
        let l = cls_to_patches.dim(1)?;
        let patches = cls_to_patches.narrow(1, 1, l - 1)?;
        let top = patches.argmax(D::Minus1)?.to_vec1::<u32>()?;
        const LEADS: [&str; 12] = [
            "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
        ];
        for (i, &p) in top.iter().enumerate() {
            let (lead, col) = (p as usize / gw, p as usize % gw);
            let ms = |c: usize| c * cfg.patch_size[1] * 2; // 500 Hz: 2 ms per sample
            println!(
                "ECG {i}: the class token attends most to lead {} at {}-{} ms",
                LEADS.get(lead).copied().unwrap_or("?"),
                ms(col),
                ms(col + 1)
            );
        }
    }
    let pooled = model.embed(&ecgs, Pooling::Global)?;
    println!(
        "first embedding, first 8 values: {:?}",
        &pooled.get(0)?.to_vec1::<f32>()?[..8]
    );
    Ok(())
}
