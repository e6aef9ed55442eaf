//! A plugin's schema written once, in its Rust types.
//!
//! `#[derive(Event)]` reads the input schema from the event struct (`#[event(key)]`,
//! `#[event(time)]`, `#[event(id)]` mark the entity key, event time and event id) and
//! `#[derive(Features)]` the features from the row struct (`#[feat(default = …)]`); [`manifest`] builds the
//! manifest from both, and [`crate::testing::check_derived`] checks, in `cargo test`, a
//! manifest written by hand against them.
//!
//! ```
//! use lockstep_sdk::prelude::*;
//!
//! #[derive(Deserialize, Event)]
//! pub struct Login<'a> {
//!     /// Who logged in.
//!     #[event(key)]
//!     pub user: &'a str,
//!     /// When.
//!     #[event(time)]
//!     pub at: Timestamp,
//!     /// The device, when known.
//!     pub device: Option<&'a str>,
//! }
//!
//! #[derive(Serialize, Features)]
//! pub struct LoginCount {
//!     /// Logins so far.
//!     #[feat(default = 0)]
//!     pub logins: i64,
//! }
//!
//! let fields = <Login<'_> as lockstep_sdk::schema::EventSchema>::fields();
//! assert_eq!(fields[2].name, "device");
//! assert!(fields[2].nullable);
//! assert_eq!(<LoginCount as lockstep_sdk::schema::FeatureSchema>::features()[0].default_value, Value::Int64(0));
//! ```

use crate::{Feature, Field, ManifestBuilder, Timestamp, Transform, Value, ValueType};

/// A Rust type that is a column type: how `#[derive(Event)]` and
/// `#[derive(Features)]` type a field. `Option<T>` is `T`, nullable.
pub trait FieldType {
    /// The column type.
    const TYPE: ValueType;
    /// Whether a value may be null.
    const NULLABLE: bool = false;
    /// The Rust type a default value is written as.
    type Native;
    /// A default value of this type, as the manifest holds it.
    fn value(native: Self::Native) -> Value;
}

impl FieldType for i64 {
    const TYPE: ValueType = ValueType::Int64;
    type Native = i64;
    fn value(native: i64) -> Value {
        Value::Int64(native)
    }
}

impl FieldType for f64 {
    const TYPE: ValueType = ValueType::Float64;
    type Native = f64;
    fn value(native: f64) -> Value {
        Value::Float64(native)
    }
}

impl FieldType for bool {
    const TYPE: ValueType = ValueType::Boolean;
    type Native = bool;
    fn value(native: bool) -> Value {
        Value::Boolean(native)
    }
}

impl FieldType for String {
    const TYPE: ValueType = ValueType::String;
    type Native = &'static str;
    fn value(native: &'static str) -> Value {
        Value::String(native.to_owned())
    }
}

impl FieldType for &str {
    const TYPE: ValueType = ValueType::String;
    type Native = &'static str;
    fn value(native: &'static str) -> Value {
        Value::String(native.to_owned())
    }
}

impl FieldType for Timestamp {
    const TYPE: ValueType = ValueType::Timestamp;
    type Native = Timestamp;
    fn value(native: Timestamp) -> Value {
        Value::Timestamp(native.0)
    }
}

impl<T: FieldType> FieldType for Option<T> {
    const TYPE: ValueType = T::TYPE;
    const NULLABLE: bool = true;
    type Native = T::Native;
    fn value(native: T::Native) -> Value {
        T::value(native)
    }
}

/// An event type that declares its input schema (`#[derive(Event)]`).
pub trait EventSchema {
    /// The input fields, in declaration order.
    fn fields() -> Vec<Field>;
    /// The field that identifies the entity (`#[event(key)]`).
    fn entity_key() -> &'static str;
    /// The field that orders events (`#[event(time)]`).
    fn event_time() -> &'static str;
    /// The field that identifies an event, if one is marked (`#[event(id)]`).
    fn event_id() -> Option<&'static str>;
}

/// A row type that declares its features (`#[derive(Features)]`).
pub trait FeatureSchema {
    /// The features, in declaration order.
    fn features() -> Vec<Feature>;
}

/// A manifest builder for `T` named `name` at `version`, with its input schema and
/// features from `T`'s event and row types. Add the kind and the rest, then `build`:
/// `schema::manifest::<Self>("logins", "1.0.0").keyed_stateful(1).build()`.
pub fn manifest<T>(name: &str, version: &str) -> ManifestBuilder
where
    T: Transform,
    for<'a> T::Event<'a>: EventSchema,
    T::Row: FeatureSchema,
{
    let mut builder = ManifestBuilder::new(name, version);
    for field in <T::Event<'static> as EventSchema>::fields() {
        builder = if field.nullable {
            builder.optional_field(&field.name, field.ty, &field.description)
        } else {
            builder.field(&field.name, field.ty, &field.description)
        };
    }
    builder = builder
        .entity_key(<T::Event<'static> as EventSchema>::entity_key())
        .event_time(<T::Event<'static> as EventSchema>::event_time());
    if let Some(id) = <T::Event<'static> as EventSchema>::event_id() {
        builder = builder.event_id(id);
    }
    for feature in T::Row::features() {
        builder = builder.feature(
            &feature.name,
            feature.ty,
            &feature.description,
            feature.default_value,
        );
    }
    builder
}
