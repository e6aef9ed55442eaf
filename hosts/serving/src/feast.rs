//! The Feast feature server's `POST /get-online-features`, answered from Lockstep.
//!
//! The subset understood:
//! - `features`: `"view:feature"` references; a view is a Lockstep feature group (its
//!   highest served version), and several views may be mixed in one request.
//! - `entities`: `{"<entity key column>": [values…]}`, all lists of one length; each
//!   view reads the column named by its group's entity key.
//! - `full_feature_names`: names the answer's columns `view__feature`.
//!
//! Accepted and ignored, as Feast's own server does: fields that Feast's clients add
//! (`include_feature_view_version_metadata`, sent by every `remote` online store
//! since 0.67) and any other field this server does not know.
//!
//! Not understood (refused with a 400 that says so): `feature_service` and request-time
//! (on-demand) features.
//!
//! The answer has Feast's shape — `metadata.feature_names`, then one `results` entry per
//! column (entity columns first) with `values`, `statuses` and `event_timestamps` — so
//! Feast clients read it unchanged. Statuses: `PRESENT` (a stored value),
//! `NULL_VALUE` (a stored null), `NOT_FOUND` (no record: value null, as Feast does; or
//! the record could not be read in time: the default snapshot's value). Lockstep adds a
//! `lockstep` object that Feast clients ignore: `degraded`, and per view the source of
//! each entity's values and the version served.

use crate::{FeatureServer, ServeError};
use lockstep_client::api::{EntityId, FeatureRequest, FeatureResponse, Source};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

/// A Feast `get-online-features` request.
///
/// Unknown fields are ignored rather than refused: Feast's clients add fields from
/// release to release (a stock client must keep working), and none of them changes
/// which values are answered.
#[derive(Debug, Deserialize)]
pub struct FeastRequest {
    /// `view:feature` references.
    #[serde(default)]
    pub features: Vec<String>,
    /// Not supported.
    #[serde(default)]
    pub feature_service: Option<String>,
    /// Entity key column → values.
    pub entities: Map<String, Json>,
    /// Name columns `view__feature`.
    #[serde(default)]
    pub full_feature_names: bool,
    /// Sent by Feast's `remote` online store; accepted, no version metadata is added.
    #[serde(default)]
    pub include_feature_view_version_metadata: bool,
}

fn bad(message: impl Into<String>) -> ServeError {
    ServeError::BadRequest(message.into())
}

/// Answers a Feast request in Feast's response shape.
pub async fn get_online_features(
    server: &FeatureServer,
    request: FeastRequest,
) -> Result<Json, ServeError> {
    if request.feature_service.is_some() {
        return Err(bad(
            "feature services are not supported: list the features as \"view:feature\"",
        ));
    }
    if request.features.is_empty() {
        return Err(bad("`features` is empty: list them as \"view:feature\""));
    }
    // Entity columns, as lists of one length.
    let mut columns: Vec<(&String, &Vec<Json>)> = Vec::new();
    for (name, values) in &request.entities {
        let Json::Array(values) = values else {
            return Err(bad(format!("entity `{name}` must be a list of values")));
        };
        columns.push((name, values));
    }
    let rows = columns.first().map_or(0, |(_, v)| v.len());
    if let Some((name, v)) = columns.iter().find(|(_, v)| v.len() != rows) {
        return Err(bad(format!(
            "entity `{name}` has {} values; the others have {rows}",
            v.len()
        )));
    }
    // Views in order of first mention, each with its features in request order.
    let mut views: Vec<(String, Vec<String>)> = Vec::new();
    let mut order: Vec<(usize, usize)> = Vec::new();
    for reference in &request.features {
        let Some((view, feature)) = reference.split_once(':') else {
            return Err(bad(format!(
                "feature `{reference}` is not a \"view:feature\" reference"
            )));
        };
        let v = match views.iter().position(|(name, _)| name == view) {
            Some(v) => v,
            None => {
                views.push((view.to_owned(), Vec::new()));
                views.len() - 1
            }
        };
        views[v].1.push(feature.to_owned());
        order.push((v, views[v].1.len() - 1));
    }
    let mut calls = Vec::with_capacity(views.len());
    for (view, features) in &views {
        let group = server.group(view, None)?;
        let key = &group.group.entity_key;
        let Some((_, values)) = columns.iter().find(|(name, _)| *name == key) else {
            return Err(bad(format!(
                "view `{view}` is keyed by `{key}`, which `entities` does not have"
            )));
        };
        let entities = values
            .iter()
            .map(|v| match v {
                Json::String(s) => Ok(EntityId::Text(s.clone())),
                Json::Number(n) => n
                    .as_i64()
                    .map(EntityId::Int)
                    .ok_or_else(|| bad(format!("entity `{key}`: {n} is not an integer"))),
                other => Err(bad(format!("entity `{key}`: {other} is not a key"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        calls.push(FeatureRequest {
            group: view.clone(),
            version: Some(group.group.version.clone()),
            entities,
            features: features.clone(),
        });
    }
    let answers: Vec<FeatureResponse<Box<serde_json::value::RawValue>>> =
        futures_util::future::try_join_all(calls.iter().map(|c| server.get(c))).await?;

    let epoch = Json::from("1970-01-01T00:00:00Z");
    let mut names: Vec<Json> = Vec::new();
    let mut results: Vec<Json> = Vec::new();
    for (name, values) in &columns {
        names.push(Json::from(name.as_str()));
        results.push(json!({
            "values": values,
            "statuses": vec!["PRESENT"; rows],
            "event_timestamps": vec![epoch.clone(); rows],
        }));
    }
    for (reference, &(v, f)) in request.features.iter().zip(&order) {
        let answer = &answers[v];
        names.push(Json::from(if request.full_feature_names {
            reference.replacen(':', "__", 1)
        } else {
            views[v].1[f].clone()
        }));
        let mut values = Vec::with_capacity(rows);
        let mut statuses = Vec::with_capacity(rows);
        let mut times = Vec::with_capacity(rows);
        for entity in &answer.entities {
            let value: Json = serde_json::from_str(entity.values[f].get()).unwrap_or(Json::Null);
            let status = match entity.source {
                Source::Cache | Source::Store if value.is_null() => "NULL_VALUE",
                Source::Cache | Source::Store => "PRESENT",
                Source::Missing | Source::Default => "NOT_FOUND",
            };
            values.push(if entity.source == Source::Missing {
                Json::Null
            } else {
                value
            });
            statuses.push(status);
            times.push(entity.event_time.clone().map_or(epoch.clone(), Json::from));
        }
        results.push(json!({"values": values, "statuses": statuses, "event_timestamps": times}));
    }
    let lockstep: Map<String, Json> = views
        .iter()
        .zip(&answers)
        .map(|((view, _), answer)| {
            (
                view.clone(),
                json!({
                    "version": answer.version,
                    "sources": answer.entities.iter().map(|e| e.source).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    Ok(json!({
        "metadata": {"feature_names": names},
        "results": results,
        "lockstep": {
            "degraded": answers.iter().any(|a| a.degraded),
            "views": lockstep,
        },
    }))
}
