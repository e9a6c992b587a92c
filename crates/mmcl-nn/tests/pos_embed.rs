//! Position embeddings against the reference: the sin-cos table (parity fixture) and the
//! bicubic interpolation (a committed torch fixture, `fixtures/make_interpolation_fixture.py`).

use std::path::Path;

use candle_core::{Device, Tensor};
use mmcl_nn::pos_embed;
use mmcl_testutil::{Fixture, Tolerance, assert_close};

#[test]
fn sincos_matches_the_reference_table() {
    let Some(io) = Fixture::load("sincos_pos_embed_12x25_d384.io") else {
        return;
    };
    let expected = io.tensor("pos_embed");
    let ours = pos_embed::sincos_2d_tensor(384, (12, 25), true, &Device::Cpu)
        .and_then(|t| t.squeeze(0))
        .expect("table");
    assert_close(
        "sincos_pos_embed_12x25_d384",
        &ours,
        &expected,
        Tolerance::FORWARD,
    );
}

#[test]
fn interpolation_matches_torch_bicubic() {
    let fx = Fixture::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/interpolate_pos_embed.safetensors"),
    );
    let pos = fx.tensor("pos_embed");
    for (name, width) in [("width7", 7), ("width3", 3)] {
        let ours = pos_embed::interpolate_pos_embed(&pos, 1, 3, width).expect("interpolates");
        assert_close(name, &ours, &fx.tensor(name), Tolerance::FORWARD);
    }
    // Both axes resized (rows too), through the general resize.
    let grid: Vec<f32> = pos
        .narrow(1, 1, 15)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("grid");
    let resized = pos_embed::bicubic_resize(&grid, (3, 5), 8, (4, 7)).expect("resizes");
    let ours = Tensor::from_vec(resized, (4, 7, 8), &Device::Cpu).expect("tensor");
    assert_close(
        "grid_4x7",
        &ours,
        &fx.tensor("grid_4x7"),
        Tolerance::FORWARD,
    );
    // A grid that does not divide is an error.
    assert!(pos_embed::interpolate_pos_embed(&pos, 1, 4, 7).is_err());
}
