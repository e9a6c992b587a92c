//! Property tests of the checkpoint readers (issue: hostile and broken inputs).
//!
//! Arbitrary bytes and arbitrary mutations of valid files are given to `StateDict::read`: PyTorch
//! zip archives (the raw archive, the pickle inside it, and a tensor storage inside it, each
//! mutated and re-packed so that the zip's checksums still hold) and safetensors files. Each must
//! end in `Ok` or a typed error that names the file: never a panic, an abort, or more memory than
//! the cap of the allocator installed below (an allocation past it aborts this test binary).
//!
//! `MMCL_FUZZ_CASES` sets the cases per property (default 96); `MMCL_FUZZ_SEED` the stream.

use std::path::{Path, PathBuf};

use mmcl_nn::StateDict;
use mmcl_testutil::alloc::CappedAllocator;
use mmcl_testutil::mutate::{apply, fuzz_config, mutations};
use mmcl_testutil::zip;
use proptest::prelude::*;

/// No reader may hold more than this (the fixtures are a few kB).
const MEMORY_CAP: usize = 1 << 30;

#[global_allocator]
static ALLOC: CappedAllocator = CappedAllocator::new(MEMORY_CAP);

/// A fixture file: the PyTorch archives live beside their reader, in `mmcl-pth`.
fn fixture(name: &str) -> Vec<u8> {
    let owner = if name.ends_with(".safetensors") {
        "."
    } else {
        "../mmcl-pth"
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(owner)
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Reads `bytes` as a checkpoint file named `name`; `Ok`, or an error naming the file.
fn check_read(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    if let Err(e) = StateDict::read(&path) {
        let message = format!("{e}");
        prop_assert!(
            message.contains(name),
            "the error does not name {name}: {message}"
        );
    }
    Ok(())
}

const PTH_FIXTURES: [&str; 5] = [
    "plain_state_dict.pth",
    "model_wrapped.pth",
    "lightning.ckpt",
    "views.pth",
    "dtypes.pth",
];

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn pth_reader_survives_archive_mutations(m in mutations(3), which in 0usize..5) {
        check_read("model.pth", &apply(fixture(PTH_FIXTURES[which]), &m))?;
    }

    #[test]
    fn pth_reader_survives_pickle_mutations(m in mutations(4), which in 0usize..5) {
        let mut entries = zip::members(&fixture(PTH_FIXTURES[which]));
        for (name, data) in &mut entries {
            if name.ends_with("data.pkl") {
                *data = apply(std::mem::take(data), &m);
            }
        }
        check_read("model.pth", &zip::stored(&entries))?;
    }

    #[test]
    fn pth_reader_survives_storage_mutations(m in mutations(2), which in 0usize..5, pick in any::<usize>()) {
        let mut entries = zip::members(&fixture(PTH_FIXTURES[which]));
        let storages: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| name.contains("/data/"))
            .map(|(i, _)| i)
            .collect();
        if !storages.is_empty() {
            let i = storages[pick % storages.len()];
            entries[i].1 = apply(std::mem::take(&mut entries[i].1), &m);
        }
        check_read("model.pth", &zip::stored(&entries))?;
    }

    #[test]
    fn pth_reader_survives_arbitrary_pickles(pickle in prop::collection::vec(any::<u8>(), 0..2048)) {
        let entries = vec![("archive/data.pkl".to_string(), pickle)];
        check_read("model.pth", &zip::stored(&entries))?;
    }

    #[test]
    fn safetensors_reader_survives_mutations(m in mutations(3), which in 0usize..2) {
        let seed = ["batch_norm_pool.safetensors", "interpolate_pos_embed.safetensors"][which];
        check_read("model.safetensors", &apply(fixture(seed), &m))?;
    }

    #[test]
    fn safetensors_reader_survives_header_mutations(m in mutations(3)) {
        let file = fixture("interpolate_pos_embed.safetensors");
        let header_len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
        let header = apply(file[8..8 + header_len].to_vec(), &m);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&file[8 + header_len..]);
        check_read("model.safetensors", &bytes)?;
    }

    #[test]
    fn any_reader_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        check_read("model.pth", &bytes)?;
        check_read("model.safetensors", &bytes)?;
        let mut zip_magic = b"PK\x03\x04".to_vec();
        zip_magic.extend_from_slice(&bytes);
        check_read("model.ckpt", &zip_magic)?;
    }
}
