//! The client side of the serving API (`lockstep serve`).
//!
//! [`api`] holds the wire types of `POST /v1/features`; the server uses the same types,
//! so they cannot drift. [`Client`] (feature `http`, on by default) calls a server:
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockstep_client::ClientError> {
//! use lockstep_client::{Client, api::FeatureRequest};
//! let client = Client::new("http://127.0.0.1:6566")?;
//! let answer = client
//!     .get_features(&FeatureRequest::new("txn_velocity", ["card-1", "card-2"]))
//!     .await?;
//! for entity in &answer.entities {
//!     println!("{} from {:?}: {:?}", entity.entity, entity.source, entity.values);
//! }
//! # Ok(()) }
//! ```
//!
//! This crate knows the HTTP API only: never Redis, stores or plugins.

pub mod api;

#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use http::{Client, ClientError};
