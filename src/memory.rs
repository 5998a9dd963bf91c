//! Giving freed heap memory back to the system after the start-up's transient peaks.
//!
//! glibc keeps the pages of many small freed blocks (the wanted set parsed, every record
//! decoded once, sled's pages dropped: `store::sled`) in its arenas; at 100,000 certificates
//! that kept the idle RSS ~60 MiB above the live heap (heaptrack, BENCHMARKS.md).

/// Returns the heap's free pages to the system (a no-op on other allocators than glibc's).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory glibc's allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
