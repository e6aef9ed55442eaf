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

/// `FieldType` for a Rust type: its column type, how a default is written, and how
/// that default becomes a manifest value.
macro_rules! field_type {
    ($($rust:ty => $column:ident, $native:ty, |$v:ident| $value:expr;)*) => {$(
        impl FieldType for $rust {
            const TYPE: ValueType = ValueType::$column;
            type Native = $native;
            fn value($v: $native) -> Value {
                $value
            }
        }
    )*};
}

field_type! {
    i64 => Int64, i64, |v| Value::Int64(v);
    f64 => Float64, f64, |v| Value::Float64(v);
    bool => Boolean, bool, |v| Value::Boolean(v);
    String => String, &'static str, |v| Value::String(v.to_owned());
    &str => String, &'static str, |v| Value::String(v.to_owned());
    Timestamp => Timestamp, Timestamp, |v| Value::Timestamp(v.0);
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
