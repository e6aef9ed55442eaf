//! What every Lockstep host shares; see the crate README for the list and the rules.

pub mod compare;
pub mod conform;
pub mod convert;
pub mod decode;
pub mod erasure;
mod error;
pub mod key;
pub mod order;
pub mod rows;
pub mod schema;
pub mod window;

pub use erasure::Erasures;
pub use error::{CoreError, DecodeError, ErrorChain};
pub use key::{EntityKey, StateMap};
pub use window::TimeWindow;

/// Now, as UTC microseconds since the Unix epoch: the unit of every event time. A
/// clock before the epoch reads 0; one past what an `i64` holds reads `i64::MAX`.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
