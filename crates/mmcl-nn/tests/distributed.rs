//! Data-parallel training with in-process replicas equals one process on the whole batch.

use std::thread;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use mmcl_nn::distributed::{
    DistributedError, GradSync, SingleProcess, ThreadGroup, ThreadReplica, batch_shard,
    flatten_grads, gather_with_grad, unflatten_grads,
};
use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};
use mmcl_nn::{ParamStore, ops};
use mmcl_testutil::seeded_randn;

const BATCH: usize = 8;
const STEPS: usize = 3;
const LR: f64 = 1e-2;

/// A store of `seed` holding the variables `shapes`, in this order, drawn from N(0, 0.5²).
fn randn_store(seed: u64, shapes: &[(&str, &[usize])]) -> ParamStore {
    let store = ParamStore::new(seed);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let randn = Init::Randn {
        mean: 0.0,
        stdev: 0.5,
    };
    for &(name, shape) in shapes {
        vb.get_with_hints(shape, name, randn).unwrap();
    }
    store
}

/// Every trainable variable of `store`, flattened and concatenated in the store's order.
fn trainable_values(store: &ParamStore) -> Vec<f32> {
    let mut out = Vec::new();
    for (_, v) in store.trainable_vars() {
        out.extend(flat(v.as_tensor()));
    }
    out
}

/// Runs `work` on every replica of a group of `world_size` threads, one thread each; returns
/// each replica's result, in rank order.
fn each_replica<T: Send + 'static>(
    world_size: usize,
    work: impl Fn(ThreadReplica) -> T + Clone + Send + 'static,
) -> Vec<T> {
    let handles: Vec<_> = ThreadGroup::new(world_size)
        .unwrap()
        .into_iter()
        .map(|comm| {
            let work = work.clone();
            thread::spawn(move || work(comm))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `train` on every replica of a group of `world_size` threads; returns each replica's
/// parameters and gradients, in rank order.
fn on_replicas(
    world_size: usize,
    train: impl Fn(ThreadReplica) -> (Vec<f32>, Vec<f32>) + Clone + Send + 'static,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    each_replica(world_size, train).into_iter().unzip()
}

/// A two-layer MLP, `x [B, 6] → [B, 3]`, with a loss that is a mean over samples.
struct Mlp {
    store: ParamStore,
}

impl Mlp {
    fn new(seed: u64) -> Self {
        let store = randn_store(
            seed,
            &[
                ("fc1.weight", &[16, 6]),
                ("fc1.bias", &[16]),
                ("fc2.weight", &[3, 16]),
                ("fc2.bias", &[3]),
            ],
        );
        Self { store }
    }

    fn param(&self, name: &str) -> Tensor {
        self.store.get(name).unwrap().as_tensor().clone()
    }

    /// Mean over samples of the squared error (plus a GELU and a LayerNorm-free MLP).
    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let h = ops::gelu_erf(
            &ops::linear(x, &self.param("fc1.weight"), Some(&self.param("fc1.bias"))).unwrap(),
        )
        .unwrap(); // [B, 16]
        let out =
            ops::linear(&h, &self.param("fc2.weight"), Some(&self.param("fc2.bias"))).unwrap(); // [B, 3]
        (out - y)
            .unwrap()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .mean_all()
            .unwrap()
    }

    fn optimiser(&self) -> Adam {
        Adam::new(
            vec![ParamGroup::all(&self.store, 0.05)],
            AdamConfig::adamw_mae(),
        )
        .unwrap()
    }

    fn flat_params(&self) -> Vec<f32> {
        trainable_values(&self.store)
    }
}

/// The regression batch of step `step`: inputs `[BATCH, 6]`, targets `[BATCH, 3]`.
fn data(step: usize) -> (Tensor, Tensor) {
    let seed = 1000 + 2 * step as u64;
    (
        seeded_randn(seed, &[BATCH, 6]),
        seeded_randn(seed + 1, &[BATCH, 3]),
    )
}

/// Trains `STEPS` steps with `comm` on its share of each global batch; returns the parameters
/// and the synchronised gradients of every step (Adam is invariant to the gradient's scale, so
/// the gradients are compared too).
fn train(comm: &dyn GradSync, seed: u64, batches: &[(Tensor, Tensor)]) -> (Vec<f32>, Vec<f32>) {
    let model = Mlp::new(seed);
    let vars = model.store.trainable_vars();
    comm.broadcast_vars(&vars, 0).unwrap();
    let mut opt = model.optimiser();
    let mut all_grads = Vec::new();
    for (x, y) in batches {
        let rows = batch_shard(BATCH, comm.rank(), comm.world_size()).unwrap();
        let x = x.narrow(0, rows.start, rows.len()).unwrap();
        let y = y.narrow(0, rows.start, rows.len()).unwrap();
        let mut grads = model.loss(&x, &y).backward().unwrap();
        comm.all_reduce_mean(&vars, &mut grads).unwrap();
        all_grads.extend(flat(&flatten_grads(&vars, &grads).unwrap()));
        opt.step(&grads, LR).unwrap();
    }
    (model.flat_params(), all_grads)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest difference between two vectors, and the largest magnitude of the second.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0.0f32, 0.0f32), |(d, m), (x, y)| {
        (d.max((x - y).abs()), m.max(y.abs()))
    })
}

