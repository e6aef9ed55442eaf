//! Process-wide allocator tuning for the service.
//!
//! A round allocates and frees millions of small blocks (decoded events, entity keys,
//! states, B-tree pages) around a few large buffers. With glibc's default "fastbins",
//! every free that merges into a chunk of 64 KiB or more first consolidates all
//! fastbin chunks of the arena: in `stream-throughput` that consolidation
//! (`malloc_consolidate`, `unlink_chunk`) was a tenth of the service's CPU, most of
//! it set off by the checkpoint store's commits. Without fastbins, small blocks are
//! still served by glibc's per-thread cache, and nothing needs consolidating: the
//! service ran 8–10 % faster in one run side by side (the same binary with and
//! without `GLIBC_TUNABLES=glibc.malloc.mxfast=0`).

/// Turns glibc's fastbins off for this process; call it first thing in `main`, before
/// other threads start. Does nothing on other C libraries, or when the environment
/// already tunes them (`GLIBC_TUNABLES` naming `mxfast` wins).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mxfast"));
        if !tuned {
            // SAFETY: mallopt only changes the allocator's parameters; with
            // M_MXFAST 0 it frees no memory and invalidates no pointer.
            unsafe {
                libc::mallopt(libc::M_MXFAST, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocation_works_after_tuning() {
        super::tune_allocator();
        // Many small blocks freed next to a large one: the pattern that used to
        // consolidate fastbins. It must still allocate and free correctly.
        let small: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 24]).collect();
        let large = vec![7u8; 1 << 20];
        assert!(small.iter().enumerate().all(|(i, v)| v[23] == i as u8));
        drop(small);
        assert_eq!(large.iter().map(|&b| b as usize).sum::<usize>(), 7 << 20);
    }
}
