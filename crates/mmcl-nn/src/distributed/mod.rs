//! Data-parallel training: gradient synchronisation between replicas of one model.
//!
//! Each replica (one per device) holds a full copy of the parameters, runs forward and backward
//! on its share of the global batch, and then — after `backward` and before the optimiser step —
//! every replica replaces its gradients by their mean over all replicas
//! ([`GradSync::all_reduce_mean`]). For a loss that is a mean over samples, with the global batch
//! split into equal shares, that mean is the gradient of the whole batch, so every replica takes
//! the same optimiser step a single process would. Replicas start from the same parameters by
//! [`GradSync::broadcast_vars`] from rank 0 before the first step.
//!
//! Backends:
//! - [`SingleProcess`]: world size 1, every collective is a no-op (the default trainer path);
//! - [`ThreadGroup`]: one replica per thread in this process, reducing through host memory
//!   (the test double of the process backends);
//! - `MpiGroup` (crate feature `mpi`): one process per replica, started by `mpirun`/`srun`,
//!   collectives over the system's MPI library; [`group_from_launcher`] picks it when a
//!   launcher started the process ([`Launch`]);
//! - `NcclGroup` (crate feature `nccl`): one process per GPU, collectives on the devices with
//!   NCCL, its unique id sent over MPI; [`group_from_launcher_on`] picks it for CUDA replicas.
//!
//! Losses that couple the samples of a batch (the CLIP loss) see the global batch through
//! [`gather_with_grad`]; batch normalisation sees it inside [`with_sync_batch_norm`]
//! (PyTorch's `SyncBatchNorm`).
//!
//! Gradients are reduced as one flat buffer per step (all gradients concatenated in the order of
//! `vars`, as DDP's buckets are), in `f32`, and summed in rank order, so the result is
//! bit-identical on every replica whatever the thread timing.
//!
//! ```
//! use std::thread;
//! use candle_core::{Device, Tensor, Var};
//! use mmcl_nn::distributed::{GradSync, ThreadGroup};
//!
//! # fn main() -> mmcl_nn::distributed::Result<()> {
//! let replicas = ThreadGroup::new(2)?;
//! let handles: Vec<_> = replicas
//!     .into_iter()
//!     .map(|comm| {
//!         thread::spawn(move || -> mmcl_nn::distributed::Result<f32> {
//!             let w = Var::new(&[1f32, 2.0], &Device::Cpu)?;
//!             let vars = vec![("w".to_string(), w.clone())];
//!             // Replica r sees the sample x = r + 1; the loss is w·x summed.
//!             let x = Tensor::new(&[comm.rank() as f32 + 1.0; 2], &Device::Cpu)?;
//!             let mut grads = (w.as_tensor() * x)?.sum_all()?.backward()?;
//!             comm.all_reduce_mean(&vars, &mut grads)?;
//!             Ok(grads.get(w.as_tensor()).unwrap().to_vec1::<f32>()?[0])
//!         })
//!     })
//!     .collect();
//! for h in handles {
//!     assert_eq!(h.join().unwrap()?, 1.5); // mean of the replicas' gradients 1 and 2
//! }
//! # Ok(())
//! # }
//! ```

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod sync_batch_norm;
mod threads;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiGroup;
#[cfg(feature = "nccl")]
pub use self::nccl::NcclGroup;
pub use sync_batch_norm::with_sync_batch_norm;
pub(crate) use sync_batch_norm::{group_sums, sync_batch_norm_active};
pub use threads::{ThreadGroup, ThreadReplica};

/// Errors of gradient synchronisation.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Another replica left the group (its communicator was dropped, for example because its
    /// thread failed) while this one waited for it in a collective.
    #[error("replica {rank}: another replica of the group of {world_size} has left")]
    ReplicaLost {
        /// This replica's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
    },

    /// The replicas entered one collective with buffers of different lengths (different
    /// models, or different sets of variables).
    #[error("collective called with {lengths:?} elements on ranks 0.. (must all agree)")]
    LengthMismatch {
        /// The length each rank contributed.
        lengths: Vec<usize>,
    },

    /// A group, rank or root out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, DistributedError>;