fn data_parallel_equals_single_process(world_size: usize) {
    let batches: Vec<_> = (0..STEPS).map(data).collect();
    let (single, single_grads) = train(&SingleProcess, 5, &batches);
    let (replicas, grads) = on_replicas(world_size, move |comm| {
        // Replicas start from different seeds: the broadcast from rank 0 (seed 5) unifies.
        let seed = if comm.rank() == 0 {
            5
        } else {
            100 + comm.rank() as u64
        };
        train(&comm, seed, &batches)
    });
    // Every replica holds bit-identical parameters (same reduced gradients, same steps).
    for r in &replicas[1..] {
        assert_eq!(r, &replicas[0]);
    }
    // The synchronised gradients are the whole batch's (the scale included).
    let (grad_diff, grad_max) = max_diff(&grads[0], &single_grads);
    assert!(grad_diff <= 1e-5 * grad_max, "{grad_diff} of {grad_max}");
    // And they equal one process on the whole batch, within float tolerance.
    let initial = Mlp::new(5).flat_params();
    let (mut moved, mut worst) = (0.0f32, 0.0f32);
    for ((d, s), i) in replicas[0].iter().zip(&single).zip(&initial) {
        assert!((d - s).abs() <= 1e-5 + 1e-5 * s.abs(), "{d} vs {s}");
        moved = moved.max((s - i).abs());
        worst = worst.max((d - s).abs());
    }
    eprintln!(
        "{world_size} replicas: max |data-parallel − single| {worst:e} (params), \
         {grad_diff:e} of {grad_max:e} (gradients), max step {moved:e}"
    );
    // The comparison is meaningful: training moved the parameters by far more than the tolerance.
    assert!(moved > 1e-2, "{moved}");
}

#[test]
fn two_replicas_equal_one_process() {
    data_parallel_equals_single_process(2);
}

#[test]
fn four_replicas_equal_one_process() {
    data_parallel_equals_single_process(4);
}

#[test]
fn sharding_on_one_replica_is_not_the_whole_batch() {
    // The same training without the all-reduce diverges between replicas: the test above
    // depends on the synchronisation.
    let batches: Vec<_> = (0..STEPS).map(data).collect();
    let mut params = Vec::new();
    for rank in 0..2 {
        let model = Mlp::new(5);
        let mut opt = model.optimiser();
        for (x, y) in &batches {
            let rows = batch_shard(BATCH, rank, 2).unwrap();
            let x = x.narrow(0, rows.start, rows.len()).unwrap();
            let y = y.narrow(0, rows.start, rows.len()).unwrap();
            opt.step(&model.loss(&x, &y).backward().unwrap(), LR)
                .unwrap();
        }
        params.push(model.flat_params());
    }
    assert_ne!(params[0], params[1]);
}

#[test]
fn variables_without_gradient_stay_without() {
    let model = Mlp::new(1);
    let vars = model.store.trainable_vars();
    let comm = ThreadGroup::new(1).unwrap().pop().unwrap();
    // Only fc2.bias has a gradient (ones).
    let w = model.store.get("fc2.bias").unwrap();
    let mut grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
    comm.all_reduce_mean(&vars, &mut grads).unwrap();
    assert_eq!(grads.get_ids().count(), 1);
    let g = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g, vec![1.0; 3]);
}

