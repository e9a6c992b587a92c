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
/// If `write` fails, the temporary file is removed and `path` is left untouched. The file gets
/// the permissions of a newly created file (`0666` less the umask) whatever `write` created it
/// with: writers such as `safetensors` go through `tempfile`, whose files are `0600`, and
/// checkpoints and outputs must stay readable to colleagues on a shared server.
///
/// `write` may fail with any error type that this crate's [`Error`] converts into, so that
/// each crate's writers keep their own errors.
pub fn write_atomic<E, F>(path: &Path, write: F) -> std::result::Result<(), E>
where
    E: From<Error>,
    F: FnOnce(&Path) -> std::result::Result<(), E>,
{
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| E::from(io_err(e)))?;
    }
    let tmp = temporary_sibling(path);
    match write(&tmp).and_then(|()| apply_default_mode(&tmp).map_err(E::from)) {
        Ok(()) => fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            E::from(io_err(e))
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The mode bits a newly created file gets (`0666` less the process's umask), or `None` where the
/// umask cannot be read without changing it (then files keep the mode their writer gave them,
/// which can only be stricter than intended, never looser).
#[cfg(unix)]
pub fn default_file_mode() -> Option<u32> {
    // `/proc/self/status` reports the umask (Linux 4.7+); umask(2) would have to set it to read it,
    // which races with other threads creating files.
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let umask = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())?;
    Some(0o666 & !umask)
}

/// Gives the regular file `tmp` the default permissions of a new file ([`default_file_mode`]).
#[cfg(unix)]
fn apply_default_mode(tmp: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(mode) = default_file_mode() else {
        return Ok(());
    };
    let io_err = |source| Error::Io {
        path: tmp.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(tmp).map_err(io_err)?;
    if meta.is_file() && meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    }
    Ok(())
}

/// Elsewhere files keep the permissions their writer gave them.
#[cfg(not(unix))]
fn apply_default_mode(_tmp: &Path) -> Result<()> {
    Ok(())
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

/// Writes `path` atomically through a buffered writer (64 KiB) that `write` fills; errors name
/// `path`, not the temporary sibling, since that is the file the user asked for.
pub fn write_buffered_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
{
    write_atomic(path, |tmp| {
        let file = fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("mmcl-core-io-{}", std::process::id()));
        let path = dir.join("out.bin");
        let r: Result<()> = write_atomic(&path, |tmp| {
            fs::write(tmp, b"partial").map_err(|source| Error::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
            Err(Error::InvalidInput("boom".into()))
        });
        assert!(r.is_err());
        assert!(!path.exists());
        assert!(!temporary_sibling(&path).exists());
        write_bytes_atomic(&path, b"whole").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"whole");
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_umask_permissions_not_0600() {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("mmcl-core-io-mode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let Some(expected) = default_file_mode() else {
            eprintln!("no /proc/self/status umask: permissions are left to the writer");
            return;
        };
        let mode = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o7777)
                .expect("metadata")
        };
        // A writer that creates its file 0600, as `tempfile` (inside safetensors) does.
        let private = dir.join("private.bin");
        write_atomic(&private, |tmp| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)
                .and_then(|mut f| f.write_all(b"x"))
                .map_err(|source| Error::Io {
                    path: tmp.to_path_buf(),
                    source,
                })
        })
        .expect("write");
        assert_eq!(mode(&private), expected);
        let plain = dir.join("plain.bin");
        write_bytes_atomic(&plain, b"y").expect("write");
        assert_eq!(mode(&plain), expected);
        let _ = fs::remove_dir_all(&dir);
    }
}
