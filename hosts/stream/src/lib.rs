//! The stream host: applies a plugin to records as they arrive, with the result the
//! batch host computes for the same events at rest.
//!
//! ```text
//! records (arrival order) ──shared decoder──▶ events ──▶ late? ──yes──▶ late log
//!                    │ bad                                 │ no
//!                    ▼                                     ▼
//!              dead letters                 reorder buffer (until the watermark passes)
//!                                                          ▼
//!                          lockstep-core executor: per entity, (event_time, event_id), once
//!                                                          ▼
//!                                                   rows + new states
//! ```
//!
//! This crate owns the ordering semantics of DESIGN §4 for streams ([`StreamProcessor`]).
//! It does no I/O: sources (Kinesis, in-process), stores and logs plug in around it.

mod processor;
pub mod route;
pub mod shards;

pub use processor::{
    Decoded, Pending, SEQUENCE_COLUMN, SHARD_COLUMN, ShardState, Step, StreamConfig,
    StreamProcessor, StreamStats, buffer_schema, decode_signature,
};
pub use route::{Route, Router, Routing};
pub use shards::{Checkpoint, SavedShard, ShardSpec, ShardedProcessor, partition_hash};

use thiserror::Error;

/// One raw record as a source delivers it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The shard (or partition) it came from.
    pub shard: &'a str,
    /// Its position in the shard (a Kinesis sequence number, a line number…).
    pub sequence: &'a str,
    /// The payload: one JSON object in the plugin's input schema.
    pub data: &'a [u8],
    /// The key the producer sharded it by, when the source has one: it must be the
    /// entity key, or the entity's events could be spread over shards.
    pub partition_key: Option<&'a str>,
}

/// A record that could not be decoded: kept with where it came from and why.
// Serialized as its dead-letter log line, fields in this order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Shard of the record.
    pub shard: String,
    /// Sequence number of the record.
    pub sequence: String,
    /// Why it was refused, naming the field.
    pub reason: String,
    /// The payload (lossy UTF-8).
    pub record: String,
}

impl DeadLetter {
    pub(crate) fn of(record: &Record<'_>, reason: String) -> Self {
        DeadLetter {
            shard: record.shard.to_owned(),
            sequence: record.sequence.to_owned(),
            reason,
            record: String::from_utf8_lossy(record.data).trim_end().to_owned(),
        }
    }

    /// As one JSON object, for a dead-letter log.
    pub fn to_json(&self) -> serde_json::Value {
        // Strings only: cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Appends its line of the dead-letter log ([`Self::to_json`]'s text and a newline)
    /// to `out`, building no JSON tree: a round may hold many.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Writing strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
}

/// An event that arrived behind the watermark and was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEvent {
    /// Shard of the record.
    pub shard: String,
    /// Sequence number of the record.
    pub sequence: String,
    /// Its event time (UTC µs).
    pub event_time: i64,
    /// The watermark when it arrived (UTC µs).
    pub watermark: i64,
    /// The payload.
    pub record: String,
}

impl LateEvent {
    /// As one JSON object, for the late-event log.
    pub fn to_json(&self) -> serde_json::Value {
        // Strings and integers only: cannot fail.
        serde_json::to_value(self.line()).unwrap_or_default()
    }

    /// Its log line's fields, in order.
    fn line(&self) -> LateLine<'_> {
        LateLine {
            shard: &self.shard,
            sequence: &self.sequence,
            event_time: self.event_time,
            watermark: self.watermark,
            behind_us: self.watermark - self.event_time,
            record: &self.record,
        }
    }

    /// Appends its line of the late-event log ([`Self::to_json`]'s text and a newline)
    /// to `out`, building no JSON tree: a round catching up may hold hundreds of
    /// thousands, and building and freeing their trees was a tenth of a shared stream
    /// service's CPU.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Writing strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &self.line());
        out.push(b'\n');
    }
}

/// A late event's log line.
#[derive(serde::Serialize)]
struct LateLine<'a> {
    shard: &'a str,
    sequence: &'a str,
    event_time: i64,
    watermark: i64,
    behind_us: i64,
    record: &'a str,
}

/// Why the stream host failed.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Decoding or ordering the events failed.
    #[error(transparent)]
    Core(#[from] lockstep_core::CoreError),
    /// Running the plugin failed.
    #[error(transparent)]
    Plugin(#[from] lockstep_executor::ExecError),
    /// An Arrow operation failed.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The manifest does not fit the stream host.
    #[error("{0}")]
    Manifest(String),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_the_json_objects_text() {
        let hostile = "q\"uote \\ back\nline \u{1} ctl é 😀 </script>";
        let dead = DeadLetter {
            shard: "shardId-000000000001".into(),
            sequence: "4959".into(),
            reason: format!("field `x`: {hostile}"),
            record: hostile.into(),
        };
        let late = LateEvent {
            shard: hostile.into(),
            sequence: "1".into(),
            event_time: -5,
            watermark: i64::MAX / 2,
            record: "{\"card_id\": \"c1\"}".into(),
        };
        let mut out = Vec::new();
        dead.write_line(&mut out);
        late.write_line(&mut out);
        let expected = format!("{}\n{}\n", dead.to_json(), late.to_json());
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(text, expected);
        // The logs' field order, which readers of the files rely on.
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(
                r#"{"shard":"shardId-000000000001","sequence":"4959","reason":"field `x`: "#
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(&format!(
                r#","sequence":"1","event_time":-5,"watermark":{w},"behind_us":{b},"record":"{{\"card_id\": \"c1\"}}"}}"#,
                w = i64::MAX / 2,
                b = i64::MAX / 2 + 5
            )),
            "{}",
            lines[1]
        );
    }
}
