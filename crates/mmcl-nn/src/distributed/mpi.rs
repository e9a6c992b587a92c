//! The MPI backend (crate feature `mpi`): one process per replica, started by a launcher
//! (`mpirun`, `srun`), collectives over MPI (the `mpi` crate over the system's MPI library,
//! OpenMPI or MPICH).
//!
//! Gradients travel as one flat `f32` buffer per step through host memory (`MPI_Allreduce`
//! with a sum, then a division by the world size); CPU replicas are what this backend is for
//! (GPU replicas reduce on the devices with NCCL). Before each collective the ranks exchange
//! their buffer lengths, so that replicas with different models fail with
//! [`DistributedError::LengthMismatch`] on every rank instead of exchanging garbage.
//!
//! A rank that dies ends the job: MPI's default error handler aborts a collective whose peer
//! is gone, and the launcher then stops every rank with a non-zero status (OpenMPI's `mpirun`
//! reports which rank exited first).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::{
    DistributedError, GradSync, Result, all_gather_flat, all_reduce_mean_on_host,
    broadcast_vars_flat, check_root, debug_group, through_host,
};

/// This process's place in an MPI job: the world communicator, its rank and size.
///
/// Create it once per process with [`MpiGroup::init`] (it initialises MPI, and finalises it
/// when dropped). A job started without a launcher is a group of one.
pub struct MpiGroup {
    world: SimpleCommunicator,
    rank: usize,
    world_size: usize,
    // Declared last: dropped after the communicator, it finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_group(f, "MpiGroup", (self.rank, self.world_size))
    }
}

// SAFETY: MPI is initialised with `MPI_THREAD_SERIALIZED` or better (checked in `init`), so
// its calls may come from any thread as long as they never overlap; `GradSync` is `Send` but
// not `Sync`, and every collective takes `&self` of the one group of the process, so two
// threads cannot call into MPI through it at once.
unsafe impl Send for MpiGroup {}

impl MpiGroup {
    /// Initialises MPI and joins the world of the job this process was started in.
    ///
    /// # Errors
    /// [`DistributedError::InvalidArgument`] when MPI was initialised already in this process,
    /// or when the MPI library cannot serve calls from more than one thread in turn.
    pub fn init() -> Result<Self> {
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| {
                DistributedError::InvalidArgument(
                    "MPI is already initialised in this process (one MpiGroup per process)".into(),
                )
            })?;
        if provided < mpi::Threading::Serialized {
            return Err(DistributedError::InvalidArgument(format!(
                "the MPI library offers thread level {provided:?}; training needs Serialized"
            )));
        }
        let world = universe.world();
        let (rank, world_size) = (world.rank(), world.size());
        Ok(Self {
            rank: usize::try_from(rank).unwrap_or_default(),
            world_size: usize::try_from(world_size).unwrap_or(1).max(1),
            world,
            _universe: universe,
        })
    }

    /// The name and version of the MPI library the process runs with.
    pub fn library_version() -> String {
        // The library's buffer may end in NUL bytes; the text stops at the first.
        let text = mpi::environment::library_version().unwrap_or_default();
        let text = text.split('\0').next().unwrap_or_default().trim();
        if text.is_empty() {
            "unknown MPI library".into()
        } else {
            text.to_string()
        }
    }

    /// Sets `bytes` on every rank to rank `root`'s (the NCCL unique id of a GPU job).
    ///
    /// # Errors
    /// When `root` is outside the group or the ranks pass different lengths.
    pub fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        check_root(root, self.world_size)?;
        self.agree_on_length(bytes.len())?;
        let root_rank = i32::try_from(root).unwrap_or_default();
        self.world.process_at_rank(root_rank).broadcast_into(bytes);
        Ok(())
    }

    /// Checks that every rank passes a buffer of `len` elements to the next collective.
    fn agree_on_length(&self, len: usize) -> Result<()> {
        let mine = len as u64;
        let mut all = vec![0u64; self.world_size];
        self.world.all_gather_into(&mine, &mut all[..]);
        if all.iter().any(|&l| l != mine) {
            return Err(DistributedError::LengthMismatch {
                lengths: all.into_iter().map(|l| l as usize).collect(),
            });
        }
        Ok(())
    }
}

impl GradSync for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_mean(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
        all_reduce_mean_on_host(vars, grads, |data| {
            self.agree_on_length(data.len())?;
            let mut sum = vec![0f32; data.len()];
            self.world
                .all_reduce_into(&data[..], &mut sum[..], SystemOperation::sum());
            let n = self.world_size as f32;
            for s in &mut sum {
                *s /= n;
            }
            Ok(sum)
        })
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        all_gather_flat(local, self.world_size, |flat| {
            through_host(&flat, |data| {
                self.agree_on_length(data.len())?;
                let mut all = vec![0f32; data.len() * self.world_size];
                self.world.all_gather_into(&data[..], &mut all[..]);
                Ok(all)
            })
        })
    }

    fn broadcast_vars(&self, vars: &[(String, Var)], root: usize) -> Result<()> {
        let group = (self.rank, self.world_size);
        broadcast_vars_flat(vars, group, root, |flat| {
            through_host(&flat, |mut value| {
                self.agree_on_length(value.len())?;
                // `root` < world_size (checked), which MPI holds as an i32.
                let root_rank = i32::try_from(root).unwrap_or_default();
                self.world
                    .process_at_rank(root_rank)
                    .broadcast_into(&mut value[..]);
                Ok(value)
            })
        })
    }
}
