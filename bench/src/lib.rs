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
    // `LOCKSTEP_BENCH_FEATURES=no-timers` measures the build without wake-ups, to say
    // what they cost side by side.
    let features: Vec<String> = std::env::var("LOCKSTEP_BENCH_FEATURES")
        .map(|f| {
            f.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    example_plugin(work, "txn_velocity", features)
}

/// Builds the example plugin `plugins/<name>` (with `features`) and loads it, with its
/// compiled artifact cached under `work`.
pub fn example_plugin(
    work: &std::path::Path,
    name: &str,
    features: Vec<String>,
) -> Result<lockstep_runtime::Plugin, Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = lockstep_build::build(
        &root.join("plugins").join(name),
        &lockstep_build::BuildOptions {
            features,
            ..Default::default()
        },
    )?;
    let runtime = lockstep_runtime::Runtime::new(lockstep_runtime::RuntimeConfig::with_cache(
        work.join("artifacts"),
    ))?;
    Ok(runtime.load_file(&built.path)?)
}

/// What this process has used so far, all threads: from `/proc/self/stat`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    /// CPU seconds in user mode.
    pub user_seconds: f64,
    /// CPU seconds in the kernel on its behalf (page faults, copies into the page
    /// cache, lock waits…).
    pub system_seconds: f64,
    /// Page faults served without I/O: mostly fresh memory touched for the first time.
    pub minor_faults: u64,
}

/// This process's [`ProcessUsage`]; `None` where `/proc/self/stat` is missing (not
/// Linux).
pub fn process_usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // minflt is field 10, utime and stime fields 14 and 15 (clock ticks of 1/100 s on
    // Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    Some(ProcessUsage {
        user_seconds: field(14)? as f64 / 100.0,
        system_seconds: field(15)? as f64 / 100.0,
        minor_faults: field(10)?,
    })
}

/// CPU time this process has used so far (user + system, all threads), in seconds;
/// `None` where `/proc/self/stat` is missing (not Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    process_usage().map(|u| u.user_seconds + u.system_seconds)
}

/// The synthetic `card_profile` group of the training-set and erase benchmarks: keyed
/// by `card_id` like `txn_velocity`, four features.
pub fn card_profile_manifest() -> lockstep_sdk::Manifest {
    use lockstep_sdk::{ManifestBuilder, Value, ValueType};
    ManifestBuilder::new("card_profile", "1.0.0")
        .description("Synthetic card profile (benchmark data)")
        .keyed_stateful(1)
        .field("card_id", ValueType::String, "")
        .field("ts", ValueType::Timestamp, "")
        .entity_key("card_id")
        .event_time("ts")
        .feature("risk_score", ValueType::Float64, "", Value::Null)
        .feature("account_age_days", ValueType::Int64, "", Value::Null)
        .feature("chargebacks_90d", ValueType::Int64, "", Value::Null)
        .feature("avg_ticket", ValueType::Float64, "", Value::Null)
        .build()
}

/// SplitMix64: a fixed, portable sequence for a seed.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