/// Gradient synchronisation between the replicas of a data-parallel group.
///
/// Every replica must call the same collectives in the same order with the same `vars` (same
/// names, shapes and order); a mismatch is an error, not silent corruption, where the backend
/// can detect it.
pub trait GradSync: Send {
    /// This replica's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of replicas.
    fn world_size(&self) -> usize;

    /// Replaces the gradient of every variable in `vars` by its mean over all replicas.
    ///
    /// A variable without a gradient on this replica contributes zeros (as DDP treats unused
    /// parameters) and receives the mean of the others' gradients; a variable without a
    /// gradient on every replica keeps none.
    fn all_reduce_mean(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()>;

    /// Sets every variable in `vars` to its value on replica `root` (the initial parameters,
    /// or buffers such as BatchNorm running statistics).
    fn broadcast_vars(&self, vars: &[(String, Var)], root: usize) -> Result<()>;

    /// Every replica's `local` concatenated along the first dimension, in rank order, without
    /// gradient (see [`gather_with_grad`] for the differentiable form). All replicas must pass
    /// tensors of the same shape.
    ///
    /// # Shapes
    /// `local`: `[n, ..]` → `[world_size·n, ..]`.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;

    /// Whether this replica writes checkpoints, logs and progress (rank 0).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The name of the backend (`single process`, `threads`, `mpi`, `nccl`), for messages.
    fn backend(&self) -> &'static str {
        "single process"
    }
}

/// One process, one replica: every collective is a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl GradSync for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&self, _vars: &[(String, Var)], _grads: &mut GradStore) -> Result<()> {
        Ok(())
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        Ok(local.detach())
    }

    fn broadcast_vars(&self, _vars: &[(String, Var)], root: usize) -> Result<()> {
        check_root(root, 1)
    }
}

/// The rows `rank` takes of a global batch of `batch` samples split over `world_size` replicas:
/// contiguous, equal shares (`batch` must be divisible by `world_size` for the mean of the
/// replicas' per-sample means to equal the global mean).
///
/// # Errors
/// [`DistributedError::InvalidArgument`] for a rank outside the group or a batch that does not
/// split evenly.
pub fn batch_shard(batch: usize, rank: usize, world_size: usize) -> Result<std::ops::Range<usize>> {
    if world_size == 0 || rank >= world_size {
        return Err(DistributedError::InvalidArgument(format!(
            "rank {rank} in a group of {world_size}"
        )));
    }
    if !batch.is_multiple_of(world_size) {
        return Err(DistributedError::InvalidArgument(format!(
            "a batch of {batch} does not split evenly over {world_size} replicas"
        )));
    }
    let share = batch / world_size;
    Ok(rank * share..(rank + 1) * share)
}

/// The global batch of `local` — every replica's rows in rank order — differentiable with
/// respect to this replica's own rows only.
///
/// For losses that couple the samples of a batch (the CLIP loss of the multimodal stage, whose
/// negatives are the other samples): every replica computes the loss over the whole global
/// batch; its backward pass yields the part of the gradient that flows through its own rows, and
/// the other replicas compute the rest. The full gradient is the **sum** of the replicas'
/// gradients: scale the loss by `world_size` before `backward`, then
/// [`GradSync::all_reduce_mean`].
///
/// # Shapes
/// `local`: `[n, ..]` → `[world_size·n, ..]`.
pub fn gather_with_grad(comm: &dyn GradSync, local: &Tensor) -> Result<Tensor> {
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 1 {
        return Ok(local.clone());
    }
    let n = local.dim(0)?;
    let gathered = comm.all_gather(local)?; // [world·n, ..]
    let mut parts = Vec::with_capacity(3);
    if rank > 0 {
        parts.push(gathered.narrow(0, 0, rank * n)?);
    }
    parts.push(local.clone());
    if rank + 1 < world {
        parts.push(gathered.narrow(0, (rank + 1) * n, (world - rank - 1) * n)?);
    }
    Ok(Tensor::cat(&parts, 0)?) // [world·n, ..]
}

