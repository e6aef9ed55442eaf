//! The WebAssembly runtime for Lockstep plugins.
//!
//! A [`Runtime`] owns one deterministic, sandboxed wasmtime engine. It loads a
//! component into a [`Plugin`] — checking its imports, reading and validating its
//! manifest, hashing its bytes — and hands out cheap [`PluginInstance`]s, one per
//! thread, that run `apply` and `read` calls within a CPU budget and a memory limit.
//!
//! Determinism: NaNs are canonicalised, relaxed SIMD is deterministic, threads are off,
//! and the guest can import nothing that observes time, randomness, the environment,
//! files or the network (see [`policy`]). The same component and the same request bytes
//! give the same response bytes on any host.
//!
//! This crate does no I/O beyond reading a component file and its artifact cache, and
//! knows nothing of event sources, formats or stores: hosts encode requests with
//! `lockstep-abi` and decode responses with it.

mod cache;
mod config;
mod error;
pub mod policy;

pub use config::RuntimeConfig;
pub use error::{CallError, LoadError, RefusedImport};
pub use lockstep_abi::Manifest;

use lockstep_abi::{Feature, Field, Kind, Value, ValueType};
use policy::{ImportDecision, classify};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "plugin",
    });
}

use bindings::lockstep::plugin::types as wit;

/// The version of the plugin contract (`plugin-sdk/wit/plugin.wit`) this runtime
/// implements; components name it in their imports.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Per-store data: the memory limiter and the last panic the guest reported.
struct HostState {
    memory_limit: usize,
    memory_exceeded: bool,
    panic_message: Option<String>,
}

impl bindings::lockstep::plugin::host::Host for HostState {
    fn report_panic(&mut self, message: String) {
        let mut message = message;
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.panic_message = Some(message);
    }
}

impl bindings::lockstep::plugin::types::Host for HostState {}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.memory_limit
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Advances the engine epoch on a fixed tick, which is what bounds a call's CPU time.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, LoadError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lockstep-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    cache: Option<cache::ArtifactCache>,
    _ticker: EpochTicker,
}

/// A sandboxed, deterministic engine that loads plugins. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

