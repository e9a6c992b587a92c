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
//!   (CPU replicas, tests, and a portable fallback);
//! - NCCL across GPUs (one process per GPU, crate feature `nccl`): designed in the workspace's
//!   `docs/distributed.md`; it needs a CUDA toolkit to build.
//!
//! Losses that couple the samples of a batch (the CLIP loss) see the global batch through
//! [`gather_with_grad`].
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

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

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
        if root != 0 {
            return Err(DistributedError::InvalidArgument(format!(
                "broadcast root {root} in a group of 1"
            )));
        }
        Ok(())
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
    let total: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    if flat.elem_count() != total {
        return Err(DistributedError::LengthMismatch {
            lengths: vec![flat.elem_count(), total],
        });
    }
    let mut offset = 0;
    for (_, var) in vars {
        let n = var.elem_count();
        let grad = flat
            .narrow(0, offset, n)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        grads.insert(var.as_tensor(), grad);
        offset += n;
    }
    Ok(())
}

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

/// What a collective does with the ranks' buffers.
#[derive(Debug, Clone, Copy)]
enum Collective {
    Mean,
    Broadcast(usize),
    Gather,
}

#[derive(Debug)]
struct GroupState {
    /// Buffers contributed to the collective in progress, by rank.
    slots: Vec<Option<Vec<f32>>>,
    /// Ranks that have contributed to the collective in progress.
    arrived: usize,
    /// Collectives completed so far.
    generation: u64,
    /// The result of the last completed collective (kept until every rank has read it: the
    /// next collective cannot complete before they all arrive at it).
    result: Arc<std::result::Result<Vec<f32>, Vec<usize>>>,
    /// A replica dropped its communicator.
    left: bool,
}

#[derive(Debug)]
struct Group {
    world_size: usize,
    state: Mutex<GroupState>,
    changed: Condvar,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panicking replica poisons the lock; the state is still consistent (every update is
        // completed under the lock), and its dropped communicator marks the group as left.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An in-process data-parallel group: one [`ThreadReplica`] per replica, each used by its own
/// thread (one per device). Collectives reduce through host memory.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// The communicators of a new group of `world_size` replicas, by rank.
    ///
    /// # Errors
    /// [`DistributedError::InvalidArgument`] for a world size of 0.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world_size: usize) -> Result<Vec<ThreadReplica>> {
        if world_size == 0 {
            return Err(DistributedError::InvalidArgument(
                "a group needs at least one replica".into(),
            ));
        }
        let group = Arc::new(Group {
            world_size,
            state: Mutex::new(GroupState {
                slots: vec![None; world_size],
                arrived: 0,
                generation: 0,
                result: Arc::new(Ok(Vec::new())),
                left: false,
            }),
            changed: Condvar::new(),
        });
        Ok((0..world_size)
            .map(|rank| ThreadReplica {
                rank,
                group: Arc::clone(&group),
            })
            .collect())
    }
}

/// One replica's communicator of a [`ThreadGroup`]. Dropping it tells the others that it left
/// (their pending and later collectives fail instead of waiting for ever).
#[derive(Debug)]
pub struct ThreadReplica {
    rank: usize,
    group: Arc<Group>,
}

