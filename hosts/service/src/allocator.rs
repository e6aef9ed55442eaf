//! Process-wide allocator tuning for the service.
//!
//! A round allocates and frees millions of small blocks (decoded events, entity keys,
//! states, B-tree pages) around a few large buffers. With glibc's default "fastbins",
//! every free that merges into a chunk of 64 KiB or more first consolidates all
//! fastbin chunks of the arena: in `stream-throughput` that consolidation
//! (`malloc_consolidate`, `unlink_chunk`) was a tenth of the service's CPU, most of
//! it set off by the checkpoint store's commits. Without fastbins, small blocks are
//! still served by glibc's per-thread cache, and nothing needs consolidating. Side
//! by side (the same binary, the default restored with
//! `GLIBC_TUNABLES=glibc.malloc.mxfast=128`), the tuned service won 7 of 9 pairs of
//! `stream-throughput` runs: 326k–341k against 285k–313k events/s on a quiet machine,
//! less clearly on a noisy one.

/// Turns glibc's fastbins off for this process; call it first thing in `main`, before
/// other threads start. Returns whether it did: not on other C libraries, nor when the
/// environment already tunes them (`GLIBC_TUNABLES` naming `mxfast` wins).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if environment_tunes_fastbins() {
            return false;
        }
        // SAFETY: mallopt only changes the allocator's parameters; with M_MXFAST 0 it
        // frees no memory and invalidates no pointer. It returns 1 on success.
        unsafe { libc::mallopt(libc::M_MXFAST, 0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether `GLIBC_TUNABLES` sets the fastbin size itself.
fn environment_tunes_fastbins() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mxfast"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_setting_unless_the_environment_sets_it() {
        let applied = super::tune_allocator();
        let expected = cfg!(all(target_os = "linux", target_env = "gnu"))
            && !super::environment_tunes_fastbins();
        assert_eq!(applied, expected, "mallopt(M_MXFAST, 0) accepted by glibc");
    }
}
