//! Hostile and broken checkpoints (issue 17): every one must give a typed error naming the file,
//! quickly and without taking memory from a size the file states. The archives and pickles are
//! written by hand here, byte by byte, as `torch.save` lays them out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use mmcl_pth::{ArchiveError, read_file};

/// The names of tensors read from an archive.
fn names(tensors: &[(String, Tensor)]) -> Vec<&str> {
    tensors.iter().map(|(name, _)| name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Pickles

/// A protocol-2 pickle written opcode by opcode.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }
    /// Any non-negative integer, as LONG1 over 8 bytes.
    fn int(&mut self, v: u64) -> &mut Self {
        self.op(&[0x8a, 8]).op(&v.to_le_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c")
            .op(module.as_bytes())
            .op(b"\n")
            .op(name.as_bytes())
            .op(b"\n")
    }
    fn mark(&mut self) -> &mut Self {
        self.op(b"(")
    }
    fn tuple(&mut self) -> &mut Self {
        self.op(b"t")
    }
    fn put(&mut self, idx: u8) -> &mut Self {
        self.op(&[b'q', idx])
    }
    fn get(&mut self, idx: u8) -> &mut Self {
        self.op(&[b'h', idx])
    }
    fn ints(&mut self, values: &[u64]) -> &mut Self {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.tuple()
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` over a float
    /// storage `key` of `numel` elements.
    fn tensor(
        &mut self,
        key: &str,
        numel: u64,
        offset: u64,
        size: &[u64],
        stride: &[u64],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .tuple()
            .op(b"Q");
        self.int(offset).ints(size).ints(stride).op(&[0x89]);
        self.global("collections", "OrderedDict").op(b")R");
        self.tuple().op(b"R")
    }
    fn stop(&mut self) -> Vec<u8> {
        self.op(b".");
        self.0.clone()
    }
}

/// A state dict `{"weight": float tensor of 4 elements over storage "0"}`, left open (the dict is
/// on the stack) so callers may add items before `u.`.
fn weight_dict() -> Pickle {
    weight_view(4, 0, &[4], &[1])
}

/// As [`weight_dict`], the weight a view of `size` and `stride` from `offset` into a float
/// storage "0" of `numel` elements.
fn weight_view(numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> Pickle {
    let mut p = Pickle::new();
    p.op(b"}")
        .mark()
        .str("weight")
        .tensor("0", numel, offset, size, stride);
    p
}

// ---------------------------------------------------------------------------------------------
// Zip archives

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One entry of a hand-made archive: the bytes as stored, the compression method (0 stored,
/// 8 deflated) and the uncompressed size and CRC the headers declare.
struct Entry {
    name: String,
    raw: Vec<u8>,
    method: u16,
    declared: u32,
    crc: u32,
}

impl Entry {
    fn stored(name: &str, data: &[u8]) -> Self {
        Entry {
            name: name.to_string(),
            raw: data.to_vec(),
            method: 0,
            declared: data.len() as u32,
            crc: crc32(data),
        }
    }
}

/// A zip archive with exactly the headers given (no zip64, no data descriptors).
fn zip_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let offset = out.len() as u32;
        let name = e.name.as_bytes();
        let common = |buf: &mut Vec<u8>| {
            buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
            buf.extend_from_slice(&0u16.to_le_bytes()); // flags
            buf.extend_from_slice(&e.method.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes()); // time, date
            buf.extend_from_slice(&e.crc.to_le_bytes());
            buf.extend_from_slice(&(e.raw.len() as u32).to_le_bytes());
            buf.extend_from_slice(&e.declared.to_le_bytes());
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(b"PK\x03\x04");
        common(&mut out);
        out.extend_from_slice(name);
        out.extend_from_slice(&e.raw);

        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0u8; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0u8; 4]); // disk numbers
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// `archive/data.pkl` plus storages, all stored, as `torch.save` writes them.
fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![Entry::stored("archive/data.pkl", pickle)];
    for (key, data) in storages {
        entries.push(Entry::stored(&format!("archive/data/{key}"), data));
    }
    zip_bytes(&entries)
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The deflated form of `n` zero bytes (written by the zip crate, read back raw).
fn deflated_zeros(n: usize) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file("zeros", options).expect("start entry");
    writer.write_all(&vec![0u8; n]).expect("deflate");
    let bytes = writer.finish().expect("finish zip").into_inner();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("reopen");
    let mut raw = Vec::new();
    archive
        .by_name_raw(b"zeros")
        .expect("entry")
        .read_to_end(&mut raw)
        .expect("raw bytes");
    raw
}

// ---------------------------------------------------------------------------------------------
// Checks

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

/// Reads `path`, expecting an error other than a failed read naming the file and containing `needle`;
/// returns the message. Fails if reading takes more than a few seconds.
fn refused(path: &Path, needle: &str) -> String {
    let start = Instant::now();
    let result = read_file(path);
    let elapsed = start.elapsed();
    let message = match result {
        Ok(tensors) => panic!("{} was read: {:?}", path.display(), names(&tensors)),
        Err(e) if !matches!(*e.reason, ArchiveError::Io(_)) => e.to_string(),
        Err(other) => panic!("{}: a read error: {other:?}", path.display()),
    };
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    assert!(message.contains(file), "{message}");
    assert!(
        message.contains(needle),
        "expected {needle:?} in: {message}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    message
}

#[test]
fn a_valid_hand_made_archive_reads() {
    // The helpers above write what the reader accepts: the hostile cases below differ only in
    // what they break.
    let dir = tempfile::tempdir().expect("temp dir");
    let pickle = weight_dict().op(b"u").stop();
    let path = write(
        dir.path(),
        "valid.pth",
        &torch_zip(&pickle, &[("0", floats(&[1.0, 2.0, 3.0, 4.0]))]),
    );
    let tensors = read_file(&path).expect("valid archive");
    assert_eq!(names(&tensors), vec!["weight"]);
    let w = &tensors[0].1;
    assert_eq!(w.to_vec1::<f32>().expect("f32"), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn overflowing_shapes_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = floats(&[1.0, 2.0, 3.0, 4.0]);
    // 2^33 × 2^33 elements wrap to 0 in 64 bits; with stride 0 the "last element" is 0.
    // The archive `name` whose weight is `weight_view(numel, offset, size, stride)` over `data`.
    let archive = |name: &str, numel: u64, offset: u64, size: &[u64], stride: &[u64]| {
        let pickle = weight_view(numel, offset, size, stride).op(b"u").stop();
        write(
            dir.path(),
            name,
            &torch_zip(&pickle, &[("0", data.clone())]),
        )
    };
    let big = 1u64 << 33;
    let path = archive("numel-overflow.pth", 4, 0, &[big, big], &[0, 0]);
    refused(&path, "overflows");

    // Element count fits, bytes do not (× 4 bytes per float).
    let path = archive("bytes-overflow.pth", 4, 0, &[1 << 62], &[0]);
    refused(&path, "overflows");

    // Offset + extent overflow through the strides.
    let path = archive(
        "extent-overflow.pth",
        4,
        u64::MAX >> 2,
        &[2],
        &[u64::MAX >> 2],
    );
    refused(&path, "needs");

    // A storage element count whose byte size overflows.
    let path = archive("storage-overflow.pth", 1 << 62, 0, &[4], &[1]);
    refused(&path, "data/0");
}

#[test]
fn entry_sizes_beyond_the_archive_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pickle = weight_dict().op(b"u").stop();
    let data = floats(&[1.0, 2.0, 3.0, 4.0]);

    // A stored storage entry claiming 4 GiB - 1 uncompressed bytes: never allocated.
    let mut storage = Entry::stored("archive/data/0", &data);
    storage.declared = u32::MAX;
    let bytes = zip_bytes(&[Entry::stored("archive/data.pkl", &pickle), storage]);
    let path = write(dir.path(), "claims-4gib.pth", &bytes);
    refused(&path, "declares");

    // The same lie on data.pkl itself.
    let mut pkl = Entry::stored("archive/data.pkl", &pickle);
    pkl.declared = u32::MAX;
    let bytes = zip_bytes(&[pkl, Entry::stored("archive/data/0", &data)]);
    let path = write(dir.path(), "pickle-claims-4gib.pth", &bytes);
    refused(&path, "data.pkl");

    // A deflated entry may claim more than it stores, but not more than deflate can inflate to:
    // 16 compressed bytes for 1 MiB, where the pickle allows 4 MiB.
    let mut p = weight_view(1 << 20, 0, &[4], &[1]);
    let mut storage = Entry::stored("archive/data/0", &data);
    storage.method = 8;
    storage.declared = 1 << 20;
    let bytes = zip_bytes(&[
        Entry::stored("archive/data.pkl", &p.op(b"u").stop()),
        storage,
    ]);
    let path = write(dir.path(), "deflated-claims-1mib.pth", &bytes);
    refused(&path, "compressed bytes can hold");
}

#[test]
fn storage_entries_inflating_past_their_declared_size_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pickle = weight_dict().op(b"u").stop();
    // 8 MiB of zeros deflated to a few kilobytes, for a storage the pickle declares as 16 bytes.
    let bomb = deflated_zeros(8 << 20);

    // Honest headers: the declared size already exceeds the storage.
    let honest = Entry {
        name: "archive/data/0".into(),
        raw: bomb.clone(),
        method: 8,
        declared: 8 << 20,
        crc: crc32(&vec![0u8; 8 << 20]),
    };
    let bytes = zip_bytes(&[Entry::stored("archive/data.pkl", &pickle), honest]);
    let path = write(dir.path(), "bomb-honest.pth", &bytes);
    refused(&path, "the size the pickle declares");

    // Lying headers: 16 bytes declared, 8 MiB inflate; the read stops at 16.
    let lying = Entry {
        name: "archive/data/0".into(),
        raw: bomb,
        method: 8,
        declared: 16,
        crc: 0,
    };
    let bytes = zip_bytes(&[Entry::stored("archive/data.pkl", &pickle), lying]);
    let path = write(dir.path(), "bomb-lying.pth", &bytes);
    // The zip reader or our own cap stops it, whichever sees it first.
    let message = refused(&path, "archive/data/0");
    assert!(message.contains("declare"), "{message}");
}

#[test]
fn shared_dictionary_bombs_are_refused_quickly() {
    let dir = tempfile::tempdir().expect("temp dir");
    // d0 = {"w": tensor}; d(i) = {"a": d(i-1), "b": d(i-1)}: 2^60 key paths in a few hundred
    // bytes.
    let mut p = Pickle::new();
    p.op(b"}")
        .put(0)
        .mark()
        .str("w")
        .tensor("0", 4, 0, &[4], &[1]);
    p.op(b"u");
    for i in 1..=60u8 {
        p.op(b"}").put(i).mark();
        p.str("a").get(i - 1).str("b").get(i - 1).op(b"u");
        p.op(b"0"); // drop it from the stack; the memo keeps it
    }
    p.op(b"}").mark().str("root").get(60).op(b"u");
    let bytes = torch_zip(&p.stop(), &[("0", floats(&[1.0, 2.0, 3.0, 4.0]))]);
    let path = write(dir.path(), "shared-dicts.pth", &bytes);
    refused(&path, "1000000 entries");
}

#[test]
fn memo_copies_are_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A list of 100k items, turned into a set 200 times: 20M copies from 200 kB of pickle.
    let mut p = weight_dict();
    p.op(b"]").put(1).mark();
    for _ in 0..100_000 {
        p.op(b"N");
    }
    p.op(b"e");
    for _ in 0..200 {
        p.global("builtins", "set").get(1).op(&[0x85]).op(b"R0");
    }
    let bytes = torch_zip(&p.op(b"u").stop(), &[("0", floats(&[1.0, 2.0, 3.0, 4.0]))]);
    let path = write(dir.path(), "memo-copies.pth", &bytes);
    refused(&path, "values");
}

#[test]
fn views_repeating_one_storage_are_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    // One 1 MiB storage viewed whole under 200 names: 200 MiB from a 1 MiB archive.
    let numel = 1u64 << 18;
    let mut p = Pickle::new();
    p.op(b"}").mark();
    for i in 0..200 {
        p.str(&format!("w{i}"))
            .tensor("0", numel, 0, &[numel], &[1]);
    }
    let bytes = torch_zip(&p.op(b"u").stop(), &[("0", vec![0u8; 4 << 18])]);
    let path = write(dir.path(), "repeated-views.pth", &bytes);
    refused(&path, "repeat");
}

/// Appends one value to a pickle under construction.
type Payload = fn(&mut Pickle);

#[test]
fn code_running_globals_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = floats(&[1.0, 2.0, 3.0, 4.0]);
    // Each beside a valid weight, the way a poisoned checkpoint would carry it.
    let cases: [(&str, &str, &str, Payload); 6] = [
        ("eval", "builtins.eval", "refers to", |p| {
            p.global("builtins", "eval").str("1+1").op(&[0x85]).op(b"R");
        }),
        ("system", "os.system", "refers to", |p| {
            p.str("os").str("system").op(&[0x93]); // STACK_GLOBAL
            p.str("true").op(&[0x85]).op(b"R");
        }),
        ("getattr", "__builtin__.getattr", "refers to", |p| {
            p.global("__builtin__", "getattr");
            p.global("collections", "OrderedDict")
                .str("fromkeys")
                .op(&[0x86])
                .op(b"R");
        }),
        ("call", "torch.load", "calls", |p| {
            p.global("torch", "load").str("x.pth").op(&[0x85]).op(b"R");
        }),
        ("inst", "subprocess.Popen", "refers to", |p| {
            p.mark().str("true").op(b"isubprocess\nPopen\n");
        }),
        ("build", "argparse.Namespace", "sets attributes of", |p| {
            p.global("argparse", "Namespace").op(b"}").op(b"b");
        }),
    ];
    for (file, global, action, payload) in cases {
        let mut p = weight_dict();
        p.str("payload");
        payload(&mut p);
        let bytes = torch_zip(&p.op(b"u").stop(), &[("0", data.clone())]);
        let path = write(dir.path(), &format!("{file}.pth"), &bytes);
        let message = refused(&path, global);
        assert!(message.contains(action), "{message}");
    }

    // Plain data classes instantiated through NEWOBJ (argparse arguments, hyper-parameter
    // objects) stay accepted, as in the reference checkpoints.
    let mut p = weight_dict();
    p.str("args")
        .global("argparse", "Namespace")
        .op(b")")
        .op(&[0x81]);
    p.op(b"}").str("lr").int(1).op(b"s").op(b"b");
    let bytes = torch_zip(&p.op(b"u").stop(), &[("0", data)]);
    let path = write(dir.path(), "namespace.pth", &bytes);
    let tensors = read_file(&path).expect("a Namespace beside the weights is fine");
    assert_eq!(names(&tensors), vec!["weight"]);
}
