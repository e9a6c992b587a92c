//! The fused residual block against the composed layers.

use super::*;
use crate::ParamStore;
use crate::batch_norm::{BatchNormConfig, batch_norm};
use crate::kernels::test_support::rand_tensor;
use candle_core::{DType, Device, Var};

/// A unit's shape: `(C_in, C_out, kernel, stride)`; padding `kernel / 2`.
type UnitShape = (usize, usize, usize, usize);

/// A block's units and its identity's projection, if any.
type BlockShape<'a> = (&'a [UnitShape], Option<UnitShape>);

/// How [`train_step`] runs the blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// The layers one by one.
    Composed,
    /// One node per block.
    Fused,
    /// One node for all the blocks.
    Stage,
}

/// The blocks' output, the input's gradient and every parameter's gradient and running
/// statistic after one training step, by name.
fn train_step(blocks: &[BlockShape], x: &Tensor, path: Path) -> Result<Vec<(String, Vec<f32>)>> {
    let dev = Device::Cpu;
    let store = ParamStore::new(4);
    let vb = store.var_builder(DType::F32, &dev);
    let mut seed = 10;
    let mut make = |name: &str,
                    (cin, cout, k, stride): UnitShape|
     -> Result<(Tensor, BatchNorm, usize)> {
        seed += 1;
        let weight =
            vb.pp(name)
                .get_with_hints((cout, cin, k, k), "weight", candle_nn::Init::Const(0.0))?;
        let var = store.get(&format!("{name}.weight")).expect("weight");
        var.set(&rand_tensor(&[cout, cin, k, k], seed, 0.5)?)?;
        let bn = batch_norm(
            cout,
            BatchNormConfig::default(),
            vb.pp(format!("{name}.bn")),
        )?;
        let scale = store.get(&format!("{name}.bn.weight")).expect("scale");
        scale.set(&(rand_tensor(&[cout], seed + 100, 0.5)? + 1.0)?)?;
        let shift = store.get(&format!("{name}.bn.bias")).expect("shift");
        shift.set(&rand_tensor(&[cout], seed + 200, 0.5)?)?;
        Ok((weight, bn, stride))
    };
    let mut parts = Vec::new();
    for (b, (shapes, downsample)) in blocks.iter().enumerate() {
        let units = shapes
            .iter()
            .enumerate()
            .map(|(i, &s)| make(&format!("block{b}.conv{i}"), s))
            .collect::<Result<Vec<_>>>()?;
        let ds = downsample
            .map(|s| make(&format!("block{b}.downsample"), s))
            .transpose()?;
        parts.push((units, ds));
    }
    fn unit((w, bn, stride): &(Tensor, BatchNorm, usize)) -> ConvBnUnit<'_> {
        ConvBnUnit {
            weight: w,
            stride: *stride,
            padding: w.dim(3).unwrap_or(1) / 2,
            bn,
        }
    }
    let blocks: Vec<BlockUnits> = parts
        .iter()
        .map(|(units, ds)| BlockUnits {
            units: units.iter().map(unit).collect(),
            downsample: ds.as_ref().map(unit),
        })
        .collect();
    let x = Var::from_tensor(x)?;
    let mut y = x.as_tensor().clone();
    if path == Path::Stage {
        assert!(
            stage::stage_plans(&y, &blocks)?.is_some(),
            "the stage is fused"
        );
        y = residual_stage(&y, &blocks, true)?;
    }
    for BlockUnits { units, downsample } in blocks.iter().filter(|_| path != Path::Stage) {
        if path == Path::Fused {
            let plan = Plan::new(&y, units, downsample.as_ref())?;
            assert!(plan.is_some(), "the fused path applies");
            y = residual_block(&y, units, downsample.as_ref(), true)?;
            continue;
        }
        let last = units.len() - 1;
        let mut out = y.clone();
        for (i, u) in units.iter().enumerate() {
            out = u.forward(&out, true, i < last)?;
        }
        let identity = match downsample {
            Some(d) => d.forward(&y, true, false)?,
            None => y.clone(),
        };
        y = add_relu(&out, &identity)?;
    }
    // (y² + y)·r: the gradient is not zero where the final ReLU cut y to 0.
    let r = rand_tensor(y.dims(), 99, 1.0)?;
    let grads = ((y.sqr()? + &y)? * &r)?.sum_all()?.backward()?;
    let values =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    let mut out = vec![
        ("output".to_string(), values(&y)?),
        (
            "dx".to_string(),
            values(grads.get(x.as_tensor()).expect("dx"))?,
        ),
    ];
    for (name, var) in store.named_vars() {
        let value = match grads.get(var.as_tensor()) {
            Some(g) => values(g)?,
            None => values(var.as_tensor())?,
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Asserts that `blocks` on an input of shape `x` give the same values and gradients on
/// `path` as composed.
fn assert_path_matches_composed(
    what: &str,
    blocks: &[BlockShape],
    x: &[usize],
    path: Path,
) -> Result<()> {
    let x = rand_tensor(x, 3, 2.0)?;
    let fused = train_step(blocks, &x, path)?;
    let composed = train_step(blocks, &x, Path::Composed)?;
    assert_eq!(fused.len(), composed.len());
    for ((name, a), (other, b)) in fused.iter().zip(&composed) {
        assert_eq!(name, other);
        // The same kernels in the same order: equal values (±0 aside).
        assert!(a == b, "{what}, {path:?}: {name} differs");
    }
    Ok(())
}

fn assert_fused_matches_composed(
    what: &str,
    shapes: &[UnitShape],
    downsample: Option<UnitShape>,
    x: &[usize],
) -> Result<()> {
    assert_path_matches_composed(what, &[(shapes, downsample)], x, Path::Fused)
}

#[test]
fn a_fused_stage_matches_the_composed_layers() -> Result<()> {
    // A projected strided bottleneck, then two identity ones (a ResNet50 stage in small).
    let first: [UnitShape; 3] = [(8, 3, 1, 1), (3, 3, 3, 2), (3, 12, 1, 1)];
    let rest: [UnitShape; 3] = [(12, 3, 1, 1), (3, 3, 3, 1), (3, 12, 1, 1)];
    let blocks = [
        (&first[..], Some((8, 12, 1, 2))),
        (&rest, None),
        (&rest, None),
    ];
    assert_path_matches_composed("bottleneck stage", &blocks, &[2, 8, 9, 8], Path::Stage)?;
    // Basic blocks, identity only.
    let basic: [UnitShape; 2] = [(4, 4, 3, 1), (4, 4, 3, 1)];
    let blocks = [(&basic[..], None), (&basic, None)];
    assert_path_matches_composed("basic stage", &blocks, &[2, 4, 7, 6], Path::Stage)
}

/// A basic block of two 3×3 units sharing `parts`, with the identity.
fn basic_block(parts: &(Tensor, BatchNorm)) -> BlockUnits<'_> {
    BlockUnits {
        units: vec![unit3x3(parts), unit3x3(parts)],
        downsample: None,
    }
}

#[test]
fn a_stage_with_a_block_off_the_fused_path_runs_block_by_block() -> Result<()> {
    // The blocks' parameters outweigh their outputs (see the next test).
    let x = rand_tensor(&[2, 16, 4, 4], 1, 1.0)?;
    let parts = conv3x3_bn(16, 16)?;
    let blocks = [basic_block(&parts), basic_block(&parts)];
    assert!(stage::stage_plans(&x, &blocks)?.is_none());
    let y = residual_stage(&x, &blocks, true)?;
    assert_eq!(y.dims(), x.dims());
    Ok(())
}

#[test]
fn a_stage_with_a_block_without_units_is_an_error() -> Result<()> {
    let x = rand_tensor(&[2, 4, 6, 6], 1, 1.0)?;
    let parts = conv3x3_bn(4, 4)?;
    let full = basic_block(&parts);
    // Only a projection: the composed path's error, not a fused plan.
    let empty = BlockUnits {
        units: Vec::new(),
        downsample: Some(unit3x3(&parts)),
    };
    let blocks = [full, empty];
    assert!(stage::stage_plans(&x, &blocks)?.is_none());
    let err = residual_stage(&x, &blocks, true).expect_err("a block without units");
    assert!(err.to_string().contains("at least one"), "{err}");
    Ok(())
}

#[test]
fn fused_blocks_match_the_composed_layers() -> Result<()> {
    // torchvision's BasicBlock, identity and projected.
    assert_fused_matches_composed("basic", &[(4, 4, 3, 1), (4, 4, 3, 1)], None, &[2, 4, 7, 6])?;
    assert_fused_matches_composed(
        "basic, strided",
        &[(4, 6, 3, 2), (6, 6, 3, 1)],
        Some((4, 6, 1, 2)),
        &[3, 4, 9, 8],
    )?;
    // Bottleneck (v1.5: the stride on the 3×3), projected and identity.
    assert_fused_matches_composed(
        "bottleneck",
        &[(8, 3, 1, 1), (3, 3, 3, 2), (3, 12, 1, 1)],
        Some((8, 12, 1, 2)),
        &[2, 8, 6, 7],
    )?;
    assert_fused_matches_composed(
        "bottleneck, identity",
        &[(8, 2, 1, 1), (2, 2, 3, 1), (2, 8, 1, 1)],
        None,
        &[2, 8, 5, 5],
    )
}

/// A 3×3 convolution's weight (`cin` → `cout`, stride 1, padding 1) and its batch norm.
fn conv3x3_bn(cin: usize, cout: usize) -> Result<(Tensor, BatchNorm)> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let weight = rand_tensor(&[cout, cin, 3, 3], 2, 0.1)?;
    Ok((weight, batch_norm(cout, BatchNormConfig::default(), vb)?))
}

