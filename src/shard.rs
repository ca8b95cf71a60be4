//! Per-thread shard index for statistics written on the per-transaction path.
//!
//! Each thread gets a fixed index on first use (round robin); values written by several
//! worker threads are split into `SHARDS` parts on separate cache lines and summed by readers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Power of two, at least the usual worker count; threads beyond it share shards.
pub const SHARDS: usize = 8;

/// This thread's shard, in `0..SHARDS`.
#[inline]
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    INDEX.with(|i| *i)
}
