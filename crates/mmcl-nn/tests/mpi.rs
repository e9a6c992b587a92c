//! The MPI backend across real processes (crate feature `mpi`; needs `mpirun` on `PATH`).
//!
//! Run by `cargo test --features mpi`, this binary starts itself under
//! `mpirun --oversubscribe -np N` (N = 2 and 4) and checks each job's exit status; under the
//! launcher, every rank runs the checks below against a single-process computation it does
//! itself, and a failed check panics, which ends the job non-zero. A last job has rank 1 die
//! before a collective: the job must end non-zero within 60 s instead of hanging.

use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use mmcl_nn::distributed::{
    DistributedError, GradSync, Launch, MpiGroup, batch_shard, gather_with_grad,
};
use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};

const BATCH: usize = 8;
const STEPS: usize = 3;
const MODE: &str = "MMCL_MPI_TEST_MODE";

fn main() {
    match Launch::from_env() {
        None => launch_jobs(),
        Some(_) => {
            let comm = MpiGroup::init().expect("MPI initialises");
            match std::env::var(MODE).as_deref() {
                Ok("die") => rank_dies(&comm),
                _ => checks(&comm),
            }
        }
    }
}

/// Starts the jobs and checks how they end.
fn launch_jobs() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let run = |np: usize, mode: &str| {
        let mut cmd = mmcl_testutil::mpirun(np);
        cmd.env(MODE, mode).arg(&exe);
        let start = Instant::now();
        let status = cmd
            .status()
            .expect("mpirun starts (install OpenMPI: openmpi-bin)");
        (status, start.elapsed())
    };
    for np in [2, 4] {
        let (status, _) = run(np, "checks");
        assert!(
            status.success(),
            "the checks failed on {np} ranks: {status}"
        );
        println!("mpi: checks passed on {np} ranks");
    }
    let (status, elapsed) = run(2, "die");
    mmcl_testutil::assert_dead_rank_ended_job("mpi", status, elapsed);
}

/// Rank 1 leaves without a word; rank 0 waits in an all-reduce.
fn rank_dies(comm: &MpiGroup) {
    if comm.rank() == 1 {
        std::process::exit(3);
    }
    let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let vars = vec![("w".to_string(), w.clone())];
    let mut grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
    let _ = comm.all_reduce_mean(&vars, &mut grads);
    // Reaching this line with the peer gone would be the bug the job's status reveals.
    std::thread::sleep(Duration::from_secs(120));
}

fn checks(comm: &MpiGroup) {
    mean_loss_training_equals_one_process(comm);
    clip_loss_over_the_global_batch_equals_one_process(comm);
    gradients_missing_somewhere_or_everywhere(comm);
    mismatched_models_fail_on_every_rank(comm);
}

/// Two-layer MLP weights of `seed`: `fc1 [16, 6]`, `b1 [16]`, `fc2 [3, 16]`, `b2 [3]`.
fn mlp_vars(seed: u64) -> Vec<(String, Var)> {
    [
        ("fc1", vec![16, 6]),
        ("b1", vec![16]),
        ("fc2", vec![3, 16]),
        ("b2", vec![3]),
    ]
    .into_iter()
    .map(|(name, shape)| {
        let t = noise(seed ^ name.len() as u64, 0.5, &shape);
        (name.to_string(), Var::from_tensor(&t).unwrap())
    })
    .collect()
}

/// The mean over samples of a squared error of the MLP on `x [n, 6]` against `y [n, 3]`.
fn mlp_loss(vars: &[(String, Var)], x: &Tensor, y: &Tensor) -> Tensor {
    let p = |i: usize| vars[i].1.as_tensor();
    let h = x.matmul(&p(0).t().unwrap()).unwrap();
    let h = h.broadcast_add(p(1)).unwrap().tanh().unwrap();
    let out = h.matmul(&p(2).t().unwrap()).unwrap();
    let out = out.broadcast_add(p(3)).unwrap();
    (out - y).unwrap().sqr().unwrap().mean_all().unwrap()
}

