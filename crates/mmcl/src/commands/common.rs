//! Helpers shared by the subcommands.

use anyhow::{Context, Result, bail};
use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N` into a device.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("cannot open CUDA device 0"),
        s if s.starts_with("cuda:") => {
            let ordinal: usize = s["cuda:".len()..]
                .parse()
                .with_context(|| format!("bad device ordinal in {s:?}"))?;
            Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
        }
        other => bail!("unknown device {other:?}: use cpu, cuda or cuda:N"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert!(parse_device("cpu").is_ok_and(|d| d.is_cpu()));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
