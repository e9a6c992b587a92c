//! Zip archives in memory, for the tests that take apart and rebuild `torch.save` checkpoints,
//! `.npz` arrays and DICOM study zips.

use std::io::{Read, Write};

/// The members of the zip archive `bytes` (name and content), in their order.
///
/// # Panics
/// When `bytes` is not a readable zip archive (a broken fixture).
pub fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("fixture is a zip");
    (0..archive.len())
        .map(|i| {
            let mut member = archive.by_index(i).expect("fixture member");
            let mut data = Vec::new();
            member.read_to_end(&mut data).expect("fixture member reads");
            let name = member.name().expect("fixture member name").into_owned();
            (name, data)
        })
        .collect()
}

/// A zip archive of `members` stored uncompressed (as `torch.save` and `numpy.savez` write
/// them).
pub fn stored<N: AsRef<str>, D: AsRef<[u8]>>(members: &[(N, D)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        zip.start_file(name.as_ref(), options)
            .expect("zip in memory");
        zip.write_all(data.as_ref()).expect("zip in memory");
    }
    zip.finish().expect("zip in memory").into_inner()
}
