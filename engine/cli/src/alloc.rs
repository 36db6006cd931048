//! The process's memory allocator: glibc's `malloc` until `kiln serve` switches to mimalloc.
//!
//! One binary is both a short-lived command (`kiln run`, a few milliseconds) and a long-running
//! server, and the two want different allocators. mimalloc gives the server ~20% more runs/s
//! (glibc's `malloc` and `free` were about a sixth of its CPU), but a short process pays for its
//! fresh per-thread heaps in page faults (~1.2 ms more per `kiln run`; benches/README.md,
//! "A server-only allocator"). So every allocation goes to glibc until [`use_mimalloc`] is
//! called, and to mimalloc after it.
//!
//! Memory allocated before the switch is still freed after it. A free goes to the allocator
//! that owns the pointer: mimalloc's page map answers whether an address is in one of its
//! pages (`mi_is_in_heap_region`, two loads), and everything else is glibc's. The map covers
//! the whole address space (mimalloc 3), so the answer is exact. Before the switch a free costs
//! one relaxed load more than glibc's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// The global allocator of the `kiln` binary (set in main.rs).
pub struct Switching;

/// Set once, never cleared. Relaxed is enough: a pointer mimalloc handed out reaches another
/// thread only through some synchronisation, which also carries this store to that thread.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// From now on, new allocations come from mimalloc. Call it early (before the runtime's
/// threads start) so that their heaps are mimalloc's from the first allocation.
pub fn use_mimalloc() {
    MIMALLOC.store(true, Ordering::Relaxed);
}

#[inline]
fn switched() -> bool {
    MIMALLOC.load(Ordering::Relaxed)
}

/// Whether mimalloc allocated `ptr`. Only asked after the switch: before it, nothing is.
#[inline]
fn owned_by_mimalloc(ptr: *mut u8) -> bool {
    switched() && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: each pointer is freed or reallocated by the allocator that returned it: mimalloc's
// page map contains exactly the addresses of its pages, and glibc never returns one of those.
unsafe impl GlobalAlloc for Switching {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if switched() {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if switched() {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if owned_by_mimalloc(ptr) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    /// A block grows in the allocator that owns it: glibc's blocks stay glibc's.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if owned_by_mimalloc(ptr) {
                MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks from both allocators, freed and grown after the switch, each by its owner. This
    /// test binary runs on `Switching` too, so the other tests' blocks made before the switch
    /// are freed after it as well.
    #[test]
    fn frees_each_block_with_the_allocator_that_made_it() {
        let a = Switching;
        let small = Layout::from_size_align(24, 8).unwrap();
        let aligned = Layout::from_size_align(100, 4096).unwrap();
        let big = Layout::from_size_align(8 << 20, 16).unwrap();
        unsafe {
            let before: Vec<(*mut u8, Layout)> = [small, aligned, big]
                .into_iter()
                .map(|l| (a.alloc(l), l))
                .collect();
            for (p, _) in &before {
                assert!(!p.is_null());
                assert!(!libmimalloc_sys::mi_is_in_heap_region(p.cast()));
            }
            use_mimalloc();
            let after: Vec<(*mut u8, Layout)> = [small, aligned, big]
                .into_iter()
                .map(|l| (a.alloc_zeroed(l), l))
                .collect();
            for (p, l) in &after {
                assert!(owned_by_mimalloc(*p), "{l:?} should come from mimalloc");
                assert_eq!(*p as usize % l.align(), 0);
                assert!(
                    std::slice::from_raw_parts(*p, l.size())
                        .iter()
                        .all(|b| *b == 0)
                );
            }
            // A glibc block grows in glibc, keeping its bytes; a mimalloc block in mimalloc.
            let (p, l) = before[0];
            p.write_bytes(7, l.size());
            let grown = a.realloc(p, l, 4096);
            assert!(!owned_by_mimalloc(grown));
            assert!(
                std::slice::from_raw_parts(grown, l.size())
                    .iter()
                    .all(|b| *b == 7)
            );
            a.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
            let (p, l) = after[0];
            let grown = a.realloc(p, l, 4096);
            assert!(owned_by_mimalloc(grown));
            a.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
            for (p, l) in before.into_iter().skip(1).chain(after.into_iter().skip(1)) {
                a.dealloc(p, l);
            }
        }
    }
}
