//! Reading PyTorch `torch.save` zip archives.

use candle_core::Tensor;

/// Reads the tensors of a PyTorch zip archive held in memory. Nested dictionaries are flattened
/// with `.`-joined keys (`{"model": {"w": t}}` gives `model.w`).
///
/// Returns a human-readable reason on failure (the caller adds the file name).
pub(crate) fn read_torch_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    // candle's reader needs a path; go through a private temporary file.
    let tmp = std::env::temp_dir().join(format!(
        "mmcl-pth-{}-{}.pth",
        std::process::id(),
        crate::rng::hash_str(&format!("{:p}", bytes.as_ptr()))
    ));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot stage the archive: {e}"))?;
    let result = (|| {
        for key in [None, Some("state_dict"), Some("model")] {
            let tensors = candle_core::pickle::read_all_with_key(&tmp, key)
                .map_err(|e| format!("cannot read the pickled state: {e}"))?;
            if !tensors.is_empty() {
                let prefix = key.map(|k| format!("{k}.")).unwrap_or_default();
                return Ok(tensors
                    .into_iter()
                    .map(|(k, t)| (format!("{prefix}{k}"), t))
                    .collect());
            }
        }
        Err("the archive holds no tensors".to_string())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}
