//! The NCCL backend on a GPU (crate feature `nccl`): a group of one behaves as one process.
//! Without a CUDA device the test says so and passes (CI machines have none); the prepared GPU
//! check runs it where one is present.
#![cfg(feature = "nccl")]

use candle_core::{DType, Device, Tensor, Var};
use mmcl_nn::distributed::{GradSync, NcclGroup};

#[test]
fn a_group_of_one_on_a_gpu_keeps_gradients_and_gathers_itself() {
    let Ok(device) = Device::new_cuda(0) else {
        eprintln!("skipped: no CUDA device");
        return;
    };
    let group = NcclGroup::single(&device).expect("an NCCL communicator on GPU 0");
    assert_eq!(
        (group.rank(), group.world_size(), group.backend()),
        (0, 1, "nccl")
    );

    let w = Var::new(&[1f32, 2.0, 3.0], &device).expect("w");
    let unused = Var::new(&[5f32], &device).expect("unused");
    let vars = vec![
        ("w".to_string(), w.clone()),
        ("unused".to_string(), unused.clone()),
    ];
    let x = Tensor::new(&[0.5f32, -1.0, 4.0], &device).expect("x");
    let mut grads = (w.as_tensor() * &x)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    group
        .all_reduce_mean(&vars, &mut grads)
        .expect("all-reduce");
    let g = grads.get(w.as_tensor()).expect("w keeps its gradient");
    assert_eq!(g.to_vec1::<f32>().expect("host"), vec![0.5, -1.0, 4.0]);
    assert!(g.device().is_cuda(), "the gradient stays on the GPU");
    assert!(
        grads.get(unused.as_tensor()).is_none(),
        "no gradient appears"
    );

    let local = Tensor::arange(0f32, 6.0, &device)
        .and_then(|t| t.reshape((2, 3)))
        .expect("local");
    let all = group.all_gather(&local).expect("all-gather");
    assert_eq!(all.dims(), &[2, 3]);
    assert_eq!(
        all.to_dtype(DType::F32)
            .and_then(|t| t.to_vec2::<f32>())
            .expect("host"),
        local.to_vec2::<f32>().expect("host")
    );
    group.broadcast_vars(&vars, 0).expect("broadcast");
    assert_eq!(w.to_vec1::<f32>().expect("host"), vec![1.0, 2.0, 3.0]);
    assert!(
        group.broadcast_vars(&vars, 1).is_err(),
        "root outside the group"
    );
}