/// The gradients of `vars` concatenated into one flat `f32` tensor on the device of the first
/// variable (zeros where a variable has no gradient).
///
/// # Shapes
/// `[Σ numel(var)]`.
pub fn flatten_grads(vars: &[(String, Var)], grads: &GradStore) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(vars.len());
    for (_, var) in vars {
        let part = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(DistributedError::InvalidArgument(
            "no variables to synchronise".into(),
        ));
    }
    Ok(Tensor::cat(&parts, 0)?) // [Σ numel]
}

/// Splits a flat tensor made by [`flatten_grads`] back into one gradient per variable (in the
/// variable's shape, dtype and device) and stores them in `grads`.
pub fn unflatten_grads(flat: &Tensor, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
    for_each_part(flat, vars, |var, grad| {
        grads.insert(var.as_tensor(), grad);
        Ok(())
    })
}

/// The values of `vars` concatenated into one flat `f32` tensor (what a broadcast sends).
fn flatten_vars(vars: &[(String, Var)]) -> Result<Tensor> {
    let parts = vars
        .iter()
        .map(|(_, v)| v.as_tensor().to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if parts.is_empty() {
        return Err(DistributedError::InvalidArgument(
            "no variables to broadcast".into(),
        ));
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Sets every variable of `vars` from `value`, their values concatenated as
/// [`flatten_vars`] makes them (received from a broadcast).
fn set_vars_from_flat(vars: &[(String, Var)], value: &Tensor) -> Result<()> {
    for_each_part(&value.flatten_all()?, vars, |var, v| Ok(var.set(&v)?))
}

/// Hands each variable of `vars` its part of `flat` (the variables' values concatenated in
/// order), in the variable's shape, dtype and device; an error when the lengths differ.
fn for_each_part(
    flat: &Tensor,
    vars: &[(String, Var)],
    mut take: impl FnMut(&Var, Tensor) -> Result<()>,
) -> Result<()> {
    let total: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    if flat.elem_count() != total {
        return Err(DistributedError::LengthMismatch {
            lengths: vec![flat.elem_count(), total],
        });
    }
    let mut offset = 0;
    for (_, var) in vars {
        let n = var.elem_count();
        let part = flat
            .narrow(0, offset, n)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        take(var, part)?;
        offset += n;
    }
    Ok(())
}

/// The shape of `local` gathered from `world_size` replicas: the first dimension times
/// `world_size` (a scalar takes part as one row, so that the other replicas do not wait).
fn gathered_dims(local: &Tensor, world_size: usize) -> Vec<usize> {
    let mut dims = local.dims().to_vec();
    if dims.is_empty() {
        dims.push(1);
    }
    dims[0] *= world_size;
    dims
}

/// The place a process launcher gave this process in a job: what `mpirun` (OpenMPI:
/// `OMPI_COMM_WORLD_RANK`/`_SIZE`) or an MPICH-family launcher (`mpiexec`, Intel MPI, `srun
/// --mpi=pmi2`: `PMI_RANK`/`PMI_SIZE`) put in its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank.
    pub rank: usize,
    /// The number of processes of the job.
    pub world_size: usize,
    /// The variables it was read from (`OMPI_COMM_WORLD_*` or `PMI_*`).
    pub source: &'static str,
    /// This process's rank among the job's processes on its node (OpenMPI's
    /// `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH's `MPI_LOCALRANKID`, SLURM's `SLURM_LOCALID`), when
    /// the launcher says: the GPU a rank takes by default.
    pub local_rank: Option<usize>,
}

impl Launch {
    /// The launch described by the environment of this process; `None` when no launcher
    /// started it (or its variables do not parse as a rank within a world size).
    ///
    /// SLURM's own variables (`SLURM_PROCID`, `SLURM_NTASKS`) are not read: they are also set
    /// for the single process of a batch script, which is no job of several ranks.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// As [`Launch::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        const SOURCES: [(&str, &str, &str); 2] = [
            (
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_*",
            ),
            ("PMI_RANK", "PMI_SIZE", "PMI_*"),
        ];
        SOURCES.into_iter().find_map(|(rank, size, source)| {
            let rank: usize = var(rank)?.trim().parse().ok()?;
            let world_size: usize = var(size)?.trim().parse().ok()?;
            let local_rank = [
                "OMPI_COMM_WORLD_LOCAL_RANK",
                "MPI_LOCALRANKID",
                "SLURM_LOCALID",
            ]
            .into_iter()
            .find_map(|key| var(key)?.trim().parse().ok());
            (rank < world_size).then_some(Self {
                rank,
                world_size,
                source,
                local_rank,
            })
        })
    }
}

