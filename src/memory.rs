//! Giving freed heap memory back to the system after the start-up's transient peaks.
//!
//! With the default `jemalloc` feature (src/main.rs) jemalloc's background thread returns pages
//! freed for a second by itself, and [`trim`] has nothing to do. Without it, glibc keeps the
//! pages of many small freed blocks (the wanted set parsed, every record decoded once, sled's
//! pages dropped: `store::sled`) in its arenas; at 100,000 certificates that kept the idle RSS
//! ~60 MiB above the live heap (heaptrack, BENCHMARKS.md), and [`trim`] hands back what it can.

/// Returns the heap's free pages to the system (glibc's allocator only; jemalloc does so itself).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    // SAFETY: malloc_trim only releases memory glibc's allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