fn values(vars: &[(String, Var)]) -> Vec<f32> {
    vars.iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// The gradients of `vars` in `grads`, one after the other.
fn gradient_values(grads: &GradStore, vars: &[&Var]) -> Vec<f32> {
    vars.iter()
        .flat_map(|v| mmcl_testutil::flat(grads.get(v.as_tensor()).expect("a gradient")))
        .collect()
}

fn adam(vars: &[(String, Var)]) -> Adam {
    let group = ParamGroup {
        name: "all".into(),
        vars: vars.to_vec(),
        weight_decay: 0.01,
        lr_scale: 1.0,
    };
    let cfg = AdamConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        decoupled_weight_decay: true,
    };
    Adam::new(vec![group], cfg).unwrap()
}

fn batch(step: usize) -> (Tensor, Tensor) {
    let seed = 1000 + 2 * step as u64;
    (
        noise(seed, 1.0, &[BATCH, 6]),
        noise(seed + 1, 1.0, &[BATCH, 3]),
    )
}

/// Values uniform in `[-scale, scale)` of `shape`, the same in every process for one `seed`
/// (candle's CPU generator cannot be seeded).
fn noise(seed: u64, scale: f32, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every rank's copy of `local`, in rank order.
fn on_every_rank(comm: &MpiGroup, local: &[f32]) -> Vec<Vec<f32>> {
    let t = Tensor::from_slice(local, (1, local.len()), &Device::Cpu).unwrap();
    let all = comm.all_gather(&t).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(all.len(), comm.world_size());
    all
}

/// Replicas started from different weights, unified by a broadcast, each on its shard of every
/// batch, take the steps one process takes on the whole batches; their weights are identical.
fn mean_loss_training_equals_one_process(comm: &MpiGroup) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let reference = mlp_vars(7);
    let mut reference_opt = adam(&reference);
    let replica = mlp_vars(100 + rank as u64);
    comm.broadcast_vars(&replica, 0).unwrap();
    let mut replica_opt = adam(&replica);
    let rows = batch_shard(BATCH, rank, world).unwrap();
    if rank == 0 {
        assert_eq!(values(&replica), values(&mlp_vars(100)));
    }
    // The reference starts where rank 0 started.
    for ((_, r), (_, v)) in reference.iter().zip(&replica) {
        r.set(v.as_tensor()).unwrap();
    }
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let grads = mlp_loss(&reference, &x, &y).backward().unwrap();
        reference_opt.step(&grads, 1e-2).unwrap();
        let (xs, ys) = (
            x.narrow(0, rows.start, rows.len()).unwrap(),
            y.narrow(0, rows.start, rows.len()).unwrap(),
        );
        let mut grads = mlp_loss(&replica, &xs, &ys).backward().unwrap();
        comm.all_reduce_mean(&replica, &mut grads).unwrap();
        replica_opt.step(&grads, 1e-2).unwrap();
    }
    let mine = values(&replica);
    let diff = max_abs_diff(&mine, &values(&reference));
    assert!(
        diff < 1e-6,
        "rank {rank}: weights differ by {diff} from one process"
    );
    for (r, theirs) in on_every_rank(comm, &mine).iter().enumerate() {
        assert_eq!(theirs, &mine, "ranks {rank} and {r} hold different weights");
    }
}

