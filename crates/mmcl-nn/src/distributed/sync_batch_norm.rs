//! Synchronised batch normalisation (PyTorch's `SyncBatchNorm`): while
//! [`with_sync_batch_norm`] runs, every train-mode [`BatchNorm`](crate::layers::BatchNorm)
//! of the calling thread normalises with the statistics of the **global** batch — the
//! per-channel sums of every replica's rows — and its backward pass sums the two per-channel
//! gradient reductions over the group too, so that a group of replicas computes what one
//! process computes on the whole batch.
//!
//! The group reaches the layers through a thread-local scope rather than a parameter, because
//! the layers sit deep inside models whose `forward` signatures (candle's `ModuleT`) have no
//! room for it, and because the backward pass (run later, by candle's `backward`) needs it
//! too: the scope must cover both.
//!
//! Every replica must run the same layers in the same order (the same model and batch
//! shapes), as for every collective.

use std::cell::Cell;
use std::ptr::NonNull;

use candle_core::{Device, Tensor};

use super::{DistributedError, GradSync, Result};

thread_local! {
    /// The group of the innermost [`with_sync_batch_norm`] running on this thread.
    static GROUP: Cell<Option<NonNull<dyn GradSync>>> = const { Cell::new(None) };
}

/// Runs `f` with every train-mode batch normalisation on this thread synchronised over `comm`
/// (forward and backward passes alike: run both inside `f`). A group of one changes nothing.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use mmcl_nn::distributed::{SingleProcess, with_sync_batch_norm};
///
/// let x = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let doubled = with_sync_batch_norm(&SingleProcess, || (&x * 2.0).unwrap());
/// assert_eq!(doubled.sum_all().unwrap().to_scalar::<f32>().unwrap(), 24.0);
/// ```
pub fn with_sync_batch_norm<T>(comm: &dyn GradSync, f: impl FnOnce() -> T) -> T {
    /// Restores the enclosing scope's group, also when `f` unwinds.
    struct Restore(Option<NonNull<dyn GradSync>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GROUP.with(|g| g.set(self.0));
        }
    }
    // SAFETY: only the lifetime is erased. The pointer is read (by `group_sums`) only on this
    // thread while `f` runs, during which `comm` stays borrowed; `Restore` removes it before
    // this function returns or unwinds, and the guard is private, so it cannot be leaked.
    let erased: &'static dyn GradSync = unsafe { std::mem::transmute(comm) };
    let _restore = Restore(GROUP.with(|g| g.replace(Some(NonNull::from(erased)))));
    f()
}

/// Whether train-mode batch normalisation on this thread is synchronised over a group of more
/// than one replica.
pub(crate) fn sync_batch_norm_active() -> bool {
    with_group(|comm| comm.world_size() > 1).unwrap_or(false)
}

/// `f` applied to the group of the innermost scope, if any.
fn with_group<T>(f: impl FnOnce(&dyn GradSync) -> T) -> Option<T> {
    let group = GROUP.with(Cell::get)?;
    // SAFETY: a pointer is installed only by `with_sync_batch_norm`, whose `comm` outlives the
    // scope, and removed when the scope ends (see there); we are on the scope's thread.
    Some(f(unsafe { group.as_ref() }))
}

/// Every replica's `values` summed element by element (in rank order, in `f64`, the same bytes
/// on every replica), or `None` outside a scope or in a group of one.
///
/// Each value travels as two `f32` (its rounding and the rest), because the collectives move
/// `f32`: the sums keep about 48 bits of each `f64`, as a single process's statistics do.
pub(crate) fn group_sums(values: &[f64]) -> Option<Result<Vec<f64>>> {
    with_group(|comm| {
        if comm.world_size() <= 1 {
            return None;
        }
        Some(sum_over(comm, values))
    })
    .flatten()
}

fn sum_over(comm: &dyn GradSync, values: &[f64]) -> Result<Vec<f64>> {
    let n = values.len();
    let split: Vec<f32> = values
        .iter()
        .flat_map(|&v| {
            let high = v as f32;
            [high, (v - high as f64) as f32]
        })
        .collect();
    let local = Tensor::from_vec(split, (1, 2 * n), &Device::Cpu)?;
    let all = comm.all_gather(&local)?.to_vec2::<f32>()?; // [world, 2n]
    let mut sums = vec![0f64; n];
    for row in &all {
        if row.len() != 2 * n {
            return Err(DistributedError::LengthMismatch {
                lengths: all.iter().map(Vec::len).collect(),
            });
        }
        for (sum, pair) in sums.iter_mut().zip(row.chunks_exact(2)) {
            *sum += pair[0] as f64 + pair[1] as f64;
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::{SingleProcess, ThreadGroup};

    #[test]
    fn sums_are_the_groups_and_the_scope_ends_with_the_call() {
        assert!(group_sums(&[1.0]).is_none());
        assert!(with_sync_batch_norm(&SingleProcess, || group_sums(&[1.0])).is_none());
        let replicas = ThreadGroup::new(3).expect("group");
        let handles: Vec<_> = replicas
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let r = comm.rank() as f64;
                    // A value f32 cannot hold exactly: the split keeps it.
                    let local = [1.0 + r, 1e-9 + r * 1e8 + 0.123_456_789];
                    let sums = with_sync_batch_norm(&comm, || {
                        assert!(sync_batch_norm_active());
                        group_sums(&local)
                    });
                    assert!(!sync_batch_norm_active());
                    sums.expect("inside a scope").expect("sums")
                })
            })
            .collect();
        for h in handles {
            let sums = h.join().expect("replica");
            assert_eq!(sums[0], 6.0);
            let exact = 3e-9 + 3e8 + 3.0 * 0.123_456_789;
            assert!((sums[1] - exact).abs() < 1e-5, "{} vs {exact}", sums[1]);
        }
    }
}
