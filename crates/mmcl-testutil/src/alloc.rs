//! A global allocator for property tests that bounds the memory a reader may take.
//!
//! Hostile files must not make a reader allocate what the file cannot justify. A test binary
//! installs [`CappedAllocator`] as its `#[global_allocator]`; every allocation is counted, and one
//! that would take the live total above the cap is refused with a message naming the request, so
//! the offending case fails loudly (the standard library aborts on a refused allocation) instead
//! of exhausting the machine. [`CappedAllocator::peak_since_reset`] lets a test assert a tighter
//! bound per case.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: mmcl_testutil::alloc::CappedAllocator =
//!     mmcl_testutil::alloc::CappedAllocator::new(1 << 30);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator with a cap on the live bytes of the whole process.
#[derive(Debug)]
pub struct CappedAllocator {
    cap: usize,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl CappedAllocator {
    /// An allocator refusing to hold more than `cap` bytes at once.
    pub const fn new(cap: usize) -> Self {
        Self {
            cap,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated and not yet freed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Starts a new peak measurement at the current live size.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }

    /// The highest live size since the last [`reset_peak`](Self::reset_peak).
    pub fn peak_since_reset(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn reserve(&self, size: usize) -> bool {
        let before = self.live.fetch_add(size, Ordering::Relaxed);
        let after = before.saturating_add(size);
        if after > self.cap {
            self.live.fetch_sub(size, Ordering::Relaxed);
            // Printing allocates nothing here: the message is a fixed string and two integers
            // formatted into stderr's own buffer.
            eprintln!(
                "CappedAllocator: refused {size} bytes with {before} live (cap {}): \
                 a reader allocated more than its input justifies",
                self.cap
            );
            return false;
        }
        self.peak.fetch_max(after, Ordering::Relaxed);
        true
    }

    /// Reserves `size` bytes and calls `allocate`, or returns null when the cap refuses them;
    /// a failed allocation gives the reservation back.
    fn reserved(&self, size: usize, allocate: impl FnOnce() -> *mut u8) -> *mut u8 {
        if !self.reserve(size) {
            return std::ptr::null_mut();
        }
        let ptr = allocate();
        if ptr.is_null() {
            self.live.fetch_sub(size, Ordering::Relaxed);
        }
        ptr
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; the counters only decide
// whether to forward, and are adjusted by exactly the size forwarded or released.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        self.reserved(layout.size(), || unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        self.reserved(layout.size(), || unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (through this allocator).
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !self.reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            if new_size > old {
                self.live.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            self.live.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        new
    }
}