/// Two linear towers with a CLIP loss over the gathered global batch: the summed replicas'
/// gradients equal the gradient of one process on the whole batch.
fn clip_loss_over_the_global_batch_equals_one_process(comm: &MpiGroup) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let a = Var::from_tensor(&noise(5, 0.5, &[4, 6])).unwrap();
    let b = Var::from_tensor(&noise(6, 0.5, &[4, 5])).unwrap();
    let xa = noise(7, 1.0, &[BATCH, 6]);
    let xb = noise(8, 1.0, &[BATCH, 5]);
    let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let clip = |za: &Tensor, zb: &Tensor| {
        let norm = |z: &Tensor| {
            let n = z
                .sqr()
                .unwrap()
                .sum_keepdim(D::Minus1)
                .unwrap()
                .sqrt()
                .unwrap();
            z.broadcast_div(&n).unwrap()
        };
        let logits = (norm(za).matmul(&norm(zb).t().unwrap()).unwrap() / 0.1).unwrap();
        let n = logits.dim(0).unwrap();
        let targets = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
        let l1 = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let l2 = candle_nn::loss::cross_entropy(&logits.t().unwrap(), &targets).unwrap();
        ((l1 + l2).unwrap() / 2.0).unwrap()
    };
    let project = |x: &Tensor, w: &Var| x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let whole = clip(&project(&xa, &a), &project(&xb, &b))
        .backward()
        .unwrap();
    let expected = gradient_values(&whole, &[&a, &b]);
    let rows = batch_shard(BATCH, rank, world).unwrap();
    let za = project(&xa.narrow(0, rows.start, rows.len()).unwrap(), &a);
    let zb = project(&xb.narrow(0, rows.start, rows.len()).unwrap(), &b);
    let za = gather_with_grad(comm, &za).unwrap();
    let zb = gather_with_grad(comm, &zb).unwrap();
    let loss = (clip(&za, &zb) * world as f64).unwrap();
    let mut grads = loss.backward().unwrap();
    comm.all_reduce_mean(&vars, &mut grads).unwrap();
    let got = gradient_values(&grads, &[&a, &b]);
    let diff = max_abs_diff(&got, &expected);
    assert!(diff < 1e-6, "rank {rank}: CLIP gradients differ by {diff}");
}

/// A gradient present on rank 0 only is averaged with the others' zeros; one present nowhere
/// stays absent.
fn gradients_missing_somewhere_or_everywhere(comm: &MpiGroup) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let w = Var::new(&[2f32, 4.0], &Device::Cpu).unwrap();
    let unused = Var::new(&[1f32], &Device::Cpu).unwrap();
    let vars = vec![
        ("w".to_string(), w.clone()),
        ("unused".to_string(), unused.clone()),
    ];
    let scale = if rank == 0 { 1.0 } else { 0.0 };
    // Every rank computes a graph; only rank 0's reaches `w`.
    let loss = if rank == 0 {
        (w.as_tensor().sum_all().unwrap() * scale).unwrap()
    } else {
        Tensor::new(&[0f32], &Device::Cpu)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let mut grads = loss.backward().unwrap();
    comm.all_reduce_mean(&vars, &mut grads).unwrap();
    let g = grads.get(w.as_tensor()).expect("w keeps a gradient");
    assert_eq!(g.to_vec1::<f32>().unwrap(), vec![1.0 / world as f32; 2]);
    assert!(
        grads.get(unused.as_tensor()).is_none(),
        "unused gained a gradient"
    );
}

/// Ranks with models of different sizes get a length mismatch, all of them, and the group
/// stays usable.
fn mismatched_models_fail_on_every_rank(comm: &MpiGroup) {
    let rank = comm.rank();
    let len = if rank == 0 { 3 } else { 2 };
    let w = Var::from_tensor(&Tensor::ones(len, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let vars = vec![("w".to_string(), w.clone())];
    let mut grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
    match comm.all_reduce_mean(&vars, &mut grads) {
        Err(DistributedError::LengthMismatch { lengths }) => {
            assert_eq!(
                lengths[0], 4,
                "rank 0's buffer: 3 values and a presence flag"
            );
        }
        other => panic!("rank {rank}: expected a length mismatch, got {other:?}"),
    }
    let after = on_every_rank(comm, &[rank as f32]);
    assert_eq!(after.len(), comm.world_size());
}
