//! The NCCL backend (crate feature `nccl`): one process per GPU, collectives on the devices
//! with NCCL on candle's own CUDA stream (so they are ordered with the backward pass's
//! kernels without extra synchronisation, and nothing passes through the host).
//!
//! A job is started by the same launcher as a CPU job (`mpirun`, `srun`); rank 0 creates the
//! NCCL unique id and the ranks receive it over MPI ([`NcclGroup::over_mpi`], needs the `mpi`
//! feature too), the pattern of NCCL's own examples and Horovod. [`NcclGroup::single`] is a
//! group of one on one GPU.
//!
//! Gradients are reduced as one flat `f32` buffer per step (`ncclAllReduce` with `ncclAvg`),
//! with one presence flag per variable appended, as every backend does. Before each
//! collective the ranks all-gather their buffer lengths, so that replicas with different
//! models fail with [`DistributedError::LengthMismatch`] instead of reducing misaligned data.

use candle_core::backprop::GradStore;
use candle_core::cuda::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

use super::{
    DistributedError, GradSync, Result, all_gather_flat, all_reduce_mean_flat, broadcast_vars_flat,
    debug_group,
};

/// This process's replica in a group of GPUs joined through NCCL.
pub struct NcclGroup {
    comm: Comm,
    device: Device,
    rank: usize,
    world_size: usize,
    /// The MPI job the NCCL id travelled through; kept so that MPI is finalised only after
    /// the NCCL communicator is gone (fields drop in declaration order).
    #[cfg(feature = "mpi")]
    _mpi: Option<super::MpiGroup>,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_group(f, "NcclGroup", (self.rank, self.world_size))
    }
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `GradSync` is
// `Send` but not `Sync`, and every collective takes `&self` of the one group of the process,
// so two threads cannot call into the communicator through it at once.
unsafe impl Send for NcclGroup {}

/// An NCCL error in this module's error type.
fn nccl_error(what: &str, e: impl std::fmt::Debug) -> DistributedError {
    DistributedError::InvalidArgument(format!("NCCL {what} failed: {e:?}"))
}

impl NcclGroup {
    /// A group of one on the CUDA `device`.
    ///
    /// # Errors
    /// When `device` is not a CUDA device or NCCL cannot create a communicator.
    pub fn single(device: &Device) -> Result<Self> {
        let id = Id::new().map_err(|e| nccl_error("unique id", e))?;
        Self::with_id(device, 0, 1, id)
    }

    /// This process's replica in the launcher's job: rank and size are `mpi`'s, rank 0 creates
    /// the NCCL unique id and broadcasts it over MPI, and every rank joins on the CUDA
    /// `device` (one GPU per rank: see [`super::Launch::local_rank`]).
    ///
    /// # Errors
    /// When `device` is not a CUDA device or NCCL cannot create the communicator.
    #[cfg(feature = "mpi")]
    pub fn over_mpi(mpi: super::MpiGroup, device: &Device) -> Result<Self> {
        let mut bytes = [0u8; 128];
        if mpi.rank() == 0 {
            let id = Id::new().map_err(|e| nccl_error("unique id", e))?;
            for (b, &c) in bytes.iter_mut().zip(id.internal()) {
                *b = c as u8;
            }
        }
        mpi.broadcast_bytes(&mut bytes, 0)?;
        let id = Id::uninit(bytes.map(|b| b as std::ffi::c_char));
        let mut group = Self::with_id(device, mpi.rank(), mpi.world_size(), id)?;
        group._mpi = Some(mpi);
        Ok(group)
    }

    fn with_id(device: &Device, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(DistributedError::InvalidArgument(format!(
                "the NCCL backend needs a CUDA device, got {:?}",
                device.location()
            )));
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world_size, id)
            .map_err(|e| nccl_error("communicator set-up", e))?;
        Ok(Self {
            comm,
            device: device.clone(),
            rank,
            world_size,
            #[cfg(feature = "mpi")]
            _mpi: None,
        })
    }

    /// `flat` (a 1-D `f32` tensor) through `collective`, on this group's device.
    fn run(&self, flat: &Tensor, collective: Collective) -> Result<Tensor> {
        self.agree_on_length(flat.elem_count())?;
        self.collective(flat, collective)
    }

    fn collective(&self, flat: &Tensor, collective: Collective) -> Result<Tensor> {
        let flat = flat
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .contiguous()?;
        let op = NcclOp {
            comm: &self.comm,
            collective,
        };
        Ok(flat.apply_op1_no_bwd(&op)?)
    }

    /// Checks that every rank passes a buffer of `len` elements to the next collective (the
    /// length travels as two `f32` of 24 bits each, exact below 2⁴⁸).
    fn agree_on_length(&self, len: usize) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        let parts = [(len >> 24) as f32, (len & 0xff_ffff) as f32];
        let mine = Tensor::new(&parts, &self.device)?;
        let all = self
            .collective(&mine, Collective::Gather)?
            .to_vec1::<f32>()?;
        let lengths: Vec<usize> = all
            .chunks_exact(2)
            .map(|p| ((p[0] as usize) << 24) + p[1] as usize)
            .collect();
        if lengths.iter().any(|&l| l != len) {
            return Err(DistributedError::LengthMismatch { lengths });
        }
        Ok(())
    }
}

/// A collective over a contiguous `f32` buffer.
#[derive(Debug, Clone, Copy)]
enum Collective {
    /// Elementwise mean over the ranks.
    Mean,
    /// Every rank's buffer, in rank order.
    Gather,
    /// Rank `root`'s buffer.
    Broadcast(usize),
}

/// A collective as a candle operation (no gradient), so that its output is a new device buffer
/// wrapped in a tensor; it runs while `apply_op1_no_bwd` runs, so it may borrow the
/// communicator.
struct NcclOp<'a> {
    comm: &'a Comm,
    collective: Collective,
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need a contiguous buffer")
        };
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let n = end - start;
        let out_len = match self.collective {
            Collective::Gather => n * self.comm.world_size(),
            Collective::Mean | Collective::Broadcast(_) => n,
        };
        let stream = self.comm.stream();
        let mut dst = stream
            .alloc_zeros::<f32>(out_len)
            .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        let status = match self.collective {
            Collective::Mean => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Avg),
            Collective::Gather => self.comm.all_gather(&src, &mut dst),
            Collective::Broadcast(root) => {
                let root = i32::try_from(root).map_err(candle_core::Error::wrap)?;
                self.comm.broadcast(Some(&src), &mut dst, root)
            }
        };
        status.map_err(|e| candle_core::Error::Msg(format!("NCCL collective failed: {e:?}")))?;
        let out = CudaStorage::wrap_cuda_slice(dst, storage.device.clone());
        Ok((out, Shape::from(out_len)))
    }
}

impl GradSync for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_mean(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
        all_reduce_mean_flat(vars, grads, |flat| self.run(&flat, Collective::Mean))
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        all_gather_flat(local, self.world_size, |flat| {
            self.run(&flat, Collective::Gather)
        })
    }

    fn broadcast_vars(&self, vars: &[(String, Var)], root: usize) -> Result<()> {
        broadcast_vars_flat(vars, (self.rank, self.world_size), root, |flat| {
            self.run(&flat, Collective::Broadcast(root))
        })
    }
}
