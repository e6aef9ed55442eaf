//! The data model and byte layout shared by Lockstep plugins and hosts.
//!
//! Everything a plugin and a host must agree on, apart from the WIT world itself, lives
//! here: the value types, the [`Manifest`], and the columnar layout of the `apply` and
//! `read` payloads. Guest (`lockstep-sdk`) and host (`lockstep-runtime`) both compile
//! this one crate, so the two sides cannot drift apart.
//!
//! # Batch layout
//!
//! All integers are little-endian. A *column* of `n` values is:
//!
//! ```text
//! u8   type tag       0 int64, 1 float64, 2 boolean, 3 string, 4 timestamp, 5 binary
//! u8   has_validity   0 or 1
//! [ceil(n/8)] bytes   validity bitmap, LSB first, 1 = present   (only if has_validity)
//! values:
//!   int64, float64, timestamp   n × 8 bytes
//!   boolean                     n × 1 byte (0 or 1)
//!   string, binary              (n + 1) × u32 offsets, then offsets[n] bytes of data
//! ```
//!
//! This mirrors Arrow's physical layout, so a host converts Arrow arrays with a copy per
//! buffer, and a guest reads values in place without allocating.
//!
//! An **apply request** (`LSA2`) carries entities, each with optional prior state and a
//! contiguous run of events: `n_entities, n_events, n_columns`, one u32 event count per
//! entity, the states as a binary column, the instant up to which each entity's
//! wake-ups are due after its events (a nullable timestamp column; see [`timers`]),
//! then the input columns in manifest order.
//!
//! An **apply response** (`LSR2`) carries, per entity, the new state and a contiguous
//! run of rows: `n_entities, n_rows, n_features`, one u32 row count per entity, the states
//! as a binary column, the rows' event times (timestamp column), the index of the event
//! that produced each row (u32 each; [`timers::WAKE_ROW`] for a wake-up's row), then
//! the feature columns in manifest order.
//!
//! A **read request** (`LSQ1`) is `n`, a binary column of states and a timestamp column
//! of instants; a **read response** (`LSP1`) is `n, n_features` and the feature columns.

mod builder;
mod column;
mod error;
mod manifest;
mod messages;
pub mod timers;
mod value;

pub use builder::ManifestBuilder;
pub use column::{Column, ColumnBuilder, ColumnView};
pub use error::AbiError;
pub use manifest::{
    Feature, Field, Kind, Manifest, ManifestError, RESERVED_COLUMNS, is_identifier,
};
pub use messages::{
    ApplyRequest, ApplyRequestView, ApplyResponse, ApplyResponseWriter, ReadRequest,
    ReadRequestView, ReadResponse, ReadResponseWriter,
};
pub use value::{Value, ValueType};

/// Prefix every SDK-encoded state starts with: the plugin's state version, u32 LE.
///
/// Hosts use it to refuse state written by another version of a plugin before the
/// plugin ever sees it.
pub fn state_version(state: &[u8]) -> Option<u32> {
    let head: [u8; 4] = state.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(head))
}
