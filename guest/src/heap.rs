//! The guest's heap, in two parts, so a request dirties few, contiguous pages.
//!
//! The host runs every request in a fresh instance made from a snapshot taken after
//! `prepare`, and resets the pages a request wrote when it ends. That reset is cheap when the
//! written pages form a few contiguous runs, and costs page faults in the next request when
//! they are scattered (wasmtime resets at most 32 runs in place). Parsing a tokenizer leaves
//! free chunks all over the heap, and an allocator that reuses them scatters a request's
//! writes. So until `prepare` ends, allocations go to the system allocator (wasi-libc's); from
//! then on they go to a second allocator whose memory is grown above everything `prepare`
//! left, and whose pages are therefore one contiguous run. Memory from before keeps being
//! freed (and moved on `realloc`) by the allocator that gave it.

use dlmalloc::{Allocator, Dlmalloc};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

const WASM_PAGE: usize = 64 * 1024;
/// Regions the request allocator may hold (each at least a wasm page; dlmalloc grows in
/// large steps, so a request uses a handful).
const MAX_REGIONS: usize = 256;

/// Grows linear memory for the request allocator and remembers what it grew.
struct Grown {
    regions: UnsafeCell<[(usize, usize); MAX_REGIONS]>,
    count: UnsafeCell<usize>,
}

// SAFETY: the guest is single-threaded; the allocator is only reached through `Heap`.
unsafe impl Send for Grown {}

impl Grown {
    const fn new() -> Self {
        Self { regions: UnsafeCell::new([(0, 0); MAX_REGIONS]), count: UnsafeCell::new(0) }
    }

    fn contains(&self, ptr: *mut u8) -> bool {
        let address = ptr as usize;
        // SAFETY: single-threaded; no reference into the array outlives this call.
        let (regions, count) = unsafe { (&*self.regions.get(), *self.count.get()) };
        regions[..count].iter().any(|&(start, end)| (start..end).contains(&address))
    }
}

unsafe impl Allocator for Grown {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        // SAFETY: single-threaded; no reference into the array outlives this call.
        let (regions, count) = unsafe { (&mut *self.regions.get(), &mut *self.count.get()) };
        if *count == MAX_REGIONS {
            return (std::ptr::null_mut(), 0, 0);
        }
        let pages = size.div_ceil(WASM_PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (std::ptr::null_mut(), 0, 0);
        }
        let start = previous * WASM_PAGE;
        regions[*count] = (start, start + pages * WASM_PAGE);
        *count += 1;
        (start as *mut u8, pages * WASM_PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _oldsize: usize, _newsize: usize, _can_move: bool) -> *mut u8 {
        std::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _oldsize: usize, _newsize: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        WASM_PAGE
    }
}

/// The global allocator: the system's until [`Heap::start_requests`], then the request
/// allocator's.
pub struct Heap {
    requests: UnsafeCell<Option<Dlmalloc<Grown>>>,
}

// SAFETY: the guest is single-threaded (wasm32-wasip2 without threads).
unsafe impl Sync for Heap {}

impl Heap {
    pub const fn new() -> Self {
        Self { requests: UnsafeCell::new(None) }
    }

    /// From now on, allocate above everything allocated so far. Called at the end of
    /// `prepare`, just before the snapshot.
    pub fn start_requests(&self) {
        // SAFETY: single-threaded, and no allocation is in progress while this runs.
        unsafe { *self.requests.get() = Some(Dlmalloc::new_with_allocator(Grown::new())) };
    }

    #[allow(clippy::mut_from_ref)]
    unsafe fn requests(&self) -> Option<&mut Dlmalloc<Grown>> {
        // SAFETY: single-threaded; the global allocator is not re-entered.
        unsafe { (*self.requests.get()).as_mut() }
    }
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            match self.requests() {
                Some(requests) => requests.malloc(layout.size(), layout.align()),
                None => System.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            match self.requests() {
                Some(requests) => requests.calloc(layout.size(), layout.align()),
                None => System.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            match self.requests() {
                Some(requests) if requests.allocator().contains(ptr) => requests.free(ptr, layout.size(), layout.align()),
                _ => System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            match self.requests() {
                Some(requests) if requests.allocator().contains(ptr) => requests.realloc(ptr, layout.size(), layout.align(), new_size),
                // Memory from before moves up into the request allocator.
                Some(requests) => {
                    let moved = requests.malloc(new_size, layout.align());
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        System.dealloc(ptr, layout);
                    }
                    moved
                }
                None => System.realloc(ptr, layout, new_size),
            }
        }
    }
}
