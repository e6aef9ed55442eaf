use crate::{Value, ValueType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// One field of a plugin's input schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Column name in the source data.
    pub name: String,
    /// Type the value is decoded to.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Whether the value may be null (missing).
    pub nullable: bool,
    /// What the field means.
    #[serde(default)]
    pub description: String,
}

/// One output feature of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Feature name, unique within the group.
    pub name: String,
    /// Type of the feature's values.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// What the feature means.
    #[serde(default)]
    pub description: String,
    /// Value served when serving degrades; `Null` or a value of type `ty`.
    pub default_value: Value,
}

/// Whether a plugin keeps per-entity state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Map / filter; no state.
    Stateless,
    /// Windows, counters, last-N; state per entity.
    KeyedStateful,
}

/// What a plugin declares about itself: its identity, input schema and features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Feature-group name.
    pub name: String,
    /// Semantic version of the transform.
    pub version: String,
    /// What the group computes.
    #[serde(default)]
    pub description: String,
    /// Input schema, in apply-batch column order.
    pub input: Vec<Field>,
    /// Input field that identifies the entity.
    pub entity_key: String,
    /// Input field (timestamp) that orders events.
    pub event_time: String,
    /// Input field that identifies an event, if any.
    pub event_id: Option<String>,
    /// Output features, in apply-response column order.
    pub features: Vec<Feature>,
    /// Stateless or keyed-stateful.
    pub kind: Kind,
    /// Version of the state encoding.
    pub state_version: u32,
    /// Whether `read(state, as_of)` is implemented.
    pub supports_read: bool,
    /// Whether the plugin asks to be woken at later event times (timers; see
    /// [`crate::timers`]), and the grid its wake-up times are rounded up to, in µs:
    /// `Some(60_000_000)` wakes an entity at most once a minute, `Some(0)` at the exact
    /// instants asked for. `None`: no timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_resolution: Option<u64>,
}

/// A manifest that breaks one of the rules in [`Manifest::validate`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid manifest for `{group}`: {problem}")]
pub struct ManifestError {
    /// The group name as declared.
    pub group: String,
    /// What is wrong.
    pub problem: String,
}

impl Manifest {
    /// A builder of a stateless group `name` at `version`; see [`crate::ManifestBuilder`].
    pub fn builder(name: &str, version: &str) -> crate::ManifestBuilder {
        crate::ManifestBuilder::new(name, version)
    }