/// The engine settings every Lockstep host uses. They are part of the artifact cache
/// key through wasmtime's compatibility hash.
fn engine_config(config: &RuntimeConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.cranelift_nan_canonicalization(true);
    c.relaxed_simd_deterministic(true);
    // Threads are not compiled in (the `threads` feature is off), so no shared memory.
    c.epoch_interruption(true);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    c.max_wasm_stack(2 << 20);
    if config.pooled_instances > 0 {
        let n = config.pooled_instances;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n)
            .total_tables(n * 8)
            .max_memory_size(config.memory_limit as usize)
            .max_memories_per_component(1);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

impl Runtime {
    /// A runtime with these settings.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let engine = Engine::new(&engine_config(&config))
            .or_else(|pooled| {
                // Some sandboxes refuse the large virtual reservation the pool makes;
                // on-demand allocation is slower to instantiate but otherwise identical.
                tracing::warn!(
                    "pooling allocator unavailable ({pooled}); using on-demand allocation"
                );
                Engine::new(&engine_config(&RuntimeConfig {
                    pooled_instances: 0,
                    ..config.clone()
                }))
            })
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(cache::ArtifactCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                cache,
                _ticker: ticker,
            }),
        })
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Reads and loads the component at `path`.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Plugin, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Loads a component: checks it, compiles it (or takes it from the artifact cache),
    /// checks its imports and exports, and reads and validates its manifest.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, LoadError> {
        check_header(bytes)?;
        let hash = hex::encode(Sha256::digest(bytes));
        let engine = &self.inner.engine;
        let component = match &self.inner.cache {
            Some(cache) => cache.get_or_compile(engine, &hash, bytes)?,
            None => Component::new(engine, bytes).map_err(|e| LoadError::Compile {
                hash: hash.clone(),
                message: format!("{e:#}"),
            })?,
        };
        let mut imports = Vec::new();
        let mut refused = Vec::new();
        for (name, _) in component.component_type().imports(engine) {
            match classify(name) {
                ImportDecision::Refused(reason) => refused.push(RefusedImport {
                    import: name.to_owned(),
                    reason,
                }),
                ImportDecision::Host | ImportDecision::TrappingStub => {
                    imports.push(name.to_owned())
                }
            }
        }
        if !refused.is_empty() {
            return Err(LoadError::ImportRefused { hash, refused });
        }
        // A component of another contract version fails type checks somewhere deep in
        // the manifest record; its imports say which version it was built for.
        if let Some(found) = imports.iter().find_map(|name| {
            let (interface, version) = name.split_once('@')?;
            interface
                .starts_with("lockstep:plugin/")
                .then(|| version.to_owned())
        }) && found != CONTRACT_VERSION
        {
            return Err(LoadError::ContractVersion {
                hash,
                found,
                expected: CONTRACT_VERSION.to_owned(),
            });
        }
        let mut linker = self.inner.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| LoadError::Exports {
                hash: hash.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| LoadError::Exports {
                hash: hash.clone(),
                message: format!("{e:#}"),
            })?;
        let mut plugin = Plugin {
            inner: Arc::new(PluginInner {
                runtime: self.clone(),
                hash: hash.clone(),
                manifest: placeholder_manifest(),
                imports,
                pre,
            }),
        };
        let manifest = plugin
            .instantiate()
            .and_then(|mut i| i.manifest())
            .map_err(|e| LoadError::ManifestCall {
                hash: hash.clone(),
                source: Box::new(e),
            })?;
        manifest
            .validate()
            .map_err(|source| LoadError::Manifest { hash, source })?;
        if let Some(inner) = Arc::get_mut(&mut plugin.inner) {
            inner.manifest = manifest;
        }
        Ok(plugin)
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent(format!(
            "{} bytes that do not start with the WebAssembly magic number",
            bytes.len()
        )));
    }
    match bytes[6..8] {
        [0, 0] => Err(LoadError::NotAComponent(
            "this is a core WebAssembly module, not a component: build the plugin for \
             wasm32-wasip2 (`lockstep plugin build`)"
                .into(),
        )),
        [1, 0] => Ok(()),
        _ => Err(LoadError::NotAComponent(
            "unknown WebAssembly binary layer".into(),
        )),
    }
}

fn placeholder_manifest() -> Manifest {
    Manifest::builder("unloaded", "0.0.0").build()
}

struct PluginInner {
    runtime: Runtime,
    hash: String,
    manifest: Manifest,
    imports: Vec<String>,
    pre: bindings::PluginPre<HostState>,
}

/// A loaded, validated component. Cheap to clone; thread-safe. Create one
/// [`PluginInstance`] per thread with [`Plugin::instantiate`].
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl Plugin {
    /// SHA-256 of the component bytes, lowercase hex: the transform's identity.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The component's imports (all either the host interface or trapping stubs).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    /// Types of the input columns, in order.
    pub fn input_types(&self) -> Vec<ValueType> {
        self.inner.manifest.input.iter().map(|f| f.ty).collect()
    }

    /// Types of the feature columns, in order.
    pub fn feature_types(&self) -> Vec<ValueType> {
        self.inner.manifest.features.iter().map(|f| f.ty).collect()
    }

    /// A fresh instance with its own store and memory.
    pub fn instantiate(&self) -> Result<PluginInstance, CallError> {
        let mut instance = PluginInstance {
            plugin: self.clone(),
            live: None,
        };
        instance.ensure_live()?;
        Ok(instance)
    }
}

struct Live {
    store: Store<HostState>,
    bindings: bindings::Plugin,
}

