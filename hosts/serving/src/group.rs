//! [`ServedGroup`]: what serving knows of a feature-group version.

use crate::ServeError;
use lockstep_abi::{Manifest, Value, ValueType};
use lockstep_client::api::EntityId;
use lockstep_core::rows::{format_float, format_timestamp};
use lockstep_online::GroupRef;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use std::collections::HashMap;

/// A feature-group version served: its identity, features and default snapshot.
#[derive(Debug, Clone)]
pub struct ServedGroup {
    /// Name, version, plugin hash and entity key.
    pub group: GroupRef,
    /// The entity key's type (`int64` or `string`).
    pub key_type: ValueType,
    /// Feature names, in manifest order.
    pub features: Vec<String>,
    types: Vec<ValueType>,
    /// The value served when a record cannot be read in time (or does not exist), as
    /// JSON text ready to send.
    defaults: Vec<Box<RawValue>>,
    index: HashMap<String, usize>,
}

/// A default value as JSON, in the online rows' exact format.
fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int64(i) => Json::from(*i),
        Value::Float64(x) => format_float(*x),
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Timestamp(t) => format_timestamp(*t),
    }
}

fn raw(v: &Json) -> Box<RawValue> {
    // Serialising a JSON value cannot fail.
    serde_json::value::to_raw_value(v).unwrap_or_default()
}

/// Whether `v` is a value of type `ty` in the online rows' JSON format.
fn fits(v: &Json, ty: ValueType) -> bool {
    match (v, ty) {
        (Json::Null, _) => true,
        (Json::Number(n), ValueType::Int64) => n.is_i64(),
        (Json::Number(_), ValueType::Float64) => true,
        (Json::String(s), ValueType::Float64) => {
            matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
        }
        (Json::Bool(_), ValueType::Boolean) => true,
        (Json::String(_), ValueType::String) => true,
        (Json::String(s), ValueType::Timestamp) => chrono_like_rfc3339(s),
        _ => false,
    }
}

/// A cheap shape check for `YYYY-MM-DDTHH:MM:SS…Z`.
fn chrono_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && s.ends_with('Z')
}

