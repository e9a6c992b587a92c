//! Helpers shared by the subcommands.

use anyhow::Result;
use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N` into a device ([`mmcl_nn::device::parse_device`]).
pub fn parse_device(spec: &str) -> Result<Device> {
    Ok(mmcl_nn::device::parse_device(spec)?)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
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