/// One instance of a plugin: a store, its memory and the component instance.
///
/// Not shared between threads; create one per thread. A call that traps (budget,
/// memory, panic) discards the instance; the next call starts a fresh one, so one bad
/// batch never poisons the next.
pub struct PluginInstance {
    plugin: Plugin,
    live: Option<Live>,
}

impl PluginInstance {
    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn name(&self) -> String {
        self.plugin.inner.manifest.name.clone()
    }

    fn ensure_live(&mut self) -> Result<&mut Live, CallError> {
        if self.live.is_none() {
            let rt = &self.plugin.inner.runtime.inner;
            let mut store = Store::new(
                &rt.engine,
                HostState {
                    memory_limit: rt.config.memory_limit as usize,
                    memory_exceeded: false,
                    panic_message: None,
                },
            );
            store.limiter(|s| s);
            store.set_epoch_deadline(self.budget_ticks());
            store.epoch_deadline_trap();
            let bindings = self.plugin.inner.pre.instantiate(&mut store).map_err(|e| {
                CallError::Instantiate {
                    plugin: self.name(),
                    message: format!("{e:#}"),
                }
            })?;
            self.live = Some(Live { store, bindings });
        }
        let plugin = self.name();
        self.live.as_mut().ok_or(CallError::Instantiate {
            plugin,
            message: "instance vanished".into(),
        })
    }

    fn budget_ticks(&self) -> u64 {
        let cfg = &self.plugin.inner.runtime.inner.config;
        let tick = cfg.epoch_tick.as_micros().max(1);
        (cfg.cpu_budget.as_micros().div_ceil(tick) as u64).max(1)
    }

    /// Runs `f` against a live instance within the CPU budget, turning traps into
    /// [`CallError`]s and discarding the instance after one.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let ticks = self.budget_ticks();
        let live = self.ensure_live()?;
        live.store.set_epoch_deadline(ticks);
        let result = f(&live.bindings, &mut live.store);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let state = live.store.data();
                let (memory_exceeded, panic) = (state.memory_exceeded, state.panic_message.clone());
                self.live = None;
                Err(self.classify_trap(e, memory_exceeded, panic))
            }
        }
    }

    fn classify_trap(
        &self,
        e: wasmtime::Error,
        memory_exceeded: bool,
        panic: Option<String>,
    ) -> CallError {
        let cfg = &self.plugin.inner.runtime.inner.config;
        let plugin = self.name();
        if memory_exceeded {
            return CallError::MemoryLimit {
                plugin,
                limit_mib: cfg.memory_limit >> 20,
            };
        }
        if let Some(message) = panic {
            return CallError::Panicked { plugin, message };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::CpuBudget {
                plugin,
                budget_ms: cfg.cpu_budget.as_millis() as u64,
            },
            _ => CallError::Trap {
                plugin,
                message: format!("{e:#}"),
            },
        }
    }

    fn plugin_error(&self, e: wit::PluginError) -> CallError {
        CallError::Plugin {
            plugin: self.name(),
            event_index: e.event_index,
            message: e.message,
        }
    }

    /// Calls `apply` with an encoded apply request; returns the encoded response.
    pub fn apply(&mut self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        let outcome = self.call(|b, store| b.call_apply(store, request))?;
        outcome.map_err(|e| self.plugin_error(e))
    }

    /// Calls `read` with an encoded read request; returns the encoded response.
    pub fn read(&mut self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        let outcome = self.call(|b, store| b.call_read(store, request))?;
        outcome.map_err(|e| self.plugin_error(e))
    }

    /// Calls `manifest` and converts the result.
    pub fn manifest(&mut self) -> Result<Manifest, CallError> {
        let m = self.call(|b, store| b.call_manifest(store))?;
        Ok(convert_manifest(m))
    }
}

fn value_type(t: wit::ValueType) -> ValueType {
    match t {
        wit::ValueType::Int64 => ValueType::Int64,
        wit::ValueType::Float64 => ValueType::Float64,
        wit::ValueType::Boolean => ValueType::Boolean,
        wit::ValueType::String => ValueType::String,
        wit::ValueType::Timestamp => ValueType::Timestamp,
    }
}

