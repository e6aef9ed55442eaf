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

pub use erasure::Erasures;
pub use error::{CoreError, DecodeError, ErrorChain};
pub use key::{EntityKey, StateMap};
