use lockstep_abi::ManifestError;
use std::path::PathBuf;
use thiserror::Error;

/// Why a component could not be loaded. Every variant names what failed.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component.
    #[error("not a Lockstep plugin: {0}")]
    NotAComponent(String),
    /// Compilation failed (malformed or truncated binary, unsupported feature).
    #[error("cannot compile plugin {hash}: {message}")]
    Compile {
        /// SHA-256 of the component bytes.
        hash: String,
        /// What the compiler said.
        message: String,
    },
    /// The component imports things the sandbox refuses.
    #[error("plugin {hash} imports what the sandbox refuses: {}", .refused.iter().map(|r| format!("`{}` ({})", r.import, r.reason)).collect::<Vec<_>>().join(", "))]
    ImportRefused {
        /// SHA-256 of the component bytes.
        hash: String,
        /// Every refused import, in the component's order.
        refused: Vec<RefusedImport>,
    },
    /// The component was built against another version of the plugin contract.
    #[error(
        "plugin {hash} was built for lockstep:plugin@{found}; this host runs lockstep:plugin@{expected}: rebuild it with this release's SDK (`lockstep plugin build`)"
    )]
    ContractVersion {
        /// SHA-256 of the component bytes.
        hash: String,
        /// The version its imports name.
        found: String,
        /// The version this host implements.
        expected: String,
    },
    /// The component does not export the Lockstep plugin world.
    #[error("plugin {hash} does not implement the lockstep:plugin world: {message}")]
    Exports {
        /// SHA-256 of the component bytes.
        hash: String,
        /// What is missing or mistyped.
        message: String,
    },
    /// Calling `manifest` failed.
    #[error("plugin {hash}: reading its manifest failed")]
    ManifestCall {
        /// SHA-256 of the component bytes.
        hash: String,
        /// The call failure.
        source: Box<CallError>,
    },
    /// The manifest breaks a rule.
    #[error("plugin {hash}: its manifest breaks a rule")]
    Manifest {
        /// SHA-256 of the component bytes.
        hash: String,
        /// The rule broken.
        source: ManifestError,
    },
    /// The engine or the artifact cache could not be set up.
    #[error("runtime setup failed: {0}")]
    Engine(String),
}

/// One import the sandbox refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedImport {
    /// The import's full name, e.g. `wasi:clocks/wall-clock@0.2.6`.
    pub import: String,
    /// The hazard it would bring.
    pub reason: &'static str,
}

/// Why a call into a plugin failed. The instance that failed is discarded; the next
/// call on the same [`crate::PluginInstance`] gets a fresh one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The call ran past its CPU budget and was interrupted.
    #[error("plugin `{plugin}` exceeded its CPU budget of {budget_ms} ms and was stopped")]
    CpuBudget {
        /// Group name of the plugin.
        plugin: String,
        /// The budget.
        budget_ms: u64,
    },
    /// The plugin tried to grow its memory past the limit.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_mib} MiB")]
    MemoryLimit {
        /// Group name of the plugin.
        plugin: String,
        /// The limit.
        limit_mib: u64,
    },
    /// The plugin panicked.
    #[error("plugin `{plugin}` panicked: {message}")]
    Panicked {
        /// Group name of the plugin.
        plugin: String,
        /// The panic message the plugin reported.
        message: String,
    },
    /// The plugin returned an error.
    #[error("plugin `{plugin}` failed{}: {message}", .event_index.map(|i| format!(" at event {i}")).unwrap_or_default())]
    Plugin {
        /// Group name of the plugin.
        plugin: String,
        /// Index of the request event it was processing, if any.
        event_index: Option<u32>,
        /// The plugin's message.
        message: String,
    },
    /// Any other trap (e.g. a stubbed import was called, an unreachable was hit).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// Group name of the plugin.
        plugin: String,
        /// The trap description.
        message: String,
    },
    /// A fresh instance could not be created.
    #[error("plugin `{plugin}`: cannot create an instance: {message}")]
    Instantiate {
        /// Group name of the plugin.
        plugin: String,
        /// Why.
        message: String,
    },
}
