//! Hostile NIfTI files: decompression bombs, overflowing or oversized dimensions, data shorter
//! or longer than the header declares. Each must be a typed error naming the file, found
//! before anything large is allocated.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{format_error, write};
use mmcl_data::cmr::nifti::{MAX_VOXELS, read_nifti};

/// A little-endian NIfTI-1 header (352 bytes with the empty extension flag) for uint8 voxels.
fn header(dims: &[i16], vox_offset: f32) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[40..42].copy_from_slice(&(dims.len() as i16).to_le_bytes());
    for (k, d) in dims.iter().enumerate() {
        h[42 + 2 * k..44 + 2 * k].copy_from_slice(&d.to_le_bytes());
        h[80 + 4 * k..84 + 4 * k].copy_from_slice(&1f32.to_le_bytes());
    }
    h[70..72].copy_from_slice(&2i16.to_le_bytes()); // uint8
    h[72..74].copy_from_slice(&8i16.to_le_bytes());
    h[108..112].copy_from_slice(&vox_offset.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// Gzips `head` followed by `zeros` zero bytes, streamed so the test itself stays small.
fn write_gz(dir: &Path, name: &str, head: &[u8], zeros: usize) -> PathBuf {
    let p = dir.join(name);
    let file = std::fs::File::create(&p).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(head).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len());
        gz.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    gz.finish().unwrap();
    p
}

#[test]
fn a_valid_volume_reads_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = header(&[4, 4, 1, 1], 352.0);
    bytes.extend(0u8..16);
    let plain = write(dir.path(), "ok.nii", &bytes);
    let gz = write_gz(dir.path(), "ok.nii.gz", &bytes, 0);
    for p in [plain, gz] {
        let img = read_nifti(&p).unwrap();
        assert_eq!(img.dims, vec![4, 4, 1, 1]);
        assert_eq!(img.data, (0..16).map(|v| v as f32).collect::<Vec<_>>());
    }
}

#[test]
fn a_gzip_bomb_is_refused_at_the_size_its_header_declares() {
    let dir = tempfile::tempdir().unwrap();
    let mut head = header(&[4, 4, 1, 1], 352.0);
    head.extend([7u8; 16]);
    // 16 voxels declared, then 200 MiB of zeros: about 200 KB on disk.
    let bomb = write_gz(dir.path(), "bomb.nii.gz", &head, 200 << 20);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20);
    let inflated = std::io::copy(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&bomb).unwrap()),
        &mut std::io::sink(),
    )
    .unwrap();
    assert_eq!(inflated, 368 + (200 << 20));
    let started = std::time::Instant::now();
    let msg = format_error(read_nifti(&bomb), &bomb);
    assert!(msg.contains("more than the 368 bytes"), "{msg}");
    // Reading stops one byte past the declared size instead of inflating 200 MiB.
    assert!(started.elapsed().as_secs_f64() < 2.0);
}

#[test]
fn overflowing_or_oversized_dimensions_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 32767^7 overflows 64 bits.
    let overflow = header(&[32767; 7], 352.0);
    for p in [
        write(dir.path(), "overflow.nii", &overflow),
        write_gz(dir.path(), "overflow.nii.gz", &overflow, 0),
    ] {
        let msg = format_error(read_nifti(&p), &p);
        assert!(
            msg.contains("too large") && msg.contains("overflows"),
            "{msg}"
        );
    }
    // 32767 × 32767 × 4 × 1 does not overflow but is far beyond the documented maximum.
    let big = header(&[32767, 32767, 4, 1], 352.0);
    const { assert!(32767usize * 32767 * 4 > MAX_VOXELS) };
    let p = write_gz(dir.path(), "big.nii.gz", &big, 1 << 20);
    let msg = format_error(read_nifti(&p), &p);
    assert!(
        msg.contains("too large") && msg.contains("maximum"),
        "{msg}"
    );
    // An absurd offset to the voxels is refused too.
    let far = header(&[4, 4, 1, 1], 3.0e9);
    let p = write(dir.path(), "far.nii", &far);
    let msg = format_error(read_nifti(&p), &p);
    assert!(msg.contains("vox_offset"), "{msg}");
}

#[test]
fn data_shorter_or_longer_than_declared_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = header(&[4, 4, 2, 1], 352.0);
    short.extend([1u8; 20]); // 32 declared
    let p = write(dir.path(), "short.nii", &short);
    let msg = format_error(read_nifti(&p), &p);
    assert!(msg.contains("truncated") && msg.contains("384"), "{msg}");
    let p = write_gz(dir.path(), "short.nii.gz", &short, 0);
    let msg = format_error(read_nifti(&p), &p);
    assert!(msg.contains("truncated"), "{msg}");

    let mut long = header(&[4, 4, 1, 1], 352.0);
    long.extend([1u8; 17]); // 16 declared
    let p = write(dir.path(), "long.nii", &long);
    let msg = format_error(read_nifti(&p), &p);
    assert!(msg.contains("more than the 368 bytes"), "{msg}");

    // A header cut short, plain and gzipped.
    let cut = &header(&[4, 4, 1, 1], 352.0)[..200];
    for p in [
        write(dir.path(), "cut.nii", cut),
        write_gz(dir.path(), "cut.nii.gz", cut, 0),
    ] {
        let msg = format_error(read_nifti(&p), &p);
        assert!(msg.contains("truncated"), "{msg}");
    }
}
