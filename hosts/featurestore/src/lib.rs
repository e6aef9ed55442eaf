//! The SageMaker Feature Store runtime API, on both sides of the wire.
//!
//! - [`SageMakerStore`]: an [`OnlineStore`](lockstep_online::OnlineStore) backend
//!   that writes and reads through `aws-sdk-sagemakerfeaturestoreruntime` — AWS itself,
//!   or any endpoint speaking the protocol.
//! - [`local`]: `featurestore-local`, the embedded online store served with the same
//!   wire protocol (PutRecord, GetRecord, BatchGetRecord, DeleteRecord), so the AWS SDKs
//!   and boto3 talk to it unchanged.
//!
//! The protocol carries every value as text (`ValueAsString`). A group's record
//! identifier and event-time features are part of its definition, not of each record.
//! Lockstep adds one feature to every record it writes: `lockstep_plugin_hash`, the
//! component that computed it, so lineage survives the trip.
//!
//! This crate owns the mapping between Lockstep rows and SageMaker records. It never
//! decides which row wins (the online store's rule: the latest event time).

mod client;
pub mod definition;
pub mod local;
pub mod wire;

pub use client::{SageMakerOptions, SageMakerStore};