    /// Checks the rules every host relies on: names well-formed and unique, the key,
    /// time and id fields present with usable types, defaults typed like their features,
    /// and a semantic version.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let fail = |problem: String| {
            Err(ManifestError {
                group: self.name.clone(),
                problem,
            })
        };
        if !is_identifier(&self.name) {
            return fail(format!(
                "group name `{}` must be 1-64 chars of a-z, 0-9 and _ starting with a letter",
                self.name
            ));
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            return fail(format!(
                "version `{}` is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD]): {e}",
                self.version
            ));
        }
        if self.input.is_empty() {
            return fail("input schema is empty".into());
        }
        let mut seen = BTreeSet::new();
        for field in &self.input {
            if field.name.is_empty() || !seen.insert(field.name.as_str()) {
                return fail(format!("input field `{}` is empty or repeated", field.name));
            }
        }
        let field = |name: &str| self.input.iter().find(|f| f.name == name);
        match field(&self.entity_key) {
            None => {
                return fail(format!(
                    "entity key `{}` is not an input field",
                    self.entity_key
                ));
            }
            Some(f) if !matches!(f.ty, ValueType::String | ValueType::Int64) => {
                return fail(format!(
                    "entity key `{}` must be string or int64, not {}",
                    f.name, f.ty
                ));
            }
            Some(f) if f.nullable => {
                return fail(format!("entity key `{}` must not be nullable", f.name));
            }
            Some(_) => {}
        }
        match field(&self.event_time) {
            None => {
                return fail(format!(
                    "event time `{}` is not an input field",
                    self.event_time
                ));
            }
            Some(f) if f.ty != ValueType::Timestamp => {
                return fail(format!(
                    "event time `{}` must be a timestamp, not {}",
                    f.name, f.ty
                ));
            }
            Some(f) if f.nullable => {
                return fail(format!("event time `{}` must not be nullable", f.name));
            }
            Some(_) => {}
        }
        if let Some(id) = &self.event_id {
            match field(id) {
                None => return fail(format!("event id `{id}` is not an input field")),
                Some(f) if f.ty == ValueType::Float64 => {
                    return fail(format!("event id `{id}` must not be a float"));
                }
                Some(_) => {}
            }
        }
        if self.features.is_empty() {
            return fail("declares no features".into());
        }
        let mut seen = BTreeSet::new();
        for feature in &self.features {
            if !is_identifier(&feature.name) || !seen.insert(feature.name.as_str()) {
                return fail(format!(
                    "feature `{}` is not a lowercase identifier or is repeated",
                    feature.name
                ));
            }
            if RESERVED_COLUMNS.contains(&feature.name.as_str()) || feature.name == self.entity_key
            {
                return fail(format!(
                    "feature `{}` clashes with a column every store adds",
                    feature.name
                ));
            }
            if let Some(ty) = feature.default_value.value_type()
                && ty != feature.ty
            {
                return fail(format!(
                    "default of feature `{}` is {ty}, expected {}",
                    feature.name, feature.ty
                ));
            }
        }
        if self.kind == Kind::Stateless && self.supports_read {
            return fail("a stateless plugin has no state to read".into());
        }
        if self.kind == Kind::Stateless && self.timer_resolution.is_some() {
            return fail("a stateless plugin has no state to keep timers in".into());
        }
        if self
            .timer_resolution
            .is_some_and(|r| r > crate::timers::MAX_RESOLUTION)
        {
            return fail(format!(
                "timer resolution {} µs is over a day",
                self.timer_resolution.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Position of the named input field.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.input.iter().position(|f| f.name == name)
    }

    /// Position of the named feature.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// `name@version`, how groups are referred to in messages.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Columns the stores add to every row; features may not use these names.
pub const RESERVED_COLUMNS: &[&str] = &[
    "event_time",
    "write_time",
    "api_invocation_time",
    "is_deleted",
    "plugin_hash",
    "plugin_version",
];

/// Whether `s` may name a feature group or a feature: 1-64 characters of a-z, 0-9 and
/// `_`, starting with a letter (what `Manifest::validate` requires).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::builder("g", "1.0.0")
            .keyed_stateful(1)
            .field("k", ValueType::String, "")
            .field("t", ValueType::Timestamp, "")
            .optional_field("x", ValueType::Float64, "")
            .entity_key("k")
            .event_time("t")
            .feature("f", ValueType::Int64, "", Value::Int64(0))
            .build()
    }

    #[test]
    fn accepts_a_well_formed_manifest() {
        assert_eq!(sample().validate(), Ok(()));
    }

    #[test]
    fn rejects_each_broken_rule_with_a_named_problem() {
        type Breaker = fn(&mut Manifest);
        let cases: Vec<(Breaker, &str)> = vec![
            (|m| m.name = "Bad-Name".into(), "group name"),
            (|m| m.version = "1.0".into(), "version"),
            (|m| m.version = "01.0.0".into(), "version"),
            (|m| m.version = "1.0.0-".into(), "version"),
            (|m| m.entity_key = "nope".into(), "entity key `nope`"),
            (|m| m.event_time = "x".into(), "must be a timestamp"),
            (|m| m.input[1].nullable = true, "must not be nullable"),
            (|m| m.event_id = Some("x".into()), "must not be a float"),
            (
                |m| m.features[0].default_value = Value::String("a".into()),
                "default of feature `f`",
            ),
            (|m| m.features.push(m.features[0].clone()), "repeated"),
            (|m| m.input.push(m.input[0].clone()), "repeated"),
            (|m| m.features.clear(), "no features"),
            (|m| m.features[0].name = "event_time".into(), "clashes"),
        ];
        for (breaker, expected) in cases {
            let mut m = sample();
            breaker(&mut m);
            let err = m.validate().expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "`{err}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn pre_release_and_build_versions_are_semantic_versions() {
        for version in [
            "1.0.0-rc1",
            "1.0.0-rc.1",
            "2.3.4+build.7",
            "0.1.0-alpha+001",
        ] {
            let mut m = sample();
            m.version = version.into();
            m.validate().unwrap_or_else(|e| panic!("{version}: {e}"));
        }
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = sample();
        let json = serde_json::to_string(&m).expect("serialise");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(m, back);
    }
}
