//! The in-process backend: one replica per thread, reducing through host memory (a test double
//! for the process backends, and a portable fallback).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{
    DistributedError, GradSync, Result, all_gather_flat, all_reduce_mean_on_host,
    broadcast_vars_flat, through_host,
};

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

    fn backend(&self) -> &'static str {
        "threads"
    }

    fn all_reduce_mean(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
        // Host memory is this backend's transport (explicitly; NCCL reduces on the devices).
        all_reduce_mean_on_host(vars, grads, |data| self.collective(data, Collective::Mean))
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        all_gather_flat(local, self.group.world_size, |flat| {
            through_host(&flat, |data| self.collective(data, Collective::Gather))
        })
    }

    fn broadcast_vars(&self, vars: &[(String, Var)], root: usize) -> Result<()> {
        let group = (self.rank, self.group.world_size);
        broadcast_vars_flat(vars, group, root, |flat| {
            through_host(&flat, |data| {
                self.collective(data, Collective::Broadcast(root))
            })
        })
    }
}
