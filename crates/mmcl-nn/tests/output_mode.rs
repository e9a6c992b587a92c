//! Checkpoints written through the atomic writer get the permissions of a new file, although
//! safetensors writes through `tempfile`, whose files are 0600.

#[cfg(unix)]
#[test]
fn safetensors_get_the_umask_permissions_not_0600() {
    use std::os::unix::fs::PermissionsExt;

    let Some(expected) = mmcl_core::io::default_file_mode() else {
        eprintln!("no /proc/self/status umask: permissions are left to the writer");
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("t.safetensors");
    let mut state = mmcl_nn::StateDict::default();
    state.insert(
        "w",
        candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).expect("tensor"),
    );
    state.write_safetensors(&path, None).expect("write");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, expected);
    if expected == 0o644 {
        // Under umask 022 colleagues can read what was written.
        assert_ne!(mode & 0o044, 0);
    }
}
