//! Choosing a device from what a user typed (`--device cpu|cuda|cuda:N`), once for the command
//! line tool, the examples and the benches.

use candle_core::Device;

use crate::{Error, Result};

/// Parses `cpu`, `cuda` (device 0) or `cuda:N` and opens the device.
///
/// ```
/// let cpu = mmcl_nn::device::parse_device("cpu").unwrap();
/// assert!(cpu.is_cpu());
/// assert!(mmcl_nn::device::parse_device("gpu").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] for anything else, [`Error::CudaNotBuilt`] for a CUDA device in a
/// build without the `cuda` feature, [`Error::DeviceUnavailable`] when the CUDA device cannot be
/// opened.
pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => ordinal,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown device {other:?}: use cpu, cuda or cuda:N"
                )));
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::CudaNotBuilt);
    }
    Device::new_cuda(ordinal).map_err(|source| Error::DeviceUnavailable { ordinal, source })
}

/// [`parse_device`] for one rank of a job: plain `cuda` means the GPU of the rank's place on
/// its node (`local_rank`, from [`Launch`](crate::distributed::Launch)), modulo the GPUs this
/// process sees (one, when the launcher binds each rank to its own); `cuda:N` and `cpu` are
/// taken as written.
///
/// # Errors
/// As [`parse_device`].
pub fn parse_device_for_rank(spec: &str, local_rank: Option<usize>) -> Result<Device> {
    match local_rank {
        Some(local) if spec == "cuda" && cfg!(feature = "cuda") => {
            parse_device(&format!("cuda:{}", local % visible_gpus()))
        }
        _ => parse_device(spec),
    }
}

/// How many GPUs this process sees (at least 1, so that it can divide).
fn visible_gpus() -> usize {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda::cudarc::driver::CudaContext::device_count()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }
    #[cfg(not(feature = "cuda"))]
    {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_takes_the_device_asked_for_or_its_local_gpu() {
        assert!(parse_device_for_rank("cpu", Some(3)).unwrap().is_cpu());
        assert!(parse_device_for_rank("gpu", Some(0)).is_err());
        if !cfg!(feature = "cuda") {
            let err = parse_device_for_rank("cuda", Some(1)).unwrap_err();
            assert!(matches!(err, Error::CudaNotBuilt), "{err}");
        }
    }

    #[test]
    fn cpu_and_mistakes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let err = parse_device(bad).unwrap_err().to_string();
            assert!(err.contains("use cpu, cuda or cuda:N"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cuda_is_an_error_without_a_cuda_build() {
        if !candle_core::utils::cuda_is_available() {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            if cfg!(feature = "cuda") {
                assert!(err.starts_with("cannot open CUDA device 1"), "{err}");
            } else {
                assert!(err.contains("--features cuda"), "{err}");
            }
        }
    }
}
