//! Allocations on the hot path, counted: `cargo bench --bench allocations`. Unlike times, the
//! counts are exact and repeat from run to run, so they show what a change to the hot path
//! costs. One review per case, after one warm-up review (lazily built state is not counted).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `layout` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    println!(
        "{:<50} {:>9} {:>12} {:>14}",
        "review", "body", "allocations", "bytes"
    );
    let hot = common::HotPath::new();
    let at_scale = common::HotPath::at_scale();
    let cases = common::CASES
        .iter()
        .map(|&(name, phase)| (name, phase, &hot, ""));
    // Again with 10,000 PDBs cached: a review reads its own namespace's, whatever the cluster's size.
    let scaled = common::AT_SCALE
        .into_iter()
        .map(|(name, phase)| (name, phase, &at_scale, " (10,000 PDBs cached)"));
    for (name, phase, hot, note) in cases.chain(scaled) {
        let body = common::fixture(name);
        hot.review(phase, &body);
        let (count, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let out = hot.review(phase, &body);
        let count = ALLOCATIONS.load(Ordering::Relaxed) - count;
        let bytes = BYTES.load(Ordering::Relaxed) - bytes;
        assert!(!out.is_empty());
        println!(
            "{name:<50} {:>7} B {count:>12} {:>12} B{note}",
            body.len(),
            bytes
        );
    }
}
