//! Helpers shared by the benchmark binaries.

/// The `i`-th command-line argument as a number, or `default`.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Builds `plugins/txn_velocity` from source and loads it, with its compiled artifact
/// cached under `work`.
pub fn txn_velocity(
    work: &std::path::Path,
) -> Result<lockstep_runtime::Plugin, Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = lockstep_build::build(&root.join("plugins/txn_velocity"), &Default::default())?;
    let runtime = lockstep_runtime::Runtime::new(lockstep_runtime::RuntimeConfig::with_cache(
        work.join("artifacts"),
    ))?;
    Ok(runtime.load_file(&built.path)?)
}