impl ThreadReplica {
    /// Contributes `data` to a collective and waits for its result.
    fn collective(&self, data: Vec<f32>, op: Collective) -> Result<Vec<f32>> {
        let group = &*self.group;
        let lost = || DistributedError::ReplicaLost {
            rank: self.rank,
            world_size: group.world_size,
        };
        let mut state = group.lock();
        if state.left {
            return Err(lost());
        }
        state.slots[self.rank] = Some(data);
        state.arrived += 1;
        let generation = state.generation;
        if state.arrived == group.world_size {
            let slots: Vec<Vec<f32>> = state.slots.iter_mut().filter_map(Option::take).collect();
            state.result = Arc::new(reduce(slots, op));
            state.arrived = 0;
            state.generation += 1;
            group.changed.notify_all();
        } else {
            while state.generation == generation && !state.left {
                state = group.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            // A replica may leave right after a collective completes: that is fine for this one.
            if state.generation == generation {
                return Err(lost());
            }
        }
        match &*state.result {
            Ok(v) => Ok(v.clone()),
            Err(lengths) => Err(DistributedError::LengthMismatch {
                lengths: lengths.clone(),
            }),
        }
    }
}

/// The collective's result from the ranks' buffers (in rank order), or the mismatched lengths.
fn reduce(slots: Vec<Vec<f32>>, op: Collective) -> std::result::Result<Vec<f32>, Vec<usize>> {
    let lengths: Vec<usize> = slots.iter().map(Vec::len).collect();
    if lengths.iter().any(|&l| l != lengths[0]) {
        return Err(lengths);
    }
    match op {
        Collective::Broadcast(root) => Ok(slots.into_iter().nth(root).unwrap_or_default()),
        Collective::Gather => Ok(slots.concat()),
        Collective::Mean => {
            let n = slots.len() as f32;
            let mut iter = slots.into_iter();
            let mut sum = iter.next().unwrap_or_default();
            // Rank order: every replica gets the same bits.
            for other in iter {
                for (s, o) in sum.iter_mut().zip(&other) {
                    *s += o;
                }
            }
            for s in &mut sum {
                *s /= n;
            }
            Ok(sum)
        }
    }
}

impl Drop for ThreadReplica {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state.left = true;
        self.group.changed.notify_all();
    }
}

impl GradSync for ThreadReplica {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size
    }

    fn all_reduce_mean(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
        let flat = flatten_grads(vars, grads)?;
        let device = flat.device().clone();
        // Host memory is this backend's transport (explicitly; NCCL reduces on the devices).
        let mut data = flat.to_vec1::<f32>()?;
        let len = data.len();
        // One presence flag per variable rides along, so that a variable no replica computed a
        // gradient for stays without one (the optimiser then leaves it untouched).
        data.extend(
            vars.iter()
                .map(|(_, v)| f32::from(u8::from(grads.get(v.as_tensor()).is_some()))),
        );
        let mut mean = self.collective(data, Collective::Mean)?;
        let present = mean.split_off(len);
        unflatten_grads(&Tensor::from_vec(mean, len, &device)?, vars, grads)?;
        for ((_, var), p) in vars.iter().zip(present) {
            if p == 0.0 {
                grads.remove(var.as_tensor());
            }
        }
        Ok(())
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        // A scalar still takes part (as one row), so that the other replicas do not wait.
        let mut dims = local.dims().to_vec();
        if dims.is_empty() {
            dims.push(1);
        }
        dims[0] *= self.group.world_size;
        let data = local
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let all = self.collective(data, Collective::Gather)?;
        let len = all.len();
        Ok(Tensor::from_vec(all, len, local.device())?
            .reshape(dims)? // [world·n, ..]
            .to_dtype(local.dtype())?)
    }

    fn broadcast_vars(&self, vars: &[(String, Var)], root: usize) -> Result<()> {
        if root >= self.group.world_size {
            return Err(DistributedError::InvalidArgument(format!(
                "broadcast root {root} in a group of {}",
                self.group.world_size
            )));
        }
        let flat = flatten_vars(vars)?;
        let device = flat.device().clone();
        let value = self.collective(flat.to_vec1::<f32>()?, Collective::Broadcast(root))?;
        if self.rank == root {
            return Ok(());
        }
        let len = value.len();
        let value = Tensor::from_vec(value, len, &device)?;
        let mut offset = 0;
        for (_, var) in vars {
            let n = var.elem_count();
            let v = value
                .narrow(0, offset, n)?
                .reshape(var.shape())?
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            var.set(&v)?;
            offset += n;
        }
        Ok(())
    }
}
