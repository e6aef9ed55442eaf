//! Routing the records of a stream shared by several feature groups: each group takes
//! the records whose top-level field (say `kind`) holds its value, so one Kinesis
//! stream can carry transactions, page views and account activity side by side.
//!
//! A record is read once for all routes: [`Router::route`] finds the values of every
//! routing field in one pass over its bytes (other values are skipped, never built).

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// Which records of a shared stream a feature group takes: those whose top-level JSON
/// field `field` equals `equals` (a string value, or a number or boolean written as
/// in JSON: `7`, `true`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The top-level field.
    pub field: String,
    /// The value the group takes.
    pub equals: String,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}", self.field, self.equals)
    }
}

/// Where a record goes: to each group whose route matches (a group without a route
/// takes every record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// The groups (indices into the routes given to [`Router::new`]) that take it.
    To(Vec<usize>),
    /// No group takes it; why (for the unrouted log).
    Nowhere(String),
}

/// Routes records to the groups of a shared stream; see the [module](self) docs.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Option<Route>>,
    fields: Vec<String>,
}

impl Router {
    /// A router over the groups' routes, in group order (`None`: the group takes every
    /// record).
    pub fn new(routes: Vec<Option<Route>>) -> Self {
        let mut fields: Vec<String> = Vec::new();
        for route in routes.iter().flatten() {
            if !fields.contains(&route.field) {
                fields.push(route.field.clone());
            }
        }
        Router { routes, fields }
    }

    /// Whether every group takes every record (no routes at all).
    pub fn takes_all(&self) -> bool {
        self.fields.is_empty()
    }

    /// The groups that take `data`.
    pub fn route(&self, data: &[u8]) -> Routing {
        if self.takes_all() {
            return Routing::To((0..self.routes.len()).collect());
        }
        let values = field_values(data, &self.fields);
        let to: Vec<usize> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, route)| match route {
                None => true,
                Some(route) => match &values {
                    Ok(values) => self
                        .fields
                        .iter()
                        .position(|f| *f == route.field)
                        .and_then(|i| values[i].as_deref())
                        .is_some_and(|v| v == route.equals),
                    Err(_) => false,
                },
            })
            .map(|(i, _)| i)
            .collect();
        if !to.is_empty() {
            return Routing::To(to);
        }
        Routing::Nowhere(match values {
            Err(e) => format!("not a JSON object ({e}): no group's route can match it"),
            Ok(values) => {
                let found: Vec<String> = self
                    .fields
                    .iter()
                    .zip(&values)
                    .map(|(f, v)| match v {
                        Some(v) => format!("`{f}` is {v:?}"),
                        None => format!("`{f}` is absent or not a string, number or boolean"),
                    })
                    .collect();
                let routes: Vec<String> = self
                    .routes
                    .iter()
                    .flatten()
                    .map(|r| r.to_string())
                    .collect();
                format!(
                    "{}: no group takes it (routes: {})",
                    found.join(", "),
                    routes.join("; ")
                )
            }
        })
    }
}

/// The values of `fields` in the top-level JSON object `data`, in one pass: a string's
/// text, a number's or boolean's JSON text; `None` for an absent field, null, an
/// object or an array.
pub fn field_values(data: &[u8], fields: &[String]) -> Result<Vec<Option<String>>, String> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let values = Fields { fields }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(values)
}

struct Fields<'f> {
    fields: &'f [String],
}

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Vec<Option<String>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.fields.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.fields.iter().position(|f| *f == key) {
                // As JSON's own objects: a repeated key's last value counts.
                Some(i) => out[i] = map.next_value::<Scalar>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A routing value: a string, a number or a boolean as text; anything else `None`.
struct Scalar(Option<String>);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Scalar(Some(s))),
            serde_json::Value::Number(n) => Ok(Scalar(Some(n.to_string()))),
            serde_json::Value::Bool(b) => Ok(Scalar(Some(b.to_string()))),
            _ => Ok(Scalar(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(field: &str, equals: &str) -> Option<Route> {
        Some(Route {
            field: field.into(),
            equals: equals.into(),
        })
    }

    #[test]
    fn records_go_to_the_groups_whose_value_they_carry() {
        let router = Router::new(vec![
            route("kind", "txn"),
            route("kind", "view"),
            None,
            route("tier", "7"),
        ]);
        assert_eq!(
            router.route(br#"{"a": {"kind": "view"}, "kind": "txn", "x": [1, 2]}"#),
            Routing::To(vec![0, 2])
        );
        assert_eq!(
            router.route(br#"{"kind": "view", "tier": 7}"#),
            Routing::To(vec![1, 2, 3])
        );
        // A group without a route takes even what no route matches.
        assert_eq!(router.route(b"not json"), Routing::To(vec![2]));
    }

    #[test]
    fn a_record_no_group_takes_says_why() {
        let router = Router::new(vec![route("kind", "txn"), route("kind", "view")]);
        let Routing::Nowhere(why) = router.route(br#"{"kind": "click"}"#) else {
            panic!("routed")
        };
        assert!(why.contains(r#"`kind` is "click""#), "{why}");
        assert!(why.contains(r#"kind = "txn""#), "{why}");
        let Routing::Nowhere(why) = router.route(br#"{"kind": null}"#) else {
            panic!("routed")
        };
        assert!(why.contains("absent"), "{why}");
        let Routing::Nowhere(why) = router.route(b"{\"kind\": \"txn\"") else {
            panic!("a truncated record was routed")
        };
        assert!(why.contains("not a JSON object"), "{why}");
        let Routing::Nowhere(why) = router.route(br#"["kind", "txn"]"#) else {
            panic!("an array was routed")
        };
        assert!(why.contains("not a JSON object"), "{why}");
        assert!(matches!(
            router.route(br#"{"kind": "txn"} trailing"#),
            Routing::Nowhere(_)
        ));
    }

    #[test]
    fn values_are_found_in_one_pass_with_escapes_and_repeats() {
        let fields = vec!["kind".to_owned(), "n".to_owned()];
        assert_eq!(
            field_values(
                br#"{"k\u0069nd": "t\"x", "n": 1.5, "kind": "last"}"#,
                &fields
            ),
            Ok(vec![Some("last".into()), Some("1.5".into())])
        );
        assert_eq!(
            field_values(br#"{"n": true}"#, &fields),
            Ok(vec![None, Some("true".into())])
        );
    }
}
