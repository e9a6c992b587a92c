//! Channels-last (`NHWC`) `f32` activations on the CPU, and the buffer pool that lets a forward
//! pass reuse their memory from layer to layer (the inference convolution and pooling kernels
//! take and give both).

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// A batch of channels-last `f32` activations, `[N, H, W, C]`, on the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct NhwcTensor {
    /// The values, `C` fastest, then `W`, `H`, `N`.
    pub data: Vec<f32>,
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl NhwcTensor {
    /// Converts a channels-first `[N, C, H, W]` tensor (any float dtype, any device) into
    /// channels-last `f32` on the CPU.
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        let data = x
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))? // [N, H, W, C]
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self { data, n, h, w, c })
    }

    /// Converts back to a channels-first `[N, C, H, W]` tensor on `device`.
    pub fn to_nchw(&self, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_slice(&self.data, (self.n, self.h, self.w, self.c), &Device::Cpu)?;
        let t = t.permute((0, 3, 1, 2))?.contiguous()?; // [N, C, H, W]
        Ok(t.to_device(device)?)
    }

    /// Number of pixels, `N·H·W`.
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Activation buffers kept between layers and calls, so that a forward pass does not map, fault
/// in and zero fresh memory for every layer (large allocations go straight to the kernel).
///
/// Holds on to the largest working set it has seen; drop it to release the memory.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl Clone for BufferPool {
    /// A new, empty pool (buffers are not shared).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A panic elsewhere cannot leave a list of buffers inconsistent.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` values (stale contents: the caller overwrites them).
    pub fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.lock();
        // The smallest buffer that is large enough, else the largest one (grown).
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
            .map(|(i, _)| i);
        let mut buffer = best.map(|i| free.swap_remove(i)).unwrap_or_default();
        drop(free);
        // Growing writes zeros only past the old length; shrinking writes nothing.
        buffer.resize(len, 0.0);
        buffer
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            self.lock().push(buffer);
        }
    }

    /// Returns a tensor's buffer for reuse.
    pub fn recycle(&self, tensor: NhwcTensor) {
        self.give(tensor.data);
    }
}
