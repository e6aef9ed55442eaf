//! Write a Lockstep feature transform once; run it in every host.
//!
//! A transform is a plain Rust type implementing [`Transform`], plus one call to
//! [`export!`]. The same code is unit-tested natively with `cargo test`, benchmarked
//! natively, and built to a WebAssembly component with `lockstep plugin build`.
//!
//! ```
//! use lockstep_sdk::prelude::*;
//!
//! #[derive(Deserialize, Event)]
//! pub struct Login<'a> {
//!     #[event(key)]
//!     pub user: &'a str,
//!     #[event(time)]
//!     pub at: Timestamp,
//! }
//!
//! #[derive(Serialize, Features, Debug, PartialEq)]
//! pub struct LoginCount {
//!     #[feat(default = 0)]
//!     pub logins: i64,
//! }
//!
//! pub struct Logins;
//!
//! impl Transform for Logins {
//!     type Event<'a> = Login<'a>;
//!     type Row = LoginCount;
//!     type State = i64;
//!
//!     fn manifest() -> Manifest {
//!         lockstep_sdk::schema::manifest::<Self>("logins", "1.0.0").keyed_stateful(1).build()
//!     }
//!
//!     fn apply(count: &mut i64, _login: Login<'_>, out: &mut Emit<'_, LoginCount>) -> Result<(), Error> {
//!         *count += 1;
//!         out.emit(LoginCount { logins: *count })
//!     }
//! }
//!
//! lockstep_sdk::export!(Logins);
//!
//! // Native unit test: no Wasm involved.
//! let (t1, t2) = (Timestamp::from_secs(1), Timestamp::from_secs(2));
//! let rows = lockstep_sdk::testing::run_timed::<Logins>(&mut 0, [
//!     (t1, Login { user: "ann", at: t1 }),
//!     (t2, Login { user: "ann", at: t2 }),
//! ]).unwrap();
//! assert_eq!(rows[1].1, LoginCount { logins: 2 });
//! ```
//!
//! The guide in `plugin-sdk/GUIDE.md` walks through a complete plugin.
//!
//! This crate owns the guest side of the contract: decoding apply batches into typed
//! events, encoding rows and state. It must never depend on anything that reads a
//! clock, randomness, the environment or the filesystem: plugins are deterministic.

// The derive macros name `::lockstep_sdk`; this lets them work inside the SDK too.
extern crate self as lockstep_sdk;

mod de;
pub mod engine;
pub mod schema;
mod ser;
pub mod state;
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use engine::{Emit, Wakeups};
pub use lockstep_abi as abi;
pub use lockstep_abi::ManifestBuilder;
pub use lockstep_abi::{Feature, Field, Kind, Manifest, Value, ValueType};
/// Derive macros: an event type's input schema, a row type's features.
pub use lockstep_derive::{Event, Features};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::fmt;

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        Emit, Error, Event, Features, Manifest, ManifestBuilder, Timestamp, Transform, Value,
        ValueType,
    };
    pub use serde::{Deserialize, Serialize};
}

/// A feature transform: what it declares and how it turns events into rows.
///
/// The host calls [`Transform::apply`] once per event, per entity, in ascending
/// `(event_time, event_id)` order with duplicates removed, carrying `state` from one
/// event of an entity to the next. Implementations must be deterministic: no clock,
/// randomness, environment or I/O (the Wasm sandbox refuses them anyway), and no
/// iteration over hash maps with random seeds (use `BTreeMap`).
pub trait Transform: 'static {
    /// One input event, decoded from the columns of the input schema by field name.
    /// Borrowing (`&'a str`) avoids a copy per string.
    type Event<'a>: Deserialize<'a>;
    /// One output row: a struct whose fields are the manifest's features, in order.
    type Row: Serialize;
    /// Per-entity state, persisted by the host between calls. `()` for stateless plugins.
    type State: Serialize + DeserializeOwned + Default;

    /// Identity, input schema and features. Must not depend on anything but constants.
    fn manifest() -> Manifest;

    /// Applies one event to an entity's state, emitting zero or more rows.
    fn apply(
        state: &mut Self::State,
        event: Self::Event<'_>,
        out: &mut Emit<'_, Self::Row>,
    ) -> Result<(), Error>;

    /// The exact feature values at instant `as_of`, given the state after all events
    /// up to then. `None` means "no value" (all features null). Only called when the
    /// manifest declares `supports_read`.
    fn read(_state: &Self::State, _as_of: Timestamp) -> Option<Self::Row> {
        None
    }

    /// Runs at a wake-up the plugin asked for with [`Emit::wake_at`]: after every event
    /// of the entity at or before `at`, before any later one (the same in every host).
    /// Rows it emits are stamped `at`. By default it emits [`Transform::read`] at `at`
    /// (nothing when that is `None`); override it to also update the state (drop what
    /// left a window) or to ask for the next wake-up.
    fn wake(
        state: &mut Self::State,
        at: Timestamp,
        out: &mut Emit<'_, Self::Row>,
    ) -> Result<(), Error> {
        match Self::read(state, at) {
            Some(row) => out.emit(row),
            None => Ok(()),
        }
    }
}

/// Microseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// One second, in the unit of a timestamp.
    pub const SECOND: i64 = 1_000_000;
    /// One minute.
    pub const MINUTE: i64 = 60 * Self::SECOND;
    /// One hour.
    pub const HOUR: i64 = 60 * Self::MINUTE;
    /// One day.
    pub const DAY: i64 = 24 * Self::HOUR;

    /// The instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(Self::SECOND))
    }

    /// Microseconds since the epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded towards negative infinity).
    pub const fn secs(self) -> i64 {
        self.0.div_euclid(Self::SECOND)
    }

    /// `self - other` in microseconds, saturating instead of overflowing.
    pub const fn since(self, other: Timestamp) -> i64 {
        self.0.saturating_sub(other.0)
    }
}

/// Why a transform failed. The host reports the message with the event it was
/// processing and the plugin's name; nothing is written for that call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

/// Exports a [`Transform`] as the plugin's WebAssembly component interface.
///
/// Expands to nothing on native targets, so the same crate builds as a normal library
/// for unit tests and benchmarks.
#[macro_export]
macro_rules! export {
    ($transform:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static DRIVER: $crate::guest::DriverCell<$transform> = ::std::sync::OnceLock::new();
            struct LockstepComponent;
            impl $crate::guest::Guest for LockstepComponent {
                fn manifest() -> $crate::guest::WitManifest {
                    $crate::guest::manifest::<$transform>()
                }
                fn apply(
                    request: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::guest::WitError> {
                    $crate::guest::apply::<$transform>(&DRIVER, &request)
                }
                fn read(
                    request: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::guest::WitError> {
                    $crate::guest::read::<$transform>(&DRIVER, &request)
                }
            }
    $crate::guest::export_component!(LockstepComponent with_types_in $crate::guest);
        };
    };
}