fn convert_manifest(m: wit::Manifest) -> Manifest {
    Manifest {
        name: m.name,
        version: m.version,
        description: m.description,
        input: m
            .input
            .into_iter()
            .map(|f| Field {
                name: f.name,
                ty: value_type(f.ty),
                nullable: f.nullable,
                description: f.description,
            })
            .collect(),
        entity_key: m.entity_key,
        event_time: m.event_time,
        event_id: m.event_id,
        features: m
            .features
            .into_iter()
            .map(|f| Feature {
                name: f.name,
                ty: value_type(f.ty),
                description: f.description,
                default_value: match f.default_value {
                    wit::Value::Null => Value::Null,
                    wit::Value::Int64(x) => Value::Int64(x),
                    wit::Value::Float64(x) => Value::Float64(x),
                    wit::Value::Boolean(x) => Value::Boolean(x),
                    wit::Value::String(x) => Value::String(x),
                    wit::Value::Timestamp(x) => Value::Timestamp(x),
                },
            })
            .collect(),
        kind: match m.kind {
            wit::Kind::Stateless => Kind::Stateless,
            wit::Kind::KeyedStateful => Kind::KeyedStateful,
        },
        state_version: m.state_version,
        supports_read: m.supports_read,
        timer_resolution: m.timer_resolution,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_version_is_the_wit_packages() {
        let wit = include_str!("../../plugin-sdk/wit/plugin.wit");
        assert!(
            wit.contains(&format!("package lockstep:plugin@{CONTRACT_VERSION};")),
            "CONTRACT_VERSION differs from plugin.wit's package version"
        );
    }

    /// A component whose only import names an interface of the plugin contract at
    /// `version`: what a plugin built with another release's SDK looks like to the
    /// loader.
    fn component_importing_contract(version: &str) -> Vec<u8> {
        let name = format!("lockstep:plugin/types@{version}");
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        // Type section: one instance type, empty.
        bytes.extend([7, 3, 1, 0x42, 0]);
        // Import section: that name, an instance of type 0.
        let mut import = vec![1, 0, name.len() as u8];
        import.extend(name.as_bytes());
        import.extend([5, 0]);
        bytes.push(10);
        bytes.push(import.len() as u8);
        bytes.extend(import);
        bytes
    }

    #[test]
    fn a_component_of_another_contract_version_is_refused_naming_both_versions() {
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let err = rt
            .load(&component_importing_contract("0.1.0"))
            .err()
            .expect("an older contract must be refused");
        assert!(
            matches!(&err, LoadError::ContractVersion { found, expected, .. }
                if found == "0.1.0" && expected == CONTRACT_VERSION),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("built for lockstep:plugin@0.1.0")
                && message.contains(&format!("runs lockstep:plugin@{CONTRACT_VERSION}"))
                && message.contains("lockstep plugin build"),
            "{message}"
        );
        // The same import at this release's version passes that check (and fails
        // later, for exporting nothing).
        let err = rt
            .load(&component_importing_contract(CONTRACT_VERSION))
            .err()
            .expect("exports nothing");
        assert!(!matches!(err, LoadError::ContractVersion { .. }), "{err:?}");
    }

    #[test]
    fn non_wasm_and_truncated_inputs_are_clear_errors() {
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        for (bytes, expected) in [
            (&b""[..], "do not start with the WebAssembly magic"),
            (
                &b"hello world, not wasm"[..],
                "do not start with the WebAssembly magic",
            ),
            (&b"\0asm\x01\0\0\0"[..], "core WebAssembly module"),
            (&b"\0asm\x0d\0\x01\0\x01\x05"[..], "cannot compile"),
        ] {
            let err = rt.load(bytes).err().expect("must fail").to_string();
            assert!(err.contains(expected), "`{err}` should say `{expected}`");
        }
    }
}
