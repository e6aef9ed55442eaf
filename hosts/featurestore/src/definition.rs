//! Feature group definitions as `featurestore-local` holds them, and the service's
//! limits on names and values (AWS's API reference: CreateFeatureGroup, PutRecord).

use serde_json::Value as Json;
use std::collections::BTreeMap;

/// Feature names the service reserves for its offline store's own columns:
/// CreateFeatureGroup refuses them.
pub const RESERVED_FEATURE_NAMES: [&str; 3] = ["is_deleted", "write_time", "api_invocation_time"];

/// The longest `ValueAsString` and record identifier the service accepts.
pub const MAX_VALUE_CHARS: usize = 358_400;

/// The longest feature name and feature group name.
pub const MAX_NAME_CHARS: usize = 64;

/// The longest feature group name or ARN a request may carry.
pub const MAX_NAME_OR_ARN_CHARS: usize = 150;

/// A feature's type (`FeatureType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureType {
    /// A 64-bit integer.
    Integral,
    /// A 64-bit float.
    Fractional,
    /// Text.
    String,
}

impl FeatureType {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "Integral" => Ok(FeatureType::Integral),
            "Fractional" => Ok(FeatureType::Fractional),
            "String" => Ok(FeatureType::String),
            other => Err(format!(
                "FeatureType `{other}` is not one of Integral, Fractional, String"
            )),
        }
    }

    /// Whether `text` is a value of this type, as PutRecord checks it.
    pub fn accepts(self, text: &str) -> bool {
        match self {
            FeatureType::Integral => text.parse::<i64>().is_ok(),
            FeatureType::Fractional => text.parse::<f64>().is_ok_and(f64::is_finite),
            FeatureType::String => true,
        }
    }
}

/// What a feature group is, as far as the runtime API needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDefinition {
    /// The record identifier feature.
    pub record_identifier: String,
    /// The event-time feature.
    pub event_time: String,
    /// Every feature and its type. Empty for a group defined by name only
    /// (`--group NAME=ID`): then any feature is accepted unchecked.
    pub features: BTreeMap<String, FeatureType>,
    /// The group's default time to live (`OnlineStoreConfig.TtlDuration`), µs.
    pub ttl_micros: Option<i64>,
}

impl GroupDefinition {
    /// A group known by its record identifier and event-time features only.
    pub fn new(record_identifier: &str, event_time: &str) -> Self {
        GroupDefinition {
            record_identifier: record_identifier.to_owned(),
            event_time: event_time.to_owned(),
            features: BTreeMap::new(),
            ttl_micros: None,
        }
    }

    /// Checks one feature of a record against the definition.
    pub fn check_feature(&self, name: &str, value: &str) -> Result<(), String> {
        check_name("FeatureName", name)?;
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "the value of feature {name} is longer than {MAX_VALUE_CHARS} characters"
            ));
        }
        if self.features.is_empty() {
            return Ok(());
        }
        match self.features.get(name) {
            None => Err(format!(
                "feature {name} is not defined in the feature group (its features: {})",
                self.features.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(t) if !t.accepts(value) => Err(format!(
                "the value `{}` of feature {name} is not a valid {t:?}",
                shorten(value)
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The first characters of a value, for messages.
fn shorten(value: &str) -> String {
    let mut out: String = value.chars().take(40).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    out
}

/// Checks a feature or feature group name against the service's pattern
/// (`^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}`, at most 64 characters).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "1 validation error detected: Value '{}' at '{what}' failed to satisfy constraint: \
             Member must have length less than or equal to {MAX_NAME_CHARS} and match the \
             pattern ^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){{0,63}}",
            shorten(name)
        ))
    }
}

/// A TtlDuration (`{"Unit": "Hours", "Value": 2}`) in µs.
pub fn parse_ttl(ttl: &Json) -> Result<i64, String> {
    let unit = ttl.get("Unit").and_then(Json::as_str).unwrap_or("");
    let per_unit: i64 = match unit {
        "Seconds" => 1,
        "Minutes" => 60,
        "Hours" => 3_600,
        "Days" => 86_400,
        "Weeks" => 604_800,
        other => {
            return Err(format!(
                "1 validation error detected: Value '{other}' at 'ttlDuration.unit' failed to \
                 satisfy constraint: Member must satisfy enum value set: [Seconds, Minutes, \
                 Hours, Days, Weeks]"
            ));
        }
    };
    let value = ttl.get("Value").and_then(Json::as_i64).unwrap_or(0);
    if value < 1 {
        return Err(format!(
            "1 validation error detected: Value '{}' at 'ttlDuration.value' failed to satisfy \
             constraint: Member must have value greater than or equal to 1",
            ttl.get("Value").unwrap_or(&Json::Null)
        ));
    }
    value
        .checked_mul(per_unit)
        .and_then(|s| s.checked_mul(1_000_000))
        .ok_or_else(|| format!("TtlDuration {value} {unit} is too long"))
}

