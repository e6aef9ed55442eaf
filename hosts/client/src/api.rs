//! The wire types of `POST /v1/features` and `POST /v1/features/batch`.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_json::value::RawValue;

/// An entity key as a request carries it: text, or an integer for groups keyed by one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntityId {
    /// An integer key.
    Int(i64),
    /// A text key (an integer key may be sent as its decimal text too).
    Text(String),
}

impl From<&str> for EntityId {
    fn from(s: &str) -> Self {
        EntityId::Text(s.to_owned())
    }
}

impl From<String> for EntityId {
    fn from(s: String) -> Self {
        EntityId::Text(s)
    }
}

impl From<i64> for EntityId {
    fn from(i: i64) -> Self {
        EntityId::Int(i)
    }
}

/// Features of some entities of one feature group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureRequest {
    /// The feature group.
    pub group: String,
    /// Its version (`MAJOR.MINOR.PATCH`); the highest one served when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The entities, answered in this order (repeats are answered each time).
    pub entities: Vec<EntityId>,
    /// The features, answered in this order; every feature of the group when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl FeatureRequest {
    /// Every feature of `entities` in the highest served version of `group`.
    pub fn new<E: Into<EntityId>>(group: &str, entities: impl IntoIterator<Item = E>) -> Self {
        FeatureRequest {
            group: group.to_owned(),
            version: None,
            entities: entities.into_iter().map(Into::into).collect(),
            features: Vec::new(),
        }
    }

    /// Only these features, in this order.
    pub fn features<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.features = names.into_iter().map(Into::into).collect();
        self
    }

    /// This version of the group.
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(version.to_owned());
        self
    }
}

/// Where an entity's values came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The Redis cache.
    Cache,
    /// The durable online store (a cache miss, or no cache).
    Store,
    /// The entity has no record: the group's default values, not degraded.
    Missing,
    /// The record could not be read in time (timeout, outage, open circuit): the
    /// default-feature snapshot, and the response is degraded.
    Default,
}

/// One entity's answer. `V` is how a value is held: parsed JSON for clients; the
/// server passes the stored JSON text through untouched (`Box<RawValue>`), the same on
/// the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityFeatures<V = Json> {
    /// The entity key, as text.
    pub entity: String,
    /// Where the values came from.
    pub source: Source,
    /// The component that computed the values (`None` for defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_hash: Option<String>,
    /// Event time of the row served, RFC 3339 UTC (`None` for defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// The values, in the response's feature order: exact JSON (floats that read back
    /// to their bits, `"NaN"`/`"Infinity"` for non-finite ones, timestamps in RFC 3339).
    pub values: Vec<V>,
}

/// The answer to a [`FeatureRequest`] (`V`: see [`EntityFeatures`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureResponse<V = Json> {
    /// The feature group.
    pub group: String,
    /// The version served.
    pub version: String,
    /// Whether any entity got the default snapshot because its record could not be
    /// read in time.
    pub degraded: bool,
    /// The features, in value order.
    pub features: Vec<String>,
    /// One per requested entity, in request order.
    pub entities: Vec<EntityFeatures<V>>,
}

impl FeatureResponse<Box<RawValue>> {
    /// The same answer with its values parsed.
    pub fn parsed(&self) -> FeatureResponse {
        FeatureResponse {
            group: self.group.clone(),
            version: self.version.clone(),
            degraded: self.degraded,
            features: self.features.clone(),
            entities: self
                .entities
                .iter()
                .map(|e| EntityFeatures {
                    entity: e.entity.clone(),
                    source: e.source,
                    plugin_hash: e.plugin_hash.clone(),
                    event_time: e.event_time.clone(),
                    // Raw values are valid JSON by construction.
                    values: e
                        .values
                        .iter()
                        .map(|v| serde_json::from_str(v.get()).unwrap_or(Json::Null))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Features of several groups in one call (`POST /v1/features/batch`), Feast's
/// feature-service style: each request is answered as `POST /v1/features` would
/// answer it alone, and all are read at once, so the call takes about as long as its
/// slowest group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// One per group (at most [`MAX_BATCH`]).
    pub requests: Vec<FeatureRequest>,
}

/// The most requests a [`BatchRequest`] may hold.
pub const MAX_BATCH: usize = 32;

/// The answer to a [`BatchRequest`] (`V`: see [`EntityFeatures`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse<V = Json> {
    /// One per request, in request order.
    pub answers: Vec<FeatureResponse<V>>,
    /// Each answer's id in the served-feature log, in the same order.
    pub request_ids: Vec<String>,
}

/// An error the server answered with (4xx/5xx), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
}
