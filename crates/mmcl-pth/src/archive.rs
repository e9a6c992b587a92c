//! The zip side of a `torch.save` archive: its entries, each read through one capped reader.
//!
//! The archive holds `<name>/data.pkl` (the pickled object) and one entry `<name>/data/<key>`
//! per storage. We run the pickle with our own machine ([`crate::pickle`]), collect the tensors it
//! describes ([`crate::tensors`]), and read only the storages those tensors name.
//!
//! Every size the file states is checked before memory is taken for it:
//! - every entry is read through [`read_entry`], which refuses an entry whose declared size
//!   exceeds what its compressed bytes can inflate to or what the pickle says it holds, and
//!   stops reading at that limit, so a zip bomb costs at most its declared storage;
//! - tensor shapes, strides and offsets are combined with checked arithmetic and must stay inside
//!   the storage bytes actually read ([`view_bytes`]);
//! - the walk over nested dictionaries is bounded in entries and key bytes (memo references can
//!   share one dictionary so that a small file nests it exponentially), and the tensors built
//!   may repeat storage bytes only a few times over ([`VIEW_REPEAT_FACTOR`]).

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::Tensor;

use crate::error::ArchiveError;
use crate::pickle::{StorageDType, Value};
use crate::tensors::{Walk, build_tensor, collect_tensors, view_bytes};

/// Largest `data.pkl` read: real ones are kilobytes to a few megabytes even for models with
/// thousands of tensors.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Largest `byteorder` entry (it holds `little` or `big`).
const MAX_BYTEORDER_BYTES: u64 = 16;

/// Most bytes one compressed byte can inflate to: deflate's limit is about 1032:1, so no genuine
/// deflated entry can exceed its compressed size times this. (`torch.save` stores entries
/// uncompressed; a stored entry holds exactly its compressed size.)
const MAX_INFLATE_RATIO: u64 = 1032;

/// The tensors built from an archive may repeat storage bytes (tied weights, slices and
/// transposes of one buffer) up to this many times the bytes of the storages read, plus
/// [`VIEW_SLACK_BYTES`]; a pickle naming one storage over and over could otherwise multiply
/// memory without bound.
const VIEW_REPEAT_FACTOR: usize = 4;

/// See [`VIEW_REPEAT_FACTOR`].
const VIEW_SLACK_BYTES: usize = 64 << 20;

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// Reads the entry `name` whole, if it holds at most `limit` bytes (`bound` says where the limit
/// comes from). The declared size must also fit what the compressed bytes can inflate to; the
/// read stops past `limit` whatever the header says, so no size from the file is trusted before
/// it is checked.
fn read_entry(
    archive: &mut Archive<'_>,
    name: &str,
    limit: u64,
    bound: &'static str,
) -> Result<Vec<u8>, ArchiveError> {
    let entry = archive.by_name(name).map_err(ArchiveError::Zip)?;
    let (declared, compressed) = (entry.size(), entry.compressed_size());
    let holdable = match entry.compression() {
        zip::CompressionMethod::Stored => compressed,
        _ => compressed.saturating_mul(MAX_INFLATE_RATIO),
    };
    let too_large = |limit, bound| ArchiveError::EntryTooLarge {
        entry: name.to_string(),
        declared,
        limit,
        bound,
    };
    if declared > limit {
        return Err(too_large(limit, bound));
    }
    if declared > holdable {
        return Err(too_large(holdable, "its compressed bytes can hold"));
    }
    // `declared` is now bounded by `limit`, which the caller derived from a checked size.
    let mut out = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    let cap = limit.min(holdable);
    entry
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| ArchiveError::Entry(name.to_string(), e))?;
    if out.len() as u64 > cap {
        return Err(ArchiveError::EntryInflates {
            entry: name.to_string(),
            limit: cap,
            bound: if cap == limit {
                bound
            } else {
                "what its compressed bytes can hold"
            },
        });
    }
    Ok(out)
}

/// Reads the tensors of a PyTorch zip archive held in memory (see [`crate::read_bytes`]).
pub(crate) fn read_torch_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(ArchiveError::Zip)?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pickle_name = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or(ArchiveError::NoPickle)?
        .clone();
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    let big_endian = match names.contains(&byteorder) {
        true => {
            let order = read_entry(
                &mut archive,
                &byteorder,
                MAX_BYTEORDER_BYTES,
                "a byte-order entry holds",
            )?;
            match String::from_utf8_lossy(&order).trim() {
                "little" => false,
                "big" => true,
                other => return Err(ArchiveError::ByteOrder(other.to_string())),
            }
        }
        false => false,
    };
    let pickled = read_entry(
        &mut archive,
        &pickle_name,
        MAX_PICKLE_BYTES,
        "the limit for data.pkl",
    )?;
    let root = crate::pickle::load(&pickled).map_err(ArchiveError::Pickle)?;
    if !matches!(root, Value::Dict(_)) {
        return Err(ArchiveError::NotADict);
    }
    let mut found = Vec::new();
    collect_tensors(&root, "", 0, &mut Walk::default(), &mut found)?;
    if found.is_empty() {
        return Err(ArchiveError::NoTensors);
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut storage_bytes = 0usize;
    let mut built_bytes = 0usize;
    let mut out = Vec::with_capacity(found.len());
    for (name, tref) in found {
        let key = &tref.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            if !names.contains(&entry) {
                return Err(ArchiveError::MissingStorage(name, key.clone()));
            }
            // The pickle declares each storage's element count: its entry may hold no more.
            let element = tref.storage.dtype.map_or(1, StorageDType::size);
            let declared = tref
                .storage
                .numel
                .checked_mul(element)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| ArchiveError::StorageSize {
                    key: key.clone(),
                    numel: tref.storage.numel,
                })?;
            let data = read_entry(
                &mut archive,
                &entry,
                declared,
                "the size the pickle declares for this storage",
            )?;
            storage_bytes = storage_bytes.saturating_add(data.len());
            storages.insert(key.clone(), data);
        }
        let data = storages.get(key).map(Vec::as_slice).unwrap_or_default();
        let size = view_bytes(&name, data.len(), &tref)?;
        let limit = storage_bytes
            .saturating_mul(VIEW_REPEAT_FACTOR)
            .saturating_add(VIEW_SLACK_BYTES);
        built_bytes = built_bytes.saturating_add(size);
        if built_bytes > limit {
            return Err(ArchiveError::TooMuchRepetition {
                tensor: name,
                limit,
            });
        }
        let tensor = build_tensor(&name, data, &tref, size, big_endian)?;
        out.push((name, tensor));
    }
    Ok(out)
}