#[test]
fn flat_gradients_round_trip() {
    let model = Mlp::new(2);
    let vars = model.store.trainable_vars();
    let (x, y) = data(0);
    let grads = model.loss(&x, &y).backward().unwrap();
    let flat = flatten_grads(&vars, &grads).unwrap();
    assert_eq!(flat.dims(), &[16 * 6 + 16 + 3 * 16 + 3]);
    // A store holding one unrelated gradient; unflattening sets every variable's.
    let mut back = model
        .param("fc1.bias")
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    unflatten_grads(&flat, &vars, &mut back).unwrap();
    for (name, v) in &vars {
        let a = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        let b = back.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        assert_eq!(
            a.to_vec1::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_replica_that_leaves_fails_the_others_instead_of_hanging() {
    let mut comms = ThreadGroup::new(2).unwrap();
    let leaver = comms.pop().unwrap();
    let stayer = comms.pop().unwrap();
    let waiter = thread::spawn(move || {
        let model = Mlp::new(3);
        let vars = model.store.trainable_vars();
        let (x, y) = data(0);
        let mut grads = model.loss(&x, &y).backward().unwrap();
        stayer.all_reduce_mean(&vars, &mut grads)
    });
    thread::sleep(std::time::Duration::from_millis(50));
    drop(leaver);
    assert!(matches!(
        waiter.join().unwrap(),
        Err(DistributedError::ReplicaLost {
            rank: 0,
            world_size: 2
        })
    ));
}

#[test]
fn mismatched_models_are_an_error_on_every_replica() {
    let results = each_replica(2, |comm| {
        let model = Mlp::new(4);
        let mut vars = model.store.trainable_vars();
        if comm.rank() == 1 {
            vars.pop();
        }
        let (x, y) = data(0);
        let mut grads = model.loss(&x, &y).backward().unwrap();
        comm.all_reduce_mean(&vars, &mut grads)
    });
    for result in results {
        assert!(matches!(
            result,
            Err(DistributedError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn arguments_are_checked() {
    assert_eq!(batch_shard(8, 1, 4).unwrap(), 2..4);
    assert!(batch_shard(9, 0, 2).is_err());
    assert!(batch_shard(8, 2, 2).is_err());
    assert!(ThreadGroup::new(0).is_err());
    assert!(SingleProcess.broadcast_vars(&[], 1).is_err());
    let comm = ThreadGroup::new(2).unwrap().pop().unwrap();
    assert!(comm.broadcast_vars(&[], 2).is_err());
}

/// Two linear "encoders" and a symmetric InfoNCE (CLIP) loss over the batch: the samples are
/// coupled through the negatives, so replicas must see the global batch.
struct TwoTower {
    store: ParamStore,
}

impl TwoTower {
    fn new(seed: u64) -> Self {
        let store = randn_store(seed, &[("ecg.weight", &[4, 6]), ("cmr.weight", &[4, 5])]);
        Self { store }
    }

    fn embed(&self, name: &str, x: &Tensor) -> Tensor {
        let w = self.store.get(name).unwrap().as_tensor().clone();
        let z = ops::linear(x, &w, None).unwrap(); // [n, 4]
        let norm = z.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        z.broadcast_div(&norm).unwrap()
    }

    /// Mean over both directions and all samples of the cross-entropy of `a·bᵀ / 0.1`.
    fn clip_loss(a: &Tensor, b: &Tensor) -> Tensor {
        let logits = (a.matmul(&b.t().unwrap()).unwrap() / 0.1).unwrap(); // [B, B]
        let n = logits.dim(0).unwrap();
        let eye = Tensor::eye(n, DType::F32, &Device::Cpu).unwrap();
        let ce = |l: &Tensor| {
            let lsm = candle_nn::ops::log_softmax(l, 1).unwrap();
            (lsm * &eye).unwrap().sum_all().unwrap().neg().unwrap() / n as f64
        };
        ((ce(&logits).unwrap() + ce(&logits.t().unwrap()).unwrap()).unwrap() * 0.5).unwrap()
    }
}

fn train_clip(comm: &dyn GradSync, batches: &[(Tensor, Tensor)]) -> (Vec<f32>, Vec<f32>) {
    let model = TwoTower::new(9);
    let vars = model.store.trainable_vars();
    let mut opt = Adam::new(
        vec![ParamGroup::all(&model.store, 1e-4)],
        AdamConfig::adam_l2(),
    )
    .unwrap();
    let mut all_grads = Vec::new();
    for (x, y) in batches {
        let rows = batch_shard(BATCH, comm.rank(), comm.world_size()).unwrap();
        let a = model.embed("ecg.weight", &x.narrow(0, rows.start, rows.len()).unwrap());
        let b = model.embed("cmr.weight", &y.narrow(0, rows.start, rows.len()).unwrap());
        let a = gather_with_grad(comm, &a).unwrap(); // [BATCH, 4]
        let b = gather_with_grad(comm, &b).unwrap();
        let loss = (TwoTower::clip_loss(&a, &b) * comm.world_size() as f64).unwrap();
        let mut grads = loss.backward().unwrap();
        comm.all_reduce_mean(&vars, &mut grads).unwrap();
        all_grads.extend(flat(&flatten_grads(&vars, &grads).unwrap()));
        opt.step(&grads, LR).unwrap();
    }
    (trainable_values(&model.store), all_grads)
}

#[test]
fn contrastive_loss_over_the_gathered_batch_equals_one_process() {
    let batches: Vec<_> = (0..STEPS as u64)
        .map(|step| {
            (
                seeded_randn(2000 + 2 * step, &[BATCH, 6]),
                seeded_randn(2001 + 2 * step, &[BATCH, 5]),
            )
        })
        .collect();
    let (single, single_grads) = train_clip(&SingleProcess, &batches);
    let initial = trainable_values(&TwoTower::new(9).store);
    for world_size in [2, 4] {
        let batches = batches.clone();
        let (replicas, grads) = on_replicas(world_size, move |comm| train_clip(&comm, &batches));
        let (grad_diff, grad_max) = max_diff(&grads[0], &single_grads);
        assert!(grad_diff <= 1e-5 * grad_max, "{grad_diff} of {grad_max}");
        let (mut worst, mut moved) = (0.0f32, 0.0f32);
        for ((d, s), i) in replicas[0].iter().zip(&single).zip(&initial) {
            worst = worst.max((d - s).abs());
            moved = moved.max((s - i).abs());
        }
        eprintln!(
            "CLIP, {world_size} replicas: max |data-parallel − single| {worst:e} (params), \
             {grad_diff:e} of {grad_max:e} (gradients), max step {moved:e}"
        );
        assert!(worst <= 1e-5, "{worst}");
        assert!(moved > 1e-2, "{moved}");
        for r in &replicas[1..] {
            assert_eq!(r, &replicas[0]);
        }
    }
}

#[test]
fn gathered_tensors_are_in_rank_order() {
    let gathered = each_replica(3, |comm| {
        let local = Tensor::full(comm.rank() as f32, (2, 2), &Device::Cpu).unwrap();
        let all = comm.all_gather(&local).unwrap();
        assert_eq!(all.dims(), &[6, 2]);
        all.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    });
    for all in gathered {
        assert_eq!(all, vec![0., 0., 0., 0., 1., 1., 1., 1., 2., 2., 2., 2.]);
    }
}

/// One train-mode step of a batch normalisation (3 channels, fused ReLU) on `comm`'s rows of a
/// fixed global batch `[8, 3, 5]`, the loss a weighted mean over those rows; returns the input
/// gradient of the rows divided by the group's size, then the scale and shift gradients
/// averaged over the group and the running statistics.
fn batch_norm_step(comm: &dyn GradSync, sync: bool) -> (Vec<f32>, Vec<f32>) {
    let device = Device::Cpu;
    let x = Tensor::arange(0f32, 120.0, &device)
        .and_then(|t| {
            ((t * 0.37).unwrap().sin().unwrap() * 3.0)
                .unwrap()
                .reshape((8, 3, 5))
        })
        .unwrap();
    let c = Tensor::arange(0f32, 120.0, &device)
        .and_then(|t| (t * 1.3).unwrap().cos().unwrap().reshape((8, 3, 5)))
        .unwrap();
    let store = ParamStore::new(0);
    let layer = mmcl_nn::batch_norm::batch_norm(
        3,
        Default::default(),
        store.var_builder(DType::F32, &device),
    )
    .unwrap();
    // A scale and shift away from 1 and 0, so that their gradients matter.
    let vars = store.trainable_vars();
    for (i, (_, v)) in vars.iter().enumerate() {
        v.set(&Tensor::new(&[0.5f32 + i as f32, -0.3, 1.2], &device).unwrap())
            .unwrap();
    }
    let (dx, mut rest) = sharded_step(comm, sync, (&x, &c), &vars, |x| {
        layer.forward_t_relu(x, true).unwrap()
    });
    rest.extend(flat(layer.running_mean()));
    rest.extend(flat(layer.running_var()));
    (dx, rest)
}

/// One training step of `forward` on `comm`'s rows of a global batch `x` of 8 samples, the loss
/// the weighted (`c`) sum of the outputs over the rows divided by their number, inside the
/// group's synchronised batch norm when `sync`. Returns the input gradient of the rows divided
/// by the group's size and the gradients of `vars` averaged over the group.
fn sharded_step(
    comm: &dyn GradSync,
    sync: bool,
    (x, c): (&Tensor, &Tensor),
    vars: &[(String, candle_core::Var)],
    forward: impl Fn(&Tensor) -> Tensor,
) -> (Vec<f32>, Vec<f32>) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let rows = batch_shard(8, rank, world).unwrap();
    let x = candle_core::Var::from_tensor(&x.narrow(0, rows.start, rows.len()).unwrap()).unwrap();
    let c = c.narrow(0, rows.start, rows.len()).unwrap();
    let step = || {
        let y = forward(x.as_tensor());
        ((y * &c).unwrap().sum_all().unwrap() / rows.len() as f64)
            .unwrap()
            .backward()
            .unwrap()
    };
    let mut grads = if sync {
        mmcl_nn::distributed::with_sync_batch_norm(comm, step)
    } else {
        step()
    };
    let dx = (grads.get(x.as_tensor()).unwrap() / world as f64).unwrap();
    comm.all_reduce_mean(vars, &mut grads).unwrap();
    (flat(&dx), flat(&flatten_grads(vars, &grads).unwrap()))
}

#[test]
fn synchronised_batch_norm_computes_the_gradients_of_one_process() {
    let (dx, rest) = batch_norm_step(&SingleProcess, false);
    for world in [2, 4] {
        let (dx_parts, rests) = on_replicas(world, |comm| batch_norm_step(&comm, true));
        let dx_group: Vec<f32> = dx_parts.concat();
        let (d, m) = max_diff(&dx_group, &dx);
        assert!(
            d <= 1e-6 * m,
            "input gradient, {world} replicas: {d:e} of {m:e}"
        );
        for r in &rests {
            let (d, m) = max_diff(r, &rest);
            assert!(
                d <= 1e-6 * m,
                "parameter gradients and statistics: {d:e} of {m:e}"
            );
        }
        // Each replica on its own rows normalises with other statistics (the test can fail).
        let (dx_parts, _) = on_replicas(world, |comm| batch_norm_step(&comm, false));
        let (d, m) = max_diff(&dx_parts.concat(), &dx);
        assert!(
            d > 1e-2 * m,
            "unsynchronised replicas matched one process: {d:e} of {m:e}"
        );
    }
}

/// One train-mode step of a ResNet basic block (4 channels, two 3×3 conv-BN units, the identity)
/// on `comm`'s images of a fixed global batch `[8, 4, 4, 4]`, returned as [`batch_norm_step`]
/// returns its layer's. A replica's two images hold fewer output values than the block has
/// parameters, so that the block runs fused only where the group's statistics are synchronised
/// (every replica then takes the same path, whatever its batch) or on the whole batch.
fn residual_block_step(comm: &dyn GradSync, sync: bool) -> (Vec<f32>, Vec<f32>) {
    use mmcl_nn::batch_norm::batch_norm;
    use mmcl_nn::conv::{ConvBnUnit, residual_block};
    let device = Device::Cpu;
    let wave = |n: usize, f: f64| {
        Tensor::arange(0f32, n as f32, &device)
            .and_then(|t| (t * f).unwrap().sin())
            .unwrap()
    };
    let x = wave(512, 0.37).reshape((8, 4, 4, 4)).unwrap();
    let c = wave(512, 1.3).reshape((8, 4, 4, 4)).unwrap();
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &device);
    let init = Init::Randn {
        mean: 0.0,
        stdev: 0.2,
    };
    let w1 = vb.get_with_hints((4, 4, 3, 3), "conv1", init).unwrap();
    let w2 = vb.get_with_hints((4, 4, 3, 3), "conv2", init).unwrap();
    let bn1 = batch_norm(4, Default::default(), vb.pp("bn1")).unwrap();
    let bn2 = batch_norm(4, Default::default(), vb.pp("bn2")).unwrap();
    let unit = |weight, bn| ConvBnUnit {
        weight,
        stride: 1,
        padding: 1,
        bn,
    };
    let units = [unit(&w1, &bn1), unit(&w2, &bn2)];
    let vars = store.trainable_vars();
    let (dx, mut rest) = sharded_step(comm, sync, (&x, &c), &vars, |x| {
        residual_block(x, &units, None, true).unwrap()
    });
    for bn in [&bn1, &bn2] {
        rest.extend(flat(bn.running_mean()));
        rest.extend(flat(bn.running_var()));
    }
    (dx, rest)
}

#[test]
fn synchronised_residual_blocks_compute_the_gradients_of_one_process() {
    let (dx, rest) = residual_block_step(&SingleProcess, false);
    for world in [2, 4] {
        let (dx_parts, rests) = on_replicas(world, |comm| residual_block_step(&comm, true));
        let (d, m) = max_diff(&dx_parts.concat(), &dx);
        assert!(
            d <= 1e-5 * m,
            "input gradient, {world} replicas: {d:e} of {m:e}"
        );
        for r in &rests {
            let (d, m) = max_diff(r, &rest);
            assert!(d <= 1e-5 * m, "parameters and statistics: {d:e} of {m:e}");
        }
    }
}
