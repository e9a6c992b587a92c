//! `mmcl info`: version, features and devices.

use anyhow::Result;

/// Arguments of `mmcl info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also open this device (cpu, cuda, cuda:N) and run a small computation on it.
    #[arg(long)]
    device: Option<String>,
}

/// Prints what this build can do.
pub fn run(args: Args) -> Result<()> {
    println!("mmcl {}", env!("CARGO_PKG_VERSION"));
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("nccl", cfg!(feature = "nccl")),
        ("mkl", cfg!(feature = "mkl")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    println!(
        "features: {}",
        if features.is_empty() {
            "cpu only".to_string()
        } else {
            features.join(", ")
        }
    );
    println!("cpu threads: {}", rayon_threads());
    let cuda = candle_core::utils::cuda_is_available();
    println!("cuda available: {cuda}");
    if let Some(spec) = args.device {
        let device = super::common::parse_device(&spec)?;
        let x = candle_core::Tensor::arange(0f32, 4.0, &device)?;
        let sum: f32 = x.sum_all()?.to_scalar()?;
        println!("device {spec}: ok (0+1+2+3 = {sum})");
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
