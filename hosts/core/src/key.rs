//! Entity keys and the per-entity maps every host keeps: what the executor, the stream
//! processor and the stores agree on, without running a plugin.

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_schema::DataType;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// An entity key: the value of the manifest's entity-key field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKey {
    /// A string key.
    Str(String),
    /// An int64 key.
    Int(i64),
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityKey::Str(s) => f.write_str(s),
            EntityKey::Int(i) => write!(f, "{i}"),
        }
    }
}

impl EntityKey {
    /// Whether this key equals the value at `row` of a Utf8 or Int64 column, without
    /// allocating.
    pub fn equals(&self, column: &dyn Array, row: usize) -> bool {
        match (self, column.data_type()) {
            (EntityKey::Str(s), DataType::Utf8) => column.as_string::<i32>().value(row) == s,
            (EntityKey::Int(i), DataType::Int64) => {
                column.as_primitive::<Int64Type>().value(row) == *i
            }
            _ => false,
        }
    }

    /// The key at `row` of a Utf8 or Int64 column.
    pub fn from_array(column: &dyn Array, row: usize) -> Option<Self> {
        match column.data_type() {
            DataType::Utf8 => Some(EntityKey::Str(
                column.as_string::<i32>().value(row).to_owned(),
            )),
            DataType::Int64 => Some(EntityKey::Int(
                column.as_primitive::<Int64Type>().value(row),
            )),
            _ => None,
        }
    }
}

/// The hasher of per-entity maps and sets: fast, randomly seeded per map, so no code
/// can come to depend on an iteration order.
pub type KeyHasher = foldhash::fast::RandomState;

/// Per-entity plugin state, as the plugin encoded it.
pub type StateMap = HashMap<EntityKey, Vec<u8>, KeyHasher>;

/// A set of entity keys.
pub type KeySet = HashSet<EntityKey, KeyHasher>;