impl ServedGroup {
    /// The group version `manifest` declares, computed by the component `plugin_hash`,
    /// with the manifest's defaults.
    pub fn new(manifest: &Manifest, plugin_hash: &str) -> Self {
        let key_type = manifest
            .input
            .iter()
            .find(|f| f.name == manifest.entity_key)
            .map_or(ValueType::String, |f| f.ty);
        ServedGroup {
            group: GroupRef::of(manifest, plugin_hash),
            key_type,
            features: manifest.features.iter().map(|f| f.name.clone()).collect(),
            types: manifest.features.iter().map(|f| f.ty).collect(),
            defaults: manifest
                .features
                .iter()
                .map(|f| raw(&value_json(&f.default_value)))
                .collect(),
            index: manifest
                .features
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), i))
                .collect(),
        }
    }

    /// Replaces some defaults with a snapshot's (`feature → value`, e.g. population
    /// medians computed offline). Every name must be a feature and every value of its
    /// type.
    pub fn set_defaults(&mut self, snapshot: &Map<String, Json>) -> Result<(), ServeError> {
        for (name, value) in snapshot {
            let Some(&i) = self.index.get(name) else {
                return Err(ServeError::Snapshot(format!(
                    "{} has no feature `{name}` (features: {})",
                    self.group.id(),
                    self.features.join(", ")
                )));
            };
            if !fits(value, self.types[i]) {
                return Err(ServeError::Snapshot(format!(
                    "{}: default {value} for `{name}` is not a {}",
                    self.group.id(),
                    self.types[i].name()
                )));
            }
            self.defaults[i] = raw(value);
        }
        Ok(())
    }

    /// The feature positions `names` ask for (all when empty).
    pub fn select(&self, names: &[String]) -> Result<Vec<usize>, ServeError> {
        if names.is_empty() {
            return Ok((0..self.features.len()).collect());
        }
        names
            .iter()
            .map(|n| {
                self.index
                    .get(n)
                    .copied()
                    .ok_or_else(|| ServeError::UnknownFeature {
                        group: self.group.id(),
                        feature: n.clone(),
                    })
            })
            .collect()
    }

    /// The default of feature `i`, as JSON text.
    pub fn default_value(&self, i: usize) -> &RawValue {
        &self.defaults[i]
    }

    /// An entity id as the stores key it: integers in decimal; text keys as given.
    pub fn entity_key(&self, id: &EntityId) -> Result<String, ServeError> {
        let bad = |why: &str| ServeError::BadEntity {
            group: self.group.id(),
            entity: match id {
                EntityId::Int(i) => i.to_string(),
                EntityId::Text(s) => s.chars().take(64).collect(),
            },
            why: why.to_owned(),
        };
        match (self.key_type, id) {
            (ValueType::Int64, EntityId::Int(i)) => Ok(i.to_string()),
            (ValueType::Int64, EntityId::Text(s)) => s
                .parse::<i64>()
                .map(|i| i.to_string())
                .map_err(|_| bad("the group's entities are keyed by integers")),
            (_, EntityId::Int(i)) => Ok(i.to_string()),
            (_, EntityId::Text(s)) if s.is_empty() => Err(bad("an empty key")),
            (_, EntityId::Text(s)) if s.len() > 1024 => Err(bad("a key longer than 1024 bytes")),
            (_, EntityId::Text(s)) => Ok(s.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> ServedGroup {
        let manifest = Manifest::builder("g", "1.0.0")
            .field("id", ValueType::Int64, "")
            .field("ts", ValueType::Timestamp, "")
            .entity_key("id")
            .event_time("ts")
            .feature("n", ValueType::Int64, "", Value::Int64(0))
            .feature("x", ValueType::Float64, "", Value::Float64(f64::NAN))
            .build();
        ServedGroup::new(&manifest, "h")
    }

    #[test]
    fn defaults_come_from_the_manifest_and_a_snapshot_overrides_them_by_type() {
        let mut g = group();
        assert_eq!(g.default_value(0).get(), "0");
        assert_eq!(g.default_value(1).get(), r#""NaN""#);
        let snapshot: Map<String, Json> = serde_json::from_str(r#"{"x": 2.5, "n": null}"#).unwrap();
        g.set_defaults(&snapshot).unwrap();
        assert_eq!(g.default_value(1).get(), "2.5");
        assert_eq!(g.default_value(0).get(), "null");
        for bad in [
            r#"{"n": 1.5}"#,
            r#"{"n": "7"}"#,
            r#"{"nope": 1}"#,
            r#"{"x": "fast"}"#,
        ] {
            let snapshot: Map<String, Json> = serde_json::from_str(bad).unwrap();
            let err = group().set_defaults(&snapshot).unwrap_err().to_string();
            assert!(err.contains("g@1.0.0"), "{bad}: {err}");
        }
    }

    #[test]
    fn integer_keys_accept_numbers_and_decimal_text_only() {
        let g = group();
        assert_eq!(g.entity_key(&EntityId::Int(-7)).unwrap(), "-7");
        assert_eq!(g.entity_key(&EntityId::Text("0042".into())).unwrap(), "42");
        let err = g.entity_key(&EntityId::Text("abc".into())).unwrap_err();
        assert!(err.to_string().contains("integers"), "{err}");
    }

    #[test]
    fn features_are_selected_in_the_order_asked_and_unknown_ones_named() {
        let g = group();
        assert_eq!(g.select(&[]).unwrap(), vec![0, 1]);
        assert_eq!(g.select(&["x".into(), "n".into()]).unwrap(), vec![1, 0]);
        let err = g.select(&["zzz".into()]).unwrap_err().to_string();
        assert!(err.contains("zzz") && err.contains("g@1.0.0"), "{err}");
    }
}
