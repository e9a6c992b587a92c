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
        ("mpi", cfg!(feature = "mpi")),
        ("openblas", cfg!(feature = "openblas")),
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
    println!(
        "f32 products on the cpu: {}",
        mmcl_nn::precision::f32_backend()
    );
    println!(
        "bf16 products on the cpu: {}",
        mmcl_nn::precision::bf16_backend()
    );
    let cuda = candle_core::utils::cuda_is_available();
    println!("cuda available: {cuda}");
    println!("distributed: {}", distributed()?);
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

/// The data-parallel backend, rank and world size this process would train with (joining
/// the job when a launcher started it).
fn distributed() -> Result<String> {
    use mmcl_nn::distributed::{Launch, backend_name, group_from_launcher};
    let launch = Launch::from_env();
    if !cfg!(feature = "mpi")
        && let Some(l) = launch.filter(|l| l.world_size > 1)
    {
        return Ok(format!(
            "single process; started as rank {} of {} ({}) but built without the mpi feature, \
             so training would refuse to start",
            l.rank, l.world_size, l.source
        ));
    }
    let group = group_from_launcher()?;
    // The MPI library's own name, when this process joined a job through it.
    #[cfg(feature = "mpi")]
    let library = launch
        .map(|_| format!(" ({})", mmcl_nn::distributed::MpiGroup::library_version()))
        .unwrap_or_default();
    #[cfg(not(feature = "mpi"))]
    let library = String::new();
    Ok(format!(
        "{}, rank {} of {}{library}",
        backend_name(),
        group.rank(),
        group.world_size()
    ))
}
