//! The component side: WIT bindings and the glue [`crate::export!`] expands to.

use crate::Transform;
use crate::engine::{self, CallError};
use lockstep_abi::{Kind, Value, ValueType};

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export_component",
    default_bindings_module: "lockstep_sdk::guest",
});

use lockstep::plugin::types as wit;

/// The manifest as the WIT bindings spell it.
pub type WitManifest = wit::Manifest;
/// A call error as the WIT bindings spell it.
pub type WitError = wit::PluginError;

fn value_type(t: ValueType) -> wit::ValueType {
    match t {
        ValueType::Int64 => wit::ValueType::Int64,
        ValueType::Float64 => wit::ValueType::Float64,
        ValueType::Boolean => wit::ValueType::Boolean,
        ValueType::String => wit::ValueType::String,
        ValueType::Timestamp => wit::ValueType::Timestamp,
    }
}

fn value(v: Value) -> wit::Value {
    match v {
        Value::Null => wit::Value::Null,
        Value::Int64(x) => wit::Value::Int64(x),
        Value::Float64(x) => wit::Value::Float64(x),
        Value::Boolean(x) => wit::Value::Boolean(x),
        Value::String(x) => wit::Value::String(x),
        Value::Timestamp(x) => wit::Value::Timestamp(x),
    }
}

/// Sends panic messages to the host before the component aborts, so the host can say
/// what went wrong instead of "unreachable executed".
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            lockstep::plugin::host::report_panic(&info.to_string());
        }));
    });
}

fn wit_error(e: CallError) -> WitError {
    wit::PluginError {
        event_index: e.event_index,
        message: e.message,
    }
}

#[doc(hidden)]
pub fn manifest<T: Transform>() -> WitManifest {
    install_panic_hook();
    let m = T::manifest();
    wit::Manifest {
        name: m.name,
        version: m.version,
        description: m.description,
        input: m
            .input
            .into_iter()
            .map(|f| wit::Field {
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
            .map(|f| wit::Feature {
                name: f.name,
                ty: value_type(f.ty),
                description: f.description,
                default_value: value(f.default_value),
            })
            .collect(),
        kind: match m.kind {
            Kind::Stateless => wit::Kind::Stateless,
            Kind::KeyedStateful => wit::Kind::KeyedStateful,
        },
        state_version: m.state_version,
        supports_read: m.supports_read,
        timer_resolution: m.timer_resolution,
    }
}

/// The component's driver, built on first use and kept for the instance's lifetime.
pub type DriverCell<T> = std::sync::OnceLock<Result<engine::Driver<T>, CallError>>;

fn driver<T: Transform>(cell: &DriverCell<T>) -> Result<&engine::Driver<T>, WitError> {
    install_panic_hook();
    cell.get_or_init(engine::Driver::new)
        .as_ref()
        .map_err(|e| wit_error(e.clone()))
}

#[doc(hidden)]
pub fn apply<T: Transform>(cell: &DriverCell<T>, request: &[u8]) -> Result<Vec<u8>, WitError> {
    driver(cell)?.apply(request).map_err(wit_error)
}

#[doc(hidden)]
pub fn read<T: Transform>(cell: &DriverCell<T>, request: &[u8]) -> Result<Vec<u8>, WitError> {
    driver(cell)?.read(request).map_err(wit_error)
}
