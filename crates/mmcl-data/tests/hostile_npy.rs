//! Broken and malicious `.npy` / `.npz` files: each ends in a typed error naming the file,
//! quickly and without sizing any allocation from what the file claims.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_format_error, write};
use mmcl_core::npy::{npy_f32_bytes, open_npy, read_array};
use mmcl_data::Error;
use mmcl_data::ecg::npy::MAX_NPZ_MEMBER_LEN;
use mmcl_data::ecg::read_any;
use npyz::zip::{CompressionMethod, ZipWriter, write::FileOptions};

const RATE: f64 = 500.0;

/// A `.npy` of format `version` (1 or 2) with `header` as its dict text, then `data`.
fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n")
}

/// Writes `dir/name`: a version-1 `.npy` of element type `descr` and `shape`, then `data`.
fn plain_npy(dir: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) -> PathBuf {
    write(dir, name, npy(1, &dict(descr, shape), data))
}

/// Reads `path` as an ECG file and returns the error, checking that it is a typed
/// file error naming `path`, that it contains `needle`, and that it came fast.
fn refused(path: &Path, needle: &str) -> Error {
    let start = Instant::now();
    let err = read_any(path, RATE).expect_err("a hostile file must be refused");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{}: took {:?}",
        path.display(),
        start.elapsed()
    );
    let msg = assert_format_error(&err, path);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    err
}

#[test]
fn header_length_larger_than_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Version 2 announces a 4 GiB header in a 20-byte file (npyz alone would allocate it).
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.extend_from_slice(b"{'descr'");
    let path = write(dir.path(), "huge_header.npy", &bytes);
    refused(&path, "header announces 4294967280 bytes");
    // Version 1: 65 535 bytes announced, 12 present.
    let mut bytes = b"\x93NUMPY\x01\x00\xff\xff".to_vec();
    bytes.extend_from_slice(b"{'d");
    let path = write(dir.path(), "v1_header.npy", &bytes);
    refused(&path, "header announces 65535 bytes");
    // A header that is present but far longer than any plain array needs.
    let long = format!("{{'descr': '<f4', 'x': '{}'}}\n", "a".repeat(20_000));
    let path = write(dir.path(), "long_header.npy", npy(2, &long, &[]));
    refused(&path, "more than the 10000");
    // Deep nesting would make the header parser run for minutes.
    let deep = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': {}{}}}\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let path = write(dir.path(), "deep_header.npy", npy(1, &deep, &[0; 4]));
    refused(&path, "nested 201 deep");
}

#[test]
fn shape_products_that_overflow() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, descr, shape) in [
        // 2^32 × 2^32 wraps to 0 in u64 arithmetic, which would pass a size check.
        ("wraps.npy", "<f4", "(4294967296, 4294967296)"),
        // The element count fits, the byte count does not.
        ("bytes_wrap.npy", "<f8", "(2305843009213693952, 12)"),
    ] {
        refused(&plain_npy(dir.path(), name, descr, shape, &[]), "too large");
    }
    // A dimension above u64 (npyz reads it as a big integer).
    let path = plain_npy(
        dir.path(),
        "bigint.npy",
        "<f4",
        "(99999999999999999999999, 12, 5)",
        &[],
    );
    let err = read_any(&path, RATE).expect_err("refused");
    assert!(err.to_string().contains("bigint.npy"), "{err}");
}

#[test]
fn shape_claiming_more_data_than_the_file_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = plain_npy(
        dir.path(),
        "claims.npy",
        "<f4",
        "(100000, 12, 5000)",
        &[0; 64],
    );
    refused(&path, "needs 24000000000 bytes of data, the file holds 64");
    // The same through the opener the commands use.
    let err = open_npy(&path).err().expect("refused");
    assert!(err.to_string().contains("claims.npy"), "{err}");
}

#[test]
fn truncated_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = npy_f32_bytes(&[2, 12, 10], &[0.5; 240]);
    let path = write(dir.path(), "cut.npy", &full[..full.len() - 100]);
    refused(&path, "truncated");
    let path = write(dir.path(), "magic_only.npy", b"\x93NUMPY\x01");
    refused(&path, "too short");
    let path = write(dir.path(), "empty.npy", b"");
    refused(&path, "empty");
    let path = write(dir.path(), "text.npy", b"descr,shape\nf4,12\n");
    refused(&path, "magic string");
    let path = plain_npy(dir.path(), "version9.npy", "<f4", "(12, 1)", &[0; 48]);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[6] = 9;
    std::fs::write(&path, bytes).expect("write");
    refused(&path, "version 9.0");
}

#[test]
fn zero_recordings_or_samples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "none.npy", npy_f32_bytes(&[0, 12, 5000], &[]));
    refused(&path, "no recordings");
    let path = write(dir.path(), "short.npy", npy_f32_bytes(&[3, 12, 0], &[]));
    refused(&path, "no samples");
    let path = write(dir.path(), "flat.npy", npy_f32_bytes(&[12, 0], &[]));
    refused(&path, "no samples");
}

