//! Files written whole or not at all.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::Result;

/// Writes `path` through `write` into a temporary sibling, then renames it into place; on any
/// error the temporary file is removed and `path` is left as it was (see
/// [`mmcl_core::io::write_buffered_atomic`]).
///
/// # Errors
/// a file error ([`Error::Core`](crate::Error::Core)) naming the file when creating, writing or renaming fails.
pub fn write_file_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    Ok(mmcl_core::io::write_buffered_atomic(path, write)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::io::Write;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        let r = write_file_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(matches!(r, Err(Error::Core(mmcl_core::Error::Io { .. }))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_file_atomic(&path, |w| w.write_all(b"whole")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }
}