/// Parses `NAME=RECORD_ID` or `NAME=RECORD_ID:EVENT_TIME` (event time defaults to
/// `event_time`): a group whose features are not checked.
pub fn parse_group(text: &str) -> Result<(String, GroupDefinition), String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("`{text}` is not a group definition: use NAME=RECORD_ID[:EVENT_TIME]")
    })?;
    let (id, time) = rest.split_once(':').unwrap_or((rest, "event_time"));
    if name.is_empty() || id.is_empty() || time.is_empty() {
        return Err(format!(
            "`{text}` has an empty part: use NAME=RECORD_ID[:EVENT_TIME]"
        ));
    }
    check_name("featureGroupName", name)?;
    Ok((name.to_owned(), GroupDefinition::new(id, time)))
}

/// Parses CreateFeatureGroup requests (one JSON object, or an array of them): the
/// group name, record identifier and event-time features, feature definitions and
/// the online store's TtlDuration; refused as CreateFeatureGroup refuses them.
pub fn parse_group_definitions(text: &str) -> Result<Vec<(String, GroupDefinition)>, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("not a JSON document: {e}"))?;
    let requests = match json {
        Json::Array(items) => items,
        one => vec![one],
    };
    requests.iter().map(parse_create_request).collect()
}

fn parse_create_request(request: &Json) -> Result<(String, GroupDefinition), String> {
    let field = |key: &str| -> Result<&str, String> {
        request
            .get(key)
            .and_then(Json::as_str)
            .ok_or_else(|| format!("{key} is required (a string)"))
    };
    let name = field("FeatureGroupName")?;
    check_name("featureGroupName", name)?;
    let in_group = |e: String| format!("feature group {name}: {e}");
    let definitions = request
        .get("FeatureDefinitions")
        .and_then(Json::as_array)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| in_group("FeatureDefinitions is required (a non-empty list)".into()))?;
    let mut features = BTreeMap::new();
    for d in definitions {
        let fname = d
            .get("FeatureName")
            .and_then(Json::as_str)
            .ok_or_else(|| in_group("every feature definition needs a FeatureName".into()))?;
        check_name("featureName", fname).map_err(in_group)?;
        if RESERVED_FEATURE_NAMES.contains(&fname) {
            return Err(in_group(format!(
                "the feature name {fname} is reserved (reserved: {})",
                RESERVED_FEATURE_NAMES.join(", ")
            )));
        }
        if d.get("CollectionType").is_some() {
            return Err(in_group(format!(
                "feature {fname}: collection types are not supported here"
            )));
        }
        let ftype = d
            .get("FeatureType")
            .and_then(Json::as_str)
            .ok_or_else(|| in_group(format!("feature {fname} needs a FeatureType")))
            .and_then(|t| FeatureType::parse(t).map_err(in_group))?;
        if features.insert(fname.to_owned(), ftype).is_some() {
            return Err(in_group(format!("feature {fname} is defined twice")));
        }
    }
    let record_identifier = field("RecordIdentifierFeatureName")?;
    let event_time = field("EventTimeFeatureName")?;
    match features.get(record_identifier) {
        Some(FeatureType::Integral | FeatureType::String) => {}
        Some(FeatureType::Fractional) => {
            return Err(in_group(format!(
                "the record identifier {record_identifier} must be Integral or String"
            )));
        }
        None => {
            return Err(in_group(format!(
                "the record identifier {record_identifier} is not among FeatureDefinitions"
            )));
        }
    }
    match features.get(event_time) {
        Some(FeatureType::Fractional | FeatureType::String) => {}
        Some(FeatureType::Integral) => {
            return Err(in_group(format!(
                "the event time feature {event_time} must be Fractional or String"
            )));
        }
        None => {
            return Err(in_group(format!(
                "the event time feature {event_time} is not among FeatureDefinitions"
            )));
        }
    }
    let ttl_micros = match request
        .get("OnlineStoreConfig")
        .and_then(|c| c.get("TtlDuration"))
    {
        Some(ttl) => Some(parse_ttl(ttl).map_err(in_group)?),
        None => None,
    };
    Ok((
        name.to_owned(),
        GroupDefinition {
            record_identifier: record_identifier.to_owned(),
            event_time: event_time.to_owned(),
            features,
            ttl_micros,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_group_definitions_parse_or_say_why_not() {
        assert_eq!(
            parse_group("g=card_id"),
            Ok(("g".into(), GroupDefinition::new("card_id", "event_time")))
        );
        assert_eq!(parse_group("g=id:ts").unwrap().1.event_time, "ts");
        assert!(parse_group("g").unwrap_err().contains("NAME=RECORD_ID"));
        assert!(parse_group("=id").is_err());
        assert!(parse_group("bad name=id").unwrap_err().contains("pattern"));
    }

    #[test]
    fn names_follow_the_services_pattern_and_length() {
        for good in ["a", "txn-velocity-v1-0-0", "user_id", &"x".repeat(64)] {
            assert!(check_name("featureName", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a_", "a b", "é", &"x".repeat(65)] {
            assert!(check_name("featureName", bad).is_err(), "{bad}");
        }
    }

    fn request() -> Json {
        json!({
            "FeatureGroupName": "users",
            "RecordIdentifierFeatureName": "user_id",
            "EventTimeFeatureName": "ts",
            "FeatureDefinitions": [
                {"FeatureName": "user_id", "FeatureType": "String"},
                {"FeatureName": "ts", "FeatureType": "Fractional"},
                {"FeatureName": "clicks", "FeatureType": "Integral"},
            ],
            "OnlineStoreConfig": {"TtlDuration": {"Unit": "Hours", "Value": 2}},
        })
    }

    #[test]
    fn create_requests_define_features_types_and_ttl() {
        let parsed = parse_group_definitions(&request().to_string()).unwrap();
        let (name, def) = &parsed[0];
        assert_eq!(name, "users");
        assert_eq!(def.features["clicks"], FeatureType::Integral);
        assert_eq!(def.ttl_micros, Some(2 * 3_600_000_000));
        assert!(def.check_feature("clicks", "12").is_ok());
        assert!(
            def.check_feature("clicks", "1.5")
                .unwrap_err()
                .contains("Integral")
        );
        assert!(def.check_feature("ts", "NaN").is_err());
        assert!(
            def.check_feature("nope", "1")
                .unwrap_err()
                .contains("not defined")
        );
        let huge = "x".repeat(MAX_VALUE_CHARS + 1);
        assert!(
            def.check_feature("user_id", &huge)
                .unwrap_err()
                .contains("longer")
        );
        // An array of requests works too.
        let two = json!([request(), request()]).to_string();
        assert_eq!(parse_group_definitions(&two).unwrap().len(), 2);
    }

    #[test]
    fn create_requests_are_refused_as_the_service_refuses_them() {
        let refused = |edit: &dyn Fn(&mut Json)| -> String {
            let mut r = request();
            edit(&mut r);
            parse_group_definitions(&r.to_string()).unwrap_err()
        };
        let reserved = refused(&|r| {
            r["FeatureDefinitions"][2]["FeatureName"] = json!("is_deleted");
        });
        assert!(reserved.contains("reserved"), "{reserved}");
        assert!(
            refused(&|r| r["FeatureDefinitions"][2]["FeatureType"] = json!("Float"))
                .contains("Integral, Fractional, String")
        );
        assert!(
            refused(&|r| r["RecordIdentifierFeatureName"] = json!("ghost"))
                .contains("not among FeatureDefinitions")
        );
        assert!(
            refused(&|r| r["FeatureDefinitions"][1]["FeatureType"] = json!("Integral"))
                .contains("Fractional or String")
        );
        assert!(
            refused(&|r| r["OnlineStoreConfig"]["TtlDuration"]["Unit"] = json!("Years"))
                .contains("Seconds, Minutes")
        );
        assert!(
            refused(&|r| r["OnlineStoreConfig"]["TtlDuration"]["Value"] = json!(0))
                .contains("greater than or equal to 1")
        );
        assert!(
            refused(&|r| {
                r["FeatureDefinitions"][2]["FeatureName"] = json!("user_id");
            })
            .contains("twice")
        );
        assert!(parse_group_definitions("{").unwrap_err().contains("JSON"));
    }
}