#[test]
fn non_numeric_dtypes() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, descr, data, needle) in [
        ("strings.npy", "<U4", &[b'a'; 384][..], "unsupported dtype"),
        (
            "objects.npy",
            "|O",
            &b"\x80\x02cos\nsystem\n"[..],
            "object arrays",
        ),
    ] {
        refused(&plain_npy(dir.path(), name, descr, "(12, 2)", data), needle);
    }
    let structured = "{'descr': [('a', '<f4'), ('b', '<i2')], 'fortran_order': False, \
                      'shape': (12, 2), }\n";
    let path = write(dir.path(), "structured.npy", npy(1, structured, &[0; 144]));
    refused(&path, "structured");
    // Zero-sized elements would let any shape pass the size check.
    let path = plain_npy(
        dir.path(),
        "void.npy",
        "|V0",
        "(1000000000000, 12, 5000)",
        &[],
    );
    let err = read_array(&path).expect_err("refused");
    assert!(err.to_string().contains("void.npy"), "{err}");
}

/// A zip archive of `(name, bytes, deflated)` members.
fn zip(members: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut writer = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, deflated) in members {
        let method = if *deflated {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        writer
            .start_file(*name, FileOptions::default().compression_method(method))
            .expect("zip member");
        writer.write_all(bytes).expect("zip data");
    }
    writer.finish().expect("zip finish").into_inner()
}

/// Sets the uncompressed size the archive declares for its (only) member, in the local and
/// the central header.
fn declare_size(archive: &mut [u8], size: u32) {
    for (signature, offset) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let at = archive
            .windows(4)
            .position(|w| w == signature)
            .expect("zip header");
        archive[at + offset..at + offset + 4].copy_from_slice(&size.to_le_bytes());
    }
}

#[test]
fn valid_npz_still_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = npy_f32_bytes(&[12, 3], &[1.0; 36]);
    let b = npy_f32_bytes(&[2, 12, 3], &[2.0; 72]);
    let path = write(
        dir.path(),
        "ok.npz",
        zip(&[("a.npy", &a, false), ("b.npy", &b, true)]),
    );
    let ecgs = read_any(&path, RATE).expect("a valid archive reads");
    let ids: Vec<&str> = ecgs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["ok_a", "ok_b_0", "ok_b_1"]);
}

#[test]
fn npz_member_bombs() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A (12, 2) array followed by 64 MiB of zeros, which deflate to about 64 KiB.
    let mut bomb = npy_f32_bytes(&[12, 2], &[0.0; 24]);
    let needed = bomb.len();
    bomb.resize(needed + (64 << 20), 0);
    let honest = zip(&[("x.npy", &bomb, true)]);
    assert!(honest.len() < 1 << 20);
    let path = write(dir.path(), "bomb.npz", &honest);
    refused(&path, "array x: the archive declares");
    // The same member declaring only the bytes its array needs: found by reading one byte past.
    let mut lying = honest.clone();
    declare_size(&mut lying, needed as u32);
    let path = write(dir.path(), "lying_bomb.npz", &lying);
    refused(&path, "inflates beyond");
    // A tiny member declaring almost 4 GiB: refused before anything is read.
    let small = npy_f32_bytes(&[12, 2], &[0.0; 24]);
    let mut huge = zip(&[("x.npy", &small, false)]);
    declare_size(&mut huge, 0xF000_0000);
    assert!(u64::from(0xF000_0000u32) > MAX_NPZ_MEMBER_LEN);
    let path = write(dir.path(), "huge_declared.npz", &huge);
    refused(&path, "more than the limit");
    // A member whose own .npy header is hostile is checked like a file.
    let mut header = b"\x93NUMPY\x02\x00".to_vec();
    header.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let path = write(
        dir.path(),
        "member_header.npz",
        zip(&[("x.npy", &header, true)]),
    );
    refused(&path, "array x: truncated or corrupt");
    // An archive of zero recordings.
    let none = npy_f32_bytes(&[0, 12, 3], &[]);
    let path = write(dir.path(), "none.npz", zip(&[("x.npy", &none, false)]));
    refused(
        &path,
        "array x: the array of shape [0, 12, 3] holds no recordings",
    );
}

#[test]
fn npz_unsupported_compression_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = npy_f32_bytes(&[12, 2], &[0.0; 24]);
    let mut archive = zip(&[("x.npy", &small, false)]);
    // Bzip2 (method 12): a decoder NumPy never needs, refused before it sees any byte.
    for (signature, offset) in [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10)] {
        let at = archive
            .windows(4)
            .position(|w| w == signature)
            .expect("zip header");
        archive[at + offset..at + offset + 2].copy_from_slice(&12u16.to_le_bytes());
    }
    let path = write(dir.path(), "bzip2.npz", &archive);
    refused(&path, "unsupported compression method");
}