/// The data-parallel group this process belongs to: an MPI group when a launcher started it
/// (and the crate was built with the `mpi` feature), else a group of one.
///
/// # Errors
/// When a launcher started several processes but this build has no MPI backend (they would
/// each train alone and overwrite each other's files), or when MPI fails to initialise.
pub fn group_from_launcher() -> Result<Box<dyn GradSync>> {
    let launch = Launch::from_env();
    #[cfg(feature = "mpi")]
    if launch.is_some() {
        return Ok(Box::new(MpiGroup::init()?));
    }
    match launch {
        Some(l) if l.world_size > 1 => Err(DistributedError::InvalidArgument(format!(
            "this process is rank {} of {} (from {}), but this build has no MPI backend: \
             rebuild with `--features mpi`, or start a single process",
            l.rank, l.world_size, l.source
        ))),
        _ => Ok(Box::new(SingleProcess)),
    }
}

/// The data-parallel group of replicas on `device`: for a CUDA device in a build with the
/// `nccl` and `mpi` features, started by a launcher, an NCCL group whose unique id travels over
/// MPI (also for a job of one rank); otherwise [`group_from_launcher`]'s, whose collectives pass
/// through the host.
///
/// # Errors
/// As [`group_from_launcher`], or when NCCL cannot set up the communicator.
pub fn group_from_launcher_on(device: &Device) -> Result<Box<dyn GradSync>> {
    #[cfg(all(feature = "nccl", feature = "mpi"))]
    if device.is_cuda() && Launch::from_env().is_some() {
        return Ok(Box::new(NcclGroup::over_mpi(MpiGroup::init()?, device)?));
    }
    let _ = device;
    group_from_launcher()
}

/// The name of the backend [`group_from_launcher`] picks in this build and environment:
/// `mpi` or `single process`.
pub fn backend_name() -> &'static str {
    if cfg!(feature = "mpi") && Launch::from_env().is_some() {
        "mpi"
    } else {
        "single process"
    }
}

