//! What the optimisation steps share about their data-parallel group: the communicator they
//! hold, and the check that every global batch splits evenly over it.

use mmcl_nn::distributed::{GradSync, SingleProcess, with_sync_batch_norm};

use crate::{Error, Result};

/// The data-parallel group of an optimisation step (a group of one unless a trainer joins one).
pub(crate) struct Replicas(Box<dyn GradSync>);

impl Replicas {
    /// The group of one.
    pub(crate) fn single() -> Self {
        Self(Box::new(SingleProcess))
    }

    /// The group `comm`.
    pub(crate) fn new(comm: Box<dyn GradSync>) -> Self {
        Self(comm)
    }

    /// The communicator.
    pub(crate) fn comm(&self) -> &dyn GradSync {
        self.0.as_ref()
    }

    /// Runs `f` — a forward pass and its backward pass — with every train-mode BatchNorm
    /// normalising over the group's global batch when `sync` (PyTorch's `SyncBatchNorm`), over
    /// this replica's rows otherwise (DDP's default).
    pub(crate) fn batch_statistics<T>(&self, sync: bool, f: impl FnOnce() -> T) -> T {
        if sync {
            with_sync_batch_norm(self.comm(), f)
        } else {
            f()
        }
    }
}

// A trait object has no `Debug`; the rank and size say what matters.
impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.world_size())
    }
}

/// Refuses a group over which some global batch of the epoch would not split evenly: a batch
/// of `batch_size` from `train_len` samples, the last one kept unless `drop_last`. Replicas take
/// equal shares so that the mean of their gradients is the global batch's.
pub(crate) fn check_even_batches(
    batch_size: usize,
    train_len: usize,
    drop_last: bool,
    world: usize,
) -> Result<()> {
    if world <= 1 {
        return Ok(());
    }
    let last = train_len % batch_size.max(1);
    if !batch_size.is_multiple_of(world) || (!drop_last && !last.is_multiple_of(world)) {
        return Err(Error::config(format!(
            "batch_size {batch_size} (last batch {last}, data.drop_last = {drop_last}) does not \
             split evenly over {world} data-parallel replicas: choose a batch size divisible by \
             {world} and set data.drop_last = true"
        )));
    }
    Ok(())
}
