//! File output that never leaves a half-written file behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary sibling used while `path` is being written.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file through `write` into a temporary sibling, then renames it over `path`.
///
/// If `write` fails, the temporary file is removed and `path` is left untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    let tmp = temporary_sibling(path);
    match write(&tmp) {
        Ok(()) => fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = fs::File::create(tmp).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|source| Error::Io {
                path: tmp.to_path_buf(),
                source,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("mmcl-nn-io-{}", std::process::id()));
        let path = dir.join("out.bin");
        let r = write_atomic(&path, |tmp| {
            fs::write(tmp, b"partial").map_err(|source| Error::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
            Err(Error::InvalidArgument("boom".into()))
        });
        assert!(r.is_err());
        assert!(!path.exists());
        assert!(!temporary_sibling(&path).exists());
        write_bytes_atomic(&path, b"whole").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"whole");
        let _ = fs::remove_dir_all(&dir);
    }
}