/// The all-reduce mean every backend shares: the gradients of `vars` flattened into one `f32`
/// buffer on their device, one presence flag per variable appended (so that a variable no
/// replica computed a gradient for stays without one, and the optimiser leaves it untouched),
/// the buffer replaced by `mean` (every replica's buffer averaged elementwise), and the result
/// stored back.
fn all_reduce_mean_flat(
    vars: &[(String, Var)],
    grads: &mut GradStore,
    mean: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<()> {
    let flat = flatten_grads(vars, grads)?;
    let len = flat.elem_count();
    let present: Vec<f32> = vars
        .iter()
        .map(|(_, v)| f32::from(u8::from(grads.get(v.as_tensor()).is_some())))
        .collect();
    let present = Tensor::from_vec(present, vars.len(), flat.device())?;
    let averaged = mean(Tensor::cat(&[&flat, &present], 0)?)?;
    if averaged.elem_count() != len + vars.len() {
        return Err(DistributedError::LengthMismatch {
            lengths: vec![averaged.elem_count(), len + vars.len()],
        });
    }
    unflatten_grads(&averaged.narrow(0, 0, len)?, vars, grads)?;
    let present = averaged.narrow(0, len, vars.len())?.to_vec1::<f32>()?;
    for ((_, var), p) in vars.iter().zip(present) {
        if p == 0.0 {
            grads.remove(var.as_tensor());
        }
    }
    Ok(())
}

/// [`all_reduce_mean_flat`] for the backends that reduce host buffers (threads, MPI).
fn all_reduce_mean_on_host(
    vars: &[(String, Var)],
    grads: &mut GradStore,
    mean: impl FnOnce(Vec<f32>) -> Result<Vec<f32>>,
) -> Result<()> {
    all_reduce_mean_flat(vars, grads, |flat| through_host(&flat, mean))
}

/// `collective` over a host buffer applied to the flat `f32` tensor `flat`: its values out,
/// the result back as a tensor on its device (the transport of the threads and MPI backends).
fn through_host(
    flat: &Tensor,
    collective: impl FnOnce(Vec<f32>) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let out = collective(flat.to_vec1::<f32>()?)?;
    let len = out.len();
    Ok(Tensor::from_vec(out, len, flat.device())?)
}

/// An error unless `root` is a rank of a group of `world_size`.
fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root >= world_size {
        return Err(DistributedError::InvalidArgument(format!(
            "broadcast root {root} in a group of {world_size}"
        )));
    }
    Ok(())
}

/// The broadcast of variables every process backend shares: `root` checked, the values of
/// `vars` flattened into one `f32` tensor ([`flatten_vars`]), passed through `broadcast`
/// (which returns rank `root`'s), and set on every rank but the root.
fn broadcast_vars_flat(
    vars: &[(String, Var)],
    (rank, world_size): (usize, usize),
    root: usize,
    broadcast: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<()> {
    check_root(root, world_size)?;
    let value = broadcast(flatten_vars(vars)?)?;
    if rank == root {
        return Ok(());
    }
    set_vars_from_flat(vars, &value)
}

/// The all-gather every process backend shares: `local` as one flat `f32` tensor through
/// `gather` (which returns every rank's, in rank order), then in `local`'s dtype and device
/// with the first dimension `world_size` times as long ([`gathered_dims`]).
fn all_gather_flat(
    local: &Tensor,
    world_size: usize,
    gather: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let dims = gathered_dims(local, world_size);
    let all = gather(local.to_dtype(DType::F32)?.flatten_all()?)?;
    Ok(all
        .reshape(dims)? // [world·n, ..]
        .to_dtype(local.dtype())?
        .to_device(local.device())?)
}

/// The `Debug` of a process group: its kind, rank and size (the communicator shows nothing).
#[cfg(any(feature = "mpi", feature = "nccl"))]
fn debug_group(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    (rank, world_size): (usize, usize),
) -> std::fmt::Result {
    f.debug_struct(name)
        .field("rank", &rank)
        .field("world_size", &world_size)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_is_read_from_the_launchers_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        let ompi = Launch::from_vars(env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]))
        .expect("an OpenMPI launch");
        assert_eq!(
            (ompi.rank, ompi.world_size, ompi.local_rank),
            (3, 4, Some(1))
        );
        let mpich = Launch::from_vars(env(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]))
            .expect("an MPICH launch");
        assert_eq!((mpich.source, mpich.local_rank), ("PMI_*", None));
        assert!(Launch::from_vars(env(&[("PMI_RANK", "2"), ("PMI_SIZE", "2")])).is_none());
        assert!(Launch::from_vars(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")])).is_none());
    }
}