fn unit3x3((weight, bn): &(Tensor, BatchNorm)) -> ConvBnUnit<'_> {
    ConvBnUnit {
        weight,
        stride: 1,
        padding: 1,
        bn,
    }
}

#[test]
fn blocks_whose_parameters_outweigh_their_outputs_stay_composed() -> Result<()> {
    // 2×2 maps of 16 channels against a 16×16×3×3 kernel: 128 output values per unit,
    // 2 × 2304 weights.
    let x = rand_tensor(&[2, 16, 2, 2], 1, 1.0)?;
    let parts = conv3x3_bn(16, 16)?;
    let units = [unit3x3(&parts), unit3x3(&parts)];
    assert!(Plan::new(&x, &units, None)?.is_none());
    let y = residual_block(&x, &units, None, true)?;
    assert_eq!(y.dims(), x.dims());
    Ok(())
}

#[test]
fn shapes_that_do_not_chain_are_refused_by_the_composed_layers() -> Result<()> {
    let x = rand_tensor(&[2, 4, 6, 6], 1, 1.0)?;
    let parts = conv3x3_bn(4, 6)?;
    // The identity has 4 channels, the block's output 6, and there is no projection.
    let err = residual_block(&x, &[unit3x3(&parts)], None, true).expect_err("mismatch");
    assert!(err.to_string().contains("add_relu"), "{err}");
    let empty = residual_block(&x, &[], None, true).expect_err("no units");
    assert!(empty.to_string().contains("at least one"), "{empty}");
    Ok(())
}
