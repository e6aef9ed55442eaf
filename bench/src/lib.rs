//! Helpers shared by the benchmark binaries.

/// The `i`-th command-line argument as a number, or `default`.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
